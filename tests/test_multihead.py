import numpy as np
import pytest
from _attention_reference import randomize, ref_attention
from contract import check_contract

from nn_core import gradcheck
from nn_core.attention import MultiHeadAttention, combine_heads, create_causal_mask, split_heads


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)


def make(d=8, h=2, dtype=np.float64, rng=None, bias=True, seed=0):
    m = MultiHeadAttention(d, h, bias=bias, dtype=dtype, rng=seed)
    if rng is not None:
        randomize(m, rng)
    return m


# ---------------------------------------------------------------- split/combine
def test_split_combine_heads_roundtrip(rng):
    x = rng.standard_normal((2, 5, 12))
    s = split_heads(x, 3)
    assert s.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(s[1, 2, 3], x[1, 3, 8:12])
    np.testing.assert_array_equal(combine_heads(s), x)
    assert combine_heads(s).flags.c_contiguous


def test_split_combine_heads_errors(rng):
    with pytest.raises(ValueError, match="num_heads must divide"):
        split_heads(rng.standard_normal((2, 5, 12)), 5)
    with pytest.raises(ValueError, match="3-dimensional"):
        split_heads(rng.standard_normal((5, 12)), 3)
    with pytest.raises(ValueError, match="4-dimensional"):
        combine_heads(rng.standard_normal((2, 5, 12)))


# ----------------------------------------------------------------- parameters
def test_parameters_and_init():
    m = MultiHeadAttention(16, 4, rng=3)
    assert set(m.params) == {"W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o"}
    for k in "qkvo":
        assert m.params["W_" + k].shape == (16, 16)
        assert m.params["b_" + k].shape == (16,)
        assert m.params["W_" + k].dtype == np.float32
    same = MultiHeadAttention(16, 4, rng=3)
    other = MultiHeadAttention(16, 4, rng=4)
    for k, v in m.params.items():
        np.testing.assert_array_equal(v, same.params[k])
    assert not np.array_equal(m.params["W_q"], other.params["W_q"])
    bound = np.sqrt(6 / 32)
    assert np.abs(m.params["W_q"]).max() <= bound and m.params["W_q"].std() > bound / 4
    nb = MultiHeadAttention(16, 4, bias=False, rng=3)
    assert set(nb.params) == {"W_q", "W_k", "W_v", "W_o"}


@pytest.mark.parametrize("args, exc, match", [
    ((10, 3), ValueError, "num_heads must divide d_model"),
    ((0, 1), ValueError, "d_model must be >= 1"),
    ((8, 0), ValueError, "num_heads must be >= 1"),
    ((8.0, 2), TypeError, "d_model must be an int"),
])
def test_constructor_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        MultiHeadAttention(*args)
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(8, 2, dropout=1.0)
    with pytest.raises(TypeError, match="dtype"):
        MultiHeadAttention(8, 2, dtype=np.int32)
    with pytest.raises(TypeError, match="bias"):
        MultiHeadAttention(8, 2, bias="yes")


# -------------------------------------------------------------------- forward
MASKS = ["none", "bool_ls", "bool_pad", "float_full", "causal", "causal_and_bool"]


def _mask(kind, rng, B, h, L, S):
    if kind == "bool_ls":
        m = rng.random((L, S)) < 0.7
        m[:, 0] = True
        return m, False
    if kind == "bool_pad":
        m = np.ones((B, 1, 1, S), bool)
        m[0, ..., S - 1:] = False
        return m, False
    if kind == "float_full":
        m = np.where(rng.random((B, h, L, S)) < 0.7, 0.0, -np.inf) + rng.standard_normal((B, h, L, S))
        m[..., 0] = 0.3
        return m, False
    if kind == "causal":
        return None, True
    if kind == "causal_and_bool":
        m = rng.random((B, 1, L, S)) < 0.8
        m[..., 0] = True
        return m, True
    return None, False


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("L,S", [(4, 4), (3, 5), (1, 6)])
def test_forward_matches_reference(rng, dtype, kind, L, S):
    B, d, h = 2, 12, 3
    m = make(d, h, dtype, rng)
    x = rng.standard_normal((B, L, d))
    kv = rng.standard_normal((B, S, d))
    mask, causal = _mask(kind, rng, B, h, L, S)
    y, w = m(x, kv, kv, mask=mask, is_causal=causal, return_weights=True)
    ref, ref_w = ref_attention(m.params, x, kv, kv, h, h, mask, causal)
    assert y.dtype == dtype and y.shape == (B, L, d) and w.shape == (B, h, L, S)
    np.testing.assert_allclose(y, ref, **tol(dtype))
    np.testing.assert_allclose(w, ref_w, **tol(dtype))
    if L == S:
        ys = m(x, mask=mask, is_causal=causal)
        np.testing.assert_allclose(ys, ref_attention(m.params, x, x, x, h, h, mask, causal)[0],
                                   **tol(dtype))


def test_bool_and_float_masks_agree(rng):
    m = make(8, 2, np.float64, rng)
    x = rng.standard_normal((2, 5, 8))
    allowed = rng.random((2, 2, 5, 5)) < 0.6
    allowed[..., 0] = True
    fm = np.where(allowed, 0.0, -np.inf)
    np.testing.assert_allclose(m(x, mask=allowed), m(x, mask=fm), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m(x, mask=create_causal_mask(5)), m(x, is_causal=True),
                               rtol=1e-12, atol=1e-12)


def test_fully_masked_rows_give_bias_and_finite_grads(rng):
    m = make(8, 2, np.float64, rng)
    x = rng.standard_normal((2, 4, 8))
    mask = np.ones((2, 1, 4, 4), bool)
    mask[1, :, 2] = False                       # query 2 of batch 1 sees nothing
    y = m(x, mask=mask)
    np.testing.assert_allclose(y[1, 2], m.params["b_o"], rtol=1e-12, atol=1e-12)
    gq, _, _ = m.backward(rng.standard_normal(y.shape))
    assert np.all(np.isfinite(gq))
    assert all(np.all(np.isfinite(g)) for g in m.gradients().values())


def test_is_causal_with_more_queries_than_keys(rng):
    m = make(8, 2, np.float64, rng)
    q, kv = rng.standard_normal((1, 5, 8)), rng.standard_normal((1, 3, 8))
    y = m(q, kv, is_causal=True)
    np.testing.assert_allclose(y[0, :2], np.broadcast_to(m.params["b_o"], (2, 8)), atol=1e-12)
    np.testing.assert_allclose(y, ref_attention(m.params, q, kv, kv, 2, 2, None, True)[0],
                               rtol=1e-10, atol=1e-12)


def test_dropout_train_vs_eval(rng):
    x = rng.standard_normal((2, 6, 8))
    m = MultiHeadAttention(8, 2, dropout=0.5, dtype=np.float64, rng=0)
    plain = MultiHeadAttention(8, 2, dtype=np.float64, rng=0)
    y_train = m(x)
    assert not np.allclose(y_train, plain(x))
    gq = m.backward(np.ones_like(y_train))[0]
    assert np.all(np.isfinite(gq))
    m.eval()
    np.testing.assert_allclose(m(x), plain(x), rtol=1e-12)


# ------------------------------------------------------------------- backward
@pytest.mark.parametrize("case", ["self", "key", "key_value", "causal_mask", "single_query",
                                  "no_bias", "value_only"])
def test_gradcheck(rng, case):
    h = 2 if case != "causal_mask" else 4
    m = make(8, h, np.float64, rng, bias=case != "no_bias")
    x = rng.standard_normal((2, 4, 8))
    k = rng.standard_normal((2, 3, 8))
    v = rng.standard_normal((2, 3, 8))
    inputs = {
        "self": (x,),
        "no_bias": (x,),
        "key": (x, k),
        "key_value": (x, k, v),
        "causal_mask": (x, None, None, rng.random((2, 1, 4, 4)) < 0.7, True),
        "single_query": (x[:, :1], k, v),
        "value_only": (x, None, rng.standard_normal((2, 4, 8))),
    }[case]
    rep = gradcheck(m, inputs)
    assert rep.ok, str(rep)


def test_defaulted_key_value_gradients_are_summed(rng):
    m = make(8, 2, np.float64, rng)
    x = rng.standard_normal((2, 4, 8))
    g = rng.standard_normal((2, 4, 8))
    y1 = m(x)
    gq, gk, gv = m.backward(g)
    assert gk is None and gv is None
    p1 = {k: v.copy() for k, v in m.gradients().items()}
    m.zero_grad()
    y2 = m(x, x, x)
    aq, ak, av = m.backward(g)
    np.testing.assert_allclose(y1, y2, rtol=1e-12)
    np.testing.assert_allclose(gq, aq + ak + av, rtol=1e-10, atol=1e-12)
    for k in p1:
        np.testing.assert_allclose(p1[k], m.gradients()[k], rtol=1e-10, atol=1e-12)
    m(x, x)
    bq, bk, bv = m.backward(g)
    assert bv is None
    np.testing.assert_allclose(bk, ak + av, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------- contract
def test_contract_self_attention():
    B, L, d = 2, 4, 8
    check_contract(
        lambda dt: MultiHeadAttention(d, 2, dtype=dt, rng=0),
        lambda r: (r.standard_normal((B, L, d)),),
        bad=[
            ((np.zeros((B, L)),), ValueError, "query must be 3-dimensional"),
            ((np.zeros((B, L, 6)),), ValueError, r"query must have shape \(\*, \*, 8\)"),
            ((np.zeros((B, L, d), complex),), TypeError, "query must be a real-valued"),
            ((np.zeros((B, L, d)), None, None, np.ones((3, 3), bool)), ValueError,
             "mask must broadcast"),
            ((np.zeros((B, L, d)), None, None, np.ones((4, 4), complex)), TypeError, "mask"),
            ((np.zeros((B, 0, d)),), ValueError, "at least one batch entry and one position"),
            ((np.zeros((B, L, d)), np.zeros((B, 0, d))), ValueError, "key must have at least"),
        ],
    )


def test_contract_cross_inputs():
    check_contract(
        lambda dt: MultiHeadAttention(8, 4, dtype=dt, rng=0),
        lambda r: (r.standard_normal((2, 3, 8)), r.standard_normal((2, 5, 8)),
                   r.standard_normal((2, 5, 8))),
        bad=[
            ((np.zeros((2, 3, 8)), np.zeros((3, 5, 8))), ValueError,
             r"key must have shape \(2, \*, 8\)"),
            ((np.zeros((2, 3, 8)), np.zeros((2, 5, 8)), np.zeros((2, 4, 8))), ValueError,
             "value.shape.1. must equal key.shape.1."),
        ],
    )


def test_backward_errors(rng):
    m = make(8, 2, np.float64, rng)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        m.backward(np.ones((1, 2, 8)))
    m(rng.standard_normal((1, 2, 8)))
    with pytest.raises(ValueError, match="grad_output must have shape"):
        m.backward(np.ones((1, 3, 8)))


@pytest.mark.parametrize("inputs", ["self", "key", "value_only"])
def test_fused_and_separate_projections_agree(rng, inputs):
    """>= _FUSE_MIN_ROWS rows take the fused-GEMM path, fewer rows one GEMM per
    projection: both must give the same outputs and gradients."""
    B, L, d = 2, 20, 8                               # 40 rows: fused by default
    x = rng.standard_normal((B, L, d))
    other = rng.standard_normal((B, L, d))
    args = {"self": (x,), "key": (x, other), "value_only": (x, None, other)}[inputs]
    g = rng.standard_normal((B, L, d))
    results = []
    for min_rows in (1, 10 ** 9):
        m = make(d, 2, np.float64, np.random.default_rng(7))
        m._FUSE_MIN_ROWS = min_rows
        y = m(*args)
        grads = m.backward(g)
        results.append((y, grads, {k: v.copy() for k, v in m.gradients().items()}))
    (y0, g0, p0), (y1, g1, p1) = results
    np.testing.assert_allclose(y0, y1, rtol=1e-12, atol=1e-12)
    for a, b in zip(g0, g1):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    for k in p0:
        np.testing.assert_allclose(p0[k], p1[k], rtol=1e-11, atol=1e-12, err_msg=k)
    ref = ref_attention(m.params, x, args[1] if inputs == "key" else x,
                        other if inputs != "self" else x, 2, 2)[0]
    np.testing.assert_allclose(y0, ref, rtol=1e-10, atol=1e-12)
