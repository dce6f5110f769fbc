"""The Lorenz system as a time series, and the windows a forecaster learns from
(the ``forecast`` task's data).

The Lorenz (1963) system ``x' = s(y - x), y' = x(r - z) - y, z' = xy - bz`` (by default
``s=10, r=28, b=8/3``) is integrated with :func:`scipy.integrate.solve_ivp` (DOP853,
``rtol = atol = 1e-8``) from a random start near ``(1, 1, 20)``; the samples begin after
a burn-in, once the trajectory is on the attractor.

Examples
--------
>>> series = lorenz_series(200, seed=0)
>>> series.shape
(200, 3)
>>> x, y = sliding_windows(series, window=8, horizon=5)
>>> x.shape, y.shape
((188, 8, 3), (188, 3))
>>> bool((y[0] == series[8 - 1 + 5]).all())
True

Reference: E. N. Lorenz, "Deterministic nonperiodic flow", J. Atmospheric Sciences
20(2), 1963.
"""
from __future__ import annotations

import numpy as np

__all__ = ["lorenz_series", "sliding_windows"]


def lorenz_series(n, dt=0.02, burn_in=20.0, seed=0, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    """``[n, 3]`` samples ``(x, y, z)`` of the Lorenz system every ``dt`` time units.

    Parameters
    ----------
    n : int
        Number of samples.
    dt : float
        Sampling interval.
    burn_in : float
        Time integrated before the first sample.
    seed : int
        Seeds the perturbation of the start ``(1, 1, 20) + N(0, I)``.
    sigma, rho, beta : float
        The system's ``s, r, b``.

    Returns
    -------
    ndarray, float64, ``[n, 3]``
    """
    from scipy.integrate import solve_ivp

    def f(_t, s):
        x, y, z = s
        return [sigma * (y - x), x * (rho - z) - y, x * y - beta * z]

    rng = np.random.default_rng(seed)
    x0 = np.array([1.0, 1.0, 20.0]) + rng.standard_normal(3)
    t_eval = burn_in + dt * np.arange(n)
    sol = solve_ivp(f, (0.0, t_eval[-1]), x0, method="DOP853", t_eval=t_eval,
                    rtol=1e-8, atol=1e-8)
    if not sol.success:  # pragma: no cover - DOP853 on Lorenz does not fail
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return sol.y.T.copy()


def sliding_windows(series, window, horizon):
    """Every input window of a series and the sample ``horizon`` steps after it.

    Parameters
    ----------
    series : ndarray ``[N, D]``
    window : int
        ``W``, steps in each input.
    horizon : int
        The target of the window ending at step ``t`` is ``series[t + horizon]``.

    Returns
    -------
    x : ndarray ``[n, W, D]``
        ``x[i] = series[i : i + W]``, with ``n = N - W - horizon + 1``.
    y : ndarray ``[n, D]``
        ``y[i] = series[i + W - 1 + horizon]``.
    """
    n = len(series) - window - horizon + 1
    idx = np.arange(n)[:, None] + np.arange(window)[None, :]
    return series[idx], series[np.arange(n) + window - 1 + horizon]
