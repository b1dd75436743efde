"""What a fine-tuning run shows and writes: a progress bar, the metrics JSON, a PNG of the curves
(drawn with Pillow: no plotting dependency)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw


class Progress:
    """One line per epoch, redrawn in place on a terminal: step, images/s, running loss and accuracy."""

    def __init__(self, epoch: int, epochs: int, steps: int, *, enabled: bool = True, stream=None):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.enabled and self.stream.isatty()
        self.start = time.perf_counter()
        self.images = 0

    def update(self, step: int, images: int, loss: float, accuracy: float) -> None:
        self.images += images
        if self.tty:
            self.stream.write("\r" + self._line(step, loss, accuracy))
            self.stream.flush()
        self.last = (step, loss, accuracy)

    @property
    def images_per_second(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def _line(self, step: int, loss: float, accuracy: float) -> str:
        width = 24
        done = int(width * step / max(self.steps, 1))
        bar = "=" * done + (">" if done < width else "") + " " * (width - done - 1)
        return (
            f"epoch {self.epoch}/{self.epochs} [{bar[:width]}] {step}/{self.steps} "
            f"{self.images_per_second:8.1f} img/s  loss {loss:.4f}  acc {accuracy:.4f}"
        )

    def close(self, extra: str = "") -> None:
        if not self.enabled:
            return
        step, loss, accuracy = getattr(self, "last", (self.steps, float("nan"), float("nan")))
        self.stream.write(("\r" if self.tty else "") + self._line(step, loss, accuracy) + extra + "\n")
        self.stream.flush()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_metrics(path: str | os.PathLike, epochs: list[dict], **extra) -> Path:
    """``{"epochs": [{"epoch": 1, "train_loss": ..., "eval_accuracy": ...}, ...], ...extra}``, atomically."""
    path = Path(path)
    _atomic_write(path, json.dumps({"epochs": epochs, **extra}, indent=1).encode())
    return path


def plot_metrics(path: str | os.PathLike, epochs: list[dict], size=(900, 360)) -> Path:
    """Two panels, loss and accuracy per epoch (train solid, eval dashed), as a PNG."""
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    panels = [("loss", ("train_loss", "eval_loss")), ("accuracy", ("train_accuracy", "eval_accuracy"))]
    colors = {"train": (31, 119, 180), "eval": (255, 127, 14)}
    xs = [e["epoch"] for e in epochs]
    for p, (title, keys) in enumerate(panels):
        left, top, right, bottom = p * w // 2 + 50, 30, (p + 1) * w // 2 - 20, h - 40
        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text((left, 8), title, fill="black")
        series = {k: [(x, e[k]) for x, e in zip(xs, epochs) if e.get(k) is not None] for k in keys}
        values = [v for s in series.values() for _, v in s]
        if not values:
            continue
        lo, hi = (0.0, 1.0) if title == "accuracy" else (min(0.0, min(values)), max(values) or 1.0)
        x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)

        def at(x, y):
            return (left + (x - x_lo) / (x_hi - x_lo) * (right - left), bottom - (y - lo) / ((hi - lo) or 1) * (bottom - top))

        draw.text((left - 45, top - 4), f"{hi:.3g}", fill="black")
        draw.text((left - 45, bottom - 8), f"{lo:.3g}", fill="black")
        draw.text((left, bottom + 8), f"epoch {x_lo}", fill="black")
        draw.text((right - 60, bottom + 8), f"epoch {x_hi}", fill="black")
        for k, pts in series.items():
            kind = k.split("_")[0]
            points = [at(x, y) for x, y in pts]
            if len(points) > 1:
                draw.line(points, fill=colors[kind], width=3 if kind == "train" else 2)
            for px, py in points:
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colors[kind])
            draw.text((right - 110, top + 6 + 14 * (kind == "eval")), k, fill=colors[kind])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
