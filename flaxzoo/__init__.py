"""flaxzoo: the Keras Applications ImageNet models as pure flax.linen modules with Keras-exact weights.

    model, variables = flaxzoo.ResNet50(weights="imagenet")
    probs = model.apply(variables, flaxzoo.resnet50.preprocess_input(images))
"""

from flaxzoo._version import __version__
from flaxzoo import image, imagenet_utils
from flaxzoo.models import (
    DenseNet121,
    DenseNet169,
    DenseNet201,
    InceptionResNetV2,
    InceptionV3,
    MobileNet,
    NASNetLarge,
    NASNetMobile,
    ResNet50,
    VGG16,
    VGG19,
    Xception,
)
from flaxzoo import densenet, inception_resnet_v2, inception_v3, mobilenet, nasnet, resnet50, vgg16, vgg19, xception
from flaxzoo.registry import ModelSpec, create_model, get_spec, list_models
from flaxzoo.weights import save_checkpoint
from flaxzoo.inference import fold_batchnorm, predict_fn
from flaxzoo.xla_options import compiler_options
from flaxzoo.surgery import (
    TransferReport,
    Truncated,
    extract,
    freeze,
    frozen_layers,
    get_layer,
    layer_names,
    load_pretrained,
    model_graph,
    summary,
    trainable_mask,
    truncate,
)

__all__ = [
    "__version__",
    "TransferReport",
    "Truncated",
    "compiler_options",
    "extract",
    "fold_batchnorm",
    "predict_fn",
    "freeze",
    "frozen_layers",
    "get_layer",
    "layer_names",
    "load_pretrained",
    "model_graph",
    "save_checkpoint",
    "summary",
    "trainable_mask",
    "truncate",
    "ModelSpec",
    "ResNet50",
    "create_model",
    "densenet",
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    "VGG16",
    "VGG19",
    "get_spec",
    "image",
    "imagenet_utils",
    "InceptionResNetV2",
    "inception_resnet_v2",
    "InceptionV3",
    "inception_v3",
    "list_models",
    "mobilenet",
    "MobileNet",
    "nasnet",
    "NASNetLarge",
    "NASNetMobile",
    "resnet50",
    "vgg16",
    "vgg19",
    "Xception",
    "xception",
]
