"""``lm``: a small causal transformer on generated arithmetic text, sampled with the KV cache.

Text: :mod:`nn_core.datasets.arithmetic`, a stream of additions ``"a+b=c;"`` with
``0 <= a, b < 10^digits`` at the character level (vocabulary ``0-9 + = ;``).  The
operands are random, so the loss has a floor; the learnable part is the answer,
measured as

* ``answer_acc``: teacher-forced accuracy on the characters after ``=`` (and the ``;``),
* ``sampled_acc``: exact match of the sums the model writes itself (greedy) after the
  prompt ``"a+b="``, decoded with the KV cache, with the decoding speed in tokens/s.

Model: GPT-style pre-LayerNorm blocks (Radford et al., 2019): token + learned position
embeddings; per block ``x += attn(LN(x))`` with causal
:class:`~nn_core.attention.MultiHeadAttention` or, with ``--kv-groups g``,
:class:`~nn_core.attention.GroupedQueryAttention` (Ainslie et al., 2023), then
``x += W2 GELU(W1 LN(x))``; a final LayerNorm and a linear head.
"""
from __future__ import annotations

import time

import numpy as np

from ..datasets.arithmetic import (  # noqa: F401  (re-exported)
    CHARS,
    SEP,
    STOI,
    answer_mask,
    decode_text,
    encode_text,
    make_text,
)
from ..layers import GELU, Embedding, LayerNorm, Linear, Sequential
from ..losses import CrossEntropyLoss
from ..module import Module, ModuleList
from ..training import Task

__all__ = ["TransformerLM", "TransformerBlock", "LanguageModelTask", "CHARS"]

def _attention(d_model, num_heads, kv_groups, dtype, rng):
    from ..attention import GroupedQueryAttention, MultiHeadAttention

    if kv_groups is None or kv_groups == num_heads:
        return MultiHeadAttention(d_model, num_heads, dtype=dtype, rng=rng)
    return GroupedQueryAttention(d_model, num_heads, kv_groups, dtype=dtype, rng=rng)


class TransformerBlock(Module):
    r"""Pre-LN transformer block: ``x + attn(LN1 x)``, then ``+ MLP(LN2 .)``.

    Parameters: ``ln1.*``, ``attn.W_q ...``, ``ln2.*``, ``mlp.0.W ... mlp.2.b``.
    Backward follows the two residual branches in reverse:
    ``g += LN2'(MLP'(g))``, then ``g += LN1'(attn'(g))``.
    """

    def __init__(self, d_model, num_heads, kv_groups=None, mlp_ratio=4, *, dtype=np.float32,
                 rng=None):
        super().__init__(dtype=dtype, rng=rng)
        kw = dict(dtype=dtype, rng=self.rng)
        self.ln1 = LayerNorm(d_model, dtype=dtype)
        self.attn = _attention(d_model, num_heads, kv_groups, dtype, self.rng)
        self.ln2 = LayerNorm(d_model, dtype=dtype)
        self.mlp = Sequential(Linear(d_model, mlp_ratio * d_model, **kw),
                              GELU("tanh", dtype=dtype),
                              Linear(mlp_ratio * d_model, d_model, **kw))

    def forward(self, x, kv_cache=None):
        """``x [B, L, d]`` -> ``[B, L, d]``; with ``kv_cache``: incremental decoding."""
        x = x + self.attn(self.ln1(x), is_causal=True, kv_cache=kv_cache)
        x = x + self.mlp(self.ln2(x))
        self._cache = True if kv_cache is None else None   # no backward after decoding
        return x

    def backward(self, grad_output):
        self._pop_cache()
        g = grad_output + self.ln2.backward(self.mlp.backward(grad_output))
        gq = self.attn.backward(g)[0]
        return g + self.ln1.backward(gq)


class TransformerLM(Module):
    r"""Causal character language model.

    Parameters
    ----------
    vocab_size : int
    d_model : int
    num_heads : int
    num_layers : int
    kv_groups : int or None
        ``None`` (or ``num_heads``): multi-head attention; otherwise grouped-query
        attention with this many K/V heads (1 = multi-query).
    max_len : int
        Longest context (learned position embeddings).
    dtype, rng : keyword-only

    Shapes: ``ids [B, L]`` ints -> ``logits [B, L, V]``.
    """

    def __init__(self, vocab_size=len(CHARS), d_model=64, num_heads=4, num_layers=2,
                 kv_groups=None, max_len=64, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.max_len = max_len
        self.d_model = d_model
        kw = dict(dtype=dtype, rng=self.rng)
        self.tok_embed = Embedding(vocab_size, d_model, **kw)
        self.pos_embed = Embedding(max_len, d_model, **kw)
        self.tok_embed.params["W"] *= 0.1
        self.pos_embed.params["W"] *= 0.1
        self.blocks = ModuleList([TransformerBlock(d_model, num_heads, kv_groups, **kw)
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
        self._cache = True if kv_caches is None else None
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
        return [blk.attn.new_kv_cache(batch_size, self.max_len) for blk in self.blocks]

    def generate(self, prompt_ids, max_new_tokens, temperature=0.0, rng=None, stop=None):
        """Continue ``prompt_ids [B, P]`` by ``max_new_tokens`` tokens with the KV cache.

        The prompt is processed in one forward (prefill); each new token then costs one
        forward of length 1 attending to everything cached.  Returns
        ``(tokens [B, <= max_new_tokens], seconds)``.
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
                tok = np.array([rng.choice(len(row), p=row.astype(np.float64) / row.sum())
                                for row in p])
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
        for m in self.modules():
            m._cache = None
        return np.stack(out, axis=1), seconds


class LanguageModelTask(Task):
    name = "lm"
    description = "small causal transformer (MHA or GQA) on generated arithmetic text"
    defaults = dict(epochs=8, batch_size=32, lr=3e-3, hidden=64, heads=4, layers=2,
                    kv_groups=None, digits=1, block=48, train_exprs=20000, val_exprs=2000)
    headline = ("sampled_acc", True)

    @classmethod
    def add_arguments(cls, p):
        d = cls.defaults
        p.add_argument("--heads", type=int, default=d["heads"],
                       help="attention heads (default: %(default)s)")
        p.add_argument("--layers", type=int, default=d["layers"],
                       help="transformer blocks (default: %(default)s)")
        p.add_argument("--kv-groups", type=int, default=d["kv_groups"],
                       help="K/V heads for grouped-query attention (default: MHA)")
        p.add_argument("--digits", type=int, default=d["digits"],
                       help="operand digits (default: %(default)s)")
        p.add_argument("--block", type=int, default=d["block"],
                       help="context length (default: %(default)s)")
        p.add_argument("--train-exprs", type=int, default=d["train_exprs"],
                       help="default: %(default)s")
        p.add_argument("--val-exprs", type=int, default=d["val_exprs"],
                       help="default: %(default)s")

    @classmethod
    def config_from_args(cls, a):
        if a.hidden % a.heads:
            raise ValueError(f"--heads must divide --hidden: got {a.heads} and {a.hidden}")
        if a.kv_groups is not None and (a.kv_groups < 1 or a.heads % a.kv_groups):
            raise ValueError(f"--kv-groups must divide --heads: got {a.kv_groups} and {a.heads}")
        if a.block < 4 * a.digits + 4:
            raise ValueError(f"--block must hold one expression: >= {4 * a.digits + 4}")
        return dict(hidden=a.hidden, heads=a.heads, layers=a.layers, kv_groups=a.kv_groups,
                    digits=a.digits, block=a.block, train_exprs=a.train_exprs,
                    val_exprs=a.val_exprs, data_seed=a.seed)

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        s = int(c.get("data_seed", 0))
        self.train_ids = encode_text(make_text(c["train_exprs"], c["digits"], 30_000 + s))
        self.val_text = make_text(c["val_exprs"], c["digits"], 40_000 + s)
        self.val_ids = encode_text(self.val_text)
        B = c["block"]
        # validation: consecutive, non-overlapping blocks
        n = (len(self.val_ids) - 1) // B
        idx = np.arange(n)[:, None] * B + np.arange(B + 1)[None, :]
        self.val_blocks = self.val_ids[idx]

    def build_model(self, dtype, rng):
        c = self.config
        return TransformerLM(len(CHARS), c["hidden"], c["heads"], c["layers"], c["kv_groups"],
                             max_len=c["block"], dtype=dtype, rng=rng)

    def num_batches(self, batch_size):
        return max(1, len(self.train_ids) // (batch_size * self.config["block"]))

    def train_batches(self, rng, batch_size):
        Bl = self.config["block"]
        for _ in range(self.num_batches(batch_size)):
            start = rng.integers(0, len(self.train_ids) - Bl - 1, size=batch_size)
            yield self.train_ids[start[:, None] + np.arange(Bl + 1)[None, :]]

    def train_step(self, model, batch):
        x, y = batch[:, :-1], batch[:, 1:]
        loss_fn = CrossEntropyLoss(dtype=model.dtype)
        logits = model(x)
        loss = loss_fn(logits, y)
        model.backward(loss_fn.backward()[0])
        ans = answer_mask(batch)[:, 1:]
        correct = int(((logits.argmax(-1) == y) & ans).sum())
        return {"loss": float(loss), "correct": correct, "count": int(ans.sum()),
                "samples": len(x)}

    def _sample_answers(self, model, n, seed):
        """Greedy answers to ``n`` fresh prompts ``"a+b="``; returns (acc, tokens/s, examples)."""
        c = self.config
        rng = np.random.default_rng(seed)
        hi = 10 ** c["digits"]
        a, b = rng.integers(0, hi, n), rng.integers(0, hi, n)
        # prompts are left-padded to one length so the batch decodes together: a complete
        # expression as lead-in (the context the model is used to), then ';' fillers
        lead = make_text(1, c["digits"], seed + 1)
        prompts = [f"{x}+{y}=" for x, y in zip(a, b)]
        width = max(len(p) for p in prompts)
        texts = [lead + ";" * (width - len(p)) + p for p in prompts]
        ids = np.stack([encode_text(t) for t in texts])
        toks, secs = model.generate(ids, c["digits"] + 2, stop=SEP)
        outs = [decode_text(row).split(";")[0] for row in toks]
        ok = [o == str(x + y) for o, x, y in zip(outs, a, b)]
        return float(np.mean(ok)), toks.size / max(secs, 1e-9), list(zip(prompts, outs, ok))

    def evaluate(self, model, batch_size=64):
        loss_fn = CrossEntropyLoss(reduction="sum", dtype=model.dtype)
        tot = 0.0
        n_tok = correct = count = 0
        for i in range(0, len(self.val_blocks), batch_size):
            blk = self.val_blocks[i:i + batch_size]
            logits = model(blk[:, :-1])
            for m in model.modules():
                m._cache = None
            tot += float(loss_fn(logits, blk[:, 1:]))
            n_tok += blk[:, 1:].size
            ans = answer_mask(blk)[:, 1:]
            correct += int(((logits.argmax(-1) == blk[:, 1:]) & ans).sum())
            count += int(ans.sum())
        seed = 50_000 + int(self.config.get("data_seed", 0))
        acc, tps, _ = self._sample_answers(model, 200, seed)
        return {"val_loss": tot / n_tok, "answer_acc": correct / count, "sampled_acc": acc,
                "tokens_per_s": tps}

    def describe_metrics(self, m):
        c = self.config
        attn = ("MHA" if c["kv_groups"] in (None, c["heads"])
                else f"GQA with {c['kv_groups']} K/V groups")
        return (f"sampled sums correct {100 * m['sampled_acc']:.1f}% ({c['digits']}-digit "
                f"operands, greedy, KV cache, {m['tokens_per_s']:.0f} tokens/s), answer-token "
                f"accuracy {100 * m['answer_acc']:.1f}%, validation loss {m['val_loss']:.4f} "
                f"({attn})")

    def generate(self, model, args, out=print):
        model.eval()
        c = self.config
        if args.prompt:
            for p in args.prompt:
                ids = encode_text(p)[None, :]
                if ids.shape[1] >= c["block"]:
                    raise ValueError(f"prompt longer than the context ({c['block']} chars)")
                rng = np.random.default_rng(args.seed)
                toks, secs = model.generate(ids, args.max_new_tokens, args.temperature, rng)
                out(f"{p}|{decode_text(toks[0])}    ({toks.size / max(secs, 1e-9):.0f} tokens/s)")
            return
        acc, tps, examples = self._sample_answers(model, args.num, args.seed)
        for p, o, ok in examples:
            out(f"{p}{o:<{c['digits'] + 2}} {'ok' if ok else 'WRONG'}")
        out(f"{sum(e[2] for e in examples)}/{len(examples)} correct, {tps:.0f} tokens/s "
            "(greedy, KV cache)")
