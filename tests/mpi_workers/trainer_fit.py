"""Worker of tests/test_distributed.py: ``Trainer.fit`` on the ranks' shards of the
same global batches (cross-entropy with ignored targets, so the ranks' token counts
differ); rank 0 saves the parameters and the history to ``OUT/rank0.npz``."""
import os
import sys

import numpy as np

from nn_core import distributed as dist
from nn_core.layers import Embedding, Linear, Sequential
from nn_core.losses import CrossEntropyLoss
from nn_core.optim import AdamW
from nn_core.training import Trainer

ROWS, T, V = 48, 6, 11


def data():
    rng = np.random.default_rng(7)
    x = rng.integers(1, V, size=(ROWS, T))
    y = rng.integers(0, V, size=(ROWS, T))        # 0 = ignored, ~1/11 of the targets
    return x, y


def run(batch_size, out_dir=None):
    model = Sequential(Embedding(V, 8, dtype=np.float64, rng=1),
                       Linear(8, V, dtype=np.float64, rng=2))
    trainer = Trainer(model, CrossEntropyLoss(ignore_index=0, dtype=np.float64),
                      AdamW(model, lr=0.05), clip=0.5, verbose=0, metrics=["accuracy"])
    x, y = data()
    h = trainer.fit((x, y), (x[:16], y[:16]), epochs=2, batch_size=batch_size, seed=3,
                    out_dir=out_dir)
    return model, h


if __name__ == "__main__":
    out = sys.argv[1]
    dist.init()
    model, h = run(4, os.path.join(out, "run"))
    if dist.rank() == 0:
        np.savez(os.path.join(out, "rank0.npz"), step_loss=np.array(h.step_loss),
                 val_loss=np.array(h.history["val_loss"]), **model.parameters())
