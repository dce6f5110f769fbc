"""A tiny dependency-free progress bar (the part of tqdm the trainer needs).

On a terminal it redraws one line in place (at most ~10 times a second), fitted to the
terminal's width (:func:`shutil.get_terminal_size`) so that it never wraps: the parts
that matter least (the rate, the elapsed time, the bar, then the metrics) go first.  When the output
is a file or a pipe (a log, CI) it prints one plain line per epoch, when it ends,
without the bar.  Both
show the time left in the epoch and in the run, at the epoch's pace so far.
"""
from __future__ import annotations

import shutil
import sys
import time

__all__ = ["ProgressBar", "format_rate", "format_duration"]


def format_rate(n_per_s: float) -> str:
    if n_per_s >= 1e6:
        return f"{n_per_s / 1e6:.1f}M"
    if n_per_s >= 1e4:
        return f"{n_per_s / 1e3:.1f}k"
    return f"{n_per_s:.0f}"


def format_duration(seconds: float) -> str:
    """``"42s"``, ``"3m05s"``, ``"2h07m"``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressBar:
    """One line of progress: ``bar = ProgressBar(total, "epoch 1/5")``,
    ``bar.update(samples=64, loss=...)`` per batch, ``bar.close()`` at the end.

    Parameters
    ----------
    total : int
        Number of updates (batches) expected in this epoch.
    desc : str
        Prefix of the line.
    file : text stream, optional
        Default ``sys.stderr``.
    width : int
        Largest number of characters of the bar itself.
    run_left : int, optional
        Updates left in the whole run when the bar starts (this epoch's included); adds
        the run's time left to the line.
    start : int
        Updates of this epoch already done (a resumed epoch).
    columns : int, optional
        The line's width on a terminal (default: the terminal's width, less one column
        so that the cursor never wraps).
    """

    def __init__(self, total, desc="", file=None, width=24, run_left=None, start=0,
                 columns=None):
        self.total = max(int(total), 1)
        self.desc = desc
        self.file = file if file is not None else sys.stderr
        self.width = width
        self.count = self._start = int(start)
        self.run_left = run_left
        self.columns = columns
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
            self.file.write("\r" + self.line() + "\x1b[K")   # clear what a longer line left
            self.file.flush()

    def _eta(self, finished):
        """The time left: ``"eta 12s"`` in the epoch, ``"run 3m05s"`` (None before the
        first update)."""
        done = self.count - self._start
        if done <= 0:
            return None
        per = self.elapsed / done
        parts = [] if finished else [f"eta {format_duration((self.total - self.count) * per)}"]
        if self.run_left is not None:
            left = max(self.run_left - done, 0)
            parts.append(f"run {format_duration(left * per)} left" if finished or left
                         else "run done")
        return " ".join(parts) or None

    def line(self, columns=None, finished=False) -> str:
        """The progress line; on a terminal at most ``columns`` characters (default:
        the terminal's width), as a plain line without the bar otherwise."""
        items = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in self.postfix.items()]
        post = " ".join(items)
        counts = f"{min(self.count, self.total)}/{self.total}"
        rate = f"{format_rate(self.rate)} samples/s"
        took = f"{self.elapsed:.1f}s"
        eta = self._eta(finished)
        if not self.tty and columns is None:
            return " ".join(p for p in (self.desc, counts, post, rate, took, eta) if p)
        if columns is None:
            columns = self.columns or shutil.get_terminal_size().columns - 1
        columns = max(int(columns), 10)
        frac = min(self.count / self.total, 1.0)

        def compose(bar_width, keep):
            bar = None
            if bar_width:
                filled = int(round(frac * bar_width))
                bar = "[" + "#" * filled + "." * (bar_width - filled) + "]"
            parts = (self.desc, bar, counts, post if "post" in keep else None,
                     rate if "rate" in keep else None, took if "took" in keep else None, eta)
            return " ".join(p for p in parts if p)

        # least important first out: the rate, the elapsed time, the bar (which shrinks
        # to fit before it goes), the metrics
        for keep in (("post", "rate", "took"), ("post", "took"), ("post",)):
            room = columns - len(compose(0, keep)) - 3
            if room >= 6:
                return compose(min(self.width, room), keep)
        for first in range(len(items) + 1):       # the metrics, the running ones first
            post = " ".join(items[first:])
            text = compose(0, ("post",))
            if len(text) <= columns:
                return text
        return text[:columns]

    def close(self, **postfix):
        """Finish the line (with optional final values, e.g. validation metrics)."""
        self.postfix.update(postfix)
        if self.tty:
            self.file.write("\r" + self.line(finished=True) + "\x1b[K\n")
        else:
            self.file.write(self.line(finished=True) + "\n")
        self.file.flush()
