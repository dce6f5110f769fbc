"""The same bits at any thread count: a training step, and each layer's forward and
backward, give identical numbers with 1, 2, 3 or 4 threads."""
import numpy as np
import pytest

from nn_core import _parallel
from nn_core.cli import main

THREADS = (1, 2, 3, 4)

# default models and batches (64 rows: the recurrent row split's path), smaller data
S2S, FC = ["--train-size", "2000", "--val-size", "200"], ["--steps", "3000"]
MODELS = {
    "seq2seq": ["seq2seq", *S2S],
    "seq2seq-lstm": ["seq2seq", "--cell", "lstm", *S2S],
    "forecast": ["forecast", *FC],
    "forecast-lstm": ["forecast", "--cell", "lstm", *FC],
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


def _at_threads(run):
    """``run()`` (a list of arrays) at each thread count of ``THREADS``."""
    results = []
    for n in THREADS:
        with _parallel.limit_threads(n):
            results.append([np.array(a, copy=True) for a in run()])
    return results


def _assert_same_bits(results):
    ref = results[0]
    for n, got in zip(THREADS[1:], results[1:]):
        bad = [i for i, (a, b) in enumerate(zip(ref, got)) if not np.array_equal(a, b)]
        assert not bad, f"threads {n} vs 1: arrays {bad} differ"


def _grads(module):
    return [module.grads[k] for k in sorted(module.grads)]


@pytest.mark.parametrize("kind", ["rnn_tanh", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_sweep_same_bits_at_any_thread_count(rng, kind, bidirectional):
    from nn_core.recurrent import BidirectionalWrapper
    from test_recurrent_cells import make_cell
    T, B, D, H = 20, 70, 16, 32                 # B >= 64: the row split's path
    cell = make_cell(kind, D, H, dtype=np.float32, rng=rng)
    if bidirectional:
        cell = BidirectionalWrapper(cell, make_cell(kind, D, H, dtype=np.float32, rng=rng))
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    go = rng.standard_normal((T, B, H * (2 if bidirectional else 1))).astype(np.float32)

    def run():
        cell.zero_grad()
        if bidirectional:
            out, _ = cell.forward(x.transpose(1, 0, 2).copy())
            gx, _ = cell.backward(go.transpose(1, 0, 2).copy())
        else:
            out, _ = cell.forward_sequence(x, None)
            gx, _ = cell.backward_sequence(go, None)
        return [out, gx] + _grads(cell)

    _assert_same_bits(_at_threads(run))


def test_attention_and_encoder_layer_same_bits_at_any_thread_count(rng):
    from nn_core.attention import MultiHeadAttention
    from nn_core.transformer import TransformerEncoderLayer
    B, L, E = 6, 40, 64
    x = rng.standard_normal((B, L, E)).astype(np.float32)
    g = rng.standard_normal((B, L, E)).astype(np.float32)
    mha = MultiHeadAttention(E, 4, rng=rng)
    layer = TransformerEncoderLayer(E, 4, 128, dropout=0.0, activation="gelu",
                                    norm_first=True, rng=rng)

    def run_mha():
        mha.zero_grad()
        y = mha.forward(x, is_causal=True)
        return [y, *[a for a in mha.backward(g) if a is not None]] + _grads(mha)

    def run_layer():
        layer.zero_grad()
        y = layer.forward(x, is_causal=True)
        return [y, layer.backward(g)] + _grads(layer)

    _assert_same_bits(_at_threads(run_mha))
    _assert_same_bits(_at_threads(run_layer))


def test_layer_norm_and_cross_entropy_same_bits_at_any_thread_count(rng):
    from nn_core.layers import LayerNorm
    from nn_core.losses import CrossEntropyLoss
    N, E, V = 9000, 64, 50
    x = rng.standard_normal((N, E)).astype(np.float32)
    g = rng.standard_normal((N, E)).astype(np.float32)
    ln = LayerNorm(E, rng=rng)
    logits = rng.standard_normal((N, V)).astype(np.float32)
    targets = rng.integers(0, V, N)
    ce = CrossEntropyLoss()

    def run_ln():
        ln.zero_grad()
        return [ln.forward(x), ln.backward(g)] + _grads(ln)

    def run_ce():
        return [ce.forward(logits, targets), ce.backward()[0]]

    _assert_same_bits(_at_threads(run_ln))
    _assert_same_bits(_at_threads(run_ce))
