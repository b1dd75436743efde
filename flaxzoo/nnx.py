"""flaxzoo's models as Flax NNX modules: every registered constructor, with the same arguments.

    model = flaxzoo.nnx.ResNet50(weights="imagenet")      # an nnx.Module
    probs = model(x)                                        # eval mode: moving statistics
    model.train()                                           # batch statistics (and dropout) from here on
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=flaxzoo.nnx.trainable_filter(model))
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, optimizer.wrt))(model, x, y)
    optimizer.update(model, grads)                          # params; the BN statistics update in model(x)

A :class:`Model` holds the linen module (static) and its variables as NNX variables, one attribute per
collection: ``model.params`` (:class:`nnx.Param`), ``model.batch_stats`` (:class:`nnx.BatchStat`) and
``model.constants`` (:class:`Constant`: in-model preprocessing, never trained), nested by layer as in the
linen ``variables``, so ``nnx.state(model, nnx.BatchStat)`` gives the statistics by layer name. It calls
the linen module's ``apply``: the numbers are the linen model's, and :func:`to_linen_variables` /
:func:`from_linen` move between the two faces without copying (checkpoints are shared).

Unlike ``nnx.bridge.ToNNX``, ``model.train()`` / ``model.eval()`` switch batch norm and dropout (the
``use_running_average`` and ``deterministic`` attributes, which they set together), and a call in training
mode writes the new batch statistics back with no ``mutable`` argument.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from flaxzoo.surgery import Frozen, freeze, trainable_mask
from flaxzoo.zoo import get_spec, specs


class Constant(nnx.Variable):
    """A non-trainable constant of the model (the in-model Normalization's mean, variance and count)."""


VARIABLE_TYPES: dict[str, type[nnx.Variable]] = {"params": nnx.Param, "batch_stats": nnx.BatchStat, "constants": Constant}


def _wrap(tree, variable_type):
    return jax.tree_util.tree_map(variable_type, dict(tree))


def _unwrap(tree) -> dict:
    return jax.tree_util.tree_map(lambda v: v.get_value(), tree, is_leaf=lambda v: isinstance(v, nnx.Variable))


class Model(nnx.Module):
    """A flaxzoo (linen) model as an ``nnx.Module``: ``Model(module, variables)``. Made in eval mode."""

    def __init__(self, module, variables: Mapping[str, Any], *, rngs: nnx.Rngs | None = None):
        unknown = sorted(set(variables) - set(VARIABLE_TYPES))
        if unknown:
            raise ValueError(f"variables hold collections {unknown}; a flaxzoo model has {sorted(VARIABLE_TYPES)}")
        self.module = module
        self.collections = tuple(c for c in VARIABLE_TYPES if c in variables)
        for collection in VARIABLE_TYPES:
            setattr(self, collection, nnx.data(_wrap(variables.get(collection, {}), VARIABLE_TYPES[collection])))
        self.rngs = rngs if rngs is not None else nnx.Rngs(dropout=0)
        self.use_running_average = True
        self.deterministic = True

    @property
    def training(self) -> bool:
        return not self.use_running_average

    def variables(self) -> dict:
        """The linen ``variables`` (current values): ``module.apply(model.variables(), x)`` equals ``model(x)``."""
        return {c: _unwrap(getattr(self, c)) for c in self.collections}

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        """The model's output: in eval mode with the moving statistics; in training mode (``model.train()``)
        with the batch's statistics, which also update the moving ones, and dropout drawn from ``rngs``
        (default: the model's ``rngs``; a key per call)."""
        variables = self.variables()
        if not self.training:
            return self.module.apply(variables, x)
        key = (rngs if rngs is not None else self.rngs).dropout()
        out, updates = self.module.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
        if "batch_stats" in updates:
            jax.tree_util.tree_map(
                lambda var, value: var.set_value(value), self.batch_stats, dict(updates["batch_stats"]),
                is_leaf=lambda v: isinstance(v, nnx.Variable),
            )  # fmt: skip
        return out

    def freeze(self, frozen: Frozen) -> "Model":
        """Freeze layers as :func:`flaxzoo.freeze` does (Keras' ``trainable = False``: their batch norms keep
        the moving statistics, also in training mode), in place; returns the model. Pair it with
        :func:`trainable_filter` for the optimizer and gradients."""
        self.module = freeze(self.module, frozen)
        return self


def trainable_filter(model: Model, frozen: Frozen = None) -> Callable[[tuple, Any], bool]:
    """An NNX filter selecting the trainable parameters: ``nnx.Param`` outside the frozen layers (by default
    those of :meth:`Model.freeze`; ``frozen`` as in :func:`flaxzoo.frozen_layers`). For ``nnx.Optimizer(...,
    wrt=)`` and ``nnx.DiffState``: frozen parameters get no gradient and no update (bit-identical)."""
    mask = trainable_mask(model.module, {"params": _unwrap(model.params)}, frozen)
    trainable = {
        ("params", *(str(getattr(k, "key", k)) for k in path))
        for path, keep in jax.tree_util.tree_flatten_with_path(mask)[0]
        if keep
    }

    def is_trainable(path: tuple, value: Any) -> bool:
        return isinstance(value, nnx.Param) and tuple(str(p) for p in path) in trainable

    return is_trainable


def to_linen_variables(model: Model) -> dict:
    """The linen ``variables`` of ``model`` (``flaxzoo.save_checkpoint`` writes them; ``module.apply`` runs them)."""
    return model.variables()


def from_linen(module, variables: Mapping[str, Any], *, rngs: nnx.Rngs | None = None) -> Model:
    """The NNX face of a linen ``(module, variables)`` pair: what every constructor here returns."""
    return Model(module, variables, rngs=rngs)


def _constructor(spec) -> Callable[..., Model]:
    @functools.wraps(spec.constructor)
    def constructor(*args, rngs: nnx.Rngs | None = None, **kwargs) -> Model:
        module, variables = spec.constructor(*args, **kwargs)
        return from_linen(module, variables, rngs=rngs)

    constructor.__doc__ = (
        f"``flaxzoo.{spec.keras_name}`` (same arguments, plus ``rngs`` for dropout) as an NNX "
        f":class:`flaxzoo.nnx.Model`, in eval mode."
    )
    constructor.__qualname__ = constructor.__name__ = spec.keras_name
    return constructor


def create_model(name: str, *, rngs: nnx.Rngs | None = None, **kwargs) -> Model:
    """:func:`flaxzoo.create_model` as an NNX :class:`Model`."""
    return _constructor(get_spec(name))(rngs=rngs, **kwargs)


_CONSTRUCTORS = {spec.keras_name: _constructor(spec) for spec in specs()}
globals().update(_CONSTRUCTORS)

__all__ = ["Constant", "Model", "create_model", "from_linen", "to_linen_variables", "trainable_filter", *sorted(_CONSTRUCTORS)]
