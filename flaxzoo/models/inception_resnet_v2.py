"""Inception-ResNet v2 (Szegedy et al. 2016), as ``keras/src/applications/inception_resnet_v2.py``: the
Inception v3 stem, mixed_5b, then 10 x block35, a reduction (mixed_6a), 20 x block17, a reduction
(mixed_7a), 10 x block8 and a final 1x1 conv_7b.

Each Inception-ResNet block concatenates its branches (``block35_3_mixed``), projects them back to the
input width with a biased 1x1 conv and no batch norm (``block35_3_conv``), adds that to its input scaled
by 0.17 / 0.1 / 0.2 (``custom_scale_layer_k``) and applies relu (``block35_3_ac``); the last block
(block8_10) scales by 1.0 and has no activation. Unnamed layers carry Keras' auto names, which depend on
the order in which Keras creates the layers: the functions below follow it call for call.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    AutoNames,
    AveragePooling2D,
    BatchNormalization,
    Concatenate,
    Conv2D,
    CustomScaleLayer,
    InputLayer,
    MaxPooling2D,
)
from flaxzoo.models.common import Application, Family, KerasMessages, classifier_head, preset_table, register_family
from flaxzoo.registry import tf_kernels_files

BatchNorm = partial(BatchNormalization, scale=False)  # epsilon 1e-3, momentum 0.99: Keras' defaults


def conv2d_bn(
    x, filters, kernel_size, auto, train, strides=1, padding="same", activation="relu", use_bias=False, name=None
):
    """Conv ``name`` → BN ``{name}_bn`` (only without bias; no gamma) → activation ``{name}_ac``
    (unless None). Without ``name``, each layer gets its Keras auto name."""
    x = Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=name or auto(Conv2D))(x)
    if not use_bias:
        x = BatchNorm(name=f"{name}_bn" if name else auto(BatchNormalization))(x, train)
    if activation is not None:
        x = Activation(activation, name=f"{name}_ac" if name else auto(Activation))(x)
    return x


def branch(x, convs, auto, train):
    """A chain of stride-1 'same' conv2d_bn's, each given as (filters, kernel_size)."""
    for filters, kernel_size in convs:
        x = conv2d_bn(x, filters, kernel_size, auto, train)
    return x


# The residual branches of the three Inception-ResNet blocks (the paper's figures 16, 17 and 18).
BLOCK_BRANCHES = {
    "block35": [[(32, 1)], [(32, 1), (32, 3)], [(32, 1), (48, 3), (64, 3)]],  # 35x35
    "block17": [[(192, 1)], [(128, 1), (160, (1, 7)), (192, (7, 1))]],  # 17x17
    "block8": [[(192, 1)], [(192, 1), (224, (1, 3)), (256, (3, 1))]],  # 8x8
}


def inception_resnet_block(x, scale, block_type, block_idx, auto, train, activation="relu"):
    """``x + scale * conv1x1(concat(branches(x)))``, then ``activation``; named ``{block_type}_{block_idx}_*``."""
    block_name = f"{block_type}_{block_idx}"
    branches = [branch(x, convs, auto, train) for convs in BLOCK_BRANCHES[block_type]]
    mixed = Concatenate(name=f"{block_name}_mixed")(branches)
    up = conv2d_bn(mixed, x.shape[-1], 1, auto, train, activation=None, use_bias=True, name=f"{block_name}_conv")
    x = CustomScaleLayer(scale, name=auto(CustomScaleLayer))([x, up])
    if activation is not None:
        x = Activation(activation, name=f"{block_name}_ac")(x)
    return x


def mixed_5b(x, auto, train):
    """1x1 | 1x1 → 5x5 | 1x1 → 3x3 → 3x3 | 3x3/1 'same' avg pool → 1x1."""
    branch_0 = conv2d_bn(x, 96, 1, auto, train)
    branch_1 = conv2d_bn(x, 48, 1, auto, train)
    branch_1 = conv2d_bn(branch_1, 64, 5, auto, train)
    branch_2 = conv2d_bn(x, 64, 1, auto, train)
    branch_2 = conv2d_bn(branch_2, 96, 3, auto, train)
    branch_2 = conv2d_bn(branch_2, 96, 3, auto, train)
    branch_pool = AveragePooling2D(3, strides=1, padding="same", name=auto(AveragePooling2D))(x)
    branch_pool = conv2d_bn(branch_pool, 64, 1, auto, train)
    return Concatenate(name="mixed_5b")([branch_0, branch_1, branch_2, branch_pool])


def mixed_6a(x, auto, train):
    """Reduction-A, 35x35 → 17x17: 3x3/2 | 1x1 → 3x3 → 3x3/2 | 3x3/2 max pool."""
    branch_0 = conv2d_bn(x, 384, 3, auto, train, strides=2, padding="valid")
    branch_1 = conv2d_bn(x, 256, 1, auto, train)
    branch_1 = conv2d_bn(branch_1, 256, 3, auto, train)
    branch_1 = conv2d_bn(branch_1, 384, 3, auto, train, strides=2, padding="valid")
    branch_pool = MaxPooling2D(3, strides=2, padding="valid", name=auto(MaxPooling2D))(x)
    return Concatenate(name="mixed_6a")([branch_0, branch_1, branch_pool])


def mixed_7a(x, auto, train):
    """Reduction-B, 17x17 → 8x8: 1x1 → 3x3/2 | 1x1 → 3x3/2 | 1x1 → 3x3 → 3x3/2 | 3x3/2 max pool."""
    branch_0 = conv2d_bn(x, 256, 1, auto, train)
    branch_0 = conv2d_bn(branch_0, 384, 3, auto, train, strides=2, padding="valid")
    branch_1 = conv2d_bn(x, 256, 1, auto, train)
    branch_1 = conv2d_bn(branch_1, 288, 3, auto, train, strides=2, padding="valid")
    branch_2 = conv2d_bn(x, 256, 1, auto, train)
    branch_2 = conv2d_bn(branch_2, 288, 3, auto, train)
    branch_2 = conv2d_bn(branch_2, 320, 3, auto, train, strides=2, padding="valid")
    branch_pool = MaxPooling2D(3, strides=2, padding="valid", name=auto(MaxPooling2D))(x)
    return Concatenate(name="mixed_7a")([branch_0, branch_1, branch_2, branch_pool])


class InceptionResNetV2Module(Application):

    # the stem's 2b and 4a convolutions, the last residual block at strides 8 and 16, and conv_7b
    stage_ends: ClassVar[tuple[str, ...]] = ("activation_2", "activation_4", "block35_10_ac", "block17_20_ac", "conv_7b_ac")

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        x = InputLayer(name="input_layer")(x)
        x = conv2d_bn(x, 32, 3, auto, train, strides=2, padding="valid")
        x = conv2d_bn(x, 32, 3, auto, train, padding="valid")
        x = conv2d_bn(x, 64, 3, auto, train)
        x = MaxPooling2D(3, strides=2, name=auto(MaxPooling2D))(x)
        x = conv2d_bn(x, 80, 1, auto, train, padding="valid")
        x = conv2d_bn(x, 192, 3, auto, train, padding="valid")
        x = MaxPooling2D(3, strides=2, name=auto(MaxPooling2D))(x)

        x = mixed_5b(x, auto, train)  # 35x35x320
        for block_idx in range(1, 11):  # Inception-ResNet-A
            x = inception_resnet_block(x, 0.17, "block35", block_idx, auto, train)
        x = mixed_6a(x, auto, train)  # 17x17x1088
        for block_idx in range(1, 21):  # Inception-ResNet-B
            x = inception_resnet_block(x, 0.1, "block17", block_idx, auto, train)
        x = mixed_7a(x, auto, train)  # 8x8x2080
        for block_idx in range(1, 10):  # Inception-ResNet-C
            x = inception_resnet_block(x, 0.2, "block8", block_idx, auto, train)
        x = inception_resnet_block(x, 1.0, "block8", 10, auto, train, activation=None)
        x = conv2d_bn(x, 1536, 1, auto, train, name="conv_7b")  # 8x8x1536

        return classifier_head(self, x)


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), `imagenet` "
        "(pre-training on ImageNet), or the path to the weights file to be loaded."
    ),
    classes=(
        'If using `weights="imagenet"` with `include_top=True`, `classes` should be 1000. Received classes={classes}'
    ),
)


# fmt: off
(InceptionResNetV2,) = register_family(Family(InceptionResNetV2Module, messages=MESSAGES), *preset_table(
    "keras_name           name                   keras_modules             default_size  min_size  params      params_notop  depth  top1   top5   flops           weights",
    ("InceptionResNetV2", "inception_resnet_v2", ("inception_resnet_v2",),  299,          75,       55_873_736, 54_336_736,   449,   0.803, 0.953, 26_311_588_032, tf_kernels_files("inception_resnet_v2", "inception_resnet_v2", "e693bd0210a403b3192acc6073ad2e96", "d19885ff4a710c122648d3b5c3b684e4")),
    preprocess_mode="tf",
))
# fmt: on
