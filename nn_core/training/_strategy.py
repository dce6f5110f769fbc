"""How many processes a :class:`~nn_core.training.Trainer` run spans: one
(:class:`SingleProcess`) or several over MPI (:class:`DataParallel`).  The trainer asks
its strategy, never the MPI world, to reduce a step's statistics, all-reduce the
gradients, shard a batch and run work on rank 0 alone."""
from __future__ import annotations

import hashlib
import signal

import numpy as np

from .. import distributed as _dist
from ._run import rng_states, set_rng_states

__all__ = ["SingleProcess", "DataParallel", "strategy"]


class SingleProcess:
    """The strategy of a run in one process: every call is a pass-through."""

    size = 1
    rank = 0
    is_root = True

    def start(self, model, optimizer):
        """Nothing to set up."""

    def reduce_step(self, stats, signals):
        """``(stats, weight, total weight)`` of the step (one process: its own)."""
        return stats, None, None

    def allreduce_gradients(self, weight, total_weight):
        """Nothing to reduce."""

    def shard(self, batches):
        return batches

    def on_root(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def barrier(self):
        """Nothing to wait for."""


class DataParallel(SingleProcess):
    """Data-parallel training over the MPI ``world`` (size > 1): every rank draws the
    same global batches and trains on its shard; the gradients are summed in one
    all-reduce per step, weighted by each rank's number of loss terms."""

    def __init__(self, world):
        self.world = world
        self.size, self.rank = world.size, world.rank
        self.is_root = world.rank == 0
        self._dopt = None

    def start(self, model, optimizer):
        """After any restore: one gradient buffer all-reduced per step, rank 0's
        parameters on every rank, and each other rank's generators (dropout) moved to
        a stream of its own."""
        self._dopt = _dist.DistributedOptimizer(optimizer, model, clip=None, broadcast=True)
        if self.rank:
            set_rng_states(model, {path: _rank_stream(self.rank, st)
                                   for path, st in rng_states(model).items()})

    def reduce_step(self, stats, signals):
        """One all-reduce of the step's statistics over the ranks (and of a pending
        stop signal, so every rank stops at the same step): the global batch's
        statistics, its loss weighted by each rank's number of loss terms; with this
        rank's weight and the total."""
        weight = stats.get("weight", stats["samples"])
        local = {"loss": float(stats["loss"]) * weight, "weight": float(weight),
                 "samples": int(stats["samples"]), "stop": int(bool(signals.pending))}
        for k in ("correct", "count"):
            if k in stats:
                local[k] = int(stats[k])
        tot = _dist.all_sum(local)
        if tot["stop"] and not signals.requested:
            signals.requested = signals.pending or signal.SIGINT
        out = {k: v for k, v in tot.items() if k not in ("loss", "weight", "stop")}
        out["loss"] = tot["loss"] / tot["weight"] if tot["weight"] > 0 else 0.0
        return out, float(weight), tot["weight"]

    def allreduce_gradients(self, weight, total_weight):
        self._dopt.allreduce_gradients(weight, total_weight)

    def shard(self, batches):
        """This rank's shard of each global batch."""
        return (_dist.shard(b) for b in batches)

    def on_root(self, fn, *args, **kwargs):
        """``fn(...)`` on rank 0 only, its result (or its exception) on every rank."""
        result = None
        if self.is_root:
            try:
                result = ("ok", fn(*args, **kwargs))
            except Exception as exc:               # re-raised on every rank below
                result = ("error", exc)
        kind, value = _dist.broadcast_object(result)
        if kind == "error":
            raise value
        return value

    def barrier(self):
        _dist.barrier()


def strategy():
    """:class:`DataParallel` after :func:`nn_core.distributed.init` in a job of several
    processes, else :class:`SingleProcess`."""
    w = _dist.world() if _dist.is_initialized() else None
    return DataParallel(w) if w is not None and w.size > 1 else SingleProcess()


def _rank_stream(rank, state):
    """A bit-generator state for ``rank`` derived from ``state`` (a module's generator
    on rank 0): the same on every run, different per rank."""
    digest = hashlib.sha256(f"{rank}:{sorted(state.items())!r}".encode()).digest()
    seq = np.random.SeedSequence(int.from_bytes(digest[:16], "little"))
    kind = getattr(np.random, state.get("bit_generator", "PCG64"), np.random.PCG64)
    return kind(seq).state
