"""nn_core.training.Trainer / fit: arrays and variable-length sequences, epochs or steps,
schedules, metrics, callbacks, and run folders whose resumed runs end bit for bit where
uninterrupted ones end (callbacks and learning-rate reductions included)."""
import doctest
import io
import json
import os

import numpy as np
import pytest

import nn_core
from nn_core import training
from nn_core.checkpoint import CheckpointError, load, load_training_state, read_metadata
from nn_core.layers import Dropout, Linear, ReLU, Sequential
from nn_core.losses import MSELoss
from nn_core.module import Module
from nn_core.optim import SGD, AdamW, WarmupCosine
from nn_core.recurrent import GRUCell
from nn_core.training import (ArrayDataset, Callback, CSVLogger, EarlyStopping, JSONLogger,
                              LambdaCallback, ModelCheckpoint, ReduceLROnPlateau,
                              SequenceDataset, Trainer, TrainingInterrupted, fit,
                              pad_sequences)
from nn_core.training import callbacks as callbacks_module
from nn_core.training import data as data_module
from nn_core.training import trainer as trainer_module


@pytest.mark.parametrize("module", [training, trainer_module, data_module],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _regression(n=240, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    return x, x @ rng.standard_normal((4, 2)) + 0.01 * rng.standard_normal((n, 2))


def test_fit_on_arrays_history_evaluate_predict(capsys):
    x, y = _regression()
    model = Linear(4, 2, dtype=np.float64, rng=0)
    trainer = Trainer(model, "mse", AdamW(model, lr=0.05, weight_decay=0.0),
                      metrics=["mae", "mse"], verbose=0)
    h = trainer.fit((x[:200], y[:200]), (x[200:], y[200:]), epochs=15, batch_size=32, seed=0)
    assert h.status == "finished" and h.steps == 15 * 7 == len(h.step_loss)   # 200/32 -> 7
    assert [e["epoch"] for e in h.epochs] == list(range(1, 16))
    assert set(h.history) >= {"train_loss", "val_loss", "val_mae", "val_mse", "lr"}
    assert h.history["val_loss"][-1] < 0.05 * h.history["val_loss"][0]
    assert h.metrics["val_loss"] == pytest.approx(h.metrics["val_mse"])      # both exact means
    ev = trainer.evaluate((x[200:], y[200:]), batch_size=7)
    pred = trainer.predict(x[200:], batch_size=9)
    assert pred.shape == (40, 2) and ev["loss"] == pytest.approx(np.mean((pred - y[200:]) ** 2))
    assert capsys.readouterr().err == ""                            # verbose=0: silent
    assert model.training                                           # evaluate restores the mode


def test_progress_line_per_epoch_and_steps_mode():
    x, y = _regression(64)
    model = Linear(4, 2, rng=0)
    sink = io.StringIO()
    seen = []
    h = fit(model, MSELoss(), SGD(model, lr=0.01), (x, y), steps=10, batch_size=16,
            progress_file=sink, callbacks=[LambdaCallback(on_batch_end=lambda s, logs: seen.append(s))])
    # 4 batches per epoch: epochs of 4, 4 and 2 steps, each evaluated
    assert h.steps == 10 and [e["step"] for e in h.epochs] == [4, 8, 10] and seen == list(range(1, 11))
    lines = sink.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3") and "samples/s" in lines[0]


class _SeqNet(Module):
    """GRU over padded sequences [B, T, D] with lengths, linear read-out of the last state."""

    def __init__(self, D, H, O, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.cell = GRUCell(D, H, batch_first=True, dtype=dtype, rng=self.rng)
        self.head = Linear(H, O, dtype=dtype, rng=self.rng)

    def forward(self, x, lengths):
        _, h = self.cell.forward_sequence(x, lengths=lengths)
        self._save_cache(True)
        return self.head(h)

    def backward(self, grad):
        self._pop_cache()
        gx, _ = self.cell.backward_sequence(None, self.head.backward(grad))
        return gx, None


def test_variable_length_sequences_and_accuracy():
    """Classify whether a sequence's mean is positive; lengths 1..12, padded per batch."""
    rng = np.random.default_rng(1)
    seqs = [rng.standard_normal((int(n), 1)) + rng.choice([-1, 1]) * 0.7
            for n in rng.integers(1, 13, 300)]
    labels = np.array([int(s.mean() > 0) for s in seqs])
    model = _SeqNet(1, 8, 2, dtype=np.float64, rng=0)
    h = fit(model, "cross_entropy", AdamW(model, lr=0.03), (seqs[:240], labels[:240]),
            (seqs[240:], labels[240:]), epochs=6, batch_size=24, seed=0, metrics=["accuracy"],
            verbose=0, clip=1.0)
    assert h.metrics["val_accuracy"] >= 0.85 and h.epochs[-1]["train_acc"] > 0.8
    x, lengths = pad_sequences(seqs[:3])
    assert x.shape[0] == 3 and list(lengths) == [len(s) for s in seqs[:3]]
    ds = SequenceDataset(seqs[:5], [np.zeros(len(s), int) for s in seqs[:5]], target_pad=-100)
    b = ds.batch(np.arange(5))
    (_, lens), target = b
    assert target.shape == (5, lens.max())
    past_end = np.arange(lens.max())[None, :] >= lens[:, None]
    assert (target[past_end] == -100).all() and (target[~past_end] == 0).all()


def test_data_errors():
    with pytest.raises(ValueError, match="same number of samples"):
        ArrayDataset(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="sequence 1 has shape"):
        pad_sequences([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="empty"):
        pad_sequences([np.zeros((0, 3))])
    with pytest.raises(TypeError, match="real or integer"):
        ArrayDataset(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="target\\[0\\] has 1 steps"):
        SequenceDataset([np.zeros((2, 1))], [np.zeros(1)])


def test_argument_errors():
    model = Linear(2, 1, rng=0)
    x, y = np.zeros((8, 2)), np.zeros((8, 1))
    with pytest.raises(ValueError, match="exactly one of epochs and steps"):
        fit(model, "mse", None, (x, y))
    with pytest.raises(ValueError, match="exactly one of epochs and steps"):
        fit(model, "mse", None, (x, y), epochs=1, steps=2)
    with pytest.raises(ValueError, match="loss must be"):
        Trainer(model, "hinge")
    with pytest.raises(ValueError, match="dtype=float32"):
        Trainer(model, MSELoss(dtype=np.float64))
    with pytest.raises(ValueError, match="unknown metric"):
        Trainer(model, "mse", metrics=["f1"])
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, "mse", None, (x, y), epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="out_dir"):
        fit(model, "mse", None, (x, y), epochs=1, resume=True)
    with pytest.raises(ValueError, match="monitor 'val_loss' is not among"):
        fit(model, "mse", None, (x, y), epochs=2, verbose=0, callbacks=[EarlyStopping()])
    with pytest.raises(FloatingPointError, match="diverged"), np.errstate(all="ignore"):
        fit(model, "mse", SGD(model, lr=1e30), (x + 1e20, y), epochs=2, verbose=0)


def test_callbacks(tmp_path):
    x, y = _regression()
    model = Linear(4, 2, dtype=np.float64, rng=0)
    opt = AdamW(model, lr=0.05, weight_decay=0.0)
    sched = WarmupCosine(opt, warmup_steps=5, total_steps=7 * 40, min_lr=0.001)
    stop = EarlyStopping(monitor="val_loss", patience=2, min_delta=1e-5,
                         restore_best_weights=True)
    reduce = ReduceLROnPlateau(factor=0.5, patience=1, min_delta=1e-5)
    best = ModelCheckpoint(tmp_path / "best.npz", save_best_only=True, min_delta=1e-5)
    every = ModelCheckpoint(str(tmp_path / "e{epoch:02d}.npz"))
    trainer = Trainer(model, "mse", opt, schedule=sched, verbose=0,
                      callbacks=[reduce, stop, best, every, CSVLogger(tmp_path / "log.csv"),
                                 JSONLogger(tmp_path / "log.json")])
    h = trainer.fit((x[:200], y[:200]), (x[200:], y[200:]), epochs=40, batch_size=32, seed=0)
    n = len(h.epochs)
    assert h.status == "early_stopped" and n < 40 and stop.stopped_epoch == n
    best_epoch, best_val = 0, np.inf
    for epoch, v in enumerate(h.history["val_loss"], 1):      # improvements by > min_delta
        if v < best_val - 1e-5:
            best_epoch, best_val = epoch, v
    assert stop.best_epoch == best_epoch and n - best_epoch == 2
    # the best weights are back, and the keep-best file holds them
    saved = load(tmp_path / "best.npz")
    np.testing.assert_array_equal(saved.params["W"], model.params["W"])
    assert read_metadata(tmp_path / "best.npz")["extra"]["epoch"] == stop.best_epoch
    assert sorted(os.listdir(tmp_path))[:2] == ["best.npz", "e01.npz"] and \
        os.path.exists(tmp_path / f"e{n:02d}.npz")
    # reductions: lr = schedule's rate x the plateau factor
    assert trainer.lr_scale < 1 and opt.lr == pytest.approx(sched.get_lr(sched.last_step)
                                                          * trainer.lr_scale)
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == n + 1 and rows[0].startswith("epoch,step,train_loss")
    assert json.loads((tmp_path / "log.json").read_text())["epochs"] == h.epochs


def test_a_second_fit_runs_the_schedule_again():
    x, y = _regression(64)
    model = Linear(4, 2, rng=0)
    opt = AdamW(model, lr=0.01)
    trainer = Trainer(model, "mse", opt, schedule="warmup_cosine", verbose=0)
    peaks = []
    for _ in range(2):
        h = trainer.fit((x, y), epochs=5, batch_size=8)
        peaks.append(max(h.history["lr"]))
        assert opt.lr == pytest.approx(0.01 / 20)
    assert peaks[0] == peaks[1] > 0.009


def test_csv_logger_append(tmp_path):
    x, y = _regression(64)
    path = tmp_path / "log.csv"
    for _ in range(2):
        model = Linear(4, 2, rng=0)
        fit(model, "mse", None, (x, y), epochs=2, verbose=0, callbacks=[CSVLogger(path, append=True)])
    rows = path.read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("epoch") and rows[3].startswith("1,")


def test_train_step_is_the_one_place_a_step_runs():
    calls = []

    class Wrapped(Trainer):
        def train_step(self, batch):
            calls.append(1)
            return super().train_step(batch)
    x, y = _regression(64)
    model = Linear(4, 2, rng=0)
    h = Wrapped(model, "mse", verbose=0).fit((x, y), epochs=3, batch_size=16)
    assert len(calls) == h.steps == 12


def test_callable_schedule_and_custom_step_and_eval():
    x, y = _regression(64)
    model = Linear(4, 2, dtype=np.float64, rng=0)
    opt = SGD(model, lr=1.0)
    rates = []

    def step(m, batch):
        (xb,), yb = batch
        loss = MSELoss(dtype=np.float64)
        v = loss(m(xb), yb)
        m.backward(loss.backward()[0])
        rates.append(opt.lr)
        return {"loss": float(v), "samples": len(xb)}
    h = fit(model, None, opt, ArrayDataset(x, y), epochs=2, batch_size=32, verbose=0,
            schedule=lambda s: 0.1 / (1 + s), step_fn=step,
            eval_fn=lambda m: {"val_w": float(np.abs(m.params["W"]).sum())})
    assert rates == [0.1 / (1 + s) for s in range(4)]
    assert "val_w" in h.epochs[-1]


# ------------------------------------------------------------------ resumable runs
def _run(out, **kw):
    """A dropout model, a warmup/cosine schedule and three stateful callbacks."""
    x, y = _regression(192, seed=3)
    model = Sequential(Linear(4, 16, dtype=np.float64, rng=1), ReLU(dtype=np.float64),
                       Dropout(0.2, dtype=np.float64, rng=2), Linear(16, 2, dtype=np.float64, rng=3))
    opt = AdamW(model, lr=0.02)
    cbs = [ReduceLROnPlateau(factor=0.5, patience=0, min_delta=1e-3),
           EarlyStopping(patience=3, min_delta=1e-4, restore_best_weights=True),
           ModelCheckpoint(os.path.join(out, "best.npz"), save_best_only=True)]
    trainer = Trainer(model, "mse", opt, schedule="warmup_cosine", clip=1.0, callbacks=cbs,
                      verbose=0, log=lambda m: None)
    return trainer, trainer.fit((x[:160], y[:160]), (x[160:], y[160:]), epochs=12,
                                batch_size=32, seed=5, out_dir=out, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref"))
    trainer, h = _run(out)
    return out, trainer, h


def _same(ref, out):
    a, b = load(os.path.join(ref, "model.npz")), load(os.path.join(out, "model.npz"))
    for k, v in a.parameters().items():
        assert np.array_equal(v, b.parameters()[k]), k
    ha, hb = (json.load(open(os.path.join(d, "history.json"))) for d in (ref, out))
    assert ha["step_loss"] == hb["step_loss"]
    timing = {"samples_per_s", "train_time_s", "eval_time_s"}
    assert [{k: v for k, v in e.items() if k not in timing} for e in ha["epochs"]] == \
        [{k: v for k, v in e.items() if k not in timing} for e in hb["epochs"]]


@pytest.mark.parametrize("stop", [3, 11, 26])
def test_max_steps_then_resume_equals_uninterrupted(tmp_path, reference, stop):
    ref, ref_trainer, ref_h = reference
    assert ref_trainer.lr_scale < 1          # the plateau reductions happened
    out = str(tmp_path / "run")
    _, h = _run(out, max_steps=stop)
    assert h.status == "max_steps" and h.steps == stop
    trainer, h = _run(out, resume=True)
    assert h.status == ref_h.status and h.steps == ref_h.steps
    assert trainer.lr_scale == ref_trainer.lr_scale
    _same(ref, out)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, reference, monkeypatch):
    ref = reference[0]
    out = str(tmp_path / "run")
    calls = {"n": 0}
    step = Trainer._loss_step

    def interrupting(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 14:
            raise KeyboardInterrupt                          # as Ctrl-C in the forward
        return step(self, model, batch)
    monkeypatch.setattr(Trainer, "_loss_step", interrupting)
    with pytest.raises(TrainingInterrupted) as info:
        _run(out)
    assert info.value.step == 13 and info.value.checkpoint == os.path.join(out, "model.npz")
    monkeypatch.undo()
    _run(out, resume=True)
    _same(ref, out)


def test_resume_checks(tmp_path):
    out = str(tmp_path / "run")
    x, y = _regression(64)
    model = Linear(4, 2, rng=0)
    fit(model, "mse", AdamW(model, lr=0.01), (x, y), epochs=2, out_dir=out, max_steps=3,
        verbose=0)
    with pytest.raises(training.RunExistsError):
        fit(model, "mse", AdamW(model, lr=0.01), (x, y), epochs=2, out_dir=out, verbose=0)
    with pytest.raises(ValueError, match="lr 0.02 \\(the run's: 0.01\\)"):
        fit(model, "mse", AdamW(model, lr=0.02), (x, y), epochs=2, out_dir=out, resume=True)
    with pytest.raises(ValueError, match="callbacks"):
        fit(model, "mse", AdamW(model, lr=0.01), (x, y), epochs=2, out_dir=out, resume=True,
            callbacks=[CSVLogger(tmp_path / "x.csv")])
    with pytest.raises(ValueError, match="optimizer"):
        fit(model, "mse", SGD(model, lr=0.01), (x, y), epochs=2, out_dir=out, resume=True)
    with pytest.raises(ValueError, match="samples 40 \\(the run's: 64\\)"):
        fit(model, "mse", AdamW(model, lr=0.01), (x[:40], y[:40]), epochs=2, out_dir=out,
            resume=True, verbose=0)
    with pytest.raises(ValueError, match="steps 2 \\(the run's: 4\\)"):
        fit(model, "mse", AdamW(model, lr=0.01), (x[:16], y[:16]), epochs=2, out_dir=out,
            resume=True, verbose=0)
    path = os.path.join(out, "model.npz")
    good, meta = load_training_state(path), read_metadata(path)
    for key in ("epoch_stats", "optimizer", "rng"):
        nn_core.save(model, path, extra=meta["extra"],
                     training_state={k: v for k, v in good.items() if k != key})
        with pytest.raises(CheckpointError, match="cannot be restored"):
            fit(model, "mse", AdamW(model, lr=0.01), (x, y), epochs=2, out_dir=out,
                resume=True, verbose=0)
    nn_core.save(model, path, extra=meta["extra"], training_state=good)
    h = fit(model, "mse", AdamW(model, lr=0.01), (x, y), epochs=2, out_dir=out, resume=True,
            verbose=0)
    assert h.steps == 4 and h.status == "finished"


def test_interrupt_without_a_run_folder(monkeypatch):
    x, y = _regression(64)
    model = Linear(4, 2, rng=0)

    class Stop(Callback):
        def on_batch_end(self, step, logs=None):
            if step == 5:
                raise KeyboardInterrupt
    with pytest.raises(TrainingInterrupted, match="nothing saved") as info:
        fit(model, "mse", None, (x, y), epochs=3, batch_size=16, verbose=0, callbacks=[Stop()])
    assert info.value.checkpoint is None and info.value.step == 5


def test_callback_validation():
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=2)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="unknown hooks"):
        LambdaCallback(on_step=print)
    assert callbacks_module._direction("val_accuracy", "auto") == "max"
    assert callbacks_module._direction("val_loss", "auto") == "min"
    with pytest.raises(TypeError, match="Callback"):
        Trainer(Linear(2, 2), "mse", callbacks=[print])
    assert nn_core.training.Trainer is Trainer


def test_the_trainer_asks_its_strategy(monkeypatch):
    """Data parallelism is the strategy's: the trainer calls start once, and
    reduce_step and allreduce_gradients once per step."""
    from nn_core.training import _strategy
    from nn_core.training import trainer as trainer_module

    calls = []

    class Recording(_strategy.SingleProcess):
        def start(self, model, optimizer):
            calls.append("start")

        def reduce_step(self, stats, signals):
            calls.append("reduce")
            return super().reduce_step(stats, signals)

        def allreduce_gradients(self, weight, total_weight):
            calls.append("allreduce")

    monkeypatch.setattr(trainer_module, "strategy", Recording)
    x, y = _regression(64)
    h = fit(Linear(4, 2, rng=0), "mse", None, (x, y), epochs=2, batch_size=16, seed=0,
            verbose=0)
    assert h.steps == 8 and calls == ["start"] + ["reduce", "allreduce"] * 8


def test_a_second_signal_does_not_raise_while_the_first_unwinds():
    """Ctrl-C twice in quick succession: the first abandons the step
    (``KeyboardInterrupt``); the second, arriving while the first one's clean-up runs
    (still inside the abandonable region), only keeps the request."""
    import signal

    from nn_core.training._signals import StopSignals

    sig = StopSignals()
    with pytest.raises(KeyboardInterrupt) as info:
        with sig.abandonable():
            try:
                sig._handler(signal.SIGINT, None)
            finally:
                sig._handler(signal.SIGINT, None)      # must not raise here
    assert info.value.__context__ is None              # the first one, not a second
    assert sig.requested == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):             # a new region stops at once
        with sig.abandonable():
            pass
