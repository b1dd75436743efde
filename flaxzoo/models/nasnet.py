"""NASNet-A (Zoph et al. 2018), as ``keras/src/applications/nasnet.py``: a strided stem, two reduction
cells, then three stacks of normal cells separated by reduction cells. Every cell takes the previous
cell's output ``ip`` and the one before, ``p``, which ``_adjust_block`` brings to ``ip``'s shape.

Keras decides in ``_adjust_block`` between a factorized reduction and a 1x1 projection by comparing the
*static* widths of ``p`` and ``ip``; with a dynamic (None, None, 3) input every comparison is
``None != None`` and Keras builds a different model (526 instead of 532 weighted layers for the no-top
NASNetLarge), which cannot load the published weights. JAX shapes are always static, so flaxzoo always
builds the model the weights were trained for, at any input size.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    Add,
    AutoNames,
    AveragePooling2D,
    BatchNormalization,
    Concatenate,
    Conv2D,
    Cropping2D,
    Dense,
    GlobalAveragePooling2D,
    InputLayer,
    MaxPooling2D,
    SeparableConv2D,
    ZeroPadding2D,
)
from flaxzoo.models.common import (
    Application,
    KerasMessages,
    check_classes,
    check_weights_arg,
    input_shape_of,
    instantiate,
    obtain_input_shape,
    pooling_head,
    validate_activation,
)
from flaxzoo.registry import KERAS_WEIGHTS_PATH, WeightFile, register_model

BatchNorm = partial(BatchNormalization, momentum=0.9997, epsilon=1e-3)


def correct_pad(x, kernel_size):
    """``imagenet_utils.correct_pad`` on a static shape: the zero padding that makes a stride-2 'valid'
    convolution equal TF 'SAME' ((k//2 - 1, k//2) on even sizes, (k//2, k//2) on odd ones)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    h, w = x.shape[1:3]
    return ((kh // 2 - (1 - h % 2), kh // 2), (kw // 2 - (1 - w % 2), kw // 2))


def _separable_conv_block(ip, filters, kernel_size=(3, 3), strides=(1, 1), block_id=None, *, auto, train):
    """Two [relu → separable conv → batch norm]; a stride-2 first conv gets ``correct_pad`` and 'valid'."""
    x = Activation("relu", name=auto(Activation))(ip)
    if tuple(strides) == (2, 2):
        x = ZeroPadding2D(correct_pad(x, kernel_size), name=f"separable_conv_1_pad_{block_id}")(x)
        conv_pad = "valid"
    else:
        conv_pad = "same"
    x = SeparableConv2D(
        filters, kernel_size, strides=strides, padding=conv_pad, use_bias=False, name=f"separable_conv_1_{block_id}"
    )(x)
    x = BatchNorm(name=f"separable_conv_1_bn_{block_id}")(x, train)
    x = Activation("relu", name=auto(Activation))(x)
    x = SeparableConv2D(filters, kernel_size, padding="same", use_bias=False, name=f"separable_conv_2_{block_id}")(x)
    return BatchNorm(name=f"separable_conv_2_bn_{block_id}")(x, train)


def _adjust_block(p, ip, filters, block_id=None, *, auto, train):
    """``p`` brought to the shape of ``ip`` with ``filters`` channels.

    Different (static) widths: a factorized reduction, two 1x1/2 average pools (the second on ``p``
    shifted by one pixel, zero-filled at the far edge) each followed by a 1x1 conv, concatenated.
    Same width, other channel count: relu → 1x1 conv projection. Both end with a batch norm.
    """
    if p is None:
        return ip
    if p.shape[-2] != ip.shape[-2]:
        p = Activation("relu", name=f"adjust_relu_1_{block_id}")(p)
        p1 = AveragePooling2D((1, 1), strides=(2, 2), padding="valid", name=f"adjust_avg_pool_1_{block_id}")(p)
        p1 = Conv2D(filters // 2, (1, 1), padding="same", use_bias=False, name=f"adjust_conv_1_{block_id}")(p1)
        p2 = ZeroPadding2D(((0, 1), (0, 1)), name=auto(ZeroPadding2D))(p)
        p2 = Cropping2D(((1, 0), (1, 0)), name=auto(Cropping2D))(p2)
        p2 = AveragePooling2D((1, 1), strides=(2, 2), padding="valid", name=f"adjust_avg_pool_2_{block_id}")(p2)
        p2 = Conv2D(filters // 2, (1, 1), padding="same", use_bias=False, name=f"adjust_conv_2_{block_id}")(p2)
        p = Concatenate(name=auto(Concatenate))([p1, p2])
        return BatchNorm(name=f"adjust_bn_{block_id}")(p, train)
    if p.shape[-1] != filters:
        p = Activation("relu", name=auto(Activation))(p)
        p = Conv2D(filters, (1, 1), padding="same", use_bias=False, name=f"adjust_conv_projection_{block_id}")(p)
        return BatchNorm(name=f"adjust_bn_{block_id}")(p, train)
    return p


def _normal_a_cell(ip, p, filters, block_id=None, *, auto, train):
    """The NASNet-A normal cell (Fig. 4 of the paper): 6·filters channels, same spatial size.

    Returns ``(output, ip)``: the next cell's ``p`` is this cell's input.
    """
    sep = partial(_separable_conv_block, auto=auto, train=train)
    p = _adjust_block(p, ip, filters, block_id, auto=auto, train=train)

    h = Activation("relu", name=auto(Activation))(ip)
    h = Conv2D(filters, (1, 1), padding="same", use_bias=False, name=f"normal_conv_1_{block_id}")(h)
    h = BatchNorm(name=f"normal_bn_1_{block_id}")(h, train)

    x1_1 = sep(h, filters, (5, 5), block_id=f"normal_left1_{block_id}")
    x1_2 = sep(p, filters, block_id=f"normal_right1_{block_id}")
    x1 = Add(name=f"normal_add_1_{block_id}")([x1_1, x1_2])

    x2_1 = sep(p, filters, (5, 5), block_id=f"normal_left2_{block_id}")
    x2_2 = sep(p, filters, (3, 3), block_id=f"normal_right2_{block_id}")
    x2 = Add(name=f"normal_add_2_{block_id}")([x2_1, x2_2])

    x3 = AveragePooling2D((3, 3), strides=(1, 1), padding="same", name=f"normal_left3_{block_id}")(h)
    x3 = Add(name=f"normal_add_3_{block_id}")([x3, p])

    x4_1 = AveragePooling2D((3, 3), strides=(1, 1), padding="same", name=f"normal_left4_{block_id}")(p)
    x4_2 = AveragePooling2D((3, 3), strides=(1, 1), padding="same", name=f"normal_right4_{block_id}")(p)
    x4 = Add(name=f"normal_add_4_{block_id}")([x4_1, x4_2])

    x5 = sep(h, filters, block_id=f"normal_left5_{block_id}")
    x5 = Add(name=f"normal_add_5_{block_id}")([x5, h])

    x = Concatenate(name=f"normal_concat_{block_id}")([p, x1, x2, x3, x4, x5])
    return x, ip


def _reduction_a_cell(ip, p, filters, block_id=None, *, auto, train):
    """The NASNet-A reduction cell (Fig. 4 of the paper): 4·filters channels, half the spatial size.

    The max and average pools read ``h3``, the batch-norm output (no relu) explicitly zero-padded by
    ``correct_pad``: the zeros take part in the max and count in the /9 average.
    Returns ``(output, ip)``.
    """
    sep = partial(_separable_conv_block, auto=auto, train=train)
    p = _adjust_block(p, ip, filters, block_id, auto=auto, train=train)

    h = Activation("relu", name=auto(Activation))(ip)
    h = Conv2D(filters, (1, 1), padding="same", use_bias=False, name=f"reduction_conv_1_{block_id}")(h)
    h = BatchNorm(name=f"reduction_bn_1_{block_id}")(h, train)
    h3 = ZeroPadding2D(correct_pad(h, 3), name=f"reduction_pad_1_{block_id}")(h)

    x1_1 = sep(h, filters, (5, 5), strides=(2, 2), block_id=f"reduction_left1_{block_id}")
    x1_2 = sep(p, filters, (7, 7), strides=(2, 2), block_id=f"reduction_right1_{block_id}")
    x1 = Add(name=f"reduction_add_1_{block_id}")([x1_1, x1_2])

    x2_1 = MaxPooling2D((3, 3), strides=(2, 2), padding="valid", name=f"reduction_left2_{block_id}")(h3)
    x2_2 = sep(p, filters, (7, 7), strides=(2, 2), block_id=f"reduction_right2_{block_id}")
    x2 = Add(name=f"reduction_add_2_{block_id}")([x2_1, x2_2])

    x3_1 = AveragePooling2D((3, 3), strides=(2, 2), padding="valid", name=f"reduction_left3_{block_id}")(h3)
    x3_2 = sep(p, filters, (5, 5), strides=(2, 2), block_id=f"reduction_right3_{block_id}")
    x3 = Add(name=f"reduction_add3_{block_id}")([x3_1, x3_2])

    x4 = AveragePooling2D((3, 3), strides=(1, 1), padding="same", name=f"reduction_left4_{block_id}")(x1)
    x4 = Add(name=auto(Add))([x2, x4])

    # Keras reuses the id "reduction_left4" for this separable block.
    x5_1 = sep(x1, filters, (3, 3), block_id=f"reduction_left4_{block_id}")
    x5_2 = MaxPooling2D((3, 3), strides=(2, 2), padding="valid", name=f"reduction_right5_{block_id}")(h3)
    x5 = Add(name=f"reduction_add4_{block_id}")([x5_1, x5_2])

    x = Concatenate(name=f"reduction_concat_{block_id}")([x2, x3, x4, x5])
    return x, ip


class NASNetModule(Application):
    """Keras' generic ``NASNet(penultimate_filters, num_blocks, stem_block_filters, skip_reduction,
    filter_multiplier)``; NASNetLarge is (4032, 6, 96, True, 2), NASNetMobile (1056, 4, 32, False, 2)."""

    penultimate_filters: int = 4032
    num_blocks: int = 6
    stem_block_filters: int = 96
    skip_reduction: bool = True
    filter_multiplier: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        cells = dict(auto=auto, train=train)
        n, m = self.num_blocks, self.filter_multiplier  # Keras' num_blocks, filter_multiplier
        filters = self.penultimate_filters // 24

        x = InputLayer(name="input_layer")(x)
        x = Conv2D(
            self.stem_block_filters, (3, 3), strides=(2, 2), padding="valid", use_bias=False, name="stem_conv1"
        )(x)
        x = BatchNorm(name="stem_bn1")(x, train)  # no relu: every cell starts with one on its input

        p = None
        x, p = _reduction_a_cell(x, p, filters // m**2, block_id="stem_1", **cells)
        x, p = _reduction_a_cell(x, p, filters // m, block_id="stem_2", **cells)

        for i in range(n):
            x, p = _normal_a_cell(x, p, filters, block_id=f"{i}", **cells)

        x, p0 = _reduction_a_cell(x, p, filters * m, block_id=f"reduce_{n}", **cells)
        # skip_reduction (Large): the next cell's p stays the one given to the reduction cell.
        p = p if self.skip_reduction else p0

        for i in range(n):
            x, p = _normal_a_cell(x, p, filters * m, block_id=f"{n + i + 1}", **cells)

        x, p0 = _reduction_a_cell(x, p, filters * m**2, block_id=f"reduce_{2 * n}", **cells)
        p = p if self.skip_reduction else p0

        for i in range(n):
            x, p = _normal_a_cell(x, p, filters * m**2, block_id=f"{2 * n + i + 1}", **cells)

        x = Activation("relu", name=auto(Activation))(x)

        if self.include_top:
            x = GlobalAveragePooling2D(name=auto(GlobalAveragePooling2D))(x)
            return Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
        return pooling_head(x, self.pooling)


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), `imagenet` "
        "(pre-training on ImageNet), or the path to the weights file to be loaded."
    ),
    classes='If using `weights` as `"imagenet"` with `include_top` as true, `classes` should be 1000',
)


def NASNet(
    input_shape=None,
    penultimate_filters: int = 4032,
    num_blocks: int = 6,
    stem_block_filters: int = 96,
    skip_reduction: bool = True,
    filter_multiplier: int = 2,
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    default_size: int | None = None,
    classifier_activation: Any = "softmax",
    name: str = "NASNet",
    *,
    seed: int = 0,
):
    """Keras' generic (unexported) ``NASNet`` constructor, with its checks in Keras' order; returns
    ``(model, variables)``. ImageNet weights exist for ``default_size`` 224 (Mobile) and 331 (Large) only."""
    check_weights_arg(weights, MESSAGES)
    check_classes(weights, include_top, classes, MESSAGES)
    if isinstance(input_shape, tuple) and None in input_shape and weights == "imagenet":
        raise ValueError(
            "When specifying the input shape of a NASNet and loading `ImageNet` weights, the input_shape "
            f"argument must be static (no None entries). Got: `input_shape={input_shape}`."
        )
    if default_size is None:
        default_size = 331
    shape = obtain_input_shape(input_shape, default_size, 32, include_top, weights)
    if penultimate_filters % (24 * (filter_multiplier**2)) != 0:
        raise ValueError(
            "For NASNet-A models, the `penultimate_filters` must be a multiple of 24 * "
            f"(`filter_multiplier` ** 2). Current value: {penultimate_filters}"
        )
    if include_top:
        validate_activation(classifier_activation, weights)
    module = NASNetModule(
        penultimate_filters=penultimate_filters,
        num_blocks=num_blocks,
        stem_block_filters=stem_block_filters,
        skip_reduction=skip_reduction,
        filter_multiplier=filter_multiplier,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
        input_shape=input_shape_of(input_tensor, shape),
        default_size=default_size,
    )
    if weights == "imagenet" and default_size not in (224, 331):
        raise ValueError("ImageNet weights can only be loaded with NASNetLarge or NASNetMobile")
    spec = (NASNetMobile if default_size == 224 else NASNetLarge).spec
    return instantiate(spec, module, weights=weights, seed=seed)


def _nasnet_file(fname: str, url_name: str, md5: str) -> WeightFile:
    """Keras caches ``nasnet/NASNet-mobile.h5`` as ``nasnet_mobile.h5`` (and so on): fname ≠ URL name."""
    return WeightFile(fname, f"{KERAS_WEIGHTS_PATH}/nasnet/{url_name}", md5)


@register_model(
    name="nasnet_mobile",
    module="flaxzoo.nasnet",
    default_size=224,
    min_size=32,
    preprocess_mode="tf",
    params=5_326_716,
    params_notop=4_269_716,
    depth=389,
    top1=0.744,
    top5=0.919,
    flops=1_127_277_632,
    weights={
        "top": _nasnet_file("nasnet_mobile.h5", "NASNet-mobile.h5", "020fb642bf7360b370c678b08e0adf61"),
        "notop": _nasnet_file("nasnet_mobile_no_top.h5", "NASNet-mobile-no-top.h5", "1ed92395b5b598bdda52abe5c0dbfd63"),
    },
    shape_dependent=True,
)
def NASNetMobile(
    input_shape: Any = None,
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "nasnet_mobile",
    *,
    seed: int = 0,
):
    """Instantiates NASNetMobile (keras.applications.NASNetMobile); returns ``(model, variables)``.

    Note that ``input_shape`` comes first, as in Keras. Inputs are ``preprocess_input``-ed NHWC float
    images (tf mode: [-1, 1]), at least 32x32; the top model takes 224x224.

    As in Keras, ``include_top=False`` without ``input_shape`` means ``input_shape=(224, 224, 3)`` for the
    argument checks; the returned module still accepts any input size of at least 32x32.
    """
    if not include_top and input_shape is None:
        input_shape = (224, 224, 3)
    return NASNet(
        input_shape,
        penultimate_filters=1056,
        num_blocks=4,
        stem_block_filters=32,
        skip_reduction=False,
        filter_multiplier=2,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        pooling=pooling,
        classes=classes,
        default_size=224,
        classifier_activation=classifier_activation,
        name=name,
        seed=seed,
    )


@register_model(
    name="nasnet_large",
    module="flaxzoo.nasnet",
    default_size=331,
    min_size=32,
    preprocess_mode="tf",
    params=88_949_818,
    params_notop=84_916_818,
    depth=533,
    top1=0.825,
    top5=0.960,
    flops=47_566_829_316,
    weights={
        "top": _nasnet_file("nasnet_large.h5", "NASNet-large.h5", "11577c9a518f0070763c2b964a382f17"),
        "notop": _nasnet_file("nasnet_large_no_top.h5", "NASNet-large-no-top.h5", "d81d89dc07e6e56530c4e77faddd61b5"),
    },
    shape_dependent=True,
)
def NASNetLarge(
    input_shape: Any = None,
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "nasnet_large",
    *,
    seed: int = 0,
):
    """Instantiates NASNetLarge (keras.applications.NASNetLarge); returns ``(model, variables)``.

    Note that ``input_shape`` comes first, as in Keras. Inputs are ``preprocess_input``-ed NHWC float
    images (tf mode: [-1, 1]), at least 32x32; the top model takes 331x331.

    Unlike NASNetMobile, Keras does not fix ``input_shape`` for ``include_top=False``: Keras 3 then builds
    a dynamic-input model whose adjust blocks are all projections (526 weighted layers), which cannot
    load the published no-top file (532). flaxzoo decides from the actual static size, as Keras does with
    a static ``input_shape``, so ``NASNetLarge(include_top=False, weights="imagenet")`` is the 532-layer
    model, loads that file, and runs at any size of at least 32x32.
    """
    return NASNet(
        input_shape,
        penultimate_filters=4032,
        num_blocks=6,
        stem_block_filters=96,
        skip_reduction=True,
        filter_multiplier=2,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        pooling=pooling,
        classes=classes,
        default_size=331,
        classifier_activation=classifier_activation,
        name=name,
        seed=seed,
    )
