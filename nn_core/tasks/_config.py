"""Checks shared by the tasks' configurations: the same rules for a command line and
for a configuration read back from a checkpoint, with messages that name the flag (the
checkers themselves are :mod:`nn_core._validation`'s)."""
from __future__ import annotations

from .._validation import check_int, check_real
from ._data import check_identity

__all__ = ["require_config", "check_declared", "checked", "check_common", "check_source",
           "check_vocab", "check_budget", "MAX_VOCAB"]

#: the most distinct characters a vocabulary may hold
MAX_VOCAB = 4096


def require_config(config, keys):
    """A copy of ``config`` with exactly ``keys`` (``TypeError`` if it is not a dict,
    ``ValueError`` otherwise); ``data_seed`` defaults to 0."""
    if not isinstance(config, dict):
        raise TypeError(f"the task configuration must be a dict, got {type(config).__name__}")
    config = {"data_seed": 0, **config} if "data_seed" in keys else config
    missing = sorted(set(keys) - set(config))
    unexpected = sorted(set(config) - set(keys))
    if missing or unexpected:
        raise ValueError(f"task configuration keys: missing {missing}, unexpected {unexpected}")
    return dict(config)


def check_declared(c, options):
    """Every number or choice of ``c`` that an option in ``options`` declares (and is not
    ``None``) checked as that flag is (:meth:`~nn_core.tasks.Option.check`: type, bounds, choices),
    so that a configuration read from a checkpoint is bounded as a command line is."""
    for opt in options:
        if c.get(opt.name) is not None and (opt.type in (int, float) or opt.choices):
            c[opt.name] = opt.check(c[opt.name])
    return c


def check_budget(what, count, limit, flags):
    """``count`` items of generated data (``what``) at most ``limit`` (``ValueError``
    naming ``flags``, whose product is ``count``)."""
    if count > limit:
        raise ValueError(f"{flags} ask for {count:,} {what}; at most {limit:,} are generated "
                         "(lower them)")


def checked(c, key, checker, *args, flag=None, **kwargs):
    """``c[key]`` passed through ``checker`` (a :mod:`nn_core._validation` checker) under
    its option's name (``--key-name`` unless ``flag``), stored back and returned."""
    c[key] = checker(c[key], flag or "--" + key.replace("_", "-"), *args, **kwargs)
    return c[key]


def check_common(c, sizes):
    """``sizes`` (``--hidden`` ...) positive integers, ``data_seed`` (``--seed``) >= 0,
    and ``--heads`` dividing ``--hidden`` where the task has heads."""
    for key in sizes:
        checked(c, key, check_int, 1)
    checked(c, "data_seed", check_int, 0, flag="--seed")
    if "heads" in c and c["hidden"] % c["heads"]:
        raise ValueError(f"--heads must divide --hidden: got {c['heads']} and {c['hidden']}")


def check_source(c, generated_keys, file_keys):
    """The data settings: with ``--data``, none of ``generated_keys``, the file's identity
    and ``--val-frac`` in (0, 0.5]; without, none of ``file_keys``.  Returns whether the
    configuration reads a file."""
    if c["data"] is None:
        if any(c[k] is not None for k in file_keys):
            raise ValueError("a configuration without --data has no file settings")
        return False
    given = [k for k in generated_keys if c[k] is not None]
    if given:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: the "
                         "settings of generated data do not apply to --data")
    check_identity(c)
    checked(c, "val_frac", check_real, 0.0, 0.5, lo_open=True)
    return True


def check_vocab(c):
    """``c["vocab"]``: 1 to :data:`MAX_VOCAB` distinct characters."""
    v = c["vocab"]
    if not (isinstance(v, str) and 0 < len(v) <= MAX_VOCAB and len(set(v)) == len(v)):
        raise ValueError(f"vocab must be 1 to {MAX_VOCAB} distinct characters")
