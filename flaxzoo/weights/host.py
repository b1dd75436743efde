"""Host buffers that jax adopts without copying."""

from __future__ import annotations

import math

import numpy as np


def aligned_array(shape, dtype, align: int = 64):
    """An uninitialised numpy array in a 64-byte aligned buffer: ``jax.device_put(..., may_alias=True)``
    adopts such a buffer on CPU instead of copying it, so loaded weights are held once, not twice."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buffer = np.empty(nbytes + align, np.uint8)
    offset = -buffer.ctypes.data % align
    return buffer[offset : offset + nbytes].view(dtype).reshape(shape)
