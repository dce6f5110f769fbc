"""nn-core on the user's files: forecast (CSV, .npy, .npz; statsmodels' sunspot numbers),
lm on UTF-8 text, seq2seq on tab-separated pairs; predict, generate --input-file; bad files
give one line naming the line and column, and never touch an existing run."""
import importlib.util
import json
import os

import numpy as np
import pytest

from nn_core.checkpoint import read_metadata
from nn_core.cli import main
from nn_core.datasets.files import DataFileError, read_pairs, read_table, read_text


def _series_csv(path, n=240, seed=0):
    """A date column (not numeric), a seasonal series with period 12 and a slow drift,
    and a noisy second variable."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    drift = np.zeros(n)                                # a persistent AR(1) part
    for k in range(1, n):
        drift[k] = 0.9 * drift[k - 1] + rng.standard_normal()
    temp = 10 + 5 * np.sin(2 * np.pi * t / 12) + drift + 0.2 * rng.standard_normal(n)
    wind = 3 + np.cos(2 * np.pi * t / 12) + 0.3 * rng.standard_normal(n)
    lines = ["date,temp,wind"] + [f"2000-{k:04d},{a:.4f},{b:.4f}" for k, a, b in zip(t, temp, wind)]
    path.write_text("\n".join(lines) + "\n")
    return np.stack([temp, wind], 1)


FC = ["--hidden", "16", "--window", "16", "--epochs", "6", "--batch-size", "16",
      "--lr", "1e-2"]


def test_forecast_on_a_csv_predict_eval_generate(tmp_path, capsys):
    csv_path = tmp_path / "weather.csv"
    values = _series_csv(csv_path)
    out = str(tmp_path / "run")
    assert main(["train", "forecast", "--data", str(csv_path), "--columns", "temp,wind",
                 "--target", "temp", "--out", out] + FC) == 0
    text = capsys.readouterr().out
    assert "240 rows x 2 columns (temp, wind)" in text and "seasonal-naive (period 12)" in text
    m = json.load(open(os.path.join(out, "history.json")))["epochs"][-1]
    assert m["val_mse"] < 0.5 * m["persistence_mse"] and m["val_mse"] < m["seasonal_mse"]
    config = read_metadata(os.path.join(out, "model.npz"))["extra"]["config"]
    assert config["data"] == str(csv_path) and config["season"] == 12
    assert config["target"] == ["temp"] and config["horizon"] == 1
    train = values[:192]                               # standardised with the first 80 % only
    np.testing.assert_allclose(config["mean"], train.mean(0), atol=1e-4)
    np.testing.assert_allclose(config["std"], train.std(0), atol=1e-4)
    assert main(["eval", out]) == 0 and main(["generate", out, "--num", "2"]) == 0
    assert "seasonal-naive" in capsys.readouterr().out
    # predict: every window of the file, the last one forecasting past its end
    assert main(["predict", out]) == 0
    rows = (tmp_path / "run" / "forecasts.csv").read_text().splitlines()
    assert rows[0] == "time_index,temp,temp_observed" and len(rows) == 1 + 240 - 16 + 1
    first, last = rows[1].split(","), rows[-1].split(",")
    assert first[0] == "16" and float(first[2]) == pytest.approx(values[16, 0], abs=1e-3)
    assert last[0] == "240" and last[2] == "" and 0 < float(last[1]) < 20
    assert main(["predict", out]) == 2                       # never replaced silently
    assert "--overwrite" in capsys.readouterr().err
    newer = tmp_path / "newer.csv"
    _series_csv(newer, n=40, seed=1)
    assert main(["predict", out, "--data", str(newer), "--output", str(tmp_path / "f.csv")]) == 0
    assert len((tmp_path / "f.csv").read_text().splitlines()) == 1 + 40 - 16 + 1
    # the training file changes: eval and resume refuse, in one line
    _series_csv(csv_path, seed=5)
    assert main(["eval", out]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "changed since the run started" in err


def test_forecast_resume_and_array_files(tmp_path, capsys, monkeypatch):
    values = _series_csv(tmp_path / "s.csv")
    np.save(tmp_path / "s.npy", values)
    np.savez(tmp_path / "s.npz", temp=values[:, 0], wind=values[:, 1])
    monkeypatch.chdir(tmp_path)
    args = ["train", "forecast", "--data", "s.npy", "--out", "a"] + FC
    assert main(args + ["--max-steps", "7"]) == 0
    assert main(["train", "forecast", "--resume", "--out", "a", "--data", "s.npy"]) == 0
    assert main(["train", "forecast", "--resume", "--out", "a", "--data", "s.csv"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(args[:-len(FC)] + FC + ["--out", "b"]) == 0
    wa, wb = (json.load(open(os.path.join(d, "history.json"))) for d in ("a", "b"))
    assert wa["step_loss"] == wb["step_loss"]             # resumed == uninterrupted
    cfg = read_metadata("b/model.npz")["extra"]["config"]
    assert cfg["columns"] == ["c1", "c2"] and cfg["target"] == ["c1", "c2"]
    assert main(["train", "forecast", "--data", "s.npz", "--target", "wind", "--out", "c",
                 "--max-steps", "2"] + FC) == 0
    assert read_metadata("c/model.npz")["extra"]["config"]["columns"] == ["temp", "wind"]


def _monthly_csv(path, n=120, gaps=(), seed=0):
    """A monthly series with ISO dates and missing cells at the rows ``gaps``."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 10 + 4 * np.sin(2 * np.pi * t / 12) + 0.3 * rng.standard_normal(n)
    cells = ["NA" if k in gaps else f"{v:.4f}" for k, v in enumerate(y)]
    lines = ["month,level"] + [f"{2000 + k // 12}-{k % 12 + 1:02d},{c}" for k, c in
                               zip(t, cells)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("missing, said", [("interpolate", "2 missing level filled"),
                                           ("ffill", "2 missing level filled"),
                                           ("drop", "2 rows with a missing value dropped")])
def test_forecast_missing_and_time_column(tmp_path, capsys, missing, said):
    path = tmp_path / "m.csv"
    _monthly_csv(path, gaps=(30, 31))
    out = str(tmp_path / "run")
    args = ["train", "forecast", "--data", str(path), "--out", out, "--max-steps", "2"]
    assert main(args + FC) == 2                         # missing values: an error by default
    assert "--missing interpolate|ffill|drop" in capsys.readouterr().err
    assert main(args + FC + ["--missing", missing]) == 0
    assert said in capsys.readouterr().out                  # the data line counts them
    config = read_metadata(os.path.join(out, "model.npz"))["extra"]["config"]
    assert config["missing"] == missing and config["time_column"] == "month"
    assert config["columns"] == ["level"]              # the time column is not a value
    assert main(["predict", out]) == 0                  # the same gaps, handled alike
    rows = [r.split(",") for r in (tmp_path / "run" / "forecasts.csv").read_text().splitlines()]
    if missing == "drop":                     # two months left out: not regular, row numbers
        assert rows[0][0] == "time_index" and rows[-1][0] == str(120 - 2)
        return
    assert rows[0] == ["month", "level", "level_observed"]
    assert rows[1][0] == "2001-05" and rows[-2][0] == "2009-12"  # window 16, horizon 1
    assert rows[-1][0] == "2010-01" and rows[-1][2] == ""       # continued past the end


def test_a_small_series_trains_enough_steps_by_default(tmp_path, capsys):
    """100 yearly values (Nile-like: a level shift and noise): 48 training windows
    would be one batch of 64, 8 steps in all; the defaults shrink the batch and add
    epochs, and say so."""
    rng = np.random.default_rng(3)
    y = np.where(np.arange(100) < 28, 1100.0, 850.0) + 125 * rng.standard_normal(100)
    path = tmp_path / "nile.csv"
    path.write_text("year,volume\n" + "".join(f"{1871 + k},{v:.1f}\n" for k, v in enumerate(y)))
    out = str(tmp_path / "run")
    assert main(["train", "forecast", "--data", str(path), "--columns", "volume",
                 "--out", out]) == 0
    text = capsys.readouterr().out
    assert "small data: batches of 8 (not 64), 6 per epoch; 17 epochs (not 8)" in text
    assert "17 epochs x 6 batches of 8" in text                      # the run header
    h = json.load(open(os.path.join(out, "history.json")))
    assert len(h["step_loss"]) == 102
    assert h["epochs"][-1]["val_mse"] < h["epochs"][-1]["persistence_mse"]
    # options given are kept
    assert main(["train", "forecast", "--data", str(path), "--columns", "volume", "--out",
                 str(tmp_path / "r2"), "--epochs", "2", "--batch-size", "64"]) == 0
    assert "small data" not in capsys.readouterr().out


def test_forecast_run_figures(tmp_path):
    """loss_curve.png draws val_mse and the baselines' levels; forecast.png the
    validation stretch, observed and forecast."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    path = tmp_path / "m.csv"
    _monthly_csv(path, n=160)
    out = tmp_path / "run"
    assert main(["train", "forecast", "--data", str(path), "--out", str(out)] + FC) == 0
    m = json.load(open(out / "history.json"))["epochs"][-1]
    assert m["seasonal_mse"] > 0 and m["persistence_mse"] > 0
    curve, fc = imread(out / "loss_curve.png")[..., :3], imread(out / "forecast.png")[..., :3]
    near = lambda img, rgb: (np.abs(img - np.array(rgb)).max(-1) < 0.08).mean()  # noqa: E731
    orange, blue, green, gray = ((1.0, 0.498, 0.055), (0.122, 0.467, 0.706),
                                 (0.173, 0.627, 0.173), (0.498, 0.498, 0.498))
    assert near(curve, orange) > 1e-3 and near(curve, green) > 1e-4   # val_mse, seasonal
    assert near(curve, gray) > 1e-4                                     # persistence
    assert near(fc, blue) > 2e-3 and near(fc, orange) > 2e-3           # observed, forecast


def test_forecast_time_column_named_and_irregular(tmp_path, capsys):
    path = tmp_path / "d.csv"
    n = 80
    days = ["2024-01-01", "2024-01-02"] + [f"2024-{3 + k // 28:02d}-{k % 28 + 1:02d}"
                                           for k in range(n - 2)]
    lines = ["note,day,v"] + [f"x{k},{d},{np.sin(k / 3):.4f}" for k, d in enumerate(days)]
    path.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "run")
    assert main(["train", "forecast", "--data", str(path), "--time-column", "day",
                 "--columns", "v", "--out", out, "--max-steps", "1"] + FC) == 0
    assert read_metadata(os.path.join(out, "model.npz"))["extra"]["config"][
        "time_column"] == "day"
    assert main(["predict", out]) == 0                  # irregular days: row numbers
    rows = (tmp_path / "run" / "forecasts.csv").read_text().splitlines()
    assert rows[0].split(",")[0] == "time_index" and rows[-1].split(",")[0] == str(n)
    capsys.readouterr()
    assert main(["train", "forecast", "--data", str(path), "--time-column", "when",
                 "--out", str(tmp_path / "r2")] + FC) == 2
    assert "--time-column" in capsys.readouterr().err


def _sunspots():
    spec = importlib.util.find_spec("statsmodels")
    if spec is None:
        pytest.skip("statsmodels is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "sunspots", "sunspots.csv")
    if not os.path.exists(path):
        pytest.skip("this statsmodels has no sunspots.csv")
    return path


def test_sunspots_beat_persistence_and_seasonal_naive(tmp_path, capsys):
    """Yearly sunspot numbers 1700-2008 (statsmodels' copy), one year ahead: the last
    20 % (62 years) validate."""
    path = _sunspots()
    out = str(tmp_path / "sun")
    assert main(["train", "forecast", "--data", path, "--columns", "SUNACTIVITY",
                 "--epochs", "40", "--batch-size", "32", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "309 rows x 1 columns (SUNACTIVITY)" in text
    m = json.load(open(os.path.join(out, "history.json")))["epochs"][-1]
    assert m["val_mse"] < 0.6 * m["persistence_mse"] and m["val_mse"] < 0.5 * m["seasonal_mse"]
    assert "seasonal-naive (period 11)" in text
    assert main(["predict", out]) == 0
    last = (tmp_path / "sun" / "forecasts.csv").read_text().splitlines()[-1].split(",")
    assert last[0] == "309" and last[2] == ""             # the forecast for 2009


def test_lm_on_a_text_file(tmp_path, capsys):
    text = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n") * 3
    path = tmp_path / "story.txt"
    path.write_text(text, encoding="utf-8")
    out = str(tmp_path / "lm")
    assert main(["train", "lm", "--data", str(path), "--hidden", "16", "--heads", "2",
                 "--layers", "1", "--block", "24", "--batch-size", "16", "--epochs", "4",
                 "--lr", "1e-2", "--out", out]) == 0
    text_out = capsys.readouterr().out
    assert "bits per character" in text_out and "character frequencies alone" in text_out
    m = json.load(open(os.path.join(out, "history.json")))["epochs"][-1]
    assert m["val_bpc"] < 0.6 * m["unigram_bpc"]
    cfg = read_metadata(os.path.join(out, "model.npz"))["extra"]["config"]
    assert cfg["vocab"] == "\n .abcdefghijklmnopqrstuvwxyz"
    assert main(["generate", out, "--prompt", "the quick", "--max-new-tokens", "40",
                 "--temperature", "0"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("the quick|") and len(line) == len("the quick|") + 40
    assert main(["generate", out, "--prompt", "the Quick"]) == 2
    err = capsys.readouterr().err
    assert "'Q'" in err and "column 5" in err and len(err.strip().splitlines()) == 1
    assert main(["generate", out, "--num", "1", "--max-new-tokens", "5"]) == 0


def test_seq2seq_on_pairs_and_input_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdef"), rng.integers(2, 6))) for _ in range(600)]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{w}\t{w[::-1].upper()}\n" for w in words))
    out = str(tmp_path / "s2s")
    assert main(["train", "seq2seq", "--data", str(pairs), "--hidden", "32", "--embed", "16",
                 "--heads", "2", "--epochs", "6", "--batch-size", "32", "--lr", "2e-2",
                 "--out", out]) == 0
    assert "held-out pairs of pairs.tsv" in capsys.readouterr().out
    m = json.load(open(os.path.join(out, "history.json")))["epochs"][-1]
    assert m["exact_match"] > 0.5
    inputs = tmp_path / "in.txt"
    inputs.write_text("abc\tCBA\nfeed\n\ncafe\tEFAC\n")
    assert main(["generate", out, "--input-file", str(inputs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("abc -> ") and lines[1].startswith("feed -> ")
    assert lines[-1].endswith("/2 correct") and len(lines) == 4
    inputs.write_text("abc\nabz\n")
    assert main(["generate", out, "--input-file", str(inputs)]) == 2
    err = capsys.readouterr().err
    assert "line 2, column 3" in err and "'z'" in err
    assert main(["generate", out, "--input", "ab", "cd"]) == 0
    capsys.readouterr()


def _run_files(tmp_path):
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "model.npz").write_bytes(b"keep me")
    return tmp_path / "run"


BAD_FILES = [
    # (task, file name, content (str or bytes), extra options, text the message must hold)
    ("forecast", "ragged.csv", "a,b\n1,2\n3\n4,5\n", [], "ragged.csv line 3: 1 fields, expected 2"),
    ("forecast", "word.csv", "a,b\n1,2\n3,x\n", [], "word.csv line 3, column 2 (b): 'x' is not a number"),
    ("forecast", "nan.csv", "a\n1\nnan\n", [], "line 3, column 1 (a): 'nan' is a missing value; to fill"),
    ("forecast", "inf.csv", "a\n1\n-inf\n", [], "line 3, column 1 (a): '-inf' is not a finite"),
    ("forecast", "hole.csv", "a,b\n1,2\n3,\n", [], "line 3, column 2 (b): empty value"),
    ("forecast", "empty.csv", "\n\n", [], "empty.csv is empty"),
    ("forecast", "head.csv", "a,b\n", [], "has a header but no data rows"),
    ("forecast", "ok.csv", "a,b\n" + "1,2\n" * 50, ["--columns", "a,c"], "has no column 'c' (its columns: a, b)"),
    ("forecast", "ok.csv", "a,b\n" + "1,2\n" * 50, ["--target", "c"], "--target 'c' is not one of"),
    ("forecast", "ok.csv", "a,b\n" + "1,2\n" * 50, ["--window", "60"], "--window 60 is longer than the series"),
    ("forecast", "ok.csv", "a,b\n" + "1,2\n" * 50, ["--window", "40"], "--window 40 and --horizon 1 need at least 41"),
    ("forecast", "ok.csv", "a,b\n" + "1,2\n" * 50, ["--steps", "900"], "--steps applies to the generated"),
    ("forecast", "bad.csv", b"a\n1\n\xff2\n", [], "bad.csv line 3, column 1: byte 0xff is not UTF-8"),
    ("forecast", "missing.csv", None, [], "cannot read"),
    ("lm", "t.txt", "", [], "t.txt is empty"),
    ("lm", "t.txt", b"abc\nd\xe9f\n", [], "t.txt line 2, column 2: byte 0xe9 is not UTF-8"),
    ("lm", "t.txt", "short text", [], "--block 48 needs at least 50 characters"),
    ("lm", "t.txt", "x" * 500, ["--digits", "2"], "--digits applies to the generated data"),
    ("seq2seq", "p.tsv", "a\tb\nc d\n", [], "p.tsv line 2: no tab"),
    ("seq2seq", "p.tsv", "a\tb\tc\n", [], "p.tsv line 1: 3 tab-separated fields"),
    ("seq2seq", "p.tsv", "a\tb\nab\t\n", [], "p.tsv line 2, column 4: empty target"),
    ("seq2seq", "p.tsv", "a\tb\n", [], "has 1 pair"),
]


@pytest.mark.parametrize("task, name, content, extra, message", BAD_FILES,
                         ids=[f"{t}-{m[:30]}" for t, _, _, _, m in BAD_FILES])
def test_bad_files_give_one_line_and_write_nothing(tmp_path, capsys, task, name, content,
                                                   extra, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    run = _run_files(tmp_path)
    code = main(["train", task, "--data", str(path), "--out", str(run), "--overwrite"] + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert (run / "model.npz").read_bytes() == b"keep me" and os.listdir(run) == ["model.npz"]


def test_file_options_need_data_and_generate_options(tmp_path, capsys):
    assert main(["train", "forecast", "--columns", "a", "--out", str(tmp_path / "x")]) == 2
    assert "--columns needs --data" in capsys.readouterr().err
    assert main(["train", "lm", "--val-frac", "0.2", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert main(["predict", "--help"]) == 0
    section = capsys.readouterr().out.split("options:")[1]
    assert all("default" in e for e in section.split("\n  -")[2:])


def test_readers_directly(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("1\t2\n3\t4\n")                       # no header: c1, c2
    names, v = read_table(p)
    assert names == ["c1", "c2"] and v.tolist() == [[1, 2], [3, 4]]
    p = tmp_path / "q.csv"
    p.write_text('"YEAR";"N"\n1700;5\n1701;11\n')      # quoted header, ';'
    assert read_table(p, ["N"])[1].ravel().tolist() == [5, 11]
    np.save(tmp_path / "o.npy", np.array([object()], dtype=object))
    with pytest.raises(DataFileError, match="not a readable NumPy file"):
        read_table(tmp_path / "o.npy")
    np.save(tmp_path / "f.npy", np.array([1.0, np.inf]))
    with pytest.raises(DataFileError, match="row 1, column 1: inf"):
        read_table(tmp_path / "f.npy")
    (tmp_path / "p.tsv").write_text("a\tb\n\nc\td\n")
    assert read_pairs(tmp_path / "p.tsv") == [("a", "b", 1), ("c", "d", 3)]
    (tmp_path / "bom.txt").write_bytes("\ufeffhé".encode())
    assert read_text(tmp_path / "bom.txt") == "hé"


@pytest.mark.parametrize("name", ["files", "series", "vocab"])
def test_docstring_examples_run(name):
    import doctest
    import importlib
    module = importlib.import_module(f"nn_core.datasets.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_series_helpers_and_vocab():
    from nn_core.datasets.series import seasonal_naive, seasonal_period
    from nn_core.datasets.vocab import CharVocab
    rng = np.random.default_rng(0)
    assert seasonal_period(rng.standard_normal((300, 1))) is None       # white noise
    z = np.arange(30.0)[:, None]
    assert seasonal_naive(z, [20], 3, 7)[0, 0] == 16.0                    # 20 + 3 - 7
    assert seasonal_naive(z, [20], 9, 7)[0, 0] == 15.0                    # 29 - 14
    v = CharVocab("ab", reserved=3)
    assert len(v) == 5 and v.decode([3, 4, 2, 3], stop=2) == "ab"
    with pytest.raises(ValueError, match="column 2: character 'c'"):
        v.encode("ac")
