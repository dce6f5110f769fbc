"""The module-global world: this process's place in the job, set once by
:func:`~nn_core.distributed.init` (in :mod:`._launcher`) and read by every other part."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """What :func:`~nn_core.distributed.init` found: this process's place in the job.

    ``comm`` is the mpi4py communicator (``None`` for the size-1 stand-in),
    ``local_*`` count the ranks on this node, ``threads`` is the BLAS thread budget
    :func:`~nn_core.distributed.init` set (``None``: left as it was), ``launcher`` names the launcher."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    threads: int | None
    launcher: str
    comm: object = None
    mpi: object = None


#: the world of :func:`~nn_core.distributed.init` (``None`` before it); tests reset it here
_WORLD: World | None = None


def is_initialized() -> bool:
    """True once :func:`~nn_core.distributed.init` has run in this process."""
    return _WORLD is not None


def world() -> World:
    """The :class:`World` of :func:`~nn_core.distributed.init` (``RuntimeError`` before it)."""
    if _WORLD is None:
        raise RuntimeError("nn_core.distributed.init() must be called first")
    return _WORLD


def rank() -> int:
    """This process's rank, ``0 .. size() - 1`` (0 on a single process)."""
    return world().rank


def size() -> int:
    """Number of processes in the job (1 on a single process)."""
    return world().size


def local_rank() -> int:
    """Rank among the processes on this node."""
    return world().local_rank


def local_size() -> int:
    """Number of processes on this node."""
    return world().local_size
