"""Random "pretrained-shaped" weights (:mod:`flaxzoo.testing`), as checkpoints, and calibrated batch norms."""

from pathlib import Path

import jax
import numpy as np

import flaxzoo
from flaxzoo import testing
from flaxzoo.testing import calibrate_batch_norm  # noqa: F401  (re-exported for the tests)


def random_variables(name: str, seed: int = 0, **kwargs) -> dict:
    """The variables of :func:`flaxzoo.testing.random_variables` (the module is rebuilt where needed)."""
    return testing.random_variables(name, seed, **kwargs)[1]


def random_checkpoint(directory, name: str, seed: int = 0, **kwargs) -> str:
    """:func:`random_variables` saved as a flaxzoo checkpoint ``directory/name``; returns its path."""
    variant = "top" if kwargs.get("include_top", True) else "notop"
    variables = random_variables(name, seed, **kwargs)
    return str(flaxzoo.save_checkpoint(Path(directory) / name, name, variables, variant=variant))


def statistics_near_the_data(model, variables, images, seed=0):
    """Batch-norm statistics as a trained network's on new data: each layer's statistics on ``images``
    (calibrated), then its variance widened by 1-2x and its mean moved by up to ~0.3 standard deviations.

    Far from (0, 1) and from the statistics of the inputs folded, yet the network stays in the well-conditioned
    regime tolerances.network_rtol assumes. Independent random statistics (variance in 0.5-2 whatever the
    layer's input) leave it: the mismatch compounds through EfficientNetV2's deep stages until one rounding of
    every weight (what folding does) moves the output past the bound (EfficientNetV2-S: 3600x it; here 0.007x).
    """
    variables = calibrate_batch_norm(model, variables, images)
    rng = np.random.default_rng(seed)

    def near(stats):
        std = np.sqrt(stats["var"])
        mean = stats["mean"] + rng.normal(0.0, 0.3, std.shape) * std
        return {"mean": mean.astype(np.float32), "var": (stats["var"] * rng.uniform(1.0, 2.0, std.shape)).astype(np.float32)}

    is_stats = lambda node: isinstance(node, dict) and set(node) == {"mean", "var"}
    return {**variables, "batch_stats": jax.tree_util.tree_map(near, variables["batch_stats"], is_leaf=is_stats)}
