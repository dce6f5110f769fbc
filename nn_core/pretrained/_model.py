"""The BERT-family encoder as an nn_core module: embeddings, a stack of post-LN
:class:`~nn_core.transformer.TransformerEncoderLayer`, an optional pooler.

Shape legend: ``B`` batch, ``L`` tokens, ``d`` = ``hidden_size``, ``V`` vocabulary.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from .._validation import (as_float_array, as_index_array, check_choice, check_grad_output,
                           check_positive_int)
from ..layers import Dropout, Embedding, LayerNorm, Linear, Tanh
from ..module import Module, ModuleList
from ..transformer import ACTIVATIONS, TransformerEncoderLayer

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, DTypeLike, RNGLike

__all__ = ["BertEncoder", "BertPooler", "as_bool_mask"]

#: how position ids are formed: "absolute" (BERT, DistilBERT: 0 .. L-1) or "roberta"
#: (pad_token_id + 1 + the count of non-pad tokens so far; pad tokens get pad_token_id)
POSITIONS = ("absolute", "roberta")


def as_bool_mask(attention_mask, shape) -> np.ndarray:
    """A tokenizer's ``attention_mask`` (bool, or integers / floats that are all 0 or 1)
    as a bool array of ``shape`` (``True`` = a real token)."""
    m = np.asarray(attention_mask)
    if m.shape != tuple(shape):
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(shape)}, "
                         f"got {m.shape}")
    if m.dtype == bool:
        return m
    if m.dtype.kind not in "iuf":
        raise TypeError(f"attention_mask must be bool or 0/1 numbers, got dtype {m.dtype}")
    ok = (m == 0) | (m == 1)
    if not ok.all():
        raise ValueError(f"attention_mask must hold only 0 and 1, got {m[~ok].reshape(-1)[0]!r}")
    return m != 0


@dataclass
class _EncoderCache:
    out_shape: tuple
    word: bool           # the word vectors came from the lookup (not inputs_embeds)
    types: bool          # token_type_ids were given ([B, L] lookup, else row 0 broadcast)
    pos_rows: int        # rows of the position-id array (1: broadcast over the batch)
    dropout: bool        # the embedding dropout ran


class BertPooler(Module):
    """``tanh(dense(h[:, 0]))``: BERT's pooler over the first ([CLS]) token.

    Parameters
    ----------
    hidden_size : int
        ``d``.
    dtype, rng : keyword-only

    Notes
    -----
    ``forward(hidden [B, L, d]) -> [B, d]``; ``backward(grad [B, d]) -> grad_hidden
    [B, L, d]`` (zero except at position 0).
    """

    def __init__(self, hidden_size: int, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.dense = Linear(self.hidden_size, self.hidden_size, dtype=self.dtype, rng=self.rng)
        self.act = Tanh(dtype=self.dtype)

    def forward(self, hidden: ArrayLike) -> np.ndarray:
        """``hidden [B, L, d] -> [B, d]``."""
        hidden = as_float_array(hidden, "hidden", self.dtype, ndim=3)
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden.shape[-1] must equal hidden_size: expected "
                             f"{self.hidden_size}, got {hidden.shape[-1]}")
        y = self.act(self.dense(hidden[:, 0]))
        self._save_cache(hidden.shape)
        return y

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """``grad_hidden [B, L, d]``; the dense layer's gradients accumulate."""
        shape = self._peek_cache()
        g0 = self.dense.backward(self.act.backward(grad_output))
        self._pop_cache()
        g = np.zeros(shape, self.dtype)
        g[:, 0] = g0
        return g


class BertEncoder(Module):
    r"""A BERT-family text encoder: token, position (and token-type) embeddings, their
    LayerNorm, ``num_layers`` post-LN :class:`~nn_core.transformer.TransformerEncoderLayer`
    and an optional :class:`BertPooler`.

    Usually built by :func:`nn_core.pretrained.load_encoder` from a model folder (BERT,
    MiniLM and the sentence-transformers encoders, RoBERTa, XLM-RoBERTa, DistilBERT).

    Parameters
    ----------
    vocab_size : int
        ``V``.
    hidden_size : int
        ``d``.
    num_layers, num_heads, intermediate_size : int
        Encoder depth, attention heads, feed-forward width ``F``.
    max_position_embeddings : int
        Rows of the position table.
    type_vocab_size : int
        Rows of the token-type table; ``0``: no token types (DistilBERT).
    hidden_act : {"gelu", "gelu_tanh", "relu"}
        Feed-forward activation (``"gelu"`` is the exact erf form).
    layer_norm_eps : float
    dropout : float
        Every dropout of the model (embeddings, attention weights, residual branches,
        after the feed-forward activation), in training mode only.
    positions : {"absolute", "roberta"}
        ``"absolute"``: position ids ``0 .. L-1``.  ``"roberta"``: ``pad_token_id + 1 +``
        the number of earlier non-pad tokens, ``pad_token_id`` at pad tokens.
    pad_token_id : int
        Padding row of the word (and, with ``"roberta"``, position) table: it gets no
        gradient.
    pooler : bool
        Build the pooler (``self.pooler``).
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only

    Notes
    -----
    ``forward(input_ids [B, L], attention_mask=None [B, L], token_type_ids=None [B, L],
    inputs_embeds=None [B, L, d]) -> last_hidden_state [B, L, d]``::

        e = W_word[input_ids] + W_pos[positions] + W_type[token_type_ids]
        x = dropout(LayerNorm(e));   x = layer_k(x, mask)  for k = 1 .. num_layers

    ``attention_mask`` is a tokenizer's 0/1 mask (or bool): keys where it is 0 are not
    attended to.  ``inputs_embeds`` replaces the word lookup (then ``input_ids`` is
    ``None``).  The pooled output is ``self.pooler(last_hidden_state)``.

    ``backward(grad_output [B, L, d]) -> grad_inputs_embeds [B, L, d]``: the gradient
    with respect to the word vectors ``W_word[input_ids]`` (or ``inputs_embeds``), the
    usual input of saliency methods; every parameter gradient accumulates (the word
    table's rows by scatter-add).  A backward needs a forward that kept its cache
    (training mode, or inside ``enable_backward``).  The pooler is a separate module:
    add ``self.pooler.backward(grad_pooled)`` to ``grad_output``.

    Examples
    --------
    >>> enc = BertEncoder(50, 16, 2, 4, 32, max_position_embeddings=12, dropout=0.0, rng=0)
    >>> ids = np.array([[2, 7, 9, 3], [2, 5, 3, 0]])
    >>> h = enc(ids, attention_mask=np.array([[1, 1, 1, 1], [1, 1, 1, 0]]))
    >>> enc.pooler(h).shape, enc.backward(np.ones_like(h)).shape
    ((2, 16), (2, 4, 16))
    """

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                 intermediate_size: int, max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, hidden_act: str = "gelu",
                 layer_norm_eps: float = 1e-12, dropout: float = 0.1,
                 positions: str = "absolute", pad_token_id: int = 0, pooler: bool = True, *,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        V = check_positive_int(vocab_size, "vocab_size")
        d = check_positive_int(hidden_size, "hidden_size")
        n = check_positive_int(num_layers, "num_layers")
        P = check_positive_int(max_position_embeddings, "max_position_embeddings")
        T = check_positive_int(type_vocab_size, "type_vocab_size", minimum=0)
        check_choice(hidden_act, "hidden_act", tuple(ACTIVATIONS))
        check_choice(positions, "positions", POSITIONS)
        pad = int(pad_token_id)
        if not 0 <= pad < V:
            raise ValueError(f"pad_token_id must be in [0, {V}), got {pad}")
        if positions == "roberta" and pad + 1 >= P:
            raise ValueError(f"max_position_embeddings must exceed pad_token_id + 1 with "
                             f"positions='roberta': got {P} and pad_token_id {pad}")
        self.vocab_size, self.hidden_size, self.num_layers = V, d, n
        self.max_position_embeddings, self.type_vocab_size = P, T
        self.positions, self.pad_token_id = positions, pad
        kw = dict(dtype=self.dtype, rng=self.rng)
        self.word_embeddings = Embedding(V, d, padding_idx=pad, **kw)
        self.position_embeddings = Embedding(
            P, d, padding_idx=pad if positions == "roberta" else None, **kw)
        if T:
            self.token_type_embeddings = Embedding(T, d, **kw)
        self.emb_norm = LayerNorm(d, eps=layer_norm_eps, dtype=self.dtype)
        self.emb_dropout = Dropout(dropout, **kw)
        self.layers = ModuleList(
            [TransformerEncoderLayer(d, num_heads, intermediate_size, dropout=dropout,
                                     activation=hidden_act, layer_norm_eps=layer_norm_eps, **kw)
             for _ in range(n)], dtype=self.dtype)
        if pooler:
            self.pooler = BertPooler(d, **kw)
        else:
            self.pooler = None

    # ----------------------------------------------------------------- inputs
    @property
    def max_length(self) -> int:
        """Longest sequence the position table allows."""
        if self.positions == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    def _position_ids(self, ids, L):
        if self.positions == "absolute":
            return np.arange(L)[None]                                    # (1, L)
        if ids is None:
            return np.arange(self.pad_token_id + 1, self.pad_token_id + 1 + L)[None]
        real = ids != self.pad_token_id
        return np.cumsum(real, axis=1) * real + self.pad_token_id        # (B, L)

    def forward(self, input_ids: ArrayLike | None = None, attention_mask: ArrayLike | None = None,
                token_type_ids: ArrayLike | None = None,
                inputs_embeds: ArrayLike | None = None) -> np.ndarray:
        """``input_ids [B, L]`` (or ``inputs_embeds [B, L, d]``) ``-> [B, L, d]``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        ids = None
        if input_ids is not None:
            ids = as_index_array(input_ids, "input_ids", self.vocab_size)
            if ids.ndim != 2:
                raise ValueError(f"input_ids must be 2-D [B, L], got shape {ids.shape}")
            shape = ids.shape
            word = self.word_embeddings(ids)
        else:
            word = as_float_array(inputs_embeds, "inputs_embeds", self.dtype, ndim=3)
            if word.shape[-1] != self.hidden_size:
                raise ValueError(f"inputs_embeds.shape[-1] must equal hidden_size: expected "
                                 f"{self.hidden_size}, got {word.shape[-1]}")
            shape = word.shape[:2]
        L = shape[1]
        if L > self.max_length:
            raise ValueError(f"input length must be at most {self.max_length} (the position "
                             f"table), got {L}")
        pos = self._position_ids(ids, L)
        e = word + self.position_embeddings(pos)
        if token_type_ids is not None:
            if not self.type_vocab_size:
                raise ValueError("token_type_ids must be None: this model has no token types")
            tt = as_index_array(token_type_ids, "token_type_ids", self.type_vocab_size)
            if tt.shape != tuple(shape):
                raise ValueError(f"token_type_ids must have shape {tuple(shape)}, "
                                 f"got {tt.shape}")
            e += self.token_type_embeddings(tt)
        elif self.type_vocab_size:
            e += self.token_type_embeddings(np.zeros((1, 1), np.intp))   # row 0, broadcast
        x = self.emb_norm(e)
        drop = self.training and self.emb_dropout.p > 0
        if drop:
            x = self.emb_dropout(x)
        mask = None
        if attention_mask is not None:
            m = as_bool_mask(attention_mask, shape)
            if not m.all():
                mask = m[:, None, None, :]                               # (B, 1, 1, L)
        for layer in self.layers:
            x = layer(x, mask=mask)
        self._save_cache(_EncoderCache(x.shape, ids is not None, token_type_ids is not None,
                                       pos.shape[0], drop))
        return x

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """``grad_inputs_embeds [B, L, d]``; parameter gradients accumulate."""
        cache = self._peek_cache()
        g = check_grad_output(grad_output, cache.out_shape, self.dtype)
        self._pop_cache()
        for layer in reversed(list(self.layers)):
            g = layer.backward(g)
        if cache.dropout:
            g = self.emb_dropout.backward(g)
        g = self.emb_norm.backward(g)
        self.position_embeddings.backward(g if cache.pos_rows > 1
                                          else g.sum(axis=0, keepdims=True))
        if self.type_vocab_size:
            self.token_type_embeddings.backward(
                g if cache.types else g.sum(axis=(0, 1), keepdims=True))
        if cache.word:
            self.word_embeddings.backward(g)
        return g
