"""What a checkpoint says is data, not an instruction: crafted checkpoints built from a
real run name files the CLI must not open (a device, a FIFO, a changed file) and
configuration values beyond their flags' bounds; each is one line, before anything is
generated or read."""
import json
import os

import numpy as np
import pytest

from nn_core.cli import main

from checkpoint_files import _members, _meta_of, _with_meta, _zip


def _series_csv(path, n=120, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    a = np.sin(2 * np.pi * t / 12) + 0.1 * rng.standard_normal(n)
    b = np.cos(2 * np.pi * t / 12) + 0.1 * rng.standard_normal(n)
    path.write_text("a,b\n" + "".join(f"{x:.5f},{y:.5f}\n" for x, y in zip(a, b)))


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory):
    """A forecast run trained on a CSV file: (run folder, the CSV)."""
    root = tmp_path_factory.mktemp("fc")
    csv_path = root / "s.csv"
    _series_csv(csv_path)
    out = root / "run"
    assert main(["train", "forecast", "--data", str(csv_path), "--out", str(out),
                 "--hidden", "8", "--window", "8", "--epochs", "1", "--batch-size", "32"]) == 0
    return out, csv_path


@pytest.fixture(scope="module")
def generated_runs(tmp_path_factory):
    """Runs of every task on generated data, small: {task: run folder}."""
    root = tmp_path_factory.mktemp("gen")
    opts = {"forecast": ["--steps", "600", "--window", "8", "--horizon", "2"],
            "lm": ["--train-exprs", "60", "--val-exprs", "30", "--block", "16",
                   "--layers", "1", "--heads", "2"],
            "seq2seq": ["--train-size", "64", "--val-size", "16", "--max-len", "6",
                        "--heads", "2", "--embed", "8"]}
    runs = {}
    for task, extra in opts.items():
        out = root / task
        assert main(["train", task, "--out", str(out), "--hidden", "8", "--epochs", "1",
                     "--batch-size", "32"] + extra) == 0
        runs[task] = out
    return runs


def _craft(run, dest, edit):
    """A copy of ``run``'s checkpoint whose metadata ``edit`` changed; returns its path."""
    members = _members(run / "model.npz")
    meta = json.loads(json.dumps(_meta_of(members)))
    edit(meta)
    dest.mkdir(parents=True, exist_ok=True)
    _zip(dest / "model.npz", _with_meta(members, meta))
    return dest


def _one_line(capsys, code, status, *words):
    err = capsys.readouterr().err.strip()
    assert code == status, err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def _set_data(path):
    def edit(meta):
        meta["extra"]["config"]["data"] = str(path)
    return edit


@pytest.mark.parametrize("command", [["eval"], ["generate", "--num", "1"], ["predict"]])
def test_recorded_device_is_not_read(forecast_run, tmp_path, capsys, command):
    run, _ = forecast_run
    crafted = _craft(run, tmp_path / "zero", _set_data("/dev/zero"))
    code = main([command[0], str(crafted)] + command[1:]
                + (["--output", str(tmp_path / "f.csv")] if command[0] == "predict" else []))
    _one_line(capsys, code, 1, "/dev/zero", "not a regular file", "--data")
    assert not (tmp_path / "f.csv").exists()


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_recorded_fifo_does_not_block(forecast_run, tmp_path, capsys, command):
    run, _ = forecast_run
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    crafted = _craft(run, tmp_path / "fifo", _set_data(fifo))
    code = main([command, str(crafted)])
    _one_line(capsys, code, 1, str(fifo), "not a regular file")


def test_recorded_file_that_changed_is_not_read_unless_named(forecast_run, tmp_path, capsys):
    run, csv_path = forecast_run
    other = tmp_path / "other.csv"
    _series_csv(other, seed=3)                    # same columns, other bytes
    crafted = _craft(run, tmp_path / "changed", _set_data(other))
    out = tmp_path / "f.csv"
    for command in (["eval"], ["predict", "--output", str(out)]):
        code = main([command[0], str(crafted)] + command[1:])
        _one_line(capsys, code, 1, str(other), "SHA-256", "--data")
    assert not out.exists()
    # named by the user, the same file is read
    assert main(["predict", str(crafted), "--data", str(other), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) > 100


def test_data_file_options_of_the_cli_are_bounded(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for task in ("forecast", "lm", "seq2seq"):
        out = tmp_path / task
        code = main(["train", task, "--data", str(fifo), "--out", str(out)])
        _one_line(capsys, code, 2, str(fifo), "not a regular file")
        assert not out.exists()


CONFIGS = [
    # (task, config key, crafted value, words of the message)
    ("lm", "train_exprs", 10 ** 9, ["--train-exprs", "<="]),
    ("lm", "val_exprs", 10 ** 9, ["--val-exprs", "<="]),
    ("lm", "block", 10 ** 8, ["--block", "<="]),
    ("lm", "layers", "2", ["--layers", "int"]),
    ("seq2seq", "max_len", 10 ** 8, ["--max-len", "<="]),
    ("seq2seq", "train_size", 10 ** 9, ["--train-size", "<="]),
    ("seq2seq", "val_size", 10 ** 9, ["--val-size", "<="]),
    ("seq2seq", "mode", ["reverse"], ["--mode"]),
    ("forecast", "steps", 10 ** 9, ["--steps", "<="]),
    ("forecast", "steps", 5_000_000, ["--steps", "--window", "at most"]),
    ("forecast", "window", 10 ** 8, ["--window", "<="]),
    ("forecast", "dt", "0.1", ["--dt", "real"]),
]


@pytest.mark.parametrize("task, key, value, words", CONFIGS,
                         ids=[f"{t}-{k}-{str(v)[:12]}" for t, k, v, _ in CONFIGS])
def test_config_values_are_bounded_as_their_flags(generated_runs, tmp_path, capsys, task, key,
                                                  value, words):
    def edit(meta):
        meta["extra"]["config"][key] = value
    crafted = _craft(generated_runs[task], tmp_path / "c", edit)
    for command in (["eval"], ["generate", "--num", "1"]):
        code = main([command[0], str(crafted)] + command[1:])
        _one_line(capsys, code, 1, "invalid", *words)
    code = main(["train", "--resume", "--out", str(crafted)])
    _one_line(capsys, code, 1, "--resume", *words)


@pytest.mark.parametrize("key, value", [("task", [1]), ("task", {"a": 1}), ("train", "x"),
                                        ("config", "x"), ("config", [1])])
def test_wrong_types_in_extra(generated_runs, tmp_path, capsys, key, value):
    def edit(meta):
        meta["extra"][key] = value
    crafted = _craft(generated_runs["lm"], tmp_path / "c", edit)
    for command in (["eval"], ["generate", "--num", "1"]):
        code = main([command[0], str(crafted)] + command[1:])
        _one_line(capsys, code, 1, str(crafted))
    if key != "train":                        # resuming reads the training state instead
        code = main(["train", "--resume", "--out", str(crafted)])
        _one_line(capsys, code, 1, "--resume")


def test_flags_share_the_bounds(tmp_path, capsys):
    for argv, words in ((["lm", "--train-exprs", str(10 ** 9)], ["--train-exprs", "<="]),
                        (["seq2seq", "--max-len", str(10 ** 8)], ["--max-len", "<="]),
                        (["forecast", "--steps", str(10 ** 9)], ["--steps", "<="])):
        code = main(["train"] + argv + ["--out", str(tmp_path / "x")])
        _one_line(capsys, code, 2, *words)
        assert not (tmp_path / "x").exists()


def test_long_pairs_are_refused_before_the_run_folder(tmp_path, capsys):
    pairs = tmp_path / "p.tsv"
    pairs.write_text("ab\tba\n" + "x" * 200_000 + "\ty\ncd\tdc\n")
    out = tmp_path / "run"
    code = main(["train", "seq2seq", "--data", str(pairs), "--out", str(out)])
    _one_line(capsys, code, 2, "p.tsv line 2", "200000 characters", "limit")
    assert not out.exists()


def test_standardising_overflow_names_column_and_row(forecast_run, tmp_path, capsys):
    huge = tmp_path / "huge.csv"
    rows = ["a,b"] + [f"{k % 7}.5,1.0" for k in range(60)]
    rows[5] = "1.5e308,1.0"
    huge.write_text("\n".join(rows + ["1e308,2.0"] * 3) + "\n")
    out = tmp_path / "run"
    code = main(["train", "forecast", "--data", str(huge), "--out", str(out), "--window", "4"])
    _one_line(capsys, code, 2, "huge.csv", "'a'", "row 5", "rescale")
    assert not out.exists()
    run, _ = forecast_run
    newer = tmp_path / "newer.csv"
    newer.write_text("a,b\n" + "0.5,0.5\n" * 20 + "1.7e308,0.5\n")
    code = main(["predict", str(run), "--data", str(newer), "--output", str(tmp_path / "f.csv")])
    _one_line(capsys, code, 2, "newer.csv", "row 21", "'a'", "overflows")


def test_two_runs_into_one_folder(tmp_path):
    """A run locks its folder for its lifetime: a second process is refused, naming the
    first one's pid; once the first is killed, the folder is free again."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "R"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, "-m", "nn_core", "train", "forecast", "--out", str(out),
           "--hidden", "8", "--steps", "3000", "--window", "8", "--horizon", "2",
           "--batch-size", "8"]
    first = subprocess.Popen(cmd + ["--seed", "1", "--epochs", "500"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:                  # training has started: the lock is held
            if line.startswith("nn-core train forecast"):
                break
        second = subprocess.run(cmd + ["--seed", "2", "--epochs", "1", "--overwrite"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None
        err = second.stderr.strip()
        assert second.returncode == 1 and len(err.splitlines()) == 1, err
        assert f"process {first.pid}" in err and "in use" in err, err
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # killed: the kernel released the lock; a resume or overwrite may take the folder
    time.sleep(0.1)
    third = subprocess.run(cmd + ["--seed", "3", "--epochs", "1", "--overwrite"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr


def _limited(nbytes):
    """A preexec_fn: files of at most ``nbytes`` (a write past it fails with EFBIG)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def _env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def test_full_disk_during_a_checkpoint_save(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "R"
    cmd = [sys.executable, "-m", "nn_core", "train", "lm", "--out", str(out), "--hidden", "32",
           "--train-exprs", "200", "--val-exprs", "40", "--block", "16", "--layers", "1",
           "--epochs", "2", "--batch-size", "32"]
    first = subprocess.run(cmd + ["--max-steps", "2"], env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    good = (out / "model.npz").read_bytes()
    size = len(good)
    resumed = subprocess.run([sys.executable, "-m", "nn_core", "train", "--resume", "--out",
                              str(out)], env=_env(), capture_output=True, text=True,
                             timeout=300, preexec_fn=_limited(size // 2))
    err = resumed.stderr.strip()
    msg = err.splitlines()[-1]                         # after the progress lines
    assert resumed.returncode == 1 and "Traceback" not in err, err
    assert msg.startswith(f"nn-core train: could not write {out / 'model.npz'}: File too "
                          "large (it needs "), msg
    assert msg.endswith(f"nn-core train --resume --out {out} continues from the last good "
                        "checkpoint"), msg
    assert (out / "model.npz").read_bytes() == good              # the last good one, intact
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_predict_into_a_missing_folder_or_a_full_disk(forecast_run, tmp_path, capsys):
    import subprocess
    import sys

    run, _ = forecast_run
    code = main(["predict", str(run), "--output", str(tmp_path / "no" / "f.csv")])
    _one_line(capsys, code, 2, "--output", "does not exist")
    out = tmp_path / "f.csv"
    res = subprocess.run([sys.executable, "-m", "nn_core", "predict", str(run), "--output",
                          str(out)], env=_env(), capture_output=True, text=True, timeout=300,
                         preexec_fn=_limited(1000))
    err = res.stderr.strip()
    assert res.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"could not write {out}" in err and "it needs" in err, err
    assert not os.listdir(tmp_path) or not out.exists()


def test_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys):
    out = tmp_path / "R"
    code = main(["train", "forecast", "--hidden", "100000", "--steps", "600", "--window", "8",
                 "--horizon", "2", "--out", str(out)])
    _one_line(capsys, code, 2, "--hidden 100000", "parameters", "GiB", "available")
    assert not out.exists()


def test_second_ctrl_c_keeps_the_exit_status(tmp_path):
    """Ctrl-C twice, 50 ms apart, during a split recurrent sweep (two threads, 64 rows):
    the run saves and exits 130 with its one line, never dies by the signal."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "R"
    cmd = [sys.executable, "-m", "nn_core", "train", "forecast", "--out", str(out),
           "--threads", "2", "--batch-size", "64", "--hidden", "64", "--window", "64",
           "--steps", "20000", "--epochs", "50"]
    for attempt in range(3):
        proc = subprocess.Popen(cmd + ["--overwrite"] * bool(attempt), env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            for line in proc.stdout:
                if line.startswith("nn-core train forecast"):
                    break
            time.sleep(1.0 + 0.3 * attempt)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, (proc.returncode, stderr)
        assert "Traceback" not in stderr, stderr
        assert "resume with: nn-core train --resume" in stderr.strip().splitlines()[-1]
