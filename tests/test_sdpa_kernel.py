"""The fused SDPA kernel (``nn_core._kernels._attention``) against plain NumPy.

The oracle is ``_reference`` below: the textbook equations with an explicit
bottom-right causal mask, computed in float64.  The fused path is also compared
with the module's generic NumPy path.  Block sizes are forced small so that every
shape crosses several query/key blocks (remainder blocks, the causal staircase,
blocks skipped entirely), and the slab split over threads is exercised with
broadcast inputs whose gradients several threads accumulate.
"""
import numpy as np
import pytest

import nn_core.attention._sdpa_kernels as sdp
from nn_core import _parallel
from nn_core._kernels import _attention as kattn
from nn_core.attention import ScaledDotProductAttention

from simd_levels import level_fixture


def _reference(q, k, v, g, mask=None, is_causal=False, scale=None):
    """Plain NumPy SDPA forward/backward in float64 (the readable statement)."""
    q, k, v, g = (np.asarray(a, np.float64) for a in (q, k, v, g))
    L_q, L_k, d_k = q.shape[-2], k.shape[-2], q.shape[-1]
    s = 1 / np.sqrt(d_k) if scale is None else scale
    S = s * q @ np.swapaxes(k, -1, -2)
    allowed = np.ones(S.shape, dtype=bool)
    if mask is not None:
        if mask.dtype == bool:
            allowed = allowed & mask
        else:
            S = S + mask
    if is_causal:
        i, j = np.arange(L_q)[:, None], np.arange(L_k)[None, :]
        allowed = allowed & (j <= i + L_k - L_q)
    S = np.where(allowed, S, -np.inf)
    mx = S.max(-1, keepdims=True)
    has = np.isfinite(mx)
    E = np.where(has, np.exp(S - np.where(has, mx, 0)), 0.0)
    den = E.sum(-1, keepdims=True)
    P = np.divide(E, den, out=np.zeros_like(E), where=den > 0)
    out = P @ v
    gP = g @ np.swapaxes(v, -1, -2)
    gS = P * (gP - (gP * P).sum(-1, keepdims=True))
    gq, gk, gv = s * gS @ k, s * np.swapaxes(gS, -1, -2) @ q, np.swapaxes(P, -1, -2) @ g

    def red(x, shape):
        x = x.sum(axis=tuple(range(x.ndim - len(shape)))) if x.ndim > len(shape) else x
        ax = tuple(a for a, n in enumerate(shape) if n == 1 and x.shape[a] != 1)
        return x.sum(axis=ax, keepdims=True) if ax else x

    return out, P, red(gq, q.shape), red(gk, k.shape), red(gv, v.shape)


def _run(q, k, v, g, dtype, fused=True, **kw):
    old = sdp.FUSED_ENABLED
    sdp.FUSED_ENABLED = fused
    try:
        m = ScaledDotProductAttention(dtype=dtype)
        out, w = m(q, k, v, return_weights=True, **kw)
        w = w.copy()
        grads = m.backward(g)
        out2 = m(q, k, v, **kw)                      # in-place dS path (weights not kept)
        grads2 = m.backward(g)
    finally:
        sdp.FUSED_ENABLED = old
    for a, b in zip((out,) + grads, (out2,) + grads2):
        np.testing.assert_array_equal(a, b)
    return (out, w) + grads


exp_path = level_fixture(2, 1, 0, doc="Run at every SIMD level the CPU has (AVX-512 "
                         "exp-sum, AVX2 loops, baseline).")


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(sdp, "BLOCK_Q", 5)
    monkeypatch.setattr(sdp, "BLOCK_K", 7)


def _tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


LAYOUTS = [  # (query lead, key/value lead)
    ((2, 3), (2, 3)),
    ((2, 2, 3), (2, 2, 1)),    # grouped-query: K/V shared by r = 3 query heads
    ((3,), ()),                # one K/V for every head
    ((), (2,)),                # one query for every K/V
    ((1, 3), (2, 1)),          # both broadcast
]
SIZES = [(1, 1), (9, 9), (6, 17), (17, 6), (23, 31)]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("sizes", SIZES, ids=str)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_fused_matches_reference(rng, dtype, layout, sizes, is_causal):
    (ql, kl), (L_q, L_k) = layout, sizes
    d_k, d_v = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    q = rng.standard_normal(ql + (L_q, d_k))
    k = rng.standard_normal(kl + (L_k, d_k))
    v = rng.standard_normal(kl + (L_k, d_v))
    lead = np.broadcast_shapes(ql, kl)
    g = rng.standard_normal(lead + (L_q, d_v))
    got = _run(q, k, v, g, dtype, is_causal=is_causal)
    want = _reference(q, k, v, g, is_causal=is_causal)
    for name, a, b in zip(("out", "weights", "grad_q", "grad_k", "grad_v"), got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, err_msg=name, **_tol(dtype))


def _masks(rng, lead, L_q, L_k):
    B = lead[0]
    return {
        "bool_full": rng.random(lead + (L_q, L_k)) > 0.3,
        "bool_padding": (rng.random((B, 1, 1, L_k)) > 0.4),           # [B, 1, 1, L_k]
        "bool_rows": rng.random((L_q, 1)) > 0.3,                     # whole rows masked
        "float": np.where(rng.random((L_q, L_k)) > 0.3,
                          rng.standard_normal((L_q, L_k)), -np.inf),
        "float_strided": np.asfortranarray(rng.standard_normal((L_q, L_k))),
    }


@pytest.mark.usefixtures("small_blocks", "exp_path")
@pytest.mark.parametrize("kind", ["bool_full", "bool_padding", "bool_rows", "float",
                                  "float_strided"])
@pytest.mark.parametrize("sizes", [(11, 11), (8, 19), (19, 8)], ids=str)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_fused_masks_match_reference(rng, dtype, kind, sizes, is_causal):
    L_q, L_k = sizes
    lead = (2, 3)
    q, k, v = (rng.standard_normal(lead + s) for s in ((L_q, 4), (L_k, 4), (L_k, 5)))
    g = rng.standard_normal(lead + (L_q, 5))
    mask = _masks(rng, lead, L_q, L_k)[kind]
    got = _run(q, k, v, g, dtype, mask=mask, is_causal=is_causal, scale=0.7)
    want = _reference(q, k, v, g, mask=mask, is_causal=is_causal, scale=0.7)
    for name, a, b in zip(("out", "weights", "grad_q", "grad_k", "grad_v"), got, want):
        assert np.all(np.isfinite(a)), name
        np.testing.assert_allclose(a, b, err_msg=name, **_tol(dtype))


@pytest.mark.parametrize("layout", LAYOUTS[:3], ids=str)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_fused_equals_generic_default_blocks(rng, layout, is_causal):
    """Default (tuned) block sizes, against the module's generic NumPy path."""
    ql, kl = layout
    L_q, L_k = 70, 90
    q = rng.standard_normal(ql + (L_q, 16))
    k, v = rng.standard_normal(kl + (L_k, 16)), rng.standard_normal(kl + (L_k, 8))
    g = rng.standard_normal(np.broadcast_shapes(ql, kl) + (L_q, 8))
    a = _run(q, k, v, g, np.float64, is_causal=is_causal)
    b = _run(q, k, v, g, np.float64, fused=False, is_causal=is_causal)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-13)


def test_fully_masked_rows_and_keyless_queries_are_zero(rng, dtype):
    """Rows with no allowed key: output 0 and gradient 0, never NaN."""
    q, k, v = (rng.standard_normal((2, L, 3)) for L in (6, 4, 4))
    mask = np.ones((6, 4), bool)
    mask[3] = False                                   # a fully masked row
    m = ScaledDotProductAttention(dtype=dtype)
    out = m(q, k, v, mask=mask, is_causal=True)       # L_q > L_k: queries 0, 1 see nothing
    gq, gk, gv = m.backward(np.ones_like(out))
    dead = [0, 1, 3]
    assert np.all(out[:, dead] == 0) and np.all(gq[:, dead] == 0)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(gk)) and np.all(np.isfinite(gv))
    assert np.all(out[:, [2, 4, 5]] != 0)


@pytest.mark.parametrize("workers", [2, 3])
def test_threaded_slabs_match_single_thread(rng, monkeypatch, workers):
    """The slab split over threads gives the same numbers (broadcast K/V gradients
    accumulated by several threads) and restores the BLAS thread count."""
    q = rng.standard_normal((2, 2, 3, 13, 4))
    k, v = rng.standard_normal((2, 2, 1, 17, 4)), rng.standard_normal((2, 2, 1, 17, 6))
    g = rng.standard_normal((2, 2, 3, 13, 6))
    want = _run(q, k, v, g, np.float64, is_causal=True)
    before = [lc.get_num_threads() for lc in _parallel._BLAS.libs()]
    monkeypatch.setattr(sdp, "MAX_WORKERS", workers)
    monkeypatch.setattr(sdp, "MIN_WORK_PER_THREAD", 1)
    got = _run(q, k, v, g, np.float64, is_causal=True)
    assert [lc.get_num_threads() for lc in _parallel._BLAS.libs()] == before
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


def test_grouped_query_layout_gradients(rng):
    """K/V [B, g, 1, S, d] against the explicitly repeated [B, g, r, S, d]: same
    output, and grad_key is the repeated gradient summed over the r axis."""
    q = rng.standard_normal((2, 2, 3, 10, 4))
    k, v = rng.standard_normal((2, 2, 1, 12, 4)), rng.standard_normal((2, 2, 1, 12, 4))
    g = rng.standard_normal((2, 2, 3, 10, 4))
    m = ScaledDotProductAttention(dtype=np.float64)
    out = m(q, k, v, is_causal=True)
    gq, gk, gv = m.backward(g)
    kr, vr = np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2)
    out_r = m(q, kr, vr, is_causal=True)
    gq_r, gk_r, gv_r = m.backward(g)
    assert gk.shape == k.shape and gv.shape == v.shape
    np.testing.assert_allclose(out, out_r, rtol=1e-12)
    np.testing.assert_allclose(gq, gq_r, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gk, gk_r.sum(axis=2, keepdims=True), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gv, gv_r.sum(axis=2, keepdims=True), rtol=1e-12, atol=1e-14)


def test_returned_weights_survive_backward(rng):
    q, k, v = (rng.standard_normal((2, 8, 4)) for _ in range(3))
    m = ScaledDotProductAttention(dtype=np.float64)
    _, w = m(q, k, v, is_causal=True, return_weights=True)
    kept = w.copy()
    m.backward(np.ones((2, 8, 4)))
    np.testing.assert_array_equal(w, kept)
    np.testing.assert_allclose(w.sum(-1), 1.0)


def test_dropout_training_uses_generic_path_and_eval_the_kernel(rng):
    q, k, v = (rng.standard_normal((2, 6, 4)) for _ in range(3))
    m = ScaledDotProductAttention(dropout=0.5, dtype=np.float64, rng=0)
    out, w = m(q, k, v, return_weights=True)
    assert np.any(w == 0) and np.all(np.isfinite(m.backward(np.ones_like(out))[0]))
    m.eval()
    out = m(q, k, v)
    np.testing.assert_allclose(out, _reference(q, k, v, np.ones_like(out))[0], rtol=1e-12,
                               atol=1e-14)


def _call_args(P=2, L_q=3, L_k=4, d=2, dtype=np.float64, **over):
    """Keyword arguments of a well-formed ``SdpaCall`` over ``P`` slabs."""
    a = dict(q=np.zeros((1, 1, 1, P, L_q, d), dtype), k=np.zeros((1, 1, 1, P, L_k, d), dtype),
             v=np.zeros((1, 1, 1, P, L_k, d), dtype), probs=np.zeros((P, L_q, L_k), dtype),
             scale=1.0)
    a.update(over)
    return a


def test_kernel_entry_validates_before_nogil():
    out = np.zeros((2, 3, 2))
    call = kattn.SdpaCall(**_call_args())
    kattn.sdpa_forward(call, out, 0, 2)                            # well-formed: runs
    assert (call.slabs, call.L_q, call.L_k, call.d_k, call.d_v) == (2, 3, 4, 2, 2)
    bad = {
        "must broadcast": dict(k=np.zeros((1, 1, 1, 3, 4, 2))),
        "value slabs": dict(v=np.zeros((1, 1, 1, 2, 5, 2))),
        "probs must have shape": dict(probs=np.zeros((2, 3, 5))),
        "row stride": dict(q=np.lib.stride_tricks.as_strided(       # rows overlap
            np.zeros(20), (1, 1, 1, 2, 3, 2), (8,) * 4 + (8, 8))),
        "reaches outside": dict(mask=(np.ones(4, np.uint8), np.zeros(2, np.intp), 1, 1)),
        "mask offsets": dict(mask=(np.ones(12, np.uint8), np.zeros(3, np.intp), 4, 1)),
        "non-negative": dict(mask=(np.ones(12, np.uint8), np.zeros(2, np.intp), -4, 1)),
        "block sizes": dict(block_q=0),
        "read-only": dict(probs=np.zeros((2, 3, 4)).copy()),
        "float32 or float64": dict(q=np.zeros((1, 1, 1, 2, 3, 2), np.int64)),
        "dtype mismatch": dict(k=np.zeros((1, 1, 1, 2, 4, 2), np.float32)),
    }
    bad["read-only"]["probs"].setflags(write=False)
    for match, over in bad.items():
        err = TypeError if match == "float32 or float64" else ValueError
        with pytest.raises(err, match=match):
            kattn.SdpaCall(**_call_args(**over))
    with pytest.raises(ValueError, match="out must have shape"):
        kattn.sdpa_forward(call, np.zeros((2, 3, 3)), 0, 2)
    with pytest.raises(ValueError, match="slab range"):
        kattn.sdpa_forward(call, out, 1, 3)
    with pytest.raises(TypeError, match="dtype"):
        kattn.sdpa_forward(call, out.astype(np.float32), 0, 2)
    with pytest.raises(TypeError):
        kattn.sdpa_forward(None, out, 0, 2)
    with pytest.raises(ValueError, match="not initialised"):
        kattn.sdpa_forward(kattn.SdpaCall.__new__(kattn.SdpaCall), out, 0, 0)


def test_kernel_backward_entry_validates_before_nogil():
    call = kattn.SdpaCall(**_call_args())
    kattn.sdpa_forward(call, np.zeros((2, 3, 2)), 0, 2)
    g = np.zeros((1, 1, 1, 2, 3, 2))
    grads = [np.zeros((1, 1, 1, 2, 3, 2)), np.zeros((1, 1, 1, 2, 4, 2)),
             np.zeros((1, 1, 1, 2, 4, 2))]
    kattn.sdpa_backward(call, g, *grads, 0, 2)                      # well-formed: runs
    with pytest.raises(ValueError, match="grad_k must have the shape of its input"):
        kattn.sdpa_backward(call, g, grads[0], grads[0], grads[2], 0, 2)
    with pytest.raises(ValueError, match="full lead shape"):
        kattn.sdpa_backward(call, np.zeros((1, 1, 1, 1, 3, 2)), *grads, 0, 2)
    with pytest.raises(ValueError, match="grad_out slabs"):
        kattn.sdpa_backward(call, np.zeros((1, 1, 1, 2, 3, 3)), *grads, 0, 2)
    strided = np.zeros((1, 1, 1, 2, 3, 4))[..., :2]
    with pytest.raises(ValueError, match="grad_q rows must be contiguous"):
        kattn.sdpa_backward(call, g, strided, *grads[1:], 0, 2)
    with pytest.raises(ValueError, match="slab range"):
        kattn.sdpa_backward(call, g, *grads, 2, 1)


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "copied"])
def test_strided_inputs(rng, monkeypatch, in_place):
    """Heads split from [B, L, h*d] projections by a transpose (non-contiguous, as the
    multi-head modules pass them), reversed and non-unit-stride views: read in place
    by the kernel (row stride as leading dimension) or copied first (the default),
    the same numbers either way."""
    monkeypatch.setattr(sdp, "COPY_STRIDED_ROWS", not in_place)
    B, L, S, h, d = 2, 9, 11, 3, 4
    xq = rng.standard_normal((B, L, 3 * h * d))          # a fused [q | k | v] projection
    xk = rng.standard_normal((B, S, 2 * h * d))
    q = xq[..., : h * d].reshape(B, L, h, d).transpose(0, 2, 1, 3)   # (B, h, L, d) view
    k = xk[..., : h * d].reshape(B, S, h, d).transpose(0, 2, 1, 3)
    v = xk[..., h * d:].reshape(B, S, h, d).transpose(0, 2, 1, 3)
    g = rng.standard_normal((B, L, h, d)).transpose(0, 2, 1, 3)
    assert np.shares_memory(sdp.kernel_view(q), xq) == in_place
    want = _reference(q, k, v, g, is_causal=True)
    for qq, kk in ((q, k), (q[:, :, ::-1], k[:, :, ::-1]), (q[..., ::1], k)):
        ww = _reference(qq, kk, v, g, is_causal=True) if qq is not q else want
        got = _run(qq, kk, v, g, np.float64, is_causal=True)
        for a, b in zip(got, ww):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # a non-contiguous last dim is copied, still right
    q2 = np.asfortranarray(rng.standard_normal((2, 3, L, d)))
    got = _run(q2, k, v, g, np.float64)
    for a, b in zip(got, _reference(q2, k, v, g)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_threaded_path_works_in_a_forked_child(rng, monkeypatch):
    """The worker pool is recreated after fork (the child has no pool threads)."""
    import os

    monkeypatch.setattr(sdp, "MAX_WORKERS", 2)
    monkeypatch.setattr(sdp, "MIN_WORK_PER_THREAD", 1)
    q, k, v = (rng.standard_normal((4, 6, 3)) for _ in range(3))
    want = ScaledDotProductAttention(dtype=np.float64)(q, k, v)     # parent pool exists
    pid = os.fork()
    if pid == 0:                                                      # child
        ok = False
        try:
            got = ScaledDotProductAttention(dtype=np.float64)(q, k, v)
            ok = np.allclose(got, want, rtol=1e-12)
        finally:
            os._exit(0 if ok else 1)
    import signal
    import time

    deadline = time.monotonic() + 30
    while True:                                  # a deadlocked child must not hang pytest
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("SDPA in a forked child did not finish (worker pool deadlock)")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
