"""Image loading helpers with the semantics of ``keras.utils.load_img``,
``img_to_array`` and ``array_to_img`` (Keras 3), built on PIL.

Use ``load_img(path, target_size=(224, 224))`` + ``img_to_array`` to get the
same pixels Keras' own examples and tests feed to the models. The default
interpolation is ``"nearest"``, as in Keras.

Differences from Keras: ``data_format=None`` means ``"channels_last"`` (no
global config); ``interpolation`` and ``color_mode`` are validated before the
file is opened, even when no resize is needed; any ``os.PathLike`` and any
binary file object with ``read()`` are accepted as ``path``.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

_RESAMPLING = getattr(Image, "Resampling", Image)
PIL_INTERPOLATION_METHODS = {
    "nearest": _RESAMPLING.NEAREST,
    "bilinear": _RESAMPLING.BILINEAR,
    "bicubic": _RESAMPLING.BICUBIC,
    "hamming": _RESAMPLING.HAMMING,
    "box": _RESAMPLING.BOX,
    "lanczos": _RESAMPLING.LANCZOS,
}
_COLOR_MODES = ("grayscale", "rgb", "rgba")


def _standardize_data_format(data_format):
    if data_format is None:
        return "channels_last"
    data_format = str(data_format).lower()
    if data_format not in ("channels_first", "channels_last"):
        raise ValueError(
            "The `data_format` argument must be one of "
            "{'channels_first', 'channels_last'}. "
            f"Received: data_format={data_format}"
        )
    return data_format


def _open(path):
    """Open an image fully in memory (the file handle is closed again)."""
    if isinstance(path, (str, bytes, os.PathLike)):
        with open(os.path.abspath(os.fspath(path)), "rb") as f:
            return Image.open(io.BytesIO(f.read()))
    if hasattr(path, "read"):
        return Image.open(path)
    raise TypeError(f"path should be path-like or io.BytesIO, not {type(path)}")


def load_img(
    path,
    color_mode="rgb",
    target_size=None,
    interpolation="nearest",
    keep_aspect_ratio=False,
):
    """Load an image file into a PIL image, like ``keras.utils.load_img``.

    Args:
        path: file path (``str``, ``bytes``, ``os.PathLike``) or a binary file
            object such as ``io.BytesIO``.
        color_mode: ``"rgb"``, ``"rgba"`` or ``"grayscale"``. The image is
            converted to that PIL mode if needed; grayscale keeps 16/32-bit
            modes ``"I;16"``/``"I"`` and otherwise converts to ``"L"``.
        target_size: ``None`` (keep size) or ``(height, width)``.
        interpolation: PIL filter used when the size differs: ``"nearest"``
            (default), ``"bilinear"``, ``"bicubic"``, ``"hamming"``, ``"box"``
            or ``"lanczos"``.
        keep_aspect_ratio: if True, resize the largest centred crop that has
            the target aspect ratio instead of stretching the whole image.

    Returns:
        A ``PIL.Image.Image``.
    """
    if color_mode not in _COLOR_MODES:
        raise ValueError('color_mode must be "grayscale", "rgb", or "rgba"')
    if interpolation not in PIL_INTERPOLATION_METHODS:
        raise ValueError(
            f"Invalid interpolation method {interpolation} specified. "
            "Supported methods are "
            + ", ".join(PIL_INTERPOLATION_METHODS)
        )

    img = _open(path)
    if color_mode == "grayscale":
        if img.mode not in ("L", "I;16", "I"):
            img = img.convert("L")
    elif color_mode == "rgba":
        if img.mode != "RGBA":
            img = img.convert("RGBA")
    elif img.mode != "RGB":
        img = img.convert("RGB")

    if target_size is None:
        return img
    height, width = target_size
    if img.size == (width, height):
        return img
    resample = PIL_INTERPOLATION_METHODS[interpolation]
    if not keep_aspect_ratio:
        return img.resize((width, height), resample)

    # Largest centred crop with the target aspect ratio (integer math as Keras).
    src_w, src_h = img.size
    crop_h = min(src_h, (src_w * height) // width)
    crop_w = min(src_w, (src_h * width) // height)
    left = (src_w - crop_w) // 2
    top = (src_h - crop_h) // 2
    box = (left, top, left + crop_w, top + crop_h)
    return img.resize((width, height), resample, box=box)


def img_to_array(img, data_format=None, dtype="float32"):
    """Convert a PIL image to a 3-D numpy array, like Keras' ``img_to_array``.

    Returns ``(H, W, C)`` for ``"channels_last"`` (the default, also for
    ``None``) or ``(C, H, W)`` for ``"channels_first"``; a single-channel
    image gets a channel axis of size 1.
    """
    data_format = _standardize_data_format(data_format)
    x = np.asarray(img, dtype=dtype)
    if x.ndim == 2:
        x = x[None] if data_format == "channels_first" else x[..., None]
    elif x.ndim == 3:
        if data_format == "channels_first":
            x = x.transpose(2, 0, 1)
    else:
        raise ValueError(f"Unsupported image shape: {x.shape}")
    return x


def array_to_img(x, data_format=None, scale=True, dtype="float32"):
    """Convert a 3-D array to a PIL image, like Keras' ``array_to_img``.

    With ``scale=True`` the values are shifted and scaled to span [0, 255]
    first. 1 channel gives mode ``"L"`` (or ``"I"`` if values exceed 255),
    3 channels ``"RGB"``, 4 channels ``"RGBA"``.
    """
    data_format = _standardize_data_format(data_format)
    x = np.array(x, dtype=dtype)  # a copy: scaling below is in place
    if x.ndim != 3:
        raise ValueError(
            "Expected image array to have rank 3 (single image). "
            f"Got array with shape: {x.shape}"
        )
    if data_format == "channels_first":
        x = x.transpose(1, 2, 0)
    if scale:
        x = x - np.min(x)
        x_max = np.max(x)
        if x_max != 0:
            x /= x_max
        x *= 255
    # PIL infers the mode from shape and dtype: uint8 (H, W, 4) -> "RGBA",
    # (H, W, 3) -> "RGB", (H, W) -> "L"; int32 (H, W) -> "I".
    channels = x.shape[2]
    if channels in (3, 4):
        return Image.fromarray(x.astype("uint8"))
    if channels == 1:
        if np.max(x) > 255:
            return Image.fromarray(x[:, :, 0].astype("int32"))
        return Image.fromarray(x[:, :, 0].astype("uint8"))
    raise ValueError(f"Unsupported channel number: {channels}")
