"""Variables beyond ``params`` and ``batch_stats``: Keras' Normalization keeps its mean, variance and count as
non-trainable weights of the .h5 file, in the ``constants`` collection here. Parity of Normalization and
Rescaling with Keras, and every path a model's variables take (conversion, train steps, checkpoints,
transfer, masks, folding) carrying the constants unchanged."""

from __future__ import annotations

import json
import math

import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import struct

import flaxzoo
from flaxzoo import sharding, train
from flaxzoo.errors import WeightFileError
from flaxzoo.layers import (
    CONSTANTS,
    Activation,
    BatchNormalization,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    InputLayer,
    Normalization,
    Rescaling,
)
from flaxzoo.models.common import Application
from flaxzoo.weights import checkpoint
from flaxzoo.weights.convert import convert_h5

import keras_reference as kr
import tolerances

SIZE, CLASSES = 10, 3
STDDEV = (0.229**2, 0.224**2, 0.225**2)  # EfficientNet's IMAGENET_STDDEV_RGB
MEAN, VARIANCE = (0.1, -0.2, 0.3), (0.5, 2.0, 1.5)


class NormNet(Application):
    """EfficientNet's input stem (Rescaling, Normalization with file weights, per-channel Rescaling), a
    Normalization with constructor constants, a conv / batch norm and a classifier."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = InputLayer(name="input_layer")(x)
        x = Rescaling(1.0 / 255.0, name="rescaling")(x)
        x = Normalization(axis=3, name="normalization")(x)
        x = Rescaling([1.0 / math.sqrt(s) for s in STDDEV], name="rescaling_1")(x)
        x = Normalization(mean=MEAN, variance=VARIANCE, name="norm_const")(x)
        x = Conv2D(8, 3, strides=2, name="stem_conv")(x)
        x = BatchNormalization(name="stem_bn")(x, train)
        x = Activation("relu", name="stem_relu")(x)
        x = GlobalAveragePooling2D(name="avg_pool")(x)
        return Dense(self.classes, name="predictions")(x)


def build_model(**kwargs) -> NormNet:
    return NormNet(classes=CLASSES, input_shape=(SIZE, SIZE, 3), default_size=SIZE, **kwargs)


def keras_normnet() -> keras.Model:
    L = keras.layers
    keras.backend.clear_session()
    inputs = keras.Input((SIZE, SIZE, 3), name="input_layer")
    x = L.Rescaling(1.0 / 255.0, name="rescaling")(inputs)
    x = L.Normalization(axis=3, name="normalization")(x)
    x = L.Rescaling([1.0 / math.sqrt(s) for s in STDDEV], name="rescaling_1")(x)
    x = L.Normalization(mean=MEAN, variance=VARIANCE, name="norm_const")(x)
    x = L.BatchNormalization(name="stem_bn")(L.Conv2D(8, 3, strides=2, name="stem_conv")(x))
    x = L.Activation("relu", name="stem_relu")(x)
    x = L.Dense(CLASSES, name="predictions")(L.GlobalAveragePooling2D(name="avg_pool")(x))
    return kr.randomize_with_constants(keras.Model(inputs, x), seed=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(Keras model, its legacy .h5 written by Keras, images in [0, 255])."""
    model = keras_normnet()
    path = kr.save_legacy_h5(model, tmp_path_factory.mktemp("constants") / "normnet.h5")
    return model, path, kr.images(4, SIZE, seed=5)


@pytest.fixture(scope="module")
def converted(reference):
    model = build_model()
    variables, _ = convert_h5(reference[1], flaxzoo.model_graph(model))
    return model, variables


def apply(model, variables, x, **kwargs):
    with jax.default_matmul_precision("highest"):
        return model.apply(variables, x, **kwargs)


def assert_trees_equal(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------------------------
# The layers against Keras
# ------------------------------------------------------------------------------------------------

LAYER_CASES = {
    "rescaling": (Rescaling(1.0 / 127.5, offset=-1.0), keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)),
    "rescaling_per_channel": (Rescaling([0.5, 2.0, 4.0], offset=[1.0, 0.0, -1.0]),
                              keras.layers.Rescaling([0.5, 2.0, 4.0], offset=[1.0, 0.0, -1.0])),
    "normalization_scalar": (Normalization(mean=3.0, variance=2.0), keras.layers.Normalization(mean=3.0, variance=2.0)),
    "normalization_per_channel": (Normalization(mean=MEAN, variance=VARIANCE),
                                  keras.layers.Normalization(mean=MEAN, variance=VARIANCE)),
    "normalization_zero_variance": (Normalization(mean=MEAN, variance=(0.0, 1e-16, 4.0)),
                                    keras.layers.Normalization(mean=MEAN, variance=(0.0, 1e-16, 4.0))),
    "normalization_invert": (Normalization(mean=MEAN, variance=VARIANCE, invert=True),
                             keras.layers.Normalization(mean=MEAN, variance=VARIANCE, invert=True)),
}  # fmt: skip


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_without_weights_equals_keras(case):
    ours, theirs = LAYER_CASES[case]
    x = np.random.default_rng(0).uniform(-5, 5, (2, 3, 4, 3)).astype(np.float32)
    variables = ours.init(jax.random.key(0), x)
    out, ref = np.asarray(ours.apply(variables, x)), np.asarray(theirs(x))
    assert jax.tree_util.tree_leaves(variables) == [] and theirs.weights == []  # constants: no weights in Keras either
    np.testing.assert_allclose(out, ref, rtol=tolerances.ELEMENTWISE_RTOL, atol=0)
    integer = np.arange(24, dtype=np.int32).reshape(1, 2, 4, 3)  # Keras casts to float32
    np.testing.assert_allclose(ours.apply(variables, integer), theirs(integer), rtol=tolerances.ELEMENTWISE_RTOL)


def test_normalization_with_weights_has_keras_weights_in_the_constants_collection():
    x = np.zeros((1, 2, 2, 3), np.float32)
    variables = Normalization(name="normalization").init(jax.random.key(0), x)
    assert list(variables) == [CONSTANTS]
    keras_layer = keras.layers.Normalization(name="normalization")
    keras_layer.build(x.shape)
    assert [w.path.rsplit("/", 1)[-1] for w in keras_layer.weights] == [var for _, var in Normalization.keras_weights]
    for (_, var), w in zip(Normalization.keras_weights, keras_layer.weights):
        ours = variables[CONSTANTS][var]
        assert (ours.shape, ours.dtype) == (tuple(w.shape), jnp.dtype(w.dtype)) and not w.trainable
        np.testing.assert_array_equal(ours, w.numpy())  # Keras' initial values: 0, 1, 0


def test_normalization_argument_errors_are_keras():
    with pytest.raises(ValueError, match="both `mean` and `variance` must be set"):
        Normalization(mean=1.0)
    with pytest.raises(ValueError, match="must have the same shape"):
        Normalization(mean=(1.0, 2.0), variance=1.0)
    with pytest.raises(ValueError, match="last axis only"):
        Normalization(axis=1, mean=1.0, variance=1.0).init(jax.random.key(0), np.zeros((1, 2, 2, 3)))


# ------------------------------------------------------------------------------------------------
# Conversion and the model against Keras
# ------------------------------------------------------------------------------------------------


def test_conversion_reads_constants_from_a_keras_file_and_outputs_equal_keras(reference, converted):
    keras_model, _, x = reference
    model, variables = converted
    assert set(variables) == {"params", "batch_stats", CONSTANTS}
    constants = variables[CONSTANTS]
    assert list(constants) == ["normalization"]  # norm_const has no weights, as in Keras
    layer = keras_model.get_layer("normalization")
    np.testing.assert_array_equal(constants["normalization"]["mean"], layer.adapt_mean.numpy())
    np.testing.assert_array_equal(constants["normalization"]["variance"], layer.adapt_variance.numpy())
    assert constants["normalization"]["count"].dtype == np.int32
    assert int(constants["normalization"]["count"]) == int(layer.count.numpy()) > 0
    logits = jax.jit(lambda v, x: apply(model, v, x))(variables, x)
    tolerances.assert_features_close(logits, kr.run(keras_model, x), variables)


def test_summary_counts_constants_as_non_trainable_as_keras(reference):
    keras_model, _, _ = reference
    text = flaxzoo.summary(build_model(), print_fn=None)
    trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    assert f"Total params: {keras_model.count_params():,}" in text
    assert f"Trainable params: {trainable:,}" in text


def rewrite_count(path, tmp_path, value) -> str:
    """A copy of the Keras file with Normalization's count stored as ``value`` (a numpy scalar)."""
    out = tmp_path / "count.h5"
    out.write_bytes(path.read_bytes())
    with h5py.File(out, "r+") as f:
        group = f["normalization"]
        name = next(n for n in group.attrs["weight_names"] if str(n).endswith("count"))
        del group[name]
        group.create_dataset(name, data=value)
    return out


def test_a_keras_2_count_converts_and_a_count_that_cannot_be_one_is_refused(reference, tmp_path):
    _, path, _ = reference
    graph = flaxzoo.model_graph(build_model())
    variables, _ = convert_h5(rewrite_count(path, tmp_path, np.int64(123456)), graph)  # Keras 2 writes int64
    count = variables[CONSTANTS]["normalization"]["count"]
    assert count.dtype == np.int32 and int(count) == 123456
    with pytest.raises(WeightFileError, match=r"normalization.*count.*does not fit int32"):
        convert_h5(rewrite_count(path, tmp_path, np.int64(1 << 40)), graph)
    with pytest.raises(WeightFileError, match=r"normalization.*count.*float32, expected integer"):
        convert_h5(rewrite_count(path, tmp_path, np.float32(3.0)), graph)
    with pytest.raises(WeightFileError, match=r"normalization.*count.*bool"):
        convert_h5(rewrite_count(path, tmp_path, np.bool_(True)), graph)


# ------------------------------------------------------------------------------------------------
# Training, checkpoints, transfer, masks, folding
# ------------------------------------------------------------------------------------------------


def batch(reference):
    x = reference[2]
    return {"image": x, "label": np.arange(len(x), dtype=np.int32) % CLASSES}


def test_jit_train_eval_predict_steps_carry_the_constants_unchanged(reference, converted):
    model, variables = converted
    tx = optax.sgd(0.1)
    mesh = sharding.data_mesh()
    steps = train.make_steps(model, tx, mesh)
    state = train.create_train_state(variables, tx)
    assert set(state.collections) == {CONSTANTS} and set(state.variables) == {"params", "batch_stats", CONSTANTS}
    new, metrics = steps.train(sharding.replicate(state, mesh), sharding.global_batch(batch(reference), mesh))
    assert np.isfinite(float(metrics["loss"]))
    assert_trees_equal(new.collections, {CONSTANTS: variables[CONSTANTS]})
    assert not np.array_equal(new.params["stem_conv"]["kernel"], variables["params"]["stem_conv"]["kernel"])
    assert not np.array_equal(new.batch_stats["stem_bn"]["mean"], variables["batch_stats"]["stem_bn"]["mean"])
    sums = steps.eval(new, sharding.global_batch(batch(reference), mesh))
    assert float(sums["count"]) == len(reference[2])
    probs = steps.predict(new, sharding.global_batch(reference[2], mesh))
    logits = apply(model, jax.device_get(new.variables), reference[2])
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), atol=tolerances.probability_atol(variables))


def test_pmap_train_step_carries_the_constants_unchanged(reference, converted):
    model, variables = converted
    tx = optax.sgd(0.1)
    steps = train.make_pmap_steps(model, tx)
    state = sharding.pmap_replicate(train.create_train_state(variables, tx))
    new, _ = steps.train(state, sharding.pmap_split(batch(reference)))
    assert_trees_equal(sharding.pmap_unreplicate(new.collections), {CONSTANTS: variables[CONSTANTS]})
    assert float(steps.eval(new, sharding.pmap_split(batch(reference)))["count"][0]) == len(reference[2])


@pytest.mark.parametrize("collections", ["constants", "none"])
def test_train_checkpoints_save_and_restore_every_collection(converted, tmp_path, collections):
    _, variables = converted
    if collections == "none":  # a model with params and batch_stats only keeps an empty dict
        variables = {k: v for k, v in variables.items() if k != CONSTANTS}
    tx = optax.adam(1e-3)
    mesh = sharding.data_mesh()
    state = sharding.replicate(train.create_train_state(variables, tx), mesh)
    with train.TrainCheckpoints(tmp_path / "ckpt", use_async=False) as ckpts:
        ckpts.save(3, state, {"epoch": 1}, force=True)
    with train.TrainCheckpoints(tmp_path / "ckpt") as ckpts:
        template = train.create_train_state(jax.tree_util.tree_map(np.zeros_like, variables), tx)
        restored, record = ckpts.restore(template, sharding.replicated(mesh))
    assert record == {"epoch": 1}
    assert_trees_equal(restored, state)


def test_weight_checkpoints_save_and_restore_the_constants_directly_and_through_orbax(converted, tmp_path):
    model, variables = converted
    graph = flaxzoo.model_graph(model)
    directory = checkpoint.save(tmp_path / "ckpt", variables, {"format": "flaxzoo-checkpoint", "model": "normnet"})
    restored, record = checkpoint.restore(directory, lambda: graph.variables)
    assert record["variables"]["constants/normalization/count"] == []
    assert_trees_equal(restored, variables)
    meta = directory / checkpoint.METADATA_FILE
    legacy = json.loads(meta.read_text())
    del legacy["dtypes"]  # a record the direct read does not take: orbax restores it
    meta.write_text(json.dumps(legacy))
    assert checkpoint._read_direct(directory / checkpoint.STATE_DIR, legacy) is None
    restored, _ = checkpoint.restore(directory, lambda: graph.variables)
    assert_trees_equal(restored, variables)


class Wrapper(nn.Module):
    backbone: nn.Module

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(2, name="head")(self.backbone(x, train=train))


def test_load_pretrained_transfers_the_constants(converted, reference):
    model, variables = converted
    wrapper = Wrapper(model.clone(name="backbone"))
    fresh = wrapper.init(jax.random.key(0), reference[2])
    loaded, report = flaxzoo.load_pretrained(fresh, variables, at="backbone")
    assert {"constants/backbone/normalization/mean", "constants/backbone/normalization/count"} <= set(report.loaded)
    assert sorted(report.not_in_pretrained) == ["params/head/bias", "params/head/kernel"]
    assert_trees_equal(loaded[CONSTANTS]["backbone"], variables[CONSTANTS])


def test_trainable_mask_covers_params_only(converted):
    model, variables = converted
    mask = flaxzoo.trainable_mask(flaxzoo.freeze(model, "stem_bn"), variables)
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(jax.device_get(variables["params"]))
    assert mask["stem_conv"] == {"kernel": False, "bias": False}
    assert mask["predictions"] == {"kernel": True, "bias": True}
    tx = train.make_optimizer("adam", 1e-3, mask=mask)
    assert jax.tree_util.tree_leaves(tx.init(variables["params"]))  # the mask fits the params


def test_fold_batchnorm_keeps_the_constants(converted, reference):
    model, variables = converted
    folded_model, folded = flaxzoo.fold_batchnorm(model, variables)
    assert set(folded) == {"params", CONSTANTS}
    assert_trees_equal(folded[CONSTANTS], variables[CONSTANTS])
    x = reference[2]
    tolerances.assert_features_close(apply(folded_model, folded, x), apply(model, variables, x), variables)


@struct.dataclass
class TrainStateBeforeCollections:
    step: jax.Array
    params: object
    batch_stats: object
    opt_state: object
    rng: jax.Array


def test_a_train_checkpoint_written_before_train_states_had_collections_still_resumes(converted, tmp_path):
    _, variables = converted
    variables = {k: v for k, v in variables.items() if k != CONSTANTS}
    tx = optax.sgd(0.1, momentum=0.9)
    mesh = sharding.data_mesh()
    state = train.create_train_state(variables, tx)
    old = TrainStateBeforeCollections(state.step, state.params, state.batch_stats, state.opt_state, state.rng)
    with train.TrainCheckpoints(tmp_path / "ckpt", use_async=False) as ckpts:
        ckpts.save(1, sharding.replicate(old, mesh), {"epoch": 0}, force=True)
    with train.TrainCheckpoints(tmp_path / "ckpt") as ckpts:
        restored, _ = ckpts.restore(state, sharding.replicated(mesh))
        assert isinstance(restored, train.TrainState) and restored.collections == {}
        assert_trees_equal(restored, state)
        with_constants = train.create_train_state(converted[1], tx)  # another model's state: still refused
        with pytest.raises(ValueError, match="do not match"):
            ckpts.restore(with_constants, sharding.replicated(mesh))
