"""Delimited numeric text parsed in one pass: the fast path of
``nn_core.datasets.files.load_table``.

It accepts a strict subset of what the line-by-line reader accepts, and reads it to the
same numbers: lines end in ``\\n`` (a ``\\r`` before it is dropped), empty lines are
skipped, every other line has exactly ``ncols`` fields, and a value field is spaces or
tabs around a plain decimal numeral (``[+-]digits[.digits][(e|E)[+-]digits]``, as C's
``strtod`` reads it whole, finite) or nothing (a missing value, NaN).  Anything else
(a quote, another character in a value field, a line whose fields are all blank, a
value that overflows) stops the parse, and the caller reads the file line by line,
which locates the problem.  ``strtod`` and Python's ``float`` are both correctly rounded,
so the numbers are the same bits; under a locale whose decimal point is not ``.``,
``strtod`` stops early and the caller falls back.
"""
from libc.math cimport NAN, isfinite
from libc.stdlib cimport strtod


cdef enum:
    _MAX_NUMERAL = 64          # longer value fields go to the line-by-line reader


cdef inline bint _blank(unsigned char c) noexcept nogil:
    return c == 32 or c == 9


cdef inline bint _numeral(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or c == 46 or c == 43 or c == 45 or c == 101 or c == 69


cdef inline int _value(const unsigned char* p, Py_ssize_t n, double* out) noexcept nogil:
    """``*out`` = the numeral ``p[:n]`` (blanks around it allowed), NaN if blank;
    0 on success, -1 if it is not a plain finite numeral."""
    cdef char buf[_MAX_NUMERAL + 1]
    cdef char* end
    cdef Py_ssize_t i
    while n > 0 and _blank(p[0]):
        p += 1
        n -= 1
    while n > 0 and _blank(p[n - 1]):
        n -= 1
    if n == 0:
        out[0] = NAN
        return 0
    if n > _MAX_NUMERAL:
        return -1
    for i in range(n):
        if not _numeral(p[i]):
            return -1
        buf[i] = <char>p[i]
    buf[n] = 0
    out[0] = strtod(buf, &end)
    if end != buf + n or not isfinite(out[0]):
        return -1
    return 0


cdef Py_ssize_t _parse(const unsigned char* p, Py_ssize_t n, unsigned char delim,
                       Py_ssize_t ncols, const Py_ssize_t* slot, Py_ssize_t time_col,
                       double* out, Py_ssize_t rows, Py_ssize_t width,
                       Py_ssize_t* time_span) noexcept nogil:
    cdef Py_ssize_t pos = 0, row = 0, end, stop, field, start, i
    cdef bint blank_row
    while pos < n:
        end = pos
        while end < n and p[end] != 10:
            end += 1
        stop = end - 1 if end > pos and p[end - 1] == 13 else end
        if stop > pos:                                  # not an empty line
            if row >= rows:
                return -1
            field = 0
            start = pos
            blank_row = True
            i = pos
            while True:
                if i == stop or p[i] == delim:          # the field p[start:i] ends
                    if field >= ncols:
                        return -1
                    if slot[field] >= 0:
                        if _value(p + start, i - start, out + row * width + slot[field]) != 0:
                            return -1
                    if field == time_col:
                        time_span[2 * row] = start
                        time_span[2 * row + 1] = i
                    field += 1
                    if i == stop:
                        break
                    start = i + 1
                elif not _blank(p[i]):
                    blank_row = False
                i += 1
            if field != ncols or blank_row:
                return -1
            row += 1
        pos = end + 1
    return row


def parse_numbers(const unsigned char[::1] text, unsigned char delim, Py_ssize_t ncols,
                  const Py_ssize_t[::1] slot, Py_ssize_t time_col, double[:, ::1] out,
                  Py_ssize_t[:, ::1] time_span):
    """Parse ``text`` into ``out``; the number of rows, or -1 if the text is not plain.

    Parameters
    ----------
    text : bytes ``[n]``
    delim : int
        The delimiter's byte.
    ncols : int
        Fields per line.
    slot : intp ``[ncols]``
        ``out`` column of each field, ``-1`` for a field that is not read.
    time_col : int
        A field whose byte span is recorded (``-1``: none).
    out : float64 ``[rows, n_read]``
        ``rows`` at least the number of non-empty lines.
    time_span : intp ``[rows, 2]`` (any ``[r, 2]`` without ``time_col``)
        ``[start, end)`` of the ``time_col`` field of each row.
    """
    cdef Py_ssize_t j, result
    if slot.shape[0] != ncols or time_col >= ncols or time_span.shape[1] != 2:
        raise ValueError("slot must have ncols entries, time_col < ncols, time_span [r, 2]")
    for j in range(ncols):
        if slot[j] >= out.shape[1]:
            raise ValueError(f"slot[{j}] = {slot[j]} is not a column of out")
    if time_col >= 0 and time_span.shape[0] < out.shape[0]:
        raise ValueError("time_span needs a row per row of out")
    if text.shape[0] == 0 or ncols == 0:
        return 0
    with nogil:
        result = _parse(&text[0], text.shape[0], delim, ncols, &slot[0], time_col,
                        &out[0, 0] if out.shape[0] * out.shape[1] > 0 else NULL,
                        out.shape[0], out.shape[1], &time_span[0, 0])
    return result
