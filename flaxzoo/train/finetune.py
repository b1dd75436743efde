"""``flaxzoo finetune``: fine-tune a registered model on an image folder, on one device or many hosts.

The model is the Keras constructor's with its own classifier (``include_top=True``, ``classes`` new
classes, logits), its body loaded from the no-top (or top) pretrained weights; the classifier starts
from its initialiser. Layers up to ``freeze_until`` are frozen (Keras' ``trainable=False``: no update,
batch norms in inference mode). Steps are jit over a ``data`` mesh of every device of every process; each
process reads its own slice of every global batch. The run checkpoints every N steps and at each epoch's
end and resumes from the latest checkpoint (``epochs`` is the total); at the end it writes the metrics
(JSON and PNG) and exports a flaxzoo checkpoint that the constructor loads with ``weights=``.

Faults (:mod:`flaxzoo.train.faults`): a non-finite loss or parameters stop the run with a TrainingError
naming the step, without checkpointing it; SIGTERM/SIGINT checkpoint the current step and exit with
143/130, and the same command resumes; a checkpoint that cannot be written stops the run with a
CheckpointError (the previous checkpoint stays the latest): training on without checkpoints would put
all later work at the mercy of the next preemption, and a full disk rarely empties by itself.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxzoo import sharding
from flaxzoo.errors import TrainingError
from flaxzoo.features import layer_decay_optimizer
from flaxzoo.registry import ModelSpec
from flaxzoo.surgery import TransferReport, freeze, load_pretrained, trainable_mask
from flaxzoo.train import data as data_lib
from flaxzoo.train.checkpoints import TrainCheckpoints
from flaxzoo.train.faults import Interrupted, StopSignals, all_finite
from flaxzoo.train.report import Progress, plot_metrics, write_metrics
from flaxzoo.train.state import create_train_state, make_optimizer
from flaxzoo.train.steps import StepConfig, make_steps
from flaxzoo.zoo import get_spec, jsonable_arguments


@dataclasses.dataclass
class FinetuneConfig:
    model: str
    data: str
    weights: str | None = "imagenet"  # "imagenet", None / "none", a Keras .h5 or a flaxzoo checkpoint
    model_args: dict = dataclasses.field(default_factory=dict)  # other constructor arguments: {"alpha": 0.5}
    val_data: str | None = None
    image_size: int | None = None  # default: the model's default size
    classes: int | None = None  # default: the number of class folders
    freeze_until: str | int | None = None
    epochs: int = 1
    batch_size: int = 32  # global
    lr: float = 1e-3
    layer_decay: float | None = None  # flaxzoo.layer_decay_optimizer: the head at lr, stage k lower by decay per stage
    optimizer: str = "adam"
    bf16: bool = False
    label_smoothing: float = 0.0
    accum_steps: int = 1
    augment: bool = True
    seed: int = 0
    checkpoint_dir: str | None = None
    save_every: int = 500  # steps
    keep: int = 3
    metrics_out: str | None = None
    export: str | None = None
    progress: bool = True
    workers: int = 8
    handle_signals: bool = True  # SIGTERM/SIGINT: checkpoint the current step and exit (with checkpoint_dir)


def _host(tree):
    """Replicated global arrays → numpy, on any process (every process holds a full copy)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def _pretrained(spec: ModelSpec, weights: str, image_size: int, model_args: dict) -> dict:
    """Variables from "imagenet" (the no-top file), a Keras .h5, a flaxzoo checkpoint or .safetensors file (with
    or without the top: read off the file, as its classes and widths)."""
    from flaxzoo.arguments import resolve

    shape = (image_size, image_size, 3)
    if weights == "imagenet":
        return spec.constructor(include_top=False, weights="imagenet", input_shape=shape, **model_args)[1]
    if not Path(weights).exists():
        raise ValueError(f"{weights}: no such weights file or checkpoint directory (or use 'imagenet' or 'none')")
    kwargs = resolve(spec, weights, {**model_args, "input_shape": shape}).kwargs
    return spec.constructor(weights=str(weights), **kwargs)[1]


def build_model(spec: ModelSpec, classes: int, image_size: int, weights: str | None, seed: int = 0, model_args=None):
    """(model returning logits, variables, transfer report): Keras' classifier for ``classes``, the body pretrained;
    ``model_args``: other constructor arguments (``{"alpha": 0.5}``)."""
    model_args = model_args or {}
    model, variables = spec.constructor(
        include_top=True, weights=None, classes=classes, classifier_activation=None,
        input_shape=(image_size, image_size, 3), seed=seed, **model_args,
    )  # fmt: skip
    variables = jax.device_get(variables)
    if weights is None or str(weights).lower() == "none":
        return model, variables, None
    variables, report = load_pretrained(variables, _pretrained(spec, weights, image_size, model_args), strict_shapes=False)
    return model, variables, report


def _evaluate(steps, state, source, cfg, spec, size, mesh) -> dict:
    sums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for local in data_lib.eval_batches(
        source, global_batch_size=cfg.batch_size, image_size=size, preprocess_mode=spec.preprocess_mode,
        process_index=jax.process_index(), process_count=jax.process_count(), num_threads=cfg.workers,
    ):  # fmt: skip
        out = steps.eval(state, sharding.global_batch(local, mesh))
        for k in sums:
            sums[k] += float(_host(out[k]))
    count = max(sums["count"], 1.0)
    return {"eval_loss": sums["loss_sum"] / count, "eval_accuracy": sums["correct"] / count}


def _save(ckpts: TrainCheckpoints, step: int, state, record: dict, where: str) -> None:
    # an overflow in the update can leave params non-finite behind a finite loss: never checkpoint those
    if not all_finite(state):
        raise TrainingError(_diverged(f"the update of {where} made the parameters non-finite", ckpts))
    ckpts.save(step, state, record, force=True)


def _diverged(what: str, ckpts: TrainCheckpoints | None) -> str:
    advice = "lower --lr, or look for NaN/Inf in the data"
    if ckpts is None:
        return f"training diverged: {what}; {advice}"
    ckpts.wait()  # the good checkpoints still being written
    latest = ckpts.latest_step()
    if latest is None:
        return f"training diverged: {what}; not checkpointed, and no earlier checkpoint in {ckpts.directory}; {advice}"
    return (f"training diverged: {what}; not checkpointed: the latest checkpoint is step {latest} in "
            f"{ckpts.directory}, where a rerun resumes (and diverges again unless you {advice})")  # fmt: skip


def _stop(signum: int, step: int, where: str, ckpts: TrainCheckpoints, say_error) -> Interrupted:
    ckpts.wait()
    name = signal.Signals(signum).name
    message = (f"{name}: stopped after {where}; checkpoint of step {step} saved in {ckpts.directory}; "
               "run the same command to resume")  # fmt: skip
    say_error(f"flaxzoo: {message}")
    return Interrupted(signum, step, message)


def finetune(cfg: FinetuneConfig, log=print) -> dict[str, Any]:
    """Run (or resume) a fine-tuning job; returns ``{"epochs": [...], "export": path, ...}``.

    Raises TrainingError on a non-finite loss or parameters, CheckpointError when a checkpoint cannot be
    written, and :class:`~flaxzoo.train.faults.Interrupted` (a SystemExit, status 143 or 130) after
    checkpointing on SIGTERM or SIGINT (with ``checkpoint_dir`` and ``handle_signals``).
    """
    spec = get_spec(cfg.model)
    size = cfg.image_size or spec.default_size
    main_process = jax.process_index() == 0
    say = log if main_process else (lambda *a, **k: None)
    say_error = (lambda line: print(line, file=sys.stderr, flush=True)) if main_process else (lambda line: None)

    train_set = data_lib.scan_image_folder(cfg.data, workers=cfg.workers)
    say(f"train: {cfg.data}: {train_set.report}; classes: {', '.join(train_set.class_names)}")
    for path, reason in train_set.report.skipped:
        say(f"  skipped {path}: {reason}")
    val_set = None
    if cfg.val_data:
        val_set = data_lib.scan_image_folder(cfg.val_data, class_names=train_set.class_names, workers=cfg.workers)
        say(f"val: {cfg.val_data}: {val_set.report}")
    classes = cfg.classes or len(train_set.class_names)
    if classes < len(train_set.class_names):
        raise ValueError(f"--classes {classes} is fewer than the {len(train_set.class_names)} class folders")

    model, variables, transfer = build_model(spec, classes, size, cfg.weights, cfg.seed, model_args=cfg.model_args)
    if isinstance(transfer, TransferReport):
        say(f"weights {cfg.weights}: {len(transfer.loaded)} arrays loaded; new: {', '.join(transfer.not_in_pretrained) or 'none'}")
    if cfg.freeze_until is not None:
        model = freeze(model, cfg.freeze_until)
    mask = trainable_mask(model, variables)
    tx = make_optimizer(cfg.optimizer, cfg.lr, mask=mask)
    if cfg.layer_decay is not None:
        tx = layer_decay_optimizer(tx, model, variables, cfg.layer_decay)
        say(f"layer decay {cfg.layer_decay}: the stem's learning rate is {cfg.lr * cfg.layer_decay**5:.3g}, the head's {cfg.lr:.3g}")
    mesh = sharding.data_mesh()
    steps = make_steps(
        model, tx, mesh,
        StepConfig(label_smoothing=cfg.label_smoothing, accum_steps=cfg.accum_steps,
                   compute_dtype=jnp.bfloat16 if cfg.bf16 else None, trainable=mask),
    )  # fmt: skip
    state = create_train_state(variables, tx, cfg.seed)
    n_steps = data_lib.steps_per_epoch(len(train_set), cfg.batch_size)
    say(f"{spec.keras_name} at {size}x{size}, {classes} classes; {jax.device_count()} devices on "
        f"{jax.process_count()} processes; {n_steps} steps of {cfg.batch_size} per epoch")  # fmt: skip

    history: list[dict] = []
    epoch, start_step, partial = 0, 0, None
    ckpts = TrainCheckpoints(cfg.checkpoint_dir, save_every_steps=cfg.save_every, keep=cfg.keep) if cfg.checkpoint_dir else None
    if ckpts is not None and ckpts.latest_step() is not None:
        state, record = ckpts.restore(state, sharding.replicated(mesh))
        epoch, start_step = record["epoch"], record["step_in_epoch"]
        history, partial = record["history"], record.get("partial")
        say(f"resumed from {cfg.checkpoint_dir} at step {ckpts.latest_step()} (epoch {epoch + 1}, step {start_step})")
    else:
        state = sharding.replicate(state, mesh)

    augment = data_lib.Augment() if cfg.augment else None
    stop = StopSignals(enabled=cfg.handle_signals and ckpts is not None)
    try:
        with stop:
            while epoch < cfg.epochs:
                progress = Progress(epoch + 1, cfg.epochs, n_steps, enabled=main_process and cfg.progress)
                sums = dict(partial or {"loss_sum": 0.0, "correct": 0.0, "count": 0.0})
                started = time.perf_counter()
                batches = data_lib.train_batches(
                    train_set, global_batch_size=cfg.batch_size, image_size=size, preprocess_mode=spec.preprocess_mode,
                    epoch=epoch, seed=cfg.seed, augment=augment, start_step=start_step,
                    process_index=jax.process_index(), process_count=jax.process_count(), num_threads=cfg.workers,
                )  # fmt: skip
                for k, local in enumerate(batches, start=start_step):
                    state, metrics = steps.train(state, sharding.global_batch(local, mesh))
                    m = {key: float(_host(v)) for key, v in metrics.items()}
                    step = epoch * n_steps + k + 1
                    where = f"step {step} (epoch {epoch + 1}, step {k + 1} of {n_steps})"
                    if not math.isfinite(m["loss"]):
                        progress.close()
                        raise TrainingError(_diverged(f"loss {m['loss']} at {where}", ckpts))
                    sums["loss_sum"] += m["loss"] * m["count"]
                    sums["correct"] += m["accuracy"] * m["count"]
                    sums["count"] += m["count"]
                    progress.update(k + 1, int(m["count"]), sums["loss_sum"] / sums["count"], sums["correct"] / sums["count"])
                    # the last step of an epoch stops after the epoch's end (evaluation, checkpoint) below
                    stopping = stop.requested(step) and k + 1 < n_steps
                    if ckpts is not None and k + 1 < n_steps and (stopping or ckpts.should_save(step)):
                        record = {"epoch": epoch, "step_in_epoch": k + 1, "history": history, "partial": sums}
                        _save(ckpts, step, state, record, where)
                    if stopping:
                        progress.close()
                        raise _stop(stop.received, step, where, ckpts, say_error)
                row = {
                    "epoch": epoch + 1,
                    "train_loss": sums["loss_sum"] / max(sums["count"], 1),
                    "train_accuracy": sums["correct"] / max(sums["count"], 1),
                    "images_per_second": progress.images_per_second,
                    "seconds": time.perf_counter() - started,
                }
                if val_set is not None:
                    row.update(_evaluate(steps, state, val_set, cfg, spec, size, mesh))
                progress.close(f"  val acc {row['eval_accuracy']:.4f}" if "eval_accuracy" in row else "")
                history.append(row)
                epoch, start_step, partial = epoch + 1, 0, None
                if ckpts is not None:
                    record = {"epoch": epoch, "step_in_epoch": 0, "history": history}
                    _save(ckpts, epoch * n_steps, state, record, f"step {epoch * n_steps} (end of epoch {epoch})")
                if cfg.metrics_out and main_process:
                    write_metrics(cfg.metrics_out, history, model=spec.name, classes=list(train_set.class_names))
                    plot_metrics(Path(cfg.metrics_out).with_suffix(".png"), history)
                if stop.received is not None and epoch < cfg.epochs:  # a finished run exports instead
                    raise _stop(stop.received, epoch * n_steps, f"epoch {epoch}", ckpts, say_error)
    finally:
        if ckpts is not None:
            ckpts.close()

    result: dict[str, Any] = {"epochs": history, "class_names": list(train_set.class_names)}
    export = cfg.export or (str(Path(cfg.checkpoint_dir) / "export") if cfg.checkpoint_dir else None)
    if export:
        result["export"] = export_model(export, spec, state, classes, size, train_set.class_names, cfg.model_args) if main_process else export
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("flaxzoo finetune done")
    return result


def export_model(directory, spec: ModelSpec, state, classes: int, image_size: int, class_names, model_args=None) -> str:
    """The fine-tuned variables as a flaxzoo checkpoint: ``Constructor(weights=directory, classes=classes)``
    (plus ``input_shape`` where the classifier depends on the size, as VGG's) loads it. Replaces ``directory``."""
    import shutil

    from flaxzoo.weights import save_checkpoint

    directory = Path(directory)
    variables = _host(state.variables)
    extra = dict(classes=classes, image_size=image_size, class_names=list(class_names))
    if model_args:
        extra["args"] = jsonable_arguments(model_args)  # the CLI builds the model again from them
    staging = directory.with_name(f".{directory.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(staging, spec.name, variables, variant="top", **extra)
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return str(directory)
