"""Parity of the bidirectional layers with torch ``nn.RNN/LSTM/GRU(bidirectional=True)``.

Outputs, final states, ``grad_x``, gradients of the initial states and of every
parameter; single and multi-layer; with and without ``lengths`` (torch side through
``pack_padded_sequence(enforce_sorted=False)``); the non-concat merge modes against the
torch directions combined by hand.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nn_core.interop import load_torch_state_dict, to_torch_state_dict  # noqa: E402
from nn_core.recurrent import (  # noqa: E402
    BidirectionalGRU,
    BidirectionalRNNCell,
    BidirectionalWrapper,
    GRUCell,
    LSTMCell,
    RNNCell,
    StackedBidirectional,
)

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=2e-6)}


def _grad_tol(tol, g):
    """A parameter gradient sums T*B products: its rounding error scales with its
    largest entries, so an entry that nearly cancels gets an absolute tolerance of
    that scale."""
    return dict(tol, atol=tol["atol"] * max(1.0, float(np.abs(g).max())))
KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
PARAM_NAMES = (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"),
               ("b_hh", "bias_hh"))


def _torch_module(kind, D, H, num_layers, bias, dtype):
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    if kind.startswith("rnn"):
        m = torch.nn.RNN(D, H, num_layers, nonlinearity=kind[4:], bias=bias,
                         bidirectional=True)
    elif kind == "lstm":
        m = torch.nn.LSTM(D, H, num_layers, bias=bias, bidirectional=True)
    else:
        m = torch.nn.GRU(D, H, num_layers, bias=bias, bidirectional=True)
    return m.to(tdt)


def _cell_kwargs(kind):
    if kind.startswith("rnn"):
        return "rnn", {"nonlinearity": kind[4:]}
    if kind == "gru":
        return "gru", {"reset_after": True}
    return "lstm", {}


def _run_torch(tm, x, lengths, h0, c0, g_out, g_h, g_c):
    """torch forward (packed when ``lengths``) and backward of
    ``sum(out * g_out) + sum(h_n * g_h) [+ sum(c_n * g_c)]``."""
    T = x.shape[0]
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = None if c0 is None else torch.tensor(c0, requires_grad=True)
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                      enforce_sorted=False)
    state = h0t if c0t is None else (h0t, c0t)
    out, fin = tm(inp, state)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    h_n, c_n = (fin, None) if c0t is None else fin
    loss = (out * torch.tensor(g_out)).sum() + (h_n * torch.tensor(g_h)).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(g_c)).sum()
    tm.zero_grad()
    loss.backward()
    res = dict(out=out.detach().numpy(), h_n=h_n.detach().numpy(), gx=xt.grad.numpy(),
               gh0=h0t.grad.numpy(),
               grads={k: p.grad.numpy().copy() for k, p in tm.named_parameters()})
    if c_n is not None:
        res.update(c_n=c_n.detach().numpy(), gc0=c0t.grad.numpy())
    return res


def _our_grads(layers):
    """Our parameter gradients under torch's names."""
    out = {}
    for k, layer in enumerate(layers):
        for cell, suffix in ((layer.fw, ""), (layer.bw, "_reverse")):
            for ours, theirs in PARAM_NAMES:
                if ours in cell.grads:
                    out[f"{theirs}_l{k}{suffix}"] = cell.grads[ours]
    return out


def _draw(rng, kind, T, B, D, H, L, dtype, with_lengths):
    x = rng.standard_normal((T, B, D)).astype(dtype)
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, T + 1, B)
        lengths[0], lengths[-1] = T, 1          # both edges
        rng.shuffle(lengths)
    h0 = rng.standard_normal((L * 2, B, H)).astype(dtype)
    c0 = rng.standard_normal((L * 2, B, H)).astype(dtype) if kind == "lstm" else None
    return x, lengths, h0, c0


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_stacked_matches_torch(kind, num_layers, with_lengths, dtype, rng):
    T, B, D, H = 6, 4, 5, 3
    bias = not (kind == "rnn_relu" and num_layers == 2)   # cover bias=False once
    tm = _torch_module(kind, D, H, num_layers, bias, dtype)
    cell_type, kw = _cell_kwargs(kind)
    m = StackedBidirectional(cell_type, D, H, num_layers, bias=bias, dtype=dtype, **kw)
    load_torch_state_dict(m, tm.state_dict())
    x, lengths, h0, c0 = _draw(rng, kind, T, B, D, H, num_layers, dtype, with_lengths)
    g_out = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    if lengths is not None:          # torch's padded outputs are constants: any gradient
        g_out[np.arange(T)[:, None] >= lengths[None, :]] = 0
    g_h = rng.standard_normal(h0.shape).astype(dtype)
    g_c = None if c0 is None else rng.standard_normal(c0.shape).astype(dtype)
    ref = _run_torch(tm, x, lengths, h0, c0, g_out, g_h, g_c)

    S = (num_layers, 2, B, H)
    state = h0.reshape(S) if c0 is None else (h0.reshape(S), c0.reshape(S))
    out, fin = m(x, state, lengths)
    gstate = g_h.reshape(S) if c0 is None else (g_h.reshape(S), g_c.reshape(S))
    gx, g0 = m.backward(g_out, gstate)

    tol = TOL[dtype]
    np.testing.assert_allclose(out, ref["out"], **tol)
    h_n = fin if c0 is None else fin[0]
    np.testing.assert_allclose(h_n.reshape(ref["h_n"].shape), ref["h_n"], **tol)
    np.testing.assert_allclose(gx, ref["gx"], **tol)
    gh0 = g0 if c0 is None else g0[0]
    np.testing.assert_allclose(gh0.reshape(h0.shape), ref["gh0"], **tol)
    if c0 is not None:
        np.testing.assert_allclose(fin[1].reshape(c0.shape), ref["c_n"], **tol)
        np.testing.assert_allclose(g0[1].reshape(c0.shape), ref["gc0"], **tol)
    ours = _our_grads(m.layers)
    assert sorted(ours) == sorted(ref["grads"])
    for k, g in ref["grads"].items():
        np.testing.assert_allclose(ours[k], g, err_msg=k, **_grad_tol(tol, g))


def _single(kind, D, H, dtype, merge_mode="concat", batch_first=False):
    if kind.startswith("rnn"):
        return BidirectionalRNNCell(D, H, nonlinearity=kind[4:], merge_mode=merge_mode,
                                    batch_first=batch_first, dtype=dtype)
    if kind == "gru":
        return BidirectionalGRU(D, H, reset_after=True, merge_mode=merge_mode,
                                batch_first=batch_first, dtype=dtype)
    return BidirectionalWrapper(LSTMCell(D, H, batch_first=batch_first, dtype=dtype),
                                merge_mode=merge_mode)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", KINDS)
def test_wrapper_matches_torch(kind, with_lengths, batch_first, dtype, rng):
    T, B, D, H = 7, 5, 4, 3
    tm = _torch_module(kind, D, H, 1, True, dtype)
    m = _single(kind, D, H, dtype, batch_first=batch_first)
    load_torch_state_dict(m, tm.state_dict())
    x, lengths, h0, c0 = _draw(rng, kind, T, B, D, H, 1, dtype, with_lengths)
    g_out = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    if lengths is not None:
        g_out[np.arange(T)[:, None] >= lengths[None, :]] = 0
    g_h = rng.standard_normal(h0.shape).astype(dtype)
    g_c = None if c0 is None else rng.standard_normal(c0.shape).astype(dtype)
    ref = _run_torch(tm, x, lengths, h0, c0, g_out, g_h, g_c)

    tr = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    if c0 is None:
        state, gstate = (h0[0], h0[1]), (g_h[0], g_h[1])
    else:
        state = ((h0[0], c0[0]), (h0[1], c0[1]))
        gstate = ((g_h[0], g_c[0]), (g_h[1], g_c[1]))
    out, (f_fw, f_bw) = m(tr(x), state, lengths)
    gx, (gs_fw, gs_bw) = m.backward(tr(g_out), gstate)
    tol = TOL[dtype]
    np.testing.assert_allclose(tr(out), ref["out"], **tol)
    np.testing.assert_allclose(tr(gx), ref["gx"], **tol)
    if c0 is None:
        np.testing.assert_allclose(np.stack([f_fw, f_bw]), ref["h_n"], **tol)
        np.testing.assert_allclose(np.stack([gs_fw, gs_bw]), ref["gh0"], **tol)
    else:
        np.testing.assert_allclose(np.stack([f_fw[0], f_bw[0]]), ref["h_n"], **tol)
        np.testing.assert_allclose(np.stack([f_fw[1], f_bw[1]]), ref["c_n"], **tol)
        np.testing.assert_allclose(np.stack([gs_fw[0], gs_bw[0]]), ref["gh0"], **tol)
        np.testing.assert_allclose(np.stack([gs_fw[1], gs_bw[1]]), ref["gc0"], **tol)
    ours = _our_grads([m])
    for k, g in ref["grads"].items():
        np.testing.assert_allclose(ours[k], g, err_msg=k, **_grad_tol(tol, g))


@pytest.mark.parametrize("merge_mode", ["sum", "mean", "mul"])
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_merge_modes_match_torch_directions(kind, merge_mode, dtype, rng):
    """sum/mean/mul against torch's two directions combined by hand."""
    T, B, D, H = 6, 4, 3, 5
    tm = _torch_module(kind, D, H, 1, True, dtype)
    m = _single(kind, D, H, dtype, merge_mode=merge_mode)
    load_torch_state_dict(m, tm.state_dict())
    x, lengths, _, _ = _draw(rng, kind, T, B, D, H, 1, dtype, True)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    g[np.arange(T)[:, None] >= lengths[None, :]] = 0

    xt = torch.tensor(x, requires_grad=True)
    pk = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                 enforce_sorted=False)
    o, _ = tm(pk)
    o, _ = torch.nn.utils.rnn.pad_packed_sequence(o, total_length=T)
    of, ob = o[..., :H], o[..., H:]
    merged = {"sum": of + ob, "mean": (of + ob) / 2, "mul": of * ob}[merge_mode]
    tm.zero_grad()
    (merged * torch.tensor(g)).sum().backward()

    out, _ = m(x, None, lengths)
    gx, (gh_fw, gh_bw) = m.backward(g)
    tol = TOL[dtype]
    np.testing.assert_allclose(out, merged.detach().numpy(), **tol)
    np.testing.assert_allclose(gx, xt.grad.numpy(), **tol)
    ours = _our_grads([m])
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(ours[k], p.grad.numpy(), err_msg=k,
                                   **_grad_tol(tol, p.grad.numpy()))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_interop_round_trip(kind, num_layers):
    tm = _torch_module(kind, 4, 3, num_layers, True, np.float32)
    cell_type, kw = _cell_kwargs(kind)
    m = StackedBidirectional(cell_type, 4, 3, num_layers, **kw)
    load_torch_state_dict(m, tm.state_dict())
    sd = to_torch_state_dict(m)
    assert sorted(sd) == sorted(tm.state_dict())
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(sd[k], v.numpy())
    # and back into torch
    tm2 = _torch_module(kind, 4, 3, num_layers, True, np.float32)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    if num_layers == 1:                               # the one-layer wrappers too
        w = _single(kind, 4, 3, np.float32)
        load_torch_state_dict(w, tm.state_dict())
        assert sorted(to_torch_state_dict(w)) == sorted(tm.state_dict())
        np.testing.assert_array_equal(w.bw.params["W_hh"],
                                      tm.state_dict()["weight_hh_l0_reverse"].numpy())


def test_interop_errors():
    tm = torch.nn.GRU(4, 3, bidirectional=True)
    with pytest.raises(ValueError, match="reset_after=True"):
        load_torch_state_dict(BidirectionalGRU(4, 3), tm.state_dict())
    with pytest.raises(ValueError, match="reset_after=True"):
        to_torch_state_dict(StackedBidirectional("gru", 4, 3, 2))
    m = BidirectionalGRU(4, 3, reset_after=True)
    sd = dict(tm.state_dict())
    del sd["bias_hh_l0_reverse"]
    with pytest.raises(ValueError, match="bias_hh_l0_reverse"):
        load_torch_state_dict(m, sd)
    sd = dict(tm.state_dict())
    sd["weight_ih_l1"] = sd["weight_ih_l0"]
    with pytest.raises(ValueError, match="weight_ih_l1"):
        load_torch_state_dict(m, sd)
    sd = dict(tm.state_dict())
    sd["weight_hh_l0_reverse"] = torch.zeros(9, 4)
    before = m.bw.params["W_hh"].copy()
    with pytest.raises(ValueError, match=r"weight_hh_l0_reverse.*\(9, 3\).*\(9, 4\)"):
        load_torch_state_dict(m, sd)
    np.testing.assert_array_equal(m.bw.params["W_hh"], before)   # nothing half-loaded
    # a 2-layer torch module does not fit a 1-layer stack
    with pytest.raises(ValueError, match="unexpected keys"):
        load_torch_state_dict(StackedBidirectional("gru", 4, 3, 1, reset_after=True),
                              torch.nn.GRU(4, 3, 2, bidirectional=True).state_dict())
    mixed = BidirectionalWrapper(RNNCell(4, 3), GRUCell(4, 3, reset_after=True))
    with pytest.raises(TypeError, match="same cell class"):
        to_torch_state_dict(mixed)
