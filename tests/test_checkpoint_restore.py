"""The two ways a checkpoint is read agree: the direct read of its zarr chunks (the fast path) and orbax's
restore (checkpoints of other layouts, e.g. OCDBT from an earlier flaxzoo); and the model trace that checks
a checkpoint's shapes is skipped exactly when the checkpoint records the model's structure key."""

from __future__ import annotations

import json

import jax
import orbax.checkpoint as ocp
import pytest

from flaxzoo import graph as graph_lib
from flaxzoo.errors import CheckpointError
from flaxzoo.zoo import create_model
from flaxzoo.weights import cache_dir, checkpoint, keras_home, load_variables

from test_h5_fuzz import SIZE, SPEC, VARIANT, valid  # noqa: F401  (fixture)
from test_weights_files import tree_equal


@pytest.fixture
def saved(valid, tmp_path):  # noqa: F811
    source, graph, reference = valid
    directory = tmp_path / "ckpt"
    meta = {"format": "flaxzoo-checkpoint", "model": SPEC.name, "variant": VARIANT, "structure": graph.structure}
    checkpoint.save(directory, jax.device_get(load_variables(SPEC, graph, str(source), VARIANT)), meta)
    return directory, graph, reference


def test_direct_read_and_orbax_restore_give_identical_arrays(saved):
    directory, _, reference = saved
    record = checkpoint.read_metadata(directory)
    direct = checkpoint._read_direct(directory / checkpoint.STATE_DIR, record)
    assert direct is not None and tree_equal(direct, reference)
    with ocp.StandardCheckpointer() as ckptr:
        assert tree_equal(ckptr.restore(directory / checkpoint.STATE_DIR), reference)


def test_restored_host_buffers_are_aligned_for_zero_copy_adoption(saved):
    directory, _, _ = saved
    direct = checkpoint._read_direct(directory / checkpoint.STATE_DIR, checkpoint.read_metadata(directory))
    assert all(a.ctypes.data % 64 == 0 for a in jax.tree_util.tree_leaves(direct))


@pytest.mark.parametrize("change", ["no_dtypes", "other_dtype", "compressed"])
def test_a_layout_the_direct_read_does_not_know_is_restored_by_orbax(saved, change):
    directory, graph, reference = saved
    record_file = directory / checkpoint.METADATA_FILE
    record = json.loads(record_file.read_text())
    if change == "no_dtypes":  # records written before dtypes were
        del record["dtypes"]
    elif change == "other_dtype":  # the record and the zarr metadata disagree: orbax decides
        record["dtypes"] = {k: "<f8" for k in record["dtypes"]}
    else:
        zarray = next((directory / checkpoint.STATE_DIR).glob("params.*/.zarray"))
        zarray.write_text(zarray.read_text().replace('"compressor":null', '"compressor":{"id":"zlib","level":1}'))
    record_file.write_text(json.dumps(record))
    assert checkpoint._read_direct(directory / checkpoint.STATE_DIR, record) is None
    if change == "compressed":  # the chunk is not zlib data: orbax fails, named
        with pytest.raises(CheckpointError, match=str(directory)):
            load_variables(SPEC, graph, str(directory), VARIANT)
    else:
        assert tree_equal(jax.device_get(load_variables(SPEC, graph, str(directory), VARIANT)), reference)


def test_an_ocdbt_checkpoint_of_an_earlier_flaxzoo_still_restores(saved, tmp_path):
    directory, graph, reference = saved
    old = tmp_path / "ocdbt"
    (old / checkpoint.STATE_DIR).parent.mkdir(parents=True)
    handler = ocp.PyTreeCheckpointHandler(use_compression=False, use_ocdbt=True)
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save(old / checkpoint.STATE_DIR, args=ocp.args.PyTreeSave(reference))
    record = checkpoint.read_metadata(directory)
    del record["dtypes"]  # as that version wrote it
    (old / checkpoint.METADATA_FILE).write_text(json.dumps(record))
    assert (old / checkpoint.STATE_DIR / "manifest.ocdbt").exists()
    assert tree_equal(jax.device_get(load_variables(SPEC, graph, str(old), VARIANT)), reference)


def _lazy_graph():
    module, _ = create_model("mobilenet", abstract=True, weights=None, alpha=0.25, include_top=False, input_shape=(SIZE, SIZE, 3))
    return graph_lib.LazyGraph(module, (1, SIZE, SIZE, 3))


def test_a_checkpoint_with_the_models_structure_key_restores_without_tracing(saved, monkeypatch):
    directory, graph, reference = saved
    lazy = _lazy_graph()
    assert lazy.structure == graph.structure is not None
    monkeypatch.setattr(graph_lib, "trace", lambda *a, **k: pytest.fail("traced"))
    assert tree_equal(jax.device_get(load_variables(SPEC, lazy, str(directory), VARIANT)), reference)


def test_a_checkpoint_with_another_structure_key_is_checked_against_the_traced_model(saved):
    directory, _, reference = saved
    record = checkpoint.read_metadata(directory)
    record["structure"] = "0" * 64
    record["variables"]["params/conv1/kernel"] = [3, 3, 3, 9]  # a misfit only the trace can see
    (directory / checkpoint.METADATA_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"does not fit this model.*conv1/kernel"):
        load_variables(SPEC, _lazy_graph(), str(directory), VARIANT)


def test_structure_key_changes_with_configuration_and_input_shape():
    module, _ = create_model("mobilenet", abstract=True, weights=None, alpha=0.25, include_top=False)
    other, _ = create_model("mobilenet", abstract=True, weights=None, alpha=0.5, include_top=False)
    keys = {graph_lib.structure_key(module, (1, 128, 128, 3)), graph_lib.structure_key(module, (1, 160, 160, 3)),
            graph_lib.structure_key(other, (1, 128, 128, 3))}  # fmt: skip
    assert len(keys) == 3 and None not in keys


def test_imagenet_cache_hit_restores_without_tracing(valid, monkeypatch):  # noqa: F811
    source, _, reference = valid
    keras_file = keras_home() / "models" / SPEC.weight_file(VARIANT).fname
    keras_file.parent.mkdir(parents=True, exist_ok=True)
    keras_file.write_bytes(source.read_bytes())
    build = dict(alpha=0.25, include_top=False, weights="imagenet", input_shape=(SIZE, SIZE, 3))
    SPEC.constructor(**build)  # converts and caches
    assert checkpoint.read_metadata(cache_dir(SPEC, VARIANT))["structure"]
    monkeypatch.setattr(graph_lib, "trace", lambda *a, **k: pytest.fail("traced"))
    _, variables = SPEC.constructor(**build)
    assert tree_equal(jax.device_get(variables), reference)


@pytest.mark.parametrize("key", ["..", ".", ""])
def test_a_record_naming_no_array_directory_of_its_own_is_not_read_directly(saved, key):
    directory, _, _ = saved
    record = checkpoint.read_metadata(directory)
    for field in ("variables", "dtypes", "crc32"):
        record[field] = {key: next(iter(record[field].values()))}
    assert checkpoint._read_direct(directory / checkpoint.STATE_DIR, record) is None
