"""MobileNetV2 (Sandler et al. 2018), as ``keras/src/applications/mobilenet_v2.py``: a strided 3x3 convolution,
then 17 inverted residual blocks (1x1 expansion → BN → ReLU6 → 3x3 depthwise → BN → ReLU6 → linear 1x1 projection
→ BN, added to the input where the shapes allow), a 1x1 convolution to 1280 channels and the classifier. ``alpha``
scales the widths, rounded to multiples of 8 (``_make_divisible``); the last convolution only grows (alpha > 1).

Padding: ``Conv1`` is TF 'SAME'; each stride-2 depthwise conv is ``ZeroPadding2D(correct_pad(x, 3))`` then 'valid',
which on a static size equals 'SAME'. Keras computes ``correct_pad`` from the *static* shape of the graph, so a
Keras model built for ``(None, None, 3)`` pads (0, 1) on every input, not 'SAME' on odd sizes; flaxzoo always pads
for the actual size (the registry's ``shape_dependent``: equal to Keras' model built for that size).
"""

from __future__ import annotations

import warnings
from functools import partial

from flax import linen as nn

from flaxzoo.layers import (
    Add,
    AutoNames,
    BatchNormalization,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    GlobalAveragePooling2D,
    InputLayer,
    ReLU,
    ZeroPadding2D,
)
from flaxzoo.models.common import (
    Application,
    Family,
    KerasMessages,
    correct_pad,
    pooling_head,
    preset_table,
    register_family,
)
from flaxzoo.registry import keras_weights_file

BatchNorm = partial(BatchNormalization, epsilon=1e-3, momentum=0.999)

# (filters before alpha, stride, expansion) of blocks 0..16: the paper's Table 2, one row per sequence.
# fmt: off
INVERTED_RESIDUAL_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)
# fmt: on


def _make_divisible(v, divisor, min_value=None):
    """Keras' rounding of a width to a multiple of ``divisor``, never more than 10% down."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _inverted_res_block(inputs, expansion, stride, alpha, filters, block_id, train):
    """[``block_{i}_expand`` 1x1 → BN → ReLU6 →] [``pad`` →] 3x3 ``depthwise`` → BN → ReLU6 → 1x1 ``project`` → BN
    [→ ``add``]. Block 0 has no expansion and the prefix ``expanded_conv_``."""
    in_channels = inputs.shape[-1]
    pointwise_filters = _make_divisible(int(filters * alpha), 8)
    x = inputs
    prefix = f"block_{block_id}_"
    if block_id:
        x = Conv2D(expansion * in_channels, 1, padding="same", use_bias=False, name=f"{prefix}expand")(x)
        x = BatchNorm(name=f"{prefix}expand_BN")(x, train)
        x = ReLU(6.0, name=f"{prefix}expand_relu")(x)
    else:
        prefix = "expanded_conv_"
    if stride == 2:
        x = ZeroPadding2D(correct_pad(x, 3), name=f"{prefix}pad")(x)
    x = DepthwiseConv2D(
        3, strides=stride, use_bias=False, padding="same" if stride == 1 else "valid", name=f"{prefix}depthwise"
    )(x)
    x = BatchNorm(name=f"{prefix}depthwise_BN")(x, train)
    x = ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = Conv2D(pointwise_filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = BatchNorm(name=f"{prefix}project_BN")(x, train)
    if in_channels == pointwise_filters and stride == 1:
        return Add(name=f"{prefix}add")([inputs, x])
    return x


class MobileNetV2Module(Application):
    """Keras' MobileNetV2 graph; ``alpha`` is the width multiplier."""

    alpha: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        auto = AutoNames()
        x = InputLayer(name="input_layer")(x)
        x = Conv2D(_make_divisible(32 * self.alpha, 8), 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)
        x = BatchNorm(name="bn_Conv1")(x, train)
        x = ReLU(6.0, name="Conv1_relu")(x)
        for block_id, (filters, stride, expansion) in enumerate(INVERTED_RESIDUAL_BLOCKS):
            x = _inverted_res_block(x, expansion, stride, self.alpha, filters, block_id, train)

        # no alpha on the last conv (the paper), except that it grows with alpha > 1
        last_block_filters = _make_divisible(1280 * self.alpha, 8) if self.alpha > 1.0 else 1280
        x = Conv2D(last_block_filters, 1, use_bias=False, name="Conv_1")(x)
        x = BatchNorm(name="Conv_1_bn")(x, train)
        x = ReLU(6.0, name="out_relu")(x)

        if self.include_top:
            x = GlobalAveragePooling2D(name=auto(GlobalAveragePooling2D))(x)
            return Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
        return pooling_head(x, self.pooling)


MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), `imagenet` "
        "(pre-training on ImageNet), or the path to the weights file to be loaded.  "
        "Received `weights={weights}`"
    ),
    classes=(
        'If using `weights="imagenet"` with `include_top` as true, `classes` should be 1000. '
        "Received `classes={classes}`"
    ),
)

ALPHAS = (0.35, 0.50, 0.75, 1.0, 1.3, 1.4)  # Keras' imagenet alphas
WEIGHT_ROWS = (96, 128, 160, 192, 224)  # the input sizes Keras asks for a file of
# The TF-slim checkpoints behind the files exist for alpha <= 1 at every size, for 1.3 and 1.4 at 224 only:
# Keras asks for the other 16 files all the same (HTTP 404, keras-team/keras#16452).
PUBLISHED_ROWS = {alpha: WEIGHT_ROWS if alpha <= 1.0 else (224,) for alpha in ALPHAS}


def weight_fname(alpha: float, rows: int, include_top: bool) -> str:
    """The file Keras asks for: ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}``, then
    ``.h5`` or ``_no_top.h5``."""
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{'' if include_top else '_no_top'}.h5"


def weight_variant(alpha: float, rows: int, include_top: bool) -> str:
    """The registry variant of that file: α=1.0 at 224 is "top" / "notop"; the others e.g. "0.35_96_notop"."""
    kind = "top" if include_top else "notop"
    return kind if (float(alpha), rows) == (1.0, 224) else f"{float(alpha)}_{rows}_{kind}"


def _weight_files() -> dict:
    # Keras publishes no hash for the MobileNetV2 files (get_file without file_hash), hence md5=None:
    # any cached copy is trusted, as by Keras; the checkpoint metadata records the md5 of the file converted.
    files = {
        weight_variant(alpha, rows, include_top): keras_weights_file(
            weight_fname(alpha, rows, include_top), "mobilenet_v2", None, alpha=alpha, input_shape=(rows, rows, 3)
        )
        for alpha in ALPHAS
        for rows in PUBLISHED_ROWS[alpha]
        for include_top in (True, False)
    }
    return dict(sorted(files.items(), key=lambda item: item[0] not in ("top", "notop")))  # those first


def _square_published(rows, cols) -> bool:
    return rows == cols and rows in WEIGHT_ROWS


def _check_input_tensor(spec, a):
    """Keras' check of an ``input_tensor`` given with an ``input_shape``: their widths must agree."""
    shape, tensor = a["input_shape"], a["input_tensor"]
    tensor_shape = getattr(tensor, "shape", None)
    if shape is not None and tensor_shape is not None and len(tensor_shape) == 4 and tensor_shape[2] != shape[1]:
        raise ValueError(
            "input_tensor.shape[2] must equal input_shape[1]; Received "
            f"`input_tensor.shape={tuple(tensor_shape)}`, `input_shape={shape}`"
        )


def _default_size(spec, a):
    """Keras' default size: the rows of ``input_shape`` (else of ``input_tensor``) when square and one of the
    sizes it asks files for, else 224."""
    shape = a["input_shape"]
    if shape is None and getattr(a["input_tensor"], "shape", None) is not None:  # else input_shape_of's error
        shape = tuple(a["input_tensor"].shape)[1:]
    if shape is None:
        return 224
    return shape[0] if _square_published(shape[0], shape[1]) else 224


def _weight_rows(a, shape) -> int | None:
    """The rows of the file Keras loads (and names the model after): 224 where it asks no file of the size."""
    if a["weights"] == "imagenet" and not _square_published(shape[0], shape[1]):
        return 224
    return shape[0]


def _check(spec, a, shape):
    if a["weights"] != "imagenet":
        return
    if a["alpha"] not in ALPHAS:
        raise ValueError(
            "If imagenet weights are being loaded, alpha must be one of `0.35`, `0.50`, `0.75`, `1.0`, `1.3` or "
            f"`1.4` only; Received `alpha={a['alpha']}`"
        )
    if not _square_published(shape[0], shape[1]):
        warnings.warn(
            "`input_shape` is undefined or non-square, or `rows` is not in [96, 128, 160, 192, 224]. "
            "Weights for input shape (224, 224) will be loaded as the default.",
            stacklevel=4,  # the constructor's caller
        )


def _variant(spec, a, shape) -> str:
    """The published file ``weights="imagenet"`` means; a clear error, before any download, for the 16 files
    Keras asks for that were never published (alpha 1.3 or 1.4 at rows other than 224: a 404 in Keras)."""
    alpha, rows, include_top = a["alpha"], _weight_rows(a, shape), a["include_top"]
    if rows not in PUBLISHED_ROWS[alpha]:
        sizes = ", ".join(map(str, PUBLISHED_ROWS[alpha]))
        raise ValueError(
            f"MobileNetV2 has no ImageNet weights for alpha={alpha} at input size {rows}: Keras asks for "
            f"{weight_fname(alpha, rows, include_top)}, which was never published (a 404; "
            f"keras-team/keras#16452). For alpha={alpha} the published size is {sizes} "
            f"(input_shape=(224, 224, 3)); alpha 0.35 to 1.0 have {', '.join(map(str, WEIGHT_ROWS))}."
        )
    return weight_variant(alpha, rows, include_top)


FAMILY = Family(
    MobileNetV2Module,
    arguments=(
        "input_shape", "alpha", "include_top", "weights", "input_tensor", "pooling", "classes",
        "classifier_activation", "name",
    ),
    defaults=dict(alpha=1.0, name=None),
    architecture=("alpha",),
    messages=MESSAGES,
    check_arguments=_check_input_tensor,
    default_size=_default_size,
    check=_check,
    default_name=lambda spec, a, shape: f"mobilenetv2_{a['alpha']:0.2f}_{_weight_rows(a, shape)}",
    variant=_variant,
    doc="""
Note that ``input_shape`` comes first, as in Keras. ``alpha`` scales the widths (rounded to multiples of 8).
ImageNet weights exist for alpha in {0.35, 0.5, 0.75, 1.0} at square inputs of 96, 128, 160, 192 or 224, and for
alpha 1.3 and 1.4 at 224 only (Keras asks for the others, a 404; flaxzoo raises a ValueError naming the file before
any download). As in Keras, any other size (or a no-top model without ``input_shape``) gets the 224 weights, with
a warning, and the top model's size is that of the file. The default name is ``f"mobilenetv2_{alpha:0.2f}_{rows}"``.
""",
)  # fmt: skip

# fmt: off
(MobileNetV2,) = register_family(FAMILY, *preset_table(
    "keras_name     name            keras_modules       params     params_notop  depth  top1   top5   flops        weights",
    ("MobileNetV2", "mobilenet_v2", ("mobilenet_v2",),  3_538_984, 2_257_984,    105,   0.713, 0.901, 601_548_544, _weight_files()),
    default_size=224, min_size=32, preprocess_mode="tf", shape_dependent=True,
    file_layer_names=False,  # the 2018 files name layers mobl{i}_conv_expand, bn{i}_conv_bn_expand, ..., Logits
))
# fmt: on
