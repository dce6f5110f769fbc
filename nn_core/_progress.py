"""A tiny dependency-free progress bar (the part of tqdm the trainer needs).

On a terminal it redraws one line in place (at most ~10 times a second); when the
output is a file or a pipe it prints only the finished line, so logs stay short.
"""
from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar", "format_rate"]


def format_rate(n_per_s: float) -> str:
    if n_per_s >= 1e6:
        return f"{n_per_s / 1e6:.1f}M"
    if n_per_s >= 1e4:
        return f"{n_per_s / 1e3:.1f}k"
    return f"{n_per_s:.0f}"


class ProgressBar:
    """One line of progress: ``bar = ProgressBar(total, "epoch 1/5")``,
    ``bar.update(samples=64, loss=...)`` per batch, ``bar.close()`` at the end.

    Parameters
    ----------
    total : int
        Number of updates (batches) expected.
    desc : str
        Prefix of the line.
    file : text stream, optional
        Default ``sys.stderr``.
    width : int
        Characters of the bar itself.
    """

    def __init__(self, total, desc="", file=None, width=24):
        self.total = max(int(total), 1)
        self.desc = desc
        self.file = file if file is not None else sys.stderr
        self.width = width
        self.count = 0
        self.samples = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.postfix = {}
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        """Samples per second so far."""
        return self.samples / max(self.elapsed, 1e-9)

    def update(self, n=1, samples=0, **postfix):
        self.count += n
        self.samples += samples
        self.postfix.update(postfix)
        now = time.perf_counter()
        if self.tty and (now - self._last_draw > 0.1 or self.count >= self.total):
            self._last_draw = now
            self.file.write("\r" + self.line())
            self.file.flush()

    def line(self) -> str:
        frac = min(self.count / self.total, 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        post = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in self.postfix.items())
        return (f"{self.desc} [{bar}] {self.count}/{self.total} {post} "
                f"{format_rate(self.rate)} samples/s {self.elapsed:.1f}s")

    def close(self, **postfix):
        """Finish the line (with optional final values, e.g. validation metrics)."""
        self.postfix.update(postfix)
        self.file.write(("\r" if self.tty else "") + self.line() + "\n")
        self.file.flush()
