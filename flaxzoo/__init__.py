"""flaxzoo: the Keras Applications ImageNet models as pure flax.linen modules with Keras-exact weights.

    model, variables = flaxzoo.ResNet50(weights="imagenet")
    probs = model.apply(variables, flaxzoo.resnet50.preprocess_input(images))
"""

from flaxzoo._version import __version__
from flaxzoo import image, imagenet_utils
from flaxzoo.models import ResNet50, VGG16, VGG19, Xception
from flaxzoo import resnet50, vgg16, vgg19, xception
from flaxzoo.registry import ModelSpec, create_model, get_spec, list_models

__all__ = [
    "__version__",
    "ModelSpec",
    "ResNet50",
    "create_model",
    "VGG16",
    "VGG19",
    "get_spec",
    "image",
    "imagenet_utils",
    "list_models",
    "resnet50",
    "vgg16",
    "vgg19",
    "Xception",
    "xception",
]
