"""Smoke tests of the comparison scripts (``python -m nn_core.bench ...``): their
helpers, and one tiny end-to-end run each where torch is installed.  Speed itself is
never asserted here."""
import numpy as np
import pytest

from nn_core.bench import _common
from nn_core.bench import recurrent as R


def test_target_ratio_takes_the_stricter_float64_target():
    assert R.target_ratio("lstm", "M", np.float32) == 1.0
    assert R.target_ratio("lstm", "S", np.float32) == 0.6
    assert R.target_ratio("gru", "L", np.float32) == 0.7
    assert R.target_ratio("rnn", "latency", np.float32) == 0.3
    assert R.target_ratio("lstm", "M", np.float64) == 0.7
    assert R.target_ratio("gru", "S", np.float64) == 0.3


def test_flops_count_every_layer():
    assert R.flops(2, 3, 4, 5, 4) == 6.0 * 2 * 3 * 4 * 5 * (4 + 5)
    assert R.flops(2, 3, 4, 5, 4, layers=2) == (6.0 * 2 * 3 * 4 * 5 * (4 + 5)
                                                + 6.0 * 2 * 3 * 4 * 5 * (5 + 5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, H", [(1, 8), (4, 8), (4, 256)])
def test_gemm_bound_and_peak_are_positive_finite_times(dtype, B, H):
    """Measured values are only checked for sanity here: no test compares two timings."""
    for T in (1, 64):
        t = R.gemm_bound(T, B, 3, H, 4, dtype)
        assert np.isfinite(t) and t > 0
    assert np.isfinite(R.peak_rate(dtype, n=64)) and R.peak_rate(dtype, n=64) > 0


def test_interleaved_reads_the_clock_it_is_given():
    """A fake clock that advances 0.5 per call to the function: the medians are
    computed from it (no real time is measured or asserted)."""
    now = [0.0]

    def tick():
        now[0] += 0.5

    res = _common.interleaved({"a": tick}, repeat=3, min_time=0.0, clock=lambda: now[0])
    assert res["a"] == 0.5
    assert set(_common.CLOCKS) == {"wall", "cpu"}


def test_interleaved_both_clocks_reads_each_clock_over_the_same_samples(monkeypatch):
    """Fake clocks: per call, wall advances 0.5 and CPU time 0.75 (1.5 busy cores)."""
    now = {"wall": 0.0, "cpu": 0.0}

    def tick():
        now["wall"] += 0.5
        now["cpu"] += 0.75

    monkeypatch.setitem(_common.CLOCKS, "wall", lambda: now["wall"])
    monkeypatch.setitem(_common.CLOCKS, "cpu", lambda: now["cpu"])
    res = _common.interleaved({"a": tick}, repeat=3, min_time=0.0, clock="both")
    assert res["a"] == _common.Times(wall=0.5, cpu=0.75)
    row = _common.fmt_times(res["a"])
    assert row.split() == ["500.000", "750.000", "1.50"]
    assert len(row) == len(_common.times_header("nn"))
    # the default clock still returns one number per function
    assert _common.interleaved({"a": tick}, repeat=3, min_time=0.0)["a"] == 0.5


def test_scaling_table_divides_each_clock_by_the_first_thread_count():
    T = _common.Times
    results = {"m": {1: (T(2.0, 2.0), T(4.0, 4.0)), 2: (T(1.0, 3.0), T(4.0, 8.0))},
               "only one count": {1: (T(1.0, 1.0), T(1.0, 1.0))}}
    lines = _common.scaling_table(results, [1, 2], width=8)
    assert "2t/1t" in lines[1]
    assert lines[2:] == ["m              0.50   1.50          1.00   2.00"]
    assert _common.scaling_table(results, [1]) == []


def test_interleaved_settle_samples_every_contender():
    calls = {"a": 0, "b": 0}

    def bump(k):
        def f():
            calls[k] += 1
        return f

    res = _common.interleaved({"a": bump("a"), "b": bump("b")}, repeat=3, min_time=0.0,
                              settle=0.001)
    assert set(res) == {"a", "b"} and all(v >= 0 for v in res.values())
    # warm-up + calibration + per round: one untimed settle call and >= 1 timed call
    assert calls["a"] >= 1 + 1 + 3 * 2 and calls["b"] >= 1 + 1 + 3 * 2


def _row_numbers(line, skip):
    """The numeric fields of a table row after its first ``skip`` fields."""
    return [float(v.rstrip("%")) for v in line.split()[skip:] if v[0].isdigit() and "-" not in v]


def test_recurrent_script_runs_on_the_clock_it_is_given(capsys, monkeypatch):
    """Both clocks are measured in the same samples; ``--clock`` picks the ratio's."""
    pytest.importorskip("torch")
    clocks = []
    real = R.interleaved

    def spy(*args, **kwargs):
        clocks.append(kwargs.get("clock"))
        return real(*args, **kwargs)

    monkeypatch.setattr(R, "interleaved", spy)
    assert R.main(["--shapes", "S", "--cells", "rnn,lstm", "--dtypes", "f64",
                   "--threads", "1", "--repeat", "1", "--clock", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "# peak (1 thread(s), f64" in out and "on the cpu clock" in out
    hdr = next(ln for ln in out.splitlines() if ln.startswith("cell"))
    assert hdr.split()[4:9] == ["nn", "ms", "cpu", "torch", "ms"] and hdr.endswith("load")
    rows = [ln for ln in out.splitlines() if ln.startswith(("rnn ", "lstm "))]
    assert len(rows) == 2 and all("%" in ln for ln in rows)
    for ln in rows:
        _, nn_cpu, _, torch_cpu, ratio = _row_numbers(ln, 4)[:5]
        assert ratio == pytest.approx(nn_cpu / torch_cpu, abs=0.01 + 2e-3 / torch_cpu)
        assert len(ln) == len(hdr) and ln.split()[-1].count("-") == 1      # load start-end
    assert clocks == ["both", "both"]
    assert R._clock is __import__("time").perf_counter      # restored


def test_recurrent_script_compares_thread_counts(capsys):
    pytest.importorskip("torch")
    assert R.main(["--shapes", "S", "--cells", "rnn", "--dtypes", "f32",
                   "--threads", "1,2", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(ln.startswith("rnn   S") for ln in lines) == 2
    i = next(i for i, ln in enumerate(lines) if ln.startswith("# own time at 2 threads / at 1"))
    assert "nn 2t/1t" in lines[i + 1] and "torch 2t/1t" in lines[i + 1]
    assert lines[i + 2].startswith("rnn S f32") and len(_row_numbers(lines[i + 2], 3)) == 4


def test_recurrent_script_refuses_cpu_clock_with_threads():
    with pytest.raises(SystemExit):
        R.main(["--clock", "cpu", "--threads", "1,2"])


def test_bidirectional_script_runs_with_short_dtype_names(capsys):
    pytest.importorskip("torch")
    from nn_core.bench import bidirectional as Bi
    assert Bi.main(["--shapes", "S", "--cells", "gru", "--dtypes", "f64",
                    "--threads", "1", "--repeat", "1", "--min-time", "0"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("gru ")]
    assert len(rows) == 1 and "float64" in rows[0] and "%" in rows[0]


def test_model_script_runs_every_section_at_a_tiny_size(capsys):
    """``python -m nn_core.bench model --quick`` end to end: every section prints, and the
    torch twins compute what nn_core computes (a parity check, not a timing)."""
    pytest.importorskip("torch")
    from nn_core.bench import model as M
    assert M.main(["--quick", "--repeat", "1", "--min-time", "0.001", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for heading in ("== Training steps of the CLI models", "== BERT-style encoder",
                    "== Pieces at the BERT shapes", "== Inference memory",
                    "== Minor page faults per training step"):
        assert heading in out, heading
    lines = out.splitlines()
    for label, _, _ in M.CLI_MODELS:
        # one timing row (steps) and one fault row per CLI model
        assert sum(ln.startswith(f"{label} ") and ln.split()[len(label.split())] == "1"
                   for ln in lines) == 2, label
        assert any(ln.startswith(f"check {label}") and ln.endswith("ok") for ln in lines), label
    for row in ("forward (inference)", "forward (training)", "forward+backward"):
        assert any(ln.startswith(row) for ln in lines), row
    for piece in ("Linear", "LayerNorm", "GELU exact", "GELU tanh", "cross-entropy",
                  "Embedding", "SDPA", "MultiHeadAttention", "AdamW step"):
        assert any(ln.startswith(piece) for ln in lines), piece
    assert "check: max |y - y_torch|" in out and "WARNING" not in out
    assert any(ln.startswith("ratio") for ln in lines)
    for section in M.SECTIONS:
        assert any(ln.startswith(f"({section}: ") and "load average" in ln for ln in lines)
    for what in ("model", "what"):          # steps and bert: both clocks and the load
        hdr = next(ln for ln in lines if ln.startswith(f"{what} ") and "c/w" in ln)
        assert hdr.split()[2:] == ["nn", "ms", "cpu", "c/w", "torch", "ms", "cpu", "c/w",
                                   "ratio", "target", "load"]
    assert "own time at" not in out                             # one thread count


def test_model_steps_and_bert_compare_thread_counts(capsys):
    """The steps section (on stand-in steps) and the encoder at 1 and 2 threads: a row per
    thread count, and the table of own 2-thread over 1-thread times."""
    torch = pytest.importorskip("torch")
    from nn_core.bench import model as M

    class Pair:
        def __init__(self, n):
            self.x = np.ones(n)

        def nn_step(self):
            return float(self.x @ self.x)

        torch_step = nn_step

    pairs = [("small", Pair(10), 0.8, True), ("big (ra)", Pair(1000), None, False)]
    M.run_steps(torch, [1, 2], np.float32, 1, 0.001, True, pairs=pairs)
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines if ln.startswith(("small ", "big (ra) "))]
    hdr = next(ln for ln in lines if ln.startswith("model "))
    assert len(rows) == 6 and all(len(ln) == len(hdr) for ln in rows[:4])
    assert [ln[26:30].strip() for ln in rows[:4]] == ["1", "1", "2", "2"]     # thr
    assert any(ln.startswith("# own time at 2 threads / at 1") for ln in lines)
    assert all(len(_row_numbers(ln, 2 if ln.startswith("big") else 1)) == 4 for ln in rows[-2:])

    assert M.main(["--quick", "--only", "bert", "--repeat", "1", "--min-time", "0.001",
                   "--threads", "1,2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for row in ("forward (inference)", "forward (training)", "forward+backward"):
        got = [ln for ln in lines if ln.startswith(row)]
        assert len(got) == 3, row          # 1 thread, 2 threads, the own-time table
        assert len(_row_numbers(got[0], len(row.split()) + 1)) == 8


def test_model_script_needs_torch(capsys, monkeypatch):
    from nn_core.bench import model as M
    monkeypatch.setattr(M, "torch_or_none", lambda: None)
    assert M.main(["--quick"]) == 1
    assert "torch is not installed" in capsys.readouterr().out


def test_model_script_rejects_unknown_sections():
    from nn_core.bench import model as M
    with pytest.raises(SystemExit):
        M.main(["--only", "steps,nonsense"])


def test_attention_long_script_runs_at_a_tiny_size(capsys):
    """``attention --long``: the time table, and one fresh-process memory cell."""
    import os

    from nn_core.bench import _long
    from nn_core.bench import attention as A
    assert A.main(["--long", "--lengths", "32", "--threads", "1", "--repeat", "1",
                   "--causal", "yes", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "nn ms" in out and "True" in out
    if os.path.exists("/proc/self/clear_refs"):
        res = _long.measure_memory("nn_core", 64, True)
        assert res is not None and res["wall"] > 0 and np.isfinite(res["extra"])


def test_bench_help_is_a_help_text(capsys):
    from nn_core.bench.__main__ import BENCHES, main
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m nn_core.bench") and "``" not in out
    assert all(f"  {name} " in out for name in BENCHES)
    assert max(map(len, out.splitlines())) <= 80
    assert main([]) == 2 and main(["nonsense"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_attention_warms_every_contender_on_every_shape_first(monkeypatch):
    """No contender is timed before every contender has run on every shape."""
    from nn_core.bench import attention as A
    log = []

    def contenders(shape, dtype, causal, torch):
        return {name: (lambda name=name: log.append((shape, name))) for name in ("a", "b")}

    def timed(fns, **kw):
        log.append("timed")
        return {k: 1e-3 for k in fns}
    monkeypatch.setattr(A, "_contenders", contenders)
    monkeypatch.setattr(A, "interleaved", timed)
    monkeypatch.setattr(A, "torch_or_none", lambda: None)
    shapes = [(1, 1, 4, 2), (1, 2, 8, 2), (2, 1, 4, 4)]
    rows = A.run([1], [np.float32], shapes, (False,), repeat=1, min_time=0.0, out=lambda s: None)
    first = log.index("timed")
    assert {(s, n) for s in shapes for n in "ab"} <= set(log[:first]) and len(rows) == 3
    assert log[first:].count("timed") == 3


def test_quick_page_faults_say_they_are_not_comparable(monkeypatch):
    from nn_core.bench import _memory
    lines = []
    labels = [label for label, _, _ in _memory.CLI_MODELS]
    monkeypatch.setattr(_memory, "_run_child",
                        lambda *a: {label: {"1": 10.0} for label in labels})
    _memory.run_faults([1], np.float32, True, out=lines.append)
    assert any("NOT comparable" in ln for ln in lines)
    assert not any("<" in ln for ln in lines if ln.startswith(labels[0]))
    lines.clear()
    _memory.run_faults([1], np.float32, False, out=lines.append)
    assert not any("comparable" in ln for ln in lines)
    assert any(ln.startswith(labels[0]) and "<" in ln for ln in lines)


def test_scaling_estimate_traces_every_job_of_a_step(capsys):
    """The trace sees the step's team jobs; the estimate never drops below the serial
    part and falls (or stays) as threads are added."""
    import numpy as np

    from nn_core.bench import scaling

    pair = scaling._pair("lm", None)
    step, rec = scaling.trace_step(pair, 4, steps=1)
    assert len(rec) > 10 and (rec["t1"] >= rec["t0"]).all() and (rec["want"] >= 1).all()
    serial = step - (rec["t1"] - rec["t0"]).sum()
    assert 0 < serial < step
    est = [scaling.estimate(step, rec, p, 5e-6, 1e-7) for p in (1, 2, 4)]
    assert est[0] == np.float64(step) or abs(est[0] - step) < 1e-12
    assert serial < est[2] <= est[1] <= est[0]
    assert scaling.main(["--threads", "2", "--steps", "1", "--models", "forecast"]) is None
    out = capsys.readouterr().out
    assert "forecast" in out and "p=2" in out and "family" in out
