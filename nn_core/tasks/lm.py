"""``lm``: a small causal transformer on character-level text, sampled with the KV cache.

With ``--data FILE``: any UTF-8 text, at the character level.  The vocabulary is the
file's characters (saved in the configuration, so the checkpoint needs no file to
sample); the last ``--val-frac`` (10 %) of the text validates, in consecutive blocks.
The metric is the validation loss in bits per character (``val_bpc``), next to the
bits per character of the training text's character frequencies alone
(``unigram_bpc``).  ``nn-core generate --prompt`` continues a prompt, re-filling the KV
cache with the last half block whenever the context is full.

Without ``--data``:

Data: :mod:`nn_core.datasets.arithmetic`, a stream of additions ``"a+b=c;"`` with
``0 <= a, b < 10^digits`` at the character level; training batches are random windows
of ``block + 1`` characters, validation uses consecutive non-overlapping blocks.
Model: :class:`~nn_core.models.TransformerLM` with causal multi-head attention or, with
``--kv-groups g``, grouped-query attention.  The operands are random, so the loss has a
floor; the learnable part is the answer, measured as

* ``answer_acc``: teacher-forced accuracy on the characters after ``=`` (and the ``;``),
* ``sampled_acc``: exact match of the sums the model writes itself (greedy) after the
  prompt ``"a+b="``, decoded with the KV cache, with the decoding speed in tokens/s.
"""
from __future__ import annotations

import math

import numpy as np

from ..datasets.arithmetic import CHARS, SEP, answer_mask, decode_text, encode_text, make_text
from ..datasets.files import read_text
from ..datasets.vocab import CharVocab
from ..losses import CrossEntropyLoss
from ..models.transformer_lm import TransformerLM
from ..training import Batch
from .._validation import check_int, check_real
from ._command import CommandTask, Option
from ._config import (check_common, check_declared, check_source, check_vocab, checked,
                      require_config)
from ._data import data_identity, split_point, verify_identity

__all__ = ["LanguageModelTask"]

#: operands up to 18 digits keep the sums in int64
MAX_DIGITS = 18
#: the longest context, the most blocks and heads, the most expressions of a set
MAX_BLOCK = 4096
MAX_LAYERS = 256
MAX_HEADS = 256
MAX_EXPRS = 2_000_000
_ARITH_KEYS = ("digits", "train_exprs", "val_exprs")
_FILE_KEYS = ("data", "data_sha256", "vocab", "val_frac")


class LanguageModelTask(CommandTask):
    """``nn-core train lm``: a :class:`~nn_core.models.TransformerLM` on generated
    arithmetic or on the characters of a text file (see the module docstring)."""

    name = "lm"
    description = ("small causal transformer (MHA or GQA) on generated arithmetic text or on a "
                   "UTF-8 text file (--data)")
    defaults = dict(epochs=8, batch_size=32, lr=3e-3, hidden=64)

    train_options = (
        Option("--heads", "attention heads", 4, type=int, bounds=(1, MAX_HEADS)),
        Option("--layers", "transformer blocks", 2, type=int, bounds=(1, MAX_LAYERS)),
        Option("--kv-groups", "K/V heads for grouped-query attention", dest="num_kv_groups",
               type=int, metavar="G", default_text="none, i.e. multi-head attention",
               bounds=(1, MAX_HEADS)),
        Option("--data", "train on this UTF-8 text, character by character", metavar="FILE",
               type=str, default_text="generated 'a+b=c;' arithmetic"),
        Option("--val-frac", "--data: the last fraction of the text validates, in (0, 0.5]",
               0.1, type=float, data="file", bounds=(0.0, 0.5), lo_open=True),
        Option("--digits", f"operand digits, 1 to {MAX_DIGITS}", 1, type=int, data="generated",
               bounds=(1, MAX_DIGITS)),
        Option("--block", f"context length, at least 4 * digits + 4, at most {MAX_BLOCK}", 48,
               type=int, bounds=(2, MAX_BLOCK)),
        Option("--train-exprs", "training expressions", 20000, type=int, data="generated",
               bounds=(1, MAX_EXPRS)),
        Option("--val-exprs", "validation expressions", 2000, type=int, data="generated",
               bounds=(1, MAX_EXPRS)),
    )
    generate_options = (
        Option("--prompt", "prompts to continue", nargs="+",
               default_text="--num random 'a+b=' prompts, or snippets of the validation "
                            "text"),
        Option("--max-new-tokens", "tokens to sample after a --prompt", type=int,
               default_text="32; 200 for models trained with --data"),
        Option("--temperature", "0 = greedy, else the softmax temperature", type=float,
               default_text="0; 0.8 for models trained with --data"),
    )

    @classmethod
    def config_from_args(cls, a):
        c = dict(hidden=a.hidden, heads=a.heads, layers=a.layers, num_kv_groups=a.num_kv_groups,
                 block=a.block, data_seed=a.seed, **dict.fromkeys(_FILE_KEYS))
        if a.data is None:
            return cls.check_config(dict(c, digits=a.digits, train_exprs=a.train_exprs,
                                         val_exprs=a.val_exprs))
        c.update(dict.fromkeys(_ARITH_KEYS), val_frac=a.val_frac, **data_identity(a.data))
        checked(c, "val_frac", check_real, 0.0, 0.5, lo_open=True)
        checked(c, "block", check_int, 2)
        text = read_text(a.data)                   # messages name the file as given
        c["vocab"] = CharVocab.from_text(text).chars
        n_train = split_point(len(text), c["val_frac"])
        n_val = len(text) - n_train
        B = c["block"]
        if n_train < B + 2 or n_val < B + 1:
            raise ValueError(f"--block {B} needs at least {B + 2} characters of training and "
                             f"{B + 1} of validation text; {c['data']} has {len(text)} "
                             f"characters, the last {n_val} validate (--val-frac "
                             f"{c['val_frac']:g})")
        return cls.check_config(c)

    @classmethod
    def check_config(cls, config):
        c = require_config(config,
                           ("hidden", "heads", "layers", "num_kv_groups", "block", "data_seed")
                           + _ARITH_KEYS + _FILE_KEYS)
        check_declared(c, cls.train_options)
        check_common(c, ("hidden", "heads", "layers"))
        if c["num_kv_groups"] is not None:
            checked(c, "num_kv_groups", check_int, 1, flag="--kv-groups")
            if c["heads"] % c["num_kv_groups"]:
                raise ValueError(f"--kv-groups must divide --heads: got {c['num_kv_groups']} "
                                 f"and {c['heads']}")
        if check_source(c, _ARITH_KEYS, _FILE_KEYS):
            checked(c, "block", check_int, 2)
            check_vocab(c)
            return c
        checked(c, "digits", check_int, 1, MAX_DIGITS)
        checked(c, "block", check_int, 4 * c["digits"] + 4)
        # every expression has at least 6 characters ("0+0=0;"); the text must hold a
        # block and its next character
        need = -(-(c["block"] + 2) // 6)
        checked(c, "train_exprs", check_int, need)
        checked(c, "val_exprs", check_int, need)
        return c

    @classmethod
    def check_generate_args(cls, args, config):
        if args.max_new_tokens is not None:
            check_int(args.max_new_tokens, "--max-new-tokens", 1)
        if args.temperature is not None:
            check_real(args.temperature, "--temperature", 0.0)
        vocab = CharVocab(config["vocab"]) if config.get("data") else None
        for p in args.prompt or ():
            if vocab is not None:
                bad = vocab.unknown(p)
                if not p or bad:
                    raise ValueError(f"--prompt {p!r:.40}: " + (
                        f"character {bad[1]!r} (column {bad[0] + 1}) is not in the model's "
                        "vocabulary" if p else "empty prompt"))
                continue
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
        self.vocab = None
        if c["data"] is not None:
            verify_identity(c)
            text = read_text(c["data"])
            self.vocab = CharVocab(c["vocab"])
            n_train = split_point(len(text), c["val_frac"])
            self.train_ids = self.vocab.encode(text[:n_train])
            self.val_text = text[n_train:]
            self.val_ids = self.vocab.encode(self.val_text)
            self.headline = ("val_bpc", False)
        else:
            self.train_ids = encode_text(make_text(c["train_exprs"], c["digits"], 30_000 + s))
            self.val_text = make_text(c["val_exprs"], c["digits"], 40_000 + s)
            self.val_ids = encode_text(self.val_text)
        B = c["block"]
        # validation: consecutive, non-overlapping blocks
        n = (len(self.val_ids) - 1) // B
        idx = np.arange(n)[:, None] * B + np.arange(B + 1)[None, :]
        self.val_blocks = self.val_ids[idx]
        if self.vocab is not None:
            # cross-entropy of the validation targets under the training text's
            # character frequencies (add-one smoothed)
            counts = np.bincount(self.train_ids, minlength=len(self.vocab)) + 1.0
            logp = np.log2(counts / counts.sum())
            self.unigram_bpc = float(-logp[self.val_blocks[:, 1:]].mean())

    def build_model(self, dtype, rng):
        c = self.config
        V = len(self.vocab) if self.vocab is not None else len(CHARS)
        return TransformerLM(V, c["hidden"], c["heads"], c["layers"], c["num_kv_groups"],
                             max_len=c["block"], dtype=dtype, rng=rng)

    def describe_data(self):
        if self.vocab is None:
            return "generated"
        return (f"{self.config['data']}: {len(self.train_ids) + len(self.val_ids):,} characters, "
                f"{len(self.vocab)} distinct; the last {len(self.val_ids):,} validate")

    def describe_metrics(self, m):
        c = self.config
        attn = ("MHA" if c["num_kv_groups"] in (None, c["heads"])
                else f"GQA with {c['num_kv_groups']} K/V groups")
        if self.vocab is not None:
            return (f"validation {m['val_bpc']:.3f} bits per character (loss {m['val_loss']:.4f}"
                    f" nats, next-character accuracy {100 * m['val_acc']:.1f}%) on "
                    f"{self.val_blocks[:, 1:].size:,} characters; character frequencies alone: "
                    f"{m['unigram_bpc']:.3f} bits ({attn})")
        return (f"sampled sums correct {100 * m['sampled_acc']:.1f}% ({c['digits']}-digit "
                f"operands, greedy, KV cache, {m['tokens_per_s']:.0f} tokens/s), answer-token "
                f"accuracy {100 * m['answer_acc']:.1f}%, validation loss {m['val_loss']:.4f} "
                f"({attn})")

    def num_batches(self, batch_size):
        return max(1, len(self.train_ids) // (batch_size * self.config["block"]))

    def train_batches(self, rng, batch_size):
        """Random windows of ``block + 1`` characters: the first ``block`` in, each
        one's next character the target."""
        Bl = self.config["block"]
        for _ in range(self.num_batches(batch_size)):
            start = rng.integers(0, len(self.train_ids) - Bl - 1, size=batch_size)
            win = self.train_ids[start[:, None] + np.arange(Bl + 1)[None, :]]
            yield Batch((win[:, :-1],), win[:, 1:])

    #: the trainer counts the next-token accuracy of the training batches
    metrics = ("accuracy",)

    def loss(self, dtype):
        return CrossEntropyLoss(dtype=dtype)

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

    #: the metric of the summary line, and whether larger is better
    headline = ("sampled_acc", True)

    def evaluate(self, model, batch_size=64):
        loss_fn = CrossEntropyLoss(reduction="sum", dtype=model.dtype)
        tot = 0.0
        n_tok = correct = count = 0
        for i in range(0, len(self.val_blocks), batch_size):
            blk = self.val_blocks[i:i + batch_size]
            logits = model(blk[:, :-1])
            model.clear_pending()
            tot += float(loss_fn(logits, blk[:, 1:]))
            n_tok += blk[:, 1:].size
            ans = answer_mask(blk)[:, 1:] if self.vocab is None else np.ones(blk[:, 1:].shape,
                                                                              bool)
            correct += int(((logits.argmax(-1) == blk[:, 1:]) & ans).sum())
            count += int(ans.sum())
        if self.vocab is not None:
            return {"val_loss": tot / n_tok, "val_bpc": tot / n_tok / math.log(2),
                    "val_acc": correct / count, "unigram_bpc": self.unigram_bpc}
        seed = 50_000 + int(self.config.get("data_seed", 0))
        acc, tps, _ = self._sample_answers(model, 200, seed)
        return {"val_loss": tot / n_tok, "answer_acc": correct / count, "sampled_acc": acc,
                "tokens_per_s": tps}

    def generate(self, model, args, out=print):
        model.eval()
        c = self.config
        if self.vocab is not None:
            return self._generate_text(model, args, out)
        args.temperature = args.temperature or 0.0
        args.max_new_tokens = args.max_new_tokens or 32
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

    def _generate_text(self, model, args, out):
        """Continue ``--prompt`` (default: ``--num`` snippets of the validation text)."""
        B = self.config["block"]
        rng = np.random.default_rng(args.seed)
        temperature = 0.8 if args.temperature is None else args.temperature
        n_new = 200 if args.max_new_tokens is None else args.max_new_tokens
        prompts = args.prompt
        if not prompts:
            keep = max(1, B // 2)
            starts = rng.integers(0, max(1, len(self.val_text) - keep), size=args.num)
            prompts = [self.val_text[s:s + keep] for s in starts]
        for p in prompts:
            toks, secs = _sample(model, self.vocab.encode(p), n_new, temperature, rng, B)
            out(f"{p}|{self.vocab.decode(toks)}")
            out(f"    ({len(toks)} characters, {len(toks) / max(secs, 1e-9):.0f} tokens/s, "
                f"temperature {temperature:g}, KV cache)")



def _sample(model, ids, n, temperature, rng, block):
    """Continue ``ids [P]`` by ``n`` tokens with :meth:`TransformerLM.generate` (KV
    cache); when the context is full, the cache is refilled from the last half block.

    Returns ``(tokens [n], seconds)``.
    """
    ctx = list(ids[-(block - 1):])
    keep = max(1, block // 2)
    new, secs = [], 0.0
    while len(new) < n:
        toks, t = model.generate(np.array(ctx)[None], n - len(new), temperature, rng)
        secs += t
        new.extend(int(v) for v in toks[0])
        ctx = (ctx + list(toks[0]))[-keep:]
    return np.array(new, dtype=np.int64), secs
