"""``seq2seq``: reverse (or sort) variable-length digit strings with an attentional
encoder-decoder.

Data: :mod:`nn_core.datasets.digit_strings` (train and validation sets drawn from
seeds ``10000 + seed`` and ``20000 + seed``).  Model: :class:`~nn_core.models.Seq2SeqModel`,
trained with teacher forcing and cross-entropy over the target tokens (padding
ignored).  Metrics: validation loss and token accuracy (teacher forced), and the exact
match of greedy decoding.

``Seq2SeqModel`` and the data functions are also importable from here, as in earlier
versions (checkpoints name ``nn_core.tasks.seq2seq:Seq2SeqModel``).
"""
from __future__ import annotations

import numpy as np

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
from ..losses import CrossEntropyLoss
from ..models.seq2seq import Seq2SeqModel
from ..training import Task
from ._config import as_choice, as_int, require_config

__all__ = ["Seq2SeqModel", "Seq2SeqTask", "make_examples", "encode", "decode_tokens"]


class Seq2SeqTask(Task):
    """The ``seq2seq`` task (see the module docstring); ``config`` as built by
    :meth:`config_from_args`."""

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
        return cls.check_config(dict(
            hidden=a.hidden, embed=a.embed, heads=a.heads, cell=a.cell, mode=a.mode,
            min_len=a.min_len, max_len=a.max_len, train_size=a.train_size,
            val_size=a.val_size, data_seed=a.seed))

    @classmethod
    def check_config(cls, config):
        c = require_config(config, ("hidden", "embed", "heads", "cell", "mode", "min_len",
                                    "max_len", "train_size", "val_size", "data_seed"))
        for key in ("hidden", "embed", "heads", "min_len", "train_size", "val_size"):
            as_int(c, key, 1)
        as_int(c, "max_len", c["min_len"])
        as_int(c, "data_seed", 0, flag="--seed")
        if c["hidden"] % c["heads"]:
            raise ValueError(f"--heads must divide --hidden: got {c['heads']} and "
                             f"{c['hidden']}")
        as_choice(c, "cell", ("gru", "lstm"))
        as_choice(c, "mode", ("reverse", "sort"))
        return c

    @classmethod
    def check_generate_args(cls, args, config):
        for s in args.input or ():
            if not s.isdigit() or not s.isascii():
                raise ValueError(f"--input takes strings of digits, got {s!r}")

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
            model._drop_caches()
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
