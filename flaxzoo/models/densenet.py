"""DenseNet (Huang et al. 2017), as ``keras/src/applications/densenet.py``: four dense blocks of
pre-activation bottlenecks (BN-ReLU-1x1 conv 128, BN-ReLU-3x3 conv 32) whose outputs are concatenated
to their inputs, separated by halving transitions (BN-ReLU-1x1 conv, 2x2 average pool). DenseNet121,
169 and 201 differ only in the number of bottlenecks per dense block."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    AutoNames,
    AveragePooling2D,
    BatchNormalization,
    Concatenate,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    InputLayer,
    MaxPooling2D,
    ZeroPadding2D,
)
from flaxzoo.models.common import Application, KerasMessages, build_application, pooling_head
from flaxzoo.registry import get_spec, keras_weights_file, register_model

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

        if self.include_top:
            x = GlobalAveragePooling2D(name="avg_pool")(x)
            return Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
        return pooling_head(x, self.pooling, avg_name="avg_pool", max_name="max_pool")


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), `imagenet` "
        "(pre-training on ImageNet), or the path to the weights file to be loaded."
    ),
    classes='If using `weights` as `"imagenet"` with `include_top` as true, `classes` should be 1000',
)


def DenseNet(
    blocks: Sequence[int],
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "densenet",
    *,
    seed: int = 0,
):
    """Keras' generic (unexported) ``DenseNet(blocks, ...)``; returns ``(model, variables)``.

    ImageNet weights exist for the blocks of DenseNet121, 169 and 201 only; any other ``blocks`` with
    ``weights="imagenet"`` raises Keras' "weights_path undefined". Unlike Keras, which compares with
    lists, ``blocks`` may be any sequence.
    """
    blocks = tuple(blocks)
    preset = next((get_spec(n) for n, b in BLOCKS.items() if b == blocks), None)

    def make_module(**kwargs):
        if weights == "imagenet" and preset is None:  # Keras raises after building the model
            raise ValueError("weights_path undefined")
        return DenseNetModule(blocks=blocks, **kwargs)

    # A custom depth borrows DenseNet121's sizes (224, at least 32): they are the same for every DenseNet.
    spec = preset or dataclasses.replace(DenseNet121.spec, name="densenet", keras_name="DenseNet", weights={})
    return build_application(
        spec,
        make_module,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
        seed=seed,
        messages=MESSAGES,
    )


def _weights(depth: int, md5_top: str, md5_notop: str):
    stem = f"densenet{depth}_weights_tf_dim_ordering_tf_kernels"
    return {
        "top": keras_weights_file(f"{stem}.h5", "densenet", md5_top),
        "notop": keras_weights_file(f"{stem}_notop.h5", "densenet", md5_notop),
    }


_COMMON = dict(module="flaxzoo.densenet", default_size=224, min_size=32, preprocess_mode="torch")

_DOC = """Instantiates {keras_name} (keras.applications.{keras_name}); returns ``(model, variables)``.

    ``weights``: None (random, from ``seed``), "imagenet", a Keras ``.h5`` path or a flaxzoo checkpoint directory.
    Inputs are ``preprocess_input``-ed NHWC float images (torch mode: [0, 1], then ImageNet mean/std per
    RGB channel), at least 32x32; the top model takes 224x224.
    """


@register_model(
    name="densenet121",
    params=8_062_504,
    params_notop=7_037_504,
    depth=242,
    top1=0.750,
    top5=0.923,
    flops=5_668_323_328,
    weights=_weights(121, "9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738"),
    **_COMMON,
)
def DenseNet121(
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "densenet121",
    *,
    seed: int = 0,
):
    return DenseNet(
        BLOCKS["densenet121"],
        include_top,
        weights,
        input_tensor,
        input_shape,
        pooling,
        classes,
        classifier_activation,
        name=name,
        seed=seed,
    )


@register_model(
    name="densenet169",
    params=14_307_880,
    params_notop=12_642_880,
    depth=338,
    top1=0.762,
    top5=0.932,
    flops=6_719_686_656,
    weights=_weights(169, "d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b"),
    **_COMMON,
)
def DenseNet169(
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "densenet169",
    *,
    seed: int = 0,
):
    return DenseNet(
        BLOCKS["densenet169"],
        include_top,
        weights,
        input_tensor,
        input_shape,
        pooling,
        classes,
        classifier_activation,
        name=name,
        seed=seed,
    )


@register_model(
    name="densenet201",
    params=20_242_984,
    params_notop=18_321_984,
    depth=402,
    top1=0.773,
    top5=0.936,
    flops=8_582_731_776,
    weights=_weights(201, "1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1"),
    **_COMMON,
)
def DenseNet201(
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "densenet201",
    *,
    seed: int = 0,
):
    return DenseNet(
        BLOCKS["densenet201"],
        include_top,
        weights,
        input_tensor,
        input_shape,
        pooling,
        classes,
        classifier_activation,
        name=name,
        seed=seed,
    )


for _constructor in (DenseNet121, DenseNet169, DenseNet201):
    _constructor.__doc__ = _DOC.format(keras_name=_constructor.__name__)
