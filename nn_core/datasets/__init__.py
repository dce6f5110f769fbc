"""Synthetic data sets of the ``nn-core`` demo tasks: generated on the fly, nothing is
downloaded.  Every function is pure: the same arguments (seed included) give the same
arrays.

* :mod:`~nn_core.datasets.digit_strings` -- digit strings and their reversed or sorted
  targets as token ids, and the padding of a batch (``seq2seq``);
* :mod:`~nn_core.datasets.lorenz` -- the Lorenz system integrated with SciPy, and the
  sliding windows cut from it (``forecast``);
* :mod:`~nn_core.datasets.arithmetic` -- ``"a+b=c;"`` text, its character encoding and
  the positions of the answers (``lm``).
"""
from . import arithmetic, digit_strings, lorenz

__all__ = ["arithmetic", "digit_strings", "lorenz"]
