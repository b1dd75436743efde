"""Input pipeline on grain: an image folder (one sub-folder per class, as Keras'
``image_dataset_from_directory``) or numpy arrays → decoded, resized, optionally randomly cropped and
flipped, the model's ``preprocess_input`` → batches ``{"image", "label"}``.

The folder is scanned once up front: every image is decoded, and those that cannot be (corrupt or
truncated files) are skipped and counted; grayscale, palette, CMYK and alpha images are converted to
RGB (alpha dropped, as Keras' ``load_img``) and counted. The epoch's order is a pure function of
``(seed, epoch)`` and each process reads its own slice of it, so a resumed run reads exactly the batches
the uninterrupted run would have, on any number of hosts.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grain
import numpy as np
from PIL import Image

from flaxzoo.image import img_to_array, load_img
from flaxzoo.imagenet_utils import preprocess_for_mode

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class ScanReport:
    """What scanning a folder found: images usable as they are, converted to RGB (by source mode), skipped."""

    total: int
    converted: dict[str, int]  # source PIL mode → count (e.g. {"L": 3, "RGBA": 1, "CMYK": 1})
    skipped: tuple[tuple[str, str], ...]  # (path, reason)

    @property
    def usable(self) -> int:
        return self.total - len(self.skipped)

    def __str__(self) -> str:
        converted = ", ".join(f"{n} {mode}" for mode, n in sorted(self.converted.items())) or "none"
        return f"{self.usable} of {self.total} images usable; converted to RGB: {converted}; skipped: {len(self.skipped)}"


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The usable images of ``root/<class>/*`` with integer labels (classes sorted by name, as Keras)."""

    root: Path
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray
    report: ScanReport

    def __len__(self) -> int:
        return len(self.paths)


def _check_image(path: str) -> tuple[str | None, str | None]:
    """(source mode if not RGB, error) for one file: decoded in full, so truncation is caught."""
    try:
        with Image.open(path) as img:
            img.load()
            return (img.mode if img.mode != "RGB" else None), None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files; all mean "skip"
        return None, f"{type(e).__name__}: {e}"


def scan_image_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None, workers: int = 8) -> ImageFolder:
    """Index ``root``: one sub-folder per class (or ``class_names``, e.g. the training set's, for a
    validation folder). Files are listed in sorted order; hidden files and other extensions are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected one sub-folder of images per class)")
    if class_names is None:
        class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise ValueError(f"{root}: no class sub-folders")
    files, labels = [], []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file():
                files.append(str(path))
                labels.append(label)
    with ThreadPoolExecutor(workers) as pool:
        checks = list(pool.map(_check_image, files))
    converted = collections.Counter(mode for mode, err in checks if mode is not None and err is None)
    skipped = tuple((f, err) for f, (_, err) in zip(files, checks) if err is not None)
    keep = [i for i, (_, err) in enumerate(checks) if err is None]
    if not keep:
        raise ValueError(f"{root}: no readable images in {len(class_names)} class folders")
    return ImageFolder(
        root=root,
        class_names=tuple(class_names),
        paths=tuple(files[i] for i in keep),
        labels=np.asarray([labels[i] for i in keep], np.int32),
        report=ScanReport(total=len(files), converted=dict(converted), skipped=skipped),
    )


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """Images already in memory: (N, H, W, 3) uint8 or float in [0, 255], integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or len(self.images) != len(self.labels):
            raise ValueError(
                f"ArraySource needs images (N, H, W, 3) and labels (N,); got {self.images.shape} and {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training augmentation: resize to ``crop_scale`` × size, then a random size × size crop; random
    horizontal flip. ``Augment(crop_scale=1.0, flip=False)`` is none."""

    crop_scale: float = 1.14
    flip: bool = True


def _load(source, index: int, size: int) -> np.ndarray:
    if isinstance(source, ArraySource):
        img = source.images[index]
        if img.shape[:2] == (size, size):
            return np.asarray(img, np.float32)
        return img_to_array(Image.fromarray(np.asarray(img, np.uint8)).resize((size, size), Image.BILINEAR))
    return img_to_array(load_img(source.paths[index], target_size=(size, size), interpolation="bilinear"))


def _example(source, index: int, *, size: int, mode: str, augment: Augment | None, rng_seed) -> dict:
    if augment is None:
        x = _load(source, index, size)
    else:
        rng = np.random.default_rng(rng_seed)
        big = max(size, int(round(size * augment.crop_scale)))
        x = _load(source, index, big)
        top, left = rng.integers(0, big - size + 1, 2)
        x = x[top : top + size, left : left + size]
        if augment.flip and rng.random() < 0.5:
            x = x[:, ::-1]
        x = np.ascontiguousarray(x)
    return {"image": preprocess_for_mode(x, mode), "label": np.int32(source.labels[index])}


def steps_per_epoch(n_examples: int, global_batch_size: int) -> int:
    """Full global batches per epoch (the remainder is dropped, as every process must take the same steps)."""
    return n_examples // global_batch_size


def train_batches(
    source: ImageFolder | ArraySource,
    *,
    global_batch_size: int,
    image_size: int,
    preprocess_mode: str | None,
    epoch: int,
    seed: int = 0,
    augment: Augment | None = Augment(),
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 8,
    prefetch: int = 2,
) -> Iterator[dict]:
    """This process' share of each global training batch of ``epoch``, from step ``start_step`` on.

    The epoch's permutation of the whole set comes from ``(seed, epoch)``; global batch ``s`` is
    positions ``[s·B, (s+1)·B)`` of it, of which process ``p`` takes the ``p``-th contiguous slice.
    """
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split over {process_count} processes")
    local = global_batch_size // process_count
    n_steps = steps_per_epoch(len(source), global_batch_size)
    if n_steps == 0:
        raise ValueError(f"{len(source)} training examples: fewer than one global batch of {global_batch_size}")
    order = np.random.default_rng((seed, epoch)).permutation(len(source))[: n_steps * global_batch_size]
    mine = order.reshape(n_steps, process_count, local)[:, process_index].reshape(-1)
    ds = grain.MapDataset.source(mine.tolist()).map_with_index(
        lambda i, index: _example(
            source, index, size=image_size, mode=preprocess_mode, augment=augment,
            rng_seed=(seed, epoch, process_index, i),
        )  # fmt: skip
    )
    ds = ds.batch(local, drop_remainder=True)[start_step:]
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, num_threads))))


def eval_batches(
    source: ImageFolder | ArraySource,
    *,
    global_batch_size: int,
    image_size: int,
    preprocess_mode: str | None,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 8,
) -> Iterator[dict]:
    """Every example once, in order, padded to whole global batches; padding has ``weight`` 0."""
    local = global_batch_size // process_count
    n_steps = -(-len(source) // global_batch_size)
    positions = np.arange(n_steps * global_batch_size)
    mine = positions.reshape(n_steps, process_count, local)[:, process_index].reshape(-1)

    def example(position):
        if position < len(source):
            return {**_example(source, int(position), size=image_size, mode=preprocess_mode, augment=None, rng_seed=0),
                    "weight": np.float32(1.0)}  # fmt: skip
        return {
            "image": np.zeros((image_size, image_size, 3), np.float32),
            "label": np.int32(0),
            "weight": np.float32(0.0),
        }

    ds = grain.MapDataset.source(mine.tolist()).map(example).batch(local, drop_remainder=True)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads)))
