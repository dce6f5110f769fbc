"""NumPy data-memory handlers (NEP 49): a caching allocator and an allocation budget.

The C side is ``_alloc.h``.  A handler is a ``PyCapsule`` named ``"mem_handler"``;
``set_handler`` installs one for the current context (thread / asyncio task) and
returns the previous one.  Every array remembers the handler that allocated it and
frees through it, so switching handlers at any time is safe.
"""
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.stdlib cimport calloc, free
from libc.string cimport strncpy

cnp.import_array()

cdef extern from "numpy/ndarraytypes.h":
    ctypedef struct PyDataMemAllocator:
        void* ctx
        void* (*malloc)(void* ctx, size_t size) noexcept nogil
        void* (*calloc)(void* ctx, size_t nelem, size_t elsize) noexcept nogil
        void* (*realloc)(void* ctx, void* ptr, size_t new_size) noexcept nogil
        void (*free)(void* ctx, void* ptr, size_t size) noexcept nogil
    ctypedef struct PyDataMem_Handler:
        char name[127]
        unsigned char version
        PyDataMemAllocator allocator

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)
    object PyDataMem_GetHandler()

cdef extern from "_alloc.h" nogil:
    ctypedef struct nn_budget:
        size_t left
        int failed
    ctypedef struct nn_alloc_state:
        size_t cached, limit
        unsigned long long hits, misses, released
        size_t in_use, peak
    nn_alloc_state nn_cache_state
    size_t NN_CACHE_MIN
    void nn_alloc_init() noexcept
    void* nn_cache_malloc(void* ctx, size_t size) noexcept
    void* nn_cache_calloc(void* ctx, size_t nelem, size_t elsize) noexcept
    void* nn_cache_realloc(void* ctx, void* ptr, size_t new_size) noexcept
    void nn_cache_free(void* ctx, void* ptr, size_t size) noexcept
    size_t nn_cache_release() noexcept
    void nn_cache_reset_peak() noexcept
    void* nn_budget_malloc(void* ctx, size_t size) noexcept
    void* nn_budget_calloc(void* ctx, size_t nelem, size_t elsize) noexcept
    void* nn_budget_realloc(void* ctx, void* ptr, size_t new_size) noexcept
    void nn_budget_free(void* ctx, void* ptr, size_t size) noexcept
    void nn_budget_init(nn_budget* b, size_t nbytes) noexcept

nn_alloc_init()

cdef PyDataMem_Handler _caching
strncpy(_caching.name, b"nn_core_caching", 126)
_caching.version = 1
_caching.allocator.ctx = NULL
_caching.allocator.malloc = nn_cache_malloc
_caching.allocator.calloc = nn_cache_calloc
_caching.allocator.realloc = nn_cache_realloc
_caching.allocator.free = nn_cache_free

CACHING = PyCapsule_New(&_caching, "mem_handler", NULL)
MIN_CACHED_BYTES = NN_CACHE_MIN


def set_handler(handler):
    """Install ``handler`` for the current context; returns the previous one."""
    return PyDataMem_SetHandler(handler)


def get_handler():
    return PyDataMem_GetHandler()


def cache_stats():
    """``hits``, ``misses``, ``released`` (blocks freed past the limit), ``cached_bytes``,
    ``limit_bytes``, ``in_use_bytes`` (live blocks of cached size) and ``peak_bytes``
    (their most since :func:`reset_peak`) of the caching handler."""
    return {"hits": nn_cache_state.hits, "misses": nn_cache_state.misses,
            "released": nn_cache_state.released, "cached_bytes": nn_cache_state.cached,
            "limit_bytes": nn_cache_state.limit, "in_use_bytes": nn_cache_state.in_use,
            "peak_bytes": nn_cache_state.peak}


def reset_peak():
    """Start ``peak_bytes`` again from the bytes in use now."""
    nn_cache_reset_peak()


def set_cache_limit(size_t nbytes):
    """Most bytes the free lists may hold (blocks freed beyond go back to the system)."""
    nn_cache_state.limit = nbytes


def release_cache():
    """Give every cached block back to the system; returns the bytes released."""
    return nn_cache_release()


cdef void _destroy_budget(object capsule) noexcept:
    cdef PyDataMem_Handler* h = <PyDataMem_Handler*> PyCapsule_GetPointer(capsule, "mem_handler")
    free(h.allocator.ctx)
    free(h)


def budget_handler(size_t nbytes):
    """A new handler under which NumPy may hold at most ``nbytes`` at once; a request
    beyond fails with MemoryError (nothing is allocated)."""
    cdef PyDataMem_Handler* h = <PyDataMem_Handler*> calloc(1, sizeof(PyDataMem_Handler))
    cdef nn_budget* b = <nn_budget*> calloc(1, sizeof(nn_budget))
    if h == NULL or b == NULL:
        free(h)
        free(b)
        raise MemoryError()
    nn_budget_init(b, nbytes)
    strncpy(h.name, b"nn_core_budget", 126)
    h.version = 1
    h.allocator.ctx = b
    h.allocator.malloc = nn_budget_malloc
    h.allocator.calloc = nn_budget_calloc
    h.allocator.realloc = nn_budget_realloc
    h.allocator.free = nn_budget_free
    return PyCapsule_New(h, "mem_handler", _destroy_budget)


def budget_exceeded(handler):
    """True when ``handler`` (from :func:`budget_handler`) refused an allocation."""
    cdef PyDataMem_Handler* h = <PyDataMem_Handler*> PyCapsule_GetPointer(handler, "mem_handler")
    return bool((<nn_budget*> h.allocator.ctx).failed)
