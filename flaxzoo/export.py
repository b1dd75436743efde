"""Export a model with its variables bound: StableHLO (``jax.export``) and ONNX (jax2onnx).

    model, variables = flaxzoo.ResNet50(weights="imagenet")
    flaxzoo.export.export(model, variables, "resnet50.onnx", format="onnx", batch=None)  # dynamic batch
    flaxzoo.export.export(model, variables, "resnet50.stablehlo", format="stablehlo")
    f = flaxzoo.export.load_stablehlo("resnet50.stablehlo")  # f(x) -> probabilities, no flaxzoo needed

The exported function is the model in inference mode (moving batch-norm statistics, no dropout) taking a
float32 NHWC batch and returning float32; preprocessing stays outside, as in the model (``preprocess_input``).
Convolutions are traced in Keras' forms, not the CPU forms, so the graph holds standard convolutions that
every runtime fuses, and pooling windows as strided slices (:func:`flaxzoo.layers.export_forms`). Files are
written whole or not at all (a temporary file beside the destination, renamed into place).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxzoo._jax2onnx import indexed_scans
from flaxzoo.inference import fold_batchnorm
from flaxzoo.layers import export_forms
from flaxzoo.weights.files import atomic_file

FORMATS = ("onnx", "stablehlo")
SUFFIXES = {"onnx": ".onnx", "stablehlo": ".stablehlo"}
ONNX_OPSET = 23  # jax2onnx's default; onnxruntime >= 1.20 runs it


def input_shape(model, batch: int | None = 1, size: Sequence[int] | None = None) -> tuple:
    """The exported input's shape ``(batch, H, W, C)``: ``batch=None`` leaves the batch dynamic (a symbol
    ``"B"``); ``size=(H, W)`` sets the spatial size where the model leaves it free (no top, no
    ``input_shape``), else the model's size (free dimensions at the default size)."""
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise ValueError(f"batch must be a positive integer, or None for a dynamic batch; got {batch!r}")
    _, height, width, channels = model.traced_shape
    if size is not None:
        size = tuple(size)
        if len(size) != 2 or not all(isinstance(d, int) and d > 0 for d in size):
            raise ValueError(f"input size must be (height, width) in pixels; got {size!r}")
        if model.include_top and tuple(model.input_shape[:2]) != size:
            raise ValueError(
                f"{model.model_name or type(model).__name__} takes {model.input_shape[0]}x{model.input_shape[1]} "
                f"images (its classifier fixes the size); got an export size of {size[0]}x{size[1]}"
            )
        if min(size) < model.min_size:
            raise ValueError(f"input size {size[0]}x{size[1]}: the model needs at least {model.min_size}x{model.min_size}")
        height, width = size
    return ("B" if batch is None else batch, height, width, channels)


def export_format(path: str | os.PathLike, format: str | None = None) -> str:
    """``format`` checked, or the format ``path``'s suffix names (``.onnx``, ``.stablehlo``)."""
    if format is None:
        format = next((f for f, suffix in SUFFIXES.items() if Path(path).suffix == suffix), None)
        if format is None:
            raise ValueError(f"{path}: name the format (one of {', '.join(FORMATS)}) or use a .onnx or .stablehlo suffix")
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    return format


def inference_function(model, variables, *, fold_bn: bool = False) -> Callable:
    """``f(x) -> float32 outputs`` with the variables bound (they become constants of the exported graph);
    ``fold_bn`` folds batch norms into the convolutions first (a smaller graph; equal within rounding)."""
    if fold_bn:
        model, variables = fold_batchnorm(model, variables)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)

    def f(x):
        out = model.apply(variables, x)
        return jax.tree_util.tree_map(lambda y: y.astype(jnp.float32), out)

    return f


def to_stablehlo(
    model, variables, *, batch: int | None = 1, size: Sequence[int] | None = None, fold_bn: bool = False,
    platforms: Sequence[str] | None = None,
) -> jax.export.Exported:  # fmt: skip
    """The model as a :class:`jax.export.Exported` (StableHLO with the variables bound); ``batch=None``
    exports a dynamic batch. ``platforms`` (``("cpu", "cuda", "tpu")``, ...): where it may run (default:
    this process's backend); one lowering serves them all, since Keras' convolution forms are the same
    on every platform."""
    shape = input_shape(model, batch, size)
    spec_shape = jax.export.symbolic_shape(", ".join(str(d) for d in shape)) if batch is None else shape
    f = inference_function(model, variables, fold_bn=fold_bn)
    with export_forms():
        return jax.export.export(jax.jit(f), platforms=platforms)(jax.ShapeDtypeStruct(spec_shape, jnp.float32))


def to_onnx(
    model, variables, *, batch: int | None = 1, size: Sequence[int] | None = None, fold_bn: bool = False,
    opset: int = ONNX_OPSET,
):  # fmt: skip
    """The model as an ``onnx.ModelProto`` (through jax2onnx, the variables as initializers); ``batch=None``
    names the batch dimension ``"B"`` and leaves it dynamic. Input ``"input"``, output ``"output"``
    (a backbone's: ``"output_0"``, ...). Needs the ``export`` extra (``pip install flaxzoo[export]``)."""
    try:
        from jax2onnx import to_onnx as jax2onnx_to_onnx
    except ImportError as e:  # optional extra
        raise ImportError("ONNX export needs jax2onnx: pip install 'flaxzoo[export]'") from e
    shape = input_shape(model, batch, size)
    f = inference_function(model, variables, fold_bn=fold_bn)
    with export_forms(), indexed_scans():
        outputs = len(jax.tree_util.tree_leaves(jax.eval_shape(f, jax.ShapeDtypeStruct((1, *shape[1:]), jnp.float32))))
        output_names = ["output"] if outputs == 1 else [f"output_{i}" for i in range(outputs)]
        return jax2onnx_to_onnx(
            f, inputs=[shape], model_name=model.model_name or type(model).__name__, opset=opset,
            input_names=["input"], output_names=output_names,
        )  # fmt: skip


def export(
    model, variables, path: str | os.PathLike, *, format: str | None = None, batch: int | None = 1,
    size: Sequence[int] | None = None, fold_bn: bool = False, **options: Any,
) -> Path:  # fmt: skip
    """Write the model with its variables to ``path`` as ``format`` (``"onnx"`` or ``"stablehlo"``; default:
    from the suffix, ``.onnx`` or ``.stablehlo``). ``batch=None``: a dynamic batch. ``options`` go to
    :func:`to_onnx` (``opset``) or :func:`to_stablehlo` (``platforms``). Returns the path."""
    path = Path(path)
    format = export_format(path, format)
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give the file to write")
    if format == "onnx":
        proto = to_onnx(model, variables, batch=batch, size=size, fold_bn=fold_bn, **options)
        if proto.ByteSize() >= 2**31:  # protobuf's limit; no registered model comes near (ConvNeXtXLarge: 1.4 GB)
            raise ValueError(f"{path}: the ONNX model is {proto.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB")
        data = proto.SerializeToString()
    else:
        data = bytes(to_stablehlo(model, variables, batch=batch, size=size, fold_bn=fold_bn, **options).serialize())
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return path


def load_stablehlo(path: str | os.PathLike) -> Callable:
    """The function a ``.stablehlo`` file holds: ``f(x)`` runs it (``jax.export.deserialize(...).call``);
    ``f.exported`` is the :class:`jax.export.Exported` (shapes, platforms). A damaged file is a
    ``ValueError`` naming it."""
    path = Path(path)
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except (ValueError, TypeError, IndexError, AssertionError, RuntimeError, AttributeError) as e:
        raise ValueError(f"{path}: not a serialized jax.export (StableHLO) artifact ({e})") from e

    def f(x):
        return exported.call(np.asarray(x, dtype=np.float32) if not isinstance(x, jax.Array) else x)

    f.exported = exported
    return f
