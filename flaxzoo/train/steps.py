"""Train, eval and predict steps: ``jax.jit`` over a ``data`` mesh (the default), or ``jax.pmap``.

The jit steps take a replicated :class:`TrainState` and a batch sharded along the mesh's ``data`` axis
(:func:`flaxzoo.sharding.global_batch`); batch norm then normalises with the statistics of the global
batch, and XLA inserts the gradient all-reduce. The pmap steps take per-device shards and reach the same
update with explicit ``pmean``s (gradients, and batch-norm statistics through
:func:`flaxzoo.layers.cross_replica_batch_norm`).

A batch is ``{"image": float (B, H, W, C) preprocessed, "label": int (B,)}`` plus, for evaluation, an
optional ``"weight"`` (B,) that is 0 for padding examples. The model returns logits
(``classifier_activation=None``); ``compute_dtype=jnp.bfloat16`` runs the forward and backward pass in
bfloat16 with float32 parameters, statistics and loss. A train step updates ``params`` and ``batch_stats``
only: the model's other collections (``TrainState.collections``, e.g. constants) are read, never written.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh

from flaxzoo import xla_options
from flaxzoo.layers import cross_replica_batch_norm
from flaxzoo.sharding import batch_sharded, replicated
from flaxzoo.train.state import TrainState

PMAP_AXIS = "batch"


@dataclasses.dataclass(frozen=True)
class StepConfig:
    label_smoothing: float = 0.0
    accum_steps: int = 1  # gradient accumulation: the batch is split into this many micro-batches
    compute_dtype: Any = None  # e.g. jnp.bfloat16
    # flaxzoo.trainable_mask: frozen parameters are stop_gradient-ed, so no backward pass is traced
    # through a frozen body (pair it with the same mask in make_optimizer, which zeroes their updates)
    trainable: Any = dataclasses.field(default=None, hash=False, compare=False)


def _forward(model: nn.Module, variables: dict, images, config: StepConfig, *, train: bool, rng=None):
    if config.compute_dtype is not None:
        images = images.astype(config.compute_dtype)
    kwargs = dict(train=train)
    if train:
        kwargs.update(mutable=["batch_stats"], rngs={"dropout": rng})
    out = model.apply(variables, images, **kwargs)
    logits, updates = out if train else (out, {})
    return logits.astype(jnp.float32), updates


def _loss(logits, labels, label_smoothing: float):
    onehot = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


def _gradients(model, state: TrainState, batch, config: StepConfig):
    """(grads, new batch stats, summed loss, correct count) over the batch, by micro-batches."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    n = config.accum_steps
    images, labels = batch["image"], batch["label"]
    if images.shape[0] % n:
        raise ValueError(f"batch of {images.shape[0]} does not split into {n} accumulation steps")
    micro = jax.tree_util.tree_map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), (images, labels))

    def micro_step(carry, xs):
        grads, batch_stats, loss_sum, correct = carry
        (x, y), i = xs

        def loss_fn(params):
            if config.trainable is not None:
                params = jax.tree_util.tree_map(
                    lambda p, t: p if t else jax.lax.stop_gradient(p), params, config.trainable
                )
            variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {}), **state.collections}
            logits, updates = _forward(model, variables, x, config, train=True, rng=jax.random.fold_in(rng, i))
            losses = _loss(logits, y, config.label_smoothing)
            return losses.mean(), (updates.get("batch_stats", batch_stats), losses.sum(), jnp.sum(jnp.argmax(logits, -1) == y))

        (_, (batch_stats, l_sum, c)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.tree_util.tree_map(lambda a, b: a + b / n, grads, g)
        return (grads, batch_stats, loss_sum + l_sum, correct + c), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    init = (zeros, state.batch_stats, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    if n == 1:
        (grads, batch_stats, loss_sum, correct), _ = micro_step(init, (jax.tree_util.tree_map(lambda x: x[0], micro), 0))
    else:
        (grads, batch_stats, loss_sum, correct), _ = jax.lax.scan(micro_step, init, (micro, jnp.arange(n)))
    return grads, batch_stats, loss_sum, correct


def _apply_gradients(tx, state: TrainState, grads, batch_stats) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )


def _train_step(model, tx, config, state, batch):
    grads, batch_stats, loss_sum, correct = _gradients(model, state, batch, config)
    count = batch["label"].shape[0]
    metrics = {"loss": loss_sum / count, "accuracy": correct / count, "count": jnp.asarray(count, jnp.float32)}
    return _apply_gradients(tx, state, grads, batch_stats), metrics


def _eval_metrics(model, config, state, batch):
    logits, _ = _forward(model, state.variables, batch["image"], config, train=False)
    weight = batch.get("weight", jnp.ones(batch["label"].shape, jnp.float32))
    losses = _loss(logits, batch["label"], 0.0)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * weight), "correct": jnp.sum(correct * weight), "count": jnp.sum(weight)}


def _predict(model, config, state, images):
    logits, _ = _forward(model, state.variables, images, config, train=False)
    return jax.nn.softmax(logits, axis=-1)


@dataclasses.dataclass(frozen=True)
class Steps:
    """``train(state, batch) -> (state, metrics)`` (``state`` donated), ``eval(state, batch) -> sums``,
    ``predict(state, images) -> probabilities``."""

    train: Callable
    eval: Callable
    predict: Callable


def make_steps(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, config: StepConfig = StepConfig()) -> Steps:
    """jit steps over ``mesh``: state replicated, batches sharded along ``data``, the state's buffers donated."""
    repl, data = replicated(mesh), batch_sharded(mesh)
    # forward-only steps without YNNPACK on CPU; the train step keeps XLA's defaults (see flaxzoo.xla_options)
    jit = functools.partial(xla_options.jit, platform=mesh.devices.flat[0].platform)
    return Steps(
        train=jax.jit(
            functools.partial(_train_step, model, tx, config),
            in_shardings=(repl, data),
            out_shardings=(repl, repl),
            donate_argnums=(0,),
        ),
        eval=jit(functools.partial(_eval_metrics, model, config), in_shardings=(repl, data), out_shardings=repl),
        predict=jit(functools.partial(_predict, model, config), in_shardings=(repl, data), out_shardings=data),
    )


def average_over_devices(tree):
    """The pmap step's gradient all-reduce: the mean over devices, which a step on the global batch gives."""
    return jax.lax.pmean(tree, PMAP_AXIS)


def make_pmap_steps(model: nn.Module, tx: optax.GradientTransformation, config: StepConfig = StepConfig()) -> Steps:
    """``jax.pmap`` steps for codebases on pmap: state replicated per local device
    (:func:`flaxzoo.sharding.pmap_replicate`), batches split per device (:func:`flaxzoo.sharding.pmap_split`).
    Gradients, metrics and batch-norm statistics are averaged across devices: the same update as :func:`make_steps`."""

    def train(state, batch):
        # independent dropout masks per device (the jit path draws one mask for the global batch)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), jax.lax.axis_index(PMAP_AXIS))
        local = state.replace(rng=jax.random.key_data(key))
        with cross_replica_batch_norm(PMAP_AXIS):
            grads, batch_stats, loss_sum, correct = _gradients(model, local, batch, config)
        grads = average_over_devices(grads)
        count = jax.lax.psum(jnp.asarray(batch["label"].shape[0], jnp.float32), PMAP_AXIS)
        metrics = {
            "loss": jax.lax.psum(loss_sum, PMAP_AXIS) / count,
            "accuracy": jax.lax.psum(correct, PMAP_AXIS) / count,
            "count": count,
        }
        return _apply_gradients(tx, state, grads, batch_stats), metrics

    def evaluate(state, batch):
        return jax.lax.psum(_eval_metrics(model, config, state, batch), PMAP_AXIS)

    return Steps(
        train=jax.pmap(train, axis_name=PMAP_AXIS, donate_argnums=(0,)),
        eval=jax.pmap(evaluate, axis_name=PMAP_AXIS),
        predict=jax.pmap(functools.partial(_predict, model, config), axis_name=PMAP_AXIS),
    )
