"""Worker of tests/test_distributed.py: rank 1 fails while rank 0 waits in a collective.

``python fail.py raise`` raises on rank 1 (the excepthook installed by ``init`` must
abort the job); ``python fail.py exit`` calls ``sys.exit(3)`` inside ``abort_on_error``.
Without the abort, rank 0 would wait in its all-reduce forever.
"""
import sys

import numpy as np

from nn_core import distributed as dist

if __name__ == "__main__":
    dist.init()
    dist.barrier()
    if dist.rank() == 1:
        if sys.argv[1] == "raise":
            raise ValueError("deliberate failure on rank 1")
        with dist.abort_on_error():
            sys.exit(3)
    dist.all_reduce(np.ones(4))             # never matched by rank 1
