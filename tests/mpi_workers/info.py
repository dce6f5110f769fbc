"""Worker of tests/test_distributed.py: what ``init`` found on every rank, printed by
rank 0 as one JSON list (ranks printing themselves could interleave their lines)."""
import json
import sys

from nn_core import _parallel
from nn_core import distributed as dist

if __name__ == "__main__":
    mpi_before = "mpi4py.MPI" in sys.modules
    w = dist.init()
    info = {"rank": w.rank, "size": w.size, "local_rank": w.local_rank,
            "local_size": w.local_size, "threads": w.threads,
            "budget": _parallel.blas_threads(), "launcher": w.launcher,
            "mpi_before_init": mpi_before, "mpi_imported": "mpi4py.MPI" in sys.modules,
            "sum": dist.all_sum({"one": 1, "rank": float(w.rank)})}
    infos = w.comm.gather(info) if w.comm is not None else [info]
    if w.rank == 0:
        print(json.dumps(infos), flush=True)
