"""Mirror of `keras.applications.resnet50`: `ResNet50`, `preprocess_input`, `decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.resnet import ResNet50


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in ResNet50's mode (caffe: RGB→BGR, minus the ImageNet mean)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode=ResNet50.spec.preprocess_mode)


__all__ = ["ResNet50", "decode_predictions", "preprocess_input"]
