"""The packed step loops (``W_hh`` packed once per sweep, ``src_pyx/_rnn_pack.h``) and the
kernels' thread team (``src_pyx/_rnn_team.h``) that splits each step by hidden units.

Every element of a packed step is one chain of multiply-adds in a fixed order, whatever
the thread that computes it, so a sweep must give the same bits on 1, 2, 3 or 4 threads
(odd hidden sizes that leave a partial panel, one row, row counts that take every row
block of the micro-kernel, padded lengths, reversed sweeps).  The packed sweep is
checked against the BLAS sweep; parity with torch and gradcheck run through the default
(``auto``) path in test_recurrent_torch.py / test_recurrent_cells.py.

Inputs are drawn from a seeded generator; the seed is printed (shown on failure).
"""
import threading

import numpy as np
import pytest

from nn_core import _parallel
from nn_core._kernels import _recurrent as K
from nn_core._kernels import _testing
from nn_core.recurrent import StackedLSTM, _base

from test_recurrent_cells import KINDS, is_lstm, make_cell
from test_recurrent_threads import _BW_OUT, _FW_OUT, _backward_args, _copy, _forward_args


@pytest.fixture
def srng():
    """A generator from a fresh seed, printed so that a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed = {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def team(monkeypatch):
    """``team(n)``: packed sweeps, a thread budget of ``n`` on ``n`` cores."""
    monkeypatch.setattr(_base, "STEP_MODE", "packed")

    def set_threads(n):
        monkeypatch.setattr(_parallel, "available_cores", lambda: n)
        monkeypatch.setattr(_parallel, "blas_threads", lambda: n)
    return set_threads


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
        lens[0] = T
    return x, go, state, gfin, lens


def _sweep(cell, x, go, state, gfin, lens, reverse):
    cell.zero_grad()
    out, final = cell.forward_sequence(x, state, lens, reverse=reverse)
    gx, gstate = cell.backward_sequence(go, gfin)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]   # noqa: E731
    return ([out] + flat(final) + [gx] + flat(gstate)
            + [cell.grads[k].copy() for k in sorted(cell.grads)])


def _spy_threads(monkeypatch):
    """Record the ``threads`` every packed kernel call asks for."""
    seen = []
    for name in ("rnn_forward", "rnn_backward"):
        real = getattr(K, name)

        def spy(*args, _real=real, **kw):
            seen.append(kw.get("threads", 1))
            return _real(*args, **kw)
        monkeypatch.setattr(K, name, spy)
    return seen


# Shapes: (T, B, D, H).  H = 21 and 37 leave a partial panel (16 floats, 8 doubles);
# B = 1 takes the matrix-vector kernel, B = 7, 8, 9, 13 every row block (6, 5, 4, 3).
SHAPES = [(5, 1, 3, 37), (4, 7, 5, 21), (3, 9, 4, 40), (4, 13, 6, 37), (3, 8, 2, 64)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_packed_sweep_same_bits_on_1_to_4_threads(kind, shape, dtype, team, srng,
                                                  monkeypatch):
    T, B, D, H = shape
    variant = srng.integers(4)                  # lengths / initial state / reverse mix
    lengths, with_state, reverse = variant & 1, variant & 2, bool(variant == 3)
    cell = make_cell(kind, D, H, dtype=dtype, rng=int(srng.integers(2**31)))
    args = _case(srng, kind, T, B, D, H, dtype, lengths, with_state)
    seen = _spy_threads(monkeypatch)
    team(1)
    ref = _sweep(cell, *args, reverse)
    for n in (2, 3, 4, 1, 3):
        team(n)
        got = _sweep(cell, *args, reverse)
        for a, b in zip(ref, got):
            assert np.array_equal(a, b), f"{n} threads differ from 1"
    assert max(seen) > 1                        # the team did run


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(4, 1, 3, 37), (3, 7, 4, 21), (3, 13, 5, 40)],
                         ids=lambda s: "x".join(map(str, s)))
def test_packed_sweep_equals_blas_sweep(kind, shape, dtype, team, srng, monkeypatch):
    T, B, D, H = shape
    cell = make_cell(kind, D, H, dtype=dtype, rng=int(srng.integers(2**31)))
    args = _case(srng, kind, T, B, D, H, dtype, True, True)
    team(2)
    packed = _sweep(cell, *args, False)
    monkeypatch.setattr(_base, "STEP_MODE", "blas")
    blas = _sweep(cell, *args, False)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(packed, blas):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


@pytest.fixture(params=[0, 1], ids=["baseline", "avx2"])
def simd(request):
    if _testing.set_simd_level(request.param) != request.param:
        _testing.set_simd_level(2)
        pytest.skip("the CPU lacks this SIMD level")
    yield request.param
    _testing.set_simd_level(2)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_every_simd_level_same_bits_on_any_thread_count(kind, simd, team, srng):
    """The portable kernel (no FMA) and the AVX2/FMA one: each thread-independent, both
    close to the BLAS sweep."""
    T, B, D, H = 4, 7, 3, 21
    cell = make_cell(kind, D, H, dtype=np.float64, rng=int(srng.integers(2**31)))
    args = _case(srng, kind, T, B, D, H, np.float64, True, True)
    for b in (1, B):
        a = (args[0][:, :b], args[1][:, :b],
             tuple(s[:b] for s in args[2]) if isinstance(args[2], tuple) else args[2][:b],
             tuple(s[:b] for s in args[3]) if isinstance(args[3], tuple) else args[3][:b],
             args[4][:b])
        team(1)
        ref = _sweep(cell, *a, False)
        team(3)
        got = _sweep(cell, *a, False)
        for u, v in zip(ref, got):
            assert np.array_equal(u, v)


def test_alternating_team_and_single_thread_jobs(team, srng):
    """A one-thread packed sweep after a team sweep must not wait at the team's
    barrier (a regression: it deadlocked)."""
    cell = make_cell("gru", 3, 40, dtype=np.float32, rng=1)
    args = _case(srng, "gru", 4, 5, 3, 40, np.float32, False, False)
    team(2)
    ref = _sweep(cell, *args, False)
    for n in (1, 2, 1, 1, 2):
        team(n)
        got = _sweep(cell, *args, False)
        assert all(np.array_equal(u, v) for u, v in zip(ref, got))


def test_concurrent_python_threads_share_the_team(team, srng):
    """Sweeps from several Python threads: one gets the team, the others run alone --
    the same numbers either way."""
    team(2)
    cells = [make_cell("lstm", 4, 37, dtype=np.float32, rng=k) for k in range(3)]
    args = _case(srng, "lstm", 6, 5, 4, 37, np.float32, True, False)
    ref = [_sweep(c, *args, False) for c in cells]
    got = [None] * 3
    errors = []

    def work(k):
        try:
            for _ in range(5):
                got[k] = _sweep(cells[k], *args, False)
        except BaseException as exc:   # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    for r, g in zip(ref, got):
        assert all(np.array_equal(u, v) for u, v in zip(r, g))


def test_stacked_lstm_same_bits_on_1_and_2_threads(team, srng):
    net = StackedLSTM(5, 24, 2, dtype=np.float32, rng=3)
    x = srng.standard_normal((6, 4, 5)).astype(np.float32)
    go = srng.standard_normal((6, 4, 24)).astype(np.float32)
    res = []
    for n in (1, 2):
        team(n)
        net.zero_grad()
        out = net(x)
        gx = net.backward(go)
        gx = gx[0] if isinstance(gx, tuple) else gx
        res.append([out[0] if isinstance(out, tuple) else out, gx]
                   + [g.copy() for g in net.gradients().values()])
    assert all(np.array_equal(u, v) for u, v in zip(*res))


# ------------------------------------------------------------------ the plan --
def test_step_plan_obeys_the_thread_budget(monkeypatch):
    monkeypatch.setattr(_base, "STEP_MODE", "packed")
    monkeypatch.setattr(_parallel, "available_cores", lambda: 4)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 1)
    assert _base.step_plan(K.LSTM, 32, 256, np.float32)[1] == 1
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 8)
    n = _base.step_plan(K.LSTM, 32, 256, np.float32)[1]
    assert 1 <= n <= 4                          # never more than the free cores
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 2)
    assert _base.step_plan(K.LSTM, 32, 256, np.float32)[1] <= 2
    monkeypatch.setattr(_base, "TEAM", False)
    assert _base.step_plan(K.LSTM, 32, 256, np.float32)[1] == 1


def test_step_plan_runs_alone_inside_a_parallel_region(monkeypatch):
    monkeypatch.setattr(_base, "STEP_MODE", "packed")
    monkeypatch.setattr(_parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 2)
    with _parallel.single_thread_blas:
        assert _base.step_plan(K.LSTM, 32, 256, np.float32)[1] == 1


def test_step_plan_blas_mode_never_uses_the_team(monkeypatch):
    monkeypatch.setattr(_base, "STEP_MODE", "blas")
    monkeypatch.setattr(_parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 2)
    assert _base.step_plan(K.LSTM, 32, 256, np.float32) == (K.STEP_MODES["blas"], 1)


@pytest.mark.parametrize("kind", [K.RNN_TANH, K.LSTM, K.GRU, K.GRU_RA])
@pytest.mark.parametrize("B", [1, 16, 32, 64])
@pytest.mark.parametrize("H", [64, 128, 256, 512])
def test_auto_mode_ignores_the_thread_count(kind, B, H, dtype):
    double = dtype == np.float64
    mode = K.step_mode(kind, B, H, double)
    assert mode in (K.STEP_MODES["blas"], K.STEP_MODES["packed"])
    for n in (1, 2, 4):
        assert 1 <= K.team_threads(kind, B, H, double, n) <= n


@pytest.mark.parametrize("threads, mode, match", [
    (0, K.STEP_MODES["packed"], "threads must be >= 1, got 0"),
    (2, 7, "mode must be one of"),
])
def test_kernel_threads_and_mode_are_checked(threads, mode, match, srng):
    a = _forward_args(srng, "lstm", 3, 4, 2, 3, np.full(4, 3, np.int64), False)
    with pytest.raises(ValueError, match=match):
        K.rnn_forward(K.ForwardSweep(**a), threads=threads, mode=mode)
    K.rnn_forward(K.ForwardSweep(**a))
    with pytest.raises(ValueError, match=match):
        K.rnn_backward(K.BackwardSweep(**_backward_args(srng, a)), threads=threads,
                       mode=mode)


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_packed_row_ranges_compose_to_the_whole_sweep(kind, srng):
    """Packed step loops over row ranges (one row, several) on a team of 3: the same
    bits as the whole packed sweep on one thread."""
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
        K.rnn_forward(fb, K.PHASE_STEPS, *r, threads=3, mode=P)
    for name in _FW_OUT:
        if a[name] is not None:
            assert np.array_equal(b[name], a[name]), name
    ga = _backward_args(srng, a)
    gb = _copy(ga)
    K.rnn_backward(K.BackwardSweep(**ga), mode=P)
    sb = K.BackwardSweep(**gb)
    for r in ((0, 1), (1, 7), (7, B)):
        K.rnn_backward(sb, K.PHASE_STEPS, *r, threads=3, mode=P)
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
