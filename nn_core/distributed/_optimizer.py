"""The distributed optimizer: one in-place all-reduce of the flat gradient buffer per
step (weighted by each rank's number of loss terms), then clipping and the update."""
from __future__ import annotations

import time


from ..module import Module
from .._validation import check_nonneg_real
from ..optim import Optimizer, clip_grad_norm
from ._collectives import all_reduce, allreduce_scalar, broadcast_parameters
from ._world import world


class DistributedOptimizer:
    """Wrap an :mod:`nn_core.optim` optimizer: all-reduce the gradients in one call,
    clip, update.

    Parameters
    ----------
    optimizer : nn_core.optim.Optimizer
        Built on ``module`` (or on a ``(params, grads)`` pair with its parameter
        names); its arrays are re-pointed to the module's flat buffers if it was
        built before they existed.
    module : Module
        The model.  Its parameters and gradients are moved into one contiguous buffer
        each (:meth:`~nn_core.Module.flat_parameters`), so the gradients are views of
        the buffer that is all-reduced: nothing is copied.
    clip : float, optional
        Global gradient-norm limit, applied to the reduced gradient
        (:func:`~nn_core.optim.clip_grad_norm`); ``None`` for none.
    average : bool
        ``True`` (default): the reduced gradient is the average of the ranks'
        (weighted, see :meth:`step`).  ``False``: their plain sum (for losses with
        ``reduction="sum"``).
    broadcast : bool
        Copy rank 0's parameters to every rank first (as DDP does), so ranks start
        equal even if their seeds differ.

    Notes
    -----
    A step with weights ``w_r`` (default 1) computes, on every rank,
    ``g = sum_r (w_r / W) g_r`` with ``W = sum_r w_r``: each rank scales its
    gradient by ``w_r / W``, then one ``Allreduce(SUM)`` runs in place over the flat
    gradient buffer.  When ``g_r`` is the mean over the ``w_r`` terms of the local
    loss (``CrossEntropyLoss`` averages over the non-ignored targets), ``g`` is the
    mean over all ``W`` terms of the global batch: exactly the gradient of one
    process on the whole batch.  Plain averaging (``w_r = 1``) differs whenever the
    ranks' counts differ.  ``W`` needs one scalar all-reduce more, unless
    ``total_weight`` is passed (every rank that sees the whole global batch knows it).

    The step's communication time accumulates in :attr:`comm_seconds`.
    """

    def __init__(self, optimizer, module, clip=None, average=True, broadcast=True):
        if not isinstance(optimizer, Optimizer):
            raise TypeError("optimizer must be an nn_core.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if not isinstance(module, Module):
            raise TypeError(f"module must be an nn_core Module, got {type(module).__name__}")
        self.optimizer = optimizer
        self.module = module
        self.clip = None if clip is None else check_nonneg_real(clip, "clip")
        self.average = bool(average)
        self.world = world()
        self.flat_params, self.flat_grads = module.flat_parameters()
        params, grads = module.parameters(), module.gradients()
        unknown = sorted(set(optimizer.params) - set(params))
        if unknown:
            raise ValueError(f"the optimizer's parameters {unknown} are not parameters of "
                             f"the module {type(module).__name__}")
        for k in optimizer.params:          # built before flattening: follow the move
            optimizer.params[k] = params[k]
            optimizer.grads[k] = grads[k]
        # (dict, name, array): a replaced parameter would leave the optimizer behind
        self._slots = [(d, k, d[k]) for m in module.modules()
                       for d in (m.params, m.grads) for k in d]
        self.comm_seconds = 0.0
        self.steps = 0
        if broadcast:
            broadcast_parameters(module)

    # the schedule and the trainer see the wrapped optimizer's rate and state
    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, value):
        self.optimizer.lr = value

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, d) -> None:
        self.optimizer.load_state_dict(d)

    def zero_grad(self) -> None:
        """Set every gradient to 0 (one pass over the flat buffer)."""
        self.flat_grads.fill(0)

    def _check_moved(self):
        if any(d.get(k) is not a for d, k, a in self._slots):
            raise RuntimeError(
                "the module's parameters were replaced after the DistributedOptimizer was "
                "built, so the optimizer would update stale arrays; build the optimizer "
                "and the DistributedOptimizer again")

    def allreduce_gradients(self, weight=None, total_weight=None) -> None:
        """Make every rank's gradient the (weighted) average or sum over the ranks
        (see the class Notes); no update.  :meth:`step` calls it."""
        w = self.world
        g = self.flat_grads
        if not self.average:
            if weight is not None or total_weight is not None:
                raise ValueError("weight and total_weight apply to average=True only")
            scale = 1.0
        elif weight is None:
            if total_weight is not None:
                raise ValueError("total_weight needs weight")
            scale = 1.0 / w.size
        else:
            weight = check_nonneg_real(weight, "weight")
            if total_weight is None and w.size == 1:
                total_weight = weight
            elif total_weight is None:
                t0 = time.perf_counter()
                total_weight = allreduce_scalar(weight)
                self.comm_seconds += time.perf_counter() - t0
            total_weight = check_nonneg_real(total_weight, "total_weight")
            if weight > total_weight:
                raise ValueError(f"weight ({weight}) exceeds total_weight ({total_weight})")
            # an all-ignored global batch has a zero gradient (as CrossEntropyLoss's)
            scale = weight / total_weight if total_weight > 0 else 0.0
        if scale != 1.0:
            g *= g.dtype.type(scale)
        if w.size > 1:
            t0 = time.perf_counter()
            all_reduce(g)                       # the one flat all-reduce of the step
            self.comm_seconds += time.perf_counter() - t0

    def step(self, weight=None, total_weight=None):
        """All-reduce the gradients, clip them, and update the parameters.

        Parameters
        ----------
        weight : int or float, optional
            How many terms this rank's loss averaged over (non-ignored tokens for
            ``CrossEntropyLoss``, samples for a per-sample mean).  ``None``: every rank
            counts alike (plain average, as Horovod and DDP).  Only the ratios between
            ranks matter: the sample count does when every sample has as many terms.
        total_weight : int or float, optional
            The sum of ``weight`` over the ranks, if known (saves one scalar
            all-reduce).

        Returns
        -------
        float or None
            The global gradient norm before clipping (``None`` without ``clip``).
        """
        self._check_moved()
        self.allreduce_gradients(weight, total_weight)
        norm = None
        if self.clip is not None:
            norm = clip_grad_norm(self.module, self.clip)   # the module's norm, one scaling pass
        self.optimizer.step()
        self.steps += 1
        return norm

