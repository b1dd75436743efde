"""One module per Keras application family; importing this package registers every model."""

from flaxzoo.models.densenet import DenseNet, DenseNet121, DenseNet169, DenseNet201, DenseNetModule
from flaxzoo.models.inception_resnet_v2 import InceptionResNetV2, InceptionResNetV2Module
from flaxzoo.models.inception_v3 import InceptionV3, InceptionV3Module
from flaxzoo.models.mobilenet import MobileNet, MobileNetModule
from flaxzoo.models.nasnet import NASNet, NASNetLarge, NASNetMobile, NASNetModule
from flaxzoo.models.resnet import ResNet, ResNet50
from flaxzoo.models.vgg import VGG, VGG16, VGG19
from flaxzoo.models.xception import Xception, XceptionModule

__all__ = [
    "DenseNet",
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    "DenseNetModule",
    "InceptionResNetV2",
    "InceptionResNetV2Module",
    "InceptionV3",
    "InceptionV3Module",
    "MobileNet",
    "MobileNetModule",
    "NASNet",
    "NASNetLarge",
    "NASNetMobile",
    "NASNetModule",
    "ResNet",
    "ResNet50",
    "VGG",
    "VGG16",
    "VGG19",
    "Xception",
    "XceptionModule",
]
