"""``forecast``: predict a multivariate series ``horizon`` steps ahead with a GRU/LSTM.

Data: the Lorenz system (:func:`~nn_core.datasets.lorenz.lorenz_series`, sampled every
``dt``), or a file of your own (``--data``: CSV/TSV, ``.npy`` or ``.npz``, one row per
time step, read by :func:`~nn_core.datasets.files.load_table`; ``--missing`` fills or
drops gaps, as again on every later read of the file, and the data line counts them;
the time column, ``--time-column`` or the first non-numeric one, labels the forecasts of
``nn-core predict``).  The series is split in
time: the first rows train, the last ``--val-frac`` (20 %) validate; it is standardised
with the training rows' mean and standard deviation only.  Model:
:class:`~nn_core.models.Forecaster` over windows of ``--window`` steps of every column,
trained on the mean squared error of the ``--target`` columns.

Metrics (standardised units, over the validation targets): the model's MSE next to
persistence (``y_{t+h} = y_t``) and, for a file, the seasonal-naive forecast
(``y_{t+h} = y_{t+h-m}``, ``m`` from ``--season`` or the autocorrelation of the
training rows); ``val_rmse`` is the model's error in the data's own units.

The Lorenz windows are cut from each part alone; a file's validation windows may reach
back into the training rows, which are known when the forecast is made.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..datasets.files import MISSING_CHOICES, extend_time, load_table
from ..datasets.lorenz import lorenz_series, sliding_windows
from ..datasets.series import chronological_windows, column_scale, seasonal_naive, \
    seasonal_period, standardize, window_ends
from ..losses import MSELoss
from ..models.forecaster import Forecaster
from ..module import inference_mode
from ..training import ArrayDataset
from .._validation import check_choice, check_int, check_real
from ._command import CommandTask, Option
from ._config import (check_budget, check_common, check_declared, check_source, checked,
                      require_config)
from ._data import data_identity, names, recorded_data, split_point, verify_identity

__all__ = ["ForecastTask"]

#: the longest --window, --horizon and --season
MAX_WINDOW = 10_000
#: the longest generated Lorenz series, and the most values its windows may hold
MAX_STEPS = 10_000_000
MAX_WINDOW_VALUES = 50_000_000

_FILE_KEYS = ("data", "data_sha256", "columns", "target", "val_frac", "season", "mean", "std",
              "missing", "time_column")


class ForecastTask(CommandTask):
    """``nn-core train forecast``: a :class:`~nn_core.models.Forecaster` on the Lorenz
    system or a series of one's own, scored against persistence."""

    name = "forecast"
    description = ("GRU/LSTM forecaster on the Lorenz system (SciPy solve_ivp) or on a "
                   "series of your own (--data)")
    defaults = dict(epochs=8, batch_size=64, lr=5e-3, hidden=64)

    train_options = (
        Option("--data", "a series of your own: CSV/TSV with a header row, .npy or .npz, one "
               "row per time step", metavar="FILE", type=str,
               default_text="the generated Lorenz system"),
        Option("--columns", "--data: the input columns", metavar="A,B,C", type=str,
               default_text="every column", data="file"),
        Option("--target", "--data: the columns to forecast, among --columns", metavar="A,B",
               type=str, default_text="all of them", data="file"),
        Option("--missing", "--data: what to do with a missing cell (empty, NA, NaN): stop "
               "with an error, fill it by linear interpolation or with the last value, or "
               "drop its row", "error", choices=MISSING_CHOICES, data="file"),
        Option("--time-column", "--data: the column of time stamps, carried into the "
               "forecasts of nn-core predict", metavar="NAME", type=str,
               default_text="the first non-numeric column, if any", data="file"),
        Option("--cell", "recurrent cell", "gru", choices=("gru", "lstm")),
        Option("--window", "input steps", 32, type=int, bounds=(1, MAX_WINDOW)),
        Option("--horizon", "predict this many steps after the window", type=int,
               default_text="25 for the Lorenz series, 1 with --data",
               bounds=(1, MAX_WINDOW)),
        Option("--val-frac", "--data: the last fraction of the rows validates, in (0, 0.5]",
               0.2, type=float, data="file", bounds=(0.0, 0.5), lo_open=True),
        Option("--season", "--data: period of the seasonal-naive baseline, >= 2", type=int,
               default_text="detected from the training rows' autocorrelation", data="file",
               bounds=(2, MAX_WINDOW)),
        Option("--steps", "length of the Lorenz series, at least 5 * (window + horizon)",
               12000, type=int, data="generated", bounds=(1, MAX_STEPS)),
        Option("--dt", "Lorenz sampling interval, in (0, 1]", 0.02, type=float, data="generated",
               bounds=(0.0, 1.0), lo_open=True),
    )
    predictions_file = "forecasts.csv"
    predict_options = (
        Option("--data", "the series to forecast", metavar="FILE", type=str,
               default_text="the file the model was trained on"),
    )

    @classmethod
    def config_value(cls, dest, value):
        if dest in ("columns", "target") and value is not None:
            return names(value, "--" + dest)
        return super().config_value(dest, value)

    @classmethod
    def config_from_args(cls, a):
        c = dict(hidden=a.hidden, cell=a.cell, window=a.window, data_seed=a.seed,
                 **dict.fromkeys(_FILE_KEYS))
        if a.data is None:
            c.update(horizon=25 if a.horizon is None else a.horizon, steps=a.steps, dt=a.dt)
            return cls.check_config(c)
        c.update(horizon=1 if a.horizon is None else a.horizon, steps=None, dt=None,
                 val_frac=a.val_frac, season=a.season, missing=a.missing,
                 **data_identity(a.data))
        checked(c, "window", check_int, 1)
        checked(c, "horizon", check_int, 1)
        checked(c, "val_frac", check_real, 0.0, 0.5, lo_open=True)
        columns = names(a.columns, "--columns") if a.columns else None
        table = load_table(a.data, columns, missing=a.missing,     # messages name the file
                           time_column=a.time_column or True)     # as given
        cols, values = table.names, table.values
        c["time_column"] = table.time_name
        target = names(a.target, "--target") if a.target else cols
        for t in target:
            if t not in cols:
                raise ValueError(f"--target {t!r} is not one of the input columns "
                                 f"({', '.join(cols)}); add it to --columns")
        W, h, N = c["window"], c["horizon"], len(values)
        split = split_point(N, c["val_frac"])
        if W >= N:
            raise ValueError(f"--window {W} is longer than the series in {c['data']} "
                             f"({N} rows)")
        if W + h > split or split + h > N + W - 1 or split >= N:
            raise ValueError(f"--window {W} and --horizon {h} need at least {W + h} training "
                             f"rows and one validation target; {c['data']} has {N} rows, the "
                             f"first {split} train (--val-frac {c['val_frac']:g})")
        train = values[:split]
        mean, std = column_scale(train, cols, c["data"])
        c.update(columns=cols, target=target, mean=mean.tolist(), std=std.tolist())
        if c["season"] is None:
            idx = [cols.index(t) for t in target]
            c["season"] = seasonal_period((train[:, idx] - train[:, idx].mean(0)))
        return cls.check_config(c)

    @classmethod
    def check_config(cls, config):
        c = require_config(config,
                           ("hidden", "cell", "window", "horizon", "steps", "dt",
                            "data_seed") + _FILE_KEYS)
        check_declared(c, cls.train_options)
        check_common(c, ("hidden", "window", "horizon"))
        checked(c, "cell", check_choice, ("gru", "lstm"))
        if not check_source(c, ("steps", "dt"), _FILE_KEYS):
            checked(c, "steps", check_int, 5 * (c["window"] + c["horizon"]), MAX_STEPS)
            checked(c, "dt", check_real, 0.0, 1.0, lo_open=True)
            check_budget("window values", 3 * c["steps"] * c["window"], MAX_WINDOW_VALUES,
                         "--steps x --window x 3 columns")
            return c
        if c["season"] is not None:
            checked(c, "season", check_int, 2, flag="--season")
        checked(c, "missing", check_choice, MISSING_CHOICES, flag="--missing")
        if c["time_column"] is not None and not isinstance(c["time_column"], str):
            raise TypeError(f"--time-column must be a column name, got "
                            f"{type(c['time_column']).__name__}")
        cols = c["columns"]
        if not (isinstance(cols, list) and cols and all(isinstance(s, str) for s in cols)
                and len(set(cols)) == len(cols)):
            raise ValueError(f"--columns must be distinct column names, got {cols!r:.80}")
        tgt = c["target"]
        if not (isinstance(tgt, list) and tgt and all(t in cols for t in tgt)
                and len(set(tgt)) == len(tgt)):
            raise ValueError(f"--target must be distinct names among --columns, got {tgt!r:.80}")
        for key in ("mean", "std"):
            v = c[key]
            if not (isinstance(v, list) and len(v) == len(cols) and all(
                    isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
                raise ValueError(f"{key} must be {len(cols)} finite numbers")
        if not all(s > 0 for s in c["std"]):
            raise ValueError("std must be positive")
        return c

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        W, h = c["window"], c["horizon"]
        self.season = None
        if c["data"] is None:
            series = lorenz_series(c["steps"], dt=c["dt"], seed=int(c.get("data_seed", 0)))
            split = int(0.8 * len(series))
            self.mean = series[:split].mean(0)
            self.std = series[:split].std(0)
            z = (series - self.mean) / self.std
            self.train_x, self.train_y = sliding_windows(z[:split], W, h)
            self.val_x, self.val_y = sliding_windows(z[split:], W, h)
            self.val_rows = split + W - 1 + h + np.arange(len(self.val_y))
            self.train_set = ArrayDataset(self.train_x, self.train_y)
            self.columns = ["x", "y", "z"]
            self.target = [0, 1, 2]
            return
        verify_identity(c)
        table = _load(c["data"], c)
        cols, values = table.names, table.values
        self.rows = len(values)
        self.filled, self.dropped = table.filled, table.dropped
        self.mean, self.std = np.array(c["mean"]), np.array(c["std"])
        self.columns = cols
        self.target = [cols.index(t) for t in c["target"]]
        self.season = c["season"]
        z = standardize(values, self.mean, self.std, cols, c["data"])
        split = split_point(len(z), c["val_frac"])
        (self.train_x, self.train_y), (self.val_x, self.val_y, ends) = \
            chronological_windows(z, W, h, split)
        self.val_rows = ends + h
        self.train_set = ArrayDataset(self.train_x, self.train_y)
        if self.season is not None:
            self.val_seasonal = seasonal_naive(z, ends, h, self.season)

    def describe_data(self):
        c = self.config
        if c["data"] is None:
            return "generated"
        gaps = "".join(
            [f", {n} missing {k} filled ({c['missing']})" for k, n in self.filled.items()]
            + ([f", {self.dropped} rows with a missing value dropped"] if self.dropped
               else []))
        return (f"{c['data']}: {self.rows} rows x {len(self.columns)} columns "
                f"({', '.join(self.columns)}){gaps}, {len(self.train_x)} training and "
                f"{len(self.val_x)} validation windows")

    def build_model(self, dtype, rng):
        c = self.config
        return Forecaster(len(self.columns), c["hidden"], c["cell"], dtype=dtype, rng=rng)

    def loss(self, dtype):
        if len(self.target) == len(self.columns):
            return MSELoss(dtype=dtype)
        return _ColumnsMSE(self.target, dtype)

    #: the metric of the summary line, and whether larger is better
    headline = ("val_mse", False)
    plot_metric = "val_mse"

    def plot_levels(self, metrics):
        """Persistence's and the seasonal-naive forecast's validation MSE."""
        levels = {}
        if "persistence_mse" in metrics:
            levels["persistence"] = metrics["persistence_mse"]
        if "seasonal_mse" in metrics:
            levels[f"seasonal-naive (period {self.season})"] = metrics["seasonal_mse"]
        return levels

    def plot(self, model, out_dir):
        """``forecast.png``: the validation stretch, truth and forecast of each target
        column (at most four) in the data's units."""
        from ..training._run import TRAIN_COLOUR, VALIDATION_COLOUR, new_figure, save_figure
        t = self.target[:4]
        fig = new_figure((8, 2.2 + 1.6 * len(t)))
        if fig is None:
            return []
        pred = _predict(model, self.val_x)
        axes = fig.subplots(len(t), 1, sharex=True, squeeze=False)[:, 0]
        h = self.config["horizon"]
        for ax, j in zip(axes, t):
            raw = lambda z: z[:, j] * self.std[j] + self.mean[j]  # noqa: E731
            ax.plot(self.val_rows, raw(self.val_y), color=TRAIN_COLOUR, lw=1.2,
                    gid="truth", label="observed")
            ax.plot(self.val_rows, raw(pred), color=VALIDATION_COLOUR, lw=1.2,
                    gid="forecast", label=f"forecast, {h} step(s) ahead")
            ax.set_ylabel(self.columns[j])
        axes[0].legend(loc="upper left", fontsize="small")
        axes[0].set_title(f"validation: observed and forecast {h} step(s) ahead")
        axes[-1].set_xlabel("row of the series")
        return [save_figure(fig, os.path.join(out_dir, "forecast.png"))]

    def evaluate(self, model, batch_size=1024):
        # every column: a plain slice keeps the arrays' layout, and so the sums' order
        t = slice(None) if self.target == list(range(len(self.columns))) else self.target
        pred = _predict(model, self.val_x, batch_size)[:, t]
        true = self.val_y[:, t]
        se = sum(float(((pred[i:i + batch_size] - true[i:i + batch_size]) ** 2).sum())
                 for i in range(0, len(pred), batch_size))
        mse = se / true.size
        persist = float(((self.val_x[:, -1][:, t] - true) ** 2).mean())
        out = {"val_mse": mse, "persistence_mse": persist,
               "skill": 1.0 - mse / max(persist, 1e-300)}
        if self.config["data"] is not None:
            if self.season is not None:
                out["seasonal_mse"] = float(((self.val_seasonal[:, t] - true) ** 2).mean())
            out["val_rmse"] = float(np.sqrt((((pred - true) * self.std[t]) ** 2).mean()))
        return out

    def describe_metrics(self, m):
        c = self.config
        ratio = lambda base: base / max(m["val_mse"], 1e-300)  # noqa: E731
        if c["data"] is None:
            return (f"validation MSE {m['val_mse']:.3g} vs persistence "
                    f"{m['persistence_mse']:.3g} ({ratio(m['persistence_mse']):.1f}x lower; "
                    f"skill {m['skill']:.3f}) predicting {c['horizon']} steps "
                    f"({c['horizon'] * c['dt']:g} time units) ahead, standardised units")
        seas = (f", seasonal-naive (period {self.season}) {m['seasonal_mse']:.3g} "
                f"({ratio(m['seasonal_mse']):.1f}x)" if "seasonal_mse" in m
                else ", no seasonal period found")
        return (f"validation MSE {m['val_mse']:.3g} vs persistence {m['persistence_mse']:.3g} "
                f"({ratio(m['persistence_mse']):.1f}x lower){seas}, standardised units, "
                f"{len(self.val_x)} targets {c['horizon']} step(s) ahead; RMSE "
                f"{m['val_rmse']:.4g} in the data's units ({', '.join(c['target'])})")

    def generate(self, model, args, out=print):
        rng = np.random.default_rng(args.seed)
        idx = np.sort(rng.choice(len(self.val_x), size=min(args.num, len(self.val_x)),
                                 replace=False))
        pred = _predict(model, self.val_x[idx])
        t = self.target
        to_raw = lambda z: (z * self.std + self.mean)[t]  # noqa: E731
        names_ = ", ".join(self.columns[i] for i in t)
        fmt = lambda v: " ".join(f"{a:9.4g}" for a in v)  # noqa: E731
        w = max(10 * len(t), 14)
        out(f"{'last observed':>{w}} | {'true':>{w}} | {'predicted':>{w}} | max |error|: "
            f"persistence vs model   ({names_})")
        for k, i in enumerate(idx):
            last, true, p = to_raw(self.val_x[i, -1]), to_raw(self.val_y[i]), to_raw(pred[k])
            out(f"{fmt(last):>{w}} | {fmt(true):>{w}} | {fmt(p):>{w}} | "
                f"{np.abs(true - last).max():8.4g} vs {np.abs(true - p).max():8.4g}")

    @classmethod
    def predict(cls, model, config, args):
        """``nn-core predict``: the forecasts of every window of ``args.data`` (default:
        the training file), as :meth:`predict_file`; returns ``(header, rows, summary,
        preview)``: a line on what was forecast and the last rows, formatted."""
        if config["data"] is None:
            raise ValueError("predict needs a model trained with --data (this one was "
                             "trained on the generated Lorenz series)")
        data = recorded_data(config, args.data)
        header, rows = cls.predict_file(model, config, data)
        future = [r for r in rows if r[-1] == ""]
        summary = (f"{len(rows)} forecasts, {config['horizon']} step(s) ahead, of "
                   f"{', '.join(config['target'])} from {data}")
        preview = ["  " + ", ".join(
            f"{k}={v if v == '' or k == header[0] else f'{float(v):.6g}'}"
            for k, v in zip(header, r)) for r in rows[-min(len(rows), max(3, len(future))):]]
        return header, rows, summary, preview

    @classmethod
    def predict_file(cls, model, config, path):
        """Forecasts for every window of the series in ``path`` (same columns as the
        training data).

        Returns
        -------
        header : list of str
            The time column's name (``time_index`` if the file has none, or its time
            stamps are not regular), then each target column's forecast and
            ``<name>_observed``.
        rows : list of lists
            One per window: the time stamp of the step forecast (continued by
            :func:`~nn_core.datasets.files.extend_time` past the end of the file), or
            its 0-based row; the forecasts in the data's units; and the observed
            values where the file has them (else empty).
        """
        c = config
        if c["data"] is None:
            raise ValueError("predict needs a model trained with --data (this one was "
                             "trained on the generated Lorenz series)")
        table = _load(path, c, flag="--data")
        cols, values = table.names, table.values
        W, h, N = c["window"], c["horizon"], len(values)
        if N < W:
            raise ValueError(f"--data {path} has {N} rows; the model needs windows of {W}")
        mean, std = np.array(c["mean"]), np.array(c["std"])
        z = standardize(values, mean, std, cols, path)
        ends = window_ends(N + h, W, h)
        x = z[ends[:, None] + np.arange(1 - W, 1)[None, :]]
        t = [cols.index(n) for n in c["target"]]
        pred = (_predict(model, x) * std + mean)[:, t]
        times = None
        if table.time is not None:
            ahead = extend_time(table.time, h)
            times = None if ahead is None else table.time + ahead
        header = ([table.time_name] if times is not None else ["time_index"]) + \
            list(c["target"]) + [f"{n}_observed" for n in c["target"]]
        # 9 significant digits identify a float32 exactly; float64 as repr
        fmt = (lambda v: format(float(v), ".9g")) if model.dtype == np.float32 else \
            (lambda v: repr(float(v)))
        rows = []
        for e, p in zip(ends, pred):
            k = int(e) + h
            seen = [repr(float(v)) for v in values[k, t]] if k < N else [""] * len(t)
            rows.append([k if times is None else times[k]] + [fmt(v) for v in p] + seen)
        return header, rows


def _load(path, config, flag="--columns"):
    """The table of a run's file (or a newer one with its columns): the run's columns,
    gaps handled and time column taken as when it was trained."""
    return load_table(path, config["columns"], missing=config["missing"],
                      time_column=config["time_column"], flag=flag)


class _ColumnsMSE:
    """The mean squared error over some output ``columns`` (the ``--target`` ones): the
    other columns' gradient is zero."""

    def __init__(self, columns, dtype):
        self.columns, self.dtype = list(columns), dtype
        self.mse = MSELoss(dtype=dtype)
        self._shape = None

    def __call__(self, pred, target):
        self._shape = pred.shape
        return self.mse(pred[:, self.columns], target[:, self.columns])

    def backward(self):
        g = np.zeros(self._shape, self.dtype)
        g[:, self.columns] = self.mse.backward()[0]
        return g, None


@inference_mode()
def _predict(model, x, batch_size=1024):
    was = model.training
    model.eval()
    try:
        return np.concatenate([model(x[i:i + batch_size])
                               for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)
