"""Which launcher started this process, and :func:`init`: join the job (importing
mpi4py only when launched as several ranks) and set the rank's thread budget."""
from __future__ import annotations

import os

from .. import _parallel
from . import _world
from ._failure import _install_excepthook
from ._world import World

#: ``(size variable, rank variable, launcher)`` in the order they are consulted
LAUNCHER_ENV = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI"),
    ("PMI_SIZE", "PMI_RANK", "Hydra/PMI"),
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MVAPICH2"),
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "srun"),
)
_FORCE_ENV = "NN_CORE_DISTRIBUTED"


def _env_int(name):
    value = os.environ.get(name, "").strip()
    try:
        return int(value)
    except ValueError:
        return None


def _launched():
    """``(size, launcher)`` from the environment; size 1 when no launcher is seen."""
    force = os.environ.get(_FORCE_ENV, "").strip().lower()
    if force in ("0", "false", "no", "off"):
        return 1, f"{_FORCE_ENV}=0"
    for size_var, _rank_var, name in LAUNCHER_ENV:
        n = _env_int(size_var)
        if n is not None:
            return n, f"{name} ({size_var}={n})"
    if force in ("1", "true", "yes", "on"):
        return None, f"{_FORCE_ENV}=1"          # size known only from MPI itself
    return 1, "none"


def launched() -> bool:
    """Whether this process was started as one of several ranks (from the launcher's
    environment, without importing mpi4py)."""
    n, _ = _launched()
    return n is None or n > 1


def _import_mpi(why):
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            f"nn_core.distributed: this process was started as one of several MPI ranks "
            f"({why}) but mpi4py cannot be imported ({exc}); install it with "
            "`pip install \"nn_core[mpi]\"` (and an MPI, e.g. `pip install mpich`, or "
            "`module load openmpi` on a cluster)") from exc
    return MPI


def _threads_for(local):
    """Cores of this rank divided by the local ranks sharing them (at least 1)."""
    try:
        own = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        own = frozenset(range(os.cpu_count() or 1))
    masks = local.allgather(own)
    sharing = sum(1 for m in masks if m & own) or 1
    return max(1, len(own) // sharing)


def init(comm=None, *, threads=None, abort_on_exception=True) -> World:
    """Join the job (or stand alone) and set this rank's thread budget.

    Parameters
    ----------
    comm : mpi4py communicator, optional
        The ranks to train with (``MPI.COMM_WORLD`` by default).  Passing one always
        uses MPI, launched or not.
    threads : int, optional
        BLAS thread budget of this rank.  Default: under MPI, unless a ``*_NUM_THREADS``
        variable is set, the rank's cores over the local ranks sharing them; a
        single process keeps its setting.
    abort_on_exception : bool
        Under MPI, install the ``sys.excepthook`` that prints the traceback prefixed
        with the rank and aborts the whole job (module docstring).

    Returns
    -------
    World
        ``rank, size, local_rank, local_size, threads, launcher, comm``.  Calling
        :func:`init` again returns the same world.

    Raises
    ------
    ImportError
        Launched as several ranks but mpi4py is missing.
    RuntimeError
        MPI sees another number of processes than the launcher started (mpi4py linked
        against another MPI than the ``mpiexec`` used).
    """
    if _world._WORLD is not None:
        return _world._WORLD
    if threads is not None:
        threads = int(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
    if comm is None:
        n, launcher = _launched()
        if n is not None and n <= 1:
            if threads is not None:
                _parallel.limit_threads(threads)
            _world._WORLD = World(0, 1, 0, 1, threads, launcher)
            return _world._WORLD
        MPI = _import_mpi(launcher)
        comm = MPI.COMM_WORLD
        if n is not None and comm.Get_size() != n:
            raise RuntimeError(
                f"nn_core.distributed: the launcher started {n} processes ({launcher}) but "
                f"MPI sees {comm.Get_size()}: mpi4py uses another MPI than the launcher "
                f"({MPI.Get_library_version().splitlines()[0].strip()}). Launch with that "
                "MPI's mpiexec, or rebuild mpi4py against the site's MPI "
                "(`pip install --no-binary mpi4py mpi4py`)")
    else:
        from mpi4py import MPI
        launcher = "communicator passed to init()"
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    user_set = any(v in os.environ for v in _parallel.THREAD_ENV_VARS)
    if threads is None and not user_set:
        threads = _threads_for(local)
    if threads is not None:
        _parallel.limit_threads(threads)
    w = _world._WORLD = World(comm.Get_rank(), comm.Get_size(), local.Get_rank(),
                              local.Get_size(), threads, launcher, comm, MPI)
    if abort_on_exception and w.size > 1:
        _install_excepthook()
    return w
