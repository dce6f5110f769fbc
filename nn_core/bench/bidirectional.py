"""Bidirectional LSTM / GRU forward+backward: nn_core vs ``torch.nn.LSTM/GRU(bidirectional=True)``.

``python -m nn_core.bench bidirectional [--cells lstm,gru] [--shapes S,M,L,latency]
[--threads 1,2] [--dtypes float32,float64 (or f32,f64)] [--repeat 5] [--min-time 0.05]``

For every cell x shape x dtype x thread count, in one interleaved run (machine noise
hits every contender alike), prints the median time per forward+backward of

* ``nn_core``: :class:`BidirectionalWrapper` with its default scheduling -- with one
  thread the two sweeps run one after the other, with two threads they run
  concurrently, each on one core with single-threaded BLAS;
* ``nn seq``: (2 threads only) the two sweeps one after the other, each with two
  threads the way a unidirectional sweep gets them (BLAS on 2 threads, or from B = 64
  the batch-row split of ``nn_core/recurrent/base.py``) -- what the concurrent
  design is measured against;
* ``torch``: the torch module with ``torch.set_num_threads(n)``;

and ``ratio = nn_core / torch`` with the target: 0.6 with 2 threads; with 1 thread the
unidirectional targets of the recurrent benchmark (LSTM 1.0 at M/L and 0.6 at S/latency,
GRU 0.7 at M/L and 0.3 at S/latency, float64 at most 0.7).  ``need`` is the FLOP rate the
target asks for (both directions' ``6 T B G H (D + H)`` FLOPs over ``target * torch
time``) as a percentage of the machine's peak GEMM rate with as many threads (see
``python -m nn_core.bench recurrent``); ``x`` marks a missed target that needs more
than 90% of it (over 100%: unreachable here by any implementation of the same FLOPs).
With several threads each sample is preceded by a short sleep and an untimed call
(``_common.interleaved(settle=...)``): the other library's spinning thread pool would
otherwise take a core from the threads being timed.

Shapes (``T, B, D = H``): S (32, 16, 64), M (64, 32, 256), L (128, 64, 512),
latency (100, 1, 128).  Weights are torch's (loaded through ``nn_core.interop``).
"""
from __future__ import annotations

import argparse

import numpy as np

from ._common import fmt_ms, interleaved, threads, torch_or_none
from .recurrent import flops, peak_rate, target_ratio

SHAPES = {"S": (32, 16, 64), "M": (64, 32, 256), "L": (128, 64, 512),
          "latency": (100, 1, 128)}
_DTYPE_ALIASES = {"f32": "float32", "f64": "float64"}


def _target(cell, shape, dtype, n_threads):
    """0.6 with two threads or more; with one the recurrent benchmark's unidirectional
    targets (``recurrent.target_ratio``: the stricter float64 rule included)."""
    if n_threads >= 2:
        return 0.6
    return target_ratio(cell, shape, np.dtype(dtype).type)


def _build(cell, H, dtype, torch):
    from ..interop import load_torch_state_dict
    from ..recurrent import BidirectionalGRU, BidirectionalWrapper, LSTMCell

    tdt = torch.float64 if dtype == np.float64 else torch.float32
    if cell == "lstm":
        tm = torch.nn.LSTM(H, H, bidirectional=True).to(tdt)
        ours = BidirectionalWrapper(LSTMCell(H, H, dtype=dtype, rng=0))
    else:
        tm = torch.nn.GRU(H, H, bidirectional=True).to(tdt)
        ours = BidirectionalGRU(H, H, reset_after=True, dtype=dtype, rng=0)
    load_torch_state_dict(ours, tm.state_dict())
    return ours, tm


def _contenders(cell, shape, dtype, n_threads, torch, seed=0):
    T, B, H = SHAPES[shape]
    rng = np.random.default_rng(seed)
    ours, tm = _build(cell, H, dtype, torch)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(g)

    def run_ours(concurrent):
        def fn():
            ours.concurrent = concurrent
            out, _ = ours(x)
            ours.backward(g)
        return fn

    def run_torch():
        out, _ = tm(xt)
        out.backward(gt)
        xt.grad = None

    fns = {"nn_core": run_ours(n_threads > 1)}
    if n_threads > 1:
        fns["nn seq"] = run_ours(False)
    fns["torch"] = run_torch
    return fns


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nn_core.bench bidirectional",
                                description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--shapes", default="S,M,L,latency")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.05)
    args = p.parse_args(argv)
    torch = torch_or_none()
    if torch is None:
        print("torch is not installed: nothing to compare against")
        return 1
    from .. import _parallel

    print(f"cores available: {_parallel.available_cores()}; BLAS thread control: "
          f"{'yes' if _parallel.controllable() else 'no'}; "
          f"torch {torch.__version__}")
    print("times: ms per forward+backward (median of interleaved runs)")
    hdr = (f"{'cell':<5} {'shape':<8} {'dtype':<8} {'thr':>3} {'nn_core':>9} {'nn seq':>9} "
           f"{'torch':>9} {'ratio':>6} {'target':>6} {'need':>5}")
    print(hdr)
    print("-" * len(hdr))
    peaks = {}
    for cell in args.cells.split(","):
        for shape in args.shapes.split(","):
            for dname in args.dtypes.split(","):
                dname = _DTYPE_ALIASES.get(dname, dname)   # f32/f64 as in the other benches
                dtype = np.dtype(dname).type
                for n in (int(t) for t in args.threads.split(",")):
                    with threads(n):
                        fns = _contenders(cell, shape, dtype, n, torch)
                        res = interleaved(fns, repeat=args.repeat, min_time=args.min_time,
                                          settle=0.2 if n > 1 else 0.0)
                    ratio = res["nn_core"] / res["torch"]
                    target = _target(cell, shape, dname, n)
                    if (n, dname) not in peaks:
                        with threads(n):
                            peaks[n, dname] = peak_rate(dtype)
                    T, B, H = SHAPES[shape]
                    fl = 2 * flops(T, B, H, H, 4 if cell == "lstm" else 3)
                    need = fl / (target * res["torch"]) / peaks[n, dname]
                    seq = fmt_ms(res["nn seq"]) if "nn seq" in res else f"{'-':>9}"
                    flag = "" if ratio <= target else "  *"
                    if flag and need > 0.9:
                        flag += "x"
                    print(f"{cell:<5} {shape:<8} {dname:<8} {n:>3} {fmt_ms(res['nn_core'])} "
                          f"{seq} {fmt_ms(res['torch'])} {ratio:6.2f} {target:6.2f} "
                          f"{need * 100:4.0f}%{flag}", flush=True)
    print("* = above target; x = the target needs more than 90% of the peak GEMM rate")
    return 0
