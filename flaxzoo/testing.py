"""Helpers for tests and benchmarks of code built on flaxzoo.

:func:`random_variables` gives "pretrained-shaped" weights without Keras or compiling an initialiser:
numpy draws, He-scaled by fan-in (depthwise kernels by their window), batch norms at identity statistics.
Activations keep their scale through any depth, so features stay informative (unlike Keras' Glorot
initialiser at depth), and the speed of a model is that of trained weights. Residual networks still grow
their activations block after block with identity statistics (EfficientNetV2's softmax saturates at 1.0);
:func:`calibrate_batch_norm` sets the statistics from data, as training leaves them.
"""

from __future__ import annotations

import jax
import numpy as np


def random_variables(model_name: str, seed: int = 0, **kwargs) -> tuple:
    """``(module, variables)`` of registered model ``model_name`` (Keras constructor ``kwargs``) with
    random weights drawn in numpy from ``seed``."""
    from flaxzoo.zoo import create_model

    model, abstract = create_model(model_name, abstract=True, weights=None, **kwargs)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind, shape = path[-1].key, leaf.shape
        if kind in ("var", "variance", "scale"):
            return np.ones(shape, np.float32)
        if kind in ("mean", "bias"):
            return np.zeros(shape, np.float32)
        if kind == "count":  # Normalization's sample count (int32)
            return np.zeros(shape, leaf.dtype)
        fan_in = int(np.prod(shape[:2])) if kind == "depthwise_kernel" else int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return model, jax.tree_util.tree_map_with_path(draw, abstract)


def calibrate_batch_norm(model, variables: dict, images, rng=None) -> dict:
    """``variables`` with every batch norm's moving statistics set to those of ``images`` in one training-mode
    pass, as a pretrained network's are to its data: each layer's output is then normalised at inference too.
    ``rng`` drives dropout and stochastic depth in that pass (default: key 0)."""
    import jax.numpy as jnp
    from flax import linen as nn

    from flaxzoo.layers import BatchNormalization

    if "batch_stats" not in variables:  # no batch norms (ConvNeXt)
        return variables

    def statistics(variables, images, rng):
        stats = {}

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, BatchNormalization) and context.method_name == "__call__":
                h = args[0]
                axes = tuple(range(h.ndim - 1))
                stats[tuple(context.module.scope.path)] = {"mean": jnp.mean(h, axes), "var": jnp.var(h, axes)}
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        return stats

    # jitted: op by op, NASNetMobile's pass takes 50 s
    stats = jax.jit(statistics)(variables, images, jax.random.key(0) if rng is None else rng)
    batch_stats = jax.tree_util.tree_map(lambda a: a, dict(variables["batch_stats"]))  # a copy to write into
    for path, value in jax.device_get(stats).items():
        node = batch_stats
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = {key: np.asarray(value[key], np.asarray(node[path[-1]][key]).dtype) for key in value}
    return {**variables, "batch_stats": batch_stats}
