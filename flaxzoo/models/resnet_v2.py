"""ResNet v2 (He et al. 2016, "Identity Mappings in Deep Residual Networks"), as
``keras/src/applications/resnet_v2.py``: Keras' ``resnet.ResNet(stack_fn, preact=True, use_bias=True)`` with
``stack_residual_blocks_v2``.

The stem and head are v1's (``models/resnet.py``'s ``ResNetModule``, ``preact = True``): no batch norm or ReLU
after ``conv1_conv``, and ``post_bn`` → ``post_relu`` before the head. The pre-activation bottleneck differs from
v1's: batch norm and ReLU come first (``{name}_preact_bn``), the stride sits on the 3x3 convolution of the *last*
block of a stage (conv5 has none), the 1x1 and 3x3 convolutions have no bias, and a strided identity shortcut is an
unnamed ``MaxPooling2D(1, strides)`` of the raw input (Keras names it ``max_pooling2d``, ``max_pooling2d_1``, ...).
ResNet50V2, ResNet101V2 and ResNet152V2 differ only in the number of blocks per stage.
"""

from __future__ import annotations

from flax import linen as nn

from flaxzoo.layers import Activation, Add, AutoNames, Conv2D, MaxPooling2D, ZeroPadding2D
from flaxzoo.models.common import Family, preset_table, register_family
from flaxzoo.models.resnet import BatchNorm, ResNetModule
from flaxzoo.registry import tf_kernels_files


def residual_block_v2(x, filters, kernel_size=3, stride=1, conv_shortcut=False, *, name, train, auto):
    """BN → ReLU (the pre-activation) → 1x1 → BN → ReLU → pad → 3x3 (stride) → BN → ReLU → 1x1 (4·filters, bias),
    added to a 1x1-conv shortcut of the pre-activation, or to the raw input (max-pooled 1x1 when strided)."""
    preact = BatchNorm(name=f"{name}_preact_bn")(x, train)
    preact = Activation("relu", name=f"{name}_preact_relu")(preact)
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(preact)
    else:
        shortcut = MaxPooling2D(1, strides=stride, name=auto(MaxPooling2D))(x) if stride > 1 else x
    x = Conv2D(filters, 1, strides=1, use_bias=False, name=f"{name}_1_conv")(preact)
    x = BatchNorm(name=f"{name}_1_bn")(x, train)
    x = Activation("relu", name=f"{name}_1_relu")(x)
    x = ZeroPadding2D(((1, 1), (1, 1)), name=f"{name}_2_pad")(x)
    x = Conv2D(filters, kernel_size, strides=stride, use_bias=False, name=f"{name}_2_conv")(x)
    x = BatchNorm(name=f"{name}_2_bn")(x, train)
    x = Activation("relu", name=f"{name}_2_relu")(x)
    x = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    return Add(name=f"{name}_out")([shortcut, x])


def stack_residual_blocks_v2(x, filters, blocks, stride1=2, *, name, train, auto):
    """Block 1 with the conv shortcut, blocks 2..n-1 plain, block n strided by ``stride1``."""
    x = residual_block_v2(x, filters, conv_shortcut=True, name=f"{name}_block1", train=train, auto=auto)
    for i in range(2, blocks):
        x = residual_block_v2(x, filters, name=f"{name}_block{i}", train=train, auto=auto)
    return residual_block_v2(x, filters, stride=stride1, name=f"{name}_block{blocks}", train=train, auto=auto)


class ResNetV2Module(ResNetModule):
    """Keras' ``ResNet(stack_fn, preact=True, use_bias=True)``; ``blocks`` per stage (conv2..conv5)."""

    preact = True

    @nn.nowrap
    def feature_layers(self, graph):
        # Pre-activation: a stage's output is normalised and activated by the next block's preact layers; the
        # stride sits in a stage's last block, so its preact_relu is the stage's last activation at full size.
        last = [f"conv{stage}_block{blocks}_preact_relu" for stage, blocks in zip((2, 3, 4), self.blocks)]
        return ("conv1_conv", *last, "post_relu")

    def stack(self, x, train: bool):
        auto = AutoNames()  # the strided identity shortcuts, the model's only unnamed layers
        for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), self.blocks), start=2):
            stride = 1 if stage == 5 else 2
            x = stack_residual_blocks_v2(
                x, filters, blocks, stride1=stride, name=f"conv{stage}", train=train, auto=auto
            )
        return x


# fmt: off
ResNet50V2, ResNet101V2, ResNet152V2 = register_family(Family(ResNetV2Module), *preset_table(
    "keras_name     name            default_name   config.blocks  params      params_notop  depth  top1   top5   flops           weights",
    ("ResNet50V2",  "resnet50_v2",  "resnet50v2",  (3, 4, 6, 3),  25_613_800, 23_564_800,   103,   0.760, 0.930, 6_964_510_720,  tf_kernels_files("resnet50v2", "resnet", "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917")),
    ("ResNet101V2", "resnet101_v2", "resnet101v2", (3, 4, 23, 3), 44_675_560, 42_626_560,   205,   0.772, 0.938, 14_388_953_088, tf_kernels_files("resnet101v2", "resnet", "6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5")),
    ("ResNet152V2", "resnet152_v2", "resnet152v2", (3, 8, 36, 3), 60_380_648, 58_331_648,   307,   0.780, 0.942, 21_813_395_456, tf_kernels_files("resnet152v2", "resnet", "a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33")),
    keras_modules=("resnet_v2",), default_size=224, min_size=32, preprocess_mode="tf",
))
# fmt: on
