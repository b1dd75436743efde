"""Weights: resolve → cache → download → convert, in one place.

``load_variables(spec, graph, weights, variant)`` is what every constructor calls (``graph`` a
:class:`flaxzoo.graph.LazyGraph`: a checkpoint recorded for the same model structure restores untraced):

* ``"imagenet"``: the converted checkpoint in ``$FLAXZOO_HOME/checkpoints/<model>/<variant>``; else the
  Keras file from ``$KERAS_HOME/models`` or a download (md5-checked), converted and cached.
* a path to a Keras legacy ``.h5`` file: converted (nothing is cached);
* a path to a flaxzoo checkpoint directory: restored without touching h5 or Keras;
* a path to a flaxzoo ``.safetensors`` file (:mod:`flaxzoo.weights.safetensors_file`): read with the same checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from flaxzoo.errors import CheckpointError
from flaxzoo.graph import Graph
from flaxzoo.registry import ModelSpec
from flaxzoo.weights import checkpoint, safetensors_file
from flaxzoo.weights.convert import convert_h5, metadata
from flaxzoo.weights.files import flaxzoo_home, get_file, keras_home, md5sum

__all__ = [
    "cache_dir",
    "convert_file",
    "load_variables",
    "md5sum",
    "flaxzoo_home",
    "keras_home",
    "get_file",
    "save_checkpoint",
    "save_safetensors",
]


def cache_dir(spec: ModelSpec, variant: str) -> Path:
    # Both names come from the registry, but they become path parts (and the lock file's name): a name
    # that could leave $FLAXZOO_HOME/checkpoints (or that the OS would cut at a NUL) is refused.
    for part in (spec.name, variant):
        if not isinstance(part, str) or part in ("", ".", "..") or any(c in part for c in ("/", "\\", "\0")):
            raise ValueError(f"{spec.keras_name}: invalid weights variant or model name {part!r} for the cache")
    return flaxzoo_home() / "checkpoints" / spec.name / variant


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive inter-process lock on ``path`` (so concurrent resolvers convert once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def convert_file(spec: ModelSpec, graph: Graph, h5_path, variant: str | None) -> tuple[dict, dict]:
    """Convert a Keras .h5 for ``spec``; returns numpy variables and the checkpoint metadata."""
    variables, source = convert_h5(h5_path, graph, foreign_files=spec.foreign_files, check_names=spec.file_layer_names)
    return variables, dict(metadata(spec.name, variant, source), structure=graph.structure)


def _converted_from(target: Path, wf) -> bool:
    """Whether ``target`` is a checkpoint converted from the published file ``wf`` (by its sha256 or md5; any
    file, when Keras publishes no hash)."""
    try:
        record = checkpoint.read_metadata(target)
    except CheckpointError:
        return False
    source = record.get("source") or {}
    if wf.sha256:
        return source.get("sha256") == wf.sha256
    return wf.md5 is None or source.get("md5") == wf.md5


def _load_imagenet(spec: ModelSpec, graph: Graph, variant: str) -> dict:
    target = cache_dir(spec, variant)
    wf = spec.weight_file(variant)
    with _locked(target.parent / f".{variant}.lock"):
        if _converted_from(target, wf):
            try:
                return checkpoint.restore(target, lambda: graph.variables, structure=graph.structure)[0]
            except CheckpointError:
                pass
        shutil.rmtree(target, ignore_errors=True)  # none, broken, or from a superseded file: (re)build it
        h5 = get_file(wf.fname, wf.url, wf.md5, **({"sha256": wf.sha256} if wf.sha256 else {}))
        variables, meta = convert_file(spec, graph, h5, variant)
        checkpoint.save(target, variables, meta)
    return checkpoint._to_device(variables)


def load_variables(spec: ModelSpec, graph: Graph, weights: str | os.PathLike, variant: str) -> dict:
    """Variables for ``graph`` from ``weights`` ("imagenet", a Keras .h5 file, a flaxzoo checkpoint or
    a flaxzoo .safetensors file)."""
    if isinstance(weights, str) and weights == "imagenet":
        return _load_imagenet(spec, graph, variant)
    path = Path(weights)
    if path.is_dir():
        _check_model(path, checkpoint.read_metadata(path), spec)
        return checkpoint.restore(path, lambda: graph.variables, structure=graph.structure)[0]
    if path.is_file() and safetensors_file.is_safetensors(path):
        _check_model(path, safetensors_file.read_metadata(path), spec)
        variables = safetensors_file.load(path, lambda: graph.variables, structure=graph.structure)[0]
        return checkpoint._to_device(variables)
    return checkpoint._to_device(convert_file(spec, graph, path, None)[0])


def _check_model(path: Path, record: dict, spec: ModelSpec) -> None:
    model = record.get("model")
    if model not in (None, spec.name):
        raise CheckpointError(f"{path}: weights of {model}, not {spec.name}")


def count_params(variables) -> int:
    """Keras' count_params(): every weight, trainable or not (batch-norm moving statistics included)."""
    return sum(int(np.prod(np.shape(v))) for v in jax.tree_util.tree_leaves(variables))


def save_checkpoint(
    directory: str | os.PathLike, model: str, variables, *, variant: str | None = None, **extra
) -> Path:
    """Save ``variables`` of the model registered as ``model`` (its registry name; ``flaxzoo.save_checkpoint``
    takes Keras names too) as a flaxzoo checkpoint at ``directory`` (which must not exist), written atomically;
    the constructors load it with ``weights=directory``. ``extra`` (JSON values, e.g. ``classes``) is added to
    the metadata record."""
    variables = jax.device_get(dict(variables))  # every collection: params, batch_stats, constants, ...
    return checkpoint.save(directory, variables, {**metadata(model, variant, None), **extra})


def save_safetensors(
    path: str | os.PathLike, model: str, variables, *, variant: str | None = None, **extra
) -> Path:
    """Save ``variables`` of the model registered as ``model`` as one ``.safetensors`` file at ``path``
    (atomically), with :func:`save_checkpoint`'s metadata in its header; the constructors load it with
    ``weights=path``. Needs the ``safetensors`` package (``pip install 'flaxzoo[export]'``)."""
    variables = jax.device_get(dict(variables))
    return safetensors_file.save(path, variables, {**metadata(model, variant, None), **extra})
