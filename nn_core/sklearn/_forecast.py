"""A recurrent forecaster of a (multivariate) series as a scikit-learn estimator."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._validation import check_int
from ..datasets.lorenz import sliding_windows
from ..losses import MSELoss
from ..models.forecaster import Forecaster
from ..module import inference_mode
from ..optim import AdamW
from ..training.data import ArrayDataset
from ._base import RecurrentEstimator, blas_limited

__all__ = ["RecurrentForecaster"]


class RecurrentForecaster(RecurrentEstimator):
    """Forecast a series ``horizon`` steps ahead from its last ``window`` steps
    (scikit-learn API).

    ``X [N, D]`` is one series, a row per time step in order (a univariate series is
    ``[N, 1]``).  :meth:`fit` standardises the columns with the training rows'
    statistics and trains a :class:`~nn_core.models.Forecaster` (a recurrent cell whose
    read-out is added to the last observation, so it starts as persistence) on every
    window of ``X``; :meth:`predict` returns, for every row ``t``, the forecast of row
    ``t + horizon`` (the first rows' windows are padded with the first row).  ``y`` is
    ignored, as for unsupervised estimators, so the estimator works with
    ``GridSearchCV(..., cv=TimeSeriesSplit())`` and in a ``Pipeline``.

    Parameters
    ----------
    window : int, default 16
        Steps each forecast reads.
    horizon : int, default 1
        How far ahead the forecast is.
    hidden_size, cell, max_iter, batch_size, learning_rate_init, weight_decay, clip,
    shuffle, tol, n_iter_no_change, early_stopping, validation_fraction, standardize,
    dtype, random_state, verbose, warm_start, blas_threads
        As for :class:`RecurrentRegressor`; with ``early_stopping`` the *last*
        ``validation_fraction`` of the windows (in time) validate.

    Attributes
    ----------
    model_ : Forecaster
    n_features_in_ : int
        ``D``.
    mean_, scale_ : ndarray ``[D]``
    n_iter_, loss_curve_, loss_, best_loss_
        As for :class:`RecurrentRegressor`.

    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.sklearn import RecurrentForecaster
    >>> t = np.arange(400)
    >>> X = np.stack([np.sin(t / 6), np.cos(t / 6)], 1)
    >>> fc = RecurrentForecaster(window=12, horizon=3, max_iter=30, random_state=0).fit(X[:300])
    >>> fc.predict(X[300:]).shape, fc.score(X[300:]) > 0.95
    ((100, 2), True)
    """

    _shuffle_split = False        # the validation windows are the last ones in time

    def __init__(self, window=16, horizon=1, hidden_size=32, cell="gru", max_iter=200,
                 batch_size=32, learning_rate_init=5e-3, weight_decay=0.0, clip=1.0,
                 shuffle=True, tol=1e-4, n_iter_no_change=10, early_stopping="auto",
                 validation_fraction=0.1, standardize=True, dtype="float64",
                 random_state=None, verbose=0, warm_start=False, blas_threads=1):
        super().__init__(hidden_size=hidden_size, cell=cell, max_iter=max_iter,
                         batch_size=batch_size, learning_rate_init=learning_rate_init,
                         weight_decay=weight_decay, clip=clip, shuffle=shuffle, tol=tol,
                         n_iter_no_change=n_iter_no_change, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, standardize=standardize,
                         dtype=dtype, random_state=random_state, verbose=verbose,
                         warm_start=warm_start, blas_threads=blas_threads)
        self.window = window
        self.horizon = horizon

    def _check_params(self):
        super()._check_params()
        for name in ("window", "horizon"):
            check_int(getattr(self, name), name, 1)

    def _loss(self):
        return MSELoss(dtype=np.dtype(self.dtype).type)

    def _initialise(self, rs, output_size):
        self.model_ = Forecaster(self.n_features_in_, self.hidden_size, self.cell,
                                 dtype=np.dtype(self.dtype).type, rng=self._seed(rs))
        self._optimizer = AdamW(self.model_, lr=self.learning_rate_init,
                                weight_decay=self.weight_decay)
        self.n_iter_ = 0
        self.loss_curve_ = []

    def _series(self, X, reset):
        X = validate_data(self, X, reset=reset, dtype=np.float64)
        if reset:
            self.mean_ = X.mean(0) if self.standardize else np.zeros(X.shape[1])
            scale = X.std(0) if self.standardize else np.ones(X.shape[1])
            self.scale_ = np.where(scale > 0, scale, 1.0)
        return X, (X - self.mean_) / self.scale_

    def _windows(self, z):
        W, h = self.window, self.horizon
        if len(z) < W + h:
            raise ValueError(f"{type(self).__name__} needs at least window + horizon = {W + h} "
                             f"rows (time steps) to train, got {len(z)} sample(s)")
        x, y = sliding_windows(z, W, h)
        return ArrayDataset(x, y)

    def _val_score(self, val):
        return float(r2_score(val.target, self._forecast(val.inputs[0])))

    @inference_mode()
    def _forecast(self, windows, batch_size=1024):
        return np.concatenate([self.model_(windows[i:i + batch_size])
                               for i in range(0, len(windows), batch_size)]).astype(np.float64)

    @blas_limited
    def fit(self, X, y=None):
        """Train on the series ``X [N, D]`` (``y`` is ignored); returns ``self``."""
        self._check_params()
        first = not (self.warm_start and hasattr(self, "model_"))
        _, z = self._series(X, reset=first)
        data = self._windows(z)
        rs = check_random_state(self.random_state)
        if first:
            self._initialise(rs, None)
        return self._fit_data(data, len(data), rs, self.max_iter, True)

    @blas_limited
    def partial_fit(self, X, y=None):
        """One epoch over the windows of ``X`` (a stretch of the series); returns
        ``self``."""
        first = not hasattr(self, "model_")
        if first:
            self._check_params()
        _, z = self._series(X, reset=first)
        data = self._windows(z)
        rs = check_random_state(self.random_state)
        if first:
            self._initialise(rs, None)
        return self._fit_data(data, len(data), rs, 1, False)

    @blas_limited
    def predict(self, X):
        """``[N, D]``: row ``t`` forecasts row ``t + horizon`` of the series ``X`` from
        rows ``t - window + 1 .. t`` (before the first row: the first row repeated)."""
        check_is_fitted(self)
        _, z = self._series(X, reset=False)
        W = self.window
        padded = np.concatenate([np.repeat(z[:1], W - 1, axis=0), z])
        windows = padded[np.arange(len(z))[:, None] + np.arange(W)[None, :]]
        return self._forecast(windows) * self.scale_ + self.mean_

    @blas_limited
    def score(self, X, y=None):
        """R² of the forecasts of ``X``'s own rows ``horizon .. N - 1`` (averaged over
        the columns); ``y`` is ignored."""
        pred = self.predict(X)
        h = self.horizon
        if len(pred) <= h:
            raise ValueError(f"score needs more than horizon = {h} rows, got {len(pred)}")
        return float(r2_score(np.asarray(X, np.float64)[h:], pred[:-h]))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        tags.input_tags.three_d_array = False
        return tags
