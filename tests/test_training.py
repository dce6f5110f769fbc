"""nn_core.training: the loop end to end on a toy task, divergence, progress bar, plot;
runs that are never lost (existing folders, interruptions, history after every epoch) and
resumed runs that end bit for bit where an uninterrupted one ends."""
import copy
import doctest
import json
import os
import signal

import numpy as np
import pytest

import nn_core
from nn_core import training
from nn_core.training import trainer as trainer_module
from nn_core._progress import ProgressBar
from nn_core.checkpoint import load, load_training_state
from nn_core.layers import Dropout, Linear, ReLU, Sequential
from nn_core.losses import MSELoss
from nn_core.optim import SGD
from nn_core.training import (RunExistsError, Task, TrainingInterrupted, plot_history,
                              read_run, rng_states, set_rng_states, train)


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
        model.clear_pending()
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


class _Sink:
    def __init__(self, tty):
        self.text, self._tty = "", tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return self._tty


def test_progress_bar_plain_line_when_not_a_terminal():
    sink = _Sink(tty=False)
    bar = ProgressBar(4, "epoch 1/2", file=sink, run_left=8)
    for _ in range(4):
        bar.update(1, samples=10, loss=0.5, acc=0.25)
    assert sink.text == ""                        # not a terminal: one line at the end
    bar.close(val=0.125)
    assert sink.text.startswith("epoch 1/2 4/4 loss=0.5 acc=0.25 val=0.125 ")
    assert sink.text.count("\n") == 1 and sink.text.endswith(" left\n")
    assert "samples/s" in sink.text and "run " in sink.text
    assert "\r" not in sink.text and "[" not in sink.text      # no bar, no redraws


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_progress_bar_fits_the_terminal(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))        # read by shutil.get_terminal_size
    sink = _Sink(tty=True)
    bar = ProgressBar(500, "epoch 12/100", file=sink, run_left=50_000)
    for _ in range(3):
        bar.update(1, samples=64, loss=1.234567, token_acc=0.456789)
    bar.count = 250
    line = bar.line()
    assert len(line) <= columns - 1                    # never wraps (nor fills the last column)
    assert line.startswith("epoch 12/100") and "250/500" in line
    assert "eta " in line and "run " in line           # the epoch's and the run's time left
    if columns >= 80:
        assert "loss=1.235" in line and "[" in line    # metrics and a bar
    if columns == 200:
        assert "samples/s" in line and "[" + "#" * 12 + "." * 12 + "]" in line
    frames = sink.text.split("\r")[1:]
    assert frames and all(len(f.replace("\x1b[K", "")) <= columns - 1 for f in frames)


def test_progress_bar_under_a_pseudo_terminal():
    """A real terminal: the child writes to a pty of 60 columns and no row is longer."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import subprocess
    import sys
    import termios
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    code = ("import os, sys, time\n"
            "from nn_core._progress import ProgressBar\n"
            "bar = ProgressBar(5, 'epoch 3/40', run_left=200)\n"
            "for _ in range(5):\n"
            "    time.sleep(0.12); bar.update(1, samples=64, loss=0.123456, acc=0.5)\n"
            "bar.close(val_loss=0.25, val_acc=0.75)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=child, stdout=child,
                            stderr=child, env=env, close_fds=True)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:                            # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(parent)
    assert proc.wait(timeout=60) == 0, out
    text = out.decode()
    frames = [f.replace("\x1b[K", "") for f in text.replace("\r\n", "\n").replace("\r", "\n")
              .split("\n") if f]
    assert len(frames) >= 2 and all(len(f) <= 59 for f in frames), frames
    assert frames[-1].startswith("epoch 3/40 ") and "5/5" in frames[-1]
    assert "val_acc=0.75" in frames[-1] and "left" in frames[-1]    # the newest metrics stay
    assert any("eta " in f and "run " in f for f in frames[:-1])


def _colour_share(path, rgb):
    """The share of the PNG's pixels within a small distance of the colour ``rgb``."""
    from matplotlib.image import imread
    img = imread(path)[..., :3]
    return float((np.abs(img - np.array(rgb)).max(axis=-1) < 0.08).mean())


ORANGE, BLUE, GRAY = (1.0, 0.498, 0.055), (0.122, 0.467, 0.706), (0.498, 0.498, 0.498)


def test_loss_curve_png(tmp_path):
    pytest.importorskip("matplotlib")
    from nn_core.training._run import loss_figure
    hist = {"step_loss": list(np.linspace(2.0, 0.1, 20)),
            "epochs": [{"step": 10, "train_loss": 1.5, "val_mse": 1.2, "skill": 0.1},
                       {"step": 20, "train_loss": 0.4, "val_mse": 0.3, "skill": 0.7}]}
    fig = loss_figure(hist, "toy", metric="val_mse", levels={"persistence": 0.9})
    ax = fig.axes[0]
    val = [ln for ln in ax.get_lines() if ln.get_gid() == "validation"]
    assert len(val) == 1 and list(val[0].get_ydata()) == [1.2, 0.3]
    assert [ln.get_label() for ln in ax.get_lines()][-1] == "persistence"
    path = plot_history(hist, str(tmp_path / "curve.png"), "toy", metric="val_mse",
                        levels={"persistence": 0.9})
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert _colour_share(path, ORANGE) > 1e-3            # the validation series is drawn
    no_val = plot_history({**hist, "epochs": [{k: v for k, v in e.items() if k != "val_mse"}
                                             for e in hist["epochs"]]},
                          str(tmp_path / "bare.png"))
    assert _colour_share(no_val, ORANGE) == 0.0          # (and the check can fail)


def test_fit_leaves_the_matplotlib_backend_alone(tmp_path):
    """A notebook's inline backend stays: the run's figures use no pyplot state."""
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        x = np.linspace(-1, 1, 64)[:, None]
        model = Linear(1, 1, dtype=np.float64, rng=0)
        h = nn_core.fit(model, "mse", SGD(model, lr=0.1), (x, 2 * x), (x, 2 * x), epochs=2,
                        batch_size=16, verbose=0, out_dir=str(tmp_path / "run"))
        assert matplotlib.get_backend() == "svg"
        assert h.loss_curve and _colour_share(h.loss_curve, ORANGE) > 1e-3   # val_loss
    finally:
        matplotlib.use(before)


# ------------------------------------------------------------------ resumable runs
class _DropoutToy(_Toy):
    """The toy with a hidden layer and dropout, so the model's generator matters."""

    name = "dropout-toy"

    def build_model(self, dtype, rng):
        return Sequential(Linear(4, 16, dtype=dtype, rng=rng), ReLU(dtype=dtype),
                          Dropout(0.3, dtype=dtype, rng=rng), Linear(16, 2, dtype=dtype, rng=rng))

    def train_batches(self, rng, batch_size):
        # lazy draws, one per batch (as the lm task does), plus an eager permutation
        order = rng.permutation(len(self.x))
        for i in range(self.num_batches(batch_size)):
            idx = order[i * batch_size:(i + 1) * batch_size]
            jitter = rng.standard_normal()
            yield self.x[idx] + 0.01 * jitter, self.y[idx]

    def evaluate(self, model):
        pred = model(self.x)
        model.clear_pending()
        return {"val_mse": float(((pred - self.y) ** 2).mean())}


RUN = dict(epochs=3, batch_size=32, lr=0.05, dtype=np.float64, seed=4, log=lambda m: None)


def _weights(out):
    return {k: v.copy() for k, v in load(os.path.join(out, "model.npz")).parameters().items()}


def _same_run(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k               # bit for bit
    ha, hb = (json.load(open(os.path.join(d, "history.json"))) for d in (a, b))
    assert ha["step_loss"] == hb["step_loss"]
    timing = {"samples_per_s", "train_time_s", "eval_time_s"}
    strip = [[{k: v for k, v in e.items() if k not in timing} for e in h["epochs"]]
             for h in (ha, hb)]
    assert strip[0] == strip[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref"))
    model, res = train(_DropoutToy({"seed": 2}), out_dir=out, **RUN)
    assert res["status"] == "finished" and res["steps"] == 24
    return out


@pytest.mark.parametrize("stop", [1, 5, 8, 13, 23])
def test_max_steps_then_resume_equals_uninterrupted(tmp_path, reference, stop):
    out = str(tmp_path / "run")
    _, res = train(_DropoutToy({"seed": 2}), out_dir=out, max_steps=stop, **RUN)
    assert res["status"] == "max_steps" and res["steps"] == stop
    assert read_run(out)["step"] == stop and not read_run(out)["finished"]
    _, res = train(_DropoutToy({"seed": 2}), out_dir=out, resume=True, **RUN)
    assert res["status"] == "finished" and res["steps"] == 24
    _same_run(reference, out)


def _interrupting(task, where, at):
    """``task`` raising KeyboardInterrupt (as Ctrl-C would) in ``where`` the ``at``-th time."""
    calls = {"n": 0}
    original = getattr(task, where)

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    setattr(task, where, wrapped)
    return task


@pytest.mark.parametrize("where, at", [("train_step", 1), ("train_step", 6),
                                       ("train_step", 17), ("evaluate", 1), ("evaluate", 3)])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, reference, where, at):
    out = str(tmp_path / "run")
    task = _interrupting(_DropoutToy({"seed": 2}), where, at)
    with pytest.raises(TrainingInterrupted) as info:
        train(task, out_dir=out, **RUN)
    exc = info.value
    assert isinstance(exc, KeyboardInterrupt) and exc.signum == signal.SIGINT
    assert exc.checkpoint == os.path.join(out, "model.npz") and "checkpoint saved" in str(exc)
    state = load_training_state(exc.checkpoint)
    assert state["step"] == exc.step == (at - 1 if where == "train_step" else 8 * at)
    hist = json.load(open(os.path.join(out, "history.json")))
    assert len(hist["step_loss"]) == exc.step and not hist["finished"]
    assert sorted(set(os.listdir(out)) - {"loss_curve.png"}) == ["history.csv",
                                                                 "history.json", "model.npz"]
    _, res = train(_DropoutToy({"seed": 2}), out_dir=out, resume=True, **RUN)
    assert res["steps"] == 24
    _same_run(reference, out)


def test_signal_during_the_update_finishes_the_step(tmp_path, reference, monkeypatch):
    """SIGINT while the optimizer updates: the step completes, then the run stops."""
    calls = {"n": 0}
    clip = trainer_module.clip_grad_norm          # the update inside Trainer.train_step

    def clip_and_signal(model, max_norm):
        calls["n"] += 1
        if calls["n"] == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return clip(model, max_norm)
    monkeypatch.setattr(trainer_module, "clip_grad_norm", clip_and_signal)
    out = str(tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as info:
        train(_DropoutToy({"seed": 2}), out_dir=out, **RUN)
    assert info.value.step == 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # restored
    monkeypatch.undo()
    train(_DropoutToy({"seed": 2}), out_dir=out, resume=True, **RUN)
    _same_run(reference, out)


def test_signal_during_forward_abandons_the_step(tmp_path, reference, monkeypatch):
    plotted = []
    monkeypatch.setattr(training._run, "plot_history",
                        lambda h, path, title, **kw: plotted.append(path))
    task = _DropoutToy({"seed": 2})
    step = task.train_step
    calls = {"n": 0}

    def step_and_signal(model, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)           # SIGTERM is handled like Ctrl-C
        return step(model, batch)
    task.train_step = step_and_signal
    out = str(tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as info:
        train(task, out_dir=out, **RUN)
    assert info.value.step == 3 and info.value.signum == signal.SIGTERM
    assert plotted == [os.path.join(out, "loss_curve.png")]      # the curve is still drawn
    train(_DropoutToy({"seed": 2}), out_dir=out, resume=True, **RUN)
    _same_run(reference, out)


def test_an_existing_run_is_never_replaced_silently(tmp_path):
    out = str(tmp_path / "run")
    train(_Toy({"seed": 0}), epochs=1, batch_size=64, lr=0.1, out_dir=out, log=lambda m: None)
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(_Toy({"seed": 0}), epochs=1, batch_size=64, lr=0.1, out_dir=out)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train(_Toy({"seed": 0}), epochs=2, batch_size=64, lr=0.1, out_dir=out, overwrite=True,
          log=lambda m: None)
    assert read_run(out)["epochs_done"] == 2
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"     # only run files go
    with pytest.raises(ValueError, match="lr 0.2 .*the run's: 0.1"):
        train(_Toy({"seed": 0}), epochs=2, batch_size=64, lr=0.2, out_dir=out, resume=True)
    with pytest.raises(ValueError, match="configuration differs"):
        train(_Toy({"seed": 1}), epochs=2, batch_size=64, lr=0.1, out_dir=out, resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_Toy({"seed": 0}), epochs=2, batch_size=64, lr=0.1, out_dir=str(tmp_path / "x"),
              resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        train(_Toy({"seed": 0}), epochs=1, batch_size=64, lr=0.1, out_dir=str(tmp_path / "file"))
    for bad in (dict(epochs=0), dict(lr=-1.0), dict(batch_size=0), dict(seed=-1),
                dict(max_steps=0), dict(lr=float("nan"))):
        kw = {**dict(epochs=1, batch_size=64, lr=0.1, out_dir=str(tmp_path / "y")), **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            train(_Toy({"seed": 0}), **kw)
    assert not (tmp_path / "y").exists()


def test_history_is_written_after_every_epoch(tmp_path):
    out = str(tmp_path / "run")
    task = _interrupting(_Toy({"seed": 0}), "train_step", 20)      # in epoch 3 of 8 steps
    with pytest.raises(TrainingInterrupted):
        train(task, epochs=4, batch_size=32, lr=0.1, out_dir=out, log=lambda m: None)
    hist = json.load(open(os.path.join(out, "history.json")))
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2] and hist["step"] == 19
    rows = open(os.path.join(out, "history.csv")).read().splitlines()
    assert rows[0].startswith("epoch,step,train_loss") and len(rows) == 3
    assert rows[2].split(",")[:2] == ["2", "16"]


def test_rng_states_round_trip():
    m = Sequential(Dropout(0.5, rng=1), Linear(2, 2, rng=2))
    states = rng_states(m)
    assert set(states) == {"", "0", "1"}
    a = m[0].rng.random(3)
    set_rng_states(m, states)
    assert np.array_equal(m[0].rng.random(3), a)
    with pytest.raises(ValueError, match="do not match"):
        set_rng_states(m, {"": states[""]})


def test_a_tampered_training_state_is_refused(tmp_path):
    from nn_core.checkpoint import CheckpointError, read_metadata, save
    out = str(tmp_path / "run")
    train(_Toy({"seed": 0}), epochs=2, batch_size=32, lr=0.1, out_dir=out, max_steps=5,
          log=lambda m: None)
    path = os.path.join(out, "model.npz")
    model, meta = load(path, with_metadata=True)
    good = load_training_state(path)

    def tampered(edit):
        state = copy.deepcopy(good)
        edit(state)
        save(model, path, extra=meta["extra"], training_state=state)

    edits = [lambda s: s.update(step=7),
             lambda s: s.update(batch=99),
             lambda s: s["settings"].update(epochs="2"),
             lambda s: s["settings"].pop("lr"),
             lambda s: s["rng"]["modules"].update({"": {"bit_generator": "MT19937"}}),
             lambda s: s["rng"].update(order={"x": 1}),
             lambda s: s.update(schedule={"last_step": 5}),
             lambda s: s.update(epoch_stats={}),
             lambda s: s.update(step_loss=np.zeros(3)),
             lambda s: s["optimizer"]["state"]["W"].update(exp_avg=np.zeros((2, 2))),
             lambda s: s["optimizer"]["state"]["W"].update(junk=np.zeros((4, 2))),
             lambda s: s.pop("optimizer")]
    for edit in edits:
        tampered(edit)
        with pytest.raises(CheckpointError):
            train(_Toy({"seed": 0}), epochs=2, batch_size=32, lr=0.1, out_dir=out,
                  resume=True, log=lambda m: None)
    tampered(lambda s: None)                                  # the untouched state resumes
    train(_Toy({"seed": 0}), epochs=2, batch_size=32, lr=0.1, out_dir=out, resume=True,
          log=lambda m: None)
    assert read_metadata(path)["training"]["finished"]
