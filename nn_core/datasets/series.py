"""Windows of a time series split in time, its seasonal period, and the naive forecasts
a model must beat (``nn-core train forecast --data``).

Examples
--------
>>> import numpy as np
>>> z = np.arange(20.0)[:, None]
>>> (xt, yt), (xv, yv, ends) = chronological_windows(z, window=4, horizon=2, split=15)
>>> xt.shape, float(yt[-1, 0]), xv.shape, yv[:, 0].tolist()
((10, 4, 1), 14.0, (5, 4, 1), [15.0, 16.0, 17.0, 18.0, 19.0])
>>> xv[0, :, 0].tolist()          # a validation input may reach back into the training rows
[10.0, 11.0, 12.0, 13.0]
>>> t = np.arange(200)
>>> seasonal_period(np.sin(2 * np.pi * t / 11)[:, None])
11
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["chronological_windows", "window_ends", "seasonal_period", "seasonal_naive"]


def window_ends(n, window, horizon, first_target=0, last_target=None):
    """Indices ``e`` of the windows ``z[e - window + 1 : e + 1]`` whose target
    ``e + horizon`` lies in ``[first_target, last_target)`` (default: ``n``)."""
    last_target = n if last_target is None else last_target
    lo = max(window - 1, first_target - horizon)
    return np.arange(lo, last_target - horizon)


def _cut(z, ends, window, horizon):
    idx = ends[:, None] + np.arange(1 - window, 1)[None, :]
    return z[idx], z[ends + horizon]


def chronological_windows(z, window, horizon, split):
    """Training windows (inputs and targets before row ``split``) and validation windows
    (targets from ``split`` on; their inputs may use the rows before ``split``, which are
    known when the forecast is made).

    Parameters
    ----------
    z : ndarray ``[N, D]``
    window, horizon : int
        ``W`` input steps; the target of the window ending at ``e`` is ``z[e + horizon]``.
    split : int
        The first validation row.

    Returns
    -------
    (x_train ``[n, W, D]``, y_train ``[n, D]``), (x_val, y_val, ends_val)
    """
    n = len(z)
    tr = window_ends(n, window, horizon, 0, split)
    va = window_ends(n, window, horizon, split, n)
    return _cut(z, tr, window, horizon), (*_cut(z, va, window, horizon), va)


def seasonal_period(y, max_lag=None, min_acf=None):
    """The seasonal period of ``y [N, D]``: the lag (>= 2) of the highest local maximum
    of the autocorrelation averaged over the columns, or ``None`` when no local maximum
    exceeds ``min_acf`` (default ``max(0.1, 3 / sqrt(N))``, well above the
    autocorrelations of white noise).  ``max_lag`` defaults to ``N // 3``."""
    y = np.asarray(y, np.float64)
    min_acf = max(0.1, 3 / math.sqrt(max(len(y), 1))) if min_acf is None else min_acf
    y = y - y.mean(axis=0)
    denom = (y * y).sum(axis=0)
    denom[denom == 0] = np.inf
    max_lag = min(len(y) // 3 if max_lag is None else max_lag, len(y) - 1)
    if max_lag < 3:
        return None
    acf = np.array([((y[:-k] * y[k:]).sum(axis=0) / denom).mean()
                    for k in range(1, max_lag + 1)])
    best, period = min_acf, None
    for k in range(2, max_lag):                   # acf[k - 1] is lag k
        a = acf[k - 1]
        if a > acf[k - 2] and a >= acf[k] and a > best:
            best, period = a, k
    return period


def seasonal_naive(z, ends, horizon, period):
    """The forecast of ``z[e + horizon]`` that repeats the last observed value of the
    same season: ``z[e + horizon - period * ceil(horizon / period)]``."""
    back = period * math.ceil(horizon / period)
    return z[np.asarray(ends) + horizon - back]
