"""MobileNet v1 (Howard et al. 2017), as ``keras/src/applications/mobilenet.py``: a strided 3x3 convolution,
then 13 depthwise-separable blocks (3x3 depthwise → BN → ReLU6 → 1x1 pointwise → BN → ReLU6), every width
scaled by ``alpha``; the classifier is a 1x1 convolution on the globally pooled features.

Padding follows Keras literally: ``conv1`` is TF 'SAME' (stride 2), but every stride-2 depthwise conv is
``ZeroPadding2D(((0, 1), (0, 1)))`` then 'valid', at every input size (on odd sizes that is not 'SAME').
"""

from __future__ import annotations

import warnings

from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    AutoNames,
    BatchNormalization,
    Conv2D,
    DepthwiseConv2D,
    Dropout,
    GlobalAveragePooling2D,
    InputLayer,
    ReLU,
    Reshape,
    ZeroPadding2D,
)
from flaxzoo.models.common import Application, Family, KerasMessages, pooling_head, preset_table, register_family
from flaxzoo.registry import keras_weights_file

# (pointwise filters before alpha, depthwise stride) of blocks 1..13: the paper's Table 1, a row per resolution.
# fmt: off
DEPTHWISE_BLOCKS = (
    (64, 1),
    (128, 2), (128, 1),
    (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
# fmt: on


def _conv_block(x, filters, alpha, train, kernel=3, strides=2):
    """``conv1``: Conv int(filters·alpha), TF 'SAME', no bias → ``conv1_bn`` → ``conv1_relu`` (ReLU6)."""
    x = Conv2D(int(filters * alpha), kernel, strides=strides, padding="same", use_bias=False, name="conv1")(x)
    x = BatchNormalization(name="conv1_bn")(x, train)
    return ReLU(6.0, name="conv1_relu")(x)


def _depthwise_conv_block(x, pointwise_conv_filters, alpha, depth_multiplier, train, strides=1, *, block_id):
    """[``conv_pad_i`` (0, 1) →] 3x3 depthwise ``conv_dw_i`` → BN → ReLU6 → 1x1 ``conv_pw_i`` → BN → ReLU6.

    Stride 2 pads bottom/right by one and convolves 'valid', whatever the input's parity (Keras' fix of
    keras-applications#8); stride 1 is 'same'.
    """
    if strides == 1:
        padding = "same"
    else:
        x = ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(x)
        padding = "valid"
    x = DepthwiseConv2D(
        3,
        strides=strides,
        padding=padding,
        depth_multiplier=depth_multiplier,
        use_bias=False,
        name=f"conv_dw_{block_id}",
    )(x)
    x = BatchNormalization(name=f"conv_dw_{block_id}_bn")(x, train)
    x = ReLU(6.0, name=f"conv_dw_{block_id}_relu")(x)
    x = Conv2D(int(pointwise_conv_filters * alpha), 1, padding="same", use_bias=False, name=f"conv_pw_{block_id}")(x)
    x = BatchNormalization(name=f"conv_pw_{block_id}_bn")(x, train)
    return ReLU(6.0, name=f"conv_pw_{block_id}_relu")(x)


class MobileNetModule(Application):
    """Keras' MobileNet graph: ``alpha`` scales every width, ``depth_multiplier`` the depthwise outputs,
    ``dropout`` is the rate before ``conv_preds`` (active with ``train=True``: pass a 'dropout' rng)."""

    alpha: float = 1.0
    depth_multiplier: int = 1
    dropout: float = 1e-3

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        x = InputLayer(name="input_layer")(x)
        x = _conv_block(x, 32, self.alpha, train)
        for block_id, (filters, stride) in enumerate(DEPTHWISE_BLOCKS, start=1):
            x = _depthwise_conv_block(
                x, filters, self.alpha, self.depth_multiplier, train, strides=stride, block_id=block_id
            )

        if self.include_top:
            x = GlobalAveragePooling2D(keepdims=True, name=auto(GlobalAveragePooling2D))(x)
            x = Dropout(self.dropout, name="dropout")(x, train)
            x = Conv2D(self.classes, 1, padding="same", name="conv_preds")(x)
            x = Reshape((self.classes,), name="reshape_2")(x)
            return Activation(self.classifier_activation, name="predictions")(x)
        return pooling_head(x, self.pooling)


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), 'imagenet' "
        "(pre-training on ImageNet), or the path to the weights file to be loaded. "
        "Received weights={weights}"
    )
)

WEIGHT_ROWS = (128, 160, 192, 224)  # the input sizes Keras publishes weights for


def alpha_text(alpha: float) -> str:
    """Keras' file-name code for ``alpha`` (validated to 0.25/0.5/0.75/1.0 before): "1_0", "7_5", "5_0", "2_5"."""
    if alpha == 1.0:
        return "1_0"
    if alpha == 0.75:
        return "7_5"
    if alpha == 0.50:
        return "5_0"
    return "2_5"


def weight_variant(alpha: float, rows: int, include_top: bool) -> str:
    """The registry variant of Keras' file ``mobilenet_{alpha_text}_{rows}_tf[_no_top].h5``.

    α=1.0 at 224 is "top" / "notop" (what every model has); the others are e.g. "2_5_128_notop".
    """
    kind = "top" if include_top else "notop"
    text = alpha_text(alpha)
    return kind if (text, rows) == ("1_0", 224) else f"{text}_{rows}_{kind}"


def _weight_files() -> dict:
    # Keras publishes no hash for the MobileNet files (get_file without file_hash), hence md5=None:
    # any cached copy is trusted, as by Keras; the checkpoint metadata records the md5 of the file converted.
    files = {}
    for alpha in (1.0, 0.75, 0.50, 0.25):
        for rows in WEIGHT_ROWS:
            for include_top, suffix in ((True, ""), (False, "_no_top")):
                fname = f"mobilenet_{alpha_text(alpha)}_{rows}_tf{suffix}.h5"
                files[weight_variant(alpha, rows, include_top)] = keras_weights_file(
                    fname, "mobilenet", None, alpha=alpha, input_shape=(rows, rows, 3)
                )
    return dict(sorted(files.items(), key=lambda item: item[0] not in ("top", "notop")))  # those first


def _default_size(spec, a):
    """Keras' default size: the given rows when square and one of the published sizes."""
    shape = a["input_shape"]
    if shape is None:
        return 224
    rows, cols = shape[0], shape[1]
    return rows if rows == cols and rows in WEIGHT_ROWS else 224


def _weight_rows(a, shape) -> int | None:
    """The rows of the file Keras loads (and names the model after): 224 where there is no file of the size."""
    rows, cols = shape[0], shape[1]
    if a["weights"] == "imagenet" and (rows != cols or rows not in WEIGHT_ROWS):
        return 224
    return rows


def _check(spec, a, shape):
    if a["weights"] != "imagenet":
        return
    if a["depth_multiplier"] != 1:
        raise ValueError(
            "If imagenet weights are being loaded, depth multiplier must be 1.  "
            f"Received depth_multiplier={a['depth_multiplier']}"
        )
    if a["alpha"] not in [0.25, 0.50, 0.75, 1.0]:
        raise ValueError(
            "If imagenet weights are being loaded, alpha can be one of`0.25`, `0.50`, `0.75` or `1.0` only.  "
            f"Received alpha={a['alpha']}"
        )
    if shape[0] != shape[1] or shape[0] not in WEIGHT_ROWS:
        warnings.warn(
            "`input_shape` is undefined or non-square, or `rows` is not in [128, 160, 192, 224]. "
            "Weights for input shape (224, 224) will be loaded as the default.",
            stacklevel=4,  # the constructor's caller
        )


FAMILY = Family(
    MobileNetModule,
    arguments=(
        "input_shape", "alpha", "depth_multiplier", "dropout", "include_top", "weights", "input_tensor",
        "pooling", "classes", "classifier_activation", "name",
    ),
    defaults=dict(alpha=1.0, depth_multiplier=1, dropout=1e-3, name=None),
    architecture=("alpha", "depth_multiplier", "dropout"),
    messages=MESSAGES,
    default_size=_default_size,
    check=_check,
    default_name=lambda spec, a, shape: f"mobilenet_{a['alpha']:0.2f}_{_weight_rows(a, shape)}",
    variant=lambda spec, a, shape: weight_variant(a["alpha"], _weight_rows(a, shape), a["include_top"]),
    doc="""
Note that ``input_shape`` comes first, as in Keras. ``alpha`` scales every width, ``depth_multiplier``
the depthwise convolutions' outputs. ImageNet weights exist for alpha in {0.25, 0.5, 0.75, 1.0},
``depth_multiplier=1`` and square inputs of 128, 160, 192 or 224; as in Keras, a no-top model at any
other size gets the 224 weights (with a warning), and the top model's size is that of the file. The
default name is ``f"mobilenet_{alpha:0.2f}_{rows}"``.
""",
)  # fmt: skip

# fmt: off
(MobileNet,) = register_family(FAMILY, *preset_table(
    "keras_name   name         keras_modules   params     params_notop  depth  top1   top5   flops          weights",
    ("MobileNet", "mobilenet", ("mobilenet",),  4_253_864, 3_228_864,    55,    0.704, 0.895, 1_137_480_704, _weight_files()),
    default_size=224, min_size=32, preprocess_mode="tf",
))
# fmt: on
