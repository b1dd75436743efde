"""ResNet v1 (He et al. 2015), as ``keras/src/applications/resnet.py``: Caffe-style bottlenecks with the
stride on the first 1x1 convolution, biases on every convolution, batch-norm epsilon 1.001e-5."""

from __future__ import annotations

from functools import partial
from typing import Any

from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    InputLayer,
    MaxPooling2D,
    ZeroPadding2D,
)
from flaxzoo.models.common import Application, build_application, pooling_head
from flaxzoo.registry import keras_weights_file, register_model

BatchNorm = partial(BatchNormalization, epsilon=1.001e-5)


def residual_block_v1(x, filters, stride=1, conv_shortcut=True, *, name, train):
    """A bottleneck: 1x1 (stride) → 3x3 → 1x1 (4·filters), added to an identity or 1x1-conv shortcut."""
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = BatchNorm(name=f"{name}_0_bn")(shortcut, train)
    else:
        shortcut = x
    x = Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = BatchNorm(name=f"{name}_1_bn")(x, train)
    x = Activation("relu", name=f"{name}_1_relu")(x)
    x = Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = BatchNorm(name=f"{name}_2_bn")(x, train)
    x = Activation("relu", name=f"{name}_2_relu")(x)
    x = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = BatchNorm(name=f"{name}_3_bn")(x, train)
    x = Add(name=f"{name}_add")([shortcut, x])
    return Activation("relu", name=f"{name}_out")(x)


def stack_residual_blocks_v1(x, filters, blocks, stride1=2, *, name, train):
    x = residual_block_v1(x, filters, stride=stride1, name=f"{name}_block1", train=train)
    for i in range(2, blocks + 1):
        x = residual_block_v1(x, filters, conv_shortcut=False, name=f"{name}_block{i}", train=train)
    return x


class ResNet(Application):
    """Keras' ``ResNet(stack_fn, preact=False, use_bias=True)``; ``blocks`` per stage (conv2..conv5)."""

    blocks: tuple[int, ...] = (3, 4, 6, 3)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = InputLayer(name="input_layer")(x)
        x = ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
        x = Conv2D(64, 7, strides=2, name="conv1_conv")(x)
        x = BatchNorm(name="conv1_bn")(x, train)
        x = Activation("relu", name="conv1_relu")(x)
        x = ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
        x = MaxPooling2D(3, strides=2, name="pool1_pool")(x)

        for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), self.blocks), start=2):
            stride = 1 if stage == 2 else 2
            x = stack_residual_blocks_v1(x, filters, blocks, stride1=stride, name=f"conv{stage}", train=train)

        if self.include_top:
            x = GlobalAveragePooling2D(name="avg_pool")(x)
            return Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
        return pooling_head(x, self.pooling, avg_name="avg_pool", max_name="max_pool")


_OLD_RESNET50 = (
    "this is the 2016 ResNet50 file of fchollet/deep-learning-models v0.2 (layers conv1, bn_conv1, "
    "res2a_branch2a, ...; batch-norm epsilon 1e-3), published under the same file name as the current "
    "Keras file. Keras 3 and flaxzoo load the current one (layers conv1_conv, conv2_block1_1_conv, ...): "
    "delete this file and let flaxzoo download it, or pass the current file."
)


@register_model(
    name="resnet50",
    module="flaxzoo.resnet50",
    default_size=224,
    min_size=32,
    preprocess_mode="caffe",
    params=25_636_712,
    params_notop=23_587_712,
    depth=107,
    top1=0.749,
    top5=0.921,
    flops=7_715_946_496,
    weights={
        "top": keras_weights_file(
            "resnet50_weights_tf_dim_ordering_tf_kernels.h5", "resnet", "2cb95161c43110f7111970584f804107"
        ),
        "notop": keras_weights_file(
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet", "4d473c1dd8becc155b73f8504c6f6626"
        ),
    },
    foreign_files={
        "a7b3fe01876f51b976af0dea6bc144eb": _OLD_RESNET50,
        "a268eb855778b3df3c7506639542a6af": _OLD_RESNET50,
    },
)
def ResNet50(
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "resnet50",
    *,
    seed: int = 0,
):
    """Instantiates ResNet50 (keras.applications.ResNet50); returns ``(model, variables)``.

    ``weights``: None (random, from ``seed``), "imagenet", a Keras ``.h5`` path or a flaxzoo checkpoint directory.
    Inputs are ``preprocess_input``-ed NHWC float images (caffe mode: BGR, mean-subtracted).
    """
    return build_application(
        ResNet50.spec,
        partial(ResNet, blocks=(3, 4, 6, 3)),
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
