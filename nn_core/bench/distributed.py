"""Data-parallel training over MPI: one process with 2 BLAS threads vs 2 processes with
1 thread each vs one process with 1 thread.

``python -m nn_core.bench distributed [--models seq2seq,lm] [--steps 40] [--warmup 5]
[--repeat 3] [--dtype f32|f64] [--batch-size B] [--no-allreduce]``

Each configuration trains the default model of ``nn-core train MODEL`` on its default
global batch (seq2seq 64, lm 32; AdamW, clipping at 1.0) for ``--warmup`` untimed and
``--steps`` timed steps, in a fresh process; the 2-process configuration runs under
``mpiexec -n 2 python -m mpi4py``, each rank on its :func:`~nn_core.distributed.shard`
of the global batch, with :class:`~nn_core.distributed.DistributedOptimizer` weighting
by token count.  Configurations alternate round by round and the median of
``--repeat`` rounds is shown, so that load from other processes hits each alike.

First table: ``Allreduce(IN_PLACE)`` of float32 buffers between 2 processes: 1 KiB,
each model's gradient as one flat buffer and as one call per tensor, 16 MiB.

Then, per model and configuration: samples/s (global batch x timed steps / wall
time), milliseconds per step, speed-up over one process with one thread, for 2
processes the share of the step spent in the gradient all-reduce on rank 0 (waiting
for the slower rank included), and the CPU time of the step's compute (everything
but the all-reduce; the slowest rank's; all threads' for ``1 x 2``).  On a machine
shared with other work the wall-clock columns are at the mercy of the scheduler
(and BLAS threads that spin-wait for a descheduled partner); the last line per model
estimates the unloaded ``2 x 1`` speed-up from CPU time: ``1 x 1`` compute over
``2 x 1`` compute plus the bare all-reduce of the first table.
Needs mpi4py and ``mpiexec`` (``pip install mpi4py mpich``) for everything but the
1-process rows.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from ._common import machine_report

CONFIGS = (("1 x 1", 1, 1), ("1 x 2", 1, 2), ("2 x 1", 2, 1))   # (label, processes, threads)
MODELS = ("seq2seq", "lm")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------ workers --
def _task(name):
    """The ``nn-core train`` task ``name`` with its default configuration."""
    from ._model_parts import cli_task

    task, _ = cli_task(name, None)
    return task, type(task).defaults


def train_worker(name, steps, warmup, dtype, threads, batch_size=None):
    """Time ``steps`` training steps; rank 0 returns the measurements.

    The step is :meth:`DistributedOptimizer.step` taken apart, to time its parts:
    compute (data, forward, backward, clipping, update) in CPU time of this process,
    and the gradient all-reduce in wall time."""
    from nn_core import distributed as dist
    from nn_core.optim import AdamW, clip_grad_norm
    from nn_core.training import loss_step

    w = dist.init(threads=threads)
    task, defaults = _task(name)
    model = task.build_model(dtype, np.random.default_rng(0))
    loss = task.loss(dtype)
    opt = dist.DistributedOptimizer(AdamW(model, lr=defaults["lr"], weight_decay=0.01),
                                    model, clip=1.0)
    order = np.random.default_rng(1)
    batch_size = batch_size or defaults["batch_size"]
    batches = itertools.chain.from_iterable(
        task.train_batches(order, batch_size) for _ in itertools.count())
    spent = {"compute_cpu": 0.0, "comm": 0.0}

    def step():
        c0 = time.process_time()
        local = dist.shard(next(batches))
        opt.zero_grad()
        stats = loss_step(model, loss, local, bool(task.metrics))
        c1 = time.process_time()
        t0 = time.perf_counter()
        opt.allreduce_gradients(weight=stats.get("weight", stats["samples"]))
        t1 = time.perf_counter()
        c2 = time.process_time()
        clip_grad_norm([opt.flat_grads], opt.clip)
        opt.optimizer.step()
        spent["compute_cpu"] += c1 - c0 + time.process_time() - c2
        spent["comm"] += t1 - t0

    for _ in range(warmup):
        step()
    dist.barrier()
    spent.update(compute_cpu=0.0, comm=0.0)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    wall = time.perf_counter() - t0
    return {"rank": w.rank, "size": w.size, "threads": threads,
            "params": model.num_parameters(), "batch_size": batch_size,
            "samples_per_s": batch_size * steps / wall, "step_s": wall / steps,
            "comm_s": spent["comm"] / steps,
            # the slowest rank's compute sets the pace of a synchronous step
            "compute_cpu_s": dist.allreduce_scalar(spent["compute_cpu"], "max") / steps}


def _time_allreduce(comm, MPI, buffers, min_time=0.2, repeat=5):
    """Median seconds of one round of in-place Allreduce calls over ``buffers``."""
    def once():
        for b in buffers:
            comm.Allreduce(MPI.IN_PLACE, b, op=MPI.SUM)

    once()
    number = 1
    while True:                                          # every rank uses rank 0's count
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(number):
            once()
        done = comm.bcast(time.perf_counter() - t0 >= min_time or number >= 1 << 16)
        if done:
            break
        number *= 4
    samples = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(number):
            once()
        samples.append((time.perf_counter() - t0) / number)
    return statistics.median(samples)


def allreduce_worker():
    """Allreduce timings (rank 0's list of rows)."""
    from nn_core import distributed as dist

    w = dist.init(threads=1)
    rows = []

    def row(label, buffers):
        t = _time_allreduce(w.comm, w.mpi, buffers)
        rows.append({"label": label, "bytes": int(sum(b.nbytes for b in buffers)),
                     "calls": len(buffers), "s": t})

    row("1 KiB", [np.ones(256, np.float32)])
    for name in MODELS:
        task, _ = _task(name)
        model = task.build_model(np.float32, np.random.default_rng(0))
        grads = [np.ones_like(g) for g in model.gradients().values()]
        row(f"{name} gradient, one flat buffer",
            [np.ones(sum(g.size for g in grads), np.float32)])
        row(f"{name} gradient, one call per tensor", grads)
    row("16 MiB", [np.ones(4 << 20, np.float32)])
    return rows if w.rank == 0 else None


# -------------------------------------------------------------- launching --
def mpiexec():
    """The ``mpiexec`` next to this Python (the mpich wheel's), else on ``PATH``."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def _mpiexec_flags(exe):
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    if "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr:
        return ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return []


def _run(procs, args, mpi):
    cmd = [sys.executable]
    if procs > 1:
        cmd = [mpi[0], *mpi[1], "-n", str(procs), sys.executable, "-m", "mpi4py"]
    cmd += ["-m", "nn_core.bench.distributed", "--worker", *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{") or ln.startswith("[")]
    return json.loads(lines[-1])


def _fmt_time(s):
    return f"{s * 1e6:8.1f} us" if s < 1e-3 else f"{s * 1e3:8.3f} ms"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nn_core.bench distributed",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", choices=("f32", "f64"), default="f32")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="global batch (default: the task's, seq2seq 64, lm 32)")
    ap.add_argument("--no-allreduce", action="store_true", help="skip the Allreduce table")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    dtype = {"f32": np.float32, "f64": np.float64}[a.dtype]

    if a.worker:                                         # inside a measured process
        if a.worker[0] == "allreduce":
            res = allreduce_worker()
        else:
            res = train_worker(a.worker[0], a.steps, a.warmup, dtype, int(a.worker[1]),
                               a.batch_size)
            res = res if res["rank"] == 0 else None
        if res is not None:
            print(json.dumps(res), flush=True)
        return 0

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = sorted(set(models) - set(MODELS))
    if bad or a.steps < 1 or a.warmup < 0 or a.repeat < 1 or (a.batch_size or 2) < 2:
        ap.error(f"--models takes {', '.join(MODELS)} (got {bad}); --steps, --repeat >= 1; "
                 "--batch-size >= 2")
    exe = mpiexec()
    try:
        import mpi4py  # noqa: F401
        have_mpi = exe is not None
    except ImportError:
        have_mpi = False
    mpi = (exe, _mpiexec_flags(exe)) if have_mpi else None
    configs = [c for c in CONFIGS if c[1] == 1 or have_mpi]
    print(f"# {machine_report()}; {a.dtype}; {a.steps} timed steps after {a.warmup}, "
          f"median of {a.repeat} interleaved rounds; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    if not have_mpi:
        print("# mpi4py or mpiexec missing (pip install mpi4py mpich): 1-process rows only")

    allreduce = {}
    if have_mpi and not a.no_allreduce:
        print("Allreduce(IN_PLACE, SUM) of float32 between 2 processes "
              "(median per round of calls):")
        for r in _run(2, ["allreduce"], mpi):
            allreduce[r["label"]] = r["s"]
            print(f"  {r['label']:40} {r['bytes'] / 2**20:8.3f} MiB {r['calls']:3d} "
                  f"call(s) {_fmt_time(r['s'])}")
        print()

    results = {(m, c[0]): [] for m in models for c in configs}
    for _ in range(a.repeat):
        for m in models:
            for label, procs, threads in configs:
                args = [m, str(threads), "--steps", str(a.steps), "--warmup",
                        str(a.warmup), "--dtype", a.dtype]
                if a.batch_size:
                    args += ["--batch-size", str(a.batch_size)]
                results[m, label].append(_run(procs, args, mpi))
    print(f"{'model':8} {'procs x threads':>15} {'samples/s':>10} {'ms/step':>8} "
          f"{'vs 1 x 1':>8} {'allreduce':>9} {'compute CPU ms/step':>20}")
    for m in models:
        med = {label: {k: statistics.median(r[k] for r in results[m, label])
                       for k in ("samples_per_s", "step_s", "comm_s", "compute_cpu_s")}
               for label, _, _ in configs}
        base = med["1 x 1"]["samples_per_s"]
        for label, procs, _ in configs:
            r = med[label]
            share = f"{100 * r['comm_s'] / r['step_s']:8.1f}%" if procs > 1 else f"{'':>9}"
            print(f"{m:8} {label:>15} {r['samples_per_s']:10.0f} {r['step_s'] * 1e3:8.2f} "
                  f"{r['samples_per_s'] / base:7.2f}x {share} "
                  f"{r['compute_cpu_s'] * 1e3:20.2f}")
        if "2 x 1" in med:
            rate = {k: v["samples_per_s"] for k, v in med.items()}
            print(f"{m:8} target 2 x 1 >= 1.8 x (1 x 1): "
                  f"{'met' if rate['2 x 1'] >= 1.8 * base else 'MISSED'} "
                  f"({rate['2 x 1'] / base:.2f}x); 2 x 1 >= 1 x 2: "
                  f"{'met' if rate['2 x 1'] >= rate['1 x 2'] else 'MISSED'} "
                  f"({rate['2 x 1'] / rate['1 x 2']:.2f}x)")
            # unloaded estimate: a step costs its CPU time, plus the bare all-reduce
            ar = allreduce.get(f"{m} gradient, one flat buffer", med["2 x 1"]["comm_s"])
            est = med["1 x 1"]["compute_cpu_s"] / (med["2 x 1"]["compute_cpu_s"] + ar)
            print(f"{m:8} from CPU time (no other load): 2 x 1 = {est:.2f} x (1 x 1) "
                  f"[{med['1 x 1']['compute_cpu_s'] * 1e3:.1f} ms / "
                  f"({med['2 x 1']['compute_cpu_s'] * 1e3:.1f} + {ar * 1e3:.2f} ms)]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
