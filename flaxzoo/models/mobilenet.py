"""MobileNet v1 (Howard et al. 2017), as ``keras/src/applications/mobilenet.py``: a strided 3x3 convolution,
then 13 depthwise-separable blocks (3x3 depthwise → BN → ReLU6 → 1x1 pointwise → BN → ReLU6), every width
scaled by ``alpha``; the classifier is a 1x1 convolution on the globally pooled features.

Padding follows Keras literally: ``conv1`` is TF 'SAME' (stride 2), but every stride-2 depthwise conv is
``ZeroPadding2D(((0, 1), (0, 1)))`` then 'valid', at every input size (on odd sizes that is not 'SAME').
"""

from __future__ import annotations

import warnings
from typing import Any

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
from flaxzoo.registry import keras_weights_file, register_model

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
                files[weight_variant(alpha, rows, include_top)] = keras_weights_file(fname, "mobilenet", None)
    return dict(sorted(files.items(), key=lambda item: item[0] not in ("top", "notop")))  # those first


@register_model(
    name="mobilenet",
    module="flaxzoo.mobilenet",
    default_size=224,
    min_size=32,
    preprocess_mode="tf",
    params=4_253_864,
    params_notop=3_228_864,
    depth=55,
    top1=0.704,
    top5=0.895,
    flops=1_137_480_704,
    weights=_weight_files(),
)
def MobileNet(
    input_shape: Any = None,
    alpha: float = 1.0,
    depth_multiplier: int = 1,
    dropout: float = 1e-3,
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str | None = None,
    *,
    seed: int = 0,
):
    """Instantiates MobileNet (keras.applications.MobileNet); returns ``(model, variables)``.

    Note that ``input_shape`` comes first, as in Keras. ``alpha`` scales every width, ``depth_multiplier``
    the depthwise convolutions' outputs. ImageNet weights exist for alpha in {0.25, 0.5, 0.75, 1.0},
    ``depth_multiplier=1`` and square inputs of 128, 160, 192 or 224; as in Keras, a no-top model at any
    other size gets the 224 weights (with a warning). Inputs are ``preprocess_input``-ed NHWC float images
    (tf mode: [-1, 1]), at least 32x32. The default name is ``f"mobilenet_{alpha:0.2f}_{rows}"``.
    """
    check_weights_arg(weights, MESSAGES)
    check_classes(weights, include_top, classes, MESSAGES)

    # Keras' default size: the given rows when square and one of the published sizes.
    if input_shape is None:
        default_size = 224
    else:
        rows, cols = input_shape[0], input_shape[1]
        default_size = rows if rows == cols and rows in WEIGHT_ROWS else 224
    shape = obtain_input_shape(input_shape, default_size, MobileNet.spec.min_size, include_top, weights)
    rows, cols = shape[0], shape[1]

    if weights == "imagenet":
        if depth_multiplier != 1:
            raise ValueError(
                "If imagenet weights are being loaded, depth multiplier must be 1.  "
                f"Received depth_multiplier={depth_multiplier}"
            )
        if alpha not in [0.25, 0.50, 0.75, 1.0]:
            raise ValueError(
                "If imagenet weights are being loaded, alpha can be one of`0.25`, `0.50`, `0.75` or `1.0` only.  "
                f"Received alpha={alpha}"
            )
        if rows != cols or rows not in WEIGHT_ROWS:
            rows = 224
            warnings.warn(
                "`input_shape` is undefined or non-square, or `rows` is not in [128, 160, 192, 224]. "
                "Weights for input shape (224, 224) will be loaded as the default.",
                stacklevel=2,
            )

    if include_top:
        validate_activation(classifier_activation, weights)
    module = MobileNetModule(
        alpha=alpha,
        depth_multiplier=depth_multiplier,
        dropout=dropout,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=f"mobilenet_{alpha:0.2f}_{rows}" if name is None else name,
        input_shape=input_shape_of(input_tensor, shape),
        default_size=default_size,
    )
    variant = weight_variant(alpha, rows, include_top) if weights == "imagenet" else None
    return instantiate(MobileNet.spec, module, weights=weights, seed=seed, variant=variant)
