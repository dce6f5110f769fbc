"""The nn-core command and its tasks: help and errors, smoke runs, reloads."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import nn_core
from nn_core.checkpoint import load, read_metadata, save
from nn_core.cli import main
from nn_core.layers import Linear
from nn_core.tasks import TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nn_core.__file__)))


def _falls(history_path, k=3):
    with open(history_path) as fh:
        h = json.load(fh)
    losses = h["step_loss"]
    return np.mean(losses[:k]), np.mean(losses[-k:]), h


def test_cli_help_and_errors(capsys, tmp_path):
    assert main([]) == 0
    assert "nn-core train" in capsys.readouterr().out
    assert main(["bogus"]) == 2
    with pytest.raises(SystemExit):
        main(["train", "seq2seq", "--epochs", "0"])
    save(Linear(2, 2), tmp_path / "plain.npz")
    with pytest.raises(SystemExit, match="not written by `nn-core train`"):
        main(["eval", str(tmp_path / "plain.npz")])
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="not a readable nn_core checkpoint"):
        main(["eval", str(tmp_path / "bad.npz")])
    assert set(TASKS) == {"seq2seq", "forecast", "lm"}


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "nn_core", "train", "lm", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--kv-groups" in out.stdout and "--threads" in out.stdout


# ---------------------------------------------------------------- task smoke runs
def test_seq2seq_smoke(tmp_path, capsys):
    out = str(tmp_path / "s2s")
    main(["train", "seq2seq", "--epochs", "1", "--max-steps", "40", "--batch-size", "32",
          "--hidden", "16", "--embed", "8", "--heads", "2", "--max-len", "5",
          "--train-size", "1280", "--val-size", "64", "--lr", "2e-2", "--out", out])
    first, last, _ = _falls(os.path.join(out, "history.json"))
    assert last < 0.8 * first
    ckpt = os.path.join(out, "model.npz")
    main(["eval", ckpt])
    main(["generate", ckpt, "--input", "12345", "907"])
    text = capsys.readouterr().out
    assert "exact match" in text
    assert "12345 ->" in text and "907 ->" in text
    # a checkpoint from before nn_core.models (class path nn_core.tasks.seq2seq) still runs
    assert read_metadata(ckpt)["module"]["class"] == "nn_core.models.seq2seq:Seq2SeqModel"
    old = os.path.join(out, "old.npz")
    with np.load(ckpt, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = str(arrays["__nn_core_checkpoint__"][()])
    arrays["__nn_core_checkpoint__"] = np.array(meta.replace("nn_core.models.seq2seq:",
                                                             "nn_core.tasks.seq2seq:"))
    np.savez(old, **arrays)
    assert read_metadata(old)["module"]["class"] == "nn_core.tasks.seq2seq:Seq2SeqModel"
    for path in (ckpt, old):
        main(["generate", path, "--input", "12345", "907"])
    new_text, old_text = capsys.readouterr().out.split("correct (reverse)\n")[:2]
    assert new_text == old_text


def test_forecast_smoke(tmp_path, capsys):
    out = str(tmp_path / "fc")
    main(["train", "forecast", "--epochs", "2", "--hidden", "16",
          "--steps", "2000", "--window", "8", "--horizon", "5", "--cell", "lstm", "--out", out])
    first, last, h = _falls(os.path.join(out, "history.json"))
    assert last < 0.8 * first
    m = h["epochs"][-1]
    assert m["val_mse"] < m["persistence_mse"]
    main(["eval", os.path.join(out, "model.npz")])
    assert "persistence" in capsys.readouterr().out


def test_lm_smoke_gqa(tmp_path, capsys):
    out = str(tmp_path / "lm")
    main(["train", "lm", "--epochs", "1", "--max-steps", "80", "--batch-size", "16",
          "--hidden", "16", "--heads", "4", "--kv-groups", "2", "--layers", "1", "--block", "24",
          "--train-exprs", "4000", "--val-exprs", "100", "--lr", "2e-2", "--out", out])
    first, last, _ = _falls(os.path.join(out, "history.json"), k=5)
    assert last < 0.85 * first          # uniform guessing is ln(13) = 2.56
    ckpt = os.path.join(out, "model.npz")
    model = load(ckpt)
    assert model.blocks[0].attn.params["W_k"].shape == (16, 8)     # 2 K/V groups of d_k 4
    main(["generate", ckpt, "--prompt", "12+3=", "--max-new-tokens", "5"])
    assert "12+3=|" in capsys.readouterr().out
