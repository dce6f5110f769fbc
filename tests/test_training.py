"""nn_core.training: the loop end to end on a toy task, divergence, progress bar, plot."""
import doctest
import json

import numpy as np
import pytest

from nn_core import training
from nn_core._progress import ProgressBar
from nn_core.checkpoint import load
from nn_core.layers import Linear
from nn_core.losses import MSELoss
from nn_core.training import Task, plot_history, train


def _falls(history_path, k=3):
    with open(history_path) as fh:
        h = json.load(fh)
    losses = h["step_loss"]
    return np.mean(losses[:k]), np.mean(losses[-k:]), h


def test_docstring_example_runs():
    result = doctest.testmod(training)
    assert result.attempted > 0 and result.failed == 0


class _Toy(Task):
    """Linear regression y = x A: exercises the generic loop end to end."""

    name = "toy"
    headline = ("val_mse", False)

    def __init__(self, config):
        super().__init__(config)
        rng = np.random.default_rng(config["seed"])
        self.A = rng.standard_normal((4, 2))
        self.x = rng.standard_normal((256, 4))
        self.y = self.x @ self.A

    def build_model(self, dtype, rng):
        return Linear(4, 2, dtype=dtype, rng=rng)

    def num_batches(self, batch_size):
        return len(self.x) // batch_size

    def train_batches(self, rng, batch_size):
        order = rng.permutation(len(self.x))
        for i in range(self.num_batches(batch_size)):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield self.x[idx], self.y[idx]

    def train_step(self, model, batch):
        x, y = batch
        loss = MSELoss(dtype=model.dtype)
        val = loss(model(x), y)
        model.backward(loss.backward()[0])
        return {"loss": float(val), "correct": 0, "count": 0, "samples": len(x)}

    def evaluate(self, model):
        pred = model(self.x)
        model._cache = None
        return {"val_mse": float(((pred - self.y) ** 2).mean())}


def test_training_loop_end_to_end(tmp_path, capsys):
    task = _Toy({"seed": 3})
    logs = []
    model, res = train(task, epochs=4, batch_size=32, lr=0.1, dtype=np.float64, seed=1,
                       out_dir=str(tmp_path), log=logs.append)
    first, last, hist = _falls(tmp_path / "history.json")
    assert last < 0.2 * first
    assert len(hist["step_loss"]) == res["steps"] == 32
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2, 3, 4]
    assert res["metrics"]["val_mse"] < hist["epochs"][0]["val_mse"]
    assert any("matplotlib" in m or "loss_curve.png" in m for m in logs)
    again, meta = load(tmp_path / "model.npz", with_metadata=True)
    np.testing.assert_array_equal(again.params["W"], model.params["W"])
    assert meta["extra"]["task"] == "toy" and meta["extra"]["train"]["epochs_done"] == 4
    err = capsys.readouterr().err                 # the per-epoch progress lines
    assert err.count("samples/s") == 4 and "epoch 4/4" in err


def test_training_loop_stops_on_divergence(tmp_path):
    task = _Toy({"seed": 0})
    task.train_step = lambda model, batch: {"loss": float("nan"), "correct": 0, "count": 0,
                                            "samples": 1}
    with pytest.raises(FloatingPointError, match="diverged"):
        train(task, epochs=1, batch_size=32, lr=0.1, out_dir=str(tmp_path), log=lambda m: None)


def test_progress_bar_line():
    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    sink = Sink()
    bar = ProgressBar(4, "epoch 1/2", file=sink)
    for _ in range(4):
        bar.update(1, samples=10, loss=0.5, acc=0.25)
    assert sink.text == ""                        # not a terminal: one line at the end
    bar.close(val=0.125)
    assert sink.text.startswith("epoch 1/2 [########################] 4/4 loss=0.5 acc=0.25 "
                                "val=0.125")
    assert sink.text.endswith("\n") and "samples/s" in sink.text


def test_loss_curve_png(tmp_path):
    pytest.importorskip("matplotlib")
    hist = {"step_loss": list(np.linspace(2.0, 0.1, 20)),
            "epochs": [{"step": 10, "train_loss": 1.5, "val_loss": 1.2},
                       {"step": 20, "train_loss": 0.4, "val_loss": 0.3}]}
    path = plot_history(hist, str(tmp_path / "curve.png"), "toy")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
