"""ImageNet-style evaluation in one call: top-1 and top-5 accuracy of a model on a validation folder, with 95%
confidence intervals, the preprocessing used written down, and the published figures beside them.

Most disputes about Keras' published accuracy come from preprocessing: a different resize, a missing crop,
the wrong ``preprocess_input`` mode. So the preprocessing is explicit and recorded with every result: the
standard evaluation (shorter side resized to ``resize``, bilinear, a centre ``crop``: 256 → 224) or Keras'
examples (``load_img(target_size=...)``, nearest, the whole image squeezed to the input size).

The folder is either one sub-folder per synset (``n01440764/...``), or flat with a labels file. Synsets map to
class indices through Keras' class index (sorted WordNet ids, as Keras' ``decode_predictions``). Images are
decoded by a grain pipeline; each process reads its slice of each global batch, which is split over every
device (the :mod:`flaxzoo.sharding` mesh); the counts are summed on the devices. Images that cannot be decoded
are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from flaxzoo import sharding
from flaxzoo.image import PIL_INTERPOLATION_METHODS, img_to_array, load_img
from flaxzoo.imagenet_utils import _load_class_index, preprocess_for_mode
from flaxzoo.progress import ProgressBar
from flaxzoo.train.data import IMAGE_EXTENSIONS
from flaxzoo.xla_options import jit

CROP_FRACTION = 0.875  # resize = crop / 0.875: 256 for 224, 342 for 299 (the usual ImageNet evaluation)


# ------------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: ``crop`` x ``crop`` pixels, then ``preprocess_input`` in
    ``mode`` (None: the model preprocesses itself)."""

    crop: int
    resize: int | None = None  # the shorter side, before the centre crop; None: crop / 0.875
    interpolation: str = "bilinear"
    keras_resize: bool = False  # Keras' examples: load_img(target_size=(crop, crop)), nearest, no crop
    mode: str | None = None

    def __post_init__(self):
        if self.keras_resize and self.resize is not None:
            raise ValueError("--keras-resize resizes the whole image to the input size: it takes no --resize")
        if self.interpolation not in PIL_INTERPOLATION_METHODS:
            raise ValueError(f"interpolation {self.interpolation!r}: expected one of {', '.join(PIL_INTERPOLATION_METHODS)}")
        if self.crop < 1 or self.shorter_side < self.crop:
            raise ValueError(f"--resize {self.shorter_side} is smaller than the crop {self.crop}")

    @property
    def shorter_side(self) -> int:
        return self.crop if self.keras_resize else self.resize or round(self.crop / CROP_FRACTION)

    def load(self, path: str) -> np.ndarray:
        """The image at ``path`` as float32 (crop, crop, 3) in [0, 255], before ``preprocess_input``."""
        if self.keras_resize:
            return img_to_array(load_img(path, target_size=(self.crop, self.crop), interpolation=self.interpolation))
        img = load_img(path)
        w, h = img.size
        scale = self.shorter_side / min(w, h)
        size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        img = img.resize(size, PIL_INTERPOLATION_METHODS[self.interpolation])
        left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        return img_to_array(img.crop((left, top, left + self.crop, top + self.crop)))

    def __call__(self, path: str) -> np.ndarray:
        """The model's input for the image at ``path``."""
        return preprocess_for_mode(self.load(path), self.mode)

    def describe(self) -> dict[str, Any]:
        return {
            "resize": "keras load_img(target_size)" if self.keras_resize else f"shorter side to {self.shorter_side}",
            "crop": None if self.keras_resize else self.crop,
            "input_size": self.crop,
            "interpolation": self.interpolation,
            "mode": self.mode or "in the model",
        }

    def __str__(self) -> str:
        if self.keras_resize:
            how = f"Keras' load_img(target_size=({self.crop}, {self.crop})), {self.interpolation}"
        else:
            how = f"shorter side to {self.shorter_side} ({self.interpolation}), centre crop {self.crop}x{self.crop}"
        return f"{how}; preprocess_input mode: {self.mode or 'in the model'}"


# ------------------------------------------------------------------------------------------------
# The validation folder
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Images and their Keras class indices, in file-name order."""

    root: Path
    layout: str  # "synsets" (one folder per synset) or "flat" (a labels file)
    paths: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _wnid_indices(class_index_file: str | None) -> dict[str, int]:
    return {wnid: int(i) for i, (wnid, _) in _load_class_index(class_index_file).items()}


def _label(token: str, where: str, by_wnid: dict[str, int]) -> int:
    if token.lstrip("-").isdigit():
        label = int(token)
        if not 0 <= label < len(by_wnid):
            raise ValueError(f"{where}: class index {label} is not in 0..{len(by_wnid) - 1}")
        return label
    if token in by_wnid:
        return by_wnid[token]
    raise ValueError(f"{where}: {token!r} is neither a class index nor a synset of the class index")


def read_labels(path: str | os.PathLike, files: Sequence[Path], by_wnid: dict[str, int]) -> list[int]:
    """Labels of ``files`` (sorted) from a labels file: a line per image, in file-name order, holding a class index
    (Keras', 0-based) or a synset id; or ``FILE LABEL`` lines, matched by file name."""
    path = Path(path)
    if path.name.startswith("ILSVRC2012_validation_ground_truth"):
        raise ValueError(
            f"{path}: the devkit's ground truth numbers classes by ILSVRC2012_ID (1-based, in the devkit's own "
            "order), not by Keras' class index; give a file of synset ids per line (e.g. TF-slim's "
            "imagenet_2012_validation_synset_labels.txt) or of Keras class indices"
        )
    try:
        lines = [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the labels file ({e})") from None
    if lines and all(len(tokens) == 2 for _, tokens in lines):
        named = {tokens[0]: _label(tokens[1], f"{path}:{n}", by_wnid) for n, tokens in lines}
        missing = [f.name for f in files if f.name not in named]
        if missing:
            raise ValueError(f"{path}: no label for {len(missing)} image(s), e.g. {missing[0]}")
        return [named[f.name] for f in files]
    bad = next(((n, tokens) for n, tokens in lines if len(tokens) != 1), None)
    if bad:
        raise ValueError(f"{path}:{bad[0]}: expected one label per line (or FILE LABEL); got {' '.join(bad[1])!r}")
    if len(lines) != len(files):
        raise ValueError(
            f"{path}: {len(lines)} labels for {len(files)} images in {files[0].parent if files else 'the folder'}: "
            "one label per image, in file-name order"
        )
    return [_label(tokens[0], f"{path}:{n}", by_wnid) for n, tokens in lines]


def scan_eval_folder(
    root: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    *,
    class_index: str | None = None,
    limit: int | None = None,
) -> EvalSet:
    """The images of ``root``: one sub-folder per synset, or flat with ``labels``; sorted by file name (ImageNet's
    validation files are in random class order), the first ``limit`` kept."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected one sub-folder per synset, or images and --labels)")
    by_wnid = _wnid_indices(class_index)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders and labels is None:
        unknown = [p.name for p in folders if p.name not in by_wnid]
        if unknown:
            raise ValueError(
                f"{root}: sub-folder(s) {', '.join(unknown[:3])} are not synsets of the class index "
                "(folders must be named by WordNet id, e.g. n01440764)"
            )
        items = [(f, by_wnid[folder.name]) for folder in folders for f in _images(folder)]
        layout = "synsets"
    else:
        if labels is None:
            raise ValueError(f"{root}: no synset sub-folders; a flat folder needs --labels")
        files = _images(root)
        if folders and not files:
            raise ValueError(f"{root}: --labels is for a flat folder of images; this one has sub-folders")
        items = list(zip(files, read_labels(labels, files, by_wnid)))
        layout = "flat"
    items.sort(key=lambda item: (item[0].name, str(item[0])))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1; got {limit}")
        items = items[:limit]
    if not items:
        raise ValueError(f"{root}: no images")
    return EvalSet(root, layout, tuple(str(f) for f, _ in items), np.asarray([label for _, label in items], np.int32))


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound near 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _batches(data: EvalSet, pre: Preprocessing, global_batch: int, mesh, workers: int, failures: list):
    """This process' slice of each global batch: images, labels, weight (0: padding or undecodable)."""
    local = sharding.per_process_batch(global_batch, mesh)
    n_steps = -(-len(data) // global_batch)
    positions = np.arange(n_steps * global_batch).reshape(n_steps, global_batch)
    process = jax.process_index()
    mine = positions[:, process * local : (process + 1) * local].reshape(-1)  # each process a contiguous slice
    zeros = np.zeros((pre.crop, pre.crop, 3), np.float32)

    def example(position: int) -> dict:
        if position >= len(data):
            return {"image": zeros, "label": np.int32(0), "weight": np.float32(0)}
        try:
            image = pre(data.paths[position])
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # ImageFileError is both
            failures.append((data.paths[position], str(e)))
            return {"image": zeros, "label": np.int32(0), "weight": np.float32(0)}
        return {"image": image, "label": data.labels[position], "weight": np.float32(1)}

    ds = grain.MapDataset.source(mine.tolist()).map(example).batch(local, drop_remainder=True)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)))


def _counting_step(model, dtype, k: int):
    """``(variables, images, labels, weight) -> (top-1 hits, top-k hits, images)``, summed over the batch."""

    def step(variables, images, labels, weight):
        probs = model.apply(variables, images.astype(dtype)).astype(jnp.float32)
        top = jax.lax.top_k(probs, k)[1]
        hits = top == labels[:, None]
        return jnp.sum(hits[:, 0] * weight), jnp.sum(jnp.any(hits, axis=1) * weight), jnp.sum(weight)

    return jit(step)


def evaluate(
    model,
    variables,
    data: EvalSet,
    pre: Preprocessing,
    *,
    batch_size: int = 64,
    dtype: Any = jnp.float32,
    precision: str = "highest",
    workers: int = 8,
    progress: bool = True,
    mesh=None,
) -> dict[str, Any]:
    """Top-1 and top-5 accuracy of ``model`` (a classifier, with ``variables``) on ``data``; the global
    ``batch_size`` is rounded up to a multiple of the devices. Returns the counts, accuracies with 95% Wilson
    intervals, images/s (after the first batch, which compiles) and the undecodable files."""
    mesh = mesh or sharding.data_mesh()
    n_devices = mesh.devices.size
    global_batch = -(-max(1, min(batch_size, len(data))) // n_devices) * n_devices
    classes = model.classes
    k = min(5, classes)
    step = _counting_step(model, dtype, k)
    params = sharding.replicate(variables, mesh)
    failures: list[tuple[str, str]] = []
    bar = ProgressBar("evaluating", len(data), enabled=progress)
    top1 = top5 = seen = 0.0
    start = time.perf_counter()
    warm = None  # (time, images) when the first batch was done: compilation excluded from the rate
    with jax.default_matmul_precision(precision):
        for local in _batches(data, pre, global_batch, mesh, workers, failures):
            batch = sharding.global_batch(local, mesh)
            c1, c5, n = step(params, batch["image"], batch["label"], batch["weight"])
            top1, top5, seen = top1 + float(c1), top5 + float(c5), seen + float(n)
            done = min(len(data), bar.done + global_batch)
            bar.update(done - bar.done)
            if warm is None:
                warm = (time.perf_counter(), done)
    end = time.perf_counter()
    bar.close()
    n, c1, c5 = int(seen), int(top1), int(top5)
    steady = (done - warm[1]) / (end - warm[0]) if done > warm[1] else done / (end - start)
    return {
        "images": n,
        "skipped": len(data) - n,
        "skipped_files": [{"path": p, "reason": r} for p, r in failures[:20]],
        "top1": c1 / n if n else None,
        "top1_ci95": list(wilson_interval(c1, n)),
        "top5": c5 / n if n else None,
        "top5_ci95": list(wilson_interval(c5, n)),
        "top5_k": k,
        "correct_top1": c1,
        "correct_top5": c5,
        "images_per_second": steady,
        "seconds": end - start,
        "devices": n_devices,
        "global_batch_size": global_batch,
    }
