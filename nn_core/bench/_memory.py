"""Inference memory and minor page faults per training step, each measured in a fresh
interpreter (sections of ``python -m nn_core.bench model``)."""
from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys

import numpy as np

from ._common import threads, torch_or_none
from ._model_parts import (CLI_MODELS, D_MODEL, FAULT_TARGET, MEMORY_TARGET, StepPair, _say,
                           bert_shape, cli_model, nn_encoder, torch_encoder)


# ================================================================ memory ====
def _proc_status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _proc_status_kib("VmHWM")
        return True
    except OSError:
        return False
    except KeyError:
        return False


def _malloc_trim():
    """Hand the C heap's free memory back to the OS (glibc), so that the RSS before the
    forward is the live set and the forward's allocations show up in the RSS."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _forward_peak(forward, x, traced=False):
    """Peak RSS increase (MiB) over the RSS before ``forward(x)``, the method used, and
    (``traced``) the peak of the allocations tracemalloc sees (NumPy arrays and Python
    objects; torch's tensors are invisible to it)."""
    import tracemalloc

    gc.collect()
    _malloc_trim()
    rss0 = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()          # in both libraries' children: same bookkeeping cost
    y = forward(x)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    if reset:
        peak, method = _proc_status_kib("VmHWM"), "VmHWM after clear_refs"
    else:   # an upper bound: the mark may still hold an earlier, higher peak
        peak = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        method = "ru_maxrss (upper bound)"
    del y
    return (peak - rss0) / 1024, method, traced_peak if traced else None


def _memory_child(argv):
    """Subprocess body: inference forwards of the encoder in a fresh process (after a
    tiny warm-up forward); prints one JSON line: ``first_mib`` (the first full-size
    forward), ``second_mib`` (the next one), ``method``, ``traced_mib``, ``weights_mib``."""
    lib, B, L, dname = argv[0], int(argv[1]), int(argv[2]), argv[3]
    dtype = np.dtype(dname).type
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, L, D_MODEL)).astype(dtype)
    if lib == "nn_core":
        from ..module import inference_mode
        enc = nn_encoder(dtype).eval()
        weights = sum(p.nbytes for p in enc.parameters().values())

        def forward(a):
            with inference_mode():
                return enc(a)
    else:
        import torch
        torch.set_num_threads(1)
        enc = torch_encoder(torch, dtype).eval()
        weights = sum(p.numel() * p.element_size() for p in enc.parameters())

        def forward(a):
            with torch.inference_mode():
                return enc(torch.from_numpy(a))
    forward(np.ascontiguousarray(x[:1, :8]))      # lazy imports, kernel JIT, thread pools
    first, method, traced = _forward_peak(forward, x, traced=lib == "nn_core")
    second, _, _ = _forward_peak(forward, x)
    print(json.dumps({"first_mib": first, "second_mib": second, "method": method,
                      "traced_mib": traced, "weights_mib": weights / 2 ** 20}))
    return 0


def _run_child(func, args, one_thread=False, timeout=900):
    """``nn_core.bench._memory.<func>(args)`` in a fresh interpreter; its last stdout line
    parsed as JSON."""
    import nn_core

    root = os.path.dirname(os.path.dirname(os.path.abspath(nn_core.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if one_thread:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
    code = (f"import sys; from nn_core.bench._memory import {func}; "
            f"sys.exit({func}(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{func}{tuple(args)} failed in its subprocess:\n"
                           f"{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory(lib, B, L, dtype):
    """Run :func:`_memory_child` for ``lib`` in a fresh interpreter (one thread)."""
    return _run_child("_memory_child", [lib, B, L, np.dtype(dtype).name], one_thread=True)


def run_memory(dtype, args, out=_say):
    B, L = bert_shape(args)
    out(f"\n== Inference memory: one forward of the encoder (B={B}, L={L}, "
        f"{np.dtype(dtype).name}), peak RSS increase in a fresh process, 1 thread ==")
    ours = measure_memory("nn_core", B, L, dtype)
    theirs = measure_memory("torch", B, L, dtype)
    r = ours["first_mib"] / max(theirs["first_mib"], 1e-9)
    r2 = ours["second_mib"] / max(theirs["second_mib"], 1e-9)
    out(f"{'MiB':<8} {'forward':>10} {'again':>10}")
    out(f"{'nn_core':<8} {ours['first_mib']:10.1f} {ours['second_mib']:10.1f}   (traced "
        f"NumPy/Python allocations at the peak of the first: {ours['traced_mib']:.1f} MiB)")
    out(f"{'torch':<8} {theirs['first_mib']:10.1f} {theirs['second_mib']:10.1f}")
    out(f"{'ratio':<8} {r:10.2f} {r2:10.2f}   target {MEMORY_TARGET:.2f} on the first"
        f"{'' if r <= MEMORY_TARGET else ' *'}")
    out(f"(method: {ours['method']}; weights {ours['weights_mib']:.1f} MiB each, loaded "
        f"before and not counted; 'again' = a second forward in the same process)")
    return ours, theirs


# ================================================================ faults ====
def minor_faults_per_step(step, n_steps, warmup=3):
    """Minor page faults of the process per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n_steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n_steps


def _faults_child(argv):
    """Subprocess body: ``lib dtype quick n_steps warmup threads labels`` -> one JSON line
    ``{label: {threads: faults per step}}``.  nn_core's child never imports torch."""
    lib, dname, quick = argv[0], argv[1], argv[2] == "1"
    n_steps, warmup = int(argv[3]), int(argv[4])
    counts = [int(v) for v in argv[5].split(",")]
    labels = argv[6].split(",")
    dtype = np.dtype(dname).type
    res = {}
    for label, name, cell in CLI_MODELS:
        if label not in labels:
            continue
        task, args, model, batch = cli_model(name, cell, dtype, quick)
        if lib == "nn_core":
            from .. import _parallel
            step = StepPair(None, task, args, model, batch).nn_step
            limit = _parallel.limit_threads
        else:
            step = StepPair(torch_or_none(), task, args, model, batch).torch_step
            limit = threads
        res[label] = {}
        for n in counts:
            with limit(n):
                res[label][n] = minor_faults_per_step(step, n_steps, warmup)
    print(json.dumps(res))
    return 0


def run_faults(thread_counts, dtype, quick, out=_say):
    """Each CLI model's faults per step, each library in its own fresh process (the
    allocator's state depends on everything the process ran before: in this process,
    after the other sections, nn_core's count drops to about 0)."""
    n_steps, warmup = (2, 1) if quick else (5, 3)
    how = ("one process per library for all models (--quick)" if quick
           else "a fresh process per model and library")
    out(f"\n== Minor page faults per training step ({np.dtype(dtype).name}): mean of "
        f"{n_steps} steps after {warmup} warm-up, {how}; thread counts in turn ==")
    labels = [label for label, _, _ in CLI_MODELS]
    groups = [labels] if quick else [[label] for label in labels]
    counts = ",".join(map(str, thread_counts))
    res = {"nn_core": {}, "torch": {}}
    for lib in res:
        for group in groups:
            res[lib].update(_run_child("_faults_child", [
                lib, np.dtype(dtype).name, int(quick), n_steps, warmup, counts,
                ",".join(group)]))
    if quick:
        # one warm-up step, and every model in one process: the allocator has not
        # reached its steady state, so these counts are not docs/benchmarks.md's
        out("(--quick: NOT comparable with the counts of docs/benchmarks.md, which are taken after 3 "
            "warm-up steps in a fresh process per model: python -m nn_core.bench model "
            "--only faults)")
    out(f"{'model':<26} {'thr':>3} {'nn_core':>9} {'torch':>9} "
        f"{'' if quick else 'target':>6}".rstrip())
    for n in thread_counts:
        for label in labels:
            a, b = res["nn_core"][label][str(n)], res["torch"][label][str(n)]
            target = "" if quick else f" {'<' + str(FAULT_TARGET):>6}" + (
                "" if a < FAULT_TARGET else " *")
            out(f"{label:<26} {n:>3} {a:9.0f} {b:9.0f}{target}")
    return res
