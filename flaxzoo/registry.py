"""The model registry's data: one :class:`ModelSpec` per Keras application, and :func:`register`.

The bottom of flaxzoo: this module imports nothing of flaxzoo. A model file declares its presets as
``ModelSpec`` rows and registers them with its family (``flaxzoo.models.common.register_family``);
everything else (constructors, mirror modules, the CLI, tests, benchmarks, the README table) reads the
registry through the front door, :mod:`flaxzoo.zoo`, which imports every model file first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

# Every published Keras weight file lives under this host; FLAXZOO_BASE_URL replaces it
# (a mirror, or a local server in tests), keeping the path below it.
DEFAULT_BASE_URL = "https://storage.googleapis.com"
KERAS_WEIGHTS_PATH = "tensorflow/keras-applications"


def base_url() -> str:
    return os.environ.get("FLAXZOO_BASE_URL", DEFAULT_BASE_URL).rstrip("/")


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """A published Keras weight file: its cache name, its path on the storage host, and the hash Keras
    publishes for it: an md5 for most, a sha256 for ConvNeXt's, none for MobileNet's and MobileNetV2's."""

    fname: str
    path: str
    md5: str | None  # None: Keras publishes no md5
    sha256: str | None = None
    # The constructor arguments the file was trained with, beyond the defaults and include_top (which the
    # variant's name gives): MobileNet's {"alpha": 0.25, "input_shape": (128, 128, 3)}. The CLI infers them
    # from a file of this name.
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{base_url()}/{self.path}"


def keras_weights_file(fname: str, subdir: str, md5: str | None, **args: Any) -> WeightFile:
    """A file of Keras' bucket: ``tensorflow/keras-applications/{subdir}/{fname}``, trained with constructor
    arguments ``args``."""
    return WeightFile(fname, f"{KERAS_WEIGHTS_PATH}/{subdir}/{fname}", md5, args=args)


def tf_kernels_files(name: str, subdir: str, md5_top: str, md5_notop: str) -> dict[str, WeightFile]:
    """The "top" and "notop" files most Keras applications publish: ``{name}_weights_tf_dim_ordering_tf_kernels.h5``
    and ``..._notop.h5`` in ``subdir``."""
    stem = f"{name}_weights_tf_dim_ordering_tf_kernels"
    return {
        "top": keras_weights_file(f"{stem}.h5", subdir, md5_top),
        "notop": keras_weights_file(f"{stem}_notop.h5", subdir, md5_notop),
    }


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One Keras application: what flaxzoo needs to build, load, test and describe it."""

    keras_name: str  # the constructor's name, e.g. "ResNet50"
    name: str  # registry key, e.g. "resnet50"
    # The keras.applications modules it is exported from, first the one that names it (resnet50 before resnet);
    # each becomes a flaxzoo mirror module with the constructors, preprocess_input and decode_predictions.
    keras_modules: tuple[str, ...]
    default_size: int
    min_size: int
    # imagenet_utils.preprocess_input mode: caffe, tf or torch; None where the model preprocesses its
    # input itself and preprocess_input is the identity (EfficientNet, ConvNeXt, ...)
    preprocess_mode: str | None
    params: int  # Keras count_params(), include_top=True at the default size
    params_notop: int
    depth: int  # weighted layers (the "Depth" column of keras.io)
    top1: float  # ImageNet validation accuracy, as published on keras.io
    top5: float | None  # None where keras.io publishes none (ConvNeXt)
    flops: int  # 2 x multiply-accumulates of the convolutions and dense layers, one image, default size
    weights: Mapping[str, WeightFile]  # variant ("top", "notop", ...) -> published file
    # The family's module configuration of this preset (e.g. {"blocks": (3, 4, 23, 3)}).
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    default_name: str | None = None  # Keras' default ``name`` argument; None: the registry key
    # md5 -> why a published file with one of our file names is not the one this model loads
    foreign_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Whether the published files name their layers as Keras 3 does (checked when converting). False where Keras'
    # own files use older names (MobileNetV2's of 2018): then, as Keras 3 does, by order, counts and shapes.
    file_layer_names: bool = True
    # The Keras graph depends on the static input size (NASNet's adjust blocks): a Keras model built with a
    # dynamic (None, None, 3) input is a different model. flaxzoo always decides from the actual size.
    shape_dependent: bool = False
    # Filled in by register_family: the family (its module, Keras signature and hooks) and the constructor.
    family: Any = dataclasses.field(default=None, compare=False, repr=False)
    constructor: Callable | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def module(self) -> str:
        """The mirror module that names the model, e.g. ``"flaxzoo.resnet50"``."""
        return f"flaxzoo.{self.keras_modules[0]}"

    def weight_file(self, variant: str) -> WeightFile:
        try:
            return self.weights[variant]
        except KeyError:
            raise ValueError(
                f"{self.keras_name} has no published weights for variant {variant!r}; known: {sorted(self.weights)}"
            ) from None


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` (its family and constructor set); names and Keras names are unique."""
    for other in _REGISTRY.values():
        if spec.name in (other.name, other.keras_name.lower()) or spec.keras_name == other.keras_name:
            raise ValueError(f"model {spec.name!r} ({spec.keras_name}) is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def registered() -> dict[str, ModelSpec]:
    """The specs registered so far, by name (the front door, flaxzoo.zoo, imports every model file first)."""
    return dict(_REGISTRY)
