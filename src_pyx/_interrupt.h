/* Ctrl-C during a long compiled sweep: every NN_STOP_EVERY steps the main thread runs
 * Python's pending signal handlers (PyErr_CheckSignals, with the GIL taken briefly).
 * A handler that raises (KeyboardInterrupt) stops the sweep; its exception is kept
 * per thread until the entry point re-raises it with the GIL held (nn_stop_raise).
 * Other threads cannot run handlers (Python runs them on the main thread only); they
 * stop when the main thread cancels the sweeps it waits for (nn_stop_cancel, set while
 * the half batch of a split sweep on the main thread was interrupted), and their entry
 * point then raises KeyboardInterrupt too, so that a cut-short sweep never passes for
 * a finished one. */
#ifndef NN_INTERRUPT_H
#define NN_INTERRUPT_H
#include <Python.h>
#include "pythread.h"

#define NN_STOP_EVERY 256

static unsigned long nn_main_ident = 0;
static __thread int nn_stop_flag = 0;
static __thread PyObject *nn_stop_type = NULL, *nn_stop_value = NULL, *nn_stop_tb = NULL;
static int nn_stop_cancelled = 0;       /* the other threads' sweeps must stop */

static void nn_stop_init(unsigned long main_ident) { nn_main_ident = main_ident; }

/* with or without the GIL: cancel (1) the sweeps of the other threads, or allow them (0) */
static void nn_stop_cancel(int on) { __atomic_store_n(&nn_stop_cancelled, on, __ATOMIC_RELEASE); }

/* without the GIL: 1 when the sweep must stop (checks at every NN_STOP_EVERY-th step;
 * a thread other than the main one checks the cancel flag at every step) */
static int nn_stop_check(Py_ssize_t step)
{
    if (nn_stop_flag)
        return 1;
    if (PyThread_get_thread_ident() != nn_main_ident) {
        if (__atomic_load_n(&nn_stop_cancelled, __ATOMIC_ACQUIRE))
            nn_stop_flag = 2;
        return nn_stop_flag;
    }
    if ((step % NN_STOP_EVERY) != NN_STOP_EVERY - 1)
        return 0;
    PyGILState_STATE g = PyGILState_Ensure();
    if (PyErr_CheckSignals() < 0) {
        PyErr_Fetch(&nn_stop_type, &nn_stop_value, &nn_stop_tb);
        nn_stop_flag = 1;
    }
    PyGILState_Release(g);
    return nn_stop_flag;
}

static int nn_stop_pending(void) { return nn_stop_flag; }

/* with the GIL: re-raise a handler's exception from this thread's sweep (-1), else 0 */
static int nn_stop_raise(void)
{
    if (!nn_stop_flag)
        return 0;
    if (nn_stop_flag == 2) {
        nn_stop_flag = 0;
        PyErr_SetString(PyExc_KeyboardInterrupt, "recurrent sweep cancelled by the main "
                        "thread's interrupt");
        return -1;
    }
    nn_stop_flag = 0;
    PyErr_Restore(nn_stop_type, nn_stop_value, nn_stop_tb);
    nn_stop_type = nn_stop_value = nn_stop_tb = NULL;
    return -1;
}
#endif
