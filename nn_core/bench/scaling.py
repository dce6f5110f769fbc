"""How far a training step of each CLI model scales with threads: an estimate from a
trace of the step's thread-team jobs, checked against the measured 2-thread step.

``python -m nn_core.bench scaling [--threads 2,4,8,16] [--steps 20] [--models lm,...]``

For each CLI model (built as ``nn-core train`` builds it, float32) one training step is
traced at a budget of ``max(--threads)`` threads with the team capped at one thread
(:data:`nn_core._parallel._TEAM_CAP`) and BLAS at one thread: every split is cut as it
would be for that many threads, but runs inline, so each job's duration is its work on
one core.  The trace (:func:`nn_core._kernels._team.trace_start`) gives each job's
duration ``w``, the pieces it is cut into ``P`` and the barriers it passes ``b``.
The estimate of a step at ``p`` threads is::

    serial + sum over jobs of  w * ceil(P / p) / P  +  h  +  b * c

with ``serial`` the step's time outside jobs (Python, NumPy glue: it does not scale),
``P`` as traced (the GEMMs' blocks do not depend on the thread count; the element-wise
and slab splits are cut for the traced budget, which over-estimates their imbalance at
smaller ``p`` slightly), ``h`` the hand-off of a job and ``c`` one barrier, both
measured on this machine with 2 threads (``--handoff``/``--barrier`` override them).
It assumes the cores are as fast alone as together (no shared-cache or
memory-bandwidth limit) and does not count the wake-up of a worker that slept: an
upper bound of the speed-up.  Printed per model: jobs and barriers per step, the
serial share, the estimated step at each ``p`` and, at ``p = 2``, the measured step
(median of rounds alternating 1 and 2 threads; few samples, so it swings on a loaded
machine: ``bench model`` measures 2-thread steps more carefully).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from .. import _parallel
from .._kernels import _team
from ._common import cpu_report, load1

MODELS = (("lm", None), ("seq2seq", None), ("seq2seq --cell lstm", "lstm"),
          ("forecast", None), ("forecast --cell lstm", "lstm"))


def _pair(label, cell):
    from ._model_parts import StepPair, cli_model

    name = label.split()[0]
    task, args, model, batch = cli_model(name, cell, np.float32)
    return StepPair(None, task, args, model, batch)


def trace_step(pair, budget, steps):
    """``(step seconds, records)``: the median traced step at one core, its jobs."""
    old = _parallel._TEAM_CAP
    _parallel._TEAM_CAP = 1
    try:
        with _parallel.limit_threads(budget), _parallel.hold_blas():
            pair.nn_step()
            times, traces = [], []
            for _ in range(steps):
                _team.trace_start()
                t0 = time.perf_counter()
                pair.nn_step()
                times.append(time.perf_counter() - t0)
                traces.append(_team.trace_stop())
    finally:
        _parallel._TEAM_CAP = old
        _parallel.blas_threads()
    k = int(np.argsort(times)[len(times) // 2])
    return times[k], traces[k]


def _noop(t):
    return None


def handoff_and_barrier(rounds=2000):
    """Seconds of an empty job and of one barrier on two threads (medians)."""
    with _parallel.limit_threads(2):
        a = np.zeros((2, 1), np.float32)
        job = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(rounds):
                _parallel.run_tasks(_noop, 2)
            job.append((time.perf_counter() - t0) / rounds)
        return statistics.median(job), _team.barrier_cost(rounds) or 0.0


def estimate(step, rec, p, handoff, barrier):
    """The estimated step at ``p`` threads (module docstring)."""
    w = rec["t1"] - rec["t0"]
    serial = step - w.sum()
    P = np.maximum(rec["want"], 1).astype(float)
    par = (w * np.ceil(P / p) / P).sum()
    if p > 1:
        par += len(rec) * handoff + rec["barriers"].sum() * barrier
    return serial + par


def measured(pair, threads, rounds=7, per=5):
    out = {t: [] for t in threads}
    for _ in range(rounds):
        for t in threads:
            with _parallel.limit_threads(t):
                pair.nn_step()
                t0 = time.perf_counter()
                for _ in range(per):
                    pair.nn_step()
                out[t].append((time.perf_counter() - t0) / per)
    return {t: statistics.median(v) for t, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nn_core.bench scaling",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="2,4,8,16")
    ap.add_argument("--steps", type=int, default=15, help="traced steps per model")
    ap.add_argument("--models", default=",".join(m for m, _ in MODELS))
    ap.add_argument("--handoff", type=float, default=None, help="seconds per job hand-off")
    ap.add_argument("--barrier", type=float, default=None, help="seconds per barrier")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    wanted = args.models.split(",")
    print(f"nn_core scaling estimate; {cpu_report()}; load average {load1():.2f}")
    h, c = handoff_and_barrier()
    h = args.handoff if args.handoff is not None else h
    c = args.barrier if args.barrier is not None else c
    print(f"hand-off per job {h * 1e6:.1f} us, barrier {c * 1e6:.2f} us (2 threads, measured)")
    head = " ".join(f"{'p=' + str(p):>8}" for p in [1] + threads)
    print(f"{'model':<22}{'jobs':>6}{'barr.':>7}{'serial':>8} {head}  meas. p=2")
    for label, cell in MODELS:
        if label not in wanted:
            continue
        pair = _pair(label, cell)
        step, rec = trace_step(pair, max(threads), args.steps)
        est = [estimate(step, rec, p, h, c) for p in [1] + threads]
        serial = step - (rec["t1"] - rec["t0"]).sum()
        meas = measured(pair, [1, 2])
        cols = " ".join(f"{e * 1e3:8.2f}" for e in est)
        print(f"{label:<22}{len(rec):>6}{int(rec['barriers'].sum()):>7}"
              f"{serial / step:>7.0%} {cols}  {meas[2] * 1e3:.2f} "
              f"(1t {meas[1] * 1e3:.2f})")
    print("times in ms per step (p=1: the traced one-core step); serial = its share "
          "outside team jobs")
    print(f"load average {load1():.2f}")
