"""nn_core.sklearn: scikit-learn's check_estimator, Pipeline, GridSearchCV (with joblib
worker processes), pickling, partial_fit, warm_start, variable-length sequences and the
forecaster."""
import doctest
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

import joblib  # noqa: E402  (a scikit-learn dependency)
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import nn_core.sklearn  # noqa: E402
from nn_core.sklearn import (RecurrentClassifier, RecurrentForecaster,  # noqa: E402
                             RecurrentRegressor)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):
        yield


@pytest.mark.parametrize("name", ["_estimators", "_forecast", "_net"])
def test_docstring_examples_run(name):
    module = getattr(nn_core.sklearn, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# the forecaster's rows are time steps: a forecast depends on the rows before it
_NOT_INDEPENDENT = "rows are time steps; a forecast reads the rows before it"


@pytest.mark.parametrize("estimator, expected_failures", [
    # scikit-learn's checks ask for a training-set fit (score > 0.5) in 30 epochs
    (RecurrentRegressor(hidden_size=16, max_iter=30, learning_rate_init=2e-2, random_state=0,
                        early_stopping=False), {}),
    (RecurrentClassifier(hidden_size=8, max_iter=15, learning_rate_init=2e-2, random_state=0), {}),
    (RecurrentForecaster(window=3, hidden_size=8, max_iter=10, random_state=0),
     {"check_methods_subset_invariance": _NOT_INDEPENDENT,
      "check_methods_sample_order_invariance": _NOT_INDEPENDENT}),
], ids=["regressor", "classifier", "forecaster"])
def test_check_estimator(estimator, expected_failures):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, expected_failed_checks=expected_failures,
                                  on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:200]) for r in results
              if r["status"] == "failed"]
    assert not failed
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert xfailed == set(expected_failures)


def _sequences(n=240, seed=0):
    """Variable-length univariate sequences; the target is their mean, the class its sign."""
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal(int(k)) + rng.normal(0, 0.7) for k in rng.integers(3, 16, n)]
    y = np.array([s.mean() for s in X])
    return X, y


def test_variable_length_regression_partial_fit_warm_start():
    X, y = _sequences()
    reg = RecurrentRegressor(hidden_size=16, max_iter=40, random_state=0).fit(X[:200], y[:200])
    assert reg.n_features_in_ == reg.n_step_features_ == 1 and reg.n_iter_ <= 40
    assert reg.score(X[200:], y[200:]) > 0.9 and reg.predict(X[200:]).shape == (40,)
    assert len(reg.loss_curve_) == reg.n_iter_ and reg.best_loss_ == min(reg.loss_curve_)
    # same random_state, same model; a clone is unfitted
    again = RecurrentRegressor(hidden_size=16, max_iter=40, random_state=0).fit(X[:200], y[:200])
    np.testing.assert_array_equal(again.predict(X[200:]), reg.predict(X[200:]))
    assert not hasattr(clone(reg), "model_")
    # partial_fit: one epoch per call
    inc = RecurrentRegressor(hidden_size=16, random_state=0)
    for _ in range(3):
        inc.partial_fit(X[:200], y[:200])
    assert inc.n_iter_ == 3
    # warm_start continues from the fitted weights
    warm = RecurrentRegressor(hidden_size=16, max_iter=2, warm_start=True, random_state=0)
    warm.fit(X[:200], y[:200])
    first = warm.loss_curve_[-1]
    warm.fit(X[:200], y[:200])
    assert warm.n_iter_ == 4 and warm.loss_curve_[-1] < first
    with pytest.raises(ValueError, match="features per step"):
        reg.predict(np.zeros((3, 5, 2)))


def test_multivariate_3d_early_stopping_and_multioutput():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 10, 3))
    Y = np.stack([X[:, :, 0].mean(1), X[:, -1, 2] * 100.0], 1)     # two outputs, two scales
    reg = RecurrentRegressor(hidden_size=16, max_iter=80, early_stopping=True,
                             n_iter_no_change=5, random_state=0).fit(X, Y)
    assert reg.n_features_in_ == 3 and reg.predict(X).shape == (300, 2)
    assert len(reg.validation_scores_) == reg.n_iter_ and reg.best_validation_score_ > 0.8
    assert reg.score(X, Y) > 0.8
    with pytest.warns(ConvergenceWarning, match="maximum iterations"):
        RecurrentRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, Y)


def test_classifier_labels_probabilities_partial_fit():
    X, y = _sequences(seed=2)
    labels = np.where(y > 0, "up", "down")
    clf = RecurrentClassifier(hidden_size=16, max_iter=30, random_state=0).fit(X, labels)
    assert clf.classes_.tolist() == ["down", "up"] and clf.score(X, labels) > 0.9
    p = clf.predict_proba(X[:5])
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert (clf.classes_[p.argmax(1)] == clf.predict(X[:5])).all()
    inc = RecurrentClassifier(hidden_size=8, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        inc.partial_fit(X, labels)
    inc.partial_fit(X[:100], labels[:100], classes=["down", "up", "flat"])
    inc.partial_fit(X[100:], labels[100:])
    assert inc.classes_.tolist() == ["down", "flat", "up"] and inc.n_iter_ == 2
    with pytest.raises(ValueError, match="not in classes_"):
        inc.partial_fit(X[:5], ["sideways"] * 5)


def test_pipeline_gridsearch_with_worker_processes_and_pickle(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((160, 8)) * 50 + 10         # 2-D: univariate sequences [n, T]
    y = (X[:, :4].sum(1) > X[:, 4:].sum(1)).astype(int)
    pipe = make_pipeline(StandardScaler(), RecurrentClassifier(max_iter=15, random_state=0,
                                                               early_stopping=False))
    grid = GridSearchCV(pipe, {"recurrentclassifier__hidden_size": [4, 16]}, cv=3, n_jobs=2)
    grid.fit(X, y)                                       # joblib worker processes
    assert grid.best_params_["recurrentclassifier__hidden_size"] in (4, 16)
    assert grid.best_score_ > 0.7 and grid.score(X, y) > 0.75
    best = grid.best_estimator_
    for again in (pickle.loads(pickle.dumps(best)),
                  joblib.load(joblib.dump(best, tmp_path / "m.joblib")[0])):
        np.testing.assert_array_equal(again.predict_proba(X), best.predict_proba(X))
    # an unpickled estimator keeps training its own weights
    clf = pickle.loads(pickle.dumps(best[-1]))
    before = clf.predict_proba(StandardScaler().fit_transform(X))
    clf.partial_fit(best[0].transform(X), y)
    assert not np.array_equal(clf.predict_proba(best[0].transform(X)), before)
    np.testing.assert_array_equal(best.predict_proba(X), again.predict_proba(X))


def test_forecaster_series_timeseries_split_and_persistence():
    t = np.arange(500)
    rng = np.random.default_rng(4)
    X = np.stack([np.sin(2 * np.pi * t / 25), np.cos(2 * np.pi * t / 25)], 1)
    X = X + 0.05 * rng.standard_normal(X.shape)
    fc = RecurrentForecaster(window=10, horizon=3, max_iter=30, random_state=0).fit(X[:400])
    pred = fc.predict(X[400:])
    assert pred.shape == (100, 2) and fc.n_features_in_ == 2
    mse = ((pred[:-3] - X[403:]) ** 2).mean()
    persistence = ((X[400:-3] - X[403:]) ** 2).mean()
    assert mse < 0.2 * persistence and fc.score(X[400:]) > 0.9
    grid = GridSearchCV(RecurrentForecaster(horizon=3, max_iter=10, random_state=0),
                        {"window": [2, 10]}, cv=TimeSeriesSplit(n_splits=3)).fit(X)
    assert grid.best_params_["window"] in (2, 10) and grid.best_score_ > 0.8
    assert len(grid.cv_results_["mean_test_score"]) == 2
    with pytest.raises(ValueError, match="at least window \\+ horizon = 13 rows"):
        RecurrentForecaster(window=10, horizon=3).fit(X[:12])
    fc2 = pickle.loads(pickle.dumps(fc))
    np.testing.assert_array_equal(fc2.predict(X[400:]), pred)
    fc2.partial_fit(X[:100])
    assert fc2.n_iter_ == fc.n_iter_ + 1


def test_parameters_are_checked_in_fit_and_ctrl_c_keeps_the_model(monkeypatch):
    X, y = _sequences(40)
    for bad in (dict(hidden_size=0), dict(cell="tcn"), dict(learning_rate_init=-1.0),
                dict(validation_fraction=1.0), dict(dtype="int32"), dict(clip=0.0)):
        est = RecurrentRegressor(**bad)                   # constructing never fails
        with pytest.raises(ValueError, match=next(iter(bad))):
            est.fit(X, y)
    with pytest.raises(ValueError, match="blas_threads"):
        RecurrentRegressor(blas_threads=0).fit(X, y)
    from nn_core import _parallel
    from nn_core.training import Trainer
    step, calls, threads = Trainer.train_step, {"n": 0}, []

    def interrupted(self, batch):
        calls["n"] += 1
        threads.append(_parallel.blas_threads())
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return step(self, batch)
    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with threadpool_limits(2):
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            reg = RecurrentRegressor(hidden_size=4, max_iter=50, random_state=0).fit(X, y)
        assert set(threads) == {1}                   # blas_threads=1 while fitting ...
        if _parallel.controllable() and _parallel.available_cores() > 1:
            assert _parallel.blas_threads() == 2     # ... and the process's setting after
    assert reg.predict(X).shape == (40,)


def _nile_like(seed=0):
    """100 yearly flows: a level shift after 28 years (1100 -> 850) and noise of 125,
    as the Nile at Aswan 1871-1970; statsmodels' copy when it is installed."""
    try:
        from statsmodels.datasets import nile
        return nile.load_pandas().data["volume"].to_numpy(float)
    except ImportError:
        rng = np.random.default_rng(seed)
        return np.where(np.arange(100) < 28, 1100.0, 850.0) + 125 * rng.standard_normal(100)


@pytest.mark.parametrize("source", ["nile", "generated"])
def test_defaults_beat_persistence_on_a_small_series(source):
    """Lag windows of a 100-point series: early_stopping="auto" holds out a validation
    set, so the default estimator does not fit the noise (it did: RMSE 210-320 against
    persistence's 153)."""
    if source == "nile":
        y = _nile_like()
    else:
        rng = np.random.default_rng(7)
        y = np.where(np.arange(100) < 28, 1100.0, 850.0) + 125 * rng.standard_normal(100)
    L = 8
    X = np.stack([y[i:i + L] for i in range(len(y) - L)])
    t = y[L:]
    split = int(0.8 * len(X))
    persistence = np.sqrt(np.mean((X[split:, -1] - t[split:]) ** 2))
    for seed in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("error")                   # and no ConvergenceWarning
            reg = RecurrentRegressor(random_state=seed).fit(X[:split], t[:split])
        rmse = np.sqrt(np.mean((reg.predict(X[split:]) - t[split:]) ** 2))
        assert rmse < persistence, (seed, rmse, persistence)
        assert reg.validation_scores_ and reg.n_iter_ < reg.max_iter


def test_early_stopping_auto_rule():
    X = np.random.default_rng(0).standard_normal((30, 5))
    y = X.sum(1)
    reg = RecurrentRegressor(hidden_size=4, max_iter=2, random_state=0)
    assert reg.early_stopping == "auto" and reg._early_stopping(19) is False
    assert reg._early_stopping(20) and reg._early_stopping(10_000)
    assert not reg._early_stopping(10_001)
    assert hasattr(reg.fit(X, y), "validation_scores_")
    with pytest.raises(ValueError, match="early_stopping must be one of"):
        RecurrentRegressor(early_stopping="yes").fit(X, y)
