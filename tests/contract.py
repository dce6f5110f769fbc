"""The module contract every nn_core layer must satisfy (docs/architecture.md "How to add a layer").

``check_contract`` runs, for float32 and float64:

* outputs and input gradients keep the module dtype and the inputs' shapes;
* caller arrays are not modified;
* non-contiguous and read-only inputs work and give the same numbers;
* ``backward`` before ``forward`` and a second ``backward`` raise RuntimeError;
* two forward/backward rounds double the parameter gradients (accumulation);
* every ``bad`` case raises the documented exception.
"""
from __future__ import annotations

import numpy as np
import pytest

from nn_core.gradcheck import _flatten, _rebuild

DTYPES = (np.float32, np.float64)


def _map_arrays(obj, fn):
    if isinstance(obj, tuple):
        return tuple(_map_arrays(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_map_arrays(o, fn) for o in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return fn(obj)
    return obj


def _non_contiguous(a):
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    view = big[..., ::2]
    assert not view.flags.c_contiguous or a.shape[-1] <= 1
    return view


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _backward(module, out, grads):
    g = _rebuild(out, list(grads))
    return module.backward(*g) if isinstance(out, tuple) else module.backward(g)


def _returned_pairs(inputs, returned):
    """``(gradient, input)`` pairs for the floating inputs that got a gradient back."""
    if not isinstance(returned, (tuple, list)):
        returned = (returned,)
    pairs = []
    for inp, got in zip(inputs, returned):
        if got is None:
            continue
        if isinstance(inp, (tuple, list)):
            pairs.extend(_returned_pairs(inp, got))
        elif isinstance(inp, np.ndarray) and inp.dtype.kind == "f":
            pairs.append((got, inp))
    return pairs


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def check_contract(factory, make_inputs, bad=(), forward=None, seed=None):
    """Run the contract on ``factory(dtype)`` modules.

    Parameters
    ----------
    factory : callable ``(dtype) -> Module``
        Builds a fresh module (same seed each call, dropout off).
    make_inputs : callable ``(rng) -> tuple``
        Fresh random positional inputs for ``forward`` (float64 arrays are fine).
    bad : iterable of ``(inputs_tuple, exception_type, match)``
        Calls that must raise.
    forward : callable ``(module, *inputs) -> output``, optional
        How to call the module; default ``module(*inputs)``.
    """
    fwd = forward or (lambda m, *a: m(*a))
    rng = np.random.default_rng(seed)
    for dtype in DTYPES:
        inputs = make_inputs(rng)
        saved = _map_arrays(inputs, np.copy)
        m = factory(dtype)
        assert np.dtype(m.dtype) == np.dtype(dtype)

        # backward before forward
        probe = fwd(factory(dtype), *inputs)
        fresh = factory(dtype)
        with pytest.raises(RuntimeError):
            _backward(fresh, probe, [np.ones_like(o) for o in _flatten(probe)])

        out = fwd(m, *inputs)
        outs = _flatten(out)
        for o in outs:
            assert o.dtype == dtype, f"output dtype {o.dtype} != module dtype {dtype}"
        grads = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
        m.zero_grad()
        returned = _backward(m, out, grads)
        for got, inp in _returned_pairs(inputs, returned):
            assert got.dtype == dtype, f"input gradient dtype {got.dtype} != {dtype}"
            assert got.shape == inp.shape, f"input gradient shape {got.shape} != {inp.shape}"
        returned_first = [g.copy() for g, _ in _returned_pairs(inputs, returned)]
        first = {k: v.copy() for k, v in m.gradients().items()}

        # inputs untouched
        for a, b in zip(_flatten(inputs), _flatten(saved)):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)

        # second backward without forward
        with pytest.raises(RuntimeError):
            _backward(m, out, grads)

        # accumulation: a second round doubles every parameter gradient
        out2 = fwd(m, *inputs)
        _backward(m, out2, grads)
        for k, g in m.gradients().items():
            np.testing.assert_allclose(g, 2 * first[k], **_tol(dtype), err_msg=k)

        # non-contiguous and read-only inputs give the same numbers, forward and backward
        for transform in (_non_contiguous, _read_only):
            other_module = factory(dtype)
            other_inputs = _map_arrays(inputs, transform)
            other = fwd(other_module, *other_inputs)
            for a, b in zip(_flatten(other), outs):
                np.testing.assert_allclose(a, b, **_tol(dtype))
            other_returned = _backward(other_module, other, grads)
            for (a, _), b in zip(_returned_pairs(other_inputs, other_returned), returned_first):
                np.testing.assert_allclose(a, b, **_tol(dtype))
            for k, g in other_module.gradients().items():
                np.testing.assert_allclose(g, first[k], **_tol(dtype), err_msg=k)

    for args, exc, match in bad:
        with pytest.raises(exc, match=match):
            fwd(factory(np.float64), *args)
