"""The Keras layer graph of a flaxzoo model, recovered by tracing it once.

Every Keras layer is a :class:`flaxzoo.layers.KerasLayer` module; tracing ``init`` under
``flax.linen.intercept_methods`` (abstractly, with ``jax.eval_shape``: no FLOPs, no memory) gives each
layer's name, class, inbound layers and output shape. From that graph, :func:`keras_order` reproduces
how Keras orders ``model.layers`` in a Functional model (``keras/src/ops/function.py::map_graph``):
layers sorted by depth (longest path to the output), deepest first, ties broken by the order in which
a depth-first search from the output first reaches them. Legacy ``.h5`` weights are assigned in that
order, so it is the contract for conversion, ``layer_names`` and layer indices.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flaxzoo.layers import KerasLayer


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    name: str
    keras_class: str
    layer_type: type  # the flaxzoo.layers class
    inbound: tuple[str, ...]
    output_shape: tuple[int, ...]  # batch dimension included
    macs: int  # multiply-accumulates per forward pass of the traced batch


@dataclasses.dataclass(frozen=True)
class Graph:
    """Layers in Keras ``model.layers`` order, and the model's abstract variables."""

    layers: tuple[LayerInfo, ...]
    variables: Mapping[str, Any]  # {'params': ..., 'batch_stats': ...} of jax.ShapeDtypeStruct
    output: str
    structure: str | None = None  # structure_key() of the traced module and input shape

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer_variables(self, name: str) -> dict[str, dict[str, Any]]:
        """{collection: {variable: ShapeDtypeStruct}} of one layer (empty for parameter-free layers)."""
        return {col: dict(tree[name]) for col, tree in self.variables.items() if name in tree}

    @property
    def weighted_layers(self) -> list[LayerInfo]:
        """Layers that carry variables, in Keras order: the order of a legacy .h5 file's weighted layers."""
        return [layer for layer in self.layers if self.layer_variables(layer.name)]

    def count_params(self) -> int:
        return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(self.variables))


class _Recorder:
    def __init__(self):
        self.records: list[tuple[str, type, tuple[str, ...], tuple[int, ...], int]] = []
        self.producer: dict[int, str] = {}
        self._alive: list[Any] = []  # keeps traced arrays alive so that ids stay unique
        self.output: str | None = None

    def __call__(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, KerasLayer):
            return next_fun(*args, **kwargs)
        out = next_fun(*args, **kwargs)
        inputs = [a for a in jax.tree_util.tree_leaves(args) if hasattr(a, "shape")]
        inbound = tuple(self.producer[id(a)] for a in inputs if id(a) in self.producer)
        if any(out is a for a in inputs):  # pass-through layers (InputLayer, inactive Dropout)
            out = out + jnp.zeros((), out.dtype)
        macs = module.macs([a.shape for a in inputs], out.shape) if hasattr(module, "macs") else 0
        self.records.append((module.name, type(module), inbound, tuple(out.shape), int(macs)))
        self.producer[id(out)] = module.name
        self._alive += [*inputs, out]
        return out


def keras_order(inbound: Mapping[str, Sequence[str]], output: str) -> list[str]:
    """Keras' ``model.layers`` order of the layers that ``output`` depends on."""
    index = {output: 0}
    post_order: list[str] = []
    stack = [(output, iter(inbound[output]))]
    while stack:  # iterative DFS: NASNetLarge is deeper than Python's recursion limit
        name, parents = stack[-1]
        for parent in parents:
            if parent not in index:
                index[parent] = len(index)
                stack.append((parent, iter(inbound[parent])))
                break
        else:
            stack.pop()
            post_order.append(name)
    depth: dict[str, int] = {}
    for name in reversed(post_order):
        d = depth.setdefault(name, 0)
        for parent in inbound[name]:
            depth[parent] = max(d + 1, depth.get(parent, 0))
    return sorted(index, key=lambda n: (-depth[n], index[n]))


def trace(module: nn.Module, input_shape: Sequence[int], **call_kwargs) -> Graph:
    """Trace ``module`` on an input of ``input_shape`` (batch included) without computing anything."""
    recorder = _Recorder()

    def init():
        x = jnp.zeros(tuple(input_shape), jnp.float32)
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        with nn.intercept_methods(recorder):
            out, variables = module.init_with_output(rngs, x, **call_kwargs)
        recorder.output = recorder.producer[id(out)]
        return variables

    variables = jax.eval_shape(init)
    by_name = {}
    for name, layer_type, inbound, shape, macs in recorder.records:
        if name in by_name:
            raise ValueError(f'The name "{name}" is used more than once in the model.')
        by_name[name] = LayerInfo(name, layer_type.keras_class, layer_type, inbound, shape, macs)
    order = keras_order({n: info.inbound for n, info in by_name.items()}, recorder.output)
    key = structure_key(module, input_shape, **call_kwargs)
    return Graph(tuple(by_name[n] for n in order), dict(variables), recorder.output, key)


@functools.cache
def _source_digest(module_name: str) -> bytes:
    files = {inspect.getsourcefile(sys.modules[m]) for m in (module_name, __name__, "flaxzoo.layers")}
    return hashlib.sha256(b"".join(Path(f).read_bytes() for f in sorted(files))).digest()


def structure_key(module: nn.Module, input_shape: Sequence[int], **call_kwargs) -> str | None:
    """A fingerprint of what fixes ``module``'s variable tree: its class, configuration, input shape and the
    source of its model file and of flaxzoo's layers. Recorded in checkpoints, so that a restore into a model
    with the same key can skip the trace that checks shapes (~0.2 s for ResNet50). None when the
    configuration has no stable text (e.g. a function object, printed with its address)."""
    config = f"{type(module).__module__}.{type(module).__qualname__}|{module!r}|{tuple(input_shape)}|{call_kwargs!r}"
    if " at 0x" in config:
        return None
    try:
        digest = _source_digest(type(module).__module__)
    except (KeyError, OSError, TypeError):
        return None
    return hashlib.sha256(digest + config.encode()).hexdigest()


class LazyGraph:
    """The :class:`Graph` of ``module`` at ``input_shape``, traced on first use; ``structure`` is known
    without tracing, so restoring a checkpoint recorded with the same key never traces."""

    def __init__(self, module: nn.Module, input_shape: Sequence[int]):
        self._args = (module, tuple(input_shape))
        self.structure = structure_key(module, input_shape)

    @functools.cached_property
    def graph(self) -> Graph:
        return trace(*self._args)

    def __getattr__(self, name):  # everything but ``structure`` is the traced graph's
        return getattr(self.graph, name)


def registered_graph(name: str, *, include_top: bool = True, size: int | None = None, **kwargs) -> Graph:
    """The graph of registered model ``name`` (Keras constructor ``kwargs``) at ``size`` (default: the
    model's default size), traced abstractly: no weights are initialised or read."""
    from flaxzoo.registry import create_model, get_spec

    size = size or get_spec(name).default_size
    module, _ = create_model(name, abstract=True, weights=None, include_top=include_top, **kwargs)
    return trace(module, (1, size, size, 3))
