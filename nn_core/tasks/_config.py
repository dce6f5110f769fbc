"""Checks shared by the tasks' configurations: the same rules for a command line and
for a configuration read back from a checkpoint, with messages that name the flag (the
checkers themselves are :mod:`nn_core._validation`'s)."""
from __future__ import annotations

__all__ = ["require_config", "checked"]


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


def checked(c, key, checker, *args, flag=None, **kwargs):
    """``c[key]`` passed through ``checker`` (a :mod:`nn_core._validation` checker) under
    its option's name (``--key-name`` unless ``flag``), stored back and returned."""
    c[key] = checker(c[key], flag or "--" + key.replace("_", "-"), *args, **kwargs)
    return c[key]
