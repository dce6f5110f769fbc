"""The one vocabulary of argument checks (nn_core._validation): wrong type -> TypeError,
right type but bad value -> ValueError, the same from every layer that uses it."""
import math

import numpy as np
import pytest

from nn_core._validation import check_choice, check_int, check_real
from nn_core.layers import Linear
from nn_core.training import Trainer, check_run_dir, compare_settings, fit
from nn_core.training.callbacks import EarlyStopping, ReduceLROnPlateau


@pytest.mark.parametrize("value", ["3", 3.0, True, None, np.float64(2.0)])
def test_check_int_rejects_other_types(value):
    with pytest.raises(TypeError, match="n must be an int"):
        check_int(value, "n", 1)


def test_check_int_bounds_and_numpy_integers():
    assert check_int(np.int64(4), "n", 1, 4) == 4 and type(check_int(np.int8(2), "n")) is int
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check_int(0, "n", 1)
    with pytest.raises(ValueError, match="n must be <= 4, got 5"):
        check_int(5, "n", 1, 4)


@pytest.mark.parametrize("value", ["0.1", True, None, 1j])
def test_check_real_rejects_other_types(value):
    with pytest.raises(TypeError, match="lr must be a real number"):
        check_real(value, "lr", 0.0, lo_open=True)


@pytest.mark.parametrize("value, kw, message", [
    (0.0, dict(lo=0.0, lo_open=True), r"lr must be a finite number > 0, got 0"),
    (math.nan, dict(lo=0.0, lo_open=True), r"lr must be a finite number > 0, got nan"),
    (math.inf, {}, r"lr must be a finite number, got inf"),
    (1.0, dict(lo=0.0, hi=1.0, hi_open=True), r"lr must be in \[0, 1\), got 1"),
    (-1, dict(lo=0.0), r"lr must be a finite number >= 0, got -1"),
])
def test_check_real_values(value, kw, message):
    with pytest.raises(ValueError, match=message):
        check_real(value, "lr", **kw)
    assert check_real(3, "lr") == 3.0 and type(check_real(np.float32(0.5), "lr")) is float


def test_check_choice():
    assert check_choice("gru", "cell", ("gru", "lstm")) == "gru"
    with pytest.raises(TypeError, match="cell must be one of"):
        check_choice(1, "cell", ("gru", "lstm"))
    with pytest.raises(ValueError, match="cell must be one of .* got 'tcn'"):
        check_choice("tcn", "cell", ("gru", "lstm"))


def test_the_training_layer_follows_the_rule():
    model = Linear(2, 1, rng=0)
    x, y = np.ones((8, 2)), np.ones((8, 1))
    with pytest.raises(TypeError, match="batch_size"):
        fit(model, "mse", None, (x, y), epochs=1, batch_size="8", verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, "mse", None, (x, y), epochs=1, batch_size=0, verbose=0)
    with pytest.raises(TypeError, match="clip"):
        Trainer(model, "mse", clip="1")
    with pytest.raises(ValueError, match="clip"):
        Trainer(model, "mse", clip=0.0)
    with pytest.raises(TypeError, match="loss"):
        Trainer(model, 3)
    with pytest.raises(TypeError, match="patience"):
        EarlyStopping(patience=1.5)
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=1.0)


def test_the_estimators_follow_the_rule():
    pytest.importorskip("sklearn")
    from nn_core.sklearn import RecurrentRegressor

    x, y = np.ones((6, 4, 2)), np.ones(6)
    with pytest.raises(TypeError, match="hidden_size"):
        RecurrentRegressor(hidden_size=8.0).fit(x, y)
    with pytest.raises(ValueError, match="hidden_size"):
        RecurrentRegressor(hidden_size=0).fit(x, y)


def test_run_folder_rules_are_checked_without_touching_the_folder(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="exclude each other"):
        check_run_dir(run, resume=True, overwrite=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        check_run_dir(run, resume=True)
    assert check_run_dir(run) == (None, []) and not run.exists()
    run.mkdir()
    (run / "history.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a run") as info:
        check_run_dir(run)
    assert info.value.files == ["history.json"]
    assert check_run_dir(run, overwrite=True) == (None, ["history.json"])
    assert (run / "history.json").exists()


def test_compare_settings_names_every_difference():
    compare_settings({"lr": 0.1, "epochs": 2}, {"lr": 0.1, "epochs": 2})
    with pytest.raises(ValueError, match=r"--epochs 3 \(the run's: 2\), --lr 0.2 \(the run's: "
                                         r"0.1\)"):
        compare_settings({"lr": 0.1, "epochs": 2}, {"lr": 0.2, "epochs": 3},
                         name=lambda k: "--" + k)
