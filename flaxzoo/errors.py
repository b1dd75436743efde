"""flaxzoo's exceptions. All are ValueErrors, so code written against Keras' errors still catches them."""


class FlaxzooError(ValueError):
    """Base class of flaxzoo's own errors."""


class WeightFileError(FlaxzooError):
    """A weight file (Keras .h5) cannot be read or does not fit the model; the message names the file and the layer."""


class CheckpointError(FlaxzooError):
    """A flaxzoo orbax checkpoint is missing, broken or does not fit the model."""


class DownloadError(FlaxzooError):
    """A file could not be downloaded, or failed its md5 check."""
