"""Image loading helpers with the semantics of ``keras.utils.load_img``,
``img_to_array`` and ``array_to_img`` (Keras 3), built on PIL.

Use ``load_img(path, target_size=(224, 224))`` + ``img_to_array`` to get the
same pixels Keras' own examples and tests feed to the models. The default
interpolation is ``"nearest"``, as in Keras.

Differences from Keras: ``data_format=None`` means ``"channels_last"`` (no
global config); ``interpolation`` and ``color_mode`` are validated before the
file is opened, even when no resize is needed; any ``os.PathLike`` and any
binary file object with ``read()`` are accepted as ``path``.

``load_img`` decodes the whole image before returning (Keras' PIL image is
lazy, so a truncated file fails later, in ``img_to_array``), and a file it
cannot read raises :class:`flaxzoo.errors.ImageFileError` naming the file: a
``ValueError`` that is also the ``OSError`` PIL and Keras raise. Images over
``max_pixels`` (default ``PIL.Image.MAX_IMAGE_PIXELS``) are refused, where PIL
only warns up to twice that. 16-bit grayscale images (PIL modes ``"I;16"``,
``"I"``) loaded as ``"rgb"``/``"rgba"`` keep their high byte, as PIL decodes
16-bit colour PNGs; Keras' ``convert`` clips them to 255 (a white image).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from flaxzoo.errors import ImageFileError

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


def _name(path) -> str:
    """What to call ``path`` in messages: the file name, or the file object."""
    if isinstance(path, (str, bytes, os.PathLike)):
        return os.fsdecode(path)
    return getattr(path, "name", None) or repr(path)


def _open(path, max_pixels):
    """Open and decode an image fully in memory (a file path's handle is closed again)."""
    if isinstance(path, (str, bytes, os.PathLike)):
        with open(os.path.abspath(os.fspath(path)), "rb") as f:  # a missing file: FileNotFoundError, as Keras
            fp = io.BytesIO(f.read())
    elif hasattr(path, "read"):
        fp = path
    else:
        raise TypeError(f"path should be path-like or io.BytesIO, not {type(path)}")
    name = _name(path)
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as e:  # over twice PIL's own limit: PIL refuses before we see the size
        raise ImageFileError(f"{name}: {e} Raise PIL.Image.MAX_IMAGE_PIXELS to read it.") from None
    except OSError:  # PIL.UnidentifiedImageError, whose message names a BytesIO
        raise ImageFileError(
            f"{name}: cannot identify image file (not an image, or a format PIL cannot read)"
        ) from None
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    pixels = img.width * img.height
    if limit is not None and pixels > limit:
        raise ImageFileError(
            f"{name}: image of {img.width}x{img.height} = {pixels} pixels exceeds the limit of {limit} pixels "
            "(a possible decompression bomb); pass max_pixels= to load_img to allow it."
        )
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise OSError, SyntaxError, ValueError... for broken data
        raise ImageFileError(f"{name}: cannot decode the image, the file is corrupt or truncated ({e})") from None
    return img


def _high_byte(img, name):
    """A 16-bit grayscale image as 8-bit "L": the high byte of each value, as PIL decodes 16-bit colour PNGs."""
    values = np.asarray(img)
    if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageFileError(
            f"{name}: 32-bit integer image with values in [{values.min()}, {values.max()}], outside 16 bits: "
            "no 8-bit conversion; load it with color_mode='grayscale' and scale the array."
        )
    return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), "L")


def load_img(
    path,
    color_mode="rgb",
    target_size=None,
    interpolation="nearest",
    keep_aspect_ratio=False,
    *,
    max_pixels=None,
):
    """Load an image file into a PIL image, like ``keras.utils.load_img``.

    Args:
        path: file path (``str``, ``bytes``, ``os.PathLike``) or a binary file
            object such as ``io.BytesIO``.
        color_mode: ``"rgb"``, ``"rgba"`` or ``"grayscale"``. The image is
            converted to that PIL mode if needed, as Keras does: alpha is
            dropped (not composited), grayscale is repeated over R, G and B.
            Grayscale keeps 16/32-bit modes ``"I;16"``/``"I"`` and otherwise
            converts to ``"L"``; "rgb"/"rgba" take a 16-bit image's high byte
            (Keras clips it to 255).
        target_size: ``None`` (keep size) or ``(height, width)``.
        interpolation: PIL filter used when the size differs: ``"nearest"``
            (default), ``"bilinear"``, ``"bicubic"``, ``"hamming"``, ``"box"``
            or ``"lanczos"``.
        keep_aspect_ratio: if True, resize the largest centred crop that has
            the target aspect ratio instead of stretching the whole image.
        max_pixels: refuse images of more pixels (width x height) than this,
            before decoding them; ``None``: ``PIL.Image.MAX_IMAGE_PIXELS``
            (about 89 million; PIL itself refuses twice that in any case).

    Returns:
        A ``PIL.Image.Image``, decoded.

    Raises:
        flaxzoo.errors.ImageFileError: (a ``ValueError`` and an ``OSError``)
            the file is not an image, is corrupt or truncated, or is over
            ``max_pixels``; the message names the file.
    """
    if color_mode not in _COLOR_MODES:
        raise ValueError('color_mode must be "grayscale", "rgb", or "rgba"')
    if interpolation not in PIL_INTERPOLATION_METHODS:
        raise ValueError(
            f"Invalid interpolation method {interpolation} specified. "
            "Supported methods are "
            + ", ".join(PIL_INTERPOLATION_METHODS)
        )

    img = _open(path, max_pixels)
    if color_mode == "grayscale":
        if img.mode not in ("L", "I;16", "I"):
            img = img.convert("L")
        return _resize(img, target_size, interpolation, keep_aspect_ratio)
    if img.mode.startswith("I;16") or img.mode == "I":
        img = _high_byte(img, _name(path))
    if color_mode == "rgba":
        if img.mode != "RGBA":
            img = img.convert("RGBA")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return _resize(img, target_size, interpolation, keep_aspect_ratio)


def _resize(img, target_size, interpolation, keep_aspect_ratio):
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
