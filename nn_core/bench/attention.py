"""nn_core vs PyTorch: scaled dot-product attention, forward and forward+backward.

``python -m nn_core.bench attention [--threads 1 2] [--dtype float32 float64]
[--shape 8x8x128x32 4x8x512x64] [--causal both|yes|no] [--repeat 7]
[--clock wall|cpu]``

``python -m nn_core.bench attention --long [--lengths 1024 2048 4096 8192] [--huge]
[--threads 1 2] [--causal both|yes|no] [--repeat 3] [--clock wall|cpu] [--no-memory]``:
long sequences (B=1, h=8, d=64, float32, forward + backward), time and peak extra
memory against L for both libraries; see :mod:`nn_core.bench._long`.

``python -m nn_core.bench attention --window [--length 16384] [--long-length 65536]
[--w 512] [--no-dense]``: windowed attention (``window=w``) against the same attention
with the dense band mask, nn_core and torch, its growth in L, its peak memory and a
ring-cache decoding run; see :mod:`nn_core.bench._window`.

Every contender is first warmed up on every case; then, for every (threads, dtype,
shape ``BxhxLxd_k``, causal), it times, alternately in one run, ``ScaledDotProductAttention.forward`` (+ ``backward``) against
``torch.nn.functional.scaled_dot_product_attention`` (+ ``autograd`` backward) on the
same inputs, and prints the medians and the ratio nn_core / torch (< 1: nn_core is
faster).  BLAS and torch are limited to the same thread count (needs threadpoolctl,
the ``bench`` extra); without torch only nn_core's times are printed.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..attention import ScaledDotProductAttention
from ._common import (interleaved, machine_report, thread_report, threads, torch_or_none,
                      warm_up)

DEFAULT_SHAPES = ("8x8x128x32", "4x8x512x64")


def _parse_shape(text):
    try:
        B, h, L, d = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like BxhxLxd_k, got {text!r}")
    if min(B, h, L, d) < 1:
        raise argparse.ArgumentTypeError(f"shape entries must be >= 1, got {text!r}")
    return B, h, L, d


def _contenders(shape, dtype, causal, torch):
    """``{name: callable}`` for forward and forward+backward of both libraries."""
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
    sdpa = ScaledDotProductAttention(dtype=dtype)

    def nn_fwd():
        sdpa.forward(q, k, v, is_causal=causal)

    def nn_fwd_bwd():
        sdpa.forward(q, k, v, is_causal=causal)
        sdpa.backward(g)

    fns = {"nn_fwd": nn_fwd, "nn_fb": nn_fwd_bwd}
    if torch is not None:
        F = torch.nn.functional
        tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
        tg = torch.from_numpy(g)

        def torch_fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

        def torch_fwd_bwd():
            out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            tq.grad = tk.grad = tv.grad = None
            out.backward(tg)

        fns.update(torch_fwd=torch_fwd, torch_fb=torch_fwd_bwd)
    return fns


def run(thread_counts, dtypes, shapes, causals, repeat=7, min_time=0.05, clock="wall",
        out=print):
    """Run the grid; returns a list of result dicts (seconds)."""
    torch = torch_or_none()
    rows = []
    out(f"# {machine_report()}; clock={clock}; medians of {repeat} interleaved samples")
    hdr = (f"{'thr':>3} {'dtype':>7} {'B x h x L x d_k':>16} {'causal':>6} | "
           f"{'nn fwd ms':>9} {'torch fwd':>9} {'ratio':>5} | "
           f"{'nn f+b ms':>9} {'torch f+b':>9} {'ratio':>5}")
    for n in thread_counts:
        with threads(n):
            out(f"# threads={n}: {thread_report()}")
            out(hdr)
            grid = [(dtype, shape, causal) for dtype in dtypes for shape in shapes
                    for causal in causals]
            # every contender warm on every shape before the first timing, so that the
            # order of the rows changes no ratio
            cases = [_contenders(shape, dtype, causal, torch) for dtype, shape, causal in grid]
            for fns in cases:
                warm_up(fns, min_time)
            for (dtype, shape, causal), fns in zip(grid, cases):
                t = interleaved(fns, repeat=repeat, min_time=min_time, clock=clock)
                row = dict(threads=n, dtype=np.dtype(dtype).name, shape=shape,
                           causal=causal, **t)
                rows.append(row)
                out(_format(row))
    return rows


def _format(r):
    def ms(key):
        return f"{r[key] * 1e3:9.2f}" if key in r else f"{'-':>9}"

    def ratio(a, b):
        return f"{r[a] / r[b]:5.2f}" if b in r else f"{'-':>5}"

    shape = "x".join(str(s) for s in r["shape"])
    return (f"{r['threads']:>3} {r['dtype']:>7} {shape:>16} {str(r['causal']):>6} | "
            f"{ms('nn_fwd')} {ms('torch_fwd')} {ratio('nn_fwd', 'torch_fwd')} | "
            f"{ms('nn_fb')} {ms('torch_fb')} {ratio('nn_fb', 'torch_fb')}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--long" in argv:
        from . import _long
        argv.remove("--long")
        return _long.main(argv)
    if "--window" in argv:
        from . import _window
        argv.remove("--window")
        return _window.main(argv)
    parser = argparse.ArgumentParser(prog="python -m nn_core.bench attention",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--long", action="store_true",
                        help="long sequences: time and peak memory vs L "
                             "(options: python -m nn_core.bench attention --long -h)")
    parser.add_argument("--window", action="store_true",
                        help="windowed attention vs the dense band mask "
                             "(options: python -m nn_core.bench attention --window -h)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"],
                        choices=["float32", "float64"])
    parser.add_argument("--shape", type=_parse_shape, nargs="+",
                        default=[_parse_shape(s) for s in DEFAULT_SHAPES])
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds per timing sample (calls are batched)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default) or process CPU time (robust to a "
                             "busy machine; one thread only)")
    args = parser.parse_args(argv)
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    if args.clock == "cpu" and max(args.threads) > 1:
        parser.error("--clock cpu sums the time of all threads: use it with --threads 1")
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    run(args.threads, [np.dtype(d).type for d in args.dtype], args.shape, causals,
        repeat=args.repeat, min_time=args.min_time, clock=args.clock)
    return 0
