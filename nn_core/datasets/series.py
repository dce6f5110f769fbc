"""Windows of a time series split in time, its seasonal period, the naive forecasts a
model must beat, and its standardisation (``nn-core train forecast --data``).

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

__all__ = ["chronological_windows", "window_ends", "seasonal_period", "seasonal_naive",
           "column_scale", "standardize"]


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


def _autocorrelation(x, max_lag):
    """The autocorrelation of each column of ``x [N, D]`` at lags ``0..max_lag``
    (biased estimator, through the FFT), averaged over the columns."""
    x = x - x.mean(axis=0)
    n = len(x)
    size = 1 << (2 * n - 1).bit_length()              # zero-padded: no circular wrap
    spec = np.fft.rfft(x, size, axis=0)
    r = np.fft.irfft(spec * np.conj(spec), size, axis=0)[:max_lag + 1]
    var = r[0].copy()
    var[var <= 0] = np.inf                            # a constant column counts as 0
    return (r / var).mean(axis=1)


def _detrend(y):
    """``y [N, D]`` minus each column's least-squares straight line."""
    t = np.linspace(-1.0, 1.0, len(y))
    basis = np.stack([np.ones_like(t), t], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return y - basis @ coef


def seasonal_period(y, max_lag=None, min_acf=None):
    """The seasonal period of ``y [N, D]`` (or ``[N]``), or ``None`` when it has none.

    Parameters
    ----------
    y : array_like ``[N, D]`` or ``[N]``
        The series, one row per time step (finite values).
    max_lag : int, optional
        The longest period considered (default ``N // 3``: three cycles at least).
    min_acf : float, optional
        The autocorrelation a peak must exceed (default: see Notes).

    Returns
    -------
    int >= 2, or None

    Notes
    -----
    1. Each column loses its least-squares straight line (a trend tilts the
       autocorrelation, moving its peaks towards shorter lags), and ``a[k]``, the
       autocorrelation at lag ``k`` averaged over the columns, is computed.
    2. A *peak* is a lag ``k >= 2`` with ``a[k-1] < a[k] >= a[k+1]`` that stands out:
       ``a[k] > min_acf`` and ``a[k] - min(a[1..k-1]) > min_acf`` (a bump on the slow
       decay of a drifting series is no season).  The default ``min_acf`` is
       ``max(0.1, 3 * sqrt((1 + 2 * sum_{j<k0} a[j]**2) / N))``, three of Bartlett's
       standard errors of an autocorrelation under short-memory noise, ``k0`` being
       the first lag where ``a`` is not positive (white noise: ``3 / sqrt(N)``).
    3. Of the peaks, the *fundamental* is returned: the smallest lag whose peak is
       close to the highest one, ``a[k] >= best - max(0.1 * best, 2 / sqrt(N))``.
       A season's multiples ``2p, 3p, ...`` peak about as high as ``p``, and higher
       by chance or drift; this rule returns ``p``.
    4. The fundamental ``k`` is refined to the lag ``p`` within ``max(1, k // 10)`` of
       it (``2 <= p <= max_lag``) with the highest mean of ``a`` at its multiples
       ``p, 2p, ... <= max_lag``: a long period's peak is broad, and noise or a drift
       moves its top by a lag or two, but not the comb of its multiples.

    Costs O(N log N) (the autocorrelation through the FFT).
    """
    y = np.asarray(y, np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n = len(y)
    max_lag = min(n // 3 if max_lag is None else max_lag, n - 2)
    if max_lag < 3:
        return None
    a = _autocorrelation(_detrend(y), max_lag)
    if min_acf is None:
        nonpositive = np.flatnonzero(a[1:] <= 0)
        k0 = nonpositive[0] + 1 if len(nonpositive) else max_lag + 1
        min_acf = max(0.1, 3 * math.sqrt((1 + 2 * float((a[1:k0] ** 2).sum())) / n))
    k = np.arange(2, max_lag)
    lowest_before = np.minimum.accumulate(a[1:])[k - 2]          # min a[1..k-1]
    peak = ((a[k] > a[k - 1]) & (a[k] >= a[k + 1]) & (a[k] > min_acf)
            & (a[k] - lowest_before > min_acf))
    lags = k[peak]
    if not len(lags):
        return None
    best = a[lags].max()
    close = a[lags] >= best - max(0.1 * best, 2 / math.sqrt(n))
    k = int(lags[close][0])
    near = range(max(2, k - max(1, k // 10)), min(max_lag, k + max(1, k // 10)) + 1)
    return max(near, key=lambda p: a[p:max_lag + 1:p].mean())


def seasonal_naive(z, ends, horizon, period):
    """The forecast of ``z[e + horizon]`` that repeats the last observed value of the
    same season: ``z[e + horizon - period * ceil(horizon / period)]``."""
    back = period * math.ceil(horizon / period)
    return z[np.asarray(ends) + horizon - back]


def column_scale(x, names, source="the data"):
    """The mean and standard deviation of each column of ``x [N, D]`` (a zero standard
    deviation becomes 1), for :func:`standardize`.

    Raises
    ------
    ValueError
        A column's mean or spread overflows (values near the float64 limit); the
        message names ``source``, the column and the row of its largest value.
    """
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = x.mean(axis=0), x.std(axis=0)
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        j = int(np.argmax(bad))
        r = int(np.argmax(np.abs(x[:, j])))
        what = "mean" if not math.isfinite(mean[j]) else "spread"
        raise ValueError(f"{source}: column {names[j]!r} cannot be standardised: its values "
                         f"reach {x[r, j]:g} (data row {r + 1}) and their {what} overflows; "
                         "rescale the column")
    return mean, np.where(std > 0, std, 1.0)


def standardize(x, mean, std, names, source="the data"):
    """``(x - mean) / std`` for ``x [N, D]``, checked to be finite.

    Raises
    ------
    ValueError
        A value overflows when standardised; the message names ``source``, the data
        row (1-based) and the column.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        z = (np.asarray(x, np.float64) - mean) / std
    bad = np.argwhere(~np.isfinite(z))
    if len(bad):
        r, j = (int(v) for v in bad[0])
        raise ValueError(f"{source} data row {r + 1}, column {names[j]!r}: {x[r, j]:g} "
                         f"overflows when standardised (mean {mean[j]:g}, std {std[j]:g}); "
                         "rescale the column")
    return z
