/*
 * _alloc.h -- NumPy data-memory handlers (PyDataMem_Handler, NEP 49) for nn_core.
 *
 * caching: blocks of >= NN_CACHE_MIN bytes are kept on free lists by size class when
 *   NumPy frees them and handed out again for the next request of that class, so a
 *   training step whose arrays repeat in size gets memory that is already mapped
 *   (no page faults, no kernel zeroing).  Size classes are 8 per power of two (at most
 *   12.5 % slack); the cache holds at most `limit` bytes (beyond it blocks go back to
 *   the system).  `in_use` and `peak` count the live blocks of cached size, so that a
 *   training loop can size `limit` from what one step uses.  Smaller blocks go straight to malloc.
 * budget: every allocation is counted against a byte budget; one that would exceed it
 *   fails (NumPy raises MemoryError).  Used while rebuilding a module from a file.
 *
 * Every block carries a 64-byte header (its size class and handler kind) and is
 * 64-byte aligned.  All state is behind one mutex.
 */
#ifndef NN_CORE_ALLOC_H
#define NN_CORE_ALLOC_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#define NN_HDR 64
#define NN_CACHE_MIN ((size_t)32768)
#define NN_NCLASS (8 * 64)

typedef struct { size_t size; size_t cls; } nn_hdr;   /* fits in the 64-byte header */

typedef struct nn_free { struct nn_free *next; } nn_free;

typedef struct {
    pthread_mutex_t lock;
    nn_free *lists[NN_NCLASS];
    size_t cached, limit;              /* bytes held on the free lists, their cap */
    uint64_t hits, misses, released;
    size_t in_use, peak;               /* bytes of live cached-class blocks, their peak */
} nn_alloc_state;

static nn_alloc_state nn_cache_state = {PTHREAD_MUTEX_INITIALIZER, {0}, 0, (size_t)1 << 30,
                                        0, 0, 0, 0, 0};

/* a live cached-class block of `bytes` more (or fewer); called with the lock held */
static void nn_count_in_use(size_t bytes, int add)
{
    if (add) {
        nn_cache_state.in_use += bytes;
        if (nn_cache_state.in_use > nn_cache_state.peak)
            nn_cache_state.peak = nn_cache_state.in_use;
    } else {
        nn_cache_state.in_use -= bytes <= nn_cache_state.in_use ? bytes : nn_cache_state.in_use;
    }
}

/* size class: 8 classes per power of two; returns the class index, *rounded its size */
static size_t nn_class_of(size_t size, size_t *rounded)
{
    size_t k = 63 - (size_t)__builtin_clzll((unsigned long long)size);
    size_t step = k >= 3 ? ((size_t)1 << (k - 3)) : 1;
    size_t r = (size + step - 1) / step * step;
    k = 63 - (size_t)__builtin_clzll((unsigned long long)r);
    step = k >= 3 ? ((size_t)1 << (k - 3)) : 1;
    *rounded = r;
    return k * 8 + (r / step - 8);
}

static void *nn_raw_alloc(size_t total)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, total) != 0)
        return NULL;
    return p;
}

/* ------------------------------------------------------------------ caching */
static void *nn_cache_get(size_t size, int zero)
{
    size_t rounded = size, cls = (size_t)-1;
    char *base = NULL;
    if (size >= NN_CACHE_MIN) {
        cls = nn_class_of(size, &rounded);
        pthread_mutex_lock(&nn_cache_state.lock);
        nn_free *f = nn_cache_state.lists[cls];
        if (f != NULL) {
            nn_cache_state.lists[cls] = f->next;
            nn_cache_state.cached -= rounded + NN_HDR;
            nn_cache_state.hits++;
            base = (char *)f;
        } else {
            nn_cache_state.misses++;
        }
        nn_count_in_use(rounded + NN_HDR, 1);
        pthread_mutex_unlock(&nn_cache_state.lock);
    }
    if (base == NULL) {
        base = (char *)nn_raw_alloc(rounded + NN_HDR);
        if (base == NULL) {
            if (cls != (size_t)-1) {
                pthread_mutex_lock(&nn_cache_state.lock);
                nn_count_in_use(rounded + NN_HDR, 0);
                pthread_mutex_unlock(&nn_cache_state.lock);
            }
            return NULL;
        }
        if (zero)
            memset(base + NN_HDR, 0, size);
    } else if (zero) {
        memset(base + NN_HDR, 0, size);
    }
    nn_hdr *h = (nn_hdr *)base;
    h->size = size;
    h->cls = cls;
    return base + NN_HDR;
}

static void nn_cache_put(void *ptr)
{
    if (ptr == NULL)
        return;
    char *base = (char *)ptr - NN_HDR;
    nn_hdr *h = (nn_hdr *)base;
    size_t cls = h->cls, rounded;
    if (cls != (size_t)-1) {
        nn_class_of(h->size, &rounded);
        pthread_mutex_lock(&nn_cache_state.lock);
        nn_count_in_use(rounded + NN_HDR, 0);
        if (nn_cache_state.cached + rounded + NN_HDR <= nn_cache_state.limit) {
            nn_free *f = (nn_free *)base;
            f->next = nn_cache_state.lists[cls];
            nn_cache_state.lists[cls] = f;
            nn_cache_state.cached += rounded + NN_HDR;
            pthread_mutex_unlock(&nn_cache_state.lock);
            return;
        }
        nn_cache_state.released++;
        pthread_mutex_unlock(&nn_cache_state.lock);
    }
    free(base);
}

static void *nn_cache_malloc(void *ctx, size_t size) { (void)ctx; return nn_cache_get(size, 0); }

static void *nn_cache_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    if (elsize && nelem > (size_t)-1 / elsize)
        return NULL;
    return nn_cache_get(nelem * elsize, 1);
}

static void nn_cache_free(void *ctx, void *ptr, size_t size) { (void)ctx; (void)size; nn_cache_put(ptr); }

static void *nn_cache_realloc(void *ctx, void *ptr, size_t new_size)
{
    (void)ctx;
    if (ptr == NULL)
        return nn_cache_get(new_size, 0);
    size_t old = ((nn_hdr *)((char *)ptr - NN_HDR))->size;
    void *p = nn_cache_get(new_size, 0);
    if (p == NULL)
        return NULL;
    memcpy(p, ptr, old < new_size ? old : new_size);
    nn_cache_put(ptr);
    return p;
}

/* release every cached block; returns the bytes given back */
static size_t nn_cache_release(void)
{
    size_t freed = 0;
    pthread_mutex_lock(&nn_cache_state.lock);
    for (size_t c = 0; c < NN_NCLASS; c++) {
        nn_free *f = nn_cache_state.lists[c];
        while (f != NULL) {
            nn_free *next = f->next;
            free(f);
            f = next;
        }
        nn_cache_state.lists[c] = NULL;
    }
    freed = nn_cache_state.cached;
    nn_cache_state.cached = 0;
    pthread_mutex_unlock(&nn_cache_state.lock);
    return freed;
}

/* the peak of the bytes in use starts again from what is in use now */
static void nn_cache_reset_peak(void)
{
    pthread_mutex_lock(&nn_cache_state.lock);
    nn_cache_state.peak = nn_cache_state.in_use;
    pthread_mutex_unlock(&nn_cache_state.lock);
}

/* a fork while another thread holds the cache lock must not leave it locked */
static void nn_alloc_prefork(void) { pthread_mutex_lock(&nn_cache_state.lock); }
static void nn_alloc_postfork(void) { pthread_mutex_unlock(&nn_cache_state.lock); }

static void nn_alloc_init(void)
{
    pthread_atfork(nn_alloc_prefork, nn_alloc_postfork, nn_alloc_postfork);
}

/* ------------------------------------------------------------------- budget */
/* One state per budget handler (its ctx); NumPy keeps the handler alive as long as
   any array allocated through it, so frees always find their state. */
typedef struct {
    pthread_mutex_t lock;
    size_t left;                       /* bytes still allowed (frees give them back) */
    int failed;                        /* an allocation was refused */
} nn_budget;

static void nn_budget_init(nn_budget *b, size_t nbytes)
{
    pthread_mutex_init(&b->lock, NULL);
    b->left = nbytes;
    b->failed = 0;
}

static void *nn_budget_get(nn_budget *b, size_t size, int zero)
{
    pthread_mutex_lock(&b->lock);
    if (size > b->left) {
        b->failed = 1;
        pthread_mutex_unlock(&b->lock);
        return NULL;
    }
    b->left -= size;
    pthread_mutex_unlock(&b->lock);
    char *base = (char *)nn_raw_alloc(size + NN_HDR);
    if (base == NULL) {
        pthread_mutex_lock(&b->lock);
        b->left += size;
        pthread_mutex_unlock(&b->lock);
        return NULL;
    }
    if (zero)
        memset(base + NN_HDR, 0, size);
    nn_hdr *h = (nn_hdr *)base;
    h->size = size;
    h->cls = (size_t)-1;
    return base + NN_HDR;
}

static void nn_budget_put(nn_budget *b, void *ptr)
{
    if (ptr == NULL)
        return;
    char *base = (char *)ptr - NN_HDR;
    size_t size = ((nn_hdr *)base)->size;
    pthread_mutex_lock(&b->lock);
    b->left += size;
    pthread_mutex_unlock(&b->lock);
    free(base);
}

static void *nn_budget_malloc(void *ctx, size_t size)
{ return nn_budget_get((nn_budget *)ctx, size, 0); }

static void *nn_budget_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize && nelem > (size_t)-1 / elsize)
        return NULL;
    return nn_budget_get((nn_budget *)ctx, nelem * elsize, 1);
}

static void nn_budget_free(void *ctx, void *ptr, size_t size)
{ (void)size; nn_budget_put((nn_budget *)ctx, ptr); }

static void *nn_budget_realloc(void *ctx, void *ptr, size_t new_size)
{
    nn_budget *b = (nn_budget *)ctx;
    if (ptr == NULL)
        return nn_budget_get(b, new_size, 0);
    size_t old = ((nn_hdr *)((char *)ptr - NN_HDR))->size;
    void *p = nn_budget_get(b, new_size, 0);
    if (p == NULL)
        return NULL;
    memcpy(p, ptr, old < new_size ? old : new_size);
    nn_budget_put(b, ptr);
    return p;
}

#endif /* NN_CORE_ALLOC_H */
