"""Keras legacy .h5 → flaxzoo variables, the way Keras 3 loads them.

Keras 3 ``load_weights`` assigns the file's weighted layers, in file order, to the model's weighted
layers in ``model.layers`` order, positionally (``legacy_h5_format.load_weights_from_hdf5_group``).
We do the same with the layer order recovered by :mod:`flaxzoo.graph`, and check more than Keras does:
the shape of every array, and the layer name wherever Keras names the layer explicitly (auto-named
layers such as InceptionV3's ``conv2d_7`` are numbered differently by every Keras version, so position
is the only key for those). Each layer's arrays go to its module path in their collections (a layer
inside a block module: ``params[block][layer]``); integer arrays are taken only where the model's weight
is an integer (Normalization's ``count``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flaxzoo._version import __version__
from flaxzoo.errors import WeightFileError
from flaxzoo.graph import Graph, LayerInfo, subtree
from flaxzoo.layers import snake_case
from flaxzoo.weights.files import file_digests
from flaxzoo.weights.h5 import LegacyWeightsFile


def is_auto_named(layer: LayerInfo) -> bool:
    """True for names Keras generates from the class (``conv2d_3``, ``batch_normalization``)."""
    return re.fullmatch(rf"{snake_case(layer.keras_class)}(_\d+)?", layer.name) is not None


def _channels_hint(found, expected) -> str:
    # an RGB file's first kernel in a model on other channel counts: the opt-in adaptation
    if len(found) == 4 and found[2] == 3 and tuple(found[:2]) + tuple(found[3:]) == tuple(expected[:2]) + tuple(expected[3:]):
        return f". The file is for RGB input: adapt_input_channels=True adapts it to {expected[2]} channel(s)"
    return ""


def _first_difference(file_layers: list[str], model_layers) -> str:
    """Where two weighted-layer lists part, for a count mismatch (positions of auto-named layers match any name)."""
    for k, (file_name, layer) in enumerate(zip(file_layers, model_layers)):
        if file_name != layer.name and not is_auto_named(layer):
            return f" The first difference is weighted layer #{k}: {file_name!r} in the file, {layer.name!r} in the model."
    k = min(len(file_layers), len(model_layers))
    if len(file_layers) > k:
        return f" The file has extra layers from #{k} on: {file_layers[k:k + 3]}."
    return f" The file lacks the model's layers from #{k} on: {[layer.name for layer in model_layers[k:k + 3]]}."


def _weight_slots(graph: Graph, layer: LayerInfo) -> list[tuple[str, tuple[str, ...], str, Any]]:
    """(collection, module path, variable, abstract value) of a layer's weights, in the legacy .h5 order: its
    own, or those of its sublayers in call order (a composite layer: a nested Sequential)."""
    owners = layer.sublayers or ((layer.path, layer.layer_type),)
    slots = []
    for path, layer_type in owners:
        owned = {col: subtree(tree, path) or {} for col, tree in graph.variables.items()}
        slots += [(col, path, var, owned[col][var]) for col, var in layer_type.keras_weights if var in owned.get(col, {})]
    if len(slots) != len(_leaf_paths(graph.layer_variables(layer.name))):
        raise AssertionError(f"{layer.layer_type.__name__}: keras_weights do not cover {graph.layer_variables(layer.name)}")
    return slots


def _slots(graph: Graph, layer: LayerInfo) -> list[tuple[str, str, Any]]:
    """(collection, variable, abstract value) of a layer's weights, in the legacy .h5 order."""
    return [(col, var, value) for col, _, var, value in _weight_slots(graph, layer)]


def _leaf_paths(tree, prefix=()) -> set[tuple[str, ...]]:
    if not isinstance(tree, dict | Mapping):
        return {prefix}
    return {p for k, v in tree.items() for p in _leaf_paths(v, (*prefix, k))}


def _place(variables: dict, col: str, path: tuple[str, ...], var: str, value) -> None:
    node = variables.setdefault(col, {})
    for key in path:
        node = node.setdefault(key, {})
    node[var] = value


def _as_model_dtype(path: Path, file_name: str, weight_name: str, array: np.ndarray, dtype) -> np.ndarray:
    """``array`` in the model weight's dtype: floats from any float (as Keras converts), integers from integers
    that fit (Keras 2 files store Normalization's count as int64, flaxzoo as Keras 3 does, int32)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        if array.dtype.kind not in "iu":
            raise WeightFileError(
                f"{path}: layer {file_name!r}: weight {weight_name!r} has dtype {array.dtype}, expected integer"
            )
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise WeightFileError(f"{path}: layer {file_name!r}: weight {weight_name!r} does not fit {dtype}")
    return np.asarray(array, dtype=dtype)


def convert_h5(
    path: str | os.PathLike,
    graph: Graph,
    *,
    foreign_files: dict[str, str] | None = None,
    check_names: bool = True,
) -> tuple[dict[str, dict], dict[str, Any]]:
    """Read a Keras legacy .h5 into ``{'params': ..., 'batch_stats': ..., 'constants': ...}`` numpy trees
    for ``graph`` (the collections the model declares).

    Returns the variables and a ``source`` record (file name, md5, Keras version and backend of the writer).
    ``foreign_files`` maps md5s of known files that look right but are not (e.g. the 2016 ResNet50 file,
    which shares the current file's name) to the reason; those are refused before anything is read.
    ``check_names=False``: the file's layer names are not compared with the model's (Keras 3 never compares
    them; some published files use older names), only the layer count, weights per layer and shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: no such file")
    digests = file_digests(path, ("md5", "sha256"))  # Keras publishes one or the other
    md5 = digests["md5"]
    if foreign_files and md5 in foreign_files:
        raise WeightFileError(f"{path} (md5 {md5}): {foreign_files[md5]}")

    variables: dict[str, dict] = {col: {} for col in graph.variables}  # every collection, constants included
    with LegacyWeightsFile(path) as f:
        file_layers = f.weighted_layers()
        model_layers = graph.weighted_layers
        if len(file_layers) != len(model_layers):
            raise WeightFileError(
                f"{path}: Layer count mismatch when loading weights from file. Model expected "
                f"{len(model_layers)} layers, found {len(file_layers)} saved layers. (A file with or "
                f"without the classification top, or for another model, gives this.){_first_difference(file_layers, model_layers)}"
            )
        for k, (file_name, layer) in enumerate(zip(file_layers, model_layers)):
            if check_names and file_name != layer.name and not is_auto_named(layer):
                raise WeightFileError(
                    f"{path}: weighted layer #{k} is {file_name!r} in the file but {layer.name!r} in the model"
                )
            slots = _weight_slots(graph, layer)
            weight_names = f.weight_names(file_name)
            if len(weight_names) != len(slots):
                raise WeightFileError(
                    f"{path}: Weight count mismatch for layer #{k} (named {layer.name} in the current model, "
                    f"{file_name} in the save file). Layer expects {len(slots)} weight(s) "
                    f"{[var for _, _, var, _ in slots]}. Received {len(weight_names)} saved weight(s) {weight_names}"
                )
            integers = {i for i, (_, _, _, expected) in enumerate(slots) if np.dtype(expected.dtype).kind in "iu"}
            arrays = f.read(file_name, integers=integers)
            for (col, var_path, var, expected), (weight_name, array) in zip(slots, arrays):
                if tuple(array.shape) != tuple(expected.shape):
                    raise WeightFileError(
                        f"{path}: layer {file_name!r}: weight {weight_name!r} has shape {tuple(array.shape)}, "
                        f"the model's {'/'.join(var_path)}/{var} has shape {tuple(expected.shape)}"
                        + _channels_hint(array.shape, expected.shape)
                    )
                value = _as_model_dtype(path, file_name, weight_name, array, expected.dtype)
                _place(variables, col, var_path, var, value)
        missing = _leaf_paths(dict(graph.variables)) - _leaf_paths(variables)
        if missing:  # a variable no Keras layer owns: no file can hold it
            raise ValueError(
                f"the model has variables outside its Keras layers, which no Keras file holds: "
                f"{sorted('/'.join(p) for p in missing)[:5]}"
            )
        source = {
            "file": path.name,
            "md5": md5,
            "sha256": digests["sha256"],
            "keras_version": f.keras_version,
            "backend": f.backend,
        }
    return variables, source


def metadata(model: str, variant: str | None, source: dict[str, Any] | None) -> dict[str, Any]:
    """The record stored beside converted variables."""
    return {
        "format": "flaxzoo-checkpoint",
        "format_version": 1,
        "flaxzoo_version": __version__,
        "model": model,
        "variant": variant,
        "source": source,
    }
