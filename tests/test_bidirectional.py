"""BidirectionalWrapper, BidirectionalRNNCell, BidirectionalGRU, StackedBidirectional:
gradcheck, padded batch == sequences alone, concurrent == sequential bit for bit,
the module contract, construction rules and errors (torch parity: the ``_torch`` file).
"""
import numpy as np
import pytest

from contract import check_contract
from nn_core import _parallel, gradcheck
from nn_core.gradcheck import _flatten
from nn_core.recurrent import (
    BidirectionalGRU,
    BidirectionalRNNCell,
    BidirectionalWrapper,
    GRUCell,
    LSTMCell,
    RNNCell,
    StackedBidirectional,
)
from nn_core.recurrent import bidirectional as bidir_mod

MERGES = ["concat", "sum", "mean", "mul"]
CELLS = {
    "rnn": lambda D, H, **kw: RNNCell(D, H, **kw),
    "relu": lambda D, H, **kw: RNNCell(D, H, nonlinearity="relu", **kw),
    "lstm": lambda D, H, **kw: LSTMCell(D, H, **kw),
    "gru": lambda D, H, **kw: GRUCell(D, H, **kw),
    "gru_ra": lambda D, H, **kw: GRUCell(D, H, reset_after=True, **kw),
}


def _wrapper(kind, D, H, merge_mode="concat", dtype=np.float64, seed=0, **kw):
    return BidirectionalWrapper(CELLS[kind](D, H, dtype=dtype, rng=seed, **kw),
                                merge_mode=merge_mode)


def _state(kind, rng, B, H):
    if kind == "lstm":
        return tuple((rng.standard_normal((B, H)), rng.standard_normal((B, H)))
                     for _ in range(2))
    return rng.standard_normal((B, H)), rng.standard_normal((B, H))


# ------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("merge_mode", MERGES)
def test_gradcheck_wrapper_with_lengths(kind, merge_mode, rng):
    T, B, D, H = 4, 3, 2, 3
    m = _wrapper(kind, D, H, merge_mode)
    x = rng.standard_normal((T, B, D))
    lengths = np.array([T, 1, 2])
    rep = gradcheck(m, (x, _state(kind, rng, B, H), lengths), rng=rng)
    assert rep.ok, rep


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru_ra"])
def test_gradcheck_batch_first_no_state(kind, rng):
    m = _wrapper(kind, 2, 3, "mul", batch_first=True)
    x = rng.standard_normal((3, 4, 2))                       # (B, T, D)
    mask = np.arange(4)[None, :] < np.array([4, 2, 3])[:, None]   # bool prefix mask [B, T]
    assert gradcheck(m, (x, None, mask), rng=rng).ok


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("merge_mode", ["concat", "mul"])
def test_gradcheck_stacked(cell_type, merge_mode, rng):
    T, B, D, H, L = 4, 2, 2, 2, 2
    m = StackedBidirectional(cell_type, D, H, L, merge_mode, dtype=np.float64, rng=0)
    x = rng.standard_normal((T, B, D))
    shape = (L, 2, B, H)
    state = (rng.standard_normal(shape), rng.standard_normal(shape)) \
        if cell_type == "lstm" else rng.standard_normal(shape)
    assert gradcheck(m, (x, state, np.array([3, T])), rng=rng).ok


class _FixedDropout(StackedBidirectional):
    """Same dropout masks on every forward (reseeded), so finite differences apply."""

    def forward(self, *args, **kw):
        self.rng = np.random.default_rng(123)
        return super().forward(*args, **kw)


def test_stacked_dropout(rng):
    T, B, D, H = 4, 2, 3, 2
    m = _FixedDropout("gru", D, H, 3, dropout=0.5, dtype=np.float64, rng=0)
    x = rng.standard_normal((T, B, D))
    assert gradcheck(m, (x, None, np.array([4, 2])), rng=rng).ok
    out_train, _ = m(x)
    m.backward(None, np.ones((3, 2, B, H)))
    m.eval()
    out_eval, _ = m(x)
    ref = StackedBidirectional("gru", D, H, 3, dtype=np.float64, rng=0)
    ref.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(out_eval, ref(x)[0])   # eval: dropout off
    assert not np.allclose(out_train, out_eval)          # train: dropout on


# ------------------------------------------- padded batch == sequences alone
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("merge_mode", ["concat", "mul"])
def test_padded_batch_equals_each_sequence_alone(kind, merge_mode, rng):
    T, B, D, H = 6, 4, 3, 4
    x = rng.standard_normal((T, B, D))
    lengths = np.array([6, 1, 4, 2])
    state = _state(kind, rng, B, H)
    m = _wrapper(kind, D, H, merge_mode)
    out, (f_fw, f_bw) = m(x, state, lengths)
    H_out = out.shape[-1]
    g = rng.standard_normal((T, B, H_out))
    gfin = _state(kind, rng, B, H)
    m.zero_grad()
    gx, (g0_fw, g0_bw) = m.backward(g, gfin)
    batch_grads = {k: v.copy() for k, v in m.gradients().items()}

    pick = (lambda s, b: (s[0][b:b + 1], s[1][b:b + 1])) if kind == "lstm" \
        else (lambda s, b: s[b:b + 1])
    one = _wrapper(kind, D, H, merge_mode)
    one.load_state_dict(m.state_dict())
    one.zero_grad()
    for b, L in enumerate(lengths):
        s = (pick(state[0], b), pick(state[1], b))
        o, (ff, fb) = one(x[:L, b:b + 1], s)
        np.testing.assert_allclose(out[:L, b:b + 1], o, rtol=1e-12, atol=1e-14)
        assert np.all(out[L:, b] == 0)
        gs = (pick(gfin[0], b), pick(gfin[1], b))
        gxb, (gf, gb) = one.backward(g[:L, b:b + 1], gs)
        np.testing.assert_allclose(gx[:L, b:b + 1], gxb, rtol=1e-12, atol=1e-14)
        assert np.all(gx[L:, b] == 0)                     # padding gets no gradient
        for ours, alone in ((f_fw, ff), (f_bw, fb), (g0_fw, gf), (g0_bw, gb)):
            if kind == "lstm":
                for part in (0, 1):
                    np.testing.assert_allclose(ours[part][b:b + 1], alone[part],
                                               rtol=1e-12, atol=1e-14)
            else:
                np.testing.assert_allclose(ours[b:b + 1], alone, rtol=1e-12, atol=1e-14)
    for k, v in one.gradients().items():
        np.testing.assert_allclose(batch_grads[k], v, rtol=1e-11, atol=1e-13, err_msg=k)


def test_padding_values_are_ignored(rng):
    """Whatever sits in the padding changes nothing (the reverse sweep never reads it)."""
    T, B, D, H = 5, 3, 2, 3
    lengths = np.array([5, 2, 3])
    x = rng.standard_normal((T, B, D))
    x2 = x.copy()
    pad = np.arange(T)[:, None] >= lengths[None, :]
    x2[pad] = 1e3 * rng.standard_normal((pad.sum(), D))
    m = _wrapper("lstm", D, H)
    a, (af, ab) = m(x, None, lengths)
    b, (bf, bb) = m(x2, None, lengths)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ab[0], bb[0])


# ---------------------------------------------- concurrent == sequential, bitwise
@pytest.mark.parametrize("kind", list(CELLS))
def test_concurrent_equals_sequential_bitwise(kind, dtype, rng):
    _check_bitwise(kind, dtype, (9, 5, 6, 16), rng)


@pytest.mark.parametrize("kind, dtype", [("lstm", np.float32), ("gru_ra", np.float64)])
def test_concurrent_equals_sequential_blas_threaded(kind, dtype, rng):
    """Sequential sweeps may use multithreaded BLAS (GEMMs big enough for OpenBLAS to
    split them, or a batch-row split), concurrent ones single-threaded BLAS.  OpenBLAS
    does not promise the same bits for different thread counts (recent builds differ in
    the last place), so the two agree to float rounding here."""
    _check_bitwise(kind, dtype, (2, 64, 96, 128), rng, exact=False)


def _check_bitwise(kind, dtype, shape, rng, exact=True):
    T, B, D, H = shape
    x = rng.standard_normal((T, B, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    g = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    results = []
    for concurrent in (True, False):
        m = _wrapper(kind, D, H, dtype=dtype)
        m.concurrent = concurrent
        out, fin = m(x, None, lengths)
        gx, g0 = m.backward(g, fin)
        results.append((out, fin, gx, g0, m.gradients()))
    (o1, f1, gx1, g01, p1), (o2, f2, gx2, g02, p2) = results
    if exact:
        same = np.testing.assert_array_equal
    else:
        tol = 2e-5 if dtype == np.float32 else 1e-12

        def same(a, b, err_msg=""):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(),
                                       err_msg=err_msg)
    same(o1, o2)
    same(gx1, gx2)
    for a, b in zip(_flatten((f1, g01)), _flatten((f2, g02))):
        same(a, b)
    for k in p1:
        same(p1[k], p2[k], err_msg=k)


def test_concurrent_uses_worker_thread_and_restores_blas(monkeypatch, rng):
    """With two cores the reverse sweep runs on the worker thread; BLAS thread counts
    are restored afterwards; with one core everything stays on the caller's thread."""
    import threading
    names = []
    orig = RNNCell.run_sequence

    def spy(self, *a, **kw):
        names.append((a[4] if len(a) > 4 else kw.get("reverse"),
                      threading.current_thread().name))
        return orig(self, *a, **kw)

    monkeypatch.setattr(RNNCell, "run_sequence", spy)
    m = _wrapper("rnn", 2, 3)
    x = rng.standard_normal((3, 2, 2))
    before = [lc.get_num_threads() for lc in _parallel._BLAS.libs()]
    monkeypatch.setattr(_parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 2)
    m(x)
    assert [lc.get_num_threads() for lc in _parallel._BLAS.libs()] == before
    rev = [n for r, n in names if r]
    assert rev and rev[0].startswith("nn_core-worker")
    names.clear()
    monkeypatch.setattr(_parallel, "available_cores", lambda: 1)
    m(x)
    assert all(n == threading.current_thread().name for _, n in names)
    names.clear()
    monkeypatch.setattr(_parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 1)       # --threads 1
    m(x)
    assert all(n == threading.current_thread().name for _, n in names)


def test_blas_limit_without_threadpoolctl(monkeypatch):
    """Without threadpoolctl the loaded OpenBLAS builds are driven directly."""
    import builtins
    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)
    monkeypatch.setattr(_parallel, "_BLAS", _parallel._Blas())
    limiter = _parallel._SingleThreadBlas()
    libs = _parallel._BLAS.libs()
    if not libs:
        pytest.skip("no OpenBLAS loaded in this process")
    assert all(isinstance(lc, _parallel._OpenBLAS) for lc in libs)
    before = [lc.get_num_threads() for lc in libs]
    with limiter:
        with limiter:                                   # re-entrant
            assert all(lc.get_num_threads() == 1 for lc in libs)
        assert all(lc.get_num_threads() == 1 for lc in libs)
    assert [lc.get_num_threads() for lc in libs] == before


def test_worker_exception_propagates(rng):
    m = _wrapper("gru", 2, 3)
    m.concurrent = True
    with pytest.raises(ValueError, match="state"):
        m(rng.standard_normal((3, 2, 2)), (None, np.zeros((2, 4))))


# ------------------------------------------------------------ construction
def test_default_backward_cell_is_fresh_same_config():
    fw = GRUCell(3, 4, bias=False, reset_after=True, batch_first=True, rng=7)
    m = BidirectionalWrapper(fw)
    assert type(m.bw) is GRUCell and m.bw is not fw
    assert (m.bw.input_size, m.bw.hidden_size, m.bw.bias, m.bw.reset_after,
            m.bw.batch_first, m.bw.dtype) == (3, 4, False, True, True, fw.dtype)
    assert sorted(m.parameters()) == ["bw.W_hh", "bw.W_ih", "fw.W_hh", "fw.W_ih"]
    assert not np.array_equal(m.fw.params["W_hh"], m.bw.params["W_hh"])
    m2 = BidirectionalWrapper(GRUCell(3, 4, bias=False, reset_after=True, batch_first=True,
                                      rng=7))
    np.testing.assert_array_equal(m.bw.params["W_hh"], m2.bw.params["W_hh"])  # same seed
    assert m.batch_first and m.output_size == 8


def test_convenience_classes_pass_options():
    r = BidirectionalRNNCell(3, 4, nonlinearity="relu", bias=False, merge_mode="sum",
                             batch_first=True, dtype=np.float64, rng=1)
    assert isinstance(r, BidirectionalWrapper)
    assert r.fw.nonlinearity == r.bw.nonlinearity == "relu"
    assert not r.fw.bias and r.batch_first and r.output_size == 4
    assert r.dtype == np.float64
    g = BidirectionalGRU(3, 4, reset_after=True, rng=1)
    assert g.fw.reset_after and g.bw.reset_after
    g2 = BidirectionalGRU(3, 4, reset_after=True, rng=1)
    for k, v in g.parameters().items():
        np.testing.assert_array_equal(v, g2.parameters()[k])
    assert not np.array_equal(g.fw.params["W_ih"], g.bw.params["W_ih"])
    s = StackedBidirectional(LSTMCell, 3, 4, 2, forget_bias=0.0, batch_first=True, rng=1)
    assert sorted(s.parameters())[:2] == ["layers.0.bw.W_hh", "layers.0.bw.W_ih"]
    assert s.layers[1].fw.input_size == 8 and s.layers[0].fw.forget_bias == 0.0
    s2 = StackedBidirectional("rnn", 3, 4, 3, merge_mode="mean", nonlinearity="relu")
    assert s2.layers[2].fw.input_size == 4 and s2.layers[2].bw.nonlinearity == "relu"


def test_stacked_state_none_gives_array_gradients(rng):
    m = StackedBidirectional("lstm", 3, 2, 2, dtype=np.float64, rng=0)
    out, (h, c) = m(rng.standard_normal((4, 3, 3)))
    assert h.shape == c.shape == (2, 2, 3, 2)
    gx, (gh, gc) = m.backward(None, (np.ones_like(h), None))
    assert gh.shape == gc.shape == (2, 2, 3, 2) and np.abs(gh).sum() > 0
    assert gx.shape == (4, 3, 3)


def test_stacked_batch_first_matches_time_major(rng):
    a = StackedBidirectional("gru", 3, 2, 2, dtype=np.float64, rng=0)
    b = StackedBidirectional("gru", 3, 2, 2, batch_first=True, dtype=np.float64, rng=0)
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([5, 2, 4])
    oa, ha = a(x, None, lengths)
    ob, hb = b(x.transpose(1, 0, 2), None, lengths)
    np.testing.assert_array_equal(oa, ob.transpose(1, 0, 2))
    np.testing.assert_array_equal(ha, hb)
    g = rng.standard_normal(oa.shape)
    np.testing.assert_array_equal(a.backward(g)[0],
                                  b.backward(g.transpose(1, 0, 2))[0].transpose(1, 0, 2))


# ------------------------------------------------------------------ contract
def _bad_common(T=4, B=2, D=3):
    x = np.zeros((T, B, D))
    return [
        ((np.zeros((T, B, D + 1)),), ValueError, "input_size"),
        ((np.zeros((T, D)),), ValueError, "3-dimensional"),
        ((x.astype(complex),), TypeError, "real-valued"),
        ((x, None, np.array([0, 2])), ValueError, "lengths"),
        ((x, None, np.array([T + 1, 2])), ValueError, "lengths"),
        ((x, None, np.array([2, 2, 2])), ValueError, "lengths"),
    ]


@pytest.mark.parametrize("merge_mode", MERGES)
def test_contract_wrapper(merge_mode):
    T, B, D, H = 4, 2, 3, 5
    bad = _bad_common(T, B, D) + [
        ((np.zeros((T, B, D)), np.zeros((B, H))), ValueError, "pair"),
        ((np.zeros((T, B, D)), ((np.zeros((B, H)),) * 2, np.zeros((B, H)))),
         ValueError, r"state\[1\] must be a tuple \(h, c\)"),
        ((np.zeros((T, B, D)), ((np.zeros((B, H)),) * 2, (np.zeros((B, H + 1)), None))),
         ValueError, r"state\[1\] h must have shape \(2, 5\), got \(2, 6\)"),
    ]
    check_contract(
        lambda dt: BidirectionalWrapper(LSTMCell(D, H, dtype=dt, rng=0),
                                        merge_mode=merge_mode),
        lambda rng: (rng.standard_normal((T, B, D)),
                     ((rng.standard_normal((B, H)), rng.standard_normal((B, H))),
                      (rng.standard_normal((B, H)), rng.standard_normal((B, H)))),
                     np.array([T, 2])),
        bad=bad)


@pytest.mark.parametrize("factory", [
    lambda dt: BidirectionalRNNCell(3, 4, batch_first=True, dtype=dt, rng=0),
    lambda dt: BidirectionalGRU(3, 4, merge_mode="mean", batch_first=True, dtype=dt, rng=0),
], ids=["rnn", "gru"])
def test_contract_convenience(factory):
    check_contract(factory,
                   lambda rng: (rng.standard_normal((2, 5, 3)),
                                (rng.standard_normal((2, 4)), rng.standard_normal((2, 4))),
                                np.array([5, 3])),
                   bad=[((np.zeros((2, 5, 3)), None, np.array([5, 6])), ValueError,
                         "lengths")])


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
def test_contract_stacked(cell_type):
    T, B, D, H, L = 4, 2, 3, 2, 2
    S = (L, 2, B, H)

    def inputs(rng):
        st = (rng.standard_normal(S), rng.standard_normal(S)) if cell_type == "lstm" \
            else rng.standard_normal(S)
        return rng.standard_normal((T, B, D)), st, np.array([2, T])

    bad_state = (np.zeros((L, B, H)),) * (2 if cell_type == "lstm" else 1)
    bad_state = bad_state if cell_type == "lstm" else bad_state[0]
    check_contract(lambda dt: StackedBidirectional(cell_type, D, H, L, dtype=dt, rng=0,
                                                   reset_after=cell_type == "gru")
                   if cell_type == "gru" else
                   StackedBidirectional(cell_type, D, H, L, dtype=dt, rng=0),
                   inputs,
                   bad=_bad_common(T, B, D) + [
                       ((np.zeros((T, B, D)), bad_state), ValueError,
                        r"must have shape \(2, 2, 2, 2\)")])


# -------------------------------------------------------------------- errors
def test_constructor_errors():
    with pytest.raises(TypeError, match="forward_cell"):
        BidirectionalWrapper(object())
    with pytest.raises(TypeError, match="backward_cell"):
        BidirectionalWrapper(RNNCell(2, 3), "x")
    with pytest.raises(ValueError, match="merge_mode"):
        BidirectionalWrapper(RNNCell(2, 3), merge_mode="max")
    with pytest.raises(ValueError, match="backward_cell.input_size"):
        BidirectionalWrapper(RNNCell(2, 3), RNNCell(4, 3))
    with pytest.raises(ValueError, match="backward_cell.batch_first"):
        BidirectionalWrapper(RNNCell(2, 3), RNNCell(2, 3, batch_first=True))
    with pytest.raises(ValueError, match="backward_cell.dtype"):
        BidirectionalWrapper(RNNCell(2, 3), RNNCell(2, 3, dtype=np.float64))
    with pytest.raises(ValueError, match="equal hidden sizes"):
        BidirectionalWrapper(RNNCell(2, 3), RNNCell(2, 4), merge_mode="sum")
    m = BidirectionalWrapper(RNNCell(2, 3), RNNCell(2, 4))      # concat: 3 + 4
    assert m(np.zeros((2, 1, 2)))[0].shape == (2, 1, 7)
    with pytest.raises(ValueError, match="cell_type"):
        StackedBidirectional("transformer", 2, 3, 1)
    with pytest.raises(TypeError, match="cell_type"):
        StackedBidirectional(dict, 2, 3, 1)
    with pytest.raises(ValueError, match="num_layers"):
        StackedBidirectional("rnn", 2, 3, 0)
    with pytest.raises(ValueError, match="dropout"):
        StackedBidirectional("rnn", 2, 3, 2, dropout=1.0)
    with pytest.raises(ValueError, match="merge_mode"):
        StackedBidirectional("rnn", 2, 3, 2, merge_mode="avg")


def test_backward_errors(rng):
    m = _wrapper("lstm", 2, 3)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        m.backward(np.zeros((4, 2, 6)))
    out, _ = m(rng.standard_normal((4, 2, 2)))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(4, 2, 6\)"):
        m.backward(np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match="grad_h, grad_c"):
        m.backward(np.zeros((4, 2, 6)), (np.zeros((2, 3)), None))
    gx, _ = m.backward(np.zeros((4, 2, 6)), (None, (np.ones((2, 3)), None)))
    with pytest.raises(RuntimeError):
        m.backward(np.zeros((4, 2, 6)))
    assert np.abs(gx).sum() > 0


def test_same_cell_both_directions_runs_sequentially(rng):
    """A weight-tied layer (one cell both ways) is allowed and never races."""
    cell = RNNCell(2, 3, dtype=np.float64, rng=0)
    m = BidirectionalWrapper(cell, cell, concurrent=True)
    assert not m._use_threads()
    x = rng.standard_normal((4, 2, 2))
    rep = gradcheck(m, (x, None, np.array([4, 2])), rng=rng)
    assert rep.ok, rep


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_concurrent_after_fork(rng):
    """A forked child gets its own worker thread (no hang on the parent's)."""
    import multiprocessing as mp
    m = _wrapper("gru", 2, 3)
    m.concurrent = True
    x = rng.standard_normal((3, 2, 2))
    ref, _ = m(x)                                  # creates the parent's worker
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        out = pool.apply_async(_forward_in_child, (m, x)).get(timeout=60)
    np.testing.assert_array_equal(out, ref)


def _forward_in_child(m, x):
    return m(x)[0]
