"""Save a module to one ``.npz`` file and rebuild it without the constructing code.

The file is an uncompressed zip of ``.npy`` members (what :func:`numpy.savez` writes):

* ``__nn_core_checkpoint__.npy``: a JSON document (a 0-d unicode array) with the format
  name and version, the module's class (``"package.module:QualName"``), its constructor
  arguments (recorded by :class:`~nn_core.Module` in ``_init_args``), its dtype, the
  parameter names and shapes, an optional user ``extra`` dict (training history, task
  config ...) and, optionally, ``training``: the state needed to resume training;
* ``param/<name>.npy``: one array per entry of ``module.parameters()``;
* ``train/<k>.npy``: the arrays of the training state (optimizer buffers ...), which the
  JSON document refers to by name, shape and dtype.

Loading a file runs no code named by the file and reads no more than it has checked:

1. the path must be a regular file (a FIFO or a device is refused without reading it);
2. the zip directory is bounded (:data:`MAX_MEMBERS`, :data:`MAX_DIRECTORY_BYTES`), every
   member must be stored uncompressed, unencrypted, and the members together may not
   declare more bytes than the file holds;
3. the JSON document is bounded (:data:`MAX_META_CHARS`, :data:`MAX_META_CONTAINERS`) and
   every field of it is checked; any malformed shape raises :class:`CheckpointError`;
4. the set of members must be exactly the metadata file, the declared parameters and the
   declared training arrays, and every ``.npy`` header (shape, dtype, size) must match
   its declaration before any array data are read;
5. the module is rebuilt only from classes of a fixed registry
   (:func:`registered_classes`: the public Module classes of :mod:`nn_core.layers`,
   :mod:`~nn_core.losses`, :mod:`~nn_core.attention`, :mod:`~nn_core.recurrent` and
   :mod:`~nn_core.models`, plus the class paths older checkpoints name); nothing is
   imported because a file says so.  Its constructor runs under a NumPy allocation
   budget derived from the declared parameter sizes, so constructor arguments cannot ask
   for more memory than the file's parameters justify;
6. the parameters are read into the rebuilt module, and their rebuilt names, shapes and
   dtype must equal the declared ones.

Every failure is a :class:`CheckpointError` (a ``ValueError``), except operating-system
errors such as ``FileNotFoundError``, ``IsADirectoryError`` or ``PermissionError``.

Writes are atomic (:func:`atomic_write`): the archive goes to a temporary file beside
the target (``<name>.nnc<random>.tmp``, created with the user's umask, or with the
existing target's permission bits), is flushed and fsync'ed, and is moved over the
target with ``os.replace``; a crash or kill mid-save leaves the previous file untouched.
Temporary files that a killed writer left behind for the same target are removed by
the next write (a live writer holds a lock on its own, so concurrent writers are safe).
Writing to a symbolic link writes the file it points to.

Modules of your own (classes outside the registry) can be saved; rebuild them yourself
and load their parameters with ``module.load_state_dict(read_state_dict(path))``.

Examples
--------
>>> import numpy as np, os, tempfile
>>> from nn_core.layers import Linear, Sequential, LayerNorm
>>> net = Sequential(Linear(4, 8, rng=0), LayerNorm(8))
>>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
>>> _ = save(net, path, extra={"epochs": 3})
>>> again = load(path)
>>> x = np.ones((2, 4), np.float32)
>>> bool(np.array_equal(net(x), again(x)))
True
>>> read_metadata(path)["extra"]
{'epochs': 3}
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import contextlib
import errno
import inspect
import json
import math
import os
import re
import secrets
import stat
import struct
import warnings
import zipfile

import numpy as np

from .module import Module, ModuleList

if TYPE_CHECKING:  # names used in annotations only
    from collections.abc import Mapping
    from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - no advisory locks (Windows): no stale-file cleanup
    fcntl = None

__all__ = ["save", "load", "read_metadata", "read_state_dict", "load_training_state",
           "registered_classes", "atomic_write", "CheckpointError"]

FORMAT = "nn_core.checkpoint"
VERSION = 1
_META_KEY = "__nn_core_checkpoint__"
_META_MEMBER = _META_KEY + ".npy"
_PARAM_PREFIX = "param/"
_TRAIN_PREFIX = "train/"

#: longest JSON document (characters) that :func:`load` parses
MAX_META_CHARS = 4 << 20
#: most JSON lists and objects in that document
MAX_META_CONTAINERS = 100_000
#: most members of the zip archive
MAX_MEMBERS = 65_536
#: largest zip central directory (bytes)
MAX_DIRECTORY_BYTES = 4 << 20
#: deepest nesting of constructor arguments or training state
MAX_DEPTH = 64
_MAX_NDIM = 32
_MAX_HEADER = 10_000
_CHUNK = 1 << 20
# argument names that multiply sub-modules; each is at most the declared parameter count
_COUNT_ARGS = ("num_layers",)
# dtypes a file may name (for modules: float32/float64 only)
_MODULE_DTYPES = ("float32", "float64")
_ARRAY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                 "uint64", "float16", "float32", "float64")


class CheckpointError(ValueError):
    """The file is not a readable nn_core checkpoint (corrupted, foreign, oversized,
    tampered, or its contents do not match the module it describes)."""


# ------------------------------------------------------------------ registry
_LEGACY_CLASSES = {
    # class paths written before the models moved to nn_core.models
    "nn_core.tasks.seq2seq:Seq2SeqModel": "Seq2SeqModel",
    "nn_core.tasks.forecast:Forecaster": "Forecaster",
    "nn_core.tasks.lm:TransformerLM": "TransformerLM",
    "nn_core.tasks.lm:TransformerBlock": "TransformerBlock",
}


def _class_path(obj_or_cls) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def registered_classes() -> dict:
    """The classes :func:`load` may rebuild, by the class path a file names.

    The public :class:`~nn_core.Module` classes (``__all__``) of :mod:`nn_core.layers`,
    :mod:`nn_core.losses`, :mod:`nn_core.attention`, :mod:`nn_core.recurrent`,
    :mod:`nn_core.transformer` and :mod:`nn_core.models`, and :class:`~nn_core.ModuleList`, each under the path
    :func:`save` records (``"nn_core.layers:Linear"``) and its public package path
    (``"nn_core.attention:MultiHeadAttention"``); plus the paths older checkpoints name
    for the models (``"nn_core.tasks.seq2seq:Seq2SeqModel"`` ...).

    Returns
    -------
    dict[str, type]
        A new dict on every call.
    """
    from . import attention, layers, losses, models, recurrent, transformer

    reg = {}
    for pkg in (layers, losses, attention, recurrent, transformer, models):
        for name in getattr(pkg, "__all__", ()):
            obj = getattr(pkg, name, None)
            if isinstance(obj, type) and issubclass(obj, Module) and obj is not Module:
                reg[_class_path(obj)] = obj
                reg[f"{pkg.__name__}:{name}"] = obj
    reg[_class_path(ModuleList)] = ModuleList
    reg["nn_core:ModuleList"] = ModuleList
    for old, name in _LEGACY_CLASSES.items():
        reg[old] = getattr(models, name)
    return reg


# ------------------------------------------------------------------ encoding
def _encode(value, where, modules=True):
    """JSON-able form of a constructor argument or ``extra`` value (TypeError naming
    ``where`` otherwise).  ``modules=False`` refuses Modules (in ``extra``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(value, Module):
        if not modules:
            raise TypeError(f"cannot save {where}: it is a Module; save modules with "
                            "save() and keep only plain data in extra")
        return {"__module__": _describe(value)}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        name = np.dtype(value).name
        if name not in _ARRAY_DTYPES:
            raise TypeError(f"cannot save {where}: dtype {name} is not a real numeric dtype")
        return {"__dtype__": name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]", modules) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]", modules) for i, v in enumerate(value)]
    if isinstance(value, dict):
        _check_keys(value, where)
        return {k: _encode(v, f"{where}[{k!r}]", modules) for k, v in value.items()}
    if (isinstance(value, np.ndarray) and value.size <= 4096
            and value.dtype.name in _ARRAY_DTYPES):
        return {"__array__": value.tolist(), "dtype": value.dtype.name}
    raise TypeError(
        f"cannot save {where} of type {type(value).__name__}: checkpoints store None, "
        "bool, int, float, str, list, tuple, dict, NumPy dtypes, small arrays and Modules"
    )


def _check_keys(d, where):
    if not all(isinstance(k, str) for k in d):
        raise TypeError(f"cannot save {where}: dict keys must be str")
    if any(k.startswith("__") and k.endswith("__") for k in d):
        raise TypeError(f"cannot save {where}: dunder dict keys are reserved")


def _describe(module: Module) -> dict:
    args, kwargs = getattr(module, "_init_args", ((), {}))
    name = type(module).__name__
    return {
        "class": _class_path(module),
        "args": [_encode(a, f"constructor argument {i} of {name}") for i, a in enumerate(args)],
        "kwargs": {k: _encode(v, f"constructor argument {k!r} of {name}")
                   for k, v in kwargs.items() if k != "rng"},
        "dtype": np.dtype(module.dtype).name,
    }


def _pack(value, arrays, where, depth=0):
    """JSON-able form of training state; arrays become ``train/<k>`` members."""
    if depth > MAX_DEPTH:
        raise TypeError(f"cannot save {where}: nested deeper than {MAX_DEPTH}")
    if isinstance(value, np.ndarray):
        if value.dtype.name not in _ARRAY_DTYPES or value.ndim > _MAX_NDIM:
            raise TypeError(f"cannot save {where}: arrays of dtype {value.dtype} are not "
                            "stored (real numeric dtypes only)")
        name = f"{_TRAIN_PREFIX}{len(arrays)}"
        arrays[name] = np.ascontiguousarray(value)
        return {"__member__": name, "shape": list(value.shape), "dtype": value.dtype.name}
    if isinstance(value, tuple):
        return {"__tuple__": [_pack(v, arrays, f"{where}[{i}]", depth + 1)
                              for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_pack(v, arrays, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        _check_keys(value, where)
        return {k: _pack(v, arrays, f"{where}[{k!r}]", depth + 1) for k, v in value.items()}
    return _encode(value, where, modules=False)


# ------------------------------------------------------------------ decoding
def _fail(where, what):
    raise CheckpointError(f"{where}: {what}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _decode(value, where, depth, build=None):
    """Python value of an encoded argument / extra / training-state value.

    ``build(desc, depth)`` rebuilds ``{"__module__": desc}`` (constructor arguments
    only); without it such an entry is returned as its description."""
    if depth > MAX_DEPTH:
        _fail(where, f"nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, where, depth + 1, build) for v in value]
    if not isinstance(value, dict):  # pragma: no cover - json yields nothing else
        _fail(where, f"unexpected {type(value).__name__}")
    tags = [k for k in value if k.startswith("__") and k.endswith("__")]
    if not tags:
        return {k: _decode(v, where, depth + 1, build) for k, v in value.items()}
    tag = tags[0]
    if len(tags) > 1 or set(value) - {tag, "dtype", "shape"}:
        _fail(where, f"malformed entry with keys {sorted(value)[:5]}")
    body = value[tag]
    if tag == "__module__":
        if set(value) != {tag}:
            _fail(where, "malformed module entry")
        return build(body, depth + 1) if build is not None else value
    if tag == "__dtype__" and set(value) == {tag}:
        if body not in _ARRAY_DTYPES:
            _fail(where, f"dtype {body!r:.40} is not one of {', '.join(_ARRAY_DTYPES)}")
        return np.dtype(body).type
    if tag == "__tuple__" and set(value) == {tag}:
        if not isinstance(body, list):
            _fail(where, "a tuple entry must hold a list")
        return tuple(_decode(v, where, depth + 1, build) for v in body)
    if tag == "__float__" and set(value) == {tag}:
        if not isinstance(body, str) or body.lower() not in ("nan", "inf", "-inf"):
            _fail(where, f"a non-finite float entry must be 'nan', 'inf' or '-inf', got "
                         f"{body!r:.40}")
        return float(body)
    if tag == "__array__" and set(value) == {tag, "dtype"}:
        if value["dtype"] not in _ARRAY_DTYPES:
            _fail(where, f"array dtype {value['dtype']!r:.40} is not a real numeric dtype")
        try:
            arr = np.array(body, dtype=value["dtype"])
        except (TypeError, ValueError, OverflowError) as exc:
            _fail(where, f"malformed array entry: {exc}")
        if arr.size > 4096 or arr.ndim > _MAX_NDIM:
            _fail(where, "inline arrays hold at most 4096 elements")
        return arr
    _fail(where, f"unknown entry {tag!r:.40}")


def _check_shape(shape, where):
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(_is_int(n) and n >= 0 for n in shape)):
        _fail(where, f"a shape must be a list of at most {_MAX_NDIM} integers >= 0, "
                     f"got {shape!r:.80}")
    return tuple(shape)


def _check_desc(desc, where):
    """A module description: dict with ``class``, ``args``, ``kwargs`` and ``dtype``."""
    if not isinstance(desc, dict):
        _fail(where, f"the module description must be an object, got {type(desc).__name__}")
    for key, kind in (("class", str), ("args", list), ("kwargs", dict), ("dtype", str)):
        if not isinstance(desc.get(key), kind):
            _fail(where, f"the module description needs {key!r} as a {kind.__name__}")
    if desc["dtype"] not in _MODULE_DTYPES:
        _fail(where, f"module dtype must be float32 or float64, got {desc['dtype']!r:.40}")


def _check_meta(meta, where):
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(where, f"unknown checkpoint format {str(meta)[:80]!r}")
    version = meta.get("version")
    if not _is_int(version) or version < 1:
        _fail(where, f"invalid checkpoint version {version!r:.40}")
    if version > VERSION:
        _fail(where, f"checkpoint version {version} is newer than this nn_core supports "
                     f"({VERSION}); upgrade nn_core")
    _check_desc(meta.get("module"), where)
    params = meta.get("params")
    if not isinstance(params, dict):
        _fail(where, "'params' must map parameter names to shapes")
    for name, shape in params.items():
        if not name or len(name) > 1024 or "\x00" in name:
            _fail(where, f"invalid parameter name {name!r:.60}")
        _check_shape(shape, f"{where}: shape of parameter {name!r}")
    if meta.get("training") is not None and not isinstance(meta["training"], dict):
        _fail(where, "'training' must be an object")


def _training_members(tree, where):
    """``{member: (shape, dtype)}`` of the array references in the training state."""
    out = {}
    stack = [(tree, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            _fail(where, f"training state nested deeper than {MAX_DEPTH}")
        if isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, dict):
            if "__member__" in value:
                name = value["__member__"]
                if (set(value) != {"__member__", "shape", "dtype"} or not isinstance(name, str)
                        or not re.fullmatch(re.escape(_TRAIN_PREFIX) + r"[0-9]{1,9}", name)):
                    _fail(where, f"malformed array reference {str(value)[:80]!r}")
                if value["dtype"] not in _ARRAY_DTYPES:
                    _fail(where, f"array {name} has dtype {value['dtype']!r:.40}, not a real "
                                 "numeric dtype")
                if name + ".npy" in out:
                    _fail(where, f"array {name} is referenced twice")
                shape = _check_shape(value["shape"], f"{where}: shape of {name}")
                out[name + ".npy"] = (shape, np.dtype(value["dtype"]))
            else:
                stack.extend((v, depth + 1) for v in value.values())
    return out


# ------------------------------------------------------------------ reading
def _open_regular(path):
    """A binary file object for ``path``, refusing anything but a regular file before
    opening it (a FIFO would block, a device could stream forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path!r}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{path!r} is a directory, not a checkpoint "
                                f"file (e.g. {os.path.join(path, 'model.npz')!r})")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path!r} is not a regular file (a FIFO, socket or device); "
                              "checkpoints are regular .npz files")
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
             | getattr(os, "O_CLOEXEC", 0))
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):    # replaced since the stat
            raise CheckpointError(f"{path!r} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _directory_size(fh, size):
    """``(entries, central directory bytes)`` from the zip end record, located the way
    :mod:`zipfile` locates it; ``None`` when there is none."""
    if size < 22:
        return None
    tail_len = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    i = len(tail) - 22
    if not (tail[i:i + 4] == b"PK\x05\x06" and tail[-2:] == b"\x00\x00"):
        i = tail.rfind(b"PK\x05\x06")
        if i < 0 or i + 22 > len(tail):
            return None
    _, _, _, _, entries, cd_size, _, _ = struct.unpack("<4s4H2LH", tail[i:i + 22])
    end_pos = size - tail_len + i
    if (entries == 0xFFFF or cd_size == 0xFFFFFFFF) and end_pos >= 20:
        fh.seek(end_pos - 20)
        loc = fh.read(20)
        if loc[:4] == b"PK\x06\x07":
            offset = struct.unpack("<4sLQL", loc)[2]
            if offset + 56 <= size:
                fh.seek(offset)
                rec = fh.read(56)
                if rec[:4] == b"PK\x06\x06":
                    fields = struct.unpack("<4sQ2H2L4Q", rec)
                    entries, cd_size = fields[7], fields[8]
    return entries, cd_size


class _Archive:
    """An opened checkpoint whose zip directory and metadata have been checked."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.fh = _open_regular(self.path)
        try:
            self.size = os.fstat(self.fh.fileno()).st_size
            self._open_zip()
            self.meta = self._read_meta()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        zf = getattr(self, "zf", None)
        if zf is not None:
            zf.close()
        self.fh.close()

    def error(self, what):
        return CheckpointError(f"{self.path!r}: {what}")

    # ---------------------------------------------------------------- zip level
    def _open_zip(self):
        directory = _directory_size(self.fh, self.size)
        if directory is None:
            raise CheckpointError(f"{self.path!r} is not a readable nn_core checkpoint "
                                  "(.npz): no zip directory (truncated or not a zip file)")
        entries, cd_size = directory
        if entries > MAX_MEMBERS or cd_size > min(MAX_DIRECTORY_BYTES, self.size):
            raise self.error(f"the zip directory declares {entries} members in {cd_size} "
                             f"bytes; at most {MAX_MEMBERS} members and "
                             f"{MAX_DIRECTORY_BYTES} bytes are read")
        self.fh.seek(0)
        try:
            self.zf = zipfile.ZipFile(self.fh)
            infos = self.zf.infolist()
        except Exception as exc:
            raise CheckpointError(f"{self.path!r} is not a readable nn_core checkpoint "
                                  f"(.npz): {type(exc).__name__}: {exc}") from exc
        if len(infos) > MAX_MEMBERS:
            raise self.error(f"{len(infos)} members; at most {MAX_MEMBERS} are read")
        self.infos = {}
        total = 0
        for info in infos:
            name = info.filename
            if name in self.infos:
                raise self.error(f"member {name!r} appears twice")
            if info.flag_bits & 0x1:
                raise self.error(f"member {name!r} is encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                raise self.error(f"member {name!r} is compressed; nn_core checkpoints store "
                                 "their arrays uncompressed")
            if (info.file_size != info.compress_size
                    or info.header_offset + info.compress_size > self.size):
                raise self.error(f"member {name!r} declares {info.file_size} bytes, which the "
                                 f"{self.size}-byte file does not hold")
            total += info.file_size
            self.infos[name] = info
        if total > self.size:
            raise self.error(f"members declare {total} bytes in a {self.size}-byte file")

    def _header(self, fp, name):
        """``(shape, fortran_order, dtype)`` of the ``.npy`` member open as ``fp``,
        checked against the member's size; nothing after the header is read."""
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                    fp, max_header_size=_MAX_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                    fp, max_header_size=_MAX_HEADER)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            header_len = fp.tell()
        except CheckpointError:
            raise
        except Exception as exc:
            raise self.error(f"member {name!r} has no valid .npy header: "
                             f"{type(exc).__name__}: {exc}") from exc
        if dtype.hasobject:
            raise self.error(f"member {name!r} holds Python objects; checkpoints store "
                             "numeric arrays only (pickles are never loaded)")
        if dtype.fields is not None or dtype.subdtype is not None:
            raise self.error(f"member {name!r} has a structured dtype {dtype}")
        if len(shape) > _MAX_NDIM:
            raise self.error(f"member {name!r} has {len(shape)} dimensions")
        nbytes = math.prod(shape) * dtype.itemsize
        if header_len + nbytes != self.infos[name].file_size:
            raise self.error(f"member {name!r}: its header declares {nbytes} bytes of "
                             f"{dtype} {tuple(shape)} but the member holds "
                             f"{self.infos[name].file_size - header_len} (truncated or "
                             "tampered)")
        return tuple(shape), fortran, dtype

    def _read_exact(self, fp, buf, name):
        n = len(buf)
        pos = 0
        while pos < n:
            chunk = fp.read(min(_CHUNK, n - pos))
            if not chunk:
                raise self.error(f"member {name!r} ends early (truncated)")
            buf[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
            pos += len(chunk)
        if fp.read(1):
            raise self.error(f"member {name!r} has data after its array")

    # ---------------------------------------------------------------- metadata
    def _read_meta(self):
        info = self.infos.get(_META_MEMBER)
        if info is None:
            raise CheckpointError(f"{self.path!r} is an .npz file but not an nn_core "
                                  f"checkpoint (no {_META_KEY!r} entry)")
        try:
            with self.zf.open(info) as fp:
                shape, _, dtype = self._header(fp, _META_MEMBER)
                if dtype.kind != "U" or shape != ():
                    raise self.error(f"the metadata member holds {dtype} {shape}, not a "
                                     "JSON string")
                if dtype.itemsize // 4 > MAX_META_CHARS:
                    raise self.error(f"the metadata is {dtype.itemsize // 4} characters; at "
                                     f"most {MAX_META_CHARS} are read")
                raw = np.empty(dtype.itemsize, np.uint8)
                self._read_exact(fp, raw, _META_MEMBER)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise self.error(f"checkpoint metadata is corrupted: {type(exc).__name__}: "
                             f"{exc}") from exc
        try:
            text = str(raw.view(dtype)[0])
        except (UnicodeDecodeError, ValueError) as exc:
            raise self.error(f"checkpoint metadata is not text: {exc}") from exc
        if text.count("[") + text.count("{") > MAX_META_CONTAINERS:
            raise self.error(f"checkpoint metadata has more than {MAX_META_CONTAINERS} "
                             "lists and objects")
        try:
            meta = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise self.error(f"checkpoint metadata is corrupted: {type(exc).__name__}: "
                             f"{exc}") from exc
        _check_meta(meta, repr(self.path))
        meta["extra"] = _decode(meta.get("extra"), f"{self.path!r}: extra", 0)
        return meta

    # ----------------------------------------------------------------- members
    def check_members(self):
        """Every member's name and ``.npy`` header against the metadata; returns
        ``{member: (shape, dtype)}`` of the array members."""
        meta = self.meta
        dtype = np.dtype(meta["module"]["dtype"])
        expected = {}
        for name, shape in meta["params"].items():
            expected[f"{_PARAM_PREFIX}{name}.npy"] = (tuple(shape), dtype)
        if meta.get("training") is not None:
            for member, decl in _training_members(meta["training"], repr(self.path)).items():
                if member in expected:
                    raise self.error(f"member {member!r} is declared twice")
                expected[member] = decl
        have = set(self.infos) - {_META_MEMBER}
        missing = sorted(set(expected) - have)
        unexpected = sorted(have - set(expected))
        if missing:
            raise self.error(f"member {missing[0]!r} is missing ({len(missing)} missing in "
                             "all; truncated or tampered)")
        if unexpected:
            raise self.error(f"unexpected member {unexpected[0]!r} ({len(unexpected)} in "
                             "all): not part of an nn_core checkpoint")
        for member, (shape, want) in expected.items():
            try:
                with self.zf.open(self.infos[member]) as fp:
                    got_shape, _, got = self._header(fp, member)
            except CheckpointError:
                raise
            except Exception as exc:
                raise self.error(f"member {member!r} is corrupted: {type(exc).__name__}: "
                                 f"{exc}") from exc
            if got_shape != shape:
                raise self.error(f"member {member!r} has shape {got_shape}, the metadata "
                                 f"says {shape}")
            if got.newbyteorder("=") != want:
                raise self.error(f"member {member!r} has dtype {got}, the metadata says "
                                 f"{want}")
        return expected

    def read_array(self, member, out=None):
        """The array of ``member`` (checked by :meth:`check_members`), read in chunks
        straight into ``out`` (a C-contiguous array of its shape and dtype) if given."""
        try:
            with self.zf.open(self.infos[member]) as fp:
                shape, fortran, dtype = self._header(fp, member)
                native = dtype.newbyteorder("=")
                direct = (out is not None and not fortran and dtype == native
                          and out.dtype == dtype and out.shape == shape
                          and out.flags.c_contiguous)
                if direct:
                    arr = out
                else:
                    arr = np.empty(shape[::-1] if fortran else shape, dtype)
                    arr = arr.T if fortran else arr
                flat = arr.reshape(-1, order="A")
                self._read_exact(fp, flat.view(np.uint8), member)
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise self.error(f"member {member!r} is corrupted: {type(exc).__name__}: "
                             f"{exc}") from exc
        if direct:
            return out
        arr = np.ascontiguousarray(arr, dtype=native)
        if out is not None:
            out[...] = arr
            return out
        return arr


# ------------------------------------------------------------------ rebuilding
def _build_budget(meta):
    """Bytes NumPy may hold while the module is constructed: four float64 copies of the
    declared parameters (parameters, gradients and the initialisers' float64 draws take
    up to three) plus 4 MiB for small arrays.  The declared sizes are already capped by
    the file size, so a file cannot make its constructor allocate more than about
    4 * 8 / itemsize times its own size."""
    elements = sum(math.prod(s) for s in meta["params"].values())
    return 4 * 8 * elements + (4 << 20)


def _rebuild(path, meta):
    """The module described by ``meta``, constructed under an allocation budget."""
    from ._kernels import _alloc

    registry = registered_classes()
    n_params = len(meta["params"])
    where = repr(path)

    def build(desc, depth):
        if depth > MAX_DEPTH:
            _fail(where, f"modules nested deeper than {MAX_DEPTH}")
        _check_desc(desc, where)
        cls = registry.get(desc["class"])
        if cls is None:
            raise CheckpointError(
                f"{where}: checkpoint class {desc['class']!r:.120} is not an nn_core Module "
                "that load() rebuilds (see nn_core.checkpoint.registered_classes(); nothing "
                "was imported). For a module of your own, build it and call "
                "load_state_dict(nn_core.checkpoint.read_state_dict(path))")
        args = _decode(desc["args"], where, depth + 1, build)
        kwargs = _decode(desc["kwargs"], where, depth + 1, build)
        kwargs.pop("rng", None)
        try:
            bound = inspect.signature(cls).bind(*args, **kwargs)
        except TypeError as exc:
            raise CheckpointError(f"{where}: the constructor arguments do not fit "
                                  f"{desc['class']}: {exc}") from None
        for name in _COUNT_ARGS:
            n = bound.arguments.get(name)
            if _is_int(n) and n > max(n_params, 1):
                raise CheckpointError(f"{where}: {desc['class']} asks for {name}={n} but the "
                                      f"file declares only {n_params} parameter arrays")
        try:
            module = cls(*args, **kwargs)
        except MemoryError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{where}: could not rebuild {desc['class']} from the "
                                  f"checkpoint's constructor arguments: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if np.dtype(module.dtype).name != desc["dtype"]:
            raise CheckpointError(f"{where}: rebuilt {desc['class']} has dtype "
                                  f"{np.dtype(module.dtype)}, the checkpoint says "
                                  f"{desc['dtype']}")
        return module

    budget = _build_budget(meta)
    handler = _alloc.budget_handler(budget)
    old = _alloc.set_handler(handler)
    try:
        module = build(meta["module"], 0)
    except MemoryError as exc:
        if _alloc.budget_exceeded(handler):
            raise CheckpointError(
                f"{where}: the constructor arguments ask for more memory than the "
                f"{n_params} declared parameters justify (budget {budget} bytes)") from None
        raise CheckpointError(f"{where}: out of memory rebuilding the module: {exc}") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{where}: modules nested too deeply") from exc
    finally:
        _alloc.set_handler(old)
    if not isinstance(module, Module):  # pragma: no cover - registry holds Modules only
        raise CheckpointError(f"{where}: rebuilt object is not a Module")
    return module


def _check_rebuilt(path, meta, module):
    """The rebuilt module's parameters must be exactly the declared ones."""
    params = module.parameters()
    declared = meta["params"]
    name = type(module).__name__
    missing = [k for k in params if k not in declared]
    extra = [k for k in declared if k not in params]
    if missing or extra:
        raise CheckpointError(
            f"{path!r}: parameters do not match the rebuilt {name}: missing in the file "
            f"{missing[:5]}, unexpected in the file {extra[:5]}")
    for key, arr in params.items():
        if arr.shape != tuple(declared[key]):
            raise CheckpointError(
                f"{path!r}: parameters do not match the rebuilt {name}: {key!r} has shape "
                f"{arr.shape} in the rebuilt module, {tuple(declared[key])} in the file")
        if not arr.flags.c_contiguous:  # pragma: no cover - add_param makes them contiguous
            raise CheckpointError(f"{path!r}: parameter {key!r} is not contiguous")


# --------------------------------------------------------------------- API
def save(module: Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None, *,
         training_state: Mapping[str, Any] | None = None) -> str:
    """Write ``module`` (configuration, dtype, parameters) to ``path`` atomically.

    Parameters
    ----------
    module : Module
        Built through its constructor (so that ``_init_args`` is recorded).  Classes
        outside :func:`registered_classes` are saved too (with a warning), but
        :func:`load` will not rebuild them; use :func:`read_state_dict`.
    path : str or os.PathLike
        Destination file, used as given (no suffix is added; ``.npz`` is customary).
        A symbolic link is followed.  A new file gets the permissions of the user's
        umask; an existing one keeps its permission bits.
    extra : dict, optional
        JSON-serialisable user data stored alongside (read it with
        :func:`read_metadata`); no Modules.
    training_state : dict, optional
        State for resuming training (optimizer buffers, schedule, step, RNG states ...):
        str-keyed dicts, lists, tuples, scalars, strings and NumPy arrays of real
        dtypes, at any depth up to :data:`MAX_DEPTH`.  Arrays are stored as members;
        :func:`load_training_state` returns the same structure.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    TypeError
        ``module`` is not a Module, or a constructor argument / ``extra`` /
        ``training_state`` value is not serialisable (the message names it).
    ValueError
        The metadata would exceed the limits :func:`load` enforces.
    """
    if not isinstance(module, Module):
        raise TypeError(f"module must be an nn_core Module, got {type(module).__name__}")
    params = module.parameters()
    for name in params:
        if not name or len(name) > 1024 or "\x00" in name:
            raise ValueError(f"cannot save parameter name {name!r}")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "module": _describe(module),
        "params": {k: list(v.shape) for k, v in params.items()},
        "extra": _encode(extra, "extra", modules=False) if extra is not None else None,
    }
    train_arrays = {}
    if training_state is not None:
        if not isinstance(training_state, dict):
            raise TypeError("training_state must be a dict, got "
                            f"{type(training_state).__name__}")
        meta["training"] = _pack(training_state, train_arrays, "training_state")
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:  # pragma: no cover - _encode guards this
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc
    containers = meta_json.count("[") + meta_json.count("{")
    if len(meta_json) > MAX_META_CHARS or containers > MAX_META_CONTAINERS:
        raise ValueError(
            f"checkpoint metadata would be {len(meta_json)} characters with {containers} "
            f"lists/objects; load() reads at most {MAX_META_CHARS} and "
            f"{MAX_META_CONTAINERS} (keep extra small; put large data in arrays)")
    if _class_path(module) not in registered_classes():
        warnings.warn(f"{_class_path(module)} is not a registered nn_core class: "
                      "nn_core.load() will not rebuild it; restore it with "
                      "module.load_state_dict(nn_core.checkpoint.read_state_dict(path))",
                      stacklevel=2)
    arrays = {_PARAM_PREFIX + k: np.ascontiguousarray(v) for k, v in params.items()}
    arrays.update(train_arrays)
    arrays[_META_KEY] = np.array(meta_json)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
    return os.fspath(path)


def read_metadata(path) -> dict:
    """The checkpoint's JSON metadata (``module``, ``params``, ``extra``, ...), after
    checking every member's header; no array data are read and nothing is rebuilt.

    ``extra`` is decoded (tuples, non-finite floats, small arrays).  ``training`` (if
    present) is left encoded; :func:`load_training_state` returns it with its arrays.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError (a ValueError)
        Not an nn_core checkpoint, malformed, or corrupted.
    """
    with _Archive(path) as ar:
        ar.check_members()
        return dict(ar.meta)


def load(path: str | os.PathLike, with_metadata: bool = False) -> Module | tuple[Module, dict]:
    """Rebuild the module saved at ``path`` and load its parameters.

    Parameters
    ----------
    path : str or os.PathLike
        A regular file written by :func:`save` (or by an older nn_core: format
        version 1).
    with_metadata : bool
        Also return the metadata dict (see :func:`read_metadata`).

    Returns
    -------
    Module, or (Module, dict)
        The module is in training mode, as a freshly constructed one.  A training
        state in the file is not read (see :func:`load_training_state`).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        As for any file.
    CheckpointError (a ValueError)
        Malformed, foreign, oversized, truncated or tampered file; a class outside
        :func:`registered_classes`; constructor arguments that do not fit or ask for
        more memory than the declared parameters; or stored parameters that do not
        match the rebuilt module (named).
    """
    with _Archive(path) as ar:
        ar.check_members()
        meta = dict(ar.meta)
        module = _rebuild(ar.path, meta)
        _check_rebuilt(ar.path, meta, module)
        for name, arr in module.parameters().items():
            ar.read_array(f"{_PARAM_PREFIX}{name}.npy", out=arr)
    return (module, meta) if with_metadata else module


def read_state_dict(path) -> dict:
    """The parameters stored at ``path`` as ``{name: array}``, without rebuilding the
    module (for classes :func:`load` does not rebuild: build the module yourself, then
    ``module.load_state_dict(read_state_dict(path))``).  Same checks as :func:`load`."""
    with _Archive(path) as ar:
        ar.check_members()
        return {name: ar.read_array(f"{_PARAM_PREFIX}{name}.npy")
                for name in ar.meta["params"]}


def load_training_state(path) -> dict:
    """The training state saved with the module at ``path`` (the ``training_state``
    given to :func:`save`, with its arrays read back).

    Raises
    ------
    CheckpointError (a ValueError)
        The file carries no training state, or is malformed (as for :func:`load`).
    """
    with _Archive(path) as ar:
        ar.check_members()
        tree = ar.meta.get("training")
        if tree is None:
            raise CheckpointError(f"{ar.path!r} carries no training state (it was saved "
                                  "without one, e.g. at the end of an older run)")
        where = f"{ar.path!r}: training state"

        def unpack(value, depth):
            if isinstance(value, dict) and "__member__" in value:
                return ar.read_array(value["__member__"] + ".npy")
            if isinstance(value, list):
                return [unpack(v, depth + 1) for v in value]
            if isinstance(value, dict):
                if "__tuple__" in value and set(value) == {"__tuple__"}:
                    if not isinstance(value["__tuple__"], list):
                        _fail(where, "a tuple entry must hold a list")
                    return tuple(unpack(v, depth + 1) for v in value["__tuple__"])
                if any(k.startswith("__") and k.endswith("__") for k in value):
                    return _decode(value, where, depth)
                return {k: unpack(v, depth + 1) for k, v in value.items()}
            return _decode(value, where, depth)

        return unpack(tree, 0)


# ------------------------------------------------------------------ atomic writes
_TMP_TAG = "nnc"


def _temp_pattern(base):
    # ours: <base>.nnc<8>.tmp; nn_core before this version: <base>.<8 mkstemp chars>.tmp
    return re.compile(re.escape(base) + r"\.(?:" + _TMP_TAG + r")?[a-z0-9_]{8}\.tmp")


def _remove_stale_temps(directory, base):
    """Delete temporary files of ``base`` whose writer is gone (no lock held on them)."""
    if fcntl is None:  # pragma: no cover - no advisory locks
        return
    pattern = _temp_pattern(base)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not pattern.fullmatch(name):
            continue
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue                      # a live writer holds it
            cur = os.stat(full, follow_symlinks=False)
            if (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev):
                os.unlink(full)
        except OSError:
            pass
        finally:
            os.close(fd)


def _create_temp(directory, base, mode):
    """An exclusive, locked, newly created temporary file: ``(fd, path)``."""
    for _ in range(100):
        tmp = os.path.join(directory, f"{base}.{_TMP_TAG}{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink == 0:   # removed by a cleaner before we locked it
                    os.close(fd)
                    continue
            if mode is not None:
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd, tmp
    raise FileExistsError(f"could not create a temporary file for {base!r} in {directory!r}")


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Write ``path`` all at once or not at all: ``with atomic_write(p) as fh: ...``.

    The data go to a locked temporary file beside the target, which is flushed, fsync'ed
    and moved over the target with ``os.replace`` when the block ends without an
    exception (and deleted otherwise); the directory is fsync'ed after the move.
    Temporary files of the same target left behind by killed writers are deleted first.
    A symbolic link is followed (its target is written).  A new file gets the user's
    umask; an existing target keeps its permission bits.

    Parameters
    ----------
    path : str or os.PathLike
    mode : {"wb", "w"}
    encoding : str, optional
        For text mode (default UTF-8).

    Raises
    ------
    IsADirectoryError
        ``path`` is a directory.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = os.path.realpath(os.fspath(path))
    directory, base = os.path.split(target)
    keep_mode = None
    try:
        st = os.stat(target)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", os.fspath(path))
        if stat.S_ISREG(st.st_mode):
            keep_mode = stat.S_IMODE(st.st_mode)
    _remove_stale_temps(directory, base)
    fd, tmp = _create_temp(directory, base, keep_mode)
    try:
        kw = {"encoding": encoding or "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, target)           # the lock is held until the file is closed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
