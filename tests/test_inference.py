"""Inference speed-ups, checked for numbers only (speed is measured by benchmarks/, never here): the
CPU forms of depthwise and 1x1 convolutions, batch norms folded into convolutions, bfloat16 inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxzoo
from flaxzoo import layers
from flaxzoo.inference import foldable_batchnorms
from flaxzoo.zoo import create_model, get_spec, list_models

import keras_reference as kr
import tiers
import tolerances
from random_weights import random_variables, statistics_near_the_data

DEPTHWISE_CASES = [  # input shape, kernel, stride, padding, depth multiplier
    ((2, 16, 16, 8), 3, 1, "same", 1),
    ((2, 15, 17, 6), 3, 2, "same", 2),
    ((2, 16, 16, 4), 5, 2, "valid", 1),
    ((1, 9, 9, 3), 7, 1, "same", 3),
    ((2, 8, 8, 5), 3, 2, "valid", 1),
]


POINTWISE_CASES = [  # input shape, filters, stride, padding
    ((2, 9, 9, 8), 16, 1, "valid"),
    ((2, 15, 16, 6), 4, 2, "same"),
    ((2, 15, 17, 6), 4, 2, "valid"),
    ((1, 7, 7, 3), 5, 3, "same"),
]


def _cpu_form_equals_keras_form(f, *args):
    """``f`` under conv_implementation("cpu") equals "keras", values and gradients, within float32 rounding of
    the longest sum involved: a kernel's window (forward) or every output pixel (the kernel's gradient)."""

    def run(impl):
        def g(*a):
            with layers.conv_implementation(impl):
                return f(*a)

        with jax.default_matmul_precision("highest"):
            y = jax.jit(g)(*args)
            grads = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(g(*a))), argnums=(0, 1)))(*args)
        return y, grads

    (y_ref, g_ref), (y, g) = run("keras"), run("cpu")
    assert y.shape == y_ref.shape
    tol = tolerances.sum_rtol(max(int(np.prod(args[1].shape[:-1])), int(np.prod(y.shape[:3]))))
    for ours, ref in [(y, y_ref), *zip(g, g_ref)]:
        np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("shape, k, stride, padding, multiplier", DEPTHWISE_CASES)
def test_shifted_depthwise_equals_the_grouped_convolution_with_gradients(shape, k, stride, padding, multiplier):
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (k, k, shape[-1], multiplier))
    _cpu_form_equals_keras_form(lambda x, kernel: layers.depthwise_conv(x, kernel, stride, padding), x, kernel)


@pytest.mark.parametrize("shape, filters, stride, padding", POINTWISE_CASES)
def test_pointwise_matmul_equals_the_1x1_convolution_with_gradients(shape, filters, stride, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (1, 1, shape[-1], filters))
    _cpu_form_equals_keras_form(lambda x, kernel: layers.conv2d(x, kernel, stride, padding), x, kernel)


def test_auto_lowers_to_the_cpu_forms_on_cpu_and_keras_forms_on_request():
    x, depthwise, pointwise = jnp.zeros((2, 16, 16, 8)), jnp.zeros((3, 3, 8, 1)), jnp.zeros((1, 1, 8, 4))

    def lowered():  # a new function each time: jax caches traces by function, not by context
        return jax.jit(lambda x, d, p: layers.conv2d(layers.depthwise_conv(x, d, 1, "same"), p, 1, "valid")).lower(
            x, depthwise, pointwise
        ).as_text()

    text = lowered()
    assert "convolution" not in text and "dot_general" in text
    # kernels larger than 1x1 are XLA's convolution in every form, strided and on 3 channels included
    stem = jax.jit(lambda x, k: layers.conv2d(x, k, 2, "valid")).lower(jnp.zeros((2, 17, 17, 3)), jnp.zeros((3, 3, 3, 8)))
    assert stem.as_text().count("stablehlo.convolution") == 1
    with layers.conv_implementation("keras"):
        text = lowered()
    assert "feature_group_count = 8" in text and text.count("stablehlo.convolution") == 2
    with pytest.raises(ValueError, match="unknown convolution implementation"):
        with layers.conv_implementation("fast"):
            pass


@pytest.mark.parametrize("name", tiers.REPRESENTATIVES)
def test_folded_batchnorm_matches_the_model(name):
    """Random weights and batch-norm statistics near a trained network's (far from (0, 1)); features within
    float32 rounding."""
    spec = get_spec(name)
    size = 2 * spec.min_size + 1
    model, _ = create_model(name, abstract=True, weights=None, include_top=False, input_shape=(size, size, 3))
    variables = random_variables(name, include_top=False, input_shape=(size, size, 3))
    if "batch_stats" in variables:
        calibration = kr.keras_preprocess(kr.images(4, size, seed=99), spec.preprocess_mode)
        variables = statistics_near_the_data(model, variables, calibration)
    folded_model, folded = flaxzoo.fold_batchnorm(model, variables)
    x = kr.reference_inputs(name, size)
    with jax.default_matmul_precision("highest"):
        ref = jax.jit(model.apply)(variables, x)
        ours = jax.jit(folded_model.apply)(folded, x)
    tolerances.assert_features_close(ours, ref, variables)
    folded_names = foldable_batchnorms(model)
    assert folded_model.folded == frozenset(folded_names)
    assert not set(folded_names) & set(folded.get("batch_stats", {}))
    # every model with batch norms has some right after a convolution (VGG and ConvNeXt have none)
    assert bool(folded_names) == bool(variables.get("batch_stats"))
    if folded_names:
        with pytest.raises(ValueError, match="cannot train"):
            folded_model.apply(folded, x, train=True, mutable=["batch_stats"])


def test_bfloat16_inference_is_close_to_float32_on_real_weights():
    """The published MobileNet 0.25 no-top file on elephant.jpg: bfloat16 features (8-bit mantissas through
    28 layers) against float32's. bfloat16 is an approximation: this checks it is the expected one."""
    model, variables = flaxzoo.MobileNet(
        alpha=0.25, include_top=False, pooling="avg", weights=str(kr.SHARED_DATA / "mobilenet_2_5_224_tf_no_top.h5")
    )
    from flaxzoo.image import img_to_array, load_img
    from flaxzoo.mobilenet import preprocess_input

    x = preprocess_input(img_to_array(load_img(kr.SHARED_DATA / "elephant.jpg", target_size=(224, 224)))[None])
    f32, v32 = flaxzoo.predict_fn(model, variables)
    a = np.asarray(f32(v32, x))
    for fold_bn in (False, True):
        bf16, vb = flaxzoo.predict_fn(model, variables, dtype=jnp.bfloat16, fold_bn=fold_bn)
        b = np.asarray(bf16(vb, x))
        assert b.dtype == np.float32
        # 28 layers: 0.23 (measured: 0.09, folded 0.13); garbage would be ~1
        distance = float(np.linalg.norm(a - b) / np.linalg.norm(a))
        assert distance <= tolerances.bfloat16_rtol(len(tolerances.fan_ins(variables))), (fold_bn, distance)


def test_compiler_options_turn_ynnpack_off_on_cpu_only_and_yield_to_xla_flags(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert flaxzoo.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert flaxzoo.compiler_options("gpu") == {} and flaxzoo.compiler_options("tpu") == {}
    assert flaxzoo.compiler_options("cpu", training=True) == {}  # the backward pass is faster with YNNPACK
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT")
    assert flaxzoo.compiler_options("cpu") == {}
    # a jaxlib whose XLA:CPU does not know an option gets none (an unknown option fails every compile)
    from flaxzoo import xla_options

    assert not xla_options._cpu_accepts((("xla_cpu_no_such_option", ""),))


def test_predict_fn_and_predict_step_compile_without_ynnpack_fusions_and_match_default_jit(monkeypatch):
    """The options reach XLA (no YNNPACK fusion in the compiled program) and change no result beyond rounding."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    import optax

    from flaxzoo import sharding, train

    model, variables = flaxzoo.MobileNet(
        alpha=0.25, weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None
    )
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    f, v = flaxzoo.predict_fn(model, variables)
    assert "ynn_fusion" not in f.lower(v, x).compile().as_text()
    with jax.default_matmul_precision("highest"):
        tolerances.assert_features_close(f(v, x), jax.jit(model.apply)(variables, x), variables)  # logits
    mesh, tx = sharding.data_mesh(), optax.sgd(0.1)
    state = sharding.replicate(train.create_train_state(variables, tx), mesh)
    images = sharding.global_batch(x, mesh)
    assert "ynn_fusion" not in train.make_steps(model, tx, mesh).predict.lower(state, images).compile().as_text()
