"""Backbones (``features_only``): every model's stages by stride, the feature maps against Keras'
``Model(inputs, [get_layer(l).output ...])``, and a backbone as a model like any other (training statistics,
freezing, folding, ``predict_fn``, nothing traced past its last stage, Keras-shaped errors).

Every model: its ``feature_info`` against the maps the backbone and ``extract`` give (abstract: nothing
compiled). Each family's smallest preset (``tiers.REPRESENTATIVES``, all with ``FLAXZOO_FULL_TESTS=1``):
parity with Keras at the odd size; the stage layers of the other presets differ from it by block counts only.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

import flaxzoo
from flaxzoo.features import GROUPS, STAGE_TABLE_HEAD, stage_row
from flaxzoo.models.common import nominal_stride
from flaxzoo.zoo import create_model, get_spec, list_models

import keras_reference as kr
import tiers
import tolerances
from test_parity import flax_apply, notop_reference, other_size


def odd_size(spec) -> int:
    """An odd size near the default (the default size's stride pattern, TF 'SAME' padding on odd inputs)."""
    return spec.default_size + (1 if spec.default_size % 2 == 0 else 2)


def readme_stage_rows() -> dict[str, str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- stages: `flaxzoo list --stages` -->\n(.+?)\n<!-- /stages -->", readme, re.S)
    assert block, "README.md has no stage table between the markers"
    head, rows = block.group(1)[: len(STAGE_TABLE_HEAD)], block.group(1)[len(STAGE_TABLE_HEAD) + 1 :].splitlines()
    assert head == STAGE_TABLE_HEAD
    return {row.split("|")[1].strip(): row for row in rows}


def test_readme_stage_table_has_a_row_per_model_in_registry_order():
    assert list(readme_stage_rows()) == [get_spec(n).keras_name for n in list_models()]


def abstract_backbone(name, out_indices=(1, 2, 3, 4), **kwargs):
    return create_model(name, abstract=True, weights=None, features_only=True, out_indices=out_indices, **kwargs)


@pytest.mark.parametrize("name", list_models())
def test_feature_info_matches_the_maps_at_the_default_and_an_odd_size(name):
    spec = get_spec(name)
    info = flaxzoo.feature_info(name)
    strides = [f.reduction for f in info]
    assert strides == sorted(set(strides)) and strides[-1] == 32 and set(strides) <= {2, 4, 8, 16, 32}
    assert [f.index for f in info] == [int(np.log2(s)) - 1 for s in strides]
    assert {1, 2, 3, 4} <= {f.index for f in info}  # the default out_indices hold for every model
    assert readme_stage_rows()[spec.keras_name] == stage_row(spec.keras_name, info), "paste `flaxzoo list --stages`"
    full, variables = create_model(name, abstract=True, weights=None, include_top=False)
    model = full.clone(feature_info=info)  # every stage (the backbone's own variables: the tests below)
    outputs = [f.layer for f in info if f.tap == "output"]
    for size in (spec.default_size, odd_size(spec)):
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        maps = jax.eval_shape(model.apply, variables, x)
        for entry, fmap in zip(info, maps):
            assert fmap.shape[-1] == entry.channels, entry
            assert nominal_stride(size, fmap.shape[1]) == entry.reduction, (entry, size, fmap.shape)
    # extract's shapes (at the odd size) are the backbone's: the same layers' outputs
    extracted = jax.eval_shape(lambda v, x: flaxzoo.extract(full, v, x, outputs), variables, x)
    for entry, fmap in zip(info, maps):
        if entry.tap == "output":
            assert extracted[entry.layer].shape == fmap.shape, entry


@pytest.mark.parity
@pytest.mark.parametrize("name", tiers.REPRESENTATIVES)
def test_features_only_equals_keras_multi_output_model(name):
    """``Model(inputs, [get_layer(l).output (or .input) for each stage])`` of the no-top Keras model."""
    spec = get_spec(name)
    size = other_size(spec)
    x = kr.reference_inputs(name, size)
    ref_model = notop_reference(name, size)
    every_stage = tuple(f.index for f in flaxzoo.feature_info(name))
    model, variables = spec.constructor(weights=kr.reference_h5(name, False), features_only=True, out_indices=every_stage)
    taps = [getattr(ref_model.get_layer(f.layer), f.tap) for f in model.feature_info]
    refs = kr.run(keras.Model(ref_model.input, taps), x)
    ours = flax_apply(model, variables, x)
    assert len(ours) == len(refs) == len(model.feature_info)
    for entry, mine, ref in zip(model.feature_info, ours, refs):
        assert mine.shape == ref.shape, entry
        tolerances.assert_features_close(mine, ref, variables)


@pytest.mark.parametrize("name", tiers.REPRESENTATIVES)
def test_nothing_after_the_last_stage_is_traced(name):
    """Fewer convolutions in the jitted program of ``out_indices=(1,)`` than in the whole no-top model's (1x1
    convolutions are matrix products on CPU), and only the variables of what runs."""
    spec = get_spec(name)
    x = jax.ShapeDtypeStruct((1, spec.default_size, spec.default_size, 3), jnp.float32)

    def convolutions(model, variables):
        text = jax.jit(model.apply).lower(variables, x).as_text()
        return text.count("convolution(") + text.count("dot_general")

    stage1, stage1_variables = abstract_backbone(name, (1,))
    full, full_variables = create_model(name, abstract=True, weights=None, include_top=False)
    assert 0 < convolutions(stage1, stage1_variables) < convolutions(full, full_variables)
    count = lambda tree: len(jax.tree_util.tree_leaves(tree))  # noqa: E731
    assert 0 < count(stage1_variables) < count(full_variables)


def test_a_backbone_trains_freezes_folds_and_predicts_like_a_model():
    model, variables = flaxzoo.MobileNet(weights=None, features_only=True, out_indices=(1, 2), input_shape=(64, 64, 3))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    maps = model.apply(variables, x)
    assert [m.shape for m in maps] == [(2, 16, 16, 128), (2, 8, 8, 256)]

    # training: the statistics of every batch norm that runs, and only those (the variables hold only those)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert set(updates["batch_stats"]) == set(variables["batch_stats"])
    assert "conv_pw_5_bn" in variables["batch_stats"] and "conv_pw_6_bn" not in variables["batch_stats"]
    assert all(
        not np.allclose(updates["batch_stats"][k]["mean"], variables["batch_stats"][k]["mean"])
        for k in variables["batch_stats"]
    )

    frozen = flaxzoo.freeze(model, "conv_pw_1_relu")
    assert frozen.feature_info == model.feature_info
    mask = flaxzoo.trainable_mask(frozen, variables)
    assert not mask["conv1"]["kernel"] and mask["conv_pw_5"]["kernel"]

    folded, folded_variables = flaxzoo.fold_batchnorm(model, variables)
    for a, b in zip(folded.apply(folded_variables, x), maps):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))

    f, f_variables = flaxzoo.predict_fn(model, variables, dtype=jnp.bfloat16, fold_bn=True)
    assert [m.shape for m in f(f_variables, x)] == [m.shape for m in maps]


def test_features_only_of_a_model_you_have_keeps_its_weights():
    """``flaxzoo.features_only(model, variables)``: any head (a top model here), the same maps as a backbone
    built from the same weights, and only the variables it runs."""
    model, variables = flaxzoo.MobileNet(weights=None, alpha=0.25, input_shape=(128, 128, 3), seed=3)
    backbone, backbone_variables = flaxzoo.features_only(model, variables, out_indices=(2, 4))
    assert "conv_preds" not in backbone_variables["params"]
    x = np.random.default_rng(1).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    truncated = flaxzoo.extract(model, variables, x, ["conv_pw_5_relu", "conv_pw_13_relu"])
    for fmap, layer in zip(backbone.apply(backbone_variables, x), ["conv_pw_5_relu", "conv_pw_13_relu"]):
        np.testing.assert_array_equal(fmap, truncated[layer])
    assert [f.layer for f in flaxzoo.features_only(model).feature_info] == [
        "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu"
    ]  # fmt: skip


def test_feature_info_takes_constructor_arguments():
    narrow = flaxzoo.feature_info("mobilenet_v2", alpha=0.35)
    assert [f.channels for f in narrow] == [48, 48, 96, 192, 1280]  # _make_divisible rounds up to 8; 1280 stays
    assert [f.layer for f in narrow] == [f.layer for f in flaxzoo.feature_info("mobilenet_v2")]
    with pytest.raises(TypeError, match="registered model's name"):
        flaxzoo.feature_info(create_model("resnet50", abstract=True, weights=None)[0], alpha=1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pooling="avg"), r"returns unpooled feature maps \(pooling='avg'\)"),
        (dict(include_top=True), r"it has no top \(include_top=True\)"),
        (dict(out_indices=(0, 5)), r"out_indices=\(0, 5\): resnet50 has the stages \(0, 1, 2, 3, 4\)"),
        (dict(out_indices=()), r"out_indices=\(\)"),
        (dict(features_only=False, out_indices=(1,)), r"out_indices=\(1,\) needs features_only=True"),
    ],
)
def test_backbone_arguments_are_checked_with_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        flaxzoo.ResNet50(weights=None, **{"features_only": True, **kwargs})


def test_convnext_has_no_stride_2_stage_and_taps_its_residual_sums():
    info = flaxzoo.feature_info("convnext_tiny")
    assert [f.index for f in info] == [1, 2, 3, 4]
    assert [f.tap for f in info] == ["input", "input", "input", "output"]
    with pytest.raises(ValueError, match=r"has the stages \(1, 2, 3, 4\)"):
        create_model("convnext_tiny", abstract=True, weights=None, features_only=True, out_indices=(0, 1))


@pytest.mark.parametrize("name", tiers.REPRESENTATIVES)
def test_param_groups_label_every_parameter_once_in_stage_order(name):
    model, variables = create_model(name, abstract=True, weights=None)
    labels = flaxzoo.param_groups(model, variables)
    params = variables["params"]
    assert jax.tree_util.tree_structure(labels) == jax.tree_util.tree_structure(
        jax.tree_util.tree_map(lambda _: "", dict(params))
    )
    used = set(jax.tree_util.tree_leaves(labels))
    # VGG's stride-32 stage is block5's pooling alone: no parameters
    assert used == set(GROUPS) - ({"stage4"} if name.startswith("vgg") else set())
    # along the weighted layers in Keras' order, the stages follow each other (an unnamed NASNet cell's
    # layers may be listed among the next cell's; Keras orders by depth)
    graph = flaxzoo.model_graph(model)
    groups = flaxzoo.layer_groups(model, graph)
    weighted = [groups[layer.name] for layer in graph.weighted_layers]
    assert weighted[0] == "stem" and weighted[-1] == "head"
    firsts = [weighted.index(g) for g in GROUPS if g in used]
    assert firsts == sorted(firsts)


def test_layer_decay_scales_updates_by_stage_from_the_head_down():
    model, variables = flaxzoo.MobileNet(weights=None, alpha=0.25, input_shape=(32, 32, 3))
    tx = flaxzoo.layer_decay_optimizer(optax.sgd(1.0), model, variables, decay=0.5)
    grads = jax.tree_util.tree_map(jnp.ones_like, variables["params"])
    updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
    labels = flaxzoo.param_groups(model, variables)
    expected = {"head": 1.0, "stage4": 0.5, "stage3": 0.25, "stage2": 0.125, "stage1": 0.0625, "stem": 0.03125}
    for update, label in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(labels)):
        np.testing.assert_array_equal(update, -expected[label])
    assert labels["conv1"]["kernel"] == "stem" and labels["conv_preds"]["kernel"] == "head"
    with pytest.raises(ValueError, match="layer decay must be in"):
        flaxzoo.layer_decay_scales(model, variables, decay=1.5)
