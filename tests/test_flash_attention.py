"""The tiled ("flash") SDPA path: O(L) memory, probabilities recomputed in the backward.

The path is forced at small sizes by setting ``FLASH_MIN_SCORES`` to 0, with small
tiles (``FLASH_BLOCK_Q`` / ``FLASH_BLOCK_K``) so every shape crosses several tiles,
remainder tiles and the causal staircase.  Oracles: the plain-NumPy ``_reference`` of
``test_sdpa_kernel`` (float64), the fused kernel that keeps the probabilities, and
torch.  Every random test is seeded; the seed is in the failure message.
"""
import numpy as np
import pytest

import nn_core
import nn_core.attention._sdpa_kernels as sdp
from nn_core._kernels import _flash_attention as kflash
from nn_core._kernels import _layers as klayers
from nn_core.attention import ScaledDotProductAttention, create_padding_mask
from nn_core._dropout import dropout_key

from simd_levels import at_level

from test_sdpa_kernel import _reference

TILES = [(8, 16), (5, 7), (64, 256)]


@pytest.fixture(params=TILES, ids=[f"{a}x{b}" for a, b in TILES])
def flash(request, monkeypatch):
    """Force the tiled path, with the tile sizes of the parameter."""
    monkeypatch.setattr(sdp, "FLASH_MIN_SCORES", 0)
    monkeypatch.setattr(sdp, "FLASH_MIN_ROWS", 0)
    monkeypatch.setattr(sdp, "FLASH_BLOCK_Q", request.param[0])
    monkeypatch.setattr(sdp, "FLASH_BLOCK_K", request.param[1])
    return request.param


@pytest.fixture
def seed(request):
    """A seed derived from the test id (reproducible, different per case)."""
    return sum(map(ord, request.node.name)) * 7919 % (1 << 31)


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=2e-6)


def _run(dtype, q, k, v, g, path, **kw):
    """Forward and backward through ``path``: "flash", "fused" or "generic"."""
    saved = sdp.FLASH_MIN_SCORES, sdp.FLASH_MIN_ROWS, sdp.FUSED_ENABLED
    sdp.FLASH_MIN_SCORES = 0 if path == "flash" else 1 << 62
    sdp.FLASH_MIN_ROWS = 0
    sdp.FUSED_ENABLED = path != "generic"
    try:
        m = ScaledDotProductAttention(dtype=dtype)
        out = m(q, k, v, **kw)
        cache = m._peek_cache()
        assert (cache.flash is not None) == (path == "flash")
        return (out,) + m.backward(g)
    finally:
        sdp.FLASH_MIN_SCORES, sdp.FLASH_MIN_ROWS, sdp.FUSED_ENABLED = saved


def _inputs(seed, q_shape, k_shape, d_v, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(q_shape).astype(dtype)
    k = rng.standard_normal(k_shape).astype(dtype)
    v = rng.standard_normal(k_shape[:-1] + (d_v,)).astype(dtype)
    lead = np.broadcast_shapes(q_shape[:-2], k_shape[:-2])
    g = rng.standard_normal(lead + (q_shape[-2], d_v)).astype(dtype)
    return rng, q, k, v, g


def _mask(rng, kind, shape):
    if kind == "none":
        return None
    if kind == "bool":
        m = rng.random(shape) > 0.3
        m[..., 1, :] = False                                   # a fully masked row
        return m
    m = np.where(rng.random(shape) > 0.25, rng.standard_normal(shape), -np.inf)
    m[..., 2, :] = -np.inf                                     # a fully masked row
    return m


SHAPES = [  # q shape, k shape, d_v: odd lengths, L_q != L_k both ways, broadcast K/V
    ((2, 3, 37, 8), (2, 3, 53, 8), 5),
    ((1, 2, 61, 16), (1, 2, 61, 16), 16),
    ((2, 1, 70, 4), (2, 1, 23, 4), 3),
    ((2, 2, 3, 19, 4), (2, 2, 1, 33, 4), 6),
]


@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masking", ["none", "bool", "float"])
def test_matches_reference_and_fused_kernel(flash, dtype, shapes, causal, masking, seed):
    (qs, ks, d_v) = shapes
    rng, q, k, v, g = _inputs(seed, qs, ks, d_v)
    lead = np.broadcast_shapes(qs[:-2], ks[:-2])
    mask = _mask(rng, masking, (lead[0],) + (1,) * (len(lead) - 1) + (qs[-2], ks[-2]))
    want = _reference(q, k, v, g, mask=mask, is_causal=causal)
    want = (want[0],) + want[2:]
    cast = [None if a is None else a.astype(dtype) for a in (q, k, v, g)]
    m = None if mask is None else (mask if mask.dtype == bool else mask.astype(dtype))
    got = _run(dtype, *cast, "flash", mask=m, is_causal=causal)
    fused = _run(dtype, *cast, "fused", mask=m, is_causal=causal)
    for name, a, b, c in zip(("out", "grad_q", "grad_k", "grad_v"), got, want, fused):
        assert a.dtype == dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, **_tol(dtype), err_msg=f"{name}, seed={seed}")
        np.testing.assert_allclose(a, c, **_tol(dtype), err_msg=f"{name} vs fused, seed={seed}")


def test_fully_masked_rows_are_zero_as_in_fused_kernel(flash, dtype, seed):
    """Rows without any allowed key: output 0 and zero gradients, never NaN -- with a
    bool mask, an all ``-inf`` float mask row, padding lengths, and causal
    ``L_q > L_k`` (the first queries see nothing)."""
    rng, q, k, v, g = _inputs(seed, (3, 2, 29, 4), (3, 2, 21, 4), 5, dtype)
    mask = create_padding_mask(np.array([21, 7, 1]), 21) & (rng.random((3, 2, 29, 21)) > 0.2)
    mask[:, :, 4] = False
    for kw in (dict(mask=mask), dict(mask=np.where(mask, 0.0, -np.inf).astype(dtype)),
               dict(mask=mask, is_causal=True)):
        got = _run(dtype, q, k, v, g, "flash", **kw)
        fused = _run(dtype, q, k, v, g, "fused", **kw)
        for a, b in zip(got, fused):
            assert np.all(np.isfinite(a)), f"seed={seed}"
            np.testing.assert_allclose(a, b, **_tol(dtype), err_msg=f"seed={seed}")
        np.testing.assert_array_equal(got[0][:, :, 4], 0)
        np.testing.assert_array_equal(got[1][:, :, 4], 0)
    got = _run(dtype, q, k, v, g, "flash", is_causal=True)     # L_q - L_k = 8 blind rows
    np.testing.assert_array_equal(got[0][..., :8, :], 0)
    np.testing.assert_array_equal(got[1][..., :8, :], 0)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masking", ["none", "bool", "float"])
def test_gradcheck(flash, causal, masking, seed):
    rng, q, k, v, _ = _inputs(seed, (2, 11, 3), (2, 9, 3), 2)
    mask = _mask(rng, masking, (11, 9))
    attn = ScaledDotProductAttention(dtype=np.float64)
    rep = nn_core.gradcheck(attn, (q, k, v, mask, causal))
    assert rep.ok, f"seed={seed}: {rep}"


def _dropout_reference(q, k, v, g, key, causal):
    """Dropout with the counter-based mask of ``key`` over the flat weights,
    regenerated with ``_layers.dropout`` (float64)."""
    out, P, _, _, _ = _reference(q, k, v, g, is_causal=causal)
    ones = np.ones(P.size)
    Z = np.empty_like(ones)
    k0, k1, threshold, scale = key
    klayers.dropout(ones, Z, 0, k0, k1, threshold, scale)
    Z = Z.reshape(P.shape)
    s = 1 / np.sqrt(q.shape[-1])
    W = P * Z
    gP = (g @ np.swapaxes(v, -1, -2)) * Z
    gS = P * (gP - (gP * P).sum(-1, keepdims=True))
    return W @ v, s * gS @ k, s * np.swapaxes(gS, -1, -2) @ q, np.swapaxes(W, -1, -2) @ g, Z


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dropout_mask_is_regenerated_in_backward(flash, causal, seed):
    """The backward regenerates the forward's counter-based mask: output and every
    gradient equal the NumPy statement with that mask."""
    _, q, k, v, g = _inputs(seed, (2, 3, 21, 4), (2, 3, 26, 4), 5)
    attn = ScaledDotProductAttention(dropout=0.3, dtype=np.float64, rng=seed)
    out = attn(q, k, v, is_causal=causal)
    got = (out,) + attn.backward(g)
    key = dropout_key(np.random.default_rng(seed), 0.3)
    *want, Z = _dropout_reference(q, k, v, g, key, causal)
    assert 0.2 < (Z == 0).mean() < 0.4
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{name}, seed={seed}")
    attn.eval()                                                   # no dropout in eval
    np.testing.assert_allclose(attn(q, k, v, is_causal=causal),
                               _reference(q, k, v, g, is_causal=causal)[0], rtol=1e-10,
                               atol=1e-12, err_msg=f"seed={seed}")


def test_dropout_gradcheck(flash, seed):
    """Finite differences through a fixed dropout mask (same key at every call)."""
    _, q, k, v, _ = _inputs(seed, (1, 7, 3), (1, 9, 3), 2)

    class FixedDrop(ScaledDotProductAttention):
        def forward(self, *a, **kw):
            self.rng = np.random.default_rng(seed)
            return super().forward(*a, **kw)

    rep = nn_core.gradcheck(FixedDrop(dropout=0.3, dtype=np.float64), (q, k, v, None, True))
    assert rep.ok, f"seed={seed}: {rep}"


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_thread_count_does_not_change_results(flash, monkeypatch, workers, seed):
    """Slabs split over 1-4 threads: bit-identical outputs and gradients, broadcast
    K/V and dropout included."""
    _, q, k, v, g = _inputs(seed, (2, 2, 3, 17, 4), (2, 2, 1, 22, 4), 6)
    mask = np.random.default_rng(seed).random((17, 22)) > 0.3

    def go():
        attn = ScaledDotProductAttention(dropout=0.2, dtype=np.float64, rng=seed)
        out = attn(q, k, v, mask=mask, is_causal=True)
        return (out,) + attn.backward(g)

    monkeypatch.setattr(sdp, "MAX_WORKERS", 1)
    want = go()
    monkeypatch.setattr(sdp, "MAX_WORKERS", workers)
    monkeypatch.setattr(sdp, "MIN_WORK_PER_THREAD", 1)
    for a, b in zip(go(), want):
        np.testing.assert_array_equal(a, b, err_msg=f"workers={workers}, seed={seed}")


@pytest.mark.parametrize("level", [0, 1, 2], ids=["baseline", "avx2", "avx512"])
def test_every_simd_level(monkeypatch, level, seed):
    """The tile passes of ``_flash.h`` at every SIMD level the CPU has."""
    with at_level(level):
        monkeypatch.setattr(sdp, "FLASH_MIN_SCORES", 0)
        monkeypatch.setattr(sdp, "FLASH_MIN_ROWS", 0)
        monkeypatch.setattr(sdp, "FLASH_BLOCK_Q", 8)
        monkeypatch.setattr(sdp, "FLASH_BLOCK_K", 19)
        rng, q, k, v, g = _inputs(seed, (2, 31, 8), (2, 45, 8), 7, np.float32)
        mask = _mask(rng, "bool", (31, 45))
        for dtype in (np.float32, np.float64):
            args = [a.astype(dtype) for a in (q, k, v, g)]
            got = _run(dtype, *args, "flash", mask=mask, is_causal=True)
            want = _reference(*args, mask=mask, is_causal=True)
            for a, b in zip(got, (want[0],) + want[2:]):
                np.testing.assert_allclose(a, b, **_tol(dtype), err_msg=f"seed={seed}")


def test_switch_is_automatic_by_size(monkeypatch):
    """Long slabs take the tiled path; short ones, ``return_weights`` and KV-cache
    decoding (one query row) keep the fused kernel."""
    monkeypatch.setattr(sdp, "FLASH_MIN_SCORES", 64 * 64)
    monkeypatch.setattr(sdp, "FLASH_MIN_ROWS", 16)
    rng = np.random.default_rng(0)
    attn = ScaledDotProductAttention(dtype=np.float64)

    def path(L_q, L_k, **kw):
        q, k = rng.standard_normal((1, L_q, 4)), rng.standard_normal((1, L_k, 4))
        attn(q, k, k, **kw)
        c = attn._pop_cache()
        return "flash" if c.flash is not None else "fused" if c.fused is not None else "generic"

    assert path(64, 64) == "flash"
    assert path(63, 64) == "fused"
    assert path(1, 5000) == "fused"
    assert path(15, 5000) == "fused"
    assert path(16, 5000) == "flash"
    assert path(64, 64, return_weights=True) == "fused"
    assert path(64, 64, is_causal=True) == "flash"


def test_backward_does_not_depend_on_the_returned_output(flash, seed):
    """The output handed to the caller may be modified: the backward keeps its own."""
    _, q, k, v, g = _inputs(seed, (2, 13, 4), (2, 15, 4), 3)
    attn = ScaledDotProductAttention(dtype=np.float64)
    out = attn(q, k, v)
    want = _reference(q, k, v, g)
    out[...] = 1e6
    for a, b in zip(attn.backward(g), want[2:]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"seed={seed}")


def test_kernel_rejects_bad_arguments():
    q = np.zeros((1, 1, 1, 1, 4, 2))
    call = kflash.FlashCall(q, q, q, 1.0)
    out, lse = np.zeros((1, 4, 2)), np.zeros((1, 4))
    tasks = np.array([[0, 0, 4]], dtype=np.intp)
    kflash.flash_forward(call, out, lse, tasks, 0, 1, 8, 8)
    with pytest.raises(ValueError, match="task 0"):
        kflash.flash_forward(call, out, lse, np.array([[1, 0, 4]], dtype=np.intp), 0, 1, 8, 8)
    with pytest.raises(ValueError, match="task 0"):
        kflash.flash_forward(call, out, lse, np.array([[0, 0, 5]], dtype=np.intp), 0, 1, 8, 8)
    with pytest.raises(ValueError, match="task range"):
        kflash.flash_forward(call, out, lse, tasks, 0, 2, 8, 8)
    with pytest.raises(ValueError, match="block sizes"):
        kflash.flash_forward(call, out, lse, tasks, 0, 1, 0, 8)
    with pytest.raises(ValueError, match="out must have shape"):
        kflash.flash_forward(call, np.zeros((1, 3, 2)), lse, tasks, 0, 1, 8, 8)
    with pytest.raises(ValueError, match="lse must have shape"):
        kflash.flash_forward(call, out, np.zeros((1, 3)), tasks, 0, 1, 8, 8)
    with pytest.raises(TypeError):
        kflash.flash_forward(call, out.astype(np.float32), lse.astype(np.float32), tasks,
                            0, 1, 8, 8)
    with pytest.raises(ValueError, match="32-bit"):
        kflash.FlashCall(q, q, q, 1.0, dropout=(1 << 32, 0, 0, 1.0))
    gq, gv = np.zeros((1, 4, 2)), np.zeros((1, 4, 2))
    with pytest.raises(ValueError, match="grad_k must have shape"):
        kflash.flash_backward(call, out, lse, q, gq, np.zeros((1, 3, 2)), gv, tasks, 0, 1, 8, 8)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_matches_torch(flash, dtype, causal, seed):
    """torch's SDPA, forward and autograd backward, with a bool mask (torch aligns
    ``is_causal`` top-left, so the bottom-right causal mask is passed explicitly)."""
    torch = pytest.importorskip("torch")
    rng, q, k, v, g = _inputs(seed, (2, 3, 45, 8), (2, 3, 38, 8), 6, dtype)
    mask = rng.random((2, 1, 45, 38)) > 0.3
    mask[..., 0] = True                       # no fully masked row (torch's rule differs)
    full = mask & (np.arange(38)[None, :] <= np.arange(45)[:, None] - 7) if causal else mask
    full[..., 0] = True
    got = _run(dtype, q, k, v, g, "flash", mask=full)
    if causal:                                # the same rows through is_causal
        keep = np.arange(7, 45)
        part = _run(dtype, q[..., keep, :], k, v, g[..., keep, :], "flash",
                    mask=mask[..., keep, :], is_causal=True)
        np.testing.assert_allclose(part[0], got[0][..., keep, :], **_tol(dtype),
                                   err_msg=f"seed={seed}")
    tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv,
                                                           attn_mask=torch.from_numpy(full))
    out.backward(torch.from_numpy(g))
    want = (out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy())
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), got, want):
        np.testing.assert_allclose(a, b, **_tol(dtype), err_msg=f"{name}, seed={seed}")
