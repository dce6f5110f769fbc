"""Optimizers vs torch.optim step by step (float64, same parameters and gradients)."""
import math

import numpy as np
import pytest

from nn_core.layers import Linear, Sequential
from nn_core.optim import SGD, Adam, AdamW, WarmupCosine, clip_grad_norm, warmup_cosine

try:
    import torch
except ImportError:         # only the torch-parity tests need it; the rest run without
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (parity test)")

CASES = [
    (SGD, "SGD", dict(lr=0.1)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    (Adam, "Adam", dict(lr=0.01)),
    (Adam, "Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    (AdamW, "AdamW", dict(lr=0.01)),
    (AdamW, "AdamW", dict(lr=0.03, betas=(0.5, 0.9), weight_decay=0.2)),
]


def _net(dtype, seed):
    return Sequential(Linear(3, 4, dtype=dtype, rng=seed), Linear(4, 2, dtype=dtype, rng=seed + 1))


@needs_torch
@pytest.mark.parametrize("ours, theirs, kw", CASES, ids=lambda v: getattr(v, "__name__", "") if callable(v) else "")
def test_matches_torch_step_by_step(rng, ours, theirs, kw):
    net = _net(np.float64, int(rng.integers(1 << 30)))
    params = net.parameters()
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = ours(net, **kw)
    topt = getattr(torch.optim, theirs)(list(tparams.values()), **kw)
    for step in range(6):
        for k in params:                      # the same fresh gradients for both
            g = rng.standard_normal(params[k].shape)
            net.gradients()[k][...] = g
            tparams[k].grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
        for k in params:
            np.testing.assert_allclose(params[k], tparams[k].detach().numpy(),
                                       rtol=1e-12, atol=1e-14, err_msg=f"{k} step {step}")


def test_float32_updates_stay_float32(rng):
    net = _net(np.float32, 0)
    for cls in (SGD, Adam, AdamW):
        opt = cls(net, lr=0.01, weight_decay=0.1)
        for g in net.gradients().values():
            g[...] = rng.standard_normal(g.shape)
        opt.step()
        assert all(p.dtype == np.float32 for p in net.parameters().values())
        assert all(all(b.dtype == np.float32 for b in s.values()) for s in opt.state.values())


def test_updates_live_arrays_and_zero_grad(rng):
    net = _net(np.float64, 1)
    W = net[0].params["W"]
    before = W.copy()
    opt = SGD(net, lr=0.1)
    net[0].grads["W"][...] = 1.0
    opt.step()
    assert net[0].params["W"] is W
    np.testing.assert_allclose(W, before - 0.1)
    opt.zero_grad()
    assert not any(g.any() for g in net.gradients().values())


def test_params_grads_pair_and_errors():
    p = {"w": np.ones(3)}
    g = {"w": np.full(3, 2.0)}
    SGD((p, g), lr=0.5).step()
    np.testing.assert_allclose(p["w"], 0.0)
    with pytest.raises(ValueError, match="same keys"):
        SGD(({"w": np.ones(3)}, {"v": np.ones(3)}))
    with pytest.raises(TypeError, match="Module or a"):
        SGD([np.ones(3)])
    with pytest.raises(ValueError, match="nesterov"):
        SGD((p, g), momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        Adam((p, g), lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        Adam((p, g), betas=(0.9, 1.0))


def test_optimizer_state_dict_resumes_identically(rng):
    net_a, net_b = _net(np.float64, 3), _net(np.float64, 3)
    opt_a = Adam(net_a, lr=0.01)
    grads = [{k: rng.standard_normal(v.shape) for k, v in net_a.parameters().items()}
             for _ in range(4)]

    def step(net, opt, gs):
        for k, g in gs.items():
            net.gradients()[k][...] = g
        opt.step()

    for gs in grads[:2]:
        step(net_a, opt_a, gs)
    net_b.load_state_dict(net_a.state_dict())
    opt_b = Adam(net_b, lr=0.5)
    opt_b.load_state_dict(opt_a.state_dict())
    for gs in grads[2:]:
        step(net_a, opt_a, gs)
        step(net_b, opt_b, gs)
    for k, v in net_a.parameters().items():
        np.testing.assert_array_equal(v, net_b.parameters()[k])


@needs_torch
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(rng, max_norm):
    net = _net(np.float64, 2)
    tgrads = []
    for g in net.gradients().values():
        g[...] = rng.standard_normal(g.shape)
        tgrads.append(torch.tensor(g.copy()))
    tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in tgrads]
    for p, g in zip(tparams, tgrads):
        p.grad = g
    total = clip_grad_norm(net, max_norm)
    ref = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
    assert total == pytest.approx(float(ref), rel=1e-12)
    for g, p in zip(net.gradients().values(), tparams):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12)
    after = math.sqrt(sum(float((g ** 2).sum()) for g in net.gradients().values()))
    assert after <= max_norm * (1 + 1e-9)


def test_clip_grad_norm_inputs():
    grads = [np.full(4, 3.0), np.full(1, 4.0)]     # norm sqrt(36 + 16)
    assert clip_grad_norm(grads, 1.0) == pytest.approx(math.sqrt(52))
    d = {"a": np.array([3.0, 4.0])}
    assert clip_grad_norm(d, 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(d["a"], [3.0, 4.0])
    bad = [np.array([np.inf, 1.0])]
    assert clip_grad_norm(bad, 1.0) == math.inf


def test_warmup_cosine_shape():
    lrs = [warmup_cosine(s, 1.0, 10, 110, min_lr=0.1) for s in range(130)]
    np.testing.assert_allclose(lrs[:10], np.arange(1, 11) / 10)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@needs_torch
def test_warmup_cosine_matches_torch_cosine_after_warmup():
    # with warmup 0 our schedule is CosineAnnealingLR(T_max=total, eta_min)
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([p], lr=0.3)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=20, eta_min=0.01)
    opt = SGD(({"p": np.zeros(1)}, {"p": np.zeros(1)}), lr=0.3)
    sched = WarmupCosine(opt, warmup_steps=0, total_steps=20, min_lr=0.01)
    for _ in range(20):
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-9)
        topt.step()
        tsched.step()
        sched.step()


def test_schedule_state_dict_resumes_the_rate():
    model = Linear(2, 2, rng=0)
    a = WarmupCosine(AdamW(model, lr=0.1), warmup_steps=3, total_steps=20, min_lr=0.01)
    for _ in range(7):
        a.step()
    opt = AdamW(model, lr=0.1)
    b = WarmupCosine(opt, warmup_steps=3, total_steps=20, min_lr=0.01)
    b.load_state_dict(a.state_dict())
    assert b.last_step == 7 and opt.lr == a.optimizer.lr
    assert [a.step() for _ in range(5)] == [b.step() for _ in range(5)]
    for bad in ({}, {**a.state_dict(), "last_step": -1}, {**a.state_dict(), "total_steps": 0},
                {**a.state_dict(), "min_lr": float("nan")}, {**a.state_dict(), "x": 1}):
        with pytest.raises(ValueError):
            b.load_state_dict(bad)


def test_optimizer_state_of_the_wrong_shape_is_refused(rng):
    model = Linear(3, 2, rng=0)
    opt = AdamW(model, lr=0.1)
    model.grads["W"][...] = 1
    opt.step()
    state = opt.state_dict()
    state["state"]["W"]["exp_avg"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"'W'/'exp_avg' must have shape \(3, 2\)"):
        AdamW(model, lr=0.1).load_state_dict(state)


def test_schedule_step_counts_are_checked_by_type_then_value():
    model = Linear(2, 2, rng=0)
    with pytest.raises(TypeError, match="warmup_steps must be an int"):
        WarmupCosine(AdamW(model, lr=0.1), warmup_steps=1.5, total_steps=10)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        WarmupCosine(AdamW(model, lr=0.1), warmup_steps=0, total_steps=0)
    sched = WarmupCosine(AdamW(model, lr=0.1), warmup_steps=2, total_steps=10)
    with pytest.raises(TypeError, match="'last_step' must be an int"):
        sched.load_state_dict({**sched.state_dict(), "last_step": 2.0})
