"""Inception v3 (Szegedy et al. 2015), as ``keras/src/applications/inception_v3.py``: a conv stem, three
35x35 modules, a grid reduction, four 17x17 modules with factorised 7x7 convolutions, a second grid
reduction and two 8x8 modules with expanded filter banks.

Every convolution is Keras' ``conv2d_bn``: Conv (no bias) → BatchNorm (no gamma) → relu, and Keras builds
all of them without names, so nearly every layer carries a Keras auto name (``conv2d_17``,
``batch_normalization_17``, ``activation_17``, ``average_pooling2d_3``, ...). Those names depend on the
order in which Keras creates the layers, which the functions below follow call for call.
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
    InputLayer,
    MaxPooling2D,
)
from flaxzoo.models.common import Application, Family, KerasMessages, classifier_head, preset_table, register_family
from flaxzoo.registry import tf_kernels_files

BatchNorm = partial(BatchNormalization, scale=False)  # epsilon 1e-3, momentum 0.99: Keras' defaults


def conv2d_bn(x, filters, num_row, num_col, auto, train, padding="same", strides=1):
    """Conv ``num_row``x``num_col`` (no bias) → BN (no gamma) → relu, all three auto-named."""
    x = Conv2D(filters, (num_row, num_col), strides=strides, padding=padding, use_bias=False, name=auto(Conv2D))(x)
    x = BatchNorm(name=auto(BatchNormalization))(x, train)
    return Activation("relu", name=auto(Activation))(x)


def avg_pool_branch(x, filters, auto, train):
    """3x3/1 'same' average pooling (padding excluded from the mean) → 1x1 conv2d_bn."""
    x = AveragePooling2D(3, strides=1, padding="same", name=auto(AveragePooling2D))(x)
    return conv2d_bn(x, filters, 1, 1, auto, train)


def mixed_35x35(x, pool_filters, name, auto, train):
    """mixed0-2 (the paper's figure 5): 1x1 | 1x1 → 5x5 | 1x1 → 3x3 → 3x3 | avg pool → 1x1."""
    branch1x1 = conv2d_bn(x, 64, 1, 1, auto, train)

    branch5x5 = conv2d_bn(x, 48, 1, 1, auto, train)
    branch5x5 = conv2d_bn(branch5x5, 64, 5, 5, auto, train)

    branch3x3dbl = conv2d_bn(x, 64, 1, 1, auto, train)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3, auto, train)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3, auto, train)

    branch_pool = avg_pool_branch(x, pool_filters, auto, train)
    return Concatenate(name=name)([branch1x1, branch5x5, branch3x3dbl, branch_pool])


def mixed3_reduction(x, auto, train):
    """mixed3, 35x35 → 17x17: 3x3/2 | 1x1 → 3x3 → 3x3/2 | 3x3/2 max pool."""
    branch3x3 = conv2d_bn(x, 384, 3, 3, auto, train, strides=2, padding="valid")

    branch3x3dbl = conv2d_bn(x, 64, 1, 1, auto, train)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3, auto, train)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3, auto, train, strides=2, padding="valid")

    branch_pool = MaxPooling2D(3, strides=2, name=auto(MaxPooling2D))(x)
    return Concatenate(name="mixed3")([branch3x3, branch3x3dbl, branch_pool])


def mixed_17x17(x, c, name, auto, train):
    """mixed4-7 (figure 6, 7x7 factorised into 1x7 and 7x1; ``c`` inner channels):
    1x1 | 1x1 → 1x7 → 7x1 | 1x1 → 7x1 → 1x7 → 7x1 → 1x7 | avg pool → 1x1."""
    branch1x1 = conv2d_bn(x, 192, 1, 1, auto, train)

    branch7x7 = conv2d_bn(x, c, 1, 1, auto, train)
    branch7x7 = conv2d_bn(branch7x7, c, 1, 7, auto, train)
    branch7x7 = conv2d_bn(branch7x7, 192, 7, 1, auto, train)

    branch7x7dbl = conv2d_bn(x, c, 1, 1, auto, train)
    branch7x7dbl = conv2d_bn(branch7x7dbl, c, 7, 1, auto, train)
    branch7x7dbl = conv2d_bn(branch7x7dbl, c, 1, 7, auto, train)
    branch7x7dbl = conv2d_bn(branch7x7dbl, c, 7, 1, auto, train)
    branch7x7dbl = conv2d_bn(branch7x7dbl, 192, 1, 7, auto, train)

    branch_pool = avg_pool_branch(x, 192, auto, train)
    return Concatenate(name=name)([branch1x1, branch7x7, branch7x7dbl, branch_pool])


def mixed8_reduction(x, auto, train):
    """mixed8, 17x17 → 8x8: 1x1 → 3x3/2 | 1x1 → 1x7 → 7x1 → 3x3/2 | 3x3/2 max pool."""
    branch3x3 = conv2d_bn(x, 192, 1, 1, auto, train)
    branch3x3 = conv2d_bn(branch3x3, 320, 3, 3, auto, train, strides=2, padding="valid")

    branch7x7x3 = conv2d_bn(x, 192, 1, 1, auto, train)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 1, 7, auto, train)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 7, 1, auto, train)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 3, 3, auto, train, strides=2, padding="valid")

    branch_pool = MaxPooling2D(3, strides=2, name=auto(MaxPooling2D))(x)
    return Concatenate(name="mixed8")([branch3x3, branch7x7x3, branch_pool])


def mixed_8x8(x, i, auto, train):
    """mixed9 (i=0) and mixed10 (i=1) (figure 7, the 3x3s split into parallel 1x3 and 3x1):
    1x1 | 1x1 → [1x3, 3x1] | 1x1 → 3x3 → [1x3, 3x1] | avg pool → 1x1.

    Keras names the first inner concatenation ``mixed9_{i}`` (so mixed10's is ``mixed9_1``) and leaves the
    second unnamed (``concatenate``, ``concatenate_1``).
    """
    branch1x1 = conv2d_bn(x, 320, 1, 1, auto, train)

    branch3x3 = conv2d_bn(x, 384, 1, 1, auto, train)
    branch3x3_1 = conv2d_bn(branch3x3, 384, 1, 3, auto, train)
    branch3x3_2 = conv2d_bn(branch3x3, 384, 3, 1, auto, train)
    branch3x3 = Concatenate(name=f"mixed9_{i}")([branch3x3_1, branch3x3_2])

    branch3x3dbl = conv2d_bn(x, 448, 1, 1, auto, train)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 384, 3, 3, auto, train)
    branch3x3dbl_1 = conv2d_bn(branch3x3dbl, 384, 1, 3, auto, train)
    branch3x3dbl_2 = conv2d_bn(branch3x3dbl, 384, 3, 1, auto, train)
    branch3x3dbl = Concatenate(name=auto(Concatenate))([branch3x3dbl_1, branch3x3dbl_2])

    branch_pool = avg_pool_branch(x, 192, auto, train)
    return Concatenate(name=f"mixed{9 + i}")([branch1x1, branch3x3, branch3x3dbl, branch_pool])


class InceptionV3Module(Application):

    # Conv2d_2b, Conv2d_4a, then the last mixed block at each stride (Keras orders branches' layers after them)
    stage_ends: ClassVar[tuple[str, ...]] = ("activation_2", "activation_4", "mixed2", "mixed7", "mixed10")

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        x = InputLayer(name="input_layer")(x)
        x = conv2d_bn(x, 32, 3, 3, auto, train, strides=2, padding="valid")
        x = conv2d_bn(x, 32, 3, 3, auto, train, padding="valid")
        x = conv2d_bn(x, 64, 3, 3, auto, train)
        x = MaxPooling2D(3, strides=2, name=auto(MaxPooling2D))(x)
        x = conv2d_bn(x, 80, 1, 1, auto, train, padding="valid")
        x = conv2d_bn(x, 192, 3, 3, auto, train, padding="valid")
        x = MaxPooling2D(3, strides=2, name=auto(MaxPooling2D))(x)

        for i, pool_filters in enumerate((32, 64, 64)):  # 35x35x256, 288, 288
            x = mixed_35x35(x, pool_filters, f"mixed{i}", auto, train)
        x = mixed3_reduction(x, auto, train)  # 17x17x768
        for i, c in enumerate((128, 160, 160, 192), start=4):  # 17x17x768
            x = mixed_17x17(x, c, f"mixed{i}", auto, train)
        x = mixed8_reduction(x, auto, train)  # 8x8x1280
        for i in range(2):  # 8x8x2048
            x = mixed_8x8(x, i, auto, train)

        return classifier_head(self, x)


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), `imagenet` "
        "(pre-training on ImageNet), or the path to the weights file to be loaded; "
        "Received: weights={weights}"
    ),
    classes=(
        'If using `weights="imagenet"` with `include_top=True`, `classes` should be 1000. Received classes={classes}'
    ),
)


# fmt: off
(InceptionV3,) = register_family(Family(InceptionV3Module, messages=MESSAGES), *preset_table(
    "keras_name     name            keras_modules      default_size  min_size  params      params_notop  depth  top1   top5   flops           weights",
    ("InceptionV3", "inception_v3", ("inception_v3",),  299,          75,       23_851_784, 21_802_784,   189,   0.779, 0.937, 11_426_432_192, tf_kernels_files("inception_v3", "inception_v3", "9a0d58056eeedaa3f26cb7ebd46da564", "bcbd6486424b2319ff4ef7d526e38f63")),
    preprocess_mode="tf",
))
# fmt: on
