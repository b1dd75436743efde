"""flaxzoo.imagenet_utils / flaxzoo.image against Keras 3 (JAX backend).

No network: Keras' class index is served from a temporary KERAS_HOME, and
Keras' downloader is replaced by one that fails.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import io
import json
import re
import shutil

import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras.src.applications import imagenet_utils as keras_iu
from keras.src.backend import config as keras_config
from keras.src.utils import file_utils as keras_file_utils

from flaxzoo import image as fz_image
from flaxzoo import imagenet_utils as fz_iu

from keras_reference import SHARED_DATA as DATA

CLASS_INDEX_JSON = DATA / "imagenet_class_index.json"
ELEPHANT = DATA / "elephant.jpg"

MODES = ["caffe", "tf", "torch"]


# --------------------------------------------------------------------------
# preprocess_input


def _image(ndim, data_format, seed=0):
    """Random pixels in [0, 255] (non-integral), channels at the right axis."""
    spatial = (5, 4)
    if data_format == "channels_first":
        shape = (3,) + spatial
    else:
        shape = spatial + (3,)
    if ndim == 4:
        shape = (2,) + shape
    return np.random.default_rng(seed).uniform(0.0, 255.0, size=shape)


def _raises_like_keras(fn, keras_fn):
    with pytest.raises(ValueError) as keras_err:
        keras_fn()
    with pytest.raises(ValueError, match=re.escape(str(keras_err.value)) + "$"):
        fn()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ndim", [3, 4])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first", None])
@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8", "int64"])
def test_preprocess_numpy_matches_keras(mode, ndim, data_format, dtype):
    keras_format = data_format or "channels_last"
    base = _image(ndim, keras_format).astype(dtype)
    ours_in, keras_in = base.copy(), base.copy()

    ours = fz_iu.preprocess_input(ours_in, data_format=data_format, mode=mode)
    ref = keras_iu.preprocess_input(keras_in, data_format=keras_format, mode=mode)

    # Same numpy ops in the same order and dtype: bit-exact for every dtype.
    assert isinstance(ours, np.ndarray)
    assert ours.dtype == ref.dtype == (dtype if "float" in dtype else "float32")
    np.testing.assert_array_equal(ours, ref, strict=True)
    # The caller's arrays end up identical (float: mutated in place; in caffe
    # mode into flipped channel positions; non-float: untouched).
    np.testing.assert_array_equal(ours_in, keras_in, strict=True)
    assert (ours is ours_in) == (ref is keras_in)
    assert np.shares_memory(ours, ours_in) == np.shares_memory(ref, keras_in)
    if "float" in dtype:
        assert np.shares_memory(ours, ours_in)
        assert not np.array_equal(ours_in, base)
    else:
        np.testing.assert_array_equal(ours_in, base, strict=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ndim", [3, 4])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "uint8"])
def test_preprocess_jax_matches_keras(mode, ndim, data_format, dtype):
    base = _image(ndim, data_format, seed=1)
    x = jnp.asarray(base, dtype=dtype)
    before = np.asarray(x).copy()

    ours = fz_iu.preprocess_input(x, data_format=data_format, mode=mode)
    if dtype == "uint8" and mode == "caffe":
        # Keras' tensor path keeps integer tensors integer in caffe mode (the
        # mean is cast to uint8 and wraps); we cast to float32 first, as both
        # Keras' numpy path and its tf/torch tensor paths effectively do.
        ref = keras_iu.preprocess_input(
            x.astype("float32"), data_format=data_format, mode=mode
        )
    else:
        ref = keras_iu.preprocess_input(x, data_format=data_format, mode=mode)

    assert isinstance(ours, type(jnp.zeros(1)))
    assert ours.dtype == ref.dtype
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref), strict=True)
    np.testing.assert_array_equal(np.asarray(x), before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_preprocess_jax_equals_numpy_float32(mode, data_format):
    base = _image(4, data_format, seed=2).astype("float32")
    from_jax = fz_iu.preprocess_input(jnp.asarray(base), data_format, mode)
    from_np = fz_iu.preprocess_input(base.copy(), data_format, mode)
    if mode == "caffe":  # only subtractions: bit-exact
        np.testing.assert_array_equal(np.asarray(from_jax), from_np, strict=True)
    else:
        # XLA:CPU lowers float32 division to a multiply by the reciprocal, so
        # x / 127.5 (tf) and x / 255, x / std (torch) can be 1 ulp away from
        # numpy's correctly rounded division. Keras' own JAX path has the same
        # ulp differences (the tests above match it exactly).
        np.testing.assert_allclose(np.asarray(from_jax), from_np, rtol=1e-6, atol=1e-6)


def test_preprocess_caffe_in_place_example():
    # Values from keras-applications-facts.md 3.2 (measured with Keras).
    x = np.array([[[0.0, 20.0, 40.0]]], dtype="float32")
    y = fz_iu.preprocess_input(x)
    np.testing.assert_allclose(y[0, 0], [-63.939, -96.779, -123.68], rtol=1e-6)
    np.testing.assert_allclose(x[0, 0], [-123.68, -96.779, -63.939], rtol=1e-6)


def test_preprocess_errors_match_keras():
    x = np.zeros((2, 2, 3), "float32")
    _raises_like_keras(
        lambda: fz_iu.preprocess_input(x.copy(), mode="bad"),
        lambda: keras_iu.preprocess_input(x.copy(), mode="bad"),
    )
    _raises_like_keras(
        lambda: fz_iu.preprocess_input(x.copy(), data_format="nhwc"),
        lambda: keras_iu.preprocess_input(x.copy(), data_format="nhwc"),
    )


# --------------------------------------------------------------------------
# decode_predictions


@pytest.fixture
def keras_offline_class_index(tmp_path, monkeypatch):
    """Keras' decode_predictions reading the shared JSON from a temp KERAS_HOME."""
    (tmp_path / "models").mkdir()
    shutil.copy(CLASS_INDEX_JSON, tmp_path / "models" / CLASS_INDEX_JSON.name)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # Keras read KERAS_HOME when it was imported; point its cache dir here too.
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError(f"Keras tried to download: {args}")

    monkeypatch.setattr(keras_file_utils, "urlretrieve", no_network)
    monkeypatch.setattr(keras_iu, "CLASS_INDEX", None)
    yield keras_iu.decode_predictions
    assert keras_iu.CLASS_INDEX is not None  # it was loaded, from tmp_path


def _predictions(dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(4, 1000)) * 3
    preds = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    preds[2] = np.round(preds[2], 3)  # many ties
    preds[3] = 0.0
    preds[3, [7, 385, 386]] = [0.2, 0.5, 0.2]  # ties at the top
    return preds.astype(dtype)


def _assert_same_decoding(ours, ref, dtype):
    assert len(ours) == len(ref)
    for row_ours, row_ref in zip(ours, ref):
        assert [t[:2] for t in row_ours] == [t[:2] for t in row_ref]
        for t_ours, t_ref in zip(row_ours, row_ref):
            assert type(t_ours[2]) is type(t_ref[2]) is np.dtype(dtype).type
            assert t_ours[2] == t_ref[2]


@pytest.mark.parametrize("top", [1, 5, 10])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_decode_predictions_matches_keras(keras_offline_class_index, top, dtype):
    preds = _predictions(dtype)
    ref = keras_offline_class_index(preds, top=top)
    ours = fz_iu.decode_predictions(preds, top=top, class_index=CLASS_INDEX_JSON)
    _assert_same_decoding(ours, ref, dtype)
    assert all(len(row) == top for row in ours)
    # jax input and a pre-loaded dict give the same answer
    loaded = json.loads(CLASS_INDEX_JSON.read_text())
    if dtype == "float32":
        from_jax = fz_iu.decode_predictions(
            jnp.asarray(preds), top=top, class_index=loaded
        )
        _assert_same_decoding(from_jax, ref, dtype)


def test_decode_predictions_known_classes():
    preds = _predictions()
    (top,) = fz_iu.decode_predictions(preds[3:], top=3, class_index=CLASS_INDEX_JSON)
    assert top[0][:2] == ("n02504013", "Indian_elephant")
    assert {t[:2] for t in top[1:]} == {
        ("n02504458", "African_elephant"),
        ("n01514668", "cock"),  # index 7
    }


@pytest.mark.parametrize("shape", [(1000,), (2, 999), (2, 1000, 1), (1, 1, 1000)])
def test_decode_predictions_shape_error_matches_keras(shape):
    preds = np.zeros(shape, "float32")
    _raises_like_keras(
        lambda: fz_iu.decode_predictions(preds, class_index={}),
        lambda: keras_iu.decode_predictions(preds),
    )
    with pytest.raises(ValueError, match=re.escape(f"shape: {shape}")):
        fz_iu.decode_predictions(jnp.asarray(preds))


def test_decode_predictions_default_index_is_fetched_once_and_cached(monkeypatch):
    calls = []

    def fake_get_file(fname, url, md5=None, *, progress=True):
        calls.append((fname, url, md5))
        return CLASS_INDEX_JSON

    monkeypatch.setattr("flaxzoo.weights.files.get_file", fake_get_file)
    monkeypatch.setattr(fz_iu, "CLASS_INDEX", None)

    preds = _predictions()
    first = fz_iu.decode_predictions(preds)
    second = fz_iu.decode_predictions(preds)
    assert calls == [
        (
            "imagenet_class_index.json",
            f"{os.environ['FLAXZOO_BASE_URL']}/download.tensorflow.org/data/imagenet_class_index.json",
            "c2c37ea517e94d9795004a39431a14cb",
        )
    ]
    assert isinstance(fz_iu.CLASS_INDEX, dict) and len(fz_iu.CLASS_INDEX) == 1000
    assert first == second
    # an explicit class_index neither uses nor replaces the cache
    cached = fz_iu.CLASS_INDEX
    dummy = {str(i): ["w", "n"] for i in range(1000)}
    fz_iu.decode_predictions(preds, class_index=dummy)
    assert fz_iu.CLASS_INDEX is cached and len(calls) == 1


# --------------------------------------------------------------------------
# load_img / img_to_array / array_to_img


@pytest.mark.parametrize("target_size", [(224, 224), (299, 299)])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_load_img_matches_keras(target_size, interpolation):
    ours = fz_image.load_img(
        ELEPHANT, target_size=target_size, interpolation=interpolation
    )
    ref = keras.utils.load_img(
        str(ELEPHANT), target_size=target_size, interpolation=interpolation
    )
    assert ours.size == ref.size == target_size[::-1]
    a, b = fz_image.img_to_array(ours), keras.utils.img_to_array(ref)
    assert a.shape == target_size + (3,)
    np.testing.assert_array_equal(a, b, strict=True)
    np.testing.assert_array_equal(
        fz_image.img_to_array(ours, data_format="channels_first"),
        keras.utils.img_to_array(ref, data_format="channels_first"),
        strict=True,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"target_size": (224, 224), "keep_aspect_ratio": True},
        dict(target_size=(100, 300), keep_aspect_ratio=True, interpolation="bicubic"),
        dict(target_size=(64, 48), color_mode="grayscale", interpolation="lanczos"),
        {"target_size": (32, 32), "color_mode": "rgba", "interpolation": "box"},
    ],
)
def test_load_img_options_match_keras(kwargs):
    raw = ELEPHANT.read_bytes()
    ours = fz_image.load_img(io.BytesIO(raw), **kwargs)
    ref = keras.utils.load_img(io.BytesIO(raw), **kwargs)
    assert ours.mode == ref.mode
    np.testing.assert_array_equal(
        fz_image.img_to_array(ours), keras.utils.img_to_array(ref), strict=True
    )
    # str path gives the same image
    np.testing.assert_array_equal(
        fz_image.img_to_array(fz_image.load_img(str(ELEPHANT), **kwargs)),
        fz_image.img_to_array(ours),
    )


def test_load_img_errors_match_keras():
    bad = dict(target_size=(10, 10), interpolation="cubic")
    _raises_like_keras(
        lambda: fz_image.load_img(ELEPHANT, **bad),
        lambda: keras.utils.load_img(ELEPHANT, **bad),
    )
    _raises_like_keras(
        lambda: fz_image.load_img(ELEPHANT, color_mode="bgr"),
        lambda: keras.utils.load_img(ELEPHANT, color_mode="bgr"),
    )
    with pytest.raises(TypeError):
        fz_image.load_img(1234)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("scale", [True, False])
def test_array_to_img_matches_keras(channels, scale):
    x = np.random.default_rng(3).uniform(0, 255, size=(6, 5, channels))
    ours = fz_image.array_to_img(x, scale=scale)
    ref = keras.utils.array_to_img(x, scale=scale)
    assert ours.mode == ref.mode
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    chw = x.transpose(2, 0, 1)
    np.testing.assert_array_equal(
        np.asarray(fz_image.array_to_img(chw, data_format="channels_first")),
        np.asarray(keras.utils.array_to_img(chw, data_format="channels_first")),
    )
