"""Random "pretrained-shaped" weights (:mod:`flaxzoo.testing`), as checkpoints, and calibrated batch norms."""

from pathlib import Path

import jax

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
