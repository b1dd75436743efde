"""Model surgery against Keras: ``model.layers``, ``get_layer(name).output``, ``layers[:249]`` /
``trainable=False``, ``model.summary()``, ``input_tensor``, and a pretrained backbone inside a user's module."""

import re

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from flax import linen as nn

import flaxzoo
from flaxzoo import cli
from flaxzoo.zoo import create_model, get_spec, list_models

import keras_reference as kr
import tiers
import tolerances
from test_parity import assert_features_close, flax_apply, notop_reference, other_size

MODELS = list_models()
VARIANTS = pytest.mark.parametrize("include_top", [True, False], ids=["top", "notop"])


def keras_model(name, include_top):
    """Keras' model as the registry describes it, built right after ``clear_session`` (auto names are a fresh
    session's) and never initialised: names, classes, wiring, shapes and counts are all these tests read."""
    return kr.structure_model(name, include_top)


def abstract_model(name, include_top=False):
    return create_model(name, abstract=True, weights=None, include_top=include_top)[0]


def keras_inbound(layer):
    nodes = layer._inbound_nodes
    return tuple(t._keras_history.operation.name for t in nodes[0].input_tensors) if nodes else ()


@VARIANTS
@pytest.mark.parametrize("name", MODELS)
def test_layer_names_and_wiring_equal_keras_model_layers(name, include_top):
    """Same names, classes and inbound layers, index for index: Keras layer indices mean the same here."""
    ref = keras_model(name, include_top)
    model = abstract_model(name, include_top)
    assert flaxzoo.layer_names(model) == [layer.name for layer in ref.layers]
    assert [(layer.keras_class, layer.inbound) for layer in flaxzoo.model_graph(model).layers] == [
        (type(layer).__name__, keras_inbound(layer)) for layer in ref.layers
    ]
    assert flaxzoo.get_layer(model, index=-1).name == ref.layers[-1].name


def sample_layers(name):
    """Three layers spread over the depth: at 1/4, 1/2 and 3/4 of the no-top layer list."""
    names = flaxzoo.layer_names(abstract_model(name))
    return [names[len(names) * k // 4] for k in (1, 2, 3)]


@pytest.mark.parity
@pytest.mark.parametrize("name", tiers.REPRESENTATIVES)
def test_extract_and_truncate_equal_keras_intermediate_outputs(name):
    """Keras' ``Model(inputs, get_layer(name).output)`` for three layers at once, and one truncated model."""
    spec = get_spec(name)
    layers = sample_layers(name)
    size = other_size(spec)
    ref_model = notop_reference(name, size)
    submodel = keras.Model(ref_model.input, [ref_model.get_layer(n).output for n in layers])
    x = kr.reference_inputs(name, size)
    refs = kr.run(submodel, x)
    model, variables = spec.constructor(include_top=False, weights=kr.reference_h5(name, False))

    with jax.default_matmul_precision("highest"):
        outputs = jax.jit(lambda v, x: flaxzoo.extract(model, v, x, layers))(variables, x)
    assert set(outputs) == set(layers)
    for layer, ref in zip(layers, refs):
        assert_features_close(outputs[layer], ref, variables)
    assert_features_close(flax_apply(flaxzoo.truncate(model, layers[1]), variables, x), refs[1], variables)


@pytest.mark.parametrize("name", tiers.REPRESENTATIVES)
def test_truncated_function_stops_at_the_layer(name):
    """Fewer convolutions in the jitted program (1x1 ones are matrix products on CPU): nothing after the
    cut is traced."""
    model = abstract_model(name)
    size = other_size(get_spec(name))
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def convolutions(module):
        text = jax.jit(module.apply).lower(variables, x).as_text()
        return text.count("convolution(") + text.count("dot_general")

    full = convolutions(model)
    cuts = [convolutions(flaxzoo.truncate(model, layer)) for layer in sample_layers(name)]
    assert 0 < cuts[0] < cuts[1] < cuts[2] < full


def test_unknown_layer_names_are_a_clear_error():
    model = abstract_model("resnet50", False)
    with pytest.raises(ValueError, match="No such layer: conv9_block1_out"):
        flaxzoo.truncate(model, "conv9_block1_out")
    with pytest.raises(ValueError, match="conv9"):
        flaxzoo.frozen_layers(model, ["conv1_conv", "conv9"])


# ------------------------------------------------------------------------------------------------
# Freezing
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inception_v3"])  # runs in the inception_v3 test group
def test_frozen_249_on_inception_v3_is_keras_layers_249(name, capsys):
    """Keras' fine-tuning example: ``for layer in model.layers[:249]: layer.trainable = False``."""
    ref = keras_model(name, False)
    model, variables = create_model(name, abstract=True, weights=None, include_top=False)
    frozen = flaxzoo.frozen_layers(model, 249)
    assert frozen == {layer.name for layer in ref.layers[:249]}
    assert ref.layers[248].name == "mixed8" and frozen == flaxzoo.frozen_layers(model, "mixed8")

    trainable_before = [layer.trainable for layer in ref.layers]
    try:
        for layer in ref.layers[:249]:
            layer.trainable = False
        keras_trainable = sum(int(np.prod(w.shape)) for w in ref.trainable_weights)
        keras_trainable_arrays = len(ref.trainable_weights)
    finally:
        for layer, trainable in zip(ref.layers, trainable_before):
            layer.trainable = trainable

    mask = flaxzoo.trainable_mask(model, variables, frozen=249)
    assert sum(jax.tree_util.tree_leaves(mask)) == keras_trainable_arrays
    sizes = [int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"])]
    assert sum(n for n, m in zip(sizes, jax.tree_util.tree_leaves(mask)) if m) == keras_trainable

    assert cli.main(["summary", name, "--notop", "--freeze-until", "249"]) == 0
    out = capsys.readouterr().out
    assert f"Trainable params: {keras_trainable:,}" in out
    assert f"Total params: {ref.count_params():,}" in out


@pytest.mark.parametrize("name", ["inception_v3"])
def test_masked_training_step_leaves_frozen_layers_bit_identical(name):
    """Frozen params and frozen BN statistics do not move (BN runs in inference mode, also under
    train=True); every other parameter and statistic does."""
    model, variables = flaxzoo.InceptionV3(include_top=True, weights=None, classes=7, input_shape=(75, 75, 3))
    model = flaxzoo.freeze(model, 249)
    frozen = flaxzoo.frozen_layers(model, 249)
    labels = jax.tree_util.tree_map(lambda t: "train" if t else "frozen", flaxzoo.trainable_mask(model, variables))
    tx = optax.multi_transform({"train": optax.sgd(0.1, momentum=0.9), "frozen": optax.set_to_zero()}, labels)
    state = tx.init(variables["params"])
    x = jax.random.normal(jax.random.key(0), (4, 75, 75, 3))
    y = jnp.arange(4) % 7

    @jax.jit
    def step(variables, state):
        def loss(params):
            probs, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return -jnp.mean(jnp.log(probs[jnp.arange(4), y] + 1e-9)), updates

        (_, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        deltas, state = tx.update(grads, state, variables["params"])
        return {"params": optax.apply_updates(variables["params"], deltas), **updates}, state

    new, _ = step(variables, state)
    moved = 0
    for collection in ("params", "batch_stats"):
        for layer, values in variables[collection].items():
            for var, before in values.items():
                after = new[collection][layer][var]
                if layer in frozen:
                    np.testing.assert_array_equal(after, before, err_msg=f"{collection}/{layer}/{var}")
                else:
                    assert not np.array_equal(after, before), f"{collection}/{layer}/{var} did not move"
                    moved += 1
    assert moved > 0


def test_trainable_mask_of_a_backbone_inside_a_larger_model():
    backbone, _ = create_model("vgg16", abstract=True, weights=None, include_top=False)
    variables = {"params": {"backbone": jax.eval_shape(backbone.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"],
                            "head": {"kernel": jnp.zeros((512, 3))}}}  # fmt: skip
    mask = flaxzoo.trainable_mask(backbone, variables, frozen="block4_pool", at="backbone")
    assert mask["head"] == {"kernel": True}
    assert not any(jax.tree_util.tree_leaves(mask["backbone"]["block4_conv3"]))
    assert all(jax.tree_util.tree_leaves(mask["backbone"]["block5_conv1"]))


# ------------------------------------------------------------------------------------------------
# summary, input_tensor, transfer
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "mobilenet", "nasnet_mobile"])
def test_summary_matches_keras_layers_shapes_and_counts(name):
    ref = keras_model(name, False)
    text = flaxzoo.summary(abstract_model(name), print_fn=None)
    rows = [line for line in text.splitlines() if re.match(r"\s*\d+  ", line)]
    assert len(rows) == len(ref.layers)
    for row, layer in zip(rows, ref.layers):
        assert f"{layer.name} ({type(layer).__name__})" in row
        assert str(tuple(layer.output.shape)) in row
    assert f"Total params: {ref.count_params():,}" in text
    trainable = sum(int(np.prod(w.shape)) for w in ref.trainable_weights)
    assert f"Trainable params: {trainable:,}" in text
    assert f"Non-trainable params: {ref.count_params() - trainable:,}" in text


@pytest.mark.parametrize("name", ["inception_v3"])
def test_input_tensor_bypasses_the_default_shape_check_like_keras(name):
    """Keras' example: InceptionV3 with its top on a 224x224 input tensor (a ShapeDtypeStruct or an array)."""
    spec = get_spec(name)
    path = kr.reference_h5(name, True, spec.default_size)
    tensor = jax.ShapeDtypeStruct((None, 224, 224, 3), jnp.float32)
    model, variables = flaxzoo.InceptionV3(input_tensor=tensor, weights=str(path))
    keras.backend.clear_session()
    ref_model = keras.applications.InceptionV3(input_tensor=keras.Input((224, 224, 3)), weights=str(path))
    x = kr.reference_inputs("inception_v3", 224)
    tolerances.assert_probabilities_close(flax_apply(model, variables, x), kr.run(ref_model, x), variables)
    with pytest.raises(ValueError, match=r"should be \(299, 299, 3\)"):
        spec.constructor(input_shape=(224, 224, 3), weights="imagenet")
    assert model.input_shape == (224, 224, 3)
    with flaxzoo.models.common.abstract_variables():
        model_b, _ = flaxzoo.InceptionV3(input_tensor=np.zeros((2, 224, 224, 3), np.float32), weights=None)
    assert model_b.input_shape == (224, 224, 3)
    with pytest.raises(ValueError, match="input_tensor"):
        flaxzoo.InceptionV3(input_tensor=np.zeros((224, 224, 3)), weights=None)


class Classifier(nn.Module):
    """Keras' fine-tuning example head on a pretrained backbone."""

    backbone: nn.Module
    classes: int = 200

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.backbone(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.relu(nn.Dense(1024, name="fc")(x))
        return nn.softmax(nn.Dense(self.classes, name="head")(x))


def test_pretrained_backbone_inside_a_user_module():
    backbone, pretrained = flaxzoo.MobileNet(alpha=0.25, include_top=False, weights=str(kr.SHARED_DATA / "mobilenet_2_5_224_tf_no_top.h5"))
    model = Classifier(backbone.clone(name="backbone"))
    fresh = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    variables, report = flaxzoo.load_pretrained(fresh, pretrained, at="backbone")
    assert len(report.loaded) == sum(len(jax.tree_util.tree_leaves(v)) for v in pretrained.values())
    assert sorted(report.not_in_pretrained) == ["params/fc/bias", "params/fc/kernel", "params/head/bias", "params/head/kernel"]
    assert report.not_in_target == ()
    x = kr.reference_inputs("mobilenet", 224)
    features = jax.jit(backbone.apply)(pretrained, x)
    inner = jax.jit(nn.apply(lambda m, x: m.backbone(x), model))(variables, x)
    # the same layers and weights in another program: XLA may fuse them otherwise
    tolerances.assert_features_close(inner, features, pretrained)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 200)
