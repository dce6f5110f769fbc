"""Windowed attention: O(L w) against the dense band mask, nn_core vs PyTorch.

``python -m nn_core.bench attention --window [--length 16384] [--long-length 65536]
[--w 512] [--repeat 3] [--torch-max-gib G] [--decode 4096] [--decode-w 256] [--no-dense]``

Shape ``B=1, h=8, L, d=64``, float32, one thread, process CPU time, one call =
forward + backward.  Each case runs in a fresh process (as ``--long`` does), so its
peak memory is its own: one warm-up call at L = 512, then the first measured call with
the resident high-water mark reset (peak extra = ``VmHWM`` after minus ``VmRSS``
before, minus the output and the three gradients), then ``--repeat - 1`` more calls;
the time printed is the median.

Cases at ``L = --length`` with the causal band of width ``w``:

* ``window``: ``ScaledDotProductAttention.forward(q, k, v, window=w)``;
* ``dense``: the same attention with ``mask=create_sliding_window_mask(L, w)`` (the
  dense ``[L, L]`` bool mask; every tile is computed);
* ``torch``: ``torch.nn.functional.scaled_dot_product_attention`` with that mask,
  skipped when its estimated memory (a few ``[L, L]`` float copies of the mask)
  exceeds ``--torch-max-gib`` (default: half the available memory);
* ``causal``: full causal attention (``is_causal=True``), the reference of the FLOP
  share ``(band entries) / (causal entries)``.

Then ``window`` at ``L = --long-length`` (time ratio against ``--length``, and its
peak extra memory; the ratio again with both lengths alternated in one process, which
a busy machine disturbs less), and decoding ``--decode`` tokens one at a time through a
``MultiHeadAttention(512, 8)`` with a ring cache ``new_kv_cache(1, n, window=--decode-w)``:
the positions and bytes it holds against a full cache.  The CPU (family / model
from ``/proc/cpuinfo``) and the load average are printed first.  ``dense``, ``torch``
and ``causal`` run one call each (they take long); ``--no-dense`` skips them.
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

from ._common import threads, torch_or_none
from ._long import MIB, _status_kib, _trim

H, D = 8, 64


def cpu_report():
    """``family/model/model name`` of the first CPU and the load average."""
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if ":" in line:
                    key, val = (s.strip() for s in line.split(":", 1))
                    info.setdefault(key, val)
                if not line.strip() and info:
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("-",) * 3
    return (f"CPU {info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')}), {os.cpu_count()} CPUs; load average "
            + " ".join(f"{x:.2f}" if isinstance(x, float) else x for x in load))


def _call(case, L, w):
    """One forward + backward of ``case`` at length ``L``, and its result bytes."""
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((1, H, L, D), dtype=np.float32) for _ in range(4))
    if case == "torch":
        torch = torch_or_none()
        from ..attention import create_sliding_window_mask
        mask = torch.from_numpy(create_sliding_window_mask(L, w))
        tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
        tg = torch.from_numpy(g)

        def fn():
            out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
            tq.grad = tk.grad = tv.grad = None
            out.backward(tg)
            return out
        return fn, 4 * q.nbytes
    from ..attention import ScaledDotProductAttention, create_sliding_window_mask
    sdpa = ScaledDotProductAttention(dtype=np.float32)
    kw = {"window": w} if case == "window" else (
        {"is_causal": True} if case == "causal" else
        {"mask": create_sliding_window_mask(L, w)})

    def fn():
        out = sdpa.forward(q, k, v, **kw)
        return out, sdpa.backward(g)
    return fn, 4 * q.nbytes


def _child(case, L, w, repeat):
    import gc
    with threads(1):
        warm, _ = _call(case, 512, min(w, 512))
        warm()
        del warm
        fn, result_bytes = _call(case, L, w)
        gc.collect()
        _trim()
        rss0 = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:       # reset VmHWM
            fh.write("5")
        c0 = time.process_time()
        res = fn()
        times = [time.process_time() - c0]
        hwm = _status_kib("VmHWM")
        del res
        for _ in range(repeat - 1):
            c0 = time.process_time()
            fn()
            times.append(time.process_time() - c0)
    return {"cpu": statistics.median(times), "extra": (hwm - rss0) * 1024 - result_bytes}


def _pair(L, L_long, w, repeat):
    """Median CPU seconds of ``window`` at ``L`` and ``L_long``, calls alternated in one
    process (a shared machine's drift hits both alike)."""
    with threads(1):
        fns = [_call("window", n, w)[0] for n in (L, L_long)]
        for fn in fns:
            fn()
        times = [[], []]
        for _ in range(repeat):
            for fn, t in zip(fns, times):
                c0 = time.process_time()
                fn()
                t.append(time.process_time() - c0)
    return {"cpu": statistics.median(times[0]), "cpu_long": statistics.median(times[1])}


def measure(case, L, w, repeat):
    """``_child`` in a fresh interpreter (None if it fails, e.g. out of memory)."""
    cmd = [sys.executable, "-m", "nn_core.bench._window", "--child", case, str(L), str(w),
           str(repeat)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        print(f"# {case} L={L} failed: {tail}")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def _available_bytes():
    try:
        return _status_meminfo("MemAvailable") * 1024
    except OSError:
        return 8 << 30


def _status_meminfo(field):
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/meminfo")


def decode(n, w, out=print):
    """Decode ``n`` tokens one at a time through a ring cache of width ``w``."""
    from ..attention import MultiHeadAttention
    mha = MultiHeadAttention(H * D, H, dtype=np.float32, rng=0)
    mha.eval()
    cache = mha.new_kv_cache(1, n, window=w)
    x = np.random.default_rng(0).standard_normal((1, n, H * D), dtype=np.float32)
    held = 0
    with threads(1):
        c0 = time.process_time()
        for t in range(n):
            mha(x[:, t:t + 1], kv_cache=cache)
            held = max(held, cache.held)
        cpu = time.process_time() - c0
    full = mha.get_kv_cache_size(1, n)
    out(f"decode {n} tokens, window {w}: cache holds {held} positions per layer "
        f"(max over the run; {cache.length} appended), {cache.nbytes / MIB:.2f} MiB vs "
        f"{full / MIB:.2f} MiB for a full cache; {cpu / n * 1e3:.3f} ms CPU per token")
    return {"held": held, "bytes": cache.nbytes, "full_bytes": full, "cpu_per_token": cpu / n}


def run(L, L_long, w, repeat, torch_max, dense=True, n_decode=4096, w_decode=256,
        out=print):
    out(f"# {cpu_report()}")
    out(f"# B=1 h={H} d={D} float32, forward+backward, 1 thread, process CPU time; "
        f"fresh process per case; memory = peak extra MiB beyond inputs, output, gradients")
    res = {"window": measure("window", L, w, repeat)}
    if dense:
        res["dense"] = measure("dense", L, w, 1)
        need = 4 * L * L * 4                       # a few float copies of the mask
        if torch_or_none() is None:
            out("# torch: not installed")
        elif need > torch_max:
            out(f"# torch skipped: about {need / 2**30:.1f} GiB needed > bound "
                f"{torch_max / 2**30:.1f} GiB")
        else:
            res["torch"] = measure("torch", L, w, 1)
        res["causal"] = measure("causal", L, w, 1)
    res["long"] = measure("window", L_long, w, repeat)
    cmd = [sys.executable, "-m", "nn_core.bench._window", "--child", "pair", str(L), str(w),
           str(repeat), str(L_long)]
    pair = subprocess.run(cmd, capture_output=True, text=True)
    res["pair"] = (json.loads(pair.stdout.strip().splitlines()[-1])
                   if pair.returncode == 0 else None)

    def line(name, r, what):
        if r is None:
            return out(f"{name:>28}: -")
        out(f"{name:>28}: {r['cpu']:9.3f} s  {r['extra'] / MIB:9.1f} MiB   {what}")

    win = res["window"]
    line(f"window L={L} w={w}", win, "")
    if win is not None:
        for key, name in (("dense", "nn_core dense mask"), ("torch", "torch SDPA dense mask")):
            r = res.get(key)
            if r is not None:
                line(f"{name}", r, f"window is {r['cpu'] / win['cpu']:.1f}x faster")
        c = res.get("causal")
        if c is not None:
            band = L * w - w * (w - 1) // 2
            share = band / (L * (L + 1) // 2)
            line("nn_core full causal", c,
                 f"time share {win['cpu'] / c['cpu']:.4f} vs FLOP share {share:.4f} "
                 f"(x{win['cpu'] / c['cpu'] / share:.2f})")
        lg = res["long"]
        if lg is not None:
            line(f"window L={L_long} w={w}", lg,
                 f"time x{lg['cpu'] / win['cpu']:.2f} of L={L} (L ratio {L_long / L:g})")
        pr = res["pair"]
        if pr is not None:
            out(f"{'alternated in one process':>28}: L={L} {pr['cpu']:.3f} s, L={L_long} "
                f"{pr['cpu_long']:.3f} s: x{pr['cpu_long'] / pr['cpu']:.2f}")
    res["decode"] = decode(n_decode, w_decode, out) if n_decode else None
    return res


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        case, L, w, repeat = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        if case == "pair":
            print(json.dumps(_pair(L, int(argv[5]), w, repeat)))
        else:
            print(json.dumps(_child(case, L, w, repeat)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m nn_core.bench attention --window",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--long-length", type=int, default=65536)
    parser.add_argument("--w", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--torch-max-gib", type=float, default=None,
                        help="skip torch above this estimated memory (default: half "
                             "the available memory)")
    parser.add_argument("--decode", type=int, default=4096)
    parser.add_argument("--decode-w", type=int, default=256)
    parser.add_argument("--no-dense", action="store_true",
                        help="skip the dense-mask, torch and full causal cases (slow)")
    args = parser.parse_args(argv)
    if min(args.length, args.long_length, args.w, args.repeat, args.decode_w) < 1 \
            or args.decode < 0:
        parser.error("lengths, --w, --repeat and --decode-w must be >= 1")
    torch_max = (args.torch_max_gib * 2**30 if args.torch_max_gib is not None
                 else _available_bytes() / 2)
    run(args.length, args.long_length, args.w, args.repeat, torch_max,
        dense=not args.no_dense, n_decode=args.decode, w_decode=args.decode_w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
