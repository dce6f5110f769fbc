/*
 * _rnn_team.h -- what the recurrent sweeps need to run on the thread team: its C
 * interface (_team_api.h) and the sweep's shared stop word.
 *
 * Only the calling thread (t = 0) of a job may run Python's signal handlers
 * (nn_stop_check), so it publishes a stop as the step count after which every
 * thread of the job leaves its step loop: written before the next barrier, read by
 * all after it, so all threads leave at the same step.
 */
#ifndef NN_CORE_RNN_TEAM_H
#define NN_CORE_RNN_TEAM_H

#include "_team_api.h"

static inline Py_ssize_t nn_rnn_load(const Py_ssize_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void nn_rnn_store(Py_ssize_t *p, Py_ssize_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

#endif /* NN_CORE_RNN_TEAM_H */
