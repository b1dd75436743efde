"""Keras 3 (JAX backend) as the reference: build a Keras application with random weights and non-trivial
batch-norm statistics, write it in the legacy .h5 format, and run it. Used by the parity tests only."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import atexit  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
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


@contextlib.contextmanager
def _placeholder_initializers():
    """Initialise Keras variables with zeros from numpy instead of Keras' initializers, which compile a
    random kernel per weight shape (seconds per model on CPU). Only for models :func:`randomize` overwrites."""
    from keras.src.backend.common.variables import Variable

    original = Variable._initialize_with_initializer

    def zeros(self, initializer):
        self._initialize(self._convert_to_tensor(np.zeros(self._shape, dtype=self._dtype)))

    Variable._initialize_with_initializer = zeros
    try:
        yield
    finally:
        Variable._initialize_with_initializer = original


def build(spec, *, placeholder_weights: bool = False, **kwargs) -> keras.Model:
    """The Keras model of ``spec`` with ``weights=None``, named as in a fresh Keras session (auto-named
    layers such as ``conv2d_3`` are numbered per session). ``placeholder_weights``: zeros, for a model
    whose weights are all set afterwards (:func:`randomize`), built without Keras' initializers."""
    keras.backend.clear_session()
    with _placeholder_initializers() if placeholder_weights else contextlib.nullcontext():
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


def images(n: int, size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """Random RGB images in [0, 255], float32, NHWC."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def _jitted(models: tuple[keras.Model, ...], training: bool):
    """One jitted stateless call of ``models`` (sharing one set of weights), kept on the first model so it
    lives and dies with it. Several models with the same weights compile together and XLA merges their
    common layers: the three pooling variants of a no-top model cost one compilation."""
    cache = models[0].__dict__.setdefault("_flaxzoo_jitted", {})
    key = (tuple(id(m) for m in models), training)
    if key not in cache:
        cache[key] = jax.jit(lambda t, n, x: [m.stateless_call(t, n, x, training=training) for m in models])
    return cache[key]


def _state(model: keras.Model):
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def run_all(models: list[keras.Model], x: np.ndarray) -> list[np.ndarray]:
    """Keras' inference outputs of models with identical weights (e.g. each pooling of one no-top model),
    jitted as Keras' ``predict`` runs them (a stateless call under jit), in one compilation."""
    outputs = _jitted(tuple(models), False)(*_state(models[0]), x)
    return [jax.tree_util.tree_map(np.asarray, out) for out, _ in outputs]  # multi-output models: lists


def run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Keras' inference output, jitted (one compilation; an eager call compiles every layer's ops apart)."""
    return run_all([model], x)[0]


def run_eager(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """``model(x)`` op by op: bit-exact with flaxzoo's ``apply`` run outside jit."""
    return np.asarray(model(x, training=False))


def _with_features(model: keras.Model) -> keras.Model:
    """``model`` with a second output: the classifier's input (the same layers and weights)."""
    if "_flaxzoo_with_features" not in model.__dict__:
        classifier = [layer for layer in model.layers if layer.weights][-1]
        model.__dict__["_flaxzoo_with_features"] = keras.Model(model.input, [model.output, classifier.input])
    return model.__dict__["_flaxzoo_with_features"]


def calibrate_classifier(model: keras.Model, x: np.ndarray, logit_std: float = 1.5) -> keras.Model:
    """Rescale the classifier kernel so the logits on ``x`` have std ``logit_std``: random weights
    otherwise give a saturated softmax, against which a 1e-5 probability tolerance proves little."""
    _, features = _jitted((_with_features(model),), False)(*_state(_with_features(model)), x)[0][0]
    features = np.asarray(features).reshape(len(x), -1)
    kernel = [layer for layer in model.layers if layer.weights][-1].kernel
    w = np.asarray(kernel).reshape(features.shape[1], -1)
    scale = logit_std / max(float(np.std(features @ w)), 1e-12)
    kernel.assign(np.asarray(kernel) * np.float32(scale))
    return model


def normalize_batch_stats(model: keras.Model, x: np.ndarray) -> keras.Model:
    """Every batch norm's moving statistics set to those of its input on ``x`` (one training-mode pass with momentum
    0): a deep random network (MobileNet) otherwise gives the same features for every image (they varied by 1e-8
    of their mean), so its classes say nothing of the input."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    return model


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """:func:`run` for a model :func:`calibrate_classifier` has seen: reuses that compilation."""
    return np.asarray(_jitted((_with_features(model),), False)(*_state(_with_features(model)), x)[0][0][0])


def keras_preprocess(x: np.ndarray, mode: str | None) -> np.ndarray:
    if mode is None:  # the model preprocesses its input (EfficientNet, ConvNeXt): Keras' preprocess_input is the identity
        return x.copy()
    return np.asarray(keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode))


_STAT_NAMES = {"moving_mean": "mean", "moving_variance": "var"}


def run_training(model: keras.Model, x: np.ndarray) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """One training-mode forward pass as Keras trains (a jitted ``stateless_call``): the outputs and the
    updated moving statistics of every BatchNormalization layer, in flaxzoo's naming. ``model`` is unchanged.

    Jitted, because eager Keras rounds differently from any jitted run (Keras' own included) and ~100
    training-mode batch norms over a small batch amplify that to ~1e-3 (InceptionV3 at 151 px, batch 2).
    """
    [(outputs, updated)] = _jitted((model,), True)(*_state(model), x)
    stats: dict[str, dict[str, np.ndarray]] = {}
    for variable, value in zip(model.non_trainable_variables, updated):
        layer, var = variable.path.split("/")[-2:]  # NASNet nests paths in name scopes
        if var not in _STAT_NAMES:  # Normalization's weights, Dropout's seed generator state
            continue
        stats.setdefault(layer, {})[_STAT_NAMES[var]] = np.asarray(value)
    return np.asarray(outputs), stats


# ---------------------------------------------------------------------------------------------
# Session caches shared by the test modules: one randomised Keras model and one .h5 per variant.
# ---------------------------------------------------------------------------------------------


@functools.cache
def _h5_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="flaxzoo-keras-h5-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


_RECENT_MODELS: list[str] = []  # newest last
_STORES: list[dict] = []
KEEP_MODELS = 2  # VGG19 or NASNetLarge Keras models are GBs with their compilations: keep few around


def per_model_cache(fn):
    """Cache ``fn(name, ...)`` for the :data:`KEEP_MODELS` most recently used model names only.

    Tests of one model run together (one xdist group), so older models are not asked for again soon;
    when they are, they are rebuilt identically (fixed seeds)."""
    signature = inspect.signature(fn)
    store: dict = {}
    _STORES.append(store)

    @functools.wraps(fn)
    def cached(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple(bound.arguments.values())
        _use(key[0])
        if key not in store:
            store[key] = fn(*key)
        return store[key]

    return cached


def _use(name: str) -> None:
    if name in _RECENT_MODELS:
        _RECENT_MODELS.remove(name)
    _RECENT_MODELS.append(name)
    while len(_RECENT_MODELS) > KEEP_MODELS:
        evicted = _RECENT_MODELS.pop(0)
        for store in _STORES:
            for key in [k for k in store if k[0] == evicted]:
                del store[key]


def _spec(name):
    from flaxzoo.zoo import get_spec

    return get_spec(name)


@per_model_cache
def reference_inputs(name: str, size: int, n: int = 2) -> np.ndarray:
    """``n`` random images at ``size``, preprocessed the Keras way for model ``name``."""
    return keras_preprocess(images(n, size, seed=size), _spec(name).preprocess_mode)


@per_model_cache
def reference_model(name: str, include_top: bool, size: int | None = None, pooling: str | None = None) -> keras.Model:
    """Randomised Keras model of registry model ``name`` (same seed, hence same weights, for every
    pooling). ``size=None`` with ``include_top=False`` gives Keras' dynamic (None, None, 3) input, except
    for shape-dependent models (NASNet), whose dynamic-input graph differs: those get the default size."""
    if size is None and _spec(name).shape_dependent:
        size = _spec(name).default_size
    kwargs = dict(include_top=include_top, pooling=pooling)
    if size is not None:
        kwargs["input_shape"] = (size, size, 3)
    model = randomize_with_constants(build(_spec(name), placeholder_weights=True, **kwargs), seed=0)
    if include_top:
        calibrate_classifier(model, reference_inputs(name, size or _spec(name).default_size))
    return model


@per_model_cache
def structure_model(name: str, include_top: bool) -> keras.Model:
    """The Keras model of registry model ``name`` as the registry describes it (default size with the top,
    dynamic without, static for shape-dependent models), its variables never initialised: layers, names,
    shapes and counts only (ConvNeXtXLarge's 350M parameters cost nothing)."""
    spec = _spec(name)
    size = spec.default_size if include_top or spec.shape_dependent else None
    keras.backend.clear_session()
    with keras.StatelessScope(initialize_variables=False):
        return keras_constructor(spec)(
            weights=None, include_top=include_top, **({"input_shape": (size, size, 3)} if size else {})
        )


@per_model_cache
def reference_h5(name: str, include_top: bool, size: int | None = None) -> Path:
    """The legacy .h5 of :func:`reference_model` (pooling does not change the weights)."""
    return save_legacy_h5(reference_model(name, include_top, size), _h5_dir() / f"{name}_{include_top}_{size}.h5")


@per_model_cache
def reference_probabilities(name: str, size: int) -> np.ndarray:
    """Keras' output of the top :func:`reference_model` at ``size`` on :func:`reference_inputs`."""
    return predict(reference_model(name, True, size), reference_inputs(name, size))


def randomize_with_constants(model: keras.Model, seed: int = 0) -> keras.Model:
    """:func:`randomize` for a model with Normalization layers holding weights: their mean (normal), variance
    (in 0.5-2) and count (an integer) are drawn apart, every other weight as :func:`randomize` draws it."""
    normalizations = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization) and layer.weights]
    own = {id(w) for layer in normalizations for w in layer.weights}
    randomize(types.SimpleNamespace(weights=[w for w in model.weights if id(w) not in own]), seed)
    rng = np.random.default_rng(seed + 1)
    for layer in normalizations:
        shape = tuple(layer.adapt_mean.shape)
        layer.adapt_mean.assign(rng.normal(0.0, 0.3, shape).astype(np.float32))
        layer.adapt_variance.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        layer.count.assign(int(rng.integers(1, 1 << 20)))
        layer.finalize_state()  # Keras computes with constants derived from the weights when they are set
    return model


@contextlib.contextmanager
def dropout_off(model: keras.Model):
    """Within this context, ``model``'s Dropout layers (EfficientNet's stochastic depth, top dropout) are the
    identity also in training mode (rate 0), so that a training pass is deterministic."""
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    for layer in dropouts:
        layer.rate = 0.0
    try:
        yield model
    finally:
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate


# ------------------------------------------------------------------------------------------------
# Which weight file a constructor asks for (MobileNet, V2, V3): both resolvers patched to record it, then stop

SIZE_WARNING = "`input_shape` is undefined or non-square"  # Keras' text when it falls back to the 224 file


class Requested(Exception):
    """Raised by the patched file resolvers instead of touching the network."""


def record_requests(monkeypatch) -> dict[str, list]:
    """Patch Keras' and flaxzoo's ``get_file``: each records the file asked for, then raises Requested."""
    import flaxzoo.weights
    from keras.src.utils import file_utils as keras_file_utils

    asked = {"keras": [], "flaxzoo": []}

    def keras_get_file(fname, origin, **kwargs):
        asked["keras"].append((fname, origin))
        raise Requested(fname)

    def flaxzoo_get_file(fname, url, md5=None, **kwargs):
        asked["flaxzoo"].append((fname, url, md5))
        raise Requested(fname)

    monkeypatch.setattr(keras_file_utils, "get_file", keras_get_file)
    monkeypatch.setattr(flaxzoo.weights, "get_file", flaxzoo_get_file)
    return asked


def size_warnings(record) -> list[str]:
    return [str(w.message) for w in record if SIZE_WARNING in str(w.message)]


def request(fn, expected=Requested, **kwargs) -> list[str]:
    """Call a constructor with weights="imagenet" until it asks for the file; returns Keras' size warnings."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(expected):
            fn(**kwargs)
    return size_warnings(record)


def error_of(fn, *args, **kwargs) -> str:
    """The message of the ValueError ``fn(*args, **kwargs)`` raises (the test fails where it raises none)."""
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def assert_raises_as_keras(ours, keras_constructor, **kwargs) -> None:
    """flaxzoo's constructor raises Keras' ValueError, message included, before any warning (as Keras does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these gets as far as a warning
        mine = error_of(ours, **kwargs)
    keras.backend.clear_session()
    assert mine == error_of(keras_constructor, **kwargs)
