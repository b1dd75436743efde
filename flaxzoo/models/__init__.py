"""One module per Keras application family; importing this package registers every model."""

from flaxzoo.models.resnet import ResNet, ResNet50
from flaxzoo.models.vgg import VGG, VGG16, VGG19
from flaxzoo.models.xception import Xception, XceptionModule

__all__ = ["ResNet", "ResNet50", "VGG", "VGG16", "VGG19", "Xception", "XceptionModule"]
