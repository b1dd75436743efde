"""ImageNet input preprocessing and prediction decoding.

Mirrors ``keras.applications.imagenet_utils`` (Keras 3): ``preprocess_input``
reproduces Keras' arithmetic operation for operation (so results are bit-equal),
and ``decode_predictions`` uses Keras' top-k algorithm and class index file.

Differences from Keras, all deliberate:

* ``data_format=None`` means ``"channels_last"``; no global config is read.
* Anything that is not a ``numpy.ndarray`` is treated as an array-like and
  computed with ``jax.numpy`` (Keras would fail on a plain list).
* Integer JAX arrays are cast to float32 first, as Keras does for numpy.
  (Keras' tensor path keeps them integer in ``"caffe"`` mode, and the result
  then wraps around or truncates.)
* ``decode_predictions`` takes an optional ``class_index`` (a path or a
  loaded dict) and gets the default file from ``flaxzoo.weights.files``.
"""

from __future__ import annotations

import json
import os

import numpy as np

CLASS_INDEX = None
CLASS_INDEX_FNAME = "imagenet_class_index.json"
# Below the storage host, which $FLAXZOO_BASE_URL may replace (see flaxzoo.registry.base_url).
CLASS_INDEX_PATH = "download.tensorflow.org/data/imagenet_class_index.json"
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"

# Per-mode channel statistics, in the channel order the mean is applied in.
_CAFFE_MEAN = (103.939, 116.779, 123.68)  # B, G, R (applied after the flip)
_TORCH_MEAN = (0.485, 0.456, 0.406)  # R, G, B
_TORCH_STD = (0.229, 0.224, 0.225)  # R, G, B

_MODES = ("caffe", "tf", "torch")
_DATA_FORMATS = ("channels_first", "channels_last")


def preprocess_input(x, data_format=None, mode="caffe"):
    """Preprocess a batch of images (or one image) the way Keras does.

    Args:
        x: float array with values in [0, 255], 3-D ``(H, W, C)`` or 4-D
            ``(N, H, W, C)`` (channels first: ``(C, H, W)`` / ``(N, C, H, W)``),
            with 3 RGB channels. A ``numpy.ndarray`` or a JAX array.
        data_format: ``"channels_last"`` (also what ``None`` means) or
            ``"channels_first"``.
        mode: ``"caffe"``: RGB -> BGR, then subtract the per-channel mean
            (103.939, 116.779, 123.68), no scaling. ``"tf"``: ``x / 127.5 - 1``.
            ``"torch"``: ``x / 255``, then per channel ``(x - mean) / std``
            with ImageNet mean/std in RGB order.

    Returns:
        The preprocessed array (float32 unless the input was another float).

    In-place behaviour (same as Keras, on purpose):

    * A **float numpy array is modified in place**. In ``"tf"`` and
      ``"torch"`` mode the returned object is ``x`` itself. In ``"caffe"``
      mode the result is a channel-reversed *view* of ``x``, so afterwards the
      caller's ``x`` holds the mean-subtracted values in RGB positions (the
      result read back with its channels flipped). Pass ``x.copy()`` to keep
      the input.
    * A non-float numpy array (e.g. ``uint8``) is first copied to float32, so
      the caller's array is left untouched.
    * JAX arrays are immutable; the computation is functional.

    Raises:
        ValueError: unknown ``mode`` or ``data_format``.
    """
    if mode not in _MODES:
        raise ValueError(
            "Expected mode to be one of `caffe`, `tf` or `torch`. "
            f"Received: mode={mode}"
        )
    if data_format is None:
        data_format = "channels_last"
    elif data_format not in _DATA_FORMATS:
        raise ValueError(
            "Expected data_format to be one of `channels_first` or "
            f"`channels_last`. Received: data_format={data_format}"
        )
    if isinstance(x, np.ndarray):
        return _preprocess_numpy(x, data_format, mode)
    return _preprocess_jax(x, data_format, mode)


def preprocess_for_mode(x, mode: str | None, data_format=None):
    """A model's ``preprocess_input``: :func:`preprocess_input` in its ``mode``; for a model that
    preprocesses its input itself (``mode=None``: EfficientNet, ConvNeXt, ...) the identity, as Keras'."""
    return x if mode is None else preprocess_input(x, data_format=data_format, mode=mode)


def _channel_axis(ndim, data_format):
    if data_format == "channels_last":
        return ndim - 1
    return 0 if ndim == 3 else 1


def _preprocess_numpy(x, data_format, mode):
    # In-place arithmetic, exactly as Keras' numpy path.
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x

    axis = _channel_axis(x.ndim, data_format)
    if mode == "torch":
        x /= 255.0
        mean, std = _TORCH_MEAN, _TORCH_STD
    else:
        x = np.flip(x, axis=axis)  # RGB -> BGR, a view
        mean, std = _CAFFE_MEAN, None

    def channel(c):
        index = [slice(None)] * x.ndim
        index[axis] = c
        return tuple(index)

    for c in range(3):
        x[channel(c)] -= mean[c]  # Python float: computed in x's dtype
    if std is not None:
        for c in range(3):
            x[channel(c)] /= std[c]
    return x


def _preprocess_jax(x, data_format, mode):
    import jax.numpy as jnp

    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if mode == "tf":
        return x / 127.5 - 1.0

    axis = _channel_axis(x.ndim, data_format)
    if mode == "torch":
        x = x / 255.0
        mean, std = _TORCH_MEAN, _TORCH_STD
    else:
        x = jnp.flip(x, axis=axis)  # RGB -> BGR
        mean, std = _CAFFE_MEAN, None

    # Keras adds the negated mean cast to x's dtype, then divides by std cast
    # to x's dtype; for float32 this equals the numpy path bit for bit.
    shape = [1] * x.ndim
    shape[axis] = 3
    x = x + jnp.asarray(-np.array(mean), dtype=x.dtype).reshape(shape)
    if std is not None:
        x = x / jnp.asarray(np.array(std), dtype=x.dtype).reshape(shape)
    return x


def _load_class_index(class_index):
    """Return the index dict; ``class_index`` is None, a path or a dict."""
    global CLASS_INDEX
    if isinstance(class_index, dict):
        return {str(k): v for k, v in class_index.items()}
    if class_index is not None:
        with open(os.fspath(class_index), encoding="utf-8") as f:
            return json.load(f)
    if CLASS_INDEX is None:
        from flaxzoo.registry import base_url
        from flaxzoo.weights.files import get_file

        url = f"{base_url()}/{CLASS_INDEX_PATH}"
        path = get_file(CLASS_INDEX_FNAME, url, CLASS_INDEX_MD5)
        with open(path, encoding="utf-8") as f:
            CLASS_INDEX = json.load(f)
    return CLASS_INDEX


def decode_predictions(preds, top=5, class_index=None):
    """Decode ImageNet predictions into ``(wnid, name, score)`` tuples.

    Args:
        preds: numpy or JAX array of shape ``(samples, 1000)``.
        top: how many top classes to return per sample.
        class_index: optional override, a path to a Keras-format
            ``imagenet_class_index.json`` or an already-loaded dict
            (``"0".."999" -> [wnid, name]``). By default the Keras file is
            fetched once (``$KERAS_HOME/models`` is searched first) and cached
            in the module global ``CLASS_INDEX``.

    Returns:
        One list per sample of ``(wnid, name, score)`` tuples, highest score
        first; ``score`` is a numpy scalar of ``preds``' dtype.

    Raises:
        ValueError: if ``preds`` is not 2-D with 1000 columns.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions "
            "(i.e. a 2D array of shape (samples, 1000)). "
            f"Received array with shape: {preds.shape}"
        )
    index = _load_class_index(class_index)
    results = []
    for pred in preds:
        # Same selection as Keras (default argsort, ties not stable), then a
        # stable sort by score.
        top_indices = pred.argsort()[-top:][::-1]
        result = [tuple(index[str(i)]) + (pred[i],) for i in top_indices]
        result.sort(key=lambda t: t[2], reverse=True)
        results.append(result)
    return results
