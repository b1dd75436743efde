"""The front door: every registered model by name, and what is built from one (the library half of the CLI).

Imports flow one way: ``registry`` (data) ← ``layers`` ← ``graph`` ← ``weights`` ← ``models`` ← ``zoo`` ←
``cli`` / ``train.finetune``. This module imports every model file (so they register), then serves
``list_models`` / ``get_spec`` / ``create_model``, the layer graph of a registered model, building a
model from a weight file, converting a file to a checkpoint, classifying images, the Keras-mirroring
modules (``flaxzoo.resnet``, ...) and the README's model table.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import flaxzoo.models  # noqa: F401  (registers every model)
from flaxzoo import graph as graph_lib
from flaxzoo import imagenet_utils
from flaxzoo.models.common import abstract_variables
from flaxzoo.registry import ModelSpec, registered
from flaxzoo.weights import checkpoint, convert_file, count_params, safetensors_file
from flaxzoo.weights import save_checkpoint as _save_checkpoint
from flaxzoo.weights import save_safetensors as _save_safetensors

VARIANTS = ("top", "notop")


# ------------------------------------------------------------------------------------------------
# The registry by name
# ------------------------------------------------------------------------------------------------


def list_models() -> list[str]:
    """Registered model names (``"resnet50"``, ``"vgg16"``, ...), sorted."""
    return sorted(registered())


def specs() -> list[ModelSpec]:
    """Every registered spec, in :func:`list_models` order."""
    models = registered()
    return [models[name] for name in sorted(models)]


def get_spec(name: str) -> ModelSpec:
    """The spec of a model by registry name or Keras name (``"resnet50"`` or ``"ResNet50"``)."""
    key = name.lower()
    for spec in registered().values():
        if key in (spec.name, spec.keras_name.lower()):
            return spec
    raise ValueError(f"Unknown model {name!r}. Available: {', '.join(list_models())}")


def create_model(name: str, *, abstract: bool = False, **kwargs):
    """Build a registered model by name: ``create_model("resnet50", weights=None)`` → ``(model, variables)``.

    ``kwargs`` are the Keras constructor's. ``abstract=True`` (with ``weights=None``) returns variable
    shapes (``jax.ShapeDtypeStruct``) instead of initialised arrays: cheap, for inspection and conversion.
    """
    spec = get_spec(name)
    if not abstract:
        return spec.constructor(**kwargs)
    if kwargs.get("weights", "imagenet") is not None:
        raise ValueError("create_model(abstract=True) needs weights=None")
    with abstract_variables():
        return spec.constructor(**kwargs)


def registered_graph(name: str, *, include_top: bool = True, size: int | None = None, **kwargs) -> graph_lib.Graph:
    """The graph of registered model ``name`` (Keras constructor ``kwargs``) at ``size`` (default: the
    model's default size), traced abstractly: no weights are initialised or read."""
    size = size or get_spec(name).default_size
    module, _ = create_model(name, abstract=True, weights=None, include_top=include_top, **kwargs)
    return graph_lib.trace(module, (1, size, size, 3))


def save_checkpoint(directory, model: str, variables, *, variant: str | None = None, **extra) -> Path:
    """Save ``variables`` of registered model ``model`` (registry or Keras name; e.g. after fine-tuning) as a
    flaxzoo checkpoint at ``directory`` (which must not exist), written atomically; the constructors load it
    with ``weights=directory``. ``extra`` (JSON values, e.g. ``classes``) is added to the metadata record."""
    return _save_checkpoint(directory, get_spec(model).name, variables, variant=variant, **extra)


def save_safetensors(path, model: str, variables, *, variant: str | None = None, **extra) -> Path:
    """Save ``variables`` of registered model ``model`` (registry or Keras name) as one ``.safetensors`` file
    at ``path``, written atomically, the checkpoint's metadata in its header (model, variant, source file and
    md5, shapes, checksums); the constructors load it with ``weights=path``."""
    return _save_safetensors(path, get_spec(model).name, variables, variant=variant, **extra)


# ------------------------------------------------------------------------------------------------
# Models from weight files (the CLI's, convert/convert_all.py's and fine-tuning's)
# ------------------------------------------------------------------------------------------------


def check_weights(weights: str) -> str:
    """``"imagenet"``, or an existing path (a Keras .h5 file or a flaxzoo checkpoint directory)."""
    if weights != "imagenet" and not os.path.exists(weights):
        raise ValueError(f"{weights}: no such weights file or checkpoint directory (or use 'imagenet')")
    return weights


def build_model(spec: ModelSpec, weights: str = "imagenet", variant: str = "top", **kwargs):
    """``(module, variables)`` of ``spec`` (constructor ``kwargs``; default size), with or without the classifier."""
    return spec.constructor(include_top=variant == "top", weights=check_weights(weights), **kwargs)


def variant_graph(spec: ModelSpec, variant: str, **kwargs) -> graph_lib.Graph:
    """The Keras layer graph of ``spec`` (``variant`` "top" or "notop"; constructor ``kwargs``), traced
    abstractly: no weights."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    kwargs = {k: v for k, v in kwargs.items() if k != "include_top"}
    size = (kwargs.pop("input_shape", None) or (None,))[0]
    return registered_graph(spec.name, include_top=variant == "top", size=size, **kwargs)


def infer_variant(spec: ModelSpec, h5_path, **kwargs) -> tuple[str, graph_lib.Graph]:
    """Which variant a Keras .h5 file holds (top, else notop), by its weighted-layer count; and its graph."""
    from flaxzoo.weights.h5 import LegacyWeightsFile

    with LegacyWeightsFile(h5_path) as f:
        n_file = len(f.weighted_layers())
    counts = {}
    for variant in VARIANTS:
        graph = variant_graph(spec, variant, **kwargs)
        counts[variant] = len(graph.weighted_layers)
        if counts[variant] == n_file:
            return variant, graph
    expected = ", ".join(f"{n} ({v})" for v, n in counts.items())
    raise ValueError(
        f"{h5_path}: {n_file} weighted layers; {spec.keras_name} has {expected}: not a {spec.keras_name} weights file"
    )


def jsonable_arguments(kwargs: dict) -> dict:
    """Constructor arguments as a checkpoint's metadata records them (tuples as lists; what JSON cannot hold
    left out)."""
    import json

    out = {}
    for key, value in kwargs.items():
        value = list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


CONVERT_FORMATS = ("checkpoint", "safetensors")


def convert_to_checkpoint(
    spec: ModelSpec, h5_path, out_dir, variant: str | None = None, *, format: str = "checkpoint", **kwargs
) -> dict:
    """Convert a Keras legacy .h5 of ``spec`` (built with constructor ``kwargs``: ``alpha=0.25``, ...) into a
    flaxzoo checkpoint at ``out_dir`` (which must not exist), or with ``format="safetensors"`` into one
    ``.safetensors`` file at ``out_dir``.

    ``variant=None`` infers it from the file. Returns the checkpoint's metadata record plus ``params``
    (the number of weights) and ``path`` (the absolute output directory or file). The metadata records
    ``kwargs`` as ``args``, from which the CLI builds the model again.
    """
    if format not in CONVERT_FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(CONVERT_FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        raise ValueError(f"{out_dir}: already exists; not overwriting (remove it or choose another --out)")
    if not Path(h5_path).is_file():
        raise ValueError(f"{h5_path}: no such file")
    if variant is None:
        variant, graph = infer_variant(spec, h5_path, **kwargs)
    else:
        graph = variant_graph(spec, variant, **kwargs)
    variables, meta = convert_file(spec, graph, h5_path, variant)
    args = jsonable_arguments({k: v for k, v in kwargs.items() if k != "include_top"})
    if args:
        meta = dict(meta, args=args)
    save = safetensors_file.save if format == "safetensors" else checkpoint.save
    path = save(out_dir, variables, meta)
    return dict(meta, params=count_params(variables), path=str(path))


# ------------------------------------------------------------------------------------------------
# Images in, probabilities out
# ------------------------------------------------------------------------------------------------


def load_batch(paths: Sequence[str], size: int | tuple[int, int]) -> np.ndarray:
    """Images as Keras' examples load them: ``load_img(target_size=size)`` (nearest; an int: square) → float32 NHWC."""
    from flaxzoo.image import img_to_array, load_img

    arrays = []
    for path in paths:
        try:
            target = (size, size) if isinstance(size, int) else tuple(size)
            arrays.append(img_to_array(load_img(path, target_size=target)))
        except OSError as e:  # missing file, or not an image PIL can read
            raise ValueError(f"{path}: cannot read image ({e.strerror or e})") from None
    return np.stack(arrays)


def preprocess(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """The model's ``preprocess_input``, on a copy of ``x``."""
    return imagenet_utils.preprocess_for_mode(np.array(x, copy=True), spec.preprocess_mode)


def classify(
    spec: ModelSpec,
    model,
    variables,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    precision: str = "highest",
    size: tuple[int, int] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Class probabilities ``(len(paths), classes)``: one jitted forward pass per batch of images, each image
    resized to ``size`` (default: the model's input size) as Keras' ``load_img(target_size=...)`` does.

    Batches are padded to one shape, so the model is compiled once; images are read a batch at a time, with
    a progress bar on stderr (``progress``) when there is more than one batch.
    """
    import jax

    from flaxzoo.progress import ProgressBar
    from flaxzoo.xla_options import enable_compilation_cache, jit

    enable_compilation_cache()
    size = size or tuple(model.traced_shape[1:3])
    forward = jit(model.apply)
    n = min(batch_size, len(paths))
    bar = ProgressBar("classifying", len(paths), enabled=progress and len(paths) > n)
    out = []
    for start in range(0, len(paths), n):
        chunk = paths[start : start + n]
        x = preprocess(spec, load_batch(chunk, size))
        if len(chunk) < n:
            x = np.concatenate([x, np.zeros((n - len(chunk), *x.shape[1:]), x.dtype)])
        with jax.default_matmul_precision(precision):
            probs = forward(variables, x)
        out.append(np.asarray(probs)[: len(chunk)])
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------
# Generated from the registry: mirror modules, the README table
# ------------------------------------------------------------------------------------------------


def _preprocess_input(mode: str | None, keras_module: str):
    def preprocess_input(x, data_format=None):
        return imagenet_utils.preprocess_for_mode(x, mode, data_format)

    if mode is None:
        preprocess_input.__doc__ = (
            "The identity, as Keras': the model preprocesses its input itself (pass images in [0, 255])."
        )
    else:
        preprocess_input.__doc__ = f"``imagenet_utils.preprocess_input`` in {mode} mode."
    preprocess_input.__module__ = f"flaxzoo.{keras_module}"
    return preprocess_input


@functools.cache
def mirror_modules() -> dict[str, types.ModuleType]:
    """``{"resnet": <module flaxzoo.resnet>, ...}``: a module per ``keras.applications`` module, with its
    constructors, ``preprocess_input`` and ``decode_predictions``, registered in ``sys.modules``."""
    by_module: dict[str, list[ModelSpec]] = {}
    for spec in specs():
        for keras_module in spec.keras_modules:
            by_module.setdefault(keras_module, []).append(spec)
    modules = {}
    for keras_module, members in sorted(by_module.items()):
        modes = {spec.preprocess_mode for spec in members}
        if len(modes) != 1:
            raise ValueError(f"keras.applications.{keras_module} mixes preprocessing modes: {sorted(map(str, modes))}")
        module = types.ModuleType(
            f"flaxzoo.{keras_module}",
            f"Mirror of `keras.applications.{keras_module}`: "
            f"{', '.join(s.keras_name for s in members)}, `preprocess_input`, `decode_predictions`.",
        )
        for spec in members:
            setattr(module, spec.keras_name, spec.constructor)
        module.preprocess_input = _preprocess_input(modes.pop(), keras_module)
        module.decode_predictions = imagenet_utils.decode_predictions
        module.__all__ = [*(s.keras_name for s in members), "decode_predictions", "preprocess_input"]
        sys.modules[module.__name__] = module
        modules[keras_module] = module
    return modules


def model_table() -> str:
    """The README's model table (Markdown), one row per registered model in registry order."""

    def percent(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    lines = [
        "| Model | Size | Top-1 | Top-5 | Parameters | Depth | Preprocessing | FLOPs (G) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in specs():
        mode = s.preprocess_mode or "in the model"
        lines.append(
            f"| {s.keras_name} | {s.default_size} | {percent(s.top1)} | {percent(s.top5)} | {s.params:,} | "
            f"{s.depth} | {mode} | {s.flops / 1e9:.2f} |"
        )
    return "\n".join(lines)
