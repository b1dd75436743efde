"""Mirror of `keras.applications.nasnet`: `NASNetMobile`, `NASNetLarge`, `preprocess_input`, `decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.nasnet import NASNetLarge, NASNetMobile


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in NASNet's mode (tf: scaled to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode=NASNetMobile.spec.preprocess_mode)


__all__ = ["NASNetLarge", "NASNetMobile", "decode_predictions", "preprocess_input"]
