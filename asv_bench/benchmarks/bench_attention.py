"""Masked softmax and scaled dot-product attention (forward, forward+backward, memory).

Shapes are ``B x h x L x d_k`` (per-head tensors); the softmax runs on the matching
``[B, h, L, L]`` score tensor.  See ``common.py`` for seeding and thread pinning.
"""
import numpy as np

from .common import DTYPES, randn, require

SHAPES = ["8x8x128x32", "4x8x512x64"]


def _dims(shape):
    return tuple(int(s) for s in shape.split("x"))


class SoftmaxSuite:
    """``nn_core.attention.softmax`` over the scores of the SDPA shapes."""

    params = (DTYPES, SHAPES, ["none", "causal", "padding"])
    param_names = ["dtype", "shape", "mask"]

    def setup(self, dtype, shape, mask):
        (self.softmax,) = require("nn_core.attention", "softmax")
        B, h, L, _ = _dims(shape)
        self.x = randn((B, h, L, L), dtype)
        if mask == "causal":
            self.mask = np.tril(np.ones((L, L), dtype=bool))
        elif mask == "padding":
            lengths = np.linspace(L // 2, L, B).astype(int)
            self.mask = (np.arange(L) < lengths[:, None])[:, None, None, :]   # [B,1,1,L]
        else:
            self.mask = None
        self.grad = randn((B, h, L, L), dtype)
        try:
            from nn_core.attention._sdpa_kernels import softmax_backward
        except ImportError:
            softmax_backward = None
        self.backward = softmax_backward

    def time_forward(self, dtype, shape, mask):
        self.softmax(self.x, mask=self.mask)

    def time_forward_backward(self, dtype, shape, mask):
        if self.backward is None:
            raise NotImplementedError("no softmax backward at this commit")
        y = self.softmax(self.x, mask=self.mask)
        self.backward(y, self.grad, 1.0)

    def peakmem_forward(self, dtype, shape, mask):
        self.softmax(self.x, mask=self.mask)


class SDPASuite:
    """``ScaledDotProductAttention`` on ``[B, h, L, d_k]`` inputs, causal or not."""

    params = (DTYPES, SHAPES, [False, True])
    param_names = ["dtype", "shape", "causal"]

    def setup(self, dtype, shape, causal):
        (SDPA,) = require("nn_core.attention", "ScaledDotProductAttention")
        dims = _dims(shape)
        self.sdpa = SDPA(dtype=np.dtype(dtype).type)
        self.q, self.k, self.v, self.g = (randn(dims, dtype) for _ in range(4))
        self.sdpa.forward(self.q, self.k, self.v, is_causal=causal)   # warm buffers

    def time_forward(self, dtype, shape, causal):
        self.sdpa.forward(self.q, self.k, self.v, is_causal=causal)

    def time_forward_backward(self, dtype, shape, causal):
        self.sdpa.forward(self.q, self.k, self.v, is_causal=causal)
        self.sdpa.backward(self.g)

    def peakmem_forward_backward(self, dtype, shape, causal):
        self.sdpa.forward(self.q, self.k, self.v, is_causal=causal)
        self.sdpa.backward(self.g)


class SDPAGroupedSuite:
    """Grouped-query layout: query ``[B, g, r, L, d]``, key/value ``[B, g, 1, L, d]``
    (broadcast over the ``r`` query heads of a group, never repeated)."""

    params = (DTYPES, [False, True])
    param_names = ["dtype", "causal"]

    def setup(self, dtype, causal):
        (SDPA,) = require("nn_core.attention", "ScaledDotProductAttention")
        B, g, r, L, d = 4, 2, 4, 512, 64
        self.sdpa = SDPA(dtype=np.dtype(dtype).type)
        self.q = randn((B, g, r, L, d), dtype)
        self.k, self.v = randn((B, g, 1, L, d), dtype), randn((B, g, 1, L, d), dtype)
        self.g = randn((B, g, r, L, d), dtype)

    def time_forward_backward(self, dtype, causal):
        self.sdpa.forward(self.q, self.k, self.v, is_causal=causal)
        self.sdpa.backward(self.g)


class SDPAWindowSuite:
    """Windowed attention (``window=w``, B=1, h=8, d=64, float32) at two lengths: time
    and memory should grow linearly in L; ``dense`` is the same band as a dense mask
    (every tile computed), at the shorter length only.  A commit without ``window=``
    skips the suite."""

    params = ([4096, 16384], [128, 512], ["window", "dense"])
    param_names = ["L", "w", "form"]
    timeout = 300

    def setup(self, L, w, form):
        SDPA, creator = require("nn_core.attention", "ScaledDotProductAttention",
                                "create_sliding_window_mask")
        if form == "dense" and L > 4096:
            raise NotImplementedError("dense band mask: shorter length only")
        self.sdpa = SDPA(dtype=np.float32)
        self.q, self.k, self.v, self.g = (randn((1, 8, L, 64), "float32") for _ in range(4))
        self.kw = {"window": w} if form == "window" else {"mask": creator(L, w)}
        try:
            self.sdpa.forward(self.q[..., :64, :], self.k[..., :64, :], self.v[..., :64, :],
                              **({"window": w} if form == "window" else {}))
        except TypeError:
            raise NotImplementedError("no window= at this commit")

    def time_forward_backward(self, L, w, form):
        self.sdpa.forward(self.q, self.k, self.v, **self.kw)
        self.sdpa.backward(self.g)

    def peakmem_forward_backward(self, L, w, form):
        self.sdpa.forward(self.q, self.k, self.v, **self.kw)
        self.sdpa.backward(self.g)
