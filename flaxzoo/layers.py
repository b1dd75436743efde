"""Keras layers as Flax modules, with Keras 3 (JAX backend) numerics and Keras names.

Every Keras layer of a model is one module here, constructed with its Keras name
(``Conv2D(64, 7, strides=2, name="conv1_conv")(x)``), parameter-free layers included, either inline in
the model's ``__call__`` or inside a block that is its own ``nn.Module`` (a block's own name is not a
Keras layer; Keras layer names are unique in a model whatever their depth). :mod:`flaxzoo.graph`
intercepts these calls to recover Keras' layer order and each layer's module path (weight conversion,
``layer_names``) and to stop at or collect a named layer. Weighted layers declare ``keras_weights``,
the legacy-HDF5 order of their arrays mapped to Flax collections, which is all the converter needs to
know about them.

Where Keras weights go (the contract for conversion, checkpoints, training and surgery):

* trainable weights → ``params`` (what the optimizer updates);
* batch-norm moving statistics → ``batch_stats`` (updated by ``train=True`` with
  ``mutable=["batch_stats"]``, kept by frozen layers);
* every other non-trainable weight a Keras file holds (:class:`Normalization`'s mean, variance and
  count, ...) → :data:`CONSTANTS` (``"constants"``): never updated by training, saved, restored and
  transferred with the rest.

A layer's variables sit at its module path in each collection: ``params["conv1_conv"]`` inline,
``params["block1"]["block1_conv"]`` inside a block module named ``block1``.

Numerics follow the Keras JAX backend (see ``../shared/reference/keras-applications-facts.md`` §4):
TF 'SAME' padding, Keras' batch-norm formula, average pooling that excludes padding under 'same'.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
IntPair = int | Sequence[int]


def _pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _identity(x):
    return x


def _softmax(x):
    return jax.nn.softmax(x, axis=-1)


def _gelu(x):
    """Keras' "gelu": the exact form (``approximate=False``), not jax.nn.gelu's default tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


# Keras activation names → JAX functions (keras.activations.get for the names the models use).
ACTIVATIONS: dict[str | None, Callable] = {
    None: _identity,
    "linear": _identity,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "softmax": _softmax,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": _gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    # x * (relu6(x + 3) / 6), a division: keras.ops.hard_silu is jax.nn.hard_silu (MobileNetV3's hard_swish)
    "hard_silu": jax.nn.hard_silu,
    "hard_swish": jax.nn.hard_silu,
}


def get_activation(activation: str | Callable | None) -> Callable:
    """Resolve a Keras activation given by name (or a callable) to a function."""
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(
            f"Could not interpret activation function identifier: {activation}"
        ) from None


def is_softmax_or_linear(activation: str | Callable | None) -> bool:
    fn = get_activation(activation)
    return fn in (_identity, _softmax) or fn is jax.nn.softmax


class KerasLayer(nn.Module):
    """Base of all layers: ``keras_class`` names the Keras layer class it reproduces."""

    keras_class: ClassVar[str] = "Layer"
    # Legacy .h5 order of the layer's arrays, as (collection, variable name); absent ones are skipped.
    keras_weights: ClassVar[tuple[tuple[str, str], ...]] = ()
    # A tensor operation of Keras' graph, not a layer (ConvNeXt's ``inputs + x``): Keras orders its layers
    # over it but does not list it in ``model.layers``.
    keras_operation: ClassVar[bool] = False


def snake_case(name: str) -> str:
    """Keras' ``to_snake_case``: "Conv2D" → "conv2d", "BatchNormalization" → "batch_normalization"."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class AutoNames:
    """Names for layers Keras builds without one, as in a fresh Keras session: the snake-case class
    name, then ``_1``, ``_2``, ... per class (``conv2d``, ``conv2d_1``, ``activation``, ...).

    Make one per model call and take names in Keras' layer-creation order: ``name=auto(Conv2D)``.
    """

    def __init__(self):
        self._seen: collections.Counter[str] = collections.Counter()

    def __call__(self, layer_class: type[KerasLayer]) -> str:
        prefix = snake_case(layer_class.keras_class)
        n = self._seen[prefix]
        self._seen[prefix] += 1
        return prefix if n == 0 else f"{prefix}_{n}"


# --------------------------------------------------------------------------------------------
# Layers without weights
# --------------------------------------------------------------------------------------------


class InputLayer(KerasLayer):
    keras_class: ClassVar[str] = "InputLayer"

    def __call__(self, x):
        return x


class Activation(KerasLayer):
    activation: str | Callable | None = None
    keras_class: ClassVar[str] = "Activation"

    def __call__(self, x):
        return get_activation(self.activation)(x)


class ReLU(KerasLayer):
    """keras.layers.ReLU: ``max_value=6`` is relu6 (MobileNet)."""

    max_value: float | None = None
    keras_class: ClassVar[str] = "ReLU"

    def __call__(self, x):
        if self.max_value == 6.0:
            return jax.nn.relu6(x)
        y = jax.nn.relu(x)
        return y if self.max_value is None else jnp.minimum(y, self.max_value)


class ZeroPadding2D(KerasLayer):
    """``padding`` is an int, (pad_h, pad_w) or ((top, bottom), (left, right)), as in Keras."""

    padding: Any = 1
    keras_class: ClassVar[str] = "ZeroPadding2D"

    def __call__(self, x):
        p = self.padding
        if isinstance(p, int):
            p = ((p, p), (p, p))
        elif isinstance(p[0], int):
            p = ((p[0], p[0]), (p[1], p[1]))
        return jnp.pad(x, ((0, 0), tuple(p[0]), tuple(p[1]), (0, 0)))


class Cropping2D(KerasLayer):
    """``cropping`` is an int, (crop_h, crop_w) or ((top, bottom), (left, right)), as in Keras."""

    cropping: Any = ((0, 0), (0, 0))
    keras_class: ClassVar[str] = "Cropping2D"

    def __call__(self, x):
        c = self.cropping
        if isinstance(c, int):
            c = ((c, c), (c, c))
        elif isinstance(c[0], int):
            c = ((c[0], c[0]), (c[1], c[1]))
        (top, bottom), (left, right) = c
        if top + bottom >= x.shape[1] or left + right >= x.shape[2]:
            raise ValueError(
                "Values in `cropping` argument should be smaller than the corresponding spatial dimension "
                f"of the input. Received: inputs.shape={x.shape}, cropping={c}"
            )
        return x[:, top : x.shape[1] - bottom, left : x.shape[2] - right, :]


def _pool_args(pool_size, strides, padding):
    window = (1, *_pair(pool_size), 1)
    strides = window if strides is None else (1, *_pair(strides), 1)
    return window, strides, padding.upper()


class MaxPooling2D(KerasLayer):
    """'same' pads with -inf, as ``lax.reduce_window`` in Keras: padding never wins the max."""

    pool_size: IntPair = 2
    strides: IntPair | None = None
    padding: str = "valid"
    keras_class: ClassVar[str] = "MaxPooling2D"

    def __call__(self, x):
        window, strides, padding = _pool_args(self.pool_size, self.strides, self.padding)
        if _EXPORT.get():
            return functools.reduce(jnp.maximum, _window_slices(x, window[1:3], strides[1:3], padding, -jnp.inf))
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, padding)


class AveragePooling2D(KerasLayer):
    """'same' divides by the number of valid pixels (Flax's avg_pool counts the padding)."""

    pool_size: IntPair = 2
    strides: IntPair | None = None
    padding: str = "valid"
    keras_class: ClassVar[str] = "AveragePooling2D"

    def __call__(self, x):
        window, strides, padding = _pool_args(self.pool_size, self.strides, self.padding)
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)  # the valid pixels of each window ('same')
        if _EXPORT.get():
            summed = functools.reduce(jnp.add, _window_slices(x, window[1:3], strides[1:3], padding))
            counts = functools.reduce(jnp.add, _window_slices(ones, window[1:3], strides[1:3], padding))
            return summed / counts  # constant-folded by the runtimes
        summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
        if padding == "VALID":
            return summed / np.prod(window)
        counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
        return summed / counts


class GlobalAveragePooling2D(KerasLayer):
    keepdims: bool = False
    keras_class: ClassVar[str] = "GlobalAveragePooling2D"

    def __call__(self, x):
        return jnp.mean(x, axis=(1, 2), keepdims=self.keepdims, dtype=jnp.result_type(x, jnp.float32))


class GlobalMaxPooling2D(KerasLayer):
    keepdims: bool = False
    keras_class: ClassVar[str] = "GlobalMaxPooling2D"

    def __call__(self, x):
        return jnp.max(x, axis=(1, 2), keepdims=self.keepdims)


class Flatten(KerasLayer):
    keras_class: ClassVar[str] = "Flatten"

    def __call__(self, x):
        return x.reshape(x.shape[0], -1)


class Reshape(KerasLayer):
    target_shape: tuple[int, ...] = ()
    keras_class: ClassVar[str] = "Reshape"

    def __call__(self, x):
        return x.reshape(x.shape[0], *self.target_shape)


class Add(KerasLayer):
    keras_class: ClassVar[str] = "Add"

    def __call__(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class TensorAdd(KerasLayer):
    """``a + b`` on Keras tensors (an operation, not a layer: absent from ``model.layers``)."""

    keras_class: ClassVar[str] = "Add"
    keras_operation: ClassVar[bool] = True

    def __call__(self, a, b):
        return a + b


class TensorMultiply(KerasLayer):
    """``a * b`` on Keras tensors, or a tensor times a constant (MobileNetV3's ``ReLU(6.)(x + 3.) * (1. / 6.)``):
    an operation, as :class:`TensorAdd`."""

    keras_class: ClassVar[str] = "Multiply"
    keras_operation: ClassVar[bool] = True

    def __call__(self, a, b):
        return a * b


class Multiply(KerasLayer):
    """keras.layers.Multiply (``layers.multiply``): the elementwise product, broadcasting (EfficientNet's
    squeeze-and-excite gate, (N, 1, 1, C), times the feature map)."""

    keras_class: ClassVar[str] = "Multiply"

    def __call__(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class CustomScaleLayer(KerasLayer):
    """InceptionResNetV2's scaled residual: ``inputs[0] + inputs[1] * scale``."""

    scale: float = 1.0
    keras_class: ClassVar[str] = "CustomScaleLayer"

    def __call__(self, xs):
        return xs[0] + xs[1] * self.scale


class Concatenate(KerasLayer):
    axis: int = -1
    keras_class: ClassVar[str] = "Concatenate"

    def __call__(self, xs):
        return jnp.concatenate(xs, axis=self.axis)


class Dropout(KerasLayer):
    """Active only with ``training=True`` (needs a ``'dropout'`` rng), like Keras. ``noise_shape`` as Keras':
    the shape of the keep mask, None entries taking the input's (``(None, 1, 1, 1)``: one draw per image, the
    stochastic depth of EfficientNet's blocks), broadcast over the input."""

    rate: float = 0.5
    noise_shape: tuple[int | None, ...] | None = None
    keras_class: ClassVar[str] = "Dropout"

    def __call__(self, x, training: bool = False):
        if not training or self.rate == 0.0:
            return x
        shape = x.shape
        if self.noise_shape is not None:
            shape = tuple(d if n is None else n for n, d in zip(self.noise_shape, x.shape))
        keep = jnp.broadcast_to(jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, shape), x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


def _as_constant(value):
    """A scalar or per-channel constant as a float or a tuple of floats: hashable, with a stable repr
    (a model's configuration is part of its checkpoints' structure key)."""
    a = np.asarray(value, np.float64)
    return float(a) if a.ndim == 0 else tuple(a.reshape(-1).tolist()) if a.ndim == 1 else value


def _float_input(x):
    """Keras casts inputs to its float32 compute dtype; flaxzoo keeps float16 / bfloat16 (see check_input)."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


class Rescaling(KerasLayer):
    """keras.layers.Rescaling: ``x * scale + offset``, ``scale`` and ``offset`` scalars or per-channel
    (EfficientNet's ``1 / sqrt(stddev)`` per channel), cast to the input's float dtype as Keras casts them to
    its compute dtype."""

    scale: float | Sequence[float]
    offset: float | Sequence[float] = 0.0
    keras_class: ClassVar[str] = "Rescaling"

    def __post_init__(self):
        object.__setattr__(self, "scale", _as_constant(self.scale))
        object.__setattr__(self, "offset", _as_constant(self.offset))
        super().__post_init__()

    def __call__(self, x):
        x = _float_input(x)
        return x * jnp.asarray(self.scale, x.dtype) + jnp.asarray(self.offset, x.dtype)


# --------------------------------------------------------------------------------------------
# Layers with weights
# --------------------------------------------------------------------------------------------

glorot_uniform = nn.initializers.glorot_uniform()
zeros = nn.initializers.zeros
ones = nn.initializers.ones


class Conv2D(KerasLayer):
    """keras.layers.Conv2D (channels_last, HWIO kernel, bias added after the convolution). ``groups`` splits
    the channels (kernel (kh, kw, C / groups, filters)); ``groups=C`` is a depthwise convolution (ConvNeXt's
    7x7), computed as :class:`DepthwiseConv2D` computes one."""

    filters: int
    kernel_size: IntPair
    strides: IntPair = 1
    padding: str = "valid"
    use_bias: bool = True
    activation: str | Callable | None = None
    dilation_rate: IntPair = 1
    groups: int = 1
    keras_class: ClassVar[str] = "Conv2D"
    keras_weights: ClassVar = (("params", "kernel"), ("params", "bias"))

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(self.kernel_size)
        c = x.shape[-1]
        if c % self.groups or self.filters % self.groups:
            raise ValueError(
                f"{self.name}: the number of input channels ({c}) and of filters ({self.filters}) must be "
                f"divisible by the number of groups ({self.groups})"
            )
        kernel = self.param("kernel", glorot_uniform, (kh, kw, c // self.groups, self.filters)).astype(x.dtype)
        if self.groups == 1:
            y = conv2d(x, kernel, self.strides, self.padding, self.dilation_rate)
        elif self.groups == c and _pair(self.dilation_rate) == (1, 1):  # output channel o reads input o // m
            y = depthwise_conv(x, kernel.reshape(kh, kw, c, self.filters // c), self.strides, self.padding)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, window_strides=_pair(self.strides), padding=self.padding.upper(),
                rhs_dilation=_pair(self.dilation_rate), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )  # fmt: skip
        if self.use_bias:
            y = y + self.param("bias", zeros, (self.filters,)).astype(y.dtype)
        return get_activation(self.activation)(y)

    def macs(self, in_shapes, out_shape):
        return int(np.prod(out_shape)) * int(np.prod(_pair(self.kernel_size))) * in_shapes[0][-1] // self.groups


def _grouped_depthwise(x, kernel, strides, padding):
    """One grouped convolution (``feature_group_count=C``): cuDNN's and TPU's fast path, slow on XLA:CPU."""
    kh, kw, c, m = kernel.shape
    return jax.lax.conv_general_dilated(
        x,
        kernel.reshape(kh, kw, 1, c * m).astype(x.dtype),
        window_strides=strides,
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )


def _same_padding(size: int, k: int, s: int) -> tuple[int, tuple[int, int]]:
    """TF 'SAME': output size and (before, after) padding, the extra pixel after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, (total // 2, total - total // 2)


def _padded(x, kh: int, kw: int, strides, padding: str, fill: float = 0.0):
    """``x`` padded with ``fill`` for a (kh, kw) window ('SAME': TF's split; 'VALID': as is) and the output
    height, width."""
    (sh, sw), (h, w) = strides, x.shape[1:3]
    if padding == "SAME":
        ho, pad_h = _same_padding(h, kh, sh)
        wo, pad_w = _same_padding(w, kw, sw)
        return jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)), constant_values=fill), ho, wo
    return x, (h - kh) // sh + 1, (w - kw) // sw + 1


def _window_slices(x, window: tuple[int, int], strides: tuple[int, int], padding: str, fill: float = 0.0):
    """Each of a (kh, kw) window's positions as a strided slice of the padded ``x``, row by row: the slice
    at (i, j) holds every output pixel's input at that offset of its window."""
    (kh, kw), (sh, sw) = window, strides
    x, ho, wo = _padded(x, kh, kw, strides, padding, fill)
    n, c = x.shape[0], x.shape[3]
    for i in range(kh):
        for j in range(kw):
            yield jax.lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))


def _shifted_depthwise(x, kernel, strides, padding):
    """The same sum written as kh·kw strided slices times a per-channel weight: XLA:CPU fuses it into one
    vectorised loop (a 3x3 depthwise conv on (8, 112, 112, 64): 122 ms grouped, ~3 ms this way)."""
    kh, kw, c, m = kernel.shape
    if m > 1:  # output channel c·m + k takes input channel c
        x = jnp.repeat(x, m, axis=-1)
    k = kernel.reshape(kh * kw, c * m).astype(x.dtype)
    out = None
    for weight, patch in zip(k, _window_slices(x, (kh, kw), strides, padding)):
        out = patch * weight if out is None else out + patch * weight
    return out


def _pointwise_as_matmul(x, kernel, strides):
    """A 1x1 convolution as one (pixels, C) x (C, filters) matrix product: XLA:CPU runs it 1.2-1.5x faster
    than its convolution. With a 1x1 kernel, 'same' and 'valid' agree: output pixel i reads input pixel i·s."""
    sh, sw = strides
    x = x[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else x
    n, h, w, c = x.shape
    return jnp.dot(x.reshape(n * h * w, c), kernel.reshape(c, -1)).reshape(n, h, w, -1)


CONV_IMPLEMENTATIONS = ("auto", "keras", "cpu")
_CONV: contextvars.ContextVar[str] = contextvars.ContextVar("flaxzoo_conv", default="auto")
_EXPORT: contextvars.ContextVar[bool] = contextvars.ContextVar("flaxzoo_export_forms", default=False)


@contextlib.contextmanager
def export_forms():
    """The forms flaxzoo.export traces in: Keras' convolutions (one operation each, as every runtime expects),
    and pooling windows as strided slices combined by max or add. ONNX runtimes pool over NCHW windows only,
    and an NHWC ``reduce_window`` reaches them as a 4-D window (onnxruntime: "Unsupported pooling size");
    the slices are standard everywhere. Max pooling stays bit-identical, average pooling sums in another order."""
    token = _EXPORT.set(True)
    try:
        with conv_implementation("keras"):
            yield
    finally:
        _EXPORT.reset(token)


@contextlib.contextmanager
def conv_implementation(name: str):
    """Choose how convolutions are traced within this context: ``"auto"`` (default: the ``"cpu"`` forms on
    CPU, Keras' elsewhere: in a process whose default backend is the CPU, the CPU forms; else decided when XLA
    lowers for the platform, so a CPU computation there gets them too), ``"keras"`` (Keras' own operations:
    grouped depthwise convolutions, 1x1 convolutions as convolutions; cuDNN's and TPU's fast path, and
    bit-identical to Keras) or ``"cpu"`` (depthwise as shifted multiply-adds, 1x1 as matrix products).
    The forms are equal within float32 rounding. Read when a function is traced: a function jax has
    already traced and cached keeps the form it was traced with."""
    if name not in CONV_IMPLEMENTATIONS:
        raise ValueError(f"unknown convolution implementation {name!r}; expected one of {CONV_IMPLEMENTATIONS}")
    token = _CONV.set(name)
    try:
        yield
    finally:
        _CONV.reset(token)


def shapes_only():
    """The context for abstract traces (``jax.eval_shape``, graphs, abstract variables): Keras' forms, one
    operation per convolution, the cheapest to trace; shapes and variables are the same in every form."""
    return conv_implementation("keras")


def _by_platform(x, kernel, *, cpu: Callable, keras: Callable):
    impl = _CONV.get()
    if impl == "keras":
        return keras(x, kernel)
    if impl == "cpu":
        return cpu(x, kernel)
    if jax.default_backend() == "cpu":
        # no accelerator in this process: the CPU form alone (a platform_dependent switch traces both forms,
        # which doubled the trace time of depthwise-heavy models)
        return cpu(x, kernel)
    return jax.lax.platform_dependent(x, kernel, cpu=cpu, default=keras)


def conv2d(x, kernel, strides, padding: str, dilation_rate: IntPair = 1):
    """Keras' Conv2D convolution (HWIO kernel); on CPU 1x1 kernels as matrix products. Larger kernels stay
    XLA's convolution everywhere: on CPU, compiled with :func:`flaxzoo.compiler_options` (no YNNPACK), it
    is as fast as a patch-matrix product or faster (2x on 32-64 channels at stride 1), and much faster
    than YNNPACK's."""
    strides, padding, dilation = _pair(strides), padding.upper(), _pair(dilation_rate)

    def keras(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=strides, padding=padding, rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip

    if kernel.shape[:2] == (1, 1):
        return _by_platform(x, kernel, cpu=lambda x, k: _pointwise_as_matmul(x, k, strides), keras=keras)
    return keras(x, kernel)


def depthwise_conv(x, kernel, strides, padding):
    """Keras' depthwise convolution: kernel (kh, kw, C, m) → output channel c·m + k."""
    strides, padding = _pair(strides), padding.upper()
    return _by_platform(
        x, kernel,
        cpu=lambda x, k: _shifted_depthwise(x, k, strides, padding),
        keras=lambda x, k: _grouped_depthwise(x, k, strides, padding),
    )  # fmt: skip


class DepthwiseConv2D(KerasLayer):
    """keras.layers.DepthwiseConv2D; the kernel keeps Keras' layout (kh, kw, C, depth_multiplier)."""

    kernel_size: IntPair
    strides: IntPair = 1
    padding: str = "valid"
    depth_multiplier: int = 1
    use_bias: bool = True
    keras_class: ClassVar[str] = "DepthwiseConv2D"
    keras_weights: ClassVar = (("params", "depthwise_kernel"), ("params", "bias"))

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(self.kernel_size)
        c, m = x.shape[-1], self.depth_multiplier
        kernel = self.param("depthwise_kernel", glorot_uniform, (kh, kw, c, m))
        y = depthwise_conv(x, kernel, self.strides, self.padding)
        if self.use_bias:
            y = y + self.param("bias", zeros, (c * m,)).astype(y.dtype)
        return y

    def macs(self, in_shapes, out_shape):
        return int(np.prod(out_shape)) * int(np.prod(_pair(self.kernel_size)))


class SeparableConv2D(KerasLayer):
    """keras.layers.SeparableConv2D: a depthwise conv (stride, padding), then a separate 1x1 'valid' conv."""

    filters: int
    kernel_size: IntPair
    strides: IntPair = 1
    padding: str = "valid"
    depth_multiplier: int = 1
    use_bias: bool = True
    activation: str | Callable | None = None
    keras_class: ClassVar[str] = "SeparableConv2D"
    keras_weights: ClassVar = (("params", "depthwise_kernel"), ("params", "pointwise_kernel"), ("params", "bias"))

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(self.kernel_size)
        c, m = x.shape[-1], self.depth_multiplier
        depthwise = self.param("depthwise_kernel", glorot_uniform, (kh, kw, c, m))
        pointwise = self.param("pointwise_kernel", glorot_uniform, (1, 1, c * m, self.filters))
        y = depthwise_conv(x, depthwise, self.strides, self.padding)
        y = conv2d(y, pointwise.astype(y.dtype), 1, "valid")
        if self.use_bias:
            y = y + self.param("bias", zeros, (self.filters,)).astype(y.dtype)
        return get_activation(self.activation)(y)

    def macs(self, in_shapes, out_shape):
        pixels = int(np.prod(out_shape[:-1]))
        c = in_shapes[0][-1] * self.depth_multiplier
        return pixels * c * (int(np.prod(_pair(self.kernel_size))) + self.filters)


class Dense(KerasLayer):
    units: int
    activation: str | Callable | None = None
    use_bias: bool = True
    keras_class: ClassVar[str] = "Dense"
    keras_weights: ClassVar = (("params", "kernel"), ("params", "bias"))

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", glorot_uniform, (x.shape[-1], self.units))
        y = jnp.matmul(x, kernel.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", zeros, (self.units,)).astype(y.dtype)
        return get_activation(self.activation)(y)

    def macs(self, in_shapes, out_shape):
        return int(np.prod(out_shape)) * in_shapes[0][-1]


def _normalize(x, mean, var, epsilon, gamma, beta):
    """Keras' ``ops.batch_normalization`` form, shared by BatchNormalization and LayerNormalization:
    ``x * inv + (beta - mean * inv)`` with ``inv = rsqrt(var + epsilon) * gamma`` (gamma, beta optional)."""
    inv = jax.lax.rsqrt(var + epsilon)
    if gamma is not None:
        inv = inv * gamma.astype(x.dtype)
    res = -mean * inv
    if beta is not None:
        res = res + beta.astype(x.dtype)
    return x * inv + res


class LayerNormalization(KerasLayer):
    """keras.layers.LayerNormalization over the last axis, as Keras 3 computes it on JAX: two-pass moments
    (``jnp.mean``, ``jnp.var``), then ``x * inv + (beta - mean * inv)`` with ``inv = rsqrt(var + eps) * gamma``
    (Flax's LayerNorm uses ``E[x²] - E[x]²`` and another order of operations: not the same floats)."""

    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    keras_class: ClassVar[str] = "LayerNormalization"
    keras_weights: ClassVar = (("params", "scale"), ("params", "bias"))

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        gamma = self.param("scale", ones, (c,)) if self.scale else None
        beta = self.param("bias", zeros, (c,)) if self.center else None
        out_dtype = x.dtype
        x = x.astype(jnp.result_type(x.dtype, jnp.float32))
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.var(x, axis=-1, keepdims=True)
        return _normalize(x, mean, var, self.epsilon, gamma, beta).astype(out_dtype)


class LayerScale(KerasLayer):
    """ConvNeXt's ``LayerScale``: ``x * gamma``, one trainable factor per channel."""

    init_value: float = 1e-6
    keras_class: ClassVar[str] = "LayerScale"
    keras_weights: ClassVar = (("params", "gamma"),)

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))
        return x * gamma.astype(x.dtype)


_BATCH_AXIS_NAME: contextvars.ContextVar[str | None] = contextvars.ContextVar("flaxzoo_batch_axis", default=None)


@contextlib.contextmanager
def cross_replica_batch_norm(axis_name: str):
    """Within this context (around a function traced by ``jax.pmap(..., axis_name=axis_name)``), training-mode
    batch norms normalise with the statistics of the whole batch across devices, as a jit step over a
    sharded global batch does."""
    token = _BATCH_AXIS_NAME.set(axis_name)
    try:
        yield
    finally:
        _BATCH_AXIS_NAME.reset(token)


def batch_moments(x, axes: tuple[int, ...]):
    """Training-mode batch norm's biased mean and variance over ``axes``; within
    :func:`cross_replica_batch_norm`, those of the global batch (the shards are equal in size)."""
    axis_name = _BATCH_AXIS_NAME.get()
    if axis_name is None:
        return jnp.mean(x, axes), jnp.var(x, axis=axes)
    mean = jax.lax.pmean(jnp.mean(x, axes), axis_name)
    return mean, jax.lax.pmean(jnp.mean(jnp.square(x - mean), axes), axis_name)


class BatchNormalization(KerasLayer):
    """keras.layers.BatchNormalization over the last axis.

    Inference uses Keras' formula ``x * inv + (beta - mean * inv)`` with ``inv = rsqrt(var + eps) * gamma``
    (Flax's ``(x - mean) * inv + beta`` differs by ~1e-6). ``training=True`` normalises with the biased
    batch moments and updates the moving statistics as ``moving * momentum + batch * (1 - momentum)``;
    pass ``mutable=["batch_stats"]``. ``folded=True`` (:func:`flaxzoo.fold_batchnorm`: the scale is in the
    convolution before it) only adds ``bias``.

    A model's frozen and folded layers (``Application.frozen`` / ``folded``) reach its batch norms at any
    depth through :func:`layer_modes`, which the model applies around its forward pass: a frozen one is
    called with ``training=False`` (Keras' ``trainable=False``), a folded one with ``folded=True``.
    """

    epsilon: float = 1e-3
    momentum: float = 0.99
    scale: bool = True
    center: bool = True
    keras_class: ClassVar[str] = "BatchNormalization"
    keras_weights: ClassVar = (
        ("params", "scale"),
        ("params", "bias"),
        ("batch_stats", "mean"),
        ("batch_stats", "var"),
    )

    @nn.compact
    def __call__(self, x, training: bool = False, *, folded: bool = False):
        c = x.shape[-1]
        if folded:
            if training:
                raise ValueError(f"{self.name}: a batch norm folded for inference cannot train (train=True)")
            return x + self.param("bias", zeros, (c,)).astype(x.dtype)
        gamma = self.param("scale", ones, (c,)) if self.scale else None
        beta = self.param("bias", zeros, (c,)) if self.center else None
        moving_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        moving_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

        out_dtype = x.dtype
        x = x.astype(jnp.result_type(x.dtype, jnp.float32))
        if training:
            mean, var = batch_moments(x, tuple(range(x.ndim - 1)))
            if not self.is_initializing():
                m = self.momentum
                moving_mean.value = moving_mean.value * m + mean * (1.0 - m)
                moving_var.value = moving_var.value * m + var * (1.0 - m)
        else:
            mean, var = moving_mean.value.astype(x.dtype), moving_var.value.astype(x.dtype)

        return _normalize(x, mean, var, self.epsilon, gamma, beta).astype(out_dtype)


def _ancestry(module: nn.Module, root: nn.Module):
    """``module`` and its parents up to (not including) ``root``, the model."""
    while isinstance(module, nn.Module) and module is not root:
        yield module
        module = module.parent


def _not_training(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if len(args) > 1:  # BatchNormalization(...)(x, train)
        return (args[0], False, *args[2:]), kwargs
    return args, {**kwargs, "training": False}


@contextlib.contextmanager
def layer_modes(model: nn.Module, frozen: Collection[str] = (), folded: Collection[str] = ()):
    """Within this context (around ``model``'s forward pass, ``model`` bound), every
    :class:`BatchNormalization` of ``model``, at any depth, runs as a frozen or folded layer:

    * frozen (Keras' ``trainable=False``) when it, or a Keras layer it belongs to, is named in ``frozen``:
      inference mode (moving statistics used and kept) also under ``train=True``;
    * folded (:func:`flaxzoo.fold_batchnorm`) when it is named in ``folded``.

    Applied by every :class:`flaxzoo.models.common.Application` to its own forward pass, so a block written
    as its own ``nn.Module`` needs nothing to pass the modes down. Depth includes models within the model:
    the layer graph lists their layers as the model's own, so its frozen and folded sets reach them (a nested
    model's own sets apply as well)."""
    frozen, folded = frozenset(frozen), frozenset(folded)

    def apply_modes(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, BatchNormalization):
            return next_fun(*args, **kwargs)
        if module.name in folded:
            kwargs = {**kwargs, "folded": True}
        if frozen and any(isinstance(m, KerasLayer) and m.name in frozen for m in _ancestry(module, model)):
            args, kwargs = _not_training(args, kwargs)
        return next_fun(*args, **kwargs)

    if not (frozen or folded):
        yield
        return
    with nn.intercept_methods(apply_modes):
        yield


CONSTANTS = "constants"
"""The collection of non-trainable Keras weights that are not batch-norm statistics (see the module docstring)."""

_EPSILON = 1e-7  # keras.backend.epsilon()


class Normalization(KerasLayer):
    """keras.layers.Normalization over the last axis (Keras' ``axis=-1``, or the last axis by number as
    EfficientNet's ``axis=3``), as Keras 3 computes it: ``(x - mean) / maximum(sqrt(variance), 1e-7)``;
    ``invert=True``: ``mean + x * maximum(sqrt(variance), 1e-7)``.

    ``mean`` and ``variance`` given (Keras' constructor arguments: scalars or per-channel) are constants
    of the configuration, and the layer has no weights, as in Keras. Otherwise mean, variance and count
    are weights, non-trainable in Keras (legacy .h5 order: mean, variance, count), here in
    :data:`CONSTANTS`: initialised as Keras' (0, 1, 0) and read from a Keras file. ``count`` (int32, as
    Keras 3 writes it) is not used by the computation, only kept. Keras' ``adapt`` has no counterpart.
    Computed in float32; float16 / bfloat16 outputs keep the input's dtype.
    """

    axis: int = -1
    mean: float | Sequence[float] | None = None
    variance: float | Sequence[float] | None = None
    invert: bool = False
    keras_class: ClassVar[str] = "Normalization"
    keras_weights: ClassVar = ((CONSTANTS, "mean"), (CONSTANTS, "variance"), (CONSTANTS, "count"))

    def __post_init__(self):
        # Keras' constructor checks, with its messages
        if (self.mean is None) != (self.variance is None):
            raise ValueError(
                "When setting values directly, both `mean` and `variance` must be set. "
                f"Received: mean={self.mean} and variance={self.variance}"
            )
        if self.mean is not None:
            if np.shape(self.mean) != np.shape(self.variance):
                raise ValueError(
                    "When setting values directly, `mean` and `variance` must have the same shape. Received: "
                    f"mean shape {np.shape(self.mean)} and variance shape {np.shape(self.variance)}"
                )
            if np.ndim(self.mean) > 1:
                raise ValueError(
                    "The rank of `mean` must be less than or equal to the number of axes (1). Received: "
                    f"mean shape {np.shape(self.mean)} for axis ({self.axis},)"
                )
            object.__setattr__(self, "mean", _as_constant(self.mean))
            object.__setattr__(self, "variance", _as_constant(self.variance))
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        ndim, c = x.ndim, x.shape[-1]
        if not -ndim <= self.axis < ndim:
            raise ValueError(
                f"All `axis` values must be in the range [-ndim, ndim). Received inputs with ndim={ndim}, "
                f"while axis=({self.axis},)"
            )
        if self.axis % ndim != ndim - 1:
            raise ValueError(
                f"{self.name}: flaxzoo's Normalization normalises the last axis only; got axis={self.axis} for ndim={ndim}"
            )
        if self.mean is not None:
            mean, variance = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.variance, jnp.float32)
        else:
            mean = self.variable(CONSTANTS, "mean", lambda: jnp.zeros((c,), jnp.float32)).value
            variance = self.variable(CONSTANTS, "variance", lambda: jnp.ones((c,), jnp.float32)).value
            self.variable(CONSTANTS, "count", lambda: jnp.zeros((), jnp.int32))
        x = _float_input(x)
        out_dtype = x.dtype
        x = x.astype(jnp.result_type(x.dtype, jnp.float32))
        std = jnp.maximum(jnp.sqrt(variance.astype(x.dtype)), _EPSILON)
        mean = mean.astype(x.dtype)
        y = mean + x * std if self.invert else (x - mean) / std
        return y.astype(out_dtype)
