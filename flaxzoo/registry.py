"""The model registry: one :class:`ModelSpec` per Keras application.

A model file registers its Keras-named constructor with ``@register_model(...)``; the spec carries
everything the rest of flaxzoo (weights, CLI, tests, benchmarks) needs to know about the model, so
nothing else keeps a list of models.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

# Every published Keras weight file lives under this host; FLAXZOO_BASE_URL replaces it
# (a mirror, or a local server in tests), keeping the path below it.
DEFAULT_BASE_URL = "https://storage.googleapis.com"
KERAS_WEIGHTS_PATH = "tensorflow/keras-applications"


def base_url() -> str:
    return os.environ.get("FLAXZOO_BASE_URL", DEFAULT_BASE_URL).rstrip("/")


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """A published Keras weight file: its cache name, its path on the storage host, its md5."""

    fname: str
    path: str
    md5: str | None  # None: Keras publishes no hash (MobileNet)

    @property
    def url(self) -> str:
        return f"{base_url()}/{self.path}"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str  # registry key, e.g. "resnet50"
    keras_name: str  # the constructor's name, e.g. "ResNet50"
    module: str  # the Keras-mirroring module, e.g. "flaxzoo.resnet50"
    default_size: int
    min_size: int
    preprocess_mode: str  # imagenet_utils.preprocess_input mode: caffe, tf or torch
    params: int  # Keras count_params(), include_top=True at the default size
    params_notop: int
    depth: int  # weighted layers (the "Depth" column of keras.io)
    top1: float  # ImageNet validation accuracy, as published on keras.io
    top5: float
    flops: int  # 2 x multiply-accumulates of the convolutions and dense layers, one image, default size
    weights: Mapping[str, WeightFile]  # variant ("top", "notop", ...) -> published file
    # md5 -> why a published file with one of our file names is not the one this model loads
    foreign_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The Keras graph depends on the static input size (NASNet's adjust blocks): a Keras model built with a
    # dynamic (None, None, 3) input is a different model. flaxzoo always decides from the actual size.
    shape_dependent: bool = False
    constructor: Callable | None = None

    def weight_file(self, variant: str) -> WeightFile:
        try:
            return self.weights[variant]
        except KeyError:
            raise ValueError(
                f"{self.keras_name} has no published weights for variant {variant!r}; "
                f"known: {sorted(self.weights)}"
            ) from None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(**spec_fields) -> Callable[[Callable], Callable]:
    """Decorator for a Keras-named constructor: ``@register_model(name="resnet50", ...)``."""

    def wrap(constructor: Callable) -> Callable:
        spec = ModelSpec(keras_name=constructor.__name__, constructor=constructor, **spec_fields)
        if spec.name in _REGISTRY:
            raise ValueError(f"model {spec.name!r} is registered twice")
        _REGISTRY[spec.name] = spec
        constructor.spec = spec
        return constructor

    return wrap


def list_models() -> list[str]:
    """Registered model names (``"resnet50"``, ``"vgg16"``, ...), sorted."""
    import flaxzoo.models  # noqa: F401  (registers every model)

    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of a model by registry name or Keras name (``"resnet50"`` or ``"ResNet50"``)."""
    list_models()
    key = name.lower()
    for spec in _REGISTRY.values():
        if key in (spec.name, spec.keras_name.lower()):
            return spec
    raise ValueError(f"Unknown model {name!r}. Available: {', '.join(sorted(_REGISTRY))}")


def create_model(name: str, *, abstract: bool = False, **kwargs):
    """Build a registered model by name: ``create_model("resnet50", weights=None)`` → ``(model, variables)``.

    ``kwargs`` are the Keras constructor's. ``abstract=True`` (with ``weights=None``) returns variable
    shapes (``jax.ShapeDtypeStruct``) instead of initialised arrays: cheap, for inspection and conversion.
    """
    spec = get_spec(name)
    if not abstract:
        return spec.constructor(**kwargs)
    from flaxzoo.models.common import abstract_variables

    if kwargs.get("weights", "imagenet") is not None:
        raise ValueError("create_model(abstract=True) needs weights=None")
    with abstract_variables():
        return spec.constructor(**kwargs)


def keras_weights_file(fname: str, subdir: str, md5: str | None) -> WeightFile:
    return WeightFile(fname, f"{KERAS_WEIGHTS_PATH}/{subdir}/{fname}", md5)
