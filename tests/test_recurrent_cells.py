"""RNNCell, LSTMCell, GRUCell and StackedLSTM: gradients, step vs sequence, lengths,
reverse direction, initialisation, contract and bad input (no torch needed)."""
import numpy as np
import pytest

from nn_core import Module, gradcheck
from nn_core.recurrent import GRUCell, LSTMCell, RNNCell, StackedLSTM

from contract import check_contract
from recurrent_reference import reference_sequence

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_ra")


def make_cell(kind, D, H, *, dtype=np.float64, rng=0, **kw):
    if kind == "rnn_tanh":
        return RNNCell(D, H, "tanh", dtype=dtype, rng=rng, **kw)
    if kind == "rnn_relu":
        return RNNCell(D, H, "relu", dtype=dtype, rng=rng, **kw)
    if kind == "lstm":
        return LSTMCell(D, H, dtype=dtype, rng=rng, **kw)
    return GRUCell(D, H, reset_after=(kind == "gru_ra"), dtype=dtype, rng=rng, **kw)


def is_lstm(kind):
    return kind == "lstm"


class Seq(Module):
    """The sequence API as a Module (forward_sequence / backward_sequence)."""

    def __init__(self, cell, reverse=False):
        super().__init__(dtype=cell.dtype)
        self.cell = cell
        self.reverse = reverse

    def forward(self, x, state=None, lengths=None):
        return self.cell.forward_sequence(x, state, lengths, reverse=self.reverse)

    def backward(self, grad_output, grad_state=None):
        return self.cell.backward_sequence(grad_output, grad_state)


def rand_state(rng, kind, B, H):
    h = rng.standard_normal((B, H))
    return (h, rng.standard_normal((B, H))) if is_lstm(kind) else h


# ------------------------------------------------------------------ gradcheck --
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["plain", "lengths", "reverse", "no_bias"])
def test_gradcheck_sequence(kind, variant, rng):
    T, B, D, H = 4, 3, 2, 3
    cell = make_cell(kind, D, H, rng=rng, bias=(variant != "no_bias"))
    x = rng.standard_normal((T, B, D))
    state = rand_state(rng, kind, B, H)
    lengths = None if variant in ("plain", "no_bias") else np.array([4, 1, 3])
    m = Seq(cell, reverse=(variant == "reverse"))
    report = gradcheck(m, (x, state, lengths), rng=rng)
    assert report.ok, str(report)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_step(kind, rng):
    B, D, H = 2, 3, 2
    cell = make_cell(kind, D, H, rng=rng)
    report = gradcheck(cell, (rng.standard_normal((B, D)), rand_state(rng, kind, B, H)),
                       rng=rng)
    assert report.ok, str(report)


@pytest.mark.parametrize("lengths", [None, np.array([3, 1])])
def test_gradcheck_stacked_lstm(lengths, rng):
    net = StackedLSTM(2, 3, 2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 2, 2))
    state = (rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 2, 3)))
    assert gradcheck(net, (x, state, lengths), rng=rng).ok


def test_gradcheck_stacked_lstm_dropout_fixed_mask(rng):
    """The dropout backward, with the mask frozen by reseeding before every forward."""

    class Frozen(Module):
        def __init__(self):
            super().__init__(dtype=np.float64)
            self.net = StackedLSTM(2, 3, 3, dropout=0.4, dtype=np.float64, rng=1)

        def forward(self, x):
            self.net.rng = np.random.default_rng(7)
            return self.net(x)

        def backward(self, g, gs):
            return self.net.backward(g, gs)

    m = Frozen()
    x = rng.standard_normal((3, 2, 2))
    out, _ = m.forward(x)
    out_eval, _ = m.net.eval()(x)
    m.net.train()
    assert not np.allclose(out, out_eval)      # the mask is active in training
    assert gradcheck(m, (x,), rng=rng).ok


# --------------------------------------------------------- reference equations --
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_matches_numpy_reference(kind, reverse, dtype, rng):
    T, B, D, H = 6, 4, 3, 5
    cell = make_cell(kind, D, H, dtype=dtype, rng=rng)
    x = rng.standard_normal((T, B, D))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    lengths = np.array([6, 1, 3, 5])
    state = (h0, c0) if is_lstm(kind) else h0
    out, final = cell.forward_sequence(x, state, lengths, reverse=reverse)
    ref_out, ref_h, ref_c = reference_sequence(kind, cell.params, x.astype(dtype), h0.astype(dtype),
                                               c0.astype(dtype) if is_lstm(kind) else None,
                                               lengths, reverse)
    tol = dict(rtol=1e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(out, ref_out, **tol)
    np.testing.assert_allclose(final[0] if is_lstm(kind) else final, ref_h, **tol)
    if is_lstm(kind):
        np.testing.assert_allclose(final[1], ref_c, **tol)
    # padded positions output exactly 0
    for b, L in enumerate(lengths):
        assert np.all(out[L:, b] == 0)


def test_gru_reset_after_false_is_the_documented_equation(rng):
    """Explicit single-step check of n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)."""
    D, H = 3, 4
    cell = GRUCell(D, H, reset_after=False, dtype=np.float64, rng=rng)
    p = cell.params
    x, h = rng.standard_normal((2, D)), rng.standard_normal((2, H))
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    W_ir, W_iz, W_in = np.split(p["W_ih"], 3)
    W_hr, W_hz, W_hn = np.split(p["W_hh"], 3)
    b_ir, b_iz, b_in = np.split(p["b_ih"], 3)
    b_hr, b_hz, b_hn = np.split(p["b_hh"], 3)
    r = sig(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
    z = sig(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
    n = np.tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
    np.testing.assert_allclose(cell.forward(x, h), (1 - z) * n + z * h, rtol=1e-12, atol=1e-14)
    other = GRUCell(D, H, reset_after=True, dtype=np.float64)
    other.load_state_dict(cell.state_dict())
    assert not np.allclose(other.forward(x, h), (1 - z) * n + z * h)


# ------------------------------------------------------ step API == sequence API --
@pytest.mark.parametrize("kind", KINDS)
def test_step_loop_equals_sequence(kind, dtype, rng):
    T, B, D, H = 5, 3, 4, 3
    seq = make_cell(kind, D, H, dtype=dtype, rng=3)
    step = make_cell(kind, D, H, dtype=dtype, rng=3)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = rand_state(rng, kind, B, H)
    out, final = seq.forward_sequence(x, state)
    go = rng.standard_normal(out.shape).astype(dtype)
    gfin = rand_state(rng, kind, B, H)
    gx, gstate = seq.backward_sequence(go, gfin)

    s = state
    outs = []
    for t in range(T):
        s = step.forward(x[t], s)
        outs.append(s[0] if is_lstm(kind) else s)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.stack(outs), out, **tol)
    gxs = [None] * T
    if is_lstm(kind):
        gh, gc = gfin
        for t in range(T - 1, -1, -1):
            gxs[t], gh, gc = step.backward(gh + go[t], gc)
        np.testing.assert_allclose(gh, gstate[0], **tol)
        np.testing.assert_allclose(gc, gstate[1], **tol)
    else:
        gh = gfin
        for t in range(T - 1, -1, -1):
            gxs[t], gh = step.backward(gh + go[t])
        np.testing.assert_allclose(gh, gstate, **tol)
    np.testing.assert_allclose(np.stack(gxs), gx, **tol)
    for k in seq.grads:
        np.testing.assert_allclose(step.grads[k], seq.grads[k], **tol, err_msg=k)
    with pytest.raises(RuntimeError):
        step.backward(gh)


def test_step_reset_drops_caches(rng):
    cell = LSTMCell(3, 2, rng=0)
    cell.forward(rng.standard_normal((1, 3)))
    cell.reset()
    with pytest.raises(RuntimeError, match="without a matching forward"):
        cell.backward(np.ones((1, 2)))


# ----------------------------------------------------------- variable lengths --
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_batch_with_lengths_equals_each_sequence_alone(kind, reverse, rng):
    T, B, D, H = 5, 3, 2, 4
    lengths = np.array([2, 5, 1])
    cell = make_cell(kind, D, H, rng=1)
    x = rng.standard_normal((T, B, D))
    state = rand_state(rng, kind, B, H)
    out, final = cell.forward_sequence(x, state, lengths, reverse=reverse)
    go = rng.standard_normal(out.shape)
    gfin = rand_state(rng, kind, B, H)
    gx, gst = cell.backward_sequence(go, gfin)
    batch_grads = {k: v.copy() for k, v in cell.grads.items()}
    cell.zero_grad()
    for b, L in enumerate(lengths):
        sb = tuple(s[b:b + 1] for s in state) if is_lstm(kind) else state[b:b + 1]
        o, f = cell.forward_sequence(x[:L, b:b + 1], sb, reverse=reverse)
        np.testing.assert_allclose(o, out[:L, b:b + 1], rtol=1e-12, atol=1e-13)
        gfb = tuple(g[b:b + 1] for g in gfin) if is_lstm(kind) else gfin[b:b + 1]
        gxb, gsb = cell.backward_sequence(go[:L, b:b + 1], gfb)
        np.testing.assert_allclose(gxb, gx[:L, b:b + 1], rtol=1e-12, atol=1e-13)
        assert np.all(gx[L:, b] == 0)
        if is_lstm(kind):
            np.testing.assert_allclose(f[0], final[0][b:b + 1], rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(gsb[1], gst[1][b:b + 1], rtol=1e-12, atol=1e-13)
        else:
            np.testing.assert_allclose(f, final[b:b + 1], rtol=1e-12, atol=1e-13)
    for k, g in cell.grads.items():
        np.testing.assert_allclose(g, batch_grads[k], rtol=1e-11, atol=1e-12, err_msg=k)


def test_reverse_equals_forward_on_flipped_input(rng):
    cell = LSTMCell(3, 4, dtype=np.float64, rng=0)
    x = rng.standard_normal((6, 2, 3))
    out_r, (h_r, c_r) = cell.forward_sequence(x, reverse=True)
    gx_r, _ = cell.backward_sequence(np.ones_like(out_r))
    out_f, (h_f, c_f) = cell.forward_sequence(x[::-1])
    gx_f, _ = cell.backward_sequence(np.ones_like(out_f))
    np.testing.assert_allclose(out_r, out_f[::-1], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(h_r, h_f, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(gx_r, gx_f[::-1], rtol=1e-13, atol=1e-14)


def test_prefix_mask_is_converted_to_lengths(rng):
    cell = GRUCell(2, 3, dtype=np.float64, rng=0, batch_first=True)
    x = rng.standard_normal((3, 4, 2))              # [B, T, D]
    lengths = np.array([4, 1, 2])
    mask = np.arange(4)[None, :] < lengths[:, None]  # [B, T] with batch_first
    a, ha = cell.forward_sequence(x, lengths=lengths)
    b, hb = cell.forward_sequence(x, lengths=mask)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ha, hb)
    holes = mask.copy()
    holes[0, 1] = False
    with pytest.raises(ValueError, match="prefix mask"):
        cell.forward_sequence(x, lengths=holes)
    with pytest.raises(ValueError, match="lengths must have shape"):
        cell.forward_sequence(x, lengths=mask.T)


def test_batch_first_equals_time_major(rng):
    tm = LSTMCell(3, 4, dtype=np.float64, rng=5)
    bf = LSTMCell(3, 4, dtype=np.float64, rng=5, batch_first=True)
    x = rng.standard_normal((5, 2, 3))
    out, (h, c) = tm.forward_sequence(x, lengths=[5, 3])
    out_b, (h_b, c_b) = bf.forward_sequence(x.transpose(1, 0, 2), lengths=[5, 3])
    np.testing.assert_allclose(out_b, out.transpose(1, 0, 2), rtol=1e-14)
    go = rng.standard_normal(out.shape)
    gx, _ = tm.backward_sequence(go)
    gx_b, _ = bf.backward_sequence(go.transpose(1, 0, 2))
    np.testing.assert_allclose(gx_b, gx.transpose(1, 0, 2), rtol=1e-13, atol=1e-15)
    net_t = StackedLSTM(3, 4, 2, dtype=np.float64, rng=2)
    net_b = StackedLSTM(3, 4, 2, dtype=np.float64, rng=2, batch_first=True)
    o1, _ = net_t(x)
    o2, _ = net_b(x.transpose(1, 0, 2))
    np.testing.assert_allclose(o2, o1.transpose(1, 0, 2), rtol=1e-14)


def test_grad_output_none_uses_final_state_only(rng):
    cell = RNNCell(2, 3, dtype=np.float64, rng=0)
    x = rng.standard_normal((4, 2, 2))
    out, h = cell.forward_sequence(x)
    gh = rng.standard_normal(h.shape)
    gx1, gh01 = cell.backward_sequence(None, gh)
    cell.forward_sequence(x)
    gx2, gh02 = cell.backward_sequence(np.zeros_like(out), gh)
    np.testing.assert_array_equal(gx1, gx2)
    np.testing.assert_array_equal(gh01, gh02)


# ------------------------------------------------------------ initialisation --
def test_initialisation():
    H = 16
    a, b = LSTMCell(5, H, rng=3), LSTMCell(5, H, rng=3)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    bound = 1 / np.sqrt(H)
    assert np.abs(a.params["W_ih"]).max() <= bound
    assert np.abs(a.params["W_hh"]).max() <= bound
    # forget_bias lands on b_ih[H:2H] only
    c = LSTMCell(5, H, forget_bias=0.0, rng=3)
    diff = a.params["b_ih"] - c.params["b_ih"]
    np.testing.assert_allclose(diff[H:2 * H], 1.0, rtol=1e-6)
    assert np.all(diff[:H] == 0) and np.all(diff[2 * H:] == 0)
    np.testing.assert_array_equal(a.params["b_hh"], c.params["b_hh"])
    # orthogonal recurrent weights: every gate block is orthogonal
    g = GRUCell(5, H, recurrent_init="orthogonal", dtype=np.float64, rng=0)
    for blk in np.split(g.params["W_hh"], 3):
        np.testing.assert_allclose(blk @ blk.T, np.eye(H), atol=1e-12)
    assert set(RNNCell(2, 3, bias=False).params) == {"W_ih", "W_hh"}
    assert a.params["W_ih"].shape == (4 * H, 5) and a.params["W_hh"].shape == (4 * H, H)
    assert StackedLSTM(5, H, 3).parameters().keys() >= {"layers.2.W_ih", "layers.0.b_hh"}


# ----------------------------------------------------------------- contracts --
def _seq_inputs(kind, lengths=True):
    def make(rng):
        T, B, D, H = 4, 3, 5, 3
        x = rng.standard_normal((T, B, D))
        return (x, rand_state(rng, kind, B, H), np.array([4, 2, 1]) if lengths else None)
    return make


def _bad_seq(kind):
    B, H = 3, 3
    x = np.ones((4, B, 5))
    good = rand_state(np.random.default_rng(0), kind, B, H)
    wrong = (np.ones((B, H + 1)), np.ones((B, H))) if is_lstm(kind) else np.ones((B, H + 1))
    return [
        ((np.ones((4, B, 6)), good, None), ValueError, "input_size: expected 5, got 6"),
        ((np.ones((B, 5)), good, None), ValueError, "x must be 3-dimensional"),
        ((x, good, np.array([0, 1, 1])), ValueError, "lengths must satisfy"),
        ((x, good, np.array([5, 1, 1])), ValueError, "lengths must satisfy"),
        ((x, good, np.array([1, 1])), ValueError, "lengths must have shape"),
        ((x, wrong, None), ValueError, r"must have shape \(3, 3\)"),
        ((x.astype(complex), good, None), TypeError, "real-valued"),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_contract_sequence(kind):
    check_contract(lambda dt: Seq(make_cell(kind, 5, 3, dtype=dt, rng=0)),
                   _seq_inputs(kind), bad=_bad_seq(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_contract_step(kind):
    def make(rng):
        return (rng.standard_normal((3, 5)), rand_state(rng, kind, 3, 3))
    wrong = (np.ones((3, 4)), np.ones((3, 3))) if is_lstm(kind) else np.ones((3, 4))
    bad = [((np.ones((3, 4)), None), ValueError, "input_size: expected 5, got 4"),
           ((np.ones((2, 3, 5)), None), ValueError, "x_t must be 2-dimensional"),
           ((np.ones((3, 5)), wrong), ValueError, r"must have shape \(3, 3\)")]
    check_contract(lambda dt: make_cell(kind, 5, 3, dtype=dt, rng=0), make, bad=bad)


def test_contract_stacked_lstm():
    def make(rng):
        return (rng.standard_normal((4, 3, 5)),
                (rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 3))),
                np.array([1, 4, 2]))
    bad = [((np.ones((4, 3, 4)), None, None), ValueError, "input_size: expected 5, got 4"),
           ((np.ones((4, 3, 5)), (np.ones((1, 3, 3)), None), None), ValueError,
            r"must have shape \(2, 3, 3\)"),
           ((np.ones((4, 3, 5)), None, np.array([0, 1, 1])), ValueError, "lengths must satisfy")]
    check_contract(lambda dt: StackedLSTM(5, 3, 2, dtype=dt, rng=0), make, bad=bad)


def test_misc_errors():
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNCell(2, 3, "sigmoid")
    with pytest.raises(ValueError, match="recurrent_init"):
        LSTMCell(2, 3, recurrent_init="xavier")
    with pytest.raises(ValueError, match="hidden_size"):
        GRUCell(2, 0)
    with pytest.raises(ValueError, match="dropout"):
        StackedLSTM(2, 3, 2, dropout=1.0)
    cell = LSTMCell(2, 3, dtype=np.float64, rng=0)
    with pytest.raises(RuntimeError):
        cell.backward_sequence(np.ones((1, 1, 3)))
    with pytest.raises(ValueError, match="tuple"):
        cell.forward_sequence(np.ones((2, 1, 2)), np.ones((1, 3)))
    out, _ = cell.forward_sequence(np.ones((2, 1, 2)))
    with pytest.raises(ValueError, match="grad_output must have shape"):
        cell.backward_sequence(np.ones((2, 1, 4)))


@pytest.mark.parametrize("kind", KINDS)
def test_recycled_buffers_do_not_leak_between_calls(kind, rng):
    """The per-cell buffer pool: a forward-direction call followed by a reverse one
    (and interleaved step caches) gives the numbers of fresh cells."""
    T, B, D, H = 4, 2, 3, 3
    used = make_cell(kind, D, H, rng=4)
    x = rng.standard_normal((T, B, D))
    go = rng.standard_normal((T, B, H))
    used.forward_sequence(x)
    used.backward_sequence(go)
    used.zero_grad()
    out, _ = used.forward_sequence(x, lengths=[4, 2], reverse=True)
    gx, _ = used.backward_sequence(go)
    fresh = make_cell(kind, D, H, rng=4)
    out_f, _ = fresh.forward_sequence(x, lengths=[4, 2], reverse=True)
    gx_f, _ = fresh.backward_sequence(go)
    np.testing.assert_array_equal(out, out_f)
    np.testing.assert_array_equal(gx, gx_f)
    for k in fresh.grads:
        np.testing.assert_array_equal(used.grads[k], fresh.grads[k])
    # two pending step caches, popped in LIFO order after a sequence call in between
    s1 = used.forward(x[0])
    s2 = used.forward(x[1], s1)
    used.forward_sequence(x)
    used.backward_sequence(go)
    g2 = used.backward(np.ones((B, H)), *(() if not is_lstm(kind) else (np.ones((B, H)),)))
    f1 = fresh.forward(x[0])
    f2 = fresh.forward(x[1], f1)
    g2f = fresh.backward(np.ones((B, H)), *(() if not is_lstm(kind) else (np.ones((B, H)),)))
    for a, b in zip(g2, g2f):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(s2), np.asarray(f2))  # h, or (h, c) stacked


def test_non_finite_padding_is_ignored(rng):
    cell = LSTMCell(3, 4, dtype=np.float64, rng=0)
    x = rng.standard_normal((5, 2, 3))
    lengths = np.array([5, 2])
    clean = x.copy()
    clean[2:, 1] = 0
    dirty = x.copy()
    dirty[2:, 1] = np.nan
    dirty[4, 1, 0] = np.inf
    go = rng.standard_normal((5, 2, 4))
    out_c, _ = cell.forward_sequence(clean, lengths=lengths)
    gx_c, _ = cell.backward_sequence(go)
    g_c = {k: v.copy() for k, v in cell.grads.items()}
    cell.zero_grad()
    out_d, _ = cell.forward_sequence(dirty, lengths=lengths)
    gx_d, _ = cell.backward_sequence(go)
    np.testing.assert_array_equal(out_d, out_c)
    np.testing.assert_array_equal(gx_d, gx_c)
    for k, v in cell.grads.items():
        np.testing.assert_array_equal(v, g_c[k])
    assert np.isnan(dirty[3, 1, 0])              # the caller's array is untouched


def test_stacked_lstm_backward_bad_grad_keeps_cache_for_retry(rng):
    """StackedLSTM.backward validates its arguments before consuming the cache."""
    m = StackedLSTM(3, 4, 2, dtype=np.float64, rng=0)
    x = rng.standard_normal((5, 2, 3))
    out, _ = m(x)
    go = rng.standard_normal(out.shape)
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(go[:, :1])
    with pytest.raises(ValueError, match="grad_state"):
        m.backward(go, (np.ones((2, 2, 4)), np.ones((1, 2, 4))))
    gx, _ = m.backward(go)                      # the corrected retry works
    assert gx.shape == x.shape
    with pytest.raises(RuntimeError):
        m.backward(go)


# ------------------------------------------------------- layer-building API --
def test_cell_class_registry():
    from nn_core.recurrent.base import cell_class
    assert cell_class("rnn") is RNNCell and cell_class("LSTM") is LSTMCell
    assert cell_class("gru") is GRUCell and cell_class(GRUCell) is GRUCell
    with pytest.raises(ValueError, match="cell_type"):
        cell_class("transformer")
    with pytest.raises(TypeError, match="cell_type"):
        cell_class(dict)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_api_equals_sequence_api(kind, rng):
    """check_sequence + state_arrays + run_sequence / check_grad_state +
    run_sequence_backward compute what forward_sequence / backward_sequence do."""
    T, B, D, H = 5, 3, 4, 3
    x = rng.standard_normal((B, T, D))                      # batch-first input
    lengths = np.array([5, 2, 4])
    state, gfin = rand_state(rng, kind, B, H), rand_state(rng, kind, B, H)
    go = rng.standard_normal((B, T, H))
    ref = make_cell(kind, D, H, batch_first=True)
    out_r, fin_r = ref.forward_sequence(x, state, lengths)
    gx_r, g0_r = ref.backward_sequence(go, gfin)

    cell = make_cell(kind, D, H)                            # time-major cell
    assert cell.has_cell_state == is_lstm(kind)
    xt, lens = cell.check_sequence(x, lengths, batch_first=True)
    assert xt.shape == (T, B, D) and xt.flags.c_contiguous and lens.dtype == np.int64
    h0, c0 = cell.state_arrays(state, B)
    assert (c0 is not None) == is_lstm(kind)
    out, fin, cache = cell.run_sequence(xt, h0, c0, lens)
    gh, gc = cell.check_grad_state(gfin, B)
    gx, gh0, gc0 = cell.run_sequence_backward(
        cache, np.ascontiguousarray(go.transpose(1, 0, 2)), gh, gc)
    np.testing.assert_array_equal(out.transpose(1, 0, 2), out_r)
    np.testing.assert_array_equal(gx.transpose(1, 0, 2), gx_r)
    if is_lstm(kind):
        for a, b in zip((*fin, gh0, gc0), (*fin_r, *g0_r)):
            np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_array_equal(fin, fin_r)
        np.testing.assert_array_equal(gh0, g0_r)
        assert gc0 is None
    for k in ref.grads:
        np.testing.assert_array_equal(cell.grads[k], ref.grads[k])


def test_layer_api_errors():
    lstm, gru = LSTMCell(2, 3), GRUCell(2, 3)
    with pytest.raises(ValueError, match="input_size: expected 2, got 4"):
        lstm.check_sequence(np.ones((3, 1, 4)))
    with pytest.raises(ValueError, match="prefix mask"):
        lstm.check_sequence(np.ones((1, 3, 2)), np.array([[True, False, True]]),
                            batch_first=True)
    with pytest.raises(ValueError, match=r"state\[0\] must be a tuple \(h, c\)"):
        lstm.state_arrays(np.ones((1, 3)), 1, "state[0]")
    with pytest.raises(ValueError, match="must be one"):
        gru.state_arrays((np.ones((1, 3)),) * 2, 1)
    with pytest.raises(ValueError, match=r"grad_state c must have shape \(1, 3\)"):
        lstm.check_grad_state((None, np.ones((2, 3))), 1)
    with pytest.raises(ValueError, match=r"must be a tuple \(grad_h, grad_c\)"):
        lstm.check_grad_state(np.ones((1, 3)), 1)
    gru.forward_sequence(np.ones((2, 1, 2)))
    with pytest.raises(ValueError, match="grad_final_state must be one"):
        gru.backward_sequence(None, (np.ones((1, 3)), np.ones((1, 3))))
    assert lstm.check_grad_state(None, 1) == (None, None)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_backward_sequence_bad_grad_keeps_cache_for_retry(kind, rng):
    cell = make_cell(kind, 3, 4)
    out, fin = cell.forward_sequence(rng.standard_normal((5, 2, 3)))
    with pytest.raises(ValueError, match="grad_output"):
        cell.backward_sequence(np.ones((5, 2, 3)))
    with pytest.raises(ValueError, match="grad_final_state"):
        cell.backward_sequence(np.ones_like(out), rand_state(rng, kind, 3, 4))
    gx, _ = cell.backward_sequence(np.ones_like(out))
    assert gx.shape == (5, 2, 3)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        cell.backward_sequence(np.ones_like(out))


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_single_state_cells_take_a_nested_list_as_an_array(kind, rng):
    """A list is array-like for RNN/GRU (as in NumPy); a tuple is refused (it reads as
    the LSTM's (h, c))."""
    cell = make_cell(kind, 2, 3, dtype=np.float64, rng=rng)
    h0 = rng.standard_normal((2, 3))
    x = rng.standard_normal((4, 2, 2))
    want, _ = cell.forward_sequence(x, state=h0)
    got, _ = cell.forward_sequence(x, state=h0.tolist())
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="must be one"):
        cell.forward_sequence(x, state=(h0,))


@pytest.mark.parametrize("make", [lambda: LSTMCell(3, 4, rng=0), lambda: GRUCell(3, 4, rng=0),
                                  lambda: RNNCell(3, 4, rng=0),
                                  lambda: StackedLSTM(3, 4, 2, rng=0)],
                         ids=["lstm", "gru", "rnn", "stacked"])
@pytest.mark.parametrize("shape", [(5, 0, 3), (0, 2, 3)], ids=["batch0", "steps0"])
def test_empty_batch_or_sequence_is_a_clear_error(make, shape):
    """A batch of 0 sequences (or 0 steps) is a ValueError naming x and its shape."""
    layer = make()
    call = layer.forward_sequence if hasattr(layer, "forward_sequence") else layer.forward
    with pytest.raises(ValueError, match=r"x must hold at least one step and one sequence"):
        call(np.ones(shape, np.float32), lengths=None)
    if shape[1] == 0:
        with pytest.raises(ValueError, match="at least one step"):
            call(np.ones(shape, np.float32), lengths=np.zeros(0, np.int64))


@pytest.mark.parametrize("Cell", [LSTMCell, GRUCell, RNNCell])
def test_single_step_of_an_empty_batch_is_a_clear_error(Cell):
    with pytest.raises(ValueError, match=r"x_t must hold at least one sequence, got \[B, D\]"):
        Cell(3, 4, rng=0)(np.ones((0, 3), np.float32))
