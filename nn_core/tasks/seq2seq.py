"""``seq2seq``: map source strings to target strings with an attentional encoder-decoder.

Data: reversed or sorted digit strings (:mod:`nn_core.datasets.digit_strings`; train and
validation sets drawn from seeds ``10000 + seed`` and ``20000 + seed``), or pairs of your
own (``--data PAIRS.tsv``: one ``source<TAB>target`` per line, read by
:func:`~nn_core.datasets.files.read_pairs`) at the character level, with a vocabulary
of their characters saved in the configuration; ``--val-frac`` (10 %) of the pairs,
drawn with ``--seed``, validate.  Model: :class:`~nn_core.models.Seq2SeqModel`, trained
with teacher forcing and cross-entropy over the target tokens (padding ignored).
Metrics: validation loss and token accuracy (teacher forced), and the exact match of
greedy decoding.  ``nn-core generate --input-file`` decodes a file of sources.
"""
from __future__ import annotations

import os

import numpy as np

from ..datasets.digit_strings import (BOS, EOS, OFFSET, PAD, VOCAB, decode_tokens, encode,
                                      make_examples, pad_batch, transform)
from ..datasets.files import read_pairs, read_text
from ..datasets.vocab import CharVocab
from ..losses import CrossEntropyLoss
from ..models.seq2seq import Seq2SeqModel
from ..training import Batch
from ..training.data import shuffled_batches
from .._validation import check_choice, check_int, check_real
from ._command import CommandTask, Option
from ._config import (check_budget, check_common, check_declared, check_source, check_vocab,
                      checked, require_config)
from ._data import data_identity, split_point, verify_identity

__all__ = ["Seq2SeqTask"]

#: the longest source or target (characters or digits), the most examples of a set, the
#: most digits generated in all, the widest embedding and the most heads
MAX_SIDE = 1000
MAX_EXAMPLES = 2_000_000
MAX_TOKENS = 50_000_000
MAX_WIDTH = 8192
MAX_HEADS = 256

_DIGIT_KEYS = ("mode", "min_len", "max_len", "train_size", "val_size")
_FILE_KEYS = ("data", "data_sha256", "vocab", "val_frac", "max_target", "bucket_by_length")


class Seq2SeqTask(CommandTask):
    """``nn-core train seq2seq``: digit strings reversed or sorted, or the pairs of a
    TSV file, by a :class:`~nn_core.models.Seq2SeqModel`."""

    name = "seq2seq"
    description = ("reverse or sort digit strings, or map the source/target pairs of a file "
                   "(--data) (bidirectional encoder, LSTM decoder + attention)")
    defaults = dict(epochs=6, batch_size=64, lr=1e-2, hidden=96)

    train_options = (
        Option("--data", "train on these pairs, one SOURCE<TAB>TARGET per line, UTF-8",
               metavar="PAIRS.tsv", type=str, default_text="generated digit strings"),
        Option("--val-frac", "--data: the fraction of the pairs that validates, in (0, 0.5]",
               0.1, type=float, data="file", bounds=(0.0, 0.5), lo_open=True),
        Option("--bucket-by-length", "--data: batches of pairs of similar source length, in "
               "a shuffled order", False, action="store_true", data="file"),
        Option("--mode", "target = the digits reversed or sorted", "reverse",
               choices=("reverse", "sort"), data="generated"),
        Option("--cell", "encoder cell", "gru", choices=("gru", "lstm")),
        Option("--embed", "embedding size", 32, type=int, bounds=(1, MAX_WIDTH)),
        Option("--heads", "cross-attention heads", 4, type=int, bounds=(1, MAX_HEADS)),
        Option("--min-len", "shortest digit string", 5, type=int, data="generated",
               bounds=(1, MAX_SIDE)),
        Option("--max-len", f"longest digit string, at most {MAX_SIDE}", 20, type=int,
               data="generated", bounds=(1, MAX_SIDE)),
        Option("--train-size", "training examples", 12800, type=int, data="generated",
               bounds=(1, MAX_EXAMPLES)),
        Option("--val-size", "validation examples", 1000, type=int, data="generated",
               bounds=(1, MAX_EXAMPLES)),
    )
    generate_options = (
        Option("--input", "strings to transform", nargs="+",
               default_text="--num random ones, or validation pairs"),
        Option("--input-file", "models trained with --data: decode each line of FILE (a "
               "line SOURCE<TAB>TARGET is also scored)", metavar="FILE", type=str),
    )

    @classmethod
    def config_from_args(cls, a):
        c = dict(hidden=a.hidden, embed=a.embed, heads=a.heads, cell=a.cell, data_seed=a.seed,
                 **dict.fromkeys(_FILE_KEYS))
        if a.data is None:
            return cls.check_config(dict(c, mode=a.mode, min_len=a.min_len, max_len=a.max_len,
                                         train_size=a.train_size, val_size=a.val_size))
        c.update(dict.fromkeys(_DIGIT_KEYS), val_frac=a.val_frac,
                 bucket_by_length=bool(a.bucket_by_length), **data_identity(a.data))
        checked(c, "val_frac", check_real, 0.0, 0.5, lo_open=True)
        pairs = read_pairs(a.data, max_length=MAX_SIDE)   # messages name the file as given
        if len(pairs) < 2:
            raise ValueError(f"--data {c['data']} has {len(pairs)} pair; at least 2 are needed "
                             "(one to train, one to validate)")
        c["vocab"] = CharVocab.from_text(*(s + t for s, t, _ in pairs)).chars
        c["max_target"] = max(len(t) for _, t, _ in pairs)
        return cls.check_config(c)

    @classmethod
    def check_config(cls, config):
        c = require_config(config,
                           ("hidden", "embed", "heads", "cell", "data_seed") + _DIGIT_KEYS
                           + _FILE_KEYS)
        check_declared(c, cls.train_options)
        check_common(c, ("hidden", "embed", "heads"))
        checked(c, "cell", check_choice, ("gru", "lstm"))
        if check_source(c, _DIGIT_KEYS, _FILE_KEYS):
            checked(c, "max_target", check_int, 1, MAX_SIDE, flag="max_target")
            if not isinstance(c["bucket_by_length"], bool):
                raise TypeError(f"bucket_by_length must be a bool, got "
                                f"{type(c['bucket_by_length']).__name__}")
            check_vocab(c)
            return c
        for key in ("min_len", "train_size", "val_size"):
            checked(c, key, check_int, 1)
        checked(c, "max_len", check_int, c["min_len"], MAX_SIDE)
        checked(c, "mode", check_choice, ("reverse", "sort"))
        check_budget("digits", (c["train_size"] + c["val_size"]) * c["max_len"], MAX_TOKENS,
                     "(--train-size + --val-size) x --max-len")
        return c

    @classmethod
    def check_generate_args(cls, args, config):
        """Check ``--input`` strings and read ``--input-file`` (into ``args.items``:
        ``(source, expected or None)``), naming the line and column of a bad character."""
        args.items = None
        if config.get("data") is None:
            if args.input_file:
                raise ValueError("--input-file decodes files for models trained with --data; "
                                 "this one reverses digit strings (use --input)")
            for s in args.input or ():
                if not s.isdigit() or not s.isascii():
                    raise ValueError(f"--input takes strings of digits, got {s!r}")
            return
        vocab = CharVocab(config["vocab"], reserved=OFFSET)
        items = []
        for s in args.input or ():
            bad = vocab.unknown(s)
            if not s or bad:
                raise ValueError(f"--input {s!r:.40}: " + (
                    f"character {bad[1]!r} (column {bad[0] + 1}) is not in the model's "
                    "vocabulary" if s else "empty input"))
            items.append((s, None))
        if args.input_file:
            for n, line in enumerate(read_text(args.input_file).splitlines(), 1):
                if not line.strip():
                    continue
                src, _, want = line.partition("\t")
                bad = vocab.unknown(src)
                if bad or not src:
                    raise ValueError(f"--input-file {args.input_file} line {n}, column "
                                     f"{bad[0] + 1 if bad else 1}: " + (
                                         f"character {bad[1]!r} is not in the model's "
                                         "vocabulary" if bad else "empty source"))
                items.append((src, want or None))
        args.items = items or None

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        s = int(c.get("data_seed", 0))
        self.vocab = None
        if c["data"] is None:
            self.train_src, self.train_tgt = make_examples(c["train_size"], c["min_len"],
                                                           c["max_len"], c["mode"], 10_000 + s)
            self.val_src, self.val_tgt = make_examples(c["val_size"], c["min_len"],
                                                       c["max_len"], c["mode"], 20_000 + s)
        else:
            verify_identity(c)
            self.vocab = CharVocab(c["vocab"], reserved=OFFSET)
            pairs = [(self.vocab.encode(a), self.vocab.encode(b))
                     for a, b, _ in read_pairs(c["data"])]
            order = np.random.default_rng(s).permutation(len(pairs))
            n_val = min(len(pairs) - 1, len(pairs) - split_point(len(pairs), c["val_frac"]))
            val, train = order[:n_val], np.sort(order[n_val:])
            self.train_src = [pairs[i][0] for i in train]
            self.train_tgt = [pairs[i][1] for i in train]
            self.val_src = [pairs[i][0] for i in np.sort(val)]
            self.val_tgt = [pairs[i][1] for i in np.sort(val)]
        self.train_set = _Pairs(self.train_src, self.train_tgt)

    def train_batches(self, rng, batch_size):
        """The epoch's batches; with ``bucket_by_length``, of pairs of similar length."""
        return shuffled_batches(self.train_set, rng, batch_size, self.num_batches(batch_size),
                                bucket_by_length=bool(self.config.get("bucket_by_length")))

    def describe_data(self):
        if self.vocab is None:
            return "generated"
        return (f"{self.config['data']}: {len(self.train_src)} training and "
                f"{len(self.val_src)} validation pairs, {len(self.vocab.chars)} distinct "
                "characters")

    def _text(self, tokens):
        """The text of decoded tokens, up to the first ``EOS``."""
        if self.vocab is None:
            return decode_tokens(tokens)
        return self.vocab.decode(tokens, stop=EOS)

    def build_model(self, dtype, rng):
        c = self.config
        V = VOCAB if self.vocab is None else len(self.vocab)
        return Seq2SeqModel(V, c["embed"], c["hidden"], c["heads"], c["cell"], pad_id=PAD,
                            bos_id=BOS, eos_id=EOS, dtype=dtype, rng=rng)

    #: the trainer counts the next-token accuracy of the training batches
    metrics = ("accuracy",)

    def loss(self, dtype):
        return CrossEntropyLoss(ignore_index=PAD, dtype=dtype)

    #: the metric of the summary line, and whether larger is better
    headline = ("exact_match", True)

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
            model.clear_pending()
            tot_loss += float(loss_fn(logits, tout))
            keep = tout != PAD
            tokens += int(keep.sum())
            correct_tok += int(((logits.argmax(-1) == tout) & keep).sum())
            pred = model.greedy_decode(src, src_len, max_len=tout.shape[1] + 1)
            for b, t in enumerate(tgt_l):
                exact += self._text(pred[b]) == self._text(list(t) + [EOS])
        n = len(self.val_src)
        return {"val_loss": tot_loss / tokens, "val_token_acc": correct_tok / tokens,
                "exact_match": exact / n}

    def describe_metrics(self, m):
        c = self.config
        what = (f"{c['mode']} examples of length {c['min_len']}-{c['max_len']}"
                if self.vocab is None else f"pairs of {os.path.basename(c['data'])}")
        return (f"validation exact match {100 * m['exact_match']:.1f}% "
                f"(token accuracy {100 * m['val_token_acc']:.1f}%, loss {m['val_loss']:.4f}) "
                f"on {len(self.val_src)} held-out {what}")

    def generate(self, model, args, out=print):
        model.eval()
        if self.vocab is not None:
            return self._generate_pairs(model, args, out)
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

    def _generate_pairs(self, model, args, out, batch_size=256):
        """Decode ``--input``/``--input-file`` sources (default: ``--num`` validation
        pairs); one ``source -> output`` line each, then the exact match where expected
        targets were given."""
        items = getattr(args, "items", None)
        if not items:
            rng = np.random.default_rng(args.seed)
            idx = np.sort(rng.choice(len(self.val_src), min(args.num, len(self.val_src)),
                                     replace=False))
            items = [(self._text(self.val_src[i]), self._text(self.val_tgt[i])) for i in idx]
        ok = expected = 0
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            src, src_len = pad_batch([self.vocab.encode(s) for s, _ in chunk])
            limit = max(self.config["max_target"], 2 * int(src_len.max())) + 1
            pred = model.greedy_decode(src, src_len, max_len=limit)
            for (s, want), p in zip(chunk, pred):
                got = self._text(p)
                line = f"{s} -> {got}"
                if want is not None:
                    expected += 1
                    ok += got == want
                    line += "   ok" if got == want else f"   WRONG (expected {want})"
                out(line)
        if expected:
            out(f"{ok}/{expected} correct")


class _Pairs:
    """Source and target token lists as a dataset: ``batch(idx)`` pads them into
    ``Batch((src, src_len, tgt_in, tgt_len), tgt_out)`` (teacher forcing)."""

    def __init__(self, sources, targets):
        self.sources, self.targets = sources, targets

    def __len__(self):
        return len(self.sources)

    @property
    def lengths(self):
        """int64 ``[n]``: the source lengths (what bucketing groups by)."""
        return np.array([len(s) for s in self.sources], np.int64)

    def batch(self, idx):
        src, src_len, tin, tout, tgt_len = pad_batch([self.sources[j] for j in idx],
                                                     [self.targets[j] for j in idx])
        return Batch((src, src_len, tin, tgt_len), tout)
