"""nn_core.gradcheck catches wrong backward passes and passes right ones."""
import numpy as np
import pytest

import nn_core
from nn_core import Module


class Tanh(Module):
    def __init__(self, n, bug=None, *, dtype=np.float64, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.bug = bug
        self.add_param("w", self.rng.standard_normal(n))

    def forward(self, x, y):
        out = np.tanh(x * self.params["w"]) + 2.0 * y
        self._save_cache((x, out - 2.0 * y))
        return out

    def backward(self, g):
        x, t = self._pop_cache()
        d = g * (1 - t * t)
        if self.bug == "input":
            d = d * 1.001
        gw = (d * x).sum(0)
        if self.bug == "param":
            gw = gw + 1e-3
        self.grads["w"] += gw
        return d * self.params["w"], 2.0 * g


def test_correct_backward_passes(rng):
    rep = nn_core.gradcheck(Tanh(4, rng=rng), (rng.standard_normal((3, 4)), rng.standard_normal((3, 4))))
    assert rep.ok, str(rep)
    assert set(rep.entries) == {"input[0]", "input[1]", "w"}
    assert rep.entries["input[1]"].max_abs_err < 1e-8


@pytest.mark.parametrize("bug,name", [("input", "input[0]"), ("param", "w")])
def test_wrong_backward_is_caught(bug, name, rng):
    m = Tanh(4, bug=bug, rng=rng)
    inputs = (rng.standard_normal((3, 4)), rng.standard_normal((3, 4)))
    rep = nn_core.gradcheck(m, inputs)
    assert not rep.ok
    assert not rep.entries[name].ok
    assert "mismatch" in str(rep)
    with pytest.raises(AssertionError, match="FAILED"):
        nn_core.gradcheck(m, inputs, raise_on_fail=True)


def test_float32_module_is_rejected():
    with pytest.raises(TypeError, match="float64"):
        nn_core.gradcheck(Tanh(2, dtype=np.float32), (np.ones((1, 2)), np.ones((1, 2))))


def test_parameters_are_restored(rng):
    m = Tanh(3, rng=rng)
    w = m.params["w"].copy()
    nn_core.gradcheck(m, (rng.standard_normal((2, 3)), rng.standard_normal((2, 3))))
    np.testing.assert_array_equal(m.params["w"], w)
