"""The training loop: :class:`Trainer` and :func:`fit`.

One epoch is the batches of a batch source (a dataset, shuffled with the run's
generator, or a :class:`~nn_core.training.Task`); each batch is one
:meth:`Trainer.train_step`; after the epoch come the evaluation, the callbacks and,
with ``out_dir``, a checkpoint that carries the whole training state.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time

import numpy as np

from .. import _parallel
from .._progress import ProgressBar
from .._validation import check_choice, check_int, check_real
from ..checkpoint import read_metadata, save
from ..losses import CrossEntropyLoss, MSELoss
from ..memory import caching_allocator, fit_cache_to_step, release_cache
from ..module import Module, inference_mode
from ..optim import AdamW, clip_grad_norm
from . import _run
from ._run import CHECKPOINT, lock_run_dir, prepare_run_dir, write_history
from ._signals import StopSignals, TrainingInterrupted
from ._state import LearningRate, RunState, compare_settings
from ._strategy import SingleProcess, strategy
from .callbacks import Callback
from .data import Batch, as_dataset, as_source, iterate

__all__ = ["Trainer", "History", "fit", "loss_step"]

_LOSSES = {"mse": MSELoss, "cross_entropy": CrossEntropyLoss}


class History:
    """The record of a :meth:`Trainer.fit` run (live while it runs).

    Attributes
    ----------
    epochs : list of dict
        One entry per finished epoch: ``epoch``, ``step``, ``train_loss``,
        ``samples_per_s``, ``train_time_s``, ``eval_time_s``, ``lr``, the evaluation's
        metrics (``val_loss`` ...), ``train_acc`` when accuracy is counted.
    step_loss : list of float
        The training loss of every optimizer step.
    history : dict of lists
        ``{metric: [value per epoch]}``, as Keras's ``History.history``.
    status : str
        ``"finished"``, ``"early_stopped"`` (a callback stopped it) or ``"max_steps"``.
    steps : int
        Optimizer steps done in the run (a resumed run counts its earlier steps).
    metrics : dict
        The last evaluation.
    wall_time_s : float
    checkpoint : str or None
        The run folder's checkpoint.
    loss_curve : str or None
        The run folder's ``loss_curve.png``, if drawn (matplotlib installed).
    """

    def __init__(self):
        self.epochs = []
        self.step_loss = []
        self.status = None
        self.steps = 0
        self.metrics = {}
        self.wall_time_s = 0.0
        self.checkpoint = None
        self.loss_curve = None

    @property
    def history(self):
        keys = []
        for e in self.epochs:
            keys.extend(k for k in e if k not in keys)
        return {k: [e.get(k) for e in self.epochs] for k in keys}

    def __repr__(self):
        return (f"History({len(self.epochs)} epochs, {self.steps} steps, status={self.status!r}, "
                f"metrics={self.metrics})")


def _valid(loss, target):
    """The target positions the loss counts (all but its ``ignore_index``)."""
    ignore = getattr(loss, "ignore_index", None)
    return np.ones(np.shape(target), bool) if ignore is None else target != ignore


def _correct(loss, out, target):
    """``(correct, counted)`` arg-max predictions of ``out`` against ``target``."""
    keep = _valid(loss, target)
    return int(((out.argmax(-1) == target) & keep).sum()), int(keep.sum())


def loss_step(model, loss, batch, accuracy=False) -> dict:
    """Forward, loss and backward of one batch: ``loss(model(*inputs), target)``, its
    gradient into ``model.backward`` (the gradients accumulate); no update.

    Returns
    -------
    dict
        ``loss``, ``samples``; ``weight`` (the target positions counted) when the loss
        has an ``ignore_index``; ``correct`` and ``count`` with ``accuracy``.
    """
    inputs, target = _split_batch(batch)
    out = model(*inputs)
    value = loss(out, target)
    model.backward(loss.backward()[0])
    stats = {"loss": float(value), "samples": len(inputs[0])}
    if getattr(loss, "ignore_index", None) is not None:
        stats["weight"] = int(_valid(loss, target).sum())   # the terms the mean is over
    if accuracy:
        stats["correct"], stats["count"] = _correct(loss, out, target)
    return stats


def _split_batch(batch):
    """``(inputs tuple, target)`` of a :class:`Batch` or an ``(x, y)`` pair."""
    if isinstance(batch, Batch):
        return batch.inputs, batch.target
    if isinstance(batch, tuple) and len(batch) == 2:
        x, y = batch
        return (x if isinstance(x, tuple) else (x,)), y
    raise TypeError(f"a batch must be a Batch or an (inputs, target) pair, got "
                    f"{type(batch).__name__}; give the Trainer a step_fn for other batches")


def _optimizer_settings(opt):
    """The optimizer's class and scalar hyper-parameters (what a resumed run must share)."""
    out = {"class": type(opt).__name__}
    for k, v in sorted(vars(opt).items()):
        if k in ("lr", "step_count") or k.startswith("_"):
            continue
        if isinstance(v, (bool, int, float, str)) or (
                isinstance(v, tuple) and all(isinstance(x, (int, float)) for x in v)):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


class Trainer:
    """Train an nn_core :class:`~nn_core.Module`: batches, forward + loss + backward,
    gradient clipping, optimizer and schedule steps, evaluation, callbacks, progress,
    and resumable checkpoints.

    Parameters
    ----------
    model : Module
    loss : Module or {"mse", "cross_entropy"}, optional
        Called as ``loss(model(*inputs), target)``; its ``backward()[0]`` goes into
        ``model.backward``.  Its dtype must be the model's (a name is built in it).
        Not needed with ``step_fn``.
    optimizer : Optimizer, optional
        Default ``AdamW(model, lr=1e-3)``.
    schedule : None, "warmup_cosine", object with ``step()``, or callable
        The learning rate per step: ``"warmup_cosine"`` warms up linearly over 5 % of
        the run's steps, then decays to a twentieth of the optimizer's ``lr`` (its rate
        when the trainer was made; every :meth:`fit` runs the schedule anew); an object
        (such as :class:`~nn_core.optim.WarmupCosine`) has ``step()`` called after
        every update (and ``state_dict``/``load_state_dict`` for resuming); a callable
        ``schedule(step) -> lr`` sets the rate of each 0-based step.
    clip : float, optional
        Clip the global gradient norm to this (default: no clipping).
    metrics : sequence of str or callable
        Evaluated on validation data: ``"accuracy"`` (argmax of the last axis against
        integer targets, ``ignore_index`` left out), ``"mse"``, ``"mae"``, or functions
        ``f(output, target) -> float`` (averaged over batches by sample count).
        ``"accuracy"`` is also counted on the training batches (``train_acc``).
    callbacks : sequence of Callback
        See :mod:`nn_core.training.callbacks`.
    step_fn : callable, optional
        ``step_fn(model, batch) -> {"loss", "samples", ["correct", "count", "weight"]}``:
        forward, loss and backward of one batch (gradients accumulate in ``model``), for
        batches the default step does not understand.  ``weight`` is the number of
        terms the loss averaged over (default ``samples``; see Data parallel).
    eval_fn : callable, optional
        ``eval_fn(model) -> dict`` of validation metrics (``model`` in eval mode),
        instead of evaluating ``val_data``.
    verbose : {0, 1}
        1: a progress line per epoch (on ``progress_file``, default ``sys.stderr``).
    log : callable, optional
        Receives messages (default ``print``), such as "resuming at step ...".
    handle_signals : bool
        Ctrl-C/SIGTERM stop training in order (main thread only): the optimizer
        update in progress completes, a forward/backward or evaluation is abandoned, a
        run folder gets a checkpoint, and :class:`TrainingInterrupted` is raised.

    cache_memory : bool
        Run :meth:`fit` inside :func:`nn_core.memory.caching_allocator` (default), so
        that a step reuses the previous step's memory instead of faulting in fresh
        pages; the cache is released when :meth:`fit` returns.

    Data parallel
    -------------
    After :func:`nn_core.distributed.init` in a job of several processes
    (``mpiexec -n N python script.py``), :meth:`fit` trains data-parallel: every rank
    builds the same model and draws the same global batches of ``N * batch_size``
    rows, trains on its shard (:func:`~nn_core.distributed.shard`), and the gradients
    are summed in one all-reduce per step, weighted by each rank's number of loss
    terms, so the update is the one a single process would make on the global batch.
    Rank 0's parameters are copied to the others first; the other ranks' generators
    (dropout) get streams of their own.  Every rank evaluates (the same numbers), runs
    the callbacks and stops at the same step; only rank 0 prints, writes the run
    folder and checkpoints.  A signal on any rank stops all of them after the step in
    progress.  A run resumes with as many processes as it was trained by; its other
    ranks' dropout streams are derived again, so only a run without dropout resumes bit
    for bit.

    Attributes
    ----------
    history : History
        Of the current or last :meth:`fit`.
    stop_training : bool
        Set by callbacks to end the run after the current epoch.
    lr_scale : float
        A factor on every scheduled learning rate (:class:`ReduceLROnPlateau`).

    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.layers import Linear
    >>> from nn_core.optim import AdamW
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((256, 4))
    >>> y = x @ rng.standard_normal((4, 2))
    >>> model = Linear(4, 2, dtype=np.float64, rng=0)
    >>> trainer = Trainer(model, "mse", AdamW(model, lr=0.1), verbose=0)
    >>> history = trainer.fit((x[:200], y[:200]), (x[200:], y[200:]), epochs=20,
    ...                       batch_size=32, seed=0)
    >>> history.status, len(history.epochs), history.metrics["val_loss"] < 1e-3
    ('finished', 20, True)
    """

    def __init__(self, model, loss=None, optimizer=None, *, schedule=None, clip=None,
                 metrics=(), callbacks=(), step_fn=None, eval_fn=None, verbose=1,
                 progress_file=None, log=None, handle_signals=True, cache_memory=True):
        if not isinstance(model, Module):
            raise TypeError(f"model must be an nn_core Module, got {type(model).__name__}")
        self.model = model
        if isinstance(loss, str):
            loss = _LOSSES[check_choice(loss, "loss", sorted(_LOSSES))](dtype=model.dtype)
        if loss is not None and not (callable(loss) and hasattr(loss, "backward")):
            raise TypeError(f"loss must be a loss Module (called, then backward()) or one of "
                            f"{sorted(_LOSSES)}, got {type(loss).__name__}")
        if loss is not None and getattr(loss, "dtype", model.dtype) != model.dtype:
            raise ValueError(f"the loss computes in {np.dtype(loss.dtype).name} but the model "
                             f"in {np.dtype(model.dtype).name}; build the loss with "
                             f"dtype={np.dtype(model.dtype).name}")
        if loss is None and step_fn is None:
            raise ValueError("give a loss (a Module, 'mse' or 'cross_entropy') or a step_fn")
        self.loss = loss
        self.optimizer = optimizer if optimizer is not None else AdamW(model, lr=1e-3)
        if not (schedule is None or schedule == "warmup_cosine" or callable(schedule)
                or hasattr(schedule, "step")):
            raise ValueError(f"schedule must be None, 'warmup_cosine', an object with step() "
                             f"or a function of the step, got {schedule!r}")
        self.schedule = schedule
        self.clip = None if clip is None else check_real(clip, "clip", 0.0, lo_open=True)
        self.metrics = self._check_metrics(metrics)
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
        self.step_fn = step_fn if step_fn is not None else self._loss_step
        self.eval_fn = eval_fn
        self.verbose = int(verbose)
        self.progress_file = progress_file
        self.log = log or (lambda msg: print(msg, flush=True))
        self.handle_signals = bool(handle_signals)
        self.cache_memory = bool(cache_memory)
        self.history = History()
        self.stop_training = False
        self._lr = LearningRate(self.optimizer, schedule)
        self._signals = StopSignals(enabled=False)
        self.strategy = SingleProcess()

    # ------------------------------------------------------------ metrics
    @staticmethod
    def _check_metrics(metrics):
        out = []
        for m in metrics:
            if isinstance(m, str) and m not in ("accuracy", "acc", "mse", "mae"):
                raise ValueError(f"unknown metric {m!r}; use 'accuracy', 'mse', 'mae' or a "
                                 "function f(output, target)")
            if not (isinstance(m, str) or callable(m)):
                raise TypeError(f"a metric must be a name or a function, got {m!r}")
            out.append(m)
        return out

    @property
    def _counts_accuracy(self):
        return any(m in ("accuracy", "acc") for m in self.metrics)

    # ------------------------------------------------------------ one step
    def _loss_step(self, model, batch):
        """The default ``step_fn``: :func:`loss_step` with the trainer's loss."""
        return loss_step(model, self.loss, batch, self._counts_accuracy)

    def train_step(self, batch) -> dict:
        """One optimizer step on ``batch``: zero the gradients, forward + loss + backward
        (``step_fn``), check the loss, clip, update, advance the schedule.

        This is the only place a training step runs.  A signal during the forward or
        backward abandons the step (``KeyboardInterrupt``); one during the update waits
        for it to complete.

        Returns
        -------
        dict
            The step's ``loss``, ``samples`` (and ``correct``/``count`` if counted).

        Raises
        ------
        FloatingPointError
            The loss is not finite (nothing was updated).
        """
        with self._signals.abandonable():
            self.optimizer.zero_grad()
            stats = self.step_fn(self.model, batch)
        stats, weight, total_weight = self.strategy.reduce_step(stats, self._signals)
        loss = float(stats["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged: loss {loss} at step "
                                     f"{self.history.steps + 1}; try a smaller learning rate")
        # the update: a signal waits until it is complete
        self.strategy.allreduce_gradients(weight, total_weight)
        if self.clip is not None:
            clip_grad_norm(self.model, self.clip)
        self.optimizer.step()
        self._lr.advance(self.history.steps + 1)
        return stats

    # ------------------------------------------------------------ data parallel
    @property
    def is_root(self) -> bool:
        """Whether this process writes the run (rank 0, or not data-parallel)."""
        return self.strategy.is_root

    # ------------------------------------------------------------ learning rate
    @property
    def lr_scale(self) -> float:
        """The factor on every scheduled learning rate (see :meth:`scale_lr`)."""
        return self._lr.scale

    def scale_lr(self, factor):
        """Multiply the learning rate, now and for every later scheduled step."""
        self._lr.multiply(factor)

    # ------------------------------------------------------------ evaluation
    @inference_mode()
    def evaluate(self, data, batch_size=256) -> dict:
        """The loss and metrics over ``data`` (anything :meth:`fit` takes as data), in
        eval mode: ``{"loss": ..., "<metric>": ...}`` (exact means over the target
        elements; ``accuracy`` leaves ``ignore_index`` out)."""
        if self.loss is None:
            raise ValueError("evaluate needs a loss; this trainer has only a step_fn")
        was_training = self.model.training
        self.model.eval()
        sums = {"loss": 0.0}
        weight = n = correct = count = 0
        custom = {}
        try:
            for batch in iterate(data, batch_size):
                inputs, target = _split_batch(batch)
                out = self.model(*inputs)
                w = int(_valid(self.loss, target).sum()) if hasattr(self.loss, "ignore_index") \
                    else int(np.size(target))
                sums["loss"] += float(self.loss(out, target)) * w
                self.loss.clear_pending()
                weight += w
                b = len(inputs[0])
                n += b
                for m in self.metrics:
                    if m in ("accuracy", "acc"):
                        c, k = _correct(self.loss, out, target)
                        correct, count = correct + c, count + k
                    elif m in ("mse", "mae"):
                        d = np.asarray(out, np.float64) - np.asarray(target, np.float64)
                        sums[m] = sums.get(m, 0.0) + float((d * d if m == "mse"
                                                            else np.abs(d)).sum())
                    else:
                        name = getattr(m, "__name__", "metric")
                        custom[name] = custom.get(name, 0.0) + float(m(out, target)) * b
        finally:
            self.model.train(was_training)
        result = {"loss": sums["loss"] / max(weight, 1)}
        for m in self.metrics:
            if m in ("accuracy", "acc"):
                result[m] = correct / max(count, 1)
            elif m in ("mse", "mae"):
                result[m] = sums[m] / max(weight, 1)
        result.update({k: v / max(n, 1) for k, v in custom.items()})
        return result

    @inference_mode()
    def predict(self, data, batch_size=256):
        """``model(*inputs)`` over ``data`` in eval mode, batch by batch, concatenated
        along the first axis (targets, if any, are ignored)."""
        was_training = self.model.training
        self.model.eval()
        try:
            outs = [self.model(*_split_batch(b)[0]) for b in iterate(data, batch_size)]
        finally:
            self.model.train(was_training)
        if len({o.shape[1:] for o in outs}) > 1:
            raise ValueError("the batches' outputs differ in shape beyond the first axis "
                             f"({sorted({o.shape[1:] for o in outs})}); predict per batch")
        return np.concatenate(outs, axis=0)

    # ------------------------------------------------------------ fit
    def fit(self, train_data, val_data=None, *, epochs=None, steps=None, batch_size=32,
            shuffle=True, drop_last=False, bucket_by_length=False, seed=None, out_dir=None,
            resume=False, overwrite=False, max_steps=None, settings=None, record=None,
            header=None, title=None) -> History:
        """Train for ``epochs`` (or ``steps`` optimizer steps); returns the :class:`History`.

        Parameters
        ----------
        train_data : (x, y), array, dataset or batch source
            ``(x, y)`` arrays (``x`` may be a tuple of arrays, the model's arguments)
            or a list of variable-length sequences and their targets (batched as
            ``model(padded, lengths)``); an ``ArrayDataset``/``SequenceDataset``; or any
            object with ``num_batches(batch_size)`` and ``train_batches(rng,
            batch_size)`` (such as a :class:`~nn_core.training.Task`).
        val_data : like ``train_data`` (not a batch source), optional
            Evaluated after every epoch (:meth:`evaluate`), its metrics prefixed
            ``val_``; ignored with ``eval_fn``.
        epochs, steps : int
            Exactly one: the number of passes over the data, or of optimizer steps (the
            last epoch is then cut short).
        batch_size : int
        shuffle, drop_last : bool
            For datasets: a new order every epoch; leave out a last, smaller batch.
        bucket_by_length : bool
            For datasets of variable-length sequences (``lengths``): batches of samples
            of similar length, the batches in a new order every epoch (recurrent sweeps
            then carry little padding).  Drawn from the batch order's generator, so a
            resumed run draws the same batches.
        seed : None, int or numpy.random.Generator
            The batch order's generator (``None``: fresh entropy).
        out_dir : str, optional
            A run folder: ``model.npz`` with the training state after every epoch and
            whenever training stops, ``history.json``/``history.csv`` after every
            epoch (all atomic), ``loss_curve.png`` when matplotlib is installed.  A
            folder holding a run is refused unless ``resume`` or ``overwrite``.
        resume : bool
            Continue the run in ``out_dir`` (same settings, model and optimizer
            configuration): it ends with the weights, bit for bit, of a run that was
            never interrupted.
        overwrite : bool
            Delete the run files in ``out_dir`` first.
        max_steps : int, optional
            Stop after this many steps in total with a resumable checkpoint (the
            schedule still spans the whole run).
        settings : dict, optional
            More settings to record (JSON values), which a resumed run must match, such
            as those of :func:`~nn_core.training.train`.
        record : dict, optional
            What the run is of (JSON values, such as a task's name and configuration):
            saved in the checkpoint's ``extra`` and at the head of ``history.json``; a
            resumed run must match it.
        header : str, optional
            A line logged before training (followed by where a resumed run resumes).
        title : str, optional
            The loss curve's title.

        Raises
        ------
        TrainingInterrupted
            On SIGINT/SIGTERM, after saving (a ``KeyboardInterrupt``).
        RunExistsError, NotADirectoryError, FileNotFoundError
            ``out_dir`` problems.
        ValueError
            Invalid settings, or a resumed run that differs.
        CheckpointError
            The checkpoint to resume is unreadable or carries no training state.
        FloatingPointError
            A training loss is not finite.
        """
        if (epochs is None) == (steps is None):
            raise ValueError(f"give exactly one of epochs and steps, got epochs={epochs!r}, "
                             f"steps={steps!r}")
        batch_size = check_int(batch_size, "batch_size", 1)
        if max_steps is not None:
            check_int(max_steps, "max_steps", 1)
        if resume and out_dir is None:
            raise ValueError("resume needs the out_dir of the run")
        source = as_source(train_data, shuffle, drop_last, bucket_by_length)
        self.strategy = strategy()
        procs = self.strategy.size
        # data parallel: every rank draws the same global batch and trains on its shard
        per_epoch = source.num_batches(batch_size * procs)
        if steps is not None:
            total = check_int(steps, "steps", 1)
            epochs = math.ceil(total / per_epoch)
        else:
            epochs = check_int(epochs, "epochs", 1)
            total = epochs * per_epoch
        if val_data is not None and self.eval_fn is None:
            val_data = as_dataset(val_data)
        run_settings = {
            "epochs": epochs, "steps": total, "batch_size": batch_size,
            "shuffle": bool(shuffle), "drop_last": bool(drop_last),
            "bucket_by_length": bool(bucket_by_length), "clip": self.clip,
            "seed": seed if isinstance(seed, int) else None, "lr": self.optimizer.lr,
            "optimizer": _optimizer_settings(self.optimizer),
            "schedule": self.schedule if isinstance(self.schedule, str)
            else type(self.schedule).__name__,
            "callbacks": [type(c).__name__ for c in self.callbacks],
            "samples": len(source.dataset) if hasattr(source, "dataset") else None,
            **(settings or {})}
        held = []                                # the run folder's lock, on rank 0

        def lock_and_prepare():
            held.append(lock_run_dir(out_dir, resume=resume, overwrite=overwrite))
            return prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)

        try:
            resume_from = None
            if out_dir is not None:
                out_dir = os.fspath(out_dir)
                resume_from = self.strategy.on_root(lock_and_prepare)
            order_rng = seed if isinstance(seed, np.random.Generator) \
                else np.random.default_rng(seed)
            self.history = History()
            self.history.checkpoint = os.path.join(out_dir, CHECKPOINT) if out_dir else None
            self.stop_training = False
            self._lr.start(total)
            run = RunState(settings=run_settings, per_epoch=per_epoch, epochs=epochs,
                           model=self.model, optimizer=self.optimizer, lr=self._lr,
                           callbacks=self.callbacks, order_rng=order_rng, history=self.history)
            for cb in self.callbacks:
                cb.set_trainer(self)
            record = dict(record or {})
            if resume_from:
                extra = read_metadata(resume_from).get("extra") or {}
                saved = extra.get("processes", 1)
                if saved != procs:
                    raise ValueError(f"the run in {out_dir!r} was trained by {saved} "
                                     f"process(es) with a batch of {batch_size} each; resume "
                                     f"it with as many (now {procs}), so that the global "
                                     "batch stays the same")
                run.check_resumable(resume_from)
                compare_settings({k: extra.get(k) for k in record}, record,
                                 "the task configuration differs from the run's")
                run.restore(resume_from)
            self.strategy.start(self.model, self.optimizer)
            log, verbose = self.log, self.verbose
            if not self.is_root:                       # rank 0 alone prints
                self.log, self.verbose = (lambda msg: None), 0
            try:
                where = f"resuming at {run.where}" if resume_from else ""
                if header is not None:
                    self.log(header + (f"; {where}" if where else ""))
                elif where and self.verbose:
                    self.log(where)
                loop = _Loop(self, run, source, val_data, total, batch_size * procs, out_dir,
                             max_steps, record, title or f"{type(self.model).__name__} training")
                return loop.train()
            finally:
                self.log, self.verbose = log, verbose
        finally:
            for lock in held:
                lock.release()


class _Loop:
    """One :meth:`Trainer.fit` call's epochs, and what they write into the run folder."""

    def __init__(self, trainer, run, source, val_data, total, batch_size, out_dir,
                 max_steps, record, title):
        self.t, self.run, self.source, self.val_data = trainer, run, source, val_data
        self.total, self.batch_size, self.out_dir = total, batch_size, out_dir
        self.max_steps, self.record, self.title = max_steps, record, title
        self.ckpt = trainer.history.checkpoint
        self.last_state = None

    # ------------------------------------------------------------ pieces
    def evaluate(self):
        t = self.t
        if t.eval_fn is not None:
            return dict(t.eval_fn(t.model))
        if self.val_data is None:
            return {}
        return {f"val_{k}": v for k, v in t.evaluate(self.val_data, self.batch_size).items()}

    def history_dict(self, training_state):
        run = self.run
        return {**self.record, "step_loss": run.history.step_loss,
                "epochs": run.history.epochs, "step": run.step,
                "epochs_done": run.epochs_done, "finished": bool(training_state["finished"]),
                "wall_time_s": training_state["wall_time_s"]}

    def checkpoint(self, training_state):
        """Save the model with ``training_state``, and the history (rank 0)."""
        if self.out_dir is None:
            return
        self.last_state = training_state
        if not self.t.is_root:
            return
        run = self.run
        extra = {**self.record, "processes": self.t.strategy.size, "metrics": run.metrics,
                 "train": {**run.settings, "epochs_done": run.epochs_done, "step": run.step},
                 "history": run.history.epochs}
        save(self.t.model, self.ckpt, extra=extra, training_state=training_state)
        write_history(self.out_dir, self.history_dict(training_state))

    def plot(self, signals):
        """The loss curve, or ``None`` (no run folder, no matplotlib, or abandoned)."""
        if self.out_dir is None or not self.t.is_root:
            return None
        task = self.source               # a Task may name its metric and add lines
        levels = getattr(task, "plot_levels", lambda m: {})(self.run.metrics or {})
        try:
            with signals.abandonable():
                path = _run.plot_history(
                    self.history_dict({"finished": False, "wall_time_s": 0.0}),
                    os.path.join(self.out_dir, "loss_curve.png"), title=self.title,
                    metric=getattr(task, "plot_metric", None), levels=levels)
                if path is not None and hasattr(task, "plot"):
                    task.plot(self.t.model, self.out_dir)
                return path
        except KeyboardInterrupt:
            return None

    def epoch_batches(self):
        """The rest of the current epoch's batches (this rank's shard of each).
        Resumed mid-epoch, the epoch's order is drawn again from its starting state and
        the batches already trained are skipped (the order generator then is where the
        interrupted run left it)."""
        run, rng = self.run, self.run.order_rng
        if not 0 < run.batch < run.per_epoch:
            return self.t.strategy.shard(self.source.train_batches(rng, self.batch_size))
        now = rng.bit_generator.state
        rng.bit_generator.state = run.order_epoch_start
        batches = self.source.train_batches(rng, self.batch_size)
        for _ in range(run.batch):
            next(batches)
        if rng.bit_generator.state != now:
            raise RuntimeError(f"{type(self.source).__name__}.train_batches did not replay "
                               "the same batch order; batches must depend only on the "
                               "generator it gets")
        return self.t.strategy.shard(batches)

    # ------------------------------------------------------------ the loop
    def train(self):
        """Run the epochs; the model ends in the mode (train or eval) it started in."""
        model = self.t.model
        was_training = model.training
        cache = self.t.cache_memory
        # with several threads the team owns the cores: BLAS runs one thread throughout
        hold = _parallel.hold_blas() if _parallel.blas_threads() > 1 else contextlib.nullcontext()
        try:
            with caching_allocator() if cache else contextlib.nullcontext(), hold:
                return self._epochs()
        finally:
            model.train(was_training)
            if cache:
                release_cache()                 # the memory of the last steps goes back

    def _reached_max_steps(self):
        return self.max_steps is not None and self.run.step >= self.max_steps

    def _epochs(self):
        t, run = self.t, self.run
        model = t.model
        with StopSignals(t.handle_signals, deferred=t.strategy.size > 1) as signals:
            t._signals = signals
            t0 = time.perf_counter()
            wall = lambda: run.wall + time.perf_counter() - t0  # noqa: E731
            status, saved, bar, before, t_epoch = "finished", False, None, None, None
            try:
                for cb in t.callbacks:
                    cb.on_train_begin({})
                while run.epochs_done < run.epochs and not run.stopped:
                    epoch = run.epochs_done + 1
                    run.begin_epoch()
                    if run.batch < run.per_epoch and self._reached_max_steps():
                        status = "max_steps"
                        break
                    if signals.requested:
                        raise KeyboardInterrupt
                    model.train()
                    for cb in t.callbacks:
                        cb.on_epoch_begin(epoch, {})
                    last = self.total if self.max_steps is None else min(self.total,
                                                                         self.max_steps)
                    bar = ProgressBar(run.per_epoch, f"epoch {epoch}/{run.epochs}",
                                      file=t.progress_file, start=run.batch,
                                      run_left=last - run.step) if t.verbose else None
                    batches = self.epoch_batches()
                    t_epoch = time.perf_counter()
                    while run.batch < run.per_epoch and run.step < self.total:
                        if self._reached_max_steps():
                            status = "max_steps"
                            break
                        if signals.requested:
                            raise KeyboardInterrupt
                        before = run.generators()
                        with signals.abandonable():
                            batch = next(batches)
                        stats = t.train_step(batch)
                        if t.cache_memory:
                            fit_cache_to_step()
                        run.record(stats)
                        if bar is not None:
                            bar.update(1, samples=stats["samples"], **run.running())
                        before = None
                        for cb in t.callbacks:
                            cb.on_batch_end(run.step, {"loss": run.history.step_loss[-1],
                                                       "samples": stats["samples"]})
                    run.stats["train_time_s"] += time.perf_counter() - t_epoch
                    t_epoch = None
                    if status == "max_steps":
                        break
                    # the epoch's batches are done: evaluate (abandonable), then checkpoint
                    before = run.generators()
                    model.eval()
                    t_eval = time.perf_counter()
                    with signals.abandonable():
                        metrics = self.evaluate()
                    before = None
                    entry = run.end_epoch(metrics, time.perf_counter() - t_eval)
                    if bar is not None:
                        bar.close(**{k: v for k, v in metrics.items() if isinstance(v, float)})
                    bar = None
                    for cb in t.callbacks:
                        cb.on_epoch_end(epoch, entry)
                    run.stopped = run.stopped or t.stop_training
                    self.checkpoint(run.state_dict(wall()))
                    saved = True
                if status == "max_steps" and (run.batch or not saved):
                    # stopped mid-epoch: the state is taken before evaluating for the report
                    stopped = run.state_dict(wall())
                    before = (stopped["rng"]["modules"], stopped["rng"]["order"])
                    model.eval()
                    with signals.abandonable():
                        run.metrics = self.evaluate()
                    before = None
                    self.checkpoint(stopped)
            except KeyboardInterrupt:
                if t_epoch is not None:
                    run.stats["train_time_s"] += time.perf_counter() - t_epoch
                if bar is not None and bar.tty:
                    bar.file.write("\n")
                model.clear_pending()
                self.checkpoint(run.state_dict(wall(), before))
                signum, signals.requested = signals.requested or signal.SIGINT, None
                self.plot(signals)                      # a second signal skips the plot
                t.strategy.barrier()        # every rank stopped here: leave once rank 0 saved
                raise TrainingInterrupted(
                    f"interrupted at {run.where}; " + (f"checkpoint saved to {self.ckpt}"
                                                       if self.ckpt
                                                       else "nothing saved (no out_dir)"),
                    self.ckpt, run.step, run.epochs_done + 1, signum) from None
            finally:
                t._signals = StopSignals(enabled=False)
            h = run.history
            h.wall_time_s = wall()
            h.status = "early_stopped" if run.stopped and status == "finished" else status
            h.metrics = run.metrics
            h.steps = run.step
            h.loss_curve = self.plot(signals)
        for cb in t.callbacks:
            cb.on_train_end(dict(run.metrics))
        if t.callbacks and self.last_state is not None and h.status != "max_steps":
            # callbacks may have changed the weights (restore_best_weights)
            self.checkpoint(self.last_state)
        return h


def fit(model, loss, optimizer, train_data, val_data=None, **kwargs) -> History:
    """``Trainer(model, loss, optimizer, ...).fit(train_data, val_data, ...)``: the
    keyword arguments go to whichever of the two takes them.

    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.layers import Linear
    >>> from nn_core.optim import SGD
    >>> x = np.linspace(-1, 1, 64)[:, None]
    >>> model = Linear(1, 1, dtype=np.float64, rng=0)
    >>> h = fit(model, "mse", SGD(model, lr=0.5), (x, 3 * x + 1), epochs=30, batch_size=16,
    ...         seed=0, verbose=0)
    >>> round(model.params["W"].item(), 3), round(model.params["b"].item(), 3)
    (3.0, 1.0)
    """
    trainer_keys = {"schedule", "clip", "metrics", "callbacks", "step_fn", "eval_fn",
                    "verbose", "progress_file", "log", "handle_signals", "cache_memory"}
    t_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in trainer_keys}
    return Trainer(model, loss, optimizer, **t_kw).fit(train_data, val_data, **kwargs)
