"""Training: a public loop (:class:`Trainer`, :func:`fit`) for any nn_core model on
arrays, variable-length sequences or your own batch source, and :func:`train`, which
runs a :class:`Task` the way ``nn-core train`` does.

* :class:`Trainer` / :func:`fit` -- epochs or steps, batching (shuffled, padded with
  lengths for sequences: :mod:`nn_core.training.data`), gradient clipping, a learning-
  rate schedule, evaluation with metrics after every epoch, callbacks
  (:mod:`nn_core.training.callbacks`: early stopping, keep-best checkpoints,
  reduce-LR-on-plateau, CSV/JSON logs), a progress line per epoch;
* :class:`Task` / :func:`train` -- a task supplies a model, a batch source, a loss and
  its metrics; :func:`train` hands them to a :class:`Trainer` with AdamW, warmup/cosine
  and clipping (the tasks of :mod:`nn_core.tasks` are such tasks).

Runs are never lost and always resumable (``Trainer.fit(out_dir=...)`` and ``train``):

* ``out_dir`` that already holds a run is refused unless ``resume=True`` (continue it)
  or ``overwrite=True`` (delete its files first) -- see :func:`prepare_run_dir`;
* every checkpoint (``model.npz``, after every epoch and whenever training stops) carries
  the training state next to the model (:func:`nn_core.checkpoint.load_training_state`):
  optimizer buffers, the schedule's step, the global step, the position in the epoch,
  the batch-order generator and every module's generator, the callbacks' state, and
  the history; a resumed run ends with the same weights, bit for bit, as one that was
  never interrupted;
* SIGINT (Ctrl-C) and SIGTERM finish the optimizer update in progress or abandon the
  step before it (forward/backward, evaluation), save, write the history and the loss
  curve, and raise :class:`TrainingInterrupted`;
* ``history.json`` and ``history.csv`` are written atomically after every epoch.

Examples
--------
A linear regression as a task:

>>> import io, tempfile
>>> import numpy as np
>>> from nn_core.layers import Linear
>>> from nn_core.losses import MSELoss
>>> from nn_core.training import ArrayDataset
>>> class Regression(Task):
...     name = "regression"
...     def __init__(self, config):
...         super().__init__(config)
...         rng = np.random.default_rng(config["seed"])
...         self.x = rng.standard_normal((256, 4))
...         self.y = self.x @ rng.standard_normal((4, 2))
...         self.train_set = ArrayDataset(self.x, self.y)    # drawn anew every epoch
...     def build_model(self, dtype, rng):
...         return Linear(4, 2, dtype=dtype, rng=rng)
...     def loss(self, dtype):
...         return MSELoss(dtype=dtype)
...     def evaluate(self, model):
...         return {"val_mse": float(((model(self.x) - self.y) ** 2).mean())}
>>> with tempfile.TemporaryDirectory() as out:
...     model, result = train(Regression({"seed": 0}), epochs=5, batch_size=32, lr=0.1,
...                           out_dir=out, log=lambda msg: None, progress_file=io.StringIO())
>>> result["steps"], result["metrics"]["val_mse"] < 0.01
(40, True)

The same regression with the public loop, early stopping and a keep-best checkpoint:

>>> import nn_core
>>> from nn_core.optim import AdamW
>>> from nn_core.training.callbacks import EarlyStopping, ModelCheckpoint
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((256, 4))
>>> y = x @ rng.standard_normal((4, 2))
>>> model = Linear(4, 2, dtype=np.float64, rng=0)
>>> stop = EarlyStopping(patience=3, min_delta=1e-6, restore_best_weights=True)
>>> with tempfile.TemporaryDirectory() as out:
...     best = ModelCheckpoint(out + "/best.npz", save_best_only=True)
...     history = fit(model, "mse", AdamW(model, lr=0.05), (x[:200], y[:200]),
...                   (x[200:], y[200:]), epochs=100, batch_size=32, seed=0, verbose=0,
...                   callbacks=[stop, best])
...     saved = nn_core.load(out + "/best.npz")
>>> history.status, stop.best_epoch, min(history.history["val_loss"]) < 1e-4
('early_stopped', 14, True)
>>> bool(np.array_equal(saved.params["W"], model.params["W"]))   # the best weights
True
"""
from . import callbacks, data
from ._run import (CHECKPOINT, RUN_FILES, RunExistsError, RunLockedError, check_run_dir,
                   lock_run_dir, plot_history, prepare_run_dir, rng_states, set_rng_states,
                   write_history)
from ._state import compare_settings
from ._signals import StopSignals, TrainingInterrupted
from .callbacks import (Callback, CSVLogger, EarlyStopping, JSONLogger, LambdaCallback,
                        ModelCheckpoint, ReduceLROnPlateau)
from .data import ArrayDataset, Batch, SequenceDataset, pad_sequences
from .task import Task, read_run, train
from .trainer import History, Trainer, fit, loss_step

__all__ = ["Trainer", "fit", "loss_step", "History", "Task", "train", "plot_history",
           "write_history", "check_run_dir", "prepare_run_dir", "lock_run_dir", "RunLockedError",
           "compare_settings", "read_run", "rng_states", "set_rng_states", "StopSignals",
           "TrainingInterrupted", "RunExistsError", "CHECKPOINT", "RUN_FILES",
           "Callback", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau", "CSVLogger",
           "JSONLogger", "LambdaCallback", "ArrayDataset", "SequenceDataset", "Batch",
           "pad_sequences", "callbacks", "data"]
