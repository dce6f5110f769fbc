"""Checks shared by the tasks' configurations: the same rules for a command line and
for a configuration read back from a checkpoint, with messages that name the flag."""
from __future__ import annotations

import math
import numbers

__all__ = ["require_config", "as_int", "as_float", "as_choice"]


def require_config(config, keys):
    """A copy of ``config`` with exactly ``keys`` (``ValueError`` otherwise);
    ``data_seed`` defaults to 0."""
    if not isinstance(config, dict):
        raise ValueError(f"the task configuration must be a dict, got {type(config).__name__}")
    config = {"data_seed": 0, **config} if "data_seed" in keys else config
    missing = sorted(set(keys) - set(config))
    unexpected = sorted(set(config) - set(keys))
    if missing or unexpected:
        raise ValueError(f"task configuration keys: missing {missing}, unexpected {unexpected}")
    return dict(config)


def _flag(key):
    return "--" + key.replace("_", "-")


def as_int(c, key, lo=None, hi=None, flag=None):
    v = c[key]
    flag = flag or _flag(key)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{flag} must be an integer, got {v!r:.40}")
    if lo is not None and v < lo:
        raise ValueError(f"{flag} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{flag} must be <= {hi}, got {v}")
    c[key] = int(v)
    return c[key]


def as_float(c, key, lo_exclusive=None, hi=None, flag=None):
    v = c[key]
    flag = flag or _flag(key)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{flag} must be a finite number, got {v!r:.40}")
    if (lo_exclusive is not None and not v > lo_exclusive) or (hi is not None and v > hi):
        want = (f"in ({lo_exclusive:g}, {hi:g}]" if lo_exclusive is not None and hi is not None
                else f"> {lo_exclusive:g}" if lo_exclusive is not None else f"<= {hi:g}")
        raise ValueError(f"{flag} must be {want}, got {v:g}")
    c[key] = float(v)
    return c[key]


def as_choice(c, key, choices, flag=None):
    if c[key] not in choices:
        raise ValueError(f"{flag or _flag(key)} must be one of {', '.join(choices)}, "
                         f"got {c[key]!r:.40}")
    return c[key]
