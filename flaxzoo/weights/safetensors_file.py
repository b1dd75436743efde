"""Variables as one ``.safetensors`` file, the format of model hubs.

Tensors are named by their path in the variables, collections first (``params/conv1_conv/kernel``,
``batch_stats/conv1_bn/mean``, ``constants/normalization/mean``). The header's ``__metadata__`` (strings
only, as the format requires) holds what a flaxzoo checkpoint's ``flaxzoo.json`` holds: ``format``
(``flaxzoo-safetensors``), ``model``, ``variant``, ``source`` (the converted file's name, md5 and sha256,
JSON), ``flaxzoo_version``, ``structure``, ``variables`` (the shapes, JSON) and ``crc32`` (of every
tensor's bytes, JSON: safetensors keeps no checksums, so a flipped bit would otherwise load silently).

The ``safetensors`` package is an optional extra (``pip install 'flaxzoo[export]'``), imported here only.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from flaxzoo.errors import CheckpointError
from flaxzoo.weights.checkpoint import _flat, _nest, _shapes, misfit
from flaxzoo.weights.files import atomic_file

FORMAT = "flaxzoo-safetensors"
SUFFIX = ".safetensors"
_JSON_FIELDS = ("source", "variables", "crc32", "format_version", "args")


def _library():
    try:
        import safetensors.numpy
    except ImportError as e:
        raise ImportError("safetensors files need the safetensors package: pip install 'flaxzoo[export]'") from e
    return safetensors


def is_safetensors(path: str | os.PathLike) -> bool:
    """``path`` is a file in the safetensors layout: a little-endian header length, then a JSON object."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def save(path: str | os.PathLike, variables: dict, metadata: dict[str, Any]) -> Path:
    """Write ``variables`` (every collection) and the checkpoint ``metadata`` record (see
    :func:`flaxzoo.weights.convert.metadata`) to ``path``, atomically: a temporary file beside it, renamed."""
    library = _library()
    path = Path(path).absolute()
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give the .safetensors file to write")
    tensors = {key: np.ascontiguousarray(value) for key, value in _flat(variables).items()}
    record = dict(metadata, format=FORMAT, variables=_shapes(variables), crc32={k: zlib.crc32(v) for k, v in tensors.items()})
    header = {k: json.dumps(v) if k in _JSON_FIELDS or not isinstance(v, str) else v for k, v in record.items()}
    with atomic_file(path) as tmp:
        library.numpy.save_file(tensors, tmp, metadata=header)
    return path


def _record(path: Path, header: dict[str, str] | None) -> dict[str, Any]:
    if not header or header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a safetensors file without flaxzoo's metadata (format {FORMAT!r}); "
            "write one with flaxzoo.save_safetensors or `flaxzoo convert --format safetensors`"
        )
    record: dict[str, Any] = {}
    for key, value in header.items():
        try:
            record[key] = json.loads(value) if key in _JSON_FIELDS or value in ("null", "true", "false") else value
        except ValueError:
            raise CheckpointError(f"{path}: damaged header metadata ({key!r} is not JSON)") from None
    return record


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata record of a flaxzoo ``.safetensors`` file (no tensor is read)."""
    library, path = _library(), Path(path)
    try:
        with library.safe_open(path, framework="numpy") as f:
            return _record(path, f.metadata())
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError, OSError: a truncated or damaged header
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def load(path: str | os.PathLike, abstract_variables=None, *, structure: str | None = None) -> tuple[dict, dict]:
    """``(variables, record)`` from a flaxzoo ``.safetensors`` file, checked as a checkpoint is: the shapes
    against ``abstract_variables`` (a tree of ShapeDtypeStructs, or a function returning one) unless the
    recorded ``structure`` key equals the model's, and every tensor against its crc32. Numpy arrays."""
    library, path = _library(), Path(path)
    try:
        with library.safe_open(path, framework="numpy") as f:
            record = _record(path, f.metadata())
            stored = {k: list(v) for k, v in (record.get("variables") or {}).items()}
            if structure is not None and record.get("structure") == structure:
                abstract_variables = None
            if callable(abstract_variables):
                abstract_variables = abstract_variables()
            difference = None if abstract_variables is None else misfit(_shapes(abstract_variables), stored)
            if difference:
                raise CheckpointError(
                    f"{path}: weights of {record.get('model')} ({record.get('variant')}) do not fit this model: {difference}"
                )
            names = set(f.keys())
            if names != set(stored):
                raise CheckpointError(f"{path}: tensors {sorted(names ^ set(stored))[:5]} differ from the metadata record")
            tensors = {key: f.get_tensor(key) for key in stored}
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError, OSError, ValueError: truncated data, a damaged header
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    crcs = record.get("crc32") or {}
    bad = sorted(k for k, v in tensors.items() if crcs.get(k) != zlib.crc32(np.ascontiguousarray(v)))
    if bad:
        raise CheckpointError(f"{path}: tensor data does not match its checksums (damaged on disk?): {bad[:5]}")
    # a 0-d tensor (Normalization's count) may come back with shape (1,): the record's shape is the truth
    tensors = {k: v.reshape(stored[k]) if v.size == int(np.prod(stored[k])) else v for k, v in tensors.items()}
    wrong = [k for k, v in tensors.items() if list(v.shape) != stored[k]]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes differ from the metadata record: {wrong[:5]}")
    return _nest(tensors), record

