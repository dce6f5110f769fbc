"""torch ``state_dict`` converters for the bidirectional recurrent layers.

Key mapping (``k`` = layer index, ``suffix`` = ``""`` forward, ``"_reverse"`` backward)::

    weight_ih_l{k}{suffix}  <->  [layers.{k}.]{fw|bw}.W_ih   [G*H, D_k]
    weight_hh_l{k}{suffix}  <->  [layers.{k}.]{fw|bw}.W_hh   [G*H, H]
    bias_ih_l{k}{suffix}    <->  [layers.{k}.]{fw|bw}.b_ih   [G*H]   (bias=True)
    bias_hh_l{k}{suffix}    <->  [layers.{k}.]{fw|bw}.b_hh   [G*H]   (bias=True)

* :class:`BidirectionalWrapper` (and ``BidirectionalRNNCell`` / ``BidirectionalGRU``)
  <-> a one-layer ``nn.RNN/LSTM/GRU(bidirectional=True)``;
* :class:`StackedBidirectional` <-> ``nn.RNN/LSTM/GRU(num_layers=L, bidirectional=True)``
  (layer ``k > 0`` reads ``2H`` features: ``merge_mode="concat"``, torch's only mode).

torch's GRU is the reset-after form: GRU cells must have ``reset_after=True``.  The RNN
nonlinearity is not part of a state dict: build the module with the one torch uses.
"""
from __future__ import annotations

import numpy as np

from . import check_keys, register
from ._recurrent import cell_keys      # one source of truth for torch's key names


def _check_cell(cell, where):
    from ..recurrent.gru_cell import GRUCell
    if isinstance(cell, GRUCell) and not cell.reset_after:
        raise ValueError(
            f"{where} is a GRUCell with reset_after=False; torch's nn.GRU computes "
            "n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): build the module with "
            "reset_after=True to load or export torch GRU weights")


def _pairs(module):
    """``(torch key, nn_core cell, parameter name)`` for every parameter of ``module``."""
    from ..recurrent.bidirectional import BidirectionalWrapper
    layers = [module] if isinstance(module, BidirectionalWrapper) else list(module.layers)
    out = []
    kinds = set()
    for k, layer in enumerate(layers):
        for cell, suffix, part in ((layer.fw, "", "fw"), (layer.bw, "_reverse", "bw")):
            where = f"layer {k} {part} cell" if len(layers) > 1 else f"the {part} cell"
            _check_cell(cell, where)
            kinds.add(type(cell))
            for ours, key in cell_keys(cell, k, suffix).items():
                out.append((key, cell, ours))
    if len(kinds) > 1:
        raise TypeError("both directions must use the same cell class to match a torch "
                        f"module, got {sorted(c.__name__ for c in kinds)}")
    return out


def _load(module, state_dict):
    pairs = _pairs(module)
    check_keys(state_dict, [key for key, _, _ in pairs], type(module).__name__)
    values = []
    for key, cell, name in pairs:
        arr = np.asarray(state_dict[key])
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"torch state_dict[{key!r}] must be real-valued, got dtype "
                            f"{arr.dtype}")
        target = cell.params[name]
        if arr.shape != target.shape:
            raise ValueError(f"torch state_dict[{key!r}] must have shape "
                             f"{tuple(target.shape)}, got {tuple(arr.shape)}")
        values.append((target, arr))
    for target, arr in values:       # everything checked before anything is written
        target[...] = arr.astype(target.dtype, copy=False)


def _export(module):
    return {key: cell.params[name].copy() for key, cell, name in _pairs(module)}


def _register():
    from ..recurrent.bidirectional import BidirectionalWrapper, StackedBidirectional
    register(BidirectionalWrapper, _load, _export)
    register(StackedBidirectional, _load, _export)


_register()
