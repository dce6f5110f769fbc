"""The fused layer kernels (``src_pyx/_layers.h``): GELU, LayerNorm, softmax
cross-entropy, embedding scatter-add, optimizer updates and dropout masks, against
float64 / NumPy references, at every SIMD level the CPU has; and the layers using them
split over threads."""
import numpy as np
import pytest
from scipy.special import ndtr

from nn_core import _parallel, layers
from nn_core._kernels import _layers as kl
from nn_core.layers import GELU, Dropout, Embedding, LayerNorm
from nn_core.losses import CrossEntropyLoss
from nn_core.optim import SGD, Adam, AdamW

from simd_levels import level_fixture


level = level_fixture(0, 1)
gelu_level = level_fixture(0, 1, 2)       # GELU also has an AVX-512 path


def _gelu_ref(x):
    x = x.astype(np.float64)
    return x * ndtr(x), ndtr(x) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


# ------------------------------------------------------------------------ GELU --
@pytest.mark.usefixtures("gelu_level")
def test_gelu_exact_float64_to_rounding(rng):
    x = np.concatenate([rng.uniform(-5, 5, 20000), rng.standard_normal(20000),
                        [0.0, -0.0, 1e-300, -1e-300, 0.5, -0.5, 1.0, -1.0]])
    y, dx = np.empty_like(x), np.empty_like(x)
    kl.gelu_forward(x, y, False)
    kl.gelu_backward(x, np.ones_like(x), dx, False)
    want, dwant = _gelu_ref(x)
    m = want != 0
    assert np.max(np.abs(y[m] - want[m]) / np.abs(want[m])) < 5e-15
    scale = ndtr(x) + np.abs(x) * np.exp(-0.5 * x * x)       # |terms| of the derivative
    assert np.max(np.abs(dx - dwant) / scale) < 5e-15


@pytest.mark.usefixtures("gelu_level")
def test_gelu_exact_float64_left_tail_keeps_relative_accuracy(rng):
    """Down to x = -37, where x Phi(x) ~ 1e-300 (SciPy's ndtr itself is off by ~1e-13
    out there, so the reference is mpmath)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    x = -rng.uniform(5, 37, 300)
    y = np.empty_like(x)
    kl.gelu_forward(x, y, False)
    want = np.array([float(mpmath.mpf(v) * mpmath.ncdf(mpmath.mpf(v))) for v in x])
    assert np.max(np.abs(y - want) / np.abs(want)) < 5e-15


@pytest.mark.usefixtures("gelu_level")
def test_gelu_exact_float32_within_two_ulp(rng):
    """Against a float64 reference (SciPy's ndtr), forward within 2 ulp."""
    x = np.concatenate([rng.uniform(-13, 13, 200000), rng.standard_normal(100000)])
    x = x.astype(np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    kl.gelu_forward(x, y, False)
    kl.gelu_backward(x, np.ones_like(x), dx, False)
    want, dwant = _gelu_ref(x)
    m = np.abs(want) > 1e-37
    ulp = np.spacing(np.abs(want[m]).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y[m] - want[m]) / ulp) <= 2
    scale = ndtr(x) + np.abs(x) * np.exp(-0.5 * x.astype(np.float64) ** 2)
    assert np.max(np.abs(dx - dwant) / scale) < 1e-6


@pytest.mark.usefixtures("gelu_level")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 40.0, -40.0], dtype)
    y = np.empty_like(x)
    kl.gelu_forward(x, y, False)
    assert np.isnan(y[0]) and y[1] == np.inf and np.isnan(y[2])     # -inf * 0, as torch
    assert y[3] == 0 and y[4] == 40 and y[5] == 0


@pytest.mark.usefixtures("gelu_level")
def test_gelu_tanh_matches_the_formula(rng):
    x = rng.uniform(-10, 10, 10000)
    y, dx = np.empty_like(x), np.empty_like(x)
    kl.gelu_forward(x, y, True)
    kl.gelu_backward(x, np.ones_like(x), dx, True)
    c = np.sqrt(2 / np.pi)
    t = np.tanh(c * (x + 0.044715 * x ** 3))
    np.testing.assert_allclose(y, 0.5 * x * (1 + t), rtol=1e-14, atol=1e-15)
    d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    np.testing.assert_allclose(dx, d, rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------- LayerNorm --
@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D", [1, 7, 64, 385])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_kernels_match_numpy(rng, dtype, D, affine):
    N = 9
    x = (rng.standard_normal((N, D)) * 3 + 10).astype(dtype)
    gamma, beta = (rng.standard_normal(D).astype(dtype) if affine else None for _ in "gb")
    y, mean, rstd = np.empty_like(x), np.empty(N, dtype), np.empty(N, dtype)
    kl.layernorm_forward(x, y, mean, rstd, gamma, beta, 1e-5)
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    xh = (x64 - mu) * r
    want = xh * gamma + beta if affine else xh
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, want, **tol)
    dy = rng.standard_normal((N, D)).astype(dtype)
    dx = np.empty_like(x)
    dg = np.full(D, 0.5, dtype) if affine else None           # accumulated into
    db = np.full(D, -0.5, dtype) if affine else None
    kl.layernorm_backward(x, dy, mean, rstd, gamma, dx, dg, db)
    g = dy * gamma if affine else dy.astype(np.float64)
    want_dx = r * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True))
    scale = np.abs(r * g).max()        # dx is a difference of terms this large (D = 1: 0)
    np.testing.assert_allclose(dx, want_dx, rtol=tol["rtol"], atol=tol["atol"] * scale)
    if affine:
        np.testing.assert_allclose(dg, 0.5 + (dy * xh).sum(0), **tol)
        np.testing.assert_allclose(db, -0.5 + dy.sum(0), **tol)


def test_layernorm_kernel_entry_checks():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="y must have shape"):
        kl.layernorm_forward(x, np.zeros((2, 4)), np.zeros(2), np.zeros(2), None, None, 1e-5)
    with pytest.raises(ValueError, match="both be given"):
        kl.layernorm_forward(x, np.zeros((2, 3)), np.zeros(2), np.zeros(2), np.ones(3), None,
                             1e-5)


# ----------------------------------------------------------- the layers, split --
@pytest.fixture
def split(monkeypatch):
    """Make every layer kernel split its work over two threads."""
    monkeypatch.setattr(layers, "_MIN_ELEMENTS_PER_THREAD", 7)
    monkeypatch.setattr(layers, "_MIN_ROWS_PER_THREAD", 2)
    monkeypatch.setattr(_parallel, "blas_threads", lambda: 2)


@pytest.mark.parametrize("make, shape", [
    (lambda: LayerNorm(12, dtype=np.float64), (5, 7, 12)),
    (lambda: GELU(dtype=np.float64), (5, 7, 12)),
    (lambda: GELU("tanh", dtype=np.float64), (33,)),
])
def test_split_layers_equal_unsplit(rng, split, make, shape):
    x, g = rng.standard_normal(shape), rng.standard_normal(shape)
    res = []
    for threaded in (False, True):
        m = make()
        if isinstance(m, LayerNorm):
            m.params["gamma"][...] = rng.standard_normal(12) if not res else res[0][3]
        with _parallel.limit_threads(2 if threaded else 1):
            y = m(x)
            gx = m.backward(g)
        res.append((y, gx, [v.copy() for v in m.gradients().values()],
                    m.params.get("gamma")))
    (y1, g1, p1, _), (y2, g2, p2, _) = res
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(g1, g2)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-13)


# ------------------------------------------------------- softmax cross-entropy --
@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_kernel(rng, dtype):
    z = (rng.standard_normal((50, 13)) * 5).astype(dtype)
    t = rng.integers(0, 13, 50)
    t[::4] = -100
    loss, grad = np.empty(50, dtype), np.empty_like(z)
    kept = kl.cross_entropy(z, t, loss, grad, -100, 1.0)
    assert kept == int((t != -100).sum())
    z64 = z.astype(np.float64)
    lse = np.log(np.exp(z64 - z64.max(1, keepdims=True)).sum(1)) + z64.max(1)
    keep = t != -100
    want = np.where(keep, lse - z64[np.arange(50), np.where(keep, t, 0)], 0)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss, want, rtol=tol, atol=tol)
    p = np.exp(z64 - lse[:, None])
    p[np.arange(50)[keep], t[keep]] -= 1
    p[~keep] = 0
    np.testing.assert_allclose(grad, p, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match=r"targets\[3\] must be in \[0, 13\)"):
        bad = t.copy()
        bad[3] = 13
        kl.cross_entropy(z, bad, loss, grad, -100, 1.0)


def test_cross_entropy_layer_reductions_match_numpy(rng):
    z = rng.standard_normal((4, 6, 5))
    t = rng.integers(0, 5, (4, 6))
    t[0, :3] = 0
    for reduction in ("mean", "sum", "none"):
        ce = CrossEntropyLoss(ignore_index=0, reduction=reduction, dtype=np.float64)
        out = ce(z, t)
        g = rng.standard_normal(out.shape) if reduction == "none" else 0.7
        gz, _ = ce.backward(g)
        lse = np.log(np.exp(z).sum(-1))
        keep = t != 0
        per = np.where(keep, lse - np.take_along_axis(z, t[..., None], -1)[..., 0], 0)
        M = keep.sum()
        want = {"mean": per.sum() / M, "sum": per.sum(), "none": per}[reduction]
        np.testing.assert_allclose(out, want, rtol=1e-13)
        p = np.exp(z - lse[..., None])
        np.put_along_axis(p, t[..., None], np.take_along_axis(p, t[..., None], -1) - 1, -1)
        w = keep * (g / M if reduction == "mean" else g)
        np.testing.assert_allclose(gz, p * w[..., None], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------- embedding backward --
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_add_repeated_ids_and_padding(rng, dtype):
    emb = Embedding(6, 3, padding_idx=2, dtype=dtype, rng=rng)
    ids = np.array([[1, 2, 1, 5], [5, 5, 0, 2]])
    emb(ids)
    g = rng.standard_normal((2, 4, 3)).astype(dtype)
    emb.backward(g)
    want = np.zeros((6, 3))
    np.add.at(want, ids.reshape(-1), g.reshape(-1, 3))
    want[2] = 0
    np.testing.assert_allclose(emb.grads["W"], want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"ids\[0\] must be in \[0, 6\)"):
        kl.scatter_add(emb.grads["W"], np.array([7]), g.reshape(-1, 3)[:1], -1)


# ------------------------------------------------------------------ optimizers --
def _strided_copy(a):
    big = np.zeros(a.shape + (2,), a.dtype)
    big[..., 0] = a
    return big[..., 0]                        # same values, not C-contiguous


@pytest.mark.parametrize("make", [
    lambda t: AdamW(t, lr=0.03, weight_decay=0.1), lambda t: Adam(t, lr=0.02, weight_decay=0.05),
    lambda t: SGD(t, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda t: SGD(t, lr=0.1, momentum=0.8, nesterov=True), lambda t: SGD(t, lr=0.1),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_update_equals_the_numpy_rule(rng, make, dtype):
    """The compiled update (contiguous arrays) and the NumPy one (strided arrays) agree
    over several steps."""
    shapes = {"a": (3, 4), "b": (5,)}
    p1 = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    p2 = {k: _strided_copy(v) for k, v in p1.items()}
    g1 = {k: np.zeros(s, dtype) for k, s in shapes.items()}
    g2 = {k: _strided_copy(v) for k, v in g1.items()}
    o1, o2 = make((p1, g1)), make((p2, g2))
    for _ in range(4):
        for k, s in shapes.items():
            g = rng.standard_normal(s)
            g1[k][...] = g
            g2[k][...] = g
        o1.step()
        o2.step()
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for k in shapes:
        np.testing.assert_allclose(p1[k], p2[k], rtol=tol, atol=tol)
        for n in o1.state[k]:
            np.testing.assert_allclose(o1.state[k][n], o2.state[k][n], rtol=tol, atol=tol)
            assert o1.state[k][n].shape == shapes[k]


# --------------------------------------------------------------------- dropout --
@pytest.mark.usefixtures("level")
def test_dropout_mask_statistics_and_regeneration():
    x = np.ones(1 << 20, np.float32)
    y, again = np.empty_like(x), np.empty_like(x)
    th = round(0.3 * 2 ** 32)
    kl.dropout(x, y, 0, 123, 456, th, 1 / 0.7)
    assert abs((y != 0).mean() - 0.7) < 3e-3
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    kl.dropout(x, again, 0, 123, 456, th, 1 / 0.7)
    np.testing.assert_array_equal(y, again)
    part = np.empty(1000, np.float32)
    kl.dropout(x[:1000], part, 5000, 123, 456, th, 1 / 0.7)        # any sub-range alone
    np.testing.assert_array_equal(part, y[5000:6000])
    kl.dropout(x, again, 0, 124, 456, th, 1 / 0.7)                  # another key
    assert (again != y).mean() > 0.3


def test_dropout_layer_backward_uses_the_forward_mask(rng, split):
    d = Dropout(0.4, dtype=np.float64, rng=0)
    x = rng.standard_normal((50, 40))
    y = d(x)
    kept = y != 0
    g = rng.standard_normal(x.shape)
    np.testing.assert_allclose(d.backward(g), np.where(kept, g / 0.6, 0))
    np.testing.assert_allclose(y[kept], x[kept] / 0.6)
