"""nn_core.datasets.series: the seasonal period of generated series with known periods,
trends, drifts and noise; series with no season."""
import math

import numpy as np
import pytest

from nn_core.datasets.series import seasonal_period

KINDS = {"monthly": (12, 20 * 12), "weekly": (52, 10 * 52), "daily": (7, 365),
         "hourly": (24, 60 * 24)}


def _seasonal(period, n, seed, noise=0.5, drift=0.1, rise=0.2):
    """A season of amplitude about 2 with a second harmonic, a trend rising ``rise``
    per period, a random-walk drift and white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    season = 2 * np.sin(2 * np.pi * t / period) + 0.8 * np.cos(4 * np.pi * t / period + 1)
    walk = np.cumsum(rng.standard_normal(n)) * drift * math.sqrt(12 / period)
    return (rise * t / period + season + walk + noise * rng.standard_normal(n))[:, None]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", KINDS)
def test_known_periods_with_trend_drift_and_noise(kind, seed):
    period, n = KINDS[kind]
    assert seasonal_period(_seasonal(period, n, seed)) == period
    steep = _seasonal(period, n, seed, noise=0.3, drift=0.2, rise=1.2)
    assert seasonal_period(steep) == period
    assert seasonal_period(steep[:, 0]) == period                         # [N] works too
    noisy = _seasonal(period, n, seed, noise=1.0, drift=0.0, rise=0.0)
    assert seasonal_period(noisy) == period                 # a broad, noisy peak's top


def test_quadratic_trend_weekly():
    """A weekly record rising faster and faster (like atmospheric CO2) with a yearly
    cycle: the trend must not move the period to a nearby lag."""
    rng = np.random.default_rng(3)
    t = np.arange(40 * 52) / 52
    y = 330 + 1.2 * t + 0.012 * t ** 2 + 3 * np.sin(2 * np.pi * t) \
        + 0.8 * np.cos(4 * np.pi * t) + 0.4 * rng.standard_normal(len(t))
    assert seasonal_period(y[:, None]) == 52


@pytest.mark.parametrize("seed", range(5))
def test_slow_variation_gives_the_fundamental(seed):
    """A monthly season on a slow AR(1) swing (like sea-surface temperatures): its
    multiples 24, 36, 48 peak about as high as 12."""
    rng = np.random.default_rng(seed)
    n = 70 * 12
    slow = np.zeros(n)
    for i in range(1, n):
        slow[i] = 0.95 * slow[i - 1] + 0.3 * rng.standard_normal()
    y = 27 + 1.2 * np.sin(2 * np.pi * np.arange(n) / 12) + slow + 0.1 * rng.standard_normal(n)
    assert seasonal_period(y[:, None]) == 12


def test_several_columns_share_the_period(rng):
    a = _seasonal(12, 240, 1)
    b = _seasonal(12, 240, 2, noise=1.0)
    assert seasonal_period(np.hstack([a, 3 * b + 10])) == 12


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [100, 300, 1000])
def test_no_season_gives_none(seed, n):
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n)
    assert seasonal_period(e[:, None]) is None                                # white noise
    assert seasonal_period((0.05 * np.arange(n) + e)[:, None]) is None       # trend + noise
    assert seasonal_period(np.cumsum(e)[:, None]) is None                    # random walk
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = 0.8 * ar[i - 1] + e[i]
    assert seasonal_period(ar[:, None]) is None                               # AR(1)
    assert seasonal_period(np.full((n, 1), 4.0)) is None                      # constant


def test_short_series_and_arguments():
    t = np.arange(200)
    y = np.sin(2 * np.pi * t / 11)[:, None]
    assert seasonal_period(y) == 11
    assert seasonal_period(y, max_lag=8) is None                 # 11 is beyond max_lag
    assert seasonal_period(y, min_acf=0.99) is None
    assert seasonal_period(y[:8]) is None                        # too short to tell


def test_column_scale_and_standardize(rng):
    from nn_core.datasets.series import column_scale, standardize
    x = rng.standard_normal((50, 2)) * [3.0, 0.5] + [10.0, -2.0]
    x[:, 1] = 7.0                                            # constant: std 1
    mean, std = column_scale(x, ["a", "b"])
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(std, [x[:, 0].std(), 1.0])
    np.testing.assert_allclose(standardize(x, mean, std, ["a", "b"]), (x - mean) / std)
    huge = x.copy()
    huge[17, 1] = 1.5e308
    huge[18, 1] = -1.6e308
    with pytest.raises(ValueError, match=r"d.csv: column 'b' cannot be standardised: its "
                                         r"values reach -1.6e\+308 \(data row 19\) and their "
                                         r"spread overflows"):
        column_scale(huge, ["a", "b"], "d.csv")
    later = x.copy()
    later[3, 0] = -1e308
    with pytest.raises(ValueError, match=r"new.csv data row 4, column 'a': -1e\+308 overflows "
                                         r"when standardised"):
        standardize(later, mean, np.array([1e-10, 1.0]), ["a", "b"], "new.csv")
