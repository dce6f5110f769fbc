"""torch.nn.Linear / LayerNorm / Embedding and the transformer blocks <-> nn_core.

=========================================  =====================================
torch                                      nn_core
=========================================  =====================================
``Linear.weight [F, D]``, ``.bias [F]``    ``Linear`` ``W [D, F]`` (transposed), ``b``
``LayerNorm.weight``, ``.bias``            ``LayerNorm`` ``gamma``, ``beta``
``Embedding.weight [V, E]``                ``Embedding`` ``W``
``TransformerEncoderLayer``                ``TransformerEncoderLayer`` (and a decoder-only
                                           ``TransformerDecoderLayer``): ``self_attn.*``,
                                           ``linear1.*``, ``linear2.*``, ``norm1.*``, ``norm2.*``
``TransformerDecoderLayer``                ``TransformerDecoderLayer(cross_attention=True)``:
                                           also ``multihead_attn.*`` (our ``cross_attn``),
                                           ``norm3.*``
=========================================  =====================================

Values of another real dtype (e.g. float32 weights into a float64 model) are cast.
"""
from __future__ import annotations

import numpy as np

from ..layers import Embedding, LayerNorm, Linear
from ..transformer import TransformerDecoderLayer, TransformerEncoderLayer
from . import _lookup, check_keys, register


def _array(module, state_dict, key, shape):
    arr = np.asarray(state_dict[key])
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"state_dict[{key!r}] must be real-valued, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"state_dict[{key!r}] must have shape {tuple(shape)}, got {arr.shape}")
    return arr.astype(module.dtype, copy=False)


def _simple(mapping):
    """Converters for a module whose torch keys map one to one onto its params:
    ``mapping(module) -> {torch_key: (param_name, transposed)}``."""

    def load(module, state_dict):
        keys = mapping(module)
        check_keys(state_dict, keys, type(module).__name__)
        for key, (name, transposed) in keys.items():
            p = module.params[name]
            shape = p.shape[::-1] if transposed else p.shape
            arr = _array(module, state_dict, key, shape)
            p[...] = arr.T if transposed else arr

    def export(module):
        return {key: np.ascontiguousarray(module.params[name].T if transposed
                                          else module.params[name])
                for key, (name, transposed) in mapping(module).items()}

    return load, export


def _linear_keys(m):
    return {"weight": ("W", True), **({"bias": ("b", False)} if m.use_bias else {})}


def _norm_keys(m):
    return {"weight": ("gamma", False), "bias": ("beta", False)} if m.elementwise_affine else {}


register(Linear, *_simple(_linear_keys))
register(LayerNorm, *_simple(_norm_keys))
register(Embedding, *_simple(lambda m: {"weight": ("W", False)}))


def _children(module):
    """torch prefix -> our child module, for a transformer block."""
    out = {"self_attn": module.self_attn, "linear1": module.linear1,
           "linear2": module.linear2, "norm1": module.norm1, "norm2": module.norm2}
    if getattr(module, "cross_attention", False):
        out["multihead_attn"] = module.cross_attn
        out["norm3"] = module.norm3
    return out


def _load_block(module, state_dict):
    children = _children(module)
    parts = {prefix: {} for prefix in children}
    unexpected = []
    for key, value in state_dict.items():
        prefix, _, rest = key.partition(".")
        if prefix in parts and rest:
            parts[prefix][rest] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"{type(module).__name__} state_dict keys do not match: unexpected "
                         f"keys {sorted(unexpected)}")
    for prefix, child in children.items():
        try:
            _lookup(child)[1](child, parts[prefix])
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{prefix}: {exc}") from exc


def _export_block(module):
    out = {}
    for prefix, child in _children(module).items():
        for key, value in _lookup(child)[2](child).items():
            out[f"{prefix}.{key}"] = value
    return out


register(TransformerEncoderLayer, _load_block, _export_block)
register(TransformerDecoderLayer, _load_block, _export_block)
