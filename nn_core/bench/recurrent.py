"""Forward+backward of the recurrent cells vs torch.nn.RNN / LSTM / GRU.

``python -m nn_core.bench recurrent [--shapes S,M,L,latency] [--cells rnn,gru,lstm,lstm2]
[--dtypes f32,f64] [--threads 1,2] [--repeat 5] [--clock wall|cpu]``

``--lengths uniform``: padded batches instead (``_padded.py``: time against the
full-length batch and against torch's packed sequences).

For every (threads, dtype, shape, cell) both implementations run the same sequence
(same weights, loaded through ``nn_core.interop``), forward then backward of
``sum(output * grad_output)`` including ``grad_x``, timed alternately in one run
(``_common.interleaved``: machine noise hits both alike).  Printed beside each time:

* ``ms`` and ``cpu`` = wall time and process CPU time (every thread's) per call, the
  medians over the same samples (``interleaved(clock="both")``), and ``load`` = the
  1-minute load average at the start and end of the row's measurement;
* ``ratio`` = nn_core time / torch time, on the clock ``--clock`` names (wall by
  default; so are ``gemm``, ``/gemm``, ``GF/s`` and ``need``);
* ``gemm`` = the GEMM-bound time: the same GEMM calls the kernel makes (input
  projection, T recurrence GEMMs forward and backward, grad_x, and grad_W_ih /
  grad_W_hh -- one fused GEMM for RNN and LSTM, two for the GRU),
  each timed alone through the same BLAS (``scipy.linalg.cython_blas``) in a
  ``nogil`` loop, and summed; ``/gemm`` = nn_core time / that bound.  Where the
  kernel runs its step loops on the packed ``W_hh`` (``step_mode``; always for
  ``B = 1``) the per-step products are not BLAS calls, and the bound is what BLAS
  would take for them, not a lower bound (``/gemm`` can fall below 1);
* ``GF/s`` = FLOPs / nn_core time, FLOPs = ``6 T B G H (D + H)`` per layer;
* ``need`` = the FLOP rate the target asks for (``FLOPs / (target * torch
  time)``) as a percentage of ``peak``, the rate of a large square GEMM
  (1024^3, same BLAS, same threads, measured once per dtype in the same run).  Above
  100% a target cannot be met on this machine by any implementation that does the
  same FLOPs (the backward FLOPs are the minimum: ``grad_x``, ``grad_W`` and
  ``grad_h`` are each one product per step); above ~90% it would need GEMMs at the
  peak rate *and* free gate passes.  ``x`` marks such targets beside the ``*``.

Shapes: S (T=32, B=16, D=H=64), M (T=64, B=32, D=H=256), L (T=128, B=64, D=H=512),
latency (T=100, B=1, D=H=128).  ``lstm2`` is a 2-layer StackedLSTM vs
``nn.LSTM(num_layers=2)``; ``gru`` is ``GRUCell(reset_after=True)`` (torch's form).

With several thread counts a table follows the rows: per case, nn_core's and torch's
wall and CPU time at each further thread count over those at the first (``2t/1t``).

The operand layouts the kernel picks per shape, and why, are in docs/performance.md.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ._common import (fmt_load, fmt_times, interleaved, load1, scaling_table,
                      threads, times_header, times_legend, torch_or_none)


SHAPES = {
    "S": (32, 16, 64, 64),
    "M": (64, 32, 256, 256),
    "L": (128, 64, 512, 512),
    "latency": (100, 1, 128, 128),
}
GATES = {"rnn": 1, "gru": 3, "lstm": 4, "lstm2": 4}
DTYPES = {"f32": np.float32, "f64": np.float64}
# speed targets: (M/L, S/latency) ratio vs torch, float32; float64 <= 0.7
TARGETS = {"lstm": (1.0, 0.6), "lstm2": (1.0, 0.6), "gru": (0.7, 0.3), "rnn": (0.7, 0.3)}


_CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _gemm_time(ta, tb, m, n, k, dtype, rng):
    from .._kernels import _testing as K

    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    c = np.empty((m, n), dtype)
    reps = max(3, int(5e7 / (2 * m * n * k)))
    K.gemm_repeat(ta, tb, a, b, c, 1)
    best = np.inf
    for _ in range(5):
        t0 = _clock()
        K.gemm_repeat(ta, tb, a, b, c, reps)
        best = min(best, (_clock() - t0) / reps)
    return best


def gemm_bound(T, B, D, H, G, dtype, layers=1, rng=None, fused_wgrad=None):
    """Seconds the kernel's GEMMs take alone (same shapes, layouts and BLAS).

    ``fused_wgrad`` (default: RNN and LSTM, ``G in (1, 4)``): the kernel forms
    ``[grad_W_ih | grad_W_hh]`` in one GEMM over ``[x | h]``.
    """
    rng = rng or np.random.default_rng(0)
    if fused_wgrad is None:
        fused_wgrad = G in (1, 4)
    GH, TB = G * H, T * B
    dot = B == 1
    # the kernel's per-step layout (_rec_mode in src_pyx/_recurrent.pyx): the dot
    # form for B == 1, the transposed product W h^T for float32 with H >= 256
    tr = not dot and dtype == np.float32 and H >= 256
    total = 0.0
    for layer in range(layers):
        d = D if layer == 0 else H
        total += _gemm_time(False, True, TB, GH, d, dtype, rng)            # x W_ih^T
        if tr:
            total += T * _gemm_time(False, True, GH, B, H, dtype, rng)    # W_hh h^T
            total += T * _gemm_time(False, True, H, B, GH, dtype, rng)    # W_hh^T dG^T
        else:
            total += T * _gemm_time(False, dot, B, GH, H, dtype, rng)     # h W_hh^T
            total += T * _gemm_time(False, dot, B, H, GH, dtype, rng)     # dG W_hh
        total += _gemm_time(False, False, TB, d, GH, dtype, rng)          # grad_x
        if fused_wgrad:
            total += _gemm_time(True, False, GH, d + H, TB, dtype, rng)   # grad_W_ih|hh
        else:
            total += _gemm_time(True, False, GH, d, TB, dtype, rng)       # grad_W_ih
            total += _gemm_time(True, False, GH, H, TB, dtype, rng)       # grad_W_hh
    return total


def peak_rate(dtype, n=1024, rng=None):
    """FLOP/s of one large square GEMM (``n^3``) through the kernels' BLAS: the
    practical peak the ``need`` column is measured against."""
    rng = rng or np.random.default_rng(0)
    return 2.0 * n ** 3 / _gemm_time(False, False, n, n, n, dtype, rng)


def target_ratio(cell, shape, dtype):
    """The speed target: LSTM <= 1.0 (M, L) / 0.6 (S, latency); GRU and RNN
    <= 0.7 / 0.3; float64 <= 0.7 on top (the stricter of the two applies)."""
    big, small = TARGETS[cell]
    t = big if shape in ("M", "L") else small
    return min(t, 0.7) if dtype == np.float64 else t


def flops(T, B, D, H, G, layers=1):
    return sum(6.0 * T * B * G * H * ((D if k == 0 else H) + H) for k in range(layers))


def _build(cell, D, H, dtype, torch):
    from ..interop import load_torch_state_dict
    from ..recurrent import GRUCell, LSTMCell, RNNCell, StackedLSTM

    tdt = torch.float32 if dtype == np.float32 else torch.float64
    if cell == "rnn":
        ours, theirs = RNNCell(D, H, dtype=dtype), torch.nn.RNN(D, H, dtype=tdt)
    elif cell == "gru":
        ours, theirs = GRUCell(D, H, reset_after=True, dtype=dtype), torch.nn.GRU(D, H, dtype=tdt)
    elif cell == "lstm":
        ours, theirs = LSTMCell(D, H, dtype=dtype), torch.nn.LSTM(D, H, dtype=tdt)
    else:
        ours, theirs = StackedLSTM(D, H, 2, dtype=dtype), torch.nn.LSTM(D, H, 2, dtype=tdt)
    load_torch_state_dict(ours, theirs.state_dict())
    return ours, theirs


def run_case(cell, shape, dtype, nthreads, repeat, torch):
    """``(ours, theirs, bound, flops)``: nn_core's and torch's :class:`_common.Times`
    per forward+backward, the GEMM bound (seconds, on ``_clock``) and the FLOPs."""
    T, B, D, H = SHAPES[shape]
    rng = np.random.default_rng(0)
    ours, theirs = _build(cell, D, H, dtype, torch)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    go = rng.standard_normal((T, B, H)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    got = torch.tensor(go)
    layers = 2 if cell == "lstm2" else 1

    if layers == 2:
        def f_ours():
            ours(x)
            ours.backward(go)
    else:
        def f_ours():
            ours.forward_sequence(x)
            ours.backward_sequence(go)

    def f_torch():
        out, _ = theirs(xt)
        out.backward(got)

    min_time = 0.02 if shape in ("S", "latency") else 0.0
    with threads(nthreads):
        t = interleaved({"ours": f_ours, "torch": f_torch}, repeat=repeat, min_time=min_time,
                        clock="both", settle=0.2 if nthreads > 1 else 0.0)
        bound = gemm_bound(T, B, D, H, GATES[cell], dtype, layers)
    return t["ours"], t["torch"], bound, flops(T, B, D, H, GATES[cell], layers)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nn_core.bench recurrent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="S,M,L,latency")
    p.add_argument("--cells", default=None,
                   help="default rnn,gru,lstm,lstm2; with --lengths rnn,gru,lstm,bilstm")
    p.add_argument("--dtypes", default="f32,f64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="the clock of ratio, gemm, /gemm, GF/s and need (the rows give "
                        "both times): wall: elapsed time (default; cpu with --lengths); cpu: "
                        "process CPU time, robust on a shared, oversubscribed machine "
                        "(meaningful with 1 thread only)")
    p.add_argument("--lengths", choices=("uniform",), default=None,
                   help="uniform: padded batches, lengths uniform in [T/10, T] "
                        "(B=64, T=200, D=H=256, one thread)")
    args = p.parse_args(argv)
    if args.cells is None:
        args.cells = "rnn,gru,lstm,bilstm" if args.lengths else "rnn,gru,lstm,lstm2"
    if args.clock is None:
        args.clock = "cpu" if args.lengths else "wall"
    if args.clock == "cpu" and not args.lengths and any(int(v) > 1 for v in args.threads.split(",")):
        p.error("--clock cpu sums the time of all threads: use it with --threads 1")
    global _clock
    _clock = _CLOCK[args.clock]
    torch = torch_or_none()
    if torch is None:
        print("torch is not installed: nothing to compare against")
        return 1
    if args.lengths:
        from . import _padded

        return _padded.main(args, torch, DTYPES)
    print(f"torch {torch.__version__}, numpy {np.__version__}; times in ms (medians of "
          f"interleaved runs, wall and CPU time of the same samples), fwd+bwd incl. grad_x; "
          f"ratio, gemm, /gemm, GF/s and need on the {args.clock} clock")
    hdr = (f"{'cell':<6}{'shape':<8}{'dtype':<6}{'thr':>3} {times_header('nn', 'torch', cw=False)} "
           f"{'ratio':>6} {'target':>6} {'gemm':>9} {'/gemm':>6} {'GF/s':>6} {'need':>5}    "
           f"{'load':>9}")
    print(hdr)
    print("-" * len(hdr))
    thread_counts = [int(v) for v in args.threads.split(",")]
    results = {}
    for nthreads in thread_counts:
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            with threads(nthreads):
                peak = peak_rate(dtype)
            print(f"# peak ({nthreads} thread(s), {dname}, 1024^3 GEMM): "
                  f"{peak / 1e9:.1f} GFLOP/s", flush=True)
            for shape in args.shapes.split(","):
                for cell in args.cells.split(","):
                    rep = args.repeat if shape != "L" else max(2, args.repeat // 2)
                    load0 = load1()
                    t_ours, t_theirs, bound, fl = run_case(cell, shape, dtype, nthreads, rep,
                                                           torch)
                    results.setdefault(f"{cell} {shape} {dname}", {})[nthreads] = (t_ours,
                                                                                  t_theirs)
                    ours, theirs = getattr(t_ours, args.clock), getattr(t_theirs, args.clock)
                    target = target_ratio(cell, shape, dtype)
                    need = fl / (target * theirs) / peak
                    flag = "  " if ours / theirs <= target else " *"
                    flag += "x" if flag == " *" and need > 0.9 else " "
                    print(f"{cell:<6}{shape:<8}{dname:<6}{nthreads:>3} "
                          f"{fmt_times(t_ours, t_theirs, cw=False)} {ours / theirs:6.2f} "
                          f"{target:6.2f} {bound * 1e3:9.3f} {ours / bound:6.2f} "
                          f"{fl / ours / 1e9:6.1f} {need * 100:4.0f}%{flag} "
                          f"{fmt_load(load0, load1()):>9}", flush=True)
    for line in scaling_table(results, thread_counts, width=20, what="case"):
        print(line)
    print("* = above the target ratio; x = the target needs more than 90% of "
          "the peak GEMM rate (over 100%: unreachable on this machine)")
    print(times_legend(cw=False))
    _clock = time.perf_counter
    return 0
