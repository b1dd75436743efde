"""VGG16 and VGG19 (Simonyan & Zisserman 2014), as ``keras/src/applications/vgg16.py`` / ``vgg19.py``:
3x3 'same' convolutions with bias and ReLU inside the layer, 2x2 max pools, and three dense layers."""

from __future__ import annotations

from flax import linen as nn

from flaxzoo.layers import Conv2D, Dense, Flatten, InputLayer, MaxPooling2D
from flaxzoo.models.common import Application, Family, pooling_head, preset_table, register_family
from flaxzoo.registry import tf_kernels_files

WIDTHS = (64, 128, 256, 512, 512)


class VGGModule(Application):
    """``convs`` per block: (2, 2, 3, 3, 3) is VGG16, (2, 2, 4, 4, 4) VGG19."""

    convs: tuple[int, ...] = (2, 2, 3, 3, 3)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = InputLayer(name="input_layer")(x)
        for block, (width, convs) in enumerate(zip(WIDTHS, self.convs), start=1):
            for i in range(1, convs + 1):
                x = Conv2D(width, 3, padding="same", activation="relu", name=f"block{block}_conv{i}")(x)
            x = MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)

        if self.include_top:
            x = Flatten(name="flatten")(x)
            x = Dense(4096, activation="relu", name="fc1")(x)
            x = Dense(4096, activation="relu", name="fc2")(x)
            return Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
        return pooling_head(x, self.pooling)


# fmt: off
VGG16, VGG19 = register_family(Family(VGGModule, doc="The model has no batch norms: its variables are ``params`` only."), *preset_table(
    "keras_name  name     keras_modules  config.convs       params       params_notop  depth  top1   top5   flops           weights",
    ("VGG16",    "vgg16",  ("vgg16",),     (2, 2, 3, 3, 3),  138_357_544, 14_714_688,   16,    0.713, 0.901, 30_940_528_640, tf_kernels_files("vgg16", "vgg16", "64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc")),
    ("VGG19",    "vgg19",  ("vgg19",),     (2, 2, 4, 4, 4),  143_667_240, 20_024_384,   19,    0.713, 0.900, 39_264_124_928, tf_kernels_files("vgg19", "vgg19", "cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6")),
    default_size=224, min_size=32, preprocess_mode="caffe",
))
# fmt: on
