"""The NNX face (flaxzoo.nnx): the linen model's numbers, train/eval switching, an nnx.Optimizer step equal
to flaxzoo.train's linen step, freezing by filter, and linen variables both ways."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flaxzoo
import flaxzoo.nnx as fnnx
from flaxzoo.sharding import data_mesh
from flaxzoo.train.state import create_train_state
from flaxzoo.train.steps import make_steps

from random_weights import calibrate_batch_norm, random_checkpoint

CASES = {  # Keras constructor arguments: small inputs, a 5-class logits head, no dropout to draw
    "ResNet50": dict(input_shape=(64, 64, 3), classes=5, classifier_activation=None),
    "MobileNet": dict(alpha=0.25, input_shape=(64, 64, 3), classes=5, classifier_activation=None, dropout=0.0),
}
FROZEN_UNTIL = {"ResNet50": "conv2_block3_out", "MobileNet": "conv_pw_5_relu"}
# One step's parameters and statistics are the same computation in both faces (the same apply, jitted
# apart): any difference is XLA's fusion choices, float32 rounding of the update.
TOLERANCE = 1e-6


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(Keras name, checkpoint of calibrated random weights, images, labels)."""
    name = request.param
    model_name = flaxzoo.get_spec(name).name
    directory = random_checkpoint(tmp_path_factory.mktemp("nnx"), model_name, **CASES[name])
    module, variables = getattr(flaxzoo, name)(weights=directory, **CASES[name])
    images = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype(np.float32)
    variables = calibrate_batch_norm(module, variables, images + 0.5)
    path = str(flaxzoo.save_checkpoint(tmp_path_factory.mktemp("nnx") / "calibrated", model_name, variables))
    return name, path, images, np.array([0, 1, 2, 3])


def _nnx(case):
    name, path, _, _ = case
    return getattr(fnnx, name)(weights=path, **CASES[name])


def _linen(case):
    name, path, _, _ = case
    return getattr(flaxzoo, name)(weights=path, **CASES[name])


def _max_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _loss(model, images, labels):
    logits = model(images)
    return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1])).mean()


def test_eval_output_equals_the_linen_model(case):
    _, _, images, _ = case
    model = _nnx(case)
    module, variables = _linen(case)
    assert isinstance(model, nnx.Module) and not model.training
    assert _max_difference(model(images), module.apply(variables, images)) <= TOLERANCE


def test_train_and_eval_switch_batch_statistics(case):
    _, _, images, _ = case
    model = _nnx(case)
    module, variables = _linen(case)
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))]  # a copy: states are live
    model.train()
    assert model.training and model.deterministic is False
    train_out, updates = module.apply(variables, images, train=True, mutable=["batch_stats"])
    assert _max_difference(model(images), train_out) <= TOLERANCE
    assert _max_difference(nnx.state(model, nnx.BatchStat)["batch_stats"], updates["batch_stats"]) <= TOLERANCE
    assert _max_difference(nnx.state(model, nnx.BatchStat), before) > 0  # the moving statistics moved
    model.eval()
    assert _max_difference(model(images), module.apply({**variables, **updates}, images)) <= TOLERANCE


def test_one_sgd_step_equals_the_linen_train_step(case):
    _, _, images, labels = case
    tx = optax.sgd(0.1)
    module, variables = _linen(case)
    mesh = data_mesh(jax.devices()[:1])
    state, _ = make_steps(module, tx, mesh).train(create_train_state(variables, tx), {"image": images, "label": labels})

    model = _nnx(case)
    model.train()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, images, labels):
        loss, grads = nnx.value_and_grad(_loss)(model, images, labels)
        optimizer.update(model, grads)
        return loss

    step(model, optimizer, images, labels)
    after = fnnx.to_linen_variables(model)
    assert _max_difference(after["params"], state.params) <= TOLERANCE
    assert _max_difference(after["batch_stats"], state.batch_stats) <= TOLERANCE


def test_a_frozen_prefix_stays_bit_identical(case):
    name, _, images, labels = case
    model = _nnx(case).freeze(FROZEN_UNTIL[name])
    trainable = fnnx.trainable_filter(model)
    frozen = set(flaxzoo.frozen_layers(model.module, FROZEN_UNTIL[name]))
    before = fnnx.to_linen_variables(model)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=trainable)

    @nnx.jit
    def step(model, optimizer, images, labels):
        grads = nnx.grad(_loss, argnums=nnx.DiffState(0, trainable))(model, images, labels)
        optimizer.update(model, grads)

    step(model, optimizer, images, labels)
    after = fnnx.to_linen_variables(model)
    changed = set()
    for collection in ("params", "batch_stats"):
        for layer in after[collection]:
            same = all(
                np.array_equal(a, b)
                for a, b in zip(jax.tree_util.tree_leaves(after[collection][layer]), jax.tree_util.tree_leaves(before[collection][layer]))
            )  # fmt: skip
            if not same:
                changed.add(layer)
    assert changed and not any(layer in frozen or layer.removesuffix("_bn") in frozen for layer in changed)
    assert any(layer not in frozen for layer in after["params"])


def test_linen_variables_round_trip_through_a_checkpoint(case, tmp_path):
    name, _, images, _ = case
    model = _nnx(case)
    model.train()
    model(images)  # statistics moved: the round trip carries the current values
    model.eval()
    variables = fnnx.to_linen_variables(model)
    path = flaxzoo.save_checkpoint(tmp_path / "ck", name, variables)
    again = getattr(fnnx, name)(weights=str(path), **CASES[name])
    assert _max_difference(fnnx.to_linen_variables(again), variables) == 0
    back = fnnx.from_linen(model.module, variables)
    assert _max_difference(back(images), model(images)) == 0


def test_every_registered_constructor_has_an_nnx_face():
    for spec in flaxzoo.specs():
        assert getattr(fnnx, spec.keras_name).__name__ == spec.keras_name
    assert flaxzoo.nnx is fnnx
