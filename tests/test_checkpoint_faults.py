"""Broken flaxzoo checkpoints: a damaged directory is a CheckpointError naming it (or, where the damage is
invisible to orbax, the original values), and with ``weights="imagenet"`` a damaged cache entry is rebuilt
from the Keras file, after which it restores again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import pytest

from flaxzoo.errors import CheckpointError
from flaxzoo.weights import cache_dir, checkpoint, keras_home, load_variables

from test_h5_fuzz import SPEC, VARIANT, valid  # noqa: F401  (fixture)
from test_weights_files import tree_equal


def _largest(root: Path) -> Path:
    return max((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


TARGETS = {  # what a damage hits, found in a written checkpoint
    "metadata_record": lambda d: d / checkpoint.METADATA_FILE,
    "orbax_tree_metadata": lambda d: d / checkpoint.STATE_DIR / "_METADATA",
    "zarr_array_metadata": lambda d: _largest(d / checkpoint.STATE_DIR).parent / ".zarray",
    "array_data": lambda d: _largest(d / checkpoint.STATE_DIR),
    "state_dir": lambda d: d / checkpoint.STATE_DIR,
}


def damage(directory: Path, target: str, how: str) -> None:
    path = TARGETS[target](directory)
    if how == "delete":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garble":
        data = bytearray(path.read_bytes())
        data[: min(64, len(data))] = b"\x00not what was written\xff" * 3
        path.write_bytes(bytes(data))
    else:
        raise AssertionError(how)


CASES = [("state_dir", "delete")] + [
    (target, how) for target in TARGETS if target != "state_dir" for how in ("delete", "truncate", "empty", "garble")
]


@pytest.fixture
def saved(valid, tmp_path):  # noqa: F811
    source, graph, reference = valid
    directory = tmp_path / "ckpt"
    checkpoint.save(directory, jax.device_get(load_variables(SPEC, graph, str(source), VARIANT)), {"format": "flaxzoo-checkpoint", "model": SPEC.name, "variant": VARIANT})
    return directory, graph, reference


@pytest.mark.parametrize("target, how", CASES, ids=[f"{t}-{h}" for t, h in CASES])
def test_damaged_checkpoint_is_a_named_error_or_loads_the_original_values(saved, target, how):
    directory, graph, reference = saved
    damage(directory, target, how)
    try:
        variables = load_variables(SPEC, graph, str(directory), VARIANT)
    except CheckpointError as e:
        assert str(directory) in str(e), str(e)
    else:  # damage orbax does not read (e.g. garbled padding) must not change a single value
        assert tree_equal(jax.device_get(variables), reference), (target, how)


@pytest.mark.parametrize("target, how", CASES, ids=[f"{t}-{h}" for t, h in CASES])
def test_damaged_imagenet_cache_entry_is_rebuilt_from_the_keras_file(valid, target, how):  # noqa: F811
    source, graph, reference = valid
    keras_file = keras_home() / "models" / SPEC.weight_file(VARIANT).fname
    keras_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, keras_file)
    load_variables(SPEC, graph, "imagenet", VARIANT)  # converts and caches
    target_dir = cache_dir(SPEC, VARIANT)
    damage(target_dir, target, how)

    assert tree_equal(jax.device_get(load_variables(SPEC, graph, "imagenet", VARIANT)), reference)
    restored, record = checkpoint.restore(target_dir)  # the cache entry is whole again
    assert tree_equal(jax.device_get(restored), reference)
    assert record["source"]["file"] == keras_file.name
    assert not [p for p in target_dir.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_checkpoint_metadata_that_is_valid_json_but_not_ours_is_refused(saved):
    directory, graph, _ = saved
    (directory / checkpoint.METADATA_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a flaxzoo checkpoint"):
        load_variables(SPEC, graph, str(directory), VARIANT)
