"""The trust model: flaxzoo opens weight files (HDF5), its checkpoints (orbax + JSON), JSON class indexes
and images, and none of those can run code: nothing on a load path unpickles or evaluates."""

from __future__ import annotations

import ast
import pickle
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import flaxzoo
from flaxzoo import imagenet_utils
from flaxzoo.image import load_img
from flaxzoo.weights import checkpoint, keras_home, load_variables

from test_h5_fuzz import SPEC, VARIANT, valid  # noqa: F401  (fixture)

import keras_reference as kr

SOURCE = Path(flaxzoo.__file__).parent
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            yield name, node


@pytest.mark.parametrize("path", sorted(SOURCE.rglob("*.py")), ids=lambda p: str(p.relative_to(SOURCE)))
def test_library_source_neither_unpickles_nor_evaluates(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & FORBIDDEN_MODULES, ast.unparse(node)
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in FORBIDDEN_MODULES, ast.unparse(node)
    for name, call in _calls(tree):
        if isinstance(call.func, ast.Name):  # the builtins, not methods such as steps.eval
            assert name not in ("eval", "exec", "__import__"), ast.unparse(call)
        if name == "load" and ast.unparse(call.func).startswith(("np.", "numpy.")):
            keywords = {k.arg: k.value for k in call.keywords}
            assert "allow_pickle" in keywords and ast.literal_eval(keywords["allow_pickle"]) is False, ast.unparse(call)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling (pickle, numpy's allow_pickle path, which calls pickle.load) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled on a flaxzoo load path")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


def test_weight_files_checkpoints_class_index_and_images_load_without_unpickling(
    valid, no_unpickling, tmp_path, monkeypatch  # noqa: F811
):
    source, graph, reference = valid
    keras_file = keras_home() / "models" / SPEC.weight_file(VARIANT).fname
    keras_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, keras_file)
    load_variables(SPEC, graph, str(source), VARIANT)  # a .h5 path
    load_variables(SPEC, graph, "imagenet", VARIANT)  # convert + cache
    load_variables(SPEC, graph, "imagenet", VARIANT)  # restore the cache
    checkpoint.save(tmp_path / "ckpt", jax.device_get(reference), {"format": "flaxzoo-checkpoint", "model": SPEC.name})
    load_variables(SPEC, graph, str(tmp_path / "ckpt"), VARIANT)
    index = keras_home() / "models" / "imagenet_class_index.json"
    shutil.copy(kr.SHARED_DATA / "imagenet_class_index.json", index)
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)
    assert imagenet_utils.decode_predictions(np.eye(1000, dtype=np.float32)[:1], top=1)[0][0][1] == "tench"
    assert load_img(kr.SHARED_DATA / "elephant.jpg", target_size=(32, 32)).size == (32, 32)


def test_orbax_metadata_is_json_not_pickle(valid, tmp_path):  # noqa: F811
    """Every file orbax wrote for a checkpoint is JSON, the OCDBT format, or raw array bytes: nothing that
    a reader would deserialise into objects other than arrays."""
    _, _, reference = valid
    directory = checkpoint.save(tmp_path / "ckpt", jax.device_get(reference), {"format": "flaxzoo-checkpoint"})
    for path in directory.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"
