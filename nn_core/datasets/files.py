"""Reading the user's files for ``nn-core train --data``: numeric tables (CSV/TSV,
``.npy``, ``.npz``), UTF-8 text, and tab-separated source/target pairs.

Every problem is a :class:`DataFileError` (a ``ValueError``) with a one-line message
that names the file and, where there is one, the line and column: a ragged row, a value
that is not a finite number, a missing value, an empty file, an unknown column, bytes
that are not UTF-8, a field longer than the csv module's limit.

Only regular files are read (a FIFO would block, a device could stream forever), of at
most :data:`MAX_FILE_BYTES`; a ``.npz`` is checked against that bound from the sizes its
members declare, before anything is decompressed.

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

Gaps filled, and the time column kept beside the values:

>>> _ = open(path, "w").write("date,temp\\n2024-01,20\\n2024-02,NA\\n2024-03,23\\n")
>>> t = load_table(path, missing="interpolate", time_column=True)
>>> t.names, t.values.ravel().tolist(), t.filled, t.time_name, t.time
(['temp'], [20.0, 21.5, 23.0], {'temp': 1}, 'date', ['2024-01', '2024-02', '2024-03'])
>>> extend_time(t.time, 2)
['2024-04', '2024-05']
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import stat
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .._kernels._textparse import parse_numbers

__all__ = ["DataFileError", "Table", "MAX_FILE_BYTES", "MISSING_TOKENS", "MISSING_CHOICES",
           "load_table", "read_table", "extend_time", "read_text", "read_pairs",
           "file_sha256"]

#: The largest data file read, in bytes; also the bound on the uncompressed size of a
#: ``.npz``'s members.  Change it here to read larger files.
MAX_FILE_BYTES = 1 << 30

#: Cells read as missing (compared after stripping spaces, ignoring case), besides any
#: text that Python's ``float`` reads as NaN.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "#n/a"})

#: The values of ``missing=`` (``--missing``).
MISSING_CHOICES = ("error", "interpolate", "ffill", "drop")

_MISSING_HINT = ("to fill or drop missing values, pass --missing interpolate|ffill|drop "
                 "(missing= in Python)")
_ODD_SPACE = re.compile(rb"[\x0b\x0c\x1c-\x1f\x80-\xff]")   # str.isspace beyond space, tab
_LINE_BREAK = re.compile(r"\r\n|\r|\n")       # the line ends of csv and the compiled parser


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file, line and column."""


@dataclass
class Table:
    """A numeric table read by :func:`load_table`.

    Attributes
    ----------
    names : list of str
        The value columns, in the order asked for.
    values : float64 ndarray ``[N, len(names)]``
        Finite numbers, gaps filled or their rows dropped.
    filled : dict of str to int
        How many cells of each column were filled (``missing="interpolate"`` or
        ``"ffill"``); columns without gaps are left out.
    dropped : int
        How many rows were dropped (``missing="drop"``).
    time_name : str or None
        The time column's name, when one was asked for and found.
    time : list of str or None
        Its values (stripped text; ``.npz`` datetimes in ISO format), one per row of
        ``values``.
    """

    names: list
    values: np.ndarray
    filled: dict = field(default_factory=dict)
    dropped: int = 0
    time_name: str | None = None
    time: list | None = None


# ------------------------------------------------------------------ opening
def _size(n):
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def _check_regular(path, st):
    if stat.S_ISDIR(st.st_mode):
        raise DataFileError(f"{path} is a folder, not a data file")
    if not stat.S_ISREG(st.st_mode):
        raise DataFileError(f"{path} is not a regular file (a FIFO, socket or device); "
                            "data files must be regular files")
    if st.st_size > MAX_FILE_BYTES:
        raise DataFileError(f"{path} is {_size(st.st_size)}, over the {_size(MAX_FILE_BYTES)} "
                            "limit for data files (nn_core.datasets.files.MAX_FILE_BYTES)")


def _open_regular(path):
    """A binary file object for the regular file ``path`` of at most
    :data:`MAX_FILE_BYTES`.  Anything else is refused before it is read: checked with
    ``stat``, opened without blocking, checked again with ``fstat`` (it may have been
    replaced in between).  ``OSError`` (missing, no permission) passes through."""
    path = os.fspath(path)
    _check_regular(path, os.stat(path))
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
             | getattr(os, "O_CLOEXEC", 0))
    fd = os.open(path, flags)
    try:
        _check_regular(path, os.fstat(fd))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_limited(path, fh):
    """All of ``fh``, refusing a file that grew past the limit since it was opened."""
    data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise DataFileError(f"{path} is over the {_size(MAX_FILE_BYTES)} limit for data "
                            "files (nn_core.datasets.files.MAX_FILE_BYTES)")
    return data


def file_sha256(path) -> str:
    """The SHA-256 of the file's bytes (hex).

    Raises
    ------
    DataFileError
        ``path`` is not a regular file, or is over :data:`MAX_FILE_BYTES`.
    OSError
        It cannot be opened (missing, no permission).
    """
    h = hashlib.sha256()
    with _open_regular(path) as fh:
        read = 0
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            read += len(chunk)
            if read > MAX_FILE_BYTES:
                raise DataFileError(f"{os.fspath(path)} is over the {_size(MAX_FILE_BYTES)} "
                                    "limit for data files")
            h.update(chunk)
    return h.hexdigest()


def _read_bytes(path):
    path = os.fspath(path)
    try:
        with _open_regular(path) as fh:
            return _read_limited(path, fh)
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
    """The whole file as UTF-8 text (``DataFileError`` if empty, not UTF-8, not a
    regular file, or over :data:`MAX_FILE_BYTES`)."""
    text = _decode(path, _read_bytes(path))
    if not text.strip():
        raise DataFileError(f"{path} is empty")
    return text


# ------------------------------------------------------------------ tables
def _number(s):
    try:
        return float(s)
    except ValueError:
        return None


def _is_missing(s, v):
    """``s`` (stripped text) read as ``v`` (``_number(s)``) is a missing value."""
    return (v is None and s.lower() in MISSING_TOKENS) or (v is not None and v != v)


def _delimiter(path, first_line):
    if os.fspath(path).lower().endswith((".tsv", ".tab")):
        return "\t"
    for d in (",", "\t", ";"):
        if d in first_line:
            return d
    return ","


def _header_names(path, head, head_line):
    """The names of a header row (``DataFileError`` for a repeated or empty name)."""
    names = [f.strip() for f in head]
    seen, dup = set(), set()
    for n in names:
        (dup if n in seen else seen).add(n)
    if dup or "" in seen:
        raise DataFileError(f"{path} line {head_line}: the header has "
                            + (f"repeated column names {sorted(dup)}" if dup else
                               "an empty column name"))
    return names


def _plan(path, names, first_row, columns, flag, time_column):
    """``(value column indices, time column index or None)`` among ``names``; the
    first data row's fields find an unnamed time column."""
    where = {n: i for i, n in enumerate(names)}
    tcol = None
    if isinstance(time_column, str):
        if time_column not in where:
            raise DataFileError(f"--time-column: {path} has no column {time_column!r} "
                                f"(its columns: {_shown(names)})")
        tcol = where[time_column]
    elif time_column:
        tcol = next((j for j, f in enumerate(first_row)
                     if _number(f.strip()) is None and f.strip().lower() not in MISSING_TOKENS),
                    None)
    if columns is None:
        return [j for j in range(len(names)) if j != tcol], tcol
    out, taken = [], set()
    for c in columns:
        if c not in where:
            raise DataFileError(f"{flag}: {path} has no column {c!r} (its columns: "
                                f"{_shown(names)})")
        if where[c] in taken:
            raise DataFileError(f"{flag}: column {c!r} is given twice")
        taken.add(where[c])
        out.append(where[c])
    return out, tcol


def _shown(names):
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


def _first_line(raw, pos):
    """``(start, end)`` of the first line of ``raw[pos:]`` that is not blank (``end`` at
    its ``\\n`` or the end of ``raw``), or ``None``."""
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl
        if raw[pos:end].strip():
            return pos, end
        pos = end + 1
    return None


def _fast_table(path, raw, columns, flag, missing, time_column):
    """The table parsed in one pass by the compiled parser
    (:func:`nn_core._kernels._textparse.parse_numbers`), or ``None`` when the file needs
    the line-by-line reader: quotes or NUL bytes in the data rows, a line end other
    than ``\\n`` or ``\\r\\n``, a line longer than the csv module's field limit, bytes
    that are not UTF-8, a ragged row, a value field that is not a plain finite decimal
    numeral or blank, a blank value with ``missing="error"``, a time column that is
    also a value column.  When it returns a table, the line-by-line reader returns the
    same one."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\r" in raw and raw.count(b"\r") != raw.count(b"\r\n"):
        return None
    if len(raw) > csv.field_size_limit():     # a line the csv reader would refuse
        ends = np.flatnonzero(np.frombuffer(raw, np.uint8) == 10)
        if np.diff(ends, prepend=-1, append=len(raw)).max() > csv.field_size_limit():
            return None
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    head_span = _first_line(raw, 0)
    if head_span is None:
        return None
    first = raw[head_span[0]:head_span[1]].decode("utf-8").rstrip("\r")
    body = raw[head_span[1] + 1:]
    if b'"' in body or b"\0" in body or first.count('"') % 2:
        return None
    delim = _delimiter(path, first)
    head = next(csv.reader([first], delimiter=delim))
    has_header = any(_number(f) is None for f in head)
    try:
        if has_header:
            names = _header_names(path, head, 0)
            data, row_span = body, _first_line(body, 0)
            if row_span is None:
                return None
            row = body[row_span[0]:row_span[1]].decode("utf-8").rstrip("\r").split(delim)
        else:
            names = [f"c{j + 1}" for j in range(len(head))]
            data, row = raw[head_span[0]:], head
        idx, tcol = _plan(path, names, row, columns, flag, time_column)
    except DataFileError:
        return None
    if tcol in idx:                                  # a time column read as values as well
        return None
    slot = np.full(len(names), -1, dtype=np.intp)
    slot[idx] = np.arange(len(idx))
    rows = data.count(b"\n") + 1
    values = np.empty((rows, len(idx)))
    spans = np.empty((rows if tcol is not None else 1, 2), dtype=np.intp)
    n = parse_numbers(data, ord(delim), len(names), slot, -1 if tcol is None else tcol,
                      values, spans)
    if n <= 0:
        return None
    values = values[:n]
    if np.isnan(values).any() and (missing == "error" or _ODD_SPACE.search(data)):
        return None             # the csv reader may see a line of such spaces as blank
    times = None if tcol is None else _span_text(data, spans[:n])
    return [names[j] for j in idx], values, (names[tcol] if tcol is not None else None), times


_ASCII_SPACE = np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32], np.uint8)   # str.strip's


def _span_text(data, spans):
    """``[data[a:b].decode().strip() for a, b in spans]``, in one gather when the
    fields are ASCII of one width with nothing to strip (ISO time stamps)."""
    width = spans[:, 1] - spans[:, 0]
    w = int(width[0])
    if w > 0 and (width == w).all() and data.isascii():
        chars = np.frombuffer(data, np.uint8)[spans[:, :1] + np.arange(w)]
        if not np.isin(chars[:, [0, -1]], _ASCII_SPACE).any():
            return chars.view(f"S{w}").ravel().astype(f"U{w}").tolist()
    return [data[a:b].decode("utf-8").strip() for a, b in spans.tolist()]


def _slow_table(path, text, columns, flag, missing, time_column):
    """The table read row by row with :mod:`csv`, every problem located."""
    lines = _LINE_BREAK.split(text)
    first = next((i for i, s in enumerate(lines) if s.strip()), None)
    if first is None:
        raise DataFileError(f"{path} is empty")
    delim = _delimiter(path, lines[first])
    reader = csv.reader(io.StringIO("\n".join(lines[first:])), delimiter=delim)
    rows = []
    try:
        for r in reader:
            if any(f.strip() for f in r):
                rows.append((first + reader.line_num, r))
    except csv.Error as exc:
        line = first + reader.line_num
        if "field limit" in str(exc):
            raise DataFileError(f"{path} line {line}: a field is longer than "
                                f"{csv.field_size_limit()} characters") from None
        raise DataFileError(f"{path} line {line}: {exc}") from None
    head_line, head = rows[0]
    has_header = any(_number(f) is None for f in head)
    if has_header:
        names = _header_names(path, head, head_line)
        rows = rows[1:]
    else:
        names = [f"c{j + 1}" for j in range(len(head))]
    if not rows:
        raise DataFileError(f"{path} has a header but no data rows")
    idx, tcol = _plan(path, names, rows[0][1], columns, flag, time_column)
    values = np.empty((len(rows), len(idx)))
    times = [] if tcol is not None else None
    for r, (line, fields) in enumerate(rows):
        if len(fields) != len(names):
            raise DataFileError(f"{path} line {line}: {len(fields)} fields, expected "
                                f"{len(names)} ({'like the header' if has_header else 'like line ' + str(head_line)})")
        for k, j in enumerate(idx):
            s = fields[j].strip()
            v = _number(s)
            if _is_missing(s, v):
                if missing == "error":
                    what = "empty value" if not s else f"{s[:40]!r} is a missing value"
                    raise DataFileError(f"{path} line {line}, column {j + 1} ({names[j]}): "
                                        f"{what}; {_MISSING_HINT}")
                values[r, k] = np.nan
                continue
            if v is None:
                hint = " (choose numeric columns with --columns)" if columns is None else ""
                raise DataFileError(f"{path} line {line}, column {j + 1} ({names[j]}): "
                                    f"{s[:40]!r} is not a number{hint}")
            if not math.isfinite(v):
                raise DataFileError(f"{path} line {line}, column {j + 1} ({names[j]}): "
                                    f"{s!r} is not a finite number")
            values[r, k] = v
        if times is not None:
            times.append(fields[tcol].strip())
    return [names[j] for j in idx], values, (names[tcol] if tcol is not None else None), times


def _fill_missing(path, names, values, missing, times):
    """``(values, filled, dropped, times)`` with the NaN cells of ``values`` filled or
    their rows dropped (see :func:`load_table`)."""
    gaps = np.isnan(values)
    if not gaps.any():
        return values, {}, 0, times
    if missing == "drop":
        keep = ~gaps.any(axis=1)
        if not keep.any():
            raise DataFileError(f"{path}: every row has a missing value in "
                                f"{_shown(names)}; nothing is left after --missing drop")
        times = None if times is None else [t for t, k in zip(times, keep) if k]
        return values[keep], {}, int((~keep).sum()), times
    counts = gaps.sum(axis=0)
    empty = np.flatnonzero(counts == len(values))
    if len(empty):
        raise DataFileError(f"{path}: column {names[empty[0]]!r} has no values (all "
                            f"{len(values)} are missing); nothing to fill it from")
    out = values.copy()
    rows = np.arange(len(values))
    for j in np.flatnonzero(counts):
        ok = ~gaps[:, j]
        if missing == "interpolate":                        # np.interp holds the ends
            out[~ok, j] = np.interp(rows[~ok], rows[ok], values[ok, j])
        else:
            last = np.maximum.accumulate(np.where(ok, rows, -1))
            last[last < 0] = np.argmax(ok)                  # leading gap: first value
            out[:, j] = values[last, j]
    return out, {names[j]: int(counts[j]) for j in np.flatnonzero(counts)}, 0, times


def load_table(path, columns=None, *, missing="error", time_column=None,
               flag="--columns") -> Table:
    """A numeric table: one row per time step (or sample), one column per variable,
    with its gaps handled and, if asked for, its time column.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy`` (a ``[N]`` or ``[N, D]`` array), ``.npz`` (one such array, or several
        1-D arrays of one length: the columns, named by their keys), or delimited text
        (``,``, tab or ``;``; ``.tsv`` is tab-separated).  A first text row that is not
        all numbers is the header; without one the columns are ``c1, c2, ...`` (also
        the names of an array's columns).  A regular file of at most
        :data:`MAX_FILE_BYTES`.
    columns : list of str, optional
        The value columns to read, in this order (default: all but the time column).
        Only these need to hold numbers.
    missing : {"error", "interpolate", "ffill", "drop"}
        What a missing cell (empty, one of :data:`MISSING_TOKENS`, or NaN) in the
        value columns does.  ``"error"``: a ``DataFileError`` naming its line and
        column and this option.  ``"interpolate"``: a straight line between the
        column's neighbouring values.  ``"ffill"``: the column's last value before it.
        With both, a gap at the start of a column takes its first value, and one at
        the end (``interpolate``) its last.  ``"drop"``: the rows with a missing value
        in any value column are left out.
    time_column : str, True or None
        ``None``: no time column.  A name: that column.  ``True``: the first column
        whose first data value is neither a number nor missing, if there is one (in a
        ``.npz`` of columns, the first array that is not numeric).
    flag : str
        Named in the message about an unknown column.

    Returns
    -------
    Table
        ``names``, ``values``, ``filled``, ``dropped``, ``time_name``, ``time``.

    Raises
    ------
    DataFileError
        Not a regular file, too large, empty, no data rows, a ragged row, a value that
        is not a finite number, a missing value with ``missing="error"``, a column with
        no values, an unknown column (each naming the line and column), or an
        unreadable array.
    TypeError, ValueError
        ``missing`` or ``time_column`` is not one of the values above.

    Notes
    -----
    Delimited text is parsed in one pass by a compiled parser first; a file it does not
    take as it is (quoted fields, missing values other than blank cells, any error) is
    read again line by line, which gives the same table or the located error.
    """
    if not isinstance(missing, str):
        raise TypeError(f"missing must be a str, got {type(missing).__name__}")
    if missing not in MISSING_CHOICES:
        raise ValueError(f"missing must be one of {', '.join(MISSING_CHOICES)}, got "
                         f"{missing!r}")
    if not (time_column is None or time_column is True or isinstance(time_column, str)):
        raise TypeError(f"time_column must be a column name, True or None, got "
                        f"{time_column!r:.40}")
    path = os.fspath(path)
    if path.lower().endswith((".npy", ".npz")):
        names, values, time_name, times = _array_table(path, columns, flag, missing,
                                                       time_column)
    else:
        raw = _read_bytes(path)
        parsed = _fast_table(path, raw, columns, flag, missing, time_column)
        if parsed is None:
            parsed = _slow_table(path, _decode(path, raw), columns, flag, missing,
                                 time_column)
        names, values, time_name, times = parsed
    values, filled, dropped, times = _fill_missing(path, names, values, missing, times)
    return Table(names, values, filled, dropped, time_name, times)


def read_table(path, columns=None, *, missing="error", flag="--columns"):
    """``(names, values)`` of :func:`load_table` (see there for the arguments).

    Returns
    -------
    names : list of str
    values : float64 ndarray ``[N, len(names)]``
    """
    t = load_table(path, columns, missing=missing, flag=flag)
    return t.names, t.values


# ------------------------------------------------------------------ arrays
def _npy_header(fp, where):
    """The ``(shape, dtype)`` an ``.npy`` stream declares (read before its data)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        shape, _, dtype = (fmt.read_array_header_1_0(fp) if version == (1, 0) else
                           fmt.read_array_header_2_0(fp))
    except (ValueError, EOFError, OSError) as exc:
        raise DataFileError(f"{where} is not a readable NumPy file: {exc}") from None
    return shape, dtype


def _check_declared(where, shape, dtype, budget):
    if dtype.hasobject:
        raise DataFileError(f"{where} is not a readable NumPy file: it holds Python "
                            "objects (saved with allow_pickle)")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > budget:
        raise DataFileError(f"{where} declares {_size(nbytes)} of data, over the "
                            f"{_size(MAX_FILE_BYTES)} limit for data files "
                            "(nn_core.datasets.files.MAX_FILE_BYTES)")
    return nbytes


def _load_arrays(path):
    """``{key: array}`` of an ``.npz`` (or ``{None: array}`` of an ``.npy``), the
    declared sizes checked against :data:`MAX_FILE_BYTES` before any data are read."""
    try:
        fh = _open_regular(path)
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        if not path.lower().endswith(".npz"):
            shape, dtype = _npy_header(fh, path)
            _check_declared(path, shape, dtype, MAX_FILE_BYTES)
            fh.seek(0)
            try:
                return {None: np.load(fh, allow_pickle=False)}
            except (OSError, ValueError, EOFError) as exc:
                raise DataFileError(f"{path} is not a readable NumPy file: {exc}") from None
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise DataFileError(f"{path} is not a readable NumPy file: {exc}") from None
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if sum(i.file_size for i in infos) > MAX_FILE_BYTES:
                raise DataFileError(f"{path} declares {_size(sum(i.file_size for i in infos))}"
                                    f" uncompressed, over the {_size(MAX_FILE_BYTES)} limit "
                                    "for data files (nn_core.datasets.files.MAX_FILE_BYTES)")
            arrays, budget = {}, MAX_FILE_BYTES
            for info in infos:
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                where = f"{path} ({key})"
                try:
                    with zf.open(info) as member:
                        shape, dtype = _npy_header(member, where)
                        budget -= _check_declared(where, shape, dtype, budget)
                    with zf.open(info) as member:
                        arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
                except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                    raise DataFileError(f"{where} is not a readable NumPy file: {exc}") \
                        from None
            return arrays


def _array_table(path, columns, flag, missing, time_column):
    arrays = _load_arrays(path)
    if not arrays:
        raise DataFileError(f"{path} is empty (no arrays)")
    if len(arrays) == 1:
        (values,) = arrays.values()
        if values.dtype.kind not in "biuf":
            raise DataFileError(f"{path}: the array must be numeric, got dtype {values.dtype}")
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] == 0:
            raise DataFileError(f"{path}: expected a [N] or [N, D] array with N >= 1, got "
                                f"shape {values.shape}")
        names = [f"c{j + 1}" for j in range(values.shape[1])]
        cols = [values[:, j] for j in range(values.shape[1])]
    else:
        names, cols = list(arrays), list(arrays.values())
        if any(c.ndim != 1 for c in cols) or len({len(c) for c in cols}) != 1 \
                or not len(cols[0]):
            raise DataFileError(f"{path} holds several arrays; they must be 1-D columns "
                                f"of one length, got shapes "
                                f"{ {k: a.shape for k, a in arrays.items()} }")
    first = ["0" if c.dtype.kind in "biuf" else "t" for c in cols]    # numeric or not
    idx, tcol = _plan(path, names, first, columns, flag, time_column)
    for j in idx:
        if cols[j].dtype.kind not in "biuf":
            raise DataFileError(f"{path}: column {names[j]!r} must be numeric, got dtype "
                                f"{cols[j].dtype} (choose numeric columns with --columns)")
    values = np.stack([cols[j] for j in idx], axis=1).astype(np.float64) if idx else \
        np.empty((len(cols[0]), 0))
    bad = np.argwhere(np.isinf(values) | (np.isnan(values) & (missing == "error")))
    if len(bad):
        r, c = bad[0]
        what = "is a missing value; " + _MISSING_HINT if np.isnan(values[r, c]) else \
            "is not a finite number"
        raise DataFileError(f"{path} row {r}, column {idx[c] + 1}: {values[r, c]} {what}")
    times = None
    if tcol is not None:
        t = cols[tcol]
        times = (list(np.datetime_as_string(t)) if t.dtype.kind == "M" else
                 [str(v).strip() for v in t.tolist()])
    return [names[j] for j in idx], values, (names[tcol] if tcol is not None else None), times


# ------------------------------------------------------------------ time
def _decimals(s):
    """Digits after the point of a plain decimal numeral (``None`` if not one)."""
    m = re.fullmatch(r"[+-]?\d+(?:\.(\d*))?", s)
    return None if m is None else len(m.group(1) or "")


def extend_time(times, horizon):
    """The ``horizon`` time stamps that follow ``times``, when its steps are regular.

    Parameters
    ----------
    times : sequence of str, or ndarray of numbers or ``datetime64``
        The time column, as :func:`load_table` returns it.
    horizon : int >= 0

    Returns
    -------
    list of str, or None
        ``None`` when ``times`` has fewer than 2 stamps, a missing or unreadable one,
        or steps that are not all equal and positive.

    Notes
    -----
    * Plain numbers (``1700``, ``0.25``): the next are ``last + k * step``, written
      with as many decimals as the input's longest (integers as integers); steps are
      compared at that precision.
    * ISO dates and times (``2024-01``, ``2024-01-31``, ``2024-01-31 12:00:00``), read
      by ``numpy.datetime64``: steps are equal in the input's unit; dates all on the
      first of a month step in months (a monthly or yearly series is regular).  The
      output has the input's precision and its date-time separator (``T`` or space).
      Time zones are not read (``None``).
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
        raise TypeError(f"horizon must be an int, got {type(horizon).__name__}")
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    arr = np.asarray(times)
    if len(arr) < 2 or arr.ndim != 1:
        return None
    if arr.dtype.kind == "M":
        return _extend_dates(arr, horizon, "T")
    if arr.dtype.kind in "iuf":
        if not np.isfinite(arr).all():
            return None
        if arr.dtype.kind == "f":
            arr = np.array([repr(float(v)) for v in arr])
        else:
            arr = arr.astype(str)
    text = [str(s).strip() for s in arr.tolist()]
    decimals = [_decimals(s) for s in text]
    if all(d is not None for d in decimals):
        d = max(decimals)
        nums = np.array([float(s) for s in text])
        steps = np.round(np.diff(nums), d)
        if not (steps > 0).all() or (steps != steps[0]).any():
            return None
        new = np.round(nums[-1] + steps[0] * np.arange(1, horizon + 1), d)
        return [str(int(v)) if d == 0 else f"{v:.{d}f}" for v in new]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")                  # time zones
            stamps = np.array(text, dtype="datetime64")
    except (ValueError, TypeError, Warning):
        return None
    return _extend_dates(stamps, horizon, " " if any(" " in s for s in text) else "T")


def _extend_dates(stamps, horizon, sep):
    if np.isnat(stamps).any():
        return None
    unit = stamps.dtype
    months = stamps.astype("datetime64[M]")
    step_in = months if (months.astype(unit) == stamps).all() else stamps
    steps = np.diff(step_in).astype(np.int64)
    if not (steps > 0).all() or (steps != steps[0]).any():
        return None
    new = (step_in[-1] + steps[0] * np.arange(1, horizon + 1)).astype(unit)
    return [s.replace("T", sep) for s in np.datetime_as_string(new)]


# ------------------------------------------------------------------ pairs
def read_pairs(path, max_length=None):
    """Source/target pairs, one per line: ``source<TAB>target`` (blank lines skipped).

    Parameters
    ----------
    path : str or os.PathLike
    max_length : int, optional
        The longest side accepted, in characters (default: no limit).

    Returns
    -------
    list of (str, str), with the line numbers: ``[(source, target, line), ...]``

    Raises
    ------
    DataFileError
        Empty file, not UTF-8, a line without exactly one tab, an empty side, a side
        longer than ``max_length``, not a regular file, or over :data:`MAX_FILE_BYTES`.
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
        if max_length is not None and max(len(src), len(tgt)) > max_length:
            side, text = ("source", src) if len(src) > max_length else ("target", tgt)
            raise DataFileError(f"{path} line {n}: the {side} has {len(text)} characters, "
                                f"over the limit of {max_length}")
        out.append((src, tgt, n))
    if not out:
        raise DataFileError(f"{path} is empty")
    return out
