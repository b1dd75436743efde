"""flaxzoo's exceptions. All are ValueErrors, so code written against Keras' errors still catches them."""


class FlaxzooError(ValueError):
    """Base class of flaxzoo's own errors."""


class WeightFileError(FlaxzooError):
    """A weight file (Keras .h5) cannot be read or does not fit the model; the message names the file and the layer."""


class CheckpointError(FlaxzooError):
    """A flaxzoo orbax checkpoint is missing, broken or does not fit the model."""


class DownloadError(FlaxzooError):
    """A file could not be downloaded, or failed its md5 check."""


class InputError(FlaxzooError):
    """A model was called on an input it cannot take (rank, channels, size, an empty batch, a non-numeric
    dtype); the message names the expected shape, as ``(None, height, width, channels)``, and the shape found."""


class ImageFileError(FlaxzooError, OSError):
    """``flaxzoo.image.load_img`` cannot read an image file (corrupt, truncated, over the pixel limit, an
    unsupported mode); the message names the file. Also an ``OSError``, which is what PIL and Keras raise."""


class TrainingError(FlaxzooError):
    """A fine-tuning run stopped on a fault: a non-finite loss or parameters (the message names the step;
    the poisoned state is not checkpointed)."""
