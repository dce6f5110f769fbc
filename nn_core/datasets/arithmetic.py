"""Additions ``"a+b=c;"`` as character-level text (the ``lm`` task's data).

Vocabulary: the 13 characters ``CHARS = "0123456789+=;"``, id = position in ``CHARS``.
The operands are random, so a language model's loss has a floor; what it can learn
is the answer, the characters after ``=`` up to and including the ``;``
(:func:`answer_mask`).

Examples
--------
>>> text = make_text(3, digits=1, seed=0)
>>> text.count(";"), decode_text(encode_text(text)) == text
(3, True)
>>> answer_mask(encode_text("1+2=3;4+5=9;")[None]).astype(int)
array([[0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1]])
"""
from __future__ import annotations

import numpy as np

__all__ = ["CHARS", "STOI", "SEP", "encode_text", "decode_text", "make_text", "answer_mask"]

CHARS = "0123456789+=;"
STOI = {c: i for i, c in enumerate(CHARS)}
SEP = STOI[";"]


def encode_text(s: str) -> np.ndarray:
    """Character ids ``[len(s)]`` (int64).

    Raises
    ------
    ValueError
        ``s`` holds a character outside :data:`CHARS` (listed in the message).
    """
    bad = sorted(set(s) - set(CHARS))
    if bad:
        raise ValueError(f"text may only contain {CHARS!r}, got {''.join(bad)!r}")
    return np.array([STOI[c] for c in s], dtype=np.int64)


def decode_text(ids) -> str:
    """The text of character ids."""
    return "".join(CHARS[int(i)] for i in ids)


def make_text(n_exprs, digits, seed):
    """``n_exprs`` expressions ``"a+b=c;"`` concatenated, with ``0 <= a, b < 10**digits``
    drawn uniformly (seeded by ``seed``)."""
    rng = np.random.default_rng(seed)
    hi = 10 ** digits
    a = rng.integers(0, hi, n_exprs)
    b = rng.integers(0, hi, n_exprs)
    return "".join(f"{x}+{y}={x + y};" for x, y in zip(a, b))


def answer_mask(ids):
    """``[B, L]`` bool: True where ``ids [B, L]`` is part of an answer.

    A position is in an answer when the last ``=`` or ``;`` strictly before it is an
    ``=``: the digits of the sum and the ``;`` that closes it.  Positions before the
    first marker count as outside.
    """
    eq = ids == STOI["="]
    sep = ids == SEP
    B, L = ids.shape
    state = np.zeros((B, L), dtype=bool)
    cur = np.zeros(B, dtype=bool)
    for t in range(L):
        state[:, t] = cur
        cur = np.where(eq[:, t], True, np.where(sep[:, t], False, cur))
    return state
