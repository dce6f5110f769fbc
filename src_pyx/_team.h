/* The process's thread team (the implementation behind _team_api.h; included by
 * _team.pyx only).
 *
 * Workers are created on first use, up to the team size minus one, and live until the
 * process ends.  Every wait spins for a bounded time (nn_team_spin_ns), then sleeps
 * on a futex: a partner that was descheduled costs a wake-up, not a time slice, and
 * an idle team burns no CPU.  One job runs at a time; run() from inside a job, or
 * while another thread's job runs, runs the job inline with n = 1.
 *
 * While any job runs (inline ones too), every OpenBLAS library registered through
 * _team.set_blas() is held at one thread (openblas_set_num_threads_local): OpenBLAS's
 * own workers never run beside the team, and a BLAS call inside a job gives the same
 * bits whatever the BLAS thread setting outside. */
#ifndef NN_TEAM_H
#define NN_TEAM_H
#include <Python.h>
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "_team_api.h"

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define NN_HAVE_FUTEX 1
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NN_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define NN_PAUSE() __asm__ __volatile__("yield")
#else
#define NN_PAUSE() ((void) 0)
#endif

#define NN_TEAM_MAX 256
#define NN_TEAM_MAX_BLAS 8

#define NN_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define NN_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define NN_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)

typedef int (*nn_blas_setter)(int);

/* a worker's wake-up word (the job count it may start), on a cache line of its own:
 * a job wakes only the workers it uses */
typedef struct {
    int gen;
    int asleep;
    char pad[56];
} nn_worker_slot;

typedef struct {
    pthread_mutex_t lock;          /* held by the caller for a whole job */
    int size;                      /* threads a job may use, the caller included */
    int nworkers;                  /* workers started */
    pthread_t th[NN_TEAM_MAX];
    nn_worker_slot slot[NN_TEAM_MAX];  /* each worker waits on its own word */
    /* the job */
    nn_team_fn fn;
    void *arg;
    int n;
    int gen;                       /* jobs published */
    int remaining;                 /* futex word: workers still in the job */
    int caller_asleep;
    /* the barrier */
    int bar_count, bar_gen, bar_sleepers;
    long spin_ns;
    int nblas;
    nn_blas_setter blas[NN_TEAM_MAX_BLAS];
    pthread_mutex_t blas_lock;     /* guards the hold count and the saved settings */
    int blas_holds;
    int blas_saved[NN_TEAM_MAX_BLAS];
} nn_team_state;

static nn_team_state nn_T = {PTHREAD_MUTEX_INITIALIZER, 1, 0};

/* an optional trace of the jobs a thread starts (the scaling estimate of
 * nn_core.bench scaling): start and end time, pieces asked for, barriers passed */
typedef struct {
    double t0, t1;
    int want, barriers;
} nn_job_record;
static nn_job_record *nn_trace = NULL;
static int nn_trace_cap = 0, nn_trace_len = 0;
static __thread int nn_barrier_count = 0;

/* hold every registered OpenBLAS at one thread (counted: the last release restores) */
static void nn_blas_hold(void)
{
    int i;
    if (!nn_T.nblas)
        return;
    pthread_mutex_lock(&nn_T.blas_lock);
    if (nn_T.blas_holds++ == 0)
        for (i = 0; i < nn_T.nblas; i++)
            nn_T.blas_saved[i] = nn_T.blas[i](1);
    pthread_mutex_unlock(&nn_T.blas_lock);
}

static void nn_blas_release(void)
{
    int i;
    if (!nn_T.nblas)
        return;
    pthread_mutex_lock(&nn_T.blas_lock);
    if (--nn_T.blas_holds == 0)
        for (i = nn_T.nblas - 1; i >= 0; i--)
            nn_T.blas[i](nn_T.blas_saved[i]);
    pthread_mutex_unlock(&nn_T.blas_lock);
}
static __thread int nn_team_in_job = 0;     /* this thread runs (part of) a job */

static void nn_futex_wait(int *word, int value)
{
#ifdef NN_HAVE_FUTEX
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
#else
    struct timespec ts = {0, 50000};
    (void) word; (void) value;
    nanosleep(&ts, NULL);
#endif
}

static void nn_futex_wake(int *word)
{
#ifdef NN_HAVE_FUTEX
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void) word;
#endif
}

/* as nn_futex_wait, for at most ns nanoseconds */
static void nn_futex_wait_for(int *word, int value, long ns)
{
#ifdef NN_HAVE_FUTEX
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, &ts, NULL, 0);
#else
    struct timespec ts = {0, ns < 50000 ? ns : 50000};
    (void) word; (void) value;
    nanosleep(&ts, NULL);
#endif
}

static inline long nn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long) ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* wait until *word != old (spin, then sleep); returns the new value */
static int nn_wait_change(int *word, int old, int *sleepers)
{
    int v, i;
    long deadline = -1;
    for (;;) {
        for (i = 0; i < 64; i++) {
            v = NN_LOAD(word);
            if (v != old)
                return v;
            NN_PAUSE();
        }
        long now = nn_now_ns();
        if (deadline < 0)
            deadline = now + nn_T.spin_ns;
        else if (now >= deadline)
            break;
    }
    NN_ADD(sleepers, 1);
    while ((v = NN_LOAD(word)) == old)
        nn_futex_wait(word, old);
    NN_ADD(sleepers, -1);
    return v;
}

/* wait until *word >= target, spinning first, then sleeping at most timeout_ns at a
 * time (whoever raises *word wakes it when *asleep); 1 when reached, 0 on timeout */
static int nn_wait_count(int *word, int target, int *asleep, long timeout_ns)
{
    int v, i;
    long deadline = nn_now_ns() + nn_T.spin_ns;
    while ((v = NN_LOAD(word)) < target) {
        for (i = 0; i < 64 && NN_LOAD(word) < target; i++)
            NN_PAUSE();
        if (nn_now_ns() < deadline)
            continue;
        NN_STORE(asleep, 1);
        if ((v = NN_LOAD(word)) < target)
            nn_futex_wait_for(word, v, timeout_ns);
        NN_STORE(asleep, 0);
        return NN_LOAD(word) >= target;
    }
    return 1;
}

/* raise *word by k and wake a sleeper of nn_wait_count */
static void nn_count_up(int *word, int k, int *asleep)
{
    NN_ADD(word, k);
    if (NN_LOAD(asleep))
        nn_futex_wake(word);
}

static void nn_team_barrier(int n)
{
    nn_barrier_count++;
    if (n <= 1)
        return;
    int g = NN_LOAD(&nn_T.bar_gen);
    if (NN_ADD(&nn_T.bar_count, 1) == n - 1) {
        NN_STORE(&nn_T.bar_count, 0);
        NN_STORE(&nn_T.bar_gen, g + 1);
        if (NN_LOAD(&nn_T.bar_sleepers))
            nn_futex_wake(&nn_T.bar_gen);
    } else {
        nn_wait_change(&nn_T.bar_gen, g, &nn_T.bar_sleepers);
    }
}

static void *nn_team_worker(void *p)
{
    int t = (int) (intptr_t) p;
    nn_worker_slot *me = &nn_T.slot[t];
    int seen = 0;                  /* the slot was zeroed before the thread started */
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "nn_core-worker");
#endif
    nn_team_in_job = 1;        /* run() from a worker always runs inline */
    for (;;) {
        seen = nn_wait_change(&me->gen, seen, &me->asleep);
        nn_T.fn(nn_T.arg, t, nn_T.n);
        if (NN_ADD(&nn_T.remaining, -1) == 1 && NN_LOAD(&nn_T.caller_asleep))
            nn_futex_wake(&nn_T.remaining);
    }
    return NULL;
}

/* start workers up to n - 1 (lock held); returns the threads usable */
static int nn_team_grow(int n)
{
    pthread_attr_t attr;
    if (n > NN_TEAM_MAX)
        n = NN_TEAM_MAX;
    if (nn_T.nworkers + 1 >= n)
        return n;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (nn_T.nworkers + 1 < n) {
        int t = nn_T.nworkers + 1;
        NN_STORE(&nn_T.slot[t].gen, 0);
        NN_STORE(&nn_T.slot[t].asleep, 0);
        if (pthread_create(&nn_T.th[t], &attr, nn_team_worker, (void *) (intptr_t) t) != 0)
            break;
        nn_T.nworkers = t;
    }
    pthread_attr_destroy(&attr);
    return nn_T.nworkers + 1 < n ? nn_T.nworkers + 1 : n;
}

static int nn_team_available(void)
{
    return nn_team_in_job ? 1 : NN_LOAD(&nn_T.size);
}

static int nn_team_run_untraced(nn_team_fn fn, void *arg, int want);

static int nn_team_run(nn_team_fn fn, void *arg, int want)
{
    if (nn_trace == NULL || nn_team_in_job || nn_trace_len >= nn_trace_cap)
        return nn_team_run_untraced(fn, arg, want);
    nn_job_record *rec = &nn_trace[nn_trace_len++];
    int before = nn_barrier_count, n;
    rec->want = want;
    rec->t0 = nn_now_ns() * 1e-9;
    n = nn_team_run_untraced(fn, arg, want);
    rec->t1 = nn_now_ns() * 1e-9;
    rec->barriers = nn_barrier_count - before;
    return n;
}

static int nn_team_run_untraced(nn_team_fn fn, void *arg, int want)
{
    int n = want < NN_LOAD(&nn_T.size) ? want : NN_LOAD(&nn_T.size), i;
    if (nn_team_in_job) {               /* nested: BLAS is held already */
        fn(arg, 0, 1);
        return 1;
    }
    nn_blas_hold();
    if (n > 1 && pthread_mutex_trylock(&nn_T.lock) == 0) {
        n = nn_team_grow(n);
        if (n <= 1)
            pthread_mutex_unlock(&nn_T.lock);
    } else {
        n = 1;
    }
    if (n <= 1) {
        nn_team_in_job = 1;
        fn(arg, 0, 1);
        nn_team_in_job = 0;
        nn_blas_release();
        return 1;
    }
    nn_T.fn = fn;
    nn_T.arg = arg;
    nn_T.n = n;
    NN_STORE(&nn_T.remaining, n - 1);
    NN_ADD(&nn_T.gen, 1);
    for (i = 1; i < n; i++) {
        NN_ADD(&nn_T.slot[i].gen, 1);
        if (NN_LOAD(&nn_T.slot[i].asleep))
            nn_futex_wake(&nn_T.slot[i].gen);
    }
    nn_team_in_job = 1;
    fn(arg, 0, n);
    nn_team_in_job = 0;
    /* every worker of the job must have left it before the next job is published */
    int r;
    long deadline = -1;
    while ((r = NN_LOAD(&nn_T.remaining)) != 0) {
        for (i = 0; i < 64 && NN_LOAD(&nn_T.remaining) != 0; i++)
            NN_PAUSE();
        long now = nn_now_ns();
        if (deadline < 0)
            deadline = now + nn_T.spin_ns;
        else if (now >= deadline) {
            NN_STORE(&nn_T.caller_asleep, 1);
            while ((r = NN_LOAD(&nn_T.remaining)) != 0)
                nn_futex_wait(&nn_T.remaining, r);
            NN_STORE(&nn_T.caller_asleep, 0);
            break;
        }
    }
    pthread_mutex_unlock(&nn_T.lock);
    nn_blas_release();
    return n;
}

static void nn_team_after_fork(void)
{
    /* the child has no workers; it starts its own on first use */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER, fresh_blas = PTHREAD_MUTEX_INITIALIZER;
    nn_T.lock = fresh;
    nn_T.blas_lock = fresh_blas;
    nn_T.blas_holds = 0;
    nn_T.nworkers = 0;
    nn_T.remaining = nn_T.caller_asleep = 0;
    nn_T.bar_count = nn_T.bar_sleepers = 0;
    nn_team_in_job = 0;
}

static const nn_team_api nn_team_table = {NN_TEAM_API_VERSION, nn_team_run, nn_team_barrier,
                                          nn_team_available};

static int nn_team_init(void)
{
    pthread_mutex_init(&nn_T.blas_lock, NULL);
    nn_T.spin_ns = 50000;
    return pthread_atfork(NULL, NULL, nn_team_after_fork);
}
#endif
