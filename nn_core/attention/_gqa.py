"""The grouped-query attention core shared by every multi-head module.

``MultiHeadAttention`` (``g = h``), ``MultiQueryAttention`` (``g = 1``),
``GroupedQueryAttention`` (any ``g`` dividing ``h``), ``CrossAttention``,
``CachedCrossAttention`` and ``MultimodalCrossAttention`` are thin front ends over
:class:`_GQACore`; this file holds the projections, the head layouts, the
attention call, the KV cache and the backward pass once.

Shape legend
------------
``B`` batch, ``L`` query length, ``S`` key/value length, ``d_model`` model width,
``h`` query heads, ``g`` K/V groups (heads), ``r = h // g`` query heads per group,
``d_k = d_model // h`` head width, ``N = B * L`` rows, ``N_s = B * S``.

Equations (Vaswani et al., 2017; Shazeer, 2019; Ainslie et al., 2023)
----------------------------------------------------------------------
Forward, with ``X_q [N, D_q]`` and ``X_kv [N_s, D_kv]`` the rows of the inputs::

    Q = X_q W_q + b_q          [N, h*d_k]     head i = columns i*d_k:(i+1)*d_k
    K = X_kv W_k + b_k         [N_s, g*d_k]   group j likewise
    V = X_kv W_v + b_v         [N_s, g*d_k]
    O_i = SDPA(Q_i, K_{i // r}, V_{i // r}, mask)           (per batch entry)
    A = [O_0, ..., O_{h-1}]    [N, h*d_k]
    Y = A W_o + b_o            [N, d_model]

Backward, given ``dY``::

    dW_o += A^T dY ;  db_o += sum_rows dY ;  dA = dY W_o^T
    (dQ_i, dK_i, dV_i) = SDPA backward of head i
    dK_j = sum_{i : i // r = j} dK_i ;  dV_j likewise     (group sums)
    dW_k += X_kv^T dK ;  db_k += sum_rows dK ;  dX_kv = dK W_k^T + dV W_v^T
    dW_q += X_q^T dQ ;   db_q += sum_rows dQ ;  dX_q = dQ W_q^T

Implementation notes
--------------------
* The projections are 2-D GEMMs over all ``B * L`` rows.  Projections that read the
  same input are fused into one GEMM against the concatenated weights
  (self-attention: ``X [W_q | W_k | W_v]``; cross attention: ``C [W_k | W_v]``), and
  their weight gradients are one GEMM ``X^T [dQ | dK | dV]``.
* Heads are strided *views* of the projection output (no transposing copy):
  ``Q.reshape(B, L, g, r, d_k).transpose(0, 2, 3, 1, 4)`` is ``[B, g, r, L, d_k]``
  and ``K`` is viewed as ``[B, g, 1, S, d_k]``, so the ``r`` query heads of a group
  broadcast against one K/V head: the repeated K/V is never materialised and the
  SDPA backward sums ``dK``/``dV`` over the broadcast axis (the group).
* A single query position (``L = 1``, i.e. decoding) stacks the ``r`` query heads of
  a group as the rows of one ``[r, d_k]`` matrix: one GEMM per group over the cached
  keys instead of ``r`` matrix-vector products.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from .. import _parallel
from .._validation import (
    as_float_array,
    as_mask,
    broadcasts_to,
    check_grad_output,
    check_heads,
    check_positive_int,
    check_probability,
    check_shape,
)
from .._linalg import matmul
from ..module import Module
from .kv_cache import KVCache
from .scaled_dot_product import ScaledDotProductAttention, softmax

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike

__all__ = ["AttentionState"]


@dataclass
class AttentionState:
    """What :meth:`_GQACore._attn_backward` needs from one forward."""

    rows: list              # [(x2 [n, D], fused weight or None, projection names)]
    A: np.ndarray           # [B*L, h*d_k] concatenated head outputs
    B: int
    L: int
    S: int
    layout: str             # "fold", "4d" or "5d" (see _GQACore._layout)
    fixed_kv: tuple | None  # CachedCrossAttention's (k_heads, v_heads, (x2, W))


@dataclass
class _SelfCache:
    state: AttentionState
    order: tuple            # where each of (query, key, value) came from in rows


# ---------------------------------------------------------------------------- core
class _GQACore(Module):
    """Projections + grouped-query attention + output projection (private).

    Subclasses call :meth:`_setup` from their constructor and build their public
    ``forward``/``backward`` on :meth:`_attn_forward` / :meth:`_attn_backward`.
    """

    def _setup(self, d_model, num_heads, num_kv_groups, bias, dropout, q_dim=None,
               kv_dim=None):
        d_model = check_positive_int(d_model, "d_model")
        num_heads = check_positive_int(num_heads, "num_heads")
        num_kv_groups = check_heads(d_model, num_heads, num_kv_groups)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_kv_groups = num_kv_groups
        self.head_dim = d_model // num_heads
        self.bias = bool(bias)
        self.q_dim = d_model if q_dim is None else check_positive_int(q_dim, "q_dim")
        self.kv_dim = d_model if kv_dim is None else check_positive_int(kv_dim, "kv_dim")
        self.attention = ScaledDotProductAttention(check_probability(dropout, "dropout"),
                                                   dtype=self.dtype, rng=self.rng)
        kv_width = num_kv_groups * self.head_dim

        # Xavier/Glorot uniform for the input projections, PyTorch's nn.Linear default
        # (U(+-1/sqrt(fan_in))) for the output projection, zero biases — the same
        # scheme as torch.nn.MultiheadAttention.  Drawn in a fixed order from self.rng.
        def xavier(fan_in, fan_out):
            a = np.sqrt(6.0 / (fan_in + fan_out))
            return self.rng.uniform(-a, a, size=(fan_in, fan_out))

        self.add_param("W_q", xavier(self.q_dim, d_model))
        self.add_param("W_k", xavier(self.kv_dim, kv_width))
        self.add_param("W_v", xavier(self.kv_dim, kv_width))
        a = 1.0 / np.sqrt(d_model)
        self.add_param("W_o", self.rng.uniform(-a, a, size=(d_model, d_model)))
        if self.bias:
            self.add_param("b_q", np.zeros(d_model))
            self.add_param("b_k", np.zeros(kv_width))
            self.add_param("b_v", np.zeros(kv_width))
            self.add_param("b_o", np.zeros(d_model))

    @property
    def dropout(self) -> float:
        return self.attention.dropout

    # ---------------------------------------------------------- projections
    # Fusing projections means concatenating their weights (one copy of D x width
    # elements per call); worth it once the GEMM has enough rows to amortise it.
    _FUSE_MIN_ROWS = 32

    def _widths(self, names):
        return [self.d_model if n == "q" else self.num_kv_groups * self.head_dim
                for n in names]

    def _project(self, x2, names):
        """Project ``x2 [n, D]`` for every projection in ``names`` (e.g. ``"qkv"``).

        Returns ``(W, outputs by name)``: with several names and enough rows, one
        GEMM ``x2 [W_a | W_b ...] + [b_a | b_b ...]`` whose output columns are sliced
        per name, and ``W`` the concatenated weight (kept for the backward);
        otherwise one GEMM per name and ``W = None``.
        """
        p = self.params
        fuse = len(names) > 1 and x2.shape[0] >= self._FUSE_MIN_ROWS
        if not fuse:
            out = {}
            for n in names:
                y = matmul(x2, p["W_" + n])
                if self.bias:
                    y += p["b_" + n]
                out[n] = y
            return None, out
        W = np.concatenate([p["W_" + n] for n in names], axis=1)        # (D, width)
        y = matmul(x2, W)
        if self.bias:
            y += np.concatenate([p["b_" + n] for n in names])
        out, off = {}, 0
        for n, w in zip(names, self._widths(names)):
            out[n] = y[:, off:off + w]
            off += w
        return W, out

    def _project_backward(self, x2, W, names, grads, need_dx=True):
        """Accumulate dW/db of the projections ``names`` of ``x2``; return ``dX [n, D]``.

        ``grads`` maps each name to a callable ``fill(buffer_slice)`` writing that
        projection's output gradient ``[n, width]`` into the slice; ``W`` is what
        :meth:`_project` returned (fused weight or None).
        """
        widths = self._widths(names)
        dy = np.empty((x2.shape[0], sum(widths)), dtype=self.dtype)   # [dQ | dK | dV]
        offs = np.cumsum([0] + widths)
        for n, a, b in zip(names, offs[:-1], offs[1:]):
            grads[n](dy[:, a:b])
        if W is not None:                                  # fused: one GEMM each
            dW = matmul(x2, dy, trans_a=True)              # (D, width)
            dx = matmul(dy, W, trans_b=True) if need_dx else None  # (n, D)
        else:
            dW = None
            dx = None
        db = dy.sum(axis=0) if self.bias else None
        for n, a, b in zip(names, offs[:-1], offs[1:]):
            if dW is not None:
                self.grads["W_" + n] += dW[:, a:b]
            else:
                matmul(x2, dy[:, a:b], trans_a=True, out=self.grads["W_" + n], accumulate=True)
                if need_dx:
                    part = matmul(dy[:, a:b], self.params["W_" + n], trans_b=True)
                    dx = part if dx is None else dx + part
            if self.bias:
                self.grads["b_" + n] += db[a:b]
        return dx

    # ------------------------------------------------------------- layouts
    def _layout(self, L):
        """``"fold"`` (L == 1: the r heads of a group are rows), ``"4d"`` (r == 1) or ``"5d"``."""
        if L == 1:
            return "fold"
        return "4d" if self.num_heads == self.num_kv_groups else "5d"

    def _q_view(self, x2, B, L, layout):
        """A ``[N, h*d_k]`` matrix as SDPA's query-shaped view (no copy)."""
        h, g, d_k = self.num_heads, self.num_kv_groups, self.head_dim
        r = h // g
        if layout == "fold":
            return x2.reshape(B, g, r, d_k)                               # (B, g, r, d_k)
        if layout == "4d":
            return x2.reshape(B, L, h, d_k).transpose(0, 2, 1, 3)         # (B, h, L, d_k)
        return x2.reshape(B, L, g, r, d_k).transpose(0, 2, 3, 1, 4)      # (B, g, r, L, d_k)

    def _kv_heads(self, x2, B, S):
        """``[N_s, g*d_k] -> [B, g, S, d_k]`` (view)."""
        return x2.reshape(B, S, self.num_kv_groups, self.head_dim).transpose(0, 2, 1, 3)

    @staticmethod
    def _kv_sdpa(heads, layout):
        """``[B, g, S, d_k]`` heads as SDPA's key/value view for ``layout``."""
        return heads[:, :, None] if layout == "5d" else heads            # (B, g, 1, S, d_k)

    def _mask_view(self, mask, B, L, S, layout):
        """A mask broadcastable to ``[B, h, L, S]`` as a view matching ``layout``."""
        if mask is None:
            return None
        m = np.asarray(mask)
        h, g = self.num_heads, self.num_kv_groups
        r = h // g
        target = (B, h, L, S)
        if not broadcasts_to(m.shape, target):
            raise ValueError(
                f"mask must broadcast to the attention score shape [B, h, L_q, L_k] = "
                f"{target}, got shape {tuple(m.shape)}"
            )
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)                      # (mb, mh, ml, ms)
        mb, mh, ml, ms = m.shape
        if layout == "fold":
            m = m[:, :, 0]                                                # (mb, mh, ms)
            return m.reshape(mb, g, r, ms) if mh == h else m[:, :, None]  # rows = heads
        if layout == "4d":
            return m
        if mh == h:
            return m.reshape(mb, g, r, ml, ms)                           # (mb, g, r, ml, ms)
        return m[:, :, None]                                             # (mb, 1, 1, ml, ms)

    # ----------------------------------------------------- forward/backward
    def _check_input(self, x, name, width, B=None):
        arr = as_float_array(x, name, self.dtype, ndim=3)
        check_shape(arr, name, (B, None, width))
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"{name} must have at least one batch entry and one position, "
                             f"got shape {tuple(arr.shape)}")
        return arr

    def _attn_forward(self, sources, mask=None, is_causal=False, kv_cache=None,
                      fixed_kv=None, return_weights=False, window=None, global_tokens=()):
        """Attention over projected inputs.

        Parameters
        ----------
        sources : list of ``(x [B, n, D], names)``
            Validated inputs and the projections (letters of ``"qkv"``) each feeds;
            inputs feeding several projections are projected by one fused GEMM.
        fixed_kv : tuple, optional
            ``(k_heads, v_heads, state)`` precomputed ``[B, g, S, d_k]`` keys/values
            (CachedCrossAttention); then no source feeds ``"k"``/``"v"``.
        window, global_tokens : as :meth:`ScaledDotProductAttention.forward`
            With ``kv_cache`` only an int window (or the cache's own) applies, and the
            keys are cut to the ``window - 1 + L`` positions the new tokens can see.

        Returns
        -------
        (out [B, L, d_model], weights [B, h, L, S] or None, state)
            ``state`` is what :meth:`_attn_backward` needs (None after a kv_cache forward).
        """
        dt = self.dtype
        proj, rows = {}, []
        for x, names in sources:
            x2 = x.reshape(-1, x.shape[-1])
            W, outs = self._project(x2, names)
            proj.update(outs)
            rows.append((x2, W, names))
        xq = next(x for x, names in sources if "q" in names)
        B, L = xq.shape[0], xq.shape[1]
        layout = self._layout(L)
        if kv_cache is not None:
            window = _cache_window(kv_cache, window, global_tokens)
        elif window is not None and layout == "fold":
            layout = "4d" if self.num_heads == self.num_kv_groups else "5d"

        if fixed_kv is not None:
            k_heads, v_heads = fixed_kv[0], fixed_kv[1]
            S = k_heads.shape[2]
        else:
            xk = next(x for x, names in sources if "k" in names)
            S = xk.shape[1]
            k_heads = self._kv_heads(proj["k"], B, S)                     # (B, g, S, d_k)
            v_heads = self._kv_heads(proj["v"], B, S)
        if kv_cache is not None:
            # validate everything (room, mask against the total length) *before*
            # writing into the cache: a failed call must leave it untouched
            kv_cache.check_room(S)
            S = kv_cache.length + S
            as_mask(mask, "mask", dt)            # dtype check (TypeError) only
            m = self._mask_view(mask, B, L, S, layout)
            k_heads, v_heads = kv_cache.append(k_heads, v_heads)
            is_causal = True                     # bottom-right: new tokens over the cache
            if window is not None:
                # the keys the new tokens can see, and the matching mask columns
                k_heads = k_heads[:, :, -(window - 1 + L):]
                v_heads = v_heads[:, :, -(window - 1 + L):]
                if m is not None and m.shape[-1] != 1:
                    m = m[..., S - k_heads.shape[2]:]
                S = k_heads.shape[2]
                if layout == "fold":             # one query sees every kept key
                    window = None
        else:
            m = self._mask_view(mask, B, L, S, layout)
        # a single query (bottom-right aligned) sees every key: no causal part to apply
        causal = bool(is_causal) and layout != "fold"

        q = self._q_view(proj["q"], B, L, layout)
        k = self._kv_sdpa(k_heads, layout)
        v = self._kv_sdpa(v_heads, layout)
        if kv_cache is not None and layout == "fold" and not (
                self.training and self.dropout > 0.0):
            o, w = self._decode_step(q, k, v, m)
        else:
            res = self.attention.forward(q, k, v, mask=m, is_causal=causal,
                                         return_weights=return_weights, window=window,
                                         global_tokens=global_tokens)
            o, w = res if return_weights else (res, None)
        N = B * L
        if layout == "fold":
            A = o.reshape(N, self.d_model)                               # already (B, h*d_k)
        else:
            A = np.empty((N, self.d_model), dtype=dt)
            self._q_view(A, B, L, layout)[...] = o                       # combine heads
        y = matmul(A, self.params["W_o"])
        if self.bias:
            y += self.params["b_o"]
        if w is not None:
            w = w.reshape(B, self.num_heads, L, S)                       # (B, h, L, S)
        if kv_cache is not None:
            self.attention.clear_pending()
            state = None
        else:
            state = AttentionState(rows, A, B, L, S, layout, fixed_kv)
        return y.reshape(B, L, self.d_model), w, state

    def _decode_step(self, q, k, v, mask):
        """One decoding step over the cache, inference only (no backward state).

        ``q [B, g, r, d_k]`` (the ``r`` query heads of a group are rows), ``k, v``
        ``[B, g, T, d_k]`` strided views of the cache (read in place, never copied),
        ``mask`` broadcastable to ``[B, g, r, T]``.  Same numbers as the SDPA path:
        ``softmax(scale q K^T + mask) V`` with fully-masked rows 0.
        """
        scale = self.dtype.type(1.0 / np.sqrt(self.head_dim))
        # (K q^T)^T: OpenBLAS runs [T, d_k] @ [d_k, r] several times faster than
        # [r, d_k] @ [d_k, T] (transposed B) for a few rows r; the transpose back
        # copies only B*g*r*T scores.
        qs = q * scale
        s = np.matmul(k, qs.swapaxes(-1, -2))                            # (B, g, T, r)
        s = np.ascontiguousarray(s.swapaxes(-1, -2))                     # (B, g, r, T)
        p = softmax(s, axis=-1, mask=mask)
        return np.matmul(p, v), p                                        # (B, g, r, d_k)

    def _check_grad_output(self, state, grad_output):
        """``grad_output`` as a ``[B, L, d_model]`` array of the layer dtype, or an error."""
        return check_grad_output(grad_output, (state.B, state.L, self.d_model), self.dtype)

    def _attn_backward(self, state, g, need_fixed_dx=False):
        """Parameter gradients (accumulated) and ``dX`` per source, in source order,
        from a checked ``g [B, L, d_model]`` (:meth:`_check_grad_output`).

        When ``fixed_kv`` was used, its third entry is ``(x2_kv, W_kv)`` and the K/V
        projection gradients are accumulated too; the context gradient is returned
        as the last element.
        """
        rows, A, B, L, S = state.rows, state.A, state.B, state.L, state.S
        layout, fixed_kv = state.layout, state.fixed_kv
        g2 = g.reshape(B * L, self.d_model)
        matmul(A, g2, trans_a=True, out=self.grads["W_o"], accumulate=True)
        if self.bias:
            self.grads["b_o"] += g2.sum(axis=0)
        dA = matmul(g2, self.params["W_o"], trans_b=True)                # (N, h*d_k)
        dq, dk, dv = self.attention.backward(self._q_view(dA, B, L, layout))
        if layout == "5d":
            dk, dv = dk[:, :, 0], dv[:, :, 0]                            # (B, g, S, d_k)

        def fill_q(buf):
            _parallel.copy(self._q_view(buf, B, L, layout), dq)

        def fill_k(buf):
            _parallel.copy(self._kv_heads(buf, B, S), dk)

        def fill_v(buf):
            _parallel.copy(self._kv_heads(buf, B, S), dv)

        fills = {"q": fill_q, "k": fill_k, "v": fill_v}
        out = []
        for x2, W, names in rows:
            out.append(self._project_backward(x2, W, names, fills))
        if fixed_kv is not None:
            x2_kv, W_kv = fixed_kv[2]
            out.append(self._project_backward(x2_kv, W_kv, "kv", fills, need_fixed_dx))
        return out

    # ------------------------------------------------------------ KV cache
    def new_kv_cache(self, batch_size, max_len, window=None) -> KVCache:
        """A preallocated, empty :class:`KVCache` for ``batch_size`` sequences of up to
        ``max_len`` positions (``nbytes == get_kv_cache_size(batch_size, max_len,
        window=window)``).  ``window=w``: attention over the cache is the causal band
        of width ``w`` and the cache is a ring holding the last ``w`` positions."""
        return KVCache(batch_size, max_len, self.num_kv_groups, self.head_dim, self.dtype,
                       window=window)

    def get_kv_cache_size(self, batch_size, seq_len, num_layers=1, window=None) -> int:
        """Bytes of the K and V cache: ``2 * num_layers * B * T * g * d_k * itemsize``
        with ``T = seq_len``, or ``min(seq_len, window)`` for a ring cache.

        Parameters
        ----------
        batch_size : int (``>= 1``)
        seq_len : int (``>= 0``) cached positions
        num_layers : int (``>= 1``) identical layers
        window : int (``>= 1``), optional
            The ring cache's band width (``new_kv_cache(..., window=w)``).
        """
        return self.get_kv_cache_stats(batch_size, seq_len, num_layers, window)["bytes"]

    def get_kv_cache_stats(self, batch_size, seq_len, num_layers=1, window=None) -> dict:
        """K/V cache accounting: the bytes of K and V against multi-head attention's.

        Returns
        -------
        dict
            ``num_kv_heads`` (``g``, the K/V groups), ``num_heads``, ``head_dim``, ``elements`` (K+V
            elements), ``bytes`` (``elements * itemsize``), ``mha_bytes`` (the same
            cache with ``num_heads`` K/V heads), ``reduction_factor``
            (``num_heads / g``), ``positions`` (held per layer and sequence:
            ``seq_len``, or ``min(seq_len, window)``), and the arguments.
        """
        B = check_positive_int(batch_size, "batch_size")
        seq = check_positive_int(seq_len, "seq_len", minimum=0)
        n = check_positive_int(num_layers, "num_layers")
        T = seq if window is None else min(seq, check_positive_int(window, "window"))
        item = self.dtype.itemsize
        elements = 2 * n * B * T * self.num_kv_groups * self.head_dim
        mha_elements = 2 * n * B * T * self.num_heads * self.head_dim
        return {
            "num_kv_heads": self.num_kv_groups,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "batch_size": B,
            "seq_len": seq,
            "window": window,
            "positions": T,
            "num_layers": n,
            "dtype": str(self.dtype),
            "elements": elements,
            "bytes": elements * item,
            "mha_bytes": mha_elements * item,
            "reduction_factor": self.num_heads / self.num_kv_groups,
        }


def _cache_window(kv_cache, window, global_tokens):
    """The int window of a forward over ``kv_cache`` (None: none), or an error."""
    if len(np.asarray(global_tokens).reshape(-1)):
        raise ValueError("global_tokens cannot be used with a kv_cache (decoding is "
                         "causal: a global position would have to see the future)")
    if window is None:
        return kv_cache.window
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise TypeError(f"window must be an int with a kv_cache, got "
                        f"{type(window).__name__} {window!r:.40}")
    w = check_positive_int(window, "window")
    if kv_cache.window is not None and w != kv_cache.window:
        raise ValueError(f"window must equal the kv_cache's window: expected "
                         f"{kv_cache.window}, got {w}")
    return w


class _SelfAttentionBase(_GQACore):
    """Public forward/backward of MultiHeadAttention, MultiQueryAttention and
    GroupedQueryAttention (see :class:`~nn_core.attention.MultiHeadAttention`)."""

    def forward(self, query: ArrayLike, key: ArrayLike | None = None,
                value: ArrayLike | None = None, mask: ArrayLike | None = None,
                is_causal: bool = False, kv_cache: KVCache | None = None,
                return_weights: bool = False, window: int | tuple[int, int] | None = None,
                global_tokens: ArrayLike = ()) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Multi-head (grouped-query) attention.

        Parameters
        ----------
        query : array ``[B, L, d_model]``
        key : array ``[B, S, d_model]``, optional
            Defaults to ``query`` (self-attention).
        value : array ``[B, S, d_model]``, optional
            Defaults to ``key``.
        mask : bool or float array broadcastable to ``[B, h, L, S_total]``, optional
            Bool ``True`` = may attend; float masks are added to the scaled scores.
            ``S_total = S`` without a cache, ``kv_cache.length + S`` with one.
        is_causal : bool
            Bottom-right aligned causal mask (query ``i`` sees keys
            ``j <= i + S - L``), combined with ``mask`` by logical AND.
        kv_cache : KVCache, optional
            From :meth:`new_kv_cache`.  The new keys/values are appended to the cache
            and the queries attend over *every* cached position; attention is then
            always causal with bottom-right alignment (``is_causal`` is implied:
            new token ``i`` sees the ``length`` earlier positions and new tokens
            ``<= i``).  Inference only: ``backward`` afterwards raises RuntimeError.
        return_weights : bool
            Also return the per-head attention weights ``[B, h, L, S_total]``.
        window : int or (int, int), optional
            Sliding window (see :meth:`ScaledDotProductAttention.forward`), computed in
            ``O(L * w)`` time and memory.  With ``kv_cache`` it must be an int equal
            to the cache's window if the cache has one (a ring cache applies its own
            window by default); the weights then cover the ``window - 1 + L`` keys the
            new tokens can see.
        global_tokens : sequence of int
            With ``window`` and without ``kv_cache``: positions that attend to and
            are attended by every position (``create_local_attention_mask``).

        Returns
        -------
        output : ndarray ``[B, L, d_model]``
        weights : ndarray ``[B, h, L, S_total]``, only if ``return_weights``
        """
        d = self.d_model
        xq = self._check_input(query, "query", d)
        B = xq.shape[0]
        if key is None and value is None:
            sources, order = [(xq, "qkv")], (0, None, None)
        else:
            xk = xq if key is None else self._check_input(key, "key", d, B)
            if value is None:
                if key is None:   # pragma: no cover - handled above
                    raise AssertionError
                sources, order = [(xq, "q"), (xk, "kv")], (0, 1, None)
            else:
                xv = self._check_input(value, "value", d, B)
                if xv.shape[1] != xk.shape[1]:
                    raise ValueError(
                        f"value.shape[1] must equal key.shape[1] (S): expected "
                        f"{xk.shape[1]}, got {xv.shape[1]}")
                if key is None:
                    sources, order = [(xq, "qk"), (xv, "v")], (0, None, 1)
                else:
                    sources, order = [(xq, "q"), (xk, "k"), (xv, "v")], (0, 1, 2)
        if kv_cache is not None:
            self._check_cache(kv_cache, B)
        y, w, state = self._attn_forward(sources, mask, is_causal, kv_cache=kv_cache,
                                         return_weights=return_weights, window=window,
                                         global_tokens=global_tokens)
        if state is None:
            self._save_no_backward("the forward used a kv_cache (incremental decoding is "
                                   "inference only)")
        else:
            self._save_cache(_SelfCache(state, order))
        return (y, w) if return_weights else y

    def backward(
        self, grad_output: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Gradients ``(grad_query, grad_key, grad_value)``.

        When ``key``/``value`` were defaulted, their contributions are summed into the
        gradient of the array they defaulted to and their entry is ``None``.
        """
        cache = self._peek_cache()
        g = self._check_grad_output(cache.state, grad_output)   # before consuming it
        self._pop_cache()
        state = cache.state
        dxs = self._attn_backward(state, g)
        dxs = [dx.reshape(state.B, -1, x2.shape[-1]) for dx, (x2, _, _) in zip(dxs, state.rows)]
        return tuple(None if i is None else dxs[i] for i in cache.order)

    def _check_cache(self, kv_cache, B):
        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"kv_cache must be a KVCache (from new_kv_cache), got "
                            f"{type(kv_cache).__name__}")
        expected = (B, self.num_kv_groups, self.head_dim, self.dtype)
        got = (kv_cache.batch_size, kv_cache.num_kv_groups, kv_cache.head_dim, kv_cache.dtype)
        if got != expected:
            raise ValueError(
                "kv_cache does not fit this module and batch: expected (batch_size, "
                f"num_kv_groups, head_dim, dtype) = {expected}, got {got}")

