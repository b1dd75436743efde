"""Helpers for tests and benchmarks of code built on flaxzoo.

:func:`random_variables` gives "pretrained-shaped" weights without Keras or compiling an initialiser:
numpy draws, He-scaled by fan-in (depthwise kernels by their window), batch norms at identity statistics.
Activations keep their scale through any depth, so features stay informative (unlike Keras' Glorot
initialiser at depth), and the speed of a model is that of trained weights.
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
