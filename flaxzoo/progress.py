"""A one-line progress bar on stderr for downloads, ``flaxzoo predict`` and ``flaxzoo evaluate``: done / total,
rate and time left, redrawn in place on a terminal (as Keras' ``Progbar``); elsewhere (a log file, a pipe)
one line when it closes, so logs are not flooded."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class ProgressBar:
    """``bar.update(n)`` after each ``n`` units of ``total`` (0: unknown); ``bar.close()`` at the end.
    ``amount`` formats a count (``megabytes`` for downloads); ``unit`` names it per second."""

    width = 24

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "img",
        amount: Callable[[float], str] = lambda n: f"{int(n)}",
        enabled: bool = True,
        stream=None,
        interval: float = 0.1,
        initial: int = 0,
    ):
        self.label, self.total, self.unit, self.amount = label, total, unit, amount
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.interval = interval
        self.start = self.drawn = time.perf_counter()
        self.done = self.initial = initial  # a resumed download starts part-way

    @property
    def rate(self) -> float:
        return (self.done - self.initial) / max(time.perf_counter() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate
        per_second = f"{self.amount(rate)}/s" if self.unit == "B" else f"{rate:.1f} {self.unit}/s"
        if not self.total:
            return f"{self.label}: {self.amount(self.done)} {per_second}"
        filled = min(self.width, int(self.width * self.done / self.total))
        bar = ("=" * filled + (">" if filled < self.width else "")).ljust(self.width)
        left = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        eta = f" ETA {left:.0f}s" if left else ""
        return (
            f"{self.label}: [{bar}] {100 * self.done // self.total:3d}% "
            f"{self.amount(self.done)}/{self.amount(self.total)} {per_second}{eta}"
        )

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty and (now - self.drawn >= self.interval or (self.total and self.done >= self.total)):
            self.drawn = now
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write(("\r" if self.tty else "") + self.line() + ("\x1b[K" if self.tty else "") + "\n")
            self.stream.flush()
            self.enabled = self.tty = False
