"""``lm``: a small causal transformer on generated arithmetic text, sampled with the KV cache.

Data: :mod:`nn_core.datasets.arithmetic`, a stream of additions ``"a+b=c;"`` with
``0 <= a, b < 10^digits`` at the character level; training batches are random windows
of ``block + 1`` characters, validation uses consecutive non-overlapping blocks.
Model: :class:`~nn_core.models.TransformerLM` with causal multi-head attention or, with
``--kv-groups g``, grouped-query attention.  The operands are random, so the loss has a
floor; the learnable part is the answer, measured as

* ``answer_acc``: teacher-forced accuracy on the characters after ``=`` (and the ``;``),
* ``sampled_acc``: exact match of the sums the model writes itself (greedy) after the
  prompt ``"a+b="``, decoded with the KV cache, with the decoding speed in tokens/s.

``TransformerLM``, ``TransformerBlock`` and the text functions are also importable from
here, as in earlier versions (checkpoints name ``nn_core.tasks.lm:TransformerLM``).
"""
from __future__ import annotations

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
from ..losses import CrossEntropyLoss
from ..models.transformer_lm import TransformerBlock, TransformerLM
from ..training import Task
from ._config import as_int, require_config

__all__ = ["TransformerLM", "TransformerBlock", "LanguageModelTask", "CHARS"]

#: operands up to 18 digits keep the sums in int64
MAX_DIGITS = 18


class LanguageModelTask(Task):
    """The ``lm`` task (see the module docstring); ``config`` as built by
    :meth:`config_from_args`."""

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
                       help="K/V heads for grouped-query attention (default: none, i.e. "
                            "multi-head attention)")
        p.add_argument("--digits", type=int, default=d["digits"],
                       help=f"operand digits, 1 to {MAX_DIGITS} (default: %(default)s)")
        p.add_argument("--block", type=int, default=d["block"],
                       help="context length, at least 4 * digits + 4 (default: %(default)s)")
        p.add_argument("--train-exprs", type=int, default=d["train_exprs"],
                       help="training expressions (default: %(default)s)")
        p.add_argument("--val-exprs", type=int, default=d["val_exprs"],
                       help="validation expressions (default: %(default)s)")

    @classmethod
    def config_from_args(cls, a):
        return cls.check_config(dict(
            hidden=a.hidden, heads=a.heads, layers=a.layers, kv_groups=a.kv_groups,
            digits=a.digits, block=a.block, train_exprs=a.train_exprs,
            val_exprs=a.val_exprs, data_seed=a.seed))

    @classmethod
    def check_config(cls, config):
        c = require_config(config, ("hidden", "heads", "layers", "kv_groups", "digits",
                                    "block", "train_exprs", "val_exprs", "data_seed"))
        for key in ("hidden", "heads", "layers"):
            as_int(c, key, 1)
        as_int(c, "digits", 1, MAX_DIGITS)
        as_int(c, "data_seed", 0, flag="--seed")
        if c["hidden"] % c["heads"]:
            raise ValueError(f"--heads must divide --hidden: got {c['heads']} and "
                             f"{c['hidden']}")
        if c["kv_groups"] is not None:
            as_int(c, "kv_groups", 1)
            if c["heads"] % c["kv_groups"]:
                raise ValueError(f"--kv-groups must divide --heads: got {c['kv_groups']} and "
                                 f"{c['heads']}")
        as_int(c, "block", 4 * c["digits"] + 4)
        # every expression has at least 6 characters ("0+0=0;"); the text must hold a
        # block and its next character
        need = -(-(c["block"] + 2) // 6)
        as_int(c, "train_exprs", need)
        as_int(c, "val_exprs", need)
        return c

    @classmethod
    def check_generate_args(cls, args, config):
        for p in args.prompt or ():
            bad = sorted(set(p) - set(CHARS))
            if bad or not p:
                raise ValueError(f"--prompt may only use the characters {CHARS!r}, got {p!r}")
            if len(p) >= config["block"]:
                raise ValueError(f"--prompt {p!r} does not fit the context of "
                                 f"{config['block']} characters")

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
            model._drop_caches()
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
