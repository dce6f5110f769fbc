"""Data for :class:`~nn_core.training.Trainer`: arrays and variable-length sequences as
datasets, cut into (shuffled) batches, sequences padded with their lengths.

A *batch* of these datasets is a :class:`Batch` ``(inputs, target)``: ``inputs`` is a
tuple of arrays passed to ``model(*inputs)`` and ``target`` what the loss compares the
output with (``None`` for inputs only).

A *batch source* is anything with ``num_batches(batch_size)`` and
``train_batches(rng, batch_size)`` (yielding that many batches, in an order drawn from
``rng`` only): every dataset here (through :func:`as_source`) and every
:class:`~nn_core.training.Task`.

Examples
--------
>>> import numpy as np
>>> seqs = [np.ones((3, 2)), np.ones((5, 2)), np.ones((1, 2))]
>>> padded, lengths = pad_sequences(seqs)
>>> padded.shape, lengths.tolist()
((3, 5, 2), [3, 5, 1])
>>> data = SequenceDataset(seqs, np.array([0, 1, 0]))
>>> batch = data.batch(np.array([0, 2]))
>>> batch.inputs[0].shape, batch.inputs[1].tolist(), batch.target.tolist()
((2, 3, 2), [3, 1], [0, 0])
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Batch", "ArrayDataset", "SequenceDataset", "pad_sequences", "as_dataset",
           "as_source", "shuffled_batches"]


class Batch(NamedTuple):
    """``inputs`` (tuple of arrays, the model's arguments) and ``target`` (or ``None``)."""
    inputs: tuple
    target: object


def _as_array(x, name):
    a = np.asarray(x)
    if a.dtype == object or a.dtype.kind in "USVcM":
        raise TypeError(f"{name} must be a real or integer array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} must have a first (sample) axis, got a scalar")
    return a


def pad_sequences(sequences, pad_value=0, dtype=None, max_len=None):
    """Stack sequences of different lengths into one array, padded at the end.

    Parameters
    ----------
    sequences : list of B arrays ``[T_b, ...]``
        The trailing dimensions must agree.
    pad_value : scalar
        Written after each sequence.
    dtype : numpy dtype, optional
        Default: the sequences' common dtype.
    max_len : int, optional
        ``T`` of the result (default: the longest sequence; longer ones raise).

    Returns
    -------
    padded : ndarray ``[B, T, ...]``
    lengths : int64 ndarray ``[B]``

    Raises
    ------
    ValueError
        No sequences, an empty sequence, disagreeing trailing shapes, or a sequence
        longer than ``max_len``.
    """
    seqs = [np.asarray(s) for s in sequences]
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence, got none")
    tail = seqs[0].shape[1:]
    for i, s in enumerate(seqs):
        if s.ndim == 0 or len(s) == 0:
            raise ValueError(f"sequence {i} is empty (shape {s.shape}); every sequence "
                             "needs at least one step")
        if s.shape[1:] != tail:
            raise ValueError(f"sequence {i} has shape {s.shape}; expected [T, "
                             f"{', '.join(map(str, tail))}] like sequence 0")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    T = int(lengths.max()) if max_len is None else int(max_len)
    if lengths.max() > T:
        raise ValueError(f"a sequence has {int(lengths.max())} steps, more than max_len={T}")
    dtype = np.result_type(*seqs) if dtype is None else np.dtype(dtype)
    out = np.full((len(seqs), T) + tail, pad_value, dtype=dtype)
    for b, s in enumerate(seqs):
        out[b, :len(s)] = s
    return out, lengths


class ArrayDataset:
    """Samples along the first axis of arrays.

    Parameters
    ----------
    inputs : array ``[n, ...]`` or tuple of such arrays
        The model's argument(s).
    target : array ``[n, ...]``, optional
    lengths : int array ``[n]``, optional
        The real steps of each sample (padded sequences): what ``bucket_by_length``
        groups by.

    Interface
    ---------
    ``batch(idx)`` returns ``Batch(inputs=(x[idx], ...), target=y[idx])``.
    """

    def __init__(self, inputs, target=None, *, lengths=None):
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        self.inputs = tuple(_as_array(a, "inputs") for a in arrays)
        self.target = None if target is None else _as_array(target, "target")
        self.lengths = None if lengths is None else np.asarray(lengths, np.int64)
        n = {len(a) for a in self.inputs + ((self.target,) if target is not None else ())}
        if len(n) != 1:
            raise ValueError(f"inputs and target must have the same number of samples "
                             f"(first axis), got {sorted(n)}")
        if not self.inputs or len(self) == 0:
            raise ValueError("a dataset needs at least one sample, got 0")
        if self.lengths is not None and self.lengths.shape != (len(self),):
            raise ValueError(f"lengths must have shape ({len(self)},), got "
                             f"{self.lengths.shape}")

    def __len__(self):
        return len(self.inputs[0])

    def batch(self, idx):
        return Batch(tuple(a[idx] for a in self.inputs),
                     None if self.target is None else self.target[idx])

    def subset(self, idx):
        """The samples ``idx`` as a new dataset."""
        return ArrayDataset(tuple(a[idx] for a in self.inputs),
                            None if self.target is None else self.target[idx],
                            lengths=None if self.lengths is None else self.lengths[idx])


class SequenceDataset:
    """Variable-length sequences, batched as ``(padded [B, T, ...], lengths [B])``.

    Parameters
    ----------
    sequences : list of n arrays ``[T_i, ...]`` (same trailing shape)
    target : array ``[n, ...]`` or list of n arrays ``[T_i, ...]``, optional
        One target per sequence, or one per step (padded with ``target_pad``).
    pad_value : scalar
        Padding of the inputs.
    target_pad : scalar
        Padding of per-step targets (e.g. the loss's ``ignore_index``).
    dtype : numpy dtype, optional
        Of the padded inputs (default: the sequences' own).

    Interface
    ---------
    ``batch(idx)`` returns ``Batch(inputs=(padded, lengths), target=...)``, each batch
    padded to its own longest sequence, so the model is called as
    ``model(padded, lengths)``.
    """

    def __init__(self, sequences, target=None, *, pad_value=0, target_pad=-100, dtype=None):
        self.sequences = [_as_array(s, f"sequences[{i}]") for i, s in enumerate(sequences)]
        if not self.sequences:
            raise ValueError("a dataset needs at least one sample, got 0")
        pad_sequences(self.sequences, pad_value, dtype)       # check shapes once
        self.pad_value, self.target_pad, self.dtype = pad_value, target_pad, dtype
        self.per_step = isinstance(target, (list, tuple))
        if target is None:
            self.target = None
        elif self.per_step:
            self.target = [_as_array(t, f"target[{i}]") for i, t in enumerate(target)]
            for i, (s, t) in enumerate(zip(self.sequences, self.target)):
                if len(s) != len(t):
                    raise ValueError(f"target[{i}] has {len(t)} steps, sequence {i} has "
                                     f"{len(s)}")
        else:
            self.target = _as_array(target, "target")
        if target is not None and len(self.target) != len(self.sequences):
            raise ValueError(f"{len(self.sequences)} sequences but {len(self.target)} targets")

    def __len__(self):
        return len(self.sequences)

    @property
    def lengths(self):
        """int64 ``[n]``: the steps of each sequence."""
        return np.array([len(s) for s in self.sequences], np.int64)

    def subset(self, idx):
        """The samples ``idx`` as a new dataset."""
        target = None if self.target is None else (
            [self.target[i] for i in idx] if self.per_step else self.target[idx])
        return SequenceDataset([self.sequences[i] for i in idx], target,
                               pad_value=self.pad_value, target_pad=self.target_pad,
                               dtype=self.dtype)

    def batch(self, idx):
        x, lengths = pad_sequences([self.sequences[i] for i in idx], self.pad_value, self.dtype)
        if self.target is None:
            y = None
        elif self.per_step:
            y, _ = pad_sequences([self.target[i] for i in idx], self.target_pad)
        else:
            y = self.target[idx]
        return Batch((x, lengths), y)


def _is_ragged(x):
    if not isinstance(x, (list, tuple)) or not x:
        return False
    shapes = {np.shape(s) for s in x}
    return len(shapes) > 1


def as_dataset(data):
    """A dataset from what :meth:`Trainer.fit` accepts.

    * an object with ``batch(idx)`` and ``__len__`` (a dataset): itself;
    * ``(x, y)``: :class:`SequenceDataset` when ``x`` is a list of sequences of
      different lengths, else :class:`ArrayDataset` (``x`` may be a tuple of arrays);
    * an array ``x``: inputs only.
    """
    if hasattr(data, "batch") and hasattr(data, "__len__"):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        if _is_ragged(x):
            return SequenceDataset(x, y)
        return ArrayDataset(x, y)
    if _is_ragged(data):
        return SequenceDataset(data)
    if isinstance(data, tuple):
        raise ValueError(f"data must be (inputs, target), an array or a dataset; got a tuple "
                         f"of {len(data)}")
    return ArrayDataset(data)


class _DatasetSource:
    """A dataset as a batch source: a permutation per epoch (or the stored order)."""

    def __init__(self, dataset, shuffle=True, drop_last=False, bucket_by_length=False):
        self.dataset = dataset
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.bucket_by_length = bool(bucket_by_length)
        if self.bucket_by_length:
            sample_lengths(dataset)

    def num_batches(self, batch_size):
        n = len(self.dataset)
        if self.drop_last:
            if n < batch_size:
                raise ValueError(f"drop_last with {n} samples and batch_size {batch_size} "
                                 "leaves no batch")
            return n // batch_size
        return math.ceil(n / batch_size)

    def train_batches(self, rng, batch_size):
        return shuffled_batches(self.dataset, rng, batch_size, self.num_batches(batch_size),
                                self.shuffle, self.bucket_by_length)


def sample_lengths(dataset):
    """int64 ``[n]``: the ``lengths`` of a dataset of variable-length sequences."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        raise ValueError(f"bucket_by_length needs variable-length sequences (a dataset with "
                         f"lengths), got a {type(dataset).__name__} without")
    return np.asarray(lengths)


def shuffled_batches(dataset, rng, batch_size, count, shuffle=True, bucket_by_length=False):
    """The first ``count`` batches of ``batch_size`` samples of ``dataset`` (its
    ``batch(idx)``), in an order drawn from ``rng`` (a permutation, drawn at once) or,
    without ``shuffle``, in the stored order.

    ``bucket_by_length``: each batch holds samples of similar length (the samples in a
    random order, stably sorted by ``dataset.lengths``, cut into batches; the last
    batch, the longest samples, may be smaller), and with ``shuffle`` the batches come
    in a random order; both drawn from ``rng`` only."""
    n = len(dataset)
    order = rng.permutation(n) if shuffle else np.arange(n)
    starts = np.arange(count) * batch_size
    if bucket_by_length:
        # the samples left out (drop_last) are the permutation's last, as without
        order = order[:min(n, count * batch_size)]
        order = order[np.argsort(sample_lengths(dataset)[order], kind="stable")]
        if shuffle:
            starts = starts[rng.permutation(count)]
    for i in starts:
        yield dataset.batch(order[i:i + batch_size])


def as_source(data, shuffle=True, drop_last=False, bucket_by_length=False):
    """A batch source: ``data`` itself if it has ``train_batches`` and ``num_batches``
    (a :class:`~nn_core.training.Task`, for instance), else :func:`as_dataset` of it
    (``bucket_by_length``: batches of similar lengths, see :func:`shuffled_batches`)."""
    if hasattr(data, "train_batches") and hasattr(data, "num_batches"):
        if bucket_by_length:
            raise ValueError("bucket_by_length applies to datasets; a batch source "
                             f"({type(data).__name__}) draws its own batches")
        return data
    return _DatasetSource(as_dataset(data), shuffle, drop_last, bucket_by_length)


def iterate(data, batch_size):
    """The batches of ``data`` (anything :func:`as_dataset` takes) in order."""
    ds = as_dataset(data)
    for start in range(0, len(ds), batch_size):
        yield ds.batch(np.arange(start, min(start + batch_size, len(ds))))
