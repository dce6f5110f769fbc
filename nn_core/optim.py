"""Optimizers, gradient clipping and a learning-rate schedule.

Optimizers update a module's live ``parameters()`` in place from its
``gradients()`` (same keys), with PyTorch's update rules so that the same
hyper-parameters give the same trajectories as ``torch.optim``.

Examples
--------
>>> import numpy as np
>>> from nn_core.layers import Linear
>>> from nn_core.losses import MSELoss
>>> model, loss_fn = Linear(3, 1, rng=0), MSELoss()
>>> opt = AdamW(model, lr=1e-2, weight_decay=0.01)
>>> sched = WarmupCosine(opt, warmup_steps=10, total_steps=100)
>>> x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
>>> for step in range(100):
...     opt.zero_grad()
...     loss = loss_fn(model(x), y)
...     _ = model.backward(loss_fn.backward()[0])
...     norm = clip_grad_norm(model, 1.0)
...     opt.step()
...     _ = sched.step()
>>> float(loss) < 0.01
True
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math

import numpy as np

from . import _parallel
from ._kernels import _layers as _kl
from ._validation import check_nonneg_real, check_positive_int
from .module import Module

# a fused update splits over threads from this many elements per thread
_MIN_UPDATE_PER_THREAD = 1 << 16

if TYPE_CHECKING:  # names used in annotations only
    from collections.abc import Mapping

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "warmup_cosine",
           "WarmupCosine"]


def _beta(value, name):
    value = check_nonneg_real(value, name)
    if not value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _params_and_grads(target):
    """``(params, grads)`` dicts from a Module or a ``(params, grads)`` pair."""
    if isinstance(target, Module):
        return target.parameters(), target.gradients()
    if isinstance(target, tuple) and len(target) == 2 and all(isinstance(d, dict) for d in target):
        params, grads = target
    else:
        raise TypeError(
            "optimizer target must be a Module or a (params, grads) pair of dicts, "
            f"got {type(target).__name__}"
        )
    if set(params) != set(grads):
        raise ValueError(
            f"params and grads must have the same keys: only in params "
            f"{sorted(set(params) - set(grads))}, only in grads {sorted(set(grads) - set(params))}"
        )
    for k in params:
        if np.shape(params[k]) != np.shape(grads[k]):
            raise ValueError(f"grads[{k!r}] must have shape {np.shape(params[k])}, "
                             f"got {np.shape(grads[k])}")
    return params, grads


class Optimizer:
    """Base class: holds the live parameter/gradient dicts, ``lr`` and per-parameter state.

    Parameters
    ----------
    target : Module or (dict, dict)
        A module (its ``parameters()``/``gradients()`` are used) or a pair of
        dicts ``(params, grads)`` with the same keys and shapes.
    lr : float
        Learning rate; may be changed between steps (see :class:`WarmupCosine`).
    """

    def __init__(self, target: Module | Mapping[str, np.ndarray], lr: float) -> None:
        self.params, self.grads = _params_and_grads(target)
        self.lr = check_nonneg_real(lr, "lr")
        self.state: dict[str, dict] = {k: {} for k in self.params}
        self.step_count = 0

    def zero_grad(self) -> None:
        """Set every gradient to 0 in place."""
        for g in self.grads.values():
            g[...] = 0

    def step(self) -> None:
        """Apply one update to every parameter (in place): one compiled pass over all of
        them (arrays that are not C-contiguous take the NumPy form of the same rule)."""
        self.step_count += 1
        fused, rest = [], []
        for k, p in self.params.items():
            g = self.grads[k]
            (fused if p.flags.c_contiguous and g.flags.c_contiguous else rest).append(k)
        for dtype in {self.params[k].dtype for k in fused}:
            keys = [k for k in fused if self.params[k].dtype == dtype]
            for k in keys:
                self._init_state(self.params[k], self.state[k])
            params = [self.params[k].reshape(-1) for k in keys]
            grads = [self.grads[k].reshape(-1) for k in keys]
            states = [self.state[k] for k in keys]
            # element-wise: any grouping of the arrays gives the same bits
            _parallel.run_rows(
                lambda a, b: self._fused_update(params[a:b], grads[a:b], states[a:b]),
                _parallel.size_ranges([p.size for p in params], _MIN_UPDATE_PER_THREAD))
        for k in rest:
            p = self.params[k]
            self._update(p, self.grads[k], self.state[k], p.dtype.type)

    def _init_state(self, p, state):
        """Create the per-parameter buffers the fused update needs (shaped like ``p``)."""

    def _fused_update(self, params, grads, states):
        """The update of :meth:`_update` on flat arrays of one dtype, in one kernel call."""
        for p, g, st in zip(params, grads, states):
            self._update(p, g, st, p.dtype.type)

    def _update(self, p, g, state, T):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Copies of the per-parameter buffers plus ``lr`` and ``step_count``."""
        return {"lr": self.lr, "step_count": self.step_count,
                "state": {k: {n: v.copy() for n, v in s.items()} for k, s in self.state.items()}}

    def load_state_dict(self, d) -> None:
        """Restore what :meth:`state_dict` returned (keys must match the parameters)."""
        if set(d["state"]) != set(self.params):
            raise ValueError("optimizer state keys do not match the parameters: missing "
                             f"{sorted(set(self.params) - set(d['state']))}, unexpected "
                             f"{sorted(set(d['state']) - set(self.params))}")
        for k, s in d["state"].items():
            for n, v in s.items():
                if np.shape(v) != self.params[k].shape:
                    raise ValueError(f"optimizer state {k!r}/{n!r} must have shape "
                                     f"{self.params[k].shape}, got {np.shape(v)}")
        self.lr = check_nonneg_real(d["lr"], "lr")
        self.step_count = int(d["step_count"])
        self.state = {k: {n: np.array(v, dtype=self.params[k].dtype) for n, v in s.items()}
                      for k, s in d["state"].items()}


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, Nesterov and L2 weight decay.

    Parameters
    ----------
    target : Module or (dict, dict)
    lr : float
    momentum : float
        ``mu``; 0 disables the velocity buffer.
    dampening : float
    weight_decay : float
        ``lambda``, added to the gradient (L2 penalty).
    nesterov : bool
        Needs ``momentum > 0`` and ``dampening == 0``.

    Notes
    -----
    PyTorch's rule (Sutskever et al., 2013 for the Nesterov form)::

        g = grad + lambda p
        b = g (first step) | mu b + (1 - dampening) g
        g = g + mu b (nesterov) | b
        p = p - lr g
    """

    def __init__(self, target: Module | Mapping[str, np.ndarray], lr: float = 1e-2,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(target, lr)
        self.momentum = check_nonneg_real(momentum, "momentum")
        self.dampening = check_nonneg_real(dampening, "dampening")
        self.weight_decay = check_nonneg_real(weight_decay, "weight_decay")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening == 0, got "
                             f"momentum={self.momentum}, dampening={self.dampening}")

    def _init_state(self, p, state):
        if self.momentum and "momentum_buffer" not in state:
            state["momentum_buffer"] = np.zeros(p.shape, p.dtype)
            state["fresh"] = True

    def _fused_update(self, params, grads, states):
        first = False
        buffers = [None] * len(params)
        if self.momentum:
            first = bool(states[0].pop("fresh", False))
            for st in states[1:]:
                st.pop("fresh", None)
            buffers = [st["momentum_buffer"].reshape(-1) for st in states]
        _kl.sgd(params, grads, buffers, self.lr, self.momentum, self.dampening,
                self.weight_decay, self.nesterov, first)

    def _update(self, p, g, state, T):
        if self.weight_decay:
            g = g + T(self.weight_decay) * p
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, dtype=p.dtype, copy=True)
            else:
                buf *= T(self.momentum)
                buf += T(1 - self.dampening) * g
            g = g + T(self.momentum) * buf if self.nesterov else buf
        p -= T(self.lr) * g


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015) with optional L2 weight decay (added to the gradient).

    Parameters
    ----------
    target : Module or (dict, dict)
    lr : float
    betas : (float, float)
    eps : float
    weight_decay : float
        L2 penalty added to the gradient (use :class:`AdamW` for decoupled decay).

    Notes
    -----
    At step ``t`` (PyTorch's arithmetic)::

        g = grad + lambda p                        (Adam only)
        m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
        p = p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    decoupled = False

    def __init__(self, target: Module | Mapping[str, np.ndarray], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(target, lr)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_beta(betas[0], "betas[0]"), _beta(betas[1], "betas[1]"))
        self.eps = check_nonneg_real(eps, "eps")
        self.weight_decay = check_nonneg_real(weight_decay, "weight_decay")

    def _init_state(self, p, state):
        if not state:
            state["exp_avg"] = np.zeros(p.shape, p.dtype)
            state["exp_avg_sq"] = np.zeros(p.shape, p.dtype)

    def _fused_update(self, params, grads, states):
        _kl.adam(params, grads, [st["exp_avg"].reshape(-1) for st in states],
                 [st["exp_avg_sq"].reshape(-1) for st in states], self.lr, self.betas[0],
                 self.betas[1], self.step_count, self.eps, self.weight_decay, self.decoupled)

    def _update(self, p, g, state, T):
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p *= T(1 - self.lr * self.weight_decay)
            else:
                g = g + T(self.weight_decay) * p
        if not state:
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= T(b1)
        m += T(1 - b1) * g
        v *= T(b2)
        v += T(1 - b2) * (g * g)
        t = self.step_count
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        denom = np.sqrt(v) / T(math.sqrt(bc2))
        denom += T(self.eps)
        p -= T(self.lr / bc1) * (m / denom)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    Same arguments as :class:`Adam` (default ``weight_decay=0.01``, as PyTorch);
    before the Adam update, ``p = p (1 - lr * lambda)``.
    """

    decoupled = True

    def __init__(self, target: Module | Mapping[str, np.ndarray], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(target, lr, betas, eps, weight_decay)


def clip_grad_norm(target: Module | Mapping[str, np.ndarray], max_norm: float,
                   eps: float = 1e-6) -> float:
    r"""Scale gradients in place so that their global L2 norm is at most ``max_norm``.

    Parameters
    ----------
    target : Module, dict of arrays or iterable of arrays
        A module (its ``gradients()``) or the gradient arrays themselves.
    max_norm : float
    eps : float
        As PyTorch: the scale is ``max_norm / (norm + eps)``, applied only when < 1.

    Returns
    -------
    float
        The total norm **before** clipping (``inf``/``nan`` are returned as is and
        the gradients are then left unchanged).
    """
    flat = None
    if isinstance(target, Module):
        grads = list(target.gradients().values())
        flat = target._flat_buffers()
    elif isinstance(target, dict):
        grads = list(target.values())
    else:
        grads = list(target)
    max_norm = check_nonneg_real(max_norm, "max_norm")
    # the norm is summed per array (the same number whether or not they share a buffer),
    # each dot product on one BLAS thread (the same bits at any thread count)
    with _parallel.hold_blas():
        total = math.sqrt(sum(float(np.dot(g.reshape(-1), g.reshape(-1))) for g in grads))
    if flat is not None:
        grads = [flat[1]]                       # one scaling pass
    if not math.isfinite(total):
        return total
    coef = max_norm / (total + eps)
    if coef < 1:
        for g in grads:
            g *= g.dtype.type(coef)
    return total


def warmup_cosine(step, base_lr, warmup_steps, total_steps, min_lr=0.0) -> float:
    r"""Learning rate at 0-based ``step``: linear warmup then cosine decay.

    Notes
    -----
    ::

        lr(s) = base_lr (s + 1) / warmup                          s < warmup
        lr(s) = min_lr + (base_lr - min_lr) (1 + cos(pi q)) / 2    otherwise,
                q = min(1, (s - warmup) / max(1, total - warmup))

    (Loshchilov & Hutter, 2017, SGDR, without restarts; warmup as Goyal et al., 2017.)
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    q = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))


class WarmupCosine:
    """Sets ``optimizer.lr`` from :func:`warmup_cosine`; call :meth:`step` after each update.

    Parameters
    ----------
    optimizer : Optimizer
    warmup_steps, total_steps : int
    min_lr : float
    base_lr : float, optional
        Peak learning rate; defaults to the optimizer's ``lr`` at construction.

    The constructor sets the rate for step 0; ``step()`` advances to the next one.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 min_lr: float = 0.0, base_lr: float | None = None) -> None:
        self.optimizer = optimizer
        self.warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
        self.total_steps = check_positive_int(total_steps, "total_steps")
        self.min_lr = check_nonneg_real(min_lr, "min_lr")
        self.base_lr = optimizer.lr if base_lr is None else check_nonneg_real(base_lr, "base_lr")
        self.last_step = 0
        optimizer.lr = self.get_lr(0)

    def get_lr(self, step) -> float:
        return warmup_cosine(step, self.base_lr, self.warmup_steps, self.total_steps,
                             self.min_lr)

    def step(self) -> float:
        """Advance one step; returns the new learning rate."""
        self.last_step += 1
        self.optimizer.lr = self.get_lr(self.last_step)
        return self.optimizer.lr

    def state_dict(self) -> dict:
        """``last_step`` and the schedule's configuration (plain numbers)."""
        return {"last_step": self.last_step, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_lr": self.min_lr,
                "base_lr": self.base_lr}

    def load_state_dict(self, d) -> None:
        """Restore what :meth:`state_dict` returned and set the optimizer's rate for
        ``last_step`` (as if :meth:`step` had been called that many times)."""
        keys = {"last_step", "warmup_steps", "total_steps", "min_lr", "base_lr"}
        if not isinstance(d, dict) or set(d) != keys:
            raise ValueError(f"schedule state must have the keys {sorted(keys)}, got "
                             f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
        last = check_positive_int(d["last_step"], "schedule state 'last_step'", minimum=0)
        warmup = check_positive_int(d["warmup_steps"], "schedule state 'warmup_steps'",
                                    minimum=0)
        total = check_positive_int(d["total_steps"], "schedule state 'total_steps'")
        self.min_lr = check_nonneg_real(d["min_lr"], "min_lr")
        self.base_lr = check_nonneg_real(d["base_lr"], "base_lr")
        self.warmup_steps, self.total_steps, self.last_step = warmup, total, last
        self.optimizer.lr = self.get_lr(self.last_step)
