"""Run folders (refused unless resumed or overwritten), the history files and loss
curve written into them, and the generator states a resumed run needs."""
from __future__ import annotations

import copy
import csv
import json
import os

try:
    import fcntl
except ImportError:                              # not POSIX: no lock
    fcntl = None

import numpy as np

from ..checkpoint import atomic_write

__all__ = ["CHECKPOINT", "RUN_FILES", "RunExistsError", "RunLockedError", "check_run_dir",
           "prepare_run_dir", "lock_run_dir", "write_history",
           "plot_history", "rng_states", "set_rng_states"]

#: the checkpoint a run writes in its ``out_dir``
CHECKPOINT = "model.npz"
#: every file of a run folder (deleted by ``overwrite=True``, nothing else is)
RUN_FILES = (CHECKPOINT, "history.json", "history.csv", "loss_curve.png", "forecast.png")


class RunExistsError(FileExistsError):
    """``out_dir`` already holds a run and neither ``resume`` nor ``overwrite`` was given;
    ``files`` are its run files."""

    def __init__(self, message, files=()):
        super().__init__(message)
        self.files = list(files)


def check_run_dir(out_dir, *, resume=False, overwrite=False):
    """The rules of a run folder, checked without touching it: returns ``(the checkpoint
    to resume or None, the run files present)``.

    Raises
    ------
    ValueError
        Both ``resume`` and ``overwrite``.
    NotADirectoryError
        ``out_dir`` is an existing file.
    FileNotFoundError
        ``resume`` and there is no :data:`CHECKPOINT`.
    RunExistsError
        A run is there and neither ``resume`` nor ``overwrite`` was given.
    """
    out_dir = os.fspath(out_dir)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"{out_dir!r} is a file, not a run folder")
    present = [f for f in RUN_FILES if os.path.lexists(os.path.join(out_dir, f))]
    ckpt = os.path.join(out_dir, CHECKPOINT)
    if resume:
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"nothing to resume in {out_dir!r}: no {CHECKPOINT}")
        return ckpt, present
    if present and not overwrite:
        raise RunExistsError(f"{out_dir!r} already holds a run ({', '.join(present)}); "
                             "resume it or overwrite it", present)
    return None, present


class RunLockedError(RuntimeError):
    """Another live process trains into the run folder; ``pid`` is its process id
    (``None`` if unknown)."""

    def __init__(self, message, pid=None):
        super().__init__(message)
        self.pid = pid


class RunLock:
    """An exclusive ``flock`` on a run folder itself (no lock file is left behind), held
    from :func:`lock_run_dir` until :meth:`release`; the kernel releases it when the
    process ends, however it ends, so a killed run never blocks the next."""

    def __init__(self, out_dir):
        self.out_dir, self.fd = os.fspath(out_dir), None

    def acquire(self):
        if fcntl is None:
            return self
        fd = os.open(self.out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _lock_holder(os.fstat(fd))
            os.close(fd)
            who = f"process {pid}" if pid is not None else "another process"
            raise RunLockedError(f"{self.out_dir!r} is in use: {who} is training into it; "
                                 "wait for it to end or choose another folder", pid) from None
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)                    # closing the last descriptor unlocks
            self.fd = None


def _lock_holder(st):
    """The process holding a ``flock`` on the file of ``os.stat`` result ``st``, from
    Linux's ``/proc/locks`` (``None`` elsewhere or if not found)."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as fh:
            for line in fh:
                fields = line.split()
                if "FLOCK" in fields and len(fields) > 5 and fields[5] == want:
                    return int(fields[4])
    except (OSError, ValueError, IndexError):
        pass
    return None


def lock_run_dir(out_dir, *, resume=False, overwrite=False):
    """Check ``out_dir`` (:func:`check_run_dir`), create it and lock it for this run:
    returns the held :class:`RunLock` (release it when the run ends).

    Raises
    ------
    RunLockedError
        Another live process holds the folder; the message names its process id.
    """
    check_run_dir(out_dir, resume=resume, overwrite=overwrite)
    os.makedirs(out_dir, exist_ok=True)
    return RunLock(out_dir).acquire()


def prepare_run_dir(out_dir, *, resume=False, overwrite=False):
    """Check ``out_dir`` for a new or resumed run (:func:`check_run_dir`), delete the
    :data:`RUN_FILES` present when overwriting (nothing else) and create the folder;
    returns the checkpoint to resume, or ``None``."""
    ckpt, present = check_run_dir(out_dir, resume=resume, overwrite=overwrite)
    if ckpt is not None:
        return ckpt
    for f in present:
        os.unlink(os.path.join(out_dir, f))
    os.makedirs(out_dir, exist_ok=True)
    return None


# ------------------------------------------------------------------ history
def history_rows(epochs):
    """``(columns, rows)`` of per-epoch entries: the union of their keys, in order of
    first appearance; floats as ``repr`` (exact), missing values empty."""
    cols = []
    for entry in epochs:
        cols.extend(k for k in entry if k not in cols)
    rows = [[repr(v) if isinstance(v, float) else v for v in (e.get(c, "") for c in cols)]
            for e in epochs]
    return cols, rows


def write_csv(path, epochs, separator=",", prefix=""):
    """Write the per-epoch table to ``path`` atomically (after ``prefix``, raw text)."""
    cols, rows = history_rows(epochs)
    with atomic_write(path, "w") as fh:
        fh.write(prefix)
        w = csv.writer(fh, delimiter=separator, lineterminator="\n")
        if not prefix:
            w.writerow(cols)
        w.writerows(rows)
    return path


def write_history(out_dir, history):
    """Write ``history.json`` (everything) and ``history.csv`` (one row per epoch)
    atomically; returns both paths."""
    json_path = os.path.join(out_dir, "history.json")
    csv_path = os.path.join(out_dir, "history.csv")
    with atomic_write(json_path, "w") as fh:
        json.dump(history, fh, indent=1)
    write_csv(csv_path, history.get("epochs", []))
    return json_path, csv_path


#: the colours of the figures (matplotlib's default cycle, named)
TRAIN_COLOUR, VALIDATION_COLOUR, LEVEL_COLOURS = "tab:blue", "tab:orange", ("tab:gray",
                                                                           "tab:green")


def new_figure(figsize):
    """A matplotlib ``Figure`` that belongs to no backend (pyplot's state and the
    user's backend stay as they are), or ``None`` when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=figsize)


def save_figure(fig, path):
    """Write ``fig`` to ``path`` as a PNG, atomically; returns ``path``."""
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    return path


def _validation_key(epochs, metric):
    if not epochs:
        return None
    if metric is not None and metric in epochs[0]:
        return metric
    if "val_loss" in epochs[0]:
        return "val_loss"
    return next((k for k, v in epochs[0].items() if k.startswith("val_")
                 and isinstance(v, (int, float))), None)


def loss_figure(history, title="", metric=None, levels=None):
    """The loss curve as a ``Figure`` (see :func:`plot_history`), or ``None`` without
    matplotlib."""
    fig = new_figure((7, 4))
    if fig is None:
        return None
    ax = fig.add_subplot()
    steps = history["step_loss"]
    ax.plot(np.arange(1, len(steps) + 1), steps, lw=0.8, alpha=0.5, color=TRAIN_COLOUR,
            label="train loss (step)")
    per_epoch = history["epochs"]
    shown = list(steps)
    if per_epoch:
        ends = [e["step"] for e in per_epoch]
        starts = [0] + ends[:-1]
        mids = [(a + b) / 2 for a, b in zip(starts, ends)]
        ax.plot(mids, [e["train_loss"] for e in per_epoch], "o-", color=TRAIN_COLOUR,
                label="train loss (epoch mean)")
        key = _validation_key(per_epoch, metric)
        if key is not None:
            values = [e[key] for e in per_epoch]
            shown += values
            ax.plot(ends, values, "s-", color=VALIDATION_COLOUR, gid="validation",
                    label=f"{key} (end of epoch)")
    for (label, value), colour in zip((levels or {}).items(), LEVEL_COLOURS * 4):
        shown.append(value)
        ax.axhline(value, color=colour, ls="--", lw=1.2, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if shown and min(shown) > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return fig


def plot_history(history, path, title="", metric=None, levels=None):
    """Write the loss curve (per-step training loss, per-epoch validation) as a PNG.

    Drawn on a :class:`matplotlib.figure.Figure` of its own: pyplot and the backend in
    use (a notebook's inline plots) are left alone.

    Parameters
    ----------
    history : dict
        ``step_loss`` (list of floats) and ``epochs`` (dicts with ``step``,
        ``train_loss`` and validation metrics), as training records them.
    path : str
        The PNG to write.
    title : str
    metric : str, optional
        The validation metric drawn at the end of each epoch, in the training loss's
        units (default: ``val_loss``, else the first ``val_`` metric recorded).
    levels : dict of str to float, optional
        Horizontal lines, such as a baseline's error: ``{label: value}``.

    Returns
    -------
    str or None
        ``path``, or ``None`` when matplotlib is not installed.
    """
    fig = loss_figure(history, title, metric, levels)
    return None if fig is None else save_figure(fig, path)


# ------------------------------------------------------------------ RNG state
def _named_modules(model, prefix=""):
    yield prefix, model
    for name, child in model.children():
        yield from _named_modules(child, f"{prefix}.{name}" if prefix else name)


def rng_states(model) -> dict:
    """``{module path: bit-generator state}`` of every module that holds a generator
    (``""`` is ``model`` itself); modules sharing one generator get equal entries."""
    out = {}
    for path, m in _named_modules(model):
        g = getattr(m, "rng", None)
        if isinstance(g, np.random.Generator):
            out[path] = g.bit_generator.state
    return out


def set_rng_states(model, states) -> None:
    """Restore what :func:`rng_states` returned (the module paths must match)."""
    mods = {path: m for path, m in _named_modules(model)
            if isinstance(getattr(m, "rng", None), np.random.Generator)}
    if not isinstance(states, dict) or set(states) != set(mods):
        got = sorted(states) if isinstance(states, dict) else type(states).__name__
        raise ValueError(f"generator states do not match the model's modules: expected "
                         f"{sorted(mods)[:5]}..., got {str(got)[:200]}")
    for path, state in states.items():
        try:
            mods[path].rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"generator state of module {path!r} is invalid: {exc}") from exc


def order_generator(rng):
    """The batch-order generator: a copy of ``rng`` as it is after the model drew its
    weights (so the order is the one ``rng`` itself would give), independent of the
    model's own draws (dropout).  ``rng`` then jumps far ahead, so that the model's later
    draws do not repeat the order's numbers."""
    order = np.random.Generator(copy.deepcopy(rng.bit_generator))
    advance = getattr(rng.bit_generator, "advance", None)
    if advance is not None:
        advance(1 << 96)
    return order
