import numpy as np
import pytest
from _attention_reference import randomize, ref_attention
from contract import check_contract

from nn_core import gradcheck
from nn_core.attention import (
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiQueryAttention,
    convert_from_mha,
)


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)


def test_parameter_shapes():
    g = GroupedQueryAttention(32, 8, 2, rng=0)
    assert g.params["W_q"].shape == (32, 32) and g.params["W_o"].shape == (32, 32)
    assert g.params["W_k"].shape == (32, 8) and g.params["W_v"].shape == (32, 8)
    assert g.params["b_k"].shape == (8,) and g.params["b_q"].shape == (32,)
    q = MultiQueryAttention(32, 8, rng=0)
    assert q.params["W_k"].shape == (32, 4) and q.params["b_v"].shape == (4,)
    assert q.num_kv_groups == 1


@pytest.mark.parametrize("g, exc", [(0, ValueError), (3, ValueError), (8, ValueError),
                                    (2.0, TypeError)])
def test_bad_num_kv_groups(g, exc):
    with pytest.raises(exc, match="num_kv_groups"):
        GroupedQueryAttention(16, 4, g)


@pytest.mark.parametrize("g", [1, 2, 4])
@pytest.mark.parametrize("L,S", [(5, 5), (1, 4), (3, 6)])
def test_forward_matches_repeated_kv_reference(rng, dtype, g, L, S):
    B, d, h = 2, 16, 4
    m = randomize(GroupedQueryAttention(d, h, g, dtype=dtype, rng=0), rng)
    x, kv = rng.standard_normal((B, L, d)), rng.standard_normal((B, S, d))
    # a per-head mask: checks that query head i reads K/V group i // (h // g)
    mask = rng.random((B, h, L, S)) < 0.7
    mask[..., -1] = True
    for msk, causal in [(None, False), (mask, False), (None, True), (mask[:, :1], True)]:
        y, w = m(x, kv, kv, mask=msk, is_causal=causal, return_weights=True)
        ref, ref_w = ref_attention(m.params, x, kv, kv, h, g, msk, causal)
        np.testing.assert_allclose(y, ref, **tol(dtype))
        np.testing.assert_allclose(w, ref_w, **tol(dtype))


def _copy_params(dst, src):
    for k, v in src.params.items():
        dst.params[k][...] = v


@pytest.mark.parametrize("L", [4, 1])
def test_gqa_all_groups_equals_mha_and_one_group_equals_mqa(rng, L):
    d, h = 16, 4
    x = rng.standard_normal((2, L, d))
    gy = rng.standard_normal((2, L, d))
    pairs = [(MultiHeadAttention(d, h, dtype=np.float64, rng=0),
              GroupedQueryAttention(d, h, h, dtype=np.float64, rng=1)),
             (MultiQueryAttention(d, h, dtype=np.float64, rng=0),
              GroupedQueryAttention(d, h, 1, dtype=np.float64, rng=1))]
    for ref, gqa in pairs:
        randomize(ref, rng)
        _copy_params(gqa, ref)
        y_ref = ref(x, is_causal=True)
        y = gqa(x, is_causal=True)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_allclose(gqa.backward(gy)[0], ref.backward(gy)[0], rtol=1e-12)
        for k in ref.params:
            np.testing.assert_allclose(gqa.grads[k], ref.grads[k], rtol=1e-12, err_msg=k)


@pytest.mark.parametrize("module", ["gqa", "mqa"])
@pytest.mark.parametrize("L", [3, 1])
def test_gradcheck(rng, module, L):
    m = (GroupedQueryAttention(8, 4, 2, dtype=np.float64, rng=0) if module == "gqa"
         else MultiQueryAttention(8, 2, dtype=np.float64, rng=0))
    randomize(m, rng)
    x = rng.standard_normal((2, L, 8))
    kv = rng.standard_normal((2, 4, 8))
    mask = rng.random((2, m.num_heads, L, 4)) < 0.7
    mask[..., 0] = True
    assert gradcheck(m, (x,), rng=rng).ok
    rep = gradcheck(m, (x, kv, kv, mask, True))
    assert rep.ok, str(rep)


@pytest.mark.parametrize("cls", ["gqa", "mqa"])
def test_contract(cls):
    def factory(dt):
        if cls == "gqa":
            return GroupedQueryAttention(8, 4, 2, dtype=dt, rng=0)
        return MultiQueryAttention(8, 4, dtype=dt, rng=0)

    check_contract(factory, lambda r: (r.standard_normal((2, 3, 8)),
                                       r.standard_normal((2, 5, 8))),
                   bad=[((np.zeros((2, 3, 7)),), ValueError, "query must have shape")])


# ------------------------------------------------------------ convert_from_mha
def test_convert_from_mha_mean_pools_kv_heads(rng):
    d, h, g = 16, 4, 2
    mha = randomize(MultiHeadAttention(d, h, dtype=np.float64, rng=0), rng)
    gqa = GroupedQueryAttention.convert_from_mha(mha, g)
    assert isinstance(gqa, GroupedQueryAttention) and gqa.num_kv_groups == g
    d_k = d // h
    for name in ("W_k", "W_v"):
        w = mha.params[name]
        expect0 = (w[:, 0:d_k] + w[:, d_k:2 * d_k]) / 2        # heads 0, 1 -> group 0
        expect1 = (w[:, 2 * d_k:3 * d_k] + w[:, 3 * d_k:]) / 2  # heads 2, 3 -> group 1
        np.testing.assert_allclose(gqa.params[name], np.hstack([expect0, expect1]), rtol=1e-14)
    for name in ("b_k", "b_v"):
        b = mha.params[name].reshape(g, h // g, d_k).mean(1).reshape(-1)
        np.testing.assert_allclose(gqa.params[name], b, rtol=1e-14)
    for name in ("W_q", "W_o", "b_q", "b_o"):
        np.testing.assert_array_equal(gqa.params[name], mha.params[name])
    # the converted module is the mean-pooled reference model
    x = rng.standard_normal((2, 5, d))
    np.testing.assert_allclose(gqa(x), ref_attention(gqa.params, x, x, x, h, g)[0], rtol=1e-10)


def test_convert_from_mha_identity_and_function_form(rng):
    mha = randomize(MultiHeadAttention(16, 4, dtype=np.float64, rng=0), rng)
    x = rng.standard_normal((2, 5, 16))
    same = convert_from_mha(mha, 4)
    np.testing.assert_allclose(same(x, is_causal=True), mha(x, is_causal=True), rtol=1e-12)
    mqa = convert_from_mha(mha, 1)
    assert mqa.params["W_k"].shape == (16, 4)
    nb = convert_from_mha(MultiHeadAttention(16, 4, bias=False, rng=0), 2)
    assert "b_k" not in nb.params and nb.dtype == np.float32
    with pytest.raises(ValueError, match="num_kv_groups"):
        convert_from_mha(mha, 3)
    with pytest.raises(TypeError, match="mha must be"):
        convert_from_mha("not a module", 2)


def test_kv_cache_stats_reduction():
    for cls, g in [(lambda: MultiHeadAttention(512, 8), 8),
                   (lambda: GroupedQueryAttention(512, 8, 2), 2),
                   (lambda: MultiQueryAttention(512, 8), 1)]:
        m = cls()
        st = m.get_kv_cache_stats(4, 1024, num_layers=3)
        assert st["num_kv_heads"] == g
        assert st["elements"] == 2 * 3 * 4 * 1024 * g * 64
        assert st["bytes"] == st["elements"] * 4 == m.get_kv_cache_size(4, 1024, 3)
        assert st["mha_bytes"] == 2 * 3 * 4 * 1024 * 512 * 4
        assert st["reduction_factor"] == 8 / g
        assert st["mha_bytes"] / st["bytes"] == st["reduction_factor"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _configs(draw):
    h = draw(st.sampled_from([1, 2, 4]))
    g = draw(st.sampled_from([d for d in (1, 2, 4) if h % d == 0]))
    d_k = draw(st.integers(1, 3))
    return (h, g, d_k, draw(st.integers(1, 3)), draw(st.integers(1, 5)),
            draw(st.integers(1, 5)), draw(st.booleans()), draw(st.integers(0, 2 ** 32 - 1)))


@settings(max_examples=40, deadline=None)
@given(_configs())
def test_property_any_shape_matches_reference(cfg):
    """Any (h, g, d_k, B, L, S, causal): the module equals the repeated-K/V oracle."""
    h, g, d_k, B, L, S, causal, seed = cfg
    r = np.random.default_rng(seed)
    m = randomize(GroupedQueryAttention(h * d_k, h, g, dtype=np.float64, rng=0), r)
    x, kv = r.standard_normal((B, L, h * d_k)), r.standard_normal((B, S, h * d_k))
    mask = r.random((B, h, L, S)) < 0.6
    y = m(x, kv, mask=mask, is_causal=causal)
    np.testing.assert_allclose(y, ref_attention(m.params, x, kv, kv, h, g, mask, causal)[0],
                               rtol=1e-10, atol=1e-11)
    dx, dkv, _ = m.backward(np.ones_like(y))
    assert dx.shape == x.shape and dkv.shape == kv.shape
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dkv))
