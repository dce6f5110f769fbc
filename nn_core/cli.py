"""The ``nn-core`` command (also ``python -m nn_core``).

::

    nn-core train [TASK] [--epochs N --batch-size N --lr X --hidden N --dtype float32|float64
                          --seed N --threads N --out DIR] [task options]
    nn-core eval CHECKPOINT
    nn-core generate CHECKPOINT [--input 12345 ... | --prompt "12+7=" | --num N]

``TASK`` is ``seq2seq`` (default), ``forecast`` or ``lm``; ``nn-core train TASK --help``
lists its options and defaults.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

__all__ = ["main"]

def _limit_threads(n, argv=None, may_exec=False):
    """Give this process a thread budget of ``n`` (every BLAS library, and child
    processes through the ``*_NUM_THREADS`` variables; see :mod:`nn_core._parallel`)."""
    if n is None:
        return
    if n < 1:
        raise SystemExit(f"nn-core: --threads must be >= 1, got {n}")
    from . import _parallel

    _parallel.limit_threads(n)
    if not _parallel.controllable():
        print(f"nn-core: could not limit BLAS threads to {n} in this process",
              file=sys.stderr)


def _task_name(argv):
    from .tasks import TASKS

    for tok in argv[1:]:
        if tok in TASKS:
            return tok
        if not tok.startswith("-"):
            break
    return "seq2seq"


def _train_parser(task_cls):
    from .tasks import TASKS

    d = task_cls.defaults
    p = argparse.ArgumentParser(
        prog="nn-core train",
        description=f"Train the {task_cls.name!r} task: {task_cls.description}. "
                    "Defaults are this task's; `nn-core train TASK --help` shows another's.")
    p.add_argument("task", nargs="?", default="seq2seq", choices=sorted(TASKS),
                   help="what to train (default: seq2seq)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="default: %(default)s")
    p.add_argument("--lr", type=float, default=d["lr"],
                   help="peak AdamW learning rate, warmup then cosine (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=d["hidden"],
                   help="hidden size (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds data, weights and batch order (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default: %(default)s; these models' matrices are small "
                        "and more threads mostly add synchronisation)")
    p.add_argument("--out", default=None,
                   help="output directory (default: runs/TASK)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in total (quick checks)")
    g = p.add_argument_group(f"{task_cls.name} options")
    task_cls.add_arguments(g)
    return p


def cmd_train(argv):
    from .tasks import get_task
    from .training import train

    task_cls = get_task(_task_name(argv))
    args = _train_parser(task_cls).parse_args(argv[1:])
    _limit_threads(args.threads, argv, _TOP_LEVEL[0])
    for name in ("epochs", "batch_size", "hidden"):
        if getattr(args, name) < 1:
            raise SystemExit(f"nn-core train: --{name.replace('_', '-')} must be >= 1")
    try:
        config = task_cls.config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"nn-core train: {exc}")
    t0 = time.perf_counter()
    task = task_cls(config)
    data_time = time.perf_counter() - t0
    print(f"data: generated in {data_time:.1f}s", flush=True)
    out_dir = args.out or os.path.join("runs", task_cls.name)
    train(task, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
          dtype=np.dtype(args.dtype).type, seed=args.seed, out_dir=out_dir,
          max_steps=args.max_steps)
    print(f"next: nn-core eval {os.path.join(out_dir, 'model.npz')}   |   "
          f"nn-core generate {os.path.join(out_dir, 'model.npz')}")
    return 0


def _load(path):
    from .checkpoint import CheckpointError, load
    from .tasks import get_task

    try:
        model, meta = load(path, with_metadata=True)
    except (FileNotFoundError, CheckpointError) as exc:
        raise SystemExit(f"nn-core: {exc}")
    extra = meta.get("extra") or {}
    if "task" not in extra:
        raise SystemExit(f"nn-core: {path} is an nn_core checkpoint but was not written by "
                         "`nn-core train` (no task recorded)")
    task = get_task(extra["task"])(extra["config"])
    model.eval()
    return model, task, extra


def cmd_eval(argv):
    p = argparse.ArgumentParser(prog="nn-core eval",
                                description="Reload a checkpoint and report validation metrics.")
    p.add_argument("checkpoint")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads")
    args = p.parse_args(argv[1:])
    _limit_threads(args.threads, argv, _TOP_LEVEL[0])
    model, task, extra = _load(args.checkpoint)
    t0 = time.perf_counter()
    metrics = task.evaluate(model)
    tr = extra.get("train", {})
    print(f"{task.name}: {type(model).__name__}, {model.num_parameters():,} parameters, "
          f"{tr.get('dtype', '?')}, trained {tr.get('epochs_done', '?')} epochs "
          f"(seed {tr.get('seed', '?')})")
    print(task.describe_metrics(metrics))
    print(f"evaluated in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_generate(argv):
    p = argparse.ArgumentParser(
        prog="nn-core generate",
        description="Reload a checkpoint and run it: seq2seq decodes digit strings, lm samples "
                    "text with the KV cache, forecast predicts validation windows.")
    p.add_argument("checkpoint")
    p.add_argument("--input", nargs="*", default=None,
                   help="seq2seq: digit strings to transform (default: random ones)")
    p.add_argument("--prompt", nargs="*", default=None,
                   help="lm: prompts to continue (default: random 'a+b=' prompts)")
    p.add_argument("--num", type=int, default=8, help="number of random examples")
    p.add_argument("--max-new-tokens", type=int, default=32, help="lm: tokens to sample")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="lm: 0 = greedy, else softmax temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads")
    args = p.parse_args(argv[1:])
    _limit_threads(args.threads, argv, _TOP_LEVEL[0])
    model, task, _ = _load(args.checkpoint)
    try:
        task.generate(model, args)
    except ValueError as exc:
        raise SystemExit(f"nn-core generate: {exc}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate}


_TOP_LEVEL = [False]


def main(argv=None):
    """Entry point of the ``nn-core`` console script; returns the exit status.

    ``argv=None`` means the command line of this process (which may then re-execute
    itself to apply ``--threads``); a list is parsed in-process only.
    """
    _TOP_LEVEL[0] = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        from .tasks import TASKS

        print(__doc__.strip())
        print(f"\ntasks: {', '.join(TASKS)}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nnn-core: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return COMMANDS[argv[0]](argv)
