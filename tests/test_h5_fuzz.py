"""Broken weight files, generated: every mutation of a valid Keras .h5 either loads correctly or raises a
flaxzoo error (a ValueError subclass) naming the file and, where the mutation has one, the layer or
attribute at fault; nothing else escapes, and nothing reaches the flaxzoo cache.

The files go through ``weights="imagenet"`` resolution (the mutated file sits in Keras' cache, where
flaxzoo picks it up: MobileNet files have no published md5), so conversion and caching are both exercised.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import h5py
import jax
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flaxzoo import graph as graph_lib
from flaxzoo.errors import FlaxzooError
from flaxzoo.zoo import create_model, get_spec
from flaxzoo.weights import cache_dir, flaxzoo_home, keras_home, load_variables
from flaxzoo.weights.h5 import read_attr_list

from test_weights_files import tree_equal

SPEC = get_spec("mobilenet")
VARIANT = "2_5_128_notop"
SIZE = 128


@pytest.fixture(scope="module")
def valid():
    """(a random-weight MobileNet 0.25 no-top legacy .h5 written by Keras, our graph, its variables)."""
    from keras.src.legacy.saving import legacy_h5_format

    import keras_reference as kr

    model = kr.randomize(keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)), seed=0)
    path = kr._h5_dir() / "fuzz_mobilenet_0.25_128.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    keras.backend.clear_session()
    module, _ = create_model("mobilenet", abstract=True, weights=None, alpha=0.25, include_top=False, input_shape=(SIZE, SIZE, 3))
    graph = graph_lib.trace(module, (1, SIZE, SIZE, 3))
    return path, graph, jax.device_get(load_variables(SPEC, graph, str(path), VARIANT))


# ------------------------------------------------------------------------------------------------
# Mutations: each edits the file and returns the names the error must mention (besides the file)
# ------------------------------------------------------------------------------------------------


@dataclass
class Mutation:
    kind: str
    layer_index: int = 0
    weight_index: int = 0
    fraction: float = 0.5
    seed: int = 0

    def __repr__(self):
        return f"Mutation({self.kind}, layer={self.layer_index}, weight={self.weight_index}, f={self.fraction:.3f}, seed={self.seed})"


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _pick(f: h5py.File, m: Mutation) -> tuple[str, list[str]]:
    """A weighted layer of the file and its weight names, chosen by the mutation's indices."""
    weighted = [n for n in read_attr_list(f, "layer_names") if read_attr_list(f[n], "weight_names")]
    layer = weighted[m.layer_index % len(weighted)]
    return layer, read_attr_list(f[layer], "weight_names")


def _dataset(f, m):
    layer, weights = _pick(f, m)
    wn = weights[m.weight_index % len(weights)]
    return layer, wn, f[layer][wn]


def _replace(f, m, make) -> list[str]:
    layer, wn, ds = _dataset(f, m)
    data = make(ds[()])
    del f[layer][wn]
    f[layer].create_dataset(wn, data=data)
    return [layer, wn]


def mutate_h5(path, m: Mutation) -> list[str]:
    with h5py.File(path, "r+") as f:
        if m.kind == "drop_layer_names":
            del f.attrs["layer_names"]
            return ["layer_names"]
        if m.kind == "drop_weight_names":
            layer, _ = _pick(f, m)
            del f[layer].attrs["weight_names"]
            return [layer, "weight_names"]
        if m.kind == "drop_dataset":
            layer, wn, _ = _dataset(f, m)
            del f[layer][wn]
            return [layer, wn]
        if m.kind == "drop_group":
            layer, _ = _pick(f, m)
            del f[layer]
            return [layer]
        if m.kind == "dataset_is_group":
            layer, wn, _ = _dataset(f, m)
            del f[layer][wn]
            f[layer].create_group(wn)
            return [layer, wn]
        if m.kind == "wrong_shape":
            return _replace(f, m, lambda a: np.zeros((*a.shape, 2), a.dtype))
        if m.kind == "transposed":
            return _replace(f, m, lambda a: np.zeros(a.shape[::-1] + (1,) if a.ndim < 2 else a.shape[::-1], a.dtype))
        if m.kind in ("int32", "bool", "bytes", "complex64"):
            make = {
                "int32": lambda a: a.astype(np.int32),
                "bool": lambda a: a > 0,
                "bytes": lambda a: np.full(a.shape, b"w", "S1"),
                "complex64": lambda a: a.astype(np.complex64),
            }[m.kind]
            return _replace(f, m, make)
        if m.kind in ("float16", "float64"):  # converted, as Keras converts
            _replace(f, m, lambda a: a.astype(m.kind))
            return []
        if m.kind in ("extra_layer", "missing_layer"):
            names = list(read_attr_list(f, "layer_names"))
            layer, weights = _pick(f, m)
            i = names.index(layer)
            if m.kind == "extra_layer":
                f.create_group("extra_conv").attrs["weight_names"] = ["extra_conv/kernel"]
                f["extra_conv"].create_dataset("extra_conv/kernel", data=np.zeros((1, 1, 8, 8), "float32"))
                names.insert(i, "extra_conv")
            else:
                del names[i]
            f.attrs["layer_names"] = np.array([n.encode() for n in names])
            return ["Layer count mismatch", "extra_conv" if m.kind == "extra_layer" else layer]
        if m.kind == "extra_weight":
            layer, weights = _pick(f, m)
            f[layer].create_dataset("extra", data=np.zeros((3,), "float32"))
            f[layer].attrs["weight_names"] = [*weights, "extra"]
            return [layer]
        if m.kind == "layer_names_wrong_type":
            f.attrs["layer_names"] = np.arange(3)
            return ["layer_names"]
    raise AssertionError(m.kind)


def mutate_bytes(path, m: Mutation) -> list[str]:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(m.seed)
    if m.kind == "truncate":
        del data[int(len(data) * m.fraction) :]
    elif m.kind == "flip_bytes":  # metadata (the first KB), a B-tree or data: whatever the offsets hit
        for at in rng.integers(0, min(len(data), 1 << 12 if m.fraction < 0.5 else len(data)), 1 + m.seed % 8):
            data[at] ^= 1 << int(rng.integers(8))
    elif m.kind == "not_hdf5":
        data = bytearray(b"\x89PNG\r\n\x1a\n" if m.seed % 2 else b"<html>404 Not Found</html>\n")
    elif m.kind == "empty":
        data = bytearray()
    else:
        raise AssertionError(m.kind)
    path.write_bytes(bytes(data))
    return []


def keras3_native(path, graph_unused=None) -> list[str]:
    keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(
        path.with_suffix(".weights.h5")
    )
    shutil.move(path.with_suffix(".weights.h5"), path)
    keras.backend.clear_session()
    return ["Keras 3 native weights file"]


H5_KINDS = [
    "drop_layer_names", "drop_weight_names", "drop_dataset", "drop_group", "dataset_is_group", "wrong_shape",
    "transposed", "int32", "bool", "bytes", "complex64", "float16", "float64", "extra_layer", "missing_layer",
    "extra_weight", "layer_names_wrong_type",
]  # fmt: skip
BYTE_KINDS = ["truncate", "flip_bytes", "not_hdf5", "empty"]

mutations = st.builds(
    Mutation,
    kind=st.sampled_from(H5_KINDS + BYTE_KINDS),
    layer_index=st.integers(0, 200),
    weight_index=st.integers(0, 3),
    fraction=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**16),
)


def resolve_imagenet(graph):
    return load_variables(SPEC, graph, "imagenet", VARIANT)


def check(path, needles, graph, reference) -> str:
    """Resolve "imagenet" with ``path`` in Keras' cache: a correct load or a named flaxzoo error; no cache.
    Returns the outcome: the error's class, or "loaded"."""
    try:
        variables = resolve_imagenet(graph)
    except FlaxzooError as e:
        outcome = type(e).__name__
        message = str(e)
        assert isinstance(e, ValueError)
        assert str(path) in message, message
        for needle in needles:
            assert needle in message, (needle, message)
        assert not cache_dir(SPEC, VARIANT).exists()
    else:
        loaded = jax.device_get(variables)
        assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(reference)
        for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(reference)):
            assert a.shape == b.shape and a.dtype == b.dtype
        assert not needles, f"loaded although the file lacks or breaks {needles}"
        shutil.rmtree(cache_dir(SPEC, VARIANT))  # the next example starts from an empty cache
        outcome = "loaded"
    leftovers = [p for p in flaxzoo_home().rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert not leftovers, leftovers
    return outcome


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(m=mutations)
def test_mutated_h5_loads_correctly_or_raises_a_named_flaxzoo_error(valid, m):
    source, graph, reference = valid
    path = keras_home() / "models" / SPEC.weight_file(VARIANT).fname
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    needles = mutate_bytes(path, m) if m.kind in BYTE_KINDS else mutate_h5(path, m)
    event(f"{m.kind}: {check(path, needles, graph, reference)}")  # --hypothesis-show-statistics


@pytest.mark.parametrize("kind", H5_KINDS + BYTE_KINDS + ["keras3_native"])
def test_every_mutation_kind_at_a_fixed_place(valid, kind):
    """Each kind once, whatever hypothesis draws: a file that is never fuzzed is never tested."""
    source, graph, reference = valid
    path = keras_home() / "models" / SPEC.weight_file(VARIANT).fname
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    m = Mutation(kind, layer_index=7, weight_index=1, fraction=0.4, seed=3)
    if kind == "keras3_native":
        needles = keras3_native(path)
    else:
        needles = mutate_bytes(path, m) if kind in BYTE_KINDS else mutate_h5(path, m)
    check(path, needles, graph, reference)


def test_unmutated_file_loads_exactly(valid):
    source, graph, reference = valid
    path = keras_home() / "models" / SPEC.weight_file(VARIANT).fname
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    assert tree_equal(jax.device_get(resolve_imagenet(graph)), reference)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(m=st.builds(Mutation, kind=st.sampled_from(["truncate", "flip_bytes"]), fraction=st.floats(0.0, 0.999),
                   seed=st.integers(0, 2**16)))  # fmt: skip
def test_truncated_or_bit_flipped_file_loads_or_raises_a_named_flaxzoo_error(valid, m):
    """Byte-level damage: truncation anywhere, and bit flips in the metadata or anywhere. (A flip inside
    array data loads: HDF5 keeps no checksums. Files with a published md5 are verified before reading.)"""
    source, graph, reference = valid
    path = keras_home() / "models" / SPEC.weight_file(VARIANT).fname
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    event(f"{m.kind}: {check(path, mutate_bytes(path, m), graph, reference)}")
