"""Checkpoints: crafted files that must be refused without running code, exhausting
memory, blocking or leaving debris."""
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

import nn_core
from nn_core import checkpoint
from nn_core.checkpoint import (CheckpointError, load, load_training_state,
                                read_metadata, read_state_dict, save)
from nn_core.layers import Linear

from checkpoint_files import (META, ROOT, _members, _meta_of, _net, _npy, _with_meta,
                              _zip)


@pytest.fixture
def base(tmp_path):
    """A valid Linear(3, 2) checkpoint: its path, members and metadata."""
    path = tmp_path / "base.npz"
    save(Linear(3, 2, rng=0), path)
    members = _members(path)
    return path, members, _meta_of(members)


class _Payload:
    """Unpickling runs code that writes the canary file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


@pytest.fixture
def canary(tmp_path):
    """A module on sys.path and a pickle payload that leave a file if anything runs."""
    sentinel = tmp_path / "canary.txt"
    (tmp_path / "evil_ckpt_mod.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('imported')\n"
        "from nn_core.layers import Linear as Evil\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield sentinel
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("evil_ckpt_mod", None)
    assert not sentinel.exists(), "a crafted file ran code"
    assert "evil_ckpt_mod" not in sys.modules


def _edit(fn):
    def craft(path, members, meta, sentinel):
        meta = json.loads(json.dumps(meta))
        fn(meta)
        return _zip(path, _with_meta(members, meta))
    craft.__name__ = fn.__name__
    return craft


def _set(*keys_value):
    *keys, value = keys_value

    def fn(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


def _deep(n, leaf=1):
    v = leaf
    for _ in range(n):
        v = [v]
    return v


BAD_CLASSES = ["os:system", "builtins:eval", "nn_core.__main__:main", "nn_core.__main__:X",
               "nn_core.cli:main", "nn_core.training:train", "nn_core.checkpoint:save",
               "nn_core.module:Module", "nn_core.layers:_Activation", "nn_core.layers:np",
               "nn_core.layers:Linear.__init__", "evil_ckpt_mod:Evil", "nn_core_evil:Linear",
               "nn_coreX.layers:Linear", "", "nn_core.layers:Linear:x", 5, None]

META_EDITS = {
    # module description
    "class": [_set("module", "class", c) for c in BAD_CLASSES],
    "module": [_set("module", v) for v in (None, [], "Linear", 3)]
    + [_set("module", "args", v) for v in (None, {}, "3,2")]
    + [_set("module", "kwargs", v) for v in (None, [], "x")]
    + [_set("module", "dtype", v) for v in (None, 5, "float16", "int64", "object")],
    # constructor arguments
    "args": [_set("module", "args", v) for v in (
        [3], [3, 2, 1, 0, 9], ["3", 2], [3.5, 2], [-3, 2], [3, 2, {"__evil__": 1}],
        [{"__tuple__": 5}, 2], [{"__float__": "1e999x"}, 2], [{"__float__": 5}, 2],
        [{"__dtype__": "object"}, 2], [{"__dtype__": "V1000000000"}, 2],
        [{"__array__": [1, 2], "dtype": "object"}, 2], [{"__array__": "x", "dtype": "int64"}, 2],
        [{"__array__": [0] * 5000, "dtype": "int64"}, 2],
        [{"__module__": 5}, 2], [{"__module__": {"class": "evil_ckpt_mod:Evil"}}, 2],
        [{"__module__": {"class": "nn_core.layers:Linear", "args": [1, 1], "kwargs": {},
                         "dtype": "float32"}, "x": 1}, 2],
        [_deep(900), 2], [_deep(70), 2])]
    + [_set("module", "kwargs", v) for v in (
        {"bias": {"__tuple__": "x"}}, {"nope": 1}, {"dtype": {"__dtype__": "float16"}},
        {"dtype": {"__dtype__": "int64"}}, {"rng": "x", "bias": {"__module__": None}})],
    # huge modules from small files
    "huge": [_set("module", "args", v) for v in ([100_000, 100_000], [10 ** 15, 10 ** 15],
                                                 [2 ** 62, 2])],
    # parameter listing
    "params": [_set("params", v) for v in (None, [], "W", {"W": "3,2", "b": [2]},
                                           {"W": [3, -2], "b": [2]}, {"W": [3.5, 2], "b": [2]},
                                           {"W": [[3], 2], "b": [2]}, {"W": [1] * 40, "b": [2]},
                                           {"W": [2, 3], "b": [2]}, {"W": [3, 2]},
                                           {"W": [3, 2], "b": [2], "c": [1]},
                                           {"W": [3, True], "b": [2]})],
    # top level
    "top": [_set("format", "numpy"), _set("format", None), _set("version", "1"),
            _set("version", True), _set("version", 0), _set("version", 99),
            _set("version", 1.5), _set("training", 5), _set("training", [1]),
            _set("extra", {"__float__": 5}), _set("extra", {"__dtype__": "object"}),
            _set("extra", {"__array__": [1], "dtype": "V1000000"}),
            _set("extra", {"a": {"__evil__": 1}}), _set("extra", _deep(100))],
    # training-state array references
    "training": [_set("training", {"a": v}) for v in (
        {"__member__": "train/0", "shape": [-1], "dtype": "float64"},
        {"__member__": "train/0", "shape": [2], "dtype": "object"},
        {"__member__": "../etc/passwd", "shape": [2], "dtype": "float64"},
        {"__member__": "param/W", "shape": [3, 2], "dtype": "float32"},
        {"__member__": "train/0", "shape": [2], "dtype": "float64", "x": 1},
        {"__member__": 5, "shape": [2], "dtype": "float64"},
        {"__member__": "train/0", "shape": [2], "dtype": "float64"},      # member missing
        [{"__member__": "train/0", "shape": [1], "dtype": "float64"}] * 2,
        _deep(100))],
}


def _raw_meta(text):
    def craft(path, members, meta, sentinel):
        return _zip(path, _with_meta(members, text))
    craft.__name__ = f"raw_{text[:12]!r}"
    return craft


RAW_META = [_raw_meta(t) for t in (
    "", "{", "[]", "null", "3", '"x"', "[" * 100_000 + "]" * 100_000,
    '{"a":' * 100_000 + "1" + "}" * 100_000, "[" + "[]," * 120_000 + "[]]",
    '{"format": "nn_core.checkpoint", "version": 1, "module": NaN}',
    "1" * 5000, "\ud800")]


def _member_edit(fn):
    def craft(path, members, meta, sentinel):
        return _zip(path, fn(dict(members), sentinel))
    craft.__name__ = fn.__name__
    return craft


@_member_edit
def pickled_object_array(m, sentinel):
    arr = np.empty((3, 2), dtype=object)
    arr[...] = _Payload(sentinel)
    m["param/W.npy"] = _npy(arr, allow_pickle=True)
    return m


@_member_edit
def pickle_member(m, sentinel):
    m["data.pkl"] = pickle.dumps(_Payload(sentinel))
    return m


@_member_edit
def pickled_metadata(m, sentinel):
    arr = np.empty((), dtype=object)
    arr[()] = _Payload(sentinel)
    m[META + ".npy"] = _npy(arr, allow_pickle=True)
    return m


@_member_edit
def unexpected_member(m, sentinel):
    m["param/extra.npy"] = _npy(np.zeros(2, np.float32))
    return m


@_member_edit
def missing_member(m, sentinel):
    del m["param/b.npy"]
    return m


@_member_edit
def missing_metadata(m, sentinel):
    del m[META + ".npy"]
    return m


@_member_edit
def wrong_shape(m, sentinel):
    m["param/W.npy"] = _npy(np.zeros((2, 3), np.float32))
    return m


@_member_edit
def wrong_dtype(m, sentinel):
    m["param/W.npy"] = _npy(np.zeros((3, 2), np.float64))
    return m


@_member_edit
def integer_params(m, sentinel):
    m["param/W.npy"] = _npy(np.zeros((3, 2), np.int32))
    return m


@_member_edit
def structured_dtype(m, sentinel):
    m["param/W.npy"] = _npy(np.zeros((3, 2), [("a", np.float32)]))
    return m


@_member_edit
def truncated_member(m, sentinel):
    m["param/W.npy"] = m["param/W.npy"][:-5]
    return m


@_member_edit
def trailing_data(m, sentinel):
    m["param/W.npy"] = m["param/W.npy"] + b"\0" * 8
    return m


@_member_edit
def header_claims_more(m, sentinel):
    raw = m["param/W.npy"]
    m["param/W.npy"] = raw.replace(b"(3, 2)", b"(3000000000, 2)")
    return m


@_member_edit
def bad_magic(m, sentinel):
    m["param/W.npy"] = b"\x93NUMPZ" + m["param/W.npy"][6:]
    return m


@_member_edit
def npy_version_3(m, sentinel):
    raw = bytearray(m["param/W.npy"])
    raw[6] = 3
    m["param/W.npy"] = bytes(raw)
    return m


@_member_edit
def huge_header(m, sentinel):
    raw = m["param/W.npy"]
    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }" + " " * 20000 + "\n"
    m["param/W.npy"] = (b"\x93NUMPY\x02\x00" + struct.pack("<I", len(hdr)) + hdr.encode()
                        + raw[-24:])
    return m


@_member_edit
def metadata_not_a_string(m, sentinel):
    m[META + ".npy"] = _npy(np.zeros((2, 2)))
    return m


@_member_edit
def metadata_as_bytes(m, sentinel):
    m[META + ".npy"] = _npy(np.array(b'{"format": "nn_core.checkpoint"}'))
    return m


@_member_edit
def duplicate_members(m, sentinel):
    return list(m.items()) + [("param/W.npy", _npy(np.ones((3, 2), np.float32)))]


def compressed_members(path, members, meta, sentinel):
    return _zip(path, members, zipfile.ZIP_DEFLATED)


def encrypted_flag(path, members, meta, sentinel):
    _zip(path, members)
    raw = bytearray(path.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        i = raw.find(sig)
        while i >= 0:
            flag_at = i + (6 if sig == b"PK\x03\x04" else 8)
            raw[flag_at] |= 1
            i = raw.find(sig, i + 4)
    path.write_bytes(bytes(raw))
    return path


def oversized_metadata(path, members, meta, sentinel):
    meta = dict(meta)
    meta["extra"] = {"pad": "x" * (checkpoint.MAX_META_CHARS + 10)}
    return _zip(path, _with_meta(members, meta))


def stored_size_lie(path, members, meta, sentinel):
    """The directory says the stored weight member holds 1 GiB."""
    _zip(path, members)
    raw = bytearray(path.read_bytes())
    i = raw.find(b"PK\x01\x02")
    while raw[i + 46:i + 46 + 11] != b"param/W.npy":
        i = raw.find(b"PK\x01\x02", i + 4)
    struct.pack_into("<LL", raw, i + 20, 1 << 30, 1 << 30)
    path.write_bytes(bytes(raw))
    return path


def not_a_zip(path, members, meta, sentinel):
    path.write_bytes(b"hello, not a zip")
    return path


def empty_file(path, members, meta, sentinel):
    path.write_bytes(b"")
    return path


def raw_pickle(path, members, meta, sentinel):
    path.write_bytes(pickle.dumps(_Payload(sentinel)))
    return path


def plain_npy(path, members, meta, sentinel):
    np.save(path.with_suffix(".npy"), np.ones(3))
    os.replace(path.with_suffix(".npy"), path)
    return path


def foreign_npz(path, members, meta, sentinel):
    np.savez(path, a=np.ones(3))
    return path


def torch_like_zip(path, members, meta, sentinel):
    return _zip(path, {"archive/data.pkl": pickle.dumps(_Payload(sentinel)),
                       "archive/version": b"3"})


def directory_flood(path, members, meta, sentinel):
    """The checkpoint's members plus MAX_MEMBERS empty entries in the zip directory."""
    _zip(path, members)
    raw = path.read_bytes()
    i = raw.rfind(b"PK\x05\x06")
    _, _, _, n, _, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", raw[i:i + 22])
    extra = b"".join(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, 0, 0,
                                 0, len(name), 0, 0, 0, 0, 0, 0) + name
                     for name in (f"f{k:05d}".encode() for k in range(checkpoint.MAX_MEMBERS)))
    n_total = min(n + checkpoint.MAX_MEMBERS, 0xFFFF)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n_total, n_total,
                       cd_size + len(extra), cd_offset, 0)
    path.write_bytes(raw[:i] + extra + eocd)
    return path


def zip64_directory_claims(path, members, meta, sentinel):
    """A zip64 end record declaring 2**40 entries in a 2**40-byte directory."""
    _zip(path, members)
    raw = path.read_bytes()
    i = raw.rfind(b"PK\x05\x06")
    eocd = bytearray(raw[i:])
    struct.pack_into("<HH", eocd, 8, 0xFFFF, 0xFFFF)
    struct.pack_into("<L", eocd, 12, 0xFFFFFFFF)
    z64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 2 ** 40, 2 ** 40, 2 ** 40, 0)
    loc = struct.pack("<4sLQL", b"PK\x06\x07", 0, i, 1)
    path.write_bytes(raw[:i] + z64 + loc + bytes(eocd))
    return path


MEMBER_CRAFTS = [pickled_object_array, pickle_member, pickled_metadata, unexpected_member,
                 missing_member, missing_metadata, wrong_shape, wrong_dtype, integer_params,
                 structured_dtype, truncated_member, trailing_data, header_claims_more,
                 bad_magic, npy_version_3, huge_header, metadata_not_a_string,
                 metadata_as_bytes, duplicate_members, compressed_members, encrypted_flag,
                 stored_size_lie,
                 oversized_metadata, not_a_zip, empty_file, raw_pickle, plain_npy,
                 foreign_npz, torch_like_zip, directory_flood, zip64_directory_claims]

CRAFTS = ([(f"{group}-{i}", _edit(fn)) for group, fns in META_EDITS.items()
           for i, fn in enumerate(fns)]
          + [(f"raw-meta-{i}", fn) for i, fn in enumerate(RAW_META)]
          + [(fn.__name__, fn) for fn in MEMBER_CRAFTS])


@pytest.mark.parametrize("name, craft", CRAFTS, ids=[c[0] for c in CRAFTS])
def test_crafted_file_is_refused_and_runs_nothing(tmp_path, base, canary, name, craft):
    _, members, meta = base
    path = craft(tmp_path / "crafted.npz", members, meta, canary)
    # what only rebuilding the module can tell is load's to refuse; the rest, everyone's
    rebuild_only = name.split("-")[0] in ("class", "args", "huge")
    for fn in (load,) if rebuild_only else (load, read_metadata, read_state_dict):
        with pytest.raises(CheckpointError):
            fn(path)
    if name.startswith("training"):
        with pytest.raises(CheckpointError):
            load_training_state(path)


def test_messages_name_the_problem(tmp_path, base, canary):
    _, members, meta = base
    cases = [
        (_edit(_set("module", "class", "nn_core.__main__:X")), r"'nn_core.__main__:X' is not "
         r"an nn_core Module that load\(\) rebuilds"),
        (_edit(_set("module", "args", [100_000, 100_000])), "more memory than the 2 declared"),
        (_edit(_set("module", "args", [4, 2])), r"'W' has shape \(4, 2\) in the rebuilt module, "
         r"\(3, 2\) in the file"),
        (_edit(_set("version", 99)), "newer"),
        (missing_member, "member 'param/b.npy' is missing"),
        (unexpected_member, "unexpected member 'param/extra.npy'"),
        (pickled_object_array, "holds Python objects"),
        (compressed_members, "compressed"),
        (stored_size_lie, "declares 1073741824 bytes"),
        (truncated_member, "truncated or tampered"),
        (not_a_zip, "not a readable nn_core checkpoint"),
        (foreign_npz, "not an nn_core checkpoint"),
        (directory_flood, "members; at most 65536|zip directory declares"),
    ]
    for craft, pattern in cases:
        path = craft(tmp_path / "c.npz", members, meta, canary)
        with pytest.raises(CheckpointError, match=pattern):
            load(path)


def test_huge_module_is_refused_by_the_budget(tmp_path, base, canary):
    """Constructor arguments that would allocate without limit hit the budget (or the
    count check) before much is allocated."""
    _, members, meta = base
    for args, pattern in [([100_000, 100_000], "more memory"),
                          ([2 ** 40, 2], "more memory|could not rebuild")]:
        path = _edit(_set("module", "args", args))(tmp_path / "h.npz", members, meta, canary)
        with pytest.raises(CheckpointError, match=pattern):
            load(path)
    lm = nn_core.models.TransformerLM(13, 4, 1, 1, max_len=4, rng=0)
    save(lm, tmp_path / "lm.npz")
    lm_members = _members(tmp_path / "lm.npz")
    lm_meta = _meta_of(lm_members)
    lm_meta["module"]["args"][3] = 10 ** 7                # num_layers
    _zip(tmp_path / "lm2.npz", _with_meta(lm_members, lm_meta))
    with pytest.raises(CheckpointError, match="num_layers=10000000"):
        load(tmp_path / "lm2.npz")
    lm_meta["module"]["args"][3] = 3000                   # many tiny blocks: the budget
    lm_meta["module"]["args"][1] = 1024
    _zip(tmp_path / "lm3.npz", _with_meta(lm_members, lm_meta))
    with pytest.raises(CheckpointError):
        load(tmp_path / "lm3.npz")


def test_nothing_runs_when_the_file_names_nn_core_main(tmp_path, base):
    """A file naming the class ``nn_core.__main__:X``, loaded in a process whose argv would
    train: nothing is imported or run, and the host process carries on."""
    _, members, meta = base
    meta = json.loads(json.dumps(meta))
    meta["module"]["class"] = "nn_core.__main__:X"
    path = _zip(tmp_path / "x.npz", _with_meta(members, meta))
    out_dir = tmp_path / "would_train"
    code = (
        "import sys, nn_core\n"
        f"sys.argv = ['host', 'train', '--out', {str(out_dir)!r}, '--epochs', '1']\n"
        "try:\n"
        f"    nn_core.load({str(path)!r})\n"
        "except nn_core.CheckpointError as exc:\n"
        "    print('refused')\n"
        "print('nn_core.__main__' in sys.modules, 'nn_core.cli' in sys.modules)\n"
        "import nn_core.__main__\n"                        # importing it runs nothing either
        "print('host still running')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["refused", "False False", "host still running"]
    assert not out_dir.exists()


@pytest.mark.parametrize("flips", [60])
def test_bit_flips_never_load_something_else(tmp_path, rng, flips):
    net = _net(np.float64, 3)
    path = tmp_path / "m.npz"
    save(net, path)
    raw = path.read_bytes()
    reference = {k: v.copy() for k, v in net.parameters().items()}
    loaded = refused = 0
    for _ in range(flips):
        bad = bytearray(raw)
        i = int(rng.integers(len(bad)))
        bad[i] ^= 1 << int(rng.integers(8))
        (tmp_path / "f.npz").write_bytes(bytes(bad))
        try:
            again = load(tmp_path / "f.npz")
        except CheckpointError:
            refused += 1
            continue
        loaded += 1                                        # a harmless byte (a timestamp ...)
        assert repr(again) == repr(net)
        for k, v in again.parameters().items():
            np.testing.assert_array_equal(v, reference[k])
    assert refused > flips // 2


def test_truncated_files(tmp_path):
    path = tmp_path / "m.npz"
    save(_net(), path)
    raw = path.read_bytes()
    for n in sorted({0, 1, 10, 22, 100, len(raw) // 3, len(raw) // 2, len(raw) - 23,
                     len(raw) - 22, len(raw) - 1}):
        (tmp_path / "t.npz").write_bytes(raw[:n])
        with pytest.raises(CheckpointError):
            load(tmp_path / "t.npz")


def test_valid_variants_still_load(tmp_path, base):
    """Not tampering: Fortran order and big-endian arrays, and files an older nn_core
    (or numpy.savez by hand) wrote."""
    path, members, meta = base
    want = load(path).params["W"]
    m = dict(members)
    m["param/W.npy"] = _npy(np.asfortranarray(want))
    m["param/b.npy"] = _npy(load(path).params["b"].astype(">f4"))
    again = load(_zip(tmp_path / "v.npz", m))
    np.testing.assert_array_equal(again.params["W"], want)
    assert again.params["W"].dtype == np.float32 and again.params["W"].flags.c_contiguous
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(tmp_path / "by_hand.npz", **arrays)
    np.testing.assert_array_equal(load(tmp_path / "by_hand.npz").params["W"], want)


# ------------------------------------------------------------------ memory
def _deflate_bomb(path, gib=1):
    """A checkpoint of Linear(16384, 8192, float64) whose weight member inflates to
    ``gib`` GiB of zeros from about a megabyte (a real deflate stream)."""
    rows, cols = 16384, 8192 * gib
    meta = {"format": "nn_core.checkpoint", "version": 1,
            "module": {"class": "nn_core.layers:Linear", "args": [rows, cols],
                       "kwargs": {"dtype": {"__dtype__": "float64"}}, "dtype": "float64"},
            "params": {"W": [rows, cols], "b": [cols]}, "extra": None}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": (rows, cols)})
    header = buf.getvalue()
    chunk = bytes(16 << 20)
    n_chunks = rows * cols * 8 // len(chunk)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    c2 = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c2.compress(chunk) + c2.flush(zlib.Z_FULL_FLUSH)  # restartable: repeat it
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = zlib.crc32(header)
    for _ in range(n_chunks):
        crc = zlib.crc32(chunk, crc)
    stream = head + body * n_chunks + tail
    size = len(header) + n_chunks * len(chunk)
    bias = _npy(np.zeros(cols, np.float64))
    meta_npy = _npy(np.array(json.dumps(meta)))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(META + ".npy", meta_npy)
        zf.writestr("param/b.npy", bias)
        info = zipfile.ZipInfo("param/W.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size, info.compress_size, info.CRC = size, len(stream), crc
        # write the prepared stream as the member's data
        offset = zf.fp.tell()
        info.header_offset = offset
        zf.fp.write(info.FileHeader(zip64=True))
        zf.fp.write(stream)
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
        zf.start_dir = zf.fp.tell()
    return path


def test_deflate_bomb_helper_is_a_real_bomb(tmp_path):
    path = _deflate_bomb(tmp_path / "bomb.npz", gib=1)
    assert path.stat().st_size < 2 << 20
    with zipfile.ZipFile(path) as zf, zf.open("param/W.npy") as fh:
        assert zf.getinfo("param/W.npy").file_size > 1 << 30
        assert np.lib.format.read_magic(fh) == (1, 0)
        assert np.lib.format.read_array_header_1_0(fh)[0] == (16384, 8192)
        assert fh.read(1 << 20) == bytes(1 << 20)           # zeros, as long as one reads


def test_refusing_bombs_stays_under_50_mb(tmp_path):
    """Peak memory (max RSS) while refusing a 1 GiB deflate bomb, a directory flood and
    a huge-module file, measured in a fresh process after a warm-up load."""
    small = tmp_path / "small.npz"
    save(Linear(3, 2, rng=0), small)
    bombs = [str(_deflate_bomb(tmp_path / "bomb.npz"))]
    members = _members(small)
    meta = _meta_of(members)
    bombs.append(str(directory_flood(tmp_path / "flood.npz", members, meta, None)))
    bombs.append(str(_edit(_set("module", "args", [100_000, 100_000]))(
        tmp_path / "huge.npz", members, meta, None)))
    code = (
        "import resource, nn_core\n"
        f"nn_core.load({str(small)!r})\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"for p in {bombs!r}:\n"
        "    try:\n"
        "        nn_core.load(p)\n"
        "    except nn_core.CheckpointError:\n"
        "        print('refused')\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(after - before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[:3] == ["refused"] * 3
    assert int(lines[3]) < 50 * 1024, f"max RSS grew by {int(lines[3]) / 1024:.1f} MiB"
