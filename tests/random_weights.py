"""Random "pretrained-shaped" weights without Keras or initialiser compilation: numpy draws, He-scaled by
fan-in (depthwise kernels by their window), batch norms at identity statistics. Activations keep their
scale through any depth, so features stay informative (unlike Keras' Glorot initialiser at depth)."""

from pathlib import Path

import jax
import numpy as np

import flaxzoo
from flaxzoo.registry import create_model


def random_variables(name: str, seed: int = 0, **kwargs) -> dict:
    _, abstract = create_model(name, abstract=True, weights=None, **kwargs)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind, shape = path[-1].key, leaf.shape
        if kind in ("var", "scale"):
            return np.ones(shape, np.float32)
        if kind in ("mean", "bias"):
            return np.zeros(shape, np.float32)
        fan_in = int(np.prod(shape[:2])) if kind == "depthwise_kernel" else int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def random_checkpoint(directory, name: str, seed: int = 0, **kwargs) -> str:
    """:func:`random_variables` saved as a flaxzoo checkpoint ``directory/name``; returns its path."""
    variant = "top" if kwargs.get("include_top", True) else "notop"
    variables = random_variables(name, seed, **kwargs)
    return str(flaxzoo.save_checkpoint(Path(directory) / name, name, variables, variant=variant))


def calibrate_batch_norm(model, variables: dict, images) -> dict:
    """Set every batch norm's moving statistics to those of ``images`` (a training-mode pass), as a
    pretrained network's are to its data: each layer's output is then normalised at inference too."""
    import jax.numpy as jnp
    from flax import linen as nn

    from flaxzoo.layers import BatchNormalization

    stats = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, BatchNormalization) and context.method_name == "__call__":
            h = args[0]
            axes = tuple(range(h.ndim - 1))
            stats[context.module.name] = {"mean": jnp.mean(h, axes), "var": jnp.var(h, axes)}
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, images, train=True, mutable=["batch_stats"])
    return {**variables, "batch_stats": {**variables["batch_stats"], **jax.device_get(stats)}}
