"""What only NASNet has: a Keras graph that depends on the static input size.

Keras picks each adjust block (factorized reduction or projection) and each ``correct_pad`` from static
shapes, so the structure, the layer names and the padding follow the input size; with a dynamic input
Keras 3 builds another model, which cannot load the published no-top NASNetLarge file. flaxzoo always
decides from the actual size. The registry-wide tests (test_parity, test_registry, test_errors) cover
the rest; the Keras models used here are mostly theirs (``keras_reference``'s session caches).
"""

import os

import jax
import keras
import numpy as np
import pytest
from keras.src.applications import nasnet as keras_nasnet

from flaxzoo.zoo import get_spec, registered_graph
from flaxzoo.models.nasnet import NASNet
from flaxzoo.registry import WeightFile
from flaxzoo.weights import count_params, keras_home, md5sum

import keras_reference as kr
from keras_reference import error_of
from test_parity import assert_features_close, flax_apply


@pytest.mark.parametrize("name", ["nasnet_large"])  # in that model's test group, which has this Keras model
def test_every_layer_name_and_the_order_equal_keras_at_a_non_default_size(name):
    """At 65 px NASNetLarge's adjust blocks differ from those at 331 (test_surgery checks the default sizes):
    all layers, parameter-free ones included (auto-named relus, adds, paddings, croppings, concats)."""
    names = registered_graph(name, include_top=False, size=65).names
    assert names == [layer.name for layer in kr.reference_model(name, False, 65, None).layers]


# Stage sizes (stem → stem_1 → stem_2 → reduce_4 → reduce_8): 100 → 49, 25, 13, 7, 4 (all odd) and
# 109 → 54, 27, 14, 7, 4 (even, odd, even, odd). With 224 (111, 56, 28, 14, 7) and 65 (32, 16, 8, 4, 2) in
# test_parity, every reduction cell's correct_pad and every factorized reduction's shifted crop meets
# both parities.
@pytest.mark.parity
def test_notop_features_match_keras_at_even_and_odd_sizes():
    model, variables = get_spec("nasnet_mobile").constructor(
        include_top=False, weights=kr.reference_h5("nasnet_mobile", False)
    )
    for size in (100, 109):
        x = kr.reference_inputs("nasnet_mobile", size)
        ref = kr.run(kr.reference_model("nasnet_mobile", False, size), x)
        assert_features_close(flax_apply(model, variables, x), ref, variables)


@pytest.mark.parity
def test_nasnet_large_notop_imagenet_without_input_shape(monkeypatch):
    """The Keras 3 bug flaxzoo fixes: ``NASNetLarge(include_top=False, weights="imagenet")``.

    A random-weight no-top file written by Keras (built at 331, as the published one) is served as the
    "imagenet" file from Keras' cache; flaxzoo loads it without an input_shape into the 331 px model, the
    same variables, bit for bit, as from the file with ``input_shape=(331, 331, 3)`` (whose outputs equal
    Keras': test_parity, at every size in the full tier). Keras without input_shape builds its 526-layer
    dynamic-input model and fails on the 532-layer file.
    """
    spec = get_spec("nasnet_large")
    source = kr.reference_h5("nasnet_large", False)
    cached = keras_home() / "models" / spec.weights["notop"].fname
    cached.parent.mkdir(parents=True)
    os.symlink(source, cached)
    wf = spec.weights["notop"]
    monkeypatch.setitem(spec.weights, "notop", WeightFile(wf.fname, wf.path, md5sum(source)))

    model, variables = spec.constructor(include_top=False, weights="imagenet")
    assert model.traced_shape == (1, 331, 331, 3)
    assert count_params(variables) == spec.params_notop
    _, sized = spec.constructor(include_top=False, weights=str(source), input_shape=(331, 331, 3))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, variables, sized))

    keras.backend.clear_session()
    with pytest.raises(ValueError, match="Model expected 526 layers, found 532 saved layers"):
        keras.applications.NASNetLarge(include_top=False, weights=str(source))


ERROR_CASES = {
    # Only a *tuple* with None is refused, and only with imagenet weights; the classes check comes first.
    "static_shape_notop": ("NASNetLarge", dict(include_top=False, weights="imagenet", input_shape=(None, None, 3))),
    "static_shape_top": ("NASNetMobile", dict(weights="imagenet", input_shape=(224, None, 3))),
    "classes_before_static_shape": ("NASNetMobile", dict(weights="imagenet", classes=10, input_shape=(None, None, 3))),
    # Each NASNet's top file is for its own size only.
    "mobile_top_at_large_size": ("NASNetMobile", dict(weights="imagenet", input_shape=(331, 331, 3))),
    "large_top_at_mobile_size": ("NASNetLarge", dict(weights="imagenet", input_shape=(224, 224, 3))),
    # The generic constructor (not exported by Keras, reachable in keras.src).
    "penultimate_filters": ("NASNet", dict(penultimate_filters=1000, weights=None, include_top=False)),
    "imagenet_needs_224_or_331": (
        "NASNet",
        # NASNetMobile's widths, one cell per stack: Keras builds it (then raises) from warm caches.
        dict(
            input_shape=(32, 32, 3),
            penultimate_filters=1056,
            num_blocks=1,
            stem_block_filters=32,
            skip_reduction=False,
            include_top=False,
            default_size=100,
        ),
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_nasnet_errors_match_keras(case):
    """Raised before Keras would download anything (the generic one after building, before loading)."""
    constructor, kwargs = ERROR_CASES[case]
    ours = NASNet if constructor == "NASNet" else get_spec(constructor).constructor
    keras.backend.clear_session()
    assert error_of(ours, **kwargs) == error_of(getattr(keras_nasnet, constructor), **kwargs)
