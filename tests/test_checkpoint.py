"""Checkpoints: round trip, rebuild without the constructing code, errors, atomic writes."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import nn_core
from nn_core import checkpoint
from nn_core.checkpoint import CheckpointError, load, read_metadata, save
from nn_core.layers import Dropout, Embedding, LayerNorm, Linear, Sequential
from nn_core.module import Module


def _net(dtype=np.float32, seed=0):
    return Sequential(Embedding(11, 6, padding_idx=0, dtype=dtype, rng=seed),
                      LayerNorm(6, eps=1e-6, dtype=dtype), Dropout(0.1, dtype=dtype),
                      Linear(6, 3, bias=False, dtype=dtype, rng=seed + 1))


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
                         cwd=os.path.dirname(os.path.dirname(nn_core.__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Sequential"


def test_file_contents_are_plain_arrays(tmp_path):
    save(Linear(3, 2, dtype=np.float64, rng=0), tmp_path / "l.npz")
    with np.load(tmp_path / "l.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["__nn_core_checkpoint__", "param/W", "param/b"]
    meta = read_metadata(tmp_path / "l.npz")
    assert meta["module"]["class"] == "nn_core.layers:Linear"
    assert meta["module"]["args"] == [3, 2]
    assert meta["module"]["kwargs"] == {"dtype": {"__dtype__": "float64"}}
    assert meta["params"] == {"W": [3, 2], "b": [2]}


def test_corrupted_and_foreign_files(tmp_path):
    path = tmp_path / "m.npz"
    save(Linear(3, 2, rng=0), path)
    raw = path.read_bytes()

    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable nn_core checkpoint"):
        load(tmp_path / "trunc.npz")

    (tmp_path / "junk.npz").write_bytes(b"hello, not a zip")
    with pytest.raises(ValueError, match="not a readable nn_core checkpoint"):
        load(tmp_path / "junk.npz")

    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    with pytest.raises(CheckpointError, match="not an nn_core checkpoint"):
        load(tmp_path / "foreign.npz")

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load(tmp_path / "missing.npz")

    # flip bytes inside the stored parameter: the zip CRC check catches it
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("param/W.npy")
    bad = bytearray(raw)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 140
    bad[start:start + 8] = b"\xff" * 8
    (tmp_path / "flipped.npz").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="corrupted|not a readable"):
        load(tmp_path / "flipped.npz")


def _rewrite_meta(src, dst, edit):
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["__nn_core_checkpoint__"][()]))
    edit(meta, arrays)
    arrays["__nn_core_checkpoint__"] = np.array(json.dumps(meta))
    np.savez(dst, **arrays)


def test_mismatched_contents_are_named(tmp_path):
    path = tmp_path / "m.npz"
    save(Linear(3, 2, rng=0), path)

    def wrong_shape(meta, arrays):
        meta["module"]["args"] = [4, 2]
    _rewrite_meta(path, tmp_path / "a.npz", wrong_shape)
    with pytest.raises(CheckpointError, match=r"state_dict\['W'\] must have shape \(4, 2\)"):
        load(tmp_path / "a.npz")

    def missing_param(meta, arrays):
        del arrays["param/b"]
    _rewrite_meta(path, tmp_path / "b.npz", missing_param)
    with pytest.raises(CheckpointError, match=r"missing (keys )?\['b'\]"):
        load(tmp_path / "b.npz")

    def bad_class(meta, arrays):
        meta["module"]["class"] = "nn_core.layers:NoSuchLayer"
    _rewrite_meta(path, tmp_path / "c.npz", bad_class)
    with pytest.raises(CheckpointError, match="cannot be imported"):
        load(tmp_path / "c.npz")

    def not_a_module(meta, arrays):
        meta["module"]["class"] = "os:getcwd"
    _rewrite_meta(path, tmp_path / "d.npz", not_a_module)
    with pytest.raises(CheckpointError, match="not an nn_core Module"):
        load(tmp_path / "d.npz")

    def newer(meta, arrays):
        meta["version"] = 99
    _rewrite_meta(path, tmp_path / "e.npz", newer)
    with pytest.raises(CheckpointError, match="newer"):
        load(tmp_path / "e.npz")


class _Opaque(Module):
    def __init__(self, fn, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.fn = fn


def test_unserialisable_arguments_are_named(tmp_path):
    with pytest.raises(TypeError, match="_Opaque argument 0 of type function"):
        save(_Opaque(lambda x: x), tmp_path / "o.npz")
    with pytest.raises(TypeError, match="extra"):
        save(Linear(2, 2), tmp_path / "o.npz", extra={"f": object()})
    with pytest.raises(TypeError, match="must be an nn_core Module"):
        save("model", tmp_path / "o.npz")
    assert not os.listdir(tmp_path)


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


def test_top_level_reexports():
    assert nn_core.save is save and nn_core.load is load
    assert nn_core.layers.Linear is Linear


def test_only_nn_core_classes_are_loaded_and_nothing_else_is_imported(tmp_path):
    """The class named in the file must live in the nn_core package; this is checked
    before importing, so a crafted file cannot import (run) an arbitrary module."""
    path = tmp_path / "m.npz"
    save(Linear(3, 2, rng=0), path)
    sentinel = tmp_path / "imported.txt"
    (tmp_path / "evil_ckpt_mod.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('x')\n"
        "from nn_core.layers import Linear as Evil\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for cls in ("evil_ckpt_mod:Evil", "nn_core_evil:Linear", "nn_coreX.layers:Linear",
                    "os:getcwd"):
            def edit(meta, arrays, cls=cls):
                meta["module"]["class"] = cls
            _rewrite_meta(path, tmp_path / "x.npz", edit)
            with pytest.raises(CheckpointError, match=f"{cls!r} is not an nn_core Module"):
                load(tmp_path / "x.npz")
        assert not sentinel.exists()
        assert "evil_ckpt_mod" not in sys.modules
        # nested module arguments are checked the same way
        save(Sequential(Linear(3, 2, rng=0)), path)

        def nested(meta, arrays):
            meta["module"]["args"][0]["__module__"]["class"] = "evil_ckpt_mod:Evil"
        _rewrite_meta(path, tmp_path / "y.npz", nested)
        with pytest.raises(CheckpointError, match="evil_ckpt_mod"):
            load(tmp_path / "y.npz")
        assert not sentinel.exists()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("evil_ckpt_mod", None)
    # a Module subclass defined outside nn_core is refused too (imported or not)
    with pytest.raises(CheckpointError, match="not an nn_core Module"):
        checkpoint._import_class(f"{_Opaque.__module__}:_Opaque")
