"""Mirror of `keras.applications.densenet`: `DenseNet121`, `DenseNet169`, `DenseNet201`, `preprocess_input`,
`decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.densenet import DenseNet121, DenseNet169, DenseNet201


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in DenseNet's mode (torch: scaled to [0, 1], then normalised
    with the ImageNet mean and standard deviation per RGB channel)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode=DenseNet121.spec.preprocess_mode)


__all__ = ["DenseNet121", "DenseNet169", "DenseNet201", "decode_predictions", "preprocess_input"]
