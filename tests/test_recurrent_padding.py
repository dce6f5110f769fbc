"""Sweeps that skip padding: the rows run sorted longest first, so that the rows still
running at a step are a prefix of the batch and the step products, gate passes, input
projection and gradient products cover only them.

Checked against the NumPy statement of the cells (``recurrent_reference.py``, forward)
and against each row run alone (every output, final state and gradient, the weight
gradients as the sum over rows), for random lengths that include 1 and ``T``, all-full
and all-equal lengths, one row and a batch that splits over two threads; every cell,
both GRU forms, both step forms, both directions, both dtypes, every SIMD level.
Torch parity with ``pack_padded_sequence`` is in test_recurrent_torch.py.
"""
import numpy as np
import pytest

from nn_core import _parallel
from nn_core.recurrent import BidirectionalWrapper, StackedLSTM, base

from recurrent_reference import reference_sequence
from simd_levels import level_fixture
from test_recurrent_cells import KINDS, is_lstm, make_cell, rand_state
from test_recurrent_threads import force_split  # noqa: F401  (the fixture)


def _lengths(pattern, T, B, rng):
    if pattern == "random":
        lens = rng.integers(1, T + 1, B)
        lens[rng.integers(B)] = 1
        lens[rng.integers(B)] = T
        return lens
    if pattern == "full":
        return np.full(B, T)
    return np.full(B, max(1, T // 2))              # "equal": all rows equally padded


def _run(cell, x, state, lengths, go, gfinal, reverse):
    cell.zero_grad()
    out, final = cell.forward_sequence(x, state, lengths, reverse=reverse)
    gx, ginit = cell.backward_sequence(go, gfinal)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]   # noqa: E731
    return out, flat(final), gx, flat(ginit), {k: g.copy() for k, g in cell.grads.items()}


def _rows(s, b):
    return None if s is None else (tuple(a[b:b + 1] for a in s) if isinstance(s, tuple)
                                   else s[b:b + 1])


def _check_against_rows_alone(kind, T, B, lens, dtype, reverse, rng, mode, monkeypatch):
    monkeypatch.setattr(base, "STEP_MODE", mode)
    D, H = 5, 7
    cell = make_cell(kind, D, H, dtype=dtype, rng=rng)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = rand_state(rng, kind, B, H)
    go = rng.standard_normal((T, B, H)).astype(dtype)
    gfinal = rand_state(rng, kind, B, H)
    out, final, gx, ginit, grads = _run(cell, x, state, lens, go, gfinal, reverse)

    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11,
                                                                     atol=1e-12)
    # forward against the NumPy statement
    c0 = state[1] if is_lstm(kind) else None
    h0 = state[0] if is_lstm(kind) else state
    ro, rh, rc = reference_sequence(kind, cell.params, x, h0, c0, lens, reverse)
    np.testing.assert_allclose(out, ro, **tol)
    np.testing.assert_allclose(final[0], rh, **tol)
    if is_lstm(kind):
        np.testing.assert_allclose(final[1], rc, **tol)
    pad = np.arange(T)[:, None] >= np.asarray(lens)[None, :]
    assert (out[pad] == 0).all() and (gx[pad] == 0).all()

    # every row alone: outputs, final states, gradients; weight gradients summed
    summed = {k: np.zeros_like(g) for k, g in grads.items()}
    for b in range(B):
        L = int(lens[b])
        o1, f1, gx1, gi1, g1 = _run(cell, x[:L, b:b + 1], _rows(state, b), None,
                                     go[:L, b:b + 1], _rows(gfinal, b), reverse)
        np.testing.assert_allclose(out[:L, b:b + 1], o1, **tol)
        np.testing.assert_allclose(gx[:L, b:b + 1], gx1, **tol)
        for u, v in zip(final + ginit, f1 + gi1):
            np.testing.assert_allclose(u[b:b + 1], v, **tol)
        for k in summed:
            summed[k] += g1[k]
    for k in grads:
        np.testing.assert_allclose(grads[k], summed[k], rtol=tol["rtol"],
                                   atol=tol["atol"] * B * T * 10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern,T,B", [("random", 9, 6), ("random", 4, 1),
                                         ("full", 5, 4), ("equal", 6, 5)])
@pytest.mark.parametrize("reverse", [False, True], ids=["fw", "rev"])
@pytest.mark.parametrize("mode", ["blas", "packed"])
def test_padded_sweep_equals_rows_alone(kind, pattern, T, B, reverse, mode, dtype, rng,
                                        monkeypatch):
    lens = _lengths(pattern, T, B, rng)
    _check_against_rows_alone(kind, T, B, lens, dtype, reverse, rng, mode, monkeypatch)


simd = level_fixture(0, 1, 2)


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_ra", "rnn_tanh"])
def test_every_simd_level(kind, simd, rng, monkeypatch):
    T, B = 8, 13                                   # 13 rows: every row block of 6
    lens = _lengths("random", T, B, rng)
    for mode in ("blas", "packed"):
        _check_against_rows_alone(kind, T, B, lens, np.float64, True, rng, mode,
                                  monkeypatch)


def _same_rows_in_caller_order(kind, lens, dtype, rng, monkeypatch, mode):
    """A batch in any row order gives every row's results bit for bit as the same
    batch already sorted longest first (per-row arithmetic is unchanged)."""
    monkeypatch.setattr(base, "STEP_MODE", mode)
    T, B, D, H = int(max(lens)), len(lens), 4, 6
    cell = make_cell(kind, D, H, dtype=dtype, rng=rng)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = rand_state(rng, kind, B, H)
    go = rng.standard_normal((T, B, H)).astype(dtype)
    gfinal = rand_state(rng, kind, B, H)
    order = np.argsort(-np.asarray(lens), kind="stable")
    res = {}
    for rev in (False, True):
        a = _run(cell, x, state, lens, go, gfinal, rev)
        perm = lambda s: (tuple(u[order] for u in s) if isinstance(s, tuple)  # noqa: E731
                          else s[order])
        s = _run(cell, x[:, order], perm(state), lens[order], go[:, order],
                 perm(gfinal), rev)
        np.testing.assert_array_equal(a[0][:, order], s[0])
        np.testing.assert_array_equal(a[2][:, order], s[2])
        for u, v in zip(a[1] + a[3], s[1] + s[3]):
            np.testing.assert_array_equal(u[order], v)
        res[rev] = a
    return res


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["blas", "packed"])
def test_row_order_is_undone_bit_for_bit(kind, mode, dtype, rng, monkeypatch):
    lens = _lengths("random", 7, 9, rng)
    _same_rows_in_caller_order(kind, lens, dtype, rng, monkeypatch, mode)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["blas", "packed"])
def test_split_over_force_split(kind, mode, dtype, rng, force_split, monkeypatch):
    """B = 70 splits in two row ranges of equal work (the sorted rows' real steps):
    the same numbers as one thread (bit for bit but for the weight gradients' sums)."""
    monkeypatch.setattr(base, "STEP_MODE", mode)
    T, B, D, H = 12, 70, 6, 8
    lens = _lengths("random", T, B, rng)
    cell = make_cell(kind, D, H, dtype=dtype, rng=rng)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = rand_state(rng, kind, B, H)
    go = rng.standard_normal((T, B, H)).astype(dtype)
    gfinal = rand_state(rng, kind, B, H)
    for rev in (False, True):
        res = []
        for split in (False, True):
            monkeypatch.setattr(base, "ROW_SPLIT", split)
            force_split.clear()
            res.append(_run(cell, x, state, lens, go, gfinal, rev))
            assert bool(force_split) == split
        (o, f, gx, gi, g), (o2, f2, gx2, gi2, g2) = res
        np.testing.assert_array_equal(o, o2)
        for u, v in zip(f + gi, f2 + gi2):
            np.testing.assert_array_equal(u, v)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(gx, gx2, rtol=tol, atol=tol * np.abs(gx).max())
        for k in g:
            np.testing.assert_allclose(g[k], g2[k], rtol=tol, atol=tol * np.abs(g[k]).max())


def test_split_balances_the_real_steps(monkeypatch):
    monkeypatch.setattr(_parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 2)
    lens = np.sort(np.random.default_rng(3).integers(20, 201, 64))[::-1]
    (_, h), (_, B) = base.row_halves(64, lens)
    assert B == 64 and 1 <= h < 32                  # longer rows: fewer of them
    assert abs(lens[:h].sum() - lens[h:].sum()) <= lens.max()
    assert base.row_halves(64, np.full(64, 7)) == ((0, 32), (32, 64))


@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_bidirectional_and_stacked(cell_type, dtype, rng):
    """A bidirectional layer and a stack with padded lengths against each row alone."""
    T, B, D, H = 8, 6, 4, 5
    lens = _lengths("random", T, B, rng)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11,
                                                                     atol=1e-12)
    fw = make_cell(cell_type, D, H, dtype=dtype, rng=rng)
    bw = make_cell(cell_type, D, H, dtype=dtype, rng=rng)
    models = [BidirectionalWrapper(fw, bw, rng=rng)]
    if cell_type == "lstm":
        models.append(StackedLSTM(D, H, 2, dtype=dtype, rng=rng))
    for m in models:
        out, _ = m(x, lengths=lens)
        go = rng.standard_normal(out.shape).astype(dtype)
        m.zero_grad()
        gx = m.backward(go)
        gx = gx[0] if isinstance(gx, tuple) else gx
        for b in range(B):
            L = int(lens[b])
            o1, _ = m(x[:L, b:b + 1])
            np.testing.assert_allclose(out[:L, b:b + 1], o1, **tol)
            assert (out[L:, b] == 0).all()
            g1 = m.backward(go[:L, b:b + 1])
            g1 = g1[0] if isinstance(g1, tuple) else g1
            np.testing.assert_allclose(gx[:L, b:b + 1], g1, **tol)
