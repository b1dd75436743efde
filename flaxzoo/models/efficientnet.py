"""EfficientNet B0-B7 (Tan & Le 2019), as ``keras/src/applications/efficientnet.py``: the input stem
(preprocessing in the model), a strided 3x3 convolution, seven stages of MBConv blocks (1x1 expansion →
depthwise conv → squeeze-and-excite → 1x1 projection, stochastic depth on the residual), a 1x1 convolution
and the classifier. B1-B7 scale B0's widths (``round_filters``: multiples of 8, never 10% down) and depths
(``round_repeats``: ceil).

The stem preprocesses [0, 255] images itself: ``Rescaling(1/255)`` → ``Normalization`` whose mean, variance
and count are weights of the file (the ``constants`` collection) → for ``weights="imagenet"`` only,
``Rescaling(1/sqrt(std))`` per channel: the published files store the ImageNet std as the variance
(tensorflow/tensorflow#49930), and the extra rescaling turns Normalization's ``/sqrt(std)`` into ``/std``.

Padding follows Keras: the stem and every stride-2 depthwise conv are ``ZeroPadding2D(correct_pad(x, k))`` then
'valid', from the *static* size (on a Keras model built for ``(None, None, 3)``: (k//2 - 1, k//2) at every
size, not 'SAME' on odd ones); flaxzoo pads for the actual size (the registry's ``shape_dependent``).

The blocks (:func:`mb_conv_block`, :func:`squeeze_excite`, :func:`residual`, :func:`conv_bn`, :func:`top`) are
EfficientNetV2's too (``models/efficientnet_v2.py``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from flax import linen as nn

from flaxzoo.layers import Activation, Add, AutoNames, BatchNormalization, Conv2D, Dense, DepthwiseConv2D, Dropout
from flaxzoo.layers import GlobalAveragePooling2D, InputLayer, Multiply, Normalization, Rescaling, Reshape, ZeroPadding2D
from flaxzoo.models.common import Application, Family, KerasMessages, correct_pad, pooling_head, preset_table, register_family
from flaxzoo.registry import WeightFile

IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


class Stage(NamedTuple):
    """One stage of blocks, Keras' ``blocks_args`` entry (v1 ``repeats`` / ``filters_in`` / ``filters_out``;
    v2 ``num_repeat`` / ``input_filters`` / ``output_filters``), before width and depth scaling.
    ``conv_type``: 0 MBConv, 1 fused MBConv (v2 only)."""

    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float
    conv_type: int = 0


# Keras' DEFAULT_BLOCKS_ARGS (every id_skip is True)
# fmt: off
DEFAULT_BLOCKS_ARGS = (
    Stage(3, 1, 32, 16, 1, 1, 0.25),
    Stage(3, 2, 16, 24, 6, 2, 0.25),
    Stage(5, 2, 24, 40, 6, 2, 0.25),
    Stage(3, 3, 40, 80, 6, 2, 0.25),
    Stage(5, 3, 80, 112, 6, 1, 0.25),
    Stage(5, 4, 112, 192, 6, 2, 0.25),
    Stage(3, 1, 192, 320, 6, 1, 0.25),
)
# fmt: on


def round_filters(filters, width_coefficient, depth_divisor=8, min_depth=None, *, ten_percent_rule=True) -> int:
    """Keras' width scaling: to a multiple of ``depth_divisor``, at least ``min_depth`` (default the divisor);
    v1 also never rounds more than 10% down (v2 does not have that rule)."""
    filters *= width_coefficient
    new_filters = max(min_depth or depth_divisor, int(filters + depth_divisor / 2) // depth_divisor * depth_divisor)
    if ten_percent_rule and new_filters < 0.9 * filters:
        new_filters += depth_divisor
    return int(new_filters)


def round_repeats(repeats, depth_coefficient) -> int:
    return int(math.ceil(depth_coefficient * repeats))


def block_schedule(stages, depth_coefficient, drop_connect_rate, total, model_name, repeats_argument):
    """Each block in Keras' order: (stage index, index in the stage, name prefix ``block{stage}{letter}_``,
    drop-connect rate ``drop_connect_rate * b / total`` for the b-th block; v1's ``total`` counts the rounded
    repeats, v2's the unrounded ones)."""
    b = 0
    for i, stage in enumerate(stages):
        if stage.repeats <= 0:
            raise ValueError(
                f"The number of repeats in `{model_name}` must be > 0. Received: {repeats_argument}={stage.repeats}"
            )
        for j in range(round_repeats(stage.repeats, depth_coefficient)):
            yield i, j, f"block{i + 1}{chr(j + 97)}_", drop_connect_rate * b / total
            b += 1


def conv_bn(x, filters, kernel_size, train, *, name, strides=1, padding="same", momentum=0.99, activation=None):
    """``{name}_conv`` (no bias) → ``{name}_bn`` [→ ``{name}_activation``]: the stem, expansion, projection and top."""
    x = Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = BatchNormalization(momentum=momentum, name=f"{name}_bn")(x, train)
    if activation is not None:
        x = Activation(activation, name=f"{name}_activation")(x)
    return x


def squeeze_excite(x, filters_se, activation, name):
    """``se_squeeze`` (global average) → ``se_reshape`` (1, 1, C) → ``se_reduce`` (1x1 with bias, ``activation``)
    → ``se_expand`` (1x1 with bias, sigmoid) → ``se_excite``: the feature map times the gate."""
    filters = x.shape[-1]
    se = GlobalAveragePooling2D(name=f"{name}se_squeeze")(x)
    se = Reshape((1, 1, filters), name=f"{name}se_reshape")(se)
    se = Conv2D(filters_se, 1, padding="same", activation=activation, name=f"{name}se_reduce")(se)
    se = Conv2D(filters, 1, padding="same", activation="sigmoid", name=f"{name}se_expand")(se)
    return Multiply(name=f"{name}se_excite")([x, se])


def residual(x, inputs, drop_rate, train, name):
    """[``drop``: stochastic depth, one keep-or-drop per image (Keras' ``Dropout(rate, noise_shape=(None, 1, 1, 1))``),
    only when the rate is > 0, active with ``train=True``] → ``add`` the block's input."""
    if drop_rate > 0:
        x = Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x, train)
    return Add(name=f"{name}add")([x, inputs])


def mb_conv_block(x, train, *, name, stage: Stage, filters_in, strides, drop_rate, activation, momentum=0.99,
                  dwconv="dwconv", same_padding=False):  # fmt: skip
    """The MBConv block, v1's ``block`` and v2's ``MBConvBlock``: [``expand_conv`` 1x1 → BN → act →] [``dwconv_pad``
    →] depthwise ``dwconv`` (v2: ``dwconv2``) → ``bn`` → ``activation`` → squeeze-excite (``max(1, int(filters_in
    * se_ratio))`` channels, from the block's input width) → ``project_conv`` → ``project_bn`` [→ residual].

    Stride 2 is ``correct_pad`` + 'valid' in v1, 'SAME' in v2 (``same_padding``)."""
    inputs = x
    filters = filters_in * stage.expand_ratio
    if stage.expand_ratio != 1:
        x = conv_bn(x, filters, 1, train, name=f"{name}expand", momentum=momentum, activation=activation)
    padding = "same"
    if strides == 2 and not same_padding:
        x = ZeroPadding2D(correct_pad(x, stage.kernel_size), name=f"{name}dwconv_pad")(x)
        padding = "valid"
    x = DepthwiseConv2D(stage.kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}{dwconv}")(x)
    x = BatchNormalization(momentum=momentum, name=f"{name}bn")(x, train)
    x = Activation(activation, name=f"{name}activation")(x)
    if 0 < stage.se_ratio <= 1:
        x = squeeze_excite(x, max(1, int(filters_in * stage.se_ratio)), activation, name)
    x = conv_bn(x, stage.filters_out, 1, train, name=f"{name}project", momentum=momentum)
    if strides == 1 and filters_in == stage.filters_out:
        x = residual(x, inputs, drop_rate, train, name)
    return x


def top(model: Application, x, filters, train, momentum=0.99):
    """``top_conv`` 1x1 → ``top_bn`` → ``top_activation``; then ``avg_pool`` → ``top_dropout`` (rate > 0) →
    ``predictions``, or without the top Keras' ``avg_pool`` / ``max_pool`` pooling."""
    x = conv_bn(x, filters, 1, train, name="top", momentum=momentum, activation=model.activation)
    if model.include_top:
        x = GlobalAveragePooling2D(name="avg_pool")(x)
        if model.dropout_rate > 0:
            x = Dropout(model.dropout_rate, name="top_dropout")(x, train)
        return Dense(model.classes, activation=model.classifier_activation, name="predictions")(x)
    return pooling_head(x, model.pooling, "avg_pool", "max_pool")


class ScaledApplication(Application):
    """The builder arguments v1 and v2 share: width and depth scaling of ``blocks_args``, the top dropout rate,
    the stochastic-depth rate (growing linearly from 0 over the blocks; 0.0 builds no ``drop`` layers).
    ``train=True`` makes both active: pass a 'dropout' rng."""

    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    blocks_args: tuple[Stage, ...] = DEFAULT_BLOCKS_ARGS
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    depth_divisor: int = 8
    activation: str = "swish"


class EfficientNetModule(ScaledApplication):
    """Keras' ``EfficientNet(width_coefficient, depth_coefficient, default_size, dropout_rate,
    drop_connect_rate=0.2, depth_divisor=8, activation="swish", blocks_args="default", ...)``.

    ``weights`` is the constructor's "imagenet" or None: "imagenet" adds the stem's ``Rescaling(1/sqrt(std))``
    (a layer without weights: ``model.clone(weights="imagenet")`` gives it to a model built otherwise)."""

    weights: str | None = None

    def round_filters(self, filters) -> int:
        return round_filters(filters, self.width_coefficient, self.depth_divisor)

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        x = InputLayer(name="input_layer")(x)
        x = Rescaling(1.0 / 255.0, name=auto(Rescaling))(x)
        x = Normalization(axis=3, name=auto(Normalization))(x)
        if self.weights == "imagenet":
            x = Rescaling(self.per_channel([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB]), name=auto(Rescaling))(x)
        x = ZeroPadding2D(correct_pad(x, 3), name="stem_conv_pad")(x)
        x = conv_bn(x, self.round_filters(32), 3, train, name="stem", strides=2, padding="valid", activation=self.activation)

        total = float(sum(round_repeats(stage.repeats, self.depth_coefficient) for stage in self.blocks_args))
        schedule = block_schedule(
            self.blocks_args, self.depth_coefficient, self.drop_connect_rate, total, "EfficientNet", "repeats"
        )
        for i, j, name, drop_rate in schedule:
            stage = self.blocks_args[i]
            stage = stage._replace(filters_in=self.round_filters(stage.filters_in), filters_out=self.round_filters(stage.filters_out))
            x = mb_conv_block(
                x, train, name=name, stage=stage, filters_in=stage.filters_in if j == 0 else stage.filters_out,
                strides=stage.strides if j == 0 else 1, drop_rate=drop_rate, activation=self.activation,
            )  # fmt: skip
        return top(self, x, self.round_filters(1280), train)


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), `imagenet` "
        "(pre-training on ImageNet), or the path to the weights file to be loaded."
    ),
    classes='If using `weights="imagenet"` with `include_top` as true, `classes` should be 1000',
)


def _weight_files(variant: str, md5_top: str, md5_notop: str) -> dict[str, WeightFile]:
    """``https://storage.googleapis.com/keras-applications/efficientnet{b0..b7}[_notop].h5``: not Keras' usual
    ``tensorflow/keras-applications`` bucket path. Keras names the file after the model's ``name`` (a custom
    name asks for a file that does not exist); flaxzoo after the preset, whatever ``name`` is."""
    files = {}
    for kind, suffix, md5 in (("top", "", md5_top), ("notop", "_notop", md5_notop)):
        fname = f"efficientnet{variant}{suffix}.h5"
        files[kind] = WeightFile(fname, f"keras-applications/{fname}", md5)
    return files


FAMILY = Family(
    EfficientNetModule,
    messages=MESSAGES,
    takes_weights=True,
    doc="""
The stem rescales to [0, 1] and normalises with the Normalization's mean and variance, weights of the file
(``variables["constants"]``). As in Keras, ``weights="imagenet"`` alone adds ``Rescaling(1/sqrt([0.229, 0.224,
0.225]))`` after it (the published files store the std as the variance). A local copy of the published file
given as a path (or a checkpoint directory converted from it) gets no such rescaling, in Keras and here, and
gives other outputs. For the "imagenet" model from a local copy, put it in Keras' cache under its published
name (``$KERAS_HOME/models/efficientnetb0.h5``, ``..._notop.h5``; md5-checked) and pass ``weights="imagenet"``,
or add the rescaling, which has no weights, to the model built from the path: ``model.clone(weights="imagenet")``
with the same variables. The weight file is the preset's whatever ``name`` is (Keras asks for ``name + ".h5"``).
``train=True`` activates the blocks' stochastic depth and the top dropout: pass ``rngs={"dropout": key}``.
""",
)  # fmt: skip

# fmt: off
(EfficientNetB0, EfficientNetB1, EfficientNetB2, EfficientNetB3, EfficientNetB4, EfficientNetB5, EfficientNetB6,
 EfficientNetB7) = register_family(FAMILY, *preset_table(
    "keras_name        name              default_size config.width_coefficient config.depth_coefficient config.dropout_rate params      params_notop depth top1   top5   flops           weights",
    ("EfficientNetB0", "efficientnetb0", 224,         1.0,                     1.0,                     0.2,                5_330_571,  4_049_571,   132,  0.771, 0.933, 771_629_504,    _weight_files("b0", "902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d")),
    ("EfficientNetB1", "efficientnetb1", 240,         1.0,                     1.1,                     0.2,                7_856_239,  6_575_239,   186,  0.791, 0.944, 1_373_605_664,  _weight_files("b1", "1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432")),
    ("EfficientNetB2", "efficientnetb2", 260,         1.1,                     1.2,                     0.3,                9_177_569,  7_768_569,   186,  0.801, 0.949, 1_987_123_744,  _weight_files("b2", "b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39")),
    ("EfficientNetB3", "efficientnetb3", 300,         1.2,                     1.4,                     0.3,                12_320_535, 10_783_535,  210,  0.816, 0.957, 3_654_282_784,  _weight_files("b3", "ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226")),
    ("EfficientNetB4", "efficientnetb4", 380,         1.4,                     1.8,                     0.4,                19_466_823, 17_673_823,  258,  0.829, 0.964, 8_787_542_048,  _weight_files("b4", "18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba")),
    ("EfficientNetB5", "efficientnetb5", 456,         1.6,                     2.2,                     0.4,                30_562_527, 28_513_527,  312,  0.836, 0.967, 20_532_769_504, _weight_files("b5", "ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f")),
    ("EfficientNetB6", "efficientnetb6", 528,         1.8,                     2.6,                     0.5,                43_265_143, 40_960_143,  360,  0.840, 0.968, 38_135_187_072, _weight_files("b6", "165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743")),
    ("EfficientNetB7", "efficientnetb7", 600,         2.0,                     3.1,                     0.5,                66_658_687, 64_097_687,  438,  0.843, 0.970, 75_491_768_384, _weight_files("b7", "8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a")),
    keras_modules=("efficientnet",), min_size=32, preprocess_mode=None, shape_dependent=True,
))
# fmt: on
