"""Threads for the recurrent kernels: one worker thread and a BLAS thread limit.

Two things in nn_core.recurrent run on two threads, each inside a kernel that releases
the GIL for its whole loop:

* the two sweeps of a bidirectional layer (:mod:`.bidirectional`);
* the two halves of a batch in one sweep (:meth:`RecurrentCell.run_sequence`): batch
  rows never interact in a recurrence, so rows ``[0, B/2)`` and ``[B/2, B)`` run their
  whole step loops independently, with no synchronisation per step.

Either way BLAS is held to one thread per worker (:data:`single_thread_blas`), so the
threads do not fight over the BLAS pool and each computes what it computes alone.
"""
from __future__ import annotations

import atexit
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["available_cores", "single_thread_blas", "run_pair", "blas_threads",
           "row_halves", "halves", "run_rows"]


def available_cores() -> int:
    """Cores this process may run on (``sched_getaffinity``, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


_EXECUTOR = None
_WORKER_PREFIX = "nn_core-worker"
_EXECUTOR_PID = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The single worker thread: reverse sweeps and second halves of a batch.  Created
    on first use, and again in a forked child, where the parent's worker thread does
    not exist."""
    global _EXECUTOR, _EXECUTOR_PID
    pid = os.getpid()
    if _EXECUTOR is None or _EXECUTOR_PID != pid:
        with _EXECUTOR_LOCK:
            if _EXECUTOR is None or _EXECUTOR_PID != pid:
                _EXECUTOR = ThreadPoolExecutor(max_workers=1,
                                               thread_name_prefix=_WORKER_PREFIX)
                _EXECUTOR_PID = pid
                atexit.register(_EXECUTOR.shutdown, wait=False)
    return _EXECUTOR


class _OpenBLAS:
    """Minimal stand-in for a threadpoolctl controller of one loaded OpenBLAS."""

    def __init__(self, get, set_):
        self._get, self._set = get, set_

    def get_num_threads(self):
        return int(self._get())

    def set_num_threads(self, n):
        self._set(int(n))


def _openblas_controllers():
    """Controllers for the OpenBLAS libraries already loaded (Linux; else ``[]``)."""
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
        for prefix, suffix in (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                out.append(_OpenBLAS(get, set_))
                break
    return out


class _SingleThreadBlas:
    """Context manager: every loaded BLAS library runs one thread inside the block.

    Re-entrant across threads (a counter; the first entry saves and lowers the
    thread counts, the last exit restores them).  Uses ``threadpoolctl`` when it is
    installed; without it, OpenBLAS builds loaded in the process (found in
    ``/proc/self/maps``) are driven directly through their ``*set_num_threads``
    entry points; where neither works the block is a no-op.  The limit is
    process-wide while the block runs (other threads' BLAS calls run single-threaded
    for that time, as under ``threadpoolctl.threadpool_limits``).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._libs = None
        self._saved = ()

    def _controllers(self):
        if self._libs is None:
            try:
                from threadpoolctl import ThreadpoolController
                self._libs = [lc for lc in ThreadpoolController().lib_controllers
                              if lc.user_api == "blas"]
            except Exception:  # threadpoolctl missing or unable to inspect
                self._libs = _openblas_controllers()
        return self._libs

    @property
    def engaged(self) -> bool:
        """True while some thread is inside the limit (two workers already run)."""
        return self._depth > 0

    @property
    def active(self) -> bool:
        """True when BLAS thread counts can be controlled."""
        return bool(self._controllers())

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                saved = []
                for lc in self._controllers():
                    n = lc.get_num_threads()
                    if n is not None and n != 1:
                        lc.set_num_threads(1)
                        saved.append((lc, n))
                self._saved = saved
            self._depth += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for lc, n in self._saved:
                    lc.set_num_threads(n)
                self._saved = ()
        return False


single_thread_blas = _SingleThreadBlas()


def run_pair(job_fw, job_bw, concurrent):
    """``(job_fw(), job_bw())``, the second on the worker thread when ``concurrent``."""
    if not concurrent:
        return job_fw(), job_bw()
    with single_thread_blas:
        future = _executor().submit(job_bw)
        return _join(job_fw, (), future)


def blas_threads() -> int:
    """Threads the BLAS behind the kernels (SciPy's OpenBLAS) may use; 1 if unknown."""
    from .._kernels import _attention
    return max(1, int(_attention.blas_threads()))


# Batch-row split of one sweep.  Measured with two threads against the same sweep with
# two BLAS threads (split time / BLAS-2 time, forward+backward, one interleaved run):
# at B = 64, T=128, D=H=512: LSTM 0.98, GRU 0.97, RNN 0.94 (float32), 0.95 / 0.98 / 1.00
# (float64); at B = 64, T=64, D=H=256: 0.88-0.96; at B = 32 (T=64, D=H=256) a wash
# (0.90-1.11, noise ~5%); at B <= 16 worse (1.2-2.2: the thread hand-offs, ~70 us
# each, cost more than a short step loop, and GEMMs of <= 8 rows run far below the
# GEMM rate).  So each half keeps at least 32 rows.
ROW_SPLIT = True          # module switch (tests compare split and unsplit runs)
MIN_SPLIT_ROWS = 64


def row_halves(B: int):
    """``((0, h), (h, B))`` when a sweep over ``B`` rows should run as two half
    batches on two threads, else ``None``: only when ``ROW_SPLIT`` is on, with more
    than one core, a BLAS allowed more than one thread (so
    ``threadpoolctl.threadpool_limits(1)`` or ``OPENBLAS_NUM_THREADS=1`` keep the sweep
    on one thread), ``B >= MIN_SPLIT_ROWS``, not inside another two-thread region (a
    bidirectional layer's concurrent sweeps) and not on the worker thread itself."""
    if (not ROW_SPLIT or B < MIN_SPLIT_ROWS or single_thread_blas.engaged
            or available_cores() < 2 or blas_threads() < 2 or _on_worker()):
        return None
    return halves(B)


def _on_worker() -> bool:
    """True on the one worker thread: a job there must never queue another job for
    the worker and wait for it (``engaged`` already guards this, unless an interrupt
    left a ``with single_thread_blas`` block while a job was still running)."""
    return threading.current_thread().name.startswith(_WORKER_PREFIX)


def halves(n: int, align: int = 1):
    """``((0, h), (h, n))`` with ``h`` near ``n / 2``, a multiple of ``align`` when
    ``n > align`` (SIMD- and BLAS-panel-friendly column splits)."""
    h = n // 2
    if align > 1 and n > align:
        h = max(align, (h + align // 2) // align * align)
        h = min(h, n)
    return (0, h), (h, n)


def run_rows(job, ranges) -> None:
    """``job(b0, b1)`` for both halves: the second on the worker thread, BLAS held to
    one thread meanwhile (``job`` must release the GIL to gain anything)."""
    (a0, a1), (b0, b1) = ranges
    with single_thread_blas:
        future = _executor().submit(job, b0, b1)
        _join(job, (a0, a1), future)


def _join(job, args, future):
    """``job(*args)`` here, then wait for ``future``; always wait (the worker writes
    shared buffers), and if both fail raise this thread's exception."""
    try:
        result = job(*args)
    except BaseException:
        try:
            future.result()
        except BaseException:
            pass
        raise
    return result, future.result()

