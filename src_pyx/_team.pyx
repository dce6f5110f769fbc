"""The process's thread team (``_team.h``) and what runs on it from Python.

* :func:`set_size`, :func:`size`, :func:`in_job`, :func:`set_spin`, :func:`set_blas`:
  the team's configuration (``nn_core._parallel`` drives it);
* :func:`run_python`: Python callables as tasks of one job (each task takes the GIL
  to run; the kernels it calls release it);
* :func:`gemm`: a row-major GEMM cut into fixed output blocks, the blocks shared out
  over the team, each one single-threaded BLAS call: the same bits at any team size.

Other extension modules reach the team through the capsule ``_C_API``
(``_team_api.h``).
"""
from cpython.exc cimport PyErr_CheckSignals
from cpython.pycapsule cimport PyCapsule_New
from cpython.ref cimport PyObject
from cython cimport floating

cimport numpy as cnp
from libc.stdint cimport int64_t

from _blas cimport gemm as _scipy_gemm

import numpy as np

cnp.import_array()

cdef extern from "_team.h" nogil:
    ctypedef void (*nn_team_fn)(void* arg, int t, int n) noexcept nogil
    ctypedef int (*nn_blas_setter)(int) noexcept nogil
    ctypedef struct nn_team_api:
        pass
    ctypedef struct nn_team_state:
        int size
        int nworkers
        long spin_ns
        int nblas
        nn_blas_setter* blas
        int blas_holds
    nn_team_state nn_T
    const nn_team_api nn_team_table
    int NN_TEAM_MAX
    int NN_TEAM_MAX_BLAS
    int nn_team_in_job
    int nn_team_init()
    int nn_team_run(nn_team_fn fn, void* arg, int want) noexcept
    int nn_team_available() noexcept
    void nn_team_barrier(int n) noexcept
    void nn_blas_hold() noexcept
    void nn_blas_release() noexcept
    void nn_team_share(Py_ssize_t P, int t, int n, Py_ssize_t* p0, Py_ssize_t* p1) noexcept
    int NN_LOAD(int* p) noexcept
    int NN_ADD(int* p, int v) noexcept
    void NN_PAUSE() noexcept
    ctypedef struct nn_job_record:
        double t0, t1
        int want, barriers
    nn_job_record* nn_trace
    int nn_trace_cap, nn_trace_len
    int nn_wait_count(int* word, int target, int* asleep, long timeout_ns) noexcept
    void nn_count_up(int* word, int k, int* asleep) noexcept

cdef extern from *:
    """
    static __thread int nn_py_bound = 0, nn_py_named = 0;
    /* give this (team) thread a Python thread state once, kept for the thread's life,
       so that each later GIL acquisition is cheap */
    static void nn_bind_python(void)
    {
        if (!nn_py_bound) {
            PyGILState_Ensure();
            PyEval_SaveThread();
            nn_py_bound = 1;
        }
    }
    """
    void nn_bind_python() noexcept nogil
    int nn_py_named

if nn_team_init() != 0:
    raise OSError("nn_core._kernels._team: pthread_atfork failed")

def _at_exit():
    # jobs started while the interpreter shuts down run inline: the workers' Python
    # thread states may already be gone
    nn_T.size = 1


import atexit
atexit.register(_at_exit)

_C_API = PyCapsule_New(<void*> &nn_team_table, b"nn_core._kernels._team._C_API", NULL)

#: most threads a team can have (the caller included)
MAX_SIZE = NN_TEAM_MAX


def set_size(int n):
    """Threads a job may use from now on, the caller included (1: everything inline)."""
    if n < 1:
        raise ValueError(f"team size must be >= 1, got {n}")
    nn_T.size = min(n, NN_TEAM_MAX)


def size():
    """The team size set by :func:`set_size`."""
    return nn_T.size


def workers():
    """Worker threads started so far (they are started on first use)."""
    return nn_T.nworkers


def in_job():
    """True on a team worker, or on a thread running part of a job."""
    return bool(nn_team_in_job)


def available():
    """Threads a job started now on this thread would get (1 inside a job)."""
    return nn_team_available()


def set_spin(double seconds):
    """How long a waiting thread spins before it sleeps on a futex."""
    if not seconds >= 0:
        raise ValueError(f"spin must be >= 0 seconds, got {seconds!r}")
    nn_T.spin_ns = <long> (seconds * 1e9)


def spin():
    """The spin time, in seconds."""
    return nn_T.spin_ns * 1e-9


def set_blas(addresses):
    """The ``openblas_set_num_threads_local`` entry points (as integer addresses) of the
    OpenBLAS libraries to hold at one thread while a job runs on several threads."""
    addresses = [int(a) for a in addresses]
    if len(addresses) > NN_TEAM_MAX_BLAS:
        raise ValueError(f"at most {NN_TEAM_MAX_BLAS} BLAS libraries, got {len(addresses)}")
    nn_T.nblas = 0
    for i, a in enumerate(addresses):
        if a == 0:
            raise ValueError("a BLAS entry point address is NULL")
        nn_T.blas[i] = <nn_blas_setter> <size_t> a
    nn_T.nblas = len(addresses)


def blas_hold():
    """Hold every registered OpenBLAS at one thread until :func:`blas_release` (counted:
    holds nest, from any thread)."""
    with nogil:
        nn_blas_hold()


def blas_release():
    """End one :func:`blas_hold`."""
    if nn_T.blas_holds <= 0:
        raise RuntimeError("blas_release() without blas_hold()")
    with nogil:
        nn_blas_release()


def blas_holds():
    """Holds in force (jobs running and :func:`blas_hold` calls)."""
    return nn_T.blas_holds


def blas_registered():
    """How many OpenBLAS libraries the team holds at one thread during jobs."""
    return nn_T.nblas


cdef object _trace_buffer = None


def trace_start(int capacity=1 << 16):
    """Record the jobs started from now on (outside other jobs; from any thread, one
    thread at a time): see :func:`trace_stop`."""
    global _trace_buffer
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    trace_stop()
    _trace_buffer = np.zeros(capacity, [("t0", "f8"), ("t1", "f8"), ("want", "i4"),
                                        ("barriers", "i4")])
    _start_trace(_trace_buffer)


cdef void _start_trace(object buf) noexcept:
    global nn_trace, nn_trace_cap, nn_trace_len
    nn_trace_len = 0
    nn_trace_cap = len(buf)
    nn_trace = <nn_job_record*> cnp.PyArray_DATA(<cnp.ndarray> buf)


def trace_stop():
    """Stop recording; returns the records (a structured array: ``t0``, ``t1`` in
    seconds, ``want`` = the pieces a job asked for, ``barriers`` its caller passed), or
    None when no trace ran."""
    global nn_trace, _trace_buffer
    if _trace_buffer is None:
        return None
    n = nn_trace_len
    nn_trace = NULL
    out, _trace_buffer = _trace_buffer[:n].copy(), None
    return out


cdef void _barrier_piece(void* arg, int t, int n) noexcept nogil:
    cdef int i
    for i in range((<int*> arg)[0]):
        nn_team_barrier(n)


def barrier_cost(int rounds=1000, int threads=2):
    """Seconds per barrier of a job on ``threads`` threads passing ``rounds`` barriers
    (None when the team grants fewer threads)."""
    import time
    cdef int n
    t0 = time.perf_counter()
    with nogil:
        n = nn_team_run(_barrier_piece, &rounds, threads)
    dt = time.perf_counter() - t0
    return dt / max(rounds, 1) if n == threads else None


# ------------------------------------------------------- Python tasks on the team --
cdef struct PyJob:
    PyObject* state       # [work, results, errors, contexts, cancel]
    int ntasks
    int others            # tasks run by workers
    int finished          # of those, finished (atomic)
    int asleep            # the calling thread sleeps on finished


cdef void _run_python_tasks(list state, Py_ssize_t p0, Py_ssize_t p1) noexcept:
    work, results, errors, contexts = state[0], state[1], state[2], state[3]
    for i in range(p0, p1):
        try:
            results[i] = contexts[i].run(work, i)
        except BaseException as exc:
            errors[i] = exc


#: the name a team worker has in ``threading`` (and in ``ps -L``)
WORKER_PREFIX = "nn_core-worker"


cdef void _name_worker(int t) noexcept:
    global nn_py_named
    try:
        import threading
        threading.current_thread().name = f"{WORKER_PREFIX}-{t}"
    except BaseException:
        pass
    nn_py_named = 1


cdef void _cancel_after_own_error(list state, Py_ssize_t p1, bint* cancelled) noexcept:
    """On the calling thread: one of its tasks failed, so the others may stop early."""
    if state[4] is None or all(e is None for e in state[2][:p1]):
        return
    cancelled[0] = True
    try:
        state[4](True)
    except BaseException as exc:
        state[2][0] = state[2][0] or exc


cdef void _poll_signals(list state, bint* cancelled) noexcept:
    """On the main thread: run Python's signal handlers; one that raises cancels the
    other tasks (``cancel(True)``) and its exception becomes task 0's error."""
    try:
        PyErr_CheckSignals()
    except BaseException as exc:
        if state[2][0] is None:
            state[2][0] = exc
        if state[4] is not None and not cancelled[0]:
            cancelled[0] = True
            try:
                state[4](True)
            except BaseException as exc2:
                state[2][0] = state[2][0] or exc2


cdef void _py_piece(void* arg, int t, int n) noexcept nogil:
    cdef PyJob* job = <PyJob*> arg
    cdef Py_ssize_t p0, p1
    cdef bint cancelled = False
    nn_team_share(job.ntasks, t, n, &p0, &p1)
    if t > 0:
        nn_bind_python()
    with gil:
        if t > 0 and not nn_py_named:
            _name_worker(t)
        _run_python_tasks(<list> job.state, p0, p1)
        if t == 0 and n > 1:
            _cancel_after_own_error(<list> job.state, p1, &cancelled)
    if t > 0:
        nn_count_up(&job.finished, <int> (p1 - p0), &job.asleep)
        return
    # the calling thread: wait for the workers' tasks, running Python's signal handlers
    # every millisecond (Ctrl-C cancels the others through state[4])
    while not nn_wait_count(&job.finished, job.ntasks - <int> p1, &job.asleep, 1000000):
        with gil:
            _poll_signals(<list> job.state, &cancelled)
    if cancelled:
        with gil:
            try:
                (<list> job.state)[4](False)
            except BaseException as exc:
                (<list> job.state)[2][0] = (<list> job.state)[2][0] or exc


def run_python(work, int n, cancel=None, contexts=None):
    """``[work(0), ..., work(n - 1)]`` as one job of the team: task 0 (and the first of
    the others when the team grants fewer threads than ``n``) on the calling thread.
    Every task runs to its end; then the first error (by task number) is raised.
    ``contexts``: a ``contextvars.Context`` per task to run it in.  ``cancel``: called
    with ``True`` when a task of the calling thread fails or a signal handler raises
    while it waits (Ctrl-C), so that the other tasks stop early, and with ``False``
    once they all ended."""
    cdef PyJob job
    if n < 1:
        return []
    import contextvars
    if contexts is None:
        contexts = [contextvars.copy_context() for _ in range(n)]
    state = [work, [None] * n, [None] * n, contexts, cancel]
    job.state = <PyObject*> state
    job.ntasks = n
    job.finished = 0
    job.asleep = 0
    with nogil:
        nn_team_run(_py_piece, &job, n)
    for exc in state[2]:
        if exc is not None:
            raise exc
    return state[1]


# ------------------------------------------------------------------ GEMM --
# The blocks call the ILP64 Fortran GEMMs registered by set_gemm (NumPy's OpenBLAS,
# faster than SciPy's on the small products of a layer), else SciPy's BLAS.
ctypedef void (*sgemm64_t)(const char*, const char*, const int64_t*, const int64_t*,
                           const int64_t*, const float*, const float*, const int64_t*,
                           const float*, const int64_t*, const float*, float*,
                           const int64_t*) noexcept nogil
ctypedef void (*dgemm64_t)(const char*, const char*, const int64_t*, const int64_t*,
                           const int64_t*, const double*, const double*, const int64_t*,
                           const double*, const int64_t*, const double*, double*,
                           const int64_t*) noexcept nogil
cdef sgemm64_t _sgemm64 = NULL
cdef dgemm64_t _dgemm64 = NULL


def set_gemm(size_t sgemm64, size_t dgemm64):
    """Use these ILP64 Fortran ``sgemm``/``dgemm`` entry points (integer addresses;
    0, 0: SciPy's BLAS) for the blocks of :func:`gemm`."""
    global _sgemm64, _dgemm64
    if (sgemm64 == 0) != (dgemm64 == 0):
        raise ValueError("set_gemm: give both entry points or neither")
    _sgemm64, _dgemm64 = <sgemm64_t> sgemm64, <dgemm64_t> dgemm64


def gemm_backend():
    """``"ilp64"`` (the entry points of :func:`set_gemm`) or ``"scipy"``."""
    return "ilp64" if _sgemm64 != NULL else "scipy"


cdef inline void _gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                       const floating* a, int lda, const floating* b, int ldb,
                       floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major ``C = alpha op(A) op(B) + beta C`` (as ``_blas.gemm``)."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef int64_t M = m, N = n, K = k, LDA = lda, LDB = ldb, LDC = ldc
    if m <= 0 or n <= 0:
        return
    if _sgemm64 == NULL:
        _scipy_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    elif floating is float:
        _sgemm64(&tb, &ta, &N, &M, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC)
    else:
        _dgemm64(&tb, &ta, &N, &M, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC)


# A GEMM is cut along one of three lines, whichever repeats the least work per block:
# the rows of C (each block packs all of op(B) again), its columns (all of op(A)
# again), or the reduction (each block writes a partial m x n product, and the
# partials are then added in block order).  The cut depends on the shape only.
cdef enum:
    CUT_ROWS = 0
    CUT_COLS = 1
    CUT_K = 2


cdef struct GemmJob:
    bint ta, tb, dbl
    int cut
    int m, n, k, lda, ldb, ldc
    double alpha, beta
    void* a
    void* b
    void* c
    void* part             # CUT_K: pieces x m x n partial products
    Py_ssize_t block, pieces, extent


cdef inline void _gemm_block(GemmJob* g, floating* a, floating* b, floating* c,
                             floating* part, Py_ssize_t p) noexcept nogil:
    cdef Py_ssize_t lo = p * g.block
    cdef Py_ssize_t hi = min(lo + g.block, g.extent)
    if g.cut == CUT_ROWS:       # rows [lo, hi) of C: rows of op(A)
        _gemm(g.ta, g.tb, <int> (hi - lo), g.n, g.k, <floating> g.alpha,
              a + (lo if g.ta else lo * g.lda), g.lda, b, g.ldb,
              <floating> g.beta, c + lo * g.ldc, g.ldc)
    elif g.cut == CUT_COLS:     # columns [lo, hi) of C: columns of op(B)
        _gemm(g.ta, g.tb, g.m, <int> (hi - lo), g.k, <floating> g.alpha, a, g.lda,
              b + (lo * g.ldb if g.tb else lo), g.ldb, <floating> g.beta, c + lo, g.ldc)
    else:                       # reduction [lo, hi): a partial product
        _gemm(g.ta, g.tb, g.m, g.n, <int> (hi - lo), 1, a + (lo * g.lda if g.ta else lo),
              g.lda, b + (lo if g.tb else lo * g.ldb), g.ldb, 0,
              part + p * g.m * g.n, g.n)


cdef inline void _add_parts(GemmJob* g, floating* c, floating* part, Py_ssize_t r0,
                            Py_ssize_t r1) noexcept nogil:
    """Rows [r0, r1) of C = beta C + alpha (part_0 + part_1 + ...), in block order."""
    cdef Py_ssize_t i, j, p, mn = g.m * g.n
    cdef floating acc, alpha = <floating> g.alpha, beta = <floating> g.beta
    for i in range(r0 * g.n, r1 * g.n):
        acc = part[i]
        for p in range(1, g.pieces):
            acc = acc + part[p * mn + i]
        if beta == 0:
            c[i] = alpha * acc
        else:
            c[i] = beta * c[i] + alpha * acc


cdef void _gemm_piece(void* arg, int t, int n) noexcept nogil:
    cdef GemmJob* g = <GemmJob*> arg
    cdef Py_ssize_t p0, p1, p
    nn_team_share(g.pieces, t, n, &p0, &p1)
    for p in range(p0, p1):
        if g.dbl:
            _gemm_block(g, <double*> g.a, <double*> g.b, <double*> g.c, <double*> g.part, p)
        else:
            _gemm_block(g, <float*> g.a, <float*> g.b, <float*> g.c, <float*> g.part, p)
    if g.cut != CUT_K:
        return
    nn_team_barrier(n)
    nn_team_share(g.m, t, n, &p0, &p1)
    if g.dbl:
        _add_parts(g, <double*> g.c, <double*> g.part, p0, p1)
    else:
        _add_parts(g, <float*> g.c, <float*> g.part, p0, p1)


# FLOPs (2 m n k) per block at least, the most blocks, the shortest reduction block
cdef double _BLOCK_FLOPS = 6e6
cdef Py_ssize_t _MAX_BLOCKS = 16
cdef Py_ssize_t _MIN_K_BLOCK = 256


cdef void _plan(GemmJob* g) noexcept:
    """Cut C by the rule above into blocks that depend on the shape only."""
    cdef double flops = 2.0 * g.m * g.n * g.k
    cdef double redo_rows = <double> g.k * g.n, redo_cols = <double> g.m * g.k
    cdef double redo_k = 2.0 * g.m * g.n
    cdef Py_ssize_t extent, pieces, block, align = 16
    if redo_k < redo_rows and redo_k < redo_cols and g.k >= 2 * _MIN_K_BLOCK:
        g.cut, extent, align = CUT_K, g.k, _MIN_K_BLOCK
    elif redo_rows <= redo_cols:
        g.cut, extent = CUT_ROWS, g.m
    else:
        g.cut, extent = CUT_COLS, g.n
    # a power of two: as many blocks per thread at 2, 4, 8 ... threads
    pieces = 1
    while (pieces * 2 <= _MAX_BLOCKS and pieces * 2 <= extent // align
           and flops >= pieces * 2 * _BLOCK_FLOPS):
        pieces *= 2
    block = (extent + pieces - 1) // pieces
    block = (block + 15) // 16 * 16
    g.extent, g.block = extent, block
    g.pieces = (extent + block - 1) // block
    if g.cut == CUT_K and g.pieces < 2:
        g.cut, g.extent, g.block, g.pieces = CUT_ROWS, g.m, g.m, 1


def _operand(name, x, rows, cols):
    if x.ndim != 2 or x.shape[0] != rows or x.shape[1] != cols:
        raise ValueError(f"gemm: {name} must have shape ({rows}, {cols}), got {x.shape}")
    if rows == 0 or cols == 0:
        return max(cols, 1)
    if rows > 1 and (x.strides[1] != x.itemsize and cols > 1
                     or x.strides[0] % x.itemsize or x.strides[0] < x.itemsize * cols):
        raise ValueError(f"gemm: {name} needs contiguous rows (strides {x.strides})")
    if rows <= 1 and cols > 1 and x.strides[1] != x.itemsize:
        raise ValueError(f"gemm: {name} needs contiguous rows (strides {x.strides})")
    return max(x.strides[0] // x.itemsize if rows > 1 else cols, cols, 1)


def gemm(a, b, c, bint trans_a=False, bint trans_b=False, double alpha=1.0, double beta=0.0):
    """``c = alpha * op(a) @ op(b) + beta * c`` in place (row-major; ``op`` transposes
    when its flag is set), cut into fixed blocks shared out over the team.  ``c`` is
    C-contiguous; ``a`` and ``b`` need contiguous rows; one dtype, float32 or float64.
    Returns ``c``."""
    cdef GemmJob g
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and isinstance(c, np.ndarray)):
        raise TypeError("gemm: a, b and c must be numpy arrays")
    if c.dtype not in (np.float32, np.float64) or a.dtype != c.dtype or b.dtype != c.dtype:
        raise TypeError(f"gemm: a, b and c must share the dtype float32 or float64, got "
                        f"{a.dtype}, {b.dtype}, {c.dtype}")
    if c.ndim != 2 or not c.flags.c_contiguous or not c.flags.writeable:
        raise ValueError(f"gemm: c must be a writeable C-contiguous matrix, got shape {c.shape}")
    m, n = c.shape
    if a.ndim != 2:
        raise ValueError(f"gemm: a must be a matrix, got shape {a.shape}")
    k = a.shape[0] if trans_a else a.shape[1]
    g.lda = _operand("a", a, k if trans_a else m, m if trans_a else k)
    g.ldb = _operand("b", b, n if trans_b else k, k if trans_b else n)
    if max(m, n, k, g.lda, g.ldb) >= 2 ** 31:
        raise ValueError(f"gemm: sizes must be below 2**31, got m={m}, n={n}, k={k}")
    g.ta, g.tb, g.m, g.n, g.k, g.ldc = trans_a, trans_b, m, n, k, max(n, 1)
    g.alpha, g.beta, g.dbl = alpha, beta, c.dtype == np.float64
    if m == 0 or n == 0:
        return c
    if k == 0:
        if beta == 0:
            c.fill(0)
        else:
            c *= beta
        return c
    g.a = cnp.PyArray_DATA(<cnp.ndarray> a)
    g.b = cnp.PyArray_DATA(<cnp.ndarray> b)
    g.c = cnp.PyArray_DATA(<cnp.ndarray> c)
    _plan(&g)
    part = None
    g.part = NULL
    if g.cut == CUT_K:
        part = np.empty(g.pieces * m * n, c.dtype)
        g.part = cnp.PyArray_DATA(<cnp.ndarray> part)
    with nogil:
        nn_team_run(_gemm_piece, &g, <int> min(g.pieces, NN_TEAM_MAX))
    return c


def gemm_blocks(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k):
    """``(cut, block, count)``: how :func:`gemm` cuts an ``m x n x k`` product
    (``cut``: ``"rows"``, ``"cols"`` or ``"k"``)."""
    cdef GemmJob g
    g.m, g.n, g.k = m, n, k
    _plan(&g)
    return ("rows", "cols", "k")[g.cut], g.block, g.pieces
