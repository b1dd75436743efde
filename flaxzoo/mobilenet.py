"""Mirror of `keras.applications.mobilenet`: `MobileNet`, `preprocess_input`, `decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.mobilenet import MobileNet


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in MobileNet's mode (tf: scaled to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode=MobileNet.spec.preprocess_mode)


__all__ = ["MobileNet", "decode_predictions", "preprocess_input"]
