/* Ctrl-C during a long compiled sweep: every NN_STOP_EVERY steps the main thread runs
 * Python's pending signal handlers (PyErr_CheckSignals, with the GIL taken briefly).
 * A handler that raises (KeyboardInterrupt) stops the sweep; its exception is kept
 * per thread until the entry point re-raises it with the GIL held (nn_stop_raise).
 * Other threads never check: Python runs signal handlers on the main thread only. */
#ifndef NN_INTERRUPT_H
#define NN_INTERRUPT_H
#include <Python.h>
#include "pythread.h"

#define NN_STOP_EVERY 256

static unsigned long nn_main_ident = 0;
static __thread int nn_stop_flag = 0;
static __thread PyObject *nn_stop_type = NULL, *nn_stop_value = NULL, *nn_stop_tb = NULL;

static void nn_stop_init(unsigned long main_ident) { nn_main_ident = main_ident; }

/* without the GIL: 1 when the sweep must stop (checks at every NN_STOP_EVERY-th step) */
static int nn_stop_check(Py_ssize_t step)
{
    if (nn_stop_flag)
        return 1;
    if ((step % NN_STOP_EVERY) != NN_STOP_EVERY - 1 || PyThread_get_thread_ident() != nn_main_ident)
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
    nn_stop_flag = 0;
    PyErr_Restore(nn_stop_type, nn_stop_value, nn_stop_tb);
    nn_stop_type = nn_stop_value = nn_stop_tb = NULL;
    return -1;
}
#endif
