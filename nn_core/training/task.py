"""The :class:`Task` interface and :func:`train`, which runs a task on a
:class:`~nn_core.training.Trainer` the way ``nn-core train`` does: AdamW with
warmup/cosine, gradient clipping, a run folder, and the task's own header and summary.
"""
from __future__ import annotations

import os

import numpy as np

from .. import distributed as _dist
from .._validation import check_choice, check_int, check_real
from ..checkpoint import CheckpointError, read_metadata
from ..optim import AdamW, WarmupCosine
from ._run import CHECKPOINT, order_generator
from ._state import KIND
from .data import shuffled_batches
from .trainer import Trainer

__all__ = ["Task", "train", "read_run"]


class Task:
    """What :func:`train` needs from a task: a model, a batch source, a loss and the
    metrics; :func:`train` hands them to a :class:`Trainer` with AdamW, a warmup/cosine
    schedule and gradient clipping.

    * the batch source: :attr:`train_set` (a dataset such as
      :class:`~nn_core.training.ArrayDataset`, drawn in a new order every epoch, last
      smaller batch left out), or :meth:`num_batches` and :meth:`train_batches` of
      one's own;
    * the step: :meth:`loss` (``loss(model(*batch.inputs), batch.target)`` and its
      backward, :meth:`Trainer.train_step`), or a :attr:`train_step` of one's own;
    * :attr:`metrics`: what the trainer counts on the training batches
      (``"accuracy"``: shown by the progress bar, ``train_acc`` in the history);
    * :meth:`evaluate`: the validation metrics.

    The ``nn-core`` command's tasks (:mod:`nn_core.tasks`) are subclasses; what they
    add for the command line lives there.

    Parameters
    ----------
    config : dict
        JSON-serialisable (model sizes, data options, seed).  :func:`train` stores it
        in the checkpoint, so that the task, and its data, can be rebuilt from it.
    """

    name = ""
    #: the metric printed in the summary, and whether larger is better
    headline = ("val_loss", False)
    #: the validation metric drawn on the loss curve (in the training loss's units)
    plot_metric = "val_loss"
    #: metrics the trainer counts on the training batches (``"accuracy"``)
    metrics: tuple = ()
    #: the training samples (a dataset with ``batch(idx)`` and ``len``), or ``None``
    #: for a task with its own :meth:`train_batches`
    train_set = None
    #: ``train_step(model, batch) -> stats``: a step of one's own, instead of
    #: :meth:`loss` (see ``step_fn`` of :class:`Trainer`)
    train_step = None

    def __init__(self, config):
        self.config = dict(config)

    def describe_data(self) -> str:
        """One line about the data, printed once they are ready."""
        return "generated"

    def build_model(self, dtype, rng):  # pragma: no cover - interface
        """A new model with weights drawn from ``rng`` (a ``numpy.random.Generator``)."""
        raise NotImplementedError

    def num_batches(self, batch_size) -> int:
        """Batches per epoch: full batches of :attr:`train_set` (at least one)."""
        return max(1, len(self.train_set) // batch_size)

    def train_batches(self, rng, batch_size):
        """Yield the batches of one epoch, in an order drawn from ``rng`` only."""
        return shuffled_batches(self.train_set, rng, batch_size, self.num_batches(batch_size))

    def loss(self, dtype):
        """The loss module of the training step (built in ``dtype``); a task with its
        own :attr:`train_step` needs none."""
        raise NotImplementedError(f"{type(self).__name__} defines neither loss() nor "
                                  "train_step")

    def evaluate(self, model) -> dict:  # pragma: no cover - interface
        """Validation metrics (``model`` is in eval mode)."""
        raise NotImplementedError

    def plot_levels(self, metrics) -> dict:
        """Horizontal lines of the loss curve, ``{label: value}`` in the units of
        :attr:`plot_metric` (a baseline's error), from the last ``metrics``."""
        return {}

    def plot(self, model, out_dir) -> list:
        """Figures of the task's own written into ``out_dir`` at the end of training
        (matplotlib installed); returns their paths."""
        return []

    def describe_metrics(self, metrics) -> str:
        """One line summarising ``metrics`` (printed at the end of training and by eval)."""
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in metrics.items())


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
            or training.get("kind") != KIND:
        raise CheckpointError(f"{path!r} was not written by nn_core.training.train with a "
                              "training state (an older or a plain checkpoint cannot resume)")
    settings = training.get("settings")
    step, done = training.get("step"), training.get("epochs_done")
    try:
        if not isinstance(settings, dict) or not set(_SETTINGS) <= set(settings):
            raise ValueError(f"keys {sorted(settings) if isinstance(settings, dict) else '-'}")
        settings = {k: settings[k] for k in _SETTINGS}
        if _check_settings(**settings, max_steps=None) != settings:
            raise ValueError("values of the wrong type")
        check_int(step, "step", 0)
        check_int(done, "epochs_done", 0)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path!r}: the run's settings are malformed: {exc}") from None
    return {"task": extra["task"], "config": extra.get("config"), "settings": settings,
            "step": step, "epochs_done": done, "finished": bool(training.get("finished"))}


_SETTINGS = ("epochs", "batch_size", "lr", "dtype", "seed", "weight_decay", "clip",
             "warmup_frac")


def _check_settings(epochs, batch_size, lr, dtype, seed, weight_decay, clip, warmup_frac,
                    max_steps):
    if max_steps is not None:
        check_int(max_steps, "max_steps", 1)
    return {"epochs": check_int(epochs, "epochs", 1),
            "batch_size": check_int(batch_size, "batch_size", 1),
            "lr": check_real(lr, "lr", 0.0, lo_open=True),
            "dtype": check_choice(np.dtype(dtype).name, "dtype", ("float32", "float64")),
            "seed": check_int(seed, "seed", 0),
            "weight_decay": check_real(weight_decay, "weight_decay", 0.0),
            "clip": check_real(clip, "clip", 0.0, lo_open=True),
            "warmup_frac": check_real(warmup_frac, "warmup_frac", 0.0, 1.0)}


def train(task, *, epochs, batch_size, lr, dtype=np.float32, seed=0, out_dir="runs",
          weight_decay=0.01, clip=1.0, warmup_frac=0.05, log=None, progress_file=None,
          max_steps=None, resume=False, overwrite=False, handle_signals=True, title=None):
    """Train ``task``'s model on a :class:`Trainer`.

    Every epoch: the task's batches (order drawn from ``seed``), each one
    ``zero_grad`` -> :meth:`Task.train_step` -> global-norm clip -> AdamW step ->
    schedule step (:meth:`Trainer.train_step`); then :meth:`Task.evaluate` in eval
    mode, a checkpoint with the training state, and the history.

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
        ``history.json`` and ``history.csv`` (after every epoch), ``loss_curve.png``
        and the task's figures (:meth:`Task.plot`) when matplotlib is installed.  If it already holds a run, ``resume`` or
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
    title : str, optional
        Names the run in the header line and on the loss curve (default: the task's
        name).

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
    rng = np.random.default_rng(seed)
    dtype = np.dtype(settings["dtype"]).type
    model = task.build_model(dtype, rng)
    order_rng = order_generator(rng)
    procs = _dist.size() if _dist.is_initialized() else 1
    per_epoch = task.num_batches(batch_size * procs)      # global batches (data parallel)
    total = epochs * per_epoch
    opt = AdamW(model, lr=lr, weight_decay=weight_decay)
    sched = WarmupCosine(opt, warmup_steps=max(1, int(warmup_frac * total)),
                         total_steps=total, min_lr=lr / 20)
    trainer = Trainer(model, None if task.train_step is not None else task.loss(dtype), opt,
                      schedule=sched, clip=settings["clip"], metrics=task.metrics,
                      step_fn=task.train_step, eval_fn=task.evaluate, verbose=1,
                      progress_file=progress_file, log=log, handle_signals=handle_signals)
    title = title or task.name
    header = (f"{title}: {type(model).__name__} with "
              f"{model.num_parameters():,} parameters ({settings['dtype']}), {epochs} epochs "
              f"x {per_epoch} batches of {batch_size}"
              + (f" per process x {procs} processes = {batch_size * procs}" if procs > 1
                 else "")
              + f", AdamW lr {lr:g}"
              + (f", stopping after step {max_steps}" if max_steps is not None
                 and max_steps < total else ""))
    h = trainer.fit(task, epochs=epochs, batch_size=batch_size, seed=order_rng,
                    out_dir=out_dir, resume=resume, overwrite=overwrite, max_steps=max_steps,
                    settings=settings, record={"task": task.name, "config": task.config},
                    header=header, title=title)
    metrics = h.metrics
    if h.status == "max_steps":
        batch = h.steps - (h.epochs[-1]["step"] if h.epochs else 0)
        log(f"stopped after {h.steps} steps (max_steps) in epoch {len(h.epochs) + 1} at "
            f"batch {batch}/{per_epoch}: {task.describe_metrics(metrics)}")
    else:
        log(f"done in {h.wall_time_s:.1f}s ({h.steps} steps): {task.describe_metrics(metrics)}")
    log(f"checkpoint: {h.checkpoint}")
    if h.loss_curve:
        log(f"loss curve: {h.loss_curve}")
    else:
        log("loss curve: not plotted (matplotlib is not installed; `pip install matplotlib`). "
            f"Per-step losses are in {os.path.join(out_dir, 'history.json')}")
    history = {"task": task.name, "step_loss": h.step_loss, "epochs": h.epochs,
               "wall_time_s": h.wall_time_s}
    return model, {"metrics": metrics, "wall_time_s": h.wall_time_s, "steps": h.steps,
                   "history": history, "checkpoint": h.checkpoint,
                   "headline": metrics.get(task.headline[0]), "status": h.status}
