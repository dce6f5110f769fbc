"""Two-thread sweeps: the batch-row split of one sweep (``_threads.row_halves``) and
the phase API of the sequence kernels it runs on.

A split sweep runs the input projection by gate columns, the step loops by batch rows,
``grad_x`` by rows of ``T*B`` and the weight gradients by gate rows, each phase on two
threads.  Every number must equal the unsplit sweep's (no torch needed)."""
import threading

import numpy as np
import pytest

from nn_core._kernels import _recurrent as K
from nn_core.recurrent import BidirectionalWrapper, StackedLSTM, _threads

from test_recurrent_cells import KINDS, is_lstm, make_cell, rand_state


@pytest.fixture
def force_split(monkeypatch):
    """Make ``row_halves`` split any batch of >= 2 rows and count the split phases."""
    monkeypatch.setattr(_threads, "MIN_SPLIT_ROWS", 2)
    monkeypatch.setattr(_threads, "available_cores", lambda: 2)
    monkeypatch.setattr(_threads, "blas_threads", lambda: 2)
    calls = []
    real = _threads.run_rows

    def counting(job, ranges):
        calls.append(ranges)
        return real(job, ranges)

    monkeypatch.setattr(_threads, "run_rows", counting)
    return calls


def _run(cell, x, state, lengths, go, gfinal, reverse, split):
    _threads.ROW_SPLIT = split
    try:
        cell.zero_grad()
        out, final = cell.forward_sequence(x, state, lengths, reverse=reverse)
        gx, gstate = cell.backward_sequence(go, gfinal)
    finally:
        _threads.ROW_SPLIT = True
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

    def spy(*args):
        seen.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(K, "rnn_forward", spy)
    cell = make_cell("lstm", 3, 4, rng=rng)
    cell.forward_sequence(rng.standard_normal((4, 6, 3)))
    assert threading.current_thread().name in seen
    assert any(n.startswith("nn_core-worker") for n in seen)


def test_no_split_when_blas_is_limited_to_one_thread(monkeypatch, rng):
    """``threadpool_limits(1)`` / ``OPENBLAS_NUM_THREADS=1`` keep a sweep on one thread."""
    monkeypatch.setattr(_threads, "MIN_SPLIT_ROWS", 2)
    monkeypatch.setattr(_threads, "available_cores", lambda: 2)
    monkeypatch.setattr(_threads, "blas_threads", lambda: 1)
    assert _threads.row_halves(64) is None
    monkeypatch.setattr(_threads, "blas_threads", lambda: 2)
    assert _threads.row_halves(64) == ((0, 32), (32, 64))
    assert _threads.row_halves(1) is None
    monkeypatch.setattr(_threads, "available_cores", lambda: 1)
    assert _threads.row_halves(64) is None


def test_no_split_inside_a_bidirectional_sweep(force_split, rng):
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
        _threads.ROW_SPLIT = split
        try:
            net.zero_grad()
            out, _ = net(x)
            gx = net.backward(go)[0]
        finally:
            _threads.ROW_SPLIT = True
        res.append([out, gx] + [net.grads[k].copy() for k in sorted(net.grads)])
    _assert_same(res[0], res[1], np.float64)
    assert force_split


@pytest.mark.parametrize("n, align, expect", [
    (7, 1, ((0, 3), (3, 7))), (64, 16, ((0, 32), (32, 64))), (48, 16, ((0, 32), (32, 48))),
    (17, 16, ((0, 16), (16, 17))), (8, 16, ((0, 4), (4, 8))), (1, 1, ((0, 0), (0, 1))),
])
def test_halves(n, align, expect):
    assert _threads.halves(n, align) == expect


# ------------------------------------------------------------ kernel phases --
def _kernel_arrays(rng, T=3, B=4, D=2, H=3, G=4):
    f = np.float64
    GH = G * H
    W_hh = rng.standard_normal((GH, H))
    fwd = dict(x=rng.standard_normal((T, B, D)), W_ih=rng.standard_normal((GH, D)),
               W_hh=W_hh, W_hhT=np.ascontiguousarray(W_hh.T), bx=rng.standard_normal(GH),
               bhn=np.zeros(H), lengths=np.full(B, T, np.int64),
               gates=np.empty((T, B, GH)), hs=np.zeros((T + 1, B, H)),
               cs=np.zeros((T + 1, B, H)), aux=np.empty((T, B, H)), out=np.empty((T, B, H)),
               hh=np.empty((B, GH)))
    assert all(a.dtype == f for k, a in fwd.items() if k != "lengths")
    return fwd


@pytest.mark.parametrize("phase, r0, r1, match", [
    (K.PHASE_PROJ, 0, 13, r"0 <= r0 <= r1 <= 12 \(gate columns\), got r0=0, r1=13"),
    (K.PHASE_STEPS, 3, 2, r"0 <= r0 <= r1 <= 4 \(batch rows\), got r0=3, r1=2"),
    (K.PHASE_STEPS, -1, 2, r"got r0=-1"),
    (K.PHASE_GRAD_X, 0, 2, r"phase must be PHASE_ALL, PHASE_PROJ or PHASE_STEPS, got 3"),
])
def test_forward_phase_range_errors(phase, r0, r1, match, rng):
    a = _kernel_arrays(rng)
    with pytest.raises(ValueError, match=match):
        K.rnn_forward(K.LSTM, False, *a.values(), phase, r0, r1)


def test_forward_phases_compose_to_the_whole_forward(rng):
    """PROJ over column ranges then STEPS over row ranges == PHASE_ALL."""
    a = _kernel_arrays(rng)
    a["hs"][0] = rng.standard_normal(a["hs"][0].shape)
    a["cs"][0] = rng.standard_normal(a["cs"][0].shape)
    b = {k: v.copy() for k, v in a.items()}
    K.rnn_forward(K.LSTM, False, *a.values())
    for r0, r1 in ((0, 5), (5, 12)):
        K.rnn_forward(K.LSTM, False, *b.values(), K.PHASE_PROJ, r0, r1)
    for r0, r1 in ((0, 1), (1, 4)):
        K.rnn_forward(K.LSTM, False, *b.values(), K.PHASE_STEPS, r0, r1)
    for k in ("gates", "hs", "cs", "aux", "out"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-13, atol=1e-14)
