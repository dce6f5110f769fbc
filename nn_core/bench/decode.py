"""Incremental decoding with a KV cache: MHA vs GQA vs MQA.

``python -m nn_core.bench decode [--threads N] [--dtype f32|f64] [--d-model 512]
[--heads 8] [--groups 2] [--batch 1 4 8] [--context 128 512 2048] [--repeat R]
[--clock wall|cpu]``

For each batch size ``B`` and context length ``T`` the cache is filled with ``T``
positions (random keys/values), then one generated token (``x [B, 1, d_model]``)
is timed: Q/K/V projections, appending K/V to the cache, attention over the
``T + 1`` cached positions and the output projection.  The cache is rolled back
after each call so every call sees the same context.  The three variants are timed
interleaved in one run.  Columns: milliseconds per generated token (for the whole
batch), KV-cache size of one layer at ``T`` positions, and per-token time relative
to MHA.
"""
from __future__ import annotations

import argparse

import numpy as np

from ._common import interleaved, machine_report, thread_report, threads


def _variants(d_model, heads, groups, dtype):
    from nn_core.attention import GroupedQueryAttention, MultiHeadAttention, MultiQueryAttention

    return {
        "MHA": MultiHeadAttention(d_model, heads, dtype=dtype, rng=0).eval(),
        f"GQA(g={groups})": GroupedQueryAttention(d_model, heads, groups, dtype=dtype,
                                                  rng=0).eval(),
        "MQA": MultiQueryAttention(d_model, heads, dtype=dtype, rng=0).eval(),
    }


def _step_fn(module, B, T, dtype, rng):
    cache = module.new_kv_cache(B, T + 1)
    cache._k[...] = rng.standard_normal(cache._k.shape)
    cache._v[...] = rng.standard_normal(cache._v.shape)
    x = rng.standard_normal((B, 1, module.d_model)).astype(dtype)

    def step():
        cache.length = T           # roll back: every call decodes position T
        return module(x, kv_cache=cache)

    return step


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nn_core.bench decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=("f32", "f64"), default="f32")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--context", type=int, nargs="*", default=[128, 512, 2048])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu = process CPU time (robust on a busy machine; 1 thread only)")
    args = ap.parse_args(argv)
    if args.clock == "cpu" and args.threads > 1:
        ap.error("--clock cpu sums the time of all threads: use it with --threads 1")
    dtype = np.float32 if args.dtype == "f32" else np.float64
    mods = _variants(args.d_model, args.heads, args.groups, dtype)
    names = list(mods)
    rng = np.random.default_rng(0)
    print(f"decoding one token, d_model={args.d_model}, h={args.heads}, {args.dtype}, "
          f"threads={args.threads}, {args.clock} clock; ms/token (whole batch), KV cache of "
          f"one layer at T, time relative to MHA; {machine_report()}")
    head = f"{'B':>3} {'T':>5} " + " ".join(f"{n + ' ms':>12} {'cache':>10}" for n in names)
    with threads(args.threads):
        print(f"# {thread_report()}")
        print(head + "  " + " ".join(f"{n + '/MHA':>12}" for n in names[1:]))
        for B in args.batch:
            for T in args.context:
                fns = {n: _step_fn(m, B, T, dtype, rng) for n, m in mods.items()}
                t = interleaved(fns, repeat=args.repeat, min_time=args.min_time,
                              clock=args.clock)
                cells = " ".join(
                    f"{t[n] * 1e3:12.3f} {_fmt_bytes(mods[n].get_kv_cache_size(B, T)):>10}"
                    for n in names)
                rel = " ".join(f"{t[n] / t[names[0]]:12.2f}" for n in names[1:])
                print(f"{B:>3} {T:>5} {cells}  {rel}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
