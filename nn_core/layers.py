"""Basic layers for building models: Linear, Embedding, LayerNorm, Dropout, Sequential.

Every layer follows the :class:`~nn_core.Module` protocol: ``forward`` keeps what
``backward`` needs, ``backward(grad_output)`` returns the gradient of the forward's
array input and **adds** the parameter gradients into ``grads``.

Shape legend
------------
``...``  any number of leading dims (batch, time);
``D``    input features, ``F`` output features, ``V`` vocabulary size.

Examples
--------
>>> import numpy as np
>>> from nn_core.layers import Linear, LayerNorm, Dropout, Sequential
>>> net = Sequential(Linear(8, 16, rng=0), LayerNorm(16), Dropout(0.1, rng=0), Linear(16, 4, rng=1))
>>> sorted(net.parameters())
['0.W', '0.b', '1.beta', '1.gamma', '3.W', '3.b']
>>> y = net(np.ones((2, 5, 8), np.float32))
>>> y.shape
(2, 5, 4)
>>> gx = net.backward(np.ones_like(y))
>>> gx.shape
(2, 5, 8)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from ._validation import (
    as_float_array,
    as_index_array,
    check_grad_output,
    check_positive_int,
    check_probability,
    require_same_dtype,
)
from . import _parallel
from ._dropout import dropout_key
from ._kernels import _layers as _kl
from ._linalg import matmul
from .module import Module, ModuleList

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, DTypeLike, RNGLike

__all__ = ["Linear", "Embedding", "LayerNorm", "Dropout", "ReLU", "Tanh", "GELU", "Sequential"]


# element-wise and row kernels split over threads above these sizes
_MIN_ELEMENTS_PER_THREAD = 1 << 15
_MIN_ROWS_PER_THREAD = 256
# LayerNorm's parameter gradients are summed over fixed chunks of this many rows
_GRAD_CHUNK_ROWS = 512


def _flat(a):
    """``a`` as a flat C-contiguous view (a copy only when it is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


@dataclass
class _SavedInput:
    """A layer's saved tensor and the shape of its output (all the caches here)."""

    saved: object
    out_shape: tuple


def _check_last_dim(x, name, expected, what):
    if x.ndim < 1 or x.shape[-1] != expected:
        got = x.shape[-1] if x.ndim else "a scalar"
        raise ValueError(
            f"{name}.shape[-1] must equal {what}: expected {expected}, got {got} "
            f"(shape {tuple(x.shape)})"
        )


class Linear(Module):
    r"""Affine map ``y = x W + b`` over the last dimension.

    Parameters
    ----------
    in_features : int
        ``D``, size of the last input dimension.
    out_features : int
        ``F``, size of the last output dimension.
    bias : bool
        Learn the additive bias ``b [F]``.
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or Generator, keyword-only

    Attributes
    ----------
    params["W"] : ndarray ``[D, F]``
        Used as ``x @ W`` (the attention layers' convention; ``torch.nn.Linear.weight``
        is its transpose).  Initialised ``U(-1/sqrt(D), 1/sqrt(D))`` like PyTorch.
    params["b"] : ndarray ``[F]``
        Same initial distribution; present only when ``bias``.

    Notes
    -----
    Forward, with ``x [..., D]`` flattened to ``X [N, D]``::

        Y = X W + b                                   [N, F]

    Backward, given ``dY``::

        dX = dY W^T ;  dW += X^T dY ;  db += sum_n dY[n]

    Examples
    --------
    >>> lin = Linear(3, 2, rng=0)
    >>> lin(np.ones((4, 3), np.float32)).shape
    (4, 2)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        bound = 1.0 / np.sqrt(self.in_features)
        self.add_param("W", self.rng.uniform(-bound, bound, (self.in_features, self.out_features)))
        self.use_bias = bool(bias)
        if self.use_bias:
            self.add_param("b", self.rng.uniform(-bound, bound, self.out_features))

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Apply the layer.

        Parameters
        ----------
        x : array_like ``[..., D]``

        Returns
        -------
        ndarray ``[..., F]``
        """
        x = as_float_array(x, "x", self.dtype, min_ndim=1)
        _check_last_dim(x, "x", self.in_features, "in_features")
        x2 = x.reshape(-1, self.in_features)
        y = matmul(x2, self.params["W"])
        if self.use_bias:
            y += self.params["b"]
        out_shape = x.shape[:-1] + (self.out_features,)
        self._save_cache(_SavedInput(x2, out_shape))
        return y.reshape(out_shape)

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """Return ``grad_x [..., D]``; accumulate ``dW`` and ``db``."""
        cache = self._peek_cache()
        g = check_grad_output(grad_output, cache.out_shape, self.dtype)
        self._pop_cache()
        x2, shape = cache.saved, cache.out_shape[:-1] + (self.in_features,)
        g2 = g.reshape(-1, self.out_features)
        matmul(x2, g2, trans_a=True, out=self.grads["W"], accumulate=True)
        if self.use_bias:
            self.grads["b"] += g2.sum(axis=0)
        return matmul(g2, self.params["W"], trans_b=True).reshape(shape)


class Embedding(Module):
    r"""Lookup table: integer ids ``[...]`` -> vectors ``[..., E]``.

    Parameters
    ----------
    num_embeddings : int
        ``V``, number of rows (valid ids are ``0 <= id < V``).
    embedding_dim : int
        ``E``, size of each vector.
    padding_idx : int, optional
        Row that receives no gradient (as in ``torch.nn.Embedding``); it is
        initialised to zeros.
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or Generator, keyword-only

    Attributes
    ----------
    params["W"] : ndarray ``[V, E]``
        Initialised ``N(0, 1)`` like PyTorch.

    Notes
    -----
    Forward: ``Y[...] = W[ids[...]]``.  Backward: the gradient is sparse, row
    ``v`` receives the sum of ``dY`` over every position where ``ids == v``
    (repeated ids accumulate, in one compiled pass); ``backward`` returns
    ``None`` for the (integer, non-differentiable) ids.

    Examples
    --------
    >>> emb = Embedding(10, 4, rng=0)
    >>> emb(np.array([[1, 2, 2]])).shape
    (1, 3, 4)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            padding_idx = int(padding_idx)
            if padding_idx < 0:
                padding_idx += self.num_embeddings
            if not 0 <= padding_idx < self.num_embeddings:
                raise ValueError(
                    f"padding_idx must be in [0, {self.num_embeddings}), got {padding_idx}"
                )
        self.padding_idx = padding_idx
        W = self.rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if padding_idx is not None:
            W[padding_idx] = 0.0
        self.add_param("W", W)

    def forward(self, ids: ArrayLike) -> np.ndarray:
        """Look up ``ids`` (integer array ``[...]``); returns ``[..., E]``."""
        ids = as_index_array(ids, "ids", self.num_embeddings)
        self._save_cache(_SavedInput(ids, ids.shape + (self.embedding_dim,)))
        return self.params["W"][ids]

    def backward(self, grad_output: ArrayLike) -> None:
        """Accumulate the sparse gradient of ``W``; returns ``None`` (ids have no gradient)."""
        cache = self._peek_cache()
        g = check_grad_output(grad_output, cache.out_shape, self.dtype)
        self._pop_cache()
        ids = np.ascontiguousarray(cache.saved, dtype=np.int64).reshape(-1)
        g2 = np.ascontiguousarray(g).reshape(-1, self.embedding_dim)
        skip = -1 if self.padding_idx is None else self.padding_idx
        _kl.scatter_add(self.grads["W"], ids, g2, skip)       # rows with repeated ids add
        return None


class LayerNorm(Module):
    r"""Layer normalisation over the last dimension (Ba, Kiros & Hinton, 2016).

    Parameters
    ----------
    normalized_shape : int
        ``D``, size of the last dimension.
    eps : float
        Added to the variance.
    elementwise_affine : bool
        Learn ``gamma [D]`` (init 1) and ``beta [D]`` (init 0).
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or Generator, keyword-only

    Notes
    -----
    One compiled pass per row forward (statistics, then normalisation while the row is
    in cache) and one backward; ``x``, the row means and ``1/std`` are kept.

    Forward, per row ``x [D]`` (biased variance, as PyTorch)::

        mu = mean(x) ;  r = 1 / sqrt(var(x) + eps) ;  xh = (x - mu) r
        y  = gamma * xh + beta

    Backward, given ``dy``, with ``g = dy * gamma``::

        dx = r * (g - mean(g) - xh * mean(g * xh))
        dgamma += sum_rows dy * xh ;  dbeta += sum_rows dy

    Examples
    --------
    >>> ln = LayerNorm(4)
    >>> y = ln(np.arange(8.0).reshape(2, 4))
    >>> np.allclose(y.mean(-1), 0, atol=1e-6)
    True
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.normalized_shape = check_positive_int(normalized_shape, "normalized_shape")
        eps = float(eps)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.add_param("gamma", np.ones(self.normalized_shape))
            self.add_param("beta", np.zeros(self.normalized_shape))

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Normalise ``x [..., D]``; returns ``[..., D]``."""
        x = as_float_array(x, "x", self.dtype, min_ndim=1)
        _check_last_dim(x, "x", self.normalized_shape, "normalized_shape")
        D = self.normalized_shape
        x2 = np.ascontiguousarray(x).reshape(-1, D)
        N = x2.shape[0]
        y = np.empty_like(x2)
        mean, rstd = np.empty(N, self.dtype), np.empty(N, self.dtype)
        gamma = self.params["gamma"] if self.elementwise_affine else None
        beta = self.params["beta"] if self.elementwise_affine else None
        _parallel.run_rows(
            lambda a, b: _kl.layernorm_forward(x2[a:b], y[a:b], mean[a:b], rstd[a:b], gamma,
                                               beta, self.eps),
            _parallel.work_ranges(N, _MIN_ROWS_PER_THREAD))
        self._save_cache(_SavedInput((x2, mean, rstd), x.shape))
        return y.reshape(x.shape)

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """Return ``grad_x [..., D]``; accumulate ``dgamma``, ``dbeta``."""
        cache = self._peek_cache()
        g = check_grad_output(grad_output, cache.out_shape, self.dtype)
        self._pop_cache()
        x2, mean, rstd = cache.saved
        g2 = np.ascontiguousarray(g).reshape(x2.shape)
        dx = np.empty_like(x2)
        N = x2.shape[0]
        affine = self.elementwise_affine
        gamma = self.params["gamma"] if affine else None
        # fixed row chunks: the first accumulates into the gradients, the others into
        # zeroed partials added in chunk order (the same bits at any thread count)
        count = -(-N // _GRAD_CHUNK_ROWS)
        parts = [(self.grads["gamma"], self.grads["beta"]) if affine else (None, None)]
        parts += [(np.zeros_like(parts[0][0]), np.zeros_like(parts[0][1])) if affine
                  else (None, None) for _ in range(1, count)]

        def job(i, a, b):
            _kl.layernorm_backward(x2[a:b], g2[a:b], mean[a:b], rstd[a:b], gamma, dx[a:b],
                                   *parts[i])

        _parallel.run_chunks(job, N, _GRAD_CHUNK_ROWS, _MIN_ROWS_PER_THREAD)
        for dg, db in parts[1:]:
            if affine:
                self.grads["gamma"] += dg
                self.grads["beta"] += db
        return dx.reshape(cache.out_shape)


class Dropout(Module):
    r"""Inverted dropout (Srivastava et al., 2014): identity in ``eval()``.

    Parameters
    ----------
    p : float in [0, 1)
        Probability of zeroing an element during training.
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or Generator, keyword-only
        Draws the masks.

    Notes
    -----
    Training: ``y = x * z / (1 - p)`` with ``z ~ Bernoulli(1 - p)`` drawn per element;
    backward ``dx = dy * z / (1 - p)``.  Evaluation (or ``p == 0``): ``y = x``, ``dx = dy``.
    The mask comes from a counter-based generator keyed by two numbers drawn from
    ``rng`` per forward, so the backward regenerates it instead of storing it.

    Examples
    --------
    >>> d = Dropout(0.5, rng=0).eval()
    >>> d(np.ones(3)).tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, p: float = 0.5, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.p = check_probability(p, "p")

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Apply dropout to ``x [...]``; returns the same shape."""
        x = as_float_array(x, "x", self.dtype)
        if self.training and self.p > 0:
            key = dropout_key(self.rng, self.p)
            y = _apply_dropout(x, key)
            self._save_cache(_SavedInput(key, x.shape))
            return y
        self._save_cache(_SavedInput(None, x.shape))
        return x.copy()

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """Return ``grad_x`` (the same mask, regenerated, applied to ``grad_output``)."""
        cache = self._peek_cache()
        g = check_grad_output(grad_output, cache.out_shape, self.dtype)
        self._pop_cache()
        return _apply_dropout(g, cache.saved) if cache.saved is not None else g.copy()


def _apply_dropout(x, key):
    """``x`` times the counter-based mask of ``key`` (and its ``1 / (1 - p)`` scale)."""
    xf = _flat(x)
    y = np.empty_like(xf)
    k0, k1, threshold, scale = key
    _parallel.run_rows(
        lambda a, b: _kl.dropout(xf[a:b], y[a:b], a, k0, k1, threshold, scale),
        _parallel.work_ranges(xf.size, _MIN_ELEMENTS_PER_THREAD))
    return y.reshape(x.shape)


class _Activation(Module):
    """Element-wise activation: subclasses define ``_fwd(x) -> (y, saved)`` and
    ``_bwd(saved, grad_y) -> grad_x``."""

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Apply the activation to ``x [...]``; returns the same shape."""
        x = as_float_array(x, "x", self.dtype)
        y, saved = self._fwd(x)
        self._save_cache(_SavedInput(saved, x.shape))
        return y

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """Return ``grad_x`` of the same shape."""
        cache = self._peek_cache()
        g = check_grad_output(grad_output, cache.out_shape, self.dtype)
        self._pop_cache()
        return self._bwd(cache.saved, g)


class ReLU(_Activation):
    """``y = max(x, 0)``; backward ``dx = dy * [x > 0]``."""

    def __init__(self, *, dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)

    def _fwd(self, x):
        pos = x > 0
        return np.where(pos, x, self.dtype.type(0)), pos

    def _bwd(self, pos, g):
        return np.where(pos, g, self.dtype.type(0))


class Tanh(_Activation):
    """``y = tanh(x)``; backward ``dx = dy * (1 - y^2)``."""

    def __init__(self, *, dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)

    def _fwd(self, x):
        y = np.tanh(x)
        return y, y

    def _bwd(self, y, g):
        return g * (self.dtype.type(1) - y * y)


class GELU(_Activation):
    r"""Gaussian error linear unit (Hendrycks & Gimpel, 2016).

    Parameters
    ----------
    approximate : {"none", "tanh"}
        As ``torch.nn.GELU``: ``"none"`` is exact, ``y = x Phi(x)``; ``"tanh"`` is
        ``y = x (1 + tanh(u)) / 2`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``.

    Notes
    -----
    Backward (exact): ``dx = dy (Phi(x) + x phi(x))``; (tanh):
    ``dx = dy ((1 + t)/2 + x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2)``.

    Both forms run in one compiled pass each way; only ``x`` is kept.  ``Phi`` is
    evaluated to float rounding over the whole range (from ``erfc`` on the left side,
    so ``x Phi(x)`` keeps its relative accuracy far into the tail, where
    ``x (1 + erf(x / sqrt2)) / 2`` cancels to 0).
    """

    def __init__(self, approximate: str = "none", *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _fwd(self, x):
        xf = _flat(x)                                   # kept for the backward
        y = np.empty_like(xf)
        approx = self.approximate == "tanh"
        _parallel.run_rows(lambda a, b: _kl.gelu_forward(xf[a:b], y[a:b], approx),
                           _parallel.work_ranges(xf.size, _MIN_ELEMENTS_PER_THREAD))
        return y.reshape(x.shape), xf

    def _bwd(self, xf, g):
        gf = _flat(g)
        dx = np.empty_like(xf)
        approx = self.approximate == "tanh"
        _parallel.run_rows(lambda a, b: _kl.gelu_backward(xf[a:b], gf[a:b], dx[a:b], approx),
                           _parallel.work_ranges(xf.size, _MIN_ELEMENTS_PER_THREAD))
        return dx.reshape(g.shape)


class Sequential(ModuleList):
    """Chain of single-input, single-output modules; ``backward`` runs in reverse.

    Parameters
    ----------
    *modules : Module
        Applied in order; their parameters are named ``"0.W"``, ``"1.gamma"``, ...
        All must share one dtype.
    dtype : {np.float32, np.float64} or None, keyword-only
        Defaults to the first module's dtype (float32 for an empty chain).
    rng : None, int or Generator, keyword-only
        Unused (the children own their randomness); accepted for uniformity.

    Notes
    -----
    Forward ``y = f_n(... f_1(x))``; backward ``dx = f_1'(... f_n'(dy))``, each
    child accumulating its own parameter gradients.

    Examples
    --------
    >>> net = Sequential(Linear(2, 3, rng=0), Linear(3, 1, rng=0))
    >>> net(np.ones((5, 2), np.float32)).shape
    (5, 1)
    """

    def __init__(self, *modules: Module, dtype: DTypeLike = None, rng: RNGLike = None) -> None:
        if dtype is None:
            dtype = modules[0].dtype if modules and isinstance(modules[0], Module) else np.float32
        super().__init__(modules, dtype=dtype, rng=rng)
        for i, m in enumerate(self._items):
            require_same_dtype(m.dtype, self.dtype, f"modules[{i}]")

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Run ``x`` through every module in order."""
        self._save_cache(True)
        for m in self._items:
            x = m(x)
        return x

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """Backpropagate through the modules in reverse order; returns ``grad_x``."""
        self._pop_cache()
        g = grad_output
        for m in reversed(self._items):
            g = m.backward(g)
        return g
