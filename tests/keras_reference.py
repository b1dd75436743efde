"""Keras 3 (JAX backend) as the reference: build a Keras application with random weights and non-trivial
batch-norm statistics, write it in the legacy .h5 format, and run it. Used by the parity tests only."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import atexit  # noqa: E402
import functools  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

def _shared_dir() -> Path:
    """The team's shared data (never committed): $FLAXZOO_SHARED_DIR, else ../shared beside the repo."""
    for candidate in (os.environ.get("FLAXZOO_SHARED_DIR"), Path(__file__).resolve().parents[2] / "shared", "/work/shared"):
        if candidate and (Path(candidate) / "data").is_dir():
            return Path(candidate)
    raise RuntimeError("shared test data not found: set FLAXZOO_SHARED_DIR to the folder holding data/")


SHARED = _shared_dir()
SHARED_DATA = SHARED / "data"


def keras_constructor(spec):
    return getattr(keras.applications, spec.keras_name)


def build(spec, **kwargs) -> keras.Model:
    """The Keras model of ``spec`` with ``weights=None``, named as in a fresh Keras session (auto-named
    layers such as ``conv2d_3`` are numbered per session). Random weights are set by :func:`randomize`."""
    keras.backend.clear_session()
    return keras_constructor(spec)(weights=None, **kwargs)


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Deterministic random weights: kernels scaled by fan-in, BN statistics far from (0, 1)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        kind = w.path.rsplit("/", 1)[-1]
        shape = tuple(w.shape)
        if kind == "moving_mean":
            value = rng.normal(0.0, 0.3, shape)
        elif kind == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        elif kind == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif kind in ("beta", "bias"):
            value = rng.normal(0.0, 0.2, shape)
        else:  # kernels: unit-variance activations, more or less
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / fan_in))
        w.assign(np.asarray(value, np.float32))
    return model


def save_legacy_h5(model: keras.Model, path: str | os.PathLike) -> Path:
    """``model``'s weights in the legacy HDF5 format (Keras 3's writer: str attributes, names without ':0')."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return Path(path)


def copy_weights(src: keras.Model, dst: keras.Model) -> keras.Model:
    """Same-architecture weight copy (e.g. between pooling variants of one no-top model)."""
    dst.set_weights(src.get_weights())
    return dst


def images(n: int, size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """Random RGB images in [0, 255], float32, NHWC."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def run(model: keras.Model, x: np.ndarray, training: bool = False) -> np.ndarray:
    return np.asarray(model(x, training=training))


def calibrate_classifier(model: keras.Model, x: np.ndarray, logit_std: float = 1.5) -> keras.Model:
    """Rescale the classifier kernel so the logits on ``x`` have std ``logit_std``: random weights
    otherwise give a saturated softmax, against which a 1e-5 probability tolerance proves little."""
    classifier = [layer for layer in model.layers if layer.weights][-1]
    features = np.asarray(keras.Model(model.input, classifier.input)(x)).reshape(len(x), -1)
    kernel = classifier.kernel
    w = np.asarray(kernel).reshape(features.shape[1], -1)
    scale = logit_std / max(float(np.std(features @ w)), 1e-12)
    kernel.assign(np.asarray(kernel) * np.float32(scale))
    return model


def keras_preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    return np.asarray(keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode))


def batch_stats(model: keras.Model) -> dict[str, dict[str, np.ndarray]]:
    """Moving statistics of every BatchNormalization layer, in flaxzoo's naming."""
    return {
        layer.name: {"mean": np.asarray(layer.moving_mean), "var": np.asarray(layer.moving_variance)}
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }


# ---------------------------------------------------------------------------------------------
# Session caches shared by the test modules: one randomised Keras model and one .h5 per variant.
# ---------------------------------------------------------------------------------------------


@functools.cache
def _h5_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="flaxzoo-keras-h5-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _spec(name):
    from flaxzoo.registry import get_spec

    return get_spec(name)


@functools.cache
def reference_inputs(name: str, size: int, n: int = 2) -> np.ndarray:
    """``n`` random images at ``size``, preprocessed the Keras way for model ``name``."""
    return keras_preprocess(images(n, size, seed=size), _spec(name).preprocess_mode)


@functools.cache
def reference_model(name: str, include_top: bool, size: int | None = None, pooling: str | None = None) -> keras.Model:
    """Randomised Keras model of registry model ``name`` (same seed, hence same weights, for every
    pooling). ``size=None`` with ``include_top=False`` gives Keras' dynamic (None, None, 3) input, except
    for shape-dependent models (NASNet), whose dynamic-input graph differs: those get the default size."""
    if size is None and _spec(name).shape_dependent:
        size = _spec(name).default_size
    kwargs = dict(include_top=include_top, pooling=pooling)
    if size is not None:
        kwargs["input_shape"] = (size, size, 3)
    model = randomize(build(_spec(name), **kwargs), seed=0)
    if include_top:
        calibrate_classifier(model, reference_inputs(name, size or _spec(name).default_size))
    return model


@functools.cache
def reference_h5(name: str, include_top: bool, size: int | None = None) -> Path:
    """The legacy .h5 of :func:`reference_model` (pooling does not change the weights)."""
    return save_legacy_h5(reference_model(name, include_top, size), _h5_dir() / f"{name}_{include_top}_{size}.h5")
