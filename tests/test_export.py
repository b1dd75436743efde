"""Export (ONNX through jax2onnx, run in onnxruntime; StableHLO through jax.export) and safetensors files:
one model of every family, random "pretrained-shaped" weights with calibrated batch norms."""

import functools
import json
import zlib

import jax
import numpy as np
import pytest

import flaxzoo
from flaxzoo import _jax2onnx as jax2onnx_indexes
from flaxzoo import export as export_lib
from flaxzoo.errors import CheckpointError
from flaxzoo.weights import safetensors_file
from flaxzoo.weights.checkpoint import _flat, _shapes
from flaxzoo.zoo import create_model, get_spec

import keras_reference as kr
import tiers
from flaxzoo.testing import random_variables

FAMILIES = tiers.FAMILIES
# Exported graphs run other kernels than XLA's (onnxruntime's MLAS convolutions, another summation order):
# equal within float32 rounding grown over the depth, far inside the 1e-4 of the output's scale.
RELATIVE = 1e-4


def _export_size(name: str) -> int:
    """A small input that keeps every stride's 'SAME' padding odd somewhere: the minimum size, plus one."""
    return get_spec(name).min_size + 1


@functools.cache
def _model(name: str):
    """(module, variables, inputs): no top, average pooling, at a small size. Batch norms keep the identity
    statistics of random_variables: statistics taken from these three images over a 1x1 map would make the
    output a ratio of near-equal numbers, all rounding."""
    size, mode = _export_size(name), get_spec(name).preprocess_mode
    model, variables = random_variables(name, include_top=False, pooling="avg", input_shape=(size, size, 3))
    return model, variables, kr.keras_preprocess(kr.images(3, size, seed=size), mode)


def _close(got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = float(np.max(np.abs(want)))
    assert scale > 0
    assert float(np.max(np.abs(got - want))) <= RELATIVE * scale


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_and_stablehlo_exports_equal_the_model_at_batch_1_and_3(tmp_path, name):
    """One dynamic-batch export in each format, run in onnxruntime and as a deserialized jax.export artifact."""
    import onnxruntime

    model, variables, images = _model(name)
    with jax.default_matmul_precision("highest"):
        want = np.asarray(jax.jit(model.apply)(variables, images))

    f = export_lib.load_stablehlo(export_lib.export(model, variables, tmp_path / f"{name}.stablehlo", batch=None))
    assert f.exported.platforms == (jax.default_backend(),)
    for n in (1, 3):
        _close(f(images[:n]), want[:n])

    path = export_lib.export(model, variables, tmp_path / f"{name}.onnx", batch=None)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "output")
    assert inp.shape[0] == "B" and inp.shape[1:] == list(images.shape[1:])
    for n in (1, 3):
        _close(session.run(None, {"input": images[:n]})[0], want[:n])


def test_onnx_export_of_a_classifier_has_standard_convolutions_and_a_fixed_batch(tmp_path):
    import onnx
    import onnxruntime

    model, variables = random_variables("mobilenet", alpha=0.25, input_shape=(64, 64, 3), classes=7)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    path = export_lib.export(model, variables, tmp_path / "m.onnx", batch=2, fold_bn=True)
    graph = onnx.load(str(path)).graph
    # conv1, 13 depthwise, 13 pointwise and the 1x1 classifier conv_preds, each one Conv: no CPU forms
    assert sum(node.op_type == "Conv" for node in graph.node) == 28
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 64, 64, 3]
    _close(session.run(None, {"input": images})[0], model.apply(variables, images))


@pytest.mark.parametrize("name", ["mobilenet", "resnet50"])
def test_the_indexed_scans_answer_as_jax2onnx_own(monkeypatch, name):
    """Every connection check the shortcut answers and every producer lookup during one export, compared
    with jax2onnx's own scans."""
    from jax2onnx.converter import optimizer_graph_utils, output_binding

    connected, scan = output_binding._value_is_graph_connected, optimizer_graph_utils._producer_node
    owned, lookup = jax2onnx_indexes.owned_by_graph, jax2onnx_indexes.ProducerIndex.__call__
    counts = {"connected": 0, "producers": 0}

    def checked_owned(ctx, value):
        answer = owned(ctx, value)
        if answer:
            assert connected(ctx, value), value
            counts["connected"] += 1
        return answer

    def checked_lookup(self, nodes, value):
        answer = lookup(self, nodes, value)
        assert answer is scan(nodes, value), value
        counts["producers"] += 1
        return answer

    monkeypatch.setattr(jax2onnx_indexes, "owned_by_graph", checked_owned)
    monkeypatch.setattr(jax2onnx_indexes.ProducerIndex, "__call__", checked_lookup)
    model, variables = random_variables(name, include_top=False, input_shape=(32 + 1,) * 2 + (3,))
    export_lib.to_onnx(model, variables, batch=None)
    assert counts["connected"] > 100 and counts["producers"] > 100
    assert output_binding._value_is_graph_connected is connected  # restored
    assert optimizer_graph_utils._producer_node is scan


def test_export_refuses_what_it_cannot_write(tmp_path):
    model, variables = random_variables("mobilenet", alpha=0.25, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="format"):
        export_lib.export(model, variables, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="unknown export format"):
        export_lib.export(model, variables, tmp_path / "m.onnx", format="tflite")
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        export_lib.export(model, variables, tmp_path / "m.onnx", batch=0)
    with pytest.raises(ValueError, match="its classifier fixes the size"):
        export_lib.export(model, variables, tmp_path / "m.stablehlo", size=(96, 96))
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_stablehlo_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "broken.stablehlo"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="broken.stablehlo"):
        export_lib.load_stablehlo(path)


# ------------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------------

# Above this many parameters the round trip is checked on the layout alone (names and shapes, no bytes):
# ConvNeXtXLarge's 1.4 GB would dominate the suite's disk traffic.
BYTES_UP_TO = 30_000_000


def _random_like(abstract, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: rng.integers(0, 100, a.shape).astype(a.dtype) if np.issubdtype(a.dtype, np.integer)
        else rng.standard_normal(a.shape, dtype=np.float32).astype(a.dtype), abstract,
    )  # fmt: skip


@pytest.mark.parametrize("name", tiers.MODELS)
def test_safetensors_round_trip_is_bit_exact(tmp_path, name):
    _, abstract = create_model(name, abstract=True, weights=None)
    if get_spec(name).params > BYTES_UP_TO:
        flat = _flat(abstract)
        assert len({k.replace("/", ".") for k in flat}) == len(flat)  # names stay distinct as tensor names
        assert _shapes(safetensors_file._nest({k: v for k, v in flat.items()})) == _shapes(abstract)
        return
    variables = _random_like(abstract)
    path = flaxzoo.save_safetensors(tmp_path / f"{name}.safetensors", name, variables, variant="top")
    restored, record = safetensors_file.load(path, abstract)
    assert (record["model"], record["variant"]) == (get_spec(name).name, "top")
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(variables)
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(variables)):
        assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """A MobileNet (alpha 0.25, 64 px) .safetensors file and its variables."""
    kwargs = dict(alpha=0.25, input_shape=(64, 64, 3))
    _, variables = random_variables("mobilenet", **kwargs)
    path = flaxzoo.save_safetensors(tmp_path_factory.mktemp("st") / "m.safetensors", "MobileNet", variables, variant="top")
    return path, variables, kwargs


def test_constructors_load_safetensors_files(mobilenet_file):
    path, variables, kwargs = mobilenet_file
    _, loaded = flaxzoo.MobileNet(weights=str(path), **kwargs)
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
        assert np.array_equal(got, want)
    header = safetensors_file.read_metadata(path)
    assert header["model"] == "mobilenet" and header["variables"]["params/conv1/kernel"] == [3, 3, 3, 8]
    assert header["crc32"]["params/conv1/kernel"] == zlib.crc32(np.ascontiguousarray(variables["params"]["conv1"]["kernel"]))


def test_safetensors_of_another_model_or_shape_is_refused(mobilenet_file):
    path, _, kwargs = mobilenet_file
    with pytest.raises(CheckpointError, match="weights of mobilenet, not resnet50"):
        flaxzoo.ResNet50(weights=str(path))
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*do not fit this model.*wrong shape"):
        flaxzoo.MobileNet(weights=str(path), alpha=0.5, input_shape=(64, 64, 3))


def _header_length(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


@pytest.mark.parametrize(
    "damage",
    ["truncated", "header_bytes", "header_json", "data_bit", "no_flaxzoo_metadata"],
)
def test_a_damaged_safetensors_file_is_an_error_naming_it(tmp_path, mobilenet_file, damage):
    path, variables, kwargs = mobilenet_file
    data = bytearray(path.read_bytes())
    n = _header_length(data)
    if damage == "truncated":
        data = data[: len(data) - 1000]
    elif damage == "header_bytes":
        data[8 + n // 2] = 0xFF  # invalid UTF-8 inside the JSON header
    elif damage == "header_json":
        header = json.loads(data[8 : 8 + n])
        header["__metadata__"]["crc32"] = "{not json"
        text = json.dumps(header).encode()
        assert len(text) <= n  # padded with spaces to the recorded length, as the format allows
        data = data[:8] + text.ljust(n) + data[8 + n :]
    elif damage == "data_bit":
        data[-5] ^= 0x10
    elif damage == "no_flaxzoo_metadata":
        import safetensors.numpy

        data = bytearray(safetensors.numpy.save({"w": np.zeros(3, np.float32)}))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        flaxzoo.MobileNet(weights=str(broken), **kwargs)
