"""Threads and BLAS: the one place that decides how many cores nn_core keeps busy.

Everything in nn_core that runs on more than one thread goes through this module:

* the slab split of the fused attention kernel (:mod:`nn_core.attention`);
* the two sweeps of a bidirectional layer and the batch-row split of one sweep
  (:mod:`nn_core.recurrent`);
* ``nn-core --threads N`` and the benchmarks.

**The thread budget** is the BLAS thread count: the smallest thread count among the
BLAS libraries loaded in the process (NumPy's and SciPy's OpenBLAS are two different
libraries; the Cython kernels call SciPy's).  ``threadpoolctl.threadpool_limits(n)``,
``OPENBLAS_NUM_THREADS=n`` and :func:`limit_threads` all set it, before or after
``import nn_core``.  A budget of ``N`` means at most ``N`` busy cores: work split over
``k <= N`` Python threads runs with BLAS pinned to one thread each
(:data:`single_thread_blas`); unsplit work runs on the calling thread with BLAS at
``N`` threads.  Before every parallel decision the kernels' BLAS is brought down to
the budget (and back up to its own setting when the limit is lifted), so a limit set
on NumPy's BLAS only also holds for the kernels.

BLAS thread counts are read and set through the ``*openblas_{get,set}_num_threads``
entry points of the OpenBLAS libraries mapped into the process (Linux), otherwise
through ``threadpoolctl`` when it is installed (other BLAS libraries, other systems).
Where neither works the budget is 1.

**One worker pool** (threads named ``nn_core-worker``) serves every split.  Work
submitted from a worker, or while a split is running, runs inline on the calling
thread instead (no nested splits, no self-wait).  After ``fork`` the child starts a
fresh pool.
"""
from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["available_cores", "blas_threads", "limit_threads", "single_thread_blas",
           "controllable", "run_tasks", "run_pair", "run_rows", "split", "halves",
           "work_ranges", "run_chunks",
           "in_parallel_region", "THREAD_ENV_VARS"]

#: environment variables that thread pools read when a process starts
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

WORKER_PREFIX = "nn_core-worker"


def available_cores() -> int:
    """Cores this process may run on (``sched_getaffinity``, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------- BLAS control --
class _OpenBLAS:
    """A loaded OpenBLAS driven through its ``*_num_threads`` entry points."""

    def __init__(self, path, get, set_):
        self.filepath, self._get, self._set = path, get, set_

    def get_num_threads(self):
        return int(self._get())

    def set_num_threads(self, n):
        self._set(int(n))


_OPENBLAS_SYMBOLS = (("scipy_openblas_", ""), ("scipy_openblas_", "64_"),
                     ("openblas_", ""), ("openblas_", "64_"))


def _openblas_from_maps():
    """Controllers for the OpenBLAS libraries mapped into this process (Linux)."""
    import ctypes
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh
                            if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    out = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
        except OSError:
            continue
        for prefix, suffix in _OPENBLAS_SYMBOLS:
            get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                out.append(_OpenBLAS(path, get, set_))
                break
    return out


def _find_controllers():
    # OpenBLAS entry points called directly first: reading a thread count then costs a
    # C call (threadpoolctl looks the symbol up on every call); threadpoolctl
    # for any other BLAS (MKL, BLIS, ...) and for platforms without /proc
    libs = _openblas_from_maps()
    if libs:
        return libs
    try:
        from threadpoolctl import ThreadpoolController
        return [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
    except Exception:  # threadpoolctl missing or unable to inspect the process
        return []


class _Blas:
    """The BLAS libraries of the process and the budget rule (module docstring)."""

    def __init__(self):
        self.lock = threading.RLock()
        self._libs = None
        self._pid = None
        self._lowered = {}       # id(controller) -> its own setting, while we hold it lower
        self.depth = 0           # > 0 while single_thread_blas is engaged
        self._saved = ()

    def libs(self):
        pid = os.getpid()
        if self._libs is None or self._pid != pid:
            with self.lock:
                if self._libs is None or self._pid != pid:
                    import scipy.linalg.cython_blas  # noqa: F401  (the kernels' BLAS)
                    self._libs = _find_controllers()
                    self._pid = pid
                    self._lowered = {}
        return self._libs

    def budget(self) -> int:
        """Smallest BLAS thread count (the budget); brings every BLAS down to it."""
        libs = self.libs()
        if not libs:
            return 1
        with self.lock:
            if self.depth:
                return 1
            counts = [lc.get_num_threads() or 1 for lc in libs]
            own = [self._lowered.get(id(lc), n) for lc, n in zip(libs, counts)]
            # a library we lowered follows the others; its own setting is remembered
            user = [n for lc, n in zip(libs, counts) if id(lc) not in self._lowered]
            target = max(1, min(user or own))
            for lc, n, mine in zip(libs, counts, own):
                want = min(mine, target)
                if n != want:
                    lc.set_num_threads(want)
                if want < mine:
                    self._lowered[id(lc)] = mine
                else:
                    self._lowered.pop(id(lc), None)
            return max(1, min(min(own), target))

    def set_all(self, n):
        with self.lock:
            for lc in self.libs():
                lc.set_num_threads(n)
            self._lowered = {}

    def enter_single(self):
        with self.lock:
            if self.depth == 0:
                saved = []
                for lc in self.libs():
                    n = lc.get_num_threads()
                    if n is not None and n != 1:
                        lc.set_num_threads(1)
                        saved.append((lc, n))
                self._saved = saved
            self.depth += 1

    def exit_single(self):
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                for lc, n in self._saved:
                    lc.set_num_threads(n)
                self._saved = ()


_BLAS = _Blas()


def blas_threads() -> int:
    """The thread budget: the smallest thread count of the loaded BLAS libraries
    (1 inside a split, or when BLAS threads cannot be read)."""
    return _BLAS.budget()


def controllable() -> bool:
    """True when BLAS thread counts can be read and set in this process."""
    return bool(_BLAS.libs())


class limit_threads:
    """Set every BLAS library (and child processes, through the ``*_NUM_THREADS``
    variables) to ``n`` threads.

    Usable as a plain call (the limit stays) or as a context manager (the previous
    counts and variables come back on exit)::

        limit_threads(1)                 # for the rest of the process
        with limit_threads(2):           # for a block
            ...
    """

    def __init__(self, n):
        n = int(n)
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        self.n = n
        self._env = {v: os.environ.get(v) for v in THREAD_ENV_VARS}
        self._counts = [(lc, lc.get_num_threads()) for lc in _BLAS.libs()]
        for v in THREAD_ENV_VARS:
            os.environ[v] = str(n)
        _BLAS.set_all(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for v, old in self._env.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
        with _BLAS.lock:
            for lc, n in self._counts:
                if n:
                    lc.set_num_threads(n)
            _BLAS._lowered = {}
        return False


class _SingleThreadBlas:
    """Context manager: every loaded BLAS runs one thread inside the block.

    Re-entrant across threads (the first entry lowers the counts, the last exit
    restores them).  Process-wide while it runs: BLAS calls of other threads are
    single-threaded meanwhile, as under ``threadpoolctl.threadpool_limits``."""

    @property
    def engaged(self) -> bool:
        """True while some thread is inside the block (a split is running)."""
        return _BLAS.depth > 0

    def __enter__(self):
        _BLAS.enter_single()
        return self

    def __exit__(self, *exc):
        _BLAS.exit_single()
        return False


single_thread_blas = _SingleThreadBlas()


# ------------------------------------------------------------------ the pool --
_POOL = None
_POOL_PID = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The worker pool (``available_cores() - 1`` threads, at least one); created on
    first use and again in a forked child, where the parent's threads do not exist."""
    global _POOL, _POOL_PID
    pid = os.getpid()
    if _POOL is None or _POOL_PID != pid:
        with _POOL_LOCK:
            if _POOL is None or _POOL_PID != pid:
                _POOL = ThreadPoolExecutor(max_workers=max(1, available_cores() - 1),
                                           thread_name_prefix=WORKER_PREFIX)
                _POOL_PID = pid
    return _POOL


def _forget_pool_after_fork():
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()
    _BLAS.lock = threading.RLock()
    _BLAS.depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def in_parallel_region() -> bool:
    """True on a worker thread or while a split runs: new work must run inline."""
    return (single_thread_blas.engaged
            or threading.current_thread().name.startswith(WORKER_PREFIX))


def run_tasks(work, n, cancel=None) -> list:
    """``[work(0), ..., work(n - 1)]``: ``work(0)`` on the calling thread, the others on
    the pool, BLAS pinned to one thread meanwhile.  ``work`` should release the GIL to
    gain anything.  Inside a parallel region everything runs inline.  Every task is
    waited for (they may write shared buffers); the first error (the calling
    thread's first) is raised afterwards.  ``cancel(True)``, if given, is called when
    the calling thread's task fails or a signal handler raises while it waits (Ctrl-C),
    so that the other tasks stop early; ``cancel(False)`` once they all ended."""
    n = int(n)
    if n <= 1 or in_parallel_region():
        return [work(t) for t in range(n)]
    with single_thread_blas:
        # each task runs in a copy of the caller's context: NumPy's allocator (e.g.
        # nn_core.memory.caching_allocator) is a context variable
        futures = [_pool().submit(contextvars.copy_context().run, work, t)
                   for t in range(1, n)]
        results, error, cancelled = [None] * n, None, False
        try:
            results[0] = work(0)
        except BaseException as exc:
            error = exc
        for t, fut in enumerate(futures, 1):
            while True:
                if error is not None and cancel is not None and not cancelled:
                    cancel(True)
                    cancelled = True
                try:
                    results[t] = fut.result()
                except BaseException as exc:
                    error = error or exc
                    if not fut.done():             # a handler raised while waiting
                        continue
                break
        if cancelled:
            cancel(False)
        if error is not None:
            raise error
        return results


def run_pair(job_a, job_b, concurrent):
    """``(job_a(), job_b())``, the second on a worker thread when ``concurrent``."""
    if not concurrent:
        return job_a(), job_b()
    a, b = run_tasks(lambda t: job_b() if t else job_a(), 2)
    return a, b


def run_rows(job, ranges, cancel=None) -> None:
    """``job(r0, r1)`` for every ``(r0, r1)`` of ``ranges``, one per thread (``cancel``:
    see :func:`run_tasks`)."""
    run_tasks(lambda t: job(*ranges[t]), len(ranges), cancel)


def work_ranges(n, min_per_thread):
    """``[0, n)`` cut into one contiguous range per thread the budget allows, each of at
    least ``min_per_thread`` items (a single range when that leaves one thread)."""
    parts = min(blas_threads(), n // max(1, int(min_per_thread)))
    if parts <= 1 or in_parallel_region():
        return [(0, n)]
    return split(n, parts)


def run_chunks(job, n, chunk, min_per_thread) -> int:
    """``job(i, r0, r1)`` for the fixed chunks ``[i*chunk, min((i+1)*chunk, n))`` of
    ``[0, n)``, whole chunks per thread as the budget allows (:func:`work_ranges`).
    The chunks do not depend on the thread count, so per-chunk partial sums added in
    chunk order give the same bits at any thread count.  Returns the chunk count."""
    count = max(1, -(-n // int(chunk)))
    groups = split(count, len(work_ranges(n, min_per_thread)))

    def work(t):
        for i in range(*groups[t]):
            job(i, i * chunk, min((i + 1) * chunk, n))

    run_tasks(work, len(groups))
    return count


def split(n, parts):
    """``parts`` contiguous ranges covering ``[0, n)`` (fewer when ``n < parts``)."""
    parts = max(1, min(int(parts), n))
    edges = [n * t // parts for t in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def halves(n: int, align: int = 1):
    """``((0, h), (h, n))`` with ``h`` near ``n / 2``, a multiple of ``align`` when
    ``n > align`` (SIMD- and BLAS-panel-friendly column splits)."""
    h = n // 2
    if align > 1 and n > align:
        h = max(align, (h + align // 2) // align * align)
        h = min(h, n)
    return (0, h), (h, n)
