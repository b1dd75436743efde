"""Mirror of `keras.applications.xception`: `Xception`, `preprocess_input`, `decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.xception import Xception


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in Xception's mode (tf: scaled to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode=Xception.spec.preprocess_mode)


__all__ = ["Xception", "decode_predictions", "preprocess_input"]
