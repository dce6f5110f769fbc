"""The checkpoint format: constants, limits, the class registry, and the encoding
and checking of the JSON metadata."""
from __future__ import annotations

import math
import re

import numpy as np

from ..module import Module, ModuleList


FORMAT = "nn_core.checkpoint"
VERSION = 1
_META_KEY = "__nn_core_checkpoint__"
_META_MEMBER = _META_KEY + ".npy"
_PARAM_PREFIX = "param/"
_TRAIN_PREFIX = "train/"

#: longest JSON document (characters) that :func:`load` parses
MAX_META_CHARS = 4 << 20
#: most JSON lists and objects in that document
MAX_META_CONTAINERS = 100_000
#: most members of the zip archive
MAX_MEMBERS = 65_536
#: largest zip central directory (bytes)
MAX_DIRECTORY_BYTES = 4 << 20
#: deepest nesting of constructor arguments or training state
MAX_DEPTH = 64
_MAX_NDIM = 32
_MAX_HEADER = 10_000
_CHUNK = 1 << 20
# argument names that multiply sub-modules; each is at most the declared parameter count
_COUNT_ARGS = ("num_layers",)
# dtypes a file may name (for modules: float32/float64 only)
_MODULE_DTYPES = ("float32", "float64")
_ARRAY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                 "uint64", "float16", "float32", "float64")


class CheckpointError(ValueError):
    """The file is not a readable nn_core checkpoint (corrupted, foreign, oversized,
    tampered, or its contents do not match the module it describes)."""


# ------------------------------------------------------------------ registry
def _class_path(obj_or_cls) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def registered_classes() -> dict:
    """The classes :func:`load` may rebuild, by the class path a file names.

    The public :class:`~nn_core.Module` classes (``__all__``) of :mod:`nn_core.layers`,
    :mod:`nn_core.losses`, :mod:`nn_core.attention`, :mod:`nn_core.recurrent`,
    :mod:`nn_core.transformer`, :mod:`nn_core.models` and :mod:`nn_core.pretrained`, and :class:`~nn_core.ModuleList`, each under the path
    :func:`save` records (``"nn_core.layers:Linear"``) and its public package path
    (``"nn_core.attention:MultiHeadAttention"``).

    Returns
    -------
    dict[str, type]
        A new dict on every call.
    """
    from .. import attention, layers, losses, models, pretrained, recurrent, transformer

    reg = {}
    for pkg in (layers, losses, attention, recurrent, transformer, models, pretrained):
        for name in getattr(pkg, "__all__", ()):
            obj = getattr(pkg, name, None)
            if isinstance(obj, type) and issubclass(obj, Module) and obj is not Module:
                reg[_class_path(obj)] = obj
                reg[f"{pkg.__name__}:{name}"] = obj
    reg[_class_path(ModuleList)] = ModuleList
    reg["nn_core:ModuleList"] = ModuleList
    return reg


# ------------------------------------------------------------------ encoding
def _encode(value, where, modules=True):
    """JSON-able form of a constructor argument or ``extra`` value (TypeError naming
    ``where`` otherwise).  ``modules=False`` refuses Modules (in ``extra``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(value, Module):
        if not modules:
            raise TypeError(f"cannot save {where}: it is a Module; save modules with "
                            "save() and keep only plain data in extra")
        return {"__module__": _describe(value)}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        name = np.dtype(value).name
        if name not in _ARRAY_DTYPES:
            raise TypeError(f"cannot save {where}: dtype {name} is not a real numeric dtype")
        return {"__dtype__": name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]", modules) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]", modules) for i, v in enumerate(value)]
    if isinstance(value, dict):
        _check_keys(value, where)
        return {k: _encode(v, f"{where}[{k!r}]", modules) for k, v in value.items()}
    if (isinstance(value, np.ndarray) and value.size <= 4096
            and value.dtype.name in _ARRAY_DTYPES):
        return {"__array__": value.tolist(), "dtype": value.dtype.name}
    raise TypeError(
        f"cannot save {where} of type {type(value).__name__}: checkpoints store None, "
        "bool, int, float, str, list, tuple, dict, NumPy dtypes, small arrays and Modules"
    )


def _check_keys(d, where):
    if not all(isinstance(k, str) for k in d):
        raise TypeError(f"cannot save {where}: dict keys must be str")
    if any(k.startswith("__") and k.endswith("__") for k in d):
        raise TypeError(f"cannot save {where}: dunder dict keys are reserved")


def _describe(module: Module) -> dict:
    args, kwargs = getattr(module, "_init_args", ((), {}))
    name = type(module).__name__
    return {
        "class": _class_path(module),
        "args": [_encode(a, f"constructor argument {i} of {name}") for i, a in enumerate(args)],
        "kwargs": {k: _encode(v, f"constructor argument {k!r} of {name}")
                   for k, v in kwargs.items() if k != "rng"},
        "dtype": np.dtype(module.dtype).name,
    }


def _pack(value, arrays, where, depth=0):
    """JSON-able form of training state; arrays become ``train/<k>`` members."""
    if depth > MAX_DEPTH:
        raise TypeError(f"cannot save {where}: nested deeper than {MAX_DEPTH}")
    if isinstance(value, np.ndarray):
        if value.dtype.name not in _ARRAY_DTYPES or value.ndim > _MAX_NDIM:
            raise TypeError(f"cannot save {where}: arrays of dtype {value.dtype} are not "
                            "stored (real numeric dtypes only)")
        name = f"{_TRAIN_PREFIX}{len(arrays)}"
        arrays[name] = np.ascontiguousarray(value)
        return {"__member__": name, "shape": list(value.shape), "dtype": value.dtype.name}
    if isinstance(value, tuple):
        return {"__tuple__": [_pack(v, arrays, f"{where}[{i}]", depth + 1)
                              for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_pack(v, arrays, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        _check_keys(value, where)
        return {k: _pack(v, arrays, f"{where}[{k!r}]", depth + 1) for k, v in value.items()}
    return _encode(value, where, modules=False)


# ------------------------------------------------------------------ decoding
def _fail(where, what):
    raise CheckpointError(f"{where}: {what}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _decode(value, where, depth, build=None):
    """Python value of an encoded argument / extra / training-state value.

    ``build(desc, depth)`` rebuilds ``{"__module__": desc}`` (constructor arguments
    only); without it such an entry is returned as its description."""
    if depth > MAX_DEPTH:
        _fail(where, f"nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, where, depth + 1, build) for v in value]
    if not isinstance(value, dict):  # pragma: no cover - json yields nothing else
        _fail(where, f"unexpected {type(value).__name__}")
    tags = [k for k in value if k.startswith("__") and k.endswith("__")]
    if not tags:
        return {k: _decode(v, where, depth + 1, build) for k, v in value.items()}
    tag = tags[0]
    if len(tags) > 1 or set(value) - {tag, "dtype", "shape"}:
        _fail(where, f"malformed entry with keys {sorted(value)[:5]}")
    body = value[tag]
    if tag == "__module__":
        if set(value) != {tag}:
            _fail(where, "malformed module entry")
        return build(body, depth + 1) if build is not None else value
    if tag == "__dtype__" and set(value) == {tag}:
        if body not in _ARRAY_DTYPES:
            _fail(where, f"dtype {body!r:.40} is not one of {', '.join(_ARRAY_DTYPES)}")
        return np.dtype(body).type
    if tag == "__tuple__" and set(value) == {tag}:
        if not isinstance(body, list):
            _fail(where, "a tuple entry must hold a list")
        return tuple(_decode(v, where, depth + 1, build) for v in body)
    if tag == "__float__" and set(value) == {tag}:
        if not isinstance(body, str) or body.lower() not in ("nan", "inf", "-inf"):
            _fail(where, f"a non-finite float entry must be 'nan', 'inf' or '-inf', got "
                         f"{body!r:.40}")
        return float(body)
    if tag == "__array__" and set(value) == {tag, "dtype"}:
        if value["dtype"] not in _ARRAY_DTYPES:
            _fail(where, f"array dtype {value['dtype']!r:.40} is not a real numeric dtype")
        try:
            arr = np.array(body, dtype=value["dtype"])
        except (TypeError, ValueError, OverflowError) as exc:
            _fail(where, f"malformed array entry: {exc}")
        if arr.size > 4096 or arr.ndim > _MAX_NDIM:
            _fail(where, "inline arrays hold at most 4096 elements")
        return arr
    _fail(where, f"unknown entry {tag!r:.40}")


def _check_shape(shape, where):
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(_is_int(n) and n >= 0 for n in shape)):
        _fail(where, f"a shape must be a list of at most {_MAX_NDIM} integers >= 0, "
                     f"got {shape!r:.80}")
    return tuple(shape)


def _check_desc(desc, where):
    """A module description: dict with ``class``, ``args``, ``kwargs`` and ``dtype``."""
    if not isinstance(desc, dict):
        _fail(where, f"the module description must be an object, got {type(desc).__name__}")
    for key, kind in (("class", str), ("args", list), ("kwargs", dict), ("dtype", str)):
        if not isinstance(desc.get(key), kind):
            _fail(where, f"the module description needs {key!r} as a {kind.__name__}")
    if desc["dtype"] not in _MODULE_DTYPES:
        _fail(where, f"module dtype must be float32 or float64, got {desc['dtype']!r:.40}")


def _check_meta(meta, where):
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(where, f"unknown checkpoint format {str(meta)[:80]!r}")
    version = meta.get("version")
    if not _is_int(version) or version < 1:
        _fail(where, f"invalid checkpoint version {version!r:.40}")
    if version > VERSION:
        _fail(where, f"checkpoint version {version} is newer than this nn_core supports "
                     f"({VERSION}); upgrade nn_core")
    _check_desc(meta.get("module"), where)
    params = meta.get("params")
    if not isinstance(params, dict):
        _fail(where, "'params' must map parameter names to shapes")
    for name, shape in params.items():
        if not name or len(name) > 1024 or "\x00" in name:
            _fail(where, f"invalid parameter name {name!r:.60}")
        _check_shape(shape, f"{where}: shape of parameter {name!r}")
    if meta.get("training") is not None and not isinstance(meta["training"], dict):
        _fail(where, "'training' must be an object")


def _training_members(tree, where):
    """``{member: (shape, dtype)}`` of the array references in the training state."""
    out = {}
    stack = [(tree, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            _fail(where, f"training state nested deeper than {MAX_DEPTH}")
        if isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, dict):
            if "__member__" in value:
                name = value["__member__"]
                if (set(value) != {"__member__", "shape", "dtype"} or not isinstance(name, str)
                        or not re.fullmatch(re.escape(_TRAIN_PREFIX) + r"[0-9]{1,9}", name)):
                    _fail(where, f"malformed array reference {str(value)[:80]!r}")
                if value["dtype"] not in _ARRAY_DTYPES:
                    _fail(where, f"array {name} has dtype {value['dtype']!r:.40}, not a real "
                                 "numeric dtype")
                if name + ".npy" in out:
                    _fail(where, f"array {name} is referenced twice")
                shape = _check_shape(value["shape"], f"{where}: shape of {name}")
                out[name + ".npy"] = (shape, np.dtype(value["dtype"]))
            else:
                stack.extend((v, depth + 1) for v in value.values())
    return out
