"""scikit-learn estimators on nn_core networks (needs scikit-learn:
``pip install nn_core[sklearn]``; no torch).

* :class:`RecurrentRegressor` / :class:`RecurrentClassifier` -- sequences (``[n, T, D]``,
  variable-length lists, or ``[n, T]`` univariate) to a value or a class;
* :class:`RecurrentForecaster` -- a (multivariate) series ``[N, D]`` to its values
  ``horizon`` steps ahead.

They have ``fit``/``predict``/``score``, ``partial_fit``, ``get_params``/``set_params``,
``random_state`` and ``warm_start``; they pickle (joblib, multiprocessing) with their
weights, and work in ``Pipeline`` and ``GridSearchCV``.  Training runs on
:class:`nn_core.training.Trainer` (AdamW, gradient clipping, scikit-learn's ``tol`` /
``n_iter_no_change`` stopping rule; Ctrl-C stops training and keeps the model, with a
warning, as scikit-learn's MLP does).
"""
try:
    import sklearn  # noqa: F401
except ImportError as exc:                     # pragma: no cover - depends on the install
    raise ImportError("nn_core.sklearn needs scikit-learn: pip install 'nn_core[sklearn]' "
                      "(or pip install scikit-learn)") from exc

from ._estimators import RecurrentClassifier, RecurrentRegressor
from ._forecast import RecurrentForecaster
from ._net import SequenceNet

__all__ = ["RecurrentRegressor", "RecurrentClassifier", "RecurrentForecaster", "SequenceNet"]
