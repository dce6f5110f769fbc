"""The one stack (``nn_core.recurrent.stacked._Stack``) under StackedLSTM and
StackedBidirectional, and the composition rules: one dropout rule, arguments checked
before the cache is consumed, layers built only on the cells' public API."""
import ast
from pathlib import Path

import numpy as np
import pytest

import nn_core.recurrent as rec
from nn_core.recurrent import (
    BidirectionalWrapper,
    GRUCell,
    LSTMCell,
    RecurrentCell,
    StackedBidirectional,
    StackedLSTM,
)
from nn_core.module import Module

STACKS = {
    "lstm": lambda **kw: StackedLSTM(3, 4, 3, dtype=np.float64, rng=0, **kw),
    "bi_gru": lambda **kw: StackedBidirectional("gru", 3, 4, 3, dtype=np.float64, rng=0,
                                                **kw),
    "bi_lstm_mul": lambda **kw: StackedBidirectional("lstm", 3, 4, 3, "mul",
                                                     dtype=np.float64, rng=0, **kw),
}


def _layers_by_hand(stack, x, lengths, gen, p):
    """The stack's forward written out: each layer alone, then the dropout mask."""
    y = x
    for k, layer in enumerate(stack.layers):
        if isinstance(layer, RecurrentCell):
            y, _ = layer.forward_sequence(y, None, lengths)
        else:
            y, _ = layer(y, None, lengths)
        if k < stack.num_layers - 1:
            y = y * ((gen.random(y.shape) >= p) / (1 - p))
    return y


@pytest.mark.parametrize("name", list(STACKS))
def test_one_dropout_rule(name, rng):
    """Both stacks draw ``(rng.random(shape) >= p) / (1 - p)`` after every layer but
    the last, from the stack's rng, in training mode only."""
    p = 0.4
    m = STACKS[name](dropout=p)
    x = rng.standard_normal((5, 2, 3))
    lengths = np.array([5, 3])
    m.rng = np.random.default_rng(11)
    out, _ = m(x, None, lengths)
    ref = _layers_by_hand(m, x, lengths, np.random.default_rng(11), p)
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-15)
    m.eval()
    plain = _layers_by_hand(m, x, lengths, np.random.default_rng(11), 0.0)
    np.testing.assert_array_equal(m(x, None, lengths)[0], plain)


@pytest.mark.parametrize("name", list(STACKS))
def test_backward_bad_grad_keeps_cache_for_retry(name, rng):
    m = STACKS[name]()
    out, fin = m(rng.standard_normal((5, 2, 3)))
    go = rng.standard_normal(out.shape)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        m.backward(go[:, :1])
    wrong = np.ones((2, 2, 4))                   # num_layers is 3
    bad = (wrong, None) if isinstance(fin, tuple) else wrong
    with pytest.raises(ValueError, match="grad_state"):
        m.backward(go, bad)
    gx, g0 = m.backward(go, fin)
    assert gx.shape == (5, 2, 3)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        m.backward(go)


def test_wrapper_bad_grad_keeps_cache_for_retry(rng):
    m = BidirectionalWrapper(LSTMCell(3, 4, dtype=np.float64, rng=0))
    out, fin = m(rng.standard_normal((5, 2, 3)))
    with pytest.raises(ValueError, match=r"grad_state\[1\] c must have shape"):
        m.backward(np.ones_like(out), (None, (None, np.ones((2, 5)))))
    with pytest.raises(ValueError, match="pair"):
        m.backward(np.ones_like(out), np.ones((2, 4)))
    gx, _ = m.backward(np.ones_like(out), fin)
    assert gx.shape == (5, 2, 3)


def test_stacked_state_messages():
    lstm = StackedLSTM(3, 4, 2)
    x = np.ones((5, 2, 3))
    with pytest.raises(ValueError, match=r"state must be a tuple \(h_0, c_0\) of "
                                         r"\[2, B, H\] arrays or None, got ndarray"):
        lstm(x, np.ones((2, 2, 4)))
    out, _ = lstm(x)
    with pytest.raises(ValueError, match=r"grad_state must be a tuple "
                                         r"\(grad_h_n, grad_c_n\)"):
        lstm.backward(out, np.ones((2, 2, 4)))
    with pytest.raises(ValueError, match=r"grad_state c_n must have shape \(2, 2, 4\)"):
        lstm.backward(out, (None, np.ones((2, 2, 5))))
    bi = StackedBidirectional("rnn", 3, 4, 2)
    with pytest.raises(ValueError, match=r"state must be one \[2, 2, B, H\] array for "
                                         r"RNNCell cells, got a tuple"):
        bi(x, (np.ones((2, 2, 2, 4)),) * 2)
    bi_lstm = StackedBidirectional("lstm", 3, 4, 2)
    out, _ = bi_lstm(x)
    with pytest.raises(ValueError, match=r"grad_state h must have shape \(2, 2, 2, 4\)"):
        bi_lstm.backward(out, (np.ones((2, 2, 4)), None))


def test_stacked_partial_states_are_zeros(rng):
    """A None part of a stacked state is zeros; None entries of grad_state are zeros."""
    m = StackedLSTM(3, 4, 2, dtype=np.float64, rng=0)
    x = rng.standard_normal((5, 2, 3))
    h = rng.standard_normal((2, 2, 4))
    a, (ha, ca) = m(x, (h, None))
    ga = m.backward(np.ones_like(a), (None, np.ones((2, 2, 4))))
    b, (hb, cb) = m(x, (h, np.zeros((2, 2, 4))))
    gb = m.backward(np.ones_like(b), (np.zeros((2, 2, 4)), np.ones((2, 2, 4))))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(ga[0], gb[0])
    for u, v in zip(ga[1], gb[1]):
        np.testing.assert_array_equal(u, v)


def test_wrapper_layer_api_takes_direction_indexed_states(rng):
    """A [2, B, H] array is a (fw, bw) pair for the wrapper's low-level API."""
    T, B, D, H = 4, 3, 2, 5
    m = BidirectionalWrapper(GRUCell(D, H, dtype=np.float64, rng=0))
    x = rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((2, B, H))
    lengths = np.array([4, 1, 3])
    out_ref, (f_fw, f_bw) = m(x, (h0[0], h0[1]), lengths)
    gx_ref, (g_fw, g_bw) = m.backward(np.ones_like(out_ref), (f_fw, f_bw))
    xt, lens = m.check_sequence(x, lengths)
    out, h_n, cache = m.run_sequence(xt, h0, None, lens)
    gx, gh0, gc0 = m.run_sequence_backward(cache, np.ones_like(out), np.stack(h_n))
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(np.stack(h_n), np.stack((f_fw, f_bw)))
    np.testing.assert_array_equal(gx, gx_ref)
    np.testing.assert_array_equal(np.stack(gh0), np.stack((g_fw, g_bw)))
    assert gc0 is None and not m.has_cell_state


def _private_cell_names():
    module_names = set(vars(Module))
    return {n for n in vars(RecurrentCell)
            if n.startswith("_") and not n.startswith("__") and n not in module_names}


def test_composites_use_only_the_cells_public_api():
    """The wrapper and the stack never touch a private helper of the cells."""
    private = _private_cell_names()
    assert {"_check_input", "_HAS_CELL_STATE", "_take"} <= private
    root = Path(rec.__file__).parent
    for name in ("bidirectional.py", "stacked.py"):
        tree = ast.parse((root / name).read_text())
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert not used & private, (name, sorted(used & private))
