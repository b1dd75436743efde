"""ResNet v1 (He et al. 2015), as ``keras/src/applications/resnet.py``: Caffe-style bottlenecks with the
stride on the first 1x1 convolution, biases on every convolution, batch-norm epsilon 1.001e-5.
ResNet50, ResNet101 and ResNet152 differ only in the number of bottlenecks per stage."""

from __future__ import annotations

from functools import partial
from typing import ClassVar

from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    Add,
    BatchNormalization,
    Conv2D,
    InputLayer,
    MaxPooling2D,
    ZeroPadding2D,
)
from flaxzoo.models.common import Application, Family, classifier_head, preset_table, register_family
from flaxzoo.registry import tf_kernels_files

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


class ResNetModule(Application):
    """Keras' ``ResNet(stack_fn, preact, use_bias=True)``: the stem, the stages (``stack``, Keras' ``stack_fn``)
    and the head. Here v1 (``preact=False``): ``blocks`` v1 bottlenecks per stage (conv2..conv5).

    ResNet v2 (``models/resnet_v2.py``) subclasses it with ``preact = True`` and its own ``stack``: then conv1
    has no batch norm and ReLU after it, and ``post_bn`` → ``post_relu`` precede the head, as in Keras."""

    blocks: tuple[int, ...] = (3, 4, 6, 3)
    preact: ClassVar[bool] = False

    def stack(self, x, train: bool):
        for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), self.blocks), start=2):
            stride = 1 if stage == 2 else 2
            x = stack_residual_blocks_v1(x, filters, blocks, stride1=stride, name=f"conv{stage}", train=train)
        return x

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = InputLayer(name="input_layer")(x)
        x = ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
        x = Conv2D(64, 7, strides=2, name="conv1_conv")(x)
        if not self.preact:
            x = BatchNorm(name="conv1_bn")(x, train)
            x = Activation("relu", name="conv1_relu")(x)
        x = ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
        x = MaxPooling2D(3, strides=2, name="pool1_pool")(x)

        x = self.stack(x, train)

        if self.preact:
            x = BatchNorm(name="post_bn")(x, train)
            x = Activation("relu", name="post_relu")(x)
        return classifier_head(self, x, notop_names=("avg_pool", "max_pool"))


_OLD_RESNET50 = (
    "this is the 2016 ResNet50 file of fchollet/deep-learning-models v0.2 (layers conv1, bn_conv1, "
    "res2a_branch2a, ...; batch-norm epsilon 1e-3), published under the same file name as the current "
    "Keras file. Keras 3 and flaxzoo load the current one (layers conv1_conv, conv2_block1_1_conv, ...): "
    "delete this file and let flaxzoo download it, or pass the current file."
)
_OLD_RESNET50_FILES = {"a7b3fe01876f51b976af0dea6bc144eb": _OLD_RESNET50, "a268eb855778b3df3c7506639542a6af": _OLD_RESNET50}


# fmt: off
ResNet50, ResNet101, ResNet152 = register_family(Family(ResNetModule), *preset_table(
    "keras_name  name         keras_modules           config.blocks    params      params_notop  depth  top1   top5   flops           weights",
    ("ResNet50",  "resnet50",  ("resnet50", "resnet"),  (3, 4, 6, 3),   25_636_712, 23_587_712,   107,   0.749, 0.921, 7_715_946_496,  tf_kernels_files("resnet50", "resnet", "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"), dict(foreign_files=_OLD_RESNET50_FILES)),
    ("ResNet101", "resnet101", ("resnet",),              (3, 4, 23, 3),  44_707_176, 42_658_176,   209,   0.764, 0.928, 15_140_388_864, tf_kernels_files("resnet101", "resnet", "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21")),
    ("ResNet152", "resnet152", ("resnet",),              (3, 8, 36, 3),  60_419_944, 58_370_944,   311,   0.766, 0.931, 22_564_831_232, tf_kernels_files("resnet152", "resnet", "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c")),
    default_size=224, min_size=32, preprocess_mode="caffe",
))
# fmt: on
