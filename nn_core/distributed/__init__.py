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
from ._collectives import (all_reduce, all_sum, allreduce_scalar, barrier, broadcast,
                           broadcast_object, broadcast_parameters)
from ._failure import abort_on_error
from ._launcher import LAUNCHER_ENV, init, launched
from ._optimizer import DistributedOptimizer
from ._shard import shard, shard_slice
from ._world import World, is_initialized, local_rank, local_size, rank, size, world

__all__ = ["init", "launched", "is_initialized", "world", "rank", "size", "local_rank", "local_size",
           "barrier", "all_reduce", "allreduce_scalar", "all_sum", "broadcast",
           "broadcast_object", "broadcast_parameters", "shard", "shard_slice",
           "DistributedOptimizer", "abort_on_error", "LAUNCHER_ENV"]
