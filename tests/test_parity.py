"""Parity with Keras 3 (JAX backend), for every registered model.

Random Keras weights with non-trivial batch-norm statistics → legacy .h5 (Keras' own writer) →
flaxzoo → outputs compared within float32 rounding of the model's size (tests/tolerances.py: features
relative to the largest feature, probabilities absolute), at the default size, at one other (odd) size
and (no top) at the minimum size (tests/tiers.py: every model's top probabilities at the odd size; each
family's smallest preset at all three sizes, with the three poolings and a training pass).
Both sides run jitted, as Keras' ``predict`` and training do; the three pooling variants
of a no-top model share their weights and are compiled together on each side.
"""

import functools

import jax
import numpy as np
import pytest

from flaxzoo import layers
from flaxzoo.zoo import create_model, get_spec, list_models

import keras_reference as kr
import tiers
import tolerances

MODELS = list_models()
POOLINGS = [None, "avg", "max"]


def other_size(spec):
    """An allowed, odd, non-default size: exercises TF 'SAME' padding on odd inputs."""
    return 2 * spec.min_size + 1


SIZES = {"default": lambda spec: spec.default_size, "other": other_size, "min": lambda spec: spec.min_size}


def notop_reference(name, size, pooling=None):
    """The no-top Keras model to compare with at ``size``: one dynamic-input model serves every size,
    except where Keras' graph depends on the static size (then one model per size; same seed, same weights)."""
    return kr.reference_model(name, False, size if get_spec(name).shape_dependent else None, pooling)


def flax_apply(model, variables, x, **kwargs):
    with jax.default_matmul_precision("highest"):
        return jax.jit(functools.partial(model.apply, **kwargs))(variables, x)


def flax_apply_all(models, variables, x):
    """Several modules over one set of variables in one compilation (XLA merges their common layers)."""
    with jax.default_matmul_precision("highest"):
        return jax.jit(lambda v, x: [m.apply(v, x) for m in models])(variables, x)


assert_features_close = tolerances.assert_features_close


TOP_CASES = [(n, "other") for n in MODELS] + [(n, "default") for n in tiers.REPRESENTATIVES]


@pytest.mark.parity
@pytest.mark.parametrize("name, size_kind", TOP_CASES)
def test_top_probabilities_match_keras(name, size_kind):
    spec = get_spec(name)
    size = SIZES[size_kind](spec)
    x = kr.reference_inputs(name, size)
    ref = kr.reference_probabilities(name, size)
    model, variables = spec.constructor(
        weights=kr.reference_h5(name, True, size), input_shape=None if size_kind == "default" else (size, size, 3)
    )
    probs = flax_apply(model, variables, x)
    assert probs.shape == ref.shape == (2, 1000)
    assert ref.max() < 0.9, "calibration failed: saturated softmax makes a weak check"
    tolerances.assert_probabilities_close(probs, ref, variables)
    np.testing.assert_array_equal(np.argmax(probs, -1), np.argmax(ref, -1))


FEATURE_CASES = [(n, k) for k in ("other", "default", "min") for n in tiers.REPRESENTATIVES]


@pytest.mark.parity
@pytest.mark.parametrize("name, size_kind", FEATURE_CASES)
def test_features_match_keras_with_each_pooling(name, size_kind):
    """pooling None (the feature map), 'avg' and 'max', against Keras' models built with each."""
    spec = get_spec(name)
    size = SIZES[size_kind](spec)
    x = kr.reference_inputs(name, size)
    _, variables = spec.constructor(include_top=False, weights=kr.reference_h5(name, False))
    models = [create_model(name, abstract=True, weights=None, include_top=False, pooling=p)[0] for p in POOLINGS]
    refs = kr.run_all([notop_reference(name, size, pooling) for pooling in POOLINGS], x)
    for pooling, ours, ref in zip(POOLINGS, flax_apply_all(models, variables, x), refs):
        assert ref.ndim == (4 if pooling is None else 2), pooling
        assert_features_close(ours, ref, variables)


def without_drop_connect(model):
    """The module with stochastic depth off (EfficientNet's ``drop_connect_rate``), as Keras' under
    :func:`keras_reference.dropout_off`: a training pass that both sides compute deterministically."""
    return model.clone(drop_connect_rate=0.0) if "drop_connect_rate" in model.__dataclass_fields__ else model


@pytest.mark.parity
@pytest.mark.parametrize("name", tiers.REPRESENTATIVES)
def test_train_mode_matches_keras_and_updates_bn_statistics(name):
    """One training-mode forward pass: outputs (batch statistics) and the updated moving statistics.

    In Keras' own convolution operations: normalising with the statistics of 2 small images is ill-conditioned
    (it amplifies rounding, which tolerances.network_rtol assumes it does not), and in Keras' operations both
    sides run the same XLA convolutions; the batch moments, computed alike, are the only sums left to differ."""
    spec = get_spec(name)
    size = other_size(spec)
    x = kr.reference_inputs(name, size)
    ref_model = notop_reference(name, size)
    with jax.default_matmul_precision("highest"), kr.dropout_off(ref_model):
        ref, ref_stats = kr.run_training(ref_model, x)
    model, variables = spec.constructor(include_top=False, weights=kr.reference_h5(name, False))
    with layers.conv_implementation("keras"):
        out, updates = flax_apply(without_drop_connect(model), variables, x, train=True, mutable=["batch_stats"])
    assert_features_close(out, ref, variables)
    assert set(updates.get("batch_stats", {})) == set(ref_stats)
    for layer, stats in ref_stats.items():
        for var in ("mean", "var"):
            assert_features_close(updates["batch_stats"][layer][var], stats[var], variables)
    if ref_stats:  # the pass did move the statistics
        before = variables["batch_stats"]
        assert any(not np.allclose(before[k]["mean"], updates["batch_stats"][k]["mean"]) for k in ref_stats)
