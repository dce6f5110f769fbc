"""Data-parallel training over MPI for :class:`~nn_core.training.Trainer`: the
per-step reduction of the statistics, work done on rank 0 alone, and the setup."""
from __future__ import annotations

import hashlib
import signal

import numpy as np

from .. import distributed as _dist
from ._run import rng_states, set_rng_states

__all__ = ["reduce_step", "on_root", "start"]


def reduce_step(trainer, stats):
    """One all-reduce of the step's statistics over the ranks (and of a pending
    stop signal, so every rank stops at the same step): the global batch's
    statistics, its loss weighted by each rank's number of loss terms."""
    weight = stats.get("weight", stats["samples"])
    sig = trainer._signals
    local = {"loss": float(stats["loss"]) * weight, "weight": float(weight),
             "samples": int(stats["samples"]), "stop": int(bool(sig.pending))}
    for k in ("correct", "count"):
        if k in stats:
            local[k] = int(stats[k])
    tot = _dist.all_sum(local)
    if tot["stop"] and not sig.requested:
        sig.requested = sig.pending or signal.SIGINT
    out = {k: v for k, v in tot.items() if k not in ("loss", "weight", "stop")}
    out["loss"] = tot["loss"] / tot["weight"] if tot["weight"] > 0 else 0.0
    out["_weight"], out["_total_weight"] = float(weight), tot["weight"]
    return out


def on_root(trainer, fn, *args, **kwargs):
    """``fn(...)`` on rank 0 only, its result (or its exception) on every rank."""
    if trainer._world is None:
        return fn(*args, **kwargs)
    result = None
    if trainer._world.rank == 0:
        try:
            result = ("ok", fn(*args, **kwargs))
        except Exception as exc:               # re-raised on every rank below
            result = ("error", exc)
    kind, value = _dist.broadcast_object(result)
    if kind == "error":
        raise value
    return value


def start(trainer):
    """Data-parallel setup after any restore: one gradient buffer all-reduced per
    step, rank 0's parameters on every rank, and each other rank's generators
    (dropout) moved to a stream of its own."""
    trainer._dopt = _dist.DistributedOptimizer(trainer.optimizer, trainer.model, clip=None,
                                               broadcast=True)
    r = trainer._world.rank
    if r:
        set_rng_states(trainer.model, {path: _rank_stream(r, st)
                                       for path, st in rng_states(trainer.model).items()})


def _rank_stream(rank, state):
    """A bit-generator state for ``rank`` derived from ``state`` (a module's generator
    on rank 0): the same on every run, different per rank."""
    digest = hashlib.sha256(f"{rank}:{sorted(state.items())!r}".encode()).digest()
    seq = np.random.SeedSequence(int.from_bytes(digest[:16], "little"))
    kind = getattr(np.random, state.get("bit_generator", "PCG64"), np.random.PCG64)
    return kind(seq).state
