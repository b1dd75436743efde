"""Blocks written as their own ``nn.Module`` (the Flax habit, as a ConvNeXt or MBConv block class), holding
Keras-named layers: the layer graph, freezing, folding, truncation, summary and conversion from a Keras file
work as for layers written inline in the model, against the equivalent Keras functional model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from flax import linen as nn

import flaxzoo
from flaxzoo import graph as graph_lib
from flaxzoo.layers import (
    Activation,
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    GlobalAveragePooling2D,
    InputLayer,
)
from flaxzoo.models.common import Application
from flaxzoo.weights.convert import convert_h5

import keras_reference as kr
import tolerances

SIZE, CLASSES = 12, 4


class ConvBN(nn.Module):
    """conv → batch norm → relu, the layers named ``{prefix}_conv`` / ``_bn`` / ``_relu``."""

    filters: int
    prefix: str
    depthwise: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.depthwise:
            x = DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{self.prefix}_conv")(x)
        else:
            x = Conv2D(self.filters, 3, padding="same", name=f"{self.prefix}_conv")(x)
        x = BatchNormalization(name=f"{self.prefix}_bn")(x, train)  # training passed positionally
        return Activation("relu", name=f"{self.prefix}_relu")(x)


class Residual(nn.Module):
    """A block of blocks (module paths three deep) with its own Keras layer, the residual add."""

    prefix: str

    def setup(self):  # setup-defined submodules: blocks named by attribute, the Keras layer by name=
        self.first = ConvBN(8, f"{self.prefix}_a", depthwise=True)
        self.second = ConvBN(8, f"{self.prefix}_b")
        self.add = Add(name=f"{self.prefix}_add")

    def __call__(self, x, train: bool = False):
        return self.add([x, self.second(self.first(x, train), train)])


class BlockNet(Application):
    """Inline stem and head, Keras layers inside block modules in between."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = InputLayer(name="input_layer")(x)
        x = Conv2D(8, 3, strides=2, use_bias=False, name="stem_conv")(x)
        x = BatchNormalization(name="stem_bn")(x, training=train)
        x = Activation("relu", name="stem_relu")(x)
        x = ConvBN(8, "block1", name="block1")(x, train)
        x = Residual("block2", name="stage2")(x, train)  # the module's name is not a Keras name
        x = GlobalAveragePooling2D(name="avg_pool")(x)
        return Dense(self.classes, name="predictions")(x)


def build_model(**kwargs) -> BlockNet:
    return BlockNet(classes=CLASSES, input_shape=(SIZE, SIZE, 3), default_size=SIZE, **kwargs)


def keras_blocknet() -> keras.Model:
    """The same network as a Keras functional model (logits), random weights, statistics far from (0, 1)."""
    L = keras.layers

    def conv_bn(x, prefix, depthwise=False):
        conv = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{prefix}_conv") if depthwise else L.Conv2D(
            8, 3, padding="same", name=f"{prefix}_conv"
        )
        return L.Activation("relu", name=f"{prefix}_relu")(L.BatchNormalization(name=f"{prefix}_bn")(conv(x)))

    keras.backend.clear_session()
    inputs = keras.Input((SIZE, SIZE, 3), name="input_layer")
    x = L.Conv2D(8, 3, strides=2, use_bias=False, name="stem_conv")(inputs)
    x = L.Activation("relu", name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    x = conv_bn(x, "block1")
    x = L.Add(name="block2_add")([x, conv_bn(conv_bn(x, "block2_a", depthwise=True), "block2_b")])
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return kr.randomize(keras.Model(inputs, L.Dense(CLASSES, name="predictions")(x)), seed=1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(Keras model, its legacy .h5 written by Keras, inputs)."""
    model = keras_blocknet()
    path = kr.save_legacy_h5(model, tmp_path_factory.mktemp("blocks") / "blocknet.h5")
    return model, path, kr.images(2, SIZE, seed=3) / 127.5 - 1.0


@pytest.fixture(scope="module")
def converted(reference):
    """(model, variables converted from the Keras file)."""
    model = build_model()
    variables, _ = convert_h5(reference[1], flaxzoo.model_graph(model))
    return model, jax.tree_util.tree_map(jnp.asarray, variables)


def apply(model, variables, x, **kwargs):
    with jax.default_matmul_precision("highest"):
        return model.apply(variables, x, **kwargs)


def keras_inbound(layer):
    nodes = layer._inbound_nodes
    return tuple(t._keras_history.operation.name for t in nodes[0].input_tensors) if nodes else ()


def test_layer_names_order_wiring_and_paths_equal_the_keras_model(reference):
    model, _, _ = reference
    graph = flaxzoo.model_graph(build_model())
    assert graph.names == [layer.name for layer in model.layers]
    assert [(layer.keras_class, layer.inbound) for layer in graph.layers] == [
        (type(layer).__name__, keras_inbound(layer)) for layer in model.layers
    ]
    paths = {layer.name: layer.path for layer in graph.layers}
    assert paths["stem_conv"] == ("stem_conv",)
    assert paths["block1_bn"] == ("block1", "block1_bn")
    assert paths["block2_add"] == ("stage2", "block2_add")
    assert paths["block2_a_conv"] == ("stage2", "first", "block2_a_conv")
    # no block module is a layer, and a layer's variables are found at its path
    assert not {"block1", "stage2", "first", "second"} & set(graph.names)
    assert set(graph.layer_variables("block2_b_bn")) == {"params", "batch_stats"}
    assert [layer.name for layer in graph.weighted_layers] == [layer.name for layer in model.layers if layer.weights]
    assert flaxzoo.get_layer(build_model(), "block2_b_conv").path == ("stage2", "second", "block2_b_conv")


def test_conversion_from_a_keras_file_puts_weights_at_module_paths_and_outputs_equal_keras(reference, converted):
    keras_model, _, x = reference
    model, variables = converted
    kernel = keras_model.get_layer("block2_b_conv").kernel
    np.testing.assert_array_equal(variables["params"]["stage2"]["second"]["block2_b_conv"]["kernel"], kernel)
    stats = keras_model.get_layer("block1_bn").moving_variance
    np.testing.assert_array_equal(variables["batch_stats"]["block1"]["block1_bn"]["var"], stats)
    tolerances.assert_features_close(apply(model, variables, x), kr.run(keras_model, x), variables)


def test_training_mode_statistics_at_module_paths_equal_keras(reference, converted):
    keras_model, _, x = reference
    model, variables = converted
    ref_out, ref_stats = kr.run_training(keras_model, x)
    out, updates = jax.jit(lambda v, x: apply(model, v, x, train=True, mutable=["batch_stats"]))(variables, x)
    tolerances.assert_features_close(out, ref_out, variables)
    graph = flaxzoo.model_graph(model)
    for name, values in ref_stats.items():
        ours = graph_lib.subtree(updates["batch_stats"], graph.by_name[name].path)
        for var, value in values.items():
            tolerances.assert_features_close(ours[var], value, variables)


FROZEN = ("stem_conv", "stem_bn", "block1_conv", "block1_bn", "block2_a_bn")


def train_step(model, variables, x):
    """One SGD step through ``trainable_mask``; returns the new variables (params and batch_stats)."""
    mask = flaxzoo.trainable_mask(model, variables)
    labels = jax.tree_util.tree_map(lambda t: "train" if t else "frozen", mask)
    tx = optax.multi_transform({"train": optax.sgd(0.1), "frozen": optax.set_to_zero()}, labels)

    def loss(params):
        logits, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0]), updates

    (_, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    deltas, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
    return {"params": optax.apply_updates(variables["params"], deltas), **updates}


def test_frozen_layers_inside_blocks_keep_their_statistics_and_parameters(converted, reference):
    model, variables = converted
    model = flaxzoo.freeze(model, list(FROZEN))
    graph = flaxzoo.model_graph(model)
    frozen_paths = {graph.by_name[name].path for name in FROZEN}
    mask = flaxzoo.trainable_mask(model, variables)
    new = jax.jit(lambda v, x: train_step(model, v, x))(variables, reference[2])
    moved = 0
    for collection in ("params", "batch_stats"):
        flat_mask = dict(jax.tree_util.tree_flatten_with_path(mask)[0]) if collection == "params" else {}
        for path, before in jax.tree_util.tree_flatten_with_path(variables[collection])[0]:
            keys = tuple(k.key for k in path)
            after = graph_lib.subtree(new[collection], keys)
            if keys[:-1] in frozen_paths:
                np.testing.assert_array_equal(after, before, err_msg=f"{collection}/{keys}")
                if collection == "params":
                    assert not flat_mask[path], keys
            else:
                assert not np.array_equal(after, before), f"{collection}/{keys} did not move"
                assert collection != "params" or flat_mask[path], keys
                moved += 1
    assert moved > 0


def test_trainable_mask_at_a_backbone_path_and_for_a_given_frozen_set(converted):
    model, variables = converted
    mask = flaxzoo.trainable_mask(model, {"params": {"backbone": variables["params"], "head": {"kernel": 0}}},
                                  frozen="block1_relu", at="backbone")  # fmt: skip
    assert mask["head"] == {"kernel": True}
    assert not any(jax.tree_util.tree_leaves(mask["backbone"]["block1"]))
    assert all(jax.tree_util.tree_leaves(mask["backbone"]["stage2"]))


class Wrapper(nn.Module):
    """A user's module around a frozen backbone: the backbone's modes reach its blocks from inside."""

    backbone: nn.Module

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(2, name="head")(self.backbone(x, train=train))


def test_a_frozen_backbone_inside_a_user_module_keeps_its_block_statistics(converted, reference):
    model, variables = converted
    wrapper = Wrapper(flaxzoo.freeze(model, "block1_relu").clone(name="backbone"))
    fresh = wrapper.init(jax.random.key(0), reference[2])
    loaded, _ = flaxzoo.load_pretrained(fresh, variables, at="backbone")
    _, updates = wrapper.apply(loaded, reference[2], train=True, mutable=["batch_stats"])
    stats, before = updates["batch_stats"]["backbone"], variables["batch_stats"]
    np.testing.assert_array_equal(stats["block1"]["block1_bn"]["mean"], before["block1"]["block1_bn"]["mean"])
    second = stats["stage2"]["second"]["block2_b_bn"]["mean"], before["stage2"]["second"]["block2_b_bn"]["mean"]
    assert not np.array_equal(*second)


def test_folding_batch_norms_inside_blocks_equals_the_model(converted, reference):
    model, variables = converted
    x = reference[2]
    folded_model, folded = flaxzoo.fold_batchnorm(model, variables)
    assert folded_model.folded == {"stem_bn", "block1_bn", "block2_a_bn", "block2_b_bn"}
    assert "batch_stats" not in folded  # every batch norm here follows a convolution
    assert set(folded["params"]["stage2"]["first"]["block2_a_bn"]) == {"bias"}
    tolerances.assert_features_close(apply(folded_model, folded, x), apply(model, variables, x), variables)
    with pytest.raises(ValueError, match="stem_bn: a batch norm folded for inference cannot train"):
        folded_model.apply(folded, x, train=True, mutable=["batch_stats"])


def test_truncate_and_extract_at_layers_inside_blocks_equal_keras(reference, converted):
    keras_model, _, x = reference
    model, variables = converted
    names = ["block1_bn", "block2_a_relu", "block2_add"]
    refs = kr.run(keras.Model(keras_model.input, [keras_model.get_layer(n).output for n in names]), x)
    outputs = flaxzoo.extract(model, variables, x, names)
    for name, ref in zip(names, refs):
        tolerances.assert_features_close(outputs[name], ref, variables)
    tolerances.assert_features_close(apply(flaxzoo.truncate(model, "block2_a_relu"), variables, x), refs[1], variables)


def test_summary_counts_layers_inside_blocks_as_keras_does_frozen_included(reference):
    keras_model, _, _ = reference
    model = flaxzoo.freeze(build_model(), list(FROZEN))
    text = flaxzoo.summary(model, print_fn=None)
    rows = [line for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == len(keras_model.layers)
    for row, layer in zip(rows, keras_model.layers):
        assert f"{layer.name} ({type(layer).__name__})" in row
        assert str(tuple(layer.output.shape)) in row
    trainable_before = [layer.trainable for layer in keras_model.layers]
    try:
        for layer in keras_model.layers:
            layer.trainable = layer.name not in FROZEN
        trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    finally:
        for layer, t in zip(keras_model.layers, trainable_before):
            layer.trainable = t
    assert f"Total params: {keras_model.count_params():,}" in text
    assert f"Trainable params: {trainable:,}" in text


class Outer(Application):
    """A model within a model: the layer graph lists the inner model's layers as the outer's own."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return Dense(2, name="outer_head")(build_model(name="inner")(x, train=train))


def test_an_outer_models_frozen_and_folded_sets_reach_the_layers_of_a_model_within_it(converted, reference):
    _, variables = converted
    x = reference[2]
    outer = Outer(input_shape=(SIZE, SIZE, 3), default_size=SIZE)
    graph = flaxzoo.model_graph(outer)
    assert graph.by_name["block1_bn"].path == ("inner", "block1", "block1_bn")
    fresh = jax.device_get(outer.init(jax.random.key(0), x))
    outer_variables, report = flaxzoo.load_pretrained(fresh, variables, at="inner")
    assert sorted(report.not_in_pretrained) == ["params/outer_head/bias", "params/outer_head/kernel"]

    frozen = flaxzoo.freeze(outer, "block1_relu")
    _, updates = frozen.apply(outer_variables, x, train=True, mutable=["batch_stats"])
    inner_stats, before = updates["batch_stats"]["inner"], variables["batch_stats"]
    np.testing.assert_array_equal(inner_stats["block1"]["block1_bn"]["var"], before["block1"]["block1_bn"]["var"])
    second = inner_stats["stage2"]["second"]["block2_b_bn"]["var"], before["stage2"]["second"]["block2_b_bn"]["var"]
    assert not np.array_equal(*second)
    assert not any(jax.tree_util.tree_leaves(flaxzoo.trainable_mask(frozen, outer_variables)["inner"]["block1"]))

    folded_model, folded = flaxzoo.fold_batchnorm(outer, outer_variables)
    assert set(folded["params"]["inner"]["block1"]["block1_bn"]) == {"bias"}
    ref = apply(outer, outer_variables, x)
    tolerances.assert_features_close(apply(folded_model, folded, x), ref, outer_variables)
