"""``forecast``: predict the Lorenz system ``horizon`` steps ahead with a GRU/LSTM.

Data: :func:`~nn_core.datasets.lorenz.lorenz_series` sampled every ``dt`` and
standardised with the training statistics; the first 80 % of the series trains, the
last 20 % validates (no overlap in time), cut into windows with
:func:`~nn_core.datasets.lorenz.sliding_windows`.  Model:
:class:`~nn_core.models.Forecaster`, trained on the mean squared error.

The metric is the validation MSE (standardised units) next to the persistence
baseline ``y = x_{W-1}``.

``Forecaster`` and ``lorenz_series`` are also importable from here, as in earlier
versions (checkpoints name ``nn_core.tasks.forecast:Forecaster``).
"""
from __future__ import annotations

import numpy as np

from ..datasets.lorenz import lorenz_series, sliding_windows
from ..losses import MSELoss
from ..models.forecaster import Forecaster
from ..training import Task
from ._config import as_choice, as_float, as_int, require_config

__all__ = ["lorenz_series", "Forecaster", "ForecastTask"]


class ForecastTask(Task):
    """The ``forecast`` task (see the module docstring); ``config`` as built by
    :meth:`config_from_args`."""

    name = "forecast"
    description = "GRU/LSTM forecaster on the Lorenz system (SciPy solve_ivp)"
    defaults = dict(epochs=8, batch_size=64, lr=5e-3, hidden=64, cell="gru", window=32,
                    horizon=25, steps=12000, dt=0.02)
    headline = ("val_mse", False)

    @classmethod
    def add_arguments(cls, p):
        d = cls.defaults
        p.add_argument("--cell", choices=["gru", "lstm"], default=d["cell"],
                       help="default: %(default)s")
        p.add_argument("--window", type=int, default=d["window"],
                       help="input steps (default: %(default)s)")
        p.add_argument("--horizon", type=int, default=d["horizon"],
                       help="predict this many steps after the window (default: %(default)s)")
        p.add_argument("--steps", type=int, default=d["steps"],
                       help="length of the series, at least 5 * (window + horizon) "
                            "(default: %(default)s)")
        p.add_argument("--dt", type=float, default=d["dt"],
                       help="sampling interval, in (0, 1] (default: %(default)s)")

    @classmethod
    def config_from_args(cls, a):
        return cls.check_config(dict(hidden=a.hidden, cell=a.cell, window=a.window,
                                     horizon=a.horizon, steps=a.steps, dt=a.dt,
                                     data_seed=a.seed))

    @classmethod
    def check_config(cls, config):
        c = require_config(config, ("hidden", "cell", "window", "horizon", "steps", "dt",
                                    "data_seed"))
        for key in ("hidden", "window", "horizon"):
            as_int(c, key, 1)
        as_int(c, "steps", 5 * (c["window"] + c["horizon"]))
        as_int(c, "data_seed", 0, flag="--seed")
        as_float(c, "dt", 0.0, 1.0)
        as_choice(c, "cell", ("gru", "lstm"))
        return c

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        series = lorenz_series(c["steps"], dt=c["dt"], seed=int(c.get("data_seed", 0)))
        split = int(0.8 * len(series))
        self.mean = series[:split].mean(0)
        self.std = series[:split].std(0)
        z = (series - self.mean) / self.std
        W, h = c["window"], c["horizon"]
        self.train_x, self.train_y = sliding_windows(z[:split], W, h)
        self.val_x, self.val_y = sliding_windows(z[split:], W, h)

    def build_model(self, dtype, rng):
        c = self.config
        return Forecaster(3, c["hidden"], c["cell"], dtype=dtype, rng=rng)

    def num_batches(self, batch_size):
        return max(1, len(self.train_x) // batch_size)

    def train_batches(self, rng, batch_size):
        order = rng.permutation(len(self.train_x))
        for i in range(self.num_batches(batch_size)):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield self.train_x[idx], self.train_y[idx]

    def train_step(self, model, batch):
        x, y = batch
        loss_fn = MSELoss(dtype=model.dtype)
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward()[0])
        return {"loss": float(loss), "correct": 0, "count": 0, "samples": len(x)}

    def evaluate(self, model, batch_size=1024):
        se = 0.0
        for i in range(0, len(self.val_x), batch_size):
            pred = model(self.val_x[i:i + batch_size])
            model._drop_caches()
            se += float(((pred - self.val_y[i:i + batch_size]) ** 2).sum())
        mse = se / self.val_y.size
        persist = float(((self.val_x[:, -1] - self.val_y) ** 2).mean())
        return {"val_mse": mse, "persistence_mse": persist, "skill": 1.0 - mse / persist}

    def describe_metrics(self, m):
        c = self.config
        return (f"validation MSE {m['val_mse']:.3g} vs persistence {m['persistence_mse']:.3g} "
                f"({m['persistence_mse'] / max(m['val_mse'], 1e-300):.1f}x lower; skill "
                f"{m['skill']:.3f}) predicting {c['horizon']} steps ({c['horizon'] * c['dt']:g} "
                f"time units) ahead, standardised units")

    def generate(self, model, args, out=print):
        model.eval()
        rng = np.random.default_rng(args.seed)
        idx = np.sort(rng.choice(len(self.val_x), size=min(args.num, len(self.val_x)),
                                 replace=False))
        pred = model(self.val_x[idx])
        model._drop_caches()
        to_raw = lambda z: z * self.std + self.mean  # noqa: E731
        out(f"{'last observed (x, y, z)':>28} | {'true':>24} | {'predicted':>24} | "
            "max |error|: persistence vs model")
        for k, i in enumerate(idx):
            last, true, p = to_raw(self.val_x[i, -1]), to_raw(self.val_y[i]), to_raw(pred[k])
            fmt = lambda v: " ".join(f"{a:7.2f}" for a in v)  # noqa: E731
            out(f"{fmt(last):>28} | {fmt(true):>24} | {fmt(p):>24} | "
                f"{np.abs(true - last).max():6.2f} vs {np.abs(true - p).max():6.2f}")
