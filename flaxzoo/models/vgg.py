"""VGG16 and VGG19 (Simonyan & Zisserman 2014), as ``keras/src/applications/vgg16.py`` / ``vgg19.py``:
3x3 'same' convolutions with bias and ReLU inside the layer, 2x2 max pools, and three dense layers."""

from __future__ import annotations

from functools import partial
from typing import Any

from flax import linen as nn

from flaxzoo.layers import Conv2D, Dense, Flatten, InputLayer, MaxPooling2D
from flaxzoo.models.common import Application, build_application, pooling_head
from flaxzoo.registry import keras_weights_file, register_model

WIDTHS = (64, 128, 256, 512, 512)


class VGG(Application):
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


_COMMON = dict(default_size=224, min_size=32, preprocess_mode="caffe")


@register_model(
    name="vgg16",
    module="flaxzoo.vgg16",
    params=138_357_544,
    params_notop=14_714_688,
    depth=16,
    top1=0.713,
    top5=0.901,
    flops=30_940_528_640,
    weights={
        "top": keras_weights_file(
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5", "vgg16", "64373286793e3c8b2b4e3219cbf3544b"
        ),
        "notop": keras_weights_file(
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16", "6d6bbae143d832006294945121d1f1fc"
        ),
    },
    **_COMMON,
)
def VGG16(
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "vgg16",
    *,
    seed: int = 0,
):
    """Instantiates VGG16 (keras.applications.VGG16); returns ``(model, variables)`` (no batch_stats)."""
    return build_application(
        VGG16.spec,
        partial(VGG, convs=(2, 2, 3, 3, 3)),
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
        seed=seed,
    )


@register_model(
    name="vgg19",
    module="flaxzoo.vgg19",
    params=143_667_240,
    params_notop=20_024_384,
    depth=19,
    top1=0.713,
    top5=0.900,
    flops=39_264_124_928,
    weights={
        "top": keras_weights_file(
            "vgg19_weights_tf_dim_ordering_tf_kernels.h5", "vgg19", "cbe5617147190e668d6c5d5026f83318"
        ),
        "notop": keras_weights_file(
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg19", "253f8cb515780f3b799900260a226db6"
        ),
    },
    **_COMMON,
)
def VGG19(
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "vgg19",
    *,
    seed: int = 0,
):
    """Instantiates VGG19 (keras.applications.VGG19); returns ``(model, variables)`` (no batch_stats)."""
    return build_application(
        VGG19.spec,
        partial(VGG, convs=(2, 2, 4, 4, 4)),
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
        seed=seed,
    )
