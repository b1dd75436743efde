"""Keras legacy .h5 → flaxzoo variables, the way Keras 3 loads them.

Keras 3 ``load_weights`` assigns the file's weighted layers, in file order, to the model's weighted
layers in ``model.layers`` order, positionally (``legacy_h5_format.load_weights_from_hdf5_group``).
We do the same with the layer order recovered by :mod:`flaxzoo.graph`, and check more than Keras does:
the shape of every array, and the layer name wherever Keras names the layer explicitly (auto-named
layers such as InceptionV3's ``conv2d_7`` are numbered differently by every Keras version, so position
is the only key for those).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from flaxzoo._version import __version__
from flaxzoo.errors import WeightFileError
from flaxzoo.graph import Graph, LayerInfo
from flaxzoo.layers import snake_case
from flaxzoo.weights.h5 import LegacyWeightsFile


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def is_auto_named(layer: LayerInfo) -> bool:
    """True for names Keras generates from the class (``conv2d_3``, ``batch_normalization``)."""
    return re.fullmatch(rf"{snake_case(layer.keras_class)}(_\d+)?", layer.name) is not None


def _first_difference(file_layers: list[str], model_layers) -> str:
    """Where two weighted-layer lists part, for a count mismatch (positions of auto-named layers match any name)."""
    for k, (file_name, layer) in enumerate(zip(file_layers, model_layers)):
        if file_name != layer.name and not is_auto_named(layer):
            return f" The first difference is weighted layer #{k}: {file_name!r} in the file, {layer.name!r} in the model."
    k = min(len(file_layers), len(model_layers))
    if len(file_layers) > k:
        return f" The file has extra layers from #{k} on: {file_layers[k:k + 3]}."
    return f" The file lacks the model's layers from #{k} on: {[layer.name for layer in model_layers[k:k + 3]]}."


def _slots(graph: Graph, layer: LayerInfo) -> list[tuple[str, str, Any]]:
    """(collection, variable, abstract value) of a layer, in the legacy .h5 order."""
    owned = graph.layer_variables(layer.name)
    slots = [(col, var, owned[col][var]) for col, var in layer.layer_type.keras_weights if var in owned.get(col, {})]
    if len(slots) != sum(len(v) for v in owned.values()):
        raise AssertionError(f"{layer.layer_type.__name__}.keras_weights does not cover {owned}")
    return slots


def convert_h5(
    path: str | os.PathLike,
    graph: Graph,
    *,
    foreign_files: dict[str, str] | None = None,
) -> tuple[dict[str, dict], dict[str, Any]]:
    """Read a Keras legacy .h5 into ``{'params': ..., 'batch_stats': ...}`` numpy trees for ``graph``.

    Returns the variables and a ``source`` record (file name, md5, Keras version and backend of the writer).
    ``foreign_files`` maps md5s of known files that look right but are not (e.g. the 2016 ResNet50 file,
    which shares the current file's name) to the reason; those are refused before anything is read.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: no such file")
    md5 = md5sum(path)
    if foreign_files and md5 in foreign_files:
        raise WeightFileError(f"{path} (md5 {md5}): {foreign_files[md5]}")

    variables: dict[str, dict] = {col: {} for col in graph.variables}
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
            if file_name != layer.name and not is_auto_named(layer):
                raise WeightFileError(
                    f"{path}: weighted layer #{k} is {file_name!r} in the file but {layer.name!r} in the model"
                )
            slots = _slots(graph, layer)
            arrays = f.read(file_name)
            if len(arrays) != len(slots):
                raise WeightFileError(
                    f"{path}: Weight count mismatch for layer #{k} (named {layer.name} in the current model, "
                    f"{file_name} in the save file). Layer expects {len(slots)} weight(s) "
                    f"{[var for _, var, _ in slots]}. Received {len(arrays)} saved weight(s) "
                    f"{[wn for wn, _ in arrays]}"
                )
            for (col, var, expected), (weight_name, array) in zip(slots, arrays):
                if tuple(array.shape) != tuple(expected.shape):
                    raise WeightFileError(
                        f"{path}: layer {file_name!r}: weight {weight_name!r} has shape {tuple(array.shape)}, "
                        f"the model's {layer.name}/{var} has shape {tuple(expected.shape)}"
                    )
                variables[col].setdefault(layer.name, {})[var] = np.asarray(array, dtype=expected.dtype)
        source = {
            "file": path.name,
            "md5": md5,
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
