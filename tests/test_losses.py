"""Cross-entropy and MSE: torch parity (values and gradients), gradcheck, contract, errors."""
import numpy as np
import pytest

from nn_core import gradcheck
from nn_core.losses import CrossEntropyLoss, MSELoss, cross_entropy, mse_loss
from tests.contract import check_contract

try:
    import torch
except ImportError:         # only the torch-parity tests need it; the rest run without
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (parity test)")
F = torch.nn.functional if torch else None

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-13)}
TDT = {np.float32: torch.float32, np.float64: torch.float64} if torch else {}


def _targets(rng, shape, C, ignore=None, frac=0.3):
    t = rng.integers(0, C, size=shape)
    if ignore is not None:
        t[rng.random(shape) < frac] = ignore
        t.reshape(-1)[0] = 1                    # at least one kept target
    return t


@needs_torch
@pytest.mark.parametrize("shape", [(7,), (3, 5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_cross_entropy_torch_parity(rng, dtype, shape, reduction, ignore_index):
    C = 6
    z = 3 * rng.standard_normal(shape + (C,))
    t = _targets(rng, shape, C, ignore=ignore_index)
    loss = CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction, dtype=dtype)
    out = loss(z, t)
    g = rng.standard_normal(out.shape) if reduction == "none" else None
    gz, gt = loss.backward(g)
    assert gt is None and gz.dtype == dtype and out.dtype == dtype

    zt = torch.tensor(z.astype(dtype), requires_grad=True)
    # torch wants classes on dim 1: [N, C, d1...]
    ref = F.cross_entropy(torch.movedim(zt, -1, 1), torch.tensor(t), ignore_index=ignore_index,
                          reduction=reduction)
    ref.backward(torch.tensor(g.astype(dtype)) if g is not None else None)
    np.testing.assert_allclose(out, ref.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(gz, zt.grad.numpy(), **TOL[dtype])


def test_cross_entropy_large_logits_stable(dtype):
    z = np.array([[1000.0, 0.0, -1000.0], [-500.0, 500.0, 0.0]])
    loss = CrossEntropyLoss(dtype=dtype)
    out = loss(z, np.array([0, 0]))
    assert np.isfinite(out) and abs(float(out) - 500.0) < 1e-3
    gz, _ = loss.backward()
    assert np.all(np.isfinite(gz))


def test_cross_entropy_all_ignored_is_zero_not_nan():
    loss = CrossEntropyLoss(ignore_index=0, dtype=np.float64)
    assert float(loss(np.ones((2, 3)), np.array([0, 0]))) == 0.0
    gz, _ = loss.backward()
    assert not gz.any()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradcheck(rng, reduction):
    loss = CrossEntropyLoss(ignore_index=2, reduction=reduction, dtype=np.float64)
    t = _targets(rng, (2, 3), 4, ignore=2)
    assert gradcheck(loss, (rng.standard_normal((2, 3, 4)), t)).ok


def test_cross_entropy_contract_and_errors():
    check_contract(lambda dt: CrossEntropyLoss(ignore_index=0, dtype=dt),
                   lambda rng: (rng.standard_normal((2, 3, 5)), _targets(rng, (2, 3), 5, 0)),
                   bad=[((np.ones((2, 5)), np.array([1, 5])), ValueError, r"\[0, 5\).*got 5"),
                        ((np.ones((2, 5)), np.array([1, 2, 3])), ValueError,
                         r"logits.shape\[:-1\] = \(2,\), got \(3,\)"),
                        ((np.ones((2, 5)), np.array([1.0, 2.0])), TypeError, "integer"),
                        ((np.ones((2, 5), complex), np.array([1, 2])), TypeError, "real")])
    loss = CrossEntropyLoss()
    loss(np.ones((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"grad_output must have the loss's shape \(\)"):
        loss.backward(np.ones(2))
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")


@needs_torch
def test_functional_cross_entropy(rng):
    z = rng.standard_normal((4, 3)).astype(np.float32)
    t = rng.integers(0, 3, 4)
    out = cross_entropy(z, t)
    assert out.dtype == np.float32
    ref = F.cross_entropy(torch.tensor(z), torch.tensor(t))
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-6)


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_torch_parity(rng, dtype, reduction):
    y = rng.standard_normal((4, 3, 2))
    t = rng.standard_normal((4, 3, 2))
    loss = MSELoss(reduction=reduction, dtype=dtype)
    out = loss(y, t)
    g = rng.standard_normal(out.shape) if reduction == "none" else None
    gy, gt = loss.backward(g)
    yt = torch.tensor(y.astype(dtype), requires_grad=True)
    tt = torch.tensor(t.astype(dtype), requires_grad=True)
    ref = F.mse_loss(yt, tt, reduction=reduction)
    ref.backward(torch.tensor(g.astype(dtype)) if g is not None else None)
    np.testing.assert_allclose(out, ref.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(gy, yt.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(gt, tt.grad.numpy(), **TOL[dtype])


def test_mse_gradcheck_contract(rng):
    assert gradcheck(MSELoss(dtype=np.float64),
                     (rng.standard_normal((3, 2)), rng.standard_normal((3, 2)))).ok
    check_contract(lambda dt: MSELoss(dtype=dt),
                   lambda rng: (rng.standard_normal((3, 4)), rng.standard_normal((3, 4))),
                   bad=[((np.ones((3, 4)), np.ones((4, 3))), ValueError,
                         r"prediction's shape \(3, 4\), got \(4, 3\)")])
    assert float(mse_loss(np.array([1.0, 3.0]), np.array([0.0, 0.0]))) == 5.0
