"""Random "pretrained-shaped" weights (:mod:`flaxzoo.testing`), as checkpoints, and calibrated batch norms."""

from pathlib import Path

import jax

import flaxzoo
from flaxzoo import testing


def random_variables(name: str, seed: int = 0, **kwargs) -> dict:
    """The variables of :func:`flaxzoo.testing.random_variables` (the module is rebuilt where needed)."""
    return testing.random_variables(name, seed, **kwargs)[1]


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
