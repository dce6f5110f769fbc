"""The packed step loops: ``W_hh`` packed once per sweep into the panels of
``src_pyx/_rnn_pack.h`` and multiplied by its micro-kernel (AVX2/FMA or the portable
fallback) instead of one BLAS call per step.

Every element of a packed product is one chain of multiply-adds in a fixed order,
whatever the row block, so step loops over row ranges give the same bits as over the
whole batch.  The packed sweep is checked against the BLAS sweep (odd hidden sizes
that leave a partial panel, one row, row counts that take every row block of the
micro-kernel, padded lengths, reversed sweeps, initial states); parity with torch and
gradcheck run through the default (``auto``) path in test_recurrent_torch.py and
test_recurrent_cells.py.

Inputs are drawn from a seeded generator; the seed is printed (shown on failure).
"""
import numpy as np
import pytest

from nn_core._kernels import _recurrent as K
from nn_core._kernels import _testing
from nn_core.recurrent import StackedLSTM, base

from simd_levels import level_fixture

from test_recurrent_cells import KINDS, is_lstm, make_cell
from test_recurrent_threads import _BW_OUT, _FW_OUT, _backward_args, _copy, _forward_args


@pytest.fixture
def srng():
    """A generator from a fresh seed, printed so that a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed = {seed}")
    return np.random.default_rng(seed)


def _case(srng, kind, T, B, D, H, dtype, lengths, with_state):
    x = srng.standard_normal((T, B, D)).astype(dtype)
    go = srng.standard_normal((T, B, H)).astype(dtype)
    state = gfin = None
    if with_state:
        n = 2 if is_lstm(kind) else 1
        state = tuple(srng.standard_normal((B, H)).astype(dtype) for _ in range(n))
        gfin = tuple(srng.standard_normal((B, H)).astype(dtype) for _ in range(n))
        if n == 1:
            state, gfin = state[0], gfin[0]
    lens = None
    if lengths:
        lens = srng.integers(1, T + 1, size=B)
        if B > 1:
            lens[0] = T
        else:
            lens[0] = max(1, T - 2)             # one row, shorter than T
    return x, go, state, gfin, lens


def _sweep(cell, x, go, state, gfin, lens, reverse):
    cell.zero_grad()
    out, final = cell.forward_sequence(x, state, lens, reverse=reverse)
    gx, gstate = cell.backward_sequence(go, gfin)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]   # noqa: E731
    return ([out] + flat(final) + [gx] + flat(gstate)
            + [cell.grads[k].copy() for k in sorted(cell.grads)])


# Shapes: (T, B, D, H).  H = 21 and 37 leave a partial panel (16 floats, 8 doubles);
# B = 1 takes the matrix-vector kernel, B = 7, 8, 9, 13 every row block (6, 5, 4, 3).
SHAPES = [(5, 1, 3, 37), (4, 7, 5, 21), (3, 9, 4, 40), (4, 13, 6, 37), (3, 8, 2, 64)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", ["plain", "lengths", "state", "reverse"])
def test_packed_sweep_equals_blas_sweep(kind, shape, variant, dtype, srng, monkeypatch):
    T, B, D, H = shape
    lengths = variant in ("lengths", "reverse")
    with_state, reverse = variant != "plain", variant == "reverse"
    cell = make_cell(kind, D, H, dtype=dtype, rng=int(srng.integers(2**31)))
    args = _case(srng, kind, T, B, D, H, dtype, lengths, with_state)
    monkeypatch.setattr(base, "STEP_MODE", "packed")
    packed = _sweep(cell, *args, reverse)
    monkeypatch.setattr(base, "STEP_MODE", "blas")
    blas = _sweep(cell, *args, reverse)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(packed, blas):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


simd = level_fixture(0, 1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_every_simd_level_matches_the_blas_sweep(kind, simd, srng, monkeypatch):
    """The portable kernel (no FMA) and the AVX2/FMA one, one row and several."""
    T, D, H = 4, 3, 21
    for B in (1, 7):
        cell = make_cell(kind, D, H, dtype=np.float64, rng=int(srng.integers(2**31)))
        args = _case(srng, kind, T, B, D, H, np.float64, True, True)
        monkeypatch.setattr(base, "STEP_MODE", "packed")
        packed = _sweep(cell, *args, False)
        monkeypatch.setattr(base, "STEP_MODE", "blas")
        blas = _sweep(cell, *args, False)
        for u, v in zip(packed, blas):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12 * max(1, np.abs(v).max()))


def test_stacked_lstm_packed_equals_blas(srng, monkeypatch):
    net = StackedLSTM(5, 24, 2, dtype=np.float64, rng=3)
    x = srng.standard_normal((6, 4, 5))
    go = srng.standard_normal((6, 4, 24))
    res = []
    for mode in ("packed", "blas"):
        monkeypatch.setattr(base, "STEP_MODE", mode)
        net.zero_grad()
        out = net(x)
        gx = net.backward(go)
        gx = gx[0] if isinstance(gx, tuple) else gx
        res.append([out[0] if isinstance(out, tuple) else out, gx]
                   + [g.copy() for g in net.gradients().values()])
    for u, v in zip(*res):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12 * max(1, np.abs(v).max()))


# ------------------------------------------------------------------ the rule --
@pytest.mark.parametrize("kind", [K.RNN_TANH, K.RNN_RELU, K.LSTM, K.GRU, K.GRU_RA])
@pytest.mark.parametrize("B", [1, 16, 32, 64])
@pytest.mark.parametrize("H", [64, 128, 256, 512])
def test_auto_mode(kind, B, H, dtype):
    mode = K.step_mode(kind, B, H, dtype == np.float64)
    assert mode in (K.STEP_MODES["blas"], K.STEP_MODES["packed"])
    if B == 1 or (kind == K.LSTM):
        assert mode == K.STEP_MODES["packed"]


def test_kernel_mode_is_checked(srng):
    a = _forward_args(srng, "lstm", 3, 4, 2, 3, np.full(4, 3, np.int64), False)
    with pytest.raises(ValueError, match=r"mode must be one of \[-1, 0, 1\]"):
        K.rnn_forward(K.ForwardSweep(**a), mode=7)
    K.rnn_forward(K.ForwardSweep(**a))
    with pytest.raises(ValueError, match="mode must be one of"):
        K.rnn_backward(K.BackwardSweep(**_backward_args(srng, a)), mode=7)


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_packed_row_ranges_compose_to_the_whole_sweep(kind, srng):
    """Packed step loops over row ranges (one row, several): the same bits as the
    whole packed sweep."""
    T, B, D, H = 4, 8, 3, 19
    P = K.STEP_MODES["packed"]
    lengths = srng.integers(1, T + 1, B).astype(np.int64)
    lengths[0] = T
    a = _forward_args(srng, kind, T, B, D, H, lengths, True)
    b = _copy(a)
    K.rnn_forward(K.ForwardSweep(**a), mode=P)
    fb = K.ForwardSweep(**b)
    K.rnn_forward(fb, K.PHASE_PROJ)
    for r in ((0, 1), (1, 7), (7, B)):
        K.rnn_forward(fb, K.PHASE_STEPS, *r, mode=P)
    for name in _FW_OUT:
        if a[name] is not None:
            assert np.array_equal(b[name], a[name]), name
    ga = _backward_args(srng, a)
    gb = _copy(ga)
    K.rnn_backward(K.BackwardSweep(**ga), mode=P)
    sb = K.BackwardSweep(**gb)
    for r in ((0, 1), (1, 7), (7, B)):
        K.rnn_backward(sb, K.PHASE_STEPS, *r, mode=P)
    K.rnn_backward(sb, K.PHASE_GRAD_X)
    K.rnn_backward(sb, K.PHASE_WGRAD)
    for name in _BW_OUT:
        if ga[name] is not None:
            assert np.isfinite(ga[name]).all(), name
            assert np.array_equal(gb[name], ga[name]), name


# ------------------------------------------------------------ the micro-kernel --
@pytest.mark.parametrize("G, H", [(4, 21), (3, 40), (1, 37), (4, 16), (1, 1)])
def test_packed_product_matches_numpy(G, H, dtype, simd, srng):
    """``h @ W_hh^T`` by the packed micro-kernel: every row count (each row block of
    the plan, one row through the matrix-vector kernel), partial panels, both SIMD
    paths, against NumPy in float64."""
    W = srng.standard_normal((G * H, H)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for B in range(1, 14):
        h = srng.standard_normal((B, H)).astype(dtype)
        got = _testing.packed_step(W, h, G)
        want = h.astype(np.float64) @ W.T.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(H), err_msg=f"B={B}")


def test_packed_product_checks_shapes():
    with pytest.raises(ValueError, match=r"expected W_hh \[G\*H, H\]"):
        _testing.packed_step(np.zeros((8, 4)), np.zeros((2, 4)), 3)
