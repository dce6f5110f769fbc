"""The ``nn-core`` command (also ``python -m nn_core``); see :data:`USAGE`.

Exit status: 0 on success, 1 when a command fails (unreadable checkpoint, diverged
training), 2 for a usage error (every argument is checked before any data are
generated, and the one-line message names the flag), and 128 + the signal number when
training is interrupted (130 for Ctrl-C) after saving a resumable checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import sys
import time

import numpy as np

from ._validation import check_int, check_real

__all__ = ["main", "USAGE"]

USAGE = """\
usage: nn-core COMMAND [options]

commands:
  train [TASK] [options]   train a model and save it in a run folder (TASK: seq2seq
                           (default), forecast or lm), on generated data or on your
                           own file (--data)
  eval RUN                 reload a trained model and report its validation metrics
  generate RUN [options]   run a trained model on examples, prompts or a file of inputs
  predict RUN [options]    write a forecast model's forecasts for a series to CSV
  RUN is a run folder (such as runs/seq2seq) or the checkpoint in it (its model.npz).

options:
  -h, --help               show this help (nn-core COMMAND --help: that command's options
                           and their defaults; nn-core train TASK --help: the task's)
  --version                show the version

examples:
  nn-core train                                  reverse digit strings, into runs/seq2seq
  nn-core train lm --kv-groups 2 --out runs/gqa  a small transformer with grouped-query attention
  nn-core train forecast --data series.csv --target temp --out runs/temp
  nn-core train lm --data book.txt --out runs/book   a character-level language model
  nn-core train seq2seq --data pairs.tsv --out runs/pairs
  nn-core train --resume --out runs/seq2seq      continue an interrupted run
  nn-core eval runs/seq2seq
  nn-core generate runs/seq2seq --input 3141592653
"""


class UsageError(Exception):
    """A bad command line (exit status 2)."""


class CommandError(Exception):
    """A command that cannot be carried out (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """Errors as one line naming the flag, raised instead of printed."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _limit_threads(n):
    """Give this process a thread budget of ``n`` (every BLAS library, and child
    processes through the ``*_NUM_THREADS`` variables; see :mod:`nn_core._parallel`)."""
    from . import _parallel

    _parallel.limit_threads(n)
    if not _parallel.controllable():
        print(f"nn-core: could not limit BLAS threads to {n} in this process",
              file=sys.stderr)


def _explicit(parser, argv):
    """The destinations of the options given on the command line."""
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            # a positional's default must pass its choices unless it is not a str
            a.default = argparse.SUPPRESS if a.option_strings else None
        ns, _ = parser.parse_known_args(argv)
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]
    return {k for k, v in vars(ns).items() if v is not None}


def _check(args, dest, checker, *bounds, **kwargs):
    """``args.dest`` (unless ``None``) through a :mod:`nn_core._validation` checker,
    its message naming the flag."""
    value = getattr(args, dest)
    if value is None:
        return
    try:
        checker(value, "--" + dest.replace("_", "-"), *bounds, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


# ------------------------------------------------------------------ train
def _train_parser(task_cls, task_default="seq2seq"):
    from .tasks import TASKS

    d = task_cls.defaults
    p = _Parser(
        prog="nn-core train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train the {task_cls.name} task: {task_cls.description}.\n"
                    "The defaults shown are this task's; nn-core train TASK --help shows "
                    "another task's.",
        epilog="A run folder holds model.npz (the checkpoint, with the training state), "
               "history.json,\nhistory.csv and loss_curve.png. Ctrl-C saves the run and "
               "exits with status 130;\nnn-core train --resume --out DIR continues it.")
    p.add_argument("task", nargs="?", default=task_default, choices=sorted(TASKS),
                   metavar="TASK", help="seq2seq, forecast or lm (default: seq2seq)")
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
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default: runs/TASK)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop after this many optimizer steps in total, with a resumable "
                        "checkpoint; the schedule still spans --epochs (default: no limit)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its saved settings (default: off)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (default: off; a run folder is never "
                        "replaced silently)")
    g = p.add_argument_group(f"{task_cls.name} options")
    task_cls.add_arguments(g)
    return p


def _option_owner(flag, own):
    """The other task that has option ``flag``, if any."""
    from .tasks import TASKS, get_task

    for name in TASKS:
        if name != own and flag in _train_parser(get_task(name))._option_string_actions:
            return name
    return None


def _positional_task(argv):
    """The first positional token of ``nn-core train`` (every option but the flags
    takes one value)."""
    flags = {"-h", "--help", "--resume", "--overwrite"}
    skip = False
    for tok in argv:
        if skip:
            skip = False
        elif tok.startswith("-"):
            skip = "=" not in tok and not any(f.startswith(tok) for f in flags)
        else:
            return tok
    return None


def _parse_train(argv, task_default="seq2seq"):
    """``(task class, args, explicit destinations)`` for ``nn-core train ...``; the task
    is the positional one, else ``task_default``."""
    from .tasks import TASKS, get_task

    task = _positional_task(argv) or task_default
    parser = _train_parser(get_task(task if task in TASKS else task_default), task_default)
    known = parser._option_string_actions
    for tok in argv:
        flag = tok.split("=")[0]
        if flag.startswith("--") and not any(o.startswith(flag) for o in known):
            owner = _option_owner(flag, task)
            if owner:
                raise UsageError(f"nn-core train: {flag} is an option of the {owner} task, "
                                 f"not of {task} (nn-core train {task} --help lists "
                                 "its options)")
    args = parser.parse_args(argv)
    return get_task(args.task), args, _explicit(parser, argv)


def _check_train_args(args):
    for name in ("epochs", "batch_size", "hidden", "threads", "max_steps"):
        _check(args, name, check_int, 1)
    _check(args, "seed", check_int, 0)
    _check(args, "lr", check_real, 0.0, lo_open=True)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file; give a folder for the run")


def _resumed_run(argv):
    """``(run info, out)`` when the command line asks for ``--resume``, else ``None``."""
    from .checkpoint import CheckpointError
    from .training import read_run

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--out", default=None)
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--overwrite", action="store_true")
    ns, _ = pre.parse_known_args(argv)
    if not ns.resume:
        return None
    if ns.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    out = ns.out or os.path.join("runs", _positional_task(argv) or "seq2seq")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file; give a folder for the run")
    try:
        return read_run(out), out
    except FileNotFoundError:
        raise CommandError(f"nn-core train --resume: nothing to resume in {out} (no "
                           "model.npz)") from None
    except (OSError, CheckpointError) as exc:
        raise CommandError(f"nn-core train --resume: {exc}") from None


def _check_data_options(task_cls, args, explicit):
    """Options of generated data are refused with ``--data``, and file options without."""
    flag = lambda dest: "--" + dest.replace("_", "-")  # noqa: E731
    if getattr(args, "data", None) is not None:
        bad = [d for d in task_cls.generated_only if d in explicit]
        if bad:
            raise UsageError(f"{flag(bad[0])} applies to the generated data of the "
                             f"{task_cls.name} task, not to --data")
    else:
        bad = [d for d in task_cls.data_only if d in explicit]
        if bad:
            raise UsageError(f"{flag(bad[0])} needs --data FILE")


def _resume_settings(task_cls, args, explicit, info):
    """The saved run's settings, refusing explicit options that disagree with them."""
    keep = {"task", "out", "max_steps", "threads", "resume", "overwrite"}
    settings, config = info["settings"], info["config"] or {}
    for dest in sorted(explicit - keep):
        given = getattr(args, dest)
        saved = settings[dest] if dest in settings else config.get(dest)
        if dest not in settings:
            try:
                given = task_cls.config_value(dest, given)
            except (TypeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
        if given != saved:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(f"{flag} {given} differs from the run being resumed ({saved}); "
                             "a resumed run keeps its settings (drop the option)")
    return settings


def cmd_train(argv):
    from .checkpoint import CheckpointError
    from .training import RUN_FILES, RunExistsError, TrainingInterrupted, train

    resumed = _resumed_run(argv[1:])
    task_default = resumed[0]["task"] if resumed else "seq2seq"
    task_cls, args, explicit = _parse_train(argv[1:], task_default)
    args.out = args.out or os.path.join("runs", task_cls.name)
    _check_train_args(args)
    if resumed:
        info, _ = resumed
        if args.task != info["task"]:
            raise UsageError(f"--out {args.out} holds a {info['task']} run, not {args.task}")
        settings = _resume_settings(task_cls, args, explicit, info)
        if info["finished"]:
            print(f"nn-core train: the run in {args.out} is finished ({info['epochs_done']} "
                  f"epochs, {info['step']} steps); nothing to resume")
            return 0
        if args.max_steps is not None and args.max_steps <= info["step"]:
            raise UsageError(f"--max-steps {args.max_steps} is not past the run's step "
                             f"{info['step']}")
        try:
            config = task_cls.check_config(info["config"])
        except (TypeError, ValueError) as exc:
            raise CommandError(f"nn-core train --resume: the run's task configuration is "
                               f"invalid: {exc}") from None
    else:
        present = [f for f in RUN_FILES if os.path.lexists(os.path.join(args.out, f))]
        if present and not args.overwrite:
            raise UsageError(f"--out {args.out} already holds a run ({', '.join(present)}); "
                             "add --resume to continue it or --overwrite to replace it")
        _check_data_options(task_cls, args, explicit)
        try:
            config = task_cls.config_from_args(args)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                    "dtype": args.dtype, "seed": args.seed}
    _limit_threads(args.threads)
    t0 = time.perf_counter()
    try:
        task = task_cls(config)
    except (OSError, ValueError) as exc:
        raise CommandError(f"nn-core train: {exc}") from None
    what = task.describe_data()
    print(f"data: {what} in {time.perf_counter() - t0:.1f}s" if what == "generated"
          else f"data: {what}", flush=True)
    extra = {k: settings[k] for k in ("weight_decay", "clip", "warmup_frac") if k in settings}
    resume_cmd = f"nn-core train --resume --out {args.out}"
    try:
        _, result = train(task, epochs=settings["epochs"], batch_size=settings["batch_size"],
                          lr=settings["lr"], dtype=np.dtype(settings["dtype"]).type,
                          seed=settings["seed"], out_dir=args.out, max_steps=args.max_steps,
                          resume=bool(resumed), overwrite=args.overwrite, **extra)
    except TrainingInterrupted as exc:
        print(f"nn-core train: {exc}; resume with: {resume_cmd}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    except (FloatingPointError, RunExistsError, NotADirectoryError, FileNotFoundError,
            CheckpointError, ValueError) as exc:          # ValueError: a resume that differs
        raise CommandError(f"nn-core train: {exc}") from None
    if result["status"] == "max_steps":
        print(f"next: {resume_cmd}   (continues to the end of the run)")
    else:
        print(f"next: nn-core eval {args.out}   |   nn-core generate {args.out}")
    return 0


# ------------------------------------------------------------------ eval, generate
def _checkpoint_path(run):
    """A run folder's checkpoint, or the file given."""
    from .training import CHECKPOINT

    if os.path.isdir(run):
        path = os.path.join(run, CHECKPOINT)
        if not os.path.exists(path):
            raise CommandError(f"nn-core: {run} is a folder without a {CHECKPOINT}; give a "
                               "run folder or a checkpoint file")
        return path
    return run


def _task_of(path):
    """``(task class, config, metadata)`` of a checkpoint written by ``nn-core train``,
    checked without generating any data."""
    from .checkpoint import CheckpointError, read_metadata
    from .tasks import TASKS, get_task

    try:
        meta = read_metadata(path)
    except (OSError, CheckpointError) as exc:
        raise CommandError(f"nn-core: {exc}") from None
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict) or "task" not in extra:
        raise CommandError(f"nn-core: {path} is an nn_core checkpoint but was not written by "
                           "`nn-core train` (no task recorded)")
    if extra["task"] not in TASKS:
        raise CommandError(f"nn-core: {path} records an unknown task {extra['task']!r:.40}")
    task_cls = get_task(extra["task"])
    try:
        config = task_cls.check_config(extra.get("config"))
    except (TypeError, ValueError) as exc:
        raise CommandError(f"nn-core: {path} records an invalid {task_cls.name} "
                           f"configuration: {exc}") from None
    return task_cls, config, meta


def _make_task(task_cls, config):
    """The task of a checkpoint, its data read or generated (a missing or changed data
    file is a one-line error)."""
    try:
        return task_cls(config)
    except (OSError, ValueError) as exc:
        raise CommandError(f"nn-core: {exc}") from None


def _load_model(path):
    from .checkpoint import CheckpointError, load

    try:
        model = load(path)
    except (OSError, CheckpointError) as exc:
        raise CommandError(f"nn-core: {exc}") from None
    return model.eval()


def cmd_eval(argv):
    p = _Parser(prog="nn-core eval",
                description="Reload a trained model and report its validation metrics.")
    p.add_argument("run", metavar="RUN",
                   help="a run folder (such as runs/seq2seq) or its model.npz")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default: %(default)s)")
    args = p.parse_args(argv[1:])
    _check(args, "threads", check_int, 1)
    path = _checkpoint_path(args.run)
    task_cls, config, meta = _task_of(path)
    _limit_threads(args.threads)
    model = _load_model(path)
    task = _make_task(task_cls, config)
    t0 = time.perf_counter()
    metrics = task.evaluate(model)
    tr = (meta.get("extra") or {}).get("train") or {}
    print(f"{task.name}: {type(model).__name__}, {model.num_parameters():,} parameters, "
          f"{tr.get('dtype', '?')}, trained {tr.get('epochs_done', '?')} epochs "
          f"(seed {tr.get('seed', '?')})")
    print(task.describe_metrics(metrics))
    print(f"evaluated in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_generate(argv):
    p = _Parser(
        prog="nn-core generate",
        description="Reload a trained model and run it: seq2seq decodes strings, lm samples "
                    "text with the KV cache, forecast predicts validation windows.")
    p.add_argument("run", metavar="RUN",
                   help="a run folder (such as runs/seq2seq) or its model.npz")
    p.add_argument("--input", nargs="+", default=None,
                   help="seq2seq: strings to transform (default: --num random ones)")
    p.add_argument("--input-file", default=None, metavar="FILE",
                   help="seq2seq models trained with --data: decode each line of FILE (a "
                        "line SOURCE<TAB>TARGET is also scored) (default: none)")
    p.add_argument("--prompt", nargs="+", default=None,
                   help="lm: prompts to continue (default: --num random 'a+b=' prompts, or "
                        "snippets of the validation text)")
    p.add_argument("--num", type=int, default=8,
                   help="number of random examples (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="lm: tokens to sample after a --prompt (default: 32; 200 for models "
                        "trained with --data)")
    p.add_argument("--temperature", type=float, default=None,
                   help="lm: 0 = greedy, else the softmax temperature (default: 0; 0.8 for "
                        "models trained with --data)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the random examples and sampling (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default: %(default)s)")
    args = p.parse_args(argv[1:])
    explicit = _explicit(p, argv[1:])
    for name in ("num", "max_new_tokens", "threads"):
        _check(args, name, check_int, 1)
    _check(args, "seed", check_int, 0)
    _check(args, "temperature", check_real, 0.0)
    path = _checkpoint_path(args.run)
    task_cls, config, _ = _task_of(path)
    task_only = {"input": "seq2seq", "input_file": "seq2seq", "prompt": "lm",
                 "max_new_tokens": "lm", "temperature": "lm"}
    for dest, owner in task_only.items():
        if dest in explicit and owner != task_cls.name:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(f"{flag} is an option of {owner} models; {args.run} holds a "
                             f"{task_cls.name} model")
    try:
        task_cls.check_generate_args(args, config)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"nn-core generate: {exc}") from None
    _limit_threads(args.threads)
    model = _load_model(path)
    task = _make_task(task_cls, config)
    task.generate(model, args)
    return 0


def cmd_predict(argv):
    from .checkpoint import atomic_write

    p = _Parser(
        prog="nn-core predict",
        description="Reload a forecast model trained with --data and write its forecasts "
                    "for a series (the training file, or a newer one with the same columns) "
                    "to CSV: one row per window, the target columns in the data's units.")
    p.add_argument("run", metavar="RUN", help="a forecast run folder or its model.npz")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="the series to forecast (default: the file the model was trained on)")
    p.add_argument("--output", default=None, metavar="FILE.csv",
                   help="where to write the forecasts (default: forecasts.csv beside the "
                        "checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output file (default: off)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default: %(default)s)")
    args = p.parse_args(argv[1:])
    _check(args, "threads", check_int, 1)
    path = _checkpoint_path(args.run)
    task_cls, config, _ = _task_of(path)
    if task_cls.name != "forecast":
        raise UsageError(f"{args.run} holds a {task_cls.name} model; predict writes forecasts "
                         "of forecast models (nn-core generate runs the others)")
    if config.get("data") is None:
        raise UsageError(f"{args.run} was trained on the generated Lorenz series; predict "
                         "needs a model trained with --data")
    data = args.data or config["data"]
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(path)),
                                         "forecasts.csv")
    if os.path.isdir(output):
        raise UsageError(f"--output {output} is a folder; give a file name")
    if os.path.exists(output) and not args.overwrite:
        raise UsageError(f"--output {output} exists; add --overwrite to replace it")
    _limit_threads(args.threads)
    try:
        header, rows = task_cls.predict_file(_load_model(path), config, data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"nn-core predict: {exc}") from None
    with atomic_write(output, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    h = config["horizon"]
    future = [r for r in rows if r[-1] == ""]
    print(f"{len(rows)} forecasts, {h} step(s) ahead, of {', '.join(config['target'])} "
          f"from {data}: {output}")
    for r in rows[-min(len(rows), max(3, len(future))):]:
        print("  " + ", ".join(f"{k}={v if v == '' or k == 'time_index' else f'{float(v):.6g}'}"
                               for k, v in zip(header, r)))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate,
            "predict": cmd_predict}


def _version():
    from . import __version__

    return __version__


def main(argv=None):
    """Entry point of the ``nn-core`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if argv[0] == "--version":
        print(f"nn-core {_version()}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"nn-core: unknown command {argv[0]!r}; choose train, eval, generate or predict "
              "(see nn-core --help)", file=sys.stderr)
        return 2
    if argv[0] == "train":
        from . import distributed

        if distributed.launched():
            return _train_ranks(argv, distributed.init())
    return _dispatch(argv)


def _train_ranks(argv, world):
    """``nn-core train`` as one of several MPI ranks: rank 0 prints, and a rank that
    ends with an error or a signal ends the whole job (the others would wait for it)."""
    from . import distributed

    with distributed.abort_on_error():
        with contextlib.ExitStack() as quiet:
            if world.rank != 0:
                devnull = quiet.enter_context(open(os.devnull, "w"))
                quiet.enter_context(contextlib.redirect_stdout(devnull))
                quiet.enter_context(contextlib.redirect_stderr(devnull))
            status = _dispatch(argv)
        # a signal stops every rank at the same step, after rank 0 saved: an orderly
        # exit; any other failure may be one rank's alone, and ends the job
        if status and status not in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            sys.exit(status)
    return status


def _dispatch(argv):
    try:
        return COMMANDS[argv[0]](argv)
    except UsageError as exc:
        msg = str(exc)
        print(msg if msg.startswith("nn-core") else f"nn-core {argv[0]}: {msg}",
              file=sys.stderr)
        return 2
    except CommandError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nn-core {argv[0]}: interrupted; nothing was saved", file=sys.stderr)
        return 130
    except SystemExit as exc:          # argparse's --help
        return exc.code if isinstance(exc.code, int) else 0
