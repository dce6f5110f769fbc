"""Callbacks of :class:`~nn_core.training.Trainer`, after Keras's (``keras.callbacks``).

A callback sees the trainer (``self.trainer``: its ``model``, ``optimizer``,
``stop_training`` flag, ``lr_scale``) and the per-epoch ``logs`` (the history entry:
``epoch``, ``step``, ``train_loss``, ``lr``, the validation metrics such as
``val_loss``).  Its :meth:`Callback.state_dict` goes into every checkpoint of a run
folder, so a resumed run continues its patience counters and best values exactly.

* :class:`EarlyStopping` -- stop when a metric stops improving (optionally restoring the
  best weights);
* :class:`ModelCheckpoint` -- save the model (every epoch, or only when it is the best so
  far) with :func:`nn_core.save`;
* :class:`ReduceLROnPlateau` -- scale the learning rate down when a metric plateaus
  (on top of any schedule);
* :class:`CSVLogger`, :class:`JSONLogger` -- the per-epoch table, rewritten atomically
  after every epoch;
* :class:`LambdaCallback` -- plain functions as callbacks.

In data-parallel training every rank runs the callbacks (so they decide alike) and
only rank 0 writes files (``self.trainer.is_root``).

A metric named ``"loss"`` means ``"train_loss"``.  ``mode="auto"`` maximises metrics
whose name contains ``acc``, ``match``, ``score``, ``skill``, ``r2`` or ``auc`` and
minimises the others.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from .._validation import check_int, check_real
from ..checkpoint import atomic_write, save
from ._run import write_csv

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau", "CSVLogger",
           "JSONLogger", "LambdaCallback"]

_MAXIMISE = ("acc", "match", "score", "skill", "r2", "auc")


class Callback:
    """Base class: every hook does nothing.

    Hooks (Keras's names): ``on_train_begin(logs)``, ``on_epoch_begin(epoch, logs)``,
    ``on_batch_end(step, logs)`` (``logs``: ``loss``, ``samples``), ``on_epoch_end(epoch,
    logs)`` (``logs``: the epoch's history entry; a callback may add keys to it) and
    ``on_train_end(logs)`` (``logs``: the last evaluation).  ``epoch`` is 1-based and
    ``step`` counts optimizer steps.  Set ``self.trainer.stop_training = True`` to end
    training after the current epoch.
    """

    trainer = None

    def set_trainer(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, step, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def state_dict(self) -> dict:
        """What a resumed run needs to continue this callback (arrays allowed)."""
        return {}

    def load_state_dict(self, state) -> None:
        """Restore what :meth:`state_dict` returned."""


def _metric(logs, monitor, who):
    key = "train_loss" if monitor == "loss" else monitor
    if key not in logs:
        raise ValueError(f"{who}: monitor {monitor!r} is not among the epoch's metrics "
                         f"{sorted(k for k, v in logs.items() if isinstance(v, float))}")
    value = float(logs[key])
    return value


def _direction(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if any(s in monitor for s in _MAXIMISE) else "min"
    return mode


class _Monitor(Callback):
    """The best value of a metric so far and whether a new value improves on it."""

    def __init__(self, monitor, mode, min_delta):
        check_real(min_delta, "min_delta")
        self.monitor = monitor
        self.mode = _direction(monitor, mode)
        self.min_delta = abs(float(min_delta))
        self.best = None

    def improves(self, value):
        if self.best is None:
            return math.isfinite(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = None if state["best"] is None else float(state["best"])


class EarlyStopping(_Monitor):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str, default "val_loss"
    min_delta : float, default 0
        A change smaller than this is no improvement.
    patience : int, default 0
        Stop after this many epochs in a row without improvement (0 and 1: at the
        first).
    mode : {"auto", "min", "max"}
    restore_best_weights : bool, default False
        At the end of training (stopped early or not), put back the weights of the
        best epoch (as Keras 3 does); a run folder's ``model.npz`` then holds them.

    Attributes
    ----------
    stopped_epoch : int
        The epoch after which training stopped (0: it did not stop early).
    best_epoch : int
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False):
        super().__init__(monitor, mode, min_delta)
        self.patience = check_int(patience, "patience", 0)
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = _metric(logs, self.monitor, "EarlyStopping")
        if self.improves(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.trainer.model.load_state_dict(self.best_weights)

    def state_dict(self):
        return {**super().state_dict(), "wait": self.wait, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch,
                "best_weights": dict(self.best_weights) if self.best_weights else None}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.wait = int(state["wait"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state["stopped_epoch"])
        w = state["best_weights"]
        self.best_weights = {k: np.asarray(v) for k, v in w.items()} if w else None


class ModelCheckpoint(_Monitor):
    """Save the model with :func:`nn_core.save` at the end of epochs.

    Parameters
    ----------
    filepath : str
        May hold ``{epoch}`` and metric fields (``"model-{epoch:02d}-{val_loss:.3f}.npz"``).
    monitor : str, default "val_loss"
    save_best_only : bool, default False
        Only when ``monitor`` improves on every earlier epoch (the file then always
        holds the best model so far).
    mode : {"auto", "min", "max"}
    min_delta : float, default 0

    The file's ``extra`` metadata records ``epoch``, ``step`` and the epoch's metrics.
    """

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto",
                 min_delta=0.0):
        super().__init__(monitor, mode, min_delta)
        self.filepath = os.fspath(filepath)
        self.save_best_only = bool(save_best_only)
        self.saved = []

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only:
            value = _metric(logs, self.monitor, "ModelCheckpoint")
            if not self.improves(value):
                return
            self.best = value
        metrics = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        path = self.filepath.format(**metrics)
        if self.trainer.is_root:                # data parallel: rank 0 writes
            save(self.trainer.model, path, extra={"epoch": epoch, "metrics": metrics})
        self.saved.append(path)

    def state_dict(self):
        return {**super().state_dict(), "saved": list(self.saved)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.saved = [str(p) for p in state["saved"]]


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving.

    Parameters
    ----------
    monitor : str, default "val_loss"
    factor : float in (0, 1), default 0.1
    patience : int, default 10
        Reduce after this many epochs in a row without improvement.
    mode : {"auto", "min", "max"}
    min_delta : float, default 1e-4
    cooldown : int, default 0
        Epochs to wait after a reduction before counting again.
    min_lr : float, default 0
        The rate is not reduced below this.

    The reduction is a factor on top of the trainer's schedule
    (``trainer.lr_scale``), so a warmup/cosine schedule keeps its shape.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta)
        self.factor = check_real(factor, "factor", 0.0, 1.0, lo_open=True, hi_open=True)
        self.min_lr = check_real(min_lr, "min_lr", 0.0)
        self.patience = check_int(patience, "patience", 0)
        self.cooldown = check_int(cooldown, "cooldown", 0)
        self.wait = 0
        self.cooldown_left = 0

    def on_epoch_end(self, epoch, logs=None):
        value = _metric(logs, self.monitor, "ReduceLROnPlateau")
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if self.improves(value):
            self.best, self.wait = value, 0
            return
        if self.cooldown_left > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            lr = self.trainer.optimizer.lr
            new = max(lr * self.factor, self.min_lr)
            if lr > 0 and new < lr:
                self.trainer.scale_lr(new / lr)
            self.cooldown_left, self.wait = self.cooldown, 0

    def state_dict(self):
        return {**super().state_dict(), "wait": self.wait, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.wait = int(state["wait"])
        self.cooldown_left = int(state["cooldown_left"])


class CSVLogger(Callback):
    """Write the per-epoch table to ``filename`` after every epoch (atomically).

    Parameters
    ----------
    filename : str
    separator : str, default ","
    append : bool, default False
        Keep the rows already in the file (written by an earlier run) before this
        run's.
    """

    def __init__(self, filename, separator=",", append=False):
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = bool(append)
        self._prefix = ""

    def on_train_begin(self, logs=None):
        self._prefix = ""
        if self.append and os.path.exists(self.filename):
            with open(self.filename, encoding="utf-8") as fh:
                self._prefix = fh.read()

    def on_epoch_end(self, epoch, logs=None):
        if self.trainer.is_root:
            write_csv(self.filename, self.trainer.history.epochs, self.separator,
                      self._prefix)


class JSONLogger(Callback):
    """Write ``{"epochs": [...], "step_loss": [...]}`` to ``filename`` after every epoch
    (atomically)."""

    def __init__(self, filename):
        self.filename = os.fspath(filename)

    def on_epoch_end(self, epoch, logs=None):
        h = self.trainer.history
        if not self.trainer.is_root:
            return
        with atomic_write(self.filename, "w") as fh:
            json.dump({"epochs": h.epochs, "step_loss": h.step_loss}, fh, indent=1)


class LambdaCallback(Callback):
    """Functions as hooks: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``
    (any of ``on_train_begin``, ``on_epoch_begin``, ``on_batch_end``, ``on_epoch_end``,
    ``on_train_end``, with the hooks' arguments)."""

    _HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end",
              "on_train_end")

    def __init__(self, **hooks):
        unknown = sorted(set(hooks) - set(self._HOOKS))
        if unknown:
            raise ValueError(f"unknown hooks {unknown}; choose from {list(self._HOOKS)}")
        for name, fn in hooks.items():
            setattr(self, name, fn)
