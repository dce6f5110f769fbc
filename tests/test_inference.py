"""Inference: ``nn_core.inference_mode()`` and ``eval()`` keep nothing for a backward."""
import threading

import numpy as np
import pytest

import nn_core
from nn_core.attention import CrossAttention, MultiHeadAttention, ScaledDotProductAttention
from nn_core.layers import GELU, LayerNorm, Linear, Sequential
from nn_core.recurrent import BidirectionalGRU, GRUCell, LSTMCell, StackedLSTM


def _cases(rng):
    x3 = rng.standard_normal((2, 5, 8))
    return [
        ("linear", lambda: Linear(8, 4, dtype=np.float64, rng=0), (x3,)),
        ("mlp", lambda: Sequential(Linear(8, 6, dtype=np.float64, rng=0),
                                   LayerNorm(6, dtype=np.float64), GELU(dtype=np.float64)),
         (x3,)),
        ("sdpa", lambda: ScaledDotProductAttention(dtype=np.float64), (x3, x3, x3)),
        ("mha", lambda: MultiHeadAttention(8, 2, dtype=np.float64, rng=0), (x3,)),
        ("cross", lambda: CrossAttention(8, 2, kv_dim=8, dtype=np.float64, rng=0), (x3, x3)),
        ("lstm_seq", lambda: LSTMCell(8, 3, dtype=np.float64, rng=0), (x3,)),
        ("stacked", lambda: StackedLSTM(8, 3, 2, dtype=np.float64, rng=0), (x3,)),
        ("bigru", lambda: BidirectionalGRU(8, 3, dtype=np.float64, rng=0), (x3,)),
    ]


def _run(m, inputs):
    fwd = m.forward_sequence if hasattr(m, "forward_sequence") else m
    out = fwd(*inputs)
    return out[0] if isinstance(out, tuple) else out


def _backward(m, y):
    if hasattr(m, "backward_sequence"):
        return m.backward_sequence(np.ones_like(y))
    if isinstance(m, (StackedLSTM, BidirectionalGRU)):
        return m.backward(np.ones_like(y))
    return m.backward(np.ones_like(y))


@pytest.mark.parametrize("how", ["inference_mode", "eval"])
def test_same_output_and_no_backward(rng, how):
    for name, make, inputs in _cases(rng):
        want = _run(make(), inputs)
        m = make()
        if how == "eval":
            m.eval()
            got = _run(m, inputs)
        else:
            with nn_core.inference_mode():
                got = _run(m, inputs)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=name)
        for sub in m.modules():
            assert sub.num_pending == 0, name
        with pytest.raises(RuntimeError, match="eval|inference"):
            _backward(m, got)
        m.train()
        y = _run(m, inputs)                      # training mode again: backward works
        _backward(m, y)


def test_recurrent_steps_keep_nothing_in_inference(rng):
    cell = LSTMCell(8, 16, rng=0)
    state = None
    with nn_core.inference_mode():
        for _ in range(50):
            state = cell(rng.standard_normal((4, 8)), state)
    assert cell._steps == []
    with pytest.raises(RuntimeError, match="eval|inference"):
        cell.backward(np.ones((4, 16)))
    cell.eval()
    cell(rng.standard_normal((4, 8)))
    assert cell._steps == []
    cell.train()
    h, c = cell(rng.standard_normal((4, 8)))
    assert len(cell._steps) == 1
    cell.backward(np.ones_like(h))


def test_inference_forward_reuses_the_cells_buffers(rng):
    cell = GRUCell(8, 16, rng=0).eval()
    x = rng.standard_normal((6, 4, 8))
    cell.forward_sequence(x)
    first = {k: id(v) for k, v in cell._work.spares().items()}
    cell.forward_sequence(x)
    assert first and {k: id(v) for k, v in cell._work.spares().items()} == first


def test_decorator_forms_nesting_and_threads():
    seen = []

    @nn_core.inference_mode
    def bare():
        return nn_core.is_inference_mode()

    @nn_core.inference_mode()
    def called():
        return nn_core.is_inference_mode()

    assert bare() and called() and not nn_core.is_inference_mode()
    with nn_core.inference_mode():
        with nn_core.inference_mode(False):
            assert not nn_core.is_inference_mode()
        assert nn_core.is_inference_mode()
        t = threading.Thread(target=lambda: seen.append(nn_core.is_inference_mode()))
        t.start()
        t.join()
    assert seen == [False]                       # per thread
    assert not nn_core.is_inference_mode()


def test_kv_cache_decoding_memory_does_not_grow(rng):
    """Decoding with a KV cache under inference_mode keeps no per-step caches."""
    m = MultiHeadAttention(16, 4, rng=0)
    cache = m.new_kv_cache(2, 32)
    with nn_core.inference_mode():
        for _ in range(32):
            m(rng.standard_normal((2, 1, 16)), kv_cache=cache)
    for sub in m.modules():
        assert sub.num_pending == 0


@pytest.mark.parametrize("how", ["inference_mode", "eval"])
def test_attention_pins_no_probabilities_buffer_in_inference(rng, how):
    """Training reuses one probabilities buffer per module; an inference forward
    neither keeps one nor leaves a trained module's buffer pinned."""
    mha = MultiHeadAttention(16, 4, rng=0)
    x = rng.standard_normal((3, 24, 16)).astype(np.float32)
    y = mha(x)
    mha.backward(np.ones_like(y))
    mods = [m for m in mha.modules() if isinstance(m, ScaledDotProductAttention)]
    assert mods and any(m._work.nbytes > 0 for m in mods)
    if how == "eval":
        mha.eval()
        again = mha(x)
    else:
        with nn_core.inference_mode():
            again = mha(x)
    np.testing.assert_allclose(again, y, rtol=1e-6, atol=1e-6)
    assert all(m._work.nbytes == 0 for m in mods)
