"""Pretrained RGB weights on any number of input channels (timm's ``adapt_input_conv``): opt-in, as
``adapt_input_channels=True`` of the constructors, because Keras refuses ``weights="imagenet"`` on other
channel counts.

The first convolution's kernel is adapted along its input axis:

- 1 channel: summed over R, G and B. The model on a gray image equals the RGB model on that image repeated
  three times.
- C channels (C != 3): channel i takes RGB channel ``i mod 3``'s kernel, all scaled by 3 / C, so that the
  first layer's activations keep their scale. On ``[R, G, B, R, G, B]`` (C = 6) the model equals the RGB model
  on ``[R, G, B]``.

Per-channel constants of preprocessing inside the model (EfficientNet's ``Normalization`` and ``Rescaling``,
EfficientNetV2 B0-B3's and ConvNeXt's ``Normalization``) follow the same channel map: averaged over R, G and B
for 1 channel, channel i takes RGB channel ``i mod 3``'s for C. Keras leaves the normalization out of
EfficientNetV2 B0-B3 and ConvNeXt when the input is not RGB; an adapted model keeps the pretrained model's.
Preprocessing outside the model (``preprocess_input``) is the caller's: feed each channel as the pretrained
model expects the RGB channel it stands for (for 1 channel, the mean of the per-channel constants).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from flaxzoo import graph as graph_lib
from flaxzoo.layers import CONSTANTS

RGB = 3


class InputChannelsAdapted(UserWarning):
    """Issued when pretrained RGB weights are adapted to another number of input channels; says which layers changed."""


def adapt_channels(values, channels: int, *, kernel: bool, axis: int = -1) -> np.ndarray:
    """RGB ``values`` (3 along ``axis``) mapped onto ``channels`` channels: a kernel is summed (1 channel) or
    repeated and scaled by 3 / channels; a per-channel constant is averaged (1 channel) or repeated."""
    values = np.asarray(values)
    if values.shape[axis] != RGB:
        raise ValueError(f"expected {RGB} RGB channels along axis {axis}, found shape {values.shape}")
    if channels < 1:
        raise ValueError(f"the number of input channels must be at least 1, got {channels}")
    if channels == RGB:
        return values
    if channels == 1:
        return values.sum(axis, keepdims=True) if kernel else values.mean(axis, keepdims=True)
    repeated = np.take(values, np.arange(channels) % RGB, axis=axis)
    return (repeated * (RGB / channels)).astype(values.dtype) if kernel else repeated


def _first_kernel(params: Mapping, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The path of the first 4-d kernel on 3 input channels in a layer's parameters (a composite layer's
    sublayers included, in their order)."""
    for key, value in params.items():
        if isinstance(value, Mapping):
            found = _first_kernel(value, (*path, key))
            if found:
                return found
        elif key == "kernel" and len(value.shape) == 4 and value.shape[2] == RGB:
            return (*path, key)
    return None


def input_layers(graph: graph_lib.Graph) -> tuple[list[tuple[str, tuple[str, ...]]], tuple[str, tuple[str, ...]]]:
    """What an adaptation changes in ``graph`` (an RGB model's): the per-channel constants before the first
    convolution, as ``(layer, path in "constants")``, and that convolution's kernel, as ``(layer, path in "params")``."""
    constants = []
    for layer in graph.layers:
        owned = graph.layer_variables(layer.name)
        for key, value in owned.get(CONSTANTS, {}).items():
            if value.shape == (RGB,):
                constants.append((layer.name, (*layer.path, key)))
        found = _first_kernel(owned.get("params", {}))
        if found:
            return constants, (layer.name, (*layer.path, *found))
    raise ValueError("the model has no convolution on its 3 input channels")


def _replace(tree: Mapping, path: Sequence[str], fn) -> dict:
    tree = dict(tree)
    tree[path[0]] = fn(tree[path[0]]) if len(path) == 1 else _replace(tree[path[0]], path[1:], fn)
    return tree


def _adapted(leaf, channels: int, kernel: bool):
    axis = 2 if kernel else -1
    if isinstance(leaf, jax.ShapeDtypeStruct):  # abstract variables: the shape only
        shape = list(leaf.shape)
        shape[axis] = channels
        return jax.ShapeDtypeStruct(tuple(shape), leaf.dtype)
    return adapt_channels(np.asarray(leaf), channels, kernel=kernel, axis=axis)


def adapt_input_channels(model, variables: Mapping, channels: int):
    """``(model, variables)`` of an RGB model (input channels 3), adapted to take ``channels`` channels (see
    the module docstring): returns the adapted ``(model, variables)`` and issues an
    :class:`InputChannelsAdapted` warning naming what changed."""
    height, width, found = model.input_shape
    if found != RGB:
        raise ValueError(f"adapt_input_channels adapts a model on {RGB} input channels; this one takes {found}")
    adapted = model.clone(input_shape=(height, width, channels), pretrained_channels=RGB)
    if channels == RGB:
        return adapted, dict(variables)
    name = model.model_name or type(model).__name__
    constants, (conv, kernel_path) = input_layers(graph_lib.trace(model.clone(feature_info=()), model.traced_shape))
    variables = dict(variables)
    variables["params"] = _replace(variables["params"], kernel_path, lambda k: _adapted(k, channels, kernel=True))
    for _, path in constants:
        variables[CONSTANTS] = _replace(variables[CONSTANTS], path, lambda c: _adapted(c, channels, kernel=False))
    rule = "summed over RGB" if channels == 1 else f"repeated over {channels} channels and scaled by 3/{channels}"
    what = f"{conv}'s kernel {rule}"
    if constants:
        how = "averaged" if channels == 1 else "repeated"
        what += f"; the preprocessing constants of {', '.join(sorted({layer for layer, _ in constants}))} {how}"
    warnings.warn(
        f"{name}: pretrained weights for {RGB} input channels adapted to {channels}: {what}",
        InputChannelsAdapted,
        stacklevel=2,
    )
    return adapted, variables
