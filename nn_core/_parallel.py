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
``k <= N`` threads of the team runs with every OpenBLAS held at one thread
(OpenBLAS's own workers never run beside the team); unsplit work runs on the calling
thread with BLAS at ``N`` threads.  Before every parallel decision the kernels' BLAS is
brought down to the budget (and back up to its own setting when the limit is lifted),
so a limit set on NumPy's BLAS only also holds for the kernels.

BLAS thread counts are read and set through the ``*openblas_{get,set}_num_threads``
entry points of the OpenBLAS libraries mapped into the process (Linux), otherwise
through ``threadpoolctl`` when it is installed (other BLAS libraries, other systems).
Where neither works the budget is 1.

**One thread team** (:mod:`nn_core._kernels._team`, threads named
``nn_core-worker``) serves every split, from Python (:func:`run_tasks`) and from the
kernels (its C interface).  Its workers spin for a bounded time after a job, then
sleep on a futex.  Work started from a worker, or while another thread's job runs,
runs inline on the calling thread (no nested splits, no self-wait); kernels cut their
work into pieces that do not depend on the thread count, so inline and split runs
give the same bits.  After ``fork`` the child starts its own team.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading

from ._kernels import _team

__all__ = ["available_cores", "blas_threads", "limit_threads", "single_thread_blas",
           "controllable", "run_tasks", "run_pair", "run_rows", "split", "halves",
           "work_ranges", "size_ranges", "run_chunks", "copy",
           "in_parallel_region", "THREAD_ENV_VARS"]

#: environment variables that thread pools read when a process starts
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

WORKER_PREFIX = _team.WORKER_PREFIX
#: most threads the team gets whatever the budget (None: the budget).  The scaling
#: estimate (nn_core.bench.scaling) sets 1: work is cut for the budget, run on one thread
_TEAM_CAP = None


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


def _openblas_entry_points(libs, *names):
    """For each OpenBLAS library among ``libs`` that exports every one of ``names``: the
    addresses of those entry points (a tuple per library, in ``libs`` order)."""
    out = []
    for lc in libs:
        path = getattr(lc, "filepath", None)
        if not isinstance(lc, _OpenBLAS) or not path:
            continue
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
            fns = [getattr(lib, name) for name in names]
        except (OSError, AttributeError):
            continue
        out.append(tuple(ctypes.cast(fn, ctypes.c_void_p).value for fn in fns))
    return out


def _local_setters(libs):
    """Addresses of ``openblas_set_num_threads_local`` (OpenBLAS 0.3.27 and later) of
    the OpenBLAS libraries among ``libs``: the team holds them at one thread during its
    jobs.  Libraries without it are left out (and the team then stays at one thread)."""
    return [a for a, in _openblas_entry_points(libs, "openblas_set_num_threads_local")]


def _ilp64_gemm(libs):
    """``(sgemm, dgemm)`` addresses of the ILP64 Fortran GEMMs of NumPy's OpenBLAS
    (``scipy_sgemm_64_``), or ``(0, 0)``: the team's GEMM blocks then call SciPy's."""
    found = _openblas_entry_points(libs, "scipy_sgemm_64_", "scipy_dgemm_64_")
    return found[0] if found else (0, 0)


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
        self._last = 1           # the budget last read outside a BLAS hold
        self.single = 0          # threads inside single_thread_blas

    def libs(self):
        pid = os.getpid()
        if self._libs is None or self._pid != pid:
            with self.lock:
                if self._libs is None or self._pid != pid:
                    import scipy.linalg.cython_blas  # noqa: F401  (the kernels' BLAS)
                    self._libs = _find_controllers()
                    self._pid = pid
                    self._lowered = {}
                    self._last = 1
                    _team.set_blas(_local_setters(self._libs))
                    _team.set_gemm(*_ilp64_gemm(self._libs))
        return self._libs

    def budget(self) -> int:
        """Smallest BLAS thread count (the budget); brings every BLAS down to it.  The
        team gets the budget as its size.  While the team holds BLAS at one thread the
        counts read 1: the budget is then the one read before the hold."""
        libs = self.libs()
        if not libs:
            return 1
        if _team.in_job() or self.single:
            return 1
        with self.lock:
            if _team.blas_holds():
                return self._last
            n = self._read_budget(libs)
            self._last = n
            held = _team.blas_registered() == len(libs)
            _team.set_size(min(n, _TEAM_CAP or n) if held else 1)
            return n

    def _read_budget(self, libs) -> int:
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
        _BLAS.budget()          # the team's size follows at once

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
        _BLAS.budget()
        return False


class _SingleThreadBlas:
    """Context manager: every loaded OpenBLAS runs one thread inside the block, and
    the budget is 1 (nothing splits).

    Re-entrant across threads (the first entry lowers the counts, the last exit
    restores them).  Process-wide while it runs: BLAS calls of other threads are
    single-threaded meanwhile, as under ``threadpoolctl.threadpool_limits``."""

    @property
    def engaged(self) -> bool:
        """True while some thread is inside the block."""
        return _BLAS.single > 0

    def __enter__(self):
        _BLAS.libs()
        with _BLAS.lock:
            _BLAS.single += 1
        _team.blas_hold()
        return self

    def __exit__(self, *exc):
        _team.blas_release()
        with _BLAS.lock:
            _BLAS.single -= 1
        return False


class hold_blas(contextlib.ContextDecorator):
    """Context manager and decorator: every loaded OpenBLAS at one thread inside (the
    budget unchanged: the team does the splitting).  Re-entrant, from any thread."""

    def __enter__(self):
        _BLAS.libs()
        _team.blas_hold()
        return self

    def __exit__(self, *exc):
        _team.blas_release()
        return False


single_thread_blas = _SingleThreadBlas()


def _reset_lock_after_fork():
    _BLAS.lock = threading.RLock()
    _BLAS.single = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_after_fork)


# ------------------------------------------------------------------ the team --
def in_parallel_region() -> bool:
    """True on a team worker or on a thread running part of a team job: new work must
    run inline there."""
    return _team.in_job()


def run_tasks(work, n, cancel=None) -> list:
    """``[work(0), ..., work(n - 1)]`` as one job of the thread team
    (:mod:`nn_core._kernels._team`): ``work(0)`` on the calling thread, the others on
    the team's workers (fewer threads than tasks when the budget is lower: a thread
    then runs consecutive tasks), every OpenBLAS at one thread meanwhile.  ``work``
    should release the GIL to gain anything.  Inside a job, or while another thread's
    job runs, everything runs inline.  Every task is waited for (they may write shared
    buffers); the first error (by task number) is raised afterwards.  ``cancel(True)``,
    if given, is called when a task of the calling thread fails or a signal handler
    raises while it waits (Ctrl-C), so that the other tasks stop early;
    ``cancel(False)`` once they all ended.  Each task runs in a copy of the caller's
    context (NumPy's allocator, e.g. :func:`nn_core.memory.caching_allocator`, is a
    context variable)."""
    n = int(n)
    if n <= 1 or in_parallel_region():
        return [work(t) for t in range(n)]
    blas_threads()              # the team's size follows the budget
    return _team.run_python(work, n, cancel)


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


def size_ranges(sizes, min_per_thread):
    """Items of these sizes cut into one contiguous range of items per thread the budget
    allows (:func:`work_ranges` over their total), with about equal sums."""
    total = sum(sizes)
    parts = len(work_ranges(total, min_per_thread))
    if parts <= 1 or len(sizes) <= 1:
        return [(0, len(sizes))]
    edges, acc, t = [0], 0, 1
    for i, s in enumerate(sizes):
        acc += s
        if t < parts and acc >= total * t / parts and i + 1 < len(sizes):
            edges.append(i + 1)
            t += 1
    edges.append(len(sizes))
    return list(zip(edges[:-1], edges[1:]))


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


#: elements a thread copies at least in :func:`copy`
MIN_COPY_PER_THREAD = 1 << 16


def copy(dst, src) -> None:
    """``dst[...] = src``, split over the team along the first axis when large and
    ``src`` has ``dst``'s rank and leading length (NumPy's copy loops release the GIL,
    so the pieces run side by side); otherwise one assignment."""
    n = dst.shape[0] if dst.ndim else 0
    per_row = max(1, dst.size // max(1, n))
    ranges = work_ranges(n, -(-MIN_COPY_PER_THREAD // per_row)) if n > 1 else [(0, n)]
    if (len(ranges) == 1 or getattr(src, "ndim", 0) != dst.ndim
            or src.shape[0] != dst.shape[0]):
        dst[...] = src
        return

    def job(a, b):
        dst[a:b] = src[a:b]

    run_rows(job, ranges)


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
