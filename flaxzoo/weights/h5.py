"""Reader for Keras' legacy HDF5 weights format (what the Keras Applications files are).

Layout (``keras/src/legacy/saving/legacy_h5_format.py``): the root (or the ``model_weights`` group of a
full-model file) has a ``layer_names`` attribute listing every layer of ``model.layers``; each layer's group
has a ``weight_names`` attribute listing its arrays in legacy order (trainable, then non-trainable).
Attributes may be bytes or str, and long ones are split into ``name0``, ``name1``, ... . Datasets are
found only through ``weight_names``: Keras 1 (``block1_conv1_W_1:0``), Keras 2 (``conv1/kernel:0``, nested)
and Keras 3 (``kernel``) files differ in exactly those names. Arrays are read one layer at a time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

import h5py
import numpy as np

from flaxzoo.errors import WeightFileError
from flaxzoo.weights.host import aligned_array


def _decode(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes | np.bytes_) else str(value)


def read_attr_list(group: h5py.Group, name: str) -> list[str] | None:
    """A list-valued attribute, joining Keras' chunks ``name0, name1, ...``; None when absent."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    elif f"{name}0" in group.attrs:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    # A layer without weights stores an empty float64 array, which carries no names.
    return [_decode(v) for chunk in chunks for v in np.atleast_1d(chunk) if np.size(chunk)]


def _read_aligned(ds: h5py.Dataset, align: int = 64) -> np.ndarray:
    """The dataset in a 64-byte aligned buffer: jax.device_put(..., may_alias=True) then adopts it on CPU
    instead of copying, so a converted file is held once (VGG16's fc1 kernel alone is 411 MB)."""
    array = aligned_array(ds.shape, ds.dtype, align)
    if array.size:
        ds.read_direct(array)
    return array


@contextlib.contextmanager
def _damage_named(path: Path, where: str):
    """Any failure of h5py/HDF5 on a damaged file (OSError, KeyError, RuntimeError, TypeError, decoding
    errors, ...) becomes a WeightFileError naming the file and ``where`` it happened."""
    try:
        yield
    except WeightFileError:
        raise
    except Exception as e:
        raise WeightFileError(f"{path}: {where}: the file is damaged or not a Keras weights file "
                              f"({type(e).__name__}: {e})") from None  # fmt: skip


class LegacyWeightsFile:
    """An open Keras legacy ``.h5`` weights (or full-model) file. Use as a context manager.

    Every failure reading it is a :class:`WeightFileError` naming the file and the layer or attribute."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise WeightFileError(f"{self.path}: no such file") from None
        except OSError as e:
            raise WeightFileError(f"{self.path}: not a readable HDF5 file ({e})") from None
        except Exception as e:  # HDF5 signature found but the superblock is broken, ...
            raise WeightFileError(f"{self.path}: not a readable HDF5 file ({type(e).__name__}: {e})") from None
        try:
            with _damage_named(self.path, "reading the root attributes 'layer_names', 'keras_version', 'backend'"):
                self._root = self._find_root()
                self.layer_names: list[str] = read_attr_list(self._root, "layer_names")
                self.keras_version = _decode(self._root.attrs.get("keras_version", "1"))
                self.backend = _decode(self._root.attrs["backend"]) if "backend" in self._root.attrs else None
        except Exception:
            self._file.close()
            raise

    def _find_root(self) -> h5py.Group:
        f = self._file
        if read_attr_list(f, "layer_names") is not None:
            return f
        if "model_weights" in f and read_attr_list(f["model_weights"], "layer_names") is not None:
            return f["model_weights"]
        if "layers" in f and "vars" in f:
            raise WeightFileError(
                f"{self.path}: this is a Keras 3 native weights file (.weights.h5, groups 'layers' and "
                "'vars'), not a legacy Keras .h5 weights file like the published Keras Applications files. "
                "Load the model in Keras and save it with the legacy writer, or pass a published file."
            )
        raise WeightFileError(
            f"{self.path}: no 'layer_names' attribute at the root or in 'model_weights': "
            "not a Keras legacy .h5 weights file"
        )

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _group(self, layer: str) -> h5py.Group:
        try:
            group = self._root[layer]
        except (KeyError, ValueError):
            raise WeightFileError(
                f"{self.path}: layer {layer!r} is listed in 'layer_names' but has no group"
            ) from None
        if not isinstance(group, h5py.Group):
            raise WeightFileError(f"{self.path}: layer {layer!r} is not an HDF5 group")
        return group

    def weight_names(self, layer: str) -> list[str]:
        with _damage_named(self.path, f"layer {layer!r}: reading its 'weight_names' attribute"):
            names = read_attr_list(self._group(layer), "weight_names")
        if names is None:
            raise WeightFileError(f"{self.path}: layer {layer!r} has no 'weight_names' attribute")
        return names

    def weighted_layers(self) -> list[str]:
        """Layer names with at least one array, in file order (Keras' filtered ``layer_names``)."""
        return [name for name in self.layer_names if self.weight_names(name)]

    def shapes(self, layer: str) -> list[tuple[str, tuple[int, ...]]]:
        """(weight name, shape) of each array of a layer, without reading the data."""
        with _damage_named(self.path, f"layer {layer!r}"):
            group = self._group(layer)
            return [(wn, self._dataset(group, layer, wn).shape) for wn in self.weight_names(layer)]

    def read(self, layer: str, integers: Collection[int] = ()) -> list[tuple[str, np.ndarray]]:
        """(weight name, array) of each array of a layer, in legacy order. Arrays must be floating point,
        except at the positions in ``integers``, which may also be integers (Normalization's ``count``)."""
        with _damage_named(self.path, f"layer {layer!r}"):
            group = self._group(layer)
            names = self.weight_names(layer)
        out = []
        for i, wn in enumerate(names):
            with _damage_named(self.path, f"layer {layer!r}: weight {wn!r}"):
                ds = self._dataset(group, layer, wn)
            try:
                array = _read_aligned(ds) if ds.dtype.kind == "f" else ds[()]
            except Exception as e:  # truncated or corrupt data
                raise WeightFileError(f"{self.path}: layer {layer!r}: cannot read {wn!r} ({e})") from None
            if isinstance(array, np.generic):  # a scalar dataset read with ds[()]
                array = np.asarray(array)
            kinds = "fiu" if i in integers else "f"
            if not isinstance(array, np.ndarray) or array.dtype.kind not in kinds:
                expected = "floating point or integer" if i in integers else "floating point"
                raise WeightFileError(
                    f"{self.path}: layer {layer!r}: weight {wn!r} has dtype {getattr(array, 'dtype', type(array))}, "
                    f"expected {expected}"
                )
            out.append((wn, array))
        return out

    def _dataset(self, group: h5py.Group, layer: str, weight_name: str) -> h5py.Dataset:
        try:
            ds = group[weight_name]
        except (KeyError, ValueError):
            raise WeightFileError(
                f"{self.path}: layer {layer!r}: weight {weight_name!r} is listed in 'weight_names' "
                "but has no dataset"
            ) from None
        if not isinstance(ds, h5py.Dataset):
            raise WeightFileError(f"{self.path}: layer {layer!r}: {weight_name!r} is not a dataset")
        return ds
