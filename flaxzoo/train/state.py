"""The train state and the optimizer: what a fine-tuning step reads and writes.

``TrainState`` holds arrays only (params, batch-norm statistics, the model's other collections, optimizer
state, step, rng), so it is a plain pytree to shard, donate and checkpoint; the model and the optimizer are
given to the step builders. Training updates ``params`` (the optimizer) and ``batch_stats`` (train-mode
batch norms); every other collection (``constants``: Keras' non-trainable weights such as Normalization's
mean and variance) passes through unchanged and is checkpointed with the rest.
Frozen layers (flaxzoo.freeze / trainable_mask) get ``optax.set_to_zero()``: no update, no optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")


TRAINED = ("params", "batch_stats")  # what a train step updates; every other collection passes through


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    # every other variable collection of the model, {name: tree} (e.g. {"constants": ...}): read, never updated
    collections: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> dict:
        """Every collection for ``model.apply``: ``params``, ``batch_stats`` (none for VGG) and the others."""
        return {
            "params": self.params,
            **({"batch_stats": self.batch_stats} if self.batch_stats else {}),
            **self.collections,
        }


def make_optimizer(
    name: str = "sgd",
    learning_rate: float | Callable = 1e-3,
    *,
    mask: Any = None,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
    """An optax optimizer by name; ``mask`` (a pytree of bools, True = trains, from
    ``flaxzoo.trainable_mask``) routes frozen parameters to ``optax.set_to_zero()``.

    ``sgd`` is plain SGD; ``momentum`` and ``nesterov`` SGD with ``momentum``; ``adam``; ``adamw`` with
    ``weight_decay``; ``rmsprop`` as Keras' RMSprop (rho 0.9, epsilon 1e-7).
    """
    makers = {
        "sgd": lambda: optax.sgd(learning_rate),
        "momentum": lambda: optax.sgd(learning_rate, momentum=momentum),
        "nesterov": lambda: optax.sgd(learning_rate, momentum=momentum, nesterov=True),
        "adam": lambda: optax.adam(learning_rate),
        "adamw": lambda: optax.adamw(learning_rate, weight_decay=weight_decay),
        "rmsprop": lambda: optax.rmsprop(learning_rate, decay=0.9, eps=1e-7),
    }
    if name not in makers:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    tx = makers[name]()
    if mask is None:
        return tx
    labels = jax.tree_util.tree_map(lambda trainable: "train" if trainable else "frozen", mask)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def create_train_state(variables: dict, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """A fresh state at step 0 from a model's variables (host or device arrays): ``params``, ``batch_stats``
    and every other collection (kept in ``collections``)."""
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        collections={k: v for k, v in variables.items() if k not in TRAINED},
    )
