"""Mirror of `keras.applications.vgg19`: `VGG19`, `preprocess_input`, `decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.vgg import VGG19


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in VGG19's mode (caffe: RGB→BGR, minus the ImageNet mean)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode=VGG19.spec.preprocess_mode)


__all__ = ["VGG19", "decode_predictions", "preprocess_input"]
