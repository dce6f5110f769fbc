"""An attentional encoder-decoder over token ids (the ``seq2seq`` task's model).

A bidirectional GRU or LSTM encodes the source, a bridge initialises an LSTM decoder
from the encoder's final states, and the decoder attends to the encoder output with
:class:`~nn_core.attention.CrossAttention` (Bahdanau et al., 2015; Luong et al., 2015,
"attention on top").  Greedy decoding runs the decoder one step at a time with
:class:`~nn_core.attention.CachedCrossAttention`.
"""
from __future__ import annotations

import numpy as np

from ..attention import CachedCrossAttention, CrossAttention, create_padding_mask
from .._validation import check_int
from ..layers import Embedding, Linear, Tanh
from ..module import Module, inference_mode
from ..recurrent import BidirectionalWrapper, LSTMCell
from ._common import final_h, recurrent_cell, state_grad

__all__ = ["Seq2SeqModel"]


class Seq2SeqModel(Module):
    r"""Attentional encoder-decoder: source ids -> logits over the target vocabulary.

    Three token ids are reserved: ``pad_id`` is the embeddings' ``padding_idx``, greedy
    decoding starts from ``bos_id`` and stops at ``eos_id``.

    Parameters
    ----------
    vocab_size : int
        ``V``, shared by source and target.
    embed_dim : int, default 32
        ``E``.
    hidden_size : int, default 64
        ``H``: each encoder direction, the decoder, and the attention's ``d_model``.
    num_heads : int, default 4
        Heads of the cross attention; must divide ``H``.
    cell : {"gru", "lstm", "rnn"}, default "gru"
        Encoder cell (the decoder is always an :class:`~nn_core.recurrent.LSTMCell`).
    pad_id, bos_id, eos_id : int, keyword-only, default 0, 1, 2
        Padding, begin-of-sequence and end-of-sequence ids, in ``[0, V)``.
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only
        Draws every weight, in the order of the parameter list below.

    Shapes: ``B`` batch, ``S`` source length, ``T`` target length.

    Interface
    ---------
    * ``forward(src [B, S], src_len [B], tgt_in [B, T], tgt_len [B]) -> logits [B, T, V]``
      (all four inputs are integer arrays; ``tgt_in`` is the target shifted right,
      starting with ``bos_id``; positions past a length are padding);
    * ``backward(grad_logits [B, T, V]) -> (None, None, None, None)``: the inputs are
      integers, so only the parameter gradients accumulate;
    * ``greedy_decode(src [B, S], src_len [B], max_len) -> tokens [B, <= max_len]``.

    Parameters of the module: ``src_embed.W``, ``tgt_embed.W``,
    ``encoder.fw.*`` and ``encoder.bw.*`` (a
    :class:`~nn_core.recurrent.BidirectionalWrapper`), ``bridge.W, bridge.b``,
    ``decoder.W_ih, decoder.W_hh, decoder.b_ih, decoder.b_hh``, ``attention.W_q ..
    attention.b_o`` (``W_k, W_v`` are ``[2H, H]``), ``out.W, out.b``.

    Notes
    -----
    Forward (``[;]`` concatenates on the last axis, ``h(s)`` is the ``h`` of a
    final state)::

        x     = src_embed[src]                                   (B, S, E)
        enc, (s_fw, s_bw) = encoder(x, src_len)                  (S, B, 2H), time-major
        h_0   = tanh([h(s_fw); h(s_bw)] W_bridge + b_bridge)     (B, H)
        dec   = LSTM(tgt_embed[tgt_in], (h_0, 0), tgt_len)       (B, T, H)
        a     = CrossAttention(dec, enc, mask = j < src_len[b])  (B, T, H)
        logits = [dec; a] W_out + b_out                          (B, T, V)

    Backward, with ``g = dloss/dlogits``::

        [g_dec; g_a] = g W_out^T
        g_dec += attention'_query(g_a),   g_enc = attention'_context(g_a)
        g_tgt, g_h0 = LSTM'(g_dec)                   (BPTT; c_0 = 0 is a constant)
        [g_fw; g_bw] = bridge'(g_h0 * (1 - h_0^2))
        g_x = encoder'(g_enc, (g_fw, g_bw))          (LSTM encoder: zero grad_c)
        src_embed, tgt_embed accumulate g_x, g_tgt at their ids

    Greedy decoding feeds ``bos_id``, then each step's argmax, through
    :meth:`LSTMCell.forward <nn_core.recurrent.LSTMCell.forward>` and a
    :class:`~nn_core.attention.CachedCrossAttention` holding this model's attention
    weights, whose keys and values are projected once per batch.  A row that has
    produced ``eos_id`` emits ``pad_id`` afterwards.  The teacher-forced ``forward`` given
    the decoded tokens computes the same argmaxes.

    References: D. Bahdanau, K. Cho and Y. Bengio, "Neural machine translation by
    jointly learning to align and translate", ICLR 2015; M.-T. Luong, H. Pham and
    C. D. Manning, "Effective approaches to attention-based neural machine
    translation", EMNLP 2015.

    Raises
    ------
    ValueError
        ``num_heads`` does not divide ``hidden_size``; unknown ``cell``.

    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.models import Seq2SeqModel
    >>> from nn_core.datasets.digit_strings import VOCAB, make_examples, pad_batch
    >>> model = Seq2SeqModel(VOCAB, embed_dim=8, hidden_size=16, num_heads=2, rng=0)
    >>> src, tgt = make_examples(4, 3, 6, "reverse", seed=0)
    >>> src_ids, src_len, tgt_in, tgt_out, tgt_len = pad_batch(src, tgt)
    >>> logits = model(src_ids, src_len, tgt_in, tgt_len)
    >>> logits.shape == tgt_in.shape + (13,)
    True
    >>> model.backward(np.ones_like(logits))
    (None, None, None, None)
    >>> tokens = model.eval().greedy_decode(src_ids, src_len, max_len=8)
    >>> tokens.shape[0], tokens.shape[1] <= 8
    (4, True)
    """

    def __init__(self, vocab_size, embed_dim=32, hidden_size=64, num_heads=4, cell="gru",
                 *, pad_id=0, bos_id=1, eos_id=2, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        V, E, H = check_int(vocab_size, "vocab_size", 1), embed_dim, hidden_size
        if H % num_heads:
            raise ValueError(f"num_heads must divide hidden_size: got {num_heads} and {H}")
        self.pad_id, self.bos_id, self.eos_id = (
            check_int(v, name, 0, V - 1) for v, name in
            ((pad_id, "pad_id"), (bos_id, "bos_id"), (eos_id, "eos_id")))
        self.config = dict(vocab_size=V, embed_dim=E, hidden_size=H, num_heads=num_heads,
                           cell=cell)
        kw = dict(dtype=dtype, rng=self.rng)
        self.src_embed = Embedding(V, E, padding_idx=self.pad_id, **kw)
        self.tgt_embed = Embedding(V, E, padding_idx=self.pad_id, **kw)
        cls = recurrent_cell(cell)
        self.encoder = BidirectionalWrapper(cls(E, H, **kw), cls(E, H, **kw),
                                            merge_mode="concat")
        self.bridge = Linear(2 * H, H, **kw)
        self.bridge_act = Tanh(dtype=dtype)
        self.decoder = LSTMCell(E, H, **kw)
        self.attention = CrossAttention(H, num_heads, kv_dim=2 * H, **kw)
        self.out = Linear(2 * H, V, **kw)

    # ------------------------------------------------------------ encoder
    def _encode(self, src, src_len):
        xs = self.src_embed(src)                                    # (B, S, E)
        enc, (sf, sb) = self.encoder(np.ascontiguousarray(xs.transpose(1, 0, 2)),
                                     lengths=src_len)               # (S, B, 2H)
        h0 = self.bridge_act(self.bridge(np.concatenate([final_h(sf), final_h(sb)], -1)))
        ctx = np.ascontiguousarray(enc.transpose(1, 0, 2))          # (B, S, 2H)
        mask = create_padding_mask(src_len, src.shape[1])           # (B, 1, 1, S)
        return ctx, h0, mask

    def forward(self, src, src_len, tgt_in, tgt_len):
        """Teacher-forced logits ``[B, T, V]``."""
        src, tgt_in = np.asarray(src), np.asarray(tgt_in)
        ctx, h0, mask = self._encode(src, src_len)
        xt = self.tgt_embed(tgt_in).transpose(1, 0, 2)              # (T, B, E)
        c0 = np.zeros_like(h0)
        dec, _ = self.decoder.forward_sequence(np.ascontiguousarray(xt), (h0, c0),
                                               lengths=tgt_len)
        q = np.ascontiguousarray(dec.transpose(1, 0, 2))            # (B, T, H)
        a = self.attention(q, ctx, mask=mask)                       # (B, T, H)
        self._save_cache(True)
        return self.out(np.concatenate([q, a], -1))                 # (B, T, V)

    def backward(self, grad_logits):
        """Accumulate every parameter gradient; the (integer) inputs get ``None``."""
        self._pop_cache()
        H = self.config["hidden_size"]
        g_cat = self.out.backward(grad_logits)                      # (B, T, 2H)
        g_q2, g_ctx = self.attention.backward(np.ascontiguousarray(g_cat[..., H:]))
        g_dec = (g_cat[..., :H] + g_q2).transpose(1, 0, 2)          # (T, B, H)
        g_xt, (g_h0, _g_c0) = self.decoder.backward_sequence(np.ascontiguousarray(g_dec))
        self.tgt_embed.backward(g_xt.transpose(1, 0, 2))
        g_fin = self.bridge.backward(self.bridge_act.backward(g_h0))  # (B, 2H)
        cell = self.config["cell"]
        g_state = (state_grad(cell, np.ascontiguousarray(g_fin[:, :H])),
                   state_grad(cell, np.ascontiguousarray(g_fin[:, H:])))
        g_xs, _ = self.encoder.backward(g_ctx.transpose(1, 0, 2), g_state)
        self.src_embed.backward(g_xs.transpose(1, 0, 2))
        return None, None, None, None

    # ------------------------------------------------------------ decoding
    @inference_mode()
    def greedy_decode(self, src, src_len, max_len):
        """Greedy decoding with the LSTM step API and :class:`CachedCrossAttention`.

        Returns int tokens ``[B, <= max_len]`` (``eos_id`` included where produced).
        """
        H = self.config["hidden_size"]
        ctx, h0, mask = self._encode(np.asarray(src), src_len)
        cross = CachedCrossAttention(H, self.config["num_heads"], kv_dim=2 * H,
                                     dtype=self.dtype)
        cross.load_state_dict(self.attention.state_dict())
        cross.eval()
        cross.set_context(ctx)                                      # K, V projected once
        B = ctx.shape[0]
        state = (h0, np.zeros_like(h0))
        tok = np.full(B, self.bos_id, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        out = []
        try:
            for _ in range(max_len):
                h, c = self.decoder.forward(self.tgt_embed(tok), state)   # (B, H)
                a = cross.forward(h[:, None, :], mask=mask)[:, 0]           # (B, H)
                logits = self.out(np.concatenate([h, a], -1))
                tok = np.where(done, self.pad_id, logits.argmax(-1))
                out.append(tok)
                done |= tok == self.eos_id
                state = (h, c)
                if done.all():
                    break
        finally:
            self.decoder.reset()
            cross.clear_cache()
            self.clear_pending()
        return np.stack(out, axis=1)
