"""The Module protocol (docs/guide/tour.md, "The Module protocol") on small hand-written modules."""
import doctest
import sys

import numpy as np
import pytest

from nn_core import Module, ModuleList


class Affine(Module):
    """y = x @ W + b; backward accumulates into grads."""

    def __init__(self, n_in, n_out, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.add_param("W", self.rng.standard_normal((n_in, n_out)))
        self.add_param("b", self.rng.standard_normal(n_out))

    def forward(self, x):
        self._save_cache(x)
        return x @ self.params["W"] + self.params["b"]

    def backward(self, grad_output):
        x = self._pop_cache()
        self.grads["W"] += x.T @ grad_output
        self.grads["b"] += grad_output.sum(0)
        return grad_output @ self.params["W"].T


class Net(Module):
    def __init__(self, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.first = Affine(3, 4, dtype=dtype, rng=self.rng)
        self.layers = ModuleList([Affine(4, 4, dtype=dtype, rng=self.rng) for _ in range(2)],
                                 dtype=dtype)

    def forward(self, x):
        x = self.first(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, g):
        for layer in reversed(list(self.layers)):
            g = layer.backward(g)
        return self.first.backward(g)


def test_dotted_names_and_live_arrays():
    net = Net(rng=0)
    names = list(net.parameters())
    assert names == ["first.W", "first.b", "layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"]
    assert list(net.gradients()) == names
    assert net.parameters()["layers.1.W"] is net.layers[1].params["W"]
    assert net.gradients()["first.b"] is net.first.grads["b"]
    assert net.num_parameters() == 3 * 4 + 4 + 2 * (16 + 4)


def test_same_seed_same_weights_and_dtype():
    a, b = Net(rng=7), Net(rng=7)
    for k in a.parameters():
        np.testing.assert_array_equal(a.parameters()[k], b.parameters()[k])
    assert all(p.dtype == np.float32 for p in a.parameters().values())
    assert all(p.dtype == np.float64 for p in Net(dtype=np.float64).parameters().values())
    c = Net(rng=8)
    assert not np.array_equal(a.parameters()["first.W"], c.parameters()["first.W"])


def test_gradients_accumulate_and_zero_grad(rng):
    net = Net(dtype=np.float64, rng=1)
    x = rng.standard_normal((5, 3))
    g = rng.standard_normal((5, 4))
    net(x)
    net.backward(g)
    first = {k: v.copy() for k, v in net.gradients().items()}
    assert all(np.any(v != 0) for v in first.values())
    net(x)
    net.backward(g)
    for k, v in net.gradients().items():
        np.testing.assert_allclose(v, 2 * first[k])
    net.zero_grad()
    assert all(np.all(v == 0) for v in net.gradients().values())


def test_backward_without_forward_raises(rng):
    m = Affine(2, 2)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        m.backward(np.ones((1, 2)))
    m(rng.standard_normal((1, 2)))
    m.backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match="without a matching forward"):
        m.backward(np.ones((1, 2)))


def test_clear_pending_drops_the_forwards_of_the_whole_tree(rng):
    net = Net(dtype=np.float64, rng=1)
    x = rng.standard_normal((5, 3))
    net(x)
    net(x)
    assert [m.num_pending for m in (net.first, *net.layers)] == [2, 2, 2]
    net.clear_pending()
    assert all(m.num_pending == 0 for m in net.modules())
    with pytest.raises(RuntimeError, match="without a matching forward"):
        net.backward(rng.standard_normal((5, 4)))
    net(x)                                       # usable again afterwards
    net.backward(rng.standard_normal((5, 4)))
    assert all(m.num_pending == 0 for m in net.modules())


def test_state_dict_round_trip_and_checks():
    a, b = Net(rng=1), Net(rng=2)
    sd = a.state_dict()
    sd["first.W"][...] = 123.0                      # a copy: the module is untouched
    assert not np.any(a.first.params["W"] == 123.0)
    b.load_state_dict(a.state_dict())
    for k in a.parameters():
        np.testing.assert_array_equal(a.parameters()[k], b.parameters()[k])
    live = b.first.params["W"]
    b.load_state_dict(Net(rng=3).state_dict())
    assert b.first.params["W"] is live               # loaded in place

    bad = a.state_dict()
    del bad["layers.0.b"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \[.layers.0.b.\], unexpected keys \[.extra.\]"):
        b.load_state_dict(bad)
    bad = a.state_dict()
    bad["first.W"] = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"state_dict\['first.W'\] must have shape \(3, 4\), got \(4, 3\)"):
        b.load_state_dict(bad)
    bad = a.state_dict()
    bad["first.b"] = bad["first.b"].astype(np.float64)
    with pytest.raises(TypeError, match=r"state_dict\['first.b'\] must have dtype float32, got float64"):
        b.load_state_dict(bad)


def test_train_eval_propagate_and_call():
    net = Net()
    assert net.training and net.layers[0].training
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(net(x), net.forward(x))


@pytest.mark.parametrize("bad", [np.float16, np.int32, "float32x", np.complex64])
def test_bad_dtype_raises_type_error(bad):
    with pytest.raises(TypeError, match="dtype must be np.float32 or np.float64"):
        Module(dtype=bad)


def test_bad_rng_raises_type_error():
    with pytest.raises(TypeError, match="rng must be None, an int seed or a numpy.random.Generator"):
        Module(rng="seed")


def _public_module_classes():
    import inspect

    import nn_core
    from nn_core import attention, layers, recurrent

    seen = {}
    for ns in (attention, recurrent, layers, nn_core):
        for name, obj in vars(ns).items():
            if inspect.isclass(obj) and issubclass(obj, Module) and obj not in (Module, ModuleList):
                seen[obj.__name__] = obj
    return seen


_EXAMPLE_ARGS = {
    "ScaledDotProductAttention": (), "MultiHeadAttention": (8, 2), "MultiQueryAttention": (8, 2),
    "GroupedQueryAttention": (8, 4, 2), "CrossAttention": (8, 2), "CachedCrossAttention": (8, 2),
    "MultimodalCrossAttention": (8, 2, 6), "RNNCell": (3, 4), "LSTMCell": (3, 4), "GRUCell": (3, 4),
    "StackedLSTM": (3, 4, 2), "BidirectionalRNNCell": (3, 4), "BidirectionalGRU": (3, 4),
    "StackedBidirectional": ("gru", 3, 4, 2), "Linear": (3, 4), "Embedding": (5, 3),
    "LayerNorm": (4,), "Dropout": (0.1,), "ReLU": (), "Tanh": (), "GELU": (),
}


def test_every_public_module_starts_in_training_mode():
    classes = _public_module_classes()
    checked = 0
    for name, cls in classes.items():
        if name not in _EXAMPLE_ARGS:
            continue
        m = cls(*_EXAMPLE_ARGS[name])
        assert all(sub.training for sub in m.modules()), name
        checked += 1
    assert checked >= 15, sorted(classes)


def test_rejected_grad_output_keeps_the_forward_for_a_retry(rng):
    """A bad grad_output raises ValueError and leaves the forward usable (every layer)."""
    from nn_core.attention import CachedCrossAttention, CrossAttention, MultimodalCrossAttention
    from nn_core.layers import GELU, Dropout, Embedding, LayerNorm, Linear

    x = rng.standard_normal((2, 3, 8))
    ctx = rng.standard_normal((2, 4, 6))
    cached = CachedCrossAttention(8, 2, kv_dim=6)
    cached.set_context(ctx)
    cases = [
        (Linear(8, 5), (x,)), (LayerNorm(8), (x,)), (Dropout(0.2), (x,)), (GELU(), (x,)),
        (Embedding(10, 8), (rng.integers(0, 10, (2, 3)),)),
        (CrossAttention(8, 2, kv_dim=6), (x, ctx)), (cached, (x,)),
        (MultimodalCrossAttention(8, 2, 6), (x, ctx)),
    ]
    for module, inputs in cases:
        out = module(*inputs)
        with pytest.raises(ValueError, match="grad_output must have"):
            module.backward(np.ones(out.shape[:-1] + (out.shape[-1] + 1,)))
        module.backward(np.ones_like(out))                       # the retry works
        with pytest.raises(RuntimeError, match="without a matching forward"):
            module.backward(np.ones_like(out))


def test_flat_parameters_views_and_clip(rng):
    from nn_core.layers import LayerNorm, Linear, Sequential
    from nn_core.optim import clip_grad_norm

    net = Sequential(Linear(3, 4, dtype=np.float64, rng=0), LayerNorm(4, dtype=np.float64))
    x = rng.standard_normal((5, 3))
    y = net(x)
    values = {k: v.copy() for k, v in net.parameters().items()}
    fp, fg = net.flat_parameters()
    assert fp.size == fg.size == net.num_parameters()
    assert net.flat_parameters()[0] is fp                  # stable while nothing moved
    for k, v in net.parameters().items():
        np.testing.assert_array_equal(v, values[k])
        assert v.base is fp and net.gradients()[k].base is fg
    np.testing.assert_array_equal(net(x), y)
    net.backward(rng.standard_normal(y.shape))
    norm = np.sqrt(sum(float((g * g).sum()) for g in net.gradients().values()))
    assert np.isclose(clip_grad_norm(net, 0.5), norm)      # one pass over fg
    assert np.isclose(np.linalg.norm(fg), 0.5, rtol=1e-5)
    net[0].add_param("extra", np.ones(2))                  # a new parameter: re-flattened
    fp2, _ = net.flat_parameters()
    assert fp2 is not fp and fp2.size == fp.size + 2


def test_docstring_examples_run():
    """The examples of the protocol, inference_mode and enable_backward."""
    result = doctest.testmod(sys.modules[Module.__module__], optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def test_pending_forwards_past_64_warn_once(rng):
    """Training-mode forwards without a backward keep memory: the module says so once,
    naming the ways out; eval() and inference_mode() keep nothing and stay silent."""
    import warnings

    from nn_core import inference_mode
    from nn_core.layers import Linear
    from nn_core.module import WARN_PENDING_FORWARDS

    lin = Linear(4, 3, rng=rng)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(WARN_PENDING_FORWARDS):
            lin(x)
        assert not caught
        for _ in range(WARN_PENDING_FORWARDS):
            lin(x)
        assert len(caught) == 1 and caught[0].category is RuntimeWarning
        text = str(caught[0].message)
        assert all(w in text for w in ("Linear", "65", "eval()", "inference_mode()",
                                       "clear_pending()"))
        lin.clear_pending()
        with inference_mode():
            for _ in range(2 * WARN_PENDING_FORWARDS):
                lin(x)
        assert len(caught) == 1
