"""The training loop: a :class:`Task` supplies data, model and one training step;
:func:`train` runs AdamW with warmup/cosine and gradient clipping, shows progress,
validates after every epoch, checkpoints atomically, and writes the history and the
loss curve.

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

import json
import math
import os
import time

import numpy as np

from ._progress import ProgressBar
from .checkpoint import save
from .optim import AdamW, WarmupCosine, clip_grad_norm

__all__ = ["Task", "train", "plot_history"]


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
        """The task's ``config`` from the parsed command line (``ValueError`` if invalid)."""
        raise NotImplementedError

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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train(task, *, epochs, batch_size, lr, dtype=np.float32, seed=0, out_dir="runs",
          weight_decay=0.01, clip=1.0, warmup_frac=0.05, log=None, progress_file=None,
          max_steps=None):
    """Train ``task``'s model.

    Every epoch: the task's batches (order drawn from ``seed``), each one
    ``zero_grad`` -> :meth:`Task.train_step` -> global-norm clip -> AdamW step ->
    schedule step; then :meth:`Task.evaluate` in eval mode and a checkpoint.

    Parameters
    ----------
    task : Task
    epochs, batch_size : int
    lr : float
        Peak learning rate of AdamW (linear warmup over ``warmup_frac`` of the steps,
        then cosine decay to ``lr / 20``).
    dtype : {np.float32, np.float64}
    seed : int
        Seeds the weights and the batch order (data are seeded by the task config).
    out_dir : str
        Receives ``model.npz`` (after every epoch, atomically), ``history.json`` and
        ``loss_curve.png`` (when matplotlib is installed).
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
        Stop after this many optimizer steps in total (smoke tests).

    Returns
    -------
    model : Module
        The trained model.
    result : dict
        ``metrics`` (the last evaluation), ``headline`` (its :attr:`Task.headline`
        value), ``steps``, ``wall_time_s``, ``history`` (as in ``history.json``:
        ``step_loss`` per step, ``epochs`` per-epoch entries) and ``checkpoint``.

    Raises
    ------
    FloatingPointError
        A training loss is not finite.
    """
    log = log or (lambda msg: print(msg, flush=True))
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    model = task.build_model(dtype, rng)
    per_epoch = task.num_batches(batch_size)
    total = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    opt = AdamW(model, lr=lr, weight_decay=weight_decay)
    sched = WarmupCosine(opt, warmup_steps=max(1, int(warmup_frac * total)), total_steps=total,
                         min_lr=lr / 20)
    ckpt = os.path.join(out_dir, "model.npz")
    log(f"nn-core train {task.name}: {type(model).__name__} with {model.num_parameters():,} "
        f"parameters ({np.dtype(dtype).name}), {epochs} epochs x {per_epoch} batches of "
        f"{batch_size}, AdamW lr {lr:g}"
        + (f", stopping after {total} steps" if total < epochs * per_epoch else ""))
    history = {"task": task.name, "step_loss": [], "epochs": []}
    step = 0
    t_start = time.perf_counter()
    metrics = {}
    for epoch in range(1, epochs + 1):
        model.train()
        n_batches = per_epoch if max_steps is None else min(per_epoch, max_steps - step)
        if n_batches <= 0:
            break
        bar = ProgressBar(n_batches, f"epoch {epoch}/{epochs}", file=progress_file)
        loss_sum = 0.0
        correct = count = samples = 0
        for i, batch in enumerate(task.train_batches(rng, batch_size)):
            if i >= n_batches:
                break
            opt.zero_grad()
            stats = task.train_step(model, batch)
            loss = float(stats["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged: loss {loss} at step {step + 1}; "
                                         "try a smaller --lr")
            clip_grad_norm(model, clip)
            opt.step()
            sched.step()
            step += 1
            history["step_loss"].append(loss)
            loss_sum += loss * stats["samples"]
            samples += stats["samples"]
            correct += stats["correct"]
            count += stats["count"]
            post = {"loss": loss_sum / samples}
            if count:
                post["acc"] = correct / count
            bar.update(1, samples=stats["samples"], **post)
        model.eval()
        t_eval = time.perf_counter()
        metrics = task.evaluate(model)
        eval_time = time.perf_counter() - t_eval
        entry = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(samples, 1),
                 "samples_per_s": bar.rate, "train_time_s": bar.elapsed,
                 "eval_time_s": eval_time, **metrics}
        if count:
            entry["train_acc"] = correct / count
        history["epochs"].append(entry)
        bar.close(**{k: v for k, v in metrics.items() if isinstance(v, float)})
        save(model, ckpt, extra={
            "task": task.name, "config": task.config, "metrics": metrics,
            "train": {"epochs": epochs, "epochs_done": epoch, "batch_size": batch_size,
                      "lr": lr, "dtype": np.dtype(dtype).name, "seed": seed},
            "history": history["epochs"],
        })
    wall = time.perf_counter() - t_start
    history["wall_time_s"] = wall
    with open(os.path.join(out_dir, "history.json"), "w") as fh:
        json.dump(history, fh, indent=1)
    png = plot_history(history, os.path.join(out_dir, "loss_curve.png"),
                       title=f"nn-core train {task.name}")
    key, _ = task.headline
    log(f"done in {wall:.1f}s ({step} steps): {task.describe_metrics(metrics)}")
    log(f"checkpoint: {ckpt}")
    if png:
        log(f"loss curve: {png}")
    else:
        log("loss curve: not plotted (matplotlib is not installed; `pip install matplotlib`). "
            f"Per-step losses are in {os.path.join(out_dir, 'history.json')}")
    return model, {"metrics": metrics, "wall_time_s": wall, "steps": step, "history": history,
                   "checkpoint": ckpt, "headline": metrics.get(key)}

