"""nn_core.datasets.files: missing values, the time column and its extension, the fast
parse against the line-by-line reader, and what is refused before it is read (not a
regular file, too large, a decompression bomb, a field over the csv limit)."""
import os
import signal
import stat
import zipfile

import numpy as np
import pytest

from nn_core.datasets import files
from nn_core.datasets.files import (DataFileError, extend_time, file_sha256, load_table,
                                    read_pairs, read_table, read_text)


@pytest.fixture
def write(tmp_path):
    def write(name, content):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
        return str(path)
    return write


def _slow(monkeypatch):
    monkeypatch.setattr(files, "_fast_table", lambda *a, **k: None)


# ------------------------------------------------------------------ missing values
GAPS = "t,a,b\n0,,1\n1,2,NA\n2,,3\n3,5,n/a\n4,nan,\n5,7,8\n"


def test_missing_error_names_the_option(write):
    path = write("g.csv", GAPS)
    with pytest.raises(DataFileError) as exc:
        read_table(path)
    msg = str(exc.value)
    assert "g.csv line 2, column 2 (a): empty value" in msg
    assert "--missing interpolate|ffill|drop" in msg and "missing=" in msg
    with pytest.raises(DataFileError, match=r"line 3, column 3 \(b\): 'NA' is a missing "
                                            r"value; .*--missing interpolate\|ffill\|drop"):
        read_table(path, ["b"])
    with pytest.raises(DataFileError, match="line 6, column 1 .a.: 'nan' is a missing"):
        read_table(write("n.csv", "a\n1\n2\n3\n4\nnan\n"))


def test_missing_interpolate_ffill_drop(write):
    path = write("g.csv", GAPS)
    t = load_table(path, ["a", "b"], missing="interpolate")
    # a: _ 2 _ 5 _ 7 -> leading gap takes the first value; b: 1 _ 3 _ _ 8
    np.testing.assert_allclose(t.values[:, 0], [2, 2, 3.5, 5, 6, 7])
    np.testing.assert_allclose(t.values[:, 1], [1, 2, 3, 14 / 3, 19 / 3, 8])
    assert t.filled == {"a": 3, "b": 3} and t.dropped == 0
    f = load_table(path, ["a", "b"], missing="ffill")
    np.testing.assert_array_equal(f.values, [[2, 1], [2, 1], [2, 3], [5, 3], [5, 3], [7, 8]])
    assert f.filled == {"a": 3, "b": 3}
    d = load_table(path, ["t", "a", "b"], missing="drop")
    np.testing.assert_array_equal(d.values, [[5, 7, 8]])
    assert d.dropped == 5 and d.filled == {}
    assert read_table(path, ["t"], missing="drop")[1].ravel().tolist() == [0, 1, 2, 3, 4, 5]
    names, values = read_table(path, ["b"], missing="ffill")          # two-value form
    assert names == ["b"] and values.shape == (6, 1)


def test_missing_edge_cases(write):
    path = write("e.csv", "a,b\n1,\n2,\n")
    with pytest.raises(DataFileError, match="column 'b' has no values .all 2 are missing"):
        load_table(path, missing="interpolate")
    with pytest.raises(DataFileError, match="every row has a missing value"):
        load_table(path, missing="drop")
    assert load_table(path, ["a"]).values.ravel().tolist() == [1, 2]   # b not read
    with pytest.raises(ValueError, match="missing must be one of error, interpolate"):
        load_table(path, missing="mean")
    with pytest.raises(TypeError, match="missing must be a str"):
        load_table(path, missing=None)
    with pytest.raises(TypeError, match="time_column must be"):
        load_table(path, time_column=3)


def test_missing_in_arrays(tmp_path):
    a = np.array([[1.0, np.nan], [np.nan, 4.0], [3.0, 6.0]])
    np.save(tmp_path / "a.npy", a)
    with pytest.raises(DataFileError, match="row 0, column 2: nan is a missing value; .*--missing"):
        read_table(tmp_path / "a.npy")
    t = load_table(tmp_path / "a.npy", missing="interpolate")
    np.testing.assert_array_equal(t.values, [[1, 4], [2, 4], [3, 6]])
    assert t.filled == {"c1": 1, "c2": 1}
    assert load_table(tmp_path / "a.npy", missing="drop").values.tolist() == [[3, 6]]


# ------------------------------------------------------------------ time column
def test_time_column_found_named_or_absent(write):
    path = write("w.csv", "station,date,temp,wind\nA,2024-01-01,1.5,3\nA,2024-01-02,,4\n"
                          "A,2024-01-03,2.5,5\n")
    t = load_table(path, ["temp"], missing="interpolate", time_column="date")
    assert t.time_name == "date" and t.time == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert t.values.ravel().tolist() == [1.5, 2.0, 2.5]
    auto = load_table(path, ["temp", "wind"], missing="drop", time_column=True)
    assert auto.time_name == "station" and auto.time == ["A", "A"]      # first non-numeric
    plain = write("p.csv", "year,x\n1700,5\n1701,11\n")
    assert load_table(plain, time_column=True).time is None            # all numeric
    named = load_table(plain, time_column="year")
    assert named.names == ["x"] and named.time == ["1700", "1701"]     # not a value column
    with pytest.raises(DataFileError, match="--time-column: .* has no column 'when'"):
        load_table(plain, time_column="when")


def test_time_column_of_an_npz(tmp_path):
    days = np.arange("2024-01-01", "2024-01-05", dtype="datetime64[D]")
    np.savez(tmp_path / "s.npz", day=days, y=np.arange(4.0), z=np.ones(4))
    t = load_table(tmp_path / "s.npz", time_column=True)
    assert t.names == ["y", "z"] and t.time_name == "day" and t.time[-1] == "2024-01-04"
    assert extend_time(days, 1) == ["2024-01-05"]
    with pytest.raises(DataFileError, match="column 'day' must be numeric"):
        load_table(tmp_path / "s.npz", ["day", "y"])


@pytest.mark.parametrize("times, horizon, expected", [
    (["2000-01", "2000-02", "2000-03"], 2, ["2000-04", "2000-05"]),            # monthly
    (["1958-11-01", "1958-12-01", "1959-01-01"], 2, ["1959-02-01", "1959-03-01"]),
    (["2020-01-01", "2021-01-01", "2022-01-01"], 1, ["2023-01-01"]),           # yearly
    (["2024-02-27", "2024-02-28", "2024-02-29"], 2, ["2024-03-01", "2024-03-02"]),
    (["2024-01-01", "2024-01-08"], 1, ["2024-01-15"]),                          # weekly
    (["2024-03-30 22:00:00", "2024-03-30 23:00:00"], 2,
     ["2024-03-31 00:00:00", "2024-03-31 01:00:00"]),                          # hourly
    (["2024-01-01T00:00", "2024-01-01T00:30"], 1, ["2024-01-01T01:00"]),
    (["1700", "1701", "1702"], 3, ["1703", "1704", "1705"]),
    (["0.1", "0.2", "0.3"], 2, ["0.4", "0.5"]),
    (["-1.50", "-1.25"], 1, ["-1.00"]),
    (np.array([3, 6, 9]), 1, ["12"]),
    (["2000-01", "2000-02"], 0, []),
])
def test_extend_time_regular(times, horizon, expected):
    assert extend_time(times, horizon) == expected


@pytest.mark.parametrize("times", [
    ["2024-01-01", "2024-01-02", "2024-01-04"],        # a day missing
    ["2024-01-31", "2024-02-29", "2024-03-31"],        # month ends: not one step
    ["1", "2", "2"], ["3", "2", "1"], ["1"], [],
    ["2000-0000", "2000-0001"], ["A", "A"], ["1", ""],
    ["2024-01-01 10:00:00+01:00", "2024-01-01 11:00:00+01:00"],
])
def test_extend_time_irregular_is_none(times):
    assert extend_time(times, 3) is None


def test_extend_time_arguments():
    with pytest.raises(TypeError, match="horizon must be an int"):
        extend_time(["1", "2"], 1.0)
    with pytest.raises(ValueError, match="horizon must be >= 0"):
        extend_time(["1", "2"], -1)


# ------------------------------------------------------------------ fast and slow paths
CLEAN = {
    "header.csv": "a,b,c\n1,2.5,-3e2\n4,5,6\n",
    "noheader.tsv": "1\t2\n3\t4\n",
    "semi.csv": "x;y\n1;2\n3;4\n",
    "crlf.csv": "a,b\r\n1,2\r\n3,4\r\n",
    "bom.csv": "\ufeffa,b\n1,2\n",
    "spaces.csv": "a , b\n 1 , 2 \n3,4\n\n\n",
    "date.csv": "date,v,w\n2024-01,1,x\n2024-02,2,y\n",
    "quotedhead.csv": '"YEAR";"N"\n1700;5\n1701;11\n',
    "blank_first.csv": "\n\na,b\n1,2\n",
    "gaps.csv": "t,a,b\nx,1,\ny,,4\nz,5,6\n",
    "when.csv": "when,v\n  a b ,1\nccc,2\n",
}


@pytest.mark.parametrize("name", CLEAN)
def test_fast_path_is_taken_and_equals_the_slow_path(write, monkeypatch, name):
    path = write(name, CLEAN[name])
    kw = dict(missing="interpolate", time_column=True)
    cols = ["v"] if name == "date.csv" else None
    raw = open(path, "rb").read()
    assert files._fast_table(path, raw, cols, "--columns", "interpolate", True) is not None
    fast = load_table(path, cols, **kw)
    _slow(monkeypatch)
    slow = load_table(path, cols, **kw)
    assert fast.names == slow.names and fast.time == slow.time and fast.filled == slow.filled
    np.testing.assert_array_equal(fast.values, slow.values)
    assert fast.values.dtype == np.float64


BAD = {
    "ragged.csv": "a,b\n1,2\n3\n4,5\n",
    "compensating.csv": "a,b,c\n1,2,3\n4,5,6,7\n8,9\n",     # right total, wrong rows
    "word.csv": "a,b\n1,2\n3,x\n",
    "inf.csv": "a\n1\ninf\n",
    "nan.csv": "a\n1\nnan\n",
    "hole.csv": "a,b\n1,2\n3,\n",
    "na.csv": "a,b\n1,NA\n",
    "empty.csv": "\n\n",
    "head.csv": "a,b\n",
    "dup.csv": "a,b,a\n1,2,3\n",
    "underscore.csv": "a\n1_000\n2\n",                       # float() reads it
    "hex.csv": "a\n0x10\n",
    "quoted.csv": 'a,b\n"1",2\n"3,5",4\n',
    "cr.csv": "a,b\r1,2\r3,4\r",
    "formfeed.csv": "a,b\n1\x0c,2\n",
    "utf8.csv": b"a\n1\n\xff2\n",
    "blankrow.csv": "a,b\n1,2\n,\n3,4\n",
}


@pytest.mark.parametrize("name", BAD)
def test_bad_files_same_outcome_on_both_paths(write, monkeypatch, name):
    path = write(name, BAD[name])

    def outcome():
        try:
            t = load_table(path)
            return t.names, t.values.tolist()
        except DataFileError as exc:
            return str(exc)
    fast = outcome()
    _slow(monkeypatch)
    assert fast == outcome()
    if name in ("ragged.csv", "compensating.csv"):
        assert "fields, expected" in fast


def test_wide_header_and_duplicates(write):
    n = 40_000
    names = [f"v{j}" for j in range(n)]
    path = write("wide.csv", ",".join(names) + "\n" + ",".join(map(str, range(n))) + "\n")
    got, values = read_table(path, ["v39999", "v7"])
    assert got == ["v39999", "v7"] and values.tolist() == [[39999.0, 7.0]]
    names[-1] = "v3"
    path = write("dup.csv", ",".join(names) + "\n" + ",".join(map(str, range(n))) + "\n")
    with pytest.raises(DataFileError, match=r"line 1: the header has repeated column names \['v3'\]"):
        read_table(path)
    with pytest.raises(DataFileError, match="column 'v7' is given twice"):
        read_table(write("ok.csv", "v7,v8\n1,2\n"), ["v7", "v7"])


# ------------------------------------------------------------------ what is refused
@pytest.fixture
def alarm():
    """Fail instead of hanging if a read blocks."""
    def boom(*_):
        raise TimeoutError("the read blocked")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


READERS = [read_table, read_text, read_pairs, file_sha256,
           lambda p: load_table(p, time_column=True)]


@pytest.mark.parametrize("reader", READERS, ids=["read_table", "read_text", "read_pairs",
                                                 "file_sha256", "load_table"])
def test_not_a_regular_file_is_refused_before_reading(tmp_path, alarm, reader):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataFileError, match="pipe.csv is not a regular file .a FIFO"):
        reader(fifo)
    for dev in ("/dev/zero", "/dev/null"):
        if os.path.exists(dev) and stat.S_ISCHR(os.stat(dev).st_mode):
            with pytest.raises(DataFileError, match=f"{dev} is not a regular file"):
                reader(dev)
    with pytest.raises(DataFileError, match="is a folder"):
        reader(tmp_path)


def test_fifo_npz_and_missing_files(tmp_path, alarm):
    os.mkfifo(tmp_path / "p.npz")
    with pytest.raises(DataFileError, match="not a regular file"):
        read_table(tmp_path / "p.npz")
    with pytest.raises(DataFileError, match="cannot read .*nothing.csv"):
        read_table(tmp_path / "nothing.csv")
    with pytest.raises(FileNotFoundError):                 # callers word this one
        file_sha256(tmp_path / "nothing.csv")


def test_size_limit(write, monkeypatch, tmp_path):
    path = write("big.csv", "a\n" + "1\n" * 100)
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 100)
    for reader in (read_table, read_text, read_pairs, file_sha256):
        with pytest.raises(DataFileError, match=r"big.csv is 202 bytes, over the 100 bytes "
                                                r"limit .*MAX_FILE_BYTES"):
            reader(path)
    np.save(tmp_path / "x.npy", np.zeros(40))
    with pytest.raises(DataFileError, match="x.npy is .* over the 100 bytes limit"):
        read_table(tmp_path / "x.npy")


def test_npz_decompression_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros(4_000_000))    # 32 MB -> 31 KB
    assert os.path.getsize(tmp_path / "bomb.npz") < 100_000
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 1 << 20)
    with pytest.raises(DataFileError, match=r"bomb.npz declares 30.5 MiB uncompressed, over "
                                            r"the 1.0 MiB limit"):
        read_table(tmp_path / "bomb.npz")
    # a member whose .npy header declares far more than the zip says: refused from the
    # header, before its data are read
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (10 ** 12,)
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as zf:
        zf.writestr("x.npy", buf.getvalue() + b"\0" * 64)
    with pytest.raises(DataFileError, match=r"liar.npz \(x\) declares 7629394.5 MiB of data"):
        read_table(tmp_path / "liar.npz")
    np.savez(tmp_path / "ok.npz", a=np.arange(3.0), b=np.arange(3.0) * 2)
    assert read_table(tmp_path / "ok.npz")[1].tolist() == [[0, 0], [1, 2], [2, 4]]


def test_field_over_the_csv_limit_is_one_line(write):
    long = "x" * 200_000
    path = write("long.csv", f"a,note\n1,short\n2,{long}\n3,short\n")
    with pytest.raises(DataFileError, match=r"long.csv line 3: a field is longer than "
                                            r"131072 characters"):
        read_table(path, ["a"])
    with pytest.raises(DataFileError, match="line 2: a field is longer"):
        read_table(write("q.csv", f'a\n"{long}"\n'))


def _numeral(rng):
    """A random plain decimal numeral as people and programs write them."""
    kind = rng.integers(6)
    x = float(rng.standard_normal() * 10.0 ** rng.integers(-12, 12))
    if kind == 0:
        return repr(x)                                       # shortest round trip
    if kind == 1:
        return f"{x:.{rng.integers(0, 20)}e}".replace("e", rng.choice(["e", "E"]))
    if kind == 2:
        return str(int(rng.integers(-10 ** 6, 10 ** 6)))
    if kind == 3:
        return f"{x:.{rng.integers(0, 25)}f}"
    if kind == 4:
        return rng.choice(["-0", "+0.0", ".5", "5.", "-.25e-3", "1e-320", "4.9e-324",
                           "1.7976931348623157e308", "0.1000000000000000055511151231257827"])
    return f"{' ' * rng.integers(3)}{x!r}{' ' * rng.integers(3)}"


@pytest.mark.parametrize("delim", [",", "\t", ";"])
def test_fast_path_is_bit_identical_on_random_numerals(write, monkeypatch, rng, delim):
    rows = [[_numeral(rng) for _ in range(4)] for _ in range(300)]
    text = delim.join("abcd") + "\n" + "".join(delim.join(r) + "\n" for r in rows)
    path = write("r.csv", text)
    assert files._fast_table(path, text.encode(), None, "--columns", "error", None)
    fast = read_table(path)[1]
    _slow(monkeypatch)
    slow = read_table(path)[1]
    assert fast.view(np.int64).tolist() == slow.view(np.int64).tolist()     # -0.0 too
    expected = [[float(s) for s in r] for r in rows]
    assert np.array_equal(fast, expected)


def test_parse_numbers_refuses_what_is_not_plain():
    from nn_core._kernels._textparse import parse_numbers
    out = np.empty((4, 2))
    span = np.empty((4, 2), dtype=np.intp)
    slot = np.array([0, 1], dtype=np.intp)
    assert parse_numbers(b"1,2\n\n3 , -4e1\r\n", ord(","), 2, slot, 0, out, span) == 2
    assert out[:2].tolist() == [[1, 2], [3, -40]] and span[:2].tolist() == [[0, 1], [5, 7]]
    for bad in (b"1,2,3\n", b"1\n", b"1,x\n", b"1,0x10\n", b"1,inf\n", b"1,1e999\n",
                b"1,1_0\n", b" , \n", b"1,nan\n", b"1,2\n" * 5):
        assert parse_numbers(bad, ord(","), 2, slot, -1, out, span) == -1, bad
    assert parse_numbers(b"1,\n", ord(","), 2, slot, -1, out, span) == 1 and np.isnan(out[0, 1])
    with pytest.raises(ValueError, match="slot must have ncols"):
        parse_numbers(b"1\n", ord(","), 3, slot, -1, out, span)


def test_read_pairs_max_length(write):
    path = write("p.tsv", "ab\tba\n\nabc\t" + "x" * 300 + "\n")
    assert len(read_pairs(path)) == 2
    with pytest.raises(DataFileError, match="p.tsv line 3: the target has 300 characters, "
                                            "over the limit of 100"):
        read_pairs(path, max_length=100)
    assert read_pairs(path, max_length=300)[0] == ("ab", "ba", 1)


@pytest.mark.parametrize("task", ["forecast", "lm", "seq2seq"])
def test_cli_refuses_a_fifo_or_device_in_one_line(tmp_path, capsys, alarm, task):
    from nn_core.cli import main
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for data in (str(fifo), "/dev/zero"):
        out = tmp_path / f"run-{task}"
        assert main(["train", task, "--data", data, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is not a regular file" in err, err
        assert not out.exists()


def test_rows_blank_to_python_but_not_to_the_parser(write, monkeypatch):
    """A row of gaps whose other fields hold spaces that str.strip removes (form feed,
    no-break space) is skipped by the csv reader; both paths agree."""
    path = write("odd.csv", "t,a\n\x0c,\nx,1\n\u00a0,\ny,3\n")
    fast = load_table(path, ["a"], missing="interpolate")
    _slow(monkeypatch)
    slow = load_table(path, ["a"], missing="interpolate")
    assert fast.values.tolist() == slow.values.tolist() == [[1.0], [3.0]]
