"""Parity of the recurrent cells and StackedLSTM with torch.nn.RNN / LSTM / GRU, and
the torch state-dict interop."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nn_core.interop import load_torch_state_dict, to_torch_state_dict  # noqa: E402
from nn_core.recurrent import GRUCell, LSTMCell, RNNCell, StackedLSTM  # noqa: E402

TORCH_DT = {np.float32: torch.float32, np.float64: torch.float64}


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


def build(kind, D, H, dtype, bias=True, num_layers=1):
    tdt = TORCH_DT[dtype]
    if kind == "lstm" and num_layers > 1:
        ours = StackedLSTM(D, H, num_layers, bias=bias, dtype=dtype, rng=0)
        theirs = torch.nn.LSTM(D, H, num_layers, bias=bias, dtype=tdt)
    elif kind in ("rnn_tanh", "rnn_relu"):
        nl = kind[4:]
        ours = RNNCell(D, H, nl, bias, dtype=dtype, rng=0)
        theirs = torch.nn.RNN(D, H, nonlinearity=nl, bias=bias, dtype=tdt)
    elif kind == "lstm":
        ours = LSTMCell(D, H, bias, dtype=dtype, rng=0)
        theirs = torch.nn.LSTM(D, H, bias=bias, dtype=tdt)
    else:
        ours = GRUCell(D, H, bias, reset_after=True, dtype=dtype, rng=0)
        theirs = torch.nn.GRU(D, H, bias=bias, dtype=tdt)
    # torch's randomly initialised weights into ours (exercises the interop too)
    load_torch_state_dict(ours, theirs.state_dict())
    return ours, theirs


def run_ours(ours, kind, x, state, lengths, go, gstate):
    if isinstance(ours, StackedLSTM):
        out, final = ours(x, state, lengths)
        gx, ginit = ours.backward(go, gstate)
    else:
        if state is not None:
            state = (state[0][0], state[1][0]) if kind == "lstm" else state[0][0]
        if gstate is not None:
            gstate = (gstate[0][0], gstate[1][0]) if kind == "lstm" else gstate[0][0]
        out, final = ours.forward_sequence(x, state, lengths)
        gx, ginit = ours.backward_sequence(go, gstate)
        final = (final[0][None], final[1][None]) if kind == "lstm" else (final[None],)
        ginit = (ginit[0][None], ginit[1][None]) if kind == "lstm" else (ginit[None],)
    if not isinstance(final, tuple):
        final, ginit = (final,), (ginit,)
    return out, final, gx, ginit


def run_torch(theirs, kind, x, state, lengths, go, gstate):
    T = x.shape[0]
    xt = torch.tensor(x, requires_grad=True)
    st = None
    if state is not None:
        st = tuple(torch.tensor(s, requires_grad=True) for s in state)
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                      enforce_sorted=False)
    arg = None if st is None else (st if kind == "lstm" else st[0])
    out, fin = theirs(inp, arg)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    fin = fin if kind == "lstm" else (fin,)
    loss = (out * torch.tensor(go)).sum()
    for f, g in zip(fin, gstate):
        loss = loss + (f * torch.tensor(g)).sum()
    loss.backward()
    ginit = tuple(s.grad.numpy() for s in st) if st is not None else None
    return (out.detach().numpy(), tuple(f.detach().numpy() for f in fin),
            xt.grad.numpy(), ginit)


CASES = [("rnn_tanh", 1), ("rnn_relu", 1), ("lstm", 1), ("gru", 1), ("lstm", 2)]


@pytest.mark.parametrize("kind,layers", CASES, ids=[f"{k}-{n}" for k, n in CASES])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_parity_with_torch(kind, layers, with_state, with_lengths, dtype, rng):
    T, B, D, H = 7, 4, 5, 6
    ours, theirs = build(kind, D, H, dtype, num_layers=layers)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    nstate = 2 if kind == "lstm" else 1
    state = (tuple(rng.standard_normal((layers, B, H)).astype(dtype) for _ in range(nstate))
             if with_state else None)
    lengths = np.array([7, 3, 1, 5]) if with_lengths else None
    go = rng.standard_normal((T, B, H)).astype(dtype)
    if lengths is not None:
        go[np.arange(T)[:, None] >= lengths[None, :]] = 0   # padded outputs are constant
    gstate = tuple(rng.standard_normal((layers, B, H)).astype(dtype) for _ in range(nstate))

    out, final, gx, ginit = run_ours(ours, kind, x, state, lengths, go, gstate)
    t_out, t_final, t_gx, t_ginit = run_torch(theirs, kind, x, state, lengths, go, gstate)
    np.testing.assert_allclose(out, t_out, **tol(dtype))
    for a, b in zip(final, t_final):
        np.testing.assert_allclose(a, b, **tol(dtype))
    np.testing.assert_allclose(gx, t_gx, **tol(dtype))
    if with_state:
        for a, b in zip(ginit, t_ginit):
            np.testing.assert_allclose(a, b, **tol(dtype))
    ours_grads = to_torch_state_dict_grads(ours)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(ours_grads[name], p.grad.numpy(), **tol(dtype),
                                   err_msg=name)


def to_torch_state_dict_grads(module):
    """Our gradients under torch's names (the parameter mapping of the interop)."""
    saved = {k: v.copy() for k, v in module.parameters().items()}
    for k, v in module.parameters().items():
        v[...] = module.gradients()[k]
    out = to_torch_state_dict(module)
    for k, v in module.parameters().items():
        v[...] = saved[k]
    return out


def test_parity_no_bias_and_batch_first(rng):
    ours, theirs = build("lstm", 3, 4, np.float64, bias=False)
    assert set(to_torch_state_dict(ours)) == {"weight_ih_l0", "weight_hh_l0"}
    bf = LSTMCell(3, 4, bias=False, batch_first=True, dtype=np.float64)
    bf.load_state_dict(ours.state_dict())
    tb = torch.nn.LSTM(3, 4, bias=False, batch_first=True, dtype=torch.float64)
    tb.load_state_dict(theirs.state_dict())
    x = rng.standard_normal((2, 6, 3))
    out, (h, c) = bf.forward_sequence(x)
    t_out, (t_h, t_c) = tb(torch.tensor(x))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, t_c[0].detach().numpy(), rtol=1e-10, atol=1e-12)


def test_stacked_lstm_dropout_eval_matches_torch(rng):
    ours = StackedLSTM(3, 4, 3, dropout=0.5, dtype=np.float64, rng=0)
    theirs = torch.nn.LSTM(3, 4, 3, dropout=0.5, dtype=torch.float64)
    load_torch_state_dict(ours, theirs.state_dict())
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((5, 2, 3))
    out, _ = ours(x)
    np.testing.assert_allclose(out, theirs(torch.tensor(x))[0].detach().numpy(),
                               rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------- interop --
def test_interop_round_trip_and_errors():
    theirs = torch.nn.GRU(3, 5)
    ours = GRUCell(3, 5, reset_after=True)
    load_torch_state_dict(ours, theirs.state_dict())
    back = to_torch_state_dict(ours)
    assert set(back) == set(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy())
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})

    with pytest.raises(ValueError, match="reset_after=True"):
        load_torch_state_dict(GRUCell(3, 5), theirs.state_dict())
    with pytest.raises(ValueError, match="reset_after=True"):
        to_torch_state_dict(GRUCell(3, 5))
    sd = dict(theirs.state_dict())
    sd.pop("bias_hh_l0")
    with pytest.raises(ValueError, match="bias_hh_l0"):
        load_torch_state_dict(ours, sd)
    sd = dict(theirs.state_dict(), weight_ih_l1=torch.zeros(1))
    with pytest.raises(ValueError, match="weight_ih_l1"):
        load_torch_state_dict(ours, sd)
    sd = {k: v.numpy() for k, v in torch.nn.GRU(4, 5).state_dict().items()}
    with pytest.raises(ValueError, match="weight_ih_l0"):
        load_torch_state_dict(ours, sd)
    # a two-layer torch LSTM does not fit a single cell
    with pytest.raises(ValueError, match="unexpected keys"):
        load_torch_state_dict(LSTMCell(3, 5), torch.nn.LSTM(3, 5, 2).state_dict())
    # nn.RNN <-> RNNCell, nn.LSTM(num_layers=3) <-> StackedLSTM
    rnn = RNNCell(2, 3, "relu")
    load_torch_state_dict(rnn, torch.nn.RNN(2, 3, nonlinearity="relu").state_dict())
    net = StackedLSTM(2, 3, 3, dtype=np.float64)
    t3 = torch.nn.LSTM(2, 3, 3)
    load_torch_state_dict(net, t3.state_dict())
    for k, v in to_torch_state_dict(net).items():
        np.testing.assert_allclose(v, t3.state_dict()[k].numpy(), rtol=1e-7)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_parity_float32_wide_hidden(kind, rng):
    """H >= 256 in float32 takes the transposed per-step GEMM layout (W_hh h^T)."""
    T, B, D, H = 4, 6, 8, 256
    dtype = np.float32
    ours, theirs = build(kind, D, H, dtype)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    nstate = 2 if kind == "lstm" else 1
    state = tuple(rng.standard_normal((1, B, H)).astype(dtype) for _ in range(nstate))
    lengths = np.array([4, 1, 3, 4, 2, 4])
    go = rng.standard_normal((T, B, H)).astype(dtype)
    go[np.arange(T)[:, None] >= lengths[None, :]] = 0
    gstate = tuple(rng.standard_normal((1, B, H)).astype(dtype) for _ in range(nstate))
    out, final, gx, ginit = run_ours(ours, kind, x, state, lengths, go, gstate)
    t_out, t_final, t_gx, t_ginit = run_torch(theirs, kind, x, state, lengths, go, gstate)
    for a, b in [(out, t_out), (gx, t_gx), *zip(final, t_final), *zip(ginit, t_ginit)]:
        np.testing.assert_allclose(a, b, **tol(dtype))
    ours_grads = to_torch_state_dict_grads(ours)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(ours_grads[name], p.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
