"""The training loop: :class:`Trainer` and :func:`fit`.

One epoch is the batches of a batch source (a dataset, shuffled with the run's
generator, or a :class:`~nn_core.training.Task`); each batch is one
:meth:`Trainer.train_step`; after the epoch come the evaluation, the callbacks and,
with ``out_dir``, a checkpoint that carries the whole training state.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .. import distributed as _dist
from .._validation import check_choice, check_int, check_real
from ..checkpoint import CheckpointError, read_metadata
from ..losses import CrossEntropyLoss, MSELoss
from ..module import Module, inference_mode
from ..optim import AdamW, WarmupCosine, clip_grad_norm
from ._loop import Context, Run, restore
from . import _ranks
from ._run import CHECKPOINT, prepare_run_dir
from ._signals import StopSignals
from .callbacks import Callback
from .data import Batch, as_dataset, as_source, iterate

__all__ = ["Trainer", "History", "fit"]

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

    _STATE_KIND = "nn_core.training.Trainer/1"

    def __init__(self, model, loss=None, optimizer=None, *, schedule=None, clip=None,
                 metrics=(), callbacks=(), step_fn=None, eval_fn=None, verbose=1,
                 progress_file=None, log=None, handle_signals=True, cache_memory=True):
        if not isinstance(model, Module):
            raise TypeError(f"model must be an nn_core Module, got {type(model).__name__}")
        self.model = model
        if isinstance(loss, str):
            loss = _LOSSES[check_choice(loss, "loss", sorted(_LOSSES))](dtype=model.dtype)
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
        self.lr_scale = 1.0
        self._sched = None
        self._peak_lr = self._scheduled_lr = self.optimizer.lr
        self._signals = StopSignals(enabled=False)
        self._world = None          # the MPI world of a data-parallel fit (size > 1)
        self._dopt = None

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

    def _valid(self, target):
        ignore = getattr(self.loss, "ignore_index", None)
        return np.ones(np.shape(target), bool) if ignore is None else target != ignore

    def _correct(self, out, target):
        keep = self._valid(target)
        return int(((out.argmax(-1) == target) & keep).sum()), int(keep.sum())

    # ------------------------------------------------------------ one step
    def _loss_step(self, model, batch):
        """The default ``step_fn``: ``loss(model(*inputs), target)`` and its backward."""
        inputs, target = _split_batch(batch)
        out = model(*inputs)
        value = self.loss(out, target)
        model.backward(self.loss.backward()[0])
        stats = {"loss": float(value), "samples": len(inputs[0])}
        if getattr(self.loss, "ignore_index", None) is not None:
            stats["weight"] = int(self._valid(target).sum())   # the terms the mean is over
        if self._counts_accuracy:
            stats["correct"], stats["count"] = self._correct(out, target)
        return stats

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
            loss = float(stats["loss"])
        if self._world is not None:
            stats = self._reduce_step(stats)
            loss = stats["loss"]
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged: loss {loss} at step "
                                     f"{self.history.steps + 1}; try a smaller --lr "
                                     "(learning rate)")
        # the update: a signal waits until it is complete
        if self._world is not None:
            self._dopt.allreduce_gradients(stats.pop("_weight"), stats.pop("_total_weight"))
        if self.clip is not None:
            clip_grad_norm(self.model, self.clip)
        self.optimizer.step()
        self._advance_schedule()
        return stats

    # ------------------------------------------------------------ data parallel
    @property
    def is_root(self) -> bool:
        """Whether this process writes the run (rank 0, or not data-parallel)."""
        return self._world is None or self._world.rank == 0

    def _reduce_step(self, stats):
        return _ranks.reduce_step(self, stats)

    def _on_root(self, fn, *args, **kwargs):
        return _ranks.on_root(self, fn, *args, **kwargs)

    # ------------------------------------------------------------ learning rate
    def _start_schedule(self, total, step):
        s = self.schedule
        if s == "warmup_cosine":
            # the peak is the rate the optimizer had when the trainer was made, so that
            # a second fit warms up to it again rather than to where the first ended
            lr = self._peak_lr
            self.optimizer.lr = lr
            self._sched = WarmupCosine(self.optimizer, warmup_steps=max(1, int(0.05 * total)),
                                       total_steps=total, min_lr=lr / 20)
        elif s is not None and not hasattr(s, "step"):
            self._sched = s
            self.optimizer.lr = float(s(step))
        else:
            self._sched = s
        self._scheduled_lr = self.optimizer.lr
        self._apply_lr()

    def _advance_schedule(self):
        s = self._sched
        if s is None:
            return
        if hasattr(s, "step"):
            s.step()
            self._scheduled_lr = self.optimizer.lr
        else:
            self._scheduled_lr = float(s(self.history.steps + 1))
        self._apply_lr()

    def _apply_lr(self):
        lr = self._scheduled_lr
        self.optimizer.lr = lr if self.lr_scale == 1.0 else lr * self.lr_scale

    def scale_lr(self, factor):
        """Multiply the learning rate, now and for every later scheduled step."""
        self.lr_scale *= float(factor)
        self.optimizer.lr = self._scheduled_lr * self.lr_scale

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
                w = int(self._valid(target).sum()) if hasattr(self.loss, "ignore_index") \
                    else int(np.size(target))
                sums["loss"] += float(self.loss(out, target)) * w
                self.loss._drop_caches()
                weight += w
                b = len(inputs[0])
                n += b
                for m in self.metrics:
                    if m in ("accuracy", "acc"):
                        c, k = self._correct(out, target)
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

    # ------------------------------------------------------------ hooks of subclasses
    def _settings(self, fit_settings):
        """What the checkpoint records and a resumed run must match."""
        return fit_settings

    def _checkpoint_extra(self, run, settings):
        return {"processes": 1 if self._world is None else self._world.size,
                "metrics": run.metrics,
                "train": {**settings, "epochs_done": run.epochs_done, "step": run.step},
                "history": run.history.epochs}

    def _history_header(self):
        return {}

    def _title(self):
        return f"{type(self.model).__name__} training"

    def _announce(self, run, per_epoch, epochs, batch_size, max_steps, resumed):
        if resumed and self.verbose:
            self.log(f"resuming at step {run.step} (epoch {run.epochs_done + 1}, batch "
                     f"{run.batch}/{per_epoch})")

    def _check_resume(self, path, settings):
        """The saved run must be a Trainer run with the same settings."""
        meta = read_metadata(path)
        training = meta.get("training")
        if not isinstance(training, dict) or training.get("kind") != self._STATE_KIND:
            raise CheckpointError(f"{path!r} carries no {self._STATE_KIND} training state")
        saved = training.get("settings")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path!r}: the run's settings are malformed")
        diff = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
        if diff:
            raise ValueError("a resumed run keeps its settings; these differ: " + ", ".join(
                f"{k} {settings.get(k)!r} (the run's: {saved.get(k)!r})" for k in diff))

    # ------------------------------------------------------------ the loop
    def fit(self, train_data, val_data=None, *, epochs=None, steps=None, batch_size=32,
            shuffle=True, drop_last=False, seed=None, out_dir=None, resume=False,
            overwrite=False, max_steps=None) -> History:
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
        source = as_source(train_data, shuffle, drop_last)
        w = _dist.world() if _dist.is_initialized() else None
        self._world = w if w is not None and w.size > 1 else None
        self._dopt = None
        procs = 1 if self._world is None else self._world.size
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
        settings = self._settings({
            "epochs": epochs, "steps": total, "batch_size": batch_size,
            "shuffle": bool(shuffle), "drop_last": bool(drop_last), "clip": self.clip,
            "seed": seed if isinstance(seed, int) else None, "lr": self.optimizer.lr,
            "optimizer": _optimizer_settings(self.optimizer),
            "schedule": self.schedule if isinstance(self.schedule, str)
            else type(self.schedule).__name__,
            "callbacks": [type(c).__name__ for c in self.callbacks],
            "samples": len(source.dataset) if hasattr(source, "dataset") else None})
        resume_from = None
        if out_dir is not None:
            out_dir = os.fspath(out_dir)
            resume_from = self._on_root(prepare_run_dir, out_dir, resume=resume,
                                        overwrite=overwrite)
        order_rng = seed if isinstance(seed, np.random.Generator) \
            else np.random.default_rng(seed)
        self.history = History()
        self.history.checkpoint = os.path.join(out_dir, CHECKPOINT) if out_dir else None
        run = Run(self.history)
        self.stop_training = False
        self.lr_scale = 1.0
        self._start_schedule(total, 0)
        for cb in self.callbacks:
            cb.set_trainer(self)
        if resume_from:
            self._check_resume(resume_from, settings)
            saved = read_metadata(resume_from).get("extra", {}).get("processes", 1)
            if saved != procs:
                raise ValueError(f"the run in {out_dir!r} was trained by {saved} process(es) "
                                 f"with a batch of {batch_size} each; resume it with as many "
                                 f"(now {procs}), so that the global batch stays the same")
            restore(self, resume_from, settings, per_epoch, order_rng, run)
        if self._world is not None:
            _ranks.start(self)
        log, verbose = self.log, self.verbose
        if not self.is_root:                       # rank 0 alone prints
            self.log, self.verbose = (lambda msg: None), 0
        try:
            self._announce(run, per_epoch, epochs, batch_size, max_steps, bool(resume_from))
            ctx = Context(self, source, val_data, settings, per_epoch, epochs, total,
                          batch_size * procs, order_rng, run, out_dir, max_steps)
            return ctx.loop()
        finally:
            self.log, self.verbose = log, verbose


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
