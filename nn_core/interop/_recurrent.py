"""torch.nn.RNN / LSTM / GRU state dicts <-> nn_core recurrent cells and StackedLSTM.

Key names are torch's: ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}`` (plus the ``_reverse`` suffix for a backward direction).  The
parameter layouts are identical (``W_ih [G*H, D]``, gate order LSTM ``(i, f, g, o)``,
GRU ``(r, z, n)``), so conversion is a checked copy.  A torch GRU computes
``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``, which is ``GRUCell(reset_after=True)``;
loading it into (or exporting from) ``reset_after=False`` raises ``ValueError``.

``load_cell(cell, sd, layer, suffix)`` / ``export_cell(cell, layer, suffix)`` are the
building blocks for the multi-layer and bidirectional layers.
"""
from __future__ import annotations

import numpy as np

from ..recurrent import GRUCell, LSTMCell, RNNCell, StackedLSTM
from . import check_keys, register

__all__ = ["load_cell", "export_cell", "cell_keys"]

_NAMES = (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))


def _check_gru(cell):
    if isinstance(cell, GRUCell) and not cell.reset_after:
        raise ValueError(
            "torch.nn.GRU applies the reset gate after the recurrent product "
            "(n = tanh(W_in x + b_in + r*(W_hn h + b_hn))); a GRUCell with "
            "reset_after=False computes a different function. Use "
            "GRUCell(..., reset_after=True) for torch GRU weights.")


def cell_keys(cell, layer=0, suffix=""):
    """``{nn_core name: torch key}`` for one cell as layer ``layer``."""
    return {ours: f"{theirs}_l{layer}{suffix}" for ours, theirs in _NAMES
            if ours in cell.params}


def load_cell(cell, state_dict, layer=0, suffix=""):
    """Copy torch layer ``layer`` (direction ``suffix``) into ``cell`` after checks."""
    _check_gru(cell)
    keys = cell_keys(cell, layer, suffix)
    staged = {}
    for ours, key in keys.items():
        value = np.asarray(state_dict[key])
        target = cell.params[ours]
        if value.shape != target.shape:
            raise ValueError(f"state_dict[{key!r}] must have shape {target.shape} "
                             f"for {type(cell).__name__}, got {value.shape}")
        staged[ours] = value
    for ours, value in staged.items():
        cell.params[ours][...] = value.astype(cell.dtype, copy=False)


def export_cell(cell, layer=0, suffix=""):
    _check_gru(cell)
    return {key: cell.params[ours].copy() for ours, key in cell_keys(cell, layer, suffix).items()}


def _load_single(cell, state_dict):
    _check_gru(cell)
    check_keys(state_dict, cell_keys(cell).values(), type(cell).__name__)
    load_cell(cell, state_dict)


def _load_stacked(net, state_dict):
    expected = [k for i, layer in enumerate(net.layers) for k in cell_keys(layer, i).values()]
    check_keys(state_dict, expected, f"StackedLSTM(num_layers={net.num_layers})")
    for i, layer in enumerate(net.layers):
        load_cell(layer, state_dict, i)


def _export_stacked(net):
    out = {}
    for i, layer in enumerate(net.layers):
        out.update(export_cell(layer, i))
    return out


for _cls in (RNNCell, LSTMCell, GRUCell):
    register(_cls, _load_single, export_cell)
register(StackedLSTM, _load_stacked, _export_stacked)
