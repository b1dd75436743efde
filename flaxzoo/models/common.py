"""What every Keras application constructor shares: argument checks with Keras' errors, the pooling
head for ``include_top=False``, and building (module, variables) from the ``weights`` argument."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxzoo import graph as graph_lib
from flaxzoo.layers import GlobalAveragePooling2D, GlobalMaxPooling2D, is_softmax_or_linear, snake_case
from flaxzoo.registry import ModelSpec


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


def pooling_head(x, pooling: str | None, avg_name: str | None = None, max_name: str | None = None):
    """``include_top=False``: 'avg' / 'max' global pooling; anything else returns the feature map, as in Keras.

    Unnamed in most Keras files, hence the auto names of the only such layer by default.
    """
    if pooling == "avg":
        return GlobalAveragePooling2D(name=avg_name or snake_case(GlobalAveragePooling2D.keras_class))(x)
    if pooling == "max":
        return GlobalMaxPooling2D(name=max_name or snake_case(GlobalMaxPooling2D.keras_class))(x)
    return x


def build_application(
    spec: ModelSpec,
    make_module: Callable[..., nn.Module],
    *,
    include_top: bool,
    weights: Any,
    input_tensor: Any,
    input_shape: Any,
    pooling: str | None,
    classes: int,
    classifier_activation: Any,
    name: str | None,
    seed: int,
    messages: KerasMessages = KerasMessages(),
) -> tuple[nn.Module, dict]:
    """Keras' constructor sequence: check arguments, build the module, then load or initialise variables.

    ``make_module(include_top=, pooling=, classes=, classifier_activation=, name=, input_shape=,
    default_size=)`` returns the Flax module (an :class:`Application`).
    ``input_tensor`` (an array or ``jax.ShapeDtypeStruct``) fixes the input shape and bypasses the
    shape checks, as in Keras.
    """
    check_weights_arg(weights, messages)
    check_classes(weights, include_top, classes, messages)
    shape = obtain_input_shape(input_shape, spec.default_size, spec.min_size, include_top, weights)
    if include_top:
        validate_activation(classifier_activation, weights)
    module = make_module(
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
        input_shape=input_shape_of(input_tensor, shape),
        default_size=spec.default_size,
    )
    return instantiate(spec, module, weights=weights, seed=seed)


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
    concrete = (1, *(module.default_size if d is None else d for d in module.input_shape))
    if weights is None:
        rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
        x = jnp.zeros(concrete, jnp.float32)
        if _ABSTRACT.get():
            variables = jax.eval_shape(module.init, rngs, x)
        else:
            variables = jax.jit(module.init)(rngs, x)
        return module, dict(variables)
    from flaxzoo.weights import load_variables

    graph = graph_lib.trace(module, concrete)
    variant = variant or ("top" if module.include_top else "notop")
    return module, load_variables(spec, graph, weights, variant)
