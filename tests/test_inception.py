"""What is particular to InceptionResNetV2 beyond the registry-wide tests (parity, layer names and wiring
in test_surgery): its residual scales."""

import jax
from flax import linen as nn

from flaxzoo.zoo import create_model, registered_graph
from flaxzoo.layers import CustomScaleLayer

import keras_reference as kr

def test_inception_resnet_v2_residual_scales():
    """x + s·up with s = 0.17 (block35 ×10), 0.1 (block17 ×20), 0.2 (block8 ×9), 1.0 (block8_10, no relu)."""
    model, variables = create_model("inception_resnet_v2", abstract=True, weights=None, include_top=False)
    scales = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, CustomScaleLayer):
            scales[context.module.name] = context.module.scale
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 75, 75, 3), "float32"))
    keras_layers = kr.reference_model("inception_resnet_v2", False).layers
    assert scales == {layer.name: layer.scale for layer in keras_layers if type(layer).__name__ == "CustomScaleLayer"}

    graph = registered_graph("inception_resnet_v2", include_top=False)
    blocks = [f"block35_{i}" for i in range(1, 11)] + [f"block17_{i}" for i in range(1, 21)]
    blocks += [f"block8_{i}" for i in range(1, 11)]
    scale_layers = [layer for layer in graph.layers if layer.keras_class == "CustomScaleLayer"]
    assert [layer.inbound[1] for layer in scale_layers] == [f"{block}_conv" for block in blocks]  # [x, up]
    assert [scales[layer.name] for layer in scale_layers] == [0.17] * 10 + [0.1] * 20 + [0.2] * 9 + [1.0]
    assert "block8_10_ac" not in graph.names
    assert graph.layers[graph.names.index("conv_7b")].inbound == (scale_layers[-1].name,)
