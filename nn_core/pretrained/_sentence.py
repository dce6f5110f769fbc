"""Sentence embeddings from a model folder: the folder's tokenizer, the encoder, and the
sentence-transformers pooling / normalisation the folder declares."""
from __future__ import annotations

import os

import numpy as np

from .._progress import ProgressBar
from ..module import inference_mode
from ._folder import ModelFolderError, load_encoder, read_json
from ._model import as_bool_mask
from ._optional import require

__all__ = ["SentenceEncoder", "POOLING_MODES"]

#: pooling modes in the order sentence-transformers concatenates them
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
_ST_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
            "mean": "pooling_mode_mean_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
_ST_UNSUPPORTED = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
#: progress is shown from this many batches on
_PROGRESS_BATCHES = 8


def _sentence_layout(folder):
    """``(encoder folder, pooling modes or None, normalize)`` from ``modules.json``."""
    path = os.path.join(folder, "modules.json")
    if not os.path.exists(path):
        return folder, None, False
    encoder, pooling, normalize = folder, None, False
    for mod in read_json(path):
        kind = str(mod.get("type", "")).rpartition(".")[2]
        sub = os.path.join(folder, mod.get("path", ""))
        if kind == "Transformer":
            encoder = sub
        elif kind == "Pooling":
            cfg = read_json(os.path.join(sub, "config.json"))
            for key in _ST_UNSUPPORTED:
                if cfg.get(key):
                    raise ModelFolderError(f"{os.path.join(sub, 'config.json')}: {key} is "
                                           f"not supported (supported: {', '.join(_ST_KEYS.values())})")
            pooling = tuple(m for m in POOLING_MODES if cfg.get(_ST_KEYS[m]))
            if not pooling:
                raise ModelFolderError(f"{os.path.join(sub, 'config.json')}: no pooling mode set")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelFolderError(f"{path}: module type {mod.get('type')!r} is not supported "
                                   "(supported: Transformer, Pooling, Normalize)")
    return encoder, pooling, normalize


def _check_pooling(pooling):
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise ValueError(f"pooling must be one of {POOLING_MODES} (or a tuple of them), "
                         f"got {pooling!r}")
    return tuple(m for m in POOLING_MODES if m in modes)


def pool(hidden, mask, modes, normalize):
    """Sentence vectors ``[B, n_modes * d]`` from ``hidden [B, L, d]`` and the bool
    token mask ``[B, L]``, as sentence-transformers' Pooling (and Normalize) modules."""
    out = []
    m = mask[..., None]
    for mode in modes:
        if mode == "cls":
            out.append(hidden[:, 0])
        elif mode == "max":
            out.append(np.where(m, hidden, hidden.dtype.type(-1e9)).max(axis=1))
        else:
            total = np.where(m, hidden, 0).sum(axis=1)
            count = np.maximum(mask.sum(axis=1, keepdims=True), 1e-9).astype(hidden.dtype)
            out.append(total / (count if mode == "mean" else np.sqrt(count)))
    y = out[0] if len(out) == 1 else np.concatenate(out, axis=1)
    if normalize:
        norm = np.sqrt(np.einsum("ij,ij->i", y, y))[:, None]
        y = y / np.maximum(norm, hidden.dtype.type(1e-12))
    return y


class SentenceEncoder:
    """Embed sentences with the encoder, tokenizer and pooling of a model folder, as
    ``sentence_transformers.SentenceTransformer(folder).encode`` does.

    Parameters
    ----------
    folder : str or os.PathLike
        A local Hugging Face / sentence-transformers model folder: ``config.json``,
        ``model.safetensors``, ``tokenizer.json`` (or a WordPiece ``vocab.txt``), and
        optionally ``modules.json``, ``1_Pooling/config.json``,
        ``sentence_bert_config.json``.  Nothing is downloaded.
    dtype : {np.float32, np.float64}

    Attributes
    ----------
    model : BertEncoder
        The encoder (``eval()``).
    tokenizer : tokenizers.Tokenizer
        Truncating to ``max_seq_length``, not padding (batches are padded here).
    pooling : tuple of str
        The folder's pooling modes (``1_Pooling/config.json``), else ``("mean",)``.
    normalize : bool
        True when the folder has a ``Normalize`` module.
    max_seq_length : int
        ``sentence_bert_config.json``'s ``max_seq_length``, else the tokenizer's
        ``model_max_length``, at most the position table's length.

    Examples
    --------
    >>> enc = SentenceEncoder("path/to/all-MiniLM-L6-v2")           # doctest: +SKIP
    >>> enc.encode(["A sentence.", "Another one."]).shape           # doctest: +SKIP
    (2, 384)
    """

    def __init__(self, folder, dtype=np.float32) -> None:
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise ModelFolderError(f"{folder}: not a directory (SentenceEncoder reads a local "
                                   "model folder)")
        encoder_dir, pooling, normalize = _sentence_layout(folder)
        self.model = load_encoder(encoder_dir, dtype=dtype)
        self.pooling = pooling or ("mean",)
        self.normalize = normalize
        self.max_seq_length = self._max_length(folder, encoder_dir)
        self.tokenizer = self._tokenizer(encoder_dir)

    def _max_length(self, folder, encoder_dir):
        limit = self.model.max_length
        for d in (folder, encoder_dir):
            path = os.path.join(d, "sentence_bert_config.json")
            if os.path.exists(path):
                n = read_json(path).get("max_seq_length")
                if n:
                    return min(int(n), limit)
        path = os.path.join(encoder_dir, "tokenizer_config.json")
        n = read_json(path).get("model_max_length") if os.path.exists(path) else None
        return min(int(n), limit) if isinstance(n, (int, float)) and n < 1e9 else limit

    def _tokenizer(self, folder):
        tk = require("tokenizers")
        tj, vocab = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "vocab.txt")
        if os.path.exists(tj):
            tok = tk.Tokenizer.from_file(tj)
        elif os.path.exists(vocab):
            cfg_path = os.path.join(folder, "tokenizer_config.json")
            cfg = read_json(cfg_path) if os.path.exists(cfg_path) else {}
            tok = tk.BertWordPieceTokenizer(vocab, lowercase=bool(cfg.get("do_lower_case", True)))
        else:
            raise ModelFolderError(f"{folder}: no tokenizer (tokenizer.json or vocab.txt)")
        tok.no_padding()
        tok.enable_truncation(self.max_seq_length)
        return tok

    @property
    def dim(self) -> int:
        """Width of the sentence vectors."""
        return self.model.hidden_size * len(self.pooling)

    def tokenize(self, sentences):
        """``(ids, lengths)``: the token ids of each sentence (a list of int arrays) and
        their lengths."""
        encs = self.tokenizer.encode_batch(list(sentences))
        ids = [np.asarray(e.ids, dtype=np.intp) for e in encs]
        return ids, np.array([len(i) for i in ids], dtype=np.intp)

    def encode(self, sentences, batch_size: int = 32, normalize: bool | None = None,
               pooling=None, progress: bool = True) -> np.ndarray:
        """Embed ``sentences``.

        Parameters
        ----------
        sentences : str or sequence of str
        batch_size : int
            Sentences per forward (sorted by length so that a batch pads little).
        normalize : bool, optional
            Unit-length vectors; default: the folder's setting.
        pooling : {"mean", "cls", "max", "mean_sqrt_len"} or a tuple of them, optional
            Default: the folder's setting (several modes are concatenated).
        progress : bool
            A progress line on stderr for long inputs.

        Returns
        -------
        ndarray ``[n, dim]`` in the input order (``[dim]`` for one string).
        """
        single = isinstance(sentences, str)
        ids, lengths = self.tokenize([sentences] if single else sentences)
        out = self._run(len(ids), lengths, lambda rows, L: self._pad(ids, rows, L),
                        batch_size, normalize, pooling, progress)
        return out[0] if single else out

    def encode_ids(self, input_ids, attention_mask=None, batch_size: int = 32,
                   normalize: bool | None = None, pooling=None,
                   progress: bool = True) -> np.ndarray:
        """Embed already tokenized sentences: ``input_ids [n, L]`` (each starting with
        the model's [CLS] / <s> token) and their 0/1 ``attention_mask [n, L]`` (default:
        no padding); as :meth:`encode` otherwise."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be 2-D [n, L], got shape {ids.shape}")
        mask = (np.ones(ids.shape, bool) if attention_mask is None
                else as_bool_mask(attention_mask, ids.shape))
        lengths = mask.sum(axis=1)

        def batch(rows, L):
            return ids[rows, :L], mask[rows, :L]

        return self._run(len(ids), lengths, batch, batch_size, normalize, pooling, progress,
                         trim=mask)

    def _pad(self, ids, rows, L):
        pad = self.model.pad_token_id
        batch = np.full((len(rows), L), pad, dtype=np.intp)
        mask = np.zeros((len(rows), L), dtype=bool)
        for r, i in enumerate(rows):
            batch[r, :len(ids[i])] = ids[i]
            mask[r, :len(ids[i])] = True
        return batch, mask

    def _run(self, n, lengths, make_batch, batch_size, normalize, pooling, progress, trim=None):
        """Forward the sentences longest first, ``batch_size`` at a time, and pool.

        Not inside :func:`nn_core.memory.caching_allocator`: batches of different lengths
        allocate arrays of different size classes, all of which the cache would keep
        (README, "Pretrained text encoders").
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        modes = self.pooling if pooling is None else _check_pooling(pooling)
        norm = self.normalize if normalize is None else bool(normalize)
        out = np.empty((n, self.model.hidden_size * len(modes)), self.model.dtype)
        order = np.argsort(-np.asarray(lengths), kind="stable")
        starts = range(0, n, batch_size)
        bar = (ProgressBar(len(starts), "encode")
               if progress and len(starts) >= _PROGRESS_BATCHES else None)
        with inference_mode():
            for s in starts:
                rows = order[s:s + batch_size]
                if trim is None:
                    L = int(lengths[rows].max())
                else:               # the columns up to the batch's last real token
                    cols = np.flatnonzero(trim[rows].any(axis=0))
                    L = int(cols[-1]) + 1 if cols.size else 1
                ids, mask = make_batch(rows, L)
                hidden = self.model(ids, attention_mask=mask)
                out[rows] = pool(hidden, mask, modes, norm)
                if bar is not None:
                    bar.update(samples=len(rows))
        if bar is not None:
            bar.close()
        return out
