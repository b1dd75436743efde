"""What every Keras application constructor shares: argument checks with Keras' errors, the pooling
head for ``include_top=False``, and building (module, variables) from the ``weights`` argument."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flaxzoo import graph as graph_lib
from flaxzoo.errors import InputError
from flaxzoo.input_channels import RGB, adapt_channels, adapt_input_channels
from flaxzoo.layers import (
    Dense,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    is_softmax_or_linear,
    layer_modes,
    shapes_only,
    snake_case,
)
from flaxzoo.registry import ModelSpec, register


_ABSTRACT = contextvars.ContextVar("flaxzoo_abstract_variables", default=False)


@contextlib.contextmanager
def abstract_variables():
    """Within this context, constructors called with ``weights=None`` return ``jax.ShapeDtypeStruct``
    variables: the module and its variable shapes, with no initialisation or weight I/O."""
    token = _ABSTRACT.set(True)
    try:
        yield
    finally:
        _ABSTRACT.reset(token)


@dataclasses.dataclass(frozen=True)
class KerasMessages:
    """The wording of the two argument errors, which differs between Keras application files."""

    weights: str = (
        "The `weights` argument should be either `None` (random initialization), 'imagenet' "
        "(pre-training on ImageNet), or the path to the weights file to be loaded.  "
        "Received: weights={weights}"
    )
    classes: str = (
        "If using `weights='imagenet'` with `include_top=True`, `classes` should be 1000.  "
        "Received classes={classes}"
    )


# DenseNet's and NASNet's files word both errors alike, and unlike the common head.
DENSENET_NASNET_MESSAGES = KerasMessages(
    weights=(
        "The `weights` argument should be either `None` (random initialization), `imagenet` "
        "(pre-training on ImageNet), or the path to the weights file to be loaded."
    ),
    classes='If using `weights` as `"imagenet"` with `include_top` as true, `classes` should be 1000',
)


def check_weights_arg(weights: Any, messages: KerasMessages = KerasMessages()) -> None:
    if weights is None or (isinstance(weights, str) and weights == "imagenet"):
        return
    if isinstance(weights, str | os.PathLike) and os.path.exists(weights):
        return
    raise ValueError(messages.weights.format(weights=weights))


def check_classes(weights: Any, include_top: bool, classes: int, messages: KerasMessages = KerasMessages()) -> None:
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(messages.classes.format(classes=classes))


def obtain_input_shape(
    input_shape, default_size: int, min_size: int, require_flatten: bool, weights: Any
) -> tuple[int | None, ...]:
    """keras.applications.imagenet_utils.obtain_input_shape, channels_last.

    Unlike Keras, a list is accepted where a tuple is (Keras compares ``[224, 224, 3] != (224, 224, 3)``
    and raises); everything else, messages included, is Keras'.
    """
    if input_shape is not None:
        input_shape = tuple(input_shape)
    if weights != "imagenet" and input_shape and len(input_shape) == 3:
        if input_shape[-1] not in {1, 3}:
            warnings.warn(
                "This model usually expects 1 or 3 input channels. However, it was passed an input_shape "
                f"with {input_shape[-1]} input channels.",
                stacklevel=3,
            )
        default_shape = (default_size, default_size, input_shape[-1])
    else:
        default_shape = (default_size, default_size, 3)
    if weights == "imagenet" and require_flatten:
        if input_shape is not None and input_shape != default_shape:
            raise ValueError(
                "When setting `include_top=True` and loading `imagenet` weights, "
                f"`input_shape` should be {default_shape}.  Received: input_shape={input_shape}"
            )
        return default_shape
    if input_shape:
        if len(input_shape) != 3:
            raise ValueError("`input_shape` must be a tuple of three integers.")
        if input_shape[-1] != 3 and weights == "imagenet":
            raise ValueError(f"The input must have 3 channels; Received `input_shape={input_shape}`")
        if any(d is not None and d < min_size for d in input_shape[:2]):
            raise ValueError(
                f"Input size must be at least {min_size}x{min_size}; Received: input_shape={input_shape}"
            )
    else:
        input_shape = default_shape if require_flatten else (None, None, 3)
    if require_flatten and None in input_shape:
        raise ValueError(
            "If `include_top` is True, you should specify a static `input_shape`. "
            f"Received: input_shape={input_shape}"
        )
    return input_shape


def validate_activation(classifier_activation: Any, weights: Any) -> None:
    if weights is not None and not is_softmax_or_linear(classifier_activation):
        raise ValueError(
            "Only `None` and `softmax` activations are allowed for the `classifier_activation` argument "
            "when using pretrained weights, with `include_top=True`; Received: "
            f"classifier_activation={classifier_activation}"
        )


class Application(nn.Module):
    """Base of every application module: the Keras constructor arguments that shape the head, and what
    model surgery needs about the model as built (Keras' ``model.input_shape``, frozen layers)."""

    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000
    classifier_activation: str | Callable | None = "softmax"
    # Keras' ``model.input_shape`` without the batch: None dimensions take any size (traced at default_size).
    input_shape: tuple[int | None, ...] = (None, None, 3)
    default_size: int = 224
    # Layers with Keras' ``trainable = False`` (see flaxzoo.freeze): their batch norms use and keep the
    # moving statistics, also under ``train=True``.
    frozen: frozenset[str] = frozenset()
    # Batch norms folded into the convolution before them (flaxzoo.fold_batchnorm): they only add a bias.
    folded: frozenset[str] = frozenset()
    # The registry's min_size (set by ``instantiate``): the least height and width of an input where the size
    # is free (None in input_shape, or any without the top). Keras checks it on ``input_shape`` only; below
    # it the feature maps collapse to nothing.
    min_size: int = 1
    # Keras' ``model.name`` (the constructor's ``name``). The module's Flax name is the same until the model
    # becomes a submodule (a user's module, ``truncate``), where Flax renames it after its attribute; layer
    # names made from the model's name (ConvNeXt's) and messages read this one.
    model_name: str | None = None
    # A backbone (features_only): the stages whose feature maps ``__call__`` returns, a list in this order,
    # stopping after the last (see flaxzoo.features). Empty: the model's own output.
    feature_info: tuple[graph_lib.FeatureInfo, ...] = ()

    # adapt_input_channels: the input channels of the pretrained model whose first convolution this one's was
    # adapted from (flaxzoo.input_channels); its in-model preprocessing keeps the pretrained model's, per channel
    pretrained_channels: int | None = None

    # The Keras layers that end the stages, where a family names them once for all its presets (see feature_layers)
    stage_ends: ClassVar[tuple[str, ...] | None] = None

    @property
    def traced_shape(self) -> tuple[int, ...]:
        """A batch of one image of the input shape, None dimensions at the default size: where it is traced."""
        return (1, *(self.default_size if d is None else d for d in self.input_shape))

    @property
    def rgb_input(self) -> bool:
        """The input is RGB or stands for it (adapted from RGB): Keras' condition for ImageNet's per-channel
        normalization inside EfficientNetV2 B0-B3 and ConvNeXt."""
        return self.input_shape[-1] == RGB or self.pretrained_channels == RGB

    @nn.nowrap
    def per_channel(self, rgb_constants: Sequence[float]) -> tuple[float, ...]:
        """Per-RGB-channel constants of in-model preprocessing for the input channels: as given, or adapted as
        the first convolution's kernel was (flaxzoo.input_channels)."""
        if self.pretrained_channels is None:
            return tuple(rgb_constants)
        return tuple(adapt_channels(rgb_constants, self.input_shape[-1], kernel=False).tolist())

    @nn.nowrap
    def feature_layers(self, graph: graph_lib.Graph) -> tuple[str | graph_lib.Tap, ...]:
        """The Keras layers that end the stages, by stride, given the no-top graph (at the input size): each a
        layer name (its output) or a ``(name, "input")`` tap. By default, at each stride the last layer that is
        not a padding: the activation after a stage, where the next stage starts with a strided convolution
        (ResNet's ``conv2_block3_out``, MobileNetV2's ``block_3_expand_relu``). Families whose stages end
        otherwise (Keras' layer order, or pre-activation) name theirs: ``stage_ends``, or this method where the
        names depend on the preset."""
        return self.stage_ends or default_stage_ends(graph)

    def __init_subclass__(cls, **kwargs):
        # Every model's __call__ checks its input (see check_input): wrapped here, before Flax wraps it,
        # so that no model file has to remember to.
        call = cls.__dict__.get("__call__")
        if call is not None:
            cls.__call__ = _checking_input(call)
        super().__init_subclass__(**kwargs)


def _checking_input(call: Callable) -> Callable:
    input_name = list(inspect.signature(call).parameters)[1]

    @functools.wraps(call)  # keeps nn.compact's marker
    def checked(self, *args, **kwargs):
        if args:
            args = (check_input(self, args[0]), *args[1:])
        elif input_name in kwargs:
            kwargs[input_name] = check_input(self, kwargs[input_name])
        # frozen / folded batch norms at any depth, blocks written as their own modules included
        with layer_modes(self, self.frozen, self.folded):
            if not self.feature_info:
                return call(self, *args, **kwargs)
            taps = [(f.layer, f.tap) for f in self.feature_info]
            found = graph_lib.run_until(taps, lambda: call(self, *args, **kwargs), self.model_name or self.name)
            return [found[tap] for tap in taps]

    return checked


STRIDES = (2, 4, 8, 16, 32)
_NOT_STAGE_ENDS = ("ZeroPadding2D", "Cropping2D", "Dropout")


def nominal_stride(size: int, height: int) -> int:
    """The output stride of a feature map of ``height`` from an input of ``size``: the nearest power of two
    (valid-padded models lose a few pixels: InceptionV3's 8x8 of 299 is stride 32)."""
    return 2 ** round(np.log2(size / height))


def default_stage_ends(graph: graph_lib.Graph) -> tuple[str, ...]:
    """At each stride of :data:`STRIDES`, the last layer in Keras' order (no padding) with a feature map at it."""
    size = graph.layers[0].output_shape[1]  # the input layer's: the graph's size
    last = {}
    for layer in graph.layers:
        if len(layer.output_shape) == 4 and layer.keras_class not in _NOT_STAGE_ENDS:
            last[nominal_stride(size, layer.output_shape[1])] = layer.name
    return tuple(last[s] for s in STRIDES if s in last)


def _body(module: Application) -> Application:
    """``module`` without its top, as built: the model its stages are the layers of."""
    return module.clone(include_top=False, pooling=None, feature_info=(), frozen=frozenset(), folded=frozenset())


def body_graph(module: Application) -> graph_lib.Graph:
    """The graph of ``module`` without its top (the stages' model), traced at its input size."""
    return graph_lib.trace(_body(module), module.traced_shape)


def stage_features(module: Application, body: graph_lib.Graph | None = None) -> tuple[graph_lib.FeatureInfo, ...]:
    """Every stage of ``module`` as :class:`~flaxzoo.graph.FeatureInfo` (any head: the stages are the no-top
    model's), from an abstract trace at its input size (None dimensions: the default size). Nothing runs.
    ``body``: :func:`body_graph` of ``module``, where the caller has it."""
    base, shape = _body(module), module.traced_shape
    graph = body or graph_lib.trace(base, shape)
    taps = [tap if isinstance(tap, tuple) else (tap, "output") for tap in base.feature_layers(graph)]
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with shapes_only():
        found = jax.eval_shape(lambda x: graph_lib.run_until(taps, lambda: base.init(rngs, x)), jnp.zeros(shape))
    entries = []
    for layer, tap in taps:
        _, height, _, channels = found[(layer, tap)].shape
        stride = nominal_stride(shape[1], height)
        entries.append(graph_lib.FeatureInfo(int(np.log2(stride)) - 1, layer, int(channels), stride, tap))
    if [e.reduction for e in entries] != sorted({e.reduction for e in entries}):
        raise AssertionError(f"{type(module).__name__}: stage strides {[e.reduction for e in entries]} do not increase")
    return tuple(entries)


def backbone(module: Application, out_indices: Sequence[int] = (1, 2, 3, 4)) -> Application:
    """``module`` as a backbone: no top, and ``__call__`` returns the feature maps of the stages
    ``out_indices`` (:attr:`FeatureInfo.index`: index ``i`` is stride ``2 ** (i + 1)``), as a list."""
    stages = {entry.index: entry for entry in stage_features(module)}
    name = module.model_name or type(module).__name__
    if isinstance(out_indices, int) or not out_indices or any(i not in stages for i in out_indices):
        raise ValueError(
            f"out_indices={out_indices!r}: {name} has the stages {tuple(stages)} (index i is output stride "
            f"2**(i + 1): {', '.join(f'{i}: {e.reduction}' for i, e in stages.items())})"
        )
    return module.clone(include_top=False, pooling=None, feature_info=tuple(stages[i] for i in out_indices))


def backbone_variables(module: Application, variables: Mapping) -> dict:
    """The part of a model's ``variables`` that backbone ``module`` runs (traced at its input size)."""
    return keep_variables(variables, graph_lib.trace(module, module.traced_shape).variables)


def keep_variables(variables: Mapping, like: Mapping) -> dict:
    """The part of ``variables`` that ``like`` (a variable tree, abstract or not) has: a backbone's variables
    are those of the layers it runs."""
    return {
        key: keep_variables(variables[key], sub) if isinstance(sub, Mapping) else variables[key]
        for key, sub in like.items()
    }


def _static(dim) -> int | None:
    """A dimension as an int; None when symbolic (jax.export shape polymorphism): not checked."""
    return int(dim) if isinstance(dim, int | np.integer) else None


def check_input(model: Application, x):
    """``x`` as the model takes it, or an :class:`~flaxzoo.errors.InputError` naming the expected shape.

    The checks of Keras' ``InputSpec`` (rank, channels, the size of a model with its top), plus what Keras
    lets through into an obscure failure or an empty result: an empty batch, height or width under
    ``model.min_size``. Without the top nothing depends on the size, so any size from ``min_size`` on is
    taken, also where ``input_shape`` fixes one (Keras refuses it; flaxzoo's no-top NASNet with weights is
    built at 224 or 331 only, and runs at any size). Dtypes as Keras: integers are cast to float32 (no
    scaling: uint8 images keep their 0-255 values), float64 to float32; float16 and bfloat16 are kept (Keras
    casts them to float32; flaxzoo computes in them, as ``predict_fn(dtype=jnp.bfloat16)`` does); bool,
    complex and non-numeric arrays are refused (Keras casts them silently). Shapes and dtypes are static, so
    under ``jit`` this costs nothing at run time.
    """
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        x = np.asarray(x)  # lists, as Keras converts them
    height, width, channels = model.input_shape
    expected = (None, height, width, channels) if model.include_top else (None, None, None, channels)
    found = tuple(x.shape)
    name = model.model_name or model.name or type(model).__name__

    def incompatible(requirement: str = "", hint: str = "") -> InputError:
        return InputError(
            f"Input 0 of layer '{name}' is incompatible with the layer: expected shape={expected}{requirement}, "
            f"found shape={found}{hint}"
        )

    if len(found) != len(expected):
        hint = ". Models take a batch of images: x[None] is a batch of one" if len(found) == 3 else ""
        raise incompatible(hint=hint)
    dims = [_static(d) for d in found]
    if dims[0] == 0:
        raise incompatible(" with at least one image", ": the batch is empty")
    if channels is not None and dims[3] is not None and dims[3] != channels:
        nchw = dims[1] == channels
        hint = ". Inputs are channels-last (NHWC): x.transpose(0, 2, 3, 1) converts NCHW" if nchw else ""
        raise incompatible(hint=hint)
    for want, got in zip(expected[1:3], dims[1:3]):
        if want is not None and got is not None and got != want:
            fixed = None not in expected[1:3]
            raise incompatible(hint=f". The model takes {height}x{width} images: resize them" if fixed else "")
    # A size the model was built for is taken as is (an input_tensor bypasses min_size, as in Keras).
    if any(got is not None and got != want and got < model.min_size for want, got in zip((height, width), dims[1:3])):
        raise incompatible(f" with height and width at least {model.min_size}")

    dtype = x.dtype
    if jnp.issubdtype(dtype, jnp.integer) or dtype == np.float64:
        return x.astype(np.float32)  # Keras casts to the input layer's float32, without scaling
    if jnp.issubdtype(dtype, jnp.floating):
        return x
    raise InputError(
        f"Input 0 of layer '{name}' must be a float or integer array (integers are cast to float32, as "
        f"in Keras) of shape={expected}; found dtype={dtype}, shape={found}"
    )


def correct_pad(x, kernel_size):
    """``imagenet_utils.correct_pad`` on a static shape: the zero padding that makes a stride-2 'valid'
    convolution equal TF 'SAME' ((k//2 - 1, k//2) on even sizes, (k//2, k//2) on odd ones)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    h, w = x.shape[1:3]
    return ((kh // 2 - (1 - h % 2), kh // 2), (kw // 2 - (1 - w % 2), kw // 2))


def classifier_head(model: Application, x, *, gap_name: str = "avg_pool", notop_names: tuple = (None, None)):
    """Keras' usual head. With the top: global average pooling ``gap_name``, then the ``predictions`` dense
    layer; without: :func:`pooling_head` (its layers named ``notop_names``, (avg, max), where Keras names them)."""
    if model.include_top:
        x = GlobalAveragePooling2D(name=gap_name)(x)
        return Dense(model.classes, activation=model.classifier_activation, name="predictions")(x)
    return pooling_head(x, model.pooling, *notop_names)


def pooling_head(x, pooling: str | None, avg_name: str | None = None, max_name: str | None = None):
    """``include_top=False``: 'avg' / 'max' global pooling; anything else returns the feature map, as in Keras.

    Unnamed in most Keras files, hence the auto names of the only such layer by default.
    """
    if pooling == "avg":
        return GlobalAveragePooling2D(name=avg_name or snake_case(GlobalAveragePooling2D.keras_class))(x)
    if pooling == "max":
        return GlobalMaxPooling2D(name=max_name or snake_case(GlobalMaxPooling2D.keras_class))(x)
    return x


# ------------------------------------------------------------------------------------------------
# Families and presets: one build path for every Keras application
# ------------------------------------------------------------------------------------------------

# Keras' positional order of the common constructor head, and its defaults. Families that order their
# arguments otherwise (MobileNet's input_shape first, ConvNeXt's include_preprocessing second) give theirs.
HEAD = ("include_top", "weights", "input_tensor", "input_shape", "pooling", "classes", "classifier_activation", "name")
HEAD_DEFAULTS = dict(
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
)

Arguments = dict  # a constructor call's arguments by name, defaults applied
# flaxzoo's keyword-only arguments after Keras' own: the random seed, a backbone (flaxzoo.features), and
# pretrained RGB weights on other channel counts (flaxzoo.input_channels)
FLAXZOO_KEYWORDS = {"seed": 0, "features_only": False, "out_indices": (1, 2, 3, 4), "adapt_input_channels": False}


@dataclasses.dataclass(frozen=True)
class Family:
    """What the presets of one Keras application file share: the Flax module, Keras' constructor signature
    and messages, and hooks where Keras' constructor departs from the common sequence (see
    :func:`build_application`). Each hook takes the preset's spec and the call's arguments."""

    module: type[Application]
    arguments: tuple[str, ...] = HEAD  # Keras' order; ``seed`` follows, keyword-only
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # beyond HEAD_DEFAULTS
    # constructor arguments that are fields of the module (MobileNet's alpha, depth_multiplier, dropout)
    architecture: tuple[str, ...] = ()
    messages: KerasMessages = KerasMessages()
    doc: str = ""  # appended to the constructors' docstrings
    # Hooks, in the order build_application calls them (``tuple``: the checked input shape):
    # before the input shape; may complete the arguments (NASNetMobile's no-top input_shape)
    check_arguments: Callable[[ModelSpec, Arguments], None] | None = None
    default_size: Callable[[ModelSpec, Arguments], int] | None = None  # else spec.default_size
    check: Callable[[ModelSpec, Arguments, tuple], None] | None = None  # after the input shape
    default_name: Callable[[ModelSpec, Arguments, tuple], str] | None = None  # where Keras' default is None
    variant: Callable[[ModelSpec, Arguments, tuple], str] | None = None  # the file "imagenet" means
    # the module's graph depends on ``weights`` (EfficientNet rescales its input for the "imagenet" files only)
    takes_weights: bool = False

    def signature(self, spec: ModelSpec) -> inspect.Signature:
        defaults = {**HEAD_DEFAULTS, "name": spec.default_name or spec.name, **self.defaults}
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params = [inspect.Parameter(arg, kind, default=defaults[arg]) for arg in self.arguments]
        keyword = inspect.Parameter.KEYWORD_ONLY
        params += [inspect.Parameter(arg, keyword, default=value) for arg, value in FLAXZOO_KEYWORDS.items()]
        return inspect.Signature(params)


def build_application(spec: ModelSpec, arguments: Arguments, *, seed: int = 0, adapt_input_channels: bool = False):
    """Keras' constructor sequence for ``spec`` called with ``arguments``: check the arguments (Keras' errors,
    in Keras' order), build the module, then load or initialise its variables. Keras' unexported generic
    builders (``DenseNet(blocks)``, ``NASNet(...)``) pass a spec with their own ``config``.
    ``adapt_input_channels``: the RGB model, checked, built and loaded as Keras would, then adapted to the
    input's channels (flaxzoo.input_channels)."""
    if adapt_input_channels:
        return _adapted_application(spec, arguments, seed)
    family: Family = spec.family
    a = dict(arguments)
    weights, include_top = a["weights"], a["include_top"]
    imagenet = isinstance(weights, str) and weights == "imagenet"
    check_weights_arg(weights, family.messages)
    check_classes(weights, include_top, a["classes"], family.messages)
    if family.check_arguments:
        family.check_arguments(spec, a)
    default_size = family.default_size(spec, a) if family.default_size else spec.default_size
    shape = obtain_input_shape(a["input_shape"], default_size, spec.min_size, include_top, weights)
    if family.check:
        family.check(spec, a, shape)
    if include_top:
        validate_activation(a["classifier_activation"], weights)
    name = a["name"] if a["name"] is not None or not family.default_name else family.default_name(spec, a, shape)
    module = family.module(
        **spec.config,
        **{k: a[k] for k in family.architecture},
        **({"weights": "imagenet" if imagenet else None} if family.takes_weights else {}),
        include_top=include_top,
        pooling=a["pooling"],
        classes=a["classes"],
        classifier_activation=a["classifier_activation"],
        name=name,
        model_name=name,
        input_shape=input_shape_of(a["input_tensor"], shape),
        default_size=default_size,
    )
    variant = family.variant(spec, a, shape) if family.variant and imagenet else None
    return instantiate(spec, module, weights=weights, seed=seed, variant=variant)


def _channels(arguments: Arguments) -> int:
    """The input channels a constructor call asks for (``input_tensor``'s, else ``input_shape``'s; RGB by default)."""
    shape = getattr(arguments["input_tensor"], "shape", None) or arguments["input_shape"]
    return int(shape[-1]) if shape is not None and len(shape) in (3, 4) and shape[-1] is not None else RGB


def _adapted_application(spec: ModelSpec, arguments: Arguments, seed: int):
    channels = _channels(arguments)
    rgb = dict(arguments)
    if arguments["input_shape"] is not None and len(arguments["input_shape"]) == 3:
        rgb["input_shape"] = (*tuple(arguments["input_shape"])[:2], RGB)
    if arguments["input_tensor"] is not None:
        tensor = arguments["input_tensor"]
        rgb["input_tensor"] = jax.ShapeDtypeStruct((*tuple(tensor.shape)[:-1], RGB), tensor.dtype)
    if rgb["weights"] is not None:  # the pretrained model, loaded as published, then adapted
        return adapt_input_channels(*build_application(spec, rgb, seed=seed), channels)
    with abstract_variables():  # Keras' checks, as for RGB; the adapted model's own variables from ``seed``
        module, _ = build_application(spec, rgb, seed=seed)
    adapted = module.clone(input_shape=(*module.input_shape[:2], channels), pretrained_channels=RGB)
    return instantiate(spec, adapted, weights=None, seed=seed)


def build_backbone(
    spec: ModelSpec, arguments: Arguments, given: set, out_indices, *, seed: int = 0, adapt_input_channels: bool = False
):
    """``features_only=True``: the no-top model (its weights: Keras' no-top file) as a :func:`backbone`, with
    the variables of the layers up to the last stage asked for."""
    if arguments["include_top"] and "include_top" in given:
        raise ValueError(f"{spec.keras_name}(features_only=True) returns feature maps: it has no top (include_top=True)")
    if arguments["pooling"] is not None:
        raise ValueError(
            f"{spec.keras_name}(features_only=True) returns unpooled feature maps (pooling={arguments['pooling']!r}): "
            "pool them yourself, or take the pooled features of include_top=False, pooling='avg'"
        )
    arguments = {**arguments, "include_top": False}
    with abstract_variables():  # the stages found (and checked) before any weight is built or read
        rough = build_application(spec, {**arguments, "weights": None}, adapt_input_channels=adapt_input_channels)[0]
        stages = backbone(rough, out_indices).feature_info
    module, variables = build_application(spec, arguments, seed=seed, adapt_input_channels=adapt_input_channels)
    module = module.clone(feature_info=stages)  # the weights do not move stages (EfficientNet's std rescaling)
    return module, backbone_variables(module, variables)


def keras_constructor(spec: ModelSpec) -> Callable:
    """The Keras-named constructor of ``spec``: Keras' signature (order, defaults) plus keyword-only ``seed``,
    returning ``(module, variables)``."""
    signature = spec.family.signature(spec)

    def constructor(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{spec.keras_name}() {e}") from None
        given = set(bound.arguments)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        seed, features_only, out_indices, adapt = (arguments.pop(k) for k in FLAXZOO_KEYWORDS)
        if not features_only:
            if "out_indices" in given:
                raise ValueError(f"{spec.keras_name}(): out_indices={out_indices!r} needs features_only=True")
            return build_application(spec, arguments, seed=seed, adapt_input_channels=adapt)
        return build_backbone(spec, arguments, given, out_indices, seed=seed, adapt_input_channels=adapt)

    constructor.__name__ = constructor.__qualname__ = spec.keras_name
    constructor.__module__ = spec.module
    constructor.__signature__ = signature
    constructor.__doc__ = _docstring(spec)
    constructor.spec = spec
    return constructor


_WEIGHTS_DOC = (
    '``weights``: None (random, from ``seed``), "imagenet", a Keras ``.h5`` path or a flaxzoo checkpoint directory.'
)
_PREPROCESSING_DOC = {
    "caffe": "caffe mode: BGR, ImageNet mean subtracted",
    "tf": "tf mode: [-1, 1]",
    "torch": "torch mode: [0, 1], then ImageNet mean and standard deviation per RGB channel",
}


def _docstring(spec: ModelSpec) -> str:
    family: Family = spec.family
    if spec.preprocess_mode is None:
        inputs = "Inputs are NHWC float images in [0, 255]: the model preprocesses them itself"
    else:
        inputs = f"Inputs are ``preprocess_input``-ed NHWC float images ({_PREPROCESSING_DOC[spec.preprocess_mode]})"
    lines = [
        f"Instantiates {spec.keras_name} (keras.applications.{spec.keras_name}); returns ``(model, variables)``.",
        "",
        f"    {_WEIGHTS_DOC}",
        f"    {inputs}, at least {spec.min_size}x{spec.min_size}; the top model takes "
        f"{spec.default_size}x{spec.default_size}.",
    ]
    if family.doc:
        lines += ["", *("    " + line if line else "" for line in family.doc.strip().splitlines())]
    return "\n".join(lines) + "\n"


def preset_table(columns: str, *rows: tuple, **shared) -> list[ModelSpec]:
    """A family's presets as a table: ``columns`` names the fields of each row (``ModelSpec`` fields, or
    ``config.<field>`` for the family module's configuration); ``shared`` fields are every row's. A row may
    end with a dict of fields of its own (ResNet50's ``foreign_files``)."""
    names = columns.split()
    specs = []
    for row in rows:
        own = row[-1] if len(row) == len(names) + 1 and isinstance(row[-1], dict) else {}
        row = row[: len(names)] if own else row
        if len(row) != len(names):
            raise ValueError(f"preset row {row[:2]} has {len(row)} cells for {len(names)} columns")
        fields = dict(shared, **own, config=dict(shared.get("config", {})))
        for name, value in zip(names, row):
            if name.startswith("config."):
                fields["config"][name.removeprefix("config.")] = value
            else:
                fields[name] = value
        specs.append(ModelSpec(**fields))
    return specs


def register_family(family: Family, *specs: ModelSpec) -> tuple[Callable, ...]:
    """Register the presets of ``family``; returns their constructors, in the order given."""
    constructors = []
    for spec in specs:
        spec = dataclasses.replace(spec, family=family)
        constructor = keras_constructor(spec)
        object.__setattr__(spec, "constructor", constructor)
        register(spec)
        constructors.append(constructor)
    return tuple(constructors)


def input_shape_of(input_tensor: Any, checked_shape: tuple) -> tuple:
    """The model's input shape: ``input_tensor``'s when given (an array or ``jax.ShapeDtypeStruct``, batch
    first), which as in Keras bypasses the size checks."""
    if input_tensor is None:
        return tuple(checked_shape)
    shape = getattr(input_tensor, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            "`input_tensor` must be an array or jax.ShapeDtypeStruct of shape (batch, height, width, channels). "
            f"Received: input_tensor={input_tensor!r}"
        )
    return tuple(None if d is None else int(d) for d in shape[1:])


def instantiate(
    spec: ModelSpec, module: Application, *, weights: Any, seed: int, variant: str | None = None
) -> tuple[nn.Module, dict]:
    """``(module, variables)``: variables from ``weights`` (None: random from ``seed``) for the module's
    input shape (None dimensions traced at its default size). ``variant`` names the file for "imagenet"."""
    if module.min_size != spec.min_size:
        module = module.clone(min_size=spec.min_size)
    concrete = module.traced_shape
    if weights is None:
        if _ABSTRACT.get():  # the graph's abstract variables: the trace is kept for layer_names & co
            variables = graph_lib.trace(module, concrete).variables
            return module, jax.tree_util.tree_map(lambda leaf: leaf, dict(variables))  # containers of its own
        rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
        x = jnp.zeros(concrete, jnp.float32)
        with shapes_only():  # init's forward pass is discarded: the cheapest forms to trace
            variables = jax.jit(module.init)(rngs, x)
        return module, dict(variables)
    from flaxzoo.weights import load_variables

    graph = graph_lib.LazyGraph(module, concrete)  # traced only if the weights need it
    variant = variant or ("top" if module.include_top else "notop")
    return module, load_variables(spec, graph, weights, variant)
