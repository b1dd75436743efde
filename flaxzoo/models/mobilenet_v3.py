"""MobileNetV3 Small and Large (Howard et al. 2019), as ``keras/src/applications/mobilenet_v3.py``: optional
preprocessing in the model (``Rescaling(1/127.5, offset=-1)``), a strided 3x3 convolution of 16 channels, a
stack of inverted residual blocks (1x1 expansion → BN → activation → kxk depthwise → BN → activation →
[squeeze-excite] → linear 1x1 projection → BN, added to the input where the shapes allow), a 1x1 convolution to 6x
the last width and, with the top, global pooling → ``conv_2`` (1024 / 1280) → activation → dropout → 1x1
``logits`` → softmax.

``alpha`` scales the block widths (rounded to multiples of 8 by MobileNetV2's ``_make_divisible``, Keras' ``_depth``);
``minimalistic`` uses 3x3 kernels, ReLU and no squeeze-excite everywhere. The activations are Keras':

* hard-swish is ``Activation("hard_swish")``, ``x * (relu6(x + 3) / 6)`` (a division: ``jax.nn.hard_silu``);
* the squeeze-excite gate's hard-sigmoid is ``ReLU(6.)(x + 3.) * (1. / 6.)`` (a multiply by float32(1/6)): the
  ``+ 3.`` and ``* (1. / 6.)`` are Keras tensor operations (``add``, ``multiply``), not layers, which Keras orders
  its layers over but leaves out of ``model.layers``; here :class:`~flaxzoo.layers.TensorAdd` and
  :class:`~flaxzoo.layers.TensorMultiply`. The two forms round differently; each is reproduced where Keras uses it.

Input shape: Keras' MobileNetV3 does not call ``obtain_input_shape``. Without ``input_shape`` the model is built for
(None, None, 3), with or without the top and with ImageNet weights too (all 224-trained; other sizes warn); any
height and width of at least 32 are taken, and Keras checks nothing else (channels included).

Padding: each stride-2 depthwise convolution is ``ZeroPadding2D(correct_pad(x, k))`` then 'valid', which on a static
size equals TF 'SAME'. Keras computes ``correct_pad`` from the *static* shape of its graph, so its default (None, None,
3) model pads (k//2 - 1, k//2) on every input, which is not 'SAME' on odd sizes; flaxzoo always pads for the actual
size (the registry's ``shape_dependent``: equal to Keras' model built for that size; the same on even sizes).

The published files (2019-2021, Keras 2) name their layers ``Conv``, ``Conv/BatchNorm``, ``expanded_conv/depthwise``,
``expanded_conv_3/squeeze_excite/Conv_1``, ``Conv_2``, ``Logits``: loaded by order, as Keras 3 does
(``file_layer_names=False``; counts and shapes are checked). The no-top files are the ``_no_top_v2.h5`` of October
2021, when Keras moved ``conv_2`` from the feature extractor into the top (keras-team/keras 466fccbb); the older
``_no_top.h5`` files hold that extra convolution and are refused by their md5s.
"""

from __future__ import annotations

import typing
import warnings
from functools import partial

from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    Add,
    AutoNames,
    Conv2D,
    DepthwiseConv2D,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    InputLayer,
    Multiply,
    ReLU,
    Rescaling,
    TensorAdd,
    TensorMultiply,
    ZeroPadding2D,
)
from flaxzoo.models.common import Application, Family, KerasMessages, correct_pad, pooling_head, preset_table
from flaxzoo.models.common import register_family
from flaxzoo.models.mobilenet_v2 import BatchNorm, _make_divisible  # the same batch norms (eps 1e-3) and rounding
from flaxzoo.registry import keras_weights_file

_depth = partial(_make_divisible, divisor=8)  # Keras' _depth

# Keras' stack_fn tables, one row per _inverted_res_block: (expansion, filters before alpha, kernel, stride,
# squeeze-excite, activation). Kernel None: the model's (5, or 3 when minimalistic); squeeze-excite True: the model's
# se_ratio (0.25, none when minimalistic); activation None: the model's (hard_swish, or relu when minimalistic).
# fmt: off
SMALL_BLOCKS = (
    (1, 16, 3, 2, True, "relu"),
    (72.0 / 16, 24, 3, 2, False, "relu"),
    (88.0 / 24, 24, 3, 1, False, "relu"),
    (4, 40, None, 2, True, None),
    (6, 40, None, 1, True, None),
    (6, 40, None, 1, True, None),
    (3, 48, None, 1, True, None),
    (3, 48, None, 1, True, None),
    (6, 96, None, 2, True, None),
    (6, 96, None, 1, True, None),
    (6, 96, None, 1, True, None),
)
LARGE_BLOCKS = (
    (1, 16, 3, 1, False, "relu"),
    (4, 24, 3, 2, False, "relu"),
    (3, 24, 3, 1, False, "relu"),
    (3, 40, None, 2, True, "relu"),
    (3, 40, None, 1, True, "relu"),
    (3, 40, None, 1, True, "relu"),
    (6, 80, 3, 2, False, None),
    (2.5, 80, 3, 1, False, None),
    (2.3, 80, 3, 1, False, None),
    (2.3, 80, 3, 1, False, None),
    (6, 112, 3, 1, True, None),
    (6, 112, 3, 1, True, None),
    (6, 160, None, 2, True, None),
    (6, 160, None, 1, True, None),
    (6, 160, None, 1, True, None),
)
# fmt: on


def _activation(x, kind: str, auto: AutoNames):
    """Keras' ``relu`` (an unnamed ``ReLU()``) or ``hard_swish`` (an unnamed ``Activation("hard_swish")``)."""
    if kind == "relu":
        return ReLU(name=auto(ReLU))(x)
    return Activation("hard_swish", name=auto(Activation))(x)


def hard_sigmoid(x, auto: AutoNames):
    """Keras' ``ReLU(6.)(x + 3.) * (1. / 6.)``: a multiply by float32(1/6), unlike hard_swish's division."""
    x = TensorAdd(name=auto(TensorAdd))(x, 3.0)
    x = ReLU(6.0, name=auto(ReLU))(x)
    return TensorMultiply(name=auto(TensorMultiply))(x, 1.0 / 6.0)


def _se_block(inputs, filters, se_ratio, prefix, auto):
    x = GlobalAveragePooling2D(keepdims=True, name=f"{prefix}squeeze_excite_avg_pool")(inputs)
    x = Conv2D(_depth(filters * se_ratio), 1, padding="same", name=f"{prefix}squeeze_excite_conv")(x)
    x = ReLU(name=f"{prefix}squeeze_excite_relu")(x)
    x = Conv2D(filters, 1, padding="same", name=f"{prefix}squeeze_excite_conv_1")(x)
    x = hard_sigmoid(x, auto)
    return Multiply(name=f"{prefix}squeeze_excite_mul")([inputs, x])


def _inverted_res_block(x, expansion, filters, kernel_size, stride, se_ratio, activation, block_id, train, auto):
    """[``expanded_conv_{i}_expand`` 1x1 → BN → act →] [``depthwise_pad`` →] ``depthwise`` → BN → act →
    [SE →] ``project`` 1x1 → BN [→ ``add``]. Block 0 has no expansion and the prefix ``expanded_conv_``."""
    shortcut = x
    infilters = x.shape[-1]
    prefix = "expanded_conv_"
    if block_id:
        prefix = f"expanded_conv_{block_id}_"
        x = Conv2D(_depth(infilters * expansion), 1, padding="same", use_bias=False, name=f"{prefix}expand")(x)
        x = BatchNorm(name=f"{prefix}expand_bn")(x, train)
        x = _activation(x, activation, auto)
    if stride == 2:
        x = ZeroPadding2D(correct_pad(x, kernel_size), name=f"{prefix}depthwise_pad")(x)
    x = DepthwiseConv2D(
        kernel_size, strides=stride, padding="same" if stride == 1 else "valid", use_bias=False,
        name=f"{prefix}depthwise",
    )(x)  # fmt: skip
    x = BatchNorm(name=f"{prefix}depthwise_bn")(x, train)
    x = _activation(x, activation, auto)
    if se_ratio:
        x = _se_block(x, _depth(infilters * expansion), se_ratio, prefix, auto)
    x = Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = BatchNorm(name=f"{prefix}project_bn")(x, train)
    if stride == 1 and infilters == filters:
        x = Add(name=f"{prefix}add")([shortcut, x])
    return x


class MobileNetV3Module(Application):
    """Keras' MobileNetV3 graph: ``blocks`` (the preset's stack table) and ``last_point_ch`` (``conv_2``'s width)
    are the preset's; ``alpha``, ``minimalistic``, ``dropout_rate`` (before ``logits``, active with ``train=True``:
    pass a 'dropout' rng) and ``include_preprocessing`` the constructor's."""

    blocks: tuple = LARGE_BLOCKS
    last_point_ch: int = 1280
    alpha: float = 1.0
    minimalistic: bool = False
    dropout_rate: float = 0.2
    include_preprocessing: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        kernel, activation, se_ratio = (3, "relu", None) if self.minimalistic else (5, "hard_swish", 0.25)
        x = InputLayer(name="input_layer")(x)
        if self.include_preprocessing:
            x = Rescaling(1.0 / 127.5, offset=-1.0, name=auto(Rescaling))(x)
        x = Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv")(x)
        x = BatchNorm(name="conv_bn")(x, train)
        x = _activation(x, activation, auto)
        for block_id, (expansion, filters, k, stride, se, act) in enumerate(self.blocks):
            x = _inverted_res_block(
                x, expansion, _depth(filters * self.alpha), k or kernel, stride, se_ratio if se else None,
                act or activation, block_id, train, auto,
            )  # fmt: skip

        last_conv_ch = _depth(x.shape[-1] * 6)
        # the width multiplier widens conv_2 only when greater than 1
        last_point_ch = _depth(self.last_point_ch * self.alpha) if self.alpha > 1.0 else self.last_point_ch
        x = Conv2D(last_conv_ch, 1, padding="same", use_bias=False, name="conv_1")(x)
        x = BatchNorm(name="conv_1_bn")(x, train)
        x = _activation(x, activation, auto)
        if not self.include_top:
            return pooling_head(x, self.pooling, "avg_pool", "max_pool")
        x = GlobalAveragePooling2D(keepdims=True, name=auto(GlobalAveragePooling2D))(x)
        x = Conv2D(last_point_ch, 1, padding="same", name="conv_2")(x)
        x = _activation(x, activation, auto)
        if self.dropout_rate > 0:
            x = Dropout(self.dropout_rate, name=auto(Dropout))(x, train)
        x = Conv2D(self.classes, 1, padding="same", name="logits")(x)
        x = Flatten(name=auto(Flatten))(x)
        return Activation(self.classifier_activation, name="predictions")(x)


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), `imagenet` "
        "(pre-training on ImageNet), or the path to the weights file to be loaded.  Received weights={weights}"
    ),
    classes=(
        'If using `weights="imagenet"` with `include_top` as true, `classes` should be 1000.  '
        "Received classes={classes}"
    ),
)

MIN_SIZE = 32
WARNING = (
    "`input_shape` is undefined or non-square, or `rows` is not 224. "
    "Weights for input shape (224, 224) will be loaded as the default."
)


class _KerasInput(typing.NamedTuple):
    """The shape of Keras' input layer, batch first, handed on as the model's ``input_tensor``: the one way
    build_application takes a shape without ``obtain_input_shape``, which Keras' MobileNetV3 never calls."""

    shape: tuple


def _keras_input_shape(spec, a):
    """Keras' MobileNetV3 input logic, its errors and its warning, in its order (after the weights and classes
    checks): ``input_tensor`` against ``input_shape``, the 32x32 minimum, alpha with ImageNet weights, the warning
    for any input but 224x224, then the first convolution's rank check. The model is built for ``input_shape`` as
    given, None dimensions dynamic; ``obtain_input_shape`` then gets none (and so checks nothing)."""
    shape, tensor = a["input_shape"], a["input_tensor"]
    tensor_shape = getattr(tensor, "shape", None)
    if tensor_shape is not None:
        tensor_shape = tuple(tensor_shape)
    if shape is not None:
        shape = tuple(shape)
        if tensor_shape is not None and len(tensor_shape) == 4 and tensor_shape[2] != shape[1]:
            raise ValueError(
                "input_shape[1] must equal input_tensor.shape[2].  Received "
                f"input_shape={shape}, input_tensor.shape={tensor_shape}"
            )
    elif tensor_shape is not None and len(tensor_shape) == 4:
        shape = (tensor_shape[2], tensor_shape[1], 3)  # sic: Keras swaps rows and columns, for the checks only
    else:
        shape = (None, None, 3)
    rows, cols = shape[0], shape[1]
    if rows and cols and (rows < MIN_SIZE or cols < MIN_SIZE):
        raise ValueError(f"Input size must be at least {MIN_SIZE}x{MIN_SIZE}; Received `input_shape={shape}`")
    if a["weights"] == "imagenet":
        alpha, minimalistic = a["alpha"], a["minimalistic"]
        if not minimalistic and alpha not in [0.75, 1.0] or minimalistic and alpha != 1.0:
            raise ValueError(
                "If imagenet weights are being loaded, alpha can be one of `0.75`, `1.0` for non minimalistic "
                "or `1.0` for minimalistic only."
            )
        if rows != cols or rows != 224:
            warnings.warn(WARNING, stacklevel=4)  # the constructor's caller
    if tensor is None:
        _check_rank(shape)
        a["input_tensor"] = _KerasInput((None, *shape))
    a["input_shape"] = None


def _check_rank(shape):
    """The error of Keras' first convolution ``conv`` on an input that is not (height, width, channels)."""
    full = (None, *shape)
    if len(full) < 4:
        raise ValueError(
            "Input 0 with name 'None' of layer 'conv' is incompatible with the layer: expected min_ndim=4, "
            f"found ndim={len(full)}. Full shape received: {full}"
        )
    if len(full) > 4:
        raise ValueError(
            "Kernel shape must have the same length as input, but received kernel of shape "
            f"(3, 3, {shape[-1]}, 16) and input of shape {full}."
        )


def _alpha_text(alpha) -> str:
    """The alpha of the file name. Keras writes ``str(alpha)``, so ``alpha=1`` asks for ``..._224_1_float`` (a
    KeyError in Keras' hash table); flaxzoo loads the 1.0 file."""
    return str(float(alpha))


def weight_variant(alpha, minimalistic: bool, include_top: bool) -> str:
    """The registry variant: α=1.0 is "top" / "notop"; the others "0.75_top", "minimalistic_notop", ..."""
    kind = "top" if include_top else "notop"
    if minimalistic:
        return f"minimalistic_{kind}"
    return kind if float(alpha) == 1.0 else f"{_alpha_text(alpha)}_{kind}"


def weight_fname(model_type: str, alpha, minimalistic: bool, include_top: bool) -> str:
    """The file Keras asks for: ``weights_mobilenet_v3_{type}[_minimalistic]_224_{alpha}_float[_no_top_v2].h5``."""
    model_name = f"{model_type}{'_minimalistic' if minimalistic else ''}_224_{_alpha_text(alpha)}_float"
    return f"weights_mobilenet_v3_{model_name}{'' if include_top else '_no_top_v2'}.h5"


# (alpha, minimalistic) of the published files: alpha 0.75 and 1.0, minimalistic at 1.0 only
PUBLISHED = ((1.0, False), (0.75, False), (1.0, True))


def _weight_files(model_type: str, md5s: dict) -> dict:
    """The 6 files of a model type; ``md5s``: (alpha, minimalistic) → (top md5, no-top v2 md5), as Keras'
    WEIGHTS_HASHES."""
    return {
        weight_variant(alpha, minimalistic, include_top): keras_weights_file(
            weight_fname(model_type, alpha, minimalistic, include_top), "mobilenet_v3", md5s[alpha, minimalistic][k],
            alpha=alpha, minimalistic=minimalistic,
        )
        for alpha, minimalistic in PUBLISHED
        for k, include_top in enumerate((True, False))
    }


def _old_no_top_files(model_type: str, md5s: dict) -> dict:
    """The ``_no_top.h5`` files Keras published before October 2021 (md5s of its WEIGHTS_HASHES then, e.g. TF 2.4's
    ``tensorflow/python/keras/applications/mobilenet_v3.py``): their no-top model ends with ``Conv_2``."""
    def current(alpha, minimalistic):
        return weight_fname(model_type, alpha, minimalistic, False)

    return {
        md5: (
            f"this is the pre-2021 no-top file {current(alpha, minimalistic).replace('_v2', '')}, "
            "whose feature extractor ends with the convolution Conv_2 that Keras moved into the classifier top in "
            "October 2021 (keras-team/keras 466fccbb): no current model loads it. Use "
            f"{current(alpha, minimalistic)} (what weights=\"imagenet\" downloads)"
        )
        for (alpha, minimalistic), md5 in md5s.items()
    }


FAMILY = Family(
    MobileNetV3Module,
    arguments=(
        "input_shape", "alpha", "minimalistic", "include_top", "weights", "input_tensor", "classes", "pooling",
        "dropout_rate", "classifier_activation", "include_preprocessing", "name",
    ),
    defaults=dict(alpha=1.0, minimalistic=False, dropout_rate=0.2, include_preprocessing=True),
    architecture=("alpha", "minimalistic", "dropout_rate", "include_preprocessing"),
    messages=MESSAGES,
    check_arguments=_keras_input_shape,
    variant=lambda spec, a, shape: weight_variant(a["alpha"], a["minimalistic"], a["include_top"]),
    doc="""
Note that ``input_shape`` comes first and ``classes`` before ``pooling``, as in Keras. The model preprocesses its
input (``Rescaling(1/127.5, offset=-1)``: images in [0, 255]); ``include_preprocessing=False`` leaves that out (then
inputs in [-1, 1]). Without ``input_shape`` the model takes any size of at least 32x32, with or without the top.
``alpha`` scales the widths (rounded to multiples of 8); ``minimalistic`` uses 3x3 kernels, ReLU and no
squeeze-excite. ImageNet weights (224-trained; other sizes warn, as in Keras) exist for alpha 0.75 and 1.0, and for
``minimalistic=True`` at alpha 1.0. On purpose, unlike Keras, ``alpha=1`` (an int) loads the alpha 1.0 file: Keras
names the file with ``str(alpha)`` and raises a KeyError for ``"..._224_1_float"``.
""",
)  # fmt: skip

# Keras' WEIGHTS_HASHES (top, no-top v2), and the md5s of the pre-2021 no-top files (see _old_no_top_files)
# fmt: off
LARGE_MD5S = {
    (1.0, False): ("59e551e166be033d707958cf9e29a6a7", "07fb09a5933dd0c8eaafa16978110389"),
    (0.75, False): ("765b44a33ad4005b3ac83185abf1d0eb", "40af19a13ebea4e2ee0c676887f69a2e"),
    (1.0, True): ("675e7b876c45c57e9e63e6d90a36599c", "ec5221f64a2f6d1ef965a614bdae7973"),
}
SMALL_MD5S = {
    (1.0, False): ("8768d4c2e7dee89b9d02b2d03d65d862", "d3e8ec802a04aa4fc771ee12a9a9b836"),
    (0.75, False): ("cb65d4e5be93758266aa0a7f2c6708b7", "ebdb5cc8e0b497cd13a7c275d475c819"),
    (1.0, True): ("99cd97fb2fcdad2bf028eb838de69e37", "cde8136e733e811080d9fcd8a252f7e4"),
}
LARGE_OLD_NO_TOP_MD5S = {
    (1.0, False): "037116398e07f018c0005ffcb0406831",
    (0.75, False): "e7b4d1071996dd51a2c2ca2424570e20",
    (1.0, True): "a2c33aed672524d1d0b4431808177695",
}
SMALL_OLD_NO_TOP_MD5S = {
    (1.0, False): "be7100780f875c06bcab93d76641aa26",
    (0.75, False): "4d2fe46f1c1f38057392514b0df1d673",
    (1.0, True): "20d4e357df3f7a6361f3a288857b1051",
}

# Keras publishes no top-5 accuracy for MobileNetV3 (its docstring's table has top-1 only): None.
MobileNetV3Small, MobileNetV3Large = register_family(FAMILY, *preset_table(
    "keras_name          name                  default_name        config.blocks  config.last_point_ch  params     params_notop  depth  top1   top5          flops        weights                                      foreign_files",
    ("MobileNetV3Small", "mobilenet_v3_small", "MobileNetV3Small", SMALL_BLOCKS,  1024,                 2_554_968, 939_120,      88,    0.681, None,         113_020_800, _weight_files("small", SMALL_MD5S),  _old_no_top_files("small", SMALL_OLD_NO_TOP_MD5S)),
    ("MobileNetV3Large", "mobilenet_v3_large", "MobileNetV3Large", LARGE_BLOCKS,  1280,                 5_507_432, 2_996_352,    110,   0.756, None,         433_179_520, _weight_files("large", LARGE_MD5S),  _old_no_top_files("large", LARGE_OLD_NO_TOP_MD5S)),
    keras_modules=("mobilenet_v3",), default_size=224, min_size=MIN_SIZE, preprocess_mode=None, shape_dependent=True,
    file_layer_names=False,  # Keras 2 names: Conv, Conv/BatchNorm, expanded_conv/depthwise, ..., Conv_2, Logits
))
# fmt: on
