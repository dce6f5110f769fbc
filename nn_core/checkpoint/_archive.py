"""Reading a checkpoint archive: a regular file, a bounded zip directory, ``.npy``
headers checked against their declarations before any data are read."""
from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
import zipfile

import numpy as np

from ._format import (CheckpointError, MAX_DIRECTORY_BYTES, MAX_MEMBERS, MAX_META_CHARS,
                      MAX_META_CONTAINERS, _CHUNK, _MAX_HEADER, _MAX_NDIM, _META_KEY,
                      _META_MEMBER, _PARAM_PREFIX, _check_meta, _decode, _training_members)


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
