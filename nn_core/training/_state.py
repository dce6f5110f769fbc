"""The state of a training run, which saves and restores itself: the learning rate
(:class:`LearningRate`) and where the run is (:class:`RunState`)."""
from __future__ import annotations

import numpy as np

from ..checkpoint import CheckpointError, load_training_state, read_metadata, read_state_dict
from ..optim import SGD, Adam, WarmupCosine
from ._run import rng_states, set_rng_states

__all__ = ["LearningRate", "RunState", "compare_settings", "KIND"]

#: the ``kind`` of the training state every run writes
KIND = "nn_core.training.Trainer/1"

# optimizer buffers a resumed state may hold, by optimizer class
_BUFFERS = ((Adam, {"exp_avg", "exp_avg_sq"}), (SGD, {"momentum_buffer"}))


class LearningRate:
    """The optimizer's rate at every step: the schedule's rate times :attr:`scale`.

    ``schedule`` is ``None``, ``"warmup_cosine"`` (built per run from the optimizer's
    rate when this object was made), an object with ``step()`` or a function
    ``schedule(step) -> lr``.
    """

    def __init__(self, optimizer, schedule):
        self.optimizer = optimizer
        self.spec = schedule
        self.peak = self.scheduled = optimizer.lr
        self.schedule = None
        self.scale = 1.0

    def start(self, total):
        """A new run of ``total`` steps, from step 0."""
        s, opt = self.spec, self.optimizer
        self.scale = 1.0
        if s == "warmup_cosine":
            # the peak is the rate the optimizer had when the trainer was made, so that
            # a second fit warms up to it again rather than to where the first ended
            opt.lr = self.peak
            self.schedule = WarmupCosine(opt, warmup_steps=max(1, int(0.05 * total)),
                                         total_steps=total, min_lr=self.peak / 20)
        elif s is not None and not hasattr(s, "step"):
            self.schedule = s
            opt.lr = float(s(0))
        else:
            self.schedule = s
        self.scheduled = opt.lr
        self.apply()

    def advance(self, step):
        """After the update of 1-based ``step``: the rate of the next one."""
        s = self.schedule
        if s is None:
            return
        if hasattr(s, "step"):
            s.step()
            self.scheduled = self.optimizer.lr
        else:
            self.scheduled = float(s(step))
        self.apply()

    def apply(self):
        lr = self.scheduled
        self.optimizer.lr = lr if self.scale == 1.0 else lr * self.scale

    def multiply(self, factor):
        """Multiply the rate, now and for every later step."""
        self.scale *= float(factor)
        self.optimizer.lr = self.scheduled * self.scale

    def state_dict(self):
        s = self.schedule
        return {"schedule": s.state_dict() if hasattr(s, "state_dict") else None,
                "lr_scale": self.scale, "scheduled_lr": self.scheduled}

    def load_state_dict(self, st):
        s = self.schedule
        if hasattr(s, "step"):
            if not hasattr(s, "load_state_dict"):
                raise ValueError(f"the schedule {type(s).__name__} has no load_state_dict, "
                                 "so the run cannot resume")
            s.load_state_dict(st["schedule"])
        self.scale = float(st.get("lr_scale", 1.0))
        self.scheduled = float(st.get("scheduled_lr", self.optimizer.lr))


def compare_settings(saved, settings, what="a resumed run keeps its settings; these differ",
                     name=str):
    """``ValueError`` listing every setting of ``settings`` that differs from ``saved``
    (the run's), each called ``name(key)``: the one comparison of a resumed run with
    the run it continues (the trainer's, :func:`~nn_core.training.train`'s and the
    command line's)."""
    diff = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
    if diff:
        raise ValueError(f"{what}: " + ", ".join(
            f"{name(k)} {settings.get(k)!r} (the run's: {saved.get(k)!r})" for k in diff))


def _kind(value):
    """What a setting's value must stay: a number (int or float) or its type."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return type(value).__name__


class RunState:
    """Where a run is, and everything it needs to go on: the position (step, epochs
    done, batch in the epoch), the batch-order generator and its state when the epoch
    began, the epoch's running sums, the history; and by reference what is saved with
    them: the model's generators and weights, the optimizer, the learning rate and the
    callbacks.  :meth:`state_dict` is the checkpoint's training state and
    :meth:`restore` puts a saved one back, bit for bit.
    """

    def __init__(self, *, settings, per_epoch, epochs, model, optimizer, lr, callbacks,
                 order_rng, history):
        self.settings, self.per_epoch, self.epochs = settings, per_epoch, epochs
        self.model, self.optimizer, self.lr = model, optimizer, lr
        self.callbacks, self.order_rng, self.history = callbacks, order_rng, history
        self.step = 0
        self.epochs_done = 0
        self.batch = 0                  # batches done in epoch epochs_done + 1
        self.order_epoch_start = None   # batch-order generator state when that epoch began
        self.stats = self.new_stats()
        self.wall = 0.0                 # seconds of earlier sessions
        self.metrics = {}
        self.stopped = False            # a callback ended the run

    @staticmethod
    def new_stats():
        return {"loss_sum": 0.0, "samples": 0, "correct": 0, "count": 0, "train_time_s": 0.0}

    @property
    def where(self):
        return (f"step {self.step} (epoch {self.epochs_done + 1}, batch "
                f"{self.batch}/{self.per_epoch})")

    def generators(self):
        """What a step draws from: ``(the model's generator states, the order's)``."""
        return rng_states(self.model), self.order_rng.bit_generator.state

    # ------------------------------------------------------------ bookkeeping
    def begin_epoch(self):
        if self.batch == 0:
            self.order_epoch_start = self.order_rng.bit_generator.state

    def record(self, stats):
        """Book one completed step."""
        loss = float(stats["loss"])
        s = self.stats
        self.step += 1
        self.batch += 1
        self.history.steps = self.step
        self.history.step_loss.append(loss)
        s["loss_sum"] += loss * stats["samples"]
        s["samples"] += stats["samples"]
        s["correct"] += stats.get("correct", 0)
        s["count"] += stats.get("count", 0)

    def running(self):
        """The epoch's mean loss (and accuracy) so far, for the progress bar."""
        s = self.stats
        post = {"loss": s["loss_sum"] / max(s["samples"], 1)}
        if s["count"]:
            post["acc"] = s["correct"] / s["count"]
        return post

    def end_epoch(self, metrics, eval_time):
        """The finished epoch's history entry."""
        s = self.stats
        entry = {"epoch": self.epochs_done + 1, "step": self.step,
                 "train_loss": s["loss_sum"] / max(s["samples"], 1),
                 "samples_per_s": s["samples"] / max(s["train_time_s"], 1e-9),
                 "train_time_s": s["train_time_s"], "eval_time_s": eval_time, **metrics}
        if s["count"]:
            entry["train_acc"] = s["correct"] / s["count"]
        entry["lr"] = float(self.optimizer.lr)
        self.history.epochs.append(entry)
        self.metrics = metrics
        self.epochs_done += 1
        self.batch = 0
        self.stats = self.new_stats()
        self.order_epoch_start = self.order_rng.bit_generator.state
        return entry

    # ------------------------------------------------------------ save and restore
    def state_dict(self, wall, before=None):
        """The training state now, or (``before``, from :meth:`generators`) as it was
        before the step in progress, which is being abandoned."""
        rngs, order = before if before is not None else self.generators()
        lr = self.lr.state_dict()
        return {
            "kind": KIND,
            "settings": dict(self.settings),
            "batches_per_epoch": self.per_epoch,
            "step": self.step,
            "epochs_done": self.epochs_done,
            "batch": self.batch,
            "finished": self.epochs_done == self.epochs or self.stopped,
            "stopped": self.stopped,
            "optimizer": self.optimizer.state_dict(),
            "schedule": lr["schedule"],
            "lr_scale": lr["lr_scale"],
            "scheduled_lr": lr["scheduled_lr"],
            "rng": {"order_epoch_start": self.order_epoch_start, "order": order,
                    "modules": rngs},
            "epoch_stats": dict(self.stats),
            "step_loss": np.asarray(self.history.step_loss, dtype=np.float64),
            "epochs": list(self.history.epochs),
            "metrics": dict(self.metrics),
            "wall_time_s": wall,
            "callbacks": [{"class": type(c).__name__, "state": c.state_dict()}
                          for c in self.callbacks],
        }

    def check_resumable(self, path):
        """The run saved at ``path`` is a run of these settings (``ValueError`` naming
        each that differs; ``CheckpointError`` without a training state)."""
        training = read_metadata(path).get("training")
        if not isinstance(training, dict) or training.get("kind") != KIND:
            raise CheckpointError(f"{path!r} carries no {KIND} training state")
        saved = training.get("settings")
        if not isinstance(saved, dict) or set(saved) != set(self.settings) or any(
                _kind(saved[k]) != _kind(v) for k, v in self.settings.items()
                if saved[k] is not None and v is not None):
            raise CheckpointError(f"{path!r}: the run's settings are malformed or of another "
                                  "kind of run")
        compare_settings(saved, self.settings)

    def restore(self, path):
        """Put the run saved at ``path`` back: model, optimizer, learning rate,
        callbacks, generators and position."""
        st = load_training_state(path)
        try:
            self._restore(path, st)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path!r}: training state cannot be restored: "
                                  f"{type(exc).__name__}: {exc}") from exc

    def _restore(self, path, st):
        per_epoch = self.per_epoch
        if st["batches_per_epoch"] != per_epoch:
            raise ValueError(f"the data now give {per_epoch} batches per epoch, the run "
                             f"had {st['batches_per_epoch']}")
        for cls, names in _BUFFERS:
            if isinstance(self.optimizer, cls):
                for name, buffers in st["optimizer"]["state"].items():
                    if buffers and not set(buffers) <= names:
                        raise ValueError(f"optimizer buffers of {name!r} are "
                                         f"{sorted(buffers)}")
                break
        self.model.load_state_dict(read_state_dict(path))
        self.optimizer.load_state_dict(st["optimizer"])
        self.lr.load_state_dict(st)
        set_rng_states(self.model, st["rng"]["modules"])
        self.order_rng.bit_generator.state = st["rng"]["order"]
        start = st["rng"]["order_epoch_start"]
        self.order_epoch_start = start if start is not None else st["rng"]["order"]
        step, done, batch = st["step"], st["epochs_done"], st["batch"]
        if not all(isinstance(v, int) and v >= 0 for v in (step, done, batch)) \
                or batch > per_epoch or done > self.epochs:
            raise ValueError(f"position step {step}, epochs done {done}, batch {batch}")
        self.step, self.epochs_done, self.batch = step, done, batch
        stats = st["epoch_stats"]
        if set(stats) != set(self.new_stats()):
            raise ValueError("malformed epoch statistics")
        self.stats = dict(stats)
        losses = st["step_loss"]
        if losses.ndim != 1 or len(losses) != step:
            raise ValueError(f"{len(losses)} step losses for {step} steps")
        self.history.step_loss = [float(v) for v in losses]
        self.history.steps = step
        self.history.epochs = list(st["epochs"])
        self.metrics = dict(st["metrics"])
        self.wall = float(st["wall_time_s"])
        self.stopped = bool(st.get("stopped", False))
        saved_cbs = st.get("callbacks", [])
        if [c["class"] for c in saved_cbs] != [type(c).__name__ for c in self.callbacks]:
            raise ValueError("the callbacks differ from the run's")
        for cb, saved in zip(self.callbacks, saved_cbs):
            cb.load_state_dict(saved["state"])
        self.lr.apply()
