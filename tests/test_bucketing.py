"""Length bucketing of variable-length training batches (``bucket_by_length``): batches of
samples of similar length in a shuffled batch order, drawn from the run's order generator
only, so that a resumed run draws the same batches."""
import json
import os

import numpy as np
import pytest

from nn_core.checkpoint import read_state_dict
from nn_core.optim import AdamW
from nn_core.sklearn._net import SequenceNet
from nn_core.tasks.seq2seq import Seq2SeqTask
from nn_core.training import ArrayDataset, SequenceDataset, Trainer
from nn_core.training.data import as_source, shuffled_batches


def _sequences(rng, n=50, lo=1, hi=30, D=3):
    lens = rng.integers(lo, hi + 1, n)
    return [rng.standard_normal((L, D)) for L in lens], rng.standard_normal((n, 2))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("count_kind", ["all", "drop_last"])
def test_batches_hold_similar_lengths(shuffle, count_kind, rng):
    seqs, y = _sequences(rng)
    ds = SequenceDataset(seqs, y)
    bs = 8
    count = len(ds) // bs if count_kind == "drop_last" else -(-len(ds) // bs)
    batches = list(shuffled_batches(ds, np.random.default_rng(1), bs, count,
                                    shuffle=shuffle, bucket_by_length=True))
    assert len(batches) == count
    lens = [b.inputs[1] for b in batches]
    if count_kind == "drop_last":
        assert all(len(v) == bs for v in lens)
    else:
        assert sum(len(v) for v in lens) == len(ds)
    # the batches are consecutive slices of the samples sorted by length
    spans = sorted((v.min(), v.max()) for v in lens)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    firsts = [v.min() for v in lens]
    assert (firsts != sorted(firsts)) == shuffle or len(set(firsts)) < len(firsts)
    # same generator state, same batches
    again = list(shuffled_batches(ds, np.random.default_rng(1), bs, count,
                                  shuffle=shuffle, bucket_by_length=True))
    assert all(np.array_equal(a.inputs[0], b.inputs[0]) for a, b in zip(batches, again))


def test_bucketing_wastes_less_padding(rng):
    seqs, y = _sequences(rng, n=256, lo=5, hi=100)
    ds = SequenceDataset(seqs, y)

    def fill(bucket):
        bs = list(shuffled_batches(ds, np.random.default_rng(0), 16, 16,
                                   bucket_by_length=bucket))
        return sum(b.inputs[1].sum() for b in bs) / sum(b.inputs[0].shape[0] *
                                                         b.inputs[0].shape[1] for b in bs)
    assert fill(True) > 0.9 > fill(False)


def test_needs_lengths(rng):
    with pytest.raises(ValueError, match="bucket_by_length needs variable-length"):
        as_source((rng.standard_normal((10, 3)), rng.standard_normal(10)),
                  bucket_by_length=True)
    x = rng.standard_normal((10, 4, 3))
    src = as_source(ArrayDataset((x, np.full(10, 4)), rng.standard_normal(10),
                                 lengths=np.full(10, 4)), bucket_by_length=True)
    assert src.bucket_by_length
    with pytest.raises(ValueError, match="lengths must have shape"):
        ArrayDataset(x, lengths=np.ones(3))

    class Source:
        def num_batches(self, batch_size):
            return 1

        def train_batches(self, rng, batch_size):
            return iter(())
    with pytest.raises(ValueError, match="batch source"):
        as_source(Source(), bucket_by_length=True)


def _fit(out, bucket=True, **kw):
    rng = np.random.default_rng(7)
    seqs, y = _sequences(rng, n=40, lo=2, hi=12)
    model = SequenceNet(3, 6, 2, "gru", dtype=np.float64, rng=3)
    trainer = Trainer(model, "mse", AdamW(model, lr=0.01), verbose=0, log=lambda m: None)
    return trainer.fit((seqs, y), epochs=4, batch_size=8, seed=11, out_dir=out,
                       bucket_by_length=bucket, **kw)


@pytest.mark.filterwarnings("ignore:.*not a registered nn_core class")
@pytest.mark.parametrize("stop", [3, 9])
def test_resume_is_bit_exact_with_bucketing(tmp_path, stop):
    ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
    _fit(ref)
    h = _fit(out, max_steps=stop)
    assert h.status == "max_steps" and h.steps == stop
    _fit(out, resume=True)
    a, b = (read_state_dict(os.path.join(d, "model.npz")) for d in (ref, out))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ha, hb = (json.load(open(os.path.join(d, "history.json"))) for d in (ref, out))
    assert ha["step_loss"] == hb["step_loss"]
    # the setting is part of the run: a resume without it is refused
    _fit(str(tmp_path / "other"), max_steps=stop)
    with pytest.raises(ValueError, match="bucket_by_length"):
        _fit(str(tmp_path / "other"), bucket=False, resume=True)


def test_seq2seq_task_buckets_pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    rng = np.random.default_rng(0)
    lines = ["".join(rng.choice(list("abc"), int(n))) for n in rng.integers(1, 30, 60)]
    path.write_text("".join(f"{s}\t{s[::-1]}\n" for s in lines))

    class A:
        hidden, embed, heads, cell, seed, data, val_frac = 8, 4, 2, "gru", 0, str(path), 0.1
        bucket_by_length = True
    task = Seq2SeqTask(Seq2SeqTask.config_from_args(A))
    assert task.config["bucket_by_length"] is True
    batches = list(task.train_batches(np.random.default_rng(0), 8))
    spans = sorted((b.inputs[1].min(), b.inputs[1].max()) for b in batches)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    A.bucket_by_length = False
    plain = Seq2SeqTask(Seq2SeqTask.config_from_args(A))
    assert plain.config["bucket_by_length"] is False
    with pytest.raises(TypeError, match="bucket_by_length"):
        Seq2SeqTask.check_config(dict(task.config, bucket_by_length="yes"))
