"""MobileNet (v1) specifics, against Keras 3: every alpha and depth multiplier, the fixed (0, 1) padding of
the stride-2 depthwise convs at odd sizes, the published Keras-2 file, Keras' imagenet checks and warning,
and which of the 32 published files a given (alpha, size, include_top) loads.

The registry-wide tests (parity, counts, errors) cover MobileNet at its defaults (alpha 1, 224).
"""

import functools
import itertools
import shutil

import jax
import keras
import numpy as np
import pytest
from keras.src.utils import file_utils as keras_file_utils

import flaxzoo
from flaxzoo import layers
import flaxzoo.weights
from flaxzoo.graph import trace
from flaxzoo.models.mobilenet import WEIGHT_ROWS, weight_variant
from flaxzoo.registry import base_url
from flaxzoo.zoo import create_model, get_spec
from flaxzoo.weights import cache_dir, count_params
from flaxzoo.weights.checkpoint import is_checkpoint
from flaxzoo.weights.convert import _slots

import keras_reference as kr
import tolerances
from test_parity import assert_features_close, flax_apply

SPEC = get_spec("mobilenet")
ALPHAS = (0.25, 0.5, 0.75, 1.0)
REAL_FILE = kr.SHARED_DATA / "mobilenet_2_5_224_tf_no_top.h5"
ELEPHANT = kr.SHARED_DATA / "elephant.jpg"


# ------------------------------------------------------------------------------------------------
# (a) Parameter counts and weight shapes for every alpha and depth multiplier
# ------------------------------------------------------------------------------------------------


def keras_shapes_only(**kwargs) -> keras.Model:
    """Keras' MobileNet(weights=None, **kwargs) with uninitialised variables: Keras initialises every
    variable as it is built (one XLA compilation per new shape, seconds per model); inside a StatelessScope
    that does not initialise, variables keep their shapes only, all that count_params() needs."""
    keras.backend.clear_session()
    with keras.StatelessScope(initialize_variables=False):
        return keras.applications.MobileNet(weights=None, **kwargs)


@pytest.mark.parametrize("include_top", [True, False], ids=["top", "notop"])
@pytest.mark.parametrize("depth_multiplier", [1, 2])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_param_counts_and_weight_shapes_equal_keras(alpha, depth_multiplier, include_top):
    kwargs = dict(alpha=alpha, depth_multiplier=depth_multiplier, include_top=include_top)
    ref = keras_shapes_only(**kwargs)
    model, variables = create_model("mobilenet", abstract=True, weights=None, **kwargs)
    assert count_params(variables) == ref.count_params()
    assert model.name == ref.name  # mobilenet_0.25_224, mobilenet_0.25_None, ...
    # Weighted layers and the shapes of their arrays, in legacy .h5 order.
    graph = trace(model, (1, 224, 224, 3))
    ours = [
        (layer.name, [tuple(v.shape) for _, _, v in _slots(graph, layer)])
        for layer in graph.weighted_layers
    ]
    theirs = [
        (layer.name, [tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights])
        for layer in ref.layers
        if layer.weights
    ]
    assert ours == theirs


# ------------------------------------------------------------------------------------------------
# (b) Parity on random weights: alpha 0.25 / 0.75, depth multiplier 2, odd and small sizes
# ------------------------------------------------------------------------------------------------

PARITY_ALPHAS = (0.25, 0.75)
PARITY_SIZES = (97, 128, 225)  # 225: a fixed (0, 1) pad is not 'SAME' there (SAME pads (1, 1))


@functools.cache
def reference(alpha, include_top, size=None):
    """(randomised Keras MobileNet(alpha, depth_multiplier=2), its legacy .h5). No-top: dynamic input."""
    kwargs = dict(alpha=alpha, depth_multiplier=2, include_top=include_top)
    if size is not None:
        kwargs["input_shape"] = (size, size, 3)
    model = kr.randomize(kr.build(SPEC, placeholder_weights=True, **kwargs), seed=1)
    if include_top:
        kr.calibrate_classifier(model, kr.reference_inputs("mobilenet", size))
    path = kr.save_legacy_h5(model, kr._h5_dir() / f"mobilenet_{alpha}_dm2_{include_top}_{size}.h5")
    return model, path


@pytest.mark.parity
@pytest.mark.parametrize("alpha", PARITY_ALPHAS)
def test_features_match_keras_depth_multiplier_2(alpha):
    ref_model, path = reference(alpha, False)
    model, variables = flaxzoo.MobileNet(alpha=alpha, depth_multiplier=2, include_top=False, weights=path)
    for size in PARITY_SIZES:
        x = kr.reference_inputs("mobilenet", size)
        assert_features_close(flax_apply(model, variables, x), kr.run(ref_model, x), variables)


@pytest.mark.parity
@pytest.mark.parametrize("size", PARITY_SIZES)
@pytest.mark.parametrize("alpha", PARITY_ALPHAS)
def test_top_probabilities_match_keras_depth_multiplier_2(alpha, size):
    ref_model, path = reference(alpha, True, size)
    x = kr.reference_inputs("mobilenet", size)
    ref = kr.run(ref_model, x)
    model, variables = flaxzoo.MobileNet(
        input_shape=(size, size, 3), alpha=alpha, depth_multiplier=2, weights=path
    )
    assert model.name == ref_model.name == f"mobilenet_{alpha:0.2f}_{size}"
    probs = flax_apply(model, variables, x)
    assert probs.shape == ref.shape == (2, 1000)
    assert ref.max() < 0.9, "calibration failed: saturated softmax makes a weak check"
    tolerances.assert_probabilities_close(probs, ref, variables)
    np.testing.assert_array_equal(np.argmax(probs, -1), np.argmax(ref, -1))


def test_top_dropout_is_active_in_training_only():
    """``dropout`` is the rate of the layer before ``conv_preds``; it needs a 'dropout' rng when training.
    (Inference is deterministic: the registry-wide parity tests.)"""
    path = reference(0.25, True, 97)[1]  # weights=None would compile a random init: slower than reusing these
    model, variables = flaxzoo.MobileNet(
        input_shape=(64, 64, 3), alpha=0.25, depth_multiplier=2, dropout=0.5, weights=path
    )
    x = kr.reference_inputs("mobilenet", 64)

    def train_step(variables, x, key=None):
        rngs = None if key is None else {"dropout": key}
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    train = jax.jit(train_step)
    key0, key1 = jax.random.key(0), jax.random.key(1)
    np.testing.assert_array_equal(train(variables, x, key0), train(variables, x, key0))
    assert not np.allclose(train(variables, x, key0), train(variables, x, key1))
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(train_step, variables, x)


def test_odd_sizes_are_not_same_padding():
    """The point of the 225 case: there Keras' (0, 1) pad + 'valid' differs from 'SAME' ((1, 1))."""
    graph = trace(create_model("mobilenet", abstract=True, weights=None, include_top=False)[0],
                                (1, 225, 225, 3))  # fmt: skip
    shapes = {layer.name: layer.output_shape[1] for layer in graph.layers}
    assert shapes["conv1"] == 113 and shapes["conv_pad_2"] == 114 and shapes["conv_dw_2"] == 56  # SAME: 57


# ------------------------------------------------------------------------------------------------
# (c) The published Keras-2 file (alpha 0.25, 224, no top) on a real image
# ------------------------------------------------------------------------------------------------


def eager_apply(model, variables, x):
    """Op by op, as Keras runs ``model(x)``: then every op is Keras' own and the outputs are bit-identical.

    Under ``jax.jit`` XLA fuses the batch-norm multiply-add (one rounding instead of two: ~1 ulp from the
    first layer on), and the trained file amplifies that (depthwise kernels with per-channel L1 norms up to
    ~2,000, batch-norm gains up to ~48) to ~7e-5 at the output, over this test's 1e-5. Measured layer by
    layer: eager is 0.0 off Keras at every layer. Random weights (the parity tests) do not amplify it.
    """
    with jax.default_matmul_precision("highest"):
        return np.asarray(model.apply(variables, x))


def elephant(size):
    img = flaxzoo.image.load_img(ELEPHANT, target_size=(size, size))
    return flaxzoo.mobilenet.preprocess_input(flaxzoo.image.img_to_array(img)[None])


@pytest.mark.parity
@pytest.mark.parametrize("pooling", [None, "avg"])
def test_published_file_features_equal_keras(pooling):
    x = elephant(224)
    model, variables = flaxzoo.MobileNet(alpha=0.25, include_top=False, weights=str(REAL_FILE), pooling=pooling)
    keras.backend.clear_session()
    ref_model = keras.applications.MobileNet(
        alpha=0.25, include_top=False, weights=str(REAL_FILE), input_shape=(224, 224, 3), pooling=pooling
    )
    ref = kr.run_eager(ref_model, x)
    with layers.conv_implementation("keras"):  # Keras' own operations
        ours = eager_apply(model, variables, x)
    assert ours.shape == ref.shape == ((1, 7, 7, 256) if pooling is None else (1, 256))
    assert np.abs(ref).max() > 0.1
    tolerances.assert_features_close(ours, ref, variables)
    # flaxzoo's CPU default (shifted depthwise sums, 1x1 and stem convolutions as matrix products)
    tolerances.assert_features_close(eager_apply(model, variables, x), ref, variables)


# ------------------------------------------------------------------------------------------------
# (d) Keras' imagenet checks, the warning, and the file requested
# ------------------------------------------------------------------------------------------------



ERROR_CASES = {
    "imagenet_depth_multiplier": dict(depth_multiplier=2),
    "imagenet_depth_multiplier_before_alpha": dict(depth_multiplier=2, alpha=0.3),
    "imagenet_alpha": dict(alpha=0.3),
    "imagenet_alpha_notop": dict(alpha=1.5, include_top=False, input_shape=(128, 128, 3)),
    "imagenet_top_unpublished_size": dict(input_shape=(200, 200, 3)),
    "imagenet_top_non_square": dict(input_shape=(160, 128, 3)),
    "imagenet_top_published_size_one_channel": dict(input_shape=(128, 128, 1)),
    "imagenet_shape_before_depth_multiplier": dict(input_shape=(200, 200, 3), depth_multiplier=2),
    "imagenet_classes": dict(classes=10, depth_multiplier=2),
    "imagenet_notop_small": dict(include_top=False, input_shape=(31, 31, 3), depth_multiplier=2),
    "random_top_dynamic": dict(weights=None, input_shape=(None, None, 3)),
    "bad_weights": dict(weights="nowhere.h5", alpha=0.3),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_match_keras(case):
    kr.assert_raises_as_keras(flaxzoo.MobileNet, keras.applications.MobileNet, **ERROR_CASES[case])


# (alpha, input_shape, include_top): each alpha and each published size with and without the top, and
# the no-top shapes Keras maps to the 224 file with a warning.
FILE_CASES = [
    (1.0, None, True),
    (1.0, None, False),
    (0.75, (128, 128, 3), True),
    (0.5, (160, 160, 3), True),
    (0.25, (192, 192, 3), True),
    (1.0, (192, 192, 3), False),
    (0.75, (160, 160, 3), False),
    (0.5, (128, 128, 3), False),
    (0.25, (224, 224, 3), False),
    (0.5, (200, 200, 3), False),
    (0.75, (128, 160, 3), False),
    (1.0, (225, 225, 3), False),
    (0.25, (None, None, 3), False),
    (0.5, [160, 160, 3], False),
]


@pytest.mark.parametrize("alpha, input_shape, include_top", FILE_CASES)
def test_requested_file_and_warning_equal_keras(requested_files, alpha, input_shape, include_top):
    kwargs = dict(alpha=alpha, input_shape=input_shape, include_top=include_top, weights="imagenet")
    ours = kr.request(flaxzoo.MobileNet, **kwargs)
    keras.backend.clear_session()
    with keras.StatelessScope(initialize_variables=False):  # Keras builds the model first: skip its init
        theirs = kr.request(keras.applications.MobileNet, **kwargs)
    assert ours == theirs  # the same warning text, or none
    if input_shape is None:
        published = include_top  # no-top without input_shape: rows is None
    else:
        published = input_shape[0] == input_shape[1] and input_shape[0] in WEIGHT_ROWS
    assert len(ours) == (0 if published else 1)
    [(fname, url, md5)] = requested_files["flaxzoo"]
    [(keras_fname, keras_url)] = requested_files["keras"]
    assert (fname, md5) == (keras_fname, None)
    # The same file on the same path (conftest points flaxzoo's download host at nothing).
    keras_host = "https://storage.googleapis.com/"
    assert keras_url.startswith(keras_host) and url == f"{base_url()}/{keras_url.removeprefix(keras_host)}"


def test_every_published_file_has_a_variant():
    """The 32 files Keras may request, each under one variant; α=1.0 at 224 is "top" / "notop"."""
    texts = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}
    expected = {}
    for alpha, rows, include_top in itertools.product(ALPHAS, WEIGHT_ROWS, (True, False)):
        fname = f"mobilenet_{texts[alpha]}_{rows}_tf{'' if include_top else '_no_top'}.h5"
        expected[weight_variant(alpha, rows, include_top)] = fname
    assert {v: wf.fname for v, wf in SPEC.weights.items()} == expected
    assert (SPEC.weights["top"].fname, SPEC.weights["notop"].fname) == (
        "mobilenet_1_0_224_tf.h5",
        "mobilenet_1_0_224_tf_no_top.h5",
    )
    assert all(wf.md5 is None for wf in SPEC.weights.values())  # Keras publishes no hash


@pytest.mark.parity
def test_imagenet_weights_from_the_keras_cache_with_the_warning(monkeypatch):
    """End to end with the real file: an unpublished no-top size warns and loads the 224 file, in both."""
    cached = flaxzoo.weights.keras_home() / "models" / REAL_FILE.name
    cached.parent.mkdir(parents=True)
    shutil.copy(REAL_FILE, cached)
    kwargs = dict(alpha=0.25, include_top=False, weights="imagenet", input_shape=(200, 200, 3))
    with pytest.warns(UserWarning, match=kr.SIZE_WARNING) as ours_record:
        model, variables = flaxzoo.MobileNet(**kwargs)
    assert model.name == "mobilenet_0.25_224"
    assert is_checkpoint(cache_dir(SPEC, "2_5_224_notop"))

    asked = []

    def keras_get_file(fname, origin, **kw):
        asked.append(fname)
        return str(cached)

    monkeypatch.setattr(keras_file_utils, "get_file", keras_get_file)
    keras.backend.clear_session()
    with pytest.warns(UserWarning, match=kr.SIZE_WARNING) as keras_record:
        ref_model = keras.applications.MobileNet(**kwargs)
    assert asked == [REAL_FILE.name] and ref_model.name == model.name
    assert kr.size_warnings(ours_record) == kr.size_warnings(keras_record)

    x = elephant(200)
    ref = kr.run_eager(ref_model, x)
    with layers.conv_implementation("keras"):  # Keras' operations
        tolerances.assert_features_close(eager_apply(model, variables, x), ref, variables)
    # the CPU forms (1x1 convolutions as matrix products, depthwise as shifted sums)
    tolerances.assert_features_close(eager_apply(model, variables, x), ref, variables)
