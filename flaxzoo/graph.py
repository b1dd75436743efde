"""The Keras layer graph of a flaxzoo model, recovered by tracing it once.

Every Keras layer is a :class:`flaxzoo.layers.KerasLayer` module; tracing ``init`` under
``flax.linen.intercept_methods`` (abstractly, with ``jax.eval_shape``: no FLOPs, no memory) gives each
layer's name, class, module path, inbound layers and output shape. From that graph, :func:`keras_order` reproduces
how Keras orders ``model.layers`` in a Functional model (``keras/src/ops/function.py::map_graph``):
layers sorted by depth (longest path to the output), deepest first, ties broken by the order in which
a depth-first search from the output first reaches them. Legacy ``.h5`` weights are assigned in that
order, so it is the contract for conversion, ``layer_names`` and layer indices.

A Keras layer may sit inside a block written as its own ``nn.Module``: its variables are then at its
module path (``params["block1"]["block1_conv"]``), which :class:`LayerInfo` records and every consumer
(conversion, checkpoints, surgery, folding) looks variables up by. Keras layers called within another Keras
layer's call are part of that layer, as Keras' sublayers are, and not layers of the model.
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

from flaxzoo.layers import KerasLayer, shapes_only


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    name: str
    keras_class: str
    layer_type: type  # the flaxzoo.layers class
    inbound: tuple[str, ...]
    output_shape: tuple[int, ...]  # batch dimension included
    macs: int  # multiply-accumulates per forward pass of the traced batch
    path: tuple[str, ...] = ()  # module path in the traced model (its variables' place); () means (name,)
    # The Keras layers a composite layer (a nested Sequential, as ConvNeXt's stem) calls, (path, class) in
    # call order: its weights are theirs, in that order.
    sublayers: tuple[tuple[tuple[str, ...], type], ...] = ()

    def __post_init__(self):
        if not self.path:
            object.__setattr__(self, "path", (self.name,))


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One stage of a network, as a backbone exposes it (timm's ``feature_info``): the Keras layer that ends
    the stage, its channels and its output stride (``reduction``) at the model's default size.

    ``index`` is ``log2(reduction) - 1`` in every model, so that index ``i`` is stride ``2 ** (i + 1)``
    everywhere: ``out_indices=(1, 2, 3, 4)`` are the strides 4, 8, 16 and 32 of any model (ConvNeXt, whose
    stem has stride 4, has no index 0). ``tap="input"`` where the stage's output is no Keras layer's output
    (ConvNeXt's residual sums are tensor operations) but the input of ``layer``: Keras' ``layer.input``."""

    index: int
    layer: str
    channels: int
    reduction: int
    tap: str = "output"

    @property
    def keras(self) -> str:
        """How Keras reaches the same tensor: ``get_layer(...).output`` or ``.input``."""
        return f"get_layer({self.layer!r}).{self.tap}"


def subtree(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    """``tree[path[0]][path[1]]...``, or None where the path does not lead anywhere."""
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


@dataclasses.dataclass(frozen=True)
class Graph:
    """Layers in Keras ``model.layers`` order, and the model's abstract variables."""

    layers: tuple[LayerInfo, ...]
    variables: Mapping[str, Any]  # {'params': ..., 'batch_stats': ..., ...} of jax.ShapeDtypeStruct
    output: str
    structure: str | None = None  # structure_key() of the traced module and input shape

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @functools.cached_property
    def by_name(self) -> dict[str, LayerInfo]:
        return {layer.name: layer for layer in self.layers}

    def layer_variables(self, name: str) -> dict[str, dict[str, Any]]:
        """{collection: {variable: ShapeDtypeStruct}} of one layer, found at its module path (empty for
        parameter-free layers)."""
        path = self.by_name[name].path if name in self.by_name else (name,)
        found = {col: subtree(tree, path) for col, tree in self.variables.items()}
        return {col: dict(owned) for col, owned in found.items() if isinstance(owned, Mapping) and owned}

    @property
    def weighted_layers(self) -> list[LayerInfo]:
        """Layers that carry variables, in Keras order: the order of a legacy .h5 file's weighted layers."""
        return [layer for layer in self.layers if self.layer_variables(layer.name)]

    def count_params(self) -> int:
        return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(self.variables))


class _Recorder:
    def __init__(self):
        self.records: list[tuple] = []  # (name, class, inbound, output shape, macs, path, sublayers)
        self.producer: dict[int, str] = {}
        self._alive: list[Any] = []  # keeps traced arrays alive so that ids stay unique
        self.output: str | None = None
        # Keras layer calls under way, each with the sublayers it called: sublayers are their layer's own
        # business (its weights, not layers of the model)
        self._within: list[list] = []

    def __call__(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, KerasLayer):
            return next_fun(*args, **kwargs)
        if self._within:
            self._within[0].append((tuple(module.path), type(module)))
            return next_fun(*args, **kwargs)
        self._within.append([])
        try:
            out = next_fun(*args, **kwargs)
        finally:
            sublayers = tuple(self._within.pop())
        inputs = [a for a in jax.tree_util.tree_leaves(args) if hasattr(a, "shape")]
        inbound = tuple(self.producer[id(a)] for a in inputs if id(a) in self.producer)
        if any(out is a for a in inputs):  # pass-through layers (InputLayer, inactive Dropout)
            out = out + jnp.zeros((), out.dtype)
        macs = module.macs([a.shape for a in inputs], out.shape) if hasattr(module, "macs") else 0
        self.records.append(
            (module.name, type(module), inbound, tuple(out.shape), int(macs), tuple(module.path), sublayers)
        )
        self.producer[id(out)] = module.name
        self._alive += [*inputs, out]
        return out


class _Reached(Exception):
    def __init__(self, outputs):
        self.outputs = outputs


Tap = tuple[str, str]  # (layer name, "output" or "input")


class _Collector:
    """Interceptor recording the tensors at ``taps``; once all are seen, the next Keras layer call ends the
    forward pass (not the tapped call itself: an enclosing interceptor, as the graph tracer, sees it end)."""

    def __init__(self, taps: Sequence[Tap]):
        self.wanted = set(taps)
        self.outputs: dict[Tap, Any] = {}

    def _complete(self) -> bool:
        return len(self.outputs) == len(self.wanted)

    def __call__(self, next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not isinstance(context.module, KerasLayer):
            return next_fun(*args, **kwargs)
        if self._complete():
            raise _Reached(self.outputs)
        name = context.module.name
        if (name, "input") in self.wanted:
            self.outputs[(name, "input")] = args[0]
            if self._complete():
                raise _Reached(self.outputs)
        out = next_fun(*args, **kwargs)
        if (name, "output") in self.wanted:
            self.outputs[(name, "output")] = out
        return out


def run_until(taps: Sequence[Tap], call, what: str = "the model") -> dict[Tap, Any]:
    """Run ``call()`` (a forward pass) until the tensors at ``taps`` are known: ``{tap: array}``. Nothing
    after the last of them runs (nor is traced under ``jit``)."""
    collector = _Collector(taps)
    try:
        with nn.intercept_methods(collector):
            call()
    except _Reached as reached:
        return reached.outputs
    if collector._complete():
        return collector.outputs
    missing = sorted(name for name, _ in collector.wanted - set(collector.outputs))
    raise ValueError(f"No such layer(s) in {what}: {missing}. See flaxzoo.layer_names(model).")


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


_TRACES: dict[str, Graph] = {}  # by structure key, most recently used last
KEEP_TRACES = 16


def trace(module: nn.Module, input_shape: Sequence[int], **call_kwargs) -> Graph:
    """Trace ``module`` on an input of ``input_shape`` (batch included) without computing anything. The
    graphs of the last :data:`KEEP_TRACES` structures are kept (``layer_names``, ``get_layer``, ``freeze``
    ... trace the same model again and again; NASNetLarge takes seconds)."""
    key = structure_key(module, input_shape, **call_kwargs)
    if key is not None and key in _TRACES:
        _TRACES[key] = _TRACES.pop(key)
        return _TRACES[key]
    graph = _trace(module, input_shape, key, **call_kwargs)
    if key is not None:
        _TRACES[key] = graph
        while len(_TRACES) > KEEP_TRACES:
            del _TRACES[next(iter(_TRACES))]
    return graph


def _trace(module: nn.Module, input_shape: Sequence[int], key: str | None, **call_kwargs) -> Graph:
    recorder = _Recorder()

    def init():
        x = jnp.zeros(tuple(input_shape), jnp.float32)
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        with nn.intercept_methods(recorder):
            out, variables = module.init_with_output(rngs, x, **call_kwargs)
        # a backbone's feature maps (features_only): the layers up to the deepest, which needs the others
        recorder.output = recorder.producer[id(jax.tree_util.tree_leaves(out)[-1])]
        return variables

    with shapes_only():
        variables = jax.eval_shape(init)
    by_name = {}
    for name, layer_type, inbound, shape, macs, path, sublayers in recorder.records:
        if name in by_name:
            raise ValueError(f'The name "{name}" is used more than once in the model.')
        by_name[name] = LayerInfo(name, layer_type.keras_class, layer_type, inbound, shape, macs, path, sublayers)
    # Keras orders its layers over every operation of its graph, tensor operations (``inputs + x``) included,
    # and lists the layers only; a layer after an operation names it as its inbound, as in Keras.
    order = keras_order({n: info.inbound for n, info in by_name.items()}, recorder.output)
    layers = tuple(by_name[n] for n in order if not by_name[n].layer_type.keras_operation)
    return Graph(layers, dict(variables), recorder.output, key)


@functools.cache
def _source_digest(module_names: tuple[str, ...]) -> bytes:
    # the model's file and those of the classes it derives from (ResNetV2 from ResNet), and the layers and
    # shared blocks (heads, padding) every model file builds with
    shared = [m for m in ("flaxzoo.layers", "flaxzoo.models.common") if m in sys.modules]
    files = {inspect.getsourcefile(sys.modules[m]) for m in (*module_names, __name__, *shared)}
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
        digest = _source_digest(
            tuple(c.__module__ for c in type(module).__mro__ if c.__module__.startswith("flaxzoo."))
        )
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
