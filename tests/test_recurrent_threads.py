"""Two-thread sweeps: the batch-row split of one sweep (``base.row_halves``) and
the phase API of the sequence kernels it runs on.

A split sweep runs the input projection by rows of ``T*B``, the step loops by batch
rows, ``grad_x`` by rows of ``T*B`` and the weight gradients by gate rows, each phase on
two threads.  Every number must equal the unsplit sweep's (no torch needed)."""
import threading

import numpy as np
import pytest

from nn_core._kernels import _recurrent as K
from nn_core import _parallel
from nn_core.recurrent import BidirectionalWrapper, StackedLSTM, base

from test_recurrent_cells import KINDS, make_cell, rand_state


@pytest.fixture
def force_split(monkeypatch):
    """Make ``row_halves`` split any batch of >= 2 rows and count the split phases."""
    monkeypatch.setattr(base, "MIN_SPLIT_ROWS", 2)
    monkeypatch.setattr(base, "STEP_MODE", "blas")     # the BLAS step layouts
    monkeypatch.setattr(_parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 2)
    calls = []
    real = _parallel.run_rows

    def counting(job, ranges, cancel=None):
        calls.append(ranges)
        return real(job, ranges, cancel)

    monkeypatch.setattr(_parallel, "run_rows", counting)
    return calls


def _run(cell, x, state, lengths, go, gfinal, reverse, split):
    base.ROW_SPLIT = split
    try:
        cell.zero_grad()
        out, final = cell.forward_sequence(x, state, lengths, reverse=reverse)
        gx, gstate = cell.backward_sequence(go, gfinal)
    finally:
        base.ROW_SPLIT = True
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]   # noqa: E731
    return ([out] + flat(final) + [gx] + flat(gstate)
            + [cell.grads[k].copy() for k in sorted(cell.grads)])


def _assert_same(a, b, dtype):
    # Rows never interact, so the split computes the same sums; BLAS may still pick
    # another micro-kernel (another summation order) for a half-sized operand: equal
    # to rounding, measured against each array's scale (a sum over T*B products).
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol * np.abs(v).max())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["plain", "lengths", "reverse", "no_bias"])
def test_split_sweep_equals_unsplit(kind, variant, dtype, force_split, rng):
    T, B, D, H = 5, 7, 6, 5                      # odd B: unequal halves
    cell = make_cell(kind, D, H, dtype=dtype, rng=rng, bias=(variant != "no_bias"))
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = rand_state(rng, kind, B, H)
    lengths = rng.integers(1, T + 1, B) if variant in ("lengths", "reverse") else None
    go = rng.standard_normal((T, B, H)).astype(dtype)
    gfinal = rand_state(rng, kind, B, H)
    reverse = variant == "reverse"
    plain = _run(cell, x, state, lengths, go, gfinal, reverse, split=False)
    assert force_split == []
    split = _run(cell, x, state, lengths, go, gfinal, reverse, split=True)
    assert len(force_split) == 5                 # proj, steps | steps, grad_x, wgrad
    _assert_same(plain, split, dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_split_transposed_step_layout_f32(kind, force_split, rng):
    """float32 with H >= 256 takes the transposed per-step GEMM (``W h^T``)."""
    T, B, D, H = 3, 6, 8, 256
    cell = make_cell(kind, D, H, dtype=np.float32, rng=rng)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    go = rng.standard_normal((T, B, H)).astype(np.float32)
    plain = _run(cell, x, None, None, go, None, False, split=False)
    split = _run(cell, x, None, None, go, None, False, split=True)
    assert force_split
    _assert_same(plain, split, np.float32)


def test_split_runs_on_two_threads(force_split, monkeypatch, rng):
    seen = set()
    real = K.rnn_forward

    def spy(*args, **kwargs):
        seen.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "rnn_forward", spy)
    cell = make_cell("lstm", 3, 4, rng=rng)
    cell.forward_sequence(rng.standard_normal((4, 6, 3)))
    assert threading.current_thread().name in seen
    assert any(n.startswith("nn_core-worker") for n in seen)


def test_no_split_when_blas_is_limited_to_one_thread(monkeypatch, rng):
    """``threadpool_limits(1)`` / ``OPENBLAS_NUM_THREADS=1`` keep a sweep on one thread."""
    monkeypatch.setattr(base, "MIN_SPLIT_ROWS", 2)
    monkeypatch.setattr(base, "STEP_MODE", "blas")     # the BLAS step layouts
    monkeypatch.setattr(_parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 1)
    assert base.row_halves(64) is None
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 2)
    assert base.row_halves(64) == ((0, 32), (32, 64))
    assert base.row_halves(1) is None
    monkeypatch.setattr(_parallel, "available_cores", lambda: 1)
    assert base.row_halves(64) is None


def test_no_split_inside_a_bidirectional_sweep(force_split, monkeypatch, rng):
    """The concurrent bidirectional sweeps already use both threads: no nested split."""
    m = BidirectionalWrapper(make_cell("gru_ra", 3, 4, rng=rng), concurrent=True, rng=rng)
    x = rng.standard_normal((4, 6, 3))
    m(x)
    m.backward(rng.standard_normal((4, 6, 8)))
    assert force_split == []
    m.concurrent = False                          # sweeps one after the other: split
    m(x)
    assert len(force_split) == 4


def test_split_stacked_lstm_equals_unsplit(force_split, rng):
    net = StackedLSTM(3, 4, 2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((5, 6, 3))
    go = rng.standard_normal((5, 6, 4))
    res = []
    for split in (False, True):
        base.ROW_SPLIT = split
        try:
            net.zero_grad()
            out, _ = net(x)
            gx = net.backward(go)[0]
        finally:
            base.ROW_SPLIT = True
        res.append([out, gx] + [net.grads[k].copy() for k in sorted(net.grads)])
    _assert_same(res[0], res[1], np.float64)
    assert force_split


@pytest.mark.parametrize("n, align, expect", [
    (7, 1, ((0, 3), (3, 7))), (64, 16, ((0, 32), (32, 64))), (48, 16, ((0, 32), (32, 48))),
    (17, 16, ((0, 16), (16, 17))), (8, 16, ((0, 4), (4, 8))), (1, 1, ((0, 0), (0, 1))),
])
def test_halves(n, align, expect):
    assert _parallel.halves(n, align) == expect


# ------------------------------------------------------------ kernel phases --
# The kernels' own phase API, called directly: ranges of every phase, one-row and
# unequal ranges, weight-gradient cuts inside and across the GRU's [r, z] | n blocks.
_KIND = {"rnn_tanh": (K.RNN_TANH, 1), "rnn_relu": (K.RNN_RELU, 1), "lstm": (K.LSTM, 4),
         "gru": (K.GRU, 3), "gru_ra": (K.GRU_RA, 3)}


def _forward_args(rng, kind, T, B, D, H, lengths, reverse, dtype=np.float64):
    """Keyword arguments of ``K.ForwardSweep``."""
    k, G = _KIND[kind]
    GH = G * H
    W_hh = rng.standard_normal((GH, H)).astype(dtype) * 0.5
    big = (T + 1, B, H)
    hs = np.zeros(big, dtype)
    hs[0] = rng.standard_normal((B, H))
    cs = np.zeros(big, dtype) if k == K.LSTM else None
    if k == K.LSTM:
        cs[0] = rng.standard_normal((B, H))
    aux = np.empty((T, B, H), dtype) if k >= K.LSTM else None
    return dict(kind=k, reverse=reverse, x=rng.standard_normal((T, B, D)).astype(dtype),
                lengths=lengths, W_ih=rng.standard_normal((GH, D)).astype(dtype),
                W_hh=W_hh, W_hhT=np.ascontiguousarray(W_hh.T), gates=np.empty((T, B, GH), dtype),
                hs=hs, cs=cs, aux=aux, bx=rng.standard_normal(GH).astype(dtype),
                bhn=rng.standard_normal(H).astype(dtype), out=np.empty((T, B, H), dtype),
                hh=np.empty((B, GH), dtype))


_SHARED = ("kind", "reverse", "x", "lengths", "W_ih", "W_hh", "W_hhT", "gates", "hs", "cs",
           "aux")


def _backward_args(rng, fw):
    """Keyword arguments of ``K.BackwardSweep`` after the forward ``fw``."""
    k, reverse, x, hs = fw["kind"], fw["reverse"], fw["x"], fw["hs"]
    T, B, D = x.shape
    H, GH, dt = hs.shape[2], fw["gates"].shape[2], x.dtype
    nan = lambda *shape: np.full(shape, np.nan, dt)          # noqa: E731  scratch
    fuse = not reverse and k <= K.LSTM
    args = {name: fw[name] for name in _SHARED}
    args.update(grad_out=rng.standard_normal((T, B, H)).astype(dt),
                dh=rng.standard_normal((B, H)).astype(dt),
                dc=rng.standard_normal((B, H)).astype(dt) if k == K.LSTM else None,
                grad_x=nan(T, B, D), grad_W_ih=rng.standard_normal((GH, D)).astype(dt),
                grad_W_hh=rng.standard_normal((GH, H)).astype(dt),
                grad_b_ih=rng.standard_normal(GH).astype(dt),
                grad_b_hh=rng.standard_normal(GH).astype(dt), dGs=nan(T, B, GH),
                dGt=nan(T, B, GH) if (reverse or k == K.GRU_RA) else None,
                xh=nan(T * B, D + H) if fuse else None, gw=nan(GH, D + H) if fuse else None)
    return args


def _copy(args):
    """Copy the arrays of keyword arguments, keeping arrays that were shared shared."""
    memo = {}
    return {k: memo.setdefault(id(a), a.copy()) if isinstance(a, np.ndarray) else a
            for k, a in args.items()}


# outputs of the forward / backward sweeps
_FW_OUT = ("gates", "hs", "cs", "aux", "out")
_BW_OUT = ("dh", "dc", "grad_x", "grad_W_ih", "grad_W_hh", "grad_b_ih", "grad_b_hh")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_kernel_phases_compose_to_the_whole_sweep(kind, reverse, rng):
    T, B, D, H = 4, 5, 3, 4
    lengths = rng.integers(1, T + 1, B).astype(np.int64)
    lengths[0] = T
    a = _forward_args(rng, kind, T, B, D, H, lengths, reverse)
    b = _copy(a)
    K.rnn_forward(K.ForwardSweep(**a))
    fb = K.ForwardSweep(**b)
    for r in ((0, 7), (7, T * B)):
        K.rnn_forward(fb, K.PHASE_PROJ, *r)
    for r in ((0, 1), (1, 4), (4, B)):
        K.rnn_forward(fb, K.PHASE_STEPS, *r)
    for name in _FW_OUT:
        if a[name] is not None:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-13, atol=1e-13, err_msg=name)

    ga = _backward_args(rng, a)
    gb = _copy(ga)
    K.rnn_backward(K.BackwardSweep(**ga))
    sb = K.BackwardSweep(**gb)
    GH = a["gates"].shape[2]
    for r in ((0, 1), (1, B - 1), (B - 1, B)):
        K.rnn_backward(sb, K.PHASE_STEPS, *r)
    for r in ((0, 1), (1, T * B)):
        K.rnn_backward(sb, K.PHASE_GRAD_X, *r)
    cuts = sorted({0, 1, 2 * H - 1, 2 * H + 1, GH - 1, GH} & set(range(GH + 1)))
    for r in zip(cuts[:-1], cuts[1:]):
        K.rnn_backward(sb, K.PHASE_WGRAD, *r)
    for name in _BW_OUT:
        if ga[name] is not None:
            assert np.isfinite(ga[name]).all(), name
            np.testing.assert_allclose(gb[name], ga[name], rtol=1e-12, atol=1e-12,
                                       err_msg=name)


def test_kernel_phases_transposed_layout_f32(rng):
    """float32, H >= 256: the per-step ``W h^T`` layout on 1- and 2-row ranges."""
    T, B, D, H = 3, 3, 4, 256
    a = _forward_args(rng, "lstm", T, B, D, H, np.full(B, T, np.int64), False, np.float32)
    b = _copy(a)
    K.rnn_forward(K.ForwardSweep(**a))
    fb = K.ForwardSweep(**b)
    K.rnn_forward(fb, K.PHASE_PROJ, 0, T * B)
    for r in ((0, 1), (1, B)):
        K.rnn_forward(fb, K.PHASE_STEPS, *r)
    _assert_same([b["out"]], [a["out"]], np.float32)    # another GEMM form: equal to rounding


@pytest.mark.parametrize("phase, r0, r1, match", [
    (K.PHASE_PROJ, 0, 13, r"0 <= r0 <= r1 <= 12 \(rows of T\*B\), got r0=0, r1=13"),
    (K.PHASE_STEPS, 3, 2, r"0 <= r0 <= r1 <= 4 \(batch rows\), got r0=3, r1=2"),
    (K.PHASE_STEPS, -1, 2, r"got r0=-1"),
    (K.PHASE_ALL, 1, -1, r"PHASE_ALL covers everything: r0 must be 0 and r1 -1, got r0=1"),
    (K.PHASE_GRAD_X, 0, 2, r"phase must be PHASE_ALL, PHASE_PROJ or PHASE_STEPS, got 3"),
])
def test_forward_phase_range_errors(phase, r0, r1, match, rng):
    a = _forward_args(rng, "lstm", 3, 4, 2, 3, np.full(4, 3, np.int64), False)
    with pytest.raises(ValueError, match=match):
        K.rnn_forward(K.ForwardSweep(**a), phase, r0, r1)


@pytest.mark.parametrize("phase, r0, r1, match", [
    (K.PHASE_STEPS, 0, 5, r"0 <= r0 <= r1 <= 4 \(batch rows\), got r0=0, r1=5"),
    (K.PHASE_GRAD_X, 2, 13, r"0 <= r0 <= r1 <= 12 \(rows of T\*B\)"),
    (K.PHASE_WGRAD, 0, 13, r"0 <= r0 <= r1 <= 12 \(gate columns\)"),
    (K.PHASE_ALL, 0, 5, r"PHASE_ALL covers everything"),
    (K.PHASE_PROJ, 0, 2, r"phase must be PHASE_ALL, PHASE_STEPS, PHASE_GRAD_X or "
                         r"PHASE_WGRAD, got 1"),
])
def test_backward_phase_range_errors(phase, r0, r1, match, rng):
    a = _forward_args(rng, "lstm", 3, 4, 2, 3, np.full(4, 3, np.int64), False)
    K.rnn_forward(K.ForwardSweep(**a))
    g = _backward_args(rng, a)
    before = {k: x.copy() for k, x in g.items() if isinstance(x, np.ndarray)}
    with pytest.raises(ValueError, match=match):
        K.rnn_backward(K.BackwardSweep(**g), phase, r0, r1)
    for k, u in before.items():                     # nothing was written
        np.testing.assert_array_equal(u, g[k], err_msg=k)


def test_worker_thread_never_splits(force_split):
    """A task on a team worker must not start another job on the (busy) team."""
    got = _parallel.run_tasks(lambda t: base.row_halves(64), 2)
    assert got[1] is None
    assert base.row_halves(64) == ((0, 32), (32, 64))


def test_run_rows_raises_the_calling_threads_error_after_the_worker_finished():
    done = []

    def job(a, b):
        if a == 0:
            raise KeyError("caller")
        done.append((a, b))
        raise ValueError("worker")

    with pytest.raises(KeyError, match="caller"):
        _parallel.run_rows(job, ((0, 1), (1, 2)))
    assert done == [(1, 2)]
    assert not _parallel.single_thread_blas.engaged
