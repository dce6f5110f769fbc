"""A module applied twice before its backwards, and one module used from two threads."""
import threading

import numpy as np
import pytest

import nn_core
from nn_core import gradcheck
from nn_core.attention import MultiHeadAttention, ScaledDotProductAttention
from nn_core.layers import Linear
from nn_core.module import Module


class _Twice(Module):
    """``f(f(x))`` with one shared child: each backward must match its own forward."""

    def __init__(self, child, *, dtype=np.float64, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.f = child

    def forward(self, x):
        self._save_cache(True)
        return self.f(self.f(x))

    def backward(self, g):
        self._pop_cache()
        out = self.f.backward(g)                 # the second application first
        out = out[0] if isinstance(out, tuple) else out
        out = self.f.backward(out)
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("make", [
    lambda: Linear(6, 6, dtype=np.float64, rng=0),
    lambda: MultiHeadAttention(6, 2, dtype=np.float64, rng=0),
])
def test_module_applied_twice_in_one_graph(rng, make):
    x = rng.standard_normal((2, 3, 6))
    assert gradcheck(_Twice(make()), (x,), rng=rng).ok


def test_sdpa_applied_twice_keeps_both_probabilities(rng):
    m = ScaledDotProductAttention(dtype=np.float64)
    q1, q2, k, v = (rng.standard_normal((2, 5, 4)) for _ in range(4))
    g1, g2 = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 4))
    m(q1, k, v)
    m(q2, k, v)
    b2 = m.backward(g2)
    b1 = m.backward(g1)
    for q, g, got in ((q1, g1, b1), (q2, g2, b2)):
        m(q, k, v)
        want = m.backward(g)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        m.backward(g1)


def test_forward_only_in_training_mode_hits_a_clear_limit(monkeypatch):
    monkeypatch.setattr(nn_core.module, "MAX_PENDING_FORWARDS", 3)
    lin = Linear(2, 2)
    for _ in range(3):
        lin(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match=r"inference_mode.*clear_pending\(\)"):
        lin(np.ones((1, 2)))
    with nn_core.inference_mode():               # forward-only: no limit, nothing kept
        for _ in range(10):
            lin(np.ones((1, 2)))


def test_backward_of_another_threads_forward_raises(rng):
    lin = Linear(4, 4, rng=0)
    lin(rng.standard_normal((2, 4)))
    errors = []

    def other():
        try:
            lin.backward(np.ones((2, 4)))
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "another thread" in errors[0]
    lin.backward(np.ones((2, 4)))                # the owner thread still can


def test_one_instance_from_two_threads_at_once_raises():
    """The second thread finds the instance busy (forced overlap with an event)."""
    entered, release = threading.Event(), threading.Event()

    class Slow(Module):
        def forward(self, x):
            entered.set()
            release.wait(5)
            self._save_cache(x)
            return x

        def backward(self, g):
            self._pop_cache()
            return g

    m = Slow()
    t = threading.Thread(target=lambda: m(np.ones(2)))
    t.start()
    entered.wait(5)
    try:
        with pytest.raises(RuntimeError, match="two threads at once"):
            m(np.ones(2))
    finally:
        release.set()
        t.join()
    m(np.ones(2))                                # free again afterwards


def test_separate_instances_run_concurrently(rng):
    """Each thread its own MHA: same results as alone, no error."""
    x = rng.standard_normal((4, 16, 32))
    g = rng.standard_normal((4, 16, 32))
    want = MultiHeadAttention(32, 4, dtype=np.float64, rng=1)
    y = want(x)
    gx = want.backward(g)[0]
    results, errors = [None] * 4, []

    def work(i):
        try:
            m = MultiHeadAttention(32, 4, dtype=np.float64, rng=1)
            for _ in range(20):
                out = m(x)
                back = m.backward(g)[0]
            results[i] = (out, back)
        except Exception as exc:                 # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for out, back in results:
        np.testing.assert_allclose(out, y, rtol=1e-12)
        np.testing.assert_allclose(back, gx, rtol=1e-10, atol=1e-12)
