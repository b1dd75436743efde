"""DenseNet (Huang et al. 2017), as ``keras/src/applications/densenet.py``: four dense blocks of
pre-activation bottlenecks (BN-ReLU-1x1 conv 128, BN-ReLU-3x3 conv 32) whose outputs are concatenated
to their inputs, separated by halving transitions (BN-ReLU-1x1 conv, 2x2 average pool). DenseNet121,
169 and 201 differ only in the number of bottlenecks per dense block."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
    ZeroPadding2D,
)
from flaxzoo.models.common import (
    DENSENET_NASNET_MESSAGES,
    Application,
    Family,
    build_application,
    classifier_head,
    preset_table,
    register_family,
)
from flaxzoo.registry import tf_kernels_files

BatchNorm = partial(BatchNormalization, epsilon=1.001e-5)

GROWTH_RATE = 32
REDUCTION = 0.5  # transition compression

# Bottlenecks per dense block of each registered DenseNet: the one thing that differs between them.
BLOCKS = {
    "densenet121": (6, 12, 24, 16),
    "densenet169": (6, 12, 32, 32),
    "densenet201": (6, 12, 48, 32),
}


def dense_block(x, blocks, *, name, train):
    """``blocks`` bottlenecks ``{name}_block{i}``, each adding ``GROWTH_RATE`` channels."""
    for i in range(1, blocks + 1):
        x = conv_block(x, GROWTH_RATE, name=f"{name}_block{i}", train=train)
    return x


def transition_block(x, reduction, *, name, train):
    """BN → ReLU → 1x1 conv to ``int(C · reduction)`` channels → 2x2/2 'valid' average pool."""
    x = BatchNorm(name=f"{name}_bn")(x, train)
    x = Activation("relu", name=f"{name}_relu")(x)
    x = Conv2D(int(x.shape[-1] * reduction), 1, use_bias=False, name=f"{name}_conv")(x)
    return AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def conv_block(x, growth_rate, *, name, train):
    """A pre-activation bottleneck whose ``growth_rate`` new channels are concatenated after its input."""
    x1 = BatchNorm(name=f"{name}_0_bn")(x, train)
    x1 = Activation("relu", name=f"{name}_0_relu")(x1)
    x1 = Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(x1)
    x1 = BatchNorm(name=f"{name}_1_bn")(x1, train)
    x1 = Activation("relu", name=f"{name}_1_relu")(x1)
    x1 = Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(x1)
    return Concatenate(name=f"{name}_concat")([x, x1])


class DenseNetModule(Application):
    """Keras' ``DenseNet(blocks)``: ``blocks`` bottlenecks per dense block (conv2..conv5)."""

    blocks: tuple[int, ...] = (6, 12, 24, 16)

    # a dense block's output, normalised and activated by its transition (before the transition's conv)
    stage_ends: ClassVar[tuple[str, ...]] = ("conv1_relu", "pool2_relu", "pool3_relu", "pool4_relu", "relu")

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        x = InputLayer(name="input_layer")(x)
        x = ZeroPadding2D(((3, 3), (3, 3)), name=auto(ZeroPadding2D))(x)
        x = Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
        x = BatchNorm(name="conv1_bn")(x, train)
        x = Activation("relu", name="conv1_relu")(x)
        x = ZeroPadding2D(((1, 1), (1, 1)), name=auto(ZeroPadding2D))(x)
        x = MaxPooling2D(3, strides=2, name="pool1")(x)

        last = len(self.blocks) + 1
        for stage, blocks in enumerate(self.blocks, start=2):
            x = dense_block(x, blocks, name=f"conv{stage}", train=train)
            if stage < last:
                x = transition_block(x, REDUCTION, name=f"pool{stage}", train=train)

        x = BatchNorm(name="bn")(x, train)
        x = Activation("relu", name="relu")(x)

        return classifier_head(self, x, notop_names=("avg_pool", "max_pool"))


FAMILY = Family(DenseNetModule, messages=DENSENET_NASNET_MESSAGES)
# fmt: off
DenseNet121, DenseNet169, DenseNet201 = register_family(FAMILY, *preset_table(
    "keras_name    name           config.blocks          params      params_notop  depth  top1   top5   flops          weights",
    ("DenseNet121", "densenet121", BLOCKS["densenet121"],  8_062_504,  7_037_504,    242,   0.750, 0.923, 5_668_323_328, tf_kernels_files("densenet121", "densenet", "9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738")),
    ("DenseNet169", "densenet169", BLOCKS["densenet169"],  14_307_880, 12_642_880,   338,   0.762, 0.932, 6_719_686_656, tf_kernels_files("densenet169", "densenet", "d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b")),
    ("DenseNet201", "densenet201", BLOCKS["densenet201"],  20_242_984, 18_321_984,   402,   0.773, 0.936, 8_582_731_776, tf_kernels_files("densenet201", "densenet", "1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1")),
    keras_modules=("densenet",), default_size=224, min_size=32, preprocess_mode="torch",
))
# fmt: on


def _undefined_weights(spec, arguments, shape):
    raise ValueError("weights_path undefined")  # Keras raises it once the model is built


def DenseNet(
    blocks: Sequence[int],
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="densenet",
    *,
    seed: int = 0,
):
    """Keras' generic (unexported) ``DenseNet(blocks, ...)``; returns ``(model, variables)``.

    ImageNet weights exist for the blocks of DenseNet121, 169 and 201 only; any other ``blocks`` with
    ``weights="imagenet"`` raises Keras' "weights_path undefined". Unlike Keras, which compares with
    lists, ``blocks`` may be any sequence.
    """
    blocks = tuple(blocks)
    preset = next((c.spec for c in (DenseNet121, DenseNet169, DenseNet201) if c.spec.config["blocks"] == blocks), None)
    # A custom depth borrows DenseNet121's sizes (224, at least 32): they are the same for every DenseNet.
    spec = preset or dataclasses.replace(
        DenseNet121.spec, name="densenet", keras_name="DenseNet", weights={},
        config={"blocks": blocks}, family=dataclasses.replace(FAMILY, variant=_undefined_weights),
    )  # fmt: skip
    arguments = {k: v for k, v in locals().items() if k in spec.family.arguments}
    return build_application(spec, arguments, seed=seed)
