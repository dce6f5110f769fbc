"""Recurrent regression and classification of sequences as scikit-learn estimators."""
from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils import check_array, check_consistent_length, check_random_state, \
    column_or_1d
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ..losses import CrossEntropyLoss, MSELoss
from ._base import RecurrentEstimator, blas_limited

__all__ = ["RecurrentRegressor", "RecurrentClassifier"]

_PARAMS = """
    Parameters
    ----------
    hidden_size : int, default 32
        ``H``, the recurrent state.
    cell : {"gru", "lstm", "rnn"}, default "gru"
    max_iter : int, default 200
        Most epochs (passes over the data) of :meth:`fit`.
    batch_size : int, default 32
    learning_rate_init : float, default 5e-3
        AdamW's learning rate (constant).
    weight_decay : float, default 0
        AdamW's decoupled weight decay.
    clip : float or None, default 1.0
        Global gradient-norm clip.
    shuffle : bool, default True
        A new batch order every epoch.
    tol : float, default 1e-4
        An epoch improves when the training loss falls (or, with ``early_stopping``, the
        validation score rises) by more than ``tol``.
    n_iter_no_change : int, default 10
        Stop after this many epochs in a row without improvement.
    early_stopping : "auto" or bool, default "auto"
        Hold out ``validation_fraction`` of the samples, stop on their score, and keep
        the weights of the best epoch.  ``"auto"``: on when :meth:`fit` gets from 20 to
        10,000 samples (``AUTO_EARLY_STOPPING_MAX``); a small network trained on the
        training loss alone fits a few hundred samples' noise long before ``max_iter``.
        Off for fewer (too few to hold out) and for more (every sample trains; stop on
        the training loss).
    validation_fraction : float, default 0.1
    standardize : bool, default True
        Centre and scale the inputs' features (over all real steps){targets} with the
        training data's statistics.
    dtype : {"float64", "float32"}, default "float64"
        Of the network (float32 is faster).
    random_state : None, int or RandomState
        Draws the weights, the batch order and the validation split.
    verbose : int, default 0
        > 0: a progress line per epoch (stderr).
    warm_start : bool, default False
        :meth:`fit` continues from the current weights (and optimizer state).
    blas_threads : int or None, default 1
        BLAS threads while fitting and predicting (restored afterwards); ``None`` leaves
        the process's setting.  These matrices are small, and extra BLAS threads mostly
        synchronise (see docs/guide/sklearn.md).
    bucket_by_length : bool, default False
        Batches of sequences of similar length (in a shuffled batch order): for a
        ragged ``X`` whose lengths vary widely.

    Inputs ``X``: a 3-D array ``[n, T, D]`` (``n`` sequences of ``T`` steps of ``D``
    features), a list of ``n`` arrays ``[T_i, D]`` (or ``[T_i]``) of different lengths
    (padded per batch, each sequence read to its own end), or a 2-D array ``[n, T]`` of
    univariate sequences (then, as for any estimator, ``n_features_in_ = T`` and
    ``predict`` needs the same ``T``; otherwise ``n_features_in_ = D`` and ``T`` may
    vary).  The network (:class:`~nn_core.sklearn.SequenceNet`) reads each sequence with
    the recurrent cell and maps the last state through a linear layer.

    Attributes
    ----------
    model_ : SequenceNet
        The trained nn_core module.
    n_features_in_, n_step_features_ : int
        See above; ``n_step_features_`` is ``D``.
    n_iter_ : int
        Epochs run.
    loss_curve_ : list of float
        The training loss of every epoch; ``loss_``, ``best_loss_`` its last and best.
    validation_scores_, best_validation_score_
        With ``early_stopping``.
"""


class RecurrentRegressor(RegressorMixin, RecurrentEstimator):
    __doc__ = ("""Regression of sequences with a recurrent network (scikit-learn API).
""" + _PARAMS.replace("{targets}", " and the targets") + """
    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.sklearn import RecurrentRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 12, 2))            # 200 sequences, 12 steps, 2 features
    >>> y = X[:, :, 0].sum(1) - X[:, -1, 1]
    >>> reg = RecurrentRegressor(hidden_size=16, max_iter=60, random_state=0).fit(X, y)
    >>> round(reg.score(X, y), 2) > 0.9
    True
    """)

    def _loss(self):
        return MSELoss(dtype=np.dtype(self.dtype).type)

    def _targets(self, y, n, reset):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be [n] or [n, k], got shape {y.shape}")
        check_consistent_length(np.empty(n), y)
        if reset:
            self._y_1d = y.ndim == 1
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
            y2 = y.reshape(n, -1)
            self.y_mean_ = y2.mean(0) if self.standardize else np.zeros(self.n_outputs_)
            scale = y2.std(0) if self.standardize else np.ones(self.n_outputs_)
            self.y_scale_ = np.where(scale > 0, scale, 1.0)
        elif (1 if y.ndim == 1 else y.shape[1]) != self.n_outputs_:
            raise ValueError(f"y has {1 if y.ndim == 1 else y.shape[1]} outputs, the model "
                             f"{self.n_outputs_}")
        return (y.reshape(n, -1) - self.y_mean_) / self.y_scale_

    def _val_score(self, val):
        (z, lengths), y = val.inputs, val.target
        return float(r2_score(y, self._forward(z, lengths)))

    @blas_limited
    def fit(self, X, y):
        """Train on sequences ``X`` and targets ``y [n]`` or ``[n, k]``; returns ``self``."""
        self._check_params()
        first = not (self.warm_start and hasattr(self, "model_"))
        x, lengths = self._sequences(X, reset=first)
        t = self._targets(y, len(x), reset=first)
        rs = check_random_state(self.random_state)
        z = self._scale_x(x, lengths, reset=first)
        if first:
            self._initialise(rs, self.n_outputs_)
        return self._fit_data(self._data(z, lengths, t), len(z), rs, self.max_iter, True)

    @blas_limited
    def partial_fit(self, X, y):
        """One epoch over ``(X, y)`` (the first call also sets up the model and the
        standardisation); returns ``self``."""
        first = not hasattr(self, "model_")
        if first:
            self._check_params()
        x, lengths = self._sequences(X, reset=first)
        t = self._targets(y, len(x), reset=first)
        rs = check_random_state(self.random_state)
        z = self._scale_x(x, lengths, reset=first)
        if first:
            self._initialise(rs, self.n_outputs_)
        return self._fit_data(self._data(z, lengths, t), len(z), rs, 1, False)

    @blas_limited
    def predict(self, X):
        """Predictions ``[n]`` (or ``[n, k]`` for 2-D targets), in the targets' units."""
        check_is_fitted(self)
        x, lengths = self._sequences(X, reset=False)
        out = self._forward(self._scale_x(x, lengths, reset=False), lengths)
        out = out * self.y_scale_ + self.y_mean_
        return out[:, 0] if self._y_1d else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class RecurrentClassifier(ClassifierMixin, RecurrentEstimator):
    __doc__ = ("""Classification of sequences with a recurrent network (scikit-learn API).

    Trained on the cross-entropy of a softmax over the classes (``classes_``, any
    labels).
""" + _PARAMS.replace("{targets}", "") + """
    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.sklearn import RecurrentClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.standard_normal(int(n)) for n in rng.integers(3, 20, 300)]  # lengths vary
    >>> y = np.array(["up" if s.sum() > 0 else "down" for s in X])
    >>> clf = RecurrentClassifier(hidden_size=16, max_iter=40, random_state=0).fit(X, y)
    >>> clf.classes_.tolist(), clf.score(X, y) > 0.9
    (['down', 'up'], True)
    """)

    def _loss(self):
        return CrossEntropyLoss(dtype=np.dtype(self.dtype).type)

    def _labels(self, y, n):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        y = column_or_1d(y, warn=True)
        check_consistent_length(np.empty(n), y)
        check_classification_targets(y)
        return y

    def _encode(self, y):
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        bad = self.classes_[idx] != y
        if bad.any():
            raise ValueError(f"y holds labels that are not in classes_ {self.classes_.tolist()}: "
                             f"{np.unique(np.asarray(y)[bad]).tolist()[:5]}")
        return idx

    def _val_score(self, val):
        (z, lengths), y = val.inputs, val.target
        return float((self._forward(z, lengths).argmax(1) == y).mean())

    @blas_limited
    def fit(self, X, y):
        """Train on sequences ``X`` and labels ``y [n]``; returns ``self``."""
        self._check_params()
        first = not (self.warm_start and hasattr(self, "model_"))
        x, lengths = self._sequences(X, reset=first)
        y = self._labels(y, len(x))
        if first:
            self.classes_ = np.unique(y)
        rs = check_random_state(self.random_state)
        z = self._scale_x(x, lengths, reset=first)
        if first:
            self._initialise(rs, len(self.classes_))
        return self._fit_data(self._data(z, lengths, self._encode(y)), len(z), rs,
                              self.max_iter, True)

    @blas_limited
    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``; the first call needs ``classes`` (every label
        that will ever occur); returns ``self``."""
        first = not hasattr(self, "model_")
        if first:
            self._check_params()
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self.classes_ = np.unique(np.asarray(classes))
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes {np.unique(classes).tolist()} differ from classes_ "
                             f"{self.classes_.tolist()} of the first call")
        x, lengths = self._sequences(X, reset=first)
        y = self._labels(y, len(x))
        rs = check_random_state(self.random_state)
        z = self._scale_x(x, lengths, reset=first)
        if first:
            self._initialise(rs, len(self.classes_))
        return self._fit_data(self._data(z, lengths, self._encode(y)), len(z), rs, 1, False)

    @blas_limited
    def predict_proba(self, X):
        """Class probabilities ``[n, n_classes]`` (columns in ``classes_`` order)."""
        check_is_fitted(self)
        x, lengths = self._sequences(X, reset=False)
        logits = self._forward(self._scale_x(x, lengths, reset=False), lengths)
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    @blas_limited
    def predict(self, X):
        """The most probable class of each sequence."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags
