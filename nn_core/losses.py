"""Loss functions with hand-written backward passes.

A loss is a :class:`~nn_core.Module` without parameters: ``forward(prediction,
target)`` returns the loss (a 0-d array in the module dtype with
``reduction="mean"``/``"sum"``), ``backward(grad_output=1)`` returns
``(grad_prediction, grad_target)``.

Examples
--------
>>> import numpy as np
>>> ce = CrossEntropyLoss(ignore_index=0, dtype=np.float64)
>>> logits = np.zeros((2, 3, 5))                 # (B, T, C)
>>> targets = np.array([[1, 2, 0], [3, 0, 0]])   # 0 = padding, ignored
>>> float(ce(logits, targets)).__round__(4)       # log(5)
1.6094
>>> grad_logits, _ = ce.backward()
>>> grad_logits.shape
(2, 3, 5)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from ._kernels import _layers as _kl
from ._validation import as_float_array
from .module import Module

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, DTypeLike, RNGLike

__all__ = ["CrossEntropyLoss", "MSELoss", "cross_entropy", "mse_loss"]

_REDUCTIONS = ("mean", "sum", "none")


@dataclass
class _CECache:
    grad: np.ndarray        # [N, C]: softmax(logits) - onehot(targets), 0 on ignored rows
    keep: np.ndarray        # bool [...]: target not ignored
    count: int              # number of kept targets


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _grad_scale(grad_output, reduction, shape, dtype):
    """Upstream gradient as an array broadcastable to the per-element loss ``shape``."""
    if grad_output is None:
        grad_output = 1.0
    g = as_float_array(grad_output, "grad_output", dtype)
    expected = shape if reduction == "none" else ()
    if g.shape != expected:
        raise ValueError(
            f"grad_output must have the loss's shape {expected}, got {tuple(g.shape)}"
        )
    return g


class CrossEntropyLoss(Module):
    r"""Softmax cross-entropy over class-last logits with integer targets.

    Parameters
    ----------
    ignore_index : int
        Target value that contributes neither loss nor gradient (padding).
    reduction : {"mean", "sum", "none"}
        ``"mean"`` averages over the non-ignored targets (PyTorch's rule).
    dtype : {np.float32, np.float64}, keyword-only
    rng : unused, keyword-only

    Notes
    -----
    ``logits [..., C]`` (e.g. ``[N, C]`` or ``[B, T, C]``; classes are the **last**
    axis, unlike ``torch.nn.functional.cross_entropy`` which wants ``[N, C, d1...]``),
    ``targets [...]`` integers in ``[0, C)`` or ``ignore_index``.  With ``w_n = 1``
    for kept targets, 0 for ignored ones, and ``M = sum_n w_n``::

        lse_n  = max_c z_nc + log sum_c exp(z_nc - max_c z_nc)
        loss   = (1/M) sum_n w_n (lse_n - z_{n, y_n})          (mean)

    Backward, with ``p = softmax(z)``::

        dz_nc = g * w_n / M * (p_nc - [c == y_n])

    When every target is ignored, ``"mean"`` gives loss 0 and gradient 0
    (PyTorch returns NaN).  ``backward`` returns ``(grad_logits, None)``.
    """

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", *,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.ignore_index = int(ignore_index)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: ArrayLike, targets: ArrayLike) -> np.ndarray:
        """Loss of ``logits [..., C]`` against integer ``targets [...]``."""
        z = as_float_array(logits, "logits", self.dtype, min_ndim=1)
        t = np.asarray(targets)
        if t.dtype.kind not in "iu":
            raise TypeError(f"targets must be an integer array, got dtype {t.dtype}")
        if t.shape != z.shape[:-1]:
            raise ValueError(
                f"targets must have shape logits.shape[:-1] = {z.shape[:-1]}, got {t.shape}"
            )
        C = z.shape[-1]
        keep = t != self.ignore_index
        bad = keep & ((t < 0) | (t >= C))
        if bad.any():
            raise ValueError(
                f"targets must be in [0, {C}) or ignore_index={self.ignore_index}, "
                f"got {int(t[bad].reshape(-1)[0])}"
            )
        z2 = np.ascontiguousarray(z).reshape(-1, C)
        per = np.empty(z2.shape[0], self.dtype)
        grad = np.empty_like(z2)                   # softmax - onehot, 0 on ignored rows
        count = _kl.cross_entropy(z2, np.ascontiguousarray(t, dtype=np.int64).reshape(-1),
                                  per, grad, self.ignore_index, 1.0)
        per = per.reshape(t.shape)
        self._save_cache(_CECache(grad, keep, count))
        if self.reduction == "none":
            return per
        total = per.sum(dtype=self.dtype)
        if self.reduction == "sum":
            return np.asarray(total, dtype=self.dtype)
        return np.asarray(total / self.dtype.type(max(count, 1)), dtype=self.dtype)

    def backward(self, grad_output: ArrayLike | None = None) -> tuple[np.ndarray, None]:
        """Return ``(grad_logits [..., C], None)``; ``grad_output`` defaults to 1."""
        c = self._peek_cache()
        g = _grad_scale(grad_output, self.reduction, c.keep.shape, self.dtype)
        self._pop_cache()
        grad = c.grad                              # consumed: scaled in place
        if self.reduction == "none":
            grad *= g.reshape(-1, 1)
        else:
            w = g / self.dtype.type(max(c.count, 1)) if self.reduction == "mean" else g
            grad *= w
        return grad.reshape(c.keep.shape + (grad.shape[-1],)), None


class MSELoss(Module):
    r"""Mean squared error ``mean((prediction - target)^2)``.

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}
    dtype : {np.float32, np.float64}, keyword-only
    rng : unused, keyword-only

    Notes
    -----
    Forward over ``N`` elements: ``loss = (1/N) sum (y - t)^2``.
    Backward: ``dy = g * 2 (y - t) / N`` and ``dt = -dy``; ``backward`` returns
    ``(grad_prediction, grad_target)``.
    """

    def __init__(self, reduction: str = "mean", *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.reduction = _check_reduction(reduction)

    def forward(self, prediction: ArrayLike, target: ArrayLike) -> np.ndarray:
        """Loss of ``prediction [...]`` against ``target`` of the same shape."""
        y = as_float_array(prediction, "prediction", self.dtype)
        t = as_float_array(target, "target", self.dtype)
        if t.shape != y.shape:
            raise ValueError(
                f"target must have the prediction's shape {y.shape}, got {t.shape}"
            )
        d = y - t
        self._save_cache(d)                     # prediction - target
        per = d * d
        if self.reduction == "none":
            return per
        total = per.sum(dtype=self.dtype)
        if self.reduction == "sum":
            return np.asarray(total, dtype=self.dtype)
        return np.asarray(total / self.dtype.type(max(d.size, 1)), dtype=self.dtype)

    def backward(self, grad_output: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(grad_prediction, grad_target)``; ``grad_output`` defaults to 1."""
        d = self._peek_cache()
        g = _grad_scale(grad_output, self.reduction, d.shape, self.dtype)
        self._pop_cache()
        grad = self.dtype.type(2) * d * g
        if self.reduction == "mean":
            grad /= self.dtype.type(max(d.size, 1))
        return grad, -grad


def _dtype_of(x):
    return np.float32 if np.asarray(x).dtype == np.float32 else np.float64


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Functional :class:`CrossEntropyLoss` (float32 stays float32, else float64); loss only."""
    return CrossEntropyLoss(ignore_index, reduction, dtype=_dtype_of(logits)).forward(
        logits, targets)


def mse_loss(prediction, target, reduction="mean"):
    """Functional :class:`MSELoss` (float32 stays float32, else float64); loss only."""
    return MSELoss(reduction, dtype=_dtype_of(prediction)).forward(prediction, target)
