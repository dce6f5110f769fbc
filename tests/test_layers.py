"""Linear, Embedding, LayerNorm, Dropout, Sequential: gradcheck, torch parity, contract."""
import numpy as np
import pytest

from nn_core import gradcheck
from nn_core.layers import GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, Sequential, Tanh
from tests.contract import check_contract

try:
    import torch
except ImportError:         # only the torch-parity tests need it; the rest run without
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (parity test)")

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
TDT = {np.float32: torch.float32, np.float64: torch.float64} if torch else {}


def _t(a, dtype, grad=False):
    return torch.tensor(np.asarray(a, dtype=dtype), requires_grad=grad)


# ----------------------------------------------------------------- Linear
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(rng, bias):
    m = Linear(4, 3, bias=bias, dtype=np.float64, rng=rng)
    assert gradcheck(m, (rng.standard_normal((2, 3, 4)),)).ok


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
def test_linear_torch_parity(rng, dtype, bias):
    m = Linear(5, 7, bias=bias, dtype=dtype, rng=rng)
    x = rng.standard_normal((3, 2, 5))
    g = rng.standard_normal((3, 2, 7))
    ref = torch.nn.Linear(5, 7, bias=bias, dtype=TDT[dtype])
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(m.params["W"].T))
        if bias:
            ref.bias.copy_(torch.tensor(m.params["b"]))
    xt = _t(x, dtype, grad=True)
    yt = ref(xt)
    yt.backward(_t(g, dtype))
    y = m(x)
    gx = m.backward(g)
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(gx, xt.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(m.grads["W"], ref.weight.grad.numpy().T, **TOL[dtype])
    if bias:
        np.testing.assert_allclose(m.grads["b"], ref.bias.grad.numpy(), **TOL[dtype])


def test_linear_init_and_names():
    m = Linear(16, 4, rng=0)
    assert m.params["W"].shape == (16, 4) and m.params["b"].shape == (4,)
    assert np.abs(m.params["W"]).max() <= 0.25
    np.testing.assert_array_equal(Linear(16, 4, rng=0).params["W"], m.params["W"])


def test_linear_contract():
    check_contract(
        lambda dt: Linear(4, 3, dtype=dt, rng=1),
        lambda rng: (rng.standard_normal((2, 5, 4)),),
        bad=[((np.ones((2, 5)),), ValueError, "in_features: expected 4, got 5"),
             ((np.ones((2, 4), complex),), TypeError, "real-valued"),
             ((np.ones(()),), ValueError, "at least 1 dimensions")],
    )
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 3)


# -------------------------------------------------------------- Embedding
def test_embedding_repeated_ids_accumulate(rng):
    m = Embedding(6, 3, dtype=np.float64, rng=rng)
    ids = np.array([[1, 2, 1], [1, 5, 2]])
    g = rng.standard_normal((2, 3, 3))
    out = m(ids)
    np.testing.assert_array_equal(out, m.params["W"][ids])
    assert m.backward(g) is None
    expected = np.zeros((6, 3))
    for b in range(2):
        for t in range(3):
            expected[ids[b, t]] += g[b, t]
    np.testing.assert_allclose(m.grads["W"], expected, rtol=1e-14, atol=1e-14)
    assert not m.grads["W"][[0, 3, 4]].any()


def test_embedding_gradcheck(rng):
    m = Embedding(5, 3, dtype=np.float64, rng=rng)
    assert gradcheck(m, (rng.integers(0, 5, size=(2, 4)),)).ok


@needs_torch
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_torch_parity(rng, dtype, padding_idx):
    m = Embedding(7, 4, padding_idx=padding_idx, dtype=dtype, rng=rng)
    ids = rng.integers(0, 7, size=(3, 9))
    ids[0, :3] = 0                              # make sure the padding row appears
    g = rng.standard_normal((3, 9, 4))
    ref = torch.nn.Embedding(7, 4, padding_idx=padding_idx, dtype=TDT[dtype])
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(m.params["W"]))
    yt = ref(torch.tensor(ids))
    yt.backward(_t(g, dtype))
    np.testing.assert_array_equal(m(ids), yt.detach().numpy())
    m.backward(g)
    np.testing.assert_allclose(m.grads["W"], ref.weight.grad.numpy(), **TOL[dtype])
    if padding_idx is not None:
        assert not m.params["W"][0].any() and not m.grads["W"][0].any()


def test_embedding_contract_and_errors():
    check_contract(lambda dt: Embedding(9, 3, dtype=dt, rng=2),
                   lambda rng: (rng.integers(0, 9, size=(2, 5)),),
                   bad=[((np.array([1, 9]),), ValueError, r"0 <= ids < 9, got 9"),
                        ((np.array([-1]),), ValueError, "got -1"),
                        ((np.array([1.0]),), TypeError, "integer array")])
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(3, 2, padding_idx=3)


# -------------------------------------------------------------- LayerNorm
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_gradcheck(rng, affine):
    m = LayerNorm(5, elementwise_affine=affine, dtype=np.float64, rng=rng)
    if affine:   # move away from the trivial init so both parameters matter
        m.params["gamma"][...] = rng.standard_normal(5)
        m.params["beta"][...] = rng.standard_normal(5)
    assert gradcheck(m, (rng.standard_normal((3, 2, 5)),)).ok


@needs_torch
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_torch_parity(rng, dtype, affine):
    m = LayerNorm(6, eps=1e-5, elementwise_affine=affine, dtype=dtype)
    ref = torch.nn.LayerNorm(6, eps=1e-5, elementwise_affine=affine, dtype=TDT[dtype])
    if affine:
        gam, bet = rng.standard_normal(6), rng.standard_normal(6)
        m.params["gamma"][...] = gam
        m.params["beta"][...] = bet
        with torch.no_grad():
            ref.weight.copy_(_t(gam, dtype))
            ref.bias.copy_(_t(bet, dtype))
    x = 3 * rng.standard_normal((4, 3, 6)) + 2
    g = rng.standard_normal((4, 3, 6))
    xt = _t(x, dtype, grad=True)
    yt = ref(xt)
    yt.backward(_t(g, dtype))
    np.testing.assert_allclose(m(x), yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(m.backward(g), xt.grad.numpy(), **TOL[dtype])
    if affine:
        np.testing.assert_allclose(m.grads["gamma"], ref.weight.grad.numpy(), **TOL[dtype])
        np.testing.assert_allclose(m.grads["beta"], ref.bias.grad.numpy(), **TOL[dtype])


def test_layernorm_contract():
    def factory(dt):
        m = LayerNorm(4, dtype=dt)
        m.params["gamma"][...] = [0.5, 1.5, -1.0, 2.0]
        return m
    check_contract(factory, lambda rng: (rng.standard_normal((3, 4)),),
                   bad=[((np.ones((3, 5)),), ValueError, "normalized_shape: expected 4, got 5")])
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(4, eps=0)


# ---------------------------------------------------------------- Dropout
def test_dropout_train_and_eval(rng, dtype):
    d = Dropout(0.3, dtype=dtype, rng=rng)
    x = rng.standard_normal((200, 50)) + 5
    y = d(x)
    assert y.dtype == dtype
    kept = y != 0
    assert 0.65 < kept.mean() < 0.75
    np.testing.assert_allclose(y[kept], (x / 0.7).astype(dtype)[kept], rtol=1e-6)
    g = rng.standard_normal(x.shape)
    np.testing.assert_allclose(d.backward(g), np.where(kept, g / 0.7, 0), rtol=1e-6)
    d.eval()
    np.testing.assert_array_equal(d(x), x.astype(dtype))
    with pytest.raises(RuntimeError, match="eval"):        # eval forwards keep no cache
        d.backward(g)
    d = Dropout(0.0, dtype=dtype).train()                   # p = 0: the identity
    np.testing.assert_array_equal(d(x), x.astype(dtype))
    np.testing.assert_array_equal(d.backward(g), g.astype(dtype))


def test_dropout_gradcheck_fixed_mask(rng):
    d = Dropout(0.5, dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 4))
    y = d(x)
    mask = (y != 0) / 0.5
    np.testing.assert_allclose(d.backward(np.ones_like(x)), mask)
    assert gradcheck(Dropout(0.0, dtype=np.float64), (x,)).ok    # p = 0: the identity


def test_dropout_contract():
    check_contract(lambda dt: Dropout(0.0, dtype=dt, rng=3),
                   lambda rng: (rng.standard_normal((2, 3)),))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        Dropout(1.0)


# ------------------------------------------------------------- Sequential
def _mlp(dtype, rng=0):
    return Sequential(Linear(4, 6, dtype=dtype, rng=rng), LayerNorm(6, dtype=dtype),
                      Dropout(0.0, dtype=dtype), Linear(6, 2, dtype=dtype, rng=rng + 1))


def test_sequential_names_and_gradcheck(rng):
    net = _mlp(np.float64, int(rng.integers(1000)))
    assert list(net.parameters()) == ["0.W", "0.b", "1.gamma", "1.beta", "3.W", "3.b"]
    assert set(net.gradients()) == set(net.parameters())
    net[1].params["gamma"][...] = rng.standard_normal(6)
    assert gradcheck(net, (rng.standard_normal((3, 4)),)).ok


@needs_torch
def test_sequential_matches_torch(rng):
    net = _mlp(np.float64)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6),
                              torch.nn.Linear(6, 2)).double()
    with torch.no_grad():
        ref[0].weight.copy_(torch.tensor(net[0].params["W"].T))
        ref[0].bias.copy_(torch.tensor(net[0].params["b"]))
        ref[2].weight.copy_(torch.tensor(net[3].params["W"].T))
        ref[2].bias.copy_(torch.tensor(net[3].params["b"]))
    x = rng.standard_normal((5, 4))
    g = rng.standard_normal((5, 2))
    xt = torch.tensor(x, requires_grad=True)
    ref(xt).backward(torch.tensor(g))
    np.testing.assert_allclose(net(x), ref(torch.tensor(x)).detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(net.backward(g), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(net.gradients()["0.W"],
                               ref[0].weight.grad.numpy().T, rtol=1e-10, atol=1e-12)


def test_sequential_contract_and_dtype_mismatch():
    check_contract(_mlp, lambda rng: (rng.standard_normal((3, 4)),))
    with pytest.raises(TypeError, match=r"modules\[1\] must have dtype float32"):
        Sequential(Linear(2, 2), Linear(2, 2, dtype=np.float64))
    with pytest.raises(TypeError, match="Modules"):
        Sequential(Linear(2, 2), "relu")


def test_sequential_train_eval_propagates():
    net = Sequential(Linear(2, 2), Dropout(0.5))
    net.eval()
    assert not net[1].training
    net.train()
    assert net[1].training


# ------------------------------------------------------------ activations
ACTS = [(ReLU, {}, ("ReLU",)), (Tanh, {}, ("Tanh",)),
        (GELU, {}, ("GELU",)), (GELU, {"approximate": "tanh"}, ("GELU", "tanh"))]
ACT_IDS = ["relu", "tanh", "gelu", "gelu_tanh"]


@needs_torch
@pytest.mark.parametrize("cls, kw, ref", ACTS, ids=ACT_IDS)
def test_activation_torch_parity(rng, dtype, cls, kw, ref):
    x = 2 * rng.standard_normal((3, 7))
    g = rng.standard_normal((3, 7))
    m = cls(**kw, dtype=dtype)
    xt = _t(x, dtype, grad=True)
    yt = getattr(torch.nn, ref[0])(*ref[1:])(xt)
    yt.backward(_t(g, dtype))
    np.testing.assert_allclose(m(x), yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(m.backward(g), xt.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("cls, kw, ref", ACTS, ids=ACT_IDS)
def test_activation_gradcheck_contract(rng, cls, kw, ref):
    x = 2 * rng.standard_normal((3, 7))
    assert gradcheck(cls(**kw, dtype=np.float64), (x,)).ok
    check_contract(lambda dt: cls(**kw, dtype=dt), lambda rng: (rng.standard_normal((2, 5)),))
