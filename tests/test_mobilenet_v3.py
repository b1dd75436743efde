"""MobileNetV3 specifics, against Keras 3: widths at every alpha and minimalistic, parity at alpha 0.75 and
minimalistic (top and no top, small sizes, preprocessing in the model on and off, every vector weight random), the
two hard-sigmoid forms bit for bit, Keras' input-shape logic (no ``obtain_input_shape``: dynamic top models, any size
from 32), its errors and warning, which published file each configuration asks for (``alpha=1`` included), the
pre-2021 no-top files refused, and a file with Keras 2's layer names (``Conv/BatchNorm``: nested HDF5 groups).

The registry-wide tests (parity, counts, layer order, surgery) cover both models at their defaults (alpha 1).
"""

import dataclasses
import functools
import inspect
import re
import warnings

import h5py
import jax
import keras
import numpy as np
import pytest
from flax import linen as nn
from keras.src.applications import mobilenet_v3 as keras_mobilenet_v3

import flaxzoo
from flaxzoo import layers
from flaxzoo.errors import WeightFileError
from flaxzoo.graph import trace
from flaxzoo.models import mobilenet_v3
from flaxzoo.models.common import FLAXZOO_KEYWORDS
from flaxzoo.registry import base_url
from flaxzoo.weights import convert
from flaxzoo.zoo import create_model, get_spec

import keras_reference as kr
from keras_reference import error_of
import test_mobilenet_v2
import tolerances
from test_parity import flax_apply

# MobileNetV2's fixture, by name: both weight resolvers patched to load nothing
loading_nothing = test_mobilenet_v2.loading_nothing

SPECS = {kind: get_spec(f"mobilenet_v3_{kind}") for kind in ("small", "large")}
WARNING = mobilenet_v3.WARNING


def keras_constructor(kind):
    return getattr(keras.applications, SPECS[kind].keras_name)


def keras_shapes_only(kind, **kwargs) -> keras.Model:
    """Keras' model with uninitialised variables: names, shapes and counts only, built in a fresh session."""
    keras.backend.clear_session()
    with keras.StatelessScope(initialize_variables=False):
        return keras_constructor(kind)(**kwargs)


# ------------------------------------------------------------------------------------------------
# (a) Widths and layers at every alpha, minimalistic, without dropout or preprocessing
# ------------------------------------------------------------------------------------------------

ARCHITECTURES = [
    dict(alpha=0.75),
    dict(alpha=1.25, minimalistic=True),  # alpha > 1 widens conv_2 too
    dict(alpha=0.5, dropout_rate=0, include_preprocessing=False),  # no Dropout, no Rescaling layer
]


@pytest.mark.parametrize("config", ARCHITECTURES, ids=str)
@pytest.mark.parametrize("kind", SPECS)
def test_layers_widths_and_counts_equal_keras(kind, config):
    ref = keras_shapes_only(kind, weights=None, **config)
    model, variables = create_model(SPECS[kind].name, abstract=True, weights=None, **config)
    assert flaxzoo.weights.count_params(variables) == ref.count_params()
    graph = trace(model, (1, 64, 64, 3))
    assert graph.names == [layer.name for layer in ref.layers]
    ours = [(layer.name, [tuple(v.shape) for *_, v in convert._slots(graph, layer)]) for layer in graph.weighted_layers]
    theirs = [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in ref.layers if layer.weights]
    assert ours == theirs
    assert model.input_shape == ref.input_shape[1:] == (None, None, 3)  # dynamic, also with the top


def test_depth_rounding_is_keras():
    for v in [16 * 4.5, 24 * 88.0 / 24, 40 * 2.3, 80 * 2.5, 96 * 0.25, 1280 * 1.25, 576 * 0.25, 0.75 * 40, 3, 100]:
        assert mobilenet_v3._depth(v) == keras_mobilenet_v3._depth(v), v


# ------------------------------------------------------------------------------------------------
# (b) Parity on random weights: alpha 0.75 and minimalistic, top and no top, preprocessing on and off
# ------------------------------------------------------------------------------------------------

# (kind, configuration, include_top, size): static sizes, as the registry's shape_dependent says (Keras' correct_pad
# on a (None, None, 3) input is not 'SAME' on odd sizes)
PARITY_CASES = [
    ("small", (("alpha", 0.75),), True, 64),
    ("large", (("minimalistic", True), ("include_preprocessing", False)), True, 65),
    ("small", (("minimalistic", True), ("include_preprocessing", False)), False, 33),
    ("large", (("alpha", 0.75),), False, 64),
]


def parity_inputs(config, size) -> np.ndarray:
    """Images in [0, 255], or in [-1, 1] for a model without its Rescaling layer."""
    x = kr.images(2, size, seed=size)
    return x if dict(config).get("include_preprocessing", True) else x / np.float32(127.5) - np.float32(1)


@functools.cache
def reference(kind, config, include_top, size):
    """(randomised Keras model, its legacy .h5): every weight random, BN statistics far from (0, 1), biases non-zero."""
    model = kr.build(
        SPECS[kind], placeholder_weights=True, include_top=include_top, input_shape=(size, size, 3), **dict(config)
    )
    model = kr.randomize(model, seed=3)
    if include_top:
        kr.calibrate_classifier(model, parity_inputs(config, size))
    tag = "_".join(f"{k}{v}" for k, v in config)
    path = kr.save_legacy_h5(model, kr._h5_dir() / f"mobilenet_v3_{kind}_{tag}_{include_top}_{size}.h5")
    return model, path


def parity_outputs(kind, config, include_top, size):
    """(flaxzoo's output, Keras', flaxzoo's variables) on the case's inputs."""
    ref_model, path = reference(kind, config, include_top, size)
    x = parity_inputs(config, size)
    model, variables = SPECS[kind].constructor(
        input_shape=(size, size, 3), include_top=include_top, weights=str(path), **dict(config)
    )
    ref = kr.predict(ref_model, x) if include_top else kr.run(ref_model, x)
    return np.asarray(flax_apply(model, variables, x)), ref, variables


@pytest.mark.parity
@pytest.mark.parametrize("kind, config, include_top, size", PARITY_CASES)
def test_outputs_match_keras(kind, config, include_top, size):
    ours, ref, variables = parity_outputs(kind, config, include_top, size)
    vectors = [leaf for leaf in jax.tree_util.tree_leaves(variables) if leaf.ndim == 1]
    assert vectors and all(np.std(v) > 0 for v in vectors)  # no weight left at a constant initial value
    if include_top:
        assert ours.shape == ref.shape == (2, 1000)
        assert ref.max() < 0.9, "calibration failed: saturated softmax makes a weak check"
        tolerances.assert_probabilities_close(ours, ref, variables)
        np.testing.assert_array_equal(np.argmax(ours, -1), np.argmax(ref, -1))
    else:
        assert ours.shape == ref.shape and ours.shape[1:3] == (2, 2)
        tolerances.assert_features_close(ours, ref, variables)


def test_preprocess_input_is_the_identity_as_in_keras():
    x = kr.images(1, 32)
    assert flaxzoo.mobilenet_v3.preprocess_input(x) is x
    assert SPECS["small"].preprocess_mode is None


# ------------------------------------------------------------------------------------------------
# (c) hard-swish (a division) and the squeeze-excite hard-sigmoid (a multiply) as Keras computes them
# ------------------------------------------------------------------------------------------------


def activation_inputs() -> np.ndarray:
    x = np.random.default_rng(0).normal(0.0, 3.0, (2, 5, 5, 16)).astype(np.float32)
    x.flat[:7] = [-3.0, 3.0, 0.0, -6.0, 6.0, -2.9999998, 2.9999998]  # the kinks and their neighbours
    return x


class _Gate(nn.Module):
    @nn.compact
    def __call__(self, x):
        return mobilenet_v3.hard_sigmoid(x, layers.AutoNames())


class _SqueezeExcite(nn.Module):
    @nn.compact
    def __call__(self, x):
        return mobilenet_v3._se_block(x, 16, 0.25, "expanded_conv_", layers.AutoNames())


def keras_graph(fn) -> keras.Model:
    """A Keras functional model of ``fn`` on (5, 5, 16) inputs, random weights (its own, where it has any)."""
    keras.backend.clear_session()
    inputs = keras.Input((5, 5, 16))
    return kr.randomize(keras.Model(inputs, fn(inputs)), seed=1)


@pytest.mark.parametrize("form", ["hard_swish", "hard_sigmoid", "squeeze_excite"])
def test_activations_equal_keras_bit_for_bit(form):
    """Keras' own functions in a Keras graph, eager and jitted, against flaxzoo's; the SE block's 1x1 convolutions
    in Keras' form (on CPU flaxzoo computes them as matrix products by default, within rounding)."""
    x = activation_inputs()
    if form == "hard_swish":
        ref_model, ours, variables = keras_graph(keras.layers.Activation(form)), layers.Activation(form), {}
    elif form == "hard_sigmoid":
        ref_model, ours, variables = keras_graph(keras_mobilenet_v3.hard_sigmoid), _Gate(), {}
    else:
        ref_model = keras_graph(lambda t: keras_mobilenet_v3._se_block(t, 16, 0.25, "expanded_conv_"))
        ours = _SqueezeExcite()
        convs = [layer for layer in ref_model.layers if layer.weights]
        variables = {"params": {c.name: {"kernel": c.kernel.numpy(), "bias": c.bias.numpy()} for c in convs}}
    with layers.conv_implementation("keras"):
        eager = np.asarray(ours.apply(variables, x))
        jitted = np.asarray(jax.jit(ours.apply)(variables, x))
    np.testing.assert_array_equal(eager, kr.run_eager(ref_model, x))
    np.testing.assert_array_equal(jitted, kr.run(ref_model, x))


def test_the_two_hard_sigmoid_forms_are_keras_programs():
    """hard_swish divides by 6 (jax.nn.hard_silu, as keras.ops.hard_silu); the SE gate multiplies by float32(1/6).
    In exact float32 arithmetic the two round differently (numpy, below); XLA rewrites a division by a constant into
    a multiply by its reciprocal, so compiled they agree: flaxzoo keeps Keras' programs, not their compiled values."""
    x = activation_inputs()
    swish = str(jax.make_jaxpr(layers.get_activation("hard_swish"))(x))
    gate = str(jax.make_jaxpr(lambda v: _Gate().apply({}, v))(x))
    assert layers.get_activation("hard_swish") is layers.get_activation("hard_silu") is jax.nn.hard_silu
    assert " div " in swish and " div " not in gate and "mul c 0.1666666716337204" in gate  # float32(1 / 6)
    gate_ops = [e.primitive.name for e in jax.make_jaxpr(lambda v: _Gate().apply({}, v))(x).jaxpr.eqns]
    assert gate_ops == ["add", "custom_jvp_call", "mul"]  # + 3., relu6, * (1. / 6.)
    relu6 = np.clip(np.linspace(0.0, 6.0, 10_001, dtype=np.float32), 0, 6)
    assert (relu6 / np.float32(6) != relu6 * np.float32(1.0 / 6.0)).any()


# ------------------------------------------------------------------------------------------------
# (d) Keras' errors, warning and input shapes (its MobileNetV3 does not call obtain_input_shape)
# ------------------------------------------------------------------------------------------------

ERROR_CASES = {
    "bad_weights": dict(weights="nowhere.h5", alpha=0.5),
    "imagenet_classes_first": dict(classes=10, alpha=0.5),
    "imagenet_alpha": dict(alpha=0.5),
    "imagenet_alpha_over_one": dict(alpha=1.25, include_top=False),
    "imagenet_alpha_minimalistic": dict(alpha=0.75, minimalistic=True),
    "imagenet_alpha_int": dict(alpha=2),
    "below_min_before_alpha": dict(input_shape=(31, 31, 3), alpha=0.5),
    "below_min_width": dict(weights=None, include_top=False, input_shape=(224, 31, 3)),
    "rank_2": dict(weights=None, input_shape=(224, 224)),
    "rank_2_no_preprocessing": dict(weights=None, input_shape=(64, 64), include_preprocessing=False),
    "rank_4": dict(weights=None, include_top=False, input_shape=(64, 64, 3, 2)),
    # input_tensor (its shape here): its width against input_shape's; without input_shape Keras checks the tensor's
    # (columns, rows), and its message shows them swapped, as flaxzoo's does
    "tensor_width": dict(input_tensor=(None, 64, 65, 3), input_shape=(64, 64, 3), include_top=False, weights=None),
    "tensor_below_min": dict(input_tensor=(None, 40, 31, 3), include_top=False, weights=None),
}


def flaxzoo_tensor(shape):
    return jax.ShapeDtypeStruct(shape, np.float32)


def keras_tensor(shape):
    return keras.Input(batch_shape=shape)


def with_tensor(kwargs, make):
    """``kwargs`` with the shape given as input_tensor made a tensor by ``make``."""
    return {k: make(v) if k == "input_tensor" else v for k, v in kwargs.items()}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_match_keras(case):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these gets as far as the warning
        ours = error_of(flaxzoo.MobileNetV3Small, **with_tensor(ERROR_CASES[case], flaxzoo_tensor))
        assert ours == error_of(keras_shapes_only, kind="small", **with_tensor(ERROR_CASES[case], keras_tensor))


def test_activation_error_with_imagenet_weights_matches_keras():
    """Raised once Keras has built the model, after the warning; Keras prints the resolved function's repr."""
    kwargs = dict(weights="imagenet", classifier_activation="relu")
    with pytest.warns(UserWarning, match=re.escape(WARNING)):
        ours = error_of(flaxzoo.MobileNetV3Small, **kwargs)
    with pytest.warns(UserWarning, match=re.escape(WARNING)):
        theirs = error_of(keras_shapes_only, kind="small", **kwargs)
    prefix = "classifier_activation="
    assert ours.split(prefix)[0] == theirs.split(prefix)[0]


# Where the common constructor raises (obtain_input_shape) and Keras' MobileNetV3 builds the model.
SHAPE_CASES = [
    dict(weights=None, include_top=True, input_shape=(None, None, 3)),  # a dynamic top model
    dict(weights=None, include_top=True, input_shape=(97, 64, 3)),
    dict(weights=None, include_top=False, input_shape=(224, 224, 4)),  # no channel check, no warning
    dict(weights=None, include_top=False, input_shape=(None, 31, 3)),  # no minimum where a side is dynamic
    dict(weights="imagenet", include_top=True),
    dict(weights="imagenet", include_top=True, input_shape=(225, 225, 3)),  # 224-trained, any size (a warning)
    dict(weights="imagenet", include_top=False, input_shape=[160, 200, 3]),
    dict(weights="imagenet", include_top=False, input_shape=(224, 224, 1)),  # Keras fails later, loading the file
    dict(weights=None, include_top=False, input_tensor=(None, 48, 80, 3)),  # the tensor's shape, not the swapped one
]


@pytest.mark.parametrize("kwargs", SHAPE_CASES, ids=str)
def test_input_shapes_and_warnings_equal_keras(loading_nothing, kwargs):
    with warnings.catch_warnings(record=True) as ours_record:
        warnings.simplefilter("always")
        abstract = kwargs["weights"] is None
        model, _ = create_model("mobilenet_v3_large", abstract=abstract, **with_tensor(kwargs, flaxzoo_tensor))
    with warnings.catch_warnings(record=True) as keras_record:
        warnings.simplefilter("always")
        ref = keras_shapes_only("large", **with_tensor(kwargs, keras_tensor))
    assert model.input_shape == ref.input_shape[1:] and model.name == ref.name == "MobileNetV3Large"
    ours, theirs = ([str(w.message) for w in r if w.category is UserWarning] for r in (ours_record, keras_record))
    warns = kwargs["weights"] == "imagenet" and model.input_shape[:2] != (224, 224)
    assert ours == theirs == ([WARNING] if warns else [])
    height, width, channels = (d or 80 for d in model.input_shape)  # any size on None dimensions: 80
    x = jax.ShapeDtypeStruct((1, height, width, channels), np.float32)
    out = jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.key(0), x), x)
    assert out.shape[-1] == (1000 if kwargs["include_top"] else 960)


def test_signature_is_keras():
    for kind, spec in SPECS.items():
        theirs = inspect.signature(keras_constructor(kind)).parameters
        ours = inspect.signature(spec.constructor).parameters
        keras_parameters = [(p.name, p.default) for p in theirs.values()]
        assert [(p.name, p.default) for p in ours.values()] == [*keras_parameters, *FLAXZOO_KEYWORDS.items()]
        assert "alpha=1" in spec.constructor.__doc__  # the int alpha Keras cannot load, documented as deliberate


# ------------------------------------------------------------------------------------------------
# (e) The file each configuration asks for; alpha=1 (an int); the pre-2021 no-top files
# ------------------------------------------------------------------------------------------------

FILE_CASES = [
    (kind, alpha, minimalistic, include_top)
    for kind in SPECS
    for alpha, minimalistic in mobilenet_v3.PUBLISHED
    for include_top in (True, False)
]


def keras_model_name(kind, alpha, minimalistic) -> str:
    """Keras' WEIGHTS_HASHES key, as its MobileNetV3 writes it (``str(alpha)``)."""
    return f"{kind}{'_minimalistic' if minimalistic else ''}_224_{alpha}_float"


def ask_for_imagenet(fn, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(kr.Requested):
            fn(weights="imagenet", **kwargs)


@pytest.mark.parametrize("kind, alpha, minimalistic, include_top", FILE_CASES)
def test_each_configuration_asks_for_keras_file_and_hash(requested_files, kind, alpha, minimalistic, include_top):
    ask_for_imagenet(SPECS[kind].constructor, alpha=alpha, minimalistic=minimalistic, include_top=include_top)
    [(fname, url, md5)] = requested_files["flaxzoo"]
    name = keras_model_name(kind, alpha, minimalistic)
    assert fname == f"weights_mobilenet_v3_{name}{'' if include_top else '_no_top_v2'}.h5"
    assert md5 == keras_mobilenet_v3.WEIGHTS_HASHES[name][0 if include_top else 1]
    keras_url = keras_mobilenet_v3.BASE_WEIGHT_PATH + fname
    assert url == f"{base_url()}/{keras_url.removeprefix('https://storage.googleapis.com/')}"


@pytest.mark.parametrize(
    "kind, alpha, minimalistic, include_top", [("small", 0.75, False, False), ("large", 1.0, True, True)]
)
def test_keras_asks_for_the_same_file(requested_files, kind, alpha, minimalistic, include_top):
    kwargs = dict(alpha=alpha, minimalistic=minimalistic, include_top=include_top)
    ask_for_imagenet(SPECS[kind].constructor, **kwargs)
    ask_for_imagenet(keras_shapes_only, kind=kind, **kwargs)
    [(fname, _, _)] = requested_files["flaxzoo"]
    assert [(fname, keras_mobilenet_v3.BASE_WEIGHT_PATH + fname)] == requested_files["keras"]


def test_every_published_file_has_a_variant():
    for kind, spec in SPECS.items():
        assert len(spec.weights) == 6 and {"top", "notop"} <= set(spec.weights)
        names = {wf.fname for wf in spec.weights.values()}
        assert names == {
            f"weights_mobilenet_v3_{keras_model_name(kind, alpha, minimalistic)}{suffix}.h5"
            for alpha, minimalistic in mobilenet_v3.PUBLISHED
            for suffix in ("", "_no_top_v2")
        }
        assert {wf.md5 for wf in spec.weights.values()} == {
            md5 for key, md5s in keras_mobilenet_v3.WEIGHTS_HASHES.items() if key.startswith(kind) for md5 in md5s
        }


def test_int_alpha_loads_the_1_0_file_where_keras_raises_key_error(requested_files):
    ask_for_imagenet(flaxzoo.MobileNetV3Large, alpha=1, include_top=False)
    [(fname, _, md5)] = requested_files["flaxzoo"]
    assert fname == "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"
    assert md5 == SPECS["large"].weights["notop"].md5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyError, match="large_224_1_float"):
            keras_shapes_only("large", alpha=1, include_top=False)


def old_layout_copy(path, out) -> str:
    """A top file cut after ``conv_2``: the pre-2021 no-top layout (the feature extractor ended with Conv_2)."""
    with h5py.File(path, "r") as src, h5py.File(out, "w") as dst:
        names = [str(n) for n in src.attrs["layer_names"]]
        kept = names[: names.index("conv_2") + 1]
        for name in kept:
            src.copy(src[name], dst, name=name)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["layer_names"] = np.array(kept, dtype=h5py.string_dtype())
    return str(out)


@pytest.mark.parity
def test_pre_2021_no_top_files_are_refused_naming_the_v2_file(tmp_path):
    """By their published md5s (Keras' WEIGHTS_HASHES before keras-team/keras 466fccbb); a copy of any other md5 in
    that layout fails the layer count, naming the extra layer."""
    for spec in SPECS.values():
        assert len(spec.foreign_files) == 3
        for reason in spec.foreign_files.values():
            old, new = re.search(r"(weights_\S+_no_top\.h5).* Use (weights_\S+_no_top_v2\.h5)", reason).groups()
            assert old.replace("_no_top", "_no_top_v2") == new and new in {wf.fname for wf in spec.weights.values()}
    _, top_file = reference("small", (("alpha", 0.75),), True, 64)
    old = old_layout_copy(top_file, tmp_path / "old_no_top.h5")
    with pytest.raises(WeightFileError, match=r"Layer count mismatch.*extra layers from #\d+ on: \['conv_2'\]"):
        flaxzoo.MobileNetV3Small(alpha=0.75, include_top=False, weights=old)
    # the same refusal as for the published file, were this copy it: its md5 in the place of the published one's
    spec = SPECS["small"]
    reason = spec.foreign_files[mobilenet_v3.SMALL_OLD_NO_TOP_MD5S[0.75, False]]
    as_published = dataclasses.replace(spec, foreign_files={flaxzoo.weights.md5sum(old): reason})
    model, _ = create_model(spec.name, abstract=True, weights=None, alpha=0.75, include_top=False)
    with pytest.raises(WeightFileError, match=re.escape("Use weights_mobilenet_v3_small_224_0.75_float_no_top_v2.h5")):
        flaxzoo.weights.convert_file(as_published, trace(model, (1, 64, 64, 3)), old, "0.75_notop")


# ------------------------------------------------------------------------------------------------
# (f) The published files' Keras 2 layer names: '/' in HDF5 names, nested groups
# ------------------------------------------------------------------------------------------------


def keras2_name(name: str) -> str:
    """Keras 3's layer name → the published files' (Keras 2): conv_bn → Conv/BatchNorm,
    expanded_conv_3_squeeze_excite_conv_1 → expanded_conv_3/squeeze_excite/Conv_1, logits → Logits, ..."""
    fixed = {"conv": "Conv", "conv_bn": "Conv/BatchNorm", "conv_1": "Conv_1", "conv_1_bn": "Conv_1/BatchNorm"}
    if name in fixed or name in ("conv_2", "logits"):
        return fixed.get(name, name.capitalize())
    block, part = re.fullmatch(r"(expanded_conv(?:_\d+)?)_(\w+)", name).groups()
    part = re.sub(r"squeeze_excite_conv", "squeeze_excite/Conv", part)
    return f"{block}/{re.sub(r'_bn$', '/BatchNorm', part)}"


def keras2_copy(path, out) -> str:
    """A copy of a Keras 3 legacy .h5 written as Keras 2 wrote the published files: weighted layers renamed (a '/'
    makes nested groups: Conv/BatchNorm inside Conv), arrays named ``{layer}/{weight}:0``, attributes as bytes."""
    with h5py.File(path, "r") as src, h5py.File(out, "w") as dst:
        names = []
        for name in (str(n) for n in src.attrs["layer_names"]):
            group, weights = src[name], [str(w) for w in src[name].attrs["weight_names"]]
            new = keras2_name(name) if weights else name
            target = dst.require_group(new)
            renamed = [f"{new}/{w.rsplit('/', 1)[-1]}:0" for w in weights]
            for weight, k2 in zip(weights, renamed):
                target.create_dataset(k2, data=group[weight][()])
            target.attrs["weight_names"] = np.array([w.encode() for w in renamed], dtype="S") if weights else []
            names.append(new)
        dst.attrs["layer_names"] = np.array([n.encode() for n in names], dtype="S")
        dst.attrs["keras_version"], dst.attrs["backend"] = b"2.4.0", b"tensorflow"
    return str(out)


@pytest.mark.parity
def test_a_file_with_keras_2_layer_names_loads_by_order_like_keras(tmp_path):
    kind, config, include_top, size = "small", (("alpha", 0.75),), True, 64
    ref_model, path = reference(kind, config, include_top, size)
    renamed = keras2_copy(path, tmp_path / "keras2.h5")
    with h5py.File(renamed, "r") as f:
        assert isinstance(f["Conv"]["BatchNorm"], h5py.Group) and "expanded_conv_3/squeeze_excite/Conv_1" in f
        assert "Conv_2/bias:0" in f["Conv_2"]
    kwargs = dict(alpha=0.75, input_shape=(size, size, 3))
    _, expected = flaxzoo.MobileNetV3Small(weights=str(path), **kwargs)
    _, loaded = flaxzoo.MobileNetV3Small(weights=renamed, **kwargs)
    assert jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(loaded)
    for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    keras_loaded = kr.build(SPECS[kind], placeholder_weights=True, **kwargs)
    keras_loaded.load_weights(renamed)  # Keras 3: by order, names ignored
    for a, b in zip(keras_loaded.weights, ref_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not SPECS[kind].file_layer_names
