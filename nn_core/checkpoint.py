"""Save a module to one ``.npz`` file and rebuild it without the constructing code.

The file holds

* ``__nn_core_checkpoint__``: a JSON document with the format version, the module's
  class (``"package.module:QualName"``), its constructor arguments (recorded by
  :class:`~nn_core.Module` in ``_init_args``), its dtype, the parameter names and
  shapes, and an optional user ``extra`` dict (training history, task config ...);
* ``param/<name>``: one array per entry of ``module.parameters()``.

:func:`load` imports the class, calls it with the recorded arguments (``rng``
dropped: the weights come from the file) and loads the parameters with
:meth:`~nn_core.Module.load_state_dict`.  Constructor arguments may be ``None``,
bools, numbers, strings, lists/tuples/dicts of those, NumPy dtypes, or other
modules (rebuilt recursively, e.g. the children of :class:`~nn_core.layers.Sequential`).

Writes are atomic: the archive is written to a temporary file in the target
directory, flushed and fsync'ed, then moved over ``path`` with ``os.replace``; a
crash mid-save leaves the previous checkpoint untouched.  Arrays are read with
``allow_pickle=False``.  Loading only rebuilds classes of the ``nn_core`` package:
the class recorded in the file (and of every nested module argument) must live in
``nn_core`` or one of its submodules, which is checked *before* anything is
imported -- a file naming any other module raises :class:`CheckpointError` and
imports nothing.  Modules of your own (subclasses defined outside ``nn_core``) can
be saved, but to restore them build the module yourself and call
``load_state_dict`` with the arrays (``np.load(path)["param/<name>"]``).
Constructor arguments are still taken from the file, so load checkpoints from
sources you trust.

Examples
--------
>>> import numpy as np, os, tempfile
>>> from nn_core.layers import Linear, Sequential, LayerNorm
>>> net = Sequential(Linear(4, 8, rng=0), LayerNorm(8))
>>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
>>> _ = save(net, path, extra={"epochs": 3})
>>> again = load(path)
>>> x = np.ones((2, 4), np.float32)
>>> bool(np.array_equal(net(x), again(x)))
True
>>> read_metadata(path)["extra"]
{'epochs': 3}
"""
from __future__ import annotations

import importlib
import json
import os
import tempfile
import zipfile

import numpy as np

from .module import Module

__all__ = ["save", "load", "read_metadata", "CheckpointError"]

FORMAT = "nn_core.checkpoint"
VERSION = 1
_META_KEY = "__nn_core_checkpoint__"
_PARAM_PREFIX = "param/"


class CheckpointError(ValueError):
    """The file is not a readable nn_core checkpoint (corrupted, wrong format, mismatch)."""


# ------------------------------------------------------------------ encoding
def _class_path(obj_or_cls) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode(value, where):
    """JSON-able form of a constructor argument (TypeError naming ``where`` otherwise)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if np.isfinite(v) else {"__float__": repr(v)}
    if isinstance(value, Module):
        return {"__module__": _describe(value)}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cannot save constructor argument {where}: dict keys must be str")
        if any(k.startswith("__") and k.endswith("__") for k in value):
            raise TypeError(f"cannot save constructor argument {where}: dunder dict keys are "
                            "reserved")
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.size <= 4096 and value.dtype.kind in "biuf":
        return {"__array__": value.tolist(), "dtype": value.dtype.name}
    raise TypeError(
        f"cannot save constructor argument {where} of type {type(value).__name__}: "
        "checkpoints store None, bool, int, float, str, list, tuple, dict, NumPy dtypes "
        "and Modules"
    )


def _describe(module: Module) -> dict:
    args, kwargs = getattr(module, "_init_args", ((), {}))
    name = type(module).__name__
    return {
        "class": _class_path(module),
        "args": [_encode(a, f"{name} argument {i}") for i, a in enumerate(args)],
        "kwargs": {k: _encode(v, f"{name} argument {k!r}") for k, v in kwargs.items()
                   if k != "rng"},
        "dtype": np.dtype(module.dtype).name,
    }


_PACKAGE = "nn_core"


def _import_class(path):
    """The Module subclass named ``"nn_core.sub.module:QualName"``; anything outside
    the ``nn_core`` package is refused before it is imported."""
    mod_name = path.split(":")[0] if isinstance(path, str) else ""
    if not (mod_name == _PACKAGE or mod_name.startswith(_PACKAGE + ".")):
        raise CheckpointError(
            f"checkpoint class {path!r} is not an nn_core Module: only classes of the "
            f"{_PACKAGE!r} package are loaded (module {mod_name!r} was not imported)")
    try:
        mod_name, qual = path.split(":")
        obj = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ValueError, ImportError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint names class {path!r}, which cannot be imported: "
                              f"{exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Module)
            and (obj.__module__ == _PACKAGE or obj.__module__.startswith(_PACKAGE + "."))):
        raise CheckpointError(f"checkpoint class {path!r} is not an nn_core Module")
    return obj


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__module__" in value:
            return _build(value["__module__"])
        if "__dtype__" in value:
            return np.dtype(value["__dtype__"]).type
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__array__" in value:
            return np.array(value["__array__"], dtype=value["dtype"])
        return {k: _decode(v) for k, v in value.items()}
    return value


def _build(desc) -> Module:
    cls = _import_class(desc["class"])
    args = [_decode(a) for a in desc["args"]]
    kwargs = {k: _decode(v) for k, v in desc["kwargs"].items()}
    try:
        module = cls(*args, **kwargs)
    except Exception as exc:
        raise CheckpointError(f"could not rebuild {desc['class']} from the checkpoint's "
                              f"constructor arguments: {type(exc).__name__}: {exc}") from exc
    if np.dtype(module.dtype).name != desc["dtype"]:
        raise CheckpointError(f"rebuilt {desc['class']} has dtype {np.dtype(module.dtype)}, "
                              f"checkpoint says {desc['dtype']}")
    return module


# --------------------------------------------------------------------- API
def save(module, path, extra=None) -> str:
    """Write ``module`` (configuration, dtype, parameters) to ``path`` atomically.

    Parameters
    ----------
    module : Module
        Built through its constructor (so that ``_init_args`` is recorded).
    path : str or os.PathLike
        Destination file, used as given (no suffix is added; ``.npz`` is customary).
    extra : dict, optional
        JSON-serialisable user data stored alongside (read it with
        :func:`read_metadata`).

    Returns
    -------
    str
        The path written.

    Raises
    ------
    TypeError
        ``module`` is not a Module, or a constructor argument / ``extra`` is not
        serialisable (the message names it).
    """
    if not isinstance(module, Module):
        raise TypeError(f"module must be an nn_core Module, got {type(module).__name__}")
    path = os.fspath(path)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "module": _describe(module),
        "params": {k: list(v.shape) for k, v in module.parameters().items()},
        "extra": _encode(extra, "extra") if extra is not None else None,
    }
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:  # pragma: no cover - _encode guards this
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc
    arrays = {_PARAM_PREFIX + k: np.ascontiguousarray(v) for k, v in module.parameters().items()}
    arrays[_META_KEY] = np.array(meta_json)

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_metadata(path) -> dict:
    """The checkpoint's JSON metadata (``module``, ``params``, ``extra``, ...).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError (a ValueError)
        Not an nn_core checkpoint, or corrupted.
    """
    with _open(path) as data:
        return _read_meta(path, data)


def _open(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path!r} is not a readable nn_core checkpoint (.npz): "
                              f"{type(exc).__name__}: {exc}") from exc


def _read_meta(path, data) -> dict:
    if _META_KEY not in data.files:
        raise CheckpointError(f"{path!r} is an .npz file but not an nn_core checkpoint "
                              f"(no {_META_KEY!r} entry)")
    try:
        meta = json.loads(str(data[_META_KEY][()]))
    except Exception as exc:
        raise CheckpointError(f"{path!r}: checkpoint metadata is corrupted: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r}: unknown checkpoint format {meta!r:.80}")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path!r}: checkpoint version {meta.get('version')} is newer "
                              f"than this nn_core supports ({VERSION})")
    meta["extra"] = _decode(meta.get("extra"))
    return meta


def load(path, with_metadata=False):
    """Rebuild the module saved at ``path`` and load its parameters.

    Parameters
    ----------
    path : str or os.PathLike
    with_metadata : bool
        Also return the metadata dict (see :func:`read_metadata`).

    Returns
    -------
    Module, or (Module, dict)
        The module is in training mode, as a freshly constructed one.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError (a ValueError)
        Corrupted or foreign file, class not importable, or the stored parameters do
        not match the rebuilt module (names listed).
    """
    with _open(path) as data:
        meta = _read_meta(path, data)
        module = _build(meta["module"])
        try:
            state = {name[len(_PARAM_PREFIX):]: data[name] for name in data.files
                     if name.startswith(_PARAM_PREFIX)}
        except Exception as exc:
            raise CheckpointError(f"{path!r}: parameter data is corrupted: "
                                  f"{type(exc).__name__}: {exc}") from exc
    try:
        module.load_state_dict(state)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path!r}: parameters do not match the rebuilt "
                              f"{type(module).__name__}: {exc}") from exc
    return (module, meta) if with_metadata else module
