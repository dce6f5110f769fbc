"""Whole models vs PyTorch: the CLI's training steps, a BERT-style encoder, its pieces,
inference memory and page faults.

``python -m nn_core.bench model [--threads 1,2] [--repeat 3] [--min-time 0.2]
[--only steps,bert,layers,memory,faults] [--quick] [--seq-len 128]
[--dtype float32|float64]``

Every timing is the median of interleaved rounds in one run (``_common.interleaved``;
with more than one thread each sample is preceded by a short sleep and an untimed
call, so that neither library's spinning thread pool takes a core from the other's
timed run).  ``ratio`` = nn_core time / torch time (wall; below 1: nn_core is
faster); ``*`` marks a ratio above its target.  The ``steps`` and ``bert`` rows give,
for each library, ``ms`` (wall time per call), ``cpu`` (process CPU time per call, every
thread's, medians over the same samples) and ``c/w`` (cpu / wall: the cores kept busy),
and ``load``, the 1-minute load average at the start and end of the row's measurement;
with several thread counts a table of each library's own time at the further counts
over the first (wall and CPU) follows.  Every section ends with its duration and the
load average at its start and end.  Sections:

``steps``
    One training step of each CLI model (``nn-core train TASK`` at its default sizes,
    built by the task itself, on the first batch of ``task.train_batches``) exactly as
    :func:`nn_core.training.train` runs it: ``zero_grad``, ``loss_step`` with ``task.loss``
    (forward, loss, backward, the step's accuracy bookkeeping), ``clip_grad_norm(1.0)``,
    AdamW step, schedule step.  Against a torch twin of the model holding the same
    initial weights (copied through :mod:`nn_core.interop`), stepped the way a torch
    user would: ``zero_grad()``, forward, ``F.cross_entropy`` / ``F.mse_loss``,
    ``backward()``, ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` (defaults), a
    ``LambdaLR`` of the same schedule, and the same bookkeeping (``loss.item()``,
    accuracy counts).  Before timing, each pair runs its first two steps and the
    losses and gradient norms are compared (a warning is printed if they differ by
    more than float rounding).  Target: 0.8.

    The CLI's GRU models use ``GRUCell(reset_after=False)`` (the documented GRU
    equation); torch's ``nn.GRU`` only computes the reset-after form, so their twins
    compute a different (equally costly) recurrence and their losses cannot agree.
    Their checks therefore run on a copy of the model whose GRU cells are
    ``reset_after=True`` with the same weights (the twin's wiring is then checked
    exactly), and that copy is timed too (rows marked ``ra``, no target).

``bert``
    Six ``TransformerEncoderLayer(384, 12, 1536, dropout=0.0, activation="gelu",
    layer_norm_eps=1e-12)`` (post-LN, exact-erf GELU) in a ``Sequential`` against
    ``torch.nn.TransformerEncoder`` of the same layers (weights copied), at
    ``B=64, L=128`` (``--seq-len``; ``--quick``: ``B=2, L=16``):

    * ``forward (inference)``: nn_core under ``nn_core.inference_mode()``, torch under
      ``torch.inference_mode()`` in ``eval()`` (its fused encoder-layer path);
    * ``forward (training)``: the forward part of the forward+backward calls below (a
      training-mode forward that keeps what backward needs; torch with
      ``requires_grad``), timed inside those calls: the median over all but the first;
    * ``forward+backward``: ``zero_grad`` (torch: gradients set to ``None``), forward,
      backward of ``<y, g>`` with the input gradient and every parameter gradient.

    Targets: forward 0.8, forward+backward 0.9.  From ``B*L = 2048`` (calls of
    seconds) the samples are taken without ``settle``: the other pool's ~0.1 s of
    spinning is then a few % of a sample, and the untimed calls would cost a third of
    the section's time.

``layers``
    The pieces at the BERT shapes: ``Linear(384, 1536)``, ``LayerNorm(384)``, GELU
    (exact and tanh) on ``[B, L, 1536]``, softmax cross-entropy over ``[B, L, 2048]``
    logits with 85 % of the targets ``ignore_index`` (masked-LM style), ``Embedding(30522,
    384)``, SDPA ``[B, 12, L, 32]``, ``MultiHeadAttention(384, 12)`` (torch:
    ``need_weights=False``), and one AdamW step over the encoder's parameters (torch
    default, and ``fused=True``).  Forward as the inference forward above;
    forward+backward as above (``zero_grad`` included).  No targets.

``memory``
    Peak resident-memory increase of one forward of the encoder under
    ``nn_core.inference_mode()`` vs ``torch.inference_mode()`` (both in ``eval()``),
    each in a fresh subprocess with one thread: after a tiny warm-up forward (lazy
    imports, JIT, thread pools), ``gc`` and ``malloc_trim``, the kernel's peak-RSS mark
    is reset (``/proc/self/clear_refs``), the forward runs, and ``VmHWM - VmRSS
    before`` is the figure (``ru_maxrss``, an upper bound, where the reset is not
    possible).  Printed for that first forward (the target's figure) and for a second
    one in the same process (``again``: what is still allocated from the first, such
    as reused work buffers, no longer counts), with nn_core's peak of the allocations
    ``tracemalloc`` sees (NumPy arrays, Python objects) during the first.  Target: 1.5.

``faults``
    Minor page faults (``getrusage``) per training step of each CLI model after 3
    warm-up steps (mean of 5), nn_core and torch each in a fresh process per model
    (with ``--quick``: one process per library for all models).  A fresh process is
    what ``nn-core train`` is: the count depends on the C allocator's state, which
    everything run before in the same process changes (after this script's other
    sections nn_core's count drops to about 0).  Target: under 100 (nn_core).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ._common import (Times, fmt_load, fmt_times, interleaved, load1,
                      machine_report, scaling_table, thread_report, threads, times_header,
                      times_legend, torch_or_none)
from ._model_parts import (BERT_FB_TARGET, BERT_FWD_TARGET, D_MODEL, FFN, HEADS, LAYERS,
                           _bert_check, _say, bert_shape, build_step_pairs, nn_encoder,
                           torch_encoder)
from ._memory import run_faults, run_memory
from ._model_parts import CLI_MODELS, cli_model, cli_task  # noqa: F401  (the bench's models)
from ._pieces import run_layers

SECTIONS = ("steps", "bert", "layers", "memory", "faults")

def run_steps(torch, thread_counts, dtype, repeat, min_time, quick, out=_say, pairs=None):
    out(f"\n== Training steps of the CLI models ({np.dtype(dtype).name}): zero_grad, forward, "
        f"loss, backward, clip_grad_norm(1.0), AdamW, schedule ==")
    if pairs is None:
        pairs = build_step_pairs(torch, dtype, quick, out=out)
    hdr = (f"{'model':<26} {'thr':>3} {times_header('nn', 'torch')} {'ratio':>6} "
           f"{'target':>6}   {'load':>9}")
    results = {}
    for n in thread_counts:
        with threads(n):
            out(f"# threads={n}: {thread_report()}")
            out(hdr)
            for label, pair, target, _ in pairs:
                load0 = load1()
                t = interleaved({"nn": pair.nn_step, "torch": pair.torch_step}, repeat=repeat,
                                min_time=min_time, clock="both",
                                settle=0.2 if n > 1 else 0.0)
                results.setdefault(label, {})[n] = (t["nn"], t["torch"])
                r = t["nn"].wall / t["torch"].wall
                tgt = f"{target:6.2f}" if target else f"{'-':>6}"
                flag = "  " if target is None or r <= target else " *"
                out(f"{label:<26} {n:>3} {fmt_times(t['nn'], t['torch'])} {r:6.2f} {tgt}{flag} "
                    f"{fmt_load(load0, load1()):>9}")
    for line in scaling_table(results, thread_counts):
        out(line)
    out(times_legend())
    out("(ra) = the same model with its GRU cells reset_after=True, torch's recurrence, "
        "same weights; the CLI's GRU is reset_after=False, which torch does not have")
    return pairs


def run_bert(torch, thread_counts, dtype, repeat, min_time, args, out=_say):
    from ..module import inference_mode

    B, L = bert_shape(args)
    out(f"\n== BERT-style encoder: {LAYERS} post-LN layers, d={D_MODEL}, h={HEADS}, "
        f"FFN {FFN}, exact GELU, B={B}, L={L}, {np.dtype(dtype).name} ==")
    ours = nn_encoder(dtype)
    theirs = torch_encoder(torch, dtype, ours)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, L, D_MODEL)).astype(dtype)
    g = rng.standard_normal((B, L, D_MODEL)).astype(dtype)
    _bert_check(torch, ours, theirs, x, g, out)
    xt = torch.from_numpy(x.copy())
    xg = torch.from_numpy(x.copy()).requires_grad_(True)
    gt = torch.from_numpy(g)

    def nn_inf():
        with inference_mode():
            ours(x)

    def torch_inf():
        theirs.eval()
        with torch.inference_mode():
            theirs(xt)
        theirs.train()

    # The training forward is timed inside the forward+backward calls (no extra calls:
    # at these sizes one call takes seconds): the median of their forward parts.
    split = {"nn_fb": [], "torch_fb": []}

    def nn_fb():
        ours.zero_grad()
        t0, c0 = time.perf_counter(), time.process_time()
        ours(x)
        split["nn_fb"].append(Times(time.perf_counter() - t0, time.process_time() - c0))
        ours.backward(g)

    def torch_fb():
        theirs.zero_grad()
        xg.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        y = theirs(xg)
        split["torch_fb"].append(Times(time.perf_counter() - t0, time.process_time() - c0))
        y.backward(gt)

    fns = {"nn_inf": nn_inf, "torch_inf": torch_inf, "nn_fb": nn_fb, "torch_fb": torch_fb}
    # With more than one thread, settle (a sleep and an untimed call before each sample)
    # keeps the other library's spinning pool (up to ~0.1 s after its call) off the
    # timed run.  From B*L = 2048 one call of this encoder takes seconds: the spin is
    # then under a few % of a sample, while the untimed calls would add 3 multi-second
    # calls per contender (a third of the section's time); so no settle there.
    long_calls = B * L >= 2048
    rows = (("forward (inference)", "nn_inf", "torch_inf", BERT_FWD_TARGET),
            ("forward (training)", "nn_tf", "torch_tf", BERT_FWD_TARGET),
            ("forward+backward", "nn_fb", "torch_fb", BERT_FB_TARGET))
    hdr = (f"{'what':<22} {'thr':>3} {times_header('nn', 'torch')} {'ratio':>6} "
           f"{'target':>6}   {'load':>9}")
    results = {}
    for n in thread_counts:
        with threads(n):
            out(f"# threads={n}: {thread_report()}")
            out(hdr)
            for v in split.values():
                v.clear()
            load0 = load1()
            t = interleaved(fns, repeat=repeat, min_time=min_time, clock="both",
                            settle=0.2 if n > 1 and not long_calls else 0.0)
            load = fmt_load(load0, load1())
            for side in ("nn", "torch"):        # [0]: the warm-up call
                t[f"{side}_tf"] = Times(*np.median(np.array(split[f"{side}_fb"][1:]), axis=0))
            for label, a, b, target in rows:
                results.setdefault(label, {})[n] = (t[a], t[b])
                r = t[a].wall / t[b].wall
                out(f"{label:<22} {n:>3} {fmt_times(t[a], t[b])} {r:6.2f} {target:6.2f}"
                    f"{'  ' if r <= target else ' *'} {load:>9}")
    for line in scaling_table(results, thread_counts, width=22, what="what"):
        out(line)
    out(times_legend() + " (one measurement for all three rows)")


# ================================================================== main ====
def _parse_threads(text):
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be a list like 1,2, got {text!r}")
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--threads entries must be >= 1, got {text!r}")
    return counts


def _parse_only(text):
    parts = [v.strip() for v in text.split(",") if v.strip()]
    bad = [p for p in parts if p not in SECTIONS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"--only takes a list of {','.join(SECTIONS)}, "
                                         f"got {text!r}")
    return parts


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nn_core.bench model",
                                description=__doc__.splitlines()[0],
                                epilog="Sections and columns: see nn_core/bench/model.py.")
    p.add_argument("--threads", type=_parse_threads, default=[1, 2],
                   help="thread counts, e.g. 1,2 (default)")
    p.add_argument("--repeat", type=int, default=None,
                   help="interleaved rounds per measurement (default: 3; --quick: 1)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per timing sample; calls are batched (default: 0.2; "
                        "--quick: 0.02)")
    p.add_argument("--only", type=_parse_only, default=list(SECTIONS),
                   help=f"sections to run, from {','.join(SECTIONS)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: encoder B=2, L=16; smaller task data sets (the CLI "
                        "models and batches keep their sizes); one round; fewer fault-count "
                        "steps")
    p.add_argument("--seq-len", type=int, default=None,
                   help="L of the encoder and its pieces (default: 128, --quick: 16)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.min_time is None:
        args.min_time = 0.02 if args.quick else 0.2
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.seq_len is not None and args.seq_len < 1:
        p.error("--seq-len must be >= 1")
    torch = torch_or_none()
    if torch is None:
        print("torch is not installed: nothing to compare against "
              "(pip install torch, the CPU wheel)")
        return 1
    dtype = np.dtype(args.dtype).type
    only = set(args.only)
    t_start = time.perf_counter()
    print(f"nn_core vs torch {torch.__version__}, whole models; {machine_report()}; "
          f"numpy {np.__version__}")
    print(f"medians of {args.repeat} interleaved rounds, wall and CPU time of the same samples; "
          f"ratio = nn_core / torch (wall); * = above target; load average {load1():.2f}")
    for section in SECTIONS:
        if section not in only:
            continue
        t0, load0 = time.perf_counter(), load1()
        if section == "steps":
            run_steps(torch, args.threads, dtype, args.repeat, args.min_time, args.quick)
        elif section == "bert":
            run_bert(torch, args.threads, dtype, args.repeat, args.min_time, args)
        elif section == "layers":
            run_layers(torch, args.threads, dtype, args.repeat, args.min_time, args)
        elif section == "memory":
            run_memory(dtype, args)
        else:
            run_faults(args.threads, dtype, args.quick)
        print(f"({section}: {time.perf_counter() - t0:.0f} s, load average "
              f"{fmt_load(load0, load1())})", flush=True)
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
