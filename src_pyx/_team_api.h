/* The thread team's C interface, for kernels in other extension modules.
 *
 * One team serves the whole process (nn_core._kernels._team owns it); other modules
 * reach it through a capsule holding this table of functions, imported once by
 * nn_team_import() when their module is initialised.
 *
 * A job is fn(arg, t, n) for t in [0, n): t = 0 runs on the calling thread, the
 * others on the team's workers.  n is what run() grants: min(want, the team size),
 * or 1 while the team is busy (a nested call from inside a job, or a second caller
 * thread): a job must give the same result for every n, so kernels cut their work
 * into fixed pieces and let t take pieces [P*t/n, P*(t+1)/n).  While a job with
 * n > 1 runs, every OpenBLAS library of the process runs one thread. */
#ifndef NN_TEAM_API_H
#define NN_TEAM_API_H
#include <Python.h>

typedef void (*nn_team_fn)(void *arg, int t, int n);

typedef struct nn_team_api {
    int version;
    /* run fn on up to want threads; returns n (>= 1), after every thread returned */
    int (*run)(nn_team_fn fn, void *arg, int want);
    /* inside a job: wait until all n threads of the job arrived (a no-op at n = 1) */
    void (*barrier)(int n);
    /* threads a job started now would get (1 inside a job) */
    int (*available)(void);
} nn_team_api;

#define NN_TEAM_API_VERSION 1
#define NN_TEAM_CAPSULE "nn_core._kernels._team._C_API"

static const nn_team_api *nn_team = NULL;

/* with the GIL, at module init: 0, or -1 with an exception set */
static __attribute__((unused)) int nn_team_import(void)
{
    if (nn_team != NULL)
        return 0;
    nn_team = (const nn_team_api *) PyCapsule_Import(NN_TEAM_CAPSULE, 0);
    if (nn_team == NULL)
        return -1;
    if (nn_team->version != NN_TEAM_API_VERSION) {
        PyErr_Format(PyExc_ImportError, "nn_core._kernels._team: API version %d, expected %d",
                     nn_team->version, NN_TEAM_API_VERSION);
        nn_team = NULL;
        return -1;
    }
    return 0;
}

/* the pieces [p0, p1) of P that thread t of n takes */
static inline void nn_team_share(Py_ssize_t P, int t, int n, Py_ssize_t *p0, Py_ssize_t *p1)
{
    *p0 = P * t / n;
    *p1 = P * (t + 1) / n;
}
#endif
