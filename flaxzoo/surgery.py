"""Functional model surgery: Keras' ``model.layers``, ``get_layer(name).output``, ``layers[:249]`` and
``trainable=False``, as pure functions of a flaxzoo model.

Every Keras layer of a flaxzoo model is a Flax module named as in Keras, so a layer name means the
same thing here as in Keras, and :func:`layer_names` lists them in Keras' ``model.layers`` order (indices
included). Layers may sit inside block modules: names stay the key, and variables are found at each
layer's module path (:attr:`flaxzoo.graph.LayerInfo.path`). Intermediate outputs are taken by
intercepting the named layer's call during ``apply``; :func:`truncate` stops the forward pass there, so under ``jax.jit`` nothing after the layer is traced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from flaxzoo.graph import Graph, LayerInfo, run_until, trace

Frozen = str | int | Callable[[str], bool] | Iterable[str] | None


# ------------------------------------------------------------------------------------------------
# The layer list
# ------------------------------------------------------------------------------------------------


def _trace_shape(model: nn.Module, input_shape: Sequence[int | None] | None, size: int) -> tuple[int, ...]:
    shape = tuple(input_shape or getattr(model, "input_shape", None) or (None, None, 3))
    return (1, *(size if d is None else d for d in shape))


def model_graph(model: nn.Module, input_shape: Sequence[int | None] | None = None) -> Graph:
    """The Keras layer graph of ``model`` (traced abstractly at its input shape; None dims at its default size)."""
    return trace(model, _trace_shape(model, input_shape, getattr(model, "default_size", 224)))


def layer_names(model: nn.Module, input_shape: Sequence[int | None] | None = None) -> list[str]:
    """Every layer's name in Keras' ``model.layers`` order, parameter-free layers and the input layer included:
    ``layer_names(model)[i]`` is ``keras_model.layers[i].name``."""
    return model_graph(model, input_shape).names


def get_layer(model: nn.Module, name: str | None = None, index: int | None = None) -> LayerInfo:
    """Keras' ``model.get_layer(name=None, index=None)``: a layer's class, inbound layers and output shape."""
    layers = model_graph(model).layers
    if index is not None:
        return layers[index]
    for layer in layers:
        if layer.name == name:
            return layer
    raise ValueError(f"No such layer: {name}. Existing layers are: {[layer.name for layer in layers]}.")


# ------------------------------------------------------------------------------------------------
# Intermediate outputs
# ------------------------------------------------------------------------------------------------


def _run_until(model: nn.Module, names: Sequence[str], call: Callable[[], Any]) -> dict[str, Any]:
    found = run_until([(name, "output") for name in names], call, type(model).__name__)
    return {name: found[(name, "output")] for name in names}


class Truncated(nn.Module):
    """``model`` cut after layer ``layer``: Keras' ``Model(model.input, model.get_layer(layer).output)``.

    It shares ``model``'s variables (pass the full model's variables to ``apply``); nothing after the
    layer is computed. ``train=True`` with ``mutable=["batch_stats"]`` updates the statistics of the
    batch-norm layers before the cut only.
    """

    model: nn.Module
    layer: str

    def setup(self):
        nn.share_scope(self, self.model)

    def __call__(self, x, train: bool = False):
        return _run_until(self.model, [self.layer], lambda: self.model(x, train=train))[self.layer]


def truncate(model: nn.Module, layer_name: str) -> Truncated:
    """A Module whose ``apply(variables, x)`` returns the output of ``layer_name`` (see :class:`Truncated`)."""
    if layer_name not in layer_names(model):
        raise ValueError(f"No such layer: {layer_name}. See flaxzoo.layer_names(model).")
    return Truncated(model, layer_name)


def extract(model: nn.Module, variables, x, names: Sequence[str], train: bool = False, **apply_kwargs) -> dict[str, Any]:
    """The outputs of several layers in one forward pass, stopping after the last of them: ``{name: array}``.

    With ``train=True`` pass ``mutable=["batch_stats"]`` (and rngs where dropout runs) as ``apply_kwargs``;
    the statistics updates are then discarded: use :func:`truncate` to keep them.
    """
    return _run_until(model, list(names), lambda: model.apply(variables, x, train=train, **apply_kwargs))


# ------------------------------------------------------------------------------------------------
# Freezing
# ------------------------------------------------------------------------------------------------


def frozen_layers(model: nn.Module, frozen: Frozen) -> frozenset[str]:
    """Names of the layers ``frozen`` designates (Keras' ``layer.trainable = False``):

    * a layer name: every layer up to and including it, in Keras' layer order ("freeze until mixed8");
    * an int ``n``: the first ``n`` layers, Keras' ``for layer in model.layers[:n]``;
    * a callable ``name -> bool``;
    * an iterable of names (each must exist); None: nothing.
    """
    return _designated(layer_names(model), frozen)


def _designated(names: list[str], frozen: Frozen) -> frozenset[str]:
    if frozen is None:
        return frozenset()
    if isinstance(frozen, str):
        if frozen not in names:
            raise ValueError(f"No such layer: {frozen}. See flaxzoo.layer_names(model).")
        return frozenset(names[: names.index(frozen) + 1])
    if isinstance(frozen, int) and not isinstance(frozen, bool):
        return frozenset(names[:frozen])
    if callable(frozen):
        return frozenset(n for n in names if frozen(n))
    chosen = frozenset(frozen)
    unknown = sorted(chosen - set(names))
    if unknown:
        raise ValueError(f"No such layer(s): {unknown}. See flaxzoo.layer_names(model).")
    return chosen


def freeze(model: nn.Module, frozen: Frozen) -> nn.Module:
    """``model`` with the designated layers frozen: their batch-norm layers always use (and keep) the
    moving statistics, also under ``train=True``, as Keras does for ``trainable=False``. Pair it with
    :func:`trainable_mask` for the optimizer."""
    return model.clone(frozen=frozen_layers(model, frozen))


def trainable_mask(model: nn.Module, variables, frozen: Frozen = None, *, at: str | Sequence[str] = ()) -> dict:
    """A pytree of bools shaped like ``variables["params"]``: True where a parameter trains, False where a
    module on its path is a frozen Keras layer (a layer inside a block module included). Only ``params``
    train: the other collections (batch-norm statistics, constants) are not the optimizer's.

    ``frozen`` as in :func:`frozen_layers`; by default the layers ``model`` was frozen with
    (:func:`freeze`). ``at``: where ``model`` sits in a larger model whose variables these are (the
    submodule's path, as in :func:`load_pretrained`); parameters outside it (a new head) train.
    For ``optax.multi_transform`` (frozen leaves → ``optax.set_to_zero()``) or ``optax.masked``.
    """
    prefix = (at,) if isinstance(at, str) else tuple(at)
    params = variables["params"] if "params" in variables else variables
    names = frozenset(getattr(model, "frozen", ())) if frozen is None else None
    frozen_paths: set[tuple[str, ...]] = set()
    if names is None or names:  # the module paths of the frozen layers need the graph
        graph = model_graph(model)
        names = _designated(graph.names, frozen) if names is None else names
        frozen_paths = {prefix + layer.path for layer in graph.layers if layer.name in names}

    def trainable(path, _):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        return not any(keys[:i] in frozen_paths for i in range(len(prefix) + 1, len(keys)))

    return jax.tree_util.tree_map_with_path(trainable, _plain(params))


def _plain(tree):
    """Nested dicts (FrozenDicts thawed), so that masks have the same structure as optax's params."""
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


# ------------------------------------------------------------------------------------------------
# Transfer into a user's model
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TransferReport:
    """What :func:`load_pretrained` did: paths copied, left at their initial value, or not used."""

    loaded: tuple[str, ...]
    not_in_pretrained: tuple[str, ...]  # in the target, left as initialised (e.g. the new head)
    not_in_target: tuple[str, ...]  # in the pretrained variables, unused (e.g. the old head)

    def __str__(self):
        lines = [f"loaded {len(self.loaded)} arrays"]
        if self.not_in_pretrained:
            lines.append(f"left as initialised ({len(self.not_in_pretrained)}): {', '.join(self.not_in_pretrained)}")
        if self.not_in_target:
            lines.append(f"unused from pretrained ({len(self.not_in_target)}): {', '.join(self.not_in_target)}")
        return "\n".join(lines)


def _flat(tree) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(jax.tree_util.tree_map(lambda v: v, dict(tree)), keep_empty_nodes=False)


def load_pretrained(target_variables, pretrained_variables, at: str | Sequence[str] = (), *, strict_shapes: bool = True):
    """Place pretrained backbone variables into a new model's variable tree.

    ``at`` is the backbone's path in the target tree (e.g. ``"backbone"`` for a submodule named so, or
    ``()`` when the tree is the backbone's own). Matching is by path within each collection; arrays
    whose shapes differ are an error (``strict_shapes``) or skipped. Returns ``(variables, report)``,
    the report listing what stayed as initialised and what was unused — big_vision's transfer diff.
    """
    prefix = (at,) if isinstance(at, str) else tuple(at)
    target, source = _flat(target_variables), _flat(pretrained_variables)
    # source keys: (collection, *path) → placed at (collection, *prefix, *path)
    placed = {(k[0], *prefix, *k[1:]): v for k, v in source.items()}
    loaded, mismatched = [], []
    merged = dict(target)
    for key, value in placed.items():
        if key not in target:
            continue
        if np.shape(value) != np.shape(target[key]):
            if strict_shapes:
                raise ValueError(f"{'/'.join(key)}: pretrained shape {np.shape(value)} != target {np.shape(target[key])}")
            mismatched.append(key)
            continue
        merged[key] = value
        loaded.append(key)
    report = TransferReport(
        loaded=tuple("/".join(k) for k in loaded),
        not_in_pretrained=tuple("/".join(k) for k in target if k not in placed or k in mismatched),
        not_in_target=tuple("/".join(k) for k in placed if k not in target or k in mismatched),
    )
    return traverse_util.unflatten_dict(merged), report


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------


def _dynamic_shapes(model: nn.Module, input_shape) -> tuple[Graph, dict[str, tuple]]:
    """Output shapes with None where they follow a None input dimension (traced at two sizes)."""
    spec_shape = tuple(input_shape or getattr(model, "input_shape", None) or (None, None, 3))
    a = model_graph(model, spec_shape)
    if None not in spec_shape[:2]:
        return a, {layer.name: (None, *layer.output_shape[1:]) for layer in a.layers}
    b = trace(model, _trace_shape(model, spec_shape, getattr(model, "default_size", 224) + 32))
    other = {layer.name: layer.output_shape for layer in b.layers}
    shapes = {}
    for layer in a.layers:
        o = other.get(layer.name, layer.output_shape)
        shapes[layer.name] = (None, *(d if d == e else None for d, e in zip(layer.output_shape[1:], o[1:])))
    return a, shapes


def summary(model: nn.Module, input_shape: Sequence[int | None] | None = None, print_fn: Callable[[str], Any] | None = print) -> str:
    """Keras' ``model.summary()``: index, layer (class), output shape, parameter count, and the totals."""
    graph, shapes = _dynamic_shapes(model, input_shape)
    rows, trainable, non_trainable = [], 0, 0
    frozen = frozenset(getattr(model, "frozen", ()))
    for i, layer in enumerate(graph.layers):
        owned = graph.layer_variables(layer.name)
        sizes = {col: sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(vs)) for col, vs in owned.items()}
        n_params = sizes.pop("params", 0)
        n_stats = sum(sizes.values())  # every other collection (statistics, constants) is non-trainable, as in Keras
        if layer.name in frozen:
            non_trainable += n_params + n_stats
        else:
            trainable += n_params
            non_trainable += n_stats
        rows.append((str(i), f"{layer.name} ({layer.keras_class})", str(shapes[layer.name]), f"{n_params + n_stats:,}"))
    header = ("#", "Layer (type)", "Output Shape", "Param #")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
    fmt = lambda r: "  ".join(  # noqa: E731
        r[c].rjust(widths[c]) if c in (0, 3) else r[c].ljust(widths[c]) for c in range(4)
    ).rstrip()
    rule = "─" * len(fmt(header))
    title = getattr(model, "model_name", None) or model.name or type(model).__name__
    lines = [f'Model: "{title}"', rule, fmt(header), rule, *map(fmt, rows), rule]
    lines += [
        f" Total params: {trainable + non_trainable:,}",
        f" Trainable params: {trainable:,}",
        f" Non-trainable params: {non_trainable:,}",
    ]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text


__all__ = [
    "Truncated",
    "TransferReport",
    "extract",
    "freeze",
    "frozen_layers",
    "get_layer",
    "layer_names",
    "load_pretrained",
    "model_graph",
    "summary",
    "trainable_mask",
    "truncate",
]
