"""Mirror of `keras.applications.vgg16`: `VGG16`, `preprocess_input`, `decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.vgg import VGG16


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in VGG16's mode (caffe: RGB→BGR, minus the ImageNet mean)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode=VGG16.spec.preprocess_mode)


__all__ = ["VGG16", "decode_predictions", "preprocess_input"]
