"""MultiHeadAttention self-attention forward+backward: nn_core vs torch.nn.MultiheadAttention.

``python -m nn_core.bench mha [--threads N] [--dtype f32|f64|both] [--repeat R]
[--shapes B,L,d,h ...] [--forward-only] [--clock wall|cpu]``

Both sides run the same computation: ``y = MHA(x, x, x)`` then the backward of
``<y, g>`` with gradients for the input and every parameter, in the same process,
same BLAS/torch thread count, interleaved so machine noise hits both alike.
Torch is timed twice: ``need_weights=False`` (its fused scaled-dot-product path,
the fastest) and ``need_weights=True`` (its default, which also returns the
head-averaged weights).  ``ratio`` = nn_core time / fastest torch time.
"""
from __future__ import annotations

import argparse

import numpy as np

from ._common import fmt_ms, interleaved, machine_report, thread_report, threads, torch_or_none

DEFAULT_SHAPES = ((8, 128, 256, 8), (4, 512, 512, 8), (1, 1024, 512, 8))


def _parse_shape(s):
    parts = tuple(int(v) for v in s.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape must be B,L,d,h, got {s!r}")
    return parts


def make_cases(shape, dtype, forward_only=False, seed=0):
    """Callables ``{"nn_core": f, "torch": f, "torch_w": f}`` for one shape/dtype."""
    from nn_core.attention import MultiHeadAttention

    B, L, d, h = shape
    rng = np.random.default_rng(seed)
    m = MultiHeadAttention(d, h, dtype=dtype, rng=seed)
    x = rng.standard_normal((B, L, d)).astype(dtype)
    g = rng.standard_normal((B, L, d)).astype(dtype)

    def ours():
        y = m(x)
        if not forward_only:
            m.backward(g)
        return y

    cases = {"nn_core": ours}
    torch = torch_or_none()
    if torch is not None:
        from nn_core.interop import to_torch_state_dict

        tm = torch.nn.MultiheadAttention(d, h, batch_first=True,
                                         dtype=getattr(torch, np.dtype(dtype).name))
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(m).items()})
        tx = torch.from_numpy(x.copy()).requires_grad_(not forward_only)
        tg = torch.from_numpy(g)

        def run(need_weights):
            def f():
                if forward_only:
                    with torch.no_grad():
                        return tm(tx, tx, tx, need_weights=need_weights)[0]
                y = tm(tx, tx, tx, need_weights=need_weights)[0]
                y.backward(tg)
                tx.grad = None
                return y
            return f

        cases["torch"] = run(False)
        cases["torch_w"] = run(True)
    return cases


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nn_core.bench mha", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=("f32", "f64", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--shapes", type=_parse_shape, nargs="*", default=DEFAULT_SHAPES)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu = process CPU time (robust on a busy machine; 1 thread only)")
    args = ap.parse_args(argv)
    if args.clock == "cpu" and args.threads > 1:
        ap.error("--clock cpu sums the time of all threads: use it with --threads 1")
    dtypes = {"f32": [np.float32], "f64": [np.float64],
              "both": [np.float32, np.float64]}[args.dtype]
    what = "forward" if args.forward_only else "forward+backward"
    print(f"MHA self-attention {what}, threads={args.threads}, {args.clock} clock, median "
          f"of {args.repeat} interleaved rounds (ms); {machine_report()}")
    with threads(args.threads):
        print(f"# {thread_report()}")
        print(f"{'dtype':>5} {'B':>3} {'L':>5} {'d':>4} {'h':>3} {'nn_core':>9} "
              f"{'torch':>9} {'torch_w':>9} {'ratio':>6}")
        for dtype in dtypes:
            for shape in args.shapes:
                cases = make_cases(shape, dtype, args.forward_only)
                t = interleaved(cases, repeat=args.repeat, min_time=args.min_time,
                                clock=args.clock)
                best = min(v for k, v in t.items() if k != "nn_core") if len(t) > 1 else None
                ratio = f"{t['nn_core'] / best:6.2f}" if best else "   n/a"
                print(f"{'f' + np.dtype(dtype).name[5:]:>5} "
                      f"{shape[0]:>3} {shape[1]:>5} {shape[2]:>4} {shape[3]:>3} "
                      f"{fmt_ms(t['nn_core'])} "
                      f"{fmt_ms(t['torch']) if 'torch' in t else '      n/a'} "
                      f"{fmt_ms(t['torch_w']) if 'torch_w' in t else '      n/a'} {ratio}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
