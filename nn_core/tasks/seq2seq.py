"""``seq2seq``: reverse (or sort) variable-length digit strings with an attentional encoder-decoder.

Model (Bahdanau et al., 2015; Luong et al., 2015 "attention on top"):

* encoder: token embedding, bidirectional GRU (or LSTM) over the source with its
  lengths -> ``enc [S, B, 2H]``;
* bridge: ``h0 = tanh([h_fw; h_bw] W_b + b_b)`` initialises the decoder;
* decoder: :class:`~nn_core.recurrent.LSTMCell` over the shifted target (teacher
  forcing, one ``forward_sequence`` call) -> ``dec [B, T, H]``;
* :class:`~nn_core.attention.CrossAttention`: ``a = attn(dec, enc)`` with a padding
  mask on the source;
* output: ``logits = [dec; a] W_o + b_o`` over the vocabulary, cross-entropy with
  the padding ignored.

Greedy decoding runs the decoder one step at a time (``LSTMCell.forward``) and
attends with :class:`~nn_core.attention.CachedCrossAttention`, whose keys/values
are projected once per source batch.

Data: :mod:`nn_core.datasets.digit_strings` (vocabulary ``0`` PAD, ``1`` BOS, ``2`` EOS,
``3..12`` the digits 0-9).
"""
from __future__ import annotations

import numpy as np

from ..attention import create_padding_mask
from ..datasets.digit_strings import (  # noqa: F401  (re-exported)
    BOS,
    EOS,
    OFFSET,
    PAD,
    VOCAB,
    decode_tokens,
    encode,
    make_examples,
    pad_batch,
    transform,
)
from ..layers import Embedding, Linear, Tanh
from ..losses import CrossEntropyLoss
from ..module import Module
from ._components import BidirectionalEncoder, final_h, state_grad
from ..training import Task

__all__ = ["Seq2SeqModel", "Seq2SeqTask", "make_examples", "encode", "decode_tokens"]

class Seq2SeqModel(Module):
    r"""Attentional encoder-decoder over token ids (see the module docstring).

    Parameters
    ----------
    vocab_size : int
        ``V`` (shared by source and target).
    embed_dim : int
        ``E``.
    hidden_size : int
        ``H``: each encoder direction, the decoder, and the attention ``d_model``.
    num_heads : int
        Heads of the cross attention (must divide ``H``).
    cell : {"gru", "lstm"}
        Encoder cell.
    dtype, rng : keyword-only

    Shapes: ``src [B, S]``, ``src_len [B]``, ``tgt_in [B, T]``, ``tgt_len [B]`` (ints),
    ``logits [B, T, V]``.
    """

    def __init__(self, vocab_size=VOCAB, embed_dim=32, hidden_size=64, num_heads=4, cell="gru",
                 *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        from ..attention import CrossAttention
        from ..recurrent import LSTMCell

        V, E, H = vocab_size, embed_dim, hidden_size
        if H % num_heads:
            raise ValueError(f"num_heads must divide hidden_size: got {num_heads} and {H}")
        self.config = dict(vocab_size=V, embed_dim=E, hidden_size=H, num_heads=num_heads,
                           cell=cell)
        kw = dict(dtype=dtype, rng=self.rng)
        self.src_embed = Embedding(V, E, padding_idx=PAD, **kw)
        self.tgt_embed = Embedding(V, E, padding_idx=PAD, **kw)
        self.encoder = BidirectionalEncoder(cell, E, H, **kw)
        self.bridge = Linear(2 * H, H, **kw)
        self.bridge_act = Tanh(dtype=dtype)
        self.decoder = LSTMCell(E, H, **kw)
        self.attention = CrossAttention(H, num_heads, kv_dim=2 * H, **kw)
        self.out = Linear(2 * H, V, **kw)

    # ------------------------------------------------------------ encoder
    def _encode(self, src, src_len):
        xs = self.src_embed(src)                                    # (B, S, E)
        enc, (sf, sb) = self.encoder(np.ascontiguousarray(xs.transpose(1, 0, 2)), src_len)
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
        self._cache = True
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
    def greedy_decode(self, src, src_len, max_len):
        """Greedy decoding with the LSTM step API and :class:`CachedCrossAttention`.

        Returns int tokens ``[B, <= max_len]`` (EOS included where produced).
        """
        from ..attention import CachedCrossAttention

        H = self.config["hidden_size"]
        ctx, h0, mask = self._encode(np.asarray(src), src_len)
        cross = CachedCrossAttention(H, self.config["num_heads"], kv_dim=2 * H,
                                     dtype=self.dtype)
        cross.load_state_dict(self.attention.state_dict())
        cross.eval()
        cross.set_context(ctx)                                      # K, V projected once
        B = ctx.shape[0]
        state = (h0, np.zeros_like(h0))
        tok = np.full(B, BOS, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        out = []
        try:
            for _ in range(max_len):
                h, c = self.decoder.forward(self.tgt_embed(tok), state)   # (B, H)
                a = cross.forward(h[:, None, :], mask=mask)[:, 0]           # (B, H)
                logits = self.out(np.concatenate([h, a], -1))
                tok = np.where(done, PAD, logits.argmax(-1))
                out.append(tok)
                done |= tok == EOS
                state = (h, c)
                if done.all():
                    break
        finally:
            self.decoder.reset()
            cross.clear_cache()
            for m in self.modules():
                m._cache = None
        return np.stack(out, axis=1)


class Seq2SeqTask(Task):
    name = "seq2seq"
    description = "reverse or sort digit strings (bidirectional encoder, LSTM decoder + attention)"
    defaults = dict(epochs=6, batch_size=64, lr=1e-2, hidden=96, embed=32, heads=4, cell="gru",
                    mode="reverse", min_len=5, max_len=20, train_size=12800, val_size=1000)
    headline = ("exact_match", True)

    @classmethod
    def add_arguments(cls, p):
        d = cls.defaults
        p.add_argument("--mode", choices=["reverse", "sort"], default=d["mode"],
                       help="target = the digits reversed or sorted (default: %(default)s)")
        p.add_argument("--cell", choices=["gru", "lstm"], default=d["cell"],
                       help="encoder cell (default: %(default)s)")
        p.add_argument("--embed", type=int, default=d["embed"],
                       help="embedding size (default: %(default)s)")
        p.add_argument("--heads", type=int, default=d["heads"],
                       help="cross-attention heads (default: %(default)s)")
        p.add_argument("--min-len", type=int, default=d["min_len"], help="default: %(default)s")
        p.add_argument("--max-len", type=int, default=d["max_len"], help="default: %(default)s")
        p.add_argument("--train-size", type=int, default=d["train_size"],
                       help="default: %(default)s")
        p.add_argument("--val-size", type=int, default=d["val_size"], help="default: %(default)s")

    @classmethod
    def config_from_args(cls, a):
        if not 1 <= a.min_len <= a.max_len:
            raise ValueError(f"need 1 <= --min-len <= --max-len, got {a.min_len}, {a.max_len}")
        return dict(hidden=a.hidden, embed=a.embed, heads=a.heads, cell=a.cell, mode=a.mode,
                    min_len=a.min_len, max_len=a.max_len, train_size=a.train_size,
                    val_size=a.val_size, data_seed=a.seed)

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        s = int(c.get("data_seed", 0))
        self.train_src, self.train_tgt = make_examples(c["train_size"], c["min_len"],
                                                       c["max_len"], c["mode"], 10_000 + s)
        self.val_src, self.val_tgt = make_examples(c["val_size"], c["min_len"], c["max_len"],
                                                   c["mode"], 20_000 + s)
        self.loss = None

    def build_model(self, dtype, rng):
        c = self.config
        self.loss = CrossEntropyLoss(ignore_index=PAD, dtype=dtype)
        return Seq2SeqModel(VOCAB, c["embed"], c["hidden"], c["heads"], c["cell"],
                            dtype=dtype, rng=rng)

    def num_batches(self, batch_size):
        return max(1, len(self.train_src) // batch_size)

    def train_batches(self, rng, batch_size):
        order = rng.permutation(len(self.train_src))
        for i in range(self.num_batches(batch_size)):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield pad_batch([self.train_src[j] for j in idx], [self.train_tgt[j] for j in idx])

    def train_step(self, model, batch):
        src, src_len, tin, tout, tgt_len = batch
        if self.loss is None or self.loss.dtype != model.dtype:
            self.loss = CrossEntropyLoss(ignore_index=PAD, dtype=model.dtype)
        logits = model(src, src_len, tin, tgt_len)
        loss = self.loss(logits, tout)
        g, _ = self.loss.backward()
        model.backward(g)
        keep = tout != PAD
        correct = int(((logits.argmax(-1) == tout) & keep).sum())
        return {"loss": float(loss), "correct": correct, "count": int(keep.sum()),
                "samples": len(src)}

    def evaluate(self, model, batch_size=500):
        """Validation loss, token accuracy (teacher forcing) and greedy exact match."""
        loss_fn = CrossEntropyLoss(ignore_index=PAD, reduction="sum", dtype=model.dtype)
        tot_loss = 0.0
        tokens = correct_tok = exact = 0
        for i in range(0, len(self.val_src), batch_size):
            src_l = self.val_src[i:i + batch_size]
            tgt_l = self.val_tgt[i:i + batch_size]
            src, src_len, tin, tout, tgt_len = pad_batch(src_l, tgt_l)
            logits = model(src, src_len, tin, tgt_len)
            model._cache = None
            for m in model.modules():
                m._cache = None
            tot_loss += float(loss_fn(logits, tout))
            keep = tout != PAD
            tokens += int(keep.sum())
            correct_tok += int(((logits.argmax(-1) == tout) & keep).sum())
            pred = model.greedy_decode(src, src_len, max_len=tout.shape[1] + 1)
            for b, t in enumerate(tgt_l):
                exact += decode_tokens(pred[b]) == decode_tokens(list(t) + [EOS])
        n = len(self.val_src)
        return {"val_loss": tot_loss / tokens, "val_token_acc": correct_tok / tokens,
                "exact_match": exact / n}

    def describe_metrics(self, m):
        return (f"validation exact match {100 * m['exact_match']:.1f}% "
                f"(token accuracy {100 * m['val_token_acc']:.1f}%, loss {m['val_loss']:.4f}) "
                f"on {len(self.val_src)} held-out {self.config['mode']} examples of length "
                f"{self.config['min_len']}-{self.config['max_len']}")

    def generate(self, model, args, out=print):
        model.eval()
        c = self.config
        if args.input:
            srcs = [encode(s) for s in args.input]
        else:
            rng = np.random.default_rng(args.seed)
            srcs, _ = make_examples(args.num, c["min_len"], c["max_len"], c["mode"],
                                    int(rng.integers(1 << 30)))
        src, src_len = pad_batch(srcs)
        pred = model.greedy_decode(src, src_len, max_len=int(src_len.max()) + 2)
        ok = 0
        for b, s in enumerate(srcs):
            want = decode_tokens(transform(c["mode"], s))
            got = decode_tokens(pred[b])
            ok += got == want
            out(f"{decode_tokens(s):>{c['max_len']}} -> {got:<{c['max_len']}} "
                f"{'ok' if got == want else 'WRONG (expected ' + want + ')'}")
        out(f"{ok}/{len(srcs)} correct ({c['mode']})")
