"""A small GPT-style causal language model (the ``lm`` task's model).

Pre-LayerNorm transformer blocks (Radford et al., 2019) with causal
:class:`~nn_core.attention.MultiHeadAttention` or
:class:`~nn_core.attention.GroupedQueryAttention` (Ainslie et al., 2023), learned
position embeddings, and generation with a KV cache per block.
"""
from __future__ import annotations

import time

import numpy as np

from ..layers import Embedding, LayerNorm, Linear
from ..module import Module, ModuleList, inference_mode
from ..transformer import TransformerDecoderLayer

__all__ = ["TransformerBlock", "TransformerLM"]


def _as_probabilities(row):
    """``row`` renormalised in float64: ``Generator.choice`` wants a sum within about
    1e-8 of 1, which a float32 row normalised in float32 often misses."""
    q = row.astype(np.float64)
    return q / q.sum()


class TransformerBlock(TransformerDecoderLayer):
    r"""The ``lm`` task's block: a pre-LN decoder-only :class:`~nn_core.transformer.TransformerDecoderLayer`
    with a tanh-GELU MLP of width ``mlp_ratio * d`` and no dropout.

    Parameters
    ----------
    d_model : int
        ``d``, features per position.
    num_heads : int
        ``h``; must divide ``d``.
    num_kv_groups : int or None, default None
        ``None`` (or ``num_heads``): :class:`~nn_core.attention.MultiHeadAttention`;
        otherwise :class:`~nn_core.attention.GroupedQueryAttention` with this many K/V
        heads (1 = multi-query).
    mlp_ratio : int, default 4
        The MLP's hidden width is ``mlp_ratio * d``.
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only

    Interface
    ---------
    * ``forward(x [B, L, d], kv_cache=None) -> [B, L, d]``; with a ``kv_cache`` (from
      ``block.self_attn.new_kv_cache``) the positions are appended to the cache and
      attend to everything in it (decoding; no backward afterwards);
    * ``backward(grad_output [B, L, d]) -> grad_x [B, L, d]``.

    Parameters of the module: ``norm1.*``, ``self_attn.W_q .. self_attn.b_o``,
    ``norm2.*``, ``linear1.W, linear1.b, linear2.W, linear2.b``.

    Notes
    -----
    Forward::

        u = x + attn(LN1(x), is_causal=True)
        y = u + W2 GELU_tanh(W1 LN2(u))

    Backward follows the two residual branches in reverse, with ``g = dloss/dy``::

        g_u = g + LN2'(mlp'(g))
        g_x = g_u + LN1'(attn'_query(g_u))

    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.models import TransformerBlock
    >>> block = TransformerBlock(16, 4, num_kv_groups=1, rng=0)
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    >>> y = block(x)
    >>> y.shape, block.backward(np.ones_like(y)).shape
    ((2, 5, 16), (2, 5, 16))
    """

    def __init__(self, d_model, num_heads, num_kv_groups=None, mlp_ratio=4, *, dtype=np.float32,
                 rng=None):
        super().__init__(d_model, num_heads, mlp_ratio * d_model, dropout=0.0,
                         activation="gelu_tanh", norm_first=True, num_kv_groups=num_kv_groups,
                         cross_attention=False, dtype=dtype, rng=rng)

    def forward(self, x, kv_cache=None):
        """``x [B, L, d]`` -> ``[B, L, d]``; with ``kv_cache``: incremental decoding."""
        return super().forward(x, kv_cache=kv_cache)


class TransformerLM(Module):
    r"""Causal language model over token ids: embeddings, pre-LN blocks, a linear head.

    Parameters
    ----------
    vocab_size : int
        ``V``.
    d_model : int, default 64
        ``d``.
    num_heads : int, default 4
        ``h``; must divide ``d``.
    num_layers : int, default 2
        Number of :class:`TransformerBlock`.
    num_kv_groups : int or None, default None
        ``None`` (or ``num_heads``): multi-head attention; otherwise grouped-query
        attention with this many K/V heads (1 = multi-query).
    max_len : int, default 64
        Longest context: the rows of the learned position embedding.
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only
        Draws every weight, in the order of the parameter list below.

    Shapes: ``B`` batch, ``L`` positions (``start + L <= max_len``).

    Interface
    ---------
    * ``forward(ids [B, L], kv_caches=None, start=0) -> logits [B, L, V]``;
      ``kv_caches`` (from :meth:`new_kv_caches`) makes it one decoding step at
      positions ``start .. start + L - 1`` (no backward afterwards);
    * ``backward(grad_logits [B, L, V]) -> None`` (the ids are integers; the parameter
      gradients accumulate);
    * ``generate(prompt_ids [B, P], max_new_tokens, temperature=0.0, rng=None,
      stop=None) -> (tokens [B, <= max_new_tokens], seconds)``.

    Parameters of the module: ``tok_embed.W [V, d]``, ``pos_embed.W [max_len, d]``
    (both initialised at a tenth of the usual scale), ``blocks.{k}.*`` (see
    :class:`TransformerBlock`), ``ln_f.*``, ``head.W [d, V], head.b``.

    Notes
    -----
    Forward::

        x_0 = tok_embed[ids] + pos_embed[start + arange(L)]
        x_{k+1} = block_k(x_k)                         k = 0 .. num_layers - 1
        logits = LN_f(x_n) W_head + b_head

    Backward runs the same chain in reverse; the position embedding's gradient is the
    token gradient summed over the batch.

    Generation: one forward over the whole prompt fills the caches (prefill); each new
    token then costs one forward of length 1 attending to everything cached.  With
    ``temperature > 0`` the next token is sampled from ``softmax(logits / temperature)``
    with ``rng``, otherwise it is the argmax.  ``stop`` ends generation once every row
    has produced that token.

    References: A. Radford et al., "Language models are unsupervised multitask
    learners", 2019; J. Ainslie et al., "GQA: training generalized multi-query
    transformer models from multi-head checkpoints", EMNLP 2023.

    Raises
    ------
    ValueError
        ``start + L > max_len``.

    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.models import TransformerLM
    >>> lm = TransformerLM(vocab_size=13, d_model=16, num_heads=4, num_layers=1,
    ...                    num_kv_groups=2, max_len=12, rng=0)
    >>> ids = np.random.default_rng(0).integers(0, 13, (2, 5))
    >>> logits = lm(ids)
    >>> logits.shape
    (2, 5, 13)
    >>> lm.backward(np.ones_like(logits))
    >>> tokens, seconds = lm.eval().generate(ids, max_new_tokens=4)
    >>> tokens.shape
    (2, 4)
    """

    def __init__(self, vocab_size, d_model=64, num_heads=4, num_layers=2,
                 num_kv_groups=None, max_len=64, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.max_len = max_len
        self.d_model = d_model
        kw = dict(dtype=dtype, rng=self.rng)
        self.tok_embed = Embedding(vocab_size, d_model, **kw)
        self.pos_embed = Embedding(max_len, d_model, **kw)
        self.tok_embed.params["W"] *= 0.1
        self.pos_embed.params["W"] *= 0.1
        self.blocks = ModuleList([TransformerBlock(d_model, num_heads, num_kv_groups, **kw)
                                  for _ in range(num_layers)], dtype=dtype)
        self.ln_f = LayerNorm(d_model, dtype=dtype)
        self.head = Linear(d_model, vocab_size, **kw)

    def forward(self, ids, kv_caches=None, start=0):
        ids = np.asarray(ids)
        L = ids.shape[1]
        if start + L > self.max_len:
            raise ValueError(f"sequence length {start + L} exceeds max_len {self.max_len}")
        x = self.tok_embed(ids) + self.pos_embed(np.arange(start, start + L))
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if kv_caches is None else kv_caches[i])
        if kv_caches is None:
            self._save_cache(True)
        else:
            self._save_no_backward("the forward used kv_caches (decoding is inference only)")
        return self.head(self.ln_f(x))

    def backward(self, grad_logits):
        self._pop_cache()
        g = self.ln_f.backward(self.head.backward(grad_logits))
        for blk in reversed(list(self.blocks)):
            g = blk.backward(g)
        self.tok_embed.backward(g)
        self.pos_embed.backward(g.sum(axis=0))
        return None

    def new_kv_caches(self, batch_size):
        """One empty KV cache of ``max_len`` positions per block."""
        return [blk.self_attn.new_kv_cache(batch_size, self.max_len) for blk in self.blocks]

    @inference_mode()
    def generate(self, prompt_ids, max_new_tokens, temperature=0.0, rng=None, stop=None):
        """Continue ``prompt_ids [B, P]`` by ``max_new_tokens`` tokens with the KV cache.

        The prompt is processed in one forward (prefill); each new token then costs one
        forward of length 1 attending to everything cached.  Runs in
        :func:`~nn_core.inference_mode`.  Returns ``(tokens [B, <= max_new_tokens], seconds)``.
        """
        rng = np.random.default_rng(rng)
        prompt_ids = np.asarray(prompt_ids)
        B, P = prompt_ids.shape
        steps = min(max_new_tokens, self.max_len - P)
        caches = self.new_kv_caches(B)
        out = []
        done = np.zeros(B, dtype=bool)
        t0 = time.perf_counter()
        logits = self.forward(prompt_ids, kv_caches=caches)[:, -1]
        for k in range(steps):
            if temperature > 0:
                z = logits / temperature
                p = np.exp(z - z.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                tok = np.array([rng.choice(len(row), p=_as_probabilities(row)) for row in p])
            else:
                tok = logits.argmax(-1)
            out.append(tok)
            if stop is not None:
                done |= tok == stop
                if done.all():
                    break
            if k + 1 < steps:
                logits = self.forward(tok[:, None], kv_caches=caches, start=P + k)[:, -1]
        seconds = time.perf_counter() - t0
        self.clear_pending()
        return np.stack(out, axis=1), seconds
