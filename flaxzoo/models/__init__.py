"""One module per Keras application family; importing this package registers every model."""

from flaxzoo.models.resnet import ResNet, ResNet50
from flaxzoo.models.vgg import VGG, VGG16, VGG19

__all__ = ["ResNet", "ResNet50", "VGG", "VGG16", "VGG19"]
