"""The ``flaxzoo`` command: classify images, convert Keras weight files, list the models.

    flaxzoo predict elephant.jpg --model resnet50 [--weights imagenet|FILE.h5|CHECKPOINT_DIR] [--top 5]
    flaxzoo predict cat.jpg --model mobilenet --weights mobilenet_2_5_128_tf.h5   # alpha 0.25, 128 px: inferred
    flaxzoo convert --model resnet50 --h5 resnet50_weights_tf_dim_ordering_tf_kernels.h5 --out DIR
    flaxzoo evaluate --model resnet50 --data val/ [--labels LABELS] [--resize 256 --crop 224 | --keras-resize] [--json OUT]
    flaxzoo list
    flaxzoo info resnet50
    flaxzoo summary inception_v3 [--notop] [--pooling avg] [--input-shape 224,224,3] [--freeze-until mixed8]
    flaxzoo finetune --model mobilenet --data train/ --val-data val/ --freeze-until conv_pw_13_relu --epochs 5
    flaxzoo export --model resnet50 --format onnx --out resnet50.onnx [--dynamic-batch] [--notop --pooling avg]

The commands that build a model take the constructor's arguments: ``--alpha``, ``--depth-multiplier``,
``--input-size`` and ``--arg key=value``; where a weight file determines them (its published name, its weight
shapes, a converted checkpoint's metadata) they are inferred and printed on stderr (:mod:`flaxzoo.arguments`).
Every command compiles through JAX's persistent compilation cache (``$FLAXZOO_HOME/xla-cache``;
``FLAXZOO_COMPILATION_CACHE=0`` turns it off), so a second run skips XLA's compilation.

Errors (every ``ValueError``, flaxzoo's own errors included, and unreadable files) are reported as one
``flaxzoo: error: <message>`` line on stderr with exit status 2. This module is argparse and printing
only: what the commands do is the front door's (:mod:`flaxzoo.zoo`), which library code imports instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flaxzoo.arguments import command_line_arguments, resolve
from flaxzoo.registry import ModelSpec
from flaxzoo.zoo import (
    CONVERT_FORMATS,
    VARIANTS,
    check_weights,
    classify,
    convert_to_checkpoint,
    create_model,
    get_spec,
    list_models,
    model_table,
)

PRECISIONS = ("default", "high", "highest")


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool], indent: str = "") -> str:
    """Columns padded to their widest cell; ``right[i]`` right-aligns column ``i``."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        return (
            indent
            + "  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()
        )

    return "\n".join([line(header), *(line(r) for r in rows)])


def format_predictions(path: str, decoded) -> str:
    """One image's table: rank, class id (wnid), class name, probability (6 decimals)."""
    rows = [(str(i), wnid, name, f"{float(p):.6f}") for i, (wnid, name, p) in enumerate(decoded, start=1)]
    table = format_table(("rank", "class id", "class name", "probability"), rows, (True, False, False, True), "  ")
    return f"{path}\n{table}"


def _percent(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def format_registry() -> str:
    header = ("model", "Keras name", "size", "min size", "preprocess", "params", "params (no top)",
              "depth", "top-1", "top-5", "GFLOPs")  # fmt: skip
    rows = []
    for name in list_models():
        s = get_spec(name)
        rows.append((s.name, s.keras_name, s.default_size, s.min_size, s.preprocess_mode or "in-model", f"{s.params:,}",
                     f"{s.params_notop:,}", s.depth, _percent(s.top1), _percent(s.top5),
                     f"{s.flops / 1e9:.2f}"))  # fmt: skip
    right = (False, False, True, True, False, True, True, True, True, True, True)
    return format_table(header, rows, right)


def format_info(spec: ModelSpec) -> str:
    from flaxzoo.weights import cache_dir
    from flaxzoo.weights.checkpoint import is_checkpoint

    lines = [
        f"{spec.keras_name} ({spec.name})",
        f"  module           {spec.module}",
        f"  input            {spec.default_size}x{spec.default_size}x3 (at least {spec.min_size}x{spec.min_size})",
        f"  preprocessing    {spec.preprocess_mode or 'in the model (preprocess_input is the identity)'}",
        f"  params           {spec.params:,} ({spec.params_notop:,} without the top)",
        f"  depth            {spec.depth}",
        f"  ImageNet top-1   {_percent(spec.top1)}, top-5 {_percent(spec.top5)}",
        f"  GFLOPs           {spec.flops / 1e9:.2f}",
        "  weights",
    ]
    for variant, wf in spec.weights.items():
        cached = cache_dir(spec, variant)
        lines += [
            f"    {variant}",
            f"      file         {wf.fname}",
            f"      url          {wf.url}",
            f"      {'sha256' if wf.sha256 else 'md5':<13}{wf.sha256 or wf.md5 or '(none published)'}",
            f"      converted    {cached if is_checkpoint(cached) else '(not yet)'}",
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------


def note(line: str) -> None:
    """What a command inferred or chose, on stderr: stdout stays the result."""
    print(line, file=sys.stderr, flush=True)


def weights_argument(text: str) -> str | None:
    """``--weights``: "imagenet", "none" (random: None) or an existing file or checkpoint directory."""
    return None if text.lower() == "none" else check_weights(text)


def model_arguments(
    args, spec: ModelSpec, weights, *, include_top: bool | None = None, input_shape: tuple | None = None
) -> dict:
    """The constructor's keyword arguments (but ``weights``) from ``--alpha``, ``--depth-multiplier``,
    ``--input-size`` and ``--arg``, completed from the weight file (printed on stderr)."""
    given = command_line_arguments(
        spec, alpha=args.alpha, depth_multiplier=args.depth_multiplier,
        input_size=getattr(args, "input_size", None), pairs=args.arg,
    )  # fmt: skip
    if input_shape is not None:
        if "input_shape" in given and given["input_shape"] != input_shape:
            raise ValueError(f"--input-size {given['input_shape'][0]} and {input_shape}: give one input size")
        given["input_shape"] = input_shape
    resolved = resolve(spec, weights, given, include_top=include_top)
    if line := resolved.note(spec):
        note(line)
    return resolved.kwargs


def cmd_predict(args) -> None:
    from flaxzoo.imagenet_utils import decode_predictions

    spec = get_spec(args.model)
    if args.top < 1:
        raise ValueError(f"--top must be at least 1; got {args.top}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1; got {args.batch_size}")
    for path in args.images:
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such image file")
    if args.class_index is not None and not os.path.isfile(args.class_index):
        raise ValueError(f"{args.class_index}: no such class index file")
    weights = weights_argument(args.weights)
    model, variables = spec.constructor(weights=weights, **model_arguments(args, spec, weights, include_top=True))
    size = tuple(model.traced_shape[1:3])
    probs = classify(
        spec, model, variables, args.images, batch_size=args.batch_size, precision=args.precision, size=size,
        progress=not args.quiet,
    )  # fmt: skip
    decoded = decode_predictions(probs, top=args.top, class_index=args.class_index)
    note(f"{spec.keras_name}: images resized to {size[0]}x{size[1]} (nearest, as Keras' load_img(target_size=...))")
    print("\n\n".join(format_predictions(path, d) for path, d in zip(args.images, decoded)))


def cmd_convert(args) -> None:
    spec = get_spec(args.model)
    if os.path.exists(args.out) or os.path.islink(args.out):
        raise ValueError(f"{args.out}: already exists; not overwriting (remove it or choose another --out)")
    if not os.path.isfile(args.h5):
        raise ValueError(f"{args.h5}: no such file")
    include_top = None if args.variant is None else args.variant == "top"
    kwargs = model_arguments(args, spec, args.h5, include_top=include_top)
    top = kwargs.pop("include_top", None)
    variant = args.variant or (None if top is None else "top" if top else "notop")
    info = convert_to_checkpoint(spec, args.h5, args.out, variant, format=args.format, **kwargs)
    print(
        f"converted {spec.name} ({info['variant']}): {info['params']:,} params from {info['source']['file']} "
        f"(md5 {info['source']['md5']}) -> {info['path']}"
    )


def cmd_list(args) -> None:
    if args.stages:
        from flaxzoo.features import stage_table

        print(stage_table())
        return
    print(model_table() if args.markdown else format_registry())


def cmd_info(args) -> None:
    print(format_info(get_spec(args.model)))


def parse_frozen(text: str | None) -> str | int | None:
    """``--freeze-until``: a Keras layer index (``249``: ``model.layers[:249]``) or a layer name."""
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def parse_input_shape(text: str | None) -> tuple[int | None, ...] | None:
    """``"224,224,3"`` or ``"None,None,3"`` → a Keras ``input_shape`` tuple."""
    if text is None:
        return None
    try:
        return tuple(None if d.strip().lower() == "none" else int(d) for d in text.split(","))
    except ValueError:
        raise ValueError(f"--input-shape {text!r}: expected H,W,C such as 224,224,3 (None for any size)") from None


def cmd_summary(args) -> None:
    from flaxzoo.surgery import freeze, summary

    spec = get_spec(args.model)
    weights = weights_argument(args.weights) if args.weights else None
    include_top = False if args.notop else (None if weights not in (None, "imagenet") else True)
    kwargs = model_arguments(args, spec, weights, include_top=include_top, input_shape=parse_input_shape(args.input_shape))
    model, _ = create_model(spec.name, abstract=True, weights=None, pooling=args.pooling, **kwargs)
    if args.freeze_until is not None:
        model = freeze(model, parse_frozen(args.freeze_until))
    summary(model)


def cmd_export(args) -> None:
    from flaxzoo.export import export, export_format

    spec = get_spec(args.model)
    shape = parse_input_shape(args.input_shape)
    if shape is not None and len(shape) == 2:
        shape = (*shape, 3)
    weights = weights_argument(args.weights)
    kwargs = model_arguments(args, spec, weights, include_top=not args.notop, input_shape=shape)
    if args.classes is not None:
        kwargs["classes"] = args.classes
    fmt = export_format(args.out, args.format)  # before the model is built
    if os.path.exists(args.out):
        raise ValueError(f"{args.out}: already exists; not overwriting (remove it or choose another --out)")
    model, variables = spec.constructor(weights=weights, pooling=args.pooling, **kwargs)
    batch = None if args.dynamic_batch else args.batch
    path = export(model, variables, args.out, format=fmt, batch=batch, fold_bn=args.fold_bn)
    _, h, w, c = model.traced_shape
    print(f"exported {spec.name} as {fmt}: input ({'B' if batch is None else batch}, {h}, {w}, {c}) float32 -> {path}")


def cmd_evaluate(args) -> None:
    import json

    import jax.numpy as jnp

    from flaxzoo import evaluate as evaluation

    spec = get_spec(args.model)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.json and os.path.isdir(args.json):
        raise ValueError(f"--json {args.json}: a directory")
    data = evaluation.scan_eval_folder(args.data, args.labels, class_index=args.class_index, limit=args.limit)
    weights = weights_argument(args.weights)
    crop = (args.crop, args.crop, 3) if args.crop else None
    kwargs = model_arguments(args, spec, weights, include_top=True, input_shape=crop)
    model, variables = spec.constructor(weights=weights, **kwargs)
    size = model.traced_shape[1]
    interpolation = args.interpolation or ("nearest" if args.keras_resize else "bilinear")
    pre = evaluation.Preprocessing(
        crop=size, resize=args.resize, interpolation=interpolation, keras_resize=args.keras_resize,
        mode=spec.preprocess_mode,
    )  # fmt: skip
    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    note(f"{spec.keras_name} on {args.data}: {len(data)} images ({data.layout}); {pre}")
    result = evaluation.evaluate(
        model, variables, data, pre, batch_size=args.batch_size, dtype=dtype, precision=args.precision,
        workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    default = not {k for k in kwargs if k not in ("include_top", "classes", "input_shape")} and size == spec.default_size
    record = {
        "model": spec.name,
        "keras_name": spec.keras_name,
        "weights": args.weights,
        "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "data": str(args.data),
        "layout": data.layout,
        "labels": args.labels,
        "limit": args.limit,
        "preprocessing": pre.describe(),
        "dtype": "bfloat16" if args.bf16 else "float32",
        "precision": args.precision,
        **result,
        "published": {
            "top1": spec.top1,
            "top5": spec.top5,
            "source": f"keras.io, {spec.keras_name} at {spec.default_size} px"
            + ("" if default else " (another configuration than this one)"),
        },
    }
    print(format_evaluation(record))
    if args.json:
        from flaxzoo.weights.files import atomic_file

        with atomic_file(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(record, indent=1))


def format_evaluation(r: dict) -> str:
    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}%"

    def row(name, key):
        lo, hi = r[f"{key}_ci95"]
        published = r["published"][key]
        return (f"  {name}  {pct(r[key]):>7}  (95% CI {pct(lo)} to {pct(hi)}; {r[f'correct_{key}']} of {r['images']})"
                f"   published {pct(published)}")  # fmt: skip

    pre = r["preprocessing"]
    lines = [
        f"{r['keras_name']} ({r['model']}), weights {r['weights']}: {r['images']} images evaluated, "
        f"{r['skipped']} skipped (unreadable)",
        f"  preprocessing: resize {pre['resize']}, crop {pre['crop']}, input {pre['input_size']}, "
        f"{pre['interpolation']}, preprocess_input mode {pre['mode']}; {r['dtype']}",
        row("top-1", "top1"),
        row(f"top-{r['top5_k']}", "top5"),
        f"  {r['images_per_second']:.1f} images/s after compilation ({r['seconds']:.1f} s in all; "
        f"{r['devices']} device(s), global batch {r['global_batch_size']})",
        f"  published figures: {r['published']['source']}",
    ]
    lines += [f"  skipped {s['path']}: {s['reason']}" for s in r["skipped_files"]]
    return "\n".join(lines)


def cmd_finetune(args) -> None:
    if args.distributed:
        from flaxzoo.sharding import initialize

        initialize()  # before anything touches a device
    from flaxzoo.train.finetune import FinetuneConfig, finetune

    spec = get_spec(args.model)
    weights = weights_argument(args.weights)
    size = (args.image_size, args.image_size, 3) if args.image_size else None
    kwargs = model_arguments(args, spec, weights, input_shape=size)
    image_size = (kwargs.pop("input_shape", None) or (None,))[0]
    model_args = {k: v for k, v in kwargs.items() if k not in ("include_top", "classes")}
    cfg = FinetuneConfig(
        model=args.model, data=args.data, weights=weights, model_args=model_args,
        val_data=args.val_data, image_size=image_size, classes=args.classes,
        freeze_until=parse_frozen(args.freeze_until), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        layer_decay=args.layer_decay, optimizer=args.optimizer, bf16=args.bf16, label_smoothing=args.label_smoothing,
        accum_steps=args.accum_steps, augment=not args.no_augment, seed=args.seed,
        checkpoint_dir=args.checkpoint_dir, save_every=args.save_every, keep=args.keep,
        metrics_out=args.metrics_out, export=args.export, progress=not args.quiet, workers=args.workers,
    )  # fmt: skip
    result = finetune(cfg)
    last = result["epochs"][-1] if result["epochs"] else {}
    summary_line = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.endswith(("loss", "accuracy")))
    print(
        f"done: {len(result['epochs'])} epochs; {summary_line}"
        + (f"; exported to {result['export']}" if "export" in result else "")
    )


def add_model_arguments(p: argparse.ArgumentParser, *, input_size: bool = True) -> None:
    g = p.add_argument_group(
        "model arguments", "the Keras constructor's; where the weight file determines one, it is inferred and printed"
    )
    g.add_argument("--alpha", type=float, help="width multiplier (MobileNet, MobileNetV2, MobileNetV3)")
    g.add_argument("--depth-multiplier", type=int, metavar="N", help="MobileNet's depthwise channel multiplier")
    if input_size:
        g.add_argument("--input-size", type=int, metavar="N", help="square input of N x N pixels: input_shape=(N, N, 3)")
    g.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other constructor argument, e.g. --arg minimalistic=True --arg include_preprocessing=False")  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flaxzoo", description="Keras Applications ImageNet models in Flax, with Keras-exact weights."
    )
    from flaxzoo._version import __version__

    parser.add_argument("--version", action="version", version=f"flaxzoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="classify images with an ImageNet model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", default="resnet50", help="registry or Keras name (default: resnet50); see `flaxzoo list`")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (default), a Keras .h5 file or a flaxzoo checkpoint directory")  # fmt: skip
    p.add_argument("--top", type=int, default=5, help="classes shown per image (default: 5)")
    p.add_argument("--class-index", metavar="PATH",
                   help="a Keras-format imagenet_class_index.json (default: Keras' file, cached)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--precision", choices=PRECISIONS, default="highest",
                   help="jax matmul/convolution precision (default: highest, full float32)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("convert", help="convert a Keras legacy .h5 weights file into a flaxzoo checkpoint")
    p.add_argument("--model", required=True, help="registry or Keras name")
    p.add_argument("--h5", required=True, metavar="FILE", help="Keras legacy .h5 weights file")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="checkpoint directory (or .safetensors file) to create; must not exist")  # fmt: skip
    p.add_argument("--variant", choices=VARIANTS, help="with or without the classifier (default: from the file)")
    p.add_argument("--format", choices=CONVERT_FORMATS, default="checkpoint",
                   help="a flaxzoo (orbax) checkpoint directory (default) or one .safetensors file")  # fmt: skip
    add_model_arguments(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("list", help="the registered models")
    p.add_argument("--markdown", action="store_true", help="as the README's model table")
    p.add_argument("--stages", action="store_true", help="each model's stages by stride (the README's backbone table)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="one model's details and weight files")
    p.add_argument("model", metavar="MODEL", help="registry or Keras name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("summary", help="the layers of a model, as Keras' model.summary()")
    p.add_argument("model", metavar="MODEL", help="registry or Keras name")
    p.add_argument("--notop", action="store_true", help="without the classifier (include_top=False)")
    p.add_argument("--pooling", choices=("avg", "max"), help="global pooling of a --notop model")
    p.add_argument("--input-shape", metavar="H,W,C", help="Keras' input_shape, e.g. 299,299,3 (None: any size)")
    p.add_argument("--freeze-until", metavar="LAYER|N",
                   help="count the first N layers, or those up to and including LAYER, as non-trainable")  # fmt: skip
    p.add_argument("--weights", metavar="FILE",
                   help="a Keras .h5, checkpoint or .safetensors file: the model it holds (alpha, size, top: inferred)")  # fmt: skip
    add_model_arguments(p)
    p.set_defaults(func=cmd_summary)

    from flaxzoo.export import FORMATS as EXPORT_FORMATS

    p = sub.add_parser("export", help="export a model with its weights as ONNX or StableHLO")
    p.add_argument("--model", required=True, help="registry or Keras name")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (default), 'none' (random), a Keras .h5, a checkpoint or a .safetensors file")  # fmt: skip
    p.add_argument("--format", choices=EXPORT_FORMATS, help="default: from the --out suffix (.onnx, .stablehlo)")
    p.add_argument("--out", required=True, metavar="PATH", help="the file to write (must not exist)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="any batch size")
    p.add_argument("--input-shape", metavar="H,W[,C]", help="Keras' input_shape, e.g. 160,160 (default: the model's)")
    p.add_argument("--notop", action="store_true", help="without the classifier (include_top=False)")
    p.add_argument("--pooling", choices=("avg", "max"), help="global pooling of a --notop model")
    p.add_argument("--classes", type=int, help="classifier classes (with --weights none or a matching file)")
    add_model_arguments(p)
    p.add_argument("--fold-bn", action="store_true", help="fold batch norms into the convolutions (smaller graph)")
    p.set_defaults(func=cmd_export)

    from flaxzoo.train.state import OPTIMIZERS

    p = sub.add_parser("finetune", help="fine-tune a model on an image folder (one sub-folder per class)")
    p.add_argument("--model", required=True, help="registry or Keras name")
    p.add_argument(
        "--weights", default="imagenet", help="'imagenet' (default), 'none', a Keras .h5 or a flaxzoo checkpoint"
    )
    p.add_argument("--data", required=True, metavar="DIR", help="training images, one sub-folder per class")
    p.add_argument("--val-data", metavar="DIR", help="validation images, the same class sub-folders")
    p.add_argument("--image-size", "--input-size", type=int, metavar="N",
                   help="square input size (default: the weight file's, else the model's)")  # fmt: skip
    p.add_argument("--classes", type=int, help="number of classes (default: the number of class folders)")
    p.add_argument(
        "--freeze-until", metavar="LAYER|N", help="freeze the first N layers, or those up to and including LAYER"
    )
    p.add_argument("--epochs", type=int, default=1, help="total epochs (a resumed run continues up to it)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size, over all devices and hosts")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--layer-decay", type=float, metavar="D",
                   help="layer-wise learning-rate decay: the head at --lr, stage 4 at D x --lr, ... the stem at D^5 x --lr")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute, float32 parameters")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation micro-batches per step")
    p.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoints (resumes from the latest one there)")
    p.add_argument("--save-every", type=int, default=500, metavar="STEPS", help="checkpoint interval (default 500)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept (default 3)")
    p.add_argument("--metrics-out", metavar="FILE", help="metrics JSON (a PNG plot is written beside it)")
    p.add_argument("--export", metavar="DIR", help="flaxzoo checkpoint of the result (default: CHECKPOINT_DIR/export)")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: jax.distributed.initialize() (auto-detected, or FLAXZOO_COORDINATOR, "
                        "FLAXZOO_NUM_PROCESSES, FLAXZOO_PROCESS_ID)")  # fmt: skip
    p.add_argument("--workers", type=int, default=8, help="image decoding threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p, input_size=False)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="top-1 / top-5 accuracy on an ImageNet-style validation folder")
    p.add_argument("--model", required=True, help="registry or Keras name")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (default), 'none', a Keras .h5, a checkpoint or a .safetensors file")  # fmt: skip
    p.add_argument("--data", required=True, metavar="VAL_DIR",
                   help="one sub-folder of images per synset (n01440764/...), or images and --labels")  # fmt: skip
    p.add_argument("--labels", metavar="FILE",
                   help="a flat folder's labels: a Keras class index (0-based) or synset id per line, in file-name "
                        "order, or FILE LABEL lines")  # fmt: skip
    p.add_argument("--class-index", metavar="PATH", help="a Keras-format imagenet_class_index.json (default: Keras')")
    resize = p.add_mutually_exclusive_group()
    resize.add_argument("--resize", type=int, metavar="N",
                        help="resize the shorter side to N, then a centre crop (default: crop / 0.875: 256 for 224)")  # fmt: skip
    resize.add_argument("--keras-resize", action="store_true",
                        help="as Keras' examples: load_img(target_size=input size), nearest, no crop")  # fmt: skip
    p.add_argument("--crop", type=int, metavar="N", help="the centre crop, the model's input size (default: the model's)")
    p.add_argument("--interpolation", help="PIL filter (default: bilinear; nearest with --keras-resize)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size, over every device (default 64)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute")
    p.add_argument("--precision", choices=PRECISIONS, default="highest", help="float32 matmul precision (default: highest)")
    p.add_argument("--limit", type=int, metavar="N", help="the first N images (by file name)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument("--workers", type=int, default=8, help="image decoding threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flaxzoo`` console script; returns the exit status (0, or 2 on error)."""
    parser = make_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits 2
    try:
        from flaxzoo.xla_options import enable_compilation_cache

        enable_compilation_cache()
        args.func(args)
    except (ValueError, OSError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
