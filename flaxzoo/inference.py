"""Inference-time transforms: batch norms folded into the convolutions before them, and a jitted
predict function in float32 or bfloat16.

Folding rewrites ``y = BN(W * x + b)`` as ``(W·s) * x + (b·s + beta - mean·s)`` with
``s = gamma / sqrt(var + eps)``: the convolution's kernel is rescaled per output channel and the batch
norm reduces to a bias add. Only batch norms whose input is a convolution used by nothing else are
folded (DenseNet's pre-activation batch norms stay as they are).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from flaxzoo.layers import BatchNormalization, Conv2D, DepthwiseConv2D, SeparableConv2D, shapes_only
from flaxzoo.surgery import model_graph
from flaxzoo.xla_options import enable_compilation_cache, jit

_CONVS = (Conv2D, DepthwiseConv2D, SeparableConv2D)


def foldable_batchnorms(model: nn.Module, graph=None) -> dict[str, str]:
    """{batch norm: the convolution it folds into}; ``graph``: ``model_graph(model)`` when already traced."""
    graph = graph or model_graph(model)
    consumers: dict[str, int] = {}
    for layer in graph.layers:
        for name in layer.inbound:
            consumers[name] = consumers.get(name, 0) + 1
    by_name = {layer.name: layer for layer in graph.layers}
    pairs = {}
    for layer in graph.layers:
        if layer.layer_type is BatchNormalization and len(layer.inbound) == 1:
            source = by_name[layer.inbound[0]]
            if issubclass(source.layer_type, _CONVS) and consumers[source.name] == 1:
                pairs[layer.name] = source.name
    return pairs


def fold_batchnorm(model: nn.Module, variables: dict) -> tuple[nn.Module, dict]:
    """``(model, variables)`` for inference with the batch norms folded into their convolutions; equal to
    ``model.apply(variables, x)`` within float32 rounding. The folded model cannot train. Layers are found
    at their module paths (inside block modules too); collections other than ``params`` and ``batch_stats``
    (constants) pass through unchanged."""
    graph = model_graph(model)
    pairs = foldable_batchnorms(model, graph)
    # {(collection, *module path, variable): host array}: one dict to edit whatever the nesting
    flat = traverse_util.flatten_dict(jax.device_get(_plain(variables)))
    flat = {k: np.asarray(v) for k, v in flat.items()}
    epsilons = _epsilons(model, variables)
    for bn, conv in pairs.items():
        bn_path, conv_path = graph.by_name[bn].path, graph.by_name[conv].path
        mean, var = flat.pop(("batch_stats", *bn_path, "mean")), flat.pop(("batch_stats", *bn_path, "var"))
        c = mean.shape[0]
        gamma = flat.pop(("params", *bn_path, "scale"), np.ones(c, np.float32))
        beta = flat.pop(("params", *bn_path, "bias"), np.zeros(c, np.float32))
        scale = (gamma / np.sqrt(var + np.float32(epsilons[bn]))).astype(np.float32)
        kind = graph.by_name[conv].layer_type
        at = functools.partial(lambda path, var_name: ("params", *path, var_name), conv_path)
        if kind is SeparableConv2D:
            flat[at("pointwise_kernel")] = flat[at("pointwise_kernel")] * scale
        elif kind is DepthwiseConv2D:
            k = flat[at("depthwise_kernel")]
            flat[at("depthwise_kernel")] = k * scale.reshape(k.shape[2], k.shape[3])
        else:
            flat[at("kernel")] = flat[at("kernel")] * scale
        bias = beta - mean * scale
        if at("bias") in flat:
            bias = bias + flat[at("bias")] * scale
            flat[at("bias")] = np.zeros_like(bias)  # keep the conv's structure; the BN adds the bias
        flat[("params", *bn_path, "bias")] = bias.astype(np.float32)
    folded = model.clone(folded=frozenset(pairs))
    return folded, traverse_util.unflatten_dict(flat)


def _plain(tree):
    """Nested dicts (FrozenDicts thawed)."""
    return {k: _plain(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _epsilons(model: nn.Module, variables: dict) -> dict[str, float]:
    """Each batch norm's epsilon, read from the modules as traced."""
    eps = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, BatchNormalization) and context.method_name == "__call__":
            eps[context.module.name] = context.module.epsilon
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record), shapes_only():
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(model.traced_shape, jnp.float32))
    return eps


def predict_fn(
    model: nn.Module, variables: dict, *, dtype: Any = jnp.float32, fold_bn: bool = False
) -> tuple[Callable, dict]:
    """A jitted ``f(variables, x) -> float32 outputs`` (a backbone's: a list) computing in ``dtype`` (``jnp.bfloat16``: bfloat16
    activations and kernels, float32 batch-norm arithmetic), optionally on folded batch norms; returns
    ``(f, variables)`` (the variables f expects: folded ones with ``fold_bn``). Compiled with
    :func:`flaxzoo.xla_options.compiler_options`, through the persistent compilation cache
    (:func:`flaxzoo.xla_options.enable_compilation_cache`)."""
    enable_compilation_cache()
    if fold_bn:
        model, variables = fold_batchnorm(model, variables)

    @jit
    def f(variables, x):
        out = model.apply(variables, jnp.asarray(x).astype(dtype))  # a backbone's: a list of feature maps
        return jax.tree_util.tree_map(lambda y: y.astype(jnp.float32), out)

    return f, variables
