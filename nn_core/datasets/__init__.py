"""Data of the ``nn-core`` tasks: synthetic data sets generated on the fly (nothing is
downloaded; the same arguments, seed included, give the same arrays), and readers for
the user's own files.

* :mod:`~nn_core.datasets.digit_strings` -- digit strings and their reversed or sorted
  targets as token ids, and the padding of a batch (``seq2seq``);
* :mod:`~nn_core.datasets.lorenz` -- the Lorenz system integrated with SciPy, and the
  sliding windows cut from it (``forecast``);
* :mod:`~nn_core.datasets.arithmetic` -- ``"a+b=c;"`` text, its character encoding and
  the positions of the answers (``lm``);
* :mod:`~nn_core.datasets.files` -- numeric tables (CSV/TSV, ``.npy``, ``.npz``) with
  their missing values and time column, UTF-8 text and source/target pairs from regular
  files of bounded size, with one-line errors naming line and column;
* :mod:`~nn_core.datasets.series` -- a series' windows split in time, its seasonal
  period, the seasonal-naive forecast, standardisation;
* :mod:`~nn_core.datasets.vocab` -- a character vocabulary built from text.
"""
from . import arithmetic, digit_strings, files, lorenz, series, vocab

__all__ = ["arithmetic", "digit_strings", "lorenz", "files", "series", "vocab"]
