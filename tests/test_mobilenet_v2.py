"""MobileNetV2 specifics, against Keras 3: every alpha (widths rounded by ``_make_divisible``, the last conv
growing with alpha > 1), parity at alpha 0.35 and 1.4, Keras' imagenet checks, warning and default names, which
of the 44 published files a given (alpha, size, include_top) loads, and the 16 files Keras asks for that were never
published (alpha 1.3 / 1.4 below 224): a ValueError naming the file, before any download.

The registry-wide tests (parity, counts, layer order, errors) cover MobileNetV2 at its defaults (alpha 1, 224).
"""

import functools
import itertools
import warnings

import jax
import keras
import numpy as np
import pytest
from keras.src.utils import file_utils as keras_file_utils

import flaxzoo
import flaxzoo.weights
from flaxzoo.graph import trace
from flaxzoo.models.mobilenet_v2 import ALPHAS, PUBLISHED_ROWS, WEIGHT_ROWS, _make_divisible, weight_variant
from flaxzoo.registry import base_url
from flaxzoo.weights import count_params
from flaxzoo.weights.convert import _slots
from flaxzoo.zoo import create_model, get_spec

import keras_reference as kr
from keras_reference import error_of
import tolerances
from test_parity import flax_apply

SPEC = get_spec("mobilenet_v2")


def keras_shapes_only(**kwargs) -> keras.Model:
    """Keras' MobileNetV2(**kwargs) with uninitialised variables (shapes only: all count_params() and the names
    need; Keras would otherwise compile an initializer per weight shape)."""
    keras.backend.clear_session()
    with keras.StatelessScope(initialize_variables=False):
        return keras.applications.MobileNetV2(**kwargs)


# ------------------------------------------------------------------------------------------------
# (a) Widths: parameter counts and weight shapes for every alpha
# ------------------------------------------------------------------------------------------------


def test_make_divisible_is_keras():
    from keras.src.applications.mobilenet_v2 import _make_divisible as keras_make_divisible

    for v in [*(f * a for f in (16, 24, 32, 64, 96, 160, 320, 1280) for a in ALPHAS), 3, 4, 11.2, 12.5, 100]:
        assert _make_divisible(v, 8) == keras_make_divisible(v, 8), v


@pytest.mark.parametrize("include_top", [True, False], ids=["top", "notop"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_param_counts_and_weight_shapes_equal_keras(alpha, include_top):
    kwargs = dict(alpha=alpha, include_top=include_top, weights=None)
    ref = keras_shapes_only(**kwargs)
    model, variables = create_model("mobilenet_v2", abstract=True, **kwargs)
    assert count_params(variables) == ref.count_params()
    assert model.name == ref.name  # mobilenetv2_0.35_224, mobilenetv2_0.35_None, ...
    graph = trace(model, (1, 224, 224, 3))
    ours = [(layer.name, [tuple(v.shape) for _, _, v in _slots(graph, layer)]) for layer in graph.weighted_layers]
    theirs = [
        (layer.name, [tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights])
        for layer in ref.layers
        if layer.weights
    ]
    assert ours == theirs
    last = dict(ours)["Conv_1"][0][-1]
    assert last == {1.3: 1664, 1.4: 1792}.get(alpha, 1280)  # grows with alpha > 1 only


# ------------------------------------------------------------------------------------------------
# (b) Parity on random weights at alpha 0.35 and 1.4 (1.4: the wider last conv), small sizes
# ------------------------------------------------------------------------------------------------

PARITY_ALPHAS = (0.35, 1.4)


@functools.cache
def reference(alpha, include_top, size):
    """(randomised Keras MobileNetV2(alpha) built for ``size``, its legacy .h5). A static size, as the registry's
    ``shape_dependent`` says: Keras' correct_pad on a (None, None, 3) input is not 'SAME' on odd sizes."""
    model = kr.build(SPEC, placeholder_weights=True, alpha=alpha, include_top=include_top, input_shape=(size, size, 3))
    model = kr.randomize(model, seed=2)
    if include_top:
        kr.calibrate_classifier(model, kr.reference_inputs("mobilenet_v2", size))
    path = kr.save_legacy_h5(model, kr._h5_dir() / f"mobilenet_v2_{alpha}_{include_top}_{size}.h5")
    return model, path


@pytest.mark.parity
@pytest.mark.parametrize("alpha, size", [(0.35, 96), (1.4, 65)])
def test_top_probabilities_match_keras(alpha, size):
    ref_model, path = reference(alpha, True, size)
    x = kr.reference_inputs("mobilenet_v2", size)
    ref = kr.predict(ref_model, x)
    model, variables = flaxzoo.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=str(path))
    assert model.name == ref_model.name == f"mobilenetv2_{alpha:0.2f}_{size}"
    probs = flax_apply(model, variables, x)
    assert probs.shape == ref.shape == (2, 1000)
    assert ref.max() < 0.9, "calibration failed: saturated softmax makes a weak check"
    tolerances.assert_probabilities_close(probs, ref, variables)
    np.testing.assert_array_equal(np.argmax(probs, -1), np.argmax(ref, -1))


@pytest.mark.parity
@pytest.mark.parametrize("alpha, size", [(0.35, 65), (1.4, 96)])
def test_features_match_keras(alpha, size):
    ref_model, path = reference(alpha, False, size)
    x = kr.reference_inputs("mobilenet_v2", size)
    ref = kr.run(ref_model, x)
    model, variables = flaxzoo.MobileNetV2(
        input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=str(path)
    )
    ours = flax_apply(model, variables, x)
    assert ours.shape == ref.shape == (2, 3, 3, {0.35: 1280, 1.4: 1792}[alpha])
    tolerances.assert_features_close(ours, ref, variables)


def test_odd_sizes_pad_as_same_like_keras_static_graph():
    """correct_pad on the actual size: (1, 1) before block_1's depthwise at 65 -> 33 (Keras' dynamic graph: (0, 1))."""
    model, _ = create_model("mobilenet_v2", abstract=True, weights=None, include_top=False)
    shapes = {layer.name: layer.output_shape[1] for layer in trace(model, (1, 65, 65, 3)).layers}
    assert shapes["Conv1"] == 33 and shapes["block_1_pad"] == 35 and shapes["block_1_depthwise"] == 17
    shapes = {layer.name: layer.output_shape[1] for layer in trace(model, (1, 64, 64, 3)).layers}
    assert shapes["Conv1"] == 32 and shapes["block_1_pad"] == 33 and shapes["block_1_depthwise"] == 16


# ------------------------------------------------------------------------------------------------
# (c) Keras' imagenet checks and the default names
# ------------------------------------------------------------------------------------------------



ERROR_CASES = {
    "imagenet_alpha": dict(alpha=0.3),
    "imagenet_alpha_notop": dict(alpha=1.5, include_top=False, input_shape=(128, 128, 3)),
    "imagenet_alpha_int": dict(alpha=2),
    "imagenet_top_unpublished_size": dict(input_shape=(200, 200, 3)),
    "imagenet_top_published_size_non_default": dict(input_shape=(96, 128, 3)),
    "imagenet_top_published_size_one_channel": dict(input_shape=(96, 96, 1)),
    "imagenet_shape_before_alpha": dict(input_shape=(200, 200, 3), alpha=0.3),
    "imagenet_classes": dict(classes=10, alpha=0.3),
    "imagenet_notop_small": dict(include_top=False, input_shape=(31, 31, 3), alpha=0.3),
    "random_top_dynamic": dict(weights=None, input_shape=(None, None, 3)),
    "bad_weights": dict(weights="nowhere.h5", alpha=0.3),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_match_keras(case):
    kr.assert_raises_as_keras(flaxzoo.MobileNetV2, keras.applications.MobileNetV2, **ERROR_CASES[case])


def test_input_tensor_width_must_equal_input_shape_like_keras():
    kwargs = dict(input_shape=(96, 128, 3), include_top=False, weights=None)
    ours = error_of(flaxzoo.MobileNetV2, input_tensor=jax.ShapeDtypeStruct((None, 96, 96, 3), np.float32), **kwargs)
    keras.backend.clear_session()
    assert ours == error_of(keras.applications.MobileNetV2, input_tensor=keras.Input((96, 96, 3)), **kwargs)


NAME_CASES = [
    dict(weights=None),
    dict(weights=None, include_top=False),  # rows None: mobilenetv2_1.00_None
    dict(weights=None, alpha=0.35, input_shape=(100, 100, 3), include_top=False),
    dict(weights=None, alpha=1.3, input_shape=(96, 96, 3)),
    dict(weights=None, alpha=0.7, input_shape=(120, 96, 3), include_top=False),
    dict(weights="imagenet", alpha=0.5, input_shape=(96, 96, 3), include_top=False),
    dict(weights="imagenet", alpha=0.75, input_shape=(100, 100, 3), include_top=False),  # the 224 file's name
    dict(weights="imagenet", alpha=1, include_top=False),
]


@pytest.fixture
def loading_nothing(monkeypatch):
    """Both constructors build their model and skip the weights: Keras' file resolver returns the name it is
    given and its load_weights does nothing; flaxzoo's load_variables returns no variables."""
    monkeypatch.setattr(keras_file_utils, "get_file", lambda fname, origin, **kwargs: fname)
    monkeypatch.setattr(keras.Model, "load_weights", lambda self, path, **kwargs: None)
    monkeypatch.setattr(flaxzoo.weights, "load_variables", lambda spec, graph, weights, variant: {})


@pytest.mark.parametrize("kwargs", NAME_CASES, ids=str)
def test_default_name_equals_keras(loading_nothing, kwargs):
    """Keras names the model after the rows of the file it loads (224 where it falls back), or of the input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = create_model("mobilenet_v2", abstract=kwargs["weights"] is None, **kwargs)[0].name
        theirs = keras_shapes_only(**kwargs).name
    assert ours == theirs


# ------------------------------------------------------------------------------------------------
# (d) The file requested, the warning, and the files that do not exist
# ------------------------------------------------------------------------------------------------


def keras_request(**kwargs):
    keras.backend.clear_session()
    with keras.StatelessScope(initialize_variables=False):  # Keras builds the model first: skip its init
        return kr.request(keras.applications.MobileNetV2, **kwargs)


# (alpha, input_shape, include_top): every alpha, each size Keras asks for, with and without the top, and
# the shapes Keras maps to the 224 file with a warning.
FILE_CASES = [
    (1.0, None, True),
    (1.0, None, False),
    (0.35, (96, 96, 3), True),
    (0.5, (128, 128, 3), False),
    (0.75, (160, 160, 3), True),
    (1.0, (192, 192, 3), False),
    (1, (96, 96, 3), True),  # an int alpha: float(alpha) in the file name
    (1.3, (224, 224, 3), True),
    (1.4, (224, 224, 3), False),
    (1.4, None, False),
    (0.35, (100, 100, 3), False),
    (0.5, (96, 128, 3), False),
    (0.75, [96, 96, 3], False),
    (1.3, (200, 200, 3), False),
    (0.35, (None, None, 3), False),
]


def published(input_shape, include_top) -> bool:
    if input_shape is None:
        return include_top  # no-top without input_shape: rows is None
    return input_shape[0] == input_shape[1] and input_shape[0] in WEIGHT_ROWS


@pytest.mark.parametrize("alpha, input_shape, include_top", FILE_CASES)
def test_requested_file_and_warning_equal_keras(requested_files, alpha, input_shape, include_top):
    kwargs = dict(alpha=alpha, input_shape=input_shape, include_top=include_top, weights="imagenet")
    ours = kr.request(flaxzoo.MobileNetV2, **kwargs)
    theirs = keras_request(**kwargs)
    assert ours == theirs  # the same warning text, or none
    assert len(ours) == (0 if published(input_shape, include_top) else 1)
    [(fname, url, md5)] = requested_files["flaxzoo"]
    [(keras_fname, keras_url)] = requested_files["keras"]
    assert (fname, md5) == (keras_fname, None)
    # The same file on the same path (conftest points flaxzoo's download host at nothing).
    keras_host = "https://storage.googleapis.com/"
    assert keras_url.startswith(keras_host) and url == f"{base_url()}/{keras_url.removeprefix(keras_host)}"


def test_input_tensor_size_chooses_the_file_like_keras(requested_files):
    """Without input_shape, Keras takes the default size from input_tensor: the 96 file for the top model; the
    no-top model's input shape is then free, so it warns and loads the 224 file, whatever the tensor's size."""
    for include_top in (True, False):
        kwargs = dict(include_top=include_top, alpha=0.5, weights="imagenet")
        ours = kr.request(flaxzoo.MobileNetV2, input_tensor=jax.ShapeDtypeStruct((None, 96, 96, 3), np.float32), **kwargs)
        theirs = keras_request(input_tensor=keras.Input((96, 96, 3)), **kwargs)
        assert ours == theirs and len(ours) == (0 if include_top else 1)
    assert [f for f, *_ in requested_files["flaxzoo"]] == [f for f, _ in requested_files["keras"]] == [
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5",
    ]


# Keras asks for these, and gets a 404: alpha 1.3 / 1.4 exist at 224 only.
MISSING_CASES = [
    (1.4, (96, 96, 3), True),
    (1.3, (160, 160, 3), False),
    (1.4, (192, 192, 3), False),
    (1.3, (128, 128, 3), True),
]


@pytest.mark.parametrize("alpha, input_shape, include_top", MISSING_CASES)
def test_unpublished_files_raise_naming_the_file_before_any_download(requested_files, alpha, input_shape, include_top):
    kwargs = dict(alpha=alpha, input_shape=input_shape, include_top=include_top, weights="imagenet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a published size: no warning on either side
        with pytest.raises(ValueError) as info:
            flaxzoo.MobileNetV2(**kwargs)
    assert requested_files["flaxzoo"] == []  # nothing was looked up, downloaded or converted
    assert not (flaxzoo.weights.flaxzoo_home() / "checkpoints").exists()
    assert keras_request(**kwargs) == []
    [(keras_fname, _)] = requested_files["keras"]
    message = str(info.value)
    assert keras_fname in message and f"alpha={alpha}" in message
    assert "published size is 224" in message and "96, 128, 160, 192, 224" in message


def test_every_published_file_has_a_variant():
    """The 44 files (22 configurations x top / no top), each under one variant; α=1.0 at 224 is "top" / "notop"."""
    expected = {}
    for alpha, include_top in itertools.product(ALPHAS, (True, False)):
        for rows in PUBLISHED_ROWS[alpha]:
            suffix = "" if include_top else "_no_top"
            expected[weight_variant(alpha, rows, include_top)] = (
                f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{suffix}.h5"
            )
    assert len(expected) == 44 == len(SPEC.weights)
    assert {v: wf.fname for v, wf in SPEC.weights.items()} == expected
    assert (SPEC.weights["top"].fname, SPEC.weights["notop"].fname) == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    )
    assert {f"{alpha}" for alpha in ALPHAS} == {"0.35", "0.5", "0.75", "1.0", "1.3", "1.4"}
    assert all(wf.md5 is None for wf in SPEC.weights.values())  # Keras publishes no hash
    assert all(wf.path.startswith("tensorflow/keras-applications/mobilenet_v2/") for wf in SPEC.weights.values())


@pytest.mark.parity
def test_imagenet_variant_from_the_keras_cache_is_converted_once(monkeypatch):
    """weights="imagenet" at alpha 0.35, 96, no top: Keras' cached file (here a random-weight one under the
    published name) is converted into the variant's checkpoint, which the next call restores without the file."""
    _, path = reference(0.35, False, 65)  # no-top weights do not depend on the size
    fname = SPEC.weight_file("0.35_96_notop").fname
    cached = flaxzoo.weights.keras_home() / "models" / fname
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    kwargs = dict(alpha=0.35, include_top=False, input_shape=(96, 96, 3), weights="imagenet")
    model, variables = flaxzoo.MobileNetV2(**kwargs)
    assert model.name == "mobilenetv2_0.35_96"
    assert flaxzoo.weights.cache_dir(SPEC, "0.35_96_notop").is_dir()
    cached.unlink()
    monkeypatch.setattr(flaxzoo.weights, "get_file", lambda *a, **k: pytest.fail("the checkpoint was not used"))
    _, restored = flaxzoo.MobileNetV2(**kwargs)
    _, from_file = flaxzoo.MobileNetV2(alpha=0.35, include_top=False, input_shape=(96, 96, 3), weights=str(path))
    for tree in (variables, restored):  # the file's arrays, bit for bit (parity: test_features_match_keras)
        assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(from_file)
        for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(from_file)):
            np.testing.assert_array_equal(a, b)


def renamed_copy(path, out, rename) -> str:
    """A copy of a legacy .h5 with every weighted layer group renamed (``layer_names`` and the groups alike)."""
    import h5py

    with h5py.File(path, "r") as src, h5py.File(out, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        names = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
        new = [rename(n) if len(src[n].attrs["weight_names"]) else n for n in names]
        for old, name in zip(names, new):
            src.copy(src[old], dst, name=name)
        dst.attrs["layer_names"] = np.array([n.encode() for n in new])
    return str(out)


@pytest.mark.parity
def test_a_file_with_older_layer_names_loads_by_order_as_in_keras(tmp_path):
    """The published MobileNetV2 files (2018) name layers mobl1_conv_expand, ..., Logits: Keras 3 loads them by
    order, and so does flaxzoo for this family (file_layer_names=False), still checking counts and shapes.
    A family whose files use Keras 3's names (ResNet50) refuses a renamed file, naming the layer."""
    _, path = reference(0.35, False, 65)
    renamed = renamed_copy(path, tmp_path / "renamed.h5", lambda name: f"mobl_{name}")
    kwargs = dict(input_shape=(65, 65, 3), alpha=0.35, include_top=False)
    _, expected = flaxzoo.MobileNetV2(weights=str(path), **kwargs)
    _, loaded = flaxzoo.MobileNetV2(weights=renamed, **kwargs)
    for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    assert get_spec("resnet50").file_layer_names and not SPEC.file_layer_names
