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

import dataclasses
from functools import partial

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
    GlobalAveragePooling2D,
    InputLayer,
    MaxPooling2D,
    SeparableConv2D,
    ZeroPadding2D,
)
from flaxzoo.models.common import (
    DENSENET_NASNET_MESSAGES,
    Application,
    Family,
    build_application,
    correct_pad,
    classifier_head,
    preset_table,
    register_family,
)
from flaxzoo.registry import KERAS_WEIGHTS_PATH, WeightFile

BatchNorm = partial(BatchNormalization, momentum=0.9997, epsilon=1e-3)


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

    @nn.nowrap
    def feature_layers(self, graph):
        # The ReLU each reduction cell applies to its input (an unnamed Keras Activation) is the activated output
        # of the last cell at that stride; the model's last ReLU ends stride 32.
        n = self.num_blocks
        cells = ("stem_1", "stem_2", f"reduce_{n}", f"reduce_{2 * n}")
        return (*(graph.by_name[f"reduction_conv_1_{cell}"].inbound[0] for cell in cells), graph.output)

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        cells = dict(auto=auto, train=train)
        n, m = self.num_blocks, self.filter_multiplier  # Keras' num_blocks, filter_multiplier
        filters = self.penultimate_filters // 24

        x = InputLayer(name="input_layer")(x)
        x = Conv2D(self.stem_block_filters, (3, 3), strides=(2, 2), padding="valid", use_bias=False, name="stem_conv1")(
            x
        )
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

        return classifier_head(self, x, gap_name=auto(GlobalAveragePooling2D))


def _static_input_shape(spec, a):
    if isinstance(a["input_shape"], tuple) and None in a["input_shape"] and a["weights"] == "imagenet":
        raise ValueError(
            "When specifying the input shape of a NASNet and loading `ImageNet` weights, the input_shape "
            f"argument must be static (no None entries). Got: `input_shape={a['input_shape']}`."
        )


def _mobile_input_shape(spec, a):
    if not a["include_top"] and a["input_shape"] is None:
        a["input_shape"] = (224, 224, 3)  # Keras' NASNetMobile fixes it for the checks; NASNetLarge does not
    _static_input_shape(spec, a)


def _penultimate_filters(spec, a, shape):
    filters, multiplier = spec.config["penultimate_filters"], spec.config["filter_multiplier"]
    if filters % (24 * (multiplier**2)) != 0:
        raise ValueError(
            "For NASNet-A models, the `penultimate_filters` must be a multiple of 24 * "
            f"(`filter_multiplier` ** 2). Current value: {filters}"
        )


def _published_variant(spec, a, shape):
    if not spec.weights:  # the generic builder at a default size other than 224 and 331
        raise ValueError("ImageNet weights can only be loaded with NASNetLarge or NASNetMobile")
    return "top" if a["include_top"] else "notop"


FAMILY = Family(
    NASNetModule,
    arguments=(
        "input_shape",
        "include_top",
        "weights",
        "input_tensor",
        "pooling",
        "classes",
        "classifier_activation",
        "name",
    ),
    messages=DENSENET_NASNET_MESSAGES,
    check_arguments=_static_input_shape,
    check=_penultimate_filters,
    variant=_published_variant,
    doc="""
Note that ``input_shape`` comes first, as in Keras.

Without ``input_shape``, Keras builds NASNetLarge's no-top model for a dynamic input: its adjust blocks are
then all projections (526 weighted layers), which cannot load the published no-top file (532). flaxzoo
decides from the actual static size, as Keras does with a static ``input_shape``: the model loads that
file and runs at any size of at least 32x32. (NASNetMobile's no-top model takes ``input_shape=(224, 224,
3)`` for the checks, as in Keras.)
""",
)


def _nasnet_files(size: str, md5_top: str, md5_notop: str) -> dict[str, WeightFile]:
    """Keras caches ``nasnet/NASNet-mobile.h5`` as ``nasnet_mobile.h5`` (and so on): the names differ."""
    return {
        "top": WeightFile(f"nasnet_{size}.h5", f"{KERAS_WEIGHTS_PATH}/nasnet/NASNet-{size}.h5", md5_top),
        "notop": WeightFile(f"nasnet_{size}_no_top.h5", f"{KERAS_WEIGHTS_PATH}/nasnet/NASNet-{size}-no-top.h5", md5_notop),
    }


# fmt: off
_MOBILE, _LARGE = preset_table(
    "keras_name      name             default_size  config.penultimate_filters  config.num_blocks  config.stem_block_filters  config.skip_reduction  params      params_notop  depth  top1   top5   flops           weights",
    ("NASNetMobile", "nasnet_mobile", 224,          1056,                       4,                 32,                         False,                  5_326_716,  4_269_716,    389,   0.744, 0.919, 1_127_277_632,  _nasnet_files("mobile", "020fb642bf7360b370c678b08e0adf61", "1ed92395b5b598bdda52abe5c0dbfd63")),
    ("NASNetLarge",  "nasnet_large",  331,          4032,                       6,                 96,                         True,                   88_949_818, 84_916_818,   533,   0.825, 0.960, 47_566_829_316, _nasnet_files("large", "11577c9a518f0070763c2b964a382f17", "d81d89dc07e6e56530c4e77faddd61b5")),
    keras_modules=("nasnet",), min_size=32, preprocess_mode="tf", shape_dependent=True, config={"filter_multiplier": 2},
)
# fmt: on
(NASNetMobile,) = register_family(dataclasses.replace(FAMILY, check_arguments=_mobile_input_shape), _MOBILE)
(NASNetLarge,) = register_family(FAMILY, _LARGE)


def NASNet(
    input_shape=None,
    penultimate_filters: int = 4032,
    num_blocks: int = 6,
    stem_block_filters: int = 96,
    skip_reduction: bool = True,
    filter_multiplier: int = 2,
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    pooling=None,
    classes=1000,
    default_size: int | None = None,
    classifier_activation="softmax",
    name: str = "NASNet",
    *,
    seed: int = 0,
):
    """Keras' generic (unexported) ``NASNet`` constructor, with its checks in Keras' order; returns
    ``(model, variables)``. ImageNet weights exist for ``default_size`` 224 (Mobile) and 331 (Large) only:
    "imagenet" loads the file of that size, whatever the architecture arguments say."""
    default_size = 331 if default_size is None else default_size
    preset = {224: NASNetMobile, 331: NASNetLarge}.get(default_size)
    config = dict(
        penultimate_filters=penultimate_filters, num_blocks=num_blocks, stem_block_filters=stem_block_filters,
        skip_reduction=skip_reduction, filter_multiplier=filter_multiplier,
    )  # fmt: skip
    # a preset's name and files (its cache): Keras loads the file of the size whatever the architecture
    spec = (
        preset.spec
        if preset
        else dataclasses.replace(NASNetLarge.spec, name="nasnet", default_size=default_size, weights={})
    )
    spec = dataclasses.replace(spec, family=FAMILY, config=config)
    arguments = {k: v for k, v in locals().items() if k in FAMILY.arguments}
    return build_application(spec, arguments, seed=seed)
