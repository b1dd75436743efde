"""Pretrained RGB weights on other channel counts (``adapt_input_channels``, flaxzoo.input_channels): the first
kernel summed over RGB for 1 channel, repeated and scaled by 3/C for C; in-model preprocessing constants alike.

The adapted models are checked against the RGB model on inputs where the two must agree within float32
rounding: a gray image against it repeated three times (1 channel), and an image's channels twice against the
image (6 channels: each RGB kernel twice, halved), on each family's smallest preset.
"""

import jax
import numpy as np
import pytest

import flaxzoo
from flaxzoo import testing
from flaxzoo.errors import WeightFileError
from flaxzoo.input_channels import InputChannelsAdapted, adapt_channels, input_layers
from flaxzoo.zoo import create_model, get_spec

import keras_reference as kr
import tiers
import tolerances
from test_parity import flax_apply

SIZE = 65


def kernel(variables):
    return np.asarray(variables["params"]["conv1_conv"]["kernel"])


@pytest.mark.parametrize("name", ["resnet50"])  # the resnet50 test group: its Keras file is built once
def test_one_and_four_channel_resnet50_from_a_keras_h5_have_the_adapted_first_kernel(name):
    resnet50_h5 = str(kr.reference_h5(name, False))
    shape = (SIZE, SIZE)
    rgb_model, rgb = flaxzoo.ResNet50(include_top=False, weights=resnet50_h5, input_shape=(*shape, 3))
    with pytest.warns(InputChannelsAdapted, match="resnet50: .* adapted to 1: conv1_conv's kernel summed over RGB"):
        gray_model, gray = flaxzoo.ResNet50(
            include_top=False, weights=resnet50_h5, input_shape=(*shape, 1), adapt_input_channels=True
        )
    with pytest.warns(InputChannelsAdapted, match="adapted to 4: conv1_conv's kernel repeated over 4 channels and scaled by 3/4"):
        _, four = flaxzoo.ResNet50(include_top=False, weights=resnet50_h5, input_shape=(*shape, 4), adapt_input_channels=True)
    k = kernel(rgb)
    np.testing.assert_array_equal(kernel(gray), k.sum(2, keepdims=True))
    np.testing.assert_array_equal(kernel(four), np.concatenate([k, k[:, :, :1]], 2) * np.float32(0.75))
    assert gray_model.input_shape == (*shape, 1) and gray_model.pretrained_channels == 3
    # nothing but the first kernel differs from the RGB model's
    for adapted in (gray, four):
        other = jax.tree_util.tree_map(np.array_equal, {**adapted, "params": {**adapted["params"], "conv1_conv": {}}},
                                       {**rgb, "params": {**rgb["params"], "conv1_conv": {}}})
        assert all(jax.tree_util.tree_leaves(other))

    x = kr.reference_inputs("resnet50", SIZE).mean(-1, keepdims=True)
    tolerances.assert_features_close(
        flax_apply(gray_model, gray, x), flax_apply(rgb_model, rgb, np.repeat(x, 3, -1)), rgb
    )


@pytest.mark.parametrize("name", ["resnet50"])
def test_a_backbone_adapts_too_and_an_rgb_file_on_one_channel_says_how_to_adapt_it(name):
    resnet50_h5 = str(kr.reference_h5(name, False))
    rgb_model, rgb = flaxzoo.ResNet50(weights=resnet50_h5, input_shape=(SIZE, SIZE, 3), features_only=True, out_indices=(1,))
    with pytest.warns(InputChannelsAdapted):
        model, variables = flaxzoo.ResNet50(
            weights=resnet50_h5, input_shape=(SIZE, SIZE, 1), features_only=True, out_indices=(1,), adapt_input_channels=True
        )
    x = kr.reference_inputs("resnet50", SIZE).mean(-1, keepdims=True)
    (ours,), (ref,) = flax_apply(model, variables, x), flax_apply(rgb_model, rgb, np.repeat(x, 3, -1))
    tolerances.assert_features_close(ours, ref, rgb)
    # Keras builds a 1-channel model for a file path and fails to load the RGB kernel; flaxzoo names the fix
    with pytest.raises(WeightFileError, match=r"conv1_conv.*\(7, 7, 1, 64\). The file is for RGB input: adapt_input_channels=True"):
        flaxzoo.ResNet50(include_top=False, weights=resnet50_h5, input_shape=(SIZE, SIZE, 1))


def with_random_constants(variables):
    """EfficientNet's Normalization mean and variance (weights from the file) drawn per channel, as in a published file."""
    if "constants" not in variables:
        return variables
    rng = np.random.default_rng(3)

    def draw(path, leaf):
        if path[-1].key == "mean":
            return rng.normal(0.0, 0.3, leaf.shape).astype(leaf.dtype)
        return rng.uniform(0.5, 2.0, leaf.shape).astype(leaf.dtype) if path[-1].key == "variance" else leaf

    return {**variables, "constants": jax.tree_util.tree_map_with_path(draw, variables["constants"])}


@pytest.mark.parametrize("name", tiers.REPRESENTATIVES)
def test_six_channels_of_an_image_twice_give_the_rgb_models_first_convolution(name):
    """What adapting changes ends at the first convolution (and its layer, ConvNeXt's stem): compared there;
    past it the two models are one, which the adapted variables' shapes (its own init's) confirm."""
    size = 2 * get_spec(name).min_size + 1
    model, variables = testing.random_variables(name, include_top=False, input_shape=(size, size, 3))
    variables = with_random_constants(variables)
    with pytest.warns(InputChannelsAdapted, match="repeated over 6 channels and scaled by 3/6"):
        adapted, six = flaxzoo.adapt_input_channels(model, variables, 6)
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), dict(tree))
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    assert shapes(jax.eval_shape(adapted.init, rngs, jax.ShapeDtypeStruct((1, size, size, 6), np.float32))) == shapes(six)

    _, (conv, _) = input_layers(flaxzoo.model_graph(model))
    x = kr.reference_inputs(name, size)

    def first(m, v, x):
        return jax.jit(lambda v, x: flaxzoo.extract(m, v, x, [conv])[conv])(v, x)

    with jax.default_matmul_precision("highest"):
        ours, ref = first(adapted, six, np.concatenate([x, x], -1)), first(model, variables, x)
    tolerances.assert_features_close(ours, ref, variables)


def test_in_model_normalization_constants_are_averaged_for_one_channel_and_kept_where_keras_drops_them():
    rgb = (0.485, 0.456, 0.406)
    np.testing.assert_allclose(adapt_channels(rgb, 1, kernel=False), [np.mean(rgb)])
    np.testing.assert_array_equal(adapt_channels(rgb, 4, kernel=False), [*rgb, rgb[0]])
    for name in ("efficientnet_v2b0", "convnext_tiny"):
        gray = dict(weights=None, include_top=False, input_shape=(SIZE, SIZE, 1))
        keras_like, _ = create_model(name, abstract=True, **gray)  # Keras: no ImageNet normalization on 1 channel
        adapted, _ = create_model(name, abstract=True, adapt_input_channels=True, **gray)
        assert adapted.per_channel(rgb) == (pytest.approx(np.mean(rgb)),)
        normalizations = lambda m: [n for n in flaxzoo.layer_names(m) if "normalization" in n and "layer" not in n]
        assert not normalizations(keras_like) and len(normalizations(adapted)) == 1, name
    # EfficientNet's file constants: averaged in the variables
    model, variables = testing.random_variables("efficientnetb0", include_top=False, input_shape=(SIZE, SIZE, 3))
    variables = with_random_constants(variables)
    with pytest.warns(InputChannelsAdapted, match="the preprocessing constants of normalization averaged"):
        _, gray = flaxzoo.adapt_input_channels(model, variables, 1)
    for key in ("mean", "variance"):
        np.testing.assert_allclose(gray["constants"]["normalization"][key], [np.mean(variables["constants"]["normalization"][key])], rtol=1e-6)


def test_adapting_needs_an_rgb_model_and_at_least_one_channel():
    model, variables = create_model("mobilenet", abstract=True, weights=None, include_top=False, input_shape=(SIZE, SIZE, 1))
    with pytest.raises(ValueError, match="adapts a model on 3 input channels; this one takes 1"):
        flaxzoo.adapt_input_channels(model, variables, 4)
    with pytest.raises(ValueError, match="at least 1"):
        adapt_channels(np.zeros((3, 3, 3, 8)), 0, kernel=True, axis=2)
