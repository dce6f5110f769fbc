"""Argument checks shared by every nn_core layer.

All user-facing validation lives here so that every layer words its errors alike
and tests can ``pytest.raises(..., match=...)`` on them.  Conventions (docs/guide/tour.md,
"Errors" section):

* the wrong type (a string for a size, a float for a count, a complex array) raises
  ``TypeError``;
* the right type with a bad value, size or shape raises ``ValueError``;
* the wrong call order or state raises ``RuntimeError``.

Messages name the argument, then what was expected and what was received, e.g.
``"x.shape[-1] must equal input_size: expected 16, got 12"``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "resolve_dtype",
    "make_rng",
    "as_float_array",
    "as_mask",
    "as_lengths",
    "broadcasts_to",
    "check_ndim",
    "check_shape",
    "check_int",
    "check_positive_int",
    "check_real",
    "check_probability",
    "check_nonneg_real",
    "check_choice",
    "check_keys",
    "require_forward",
    "check_heads",
    "lengths_from_mask",
    "as_index_array",
    "require_same_dtype",
    "check_grad_output",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(dtype) -> np.dtype:
    """Return ``np.dtype(float32)`` or ``np.dtype(float64)``; anything else is a TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype!r}") from exc
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dt}")
    return dt


def make_rng(rng) -> np.random.Generator:
    """``None`` -> fresh generator, ``int`` -> seeded generator, a Generator -> itself."""
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}"
    )


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__


def as_float_array(x, name: str, dtype, ndim=None, min_ndim=None) -> np.ndarray:
    """Return ``x`` as an ndarray of ``dtype`` (a view when no cast is needed).

    Real inputs (integers, float16, big-endian floats) are cast; complex, bool,
    object and string inputs raise ``TypeError``.  The caller's array is never
    written to: nn_core only reads from what this returns.
    """
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind not in "fiu":
        raise TypeError(
            f"{name} must be a real-valued (float or integer) array, got dtype {arr.dtype}"
        )
    if ndim is not None:
        check_ndim(arr, name, ndim)
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got {arr.ndim} "
            f"(shape {tuple(arr.shape)})"
        )
    return arr.astype(dtype, copy=False) if arr.dtype != dtype else arr


def as_mask(mask, name: str, dtype):
    """Normalise an attention mask.

    Returns ``(kind, array)`` with kind ``"bool"`` (``True`` = attend) or
    ``"float"`` (additive, cast to ``dtype``).  ``None`` gives ``(None, None)``.
    Any other dtype (integer, unsigned, object) is a TypeError, as in torch.
    """
    if mask is None:
        return None, None
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return "bool", arr
    if arr.dtype.kind == "f":
        return "float", arr.astype(dtype, copy=False)
    hint = (" (a 0/1 integer mask is ambiguous: use mask.astype(bool) for 'True = attend', "
            "or a float mask for additive scores)" if arr.dtype.kind in "iu" else "")
    raise TypeError(f"{name} must be a bool mask (True = attend) or a floating additive "
                    f"mask (0 keep, -inf drop), got dtype {arr.dtype}{hint}")


def as_lengths(lengths, name: str, batch_size: int, max_len: int, min_len: int = 1) -> np.ndarray:
    """Validate per-sequence lengths: int ``[B]`` with ``min_len <= len <= max_len``."""
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.shape != (batch_size,):
        raise ValueError(
            f"{name} must have shape ({batch_size},) (one length per batch entry), "
            f"got {tuple(arr.shape)}"
        )
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < min_len or arr.max() > max_len):
        bad = arr[(arr < min_len) | (arr > max_len)][0]
        raise ValueError(
            f"{name} must satisfy {min_len} <= {name}[b] <= {max_len}, got {int(bad)}"
        )
    return arr


def broadcasts_to(shape, target) -> bool:
    """True if an array of ``shape`` broadcasts to exactly ``target``."""
    shape, target = tuple(shape), tuple(target)
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


def check_ndim(x, name: str, ndim: int) -> None:
    if np.ndim(x) != ndim:
        raise ValueError(
            f"{name} must be {ndim}-dimensional, got {np.ndim(x)} dimensions ({_describe(x)})"
        )


def check_shape(x, name: str, expected) -> None:
    """Check ``x.shape`` against ``expected``; ``None`` entries match any size."""
    shape = tuple(np.shape(x))
    ok = len(shape) == len(expected) and all(
        e is None or int(e) == s for e, s in zip(expected, shape)
    )
    if not ok:
        exp = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {exp}, got {shape}")


def check_int(value, name: str, lo=None, hi=None) -> int:
    """``value`` as an ``int`` in ``[lo, hi]`` (either bound may be ``None``).

    ``TypeError`` unless it is an integer (``bool`` is not one); ``ValueError`` when it
    is out of range.  ``name`` is what the message calls it (an argument or a flag).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.40}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return int(value)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """:func:`check_int` with a lower bound only (default 1)."""
    return check_int(value, name, lo=minimum)


def check_real(value, name: str, lo=None, hi=None, *, lo_open=False, hi_open=False) -> float:
    """``value`` as a finite ``float`` in the interval from ``lo`` to ``hi`` (closed ends
    unless ``lo_open`` / ``hi_open``; either bound may be ``None``).

    ``TypeError`` unless it is a real number (``bool`` is not one); ``ValueError`` when it
    is NaN, infinite or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                        f"{value!r:.40}")
    v = float(value)
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if not math.isfinite(v) or below or above:
        if lo is not None and hi is not None:
            want = (f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        elif lo is not None:
            want = f"a finite number {'>' if lo_open else '>='} {lo:g}"
        elif hi is not None:
            want = f"a finite number {'<' if hi_open else '<='} {hi:g}"
        else:
            want = "a finite number"
        raise ValueError(f"{name} must be {want}, got {v:g}")
    return v


def check_nonneg_real(value, name: str) -> float:
    """:func:`check_real` with the bound ``>= 0`` (a learning rate, a weight)."""
    return check_real(value, name, lo=0.0)


def check_probability(value, name: str) -> float:
    """A dropout-like probability in ``[0, 1)``."""
    return check_real(value, name, 0.0, 1.0, hi_open=True)


def check_choice(value, name: str, choices):
    """``value`` if it is one of ``choices``: ``TypeError`` for a non-string among names,
    else ``ValueError`` (e.g. ``merge_mode``)."""
    choices = tuple(choices)
    if all(isinstance(c, str) for c in choices) and not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices}, got {type(value).__name__} "
                        f"{value!r:.40}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r:.40}")
    return value


def check_keys(given, expected, what: str) -> None:
    """Raise ``ValueError`` naming the missing and the unexpected keys of a mapping."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what} keys do not match: missing keys {missing}, unexpected keys {unexpected}"
        )


def require_forward(cache, module) -> None:
    """Raise the documented RuntimeError when ``backward`` has nothing to consume."""
    if cache is None:
        raise RuntimeError(
            f"{type(module).__name__}.backward called without a matching forward "
            "(each forward allows exactly one backward)"
        )


def check_heads(d_model: int, num_heads: int, num_kv_groups=None) -> int:
    """Check the head configuration of a multi-head attention layer.

    ``num_heads`` must divide ``d_model``; ``num_kv_groups`` (default ``num_heads``)
    must satisfy ``1 <= num_kv_groups <= num_heads`` and divide ``num_heads``.
    Returns ``num_kv_groups``.
    """
    if d_model % num_heads:
        raise ValueError(
            f"num_heads must divide d_model: got d_model={d_model}, num_heads={num_heads}"
        )
    if num_kv_groups is None:
        return num_heads
    g = check_positive_int(num_kv_groups, "num_kv_groups")
    if g > num_heads or num_heads % g:
        raise ValueError(
            f"num_kv_groups must divide num_heads and be in [1, {num_heads}]: "
            f"got num_kv_groups={g}, num_heads={num_heads}"
        )
    return g


def lengths_from_mask(mask, name: str, max_len: int, batch_size: int,
                      batch_first: bool = False) -> np.ndarray:
    """Lengths ``[B]`` (int64) of a boolean prefix mask ``[T, B]`` (``[B, T]`` when
    ``batch_first``): ``mask[t, b]`` must be ``t < lengths[b]`` with
    ``1 <= lengths[b] <= T``; anything else (holes, empty rows) is a ``ValueError``."""
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool mask, got dtype {arr.dtype}")
    expected = (batch_size, max_len) if batch_first else (max_len, batch_size)
    if arr.shape != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(arr.shape)}")
    tb = arr.T if batch_first else arr
    lengths = tb.sum(axis=0).astype(np.int64)
    prefix = np.arange(max_len)[:, None] < lengths[None, :]
    if not np.array_equal(prefix, tb):
        raise ValueError(f"{name} must be a prefix mask (True for t < lengths[b], then False)")
    if lengths.size and lengths.min() < 1:
        raise ValueError(f"{name} must mark at least one step per sequence, got a row "
                         f"with 0 steps")
    return lengths


def as_index_array(ids, name: str, upper: int, allow=None) -> np.ndarray:
    """Integer ids with ``0 <= id < upper`` (``allow``: one extra permitted value).

    Float arrays are a ``TypeError`` (ids are never rounded silently); ids out of
    range are a ``ValueError`` naming the first offending value.
    """
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    arr = arr.astype(np.intp, copy=False)
    bad = (arr < 0) | (arr >= upper)
    if allow is not None:
        bad &= arr != allow
    if bad.any():
        raise ValueError(
            f"{name} must satisfy 0 <= {name} < {upper}, got {int(arr[bad].reshape(-1)[0])}"
        )
    return arr


def require_same_dtype(dtype, expected, name: str) -> None:
    """TypeError unless ``dtype == expected`` (e.g. every child of a container)."""
    if np.dtype(dtype) != np.dtype(expected):
        raise TypeError(f"{name} must have dtype {np.dtype(expected)}, got {np.dtype(dtype)}")


def check_grad_output(grad_output, expected_shape, dtype, name="grad_output") -> np.ndarray:
    """``grad_output`` as an array of ``dtype`` with exactly the output's shape."""
    g = as_float_array(grad_output, name, dtype)
    if g.shape != tuple(expected_shape):
        raise ValueError(f"{name} must have shape {tuple(expected_shape)} (the output's), "
                         f"got {tuple(g.shape)}")
    return g
