"""Helpers of the checkpoint tests: a small network, and reading and writing the
members of a checkpoint archive by hand."""
import io
import json
import os
import warnings
import zipfile

import numpy as np

import nn_core
from nn_core.layers import Dropout, Embedding, LayerNorm, Linear, Sequential

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nn_core.__file__)))
META = "__nn_core_checkpoint__"


def _net(dtype=np.float32, seed=0):
    return Sequential(Embedding(11, 6, padding_idx=0, dtype=dtype, rng=seed),
                      LayerNorm(6, eps=1e-6, dtype=dtype), Dropout(0.1, dtype=dtype),
                      Linear(6, 3, bias=False, dtype=dtype, rng=seed + 1))


def _npy(arr, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _meta_of(members):
    return json.loads(str(np.load(io.BytesIO(members[META + ".npy"]))[()]))


def _zip(path, members, method=zipfile.ZIP_STORED):
    """Write ``members`` ({name: bytes}, or a list of pairs to allow duplicates)."""
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(path, "w", method) as zf:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                # duplicate names
            for name, data in items:
                zf.writestr(name, data)
    return path


def _with_meta(members, meta):
    out = dict(members)
    out[META + ".npy"] = _npy(np.array(json.dumps(meta) if not isinstance(meta, str) else meta))
    return out
