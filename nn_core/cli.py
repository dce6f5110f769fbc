"""The ``nn-core`` command (also ``python -m nn_core``); see :data:`USAGE`.

Exit status: 0 on success, 1 when a command fails (unreadable or invalid checkpoint,
the run's recorded data file missing, changed or not a regular file, a run folder in
use, a full disk, diverged training), 2 for a usage error or a bad ``--data`` file
(every argument is checked before any data are generated, and the one-line message
names the flag, or the file, line and column), and 128 + the signal number when
training is interrupted (130 for Ctrl-C) after saving a resumable checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import signal
import sys
import threading
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


#: what ``--threads`` means when it is not given
THREADS_DEFAULT = ("the cores this process may use, shared with the other MPI ranks on "
                   "its node; a *_NUM_THREADS variable's count when one is set")


def default_threads() -> int:
    """``--threads`` when not given: the cores this process may use
    (``os.sched_getaffinity``), divided among the MPI ranks of the job that share them;
    when a ``*_NUM_THREADS`` variable is set, the thread count it gave BLAS."""
    from . import _parallel

    if any(v in os.environ for v in _parallel.THREAD_ENV_VARS):
        return _parallel.blas_threads()
    from . import distributed

    if distributed.is_initialized() and distributed.world().threads:
        return int(distributed.world().threads)
    return _parallel.available_cores()


def _limit_threads(n):
    """Give this process a thread budget of ``n`` (:func:`default_threads` when None):
    the thread team's size, every BLAS library's count, and child processes' through
    the ``*_NUM_THREADS`` variables; see :mod:`nn_core._parallel`."""
    from . import _parallel

    if n is None:
        n = default_threads()
    _parallel.limit_threads(n)
    if not _parallel.controllable():
        print(f"nn-core: could not limit BLAS threads to {n} in this process",
              file=sys.stderr)


def _check(args, dest, checker, *bounds, **kwargs):
    """``args.dest`` (unless ``None``) through a :mod:`nn_core._validation` checker,
    its message naming the flag."""
    value = getattr(args, dest)
    if value is None:
        return
    try:
        checker(value, _flag(dest), *bounds, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _flag(dest):
    return "--" + dest.replace("_", "-")


def _add_options(group, options):
    for opt in options:
        group.add_argument(opt.flag, **opt.argparse_kwargs())


def _fill(args, options):
    """The options not given get their defaults."""
    for opt in options:
        if not hasattr(args, opt.name):
            setattr(args, opt.name, opt.default)


def _owner(dest, attribute, exclude=None):
    """The first task (other than ``exclude``) that declares option ``dest`` in its
    ``attribute`` (``train_options`` ...)."""
    for cls in _task_classes():
        if cls is not exclude and any(o.name == dest for o in getattr(cls, attribute) or ()):
            return cls
    return None


def _task_classes():
    from .tasks import TASKS, get_task

    return [get_task(name) for name in TASKS]


# ------------------------------------------------------------------ train
def _common_train_options(task_cls):
    """The options of every task, with ``task_cls``'s defaults (``None``: those of the
    task that runs)."""
    from .tasks import Option

    d = task_cls.defaults if task_cls is not None else {}
    per_task = "the task's" if task_cls is None else None
    return (
        Option("--epochs", "passes over the training data", d.get("epochs"), type=int,
               default_text=per_task),
        Option("--batch-size", "samples per optimizer step", d.get("batch_size"), type=int,
               default_text=per_task),
        Option("--lr", "peak AdamW learning rate, warmup then cosine", d.get("lr"),
               type=float, default_text=per_task),
        Option("--hidden", "hidden size", d.get("hidden"), type=int, default_text=per_task),
        Option("--dtype", "floating-point type", "float32", choices=("float32", "float64")),
        Option("--seed", "seeds data, weights and batch order", 0, type=int),
        Option("--threads", "threads (cores) to use", type=int,
               default_text=THREADS_DEFAULT),
        Option("--out", "run folder", metavar="DIR", type=str,
               default_text=f"runs/{task_cls.name if task_cls is not None else 'TASK'}"),
        Option("--max-steps", "stop after this many optimizer steps in total, with a "
               "resumable checkpoint; the schedule still spans --epochs", metavar="N",
               type=int, default_text="no limit"),
        Option("--resume", "continue the run in --out with its saved settings",
               action="store_true"),
        Option("--overwrite", "replace the run in --out (a run folder is never replaced "
               "silently)", action="store_true"),
    )


#: options a resumed run may change: they are not settings of the run
_NOT_SETTINGS = {"out", "max_steps", "threads", "resume", "overwrite"}

_TRAIN_EPILOG = ("A run folder holds model.npz (the checkpoint, with the training state), "
                 "history.json,\nhistory.csv and loss_curve.png. Ctrl-C saves the run and "
                 "exits with status 130;\nnn-core train --resume --out DIR continues it.")


def _train_parser():
    """``nn-core train [TASK] [options]``: one sub-command per task, each with the
    common options and its own (declared by the task)."""
    from .tasks import DEFAULT_TASK, TASKS

    p = _Parser(prog="nn-core train", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Train a task's model into a run folder. Without TASK: the run "
                            f"being resumed (--resume), else {DEFAULT_TASK}. nn-core train TASK "
                            "--help shows a task's options and defaults.",
                epilog=_TRAIN_EPILOG)
    _add_options(p, _common_train_options(None))
    sub = p.add_subparsers(dest="task", metavar="TASK", parser_class=_Parser,
                           help=", ".join(TASKS) + f" (default: {DEFAULT_TASK}, or the resumed "
                                                   "run's)")
    for cls in _task_classes():
        t = sub.add_parser(cls.name, help=cls.description, epilog=_TRAIN_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=f"Train the {cls.name} task: {cls.description}.")
        _add_options(t, _common_train_options(cls))
        _add_options(t.add_argument_group(f"{cls.name} options"), cls.train_options)
    return p


def _parse_train(argv):
    """``(task class, args, the options given, the resumed run or None)``: argv parsed
    once; the task is the one named, else the resumed run's (``--resume`` takes the
    common options only), else :data:`~nn_core.tasks.DEFAULT_TASK`."""
    from .tasks import DEFAULT_TASK, TASKS, get_task

    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help") \
            and "--resume" not in argv and not set(argv) & set(TASKS):
        argv = [DEFAULT_TASK] + list(argv)         # the default task, with its options
    try:
        args = _train_parser().parse_args(argv)
    except UsageError:
        # an option of a task that was not named: say whose it is
        named = next((get_task(t) for t in argv if t in TASKS), None)
        common = {o.flag for o in _common_train_options(None)}
        for flag in (tok.split("=")[0] for tok in argv if tok.startswith("--")):
            dest = flag[2:].replace("-", "_")
            owner = _owner(dest, "train_options", exclude=named)
            if flag not in common and owner is not None and not (
                    named and any(o.name == dest for o in named.train_options)):
                raise UsageError(f"nn-core train: {flag} is an option of the {owner.name} "
                                 f"task: nn-core train {owner.name} {flag} ... (nn-core train "
                                 f"{owner.name} --help lists its options)") from None
        raise
    given = set(vars(args)) - {"task"}
    resume = getattr(args, "resume", False)
    args.resume, args.overwrite = resume, getattr(args, "overwrite", False)
    args.out = getattr(args, "out", None) or os.path.join("runs", args.task or DEFAULT_TASK)
    info = _resumed_run(args) if resume else None
    name = args.task or (info["task"] if info else DEFAULT_TASK)
    if info is not None and name != info["task"]:
        raise UsageError(f"--out {args.out} holds a {info['task']} run, not {name}")
    task_cls = get_task(name)
    args.task = name
    _fill(args, _common_train_options(task_cls) + task_cls.train_options)
    return task_cls, args, given, info


def _check_train_args(args):
    for name in ("epochs", "batch_size", "hidden", "threads", "max_steps"):
        _check(args, name, check_int, 1)
    _check(args, "seed", check_int, 0)
    _check(args, "lr", check_real, 0.0, lo_open=True)


def _check_out(args):
    """The run-folder rules (:func:`nn_core.training.check_run_dir`) as one-line errors
    naming the flags, before any data are generated."""
    from .training import RunExistsError, check_run_dir

    try:
        check_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    except ValueError:
        raise UsageError("--resume and --overwrite exclude each other") from None
    except NotADirectoryError:
        raise UsageError(f"--out {args.out} is a file; give a folder for the run") from None
    except RunExistsError as exc:
        raise UsageError(f"--out {args.out} already holds a run ({', '.join(exc.files)}); "
                         "add --resume to continue it or --overwrite to replace it") from None
    except FileNotFoundError:
        raise CommandError(f"nn-core train --resume: nothing to resume in {args.out} (no "
                           "model.npz)") from None


def _resumed_run(args):
    """What the run in ``--out`` says about itself."""
    from .checkpoint import CheckpointError
    from .training import read_run

    _check_out(args)
    try:
        info = read_run(args.out)
        _, info["config"] = _checked_task(args.out, info["task"], info["config"])
    except (OSError, CheckpointError) as exc:
        raise CommandError(f"nn-core train --resume: {exc}") from None
    return info


def _check_data_options(task_cls, args, given):
    """Options of generated data are refused with ``--data``, and file options without."""
    with_file = getattr(args, "data", None) is not None
    for opt in task_cls.train_options:
        if opt.name in given and opt.data == "generated" and with_file:
            raise UsageError(f"{opt.flag} applies to the generated data of the "
                             f"{task_cls.name} task, not to --data")
        if opt.name in given and opt.data == "file" and not with_file:
            raise UsageError(f"{opt.flag} needs --data FILE")


def _resume_settings(task_cls, args, given, info):
    """The saved run's settings; the options given must equal them (the one comparison,
    :func:`nn_core.training.compare_settings`)."""
    from .training import compare_settings

    settings, config = info["settings"], info["config"] or {}
    now, saved = {}, {}
    try:
        for dest in sorted(given - _NOT_SETTINGS):
            value = getattr(args, dest)
            if dest in settings:
                now[dest], saved[dest] = value, settings[dest]
            else:
                now[dest], saved[dest] = task_cls.config_value(dest, value), config.get(dest)
        compare_settings(saved, now, "a resumed run keeps its settings (drop the option); "
                         "these differ", name=_flag)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return settings


#: on data too small for the defaults, the default batch size is halved (down to 8)
#: until an epoch has MIN_BATCHES batches, and the default number of epochs raised to
#: reach MIN_STEPS optimizer steps
MIN_BATCHES, MIN_STEPS = 8, 100


def _size_to_data(task, settings, given):
    """Fit the default ``batch_size`` and ``epochs`` in ``settings`` to a small data set
    (the options given are kept); returns what changed, as a phrase, or ``""``."""
    said = []
    b = settings["batch_size"]
    if "batch_size" not in given:
        while b > 8 and task.num_batches(b) < MIN_BATCHES:
            b = max(8, b // 2)
        if b != settings["batch_size"]:
            said.append(f"batches of {b} (not {settings['batch_size']}), "
                        f"{task.num_batches(b)} per epoch")
            settings["batch_size"] = b
    if "epochs" not in given:
        epochs = max(settings["epochs"], -(-MIN_STEPS // task.num_batches(b)))
        if epochs != settings["epochs"]:
            said.append(f"{epochs} epochs (not {settings['epochs']}), to train at least "
                        f"{MIN_STEPS} optimizer steps")
            settings["epochs"] = epochs
    return "; ".join(said)


def cmd_train(argv):
    from .checkpoint import CheckpointError
    from .tasks._config import check_declared
    from .training import CHECKPOINT, RunExistsError, RunLockedError, TrainingInterrupted, \
        train

    task_cls, args, given, info = _parse_train(argv[1:])
    _check_train_args(args)
    if info is not None:
        settings = _resume_settings(task_cls, args, given, info)
        if info["finished"]:
            print(f"nn-core train: the run in {args.out} is finished ({info['epochs_done']} "
                  f"epochs, {info['step']} steps); nothing to resume")
            return 0
        if args.max_steps is not None and args.max_steps <= info["step"]:
            raise UsageError(f"--max-steps {args.max_steps} is not past the run's step "
                             f"{info['step']}")
        config = info["config"]
    else:
        _check_out(args)
        _check_data_options(task_cls, args, given)
        try:
            check_declared(vars(args), task_cls.train_options)
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
    _check_model_memory(task, np.dtype(settings["dtype"]), args.hidden)
    what = task.describe_data()
    print(f"data: {what} in {time.perf_counter() - t0:.1f}s" if what == "generated"
          else f"data: {what}", flush=True)
    if info is None:
        sized = _size_to_data(task, settings, given)
        if sized:
            print(f"small data: {sized} (give --epochs / --batch-size to choose)", flush=True)
    extra = {k: settings[k] for k in ("weight_decay", "clip", "warmup_frac") if k in settings}
    resume_cmd = f"nn-core train --resume --out {args.out}"
    try:
        _, result = train(task, epochs=settings["epochs"], batch_size=settings["batch_size"],
                          lr=settings["lr"], dtype=np.dtype(settings["dtype"]).type,
                          seed=settings["seed"], out_dir=args.out, max_steps=args.max_steps,
                          resume=info is not None, overwrite=args.overwrite,
                          title=f"nn-core train {task.name}", **extra)
    except TrainingInterrupted as exc:
        _ignore_stop_signals()                  # saved: a second Ctrl-C keeps the status
        print(f"nn-core train: {exc}; resume with: {resume_cmd}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    except FloatingPointError as exc:
        raise CommandError(f"nn-core train: {exc} (--lr)") from None
    except (RunExistsError, RunLockedError, NotADirectoryError, FileNotFoundError,
            CheckpointError, ValueError) as exc:     # ValueError: a resume that differs
        raise CommandError(f"nn-core train: {exc}") from None
    except OSError as exc:                        # a full disk, a file-size limit

        then = (f"{resume_cmd} continues from the last good checkpoint"
                if os.path.exists(os.path.join(args.out, CHECKPOINT))
                else "train again (no checkpoint was saved)")
        raise CommandError(f"nn-core train: {_write_error(exc)}; free some space, then "
                           f"{then}") from None
    if result["status"] == "max_steps":
        print(f"next: {resume_cmd}   (continues to the end of the run)")
    else:
        print(f"next: nn-core eval {args.out}   |   nn-core generate {args.out}")
    return 0


def _write_error(exc):
    """One line for an ``OSError`` of a write: the file, the reason and, from
    :class:`~nn_core.checkpoint.WriteFailed`, the bytes it needed."""
    from .checkpoint import WriteFailed

    if isinstance(exc, WriteFailed) or exc.filename is None:
        return str(exc)
    return f"could not write {exc.filename}: {exc.strerror or exc}"


def _available_memory():
    """Bytes of memory available to a new allocation (Linux's ``MemAvailable``), or
    ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_model_memory(task, dtype, hidden):
    """Refuse, before allocating it, a model whose training state (weights, gradients
    and AdamW's two moments) would not fit in the memory available.  The parameter
    count is quadratic in ``hidden``: it is interpolated from three small models of the
    same task."""
    available = _available_memory()
    config = task.config
    if available is None or config.get("hidden", 0) <= 256:
        return
    step = max(config.get("heads") or 1, 1)
    size = config["hidden"]
    counts = []
    try:
        for h in (step, 2 * step, 3 * step):
            config["hidden"] = h
            counts.append(task.build_model(dtype.type, np.random.default_rng(0))
                          .num_parameters())
    finally:
        config["hidden"] = size
    c0, c1, c2 = counts                # Newton's form through h = step, 2 step, 3 step
    x = size / step
    n = int(c0 + (c1 - c0) * (x - 1) + (c2 - 2 * c1 + c0) / 2 * (x - 1) * (x - 2))
    need = 4 * n * dtype.itemsize
    if need > available:
        raise UsageError(f"--hidden {hidden or size} makes a model of about {n:,} parameters "
                         f"({_gib(n * dtype.itemsize)} in {dtype.name}); training needs about "
                         f"{_gib(need)} (weights, gradients and AdamW's two moments) and "
                         f"{_gib(available)} is available: lower --hidden")


def _gib(n):
    return f"{n / (1 << 30):.1f} GiB"


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

    try:
        meta = read_metadata(path)
    except (OSError, CheckpointError) as exc:
        raise CommandError(f"nn-core: {exc}") from None
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict) or "task" not in extra:
        raise CommandError(f"nn-core: {path} is an nn_core checkpoint but was not written by "
                           "`nn-core train` (no task recorded)")
    try:
        task_cls, config = _checked_task(path, extra["task"], extra.get("config"))
        if not isinstance(extra.get("train", {}), dict):
            raise CheckpointError(f"{path} records training details that are not a "
                                  f"mapping: {extra['train']!r:.40}")
    except CheckpointError as exc:
        raise CommandError(f"nn-core: {exc}") from None
    return task_cls, config, meta


def _checked_task(path, name, config):
    """``(task class, config)`` of a checkpoint's recorded task, every configuration
    value bounded and typed as its flag (:class:`~nn_core.checkpoint.CheckpointError`
    otherwise), before anything is generated or read."""
    from .checkpoint import CheckpointError
    from .tasks import TASKS, get_task

    if not isinstance(name, str) or name not in TASKS:
        raise CheckpointError(f"{path} records an unknown task {name!r:.40}")
    task_cls = get_task(name)
    try:
        return task_cls, task_cls.check_config(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} records an invalid {task_cls.name} configuration: "
                              f"{exc}") from None


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
    p.add_argument("--threads", type=int, default=None,
                   help=f"threads (cores) to use (default: {THREADS_DEFAULT})")
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


def _parse_run_command(argv, prog, description, options, task_attribute):
    """``nn-core generate`` / ``predict`` parsed once: RUN, the command's own ``options``
    (``--threads`` among them) and, in a group per task, every option the tasks declare
    in ``task_attribute``; the run's task must declare every task option given.  Returns
    ``(args, checkpoint path, task class, config)``."""
    p = _Parser(prog=prog, description=description)
    p.add_argument("run", metavar="RUN",
                   help="a run folder (such as runs/seq2seq) or its model.npz")
    _add_options(p, options)
    for cls in _task_classes():
        declared = getattr(cls, task_attribute)
        if declared:
            _add_options(p.add_argument_group(f"{cls.name} models"), declared)
    args = p.parse_args(argv)
    given = set(vars(args)) - {"run"}
    _fill(args, options)
    path = _checkpoint_path(args.run)
    task_cls, config, _ = _task_of(path)
    own = getattr(task_cls, task_attribute)
    if own is None:
        raise UsageError(f"{args.run} holds a {task_cls.name} model; {prog} does not apply "
                         "to it")
    _fill(args, own)
    names = {o.name for o in options} | {o.name for o in own}
    for dest in sorted(given - names):
        owner = _owner(dest, task_attribute, exclude=task_cls)
        raise UsageError(f"{_flag(dest)} is an option of {owner.name} models; {args.run} "
                         f"holds a {task_cls.name} model")
    _check(args, "threads", check_int, 1)
    return args, path, task_cls, config


def cmd_generate(argv):
    from .tasks import Option

    options = (
        Option("--num", "number of random examples", 8, type=int),
        Option("--seed", "seeds the random examples and sampling", 0, type=int),
        Option("--threads", "threads (cores) to use", type=int, default_text=THREADS_DEFAULT),
    )
    args, path, task_cls, config = _parse_run_command(
        argv[1:], "nn-core generate", "Reload a trained model and run it on examples, prompts "
        "or a file of inputs; the options of its task are listed by task.", options,
        "generate_options")
    _check(args, "num", check_int, 1)
    _check(args, "seed", check_int, 0)
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
    from .checkpoint import WriteFailed, atomic_write
    from .tasks import Option
    from .tasks._data import RecordedDataError

    options = (
        Option("--output", "where to write the predictions (CSV)", metavar="FILE.csv",
               type=str, default_text="the task's file name beside the checkpoint"),
        Option("--overwrite", "replace an existing --output file", action="store_true"),
        Option("--threads", "threads (cores) to use", type=int, default_text=THREADS_DEFAULT),
    )
    args, path, task_cls, config = _parse_run_command(
        argv[1:], "nn-core predict", "Reload a model trained with --data and write its "
        "predictions for a data file (the training file, or a newer one with the same "
        "columns) to CSV.", options, "predict_options")
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(path)),
                                         task_cls.predictions_file)
    if os.path.isdir(output):
        raise UsageError(f"--output {output} is a folder; give a file name")
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise UsageError(f"--output {output}: the folder {os.path.dirname(output)} does not "
                         "exist")
    if os.path.exists(output) and not args.overwrite:
        raise UsageError(f"--output {output} exists; add --overwrite to replace it")
    _limit_threads(args.threads)
    try:
        header, rows, summary, preview = task_cls.predict(_load_model(path), config, args)
    except RecordedDataError as exc:
        raise CommandError(f"nn-core predict: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"nn-core predict: {exc}") from None
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = text.getvalue().encode()
    try:
        with atomic_write(output, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        failed = WriteFailed(output, exc, len(data))
        raise CommandError(f"nn-core predict: {_write_error(failed)}") from None
    print(f"{summary}: {output}")
    for line in preview:
        print(line)
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


def _ignore_stop_signals():
    """The command is ending on a signal: further SIGINT/SIGTERM are ignored, so that
    the process exits with its status (130/143) rather than dying by the signal."""
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGTERM"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)


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
        _ignore_stop_signals()
        print(f"nn-core {argv[0]}: interrupted; nothing was saved", file=sys.stderr)
        return 130
    except SystemExit as exc:          # argparse's --help
        return exc.code if isinstance(exc.code, int) else 0
