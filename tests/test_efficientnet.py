"""EfficientNet B0-B7 and EfficientNetV2: what the registry-wide tests do not cover.

The in-model preprocessing (v1's Normalization with file weights, v2's constants, ``include_preprocessing``),
v1's extra ``Rescaling(1/sqrt(std))`` for ``weights="imagenet"`` only (through a random-weight file served as
Keras' cached "imagenet" file), the parity fixtures' perturbed Normalization weights, stochastic depth ("drop
connect": identity at inference, per-image and rng-driven in training, Keras' rates, Keras' training pass with
it off), custom names, and the Normalization weights through folding, checkpoints and a train step. Small
sizes, and the smallest presets, for CI time.
"""

from __future__ import annotations

import functools
import inspect
import math
import os

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from flax import linen as nn
from keras.src.applications import efficientnet as keras_efficientnet

import flaxzoo
from flaxzoo import layers, sharding, testing, train
from flaxzoo.layers import CONSTANTS, Dropout
from flaxzoo.models.common import FLAXZOO_KEYWORDS
from flaxzoo.models.efficientnet import IMAGENET_STDDEV_RGB
from flaxzoo.registry import WeightFile
from flaxzoo.weights import count_params, keras_home, md5sum
from flaxzoo.zoo import create_model, get_spec, list_models

import keras_reference as kr
import tolerances
from test_parity import assert_features_close, flax_apply, notop_reference, other_size

V1 = [n for n in list_models() if get_spec(n).keras_modules[0] == "efficientnet"]
V2 = [n for n in list_models() if get_spec(n).keras_modules[0] == "efficientnet_v2"]
SIZE = 65  # other_size of every preset: odd, so correct_pad is not (0, 1) there


def test_every_preset_is_registered_with_keras_file_names_and_hashes():
    assert len(V1) == 8 and len(V2) == 7
    keras_v2 = __import__("keras.src.applications.efficientnet_v2", fromlist=["_"])
    for name in V1 + V2:
        spec = get_spec(name)
        module = keras_efficientnet if name in V1 else keras_v2
        keras_name = inspect.signature(kr.keras_constructor(spec)).parameters["name"].default
        assert (spec.default_name or spec.name) == keras_name
        key = keras_name.removeprefix("efficientnet").removeprefix("v2")  # Keras' weights_name: "b0", "-s"
        key = key.removeprefix("-") if key.startswith("-b") else key
        for variant, suffix, md5 in zip(("top", "notop"), (".h5", "_notop.h5"), module.WEIGHTS_HASHES[key]):
            wf = spec.weights[variant]
            assert (wf.fname, wf.md5) == (keras_name + suffix, md5)
            assert f"https://storage.googleapis.com/{wf.path}" == module.BASE_WEIGHTS_PATH + keras_name + suffix


@pytest.mark.parametrize("name", ["efficientnetb0", "efficientnet_v2b0"])
def test_signature_is_keras(name):
    ours = inspect.signature(get_spec(name).constructor).parameters
    theirs = inspect.signature(kr.keras_constructor(get_spec(name))).parameters
    keyword_only = {p.name: p.default for p in ours.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert [(p.name, p.default) for p in theirs.values()] == [
        (p.name, p.default) for p in ours.values() if p.name not in keyword_only
    ]
    assert keyword_only == FLAXZOO_KEYWORDS  # seed, features_only, out_indices


# ------------------------------------------------------------------------------------------------
# Preprocessing in the model
# ------------------------------------------------------------------------------------------------


def preprocessing_layers(name) -> list[str]:
    graph = flaxzoo.model_graph(create_model(name, abstract=True, weights=None, include_top=False)[0])
    return [layer.name for layer in graph.layers if layer.keras_class in ("Rescaling", "Normalization")]


@pytest.mark.parity
@pytest.mark.parametrize("name", ["efficientnetb0", "efficientnet_v2b0", "efficientnet_v2s"])
def test_preprocessing_layers_equal_keras(name):
    """The stem's Rescaling and Normalization outputs (v1: the fixture's perturbed mean and variance; v2 B:
    ImageNet constants; v2 S: x / 128 - 1), against the same layers of Keras' model on [0, 255] images."""
    expected = {"efficientnetb0": ["rescaling", "normalization"], "efficientnet_v2b0": ["rescaling", "normalization"],
                "efficientnet_v2s": ["rescaling"]}[name]  # fmt: skip
    assert preprocessing_layers(name) == expected
    ref_model = notop_reference(name, SIZE)
    submodel = keras.Model(ref_model.input, ref_model.get_layer(expected[-1]).output)
    x = kr.reference_inputs(name, SIZE)
    ref = kr.run(submodel, x)
    model, variables = get_spec(name).constructor(include_top=False, weights=kr.reference_h5(name, False))
    ours = np.asarray(jax.jit(lambda v, x: flaxzoo.extract(model, v, x, expected[-1:]))(variables, x)[expected[-1]])
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=tolerances.ELEMENTWISE_RTOL, atol=tolerances.ELEMENTWISE_RTOL * scale)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["efficientnet_v2b0", "efficientnet_v2s"])
def test_without_preprocessing_equals_keras(name):
    """``include_preprocessing=False``: no Rescaling / Normalization layers, the same weights (the preprocessing
    has none in v2), outputs equal to Keras' on preprocessed inputs."""
    spec = get_spec(name)
    h5 = kr.reference_h5(name, False)
    keras_model = kr.build(spec, placeholder_weights=True, include_top=False, include_preprocessing=False)
    keras_model.load_weights(str(h5))
    model, variables = spec.constructor(include_top=False, include_preprocessing=False, weights=h5)
    assert flaxzoo.layer_names(model) == [layer.name for layer in keras_model.layers]
    assert not set(flaxzoo.layer_names(model)) & {"rescaling", "normalization"}
    x = kr.reference_inputs(name, SIZE) / 127.5 - 1.0
    assert_features_close(flax_apply(model, variables, x), kr.run(keras_model, x), variables)


def test_v2_b_variants_rescale_to_minus_one_one_on_other_channel_counts_as_keras():
    """Keras normalises with ImageNet's statistics on 3 channels only; otherwise it rescales as S/M/L do."""
    spec = get_spec("efficientnet_v2b0")
    model, _ = create_model(spec.name, abstract=True, weights=None, include_top=False, input_shape=(SIZE, SIZE, 1))
    keras_model = kr.build(spec, placeholder_weights=True, include_top=False, input_shape=(SIZE, SIZE, 1))
    assert flaxzoo.layer_names(model)[:3] == [layer.name for layer in keras_model.layers][:3] == [
        "input_layer", "rescaling", "stem_conv"
    ]  # fmt: skip
    rescaling = keras_model.get_layer("rescaling")
    assert (rescaling.scale, rescaling.offset) == (1.0 / 128.0, -1)
    x = np.full((1, SIZE, SIZE, 1), 64.0, np.float32)
    np.testing.assert_array_equal(flaxzoo.truncate(model, "rescaling").apply({}, x), -0.5)  # no weights before it


def test_parity_fixtures_perturb_every_vector_weight():
    """The parity fixtures' Normalization mean, variance and count, as every batch-norm vector and bias, are far
    from Keras' initial values (0, 1, 0): a file read into the wrong slot would not pass parity."""
    _, variables = flaxzoo.EfficientNetB0(include_top=False, weights=kr.reference_h5("efficientnetb0", False))
    normalization = variables[CONSTANTS]["normalization"]
    assert normalization["count"].dtype == np.int32 and int(normalization["count"]) > 0
    vectors = [(jax.tree_util.keystr(path), np.asarray(leaf)) for path, leaf in
               jax.tree_util.tree_leaves_with_path(variables) if np.ndim(leaf) == 1]  # fmt: skip
    assert len(vectors) > 200
    for path, leaf in vectors:
        assert not np.isin(leaf, (0.0, 1.0)).any() and (len(leaf) == 1 or np.ptp(leaf) > 0), path


# ------------------------------------------------------------------------------------------------
# weights="imagenet" and the extra rescaling
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def served_imagenet_notop(monkeypatch):
    """The B0 no-top parity fixture served as the "imagenet" file: in Keras' cache for flaxzoo (its md5 patched
    into the registry), through Keras' get_file for Keras."""
    spec = get_spec("efficientnetb0")
    source = kr.reference_h5(spec.name, False)
    wf = spec.weights["notop"]
    cached = keras_home() / "models" / wf.fname
    cached.parent.mkdir(parents=True)
    os.symlink(source, cached)
    monkeypatch.setitem(spec.weights, "notop", WeightFile(wf.fname, wf.path, md5sum(source)))
    asked = []
    monkeypatch.setattr(keras_efficientnet.file_utils, "get_file", lambda fname, *a, **k: asked.append(fname) or str(source))
    return source, asked


@pytest.mark.parity
def test_imagenet_weights_add_the_std_rescaling_as_keras(served_imagenet_notop):
    source, asked = served_imagenet_notop
    kwargs = dict(include_top=False, weights="imagenet", input_shape=(SIZE, SIZE, 3))
    model, variables = flaxzoo.EfficientNetB0(**kwargs, name="backbone")  # any name: the preset's file
    assert model.name == "backbone" and model.weights == "imagenet"
    assert count_params(variables) == get_spec("efficientnetb0").params_notop

    keras.backend.clear_session()
    with kr._placeholder_initializers():
        keras_model = keras.applications.EfficientNetB0(**kwargs)
    assert asked == ["efficientnetb0_notop.h5"]  # Keras: name + "_notop.h5"
    names = flaxzoo.layer_names(model)
    assert names == [layer.name for layer in keras_model.layers]
    assert names[:4] == ["input_layer", "rescaling", "normalization", "rescaling_1"]
    np.testing.assert_allclose(keras_model.get_layer("rescaling_1").scale, [1 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB])

    x = kr.reference_inputs("efficientnetb0", SIZE)
    outputs = jax.jit(lambda m, v, x: (m.apply(v, x), flaxzoo.extract(m, v, x, ["stem_activation"])["stem_activation"]),
                      static_argnums=0)  # fmt: skip
    with jax.default_matmul_precision("highest"):
        imagenet = outputs(model, variables, x)
    stem = keras_model.get_layer("stem_activation").output
    for ours, ref in zip(imagenet, kr.run(keras.Model(keras_model.input, [keras_model.output, stem]), x), strict=True):
        assert_features_close(ours, ref, variables)

    # The same file by path: no extra rescaling (as in Keras), other outputs; clone(weights="imagenet") adds it.
    local, local_variables = flaxzoo.EfficientNetB0(include_top=False, weights=str(source), input_shape=(SIZE, SIZE, 3))
    assert local.weights is None and "rescaling_1" not in flaxzoo.layer_names(local)
    with jax.default_matmul_precision("highest"):
        assert not np.allclose(outputs(local, local_variables, x)[1], imagenet[1], rtol=0.1)
        for ours, ref in zip(outputs(local.clone(weights="imagenet"), local_variables, x), imagenet, strict=True):
            np.testing.assert_array_equal(ours, ref)


def test_v2_takes_any_name_where_keras_raises_key_error():
    model, _ = flaxzoo.EfficientNetV2B0(include_top=False, weights=None, name="backbone", input_shape=(33, 33, 3))
    assert model.name == "backbone" and "normalization" in flaxzoo.layer_names(model)
    with pytest.raises(KeyError):
        keras.applications.EfficientNetV2B0(include_top=False, weights=None, name="backbone", input_shape=(33, 33, 3))
    assert flaxzoo.EfficientNetV2S(include_top=False, weights=None, name="s", input_shape=(33, 33, 3))[0].name == "s"


# ------------------------------------------------------------------------------------------------
# Stochastic depth ("drop connect")
# ------------------------------------------------------------------------------------------------


def dropout_layers(model, x) -> dict[str, tuple]:
    """Every Dropout of ``model`` on ``x``: name → (rate, noise_shape)."""
    found = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, Dropout) and context.method_name == "__call__":
            found[context.module.name] = (context.module.rate, context.module.noise_shape)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), x)
    return found


@pytest.mark.parametrize("name", ["efficientnetb2", "efficientnet_v2b1"])
def test_drop_rates_are_keras(name):
    """Rates grow as 0.2·b/n over the blocks (v1: n the rounded block count, v2: the unrounded one), with one
    draw per image; blocks without a residual or with rate 0 have no ``drop`` layer; ``top_dropout`` is the preset's."""
    spec = get_spec(name)
    model, _ = create_model(name, abstract=True, weights=None)
    ours = dropout_layers(model, jax.ShapeDtypeStruct((1, spec.default_size, spec.default_size, 3), jnp.float32))
    keras_model = kr.build(spec, placeholder_weights=True)
    theirs = {layer.name: (layer.rate, layer.noise_shape) for layer in keras_model.layers if isinstance(layer, keras.layers.Dropout)}
    assert ours.keys() == theirs.keys()
    for layer, (rate, noise_shape) in theirs.items():
        assert ours[layer][0] == rate, layer
        assert ours[layer][1] == (None if noise_shape is None else tuple(noise_shape)), layer
    assert "block1a_drop" not in ours and ours["top_dropout"][0] == spec.config.get("dropout_rate", 0.2)


def test_dropout_noise_shape_drops_whole_images():
    """Keras' ``Dropout(rate, noise_shape=(None, 1, 1, 1))``: each image's values all kept (scaled by
    1 / (1 - rate)) or all zero; identity when not training."""
    layer = Dropout(0.5, noise_shape=(None, 1, 1, 1))
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (64, 3, 5, 4)), jnp.float32)
    out = np.asarray(layer.apply({}, x, True, rngs={"dropout": jax.random.key(0)}))
    kept = np.all(out != 0, axis=(1, 2, 3))
    assert np.all(kept | np.all(out == 0, axis=(1, 2, 3)))
    np.testing.assert_array_equal(out[kept], np.asarray(x)[kept] / np.float32(0.5))
    assert 10 < kept.sum() < 54
    np.testing.assert_array_equal(layer.apply({}, x, False), x)


@pytest.fixture(scope="module")
def b0_reference():
    """B0 with the parity fixture's weights (no top); run at small sizes."""
    return flaxzoo.EfficientNetB0(include_top=False, weights=kr.reference_h5("efficientnetb0", False))


@pytest.mark.parity
def test_drop_connect_is_identity_at_inference_and_random_in_training(b0_reference):
    model, variables = b0_reference
    x = kr.reference_inputs("efficientnetb0", 33)
    inference = jax.jit(lambda v, x, key: model.apply(v, x, rngs={"dropout": key}))
    off = model.clone(drop_connect_rate=0.0)
    assert "block2b_drop" in flaxzoo.layer_names(model) and "block2b_drop" not in flaxzoo.layer_names(off)
    first = inference(variables, x, jax.random.key(0))
    np.testing.assert_array_equal(first, inference(variables, x, jax.random.key(1)))
    np.testing.assert_array_equal(first, jax.jit(off.apply)(variables, x))

    def training(model, variables, x, key=None):
        rngs = None if key is None else {"dropout": key}
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    step = jax.jit(functools.partial(training, model))
    a, b = step(variables, x, jax.random.key(0)), step(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(a, step(variables, x, jax.random.key(0)))
    assert not np.allclose(a, b)
    assert not np.allclose(a, jax.jit(functools.partial(training, off))(variables, x))  # off: no rng needed
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(functools.partial(training, model), variables, x)


# ------------------------------------------------------------------------------------------------
# The Normalization weights through folding, checkpoints and training
# ------------------------------------------------------------------------------------------------


def assert_constants_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(jax.device_get(a)), jax.tree_util.tree_leaves(jax.device_get(b)), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


@pytest.mark.parity
def test_normalization_weights_survive_folding_and_checkpoints(b0_reference, tmp_path):
    model, variables = b0_reference
    x = kr.reference_inputs("efficientnetb0", 33)
    folded_model, folded = flaxzoo.fold_batchnorm(model, variables)
    assert set(folded) == {"params", CONSTANTS}
    assert_constants_equal(folded[CONSTANTS], variables[CONSTANTS])
    assert_features_close(flax_apply(folded_model, folded, x), flax_apply(model, variables, x), variables)

    directory = flaxzoo.save_checkpoint(tmp_path / "b0", "EfficientNetB0", variables, variant="notop")
    _, restored = flaxzoo.EfficientNetB0(include_top=False, weights=str(directory))
    assert set(restored) == {"params", "batch_stats", CONSTANTS}
    assert_constants_equal(restored, variables)


def test_train_step_keeps_the_normalization_weights_and_uses_the_dropout_rng():
    """A jitted train step (flaxzoo.train): parameters and batch-norm statistics move, the constants do not; the
    state's rng drives the stochastic depth and the top dropout."""
    kwargs = dict(classes=3, classifier_activation=None, input_shape=(33, 33, 3))
    model, variables = testing.random_variables("efficientnetb0", include_top=True, **kwargs)
    rng = np.random.default_rng(0)
    variables[CONSTANTS] = {"normalization": {"mean": jnp.asarray(rng.normal(0.4, 0.1, 3), jnp.float32),
                                              "variance": jnp.asarray(rng.uniform(0.02, 0.08, 3), jnp.float32),
                                              "count": jnp.asarray(1000, jnp.int32)}}  # fmt: skip
    tx = optax.sgd(0.1)
    mesh = sharding.data_mesh()
    steps = train.make_steps(model, tx, mesh)
    batch = sharding.global_batch({"image": kr.images(4, 33, seed=3), "label": np.arange(4, dtype=np.int32) % 3}, mesh)
    new, metrics = steps.train(sharding.replicate(train.create_train_state(variables, tx, seed=0), mesh), batch)
    assert np.isfinite(float(metrics["loss"]))
    assert_constants_equal(new.collections[CONSTANTS], variables[CONSTANTS])
    assert not np.array_equal(new.params["stem_conv"]["kernel"], variables["params"]["stem_conv"]["kernel"])
    assert not np.array_equal(new.batch_stats["stem_bn"]["mean"], variables["batch_stats"]["stem_bn"]["mean"])
    other, _ = steps.train(sharding.replicate(train.create_train_state(variables, tx, seed=1), mesh), batch)
    assert not np.array_equal(other.params["stem_conv"]["kernel"], new.params["stem_conv"]["kernel"])
