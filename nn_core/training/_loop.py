"""The epoch loop of :meth:`nn_core.training.Trainer.fit` and the state it saves."""
from __future__ import annotations

import contextlib
import os
import signal
import time

import numpy as np

from .._progress import ProgressBar
from ..checkpoint import CheckpointError, load_training_state, read_state_dict, save
from ..distributed import barrier
from ..memory import caching_allocator, release_cache
from ..optim import SGD, Adam
from . import _run
from ._run import rng_states, set_rng_states, write_history
from ._signals import StopSignals, TrainingInterrupted

__all__ = ["Run", "Context", "restore"]


class Run:
    """Where a run is: steps, position in the epoch, running sums, history."""

    def __init__(self, history):
        self.step = 0
        self.epochs_done = 0
        self.batch = 0                  # batches done in epoch epochs_done + 1
        self.order_epoch_start = None   # batch-order generator state when that epoch began
        self.stats = self.new_stats()
        self.history = history
        self.wall = 0.0                 # seconds of earlier sessions
        self.metrics = {}
        self.stopped = False            # a callback ended the run

    @staticmethod
    def new_stats():
        return {"loss_sum": 0.0, "samples": 0, "correct": 0, "count": 0, "train_time_s": 0.0}



class Context:
    """One :meth:`Trainer.fit` call: the loop and what it writes."""

    def __init__(self, trainer, source, val_data, settings, per_epoch, epochs, total,
                 batch_size, order_rng, run, out_dir, max_steps):
        self.t = trainer
        self.source, self.val_data = source, val_data
        self.settings, self.per_epoch, self.epochs, self.total = settings, per_epoch, epochs, total
        self.batch_size, self.order_rng, self.run = batch_size, order_rng, run
        self.out_dir, self.max_steps = out_dir, max_steps
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

    def state(self, wall, before=None):
        """The training state now, or (``before``) as it was before the step in
        progress, which is being abandoned."""
        t, run = self.t, self.run
        rngs, order = before if before is not None else (rng_states(t.model), None)
        sched = t._sched.state_dict() if hasattr(t._sched, "state_dict") else None
        return {
            "kind": t._STATE_KIND,
            "settings": dict(self.settings),
            "batches_per_epoch": self.per_epoch,
            "step": run.step,
            "epochs_done": run.epochs_done,
            "batch": run.batch,
            "finished": run.epochs_done == self.epochs or run.stopped,
            "stopped": run.stopped,
            "optimizer": t.optimizer.state_dict(),
            "schedule": sched,
            "lr_scale": t.lr_scale,
            "scheduled_lr": t._scheduled_lr,
            "rng": {"order_epoch_start": run.order_epoch_start,
                    "order": order if order is not None else self.order_rng.bit_generator.state,
                    "modules": rngs},
            "epoch_stats": dict(run.stats),
            "step_loss": np.asarray(run.history.step_loss, dtype=np.float64),
            "epochs": list(run.history.epochs),
            "metrics": dict(run.metrics),
            "wall_time_s": wall,
            "callbacks": [{"class": type(c).__name__, "state": c.state_dict()}
                          for c in t.callbacks],
        }

    def history_dict(self, training_state):
        run = self.run
        return {**self.t._history_header(), "step_loss": run.history.step_loss,
                "epochs": run.history.epochs, "step": run.step,
                "epochs_done": run.epochs_done, "finished": bool(training_state["finished"]),
                "wall_time_s": training_state["wall_time_s"]}

    def checkpoint(self, training_state):
        if self.out_dir is None:
            return
        self.last_state = training_state
        if not self.t.is_root:
            return
        t, run = self.t, self.run
        save(t.model, self.ckpt, extra=t._checkpoint_extra(run, self.settings),
             training_state=training_state)
        write_history(self.out_dir, self.history_dict(training_state))

    def plot(self, signals):
        """The loss curve, or ``None`` (no run folder, no matplotlib, or abandoned)."""
        if self.out_dir is None or not self.t.is_root:
            return None
        try:
            with signals.abandonable():
                return _run.plot_history(self.history_dict({"finished": False,
                                                            "wall_time_s": 0.0}),
                                         os.path.join(self.out_dir, "loss_curve.png"),
                                         title=self.t._title())
        except KeyboardInterrupt:
            return None

    def epoch_batches(self):
        """The rest of the current epoch's batches (this rank's shard of each global
        batch when data-parallel)."""
        batches = self._epoch_batches()
        if self.t._world is None:
            return batches
        from ..distributed import shard
        return (shard(b) for b in batches)

    def _epoch_batches(self):
        """The iterator over the rest of the current epoch's batches.  Resumed
        mid-epoch, the epoch's order is drawn again from its starting state and the
        batches already trained are skipped (the order generator then is where the
        interrupted run left it)."""
        run, rng = self.run, self.order_rng
        if not 0 < run.batch < self.per_epoch:
            return self.source.train_batches(rng, self.batch_size)
        now = rng.bit_generator.state
        rng.bit_generator.state = run.order_epoch_start
        batches = self.source.train_batches(rng, self.batch_size)
        for _ in range(run.batch):
            next(batches)
        if rng.bit_generator.state != now:
            raise RuntimeError(f"{type(self.source).__name__}.train_batches did not replay "
                               "the same batch order; batches must depend only on the "
                               "generator it gets")
        return batches

    # ------------------------------------------------------------ the loop
    def loop(self):
        """Run the epochs; the model ends in the mode (train or eval) it started in."""
        was_training = self.t.model.training
        cache = self.t.cache_memory
        try:
            with caching_allocator() if cache else contextlib.nullcontext():
                return self._loop()
        finally:
            self.t.model.train(was_training)
            if cache:
                release_cache()                 # the memory of the last steps goes back

    def _loop(self):
        t, run, per_epoch = self.t, self.run, self.per_epoch
        model = t.model
        with StopSignals(t.handle_signals, deferred=t._world is not None) as signals:
            t._signals = signals
            t0 = time.perf_counter()
            wall = lambda: run.wall + time.perf_counter() - t0  # noqa: E731
            status, saved, bar, before, t_epoch = "finished", False, None, None, None
            try:
                for cb in t.callbacks:
                    cb.on_train_begin({})
                while run.epochs_done < self.epochs and not run.stopped:
                    epoch = run.epochs_done + 1
                    if run.batch == 0:
                        run.order_epoch_start = self.order_rng.bit_generator.state
                    if run.batch < per_epoch and self.max_steps is not None \
                            and run.step >= self.max_steps:
                        status = "max_steps"
                        break
                    if signals.requested:
                        raise KeyboardInterrupt
                    model.train()
                    for cb in t.callbacks:
                        cb.on_epoch_begin(epoch, {})
                    bar = ProgressBar(per_epoch, f"epoch {epoch}/{self.epochs}",
                                      file=t.progress_file) if t.verbose else None
                    if bar is not None:
                        bar.count = run.batch
                    batches = self.epoch_batches()
                    t_epoch = time.perf_counter()
                    while run.batch < per_epoch and run.step < self.total:
                        if self.max_steps is not None and run.step >= self.max_steps:
                            status = "max_steps"
                            break
                        if signals.requested:
                            raise KeyboardInterrupt
                        before = (rng_states(model), self.order_rng.bit_generator.state)
                        with signals.abandonable():
                            batch = next(batches)
                        stats = t.train_step(batch)
                        self.record(stats, bar)
                        before = None
                        for cb in t.callbacks:
                            cb.on_batch_end(run.step, {"loss": run.history.step_loss[-1],
                                                       "samples": stats["samples"]})
                    run.stats["train_time_s"] += time.perf_counter() - t_epoch
                    t_epoch = None
                    if status == "max_steps":
                        break
                    # the epoch's batches are done: evaluate (abandonable), then checkpoint
                    before = (rng_states(model), self.order_rng.bit_generator.state)
                    model.eval()
                    t_eval = time.perf_counter()
                    with signals.abandonable():
                        metrics = self.evaluate()
                    before = None
                    self.end_epoch(epoch, metrics, time.perf_counter() - t_eval, bar)
                    bar = None
                    self.checkpoint(self.state(wall()))
                    saved = True
                if status == "max_steps" and (run.batch or not saved):
                    # stopped mid-epoch: the state is taken before evaluating for the report
                    stopped = self.state(wall())
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
                self.checkpoint(self.state(wall(), before))
                signum, signals.requested = signals.requested or signal.SIGINT, None
                self.plot(signals)                      # a second signal skips the plot
                if t._world is not None:                # every rank stopped at this step:
                    barrier()                           # leave once rank 0 has saved
                where = (f"step {run.step} (epoch {run.epochs_done + 1}, batch "
                         f"{run.batch}/{per_epoch})")
                raise TrainingInterrupted(
                    f"interrupted at {where}; " + (f"checkpoint saved to {self.ckpt}"
                                                   if self.ckpt else "nothing saved (no out_dir)"),
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

    def record(self, stats, bar):
        """Book one completed step."""
        run = self.run
        loss = float(stats["loss"])
        s = run.stats
        run.step += 1
        run.batch += 1
        run.history.steps = run.step
        run.history.step_loss.append(loss)
        s["loss_sum"] += loss * stats["samples"]
        s["samples"] += stats["samples"]
        s["correct"] += stats.get("correct", 0)
        s["count"] += stats.get("count", 0)
        if bar is not None:
            post = {"loss": s["loss_sum"] / max(s["samples"], 1)}
            if s["count"]:
                post["acc"] = s["correct"] / s["count"]
            bar.update(1, samples=stats["samples"], **post)

    def end_epoch(self, epoch, metrics, eval_time, bar):
        t, run = self.t, self.run
        s = run.stats
        entry = {"epoch": epoch, "step": run.step,
                 "train_loss": s["loss_sum"] / max(s["samples"], 1),
                 "samples_per_s": s["samples"] / max(s["train_time_s"], 1e-9),
                 "train_time_s": s["train_time_s"], "eval_time_s": eval_time, **metrics}
        if s["count"]:
            entry["train_acc"] = s["correct"] / s["count"]
        entry["lr"] = float(t.optimizer.lr)
        run.history.epochs.append(entry)
        run.metrics = metrics
        run.epochs_done += 1
        run.batch = 0
        run.stats = run.new_stats()
        run.order_epoch_start = self.order_rng.bit_generator.state
        if bar is not None:
            bar.close(**{k: v for k, v in metrics.items() if isinstance(v, float)})
        for cb in t.callbacks:
            cb.on_epoch_end(epoch, entry)
        run.stopped = run.stopped or t.stop_training


# optimizer buffers a resumed state may hold, by optimizer class
_BUFFERS = ((Adam, {"exp_avg", "exp_avg_sq"}), (SGD, {"momentum_buffer"}))


def restore(trainer, path, settings, per_epoch, order_rng, run):
    """Put the run saved at ``path`` back into ``trainer`` (model, optimizer,
    schedule, learning-rate scale, callbacks), the batch-order generator and ``run``."""
    st = load_training_state(path)
    where = f"{path!r}: training state"
    try:
        if st["batches_per_epoch"] != per_epoch:
            raise ValueError(f"the data now give {per_epoch} batches per epoch, the run "
                             f"had {st['batches_per_epoch']}")
        for cls, names in _BUFFERS:
            if isinstance(trainer.optimizer, cls):
                for name, buffers in st["optimizer"]["state"].items():
                    if buffers and not set(buffers) <= names:
                        raise ValueError(f"optimizer buffers of {name!r} are "
                                         f"{sorted(buffers)}")
                break
        trainer.model.load_state_dict(read_state_dict(path))
        trainer.optimizer.load_state_dict(st["optimizer"])
        if hasattr(trainer._sched, "step"):
            if not hasattr(trainer._sched, "load_state_dict"):
                raise ValueError(f"the schedule {type(trainer._sched).__name__} has no "
                                 "load_state_dict, so the run cannot resume")
            trainer._sched.load_state_dict(st["schedule"])
        trainer.lr_scale = float(st.get("lr_scale", 1.0))
        trainer._scheduled_lr = float(st.get("scheduled_lr", trainer.optimizer.lr))
        set_rng_states(trainer.model, st["rng"]["modules"])
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
        run.history.step_loss = [float(v) for v in losses]
        run.history.steps = step
        run.history.epochs = list(st["epochs"])
        run.metrics = dict(st["metrics"])
        run.wall = float(st["wall_time_s"])
        run.stopped = bool(st.get("stopped", False))
        saved_cbs = st.get("callbacks", [])
        if [c["class"] for c in saved_cbs] != [type(c).__name__ for c in trainer.callbacks]:
            raise ValueError("the callbacks differ from the run's")
        for cb, saved in zip(trainer.callbacks, saved_cbs):
            cb.load_state_dict(saved["state"])
        trainer._apply_lr()
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where} cannot be restored: {type(exc).__name__}: {exc}") \
            from exc
