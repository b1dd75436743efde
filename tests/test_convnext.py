"""ConvNeXt specifics, against Keras 3: the in-model normalisation switched off, the unnamed last layer norm
of the no-top model, nested ``Sequential`` layers (one layer each, weights their sublayers'), layer names made
from the model's name, any name accepted with "imagenet" (Keras refuses names without the preset's), and the
published files' sha256.

The registry-wide tests (parity at every size for ConvNeXtTiny, the odd size for the others; counts, layer
order, errors) cover the rest."""

import hashlib
import os

import jax
import keras
import numpy as np
import pytest

import flaxzoo
from flaxzoo.errors import DownloadError
from flaxzoo.registry import WeightFile
from flaxzoo.weights import keras_home
from flaxzoo.zoo import get_spec, registered_graph

import keras_reference as kr
import tolerances
from test_parity import flax_apply

SPEC = get_spec("convnext_tiny")
SIZE = 65


@pytest.mark.parity
@pytest.mark.parametrize("name", ["convnext_tiny"])  # in the convnext_tiny test group
def test_without_the_in_model_normalisation_equal_keras(name):
    keras.backend.clear_session()
    ref_model = kr.randomize(kr.build(SPEC, include_top=False, include_preprocessing=False, pooling="avg"), seed=3)
    path = kr.save_legacy_h5(ref_model, kr._h5_dir() / "convnext_tiny_no_preprocessing.h5")
    x = kr.images(2, SIZE) / 127.5 - 1  # what a user would feed it, normalised outside
    model, variables = flaxzoo.ConvNeXtTiny(include_top=False, include_preprocessing=False, pooling="avg", weights=str(path))
    assert "convnext_tiny_prestem_normalization" not in flaxzoo.layer_names(model)
    tolerances.assert_features_close(flax_apply(model, variables, x), kr.run(ref_model, x), variables)


@pytest.mark.parametrize("name", ["convnext_tiny"])
def test_nested_sequential_layers_are_one_layer_each_with_their_sublayers_weights(name):
    graph = registered_graph("convnext_tiny", include_top=False)
    stem, down = graph.by_name["convnext_tiny_stem"], graph.by_name["convnext_tiny_downsampling_block_0"]
    assert (stem.keras_class, down.keras_class) == ("Sequential", "Sequential")
    assert [path[-1] for path, _ in stem.sublayers] == ["convnext_tiny_stem_conv", "convnext_tiny_stem_layernorm"]
    assert [path[-1] for path, _ in down.sublayers] == [
        "convnext_tiny_downsampling_layernorm_0",
        "convnext_tiny_downsampling_conv_0",
    ]
    assert "convnext_tiny_stem_conv" not in graph.names  # a sublayer, not a layer of the model
    assert graph.names[-1] == "layer_normalization"  # Keras' unnamed last layer norm of the no-top model
    # the residual additions are operations: ordered over and named as inbound, never listed
    assert "add" not in graph.names and graph.by_name["convnext_tiny_stage_0_block_1_depthwise_conv"].inbound == ("add",)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["convnext_tiny"])
def test_any_name_loads_imagenet_weights_by_their_sha256(name, monkeypatch):
    """Keras takes the file name from ``name`` and refuses names without "convnext_tiny"; flaxzoo takes the
    file from the registry (verified by its sha256) and renames the layers after the model, as Keras does."""
    source = kr.reference_h5("convnext_tiny", False)
    wf = SPEC.weights["notop"]
    cached = keras_home() / "models" / wf.fname
    cached.parent.mkdir(parents=True)
    os.symlink(source, cached)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    monkeypatch.setitem(SPEC.weights, "notop", WeightFile(wf.fname, wf.path, None, sha256=sha256))

    with pytest.raises(ValueError, match="does not match weights variant"):
        keras.applications.ConvNeXtTiny(include_top=False, weights="imagenet", name="backbone")
    model, variables = flaxzoo.ConvNeXtTiny(include_top=False, weights="imagenet", name="backbone")
    assert "backbone_stage_0_block_0_depthwise_conv" in flaxzoo.layer_names(model)
    _, reference = flaxzoo.ConvNeXtTiny(include_top=False, weights=str(source))
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, b)

    monkeypatch.setitem(SPEC.weights, "notop", WeightFile(wf.fname, wf.path, None, sha256="0" * 64))
    flaxzoo_cache = flaxzoo.weights.cache_dir(SPEC, "notop")
    assert flaxzoo.weights.checkpoint.is_checkpoint(flaxzoo_cache)  # converted from the file with the old sha256
    # another published file: the converted cache and Keras' copy are stale, and the new file is fetched
    with pytest.raises(DownloadError, match="convnext_tiny_notop.h5"):
        flaxzoo.ConvNeXtTiny(include_top=False, weights="imagenet")


@pytest.mark.parametrize("name", ["convnext_tiny"])  # in the convnext_tiny test group
def test_stochastic_depth_for_fine_tuning_is_keras_and_driven_by_the_dropout_rng(name):
    """``model.clone(drop_path_rate=r)``: Keras' ``ConvNeXt(drop_path_rate=r)`` layers (the first block keeps its
    identity: rate 0), the identity at inference, whole images dropped in training, reproducible per rng key."""
    from keras.src.applications import convnext as keras_convnext

    model, variables = flaxzoo.ConvNeXtTiny(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    dropping = model.clone(drop_path_rate=0.5)
    keras.backend.clear_session()
    with keras.StatelessScope(initialize_variables=False):
        ref = keras_convnext.ConvNeXt(
            depths=[3, 3, 9, 3], projection_dims=[96, 192, 384, 768], drop_path_rate=0.5, include_top=False,
            weights=None, input_shape=(SIZE, SIZE, 3), name="convnext_tiny",
        )  # fmt: skip
    ours = flaxzoo.model_graph(dropping).layers
    assert [(layer.name, layer.keras_class) for layer in ours] == [(layer.name, type(layer).__name__) for layer in ref.layers]
    rates = {layer.name: layer.drop_path_rate for layer in ref.layers if type(layer).__name__ == "StochasticDepth"}
    assert len(rates) == sum((3, 3, 9, 3)) - 1 and max(rates.values()) == 0.5

    x = kr.reference_inputs(name, SIZE)
    np.testing.assert_array_equal(flax_apply(dropping, variables, x), flax_apply(model, variables, x))

    def training(key):
        return dropping.apply(variables, x, train=True, rngs={"dropout": key})

    a, b = jax.jit(training)(jax.random.key(0)), jax.jit(training)(jax.random.key(1))
    np.testing.assert_array_equal(a, jax.jit(training)(jax.random.key(0)))
    assert not np.allclose(a, b)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: dropping.apply(v, x, train=True), variables)
