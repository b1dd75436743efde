"""flaxzoo: the Keras Applications ImageNet models as pure flax.linen modules with Keras-exact weights.

    model, variables = flaxzoo.ResNet50(weights="imagenet")
    probs = model.apply(variables, flaxzoo.resnet50.preprocess_input(images))

Every registered model's Keras-named constructor is an attribute of this package, and every
``keras.applications`` module has a mirror here (``flaxzoo.resnet``, ``flaxzoo.mobilenet``, ...): both are
made from the registry (:mod:`flaxzoo.zoo`), so a model file is all a new model needs.
"""

from flaxzoo._version import __version__
from flaxzoo import image, imagenet_utils
from flaxzoo.zoo import create_model, get_spec, list_models, mirror_modules, save_checkpoint, save_safetensors, specs
from flaxzoo.registry import ModelSpec
from flaxzoo.inference import fold_batchnorm, predict_fn
from flaxzoo.input_channels import InputChannelsAdapted, adapt_input_channels
from flaxzoo.features import (
    FeatureInfo,
    feature_info,
    features_only,
    layer_decay_optimizer,
    layer_decay_scales,
    layer_groups,
    param_groups,
)
from flaxzoo.xla_options import compiler_options
from flaxzoo.surgery import (
    TransferReport,
    Truncated,
    extract,
    freeze,
    frozen_layers,
    get_layer,
    layer_names,
    load_pretrained,
    model_graph,
    summary,
    trainable_mask,
    truncate,
)


def __getattr__(name: str):
    # flaxzoo.export (jax.export, jax2onnx) and flaxzoo.nnx (flax.nnx) load on first use
    if name in ("export", "nnx"):
        import importlib

        return importlib.import_module(f"flaxzoo.{name}")
    raise AttributeError(f"module 'flaxzoo' has no attribute {name!r}")


_CONSTRUCTORS = {spec.keras_name: spec.constructor for spec in specs()}
globals().update(_CONSTRUCTORS)
globals().update(mirror_modules())  # flaxzoo.resnet, ... (also in sys.modules: `import flaxzoo.resnet` works)

__all__ = [
    "__version__",
    "adapt_input_channels",
    "FeatureInfo",
    "InputChannelsAdapted",
    "ModelSpec",
    "TransferReport",
    "Truncated",
    "compiler_options",
    "create_model",
    "extract",
    "feature_info",
    "features_only",
    "fold_batchnorm",
    "freeze",
    "frozen_layers",
    "get_layer",
    "get_spec",
    "image",
    "imagenet_utils",
    "layer_decay_optimizer",
    "layer_decay_scales",
    "layer_groups",
    "layer_names",
    "list_models",
    "load_pretrained",
    "model_graph",
    "param_groups",
    "predict_fn",
    "save_checkpoint",
    "save_safetensors",
    "summary",
    "trainable_mask",
    "truncate",
    *sorted(_CONSTRUCTORS),
    *sorted(mirror_modules()),
]
