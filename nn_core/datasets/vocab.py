"""A character vocabulary built from the user's text (``nn-core train lm|seq2seq --data``).

Examples
--------
>>> v = CharVocab.from_text("hello world", reserved=3)
>>> v.chars, len(v)
(' dehlorw', 11)
>>> ids = v.encode("hold")
>>> ids.tolist(), v.decode(ids)
([6, 8, 7, 4], 'hold')
"""
from __future__ import annotations

import numpy as np

__all__ = ["CharVocab"]


class CharVocab:
    """Characters ``chars`` as ids ``reserved, reserved + 1, ...`` (ids below ``reserved``
    are special tokens: padding, begin, end).

    Parameters
    ----------
    chars : str
        Distinct characters, in id order.
    reserved : int
        Ids before the first character.
    """

    def __init__(self, chars, reserved=0):
        if len(set(chars)) != len(chars):
            raise ValueError("the vocabulary's characters must be distinct")
        self.chars = chars
        self.reserved = int(reserved)
        self.index = {c: i + self.reserved for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, *texts, reserved=0):
        """The sorted set of characters of ``texts``."""
        return cls("".join(sorted(set().union(*map(set, texts)))), reserved)

    def __len__(self):
        return self.reserved + len(self.chars)

    def unknown(self, text):
        """``(position, character)`` of the first character not in the vocabulary, or
        ``None``."""
        for i, c in enumerate(text):
            if c not in self.index:
                return i, c
        return None

    def encode(self, text):
        """int64 ids ``[len(text)]`` (``ValueError`` naming the first unknown character
        and its 1-based column)."""
        bad = self.unknown(text)
        if bad is not None:
            raise ValueError(f"column {bad[0] + 1}: character {bad[1]!r} is not in the "
                             "model's vocabulary")
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids, stop=None):
        """The text of ``ids`` (up to ``stop``; reserved ids are left out)."""
        out = []
        for t in ids:
            t = int(t)
            if stop is not None and t == stop:
                break
            if t >= self.reserved:
                out.append(self.chars[t - self.reserved])
        return "".join(out)
