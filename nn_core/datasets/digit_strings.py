"""Digit strings to reverse or sort, as token ids (the ``seq2seq`` task's data).

Vocabulary (``VOCAB = 13`` ids): ``PAD = 0``, ``BOS = 1`` (start of a decoder input),
``EOS = 2`` (end of a target), and the digits ``0..9`` as ``OFFSET + digit`` (3..12).

Examples
--------
>>> src, tgt = make_examples(2, 3, 5, "reverse", seed=0)
>>> [decode_tokens(s) + "->" + decode_tokens(t) for s, t in zip(src, tgt)]
['52300->00325', '0186->6810']
>>> src_ids, src_len, tgt_in, tgt_out, tgt_len = pad_batch(src, tgt)
>>> bool((tgt_in[:, 0] == BOS).all()), src_ids.shape[0]
(True, 2)
"""
from __future__ import annotations

import numpy as np

__all__ = ["PAD", "BOS", "EOS", "OFFSET", "VOCAB", "MODES", "encode", "decode_tokens",
           "transform", "make_examples", "pad_batch"]

PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
VOCAB = 13
MODES = ("reverse", "sort")


def encode(digits: str) -> np.ndarray:
    """Token ids ``[len(digits)]`` (int64) of a string of decimal digits.

    Raises
    ------
    ValueError
        ``digits`` is empty or holds anything but ``0-9``.
    """
    if not digits or not digits.isdigit():
        raise ValueError(f"input must be a non-empty string of digits, got {digits!r}")
    return np.array([OFFSET + int(c) for c in digits], dtype=np.int64)


def decode_tokens(tokens) -> str:
    """The digits of ``tokens`` up to the first ``EOS``; ``PAD``/``BOS`` print as ``?``."""
    out = []
    for t in tokens:
        t = int(t)
        if t == EOS:
            break
        out.append(str(t - OFFSET) if t >= OFFSET else "?")
    return "".join(out)


def transform(mode, seq):
    """The target of ``seq``: reversed (``mode="reverse"``), otherwise sorted."""
    return seq[::-1] if mode == "reverse" else np.sort(seq)


def make_examples(n, min_len, max_len, mode, seed):
    """``n`` random digit sequences and their targets.

    Parameters
    ----------
    n : int
        Number of examples.
    min_len, max_len : int
        Each length is drawn uniformly from ``min_len .. max_len`` (inclusive).
    mode : {"reverse", "sort"}
        See :func:`transform`.
    seed : int
        Seeds the lengths and the digits.

    Returns
    -------
    src, tgt : list of int64 arrays
        Token ids (no ``BOS``/``EOS``); ``tgt[i] = transform(mode, src[i])``.
    """
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, max_len + 1, size=n)
    src = [rng.integers(OFFSET, OFFSET + 10, size=L) for L in lens]
    return src, [transform(mode, s) for s in src]


def pad_batch(src, tgt=None):
    """Pad a list of token sequences into batch arrays (``PAD`` after each sequence).

    Parameters
    ----------
    src : list of B int arrays
        Source sequences.
    tgt : list of B int arrays, optional
        Their targets.

    Returns
    -------
    (src [B, S], src_len [B])
        Without ``tgt``; ``S = max(src_len)``.
    (src [B, S], src_len [B], tgt_in [B, T], tgt_out [B, T], tgt_len [B])
        With ``tgt``: the decoder input ``[BOS, y]`` and output ``[y, EOS]``, both of
        length ``tgt_len = len(y) + 1``; ``T = max(tgt_len)``.
    """
    B = len(src)
    src_len = np.array([len(s) for s in src])
    S = int(src_len.max())
    src_arr = np.full((B, S), PAD, dtype=np.int64)
    for b, s in enumerate(src):
        src_arr[b, :len(s)] = s
    if tgt is None:
        return src_arr, src_len
    tgt_len = np.array([len(t) + 1 for t in tgt])
    T = int(tgt_len.max())
    tin = np.full((B, T), PAD, dtype=np.int64)
    tout = np.full((B, T), PAD, dtype=np.int64)
    for b, t in enumerate(tgt):
        tin[b, 0] = BOS
        tin[b, 1:len(t) + 1] = t
        tout[b, :len(t)] = t
        tout[b, len(t)] = EOS
    return src_arr, src_len, tin, tout, tgt_len
