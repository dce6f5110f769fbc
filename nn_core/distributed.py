"""Data-parallel training over MPI (``mpiexec``, ``srun``): one process per core group,
one gradient all-reduce per step.

Every rank builds the same model from the same seed, draws the same global batch,
trains on its own :func:`shard` of it, and :class:`DistributedOptimizer` sums the
gradients of all ranks in **one** in-place ``Allreduce`` over the module's flat
gradient buffer (:meth:`~nn_core.Module.flat_parameters`) before clipping and the
update, so every rank applies the same update and the parameters stay identical.
With ``step(weight=n)`` (``n`` = the number of tokens or samples the local loss
averaged over) the result equals one process training on the whole global batch,
also when the ranks see different numbers of non-ignored tokens.

MPI is optional (``pip install "nn_core[mpi]"``, i.e. mpi4py; ``pip install mpich``
brings an MPI and ``mpiexec`` as a binary wheel).  :func:`init` decides from the
launcher's environment whether this process is one of several ranks **before**
importing mpi4py; a process started without ``mpiexec``/``srun`` gets a size-1
stand-in on which every call below is a no-op, so the same script runs unchanged on
one process.

``mpiexec -n N nn-core train TASK ...`` (or ``srun``) trains the CLI's tasks this way,
and so does :meth:`nn_core.training.Trainer.fit` after :func:`init`: ``--batch-size``
per process, global batch ``N * batch_size``, rank 0 alone prints and writes the run
folder, ``--resume`` with as many processes.

Launchers recognised (the first variable found gives the number of processes):

=========================================  ==========================================
``OMPI_COMM_WORLD_SIZE``                   Open MPI ``mpirun``/``mpiexec``
``PMI_SIZE``                               MPICH / Intel MPI (Hydra), Cray PALS
``MV2_COMM_WORLD_SIZE``                    MVAPICH2
``SLURM_STEP_NUM_TASKS``                   Slurm ``srun`` (set by ``srun`` only, not in
                                           the ``sbatch`` script itself)
``NN_CORE_DISTRIBUTED=1`` / ``=0``         force MPI / the stand-in (other launchers)
=========================================  ==========================================

**Failure.**  Under MPI, an uncaught exception on one rank would leave the other ranks
waiting in their next collective forever.  :func:`init` therefore installs a
``sys.excepthook`` that prints the traceback, every line prefixed with ``[rank r]``,
and calls ``MPI.COMM_WORLD.Abort``: the launcher then ends every rank within about a
second and exits non-zero.  ``sys.exit(n)`` with ``n != 0`` does not pass through
``sys.excepthook``; run the entry point inside :class:`abort_on_error` (a context
manager and decorator) or start the script with ``python -m mpi4py script.py`` for
that.  A job that hangs for any other reason (a rank that skips a collective) is
bounded by the launcher: ``MPIEXEC_TIMEOUT=seconds mpiexec ...`` (MPICH's Hydra and
Open MPI's ``mpirun``, which also takes ``--timeout``), ``srun --time`` /
``#SBATCH --time`` under Slurm.

**Threads.**  N ranks on one node share its cores: unless the user set a thread
count (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ...) or
passes ``threads=``, :func:`init` sets the thread budget
(:func:`nn_core._parallel.limit_threads`) of each rank to its cores divided by the
number of ranks of the node sharing them (at least 1); ranks the launcher bound to
their own cores keep all of those.

**Every rank must make the same collective calls in the same order**: the same
number of steps (shard one global batch, as below, rather than giving each rank
its own data loader of another length), and :func:`all_sum` with the same keys.

Examples
--------
A training script; ``python train.py`` runs it on one process,
``mpiexec -n 4 python train.py`` on four::

    import numpy as np
    from nn_core import distributed as dist
    from nn_core.optim import AdamW

    dist.init()                                   # before building anything
    model = build_model(rng=0)                    # the same seed on every rank
    opt = dist.DistributedOptimizer(AdamW(model, lr=1e-3), model, clip=1.0)
    for batch in batches(seed=0):                 # the same global batches everywhere
        src, tgt = dist.shard(batch)              # this rank's rows
        opt.zero_grad()
        loss = loss_fn(model(src), tgt)           # CrossEntropyLoss(ignore_index=PAD)
        model.backward(loss_fn.backward()[0])
        n = int((tgt != PAD).sum())               # the tokens the local loss averaged
        opt.step(weight=n)                        # weighted all-reduce, clip, update
        total = dist.all_sum({"loss": float(loss) * n, "tokens": n})
        if dist.rank() == 0:
            print(total["loss"] / total["tokens"])  # the global batch's loss
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np

from . import _parallel
from .module import Module
from ._validation import check_nonneg_real
from .optim import Optimizer, clip_grad_norm

__all__ = ["init", "launched", "is_initialized", "world", "rank", "size", "local_rank", "local_size",
           "barrier", "all_reduce", "allreduce_scalar", "all_sum", "broadcast",
           "broadcast_object", "broadcast_parameters", "shard", "shard_slice",
           "DistributedOptimizer", "abort_on_error", "LAUNCHER_ENV"]

#: ``(size variable, rank variable, launcher)`` in the order they are consulted
LAUNCHER_ENV = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI"),
    ("PMI_SIZE", "PMI_RANK", "Hydra/PMI"),
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MVAPICH2"),
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "srun"),
)
_FORCE_ENV = "NN_CORE_DISTRIBUTED"
_OPS = ("sum", "max", "min")


@dataclass(frozen=True)
class World:
    """What :func:`init` found: this process's place in the job.

    ``comm`` is the mpi4py communicator (``None`` for the size-1 stand-in),
    ``local_*`` count the ranks on this node, ``threads`` is the BLAS thread budget
    :func:`init` set (``None``: left as it was), ``launcher`` names the launcher."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    threads: int | None
    launcher: str
    comm: object = None
    mpi: object = None


_WORLD: World | None = None


# ----------------------------------------------------------------- launcher --
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
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if threads is not None:
        threads = int(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
    if comm is None:
        n, launcher = _launched()
        if n is not None and n <= 1:
            if threads is not None:
                _parallel.limit_threads(threads)
            _WORLD = World(0, 1, 0, 1, threads, launcher)
            return _WORLD
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
    _WORLD = World(comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size(),
                   threads, launcher, comm, MPI)
    if abort_on_exception and _WORLD.size > 1:
        _install_excepthook()
    return _WORLD


def is_initialized() -> bool:
    """True once :func:`init` has run in this process."""
    return _WORLD is not None


def world() -> World:
    """The :class:`World` of :func:`init` (``RuntimeError`` before it)."""
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


# ------------------------------------------------------------------ failure --
def _prefixed(text, r):
    return "".join(f"[rank {r}] {line}" for line in text.splitlines(True))


def _abort(status, message):
    """Print ``message`` (prefixed with the rank) and abort every rank of the job."""
    w = _WORLD
    try:
        if message:
            sys.stderr.write(_prefixed(message if message.endswith("\n") else message + "\n",
                                       w.rank))
        sys.stderr.write(f"[rank {w.rank}] nn_core.distributed: aborting all {w.size} "
                         f"ranks (exit status {status})\n")
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        w.comm.Abort(status)


def _status_of(exc_type, exc):
    if issubclass(exc_type, KeyboardInterrupt):
        return 130
    return 1


def _install_excepthook():
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if previous is not sys.__excepthook__:      # someone else's hook: let it report
            previous(exc_type, exc, tb)
            text = ""
        else:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
        _abort(_status_of(exc_type, exc), text)

    sys.excepthook = hook


class abort_on_error(contextlib.ContextDecorator):
    """Abort the whole MPI job when the block (or decorated function) ends with an
    exception or with ``sys.exit(n)``, ``n != 0`` (which bypass ``sys.excepthook``).

    On a single process, or with no error, it does nothing and exceptions propagate
    as usual.

    Examples
    --------
    >>> @abort_on_error()
    ... def main():
    ...     return 0
    >>> main()
    0
    """

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        w = _WORLD
        if exc_type is None or w is None or w.size <= 1:
            return False
        if issubclass(exc_type, SystemExit):
            code = exc.code
            if code is None or code == 0:
                return False
            status = code if isinstance(code, int) else 1
            _abort(status, "" if isinstance(code, int) else str(code))
        _abort(_status_of(exc_type, exc),
               "".join(traceback.format_exception(exc_type, exc, tb)))
        return False  # pragma: no cover - Abort does not return


# -------------------------------------------------------------- collectives --
def _check_op(op):
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")


def barrier() -> None:
    """Wait until every rank has arrived."""
    w = world()
    if w.size > 1:
        w.comm.Barrier()


def _check_buffer(array):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array must be a numpy array, got {type(array).__name__}")
    if not (array.flags.c_contiguous and array.flags.writeable):
        raise ValueError("array must be C-contiguous and writeable (it is updated in place)")


def all_reduce(array, op="sum"):
    """Reduce ``array`` over all ranks **in place** (``op``: ``"sum"``, ``"max"``,
    ``"min"``) and return it; every rank passes an array of the same shape and dtype.
    ``array`` must be a C-contiguous, writeable NumPy array."""
    _check_op(op)
    _check_buffer(array)
    w = world()
    if w.size > 1:
        w.comm.Allreduce(w.mpi.IN_PLACE, array, op=getattr(w.mpi, op.upper()))
    return array


def allreduce_scalar(value, op="sum"):
    """``value`` reduced over all ranks: a float, or an int when ``value`` is an int."""
    _check_op(op)
    as_int = isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)
    w = world()
    if w.size == 1:
        return int(value) if as_int else float(value)
    buf = np.array([value], dtype=np.int64 if as_int else np.float64)
    all_reduce(buf, op)
    return int(buf[0]) if as_int else float(buf[0])


def all_sum(values: dict) -> dict:
    """Sum a dict of numbers over all ranks in one call (e.g. loss sums, token and
    sample counts for a progress line).  Every rank must pass the same keys; values
    are summed in float64 and ints come back as ints (exact below 2**53)."""
    w = world()
    if not isinstance(values, dict):
        raise TypeError(f"values must be a dict of numbers, got {type(values).__name__}")
    keys = sorted(values)
    for k in keys:
        v = values[k]
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.integer, np.floating)):
            raise TypeError(f"values[{k!r}] must be a number, got {type(v).__name__}")
    ints = {k for k in keys if isinstance(values[k], (numbers.Integral, np.integer))}
    if w.size > 1:
        buf = np.array([float(values[k]) for k in keys], dtype=np.float64)
        all_reduce(buf)
        summed = dict(zip(keys, buf.tolist()))
    else:
        summed = {k: values[k] for k in keys}
    return {k: (int(round(summed[k])) if k in ints else float(summed[k])) for k in values}


def broadcast(array, root=0):
    """Overwrite ``array`` (C-contiguous, writeable, same shape on every rank) with the
    root's, in place; returns it."""
    _check_buffer(array)
    w = world()
    if w.size > 1:
        w.comm.Bcast(array, root=root)
    return array


def broadcast_object(obj, root=0):
    """The root's ``obj`` on every rank (pickled; for configurations, optimizer
    state dicts, metrics)."""
    w = world()
    return w.comm.bcast(obj, root=root) if w.size > 1 else obj


def broadcast_parameters(module, root=0) -> None:
    """Copy the root's parameters into every rank's ``module`` (in place).

    One ``Bcast`` of the flat parameter buffer when the module has one
    (:meth:`~nn_core.Module.flat_parameters`), else one per parameter, in
    :meth:`~nn_core.Module.parameters` order."""
    if not isinstance(module, Module):
        raise TypeError(f"module must be an nn_core Module, got {type(module).__name__}")
    w = world()
    if w.size == 1:
        return
    flat = module._flat_buffers()
    for p in ([flat[0]] if flat is not None else module.parameters().values()):
        w.comm.Bcast(p, root=root)


# ---------------------------------------------------------------- sharding --
def _rank_size(rank_, size_):
    if rank_ is None or size_ is None:
        w = world()
        rank_ = w.rank if rank_ is None else rank_
        size_ = w.size if size_ is None else size_
    rank_, size_ = int(rank_), int(size_)
    if size_ < 1 or not 0 <= rank_ < size_:
        raise ValueError(f"rank must be in [0, size): got rank {rank_}, size {size_}")
    return rank_, size_


def shard_slice(n, rank=None, size=None) -> slice:
    """Rows ``[n*r//size, n*(r+1)//size)`` of ``n``: this rank's contiguous part
    (sizes differ by at most one).  ``ValueError`` when ``n < size`` (a rank would
    get nothing to train on)."""
    r, s = _rank_size(rank, size)
    n = int(n)
    if n < s:
        raise ValueError(f"a batch of {n} rows cannot be shared by {s} ranks; use a "
                         f"global batch of at least {s}")
    return slice(n * r // s, n * (r + 1) // s)


def shard(batch, rank=None, size=None):
    """This rank's part of a global ``batch``: every array (``ndim >= 1``) is cut
    along axis 0 by :func:`shard_slice`, inside tuples, lists and dicts alike; other
    values (ints, ``None``) pass through.  All arrays must have the same length.

    >>> import numpy as np
    >>> src, lens = shard((np.arange(10).reshape(5, 2), np.arange(5)), rank=1, size=2)
    >>> lens
    array([2, 3, 4])
    """
    r, s = _rank_size(rank, size)
    lengths = set()

    def collect(x):
        if isinstance(x, np.ndarray) and x.ndim >= 1:
            lengths.add(len(x))
        elif isinstance(x, (tuple, list)):
            for v in x:
                collect(v)
        elif isinstance(x, dict):
            for v in x.values():
                collect(v)

    collect(batch)
    if not lengths:
        raise ValueError("batch holds no array to shard")
    if len(lengths) > 1:
        raise ValueError(f"every array of the batch must have the same length along axis "
                         f"0, got lengths {sorted(lengths)}")
    rows = shard_slice(lengths.pop(), r, s)

    def cut(x):
        if isinstance(x, np.ndarray) and x.ndim >= 1:
            return x[rows]
        if isinstance(x, tuple):
            return type(x)(*map(cut, x)) if hasattr(x, "_fields") else tuple(map(cut, x))
        if isinstance(x, list):
            return [cut(v) for v in x]
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        return x

    return cut(batch)


# --------------------------------------------------------------- optimizer --
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
            weight = _weight(weight, "weight")
            if total_weight is None and w.size == 1:
                total_weight = weight
            elif total_weight is None:
                t0 = time.perf_counter()
                total_weight = allreduce_scalar(weight)
                self.comm_seconds += time.perf_counter() - t0
            total_weight = _weight(total_weight, "total_weight")
            if weight > total_weight:
                raise ValueError(f"weight ({weight}) exceeds total_weight ({total_weight})")
            # an all-ignored global batch has a zero gradient (as CrossEntropyLoss's)
            scale = weight / total_weight if total_weight > 0 else 0.0
        if scale != 1.0:
            g *= g.dtype.type(scale)
        if w.size > 1:
            t0 = time.perf_counter()
            w.comm.Allreduce(w.mpi.IN_PLACE, g, op=w.mpi.SUM)
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


def _weight(value, name):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.integer,
                                                         np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value
