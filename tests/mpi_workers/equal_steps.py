"""Worker of tests/test_distributed.py: 10 AdamW steps of data-parallel training.

``python -m mpi4py equal_steps.py OUT_DIR`` writes ``OUT_DIR/rank{r}.npz`` per rank;
the test compares them with :func:`run` in a single process (the size-1 stand-in) on
the same global batches.  Each global batch has 7 rows, so 2 ranks get 3 and 4 rows
with different numbers of non-ignored target tokens.
"""
import os
import sys

import numpy as np

from nn_core import distributed as dist
from nn_core.datasets.digit_strings import PAD, make_examples, pad_batch
from nn_core.losses import CrossEntropyLoss
from nn_core.models import Seq2SeqModel, TransformerLM
from nn_core.optim import AdamW

#: (model, dtype, weighted); the unweighted run (plain averaging) must NOT match
CONFIGS = [(kind, dtype, True) for kind in ("seq2seq", "lm") for dtype in ("float64", "float32")]
CONFIGS.append(("seq2seq", "float64", False))
#: parameters whose true gradient is exactly zero (softmax ignores a key bias): their
#: AdamW steps follow rounding noise, so the test compares them through the outputs
ZERO_GRAD = ("attention.b_k", "self_attn.b_k")
STEPS, BATCH, IGNORE = 10, 7, -100


def build(kind, dtype):
    if kind == "seq2seq":
        return Seq2SeqModel(13, 8, 16, 2, "gru", dtype=dtype, rng=0)
    return TransformerLM(13, 16, 4, 1, num_kv_groups=2, max_len=12, dtype=dtype, rng=0)


def global_batch(kind, step):
    """The same batch on every rank: (model inputs, targets)."""
    if kind == "seq2seq":
        src, tgt = make_examples(BATCH, 2, 9, "reverse", seed=100 + step)
        s, s_len, tin, tout, t_len = pad_batch(src, tgt)
        return (s, s_len, tin, t_len), tout              # PAD targets are ignored
    rng = np.random.default_rng(200 + step)
    ids = rng.integers(0, 13, size=(BATCH, 11))
    y = ids[:, 1:].copy()
    y[rng.random(y.shape) < np.linspace(0.1, 0.8, BATCH)[:, None]] = IGNORE
    return (ids[:, :-1],), y


def name(kind, dtype, weighted):
    return f"{kind}-{dtype}-{'weighted' if weighted else 'averaged'}"


def run(kind, dtype, weighted=True):
    dist.init()
    dtype = np.dtype(dtype).type
    model = build(kind, dtype)
    opt = dist.DistributedOptimizer(AdamW(model, lr=1e-2, weight_decay=0.01), model,
                                    clip=0.5)
    loss_fn = CrossEntropyLoss(ignore_index=PAD if kind == "seq2seq" else IGNORE,
                               dtype=dtype)
    norms, counts = [], []
    for step in range(STEPS):
        inputs, targets = global_batch(kind, step)
        inputs, local_t = dist.shard((inputs, targets))
        n = int((local_t != loss_fn.ignore_index).sum())
        opt.zero_grad()
        loss_fn(model(*inputs), local_t)
        model.backward(loss_fn.backward()[0])
        # odd steps: the global count from the batch itself; even: one scalar allreduce
        total = int((targets != loss_fn.ignore_index).sum()) if step % 2 else None
        norms.append(opt.step(weight=n, total_weight=total) if weighted else opt.step())
        counts.append(n)
    model.eval()
    out = {"p:" + k: v.copy() for k, v in model.parameters().items()}
    out["logits"] = model(*global_batch(kind, 99)[0])
    out["norms"] = np.array(norms)
    out["counts"] = np.array(counts)
    return out


def main(out_dir):
    w = dist.init()
    for config in CONFIGS:
        np.savez(os.path.join(out_dir, f"{name(*config)}-rank{w.rank}.npz"), **run(*config))


if __name__ == "__main__":
    main(sys.argv[1])
