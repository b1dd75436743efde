"""The registry's numbers are measured: parameter counts, depth, FLOPs and weighted-layer order
against the traced flaxzoo graph and against Keras itself."""

import functools

import numpy as np
import pytest

import flaxzoo
from flaxzoo.zoo import create_model, get_spec, list_models, registered_graph
from flaxzoo.weights import count_params

import keras_reference as kr

MODELS = list_models()


@functools.cache
def flax_graph(name, include_top):
    return registered_graph(name, include_top=include_top)


@pytest.mark.parametrize("name", MODELS)
def test_spec_is_complete_and_reachable(name):
    spec = get_spec(name)
    assert spec.preprocess_mode in ("caffe", "tf", "torch", None)  # None: in the model
    assert spec.min_size <= spec.default_size
    assert {"top", "notop"} <= set(spec.weights)
    for wf in spec.weights.values():
        # the cache name is Keras' (NASNet caches NASNet-mobile.h5 as nasnet_mobile.h5)
        assert wf.url.endswith(".h5") and wf.fname.endswith(".h5") and "/" not in wf.fname
        assert wf.md5 is None or len(wf.md5) == 32
    assert get_spec(spec.keras_name) is spec
    assert getattr(flaxzoo, spec.keras_name) is spec.constructor
    assert getattr(__import__(spec.module, fromlist=["_"]), spec.keras_name) is spec.constructor


VARIANTS = pytest.mark.parametrize("include_top", [True, False], ids=["top", "notop"])


def graphs(name, include_top):
    """flaxzoo's traced graph and the Keras model (its structure), at the default size (dynamic for no-top Keras)."""
    return flax_graph(name, include_top), kr.structure_model(name, include_top)


@VARIANTS
@pytest.mark.parametrize("name", MODELS)
def test_param_count_equals_keras_and_registry(name, include_top):
    spec = get_spec(name)
    graph, keras_model = graphs(name, include_top)
    expected = spec.params if include_top else spec.params_notop
    assert graph.count_params() == keras_model.count_params() == expected


@VARIANTS
@pytest.mark.parametrize("name", MODELS)
def test_weighted_layers_in_keras_order(name, include_top):
    """The order legacy .h5 weights are assigned in: Keras' model.layers, filtered to weighted layers."""
    graph, keras_model = graphs(name, include_top)
    keras_layers = [(layer.name, type(layer).__name__) for layer in keras_model.layers if layer.weights]
    assert [(layer.name, layer.keras_class) for layer in graph.weighted_layers] == keras_layers
    if include_top:
        assert len(graph.weighted_layers) == get_spec(name).depth


@pytest.mark.parametrize("name", MODELS)
def test_flops_are_twice_the_multiply_accumulates(name):
    assert 2 * sum(layer.macs for layer in flax_graph(name, True).layers) == get_spec(name).flops


def test_random_init_is_seeded_and_complete():
    """weights=None initialises every variable, reproducibly from ``seed`` (shared code: one model suffices)."""
    name = min(MODELS, key=lambda n: get_spec(n).params_notop)
    a = create_model(name, weights=None, include_top=False, seed=1)[1]
    b = create_model(name, weights=None, include_top=False, seed=1)[1]
    c = create_model(name, weights=None, include_top=False, seed=2)[1]
    assert count_params(a) == get_spec(name).params_notop
    leaves = lambda t: [np.asarray(x) for x in __import__("jax").tree_util.tree_leaves(t)]  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


def test_list_models_is_sorted_and_unique():
    names = flaxzoo.list_models()
    assert names == sorted(set(names)) and {"resnet50", "vgg16", "vgg19"} <= set(names)
