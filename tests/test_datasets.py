"""nn_core.datasets: the generated data of the demo tasks."""
import doctest

import numpy as np
import pytest

from nn_core.datasets import arithmetic, digit_strings, lorenz
from nn_core.datasets.arithmetic import answer_mask, decode_text, encode_text, make_text
from nn_core.datasets.digit_strings import (BOS, EOS, OFFSET, PAD, decode_tokens, encode,
                                            make_examples, pad_batch, transform)
from nn_core.datasets.lorenz import lorenz_series, sliding_windows


@pytest.mark.parametrize("module", [digit_strings, lorenz, arithmetic],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ digit strings
@pytest.mark.parametrize("mode", ["reverse", "sort"])
def test_make_examples(mode):
    src, tgt = make_examples(50, 2, 7, mode, seed=4)
    again, _ = make_examples(50, 2, 7, mode, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(src, again))
    assert {len(s) for s in src} <= set(range(2, 8))
    for s, t in zip(src, tgt):
        assert s.dtype == np.int64 and ((s >= OFFSET) & (s < OFFSET + 10)).all()
        want = s[::-1] if mode == "reverse" else np.sort(s)
        np.testing.assert_array_equal(t, want)
        np.testing.assert_array_equal(transform(mode, s), want)


def test_pad_batch_layout():
    src = [encode("123"), encode("4")]
    tgt = [encode("321"), encode("4")]
    s, sl, tin, tout, tl = pad_batch(src, tgt)
    np.testing.assert_array_equal(s, [[4, 5, 6], [7, PAD, PAD]])
    np.testing.assert_array_equal(sl, [3, 1])
    np.testing.assert_array_equal(tin, [[BOS, 6, 5, 4], [BOS, 7, PAD, PAD]])
    np.testing.assert_array_equal(tout, [[6, 5, 4, EOS], [7, EOS, PAD, PAD]])
    np.testing.assert_array_equal(tl, [4, 2])
    s2, sl2 = pad_batch(src)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(sl2, sl)


def test_encode_and_decode_tokens():
    assert decode_tokens(encode("9071")) == "9071"
    assert decode_tokens([OFFSET + 1, PAD, EOS, OFFSET]) == "1?"
    for bad in ("", "12a", "-1"):
        with pytest.raises(ValueError, match="non-empty string of digits"):
            encode(bad)


# ------------------------------------------------------------------------ Lorenz
def test_lorenz_series_is_seeded_and_on_the_attractor():
    a = lorenz_series(300, seed=1)
    np.testing.assert_array_equal(a, lorenz_series(300, seed=1))
    assert not np.array_equal(a, lorenz_series(300, seed=2))
    assert a.shape == (300, 3) and a.dtype == np.float64
    assert np.abs(a[:, :2]).max() < 30 and 0 < a[:, 2].min() and a[:, 2].max() < 55


def test_sliding_windows_alignment():
    z = np.arange(20.0).reshape(10, 2)
    x, y = sliding_windows(z, window=3, horizon=2)
    assert x.shape == (6, 3, 2) and y.shape == (6, 2)
    for i in range(6):
        np.testing.assert_array_equal(x[i], z[i:i + 3])
        np.testing.assert_array_equal(y[i], z[i + 3 - 1 + 2])


# -------------------------------------------------------------------- arithmetic
def test_make_text_is_correct_arithmetic():
    text = make_text(40, 2, seed=3)
    assert text == make_text(40, 2, seed=3)
    exprs = text.split(";")[:-1]
    assert len(exprs) == 40
    for e in exprs:
        lhs, c = e.split("=")
        a, b = lhs.split("+")
        assert int(a) + int(b) == int(c) and int(a) < 100 and int(b) < 100


def test_encode_text_round_trip_and_errors():
    assert decode_text(encode_text("12+3=15;")) == "12+3=15;"
    with pytest.raises(ValueError, match="may only contain"):
        encode_text("1 + 2")


def test_answer_mask():
    ids = encode_text(";12+3=15;7+1=8;4")[None]
    mask = answer_mask(ids)[0]
    assert "".join("x" if m else "." for m in mask) == "......xxx....xx."
