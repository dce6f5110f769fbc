"""Checkpoints: round trip, rebuild without the constructing code, training state,
paths that are not files, atomic writes.  (Crafted files that must be refused:
test_checkpoint_crafted.py.)"""
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import nn_core
from nn_core import checkpoint
from nn_core.checkpoint import (CheckpointError, atomic_write, load, load_training_state,
                                read_metadata, read_state_dict, registered_classes, save)
from nn_core.layers import Dropout, Embedding, LayerNorm, Linear, Sequential
from nn_core.module import Module

from checkpoint_files import META, ROOT, _net


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_identical_outputs(tmp_path, rng, dtype):
    net = _net(dtype, int(rng.integers(100)))
    for p in net.parameters().values():         # trained-looking weights, not the init
        p[...] = rng.standard_normal(p.shape)
    path = tmp_path / "model.npz"
    assert save(net, path, extra={"epoch": 7, "history": [1.5, 0.25], "shape": (2, 3)}) == str(path)
    again, meta = load(path, with_metadata=True)
    assert type(again) is Sequential and again.dtype == dtype
    assert [type(m) for m in again] == [Embedding, LayerNorm, Dropout, Linear]
    assert again[0].padding_idx == 0 and again[1].eps == 1e-6 and not again[3].use_bias
    assert meta["extra"] == {"epoch": 7, "history": [1.5, 0.25], "shape": (2, 3)}
    ids = rng.integers(0, 11, size=(4, 5))
    net.eval(), again.eval()
    np.testing.assert_array_equal(net(ids), again(ids))
    for k, v in net.parameters().items():
        np.testing.assert_array_equal(v, again.parameters()[k])
        assert again.parameters()[k].dtype == dtype
    assert set(read_state_dict(path)) == set(net.parameters())


def test_reload_in_a_fresh_process_without_constructing_code(tmp_path):
    net = _net(np.float64, 5)
    path = tmp_path / "m.npz"
    save(net, path)
    x = np.arange(10).reshape(2, 5)
    net.eval()
    np.save(tmp_path / "expected.npy", net(x))
    code = (
        "import numpy as np, nn_core\n"
        f"m = nn_core.load({str(path)!r}).eval()\n"
        f"np.testing.assert_array_equal(m(np.arange(10).reshape(2, 5)), "
        f"np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Sequential"


def test_file_contents_are_plain_arrays(tmp_path):
    save(Linear(3, 2, dtype=np.float64, rng=0), tmp_path / "l.npz")
    with np.load(tmp_path / "l.npz", allow_pickle=False) as data:
        assert sorted(data.files) == [META, "param/W", "param/b"]
    meta = read_metadata(tmp_path / "l.npz")
    assert meta["version"] == 1
    assert meta["module"]["class"] == "nn_core.layers:Linear"
    assert meta["module"]["args"] == [3, 2]
    assert meta["module"]["kwargs"] == {"dtype": {"__dtype__": "float64"}}
    assert meta["params"] == {"W": [3, 2], "b": [2]}


def _all_modules():
    """One small instance of (nearly) every registered class."""
    from nn_core import attention as A, losses as L, models as M, recurrent as R
    from nn_core.layers import GELU, ReLU, Tanh
    kw = dict(dtype=np.float64, rng=0)
    return [
        Linear(4, 3, **kw), Embedding(7, 4, **kw), LayerNorm(4, dtype=np.float64),
        Dropout(0.2, **kw), ReLU(), Tanh(), GELU("tanh"), _net(),
        nn_core.ModuleList([Linear(2, 2, rng=0), Tanh()]),
        L.CrossEntropyLoss(ignore_index=0), L.MSELoss(reduction="sum"),
        A.ScaledDotProductAttention(0.1, **kw), A.MultiHeadAttention(8, 2, **kw),
        A.MultiQueryAttention(8, 2, **kw), A.GroupedQueryAttention(8, 4, 2, **kw),
        A.CrossAttention(8, 2, kv_dim=6, **kw), A.CachedCrossAttention(8, 2, **kw),
        A.MultimodalCrossAttention(8, 2, vision_dim=5, **kw),
        R.RNNCell(3, 4, nonlinearity="relu", **kw), R.LSTMCell(3, 4, forget_bias=0.5, **kw),
        R.GRUCell(3, 4, reset_after=True, **kw), R.StackedLSTM(3, 4, 2, dropout=0.1, **kw),
        R.BidirectionalGRU(3, 4, **kw), R.BidirectionalRNNCell(3, 4, **kw),
        R.BidirectionalWrapper(R.LSTMCell(3, 4, **kw), merge_mode="sum"),
        R.StackedBidirectional("gru", 3, 4, 2, **kw),
        M.Seq2SeqModel(13, 4, 8, 2, "lstm", **kw), M.Forecaster(3, 5, "gru", **kw),
        M.TransformerLM(13, 8, 2, 1, 1, max_len=6, **kw), M.TransformerBlock(8, 2, **kw),
    ]


def test_every_kind_of_module_round_trips_under_the_allocation_budget(tmp_path, rng):
    for i, m in enumerate(_all_modules()):
        for p in m.parameters().values():
            p[...] = rng.standard_normal(p.shape)
        path = tmp_path / f"{i}.npz"
        save(m, path)
        again = load(path)
        assert type(again) is type(m) and repr(again) == repr(m)
        for k, v in m.parameters().items():
            np.testing.assert_array_equal(again.parameters()[k], v, err_msg=f"{m!r} {k}")


def test_registry():
    reg = registered_classes()
    from nn_core import attention, models, recurrent
    assert reg["nn_core.layers:Linear"] is Linear
    assert reg["nn_core.attention:MultiHeadAttention"] is attention.MultiHeadAttention
    assert reg["nn_core.models:Seq2SeqModel"] is models.Seq2SeqModel
    assert reg["nn_core.models:TransformerBlock"] is models.TransformerBlock
    assert "nn_core.tasks.seq2seq:Seq2SeqModel" not in reg     # only where the class lives
    for name in recurrent.__all__:
        obj = getattr(recurrent, name)
        if isinstance(obj, type) and issubclass(obj, Module):
            assert obj in reg.values()
    assert all(isinstance(c, type) and issubclass(c, Module) for c in reg.values())
    assert Module not in reg.values()
    assert not any(p.startswith(("nn_core.__main__", "nn_core.cli", "nn_core.training"))
                   for p in reg)


def test_top_level_reexports():
    assert nn_core.save is save and nn_core.load is load
    assert nn_core.CheckpointError is CheckpointError
    assert nn_core.load_training_state is load_training_state
    assert nn_core.layers.Linear is Linear


# ------------------------------------------------------------------ training state
def test_training_state_round_trip(tmp_path, rng):
    m = Linear(3, 2, dtype=np.float64, rng=0)
    state = {"step": 12, "lr": 1e-3, "nan": float("nan"), "pair": (1, "a"),
             "opt": {"W": {"exp_avg": rng.standard_normal((3, 2))}, "b": {}},
             "rng": np.random.default_rng(3).bit_generator.state,
             "losses": np.arange(5.0), "mask": np.array([True, False]), "nothing": None}
    path = tmp_path / "m.npz"
    save(m, path, training_state=state)
    again = load_training_state(path)
    assert again["step"] == 12 and again["lr"] == 1e-3 and np.isnan(again["nan"])
    assert again["pair"] == (1, "a") and again["nothing"] is None
    np.testing.assert_array_equal(again["opt"]["W"]["exp_avg"], state["opt"]["W"]["exp_avg"])
    assert again["opt"]["b"] == {} and again["rng"] == state["rng"]
    assert again["losses"].dtype == np.float64 and again["mask"].dtype == bool
    assert type(load(path)) is Linear                      # load still returns the module
    with np.load(path) as data:
        assert sorted(data.files) == [META, "param/W", "param/b", "train/0", "train/1",
                                      "train/2"]
    save(m, path)
    with pytest.raises(CheckpointError, match="no training state"):
        load_training_state(path)
    with pytest.raises(TypeError, match="training_state"):
        save(m, path, training_state={"f": lambda: 0})
    with pytest.raises(TypeError, match="object"):
        save(m, path, training_state={"a": np.array([object()])})


# ------------------------------------------------------------------ paths that are not files
def test_fifo_device_and_directory_paths_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    os.symlink(fifo, tmp_path / "link.npz")
    result = []

    def attempt(p):
        try:
            load(p)
        except BaseException as exc:             # noqa: BLE001 - recorded for the assert
            result.append(exc)

    for p in (fifo, tmp_path / "link.npz"):
        t = threading.Thread(target=attempt, args=(p,), daemon=True)
        t.start()
        t.join(10)
        if t.is_alive():                          # unblock the reader, then fail
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            pytest.fail("load blocked on a FIFO")
        assert isinstance(result.pop(), CheckpointError)
    for dev in ("/dev/zero", "/dev/null", "/dev/urandom"):
        if os.path.exists(dev):
            with pytest.raises(CheckpointError, match="not a regular file"):
                load(dev)
    with pytest.raises(IsADirectoryError):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load(tmp_path / "missing.npz")


# ------------------------------------------------------------------ saving
def test_unserialisable_arguments_are_named(tmp_path):
    class _Opaque(Module):
        def __init__(self, fn, *, dtype=np.float32, rng=None):
            super().__init__(dtype=dtype, rng=rng)
            self.fn = fn

    with pytest.raises(TypeError, match="argument 0 of _Opaque of type function"):
        save(_Opaque(lambda x: x), tmp_path / "o.npz")
    with pytest.raises(TypeError, match="extra"):
        save(Linear(2, 2), tmp_path / "o.npz", extra={"f": object()})
    with pytest.raises(TypeError, match="extra.*Module"):
        save(Linear(2, 2), tmp_path / "o.npz", extra={"m": Linear(1, 1)})
    with pytest.raises(TypeError, match="must be an nn_core Module"):
        save("model", tmp_path / "o.npz")
    with pytest.raises(ValueError, match="metadata would be"):
        save(Linear(2, 2), tmp_path / "o.npz", extra={"x": "y" * checkpoint.MAX_META_CHARS})
    assert not os.listdir(tmp_path)


class Custom(Module):
    """A module of the user's own: saved, not rebuilt, restorable by hand."""

    def __init__(self, n, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.add_param("w", self.rng.standard_normal(n))


def test_own_classes_are_saved_but_not_rebuilt(tmp_path):
    m = Custom(4, rng=0)
    with pytest.warns(UserWarning, match="read_state_dict"):
        save(m, tmp_path / "c.npz")
    with pytest.raises(CheckpointError, match="not an nn_core Module that load"):
        load(tmp_path / "c.npz")
    again = Custom(4, rng=1)
    again.load_state_dict(read_state_dict(tmp_path / "c.npz"))
    np.testing.assert_array_equal(again.params["w"], m.params["w"])


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = Linear(4, 4, dtype=np.float64, rng=0)
    save(old, path)
    before = path.read_bytes()

    def crash_midway(fh, **arrays):
        fh.write(b"PK\x03\x04 partial archive ...")     # some bytes already on disk
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(checkpoint.np, "savez", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save(Linear(4, 4, dtype=np.float64, rng=1), path)
    monkeypatch.undo()

    assert path.read_bytes() == before                     # previous checkpoint intact
    assert os.listdir(tmp_path) == ["model.npz"]           # temp file cleaned up
    np.testing.assert_array_equal(load(path).params["W"], old.params["W"])


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.npz"
    save(Linear(2, 2, rng=0), path)
    new = Linear(2, 3, rng=1)
    save(new, path)
    np.testing.assert_array_equal(load(path).params["W"], new.params["W"])
    assert os.listdir(tmp_path) == ["m.npz"]
    with pytest.raises(IsADirectoryError):
        save(new, tmp_path)


def test_permissions_follow_the_umask_and_an_existing_file(tmp_path):
    old = os.umask(0o027)
    try:
        save(Linear(2, 2), tmp_path / "a.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o640
        os.umask(0o002)
        save(Linear(2, 2), tmp_path / "b.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "b.npz").st_mode) == 0o664
        os.chmod(tmp_path / "b.npz", 0o600)
        save(Linear(2, 2), tmp_path / "b.npz")              # an existing file keeps its mode
        assert stat.S_IMODE(os.stat(tmp_path / "b.npz").st_mode) == 0o600
    finally:
        os.umask(old)


def test_saving_through_a_symlink_writes_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.npz"
    save(Linear(2, 2, rng=0), target)
    link = tmp_path / "latest.npz"
    os.symlink(target, link)
    new = Linear(2, 2, rng=1)
    save(new, link)
    assert os.path.islink(link) and os.readlink(link) == str(target)
    np.testing.assert_array_equal(load(target).params["W"], new.params["W"])
    dangling = tmp_path / "dangling.npz"
    os.symlink(tmp_path / "real" / "new.npz", dangling)
    save(new, dangling)
    assert os.path.islink(dangling) and (tmp_path / "real" / "new.npz").is_file()
    assert sorted(os.listdir(tmp_path / "real")) == ["model.npz", "new.npz"]


def test_stale_temp_files_are_removed_but_live_ones_kept(tmp_path):
    import fcntl
    path = tmp_path / "model.npz"
    stale = [tmp_path / "model.npz.nnc0a1b2c3d.tmp",      # ours, writer killed
             tmp_path / "model.npz.k3j_x9q2.tmp"]          # an older nn_core's mkstemp name
    kept = [tmp_path / "model.npz.backup.tmp", tmp_path / "other.npz.nnc00000000.tmp",
            tmp_path / "model.npz"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    live = tmp_path / "model.npz.nncffffffff.tmp"           # a writer still at work
    live.write_bytes(b"partial")
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        save(Linear(2, 2), path)
    finally:
        os.close(fd)
    names = set(os.listdir(tmp_path))
    assert not {p.name for p in stale} & names
    assert {p.name for p in kept} | {live.name} <= names
    save(Linear(2, 2), path)                               # its writer is gone now
    assert live.name not in set(os.listdir(tmp_path))


def test_concurrent_saves_to_one_target(tmp_path):
    path = tmp_path / "m.npz"
    errors = []

    def work(seed):
        try:
            for _ in range(5):
                save(Linear(64, 64, rng=seed), path)
        except BaseException as exc:             # noqa: BLE001 - recorded for the assert
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert os.listdir(tmp_path) == ["m.npz"]
    assert load(path).params["W"].shape == (64, 64)


def test_atomic_write_text(tmp_path):
    with atomic_write(tmp_path / "h.json", "w") as fh:
        fh.write("{}")
    assert (tmp_path / "h.json").read_text() == "{}"
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "h.json", "w") as fh:
            fh.write("partial")
            raise RuntimeError
    assert (tmp_path / "h.json").read_text() == "{}"
    assert os.listdir(tmp_path) == ["h.json"]


_KILL_CHILD = r"""
import sys
import numpy as np
from nn_core.checkpoint import save
from nn_core.layers import Linear
path, k = sys.argv[1], int(sys.argv[2])
m = Linear(1024, 1024, dtype=np.float64, rng=0)
print("ready", flush=True)
while True:
    k += 1
    m.params["W"][...] = k
    m.params["b"][...] = k
    save(m, path, extra={"k": k})
    print(k, flush=True)
"""


def test_random_kills_during_save_never_lose_the_checkpoint(tmp_path, rng):
    """A process saving an 8 MB model in a loop is SIGKILLed at random moments: the
    previous checkpoint always loads, and the next save removes the dead writer's
    temporary file."""
    rounds = int(os.environ.get("NN_CORE_KILL_ROUNDS", "6"))
    path = tmp_path / "model.npz"
    save(Linear(1024, 1024, dtype=np.float64, rng=0), path, extra={"k": 0})
    k, left_behind, killed_mid_save = 0, set(), 0
    for _ in range(rounds):
        child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(path), str(k)],
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert child.stdout.readline().strip() == "ready"
        first = int(child.stdout.readline())               # one complete save ...
        assert first == k + 1
        tmps = {n for n in os.listdir(tmp_path) if n.endswith(".tmp")}
        assert not tmps & left_behind                      # ... removed the earlier debris
        time.sleep(float(rng.uniform(0.0, 0.4)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        saved = [first] + [int(line) for line in child.stdout.read().split()]
        child.stdout.close()
        left_behind = {n for n in os.listdir(tmp_path) if n.endswith(".tmp")}
        killed_mid_save += bool(left_behind)
        again, meta = load(path, with_metadata=True)       # the previous checkpoint loads
        k = meta["extra"]["k"]
        assert k in (saved[-1], saved[-1] + 1)             # the last complete save (or one
        assert np.all(again.params["W"] == k)              # whose replace had happened)
    save(Linear(2, 2), path)
    assert os.listdir(tmp_path) == ["model.npz"]
    assert killed_mid_save >= 1
