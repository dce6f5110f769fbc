"""torch.nn.MultiheadAttention <-> nn_core attention state dicts.

``torch.nn.MultiheadAttention(d, h, batch_first=True)`` computes ``x @ W^T`` with

====================  ==========  ===========================================
torch key             shape       nn_core
====================  ==========  ===========================================
``in_proj_weight``    ``[3d, d]`` ``concat(W_q^T, W_k^T, W_v^T)``
``in_proj_bias``      ``[3d]``    ``concat(b_q, b_k, b_v)`` (when ``bias``)
``out_proj.weight``   ``[d, d]``  ``W_o^T``
``out_proj.bias``     ``[d]``     ``b_o`` (when ``bias``)
====================  ==========  ===========================================

Cross attention with ``kv_dim != d_model`` maps to torch's
``MultiheadAttention(d, h, kdim=kv_dim, vdim=kv_dim)``, which stores
``q_proj_weight [d, d]``, ``k_proj_weight [d, kv_dim]``, ``v_proj_weight`` instead of
``in_proj_weight``.  Values are cast to the module's dtype; torch is never imported
here (tensors are converted by :func:`nn_core.interop.to_numpy`).
"""
from __future__ import annotations

import numpy as np

from ..attention.cross_attention import CachedCrossAttention, CrossAttention
from ..attention.multihead import MultiHeadAttention
from . import check_keys, register


def _separate(module):
    return module.kv_dim != module.d_model


def _expected(module):
    d, kv = module.d_model, module.kv_dim
    if _separate(module):
        shapes = {"q_proj_weight": (d, d), "k_proj_weight": (d, kv), "v_proj_weight": (d, kv)}
    else:
        shapes = {"in_proj_weight": (3 * d, d)}
    shapes["out_proj.weight"] = (d, d)
    if module.bias:
        shapes["in_proj_bias"] = (3 * d,)
        shapes["out_proj.bias"] = (d,)
    return shapes


def _load(module, state_dict):
    shapes = _expected(module)
    check_keys(state_dict, shapes, f"{type(module).__name__}(d_model={module.d_model}, "
                                   f"num_heads={module.num_heads}, bias={module.bias})")
    arrays = {}
    for key, shape in shapes.items():
        arr = np.asarray(state_dict[key])
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"state_dict[{key!r}] must be real-valued, got dtype {arr.dtype}")
        if arr.shape != shape:
            raise ValueError(f"state_dict[{key!r}] must have shape {shape}, got {arr.shape}")
        arrays[key] = arr.astype(module.dtype, copy=False)
    d = module.d_model
    p = module.params
    if _separate(module):
        p["W_q"][...] = arrays["q_proj_weight"].T
        p["W_k"][...] = arrays["k_proj_weight"].T
        p["W_v"][...] = arrays["v_proj_weight"].T
    else:
        w = arrays["in_proj_weight"]
        p["W_q"][...] = w[:d].T
        p["W_k"][...] = w[d:2 * d].T
        p["W_v"][...] = w[2 * d:].T
    p["W_o"][...] = arrays["out_proj.weight"].T
    if module.bias:
        b = arrays["in_proj_bias"]
        p["b_q"][...] = b[:d]
        p["b_k"][...] = b[d:2 * d]
        p["b_v"][...] = b[2 * d:]
        p["b_o"][...] = arrays["out_proj.bias"]


def _export(module):
    p = module.params
    out = {}
    if _separate(module):
        out["q_proj_weight"] = np.ascontiguousarray(p["W_q"].T)
        out["k_proj_weight"] = np.ascontiguousarray(p["W_k"].T)
        out["v_proj_weight"] = np.ascontiguousarray(p["W_v"].T)
    else:
        out["in_proj_weight"] = np.concatenate([p["W_q"].T, p["W_k"].T, p["W_v"].T], axis=0)
    if module.bias:
        out["in_proj_bias"] = np.concatenate([p["b_q"], p["b_k"], p["b_v"]])
    out["out_proj.weight"] = np.ascontiguousarray(p["W_o"].T)
    if module.bias:
        out["out_proj.bias"] = p["b_o"].copy()
    return out


for _cls in (MultiHeadAttention, CrossAttention, CachedCrossAttention):
    register(_cls, _load, _export)
