"""The training loop: a :class:`Task` supplies data, model and one training step;
:func:`train` runs AdamW with warmup/cosine and gradient clipping, shows progress,
validates after every epoch, checkpoints atomically, and writes the history and the
loss curve.

Runs are never lost and always resumable:

* ``out_dir`` that already holds a run is refused unless ``resume=True`` (continue it)
  or ``overwrite=True`` (delete its files first) -- see :func:`prepare_run_dir`;
* every checkpoint (``model.npz``, after every epoch and whenever training stops) carries
  the training state next to the model (:func:`nn_core.checkpoint.load_training_state`):
  optimizer buffers, the schedule's step, the global step, the position in the epoch,
  the batch-order generator and every module's generator, and the history; a resumed run
  ends with the same weights, bit for bit, as one that was never interrupted;
* SIGINT (Ctrl-C) and SIGTERM finish the optimizer update in progress or abandon the
  step before it (forward/backward, evaluation), save, write the history and the loss
  curve, and raise :class:`TrainingInterrupted`;
* ``history.json`` and ``history.csv`` are written atomically after every epoch.

The ``nn-core train`` command runs this loop on the tasks of :mod:`nn_core.tasks`,
so they behave alike on the command line; any :class:`Task` subclass of your own
runs the same way.

Examples
--------
A linear regression as a task:

>>> import io, tempfile
>>> import numpy as np
>>> from nn_core.layers import Linear
>>> from nn_core.losses import MSELoss
>>> class Regression(Task):
...     name = "regression"
...     def __init__(self, config):
...         super().__init__(config)
...         rng = np.random.default_rng(config["seed"])
...         self.x = rng.standard_normal((256, 4))
...         self.y = self.x @ rng.standard_normal((4, 2))
...     def build_model(self, dtype, rng):
...         return Linear(4, 2, dtype=dtype, rng=rng)
...     def num_batches(self, batch_size):
...         return len(self.x) // batch_size
...     def train_batches(self, rng, batch_size):
...         order = rng.permutation(len(self.x))
...         for i in range(self.num_batches(batch_size)):
...             idx = order[i * batch_size:(i + 1) * batch_size]
...             yield self.x[idx], self.y[idx]
...     def train_step(self, model, batch):
...         x, y = batch
...         loss_fn = MSELoss(dtype=model.dtype)
...         loss = loss_fn(model(x), y)
...         model.backward(loss_fn.backward()[0])
...         return {"loss": float(loss), "correct": 0, "count": 0, "samples": len(x)}
...     def evaluate(self, model):
...         return {"val_mse": float(((model(self.x) - self.y) ** 2).mean())}
>>> with tempfile.TemporaryDirectory() as out:
...     model, result = train(Regression({"seed": 0}), epochs=5, batch_size=32, lr=0.1,
...                           out_dir=out, log=lambda msg: None, progress_file=io.StringIO())
>>> result["steps"], result["metrics"]["val_mse"] < 0.01
(40, True)
"""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import numbers
import os
import signal
import threading
import time

import numpy as np

from ._progress import ProgressBar
from .checkpoint import CheckpointError, atomic_write, load_training_state, read_metadata, \
    read_state_dict, save
from .optim import AdamW, WarmupCosine, clip_grad_norm

__all__ = ["Task", "train", "plot_history", "write_history", "prepare_run_dir", "read_run",
           "rng_states", "set_rng_states", "StopSignals", "TrainingInterrupted",
           "RunExistsError", "CHECKPOINT", "RUN_FILES"]

#: the checkpoint :func:`train` writes in its ``out_dir``
CHECKPOINT = "model.npz"
#: every file of a run folder (deleted by ``overwrite=True``, nothing else is)
RUN_FILES = (CHECKPOINT, "history.json", "history.csv", "loss_curve.png")
_STATE_KIND = "nn_core.training.train/1"


class Task:
    """What :func:`train` needs from a task: data, a model and one training step.

    Subclasses: :class:`~nn_core.tasks.seq2seq.Seq2SeqTask`,
    :class:`~nn_core.tasks.forecast.ForecastTask` and
    :class:`~nn_core.tasks.lm.LanguageModelTask`.

    Parameters
    ----------
    config : dict
        JSON-serialisable (model sizes, data options, seed).  :func:`train` stores it
        in the checkpoint, so ``nn-core eval``/``generate`` rebuild the same task, and
        its data, without the command line.
    """

    name = ""
    description = ""
    #: default ``epochs, batch_size, lr, hidden`` and task options
    defaults: dict = {}
    #: the metric printed in the summary, and whether larger is better
    headline = ("val_loss", False)

    def __init__(self, config):
        self.config = dict(config)

    @classmethod
    def add_arguments(cls, parser):
        """Task-specific command-line options (defaults from :attr:`defaults`)."""

    @classmethod
    def config_from_args(cls, args):  # pragma: no cover - interface
        """The task's ``config`` from the parsed command line (``ValueError`` naming the
        option if invalid); called before any data are generated."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config):
        """``config`` checked as :meth:`config_from_args` checks it (it may come from a
        checkpoint); returns a copy, raises ``ValueError`` naming the option."""
        if not isinstance(config, dict):
            raise ValueError(f"the task configuration must be a dict, got "
                             f"{type(config).__name__}")
        return dict(config)

    @classmethod
    def check_generate_args(cls, args, config):
        """Check the ``nn-core generate`` options this task uses (``ValueError``)."""

    def build_model(self, dtype, rng):  # pragma: no cover - interface
        """A new model with weights drawn from ``rng`` (a ``numpy.random.Generator``)."""
        raise NotImplementedError

    def num_batches(self, batch_size) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def train_batches(self, rng, batch_size):  # pragma: no cover - interface
        """Yield the batches of one epoch (shuffled with ``rng``)."""
        raise NotImplementedError

    def train_step(self, model, batch) -> dict:  # pragma: no cover - interface
        """Forward + loss + backward (gradients accumulate into ``model``).

        Returns ``{"loss": float, "correct": int, "count": int, "samples": int}``
        (``correct/count`` is the accuracy shown by the progress bar; ``count`` may
        be 0 for regression).
        """
        raise NotImplementedError

    def evaluate(self, model) -> dict:  # pragma: no cover - interface
        """Validation metrics (``model`` is in eval mode)."""
        raise NotImplementedError

    def describe_metrics(self, metrics) -> str:
        """One line summarising ``metrics`` (printed at the end of training and by eval)."""
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in metrics.items())

    def generate(self, model, args, out=print):  # pragma: no cover - interface
        """Run ``model`` on examples for ``nn-core generate`` (``args``: its options)."""
        raise NotImplementedError


def plot_history(history, path, title=""):
    """Write the loss curve (per-step training loss, per-epoch validation) as a PNG.

    Parameters
    ----------
    history : dict
        ``step_loss`` (list of floats) and ``epochs`` (dicts with ``step``,
        ``train_loss`` and optionally ``val_loss``), as :func:`train` records them.
    path : str
        The PNG to write.
    title : str

    Returns
    -------
    str or None
        ``path``, or ``None`` when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = history["step_loss"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(steps) + 1), steps, lw=0.8, alpha=0.6, label="train loss (step)")
    per_epoch = history["epochs"]
    if per_epoch:
        ends = [e["step"] for e in per_epoch]
        mids = [(a + b) / 2 for a, b in zip([0] + ends[:-1], ends)]
        ax.plot(mids, [e["train_loss"] for e in per_epoch], "o-", label="train loss (epoch mean)")
        if "val_loss" in per_epoch[0]:
            ax.plot(ends, [e["val_loss"] for e in per_epoch], "s-",
                    label="validation loss (end of epoch)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if min(steps, default=1.0) > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a resumable checkpoint.

    Attributes
    ----------
    checkpoint : str
        The checkpoint written (resume with ``train(..., resume=True)`` /
        ``nn-core train --resume --out DIR``).
    step, epoch : int
        Optimizer steps done, and the epoch in progress (1-based).
    signum : int
        The signal (``signal.SIGINT`` for Ctrl-C).
    """

    def __init__(self, message, checkpoint, step, epoch, signum=signal.SIGINT):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step
        self.epoch = epoch
        self.signum = int(signum)


class RunExistsError(FileExistsError):
    """``out_dir`` already holds a run and neither ``resume`` nor ``overwrite`` was given."""


class StopSignals:
    """Turn SIGINT/SIGTERM into an orderly stop while training.

    While active (``with StopSignals() as sig:``) a signal sets :attr:`requested`.  Inside
    ``with sig.abandonable():`` (work that leaves the training state untouched: fetching
    a batch, forward/backward, evaluation) it also raises ``KeyboardInterrupt`` there, so
    the step is abandoned at once; everywhere else (the optimizer update, saving) it
    only waits to be noticed at the next check.  Handlers are installed only on the main
    thread and only for signals that are not ignored; the previous ones come back on exit.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                    if s is not None)

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.requested = None
        self._abandon = 0
        self._old = {}

    def _handler(self, signum, frame):
        self.requested = self.requested or signum
        if self._abandon:
            raise KeyboardInterrupt

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                old = signal.getsignal(sig)
                if old is signal.SIG_IGN or old is None:
                    continue
                self._old[sig] = old
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    @contextlib.contextmanager
    def abandonable(self):
        """A region a signal interrupts at once (``KeyboardInterrupt``)."""
        if self.requested:
            raise KeyboardInterrupt
        self._abandon += 1
        try:
            yield
        finally:
            self._abandon -= 1


# ------------------------------------------------------------------ run folders
def prepare_run_dir(out_dir, *, resume=False, overwrite=False):
    """Check ``out_dir`` for a new or resumed run; returns the checkpoint to resume.

    Parameters
    ----------
    out_dir : str
    resume : bool
        Continue the run in ``out_dir`` (its :data:`CHECKPOINT` must exist).
    overwrite : bool
        Start afresh: the :data:`RUN_FILES` present are deleted (nothing else).

    Returns
    -------
    str or None
        The checkpoint path when resuming, else ``None``.  The folder exists afterwards.

    Raises
    ------
    NotADirectoryError
        ``out_dir`` is an existing file.
    RunExistsError
        A run is there and neither ``resume`` nor ``overwrite`` was given.
    FileNotFoundError
        ``resume`` and there is no checkpoint.
    ValueError
        Both ``resume`` and ``overwrite``.
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
        return ckpt
    if present and not overwrite:
        raise RunExistsError(f"{out_dir!r} already holds a run ({', '.join(present)}); "
                             "resume it or overwrite it")
    for f in present:
        os.unlink(os.path.join(out_dir, f))
    os.makedirs(out_dir, exist_ok=True)
    return None


def read_run(path) -> dict:
    """What a run folder (or its checkpoint) says about the run, for resuming it.

    Returns
    -------
    dict
        ``task`` (name), ``config`` (the task's), ``settings`` (``epochs``,
        ``batch_size``, ``lr``, ``dtype``, ``seed``, ``weight_decay``, ``clip``,
        ``warmup_frac``), ``step``, ``epochs_done`` and ``finished``.

    Raises
    ------
    CheckpointError
        The checkpoint was not written by :func:`train`, or carries no training state.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    meta = read_metadata(path)
    extra = meta.get("extra")
    training = meta.get("training")
    if not isinstance(extra, dict) or "task" not in extra or not isinstance(training, dict) \
            or training.get("kind") != _STATE_KIND:
        raise CheckpointError(f"{path!r} was not written by nn_core.training.train with a "
                              "training state (an older or a plain checkpoint cannot resume)")
    settings = training.get("settings")
    step, done = training.get("step"), training.get("epochs_done")
    try:
        if not isinstance(settings, dict) or set(settings) != set(_SETTINGS):
            raise ValueError(f"keys {sorted(settings) if isinstance(settings, dict) else '-'}")
        if _check_settings(**settings, max_steps=None) != settings:
            raise ValueError("values of the wrong type")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for v in (step, done)):
            raise ValueError(f"step {step!r}, epochs done {done!r}")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path!r}: the run's settings are malformed: {exc}") from None
    return {"task": extra["task"], "config": extra.get("config"), "settings": settings,
            "step": step, "epochs_done": done, "finished": bool(training.get("finished"))}


_SETTINGS = ("epochs", "batch_size", "lr", "dtype", "seed", "weight_decay", "clip",
             "warmup_frac")


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


def _order_generator(rng):
    """The batch-order generator: a copy of ``rng`` as it is after the model drew its
    weights (so the order is the one ``rng`` itself would give), independent of the
    model's own draws (dropout).  ``rng`` then jumps far ahead, so that the model's later
    draws do not repeat the order's numbers."""
    order = np.random.Generator(copy.deepcopy(rng.bit_generator))
    advance = getattr(rng.bit_generator, "advance", None)
    if advance is not None:
        advance(1 << 96)
    return order


# ------------------------------------------------------------------ history
def write_history(out_dir, history):
    """Write ``history.json`` (everything) and ``history.csv`` (one row per epoch)
    atomically; returns both paths."""
    json_path = os.path.join(out_dir, "history.json")
    csv_path = os.path.join(out_dir, "history.csv")
    with atomic_write(json_path, "w") as fh:
        json.dump(history, fh, indent=1)
    cols = []
    for entry in history.get("epochs", []):
        cols.extend(k for k in entry if k not in cols)
    with atomic_write(csv_path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for entry in history.get("epochs", []):
            w.writerow([repr(v) if isinstance(v, float) else v
                        for v in (entry.get(c, "") for c in cols)])
    return json_path, csv_path


# ------------------------------------------------------------------ the loop
def _check_settings(epochs, batch_size, lr, dtype, seed, weight_decay, clip, warmup_frac,
                    max_steps):
    def integer(v, name, lo):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        return int(v)

    def real(v, name, positive):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                or v < 0 or (positive and v == 0):
            raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, "
                             f"got {v!r}")
        return float(v)

    name = np.dtype(dtype).name
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {name}")
    if not 0 <= warmup_frac <= 1:
        raise ValueError(f"warmup_frac must be in [0, 1], got {warmup_frac!r}")
    if max_steps is not None:
        integer(max_steps, "max_steps", 1)
    return {"epochs": integer(epochs, "epochs", 1),
            "batch_size": integer(batch_size, "batch_size", 1),
            "lr": real(lr, "lr", True), "dtype": name, "seed": integer(seed, "seed", 0),
            "weight_decay": real(weight_decay, "weight_decay", False),
            "clip": real(clip, "clip", True), "warmup_frac": float(warmup_frac)}


class _Run:
    """Where a run is: steps, position in the epoch, running sums, history."""

    def __init__(self, task_name):
        self.step = 0
        self.epochs_done = 0
        self.batch = 0                  # batches done in epoch epochs_done + 1
        self.order_epoch_start = None   # batch-order generator state when that epoch began
        self.stats = self.new_stats()
        self.history = {"task": task_name, "step_loss": [], "epochs": []}
        self.wall = 0.0                 # seconds of earlier sessions
        self.metrics = {}

    @staticmethod
    def new_stats():
        return {"loss_sum": 0.0, "samples": 0, "correct": 0, "count": 0, "train_time_s": 0.0}


def train(task, *, epochs, batch_size, lr, dtype=np.float32, seed=0, out_dir="runs",
          weight_decay=0.01, clip=1.0, warmup_frac=0.05, log=None, progress_file=None,
          max_steps=None, resume=False, overwrite=False, handle_signals=True):
    """Train ``task``'s model.

    Every epoch: the task's batches (order drawn from ``seed``), each one
    ``zero_grad`` -> :meth:`Task.train_step` -> global-norm clip -> AdamW step ->
    schedule step; then :meth:`Task.evaluate` in eval mode, a checkpoint with the
    training state, and the history.

    Parameters
    ----------
    task : Task
    epochs, batch_size : int
    lr : float
        Peak learning rate of AdamW (linear warmup over ``warmup_frac`` of the steps of
        all ``epochs``, then cosine decay to ``lr / 20``).
    dtype : {np.float32, np.float64}
    seed : int
        Seeds the weights and the batch order (data are seeded by the task config).
    out_dir : str
        Receives ``model.npz`` (after every epoch and when training stops, atomically),
        ``history.json`` and ``history.csv`` (after every epoch) and ``loss_curve.png``
        (when matplotlib is installed).  If it already holds a run, ``resume`` or
        ``overwrite`` must be given.
    clip : float
        Global gradient-norm clip.
    weight_decay : float
        AdamW's decoupled weight decay.
    warmup_frac : float
        Share of the steps spent warming up.
    log : callable, optional
        Receives the header and summary lines (default: ``print``).
    progress_file : text stream, optional
        Where the progress bar goes (default: ``sys.stderr``).
    max_steps : int, optional
        Stop once this many optimizer steps are done in total (counting the steps of the
        run being resumed), with a resumable checkpoint.  The schedule still spans
        ``epochs``, so stopping and resuming changes nothing.
    resume : bool
        Continue the run in ``out_dir`` from its checkpoint: the task (name and config)
        and every setting above must equal the run's (:func:`read_run` tells them).
    overwrite : bool
        Delete the run files in ``out_dir`` first (see :func:`prepare_run_dir`).
    handle_signals : bool
        Stop in order on SIGINT/SIGTERM (see :class:`StopSignals`); main thread only.

    Returns
    -------
    model : Module
        The trained model.
    result : dict
        ``metrics`` (the last evaluation), ``headline`` (its :attr:`Task.headline`
        value), ``steps``, ``wall_time_s``, ``history`` (as in ``history.json``:
        ``step_loss`` per step, ``epochs`` per-epoch entries), ``checkpoint`` and
        ``status`` (``"finished"`` or ``"max_steps"``).

    Raises
    ------
    TrainingInterrupted
        On SIGINT/SIGTERM, after saving (a ``KeyboardInterrupt``).
    RunExistsError, NotADirectoryError, FileNotFoundError
        ``out_dir`` problems (see :func:`prepare_run_dir`).
    ValueError
        An invalid setting, or a resumed run whose task or settings differ.
    CheckpointError
        The checkpoint to resume is unreadable or carries no training state.
    FloatingPointError
        A training loss is not finite.
    """
    settings = _check_settings(epochs, batch_size, lr, dtype, seed, weight_decay, clip,
                               warmup_frac, max_steps)
    log = log or (lambda msg: print(msg, flush=True))
    dtype = np.dtype(settings["dtype"]).type
    resume_from = prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)
    ckpt = os.path.join(out_dir, CHECKPOINT)
    with StopSignals(handle_signals) as signals:
        t_start = time.perf_counter()
        rng = np.random.default_rng(seed)
        model = task.build_model(dtype, rng)
        order_rng = _order_generator(rng)
        per_epoch = task.num_batches(batch_size)
        total = epochs * per_epoch
        opt = AdamW(model, lr=lr, weight_decay=weight_decay)
        sched = WarmupCosine(opt, warmup_steps=max(1, int(warmup_frac * total)),
                             total_steps=total, min_lr=lr / 20)
        run = _Run(task.name)
        if resume_from:
            _restore(resume_from, task, settings, per_epoch, model, opt, sched, order_rng, run)
        log(f"nn-core train {task.name}: {type(model).__name__} with "
            f"{model.num_parameters():,} parameters ({np.dtype(dtype).name}), {epochs} epochs "
            f"x {per_epoch} batches of {batch_size}, AdamW lr {lr:g}"
            + (f", stopping after step {max_steps}" if max_steps is not None
               and max_steps < total else "")
            + (f"; resuming at step {run.step} (epoch {run.epochs_done + 1}, batch "
               f"{run.batch}/{per_epoch})" if resume_from else ""))

        def state(before=None):
            """The training state now, or (``before``) as it was before the step in
            progress, which is being abandoned."""
            rngs, order = before if before is not None else (rng_states(model), None)
            return _training_state(run, settings, per_epoch, opt, sched, order_rng, order,
                                   rngs, run.wall + time.perf_counter() - t_start)

        def checkpoint(training_state, metrics):
            save(model, ckpt, extra={
                "task": task.name, "config": task.config, "metrics": metrics,
                "train": {**settings, "epochs_done": run.epochs_done, "step": run.step},
                "history": run.history["epochs"]}, training_state=training_state)
            write_history(out_dir, _history_out(run, training_state))

        status, saved, bar, before, t_epoch = "finished", False, None, None, None
        try:
            while run.epochs_done < epochs:
                epoch = run.epochs_done + 1
                if run.batch == 0:
                    run.order_epoch_start = order_rng.bit_generator.state
                if run.batch < per_epoch and max_steps is not None and run.step >= max_steps:
                    status = "max_steps"
                    break
                if signals.requested:
                    raise KeyboardInterrupt
                model.train()
                bar = ProgressBar(per_epoch, f"epoch {epoch}/{epochs}", file=progress_file)
                bar.count = run.batch
                batches = _epoch_batches(task, order_rng, batch_size, run, per_epoch)
                t_epoch = time.perf_counter()
                while run.batch < per_epoch:
                    if max_steps is not None and run.step >= max_steps:
                        status = "max_steps"
                        break
                    if signals.requested:
                        raise KeyboardInterrupt
                    before = (rng_states(model), order_rng.bit_generator.state)
                    with signals.abandonable():
                        batch = next(batches)
                        opt.zero_grad()
                        stats = task.train_step(model, batch)
                        loss = float(stats["loss"])
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"training diverged: loss {loss} at step "
                                                 f"{run.step + 1}; try a smaller --lr")
                    # the update: a signal waits until it is complete
                    clip_grad_norm(model, clip)
                    opt.step()
                    sched.step()
                    s = run.stats
                    run.step += 1
                    run.batch += 1
                    run.history["step_loss"].append(loss)
                    s["loss_sum"] += loss * stats["samples"]
                    s["samples"] += stats["samples"]
                    s["correct"] += stats["correct"]
                    s["count"] += stats["count"]
                    before = None
                    post = {"loss": s["loss_sum"] / max(s["samples"], 1)}
                    if s["count"]:
                        post["acc"] = s["correct"] / s["count"]
                    bar.update(1, samples=stats["samples"], **post)
                run.stats["train_time_s"] += time.perf_counter() - t_epoch
                t_epoch = None
                if status == "max_steps":
                    break
                # the epoch's batches are done: evaluate (abandonable), then checkpoint
                before = (rng_states(model), order_rng.bit_generator.state)
                model.eval()
                t_eval = time.perf_counter()
                with signals.abandonable():
                    metrics = task.evaluate(model)
                before = None
                s = run.stats
                entry = {"epoch": epoch, "step": run.step,
                         "train_loss": s["loss_sum"] / max(s["samples"], 1),
                         "samples_per_s": s["samples"] / max(s["train_time_s"], 1e-9),
                         "train_time_s": s["train_time_s"],
                         "eval_time_s": time.perf_counter() - t_eval, **metrics}
                if s["count"]:
                    entry["train_acc"] = s["correct"] / s["count"]
                run.history["epochs"].append(entry)
                run.metrics = metrics
                run.epochs_done += 1
                run.batch = 0
                run.stats = run.new_stats()
                run.order_epoch_start = order_rng.bit_generator.state
                bar.close(**{k: v for k, v in metrics.items() if isinstance(v, float)})
                bar = None
                checkpoint(state(), metrics)
                saved = True
            if status == "max_steps" and (run.batch or not saved):
                # stopped mid-epoch: the state is taken before evaluating for the report
                stopped = state()
                before = (stopped["rng"]["modules"], stopped["rng"]["order"])
                with signals.abandonable():
                    run.metrics = task.evaluate(model.eval())
                before = None
                checkpoint(stopped, run.metrics)
        except KeyboardInterrupt:
            if t_epoch is not None:
                run.stats["train_time_s"] += time.perf_counter() - t_epoch
            if bar is not None and bar.tty:
                bar.file.write("\n")
            model._drop_caches()
            checkpoint(state(before), run.metrics)
            signum, signals.requested = signals.requested or signal.SIGINT, None
            _plot(run, out_dir, task, signals)            # a second signal skips the plot
            raise TrainingInterrupted(
                f"interrupted at step {run.step} (epoch {run.epochs_done + 1}, batch "
                f"{run.batch}/{per_epoch}); checkpoint saved to {ckpt}", ckpt, run.step,
                run.epochs_done + 1, signum) from None
        wall = run.wall + time.perf_counter() - t_start
        run.history["wall_time_s"] = wall
        png = _plot(run, out_dir, task, signals)
    metrics = run.metrics
    key, _ = task.headline
    if status == "max_steps":
        log(f"stopped after {run.step} steps (max_steps) in epoch {run.epochs_done + 1} at "
            f"batch {run.batch}/{per_epoch}: {task.describe_metrics(metrics)}")
    else:
        log(f"done in {wall:.1f}s ({run.step} steps): {task.describe_metrics(metrics)}")
    log(f"checkpoint: {ckpt}")
    if png:
        log(f"loss curve: {png}")
    else:
        log("loss curve: not plotted (matplotlib is not installed; `pip install matplotlib`). "
            f"Per-step losses are in {os.path.join(out_dir, 'history.json')}")
    return model, {"metrics": metrics, "wall_time_s": wall, "steps": run.step,
                   "history": run.history, "checkpoint": ckpt, "headline": metrics.get(key),
                   "status": status}


def _epoch_batches(task, order_rng, batch_size, run, per_epoch):
    """The iterator over the rest of the current epoch's batches.  Resumed mid-epoch,
    the epoch's order is drawn again from its starting state and the batches already
    trained are skipped (the order generator then is where the interrupted run left it)."""
    if not 0 < run.batch < per_epoch:
        return task.train_batches(order_rng, batch_size)
    now = order_rng.bit_generator.state
    order_rng.bit_generator.state = run.order_epoch_start
    batches = task.train_batches(order_rng, batch_size)
    for _ in range(run.batch):
        next(batches)
    if order_rng.bit_generator.state != now:
        raise RuntimeError(f"{type(task).__name__}.train_batches did not replay the same "
                           "batch order; batches must depend only on the generator it gets")
    return batches


def _history_out(run, training_state):
    out = dict(run.history)
    out["step"] = run.step
    out["epochs_done"] = run.epochs_done
    out["finished"] = bool(training_state.get("finished"))
    out["wall_time_s"] = training_state["wall_time_s"]
    return out


def _plot(run, out_dir, task, signals):
    """The loss curve, or ``None`` (no matplotlib, or abandoned by a signal)."""
    try:
        with signals.abandonable():
            return plot_history(run.history, os.path.join(out_dir, "loss_curve.png"),
                                title=f"nn-core train {task.name}")
    except KeyboardInterrupt:
        return None


def _training_state(run, settings, per_epoch, opt, sched, order_rng, order, module_rngs,
                    wall):
    return {
        "kind": _STATE_KIND,
        "settings": dict(settings),
        "batches_per_epoch": per_epoch,
        "step": run.step,
        "epochs_done": run.epochs_done,
        "batch": run.batch,
        "finished": run.epochs_done == settings["epochs"],
        "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(),
        "rng": {"order_epoch_start": run.order_epoch_start,
                "order": order if order is not None else order_rng.bit_generator.state,
                "modules": module_rngs},
        "epoch_stats": dict(run.stats),
        "step_loss": np.asarray(run.history["step_loss"], dtype=np.float64),
        "epochs": list(run.history["epochs"]),
        "metrics": dict(run.metrics),
        "wall_time_s": wall,
    }


def _restore(path, task, settings, per_epoch, model, opt, sched, order_rng, run):
    """Put the run saved at ``path`` back into the freshly built objects."""
    info = read_run(path)
    if info["task"] != task.name:
        raise ValueError(f"{path!r} holds a {info['task']!r} run, not {task.name!r}")
    if info["config"] != task.config:
        diff = sorted(k for k in set(info["config"] or {}) | set(task.config)
                      if (info["config"] or {}).get(k) != task.config.get(k))
        raise ValueError(f"the task configuration differs from the run's in {diff}")
    diff = [k for k in _SETTINGS if info["settings"][k] != settings[k]]
    if diff:
        raise ValueError("a resumed run keeps its settings; these differ: " + ", ".join(
            f"{k} {settings[k]!r} (the run's: {info['settings'][k]!r})" for k in diff))
    st = load_training_state(path)
    where = f"{path!r}: training state"
    try:
        if st["batches_per_epoch"] != per_epoch:
            raise ValueError(f"the task now has {per_epoch} batches per epoch, the run had "
                             f"{st['batches_per_epoch']}")
        for name, buffers in st["optimizer"]["state"].items():
            if buffers and set(buffers) != {"exp_avg", "exp_avg_sq"}:
                raise ValueError(f"optimizer buffers of {name!r} are {sorted(buffers)}")
        model.load_state_dict(read_state_dict(path))
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["schedule"])
        set_rng_states(model, st["rng"]["modules"])
        order_rng.bit_generator.state = st["rng"]["order"]
        start = st["rng"]["order_epoch_start"]
        run.order_epoch_start = start if start is not None else st["rng"]["order"]
        step, done, batch = st["step"], st["epochs_done"], st["batch"]
        if not all(isinstance(v, int) and v >= 0 for v in (step, done, batch)) \
                or batch > per_epoch or done > settings["epochs"]:
            raise ValueError(f"position step {step}, epochs done {done}, batch {batch}")
        run.step, run.epochs_done, run.batch = step, done, batch
        stats = st["epoch_stats"]
        if set(stats) != set(run.new_stats()):
            raise ValueError("malformed epoch statistics")
        run.stats = dict(stats)
        losses = st["step_loss"]
        if losses.ndim != 1 or len(losses) != step:
            raise ValueError(f"{len(losses)} step losses for {step} steps")
        run.history["step_loss"] = [float(v) for v in losses]
        run.history["epochs"] = list(st["epochs"])
        run.metrics = dict(st["metrics"])
        run.wall = float(st["wall_time_s"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where} cannot be restored: {type(exc).__name__}: {exc}") \
            from exc
