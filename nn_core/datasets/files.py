"""Reading the user's files for ``nn-core train --data``: numeric tables (CSV/TSV,
``.npy``, ``.npz``), UTF-8 text, and tab-separated source/target pairs.

Every problem is a :class:`DataFileError` (a ``ValueError``) with a one-line message
that names the file and, where there is one, the line and column: a ragged row, a value
that is not a finite number, an empty file, an unknown column, bytes that are not
UTF-8.

Examples
--------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "m.csv")
>>> _ = open(path, "w").write("day,temp,rain\\n1,20.5,0\\n2,21.0,3.5\\n3,x,1\\n")
>>> names, values = read_table(path, columns=["temp"])
Traceback (most recent call last):
  ...
nn_core.datasets.files.DataFileError: ...m.csv line 4, column 2 (temp): 'x' is not a number
>>> names, values = read_table(path, columns=["day", "rain"])
>>> names, values.tolist()
(['day', 'rain'], [[1.0, 0.0], [2.0, 3.5], [3.0, 1.0]])
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os

import numpy as np

__all__ = ["DataFileError", "read_table", "read_text", "read_pairs", "file_sha256"]


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file, line and column."""


def file_sha256(path) -> str:
    """The SHA-256 of the file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_bytes(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataFileError(f"{path} is a folder, not a data file")
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _decode(path, raw):
    """UTF-8 text (a leading byte-order mark dropped); a bad byte names its line and
    column."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
        raise DataFileError(f"{path} line {line}, column {col}: byte 0x{raw[exc.start]:02x} "
                            "is not UTF-8 text (save the file as UTF-8)") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path) -> str:
    """The whole file as UTF-8 text (``DataFileError`` if empty or not UTF-8)."""
    text = _decode(path, _read_bytes(path))
    if not text.strip():
        raise DataFileError(f"{path} is empty")
    return text


def _number(s):
    try:
        return float(s)
    except ValueError:
        return None


def _delimiter(path, first_line):
    if os.fspath(path).lower().endswith((".tsv", ".tab")):
        return "\t"
    for d in (",", "\t", ";"):
        if d in first_line:
            return d
    return ","


def _select(path, names, columns, flag):
    """Indices of ``columns`` (names; ``None``: all) among ``names``."""
    if columns is None:
        return list(range(len(names)))
    out = []
    for c in columns:
        if c not in names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise DataFileError(f"{flag}: {path} has no column {c!r} (its columns: {shown})")
        if names.index(c) in out:
            raise DataFileError(f"{flag}: column {c!r} is given twice")
        out.append(names.index(c))
    return out


def read_table(path, columns=None, *, flag="--columns"):
    """A numeric table: one row per time step (or sample), one column per variable.

    Parameters
    ----------
    path : str
        ``.npy`` (a ``[N]`` or ``[N, D]`` array), ``.npz`` (one such array, or several
        1-D arrays of one length: the columns, named by their keys), or delimited text
        (``,``, tab or ``;``; ``.tsv`` is tab-separated).  A first text row that is not
        all numbers is the header; without one the columns are ``c1, c2, ...`` (also
        the names of an array's columns).
    columns : list of str, optional
        The columns to read, in this order (default: all).  Only these need to hold
        numbers.
    flag : str
        Named in the message about an unknown column.

    Returns
    -------
    names : list of str
    values : float64 ndarray ``[N, len(names)]``

    Raises
    ------
    DataFileError
        Empty file, no data rows, a ragged row, a value that is not a finite number,
        an unknown column (each naming the line and column), or an unreadable array.
    """
    path = os.fspath(path)
    if path.lower().endswith((".npy", ".npz")):
        names, values = _read_array(path)
        idx = _select(path, names, columns, flag)
        return [names[i] for i in idx], values[:, idx]
    text = _decode(path, _read_bytes(path))
    lines = text.splitlines()
    first = next((i for i, s in enumerate(lines) if s.strip()), None)
    if first is None:
        raise DataFileError(f"{path} is empty")
    delim = _delimiter(path, lines[first])
    reader = csv.reader(io.StringIO("\n".join(lines[first:])), delimiter=delim)
    rows = [(first + reader.line_num, r) for r in reader if any(f.strip() for f in r)]
    head_line, head = rows[0]
    has_header = any(_number(f) is None for f in head)
    names = [f.strip() for f in head] if has_header else [f"c{j + 1}" for j in range(len(head))]
    if has_header:
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup or "" in names:
            raise DataFileError(f"{path} line {head_line}: the header has "
                                + (f"repeated column names {dup}" if dup else "an empty "
                                   "column name"))
        rows = rows[1:]
    if not rows:
        raise DataFileError(f"{path} has a header but no data rows")
    idx = _select(path, names, columns, flag)
    values = np.empty((len(rows), len(idx)))
    for r, (line, fields) in enumerate(rows):
        if len(fields) != len(names):
            raise DataFileError(f"{path} line {line}: {len(fields)} fields, expected "
                                f"{len(names)} ({'like the header' if has_header else 'like line ' + str(head_line)})")
        for k, j in enumerate(idx):
            s = fields[j].strip()
            v = _number(s)
            where = f"{path} line {line}, column {j + 1} ({names[j]})"
            if not s:
                raise DataFileError(f"{where}: empty value")
            if v is None:
                hint = " (choose numeric columns with --columns)" if columns is None else ""
                raise DataFileError(f"{where}: {s[:40]!r} is not a number{hint}")
            if not math.isfinite(v):
                raise DataFileError(f"{where}: {s!r} is not a finite number")
            values[r, k] = v
    return [names[j] for j in idx], values


def _read_array(path):
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataFileError(f"{path} is not a readable NumPy file: {exc}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            keys = list(data.files)
            if not keys:
                raise DataFileError(f"{path} is empty (no arrays)")
            try:
                arrays = {k: data[k] for k in keys}
            except ValueError as exc:
                raise DataFileError(f"{path}: {exc}") from None
        if len(keys) == 1:
            names, values = None, arrays[keys[0]]
        else:
            bad = [k for k in keys if arrays[k].ndim != 1]
            lengths = {len(arrays[k]) for k in keys if arrays[k].ndim == 1}
            if bad or len(lengths) != 1:
                raise DataFileError(f"{path} holds several arrays; they must be 1-D columns "
                                    f"of one length, got shapes "
                                    f"{ {k: arrays[k].shape for k in keys} }")
            names, values = keys, np.stack([arrays[k] for k in keys], axis=1)
    else:
        names, values = None, data
    if values.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: the array must be numeric, got dtype {values.dtype}")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] == 0:
        raise DataFileError(f"{path}: expected a [N] or [N, D] array with N >= 1, got shape "
                            f"{values.shape}")
    values = values.astype(np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        r, c = bad[0]
        raise DataFileError(f"{path} row {r}, column {c + 1}: {values[r, c]} is not a "
                            "finite number")
    names = names or [f"c{j + 1}" for j in range(values.shape[1])]
    return list(names), values


def read_pairs(path):
    """Source/target pairs, one per line: ``source<TAB>target`` (blank lines skipped).

    Returns
    -------
    list of (str, str), with the line numbers: ``[(source, target, line), ...]``

    Raises
    ------
    DataFileError
        Empty file, not UTF-8, a line without exactly one tab, or an empty side.
    """
    text = _decode(path, _read_bytes(path))
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            what = "no tab" if len(fields) == 1 else f"{len(fields)} tab-separated fields"
            raise DataFileError(f"{path} line {n}: {what}; expected SOURCE<TAB>TARGET")
        src, tgt = fields
        if not src:
            raise DataFileError(f"{path} line {n}, column 1: empty source")
        if not tgt:
            raise DataFileError(f"{path} line {n}, column {len(src) + 2}: empty target")
        out.append((src, tgt, n))
    if not out:
        raise DataFileError(f"{path} is empty")
    return out
