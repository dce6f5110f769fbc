"""Long-sequence attention: time and peak memory against L, nn_core vs PyTorch.

``python -m nn_core.bench attention --long [--lengths 1024 2048 4096 8192] [--huge]
[--threads 1 2] [--causal both|yes|no] [--repeat 3] [--clock wall|cpu] [--no-memory]``

Shape ``B=1, h=8, L, d=64``, float32, ``L_q = L_k = L``; one call is
``ScaledDotProductAttention.forward`` + ``backward`` (nn_core) or
``torch.nn.functional.scaled_dot_product_attention`` + autograd ``backward`` (torch).

Time: in this process, the two libraries alternately (one warm-up call each, then
``--repeat`` rounds of one call each; medians), with the same thread count for BLAS,
nn_core's pool and torch.  ``--huge`` adds L = 16384 and 32768, timed by the single
call of the memory measurement only.

Peak extra memory: each (library, L, causal) runs once in a fresh process (one
thread), after a small warm-up call at L = 512 and ``malloc_trim``.  The process's
resident high-water mark (``VmHWM``) is reset just before the call
(``/proc/self/clear_refs``), and the
number printed is ``VmHWM`` after the call minus ``VmRSS`` before it, minus the bytes
of the output and the three gradients: what forward + backward needed beyond its
inputs and results (caches, temporaries, allocator slack, scratch of either
library's kernels -- everything the process touched).  Linux only; elsewhere it
prints ``-``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from ._common import CLOCKS, machine_report, thread_report, threads, torch_or_none

SHAPE = (1, 8, None, 64)          # B, h, L, d
LENGTHS = (1024, 2048, 4096, 8192)
HUGE = (16384, 32768)
MIB = float(1 << 20)


def _inputs(L, seed=0):
    B, h, _, d = SHAPE
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, h, L, d), dtype=np.float32) for _ in range(4)]


def _call(lib, L, causal, torch=None):
    """A function running one forward + backward of ``lib`` at length ``L``, and the
    bytes of its output and gradients."""
    q, k, v, g = _inputs(L)
    result_bytes = 4 * q.nbytes
    if lib == "nn_core":
        from ..attention import ScaledDotProductAttention
        sdpa = ScaledDotProductAttention(dtype=np.float32)

        def fn():
            out = sdpa.forward(q, k, v, is_causal=causal)
            return out, sdpa.backward(g)
    else:
        F = torch.nn.functional
        tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
        tg = torch.from_numpy(g)

        def fn():
            out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            tq.grad = tk.grad = tv.grad = None
            out.backward(tg)
            return out
    return fn, result_bytes


def _status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _trim():
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``), so
    that memory freed by the warm-up is not reused unseen by the measured call."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _child(lib, L, causal):
    """Run in a fresh process: one call, its peak extra bytes and its seconds."""
    import gc
    torch = torch_or_none() if lib == "torch" else None
    with threads(1):
        warm, _ = _call(lib, 512, causal, torch)
        warm()
        del warm
        fn, result_bytes = _call(lib, L, causal, torch)
        gc.collect()
        _trim()
        rss0 = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:       # reset VmHWM
            fh.write("5")
        t0, c0 = time.perf_counter(), time.process_time()
        res = fn()
        t1, c1 = time.perf_counter(), time.process_time()
        hwm = _status_kib("VmHWM")
        del res
    extra = (hwm - rss0) * 1024 - result_bytes
    return {"extra": extra, "wall": t1 - t0, "cpu": c1 - c0}


def measure_memory(lib, L, causal):
    """``_child`` in a fresh interpreter; None where it cannot run (no /proc)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    cmd = [sys.executable, "-m", "nn_core.bench._long", "--child", lib, str(L),
           "1" if causal else "0"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"# memory of {lib} L={L} failed: {res.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def time_pair(fns, repeat, clock, settle):
    """Median seconds of each function: one warm-up each, then ``repeat`` rounds."""
    clk = CLOCKS[clock]
    for fn in fns.values():
        fn()
    samples = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            if settle:
                time.sleep(settle)
            t0 = clk()
            fn()
            samples[k].append(clk() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def _fmt(x, scale, width, prec):
    return f"{x * scale:{width}.{prec}f}" if x is not None else f"{'-':>{width}}"


def run(lengths, thread_counts, causals, repeat=3, clock="wall", memory=True,
        huge=(), out=print):
    torch = torch_or_none()
    libs = ["nn_core"] + (["torch"] if torch is not None else [])
    out(f"# {machine_report()}; B=1 h=8 d=64 float32, forward+backward; clock={clock}; "
        f"median of {repeat}; memory: peak extra MiB (1 thread, fresh process)")
    mem = {}
    if memory:
        for L in list(lengths) + list(huge):
            for causal in causals:
                for lib in libs:
                    mem[lib, L, causal] = measure_memory(lib, L, causal)
    rows = []
    hdr = (f"{'thr':>3} {'L':>6} {'causal':>6} | {'nn ms':>9} {'torch ms':>9} {'ratio':>5} | "
           f"{'nn MiB':>8} {'torch MiB':>9}")
    for n in thread_counts:
        with threads(n):
            out(f"# threads={n}: {thread_report()}")
            out(hdr)
            for causal in causals:
                for L in lengths:
                    fns = {lib: _call(lib, L, causal, torch)[0] for lib in libs}
                    t = time_pair(fns, repeat, clock, 0.2 if n > 1 else 0.0)
                    rows.append(_row(n, L, causal, t, mem, out))
    if huge and memory:
        out("# single call inside the memory measurement (1 thread, wall)")
        out(hdr)
        for causal in causals:
            for L in huge:
                t = {lib: (mem.get((lib, L, causal)) or {}).get("wall") for lib in libs}
                rows.append(_row(1, L, causal, t, mem, out))
    return rows


def _row(n, L, causal, t, mem, out):
    m_nn = (mem.get(("nn_core", L, causal)) or {}).get("extra")
    m_t = (mem.get(("torch", L, causal)) or {}).get("extra")
    a, b = t.get("nn_core"), t.get("torch")
    ratio = f"{a / b:5.2f}" if a is not None and b else f"{'-':>5}"
    out(f"{n:>3} {L:>6} {str(causal):>6} | {_fmt(a, 1e3, 9, 1)} {_fmt(b, 1e3, 9, 1)} "
        f"{ratio} | {_fmt(m_nn, 1 / MIB, 8, 1)} {_fmt(m_t, 1 / MIB, 9, 1)}")
    return dict(threads=n, L=L, causal=causal, nn_s=a, torch_s=b, nn_extra=m_nn,
                torch_extra=m_t)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        lib, L, causal = argv[1], int(argv[2]), argv[3] == "1"
        print(json.dumps(_child(lib, L, causal)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m nn_core.bench attention --long",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--huge", action="store_true",
                        help=f"also L = {', '.join(map(str, HUGE))} (one call each)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default) or process CPU time (one thread only)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory processes")
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or min(args.lengths) < 1 or args.repeat < 1:
        parser.error("--threads, --lengths and --repeat must be >= 1")
    if args.clock == "cpu" and max(args.threads) > 1:
        parser.error("--clock cpu sums the time of all threads: use it with --threads 1")
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    run(args.lengths, args.threads, causals, repeat=args.repeat, clock=args.clock,
        memory=not args.no_memory, huge=HUGE if args.huge else ())
    return 0


if __name__ == "__main__":
    sys.exit(main())
