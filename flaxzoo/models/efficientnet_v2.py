"""EfficientNetV2 B0-B3, S, M, L (Tan & Le 2021), as ``keras/src/applications/efficientnet_v2.py``: optional
preprocessing in the model, a strided 3x3 convolution, stages of fused MBConv blocks (one full kxk convolution
in place of the expansion and depthwise convolutions; no squeeze-excite) then MBConv blocks, a 1x1 convolution
and the classifier. B1-B3 scale B0's widths (``round_filters`` without v1's 10% rule, at least ``min_depth``
8) and depths; S, M and L have their own stage tables.

Unlike v1: every convolution is TF 'SAME', strided ones included (no ``correct_pad``), batch norms have
momentum 0.9, the depthwise convolution is ``dwconv2``, and the stochastic-depth rate of the b-th block is
``0.2 * b / n`` with n the *unrounded* repeat count (Keras' ``survival_probability`` is that drop rate).

Preprocessing (``include_preprocessing=True``): B0-B3 on 3 channels ``Rescaling(1/255)`` →
``Normalization(mean, variance=std²)`` with ImageNet's constants (no weights); S, M, L (and B0-B3 on other
channel counts, as Keras decides) ``Rescaling(1/128, offset=-1)``. Keras picks the kind from the model's
``name``; flaxzoo from the preset, so any ``name`` works (Keras raises KeyError on a custom one).

The blocks are v1's (``models/efficientnet.py``), which this file shares.
"""

from __future__ import annotations

from flax import linen as nn

from flaxzoo.layers import AutoNames, InputLayer, Normalization, Rescaling
from flaxzoo.models.common import HEAD, Family, KerasMessages, preset_table, register_family
from flaxzoo.models.efficientnet import IMAGENET_STDDEV_RGB
from flaxzoo.models.efficientnet import MESSAGES as V1_MESSAGES
from flaxzoo.models.efficientnet import (
    ScaledApplication,
    Stage,
    block_schedule,
    conv_bn,
    mb_conv_block,
    residual,
    round_filters,
    squeeze_excite,
    top,
)
from flaxzoo.registry import keras_weights_file

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)

# Keras' DEFAULT_BLOCKS_ARGS: (kernel, repeats, in, out, expand ratio, stride, se ratio, conv type 1 fused / 0 MBConv);
# a line of fused stages, then a line of MBConv stages
# fmt: off
B_STAGES = (
    Stage(3, 1, 32, 16, 1, 1, 0, 1), Stage(3, 2, 16, 32, 4, 2, 0, 1), Stage(3, 2, 32, 48, 4, 2, 0, 1),
    Stage(3, 3, 48, 96, 4, 2, 0.25, 0), Stage(3, 5, 96, 112, 6, 1, 0.25, 0), Stage(3, 8, 112, 192, 6, 2, 0.25, 0),
)
S_STAGES = (
    Stage(3, 2, 24, 24, 1, 1, 0, 1), Stage(3, 4, 24, 48, 4, 2, 0, 1), Stage(3, 4, 48, 64, 4, 2, 0, 1),
    Stage(3, 6, 64, 128, 4, 2, 0.25, 0), Stage(3, 9, 128, 160, 6, 1, 0.25, 0), Stage(3, 15, 160, 256, 6, 2, 0.25, 0),
)
M_STAGES = (
    Stage(3, 3, 24, 24, 1, 1, 0, 1), Stage(3, 5, 24, 48, 4, 2, 0, 1), Stage(3, 5, 48, 80, 4, 2, 0, 1),
    Stage(3, 7, 80, 160, 4, 2, 0.25, 0), Stage(3, 14, 160, 176, 6, 1, 0.25, 0), Stage(3, 18, 176, 304, 6, 2, 0.25, 0),
    Stage(3, 5, 304, 512, 6, 1, 0.25, 0),
)
L_STAGES = (
    Stage(3, 4, 32, 32, 1, 1, 0, 1), Stage(3, 7, 32, 64, 4, 2, 0, 1), Stage(3, 7, 64, 96, 4, 2, 0, 1),
    Stage(3, 10, 96, 192, 4, 2, 0.25, 0), Stage(3, 19, 192, 224, 6, 1, 0.25, 0), Stage(3, 25, 224, 384, 6, 2, 0.25, 0),
    Stage(3, 7, 384, 640, 6, 1, 0.25, 0),
)
# fmt: on


def fused_mb_conv_block(x, train, *, name, stage: Stage, filters_in, strides, drop_rate, activation, momentum):
    """``FusedMBConvBlock``: expand ratio ≠ 1: ``expand_conv`` kxk (stride) → BN → act [→ squeeze-excite] →
    ``project_conv`` 1x1 → ``project_bn``; ratio 1: ``project_conv`` kxk (stride) → ``project_bn`` →
    ``project_activation``. Then the residual where stride is 1 and the width unchanged."""
    inputs = x
    fused = stage.expand_ratio != 1
    if fused:
        x = conv_bn(x, filters_in * stage.expand_ratio, stage.kernel_size, train, name=f"{name}expand",
                    strides=strides, momentum=momentum, activation=activation)  # fmt: skip
    if 0 < stage.se_ratio <= 1:
        x = squeeze_excite(x, max(1, int(filters_in * stage.se_ratio)), activation, name)
    x = conv_bn(x, stage.filters_out, 1 if fused else stage.kernel_size, train, name=f"{name}project",
                strides=1 if fused else strides, momentum=momentum, activation=None if fused else activation)  # fmt: skip
    if strides == 1 and filters_in == stage.filters_out:
        x = residual(x, inputs, drop_rate, train, name)
    return x


class EfficientNetV2Module(ScaledApplication):
    """Keras' ``EfficientNetV2(width_coefficient, depth_coefficient, default_size, dropout_rate=0.2,
    drop_connect_rate=0.2, depth_divisor=8, min_depth=8, bn_momentum=0.9, activation="swish", blocks_args, ...,
    include_preprocessing=True)``; ``imagenet_normalization`` is the B variants' preprocessing (Keras: a name
    ending in ``-b...``)."""

    blocks_args: tuple[Stage, ...] = B_STAGES
    imagenet_normalization: bool = True
    min_depth: int = 8
    bn_momentum: float = 0.9
    include_preprocessing: bool = True

    def round_filters(self, filters) -> int:
        return round_filters(filters, self.width_coefficient, self.depth_divisor, self.min_depth, ten_percent_rule=False)

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        x = InputLayer(name="input_layer")(x)
        if self.include_preprocessing:
            if self.imagenet_normalization and self.rgb_input:
                x = Rescaling(1.0 / 255, name=auto(Rescaling))(x)
                mean, variance = self.per_channel(IMAGENET_MEAN_RGB), self.per_channel([s**2 for s in IMAGENET_STDDEV_RGB])
                x = Normalization(axis=3, mean=mean, variance=variance, name=auto(Normalization))(x)
            else:
                x = Rescaling(1.0 / 128.0, offset=-1, name=auto(Rescaling))(x)
        momentum, activation = self.bn_momentum, self.activation
        stem_filters = self.round_filters(self.blocks_args[0].filters_in)
        x = conv_bn(x, stem_filters, 3, train, name="stem", strides=2, momentum=momentum, activation=activation)

        total = float(sum(stage.repeats for stage in self.blocks_args))
        schedule = block_schedule(
            self.blocks_args, self.depth_coefficient, self.drop_connect_rate, total, "EfficientNetV2", "num_repeat"
        )
        for i, j, name, drop_rate in schedule:
            stage = self.blocks_args[i]
            stage = stage._replace(filters_in=self.round_filters(stage.filters_in), filters_out=self.round_filters(stage.filters_out))
            kwargs = dict(name=name, stage=stage, filters_in=stage.filters_in if j == 0 else stage.filters_out,
                          strides=stage.strides if j == 0 else 1, drop_rate=drop_rate, activation=activation,
                          momentum=momentum)  # fmt: skip
            if stage.conv_type == 1:
                x = fused_mb_conv_block(x, train, **kwargs)
            else:
                x = mb_conv_block(x, train, dwconv="dwconv2", same_padding=True, **kwargs)
        return top(self, x, self.round_filters(1280), train, momentum)


MESSAGES = KerasMessages(weights=V1_MESSAGES.weights + "Received: weights={weights}", classes=V1_MESSAGES.classes)


def _weight_files(variant: str, md5_top: str, md5_notop: str) -> dict:
    """``tensorflow/keras-applications/efficientnet_v2/efficientnetv2-{variant}[_notop].h5``: the preset's file,
    whatever ``name`` is (Keras builds it from ``name``)."""
    return {
        "top": keras_weights_file(f"efficientnetv2-{variant}.h5", "efficientnet_v2", md5_top),
        "notop": keras_weights_file(f"efficientnetv2-{variant}_notop.h5", "efficientnet_v2", md5_notop),
    }


FAMILY = Family(
    EfficientNetV2Module,
    arguments=(*HEAD[:-1], "include_preprocessing", "name"),
    defaults=dict(include_preprocessing=True),
    architecture=("include_preprocessing",),
    messages=MESSAGES,
    doc="""
The preprocessing: B0-B3 rescale to [0, 1] and normalise with ImageNet's mean and std (constants), S, M and L
rescale to [-1, 1) (``x / 128 - 1``). ``include_preprocessing=False`` leaves it out: the inputs are then the
preprocessed values (B0-B3: ImageNet-normalised, not [-1, 1] as Keras' docstring says). Any ``name`` is
accepted (Keras raises KeyError on a name that is not its default); the weight file is the preset's.
``train=True`` activates the blocks' stochastic depth and the top dropout: pass ``rngs={"dropout": key}``.
""",
)  # fmt: skip

# fmt: off
(EfficientNetV2B0, EfficientNetV2B1, EfficientNetV2B2, EfficientNetV2B3, EfficientNetV2S, EfficientNetV2M,
 EfficientNetV2L) = register_family(FAMILY, *preset_table(
    "keras_name          name                 default_name         default_size config.width_coefficient config.depth_coefficient config.blocks_args config.imagenet_normalization params       params_notop depth top1   top5   flops            weights",
    ("EfficientNetV2B0", "efficientnet_v2b0", "efficientnetv2-b0", 224,         1.0,                     1.0,                     B_STAGES,          True,                         7_200_312,   5_919_312,   151,  0.787, 0.943, 1_436_172_352,   _weight_files("b0", "21ecbf6da12460d5c40bb2f29ceb2188", "893217f2bb855e2983157299931e43ff")),
    ("EfficientNetV2B1", "efficientnet_v2b1", "efficientnetv2-b1", 240,         1.0,                     1.1,                     B_STAGES,          True,                         8_212_124,   6_931_124,   185,  0.798, 0.950, 2_393_638_720,   _weight_files("b1", "069f0534ff22adf035c89e2d9547a9dc", "0e80663031ca32d657f9caa404b6ec37")),
    ("EfficientNetV2B2", "efficientnet_v2b2", "efficientnetv2-b2", 260,         1.1,                     1.2,                     B_STAGES,          True,                         10_178_374,  8_769_374,   193,  0.805, 0.951, 3_395_085_664,   _weight_files("b2", "424e49f28180edbde1e94797771950a7", "1dfe2e7a5d45b6632553a8961ea609eb")),
    ("EfficientNetV2B3", "efficientnet_v2b3", "efficientnetv2-b3", 300,         1.2,                     1.4,                     B_STAGES,          True,                         14_467_622,  12_930_622,  225,  0.820, 0.958, 6_022_917_632,   _weight_files("b3", "1f1fc43bd98a6e4fd8fdfd551e02c7a0", "f6abf7b5849ac99a89b50dd3fd532856")),
    ("EfficientNetV2S",  "efficientnet_v2s",  "efficientnetv2-s",  384,         1.0,                     1.0,                     S_STAGES,          False,                        21_612_360,  20_331_360,  281,  0.839, 0.967, 16_731_234_304,  _weight_files("s", "e1d88a8495beba45748fedd0cecbe016", "af0682fb74e8c54910f2d4393339c070")),
    ("EfficientNetV2M",  "efficientnet_v2m",  "efficientnetv2-m",  480,         1.0,                     1.0,                     M_STAGES,          False,                        54_431_388,  53_150_388,  403,  0.853, 0.974, 49_164_920_768,  _weight_files("m", "a3bf6aa3276309f4fc6a34aa114c95cd", "1b8dc055df72dde80d614482840fe342")),
    ("EfficientNetV2L",  "efficientnet_v2l",  "efficientnetv2-l",  480,         1.0,                     1.0,                     L_STAGES,          False,                        119_027_848, 117_746_848, 557,  0.857, 0.975, 112_159_398_016, _weight_files("l", "27e6d408b53c7ebc868fefa357689935", "b0b66b5c863aef5b46e8608fe1711615")),
    keras_modules=("efficientnet_v2",), min_size=32, preprocess_mode=None,
))
# fmt: on
