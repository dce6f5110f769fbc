"""Shared setup for the nn_core asv benchmarks.

* BLAS threads are pinned before NumPy loads: ``NN_CORE_BENCH_THREADS`` (default 1)
  goes to ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and,
  when threadpoolctl is installed, to every loaded BLAS.  nn_core's attention kernel
  splits its work over as many threads as scipy's OpenBLAS has, so this one number is
  the thread count of every benchmark.  ``track_blas_threads`` records it with the
  results.
* Inputs are drawn from a fixed seed (``SEED``), so every commit sees the same data.
* Imports of nn_core are guarded: a benchmark whose feature does not exist at an
  older commit raises ``NotImplementedError`` in ``setup`` and asv skips it.
"""
import os
import sys

THREADS = int(os.environ.get("NN_CORE_BENCH_THREADS", "1"))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import numpy as np  # noqa: E402

SEED = 20240601

try:
    import nn_core  # noqa: F401  (installed by asv, or importable from the cwd)
except ImportError:
    # `asv run --python=same` from asv_bench/: use the in-place build of this checkout
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # pinning via the environment variables above only
    threadpool_info = threadpool_limits = None
else:
    import scipy.linalg  # noqa: F401,E402  (load scipy's BLAS so it is pinned too)

    threadpool_limits(THREADS)


def blas_threads():
    """Thread counts of the loaded BLAS libraries (``{}`` without threadpoolctl)."""
    if threadpool_info is None:
        return {}
    return {os.path.basename(i["filepath"]): i["num_threads"] for i in threadpool_info()}


def rng():
    return np.random.default_rng(SEED)


def randn(shape, dtype, gen=None):
    """Seeded standard-normal array of ``shape`` in ``dtype``."""
    gen = rng() if gen is None else gen
    return gen.standard_normal(shape).astype(dtype)


def require(module, *names):
    """Import ``names`` from ``module`` or raise NotImplementedError (asv: skip)."""
    try:
        mod = __import__(module, fromlist=list(names))
        return tuple(getattr(mod, n) for n in names)
    except (ImportError, AttributeError) as exc:
        raise NotImplementedError(f"{module}.{names} not available: {exc}") from None


DTYPES = ["float32", "float64"]


def track_blas_threads():
    """The BLAS thread count every benchmark ran with."""
    return THREADS


track_blas_threads.unit = "threads"
