/*
 * _rnn_team.h -- the thread team of the recurrent step loops (_rnn_loops.pxd).
 *
 * One process-wide team of POSIX threads, started on first use and kept alive across
 * calls: nn_team_run(n, fn, ctx) runs fn(ctx, tid, n) on the calling thread (tid 0)
 * and n - 1 team threads, and returns when all n are done.  Inside, the step loops
 * synchronise with nn_team_barrier() once or twice per time step.
 *
 * Why not OpenMP: GNU libgomp deadlocks in a fork()ed child whose parent had run a
 * parallel region (multiprocessing's default start method on Linux), and a second
 * OpenMP runtime beside torch's keeps spinning threads we cannot bound.  Here the
 * team's threads spin for a bounded time (NN_TEAM_SPIN_NS between jobs, then sleep on
 * a condition variable; sched_yield() in a barrier after NN_BARRIER_SPIN_NS, so a
 * descheduled partner on a busy machine gets the core), and a fork handler makes the
 * child start a fresh team.  Without pthreads (NN_TEAM_THREADS 0) every run is
 * single-threaded: same code, same numbers.
 *
 * One job at a time: a caller that finds the team busy (another Python thread in a
 * sweep) runs its job alone with n = 1.  The step loops give the same numbers for
 * every n, so this never changes a result.
 */
#ifndef NN_CORE_RNN_TEAM_H
#define NN_CORE_RNN_TEAM_H

#include <stddef.h>

#if !defined(NN_TEAM_THREADS)
#if defined(__unix__) || defined(__APPLE__)
#define NN_TEAM_THREADS 1
#else
#define NN_TEAM_THREADS 0
#endif
#endif

#define NN_TEAM_MAX 64                   /* threads per job, the caller included */
#define NN_TEAM_SPIN_NS 200000           /* idle team threads spin this long, then sleep */
#define NN_BARRIER_SPIN_NS 50000         /* barrier: spin, then sched_yield() */

typedef void (*nn_team_fn)(void *ctx, int tid, int nth);

#if NN_TEAM_THREADS
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NN_CPU_RELAX() _mm_pause()
#else
#define NN_CPU_RELAX() ((void)0)
#endif

/* Sense-reversing barrier; each participant keeps its own sense.  Padded so that the
 * hot counter shares its cache line with nothing else. */
typedef struct {
    int count;
    int sense;
    int n;
    char pad[64 - 3 * sizeof(int)];
} nn_barrier;

static inline long long nn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Spin on `*word != value` until it changes; after `spin_ns`, yield the core each
 * round.  Reads the clock only every 256 rounds. */
static inline void nn_wait_change(const int *word, int value, long long spin_ns)
{
    long long t0 = 0;
    unsigned i = 0;
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value) {
        if ((++i & 255u) == 0) {
            long long t = nn_now_ns();
            if (t0 == 0)
                t0 = t;
            else if (t - t0 > spin_ns) {
                sched_yield();
                continue;
            }
        }
        NN_CPU_RELAX();
    }
}

/* Spin until `*word == 0` (same policy as nn_wait_change). */
static inline void nn_wait_until_zero(const int *word, long long spin_ns)
{
    long long t0 = 0;
    unsigned i = 0;
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) != 0) {
        if ((++i & 255u) == 0) {
            long long t = nn_now_ns();
            if (t0 == 0)
                t0 = t;
            else if (t - t0 > spin_ns) {
                sched_yield();
                continue;
            }
        }
        NN_CPU_RELAX();
    }
}

static inline void nn_barrier_wait(nn_barrier *b, int *sense)
{
    int s = !*sense;
    *sense = s;
    if (b->n <= 1)
        return;
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->n) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->sense, s, __ATOMIC_RELEASE);
    } else {
        nn_wait_change(&b->sense, !s, NN_BARRIER_SPIN_NS);
    }
}

typedef struct {
    pthread_mutex_t busy;               /* held by the caller of a team job */
    pthread_mutex_t lock;               /* guards the sleep / wake-up of team threads */
    pthread_cond_t wake;
    int started;                        /* team threads running (tids 1..started) */
    int gen;                            /* job generation: team threads wait for a change */
    int pending;                        /* team threads that have not finished the job */
    int sleepers;
    nn_team_fn fn;
    void *ctx;
    int nth;
    char pad[64];
    nn_barrier bar;                     /* the job's step barrier */
} nn_team_state;

static nn_team_state nn_team = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                                PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL, NULL, 1, {0},
                                {0, 0, 1, {0}}};
static int nn_team_atfork_done = 0;
static int nn_team_seen0[NN_TEAM_MAX];   /* the generation each team thread starts from */

static void *nn_team_main(void *arg)
{
    int tid = (int)(ptrdiff_t)arg;
    int seen = nn_team_seen0[tid];
    for (;;) {
        long long t0 = nn_now_ns();
        unsigned i = 0;
        while (__atomic_load_n(&nn_team.gen, __ATOMIC_ACQUIRE) == seen) {
            if ((++i & 255u) == 0 && nn_now_ns() - t0 > NN_TEAM_SPIN_NS) {
                pthread_mutex_lock(&nn_team.lock);
                __atomic_add_fetch(&nn_team.sleepers, 1, __ATOMIC_SEQ_CST);
                while (__atomic_load_n(&nn_team.gen, __ATOMIC_SEQ_CST) == seen)
                    pthread_cond_wait(&nn_team.wake, &nn_team.lock);
                __atomic_sub_fetch(&nn_team.sleepers, 1, __ATOMIC_SEQ_CST);
                pthread_mutex_unlock(&nn_team.lock);
                break;
            }
            NN_CPU_RELAX();
        }
        seen = __atomic_load_n(&nn_team.gen, __ATOMIC_ACQUIRE);
        /* every team thread acknowledges every job (so the caller cannot post the
         * next one before all have read this one's parameters) */
        if (tid < nn_team.nth)
            nn_team.fn(nn_team.ctx, tid, nn_team.nth);
        __atomic_sub_fetch(&nn_team.pending, 1, __ATOMIC_ACQ_REL);
    }
    return NULL;
}

/* fork(): the child has none of the team's threads; it starts a fresh team. */
static void nn_team_after_fork_child(void)
{
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_t m2 = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    nn_team.busy = m;
    nn_team.lock = m2;
    nn_team.wake = c;
    nn_team.started = 0;
    nn_team.pending = 0;
    nn_team.sleepers = 0;
}

/* Start team threads up to tid n - 1 (busy is held); returns the threads available. */
static int nn_team_grow(int n)
{
    if (!nn_team_atfork_done) {
        pthread_atfork(NULL, NULL, nn_team_after_fork_child);
        nn_team_atfork_done = 1;
    }
    if (n > NN_TEAM_MAX)
        n = NN_TEAM_MAX;
    while (nn_team.started + 1 < n) {
        pthread_t th;
        pthread_attr_t attr;
        sigset_t all, old;
        int tid = nn_team.started + 1, rc;
        /* team threads run no Python and take no signals */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        /* the new thread waits for the next job (no job runs while busy is held) */
        nn_team_seen0[tid] = nn_team.gen;
        rc = pthread_create(&th, &attr, nn_team_main, (void *)(ptrdiff_t)tid);
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0)
            break;
        nn_team.started = tid;
    }
    return nn_team.started + 1;
}

/* Run fn(ctx, tid, nth) for tid = 0..nth-1 with nth <= n, the caller as tid 0;
 * returns nth (1 when the team is busy or threads cannot be started). */
static int nn_team_run(int n, nn_team_fn fn, void *ctx)
{
    int nth;
    if (n <= 1 || pthread_mutex_trylock(&nn_team.busy) != 0) {
        fn(ctx, 0, 1);
        return 1;
    }
    nth = nn_team_grow(n);
    if (nth > n)
        nth = n;
    if (nth <= 1) {
        pthread_mutex_unlock(&nn_team.busy);
        fn(ctx, 0, 1);
        return 1;
    }
    nn_team.fn = fn;
    nn_team.ctx = ctx;
    nn_team.nth = nth;
    nn_team.bar.count = 0;
    nn_team.bar.sense = 0;
    nn_team.bar.n = nth;
    __atomic_store_n(&nn_team.pending, nn_team.started, __ATOMIC_RELAXED);
    __atomic_add_fetch(&nn_team.gen, 1, __ATOMIC_SEQ_CST);     /* publishes the job */
    if (__atomic_load_n(&nn_team.sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&nn_team.lock);
        pthread_cond_broadcast(&nn_team.wake);
        pthread_mutex_unlock(&nn_team.lock);
    }
    fn(ctx, 0, nth);
    nn_wait_until_zero(&nn_team.pending, NN_BARRIER_SPIN_NS);
    pthread_mutex_unlock(&nn_team.busy);
    return nth;
}

/* The barrier of the running job (every participant passes its own sense word and the
 * job's thread count; a job that runs alone -- nth 1 -- never touches the team's
 * barrier, which may belong to another caller's job). */
static inline void nn_team_barrier(int *sense, int nth)
{
    if (nth > 1)
        nn_barrier_wait(&nn_team.bar, sense);
}

static inline int nn_team_available(void) { return 1; }

#else  /* no threads: every job runs on the caller */

static inline int nn_team_run(int n, nn_team_fn fn, void *ctx)
{
    (void)n;
    fn(ctx, 0, 1);
    return 1;
}

static inline void nn_team_barrier(int *sense, int nth) { (void)sense; (void)nth; }

static inline int nn_team_available(void) { return 0; }

#endif /* NN_TEAM_THREADS */

#endif /* NN_CORE_RNN_TEAM_H */
