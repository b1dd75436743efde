"""Keras' ValueErrors, reproduced under the same conditions and with the same messages.

Each case calls the Keras constructor and ours with the same arguments; both must raise ValueError
with the same text. Every case fails before Keras would download anything.
"""

import re

import jax
import pytest

from flaxzoo.errors import CheckpointError, WeightFileError
from flaxzoo.zoo import create_model, get_spec, list_models

import keras_reference as kr
from keras_reference import error_of
import tiers

MODELS = list_models()


def cases(spec):
    s, m = spec.default_size, spec.min_size
    return {
        "bad_weights": dict(weights="no/such/weights.h5"),
        "imagenet_top_classes": dict(weights="imagenet", classes=10),
        "imagenet_top_input_shape": dict(weights="imagenet", input_shape=(s + 1, s + 1, 3)),
        "below_min_size": dict(weights=None, include_top=False, input_shape=(m - 1, m - 1, 3)),
        "below_min_width_only": dict(weights=None, include_top=False, input_shape=(s, m - 1, 3)),
        "imagenet_one_channel": dict(weights="imagenet", include_top=False, input_shape=(s, s, 1)),
        "input_shape_rank": dict(weights=None, include_top=False, input_shape=(s, s)),
        "top_dynamic_shape": dict(weights=None, include_top=True, input_shape=(None, None, 3)),
        "activation_with_imagenet": dict(weights="imagenet", classifier_activation="relu"),
    }


CASE_NAMES = list(cases(get_spec(MODELS[0])))
# Keras raises these only once it has built the whole model: each family's smallest preset (tests/tiers.py)
BUILDS_THE_MODEL = {"activation_with_imagenet"}
# Keras' MobileNetV3 checks its input shape in its own way (no imagenet_utils.obtain_input_shape): it raises
# none of these, warns otherwise, and goes on to download; tests/test_mobilenet_v3.py compares those paths.
OWN_INPUT_CHECKS = {"imagenet_top_input_shape", "imagenet_one_channel", "top_dynamic_shape"}


def checks_input_shape_like_imagenet_utils(name):
    return "mobilenet_v3" not in get_spec(name).keras_modules


ERROR_CASES = [
    (n, c)
    for n in MODELS
    for c in CASE_NAMES
    if (c not in BUILDS_THE_MODEL or n in tiers.REPRESENTATIVES)
    and (c not in OWN_INPUT_CHECKS or checks_input_shape_like_imagenet_utils(n))
]



@pytest.mark.parametrize("name, case", ERROR_CASES)
def test_constructor_errors_match_keras(name, case):
    spec = get_spec(name)
    kwargs = cases(spec)[case]
    ours = error_of(spec.constructor, **kwargs)
    theirs = error_of(kr.keras_constructor(spec), **kwargs)
    if case == "activation_with_imagenet":  # Keras prints the resolved function object's repr
        prefix = "classifier_activation="
        ours, theirs = ours.split(prefix)[0], theirs.split(prefix)[0]
    assert ours == theirs


def test_weights_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        get_spec("resnet50").constructor(weights=str(tmp_path), include_top=False)


def test_weights_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(WeightFileError, match=re.escape(str(path))):
        get_spec("resnet50").constructor(weights=str(path), include_top=False)


@pytest.mark.parametrize("pooling", ["bogus", "", "AVG"])
def test_unknown_pooling_returns_the_feature_map_like_keras(pooling):
    model, variables = create_model("vgg16", abstract=True, weights=None, include_top=False, pooling=pooling)
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 32, 32, 3), "float32"))
    assert out.shape == (1, 1, 1, 512)


@pytest.mark.parametrize("name", [n for n in tiers.REPRESENTATIVES if checks_input_shape_like_imagenet_utils(n)])
def test_unusual_channel_count_warns_like_keras(name):
    """Keras warns while it builds the whole model: each family's smallest preset."""
    spec = get_spec(name)
    kwargs = dict(weights=None, include_top=False, input_shape=(spec.default_size, spec.default_size, 4))
    with pytest.warns(UserWarning) as ours:
        create_model(name, abstract=True, **kwargs)
    with pytest.warns(UserWarning) as theirs:
        kr.keras_constructor(spec)(**kwargs)
    message = "usually expects 1 or 3 input channels"
    assert [str(w.message) for w in ours if message in str(w.message)] == [
        str(w.message) for w in theirs if message in str(w.message)
    ] != []
