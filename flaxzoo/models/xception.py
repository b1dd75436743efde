"""Xception (Chollet 2017), as ``keras/src/applications/xception.py``: an entry flow of strided separable
blocks with 1x1-conv shortcuts, eight identical middle blocks, and an exit flow."""

from __future__ import annotations

from typing import ClassVar

from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    Add,
    AutoNames,
    BatchNormalization,
    Conv2D,
    InputLayer,
    MaxPooling2D,
    SeparableConv2D,
)
from flaxzoo.models.common import Application, Family, KerasMessages, classifier_head, preset_table, register_family
from flaxzoo.registry import tf_kernels_files


def sepconv_bn(x, filters, name, train, relu_first=True):
    """[relu ``{name}_act`` →] SeparableConv 3x3 ``name`` → BN ``{name}_bn``."""
    if relu_first:
        x = Activation("relu", name=f"{name}_act")(x)
    x = SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    return BatchNormalization(name=f"{name}_bn")(x, train)


def strided_block(x, filters, block, auto, train, *, first_relu=True):
    """Two separable convs and a 3x3/2 max pool, added to a 1x1/2 conv shortcut of the block input.

    ``filters`` is (first, second) conv width. Keras auto-names the shortcut conv, its BN and the add.
    """
    residual = Conv2D(filters[1], 1, strides=2, padding="same", use_bias=False, name=auto(Conv2D))(x)
    residual = BatchNormalization(name=auto(BatchNormalization))(residual, train)
    x = sepconv_bn(x, filters[0], f"block{block}_sepconv1", train, relu_first=first_relu)
    x = sepconv_bn(x, filters[1], f"block{block}_sepconv2", train)
    x = MaxPooling2D(3, strides=2, padding="same", name=f"block{block}_pool")(x)
    return Add(name=auto(Add))([x, residual])


def middle_block(x, block, auto, train):
    residual = x
    for i in (1, 2, 3):
        x = sepconv_bn(x, 728, f"block{block}_sepconv{i}", train)
    return Add(name=auto(Add))([x, residual])


class XceptionModule(Application):

    # the first ReLU of the next block is the activated output of the block that ends a stride (timm's choice)
    stage_ends: ClassVar[tuple[str, ...]] = (
        "block1_conv2_act", "block3_sepconv1_act", "block4_sepconv1_act", "block13_sepconv1_act", "block14_sepconv2_act"
    )  # fmt: skip

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        x = InputLayer(name="input_layer")(x)
        x = Conv2D(32, 3, strides=2, use_bias=False, name="block1_conv1")(x)
        x = BatchNormalization(name="block1_conv1_bn")(x, train)
        x = Activation("relu", name="block1_conv1_act")(x)
        x = Conv2D(64, 3, use_bias=False, name="block1_conv2")(x)
        x = BatchNormalization(name="block1_conv2_bn")(x, train)
        x = Activation("relu", name="block1_conv2_act")(x)

        # Entry flow: block 2 follows a ReLU already, so its first separable conv has none of its own.
        x = strided_block(x, (128, 128), 2, auto, train, first_relu=False)
        x = strided_block(x, (256, 256), 3, auto, train)
        x = strided_block(x, (728, 728), 4, auto, train)
        for block in range(5, 13):
            x = middle_block(x, block, auto, train)
        x = strided_block(x, (728, 1024), 13, auto, train)

        for i, filters in ((1, 1536), (2, 2048)):  # exit flow: the ReLU comes after the BN
            x = SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"block14_sepconv{i}")(x)
            x = BatchNormalization(name=f"block14_sepconv{i}_bn")(x, train)
            x = Activation("relu", name=f"block14_sepconv{i}_act")(x)

        return classifier_head(self, x)


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), 'imagenet' "
        "(pre-training on ImageNet), or the path to the weights file to be loaded."
    )
)


# fmt: off
(Xception,) = register_family(Family(XceptionModule, messages=MESSAGES), *preset_table(
    "keras_name  name        keras_modules  default_size  min_size  params      params_notop  depth  top1   top5   flops           weights",
    ("Xception", "xception", ("xception",),  299,          71,       22_910_480, 20_861_480,   81,    0.790, 0.945, 16_714_806_992, tf_kernels_files("xception", "xception", "0a58e3b7378bc2990ea3b43d5981f1f6", "b0042744bf5b25fce3cb969f33bebb97")),
    preprocess_mode="tf",
))
# fmt: on
