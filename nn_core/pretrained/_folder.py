"""Reading a Hugging Face model folder: ``config.json`` and the weights, mapped by name
onto a :class:`~nn_core.pretrained.BertEncoder`.

Each nn_core sub-module's torch-layout state dict (``nn_core.interop``) is assembled from
the file's tensors by one table per model family; QKV projections are concatenated into
``self_attn.in_proj_weight`` as torch's ``MultiheadAttention`` stores them.  Every name
and shape is checked before any value is copied.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..interop import load_torch_state_dict, to_numpy, to_torch_state_dict
from ._model import BertEncoder
from ._optional import require

__all__ = ["ModelFolderError", "load_encoder", "read_config", "encoder_state_dict",
           "BASE_PREFIXES"]


class ModelFolderError(ValueError):
    """A model folder nn_core cannot load as it is (the message names the file, the key
    or the tensor, and what was expected)."""


#: model_type -> the prefix its task models (``BertForMaskedLM`` ...) put before the
#: encoder's tensor names
BASE_PREFIXES = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta.",
                 "distilbert": "distilbert."}

#: config ``hidden_act`` / ``activation`` -> TransformerEncoderLayer activation
_ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
         "relu": "relu"}

# torch-layout key of a TransformerEncoderLayer -> the file's names (concatenated on axis 0)
_BERT_LAYER = {
    "self_attn.in_proj_weight": tuple(f"attention.self.{p}.weight"
                                      for p in ("query", "key", "value")),
    "self_attn.in_proj_bias": tuple(f"attention.self.{p}.bias" for p in ("query", "key", "value")),
    "self_attn.out_proj.weight": ("attention.output.dense.weight",),
    "self_attn.out_proj.bias": ("attention.output.dense.bias",),
    "norm1.weight": ("attention.output.LayerNorm.weight",),
    "norm1.bias": ("attention.output.LayerNorm.bias",),
    "linear1.weight": ("intermediate.dense.weight",),
    "linear1.bias": ("intermediate.dense.bias",),
    "linear2.weight": ("output.dense.weight",),
    "linear2.bias": ("output.dense.bias",),
    "norm2.weight": ("output.LayerNorm.weight",),
    "norm2.bias": ("output.LayerNorm.bias",),
}
_DISTIL_LAYER = {
    "self_attn.in_proj_weight": tuple(f"attention.{p}_lin.weight" for p in "qkv"),
    "self_attn.in_proj_bias": tuple(f"attention.{p}_lin.bias" for p in "qkv"),
    "self_attn.out_proj.weight": ("attention.out_lin.weight",),
    "self_attn.out_proj.bias": ("attention.out_lin.bias",),
    "norm1.weight": ("sa_layer_norm.weight",),
    "norm1.bias": ("sa_layer_norm.bias",),
    "linear1.weight": ("ffn.lin1.weight",),
    "linear1.bias": ("ffn.lin1.bias",),
    "linear2.weight": ("ffn.lin2.weight",),
    "linear2.bias": ("ffn.lin2.bias",),
    "norm2.weight": ("output_layer_norm.weight",),
    "norm2.bias": ("output_layer_norm.bias",),
}
_EMBEDDINGS = {"word_embeddings": "embeddings.word_embeddings",
               "position_embeddings": "embeddings.position_embeddings",
               "token_type_embeddings": "embeddings.token_type_embeddings",
               "emb_norm": "embeddings.LayerNorm", "pooler.dense": "pooler.dense"}
#: buffers some files carry next to the parameters (not weights)
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _fail(msg):
    raise ModelFolderError(msg)


def read_json(path):
    """The JSON value of ``path`` (ModelFolderError when missing or malformed)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        _fail(f"{path}: file not found")
    except (OSError, ValueError) as exc:
        _fail(f"{path}: not readable JSON ({exc})")


def read_config(folder) -> dict:
    """``config.json`` of ``folder`` as the keyword arguments of :class:`BertEncoder`
    plus ``"model_type"`` (ModelFolderError for an unsupported model or a missing key)."""
    path = os.path.join(os.fspath(folder), "config.json")
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        _fail(f"{path}: expected a JSON object")
    mt = cfg.get("model_type")
    if mt not in BASE_PREFIXES:
        _fail(f"{path}: model_type {mt!r} is not supported (supported: "
              f"{', '.join(sorted(BASE_PREFIXES))})")

    def need(key):
        if key not in cfg:
            _fail(f"{path}: key {key!r} is missing (model_type {mt!r})")
        return cfg[key]

    if mt == "distilbert":
        names = dict(hidden_size="dim", num_layers="n_layers", num_heads="n_heads",
                     intermediate_size="hidden_dim")
        act_key, eps, types, positions = "activation", 1e-12, 0, "absolute"
    else:
        names = dict(hidden_size="hidden_size", num_layers="num_hidden_layers",
                     num_heads="num_attention_heads", intermediate_size="intermediate_size")
        act_key = "hidden_act"
        eps = need("layer_norm_eps")
        types = need("type_vocab_size")
        positions = "absolute" if mt == "bert" else "roberta"
        pet = cfg.get("position_embedding_type", "absolute")
        if pet != "absolute":
            _fail(f"{path}: position_embedding_type {pet!r} is not supported (only 'absolute')")
    act = need(act_key)
    if act not in _ACTS:
        _fail(f"{path}: {act_key} {act!r} is not supported (supported: {', '.join(_ACTS)})")
    kw = {ours: need(theirs) for ours, theirs in names.items()}
    kw.update(vocab_size=need("vocab_size"),
              max_position_embeddings=need("max_position_embeddings"),
              type_vocab_size=types, hidden_act=_ACTS[act], layer_norm_eps=float(eps),
              positions=positions, pad_token_id=cfg.get("pad_token_id") or 0,
              dropout=float(cfg.get("dropout" if mt == "distilbert" else "hidden_dropout_prob",
                                    0.1)))
    kw["model_type"] = mt
    return kw


def _read_weights(folder):
    """The folder's tensors by name, as NumPy arrays, and the file they came from."""
    folder = os.fspath(folder)
    st = os.path.join(folder, "model.safetensors")
    index = st + ".index.json"
    if os.path.exists(st) or os.path.exists(index):
        numpy_api = require("safetensors.numpy")
        if os.path.exists(st):
            return numpy_api.load_file(st), st
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        out = {}
        for shard in shards:
            out.update(numpy_api.load_file(os.path.join(folder, shard)))
        return out, index
    pt = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(pt):
        try:
            import torch
        except ImportError:
            _fail(f"{pt}: reading a PyTorch pickle needs torch; convert the folder to "
                  "model.safetensors (or install torch)")
        sd = torch.load(pt, map_location="cpu", weights_only=True)
        return {k: to_numpy(v.float() if v.dtype == torch.bfloat16 else v)
                for k, v in sd.items()}, pt
    _fail(f"{folder}: no weights (model.safetensors or pytorch_model.bin)")


def _strip(tensors, prefix, source):
    """The encoder's tensors with the task-model prefix removed (tensors of the task's
    heads, outside the prefix, are left out) and old LayerNorm names renamed."""
    if any(k.startswith(prefix) for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    out = {}
    for k, v in tensors.items():
        if k in _BUFFERS:
            continue
        if "LayerNorm" in k or "layer_norm" in k:
            k = k.replace(".gamma", ".weight").replace(".beta", ".bias")
        if k in out:
            _fail(f"{source}: tensor {k!r} appears twice")
        out[k] = v
    return out


def _plan(model, model_type):
    """nn_core child path -> {torch-layout key: file names} for every tensor ``model``
    needs."""
    layer = _DISTIL_LAYER if model_type == "distilbert" else _BERT_LAYER
    stack = "transformer.layer" if model_type == "distilbert" else "encoder.layer"
    plan = {}
    for child, theirs in _EMBEDDINGS.items():
        mod = _child(model, child)
        if mod is not None:
            plan[child] = {k: (f"{theirs}.{k}",) for k in to_torch_state_dict(mod)}
    for i in range(model.num_layers):
        plan[f"layers.{i}"] = {k: tuple(f"{stack}.{i}.{n}" for n in names)
                               for k, names in layer.items()}
    return plan


def _child(model, path):
    mod = model
    for part in path.split("."):
        mod = dict(mod.children()).get(part)
        if mod is None:
            return None
    return mod


def load_encoder(folder, dtype=np.float32) -> BertEncoder:
    """Load the encoder of a local Hugging Face model folder.

    Parameters
    ----------
    folder : str or os.PathLike
        A directory with ``config.json`` and ``model.safetensors`` (or its sharded
        ``model.safetensors.index.json``; or ``pytorch_model.bin`` when torch is
        installed).  Nothing is downloaded.
    dtype : {np.float32, np.float64}
        The model's dtype (the file's values are cast).

    Returns
    -------
    BertEncoder
        In ``eval()`` mode (call ``train()`` to fine-tune); with a pooler when the file
        has one.

    Raises
    ------
    ModelFolderError
        (a ``ValueError``) An unsupported ``model_type`` or activation, a missing
        config key, missing weights, a missing or unexpected tensor, a tensor of the
        wrong shape: one line naming it.

    Notes
    -----
    Supported ``model_type``: ``bert`` (also MiniLM and the sentence-transformers
    encoders, which are BERT), ``roberta``, ``xlm-roberta``, ``distilbert``.  Tensor
    names may carry the task model's prefix (``bert.``, ``roberta.``, ``distilbert.``):
    then only the tensors under it are read (the task heads are not part of the
    encoder).  The buffers ``embeddings.position_ids`` / ``token_type_ids`` are skipped,
    and LayerNorm ``gamma`` / ``beta`` are read as ``weight`` / ``bias``.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        _fail(f"{folder}: not a directory (load_encoder reads a local model folder)")
    cfg = read_config(folder)
    model_type = cfg.pop("model_type")
    tensors, source = _read_weights(folder)
    tensors = _strip(tensors, BASE_PREFIXES[model_type], source)
    has_pooler = model_type != "distilbert" and any(k.startswith("pooler.") for k in tensors)
    try:
        model = BertEncoder(**cfg, pooler=has_pooler, dtype=dtype, rng=0)
    except (ValueError, TypeError) as exc:
        _fail(f"{os.path.join(folder, 'config.json')}: {exc}")
    plan = _plan(model, model_type)
    wanted = {n for keys in plan.values() for names in keys.values() for n in names}
    missing = sorted(wanted - tensors.keys())
    if missing:
        _fail(f"{source}: tensor {missing[0]!r} is missing"
              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(tensors.keys() - wanted)
    if unexpected:
        _fail(f"{source}: unexpected tensor {unexpected[0]!r}"
              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for child, keys in plan.items():
        mod = _child(model, child)
        expected = to_torch_state_dict(mod)
        sd = {}
        for key, names in keys.items():
            shape = (expected[key].shape[0] // len(names),) + expected[key].shape[1:]
            for n in names:
                got = tuple(np.shape(tensors[n]))
                if got != shape:
                    _fail(f"{source}: tensor {n!r} has shape {got}, expected {shape} "
                          f"(from config.json)")
                if np.asarray(tensors[n]).dtype.kind != "f":
                    _fail(f"{source}: tensor {n!r} has dtype {np.asarray(tensors[n]).dtype}, "
                          "expected floating point")
            sd[key] = (tensors[names[0]] if len(names) == 1
                       else np.concatenate([tensors[n] for n in names], axis=0))
        load_torch_state_dict(mod, sd)
    return model.eval()


def encoder_state_dict(model: BertEncoder, model_type: str = "bert") -> dict:
    """``model``'s weights under the Hugging Face names of ``model_type`` (no prefix),
    as NumPy arrays: ``safetensors.numpy.save_file(encoder_state_dict(m), path)`` writes
    a fine-tuned model back into a folder."""
    if model_type not in BASE_PREFIXES:
        raise ValueError(f"model_type must be one of {sorted(BASE_PREFIXES)}, got {model_type!r}")
    out = {}
    for child, keys in _plan(model, model_type).items():
        sd = to_torch_state_dict(_child(model, child))
        for key, names in keys.items():
            for n, part in zip(names, np.split(sd[key], len(names), axis=0)):
                out[n] = np.ascontiguousarray(part)
    return out
