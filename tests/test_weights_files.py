"""The legacy .h5 reader, the converter and flaxzoo checkpoints.

Files in every layout the published Keras files use (Keras 1 names for VGG, Keras 2 nested names with
':0' and fixed-length bytes attributes, Keras 3's writer, chunked attributes, full-model files) must
convert to the same variables; broken or mismatched files must raise a WeightFileError naming the file
and the layer.
"""

import os
import shutil

import h5py
import jax
import numpy as np
import pytest

import flaxzoo
from flaxzoo.errors import CheckpointError, WeightFileError
from flaxzoo.zoo import get_spec, registered_graph
from flaxzoo.weights import checkpoint, convert_file, md5sum
from flaxzoo.weights.files import current_umask
from flaxzoo.weights.h5 import LegacyWeightsFile

import keras_reference as kr

MOBILENET_FILE = kr.SHARED_DATA / "mobilenet_2_5_224_tf_no_top.h5"


def graph_of(name):
    return registered_graph(name, include_top=False)


def tree_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


# ------------------------------------------------------------------------------------------------
# Rewriting a Keras-3-written file into the layouts of older Keras versions
# ------------------------------------------------------------------------------------------------


def _bytes_attr(names):
    width = max([len(n) for n in names] + [1])
    return np.array([n.encode() for n in names], dtype=f"S{width}")


def rewrite(src, dst, style):
    """Copy a legacy .h5 into another Keras version's layout.

    keras2: bytes attributes, weight names ``<layer>/<var>:0`` stored nested under the layer group.
    keras1: VGG v0.1 names ``<layer>_W_1:0`` / ``<layer>_b_1:0`` directly in the layer group.
    chunked: ``layer_names`` split over ``layer_names0, layer_names1, ...`` (Keras' >64 KB attributes).
    """
    keras1 = {"kernel": "W", "bias": "b"}
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        names = [n.decode() if isinstance(n, bytes) else n for n in fin.attrs["layer_names"]]
        if style == "chunked":
            for i in range(0, len(names), 7):
                fout.attrs[f"layer_names{i // 7}"] = _bytes_attr(names[i : i + 7])
        else:
            fout.attrs["layer_names"] = _bytes_attr(names)
        fout.attrs["keras_version"] = {"keras1": b"1.1.0", "keras2": b"2.0.4"}.get(style, b"3.0.0")
        fout.attrs["backend"] = b"tensorflow"
        for layer in names:
            gin, gout = fin[layer], fout.create_group(layer)
            old = [n.decode() if isinstance(n, bytes) else n for n in gin.attrs["weight_names"]]
            new = []
            for wn in old:
                var = wn.rsplit("/", 1)[-1]
                if style == "keras1":
                    nn = f"{layer}_{keras1[var]}_1:0"
                elif style == "keras2":
                    nn = f"{layer}/{var}:0"
                else:
                    nn = wn
                gout.create_dataset(nn, data=gin[wn][()])
                new.append(nn)
            gout.attrs["weight_names"] = _bytes_attr(new) if new else np.zeros((0,), "float64")
    return dst


# ------------------------------------------------------------------------------------------------
# The reader
# ------------------------------------------------------------------------------------------------


def test_reader_reads_the_published_keras_2_mobilenet_file_as_keras_does():
    """A real Keras-2.0.4 file: same weighted layers, weight order, shapes and values as Keras loads."""
    keras = kr.keras
    ref = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=str(MOBILENET_FILE), input_shape=(224, 224, 3))
    keras_layers = [layer for layer in ref.layers if layer.weights]
    with LegacyWeightsFile(MOBILENET_FILE) as f:
        assert f.keras_version == "2.0.4" and f.backend == "tensorflow"
        assert f.layer_names[0] == "input_1" and len(f.layer_names) == 83
        assert f.weighted_layers() == [layer.name for layer in keras_layers]
        for layer in keras_layers:
            arrays = f.read(layer.name)
            legacy_order = layer.trainable_weights + layer.non_trainable_weights
            assert [tuple(a.shape) for _, a in arrays] == [tuple(w.shape) for w in legacy_order]
            assert all(wn.startswith(f"{layer.name}/") and wn.endswith(":0") for wn, _ in arrays)
            for (_, a), w in zip(arrays, legacy_order):
                np.testing.assert_array_equal(a, np.asarray(w))
        assert f.shapes("conv_dw_1") == [("conv_dw_1/depthwise_kernel:0", (3, 3, 8, 1))]


@pytest.mark.parametrize("style", ["keras2", "chunked"])
def test_keras_2_layout_and_chunked_attributes_convert_identically(style, tmp_path):
    base = kr.reference_h5("resnet50", False)
    graph = graph_of("resnet50")
    expected, _ = convert_file(get_spec("resnet50"), graph, base, "notop")
    got, meta = convert_file(get_spec("resnet50"), graph, rewrite(base, tmp_path / "w.h5", style), "notop")
    assert tree_equal(got, expected)
    assert meta["source"]["keras_version"] == ("2.0.4" if style == "keras2" else "3.0.0")


def test_keras_1_vgg_layout_converts_identically(tmp_path):
    base = kr.reference_h5("vgg16", False)
    graph = graph_of("vgg16")
    expected, _ = convert_file(get_spec("vgg16"), graph, base, "notop")
    path = rewrite(base, tmp_path / "vgg16_keras1.h5", "keras1")
    with LegacyWeightsFile(path) as f:
        assert [wn for wn, _ in f.shapes("block1_conv1")] == ["block1_conv1_W_1:0", "block1_conv1_b_1:0"]
    got, _ = convert_file(get_spec("vgg16"), graph, path, "notop")
    assert tree_equal(got, expected)


def test_full_model_file_reads_the_model_weights_group(tmp_path):
    path = tmp_path / "resnet50_full.h5"
    kr.reference_model("resnet50", False).save(path)  # Keras' legacy full-model format
    with h5py.File(path, "r") as f:
        assert "model_weights" in f and "layer_names" not in f.attrs
    graph = graph_of("resnet50")
    expected, _ = convert_file(get_spec("resnet50"), graph, kr.reference_h5("resnet50", False), "notop")
    got, _ = convert_file(get_spec("resnet50"), graph, path, "notop")
    assert tree_equal(got, expected)


# ------------------------------------------------------------------------------------------------
# Broken and mismatched files
# ------------------------------------------------------------------------------------------------


def broken_copy(tmp_path, edit):
    path = tmp_path / "broken.h5"
    shutil.copy(kr.reference_h5("resnet50", False), path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _dataset_path(f, layer, var):
    names = [n.decode() if isinstance(n, bytes) else n for n in f[layer].attrs["weight_names"]]
    return f"{layer}/{next(n for n in names if n.rsplit('/', 1)[-1] == var)}"


def _replace(f, layer, var, data):
    path = _dataset_path(f, layer, var)
    del f[path]
    f.create_dataset(path, data=data)


def _drop_dataset(f):
    del f[_dataset_path(f, "conv3_block2_2_conv", "bias")]


def _wrong_shape(f):
    _replace(f, "conv3_block2_2_conv", "kernel", np.zeros((3, 3, 128, 64), "float32"))


def _rename_layer(f):
    names = [n for n in f.attrs["layer_names"]]
    i = names.index("conv3_block2_2_conv")
    f.move("conv3_block2_2_conv", "conv3_block2_2_renamed")
    names[i] = "conv3_block2_2_renamed"
    f.attrs["layer_names"] = names


def _drop_weight_names(f):
    del f["conv3_block2_2_bn"].attrs["weight_names"]


def _int_weights(f):
    _replace(f, "conv3_block2_2_bn", "gamma", np.ones((128,), "int32"))


@pytest.mark.parametrize(
    "edit, layer, needle",
    [
        (_drop_dataset, "conv3_block2_2_conv", "bias"),
        (_wrong_shape, "conv3_block2_2_conv", "(3, 3, 128, 128)"),
        (_rename_layer, "conv3_block2_2_renamed", "conv3_block2_2_conv"),
        (_drop_weight_names, "conv3_block2_2_bn", "weight_names"),
        (_int_weights, "conv3_block2_2_bn", "int32"),
    ],
    ids=["missing_dataset", "wrong_shape", "renamed_layer", "missing_weight_names", "integer_dtype"],
)
def test_broken_file_error_names_file_and_layer(tmp_path, edit, layer, needle):
    path = broken_copy(tmp_path, edit)
    with pytest.raises(WeightFileError) as info:
        flaxzoo.ResNet50(include_top=False, weights=str(path))
    message = str(info.value)
    assert str(path) in message and layer in message and needle in message


def test_file_of_the_other_variant_is_a_layer_count_mismatch():
    path = kr.reference_h5("resnet50", False)
    with pytest.raises(WeightFileError, match="Layer count mismatch.*expected 107 layers, found 106"):
        flaxzoo.ResNet50(include_top=True, weights=str(path))


def test_keras_3_native_weights_file_is_named_as_such(tmp_path):
    path = tmp_path / "model.weights.h5"
    kr.reference_model("resnet50", False).save_weights(path)
    with pytest.raises(WeightFileError, match="Keras 3 native weights file"):
        flaxzoo.ResNet50(include_top=False, weights=str(path))


def test_known_foreign_file_is_refused_by_md5(monkeypatch):
    """The 2016 ResNet50 file has the current file's name; it is recognised by its md5, not loaded."""
    spec = get_spec("resnet50")
    path = kr.reference_h5("resnet50", False)
    reason = spec.foreign_files["a7b3fe01876f51b976af0dea6bc144eb"]
    monkeypatch.setitem(spec.foreign_files, md5sum(path), reason)
    with pytest.raises(WeightFileError, match="deep-learning-models v0.2"):
        flaxzoo.ResNet50(include_top=False, weights=str(path))


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted():
    spec = get_spec("resnet50")
    path = kr.reference_h5("resnet50", False)
    variables, meta = convert_file(spec, graph_of("resnet50"), path, "notop")
    return variables, meta, path


def test_checkpoint_round_trip_keeps_values_and_metadata(tmp_path, converted):
    variables, meta, source = converted
    target = checkpoint.save(tmp_path / "ckpt", variables, meta)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory left beside it
    assert target.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # readable like any directory made here
    restored, record = checkpoint.restore(target, jax.eval_shape(lambda: variables))
    assert tree_equal(restored, variables)
    assert record["model"] == "resnet50" and record["variant"] == "notop"
    assert record["source"]["md5"] == md5sum(source) and record["source"]["file"] == source.name
    assert record["flaxzoo_version"] == flaxzoo.__version__


def test_checkpoint_directory_loads_like_the_h5_it_came_from(tmp_path, converted):
    variables, meta, source = converted
    target = checkpoint.save(tmp_path / "ckpt", variables, meta)
    x = kr.reference_inputs("resnet50", 65)
    model_a, vars_a = flaxzoo.ResNet50(include_top=False, weights=str(source), pooling="avg")
    model_b, vars_b = flaxzoo.ResNet50(include_top=False, weights=str(target), pooling="avg")
    assert tree_equal(vars_a, vars_b)
    np.testing.assert_array_equal(model_a.apply(vars_a, x), model_b.apply(vars_b, x))


def test_checkpoint_of_the_wrong_variant_or_model_is_refused(tmp_path, converted):
    variables, meta, _ = converted
    target = checkpoint.save(tmp_path / "ckpt", variables, meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        flaxzoo.ResNet50(include_top=True, weights=str(target))
    with pytest.raises(CheckpointError, match="resnet50"):
        flaxzoo.VGG16(include_top=False, weights=str(target))


def test_checkpoint_save_never_overwrites(tmp_path, converted):
    variables, meta, _ = converted
    target = checkpoint.save(tmp_path / "ckpt", variables, meta)
    with pytest.raises(CheckpointError, match="already exists"):
        checkpoint.save(target, variables, meta)
