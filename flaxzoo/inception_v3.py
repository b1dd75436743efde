"""Mirror of `keras.applications.inception_v3`: `InceptionV3`, `preprocess_input`, `decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.inception_v3 import InceptionV3


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in InceptionV3's mode (tf: scaled to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode=InceptionV3.spec.preprocess_mode)


__all__ = ["InceptionV3", "decode_predictions", "preprocess_input"]
