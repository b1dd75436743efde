"""ConvNeXt (Liu et al. 2022), as ``keras/src/applications/convnext.py``: a 4x4/4 patchify stem, then four
stages of ConvNeXt blocks (7x7 depthwise conv → LayerNorm → Dense 4C → exact GELU → Dense C → LayerScale,
added to the block's input), separated by LayerNorm + 2x2/2 downsampling convolutions.

As in Keras:
- the stem and each downsampling block are one layer of ``model.layers`` (a nested ``Sequential``), whose
  weights are its convolution's and layer norm's;
- every layer is named after the model (``{name}_stage_0_block_0_depthwise_conv``), so a custom ``name``
  renames them all;
- the input is normalised inside the model (ImageNet mean and standard deviation in [0, 255] units,
  constants) unless ``include_preprocessing=False``, and ``preprocess_input`` is the identity;
- stochastic depth is off in every exported model (``drop_path_rate=0``): each block ends in an identity
  ``Activation("linear")``; ``model.clone(drop_path_rate=r)`` turns it on for fine-tuning as Keras'
  ``ConvNeXt(drop_path_rate=r)`` does (``StochasticDepth`` layers, rates rising linearly from 0);
- without the top, the features (pooled or not) go through one more, unnamed LayerNormalization.

Keras raises when ``weights="imagenet"`` and ``name`` does not contain the preset's name (its weight file
name is made from ``name``); flaxzoo takes the file from the registry and accepts any name.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from flax import linen as nn

from flaxzoo.layers import (
    Activation,
    AutoNames,
    Conv2D,
    Dense,
    Dropout,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    InputLayer,
    KerasLayer,
    LayerNormalization,
    LayerScale,
    Normalization,
    TensorAdd,
)
from flaxzoo.models.common import Application, Family, KerasMessages, preset_table, register_family
from flaxzoo.registry import KERAS_WEIGHTS_PATH, WeightFile

EPSILON = 1e-6  # every layer norm's
# Keras' PreStem: ImageNet statistics in [0, 255] units, as Python floats (Keras computes the variance in float64)
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
VARIANCE = ((0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2)


class Stem(KerasLayer):
    """``{name}_stem``: Keras' nested ``Sequential([Conv2D 4x4/4, LayerNormalization])``, one layer."""

    filters: int
    keras_class: ClassVar[str] = "Sequential"

    @nn.compact
    def __call__(self, x):
        x = Conv2D(self.filters, 4, strides=4, name=f"{self.name}_conv")(x)
        return LayerNormalization(EPSILON, name=f"{self.name}_layernorm")(x)


class Downsampling(KerasLayer):
    """``{model}_downsampling_block_{i}``: Keras' nested ``Sequential([LayerNormalization, Conv2D 2x2/2])``."""

    filters: int
    prefix: str  # the model's name
    index: int
    keras_class: ClassVar[str] = "Sequential"

    @nn.compact
    def __call__(self, x):
        x = LayerNormalization(EPSILON, name=f"{self.prefix}_downsampling_layernorm_{self.index}")(x)
        return Conv2D(self.filters, 2, strides=2, name=f"{self.prefix}_downsampling_conv_{self.index}")(x)


class StochasticDepth(Dropout):
    """Keras' ``StochasticDepth`` of ``convnext.py``: the whole residual branch of an image dropped with
    probability ``rate`` in training (kept ones scaled by 1/(1 - rate)), the identity at inference."""

    noise_shape: tuple[int | None, ...] | None = (None, 1, 1, 1)
    keras_class: ClassVar[str] = "StochasticDepth"


def convnext_block(x, dim: int, auto: AutoNames, train: bool, *, name: str, drop_path_rate: float = 0.0):
    """Depthwise 7x7 → LayerNorm → Dense 4·dim → GELU → Dense dim → LayerScale → stochastic depth (an
    identity at rate 0, as in every exported model), plus the input."""
    inputs = x
    x = Conv2D(dim, 7, padding="same", groups=dim, name=f"{name}_depthwise_conv")(x)
    x = LayerNormalization(EPSILON, name=f"{name}_layernorm")(x)
    x = Dense(4 * dim, name=f"{name}_pointwise_conv_1")(x)
    x = Activation("gelu", name=f"{name}_gelu")(x)
    x = Dense(dim, name=f"{name}_pointwise_conv_2")(x)
    x = LayerScale(name=f"{name}_layer_scale")(x)
    if drop_path_rate:
        x = StochasticDepth(drop_path_rate, name=f"{name}_stochastic_depth")(x, train)
    else:
        x = Activation("linear", name=f"{name}_identity")(x)
    return TensorAdd(name=auto(TensorAdd))(inputs, x)  # Keras' anonymous ``inputs + x``: "add", "add_1", ...


class ConvNeXtModule(Application):
    """Keras' ``ConvNeXt(depths, projection_dims)``: ``depths`` blocks per stage of ``projection_dims`` channels."""

    depths: tuple[int, ...] = (3, 3, 9, 3)
    projection_dims: tuple[int, ...] = (96, 192, 384, 768)
    include_preprocessing: bool = True
    # Keras' ``ConvNeXt(drop_path_rate=...)``, 0 in every preset: for fine-tuning, ``model.clone(drop_path_rate=0.1)``
    # gives block b of n the rate ``0.1 * b / (n - 1)`` (Keras' linspace), driven by the ``dropout`` rng.
    drop_path_rate: float = 0.0

    @nn.nowrap
    def feature_layers(self, graph):
        # A stage ends in a residual sum, a tensor operation in Keras (no layer's output): it is the input of
        # the next downsampling block. The no-top model's last layer norm ends stride 32.
        name = self.model_name or self.name
        return (*((f"{name}_downsampling_block_{i}", "input") for i in range(3)), graph.output)

    @nn.compact
    def __call__(self, x, train: bool = False):
        name, auto = self.model_name or self.name, AutoNames()
        x = InputLayer(name="input_layer")(x)
        if self.include_preprocessing and self.rgb_input:
            mean, variance = self.per_channel(MEAN), self.per_channel(VARIANCE)
            x = Normalization(mean=mean, variance=variance, name=f"{name}_prestem_normalization")(x)
        rates = iter(np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist())
        for stage, (depth, dim) in enumerate(zip(self.depths, self.projection_dims)):
            if stage == 0:
                x = Stem(dim, name=f"{name}_stem")(x)
            else:
                x = Downsampling(dim, name, stage - 1, name=f"{name}_downsampling_block_{stage - 1}")(x)
            for block in range(depth):
                x = convnext_block(
                    x, dim, auto, train, name=f"{name}_stage_{stage}_block_{block}", drop_path_rate=next(rates)
                )

        if self.include_top:
            x = GlobalAveragePooling2D(name=f"{name}_head_gap")(x)
            x = LayerNormalization(EPSILON, name=f"{name}_head_layernorm")(x)
            return Dense(self.classes, activation=self.classifier_activation, name=f"{name}_head_dense")(x)
        if self.pooling == "avg":
            x = GlobalAveragePooling2D(name=auto(GlobalAveragePooling2D))(x)
        elif self.pooling == "max":
            x = GlobalMaxPooling2D(name=auto(GlobalMaxPooling2D))(x)
        return LayerNormalization(EPSILON, name=auto(LayerNormalization))(x)  # Keras' unnamed last layer norm


def _files(size: str, sha256_top: str, sha256_notop: str) -> dict[str, WeightFile]:
    """Keras publishes sha256s (no md5) for ConvNeXt's files."""
    stem = f"{KERAS_WEIGHTS_PATH}/convnext/convnext_{size}"
    return {
        "top": WeightFile(f"convnext_{size}.h5", f"{stem}.h5", None, sha256=sha256_top),
        "notop": WeightFile(f"convnext_{size}_notop.h5", f"{stem}_notop.h5", None, sha256=sha256_notop),
    }


FAMILY = Family(
    ConvNeXtModule,
    arguments=(
        "include_top", "include_preprocessing", "weights", "input_tensor", "input_shape", "pooling", "classes",
        "classifier_activation", "name",
    ),
    defaults=dict(include_preprocessing=True),
    architecture=("include_preprocessing",),
    messages=KerasMessages(
        weights=(
            "The `weights` argument should be either `None` (random initialization), `imagenet` "
            "(pre-training on ImageNet), or the path to the weights file to be loaded."
        ),
        classes=(
            'If using `weights="imagenet"` with `include_top=True`, `classes` should be 1000. Received classes={classes}'
        ),
    ),
    doc="""
Note that ``include_preprocessing`` is the second argument, as in Keras. The model normalises its input
itself (pass images in [0, 255]); ``include_preprocessing=False`` leaves that out. Any ``name`` is
accepted with ``weights="imagenet"`` (Keras takes the file name from it; flaxzoo from the registry); the
model's layer names are made from it, as in Keras.
""",
)  # fmt: skip

# fmt: off
ConvNeXtTiny, ConvNeXtSmall, ConvNeXtBase, ConvNeXtLarge, ConvNeXtXLarge = register_family(FAMILY, *preset_table(
    "keras_name        name              config.depths   config.projection_dims    params       params_notop  depth  top1   flops           weights",
    ("ConvNeXtTiny",   "convnext_tiny",   (3, 3, 9, 3),   (96, 192, 384, 768),      28_589_128,  27_820_128, 96,    0.813, 8_535_344_640,  _files("tiny", "8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff", "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1")),
    ("ConvNeXtSmall",  "convnext_small",  (3, 3, 27, 3),  (96, 192, 384, 768),      50_223_688,  49_454_688, 186,   0.823, 16_991_706_624, _files("small", "ce1277d8f1ee5a0ef0e171469089c18f5233860ceaf9b168049cb9263fd7483c", "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab")),
    ("ConvNeXtBase",   "convnext_base",   (3, 3, 27, 3),  (128, 256, 512, 1024),    88_591_464,  87_566_464, 186,   0.853, 30_054_361_088, _files("base", "52cbb006d3dadd03f6e095a8ca1aca47aecdd75acb4bc74bce1f5c695d0086e6", "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45")),
    ("ConvNeXtLarge",  "convnext_large",  (3, 3, 27, 3),  (192, 384, 768, 1536),    197_767_336, 196_230_336, 186,   0.863, 67_277_798_400, _files("large", "070c5ed9ed289581e477741d3b34beffa920db8cf590899d6d2c67fba2a198a6", "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd")),
    ("ConvNeXtXLarge", "convnext_xlarge", (3, 3, 27, 3),  (256, 512, 1024, 2048),   350_196_968, 348_147_968, 186,   0.867, 119_298_740_224, _files("xlarge", "c1f5ccab661354fc3a79a10fa99af82f0fbf10ec65cb894a3ae0815f17a889ee", "de3f8a54174130e0cecdc71583354753d557fcf1f4487331558e2a16ba0cfe05")),
    keras_modules=("convnext",), default_size=224, min_size=32, preprocess_mode=None, top5=None,
    # Layer names are made from the model's name (a custom one renames them all): by order, as Keras 3 loads.
    file_layer_names=False,
))
# fmt: on
