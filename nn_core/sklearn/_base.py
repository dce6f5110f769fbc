"""What the estimators share: parameters, input checks, standardisation, and training on
:class:`nn_core.training.Trainer` with scikit-learn's stopping rules."""
from __future__ import annotations

import functools
import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

from .._parallel import limit_threads
from .._validation import check_choice, check_int, check_real
from ..models._common import CELLS
from ..optim import AdamW
from ..training import EarlyStopping, Trainer, TrainingInterrupted
from ..training.data import ArrayDataset

__all__ = ["RecurrentEstimator", "blas_limited", "AUTO_EARLY_STOPPING_MAX"]

#: ``early_stopping="auto"`` holds out a validation set for at most this many samples
AUTO_EARLY_STOPPING_MAX = 10_000


def blas_limited(method):
    """Run ``method`` with BLAS limited to ``self.blas_threads`` threads (``None``: as
    the process has it).  These networks' matrices are small: extra BLAS threads mostly
    synchronise, and on a busy machine they can make training many times slower."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        n = self.blas_threads
        if n is None:
            return method(self, *args, **kwargs)
        with limit_threads(check_int(n, "blas_threads", 1)):
            return method(self, *args, **kwargs)
    return wrapper


def _is_ragged(X):
    """A list of sequences of different lengths (not one rectangular array)."""
    if not isinstance(X, (list, tuple)) or not X:
        return False
    if not all(isinstance(x, (list, tuple, np.ndarray)) for x in X):
        return False
    return len({np.shape(x)[:1] for x in X}) > 1


class RecurrentEstimator(BaseEstimator):
    """Base class of the recurrent estimators (see :class:`RecurrentRegressor` for the
    parameters).  Subclasses define ``_output_size``, ``_loss``, ``_encode_y`` and the
    public methods."""

    def __init__(self, hidden_size=32, cell="gru", max_iter=200, batch_size=32,
                 learning_rate_init=5e-3, weight_decay=0.0, clip=1.0, shuffle=True, tol=1e-4,
                 n_iter_no_change=10, early_stopping="auto", validation_fraction=0.1,
                 standardize=True, dtype="float64", random_state=None, verbose=0,
                 warm_start=False, blas_threads=1, bucket_by_length=False):
        self.hidden_size = hidden_size
        self.cell = cell
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.weight_decay = weight_decay
        self.clip = clip
        self.shuffle = shuffle
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.standardize = standardize
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.blas_threads = blas_threads
        self.bucket_by_length = bucket_by_length

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        for name in ("hidden_size", "max_iter", "batch_size", "n_iter_no_change"):
            check_int(getattr(self, name), name, 1)
        check_real(self.learning_rate_init, "learning_rate_init", 0.0, lo_open=True)
        check_real(self.weight_decay, "weight_decay", 0.0)
        check_real(self.tol, "tol", 0.0)
        check_real(self.validation_fraction, "validation_fraction", 0.0, 1.0, lo_open=True,
                   hi_open=True)
        if self.clip is not None:
            check_real(self.clip, "clip", 0.0, lo_open=True)
        check_choice(self.cell, "cell", CELLS)
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            check_choice(self.early_stopping, "early_stopping", ("auto", True, False))
        check_choice(np.dtype(self.dtype).name, "dtype", ("float32", "float64"))

    def _seed(self, rs):
        return int(rs.randint(np.iinfo(np.int32).max))

    # ------------------------------------------------------------ inputs
    def _sequences(self, X, reset):
        """``(x [n, T, D] float64, lengths [n])``: 2-D ``X [n, T]`` is ``n`` univariate
        sequences (its ``n_features_in_`` is ``T``, as for any estimator); 3-D ``X [n, T,
        D]`` or a list of ``[T_i, D]`` (or ``[T_i]``) arrays has ``n_features_in_ = D``."""
        if _is_ragged(X):
            seqs = []
            for i, s in enumerate(X):
                a = check_array(s, ensure_2d=False, dtype=np.float64,
                                input_name=f"X[{i}]", ensure_min_samples=1)
                a = a[:, None] if a.ndim == 1 else a
                if a.ndim != 2:
                    raise ValueError(f"X[{i}] must be a [T] or [T, D] sequence, got shape "
                                     f"{a.shape}")
                seqs.append(a)
            D = {a.shape[1] for a in seqs}
            if len(D) != 1:
                raise ValueError(f"every sequence of X needs the same number of features per "
                                 f"step, got {sorted(D)}")
            self._check_steps(D.pop(), reset, ragged=True)
            lengths = np.array([len(a) for a in seqs])
            x = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1]))
            for i, a in enumerate(seqs):
                x[i, :len(a)] = a
            return x, lengths
        ndim = getattr(X, "ndim", None)
        if ndim is None:                           # lists, and objects with __array__
            ndim = np.asarray(X).ndim
        if ndim == 3:
            x = check_array(X, allow_nd=True, dtype=np.float64, ensure_min_features=1)
            self._check_steps(x.shape[2], reset, ragged=False)
        else:
            x = validate_data(self, X, reset=reset, dtype=np.float64)[:, :, None]
            if reset:
                self.n_step_features_ = 1
            elif self.n_step_features_ != 1:
                raise ValueError(f"X has 1 feature per step, but {type(self).__name__} is "
                                 f"expecting {self.n_step_features_} features per step as "
                                 "input")
        return x, np.full(len(x), x.shape[1])

    def _check_steps(self, D, reset, ragged):
        if reset:
            self.n_features_in_ = self.n_step_features_ = D
        elif D != self.n_step_features_:
            raise ValueError(f"X has {D} features per step, but {type(self).__name__} is "
                             f"expecting {self.n_step_features_} features per step as input")

    def _scale_x(self, x, lengths, reset):
        valid = np.arange(x.shape[1])[None, :] < lengths[:, None]          # (n, T)
        if reset:
            steps = x[valid]
            self.x_mean_ = steps.mean(0) if self.standardize else np.zeros(x.shape[2])
            scale = steps.std(0) if self.standardize else np.ones(x.shape[2])
            self.x_scale_ = np.where(scale > 0, scale, 1.0)
        z = (x - self.x_mean_) / self.x_scale_
        z[~valid] = 0.0
        return z

    # ------------------------------------------------------------ training
    def _trainer(self, callbacks=()):
        return Trainer(self.model_, self._loss(), self._optimizer, clip=self.clip,
                       callbacks=callbacks, verbose=int(self.verbose > 0),
                       log=lambda msg: None, metrics=self._metrics())

    def _metrics(self):
        return ()

    def _initialise(self, rs, output_size):
        from ._net import SequenceNet

        dtype = np.dtype(self.dtype).type
        self.model_ = SequenceNet(self.n_step_features_, self.hidden_size, output_size,
                                  self.cell, dtype=dtype, rng=self._seed(rs))
        self._optimizer = AdamW(self.model_, lr=self.learning_rate_init,
                                weight_decay=self.weight_decay)
        self.n_iter_ = 0
        self.loss_curve_ = []

    def _data(self, z, lengths, y):
        return ArrayDataset((z, lengths), y, lengths=lengths)

    def _fit_data(self, data, n, rs, epochs, stopping, monitor="val_score"):
        """Train on ``data`` (a dataset of ``n`` samples) for up to ``epochs`` epochs, with
        scikit-learn's stopping rule when ``stopping``; updates ``n_iter_``,
        ``loss_curve_`` and the validation record."""
        val = None
        if stopping and self._early_stopping(n):
            n_val = max(1, int(round(self.validation_fraction * n)))
            if n - n_val < 1:
                raise ValueError(f"early_stopping needs at least 2 samples, got {n} sample")
            order = rs.permutation(n) if self._shuffle_split else np.arange(n)
            val_idx, tr_idx = np.sort(order[n - n_val:]), np.sort(order[:n - n_val])
            data, val = data.subset(tr_idx), data.subset(val_idx)
        callbacks = []
        if stopping:
            # no improvement by more than tol for n_iter_no_change epochs in a row
            callbacks.append(EarlyStopping(
                monitor=monitor if val is not None else "train_loss",
                min_delta=self.tol, patience=self.n_iter_no_change,
                restore_best_weights=val is not None))
        trainer = self._trainer(callbacks)
        eval_fn = (lambda model: {"val_score": self._val_score(val)}) if val is not None \
            else None
        trainer.eval_fn = eval_fn
        try:
            h = trainer.fit(data, epochs=epochs, batch_size=min(self.batch_size, len(data)),
                            shuffle=self.shuffle, bucket_by_length=bool(self.bucket_by_length),
                            seed=np.random.default_rng(self._seed(rs)))
        except TrainingInterrupted:
            warnings.warn("Training interrupted by user.", stacklevel=4)
            h = trainer.history
        self.model_.eval()
        self.n_iter_ += len(h.epochs)
        self.loss_curve_ = list(self.loss_curve_) + [e["train_loss"] for e in h.epochs]
        if self.loss_curve_:
            self.loss_ = self.loss_curve_[-1]
            self.best_loss_ = min(self.loss_curve_)
        if val is not None:
            self.validation_scores_ = [e["val_score"] for e in h.epochs]
            self.best_validation_score_ = max(self.validation_scores_)
        if stopping and h.status == "finished" and len(h.epochs) == epochs:
            warnings.warn(f"{type(self).__name__}: maximum iterations ({epochs}) reached and "
                          "the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=4)
        return self

    _shuffle_split = True

    def _early_stopping(self, n):
        """Whether a fit on ``n`` samples holds out a validation set: ``"auto"`` does for
        at least 20 and at most :data:`AUTO_EARLY_STOPPING_MAX` samples, where a network
        that trains on its training loss alone overfits."""
        if isinstance(self.early_stopping, str):
            return 20 <= n <= AUTO_EARLY_STOPPING_MAX
        return bool(self.early_stopping)

    def _forward(self, z, lengths, batch_size=1024):
        """Model outputs for standardised inputs, in eval mode, batch by batch."""
        from ..module import inference_mode

        out = []
        with inference_mode():
            for i in range(0, len(z), batch_size):
                out.append(self.model_(z[i:i + batch_size], lengths[i:i + batch_size]))
        return np.concatenate(out).astype(np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags
