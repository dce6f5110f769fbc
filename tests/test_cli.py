"""The nn-core command and its tasks: help and errors, the argument table, smoke runs,
reloads, resumed runs equal to uninterrupted ones, and Ctrl-C in a real process."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nn_core
from nn_core.checkpoint import load, save
from nn_core.cli import USAGE, _train_parser, main
from nn_core.layers import Linear
from nn_core.tasks import TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nn_core.__file__)))


def _falls(history_path, k=3):
    with open(history_path) as fh:
        h = json.load(fh)
    losses = h["step_loss"]
    return np.mean(losses[:k]), np.mean(losses[-k:]), h


# ------------------------------------------------------------------ help, version, errors
def test_help_is_plain_text_and_shows_every_default(capsys):
    assert main([]) == 0 and main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out == USAGE * 2
    assert "``" not in out and "::" not in out and "nn-core train" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nn-core {nn_core.__version__}"
    top = _train_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == set(TASKS)
    for p in [top, *subs.choices.values()]:
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert "default" in action.help, (p.prog, action.dest)
    for cmd in ("eval", "generate"):
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "``" not in text
        section = text.split("options:")[1]
        entries = [e for e in section.split("\n  -") if e.strip()][1:]    # after --help
        assert entries and all("default" in e for e in entries), entries
    for t in TASKS:
        assert main(["train", t, "--help"]) == 0
        text = capsys.readouterr().out
        assert "``" not in text and f"{t} options" in text


def test_cli_errors(capsys, tmp_path):
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    save(Linear(2, 2), tmp_path / "plain.npz")
    assert main(["eval", str(tmp_path / "plain.npz")]) == 1
    assert "not written by `nn-core train`" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert main(["eval", str(tmp_path / "bad.npz")]) == 1
    assert "not a readable nn_core checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 1
    assert "without a model.npz" in capsys.readouterr().err
    assert set(TASKS) == {"seq2seq", "forecast", "lm"}


# (argv, the flag the one-line message must name)
BAD_ARGS = [
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "x"], "--lr"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--hidden", "0"], "--hidden"),
    (["train", "--heads", "5"], "--heads"),
    (["train", "--heads", "0"], "--heads"),
    (["train", "--embed", "0"], "--embed"),
    (["train", "--val-size", "0"], "--val-size"),
    (["train", "--train-size", "0"], "--train-size"),
    (["train", "--min-len", "0"], "--min-len"),
    (["train", "--min-len", "9", "--max-len", "3"], "--max-len"),
    (["train", "--max-steps", "0"], "--max-steps"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--dtype", "float16"], "--dtype"),
    (["train", "--cell", "tcn"], "--cell"),
    (["train", "--layers", "2"], "--layers"),
    (["train", "--resume", "--overwrite"], "--overwrite"),
    (["train", "lm", "--heads", "0"], "--heads"),
    (["train", "lm", "--heads", "3"], "--heads"),
    (["train", "lm", "--digits", "0"], "--digits"),
    (["train", "lm", "--digits", "19"], "--digits"),
    (["train", "lm", "--kv-groups", "3"], "--kv-groups"),
    (["train", "lm", "--kv-groups", "0"], "--kv-groups"),
    (["train", "lm", "--layers", "0"], "--layers"),
    (["train", "lm", "--block", "5"], "--block"),
    (["train", "lm", "--train-exprs", "1"], "--train-exprs"),
    (["train", "lm", "--val-exprs", "0"], "--val-exprs"),
    (["train", "lm", "--mode", "sort"], "--mode"),
    (["train", "forecast", "--dt", "-1"], "--dt"),
    (["train", "forecast", "--dt", "0"], "--dt"),
    (["train", "forecast", "--dt", "inf"], "--dt"),
    (["train", "forecast", "--window", "0"], "--window"),
    (["train", "forecast", "--horizon", "0"], "--horizon"),
    (["train", "forecast", "--steps", "10"], "--steps"),
    (["train", "bogus"], "TASK"),
]


@pytest.mark.parametrize("argv, flag", BAD_ARGS, ids=[" ".join(a[1:]) for a, _ in BAD_ARGS])
def test_bad_arguments_give_one_line_naming_the_flag(capsys, tmp_path, argv, flag):
    out = tmp_path / "run"
    code = main(argv + ["--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], captured.err
    assert "Traceback" not in captured.err and "data:" not in captured.out
    assert not out.exists()


def test_out_that_is_a_file_or_holds_a_run(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    assert main(["train", "--out", str(tmp_path / "f")]) == 2
    assert "--out" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text("{}")
    assert main(["train", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err and "--resume" in err
    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 1
    assert "nothing to resume" in capsys.readouterr().err


# ------------------------------------------------------------------ task smoke runs
S2S = ["train", "seq2seq", "--epochs", "1", "--max-steps", "40", "--batch-size", "32",
       "--hidden", "16", "--embed", "8", "--heads", "2", "--max-len", "5",
       "--train-size", "1280", "--val-size", "64", "--lr", "2e-2"]


def test_seq2seq_smoke(tmp_path, capsys):
    out = str(tmp_path / "s2s")
    assert main(S2S + ["--out", out]) == 0
    first, last, _ = _falls(os.path.join(out, "history.json"))
    assert last < 0.8 * first
    ckpt = os.path.join(out, "model.npz")
    assert main(["eval", out]) == 0                         # the run folder ...
    assert main(["eval", ckpt]) == 0                        # ... or its checkpoint
    assert main(["generate", out, "--input", "12345", "907"]) == 0
    text = capsys.readouterr().out
    assert text.count("validation exact match") == 3       # training, two evals
    assert "12345 ->" in text and "907 ->" in text
    assert main(["generate", out, "--prompt", "1+2="]) == 2
    err = capsys.readouterr().err
    assert "--prompt is an option of lm models" in err and len(err.splitlines()) == 1
    assert main(["generate", out, "--num", "0"]) == 2
    assert main(["generate", out, "--input", "12a"]) == 2
    capsys.readouterr()


def test_forecast_smoke(tmp_path, capsys):
    out = str(tmp_path / "fc")
    assert main(["train", "forecast", "--epochs", "2", "--hidden", "16", "--steps", "2000",
                 "--window", "8", "--horizon", "5", "--cell", "lstm", "--out", out]) == 0
    first, last, h = _falls(os.path.join(out, "history.json"))
    assert last < 0.8 * first
    m = h["epochs"][-1]
    assert m["val_mse"] < m["persistence_mse"]
    assert main(["eval", out]) == 0
    assert "persistence" in capsys.readouterr().out
    assert main(["generate", out, "--temperature", "1"]) == 2
    assert main(["generate", out, "--num", "2"]) == 0


LM = ["train", "lm", "--epochs", "1", "--max-steps", "80", "--batch-size", "16",
      "--hidden", "16", "--heads", "4", "--kv-groups", "2", "--layers", "1", "--block", "24",
      "--train-exprs", "4000", "--val-exprs", "100", "--lr", "2e-2"]


def test_lm_smoke_gqa(tmp_path, capsys):
    out = str(tmp_path / "lm")
    assert main(LM + ["--out", out]) == 0
    first, last, _ = _falls(os.path.join(out, "history.json"), k=5)
    assert last < 0.85 * first          # uniform guessing is ln(13) = 2.56
    model = load(os.path.join(out, "model.npz"))
    assert model.blocks[0].self_attn.params["W_k"].shape == (16, 8)     # 2 K/V groups of d_k 4
    assert main(["generate", out, "--prompt", "12+3=", "--max-new-tokens", "5"]) == 0
    assert "12+3=|" in capsys.readouterr().out
    assert main(["generate", out, "--input", "123"]) == 2
    assert main(["generate", out, "--prompt", "x+y="]) == 2
    assert "--prompt" in capsys.readouterr().err


# ------------------------------------------------------------------ resume == uninterrupted
def _weights(out):
    return load(os.path.join(out, "model.npz")).parameters()


@pytest.mark.parametrize("argv, cut", [
    (["train", "seq2seq", "--epochs", "2", "--batch-size", "32", "--hidden", "16", "--embed",
      "8", "--heads", "2", "--max-len", "6", "--train-size", "320", "--val-size", "32",
      "--lr", "2e-2", "--dtype", "float64"], 13),
    (["train", "lm", "--epochs", "2", "--batch-size", "8", "--hidden", "16", "--heads", "2",
      "--layers", "1", "--block", "16", "--train-exprs", "300", "--val-exprs", "40",
      "--lr", "2e-2", "--dtype", "float64"], 7),
], ids=["seq2seq", "lm"])
def test_max_steps_then_resume_equals_uninterrupted_float64(tmp_path, capsys, argv, cut):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(argv + ["--out", a]) == 0
    assert main(argv + ["--out", b, "--max-steps", str(cut)]) == 0
    assert "nn-core train --resume --out" in capsys.readouterr().out
    hb = json.load(open(os.path.join(b, "history.json")))
    assert hb["step"] == cut and not hb["finished"]
    # resume: the task comes from the checkpoint; repeating an option unchanged is fine
    assert main(["train", "--resume", "--out", b, "--dtype", "float64"]) == 0
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    ha, hb = (json.load(open(os.path.join(d, "history.json"))) for d in (a, b))
    assert ha["step_loss"] == hb["step_loss"] and hb["finished"]
    assert main(["train", "--resume", "--out", b]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert main(["train", "--resume", "--out", b, "--lr", "0.5"]) == 2
    assert "--lr 0.5 (the run's: 0.02)" in capsys.readouterr().err
    assert main(["train", "forecast", "--resume", "--out", b]) == 2


# ------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_saves_and_resumes(tmp_path):
    """SIGINT to a real ``nn-core train``: exit 130, no traceback, one line naming the
    checkpoint and the resume command, and a run that ``--resume`` continues."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nn_core", "train", "seq2seq", "--epochs", "50",
           "--batch-size", "32", "--hidden", "16", "--embed", "8", "--heads", "2",
           "--max-len", "6", "--train-size", "640", "--val-size", "32", "--out", str(out)]
    # a shell's background job inherits SIGINT ignored, and Python then keeps ignoring it:
    # give the child the default disposition, as an interactive terminal would
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:                            # wait until training runs
            if line.startswith("nn-core train seq2seq"):
                break
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("nn-core train: interrupted at step ")
    assert f"checkpoint saved to {out / 'model.npz'}" in message
    assert message.endswith(f"resume with: nn-core train --resume --out {out}")
    step = json.load(open(out / "history.json"))["step"]
    assert step > 0 and sorted(set(os.listdir(out)) - {"loss_curve.png", "forecast.png"}) == [
        "history.csv", "history.json", "model.npz"]
    res = subprocess.run([sys.executable, "-m", "nn_core", "train", "--resume", "--out",
                          str(out), "--max-steps", str(step + 5)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"resuming at step {step} " in res.stdout
    assert json.load(open(out / "history.json"))["step"] == step + 5


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "nn_core", "train", "lm", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--kv-groups" in out.stdout and "--threads" in out.stdout
    out = subprocess.run([sys.executable, "-m", "nn_core", "train", "--lr", "-1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--lr" in out.stderr


def test_a_checkpoint_with_a_bad_task_configuration(tmp_path, capsys):
    """eval/generate check the recorded configuration before generating any data."""
    model = nn_core.models.TransformerLM(13, 8, 2, 1, max_len=16, rng=0)
    good = {"hidden": 8, "heads": 2, "layers": 1, "num_kv_groups": None, "digits": 1, "block": 16,
            "train_exprs": 100, "val_exprs": 100, "data_seed": 0, "data": None,
            "data_sha256": None, "vocab": None, "val_frac": None}
    for task, config, pattern in [
            ("lm", {**good, "heads": 3}, "--heads must divide"),
            ("lm", {**good, "train_exprs": "many"}, "--train-exprs must be an int, got str"),
            ("lm", {**good, "digits": 0}, "--digits must be >= 1"),
            ("lm", {**good, "extra": 1}, "unexpected"),
            ("lm", [1, 2], "must be a dict"),
            ("chess", good, "unknown task")]:
        save(model, tmp_path / "m.npz", extra={"task": task, "config": config})
        for cmd in ("eval", "generate"):
            assert main([cmd, str(tmp_path / "m.npz")]) == 1
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and pattern in err, err
    save(model, tmp_path / "m.npz", extra={"task": "lm", "config": good})
    assert main(["generate", str(tmp_path / "m.npz"), "--num", "2"]) == 0


def test_the_task_may_follow_common_options(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--out", out, "lm", "--layers", "0"]) == 2
    assert "--layers must be >= 1" in capsys.readouterr().err
    assert main(["train", "--out", out, "--mode", "sort", "--min-len", "0"]) == 2
    assert "--min-len must be >= 1" in capsys.readouterr().err       # seq2seq's options
    assert main(["train", "--resume", "--out", out, "--mode", "sort"]) == 2
    err = capsys.readouterr().err
    assert "--mode is an option of the seq2seq task" in err and len(err.splitlines()) == 1


def test_threads_default_to_the_cores_the_process_may_use(monkeypatch):
    from nn_core import _parallel, cli

    for v in _parallel.THREAD_ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    assert cli.default_threads() == _parallel.available_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with _parallel.limit_threads(1):
        assert cli.default_threads() == 1
