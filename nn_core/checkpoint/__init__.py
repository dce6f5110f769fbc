"""Save a module to one ``.npz`` file and rebuild it without the constructing code.

The file is an uncompressed zip of ``.npy`` members (what :func:`numpy.savez` writes):

* ``__nn_core_checkpoint__.npy``: a JSON document (a 0-d unicode array) with the format
  name and version, the module's class (``"package.module:QualName"``), its constructor
  arguments (recorded by :class:`~nn_core.Module` in ``_init_args``), its dtype, the
  parameter names and shapes, an optional user ``extra`` dict (training history, task
  config ...) and, optionally, ``training``: the state needed to resume training;
* ``param/<name>.npy``: one array per entry of ``module.parameters()``;
* ``train/<k>.npy``: the arrays of the training state (optimizer buffers ...), which the
  JSON document refers to by name, shape and dtype.

Loading a file runs no code named by the file and reads no more than it has checked:

1. the path must be a regular file (a FIFO or a device is refused without reading it);
2. the zip directory is bounded (:data:`MAX_MEMBERS`, :data:`MAX_DIRECTORY_BYTES`), every
   member must be stored uncompressed, unencrypted, and the members together may not
   declare more bytes than the file holds;
3. the JSON document is bounded (:data:`MAX_META_CHARS`, :data:`MAX_META_CONTAINERS`) and
   every field of it is checked; any malformed shape raises :class:`CheckpointError`;
4. the set of members must be exactly the metadata file, the declared parameters and the
   declared training arrays, and every ``.npy`` header (shape, dtype, size) must match
   its declaration before any array data are read;
5. the module is rebuilt only from classes of a fixed registry
   (:func:`registered_classes`: the public Module classes of :mod:`nn_core.layers`,
   :mod:`~nn_core.losses`, :mod:`~nn_core.attention`, :mod:`~nn_core.recurrent` and
   :mod:`~nn_core.models`, plus the class paths older checkpoints name); nothing is
   imported because a file says so.  Its constructor runs under a NumPy allocation
   budget derived from the declared parameter sizes, so constructor arguments cannot ask
   for more memory than the file's parameters justify;
6. the parameters are read into the rebuilt module, and their rebuilt names, shapes and
   dtype must equal the declared ones.

Every failure is a :class:`CheckpointError` (a ``ValueError``), except operating-system
errors such as ``FileNotFoundError``, ``IsADirectoryError`` or ``PermissionError``.

Writes are atomic (:func:`atomic_write`): the archive goes to a temporary file beside
the target (``<name>.nnc<random>.tmp``, created with the user's umask, or with the
existing target's permission bits), is flushed and fsync'ed, and is moved over the
target with ``os.replace``; a crash or kill mid-save leaves the previous file untouched.
Temporary files that a killed writer left behind for the same target are removed by
the next write (a live writer holds a lock on its own, so concurrent writers are safe).
Writing to a symbolic link writes the file it points to.

Modules of your own (classes outside the registry) can be saved; rebuild them yourself
and load their parameters with ``module.load_state_dict(read_state_dict(path))``.

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

import errno
import inspect
import json
import math
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..memory import allocation_budget
from ..module import Module
from ._format import (FORMAT, MAX_DEPTH, MAX_DIRECTORY_BYTES, MAX_MEMBERS,  # noqa: F401
                      MAX_META_CHARS, MAX_META_CONTAINERS, VERSION, CheckpointError,
                      _COUNT_ARGS, _META_KEY, _PARAM_PREFIX, _check_desc, _class_path,
                      _decode, _describe, _encode, _fail, _is_int, _pack, registered_classes)
from ._archive import _Archive
from ._atomic import WriteFailed, atomic_write

if TYPE_CHECKING:  # names used in annotations only
    from collections.abc import Mapping
    from typing import Any

#: the errors of a write that found no space: a full disk, a file-size limit, a quota
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}

__all__ = ["save", "load", "read_metadata", "read_state_dict", "load_training_state",
           "registered_classes", "atomic_write", "CheckpointError", "WriteFailed"]


# ------------------------------------------------------------------ rebuilding
def _build_budget(meta):
    """Bytes NumPy may hold while the module is constructed: four float64 copies of the
    declared parameters (parameters, gradients and the initialisers' float64 draws take
    up to three) plus 4 MiB for small arrays.  The declared sizes are already capped by
    the file size, so a file cannot make its constructor allocate more than about
    4 * 8 / itemsize times its own size."""
    elements = sum(math.prod(s) for s in meta["params"].values())
    return 4 * 8 * elements + (4 << 20)


def _rebuild(path, meta):
    """The module described by ``meta``, constructed under an allocation budget."""
    registry = registered_classes()
    n_params = len(meta["params"])
    where = repr(path)

    def build(desc, depth):
        if depth > MAX_DEPTH:
            _fail(where, f"modules nested deeper than {MAX_DEPTH}")
        _check_desc(desc, where)
        cls = registry.get(desc["class"])
        if cls is None:
            raise CheckpointError(
                f"{where}: checkpoint class {desc['class']!r:.120} is not an nn_core Module "
                "that load() rebuilds (see nn_core.checkpoint.registered_classes(); nothing "
                "was imported). For a module of your own, build it and call "
                "load_state_dict(nn_core.checkpoint.read_state_dict(path))")
        args = _decode(desc["args"], where, depth + 1, build)
        kwargs = _decode(desc["kwargs"], where, depth + 1, build)
        kwargs.pop("rng", None)
        try:
            bound = inspect.signature(cls).bind(*args, **kwargs)
        except TypeError as exc:
            raise CheckpointError(f"{where}: the constructor arguments do not fit "
                                  f"{desc['class']}: {exc}") from None
        for name in _COUNT_ARGS:
            n = bound.arguments.get(name)
            if _is_int(n) and n > max(n_params, 1):
                raise CheckpointError(f"{where}: {desc['class']} asks for {name}={n} but the "
                                      f"file declares only {n_params} parameter arrays")
        try:
            module = cls(*args, **kwargs)
        except MemoryError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{where}: could not rebuild {desc['class']} from the "
                                  f"checkpoint's constructor arguments: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if np.dtype(module.dtype).name != desc["dtype"]:
            raise CheckpointError(f"{where}: rebuilt {desc['class']} has dtype "
                                  f"{np.dtype(module.dtype)}, the checkpoint says "
                                  f"{desc['dtype']}")
        return module

    budget = allocation_budget(_build_budget(meta))
    try:
        with budget:
            module = build(meta["module"], 0)
    except MemoryError as exc:
        if budget.exceeded:
            raise CheckpointError(
                f"{where}: the constructor arguments ask for more memory than the "
                f"{n_params} declared parameters justify (budget {budget.nbytes} "
                "bytes)") from None
        raise CheckpointError(f"{where}: out of memory rebuilding the module: {exc}") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{where}: modules nested too deeply") from exc
    if not isinstance(module, Module):  # pragma: no cover - registry holds Modules only
        raise CheckpointError(f"{where}: rebuilt object is not a Module")
    return module


def _check_rebuilt(path, meta, module):
    """The rebuilt module's parameters must be exactly the declared ones."""
    params = module.parameters()
    declared = meta["params"]
    name = type(module).__name__
    missing = [k for k in params if k not in declared]
    extra = [k for k in declared if k not in params]
    if missing or extra:
        raise CheckpointError(
            f"{path!r}: parameters do not match the rebuilt {name}: missing in the file "
            f"{missing[:5]}, unexpected in the file {extra[:5]}")
    for key, arr in params.items():
        if arr.shape != tuple(declared[key]):
            raise CheckpointError(
                f"{path!r}: parameters do not match the rebuilt {name}: {key!r} has shape "
                f"{arr.shape} in the rebuilt module, {tuple(declared[key])} in the file")
        if not arr.flags.c_contiguous:  # pragma: no cover - add_param makes them contiguous
            raise CheckpointError(f"{path!r}: parameter {key!r} is not contiguous")


# --------------------------------------------------------------------- API
def save(module: Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None, *,
         training_state: Mapping[str, Any] | None = None) -> str:
    """Write ``module`` (configuration, dtype, parameters) to ``path`` atomically.

    Parameters
    ----------
    module : Module
        Built through its constructor (so that ``_init_args`` is recorded).  Classes
        outside :func:`registered_classes` are saved too (with a warning), but
        :func:`load` will not rebuild them; use :func:`read_state_dict`.
    path : str or os.PathLike
        Destination file, used as given (no suffix is added; ``.npz`` is customary).
        A symbolic link is followed.  A new file gets the permissions of the user's
        umask; an existing one keeps its permission bits.
    extra : dict, optional
        JSON-serialisable user data stored alongside (read it with
        :func:`read_metadata`); no Modules.
    training_state : dict, optional
        State for resuming training (optimizer buffers, schedule, step, RNG states ...):
        str-keyed dicts, lists, tuples, scalars, strings and NumPy arrays of real
        dtypes, at any depth up to :data:`MAX_DEPTH`.  Arrays are stored as members;
        :func:`load_training_state` returns the same structure.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    TypeError
        ``module`` is not a Module, or a constructor argument / ``extra`` /
        ``training_state`` value is not serialisable (the message names it).
    ValueError
        The metadata would exceed the limits :func:`load` enforces.
    WriteFailed (an OSError)
        No space for the file (a full disk, a quota, a file-size limit): the message
        names the file and how many bytes it needed; any previous file at ``path`` is
        intact.
    """
    if not isinstance(module, Module):
        raise TypeError(f"module must be an nn_core Module, got {type(module).__name__}")
    params = module.parameters()
    for name in params:
        if not name or len(name) > 1024 or "\x00" in name:
            raise ValueError(f"cannot save parameter name {name!r}")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "module": _describe(module),
        "params": {k: list(v.shape) for k, v in params.items()},
        "extra": _encode(extra, "extra", modules=False) if extra is not None else None,
    }
    train_arrays = {}
    if training_state is not None:
        if not isinstance(training_state, dict):
            raise TypeError("training_state must be a dict, got "
                            f"{type(training_state).__name__}")
        meta["training"] = _pack(training_state, train_arrays, "training_state")
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:  # pragma: no cover - _encode guards this
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc
    containers = meta_json.count("[") + meta_json.count("{")
    if len(meta_json) > MAX_META_CHARS or containers > MAX_META_CONTAINERS:
        raise ValueError(
            f"checkpoint metadata would be {len(meta_json)} characters with {containers} "
            f"lists/objects; load() reads at most {MAX_META_CHARS} and "
            f"{MAX_META_CONTAINERS} (keep extra small; put large data in arrays)")
    if _class_path(module) not in registered_classes():
        warnings.warn(f"{_class_path(module)} is not a registered nn_core class: "
                      "nn_core.load() will not rebuild it; restore it with "
                      "module.load_state_dict(nn_core.checkpoint.read_state_dict(path))",
                      stacklevel=2)
    arrays = {_PARAM_PREFIX + k: np.ascontiguousarray(v) for k, v in params.items()}
    arrays.update(train_arrays)
    arrays[_META_KEY] = np.array(meta_json)
    try:
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        raise WriteFailed(path, exc, sum(a.nbytes for a in arrays.values())) from None
    return os.fspath(path)


def read_metadata(path) -> dict:
    """The checkpoint's JSON metadata (``module``, ``params``, ``extra``, ...), after
    checking every member's header; no array data are read and nothing is rebuilt.

    ``extra`` is decoded (tuples, non-finite floats, small arrays).  ``training`` (if
    present) is left encoded; :func:`load_training_state` returns it with its arrays.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError (a ValueError)
        Not an nn_core checkpoint, malformed, or corrupted.
    """
    with _Archive(path) as ar:
        ar.check_members()
        return dict(ar.meta)


def load(path: str | os.PathLike, with_metadata: bool = False) -> Module | tuple[Module, dict]:
    """Rebuild the module saved at ``path`` and load its parameters.

    Parameters
    ----------
    path : str or os.PathLike
        A regular file written by :func:`save` (or by an older nn_core: format
        version 1).
    with_metadata : bool
        Also return the metadata dict (see :func:`read_metadata`).

    Returns
    -------
    Module, or (Module, dict)
        The module is in training mode, as a freshly constructed one.  A training
        state in the file is not read (see :func:`load_training_state`).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        As for any file.
    CheckpointError (a ValueError)
        Malformed, foreign, oversized, truncated or tampered file; a class outside
        :func:`registered_classes`; constructor arguments that do not fit or ask for
        more memory than the declared parameters; or stored parameters that do not
        match the rebuilt module (named).
    """
    with _Archive(path) as ar:
        ar.check_members()
        meta = dict(ar.meta)
        module = _rebuild(ar.path, meta)
        _check_rebuilt(ar.path, meta, module)
        for name, arr in module.parameters().items():
            ar.read_array(f"{_PARAM_PREFIX}{name}.npy", out=arr)
    return (module, meta) if with_metadata else module


def read_state_dict(path) -> dict:
    """The parameters stored at ``path`` as ``{name: array}``, without rebuilding the
    module (for classes :func:`load` does not rebuild: build the module yourself, then
    ``module.load_state_dict(read_state_dict(path))``).  Same checks as :func:`load`."""
    with _Archive(path) as ar:
        ar.check_members()
        return {name: ar.read_array(f"{_PARAM_PREFIX}{name}.npy")
                for name in ar.meta["params"]}


def load_training_state(path) -> dict:
    """The training state saved with the module at ``path`` (the ``training_state``
    given to :func:`save`, with its arrays read back).

    Raises
    ------
    CheckpointError (a ValueError)
        The file carries no training state, or is malformed (as for :func:`load`).
    """
    with _Archive(path) as ar:
        ar.check_members()
        tree = ar.meta.get("training")
        if tree is None:
            raise CheckpointError(f"{ar.path!r} carries no training state (it was saved "
                                  "without one, e.g. at the end of an older run)")
        where = f"{ar.path!r}: training state"

        def unpack(value, depth):
            if isinstance(value, dict) and "__member__" in value:
                return ar.read_array(value["__member__"] + ".npy")
            if isinstance(value, list):
                return [unpack(v, depth + 1) for v in value]
            if isinstance(value, dict):
                if "__tuple__" in value and set(value) == {"__tuple__"}:
                    if not isinstance(value["__tuple__"], list):
                        _fail(where, "a tuple entry must hold a list")
                    return tuple(unpack(v, depth + 1) for v in value["__tuple__"])
                if any(k.startswith("__") and k.endswith("__") for k in value):
                    return _decode(value, where, depth)
                return {k: unpack(v, depth + 1) for k, v in value.items()}
            return _decode(value, where, depth)

        return unpack(tree, 0)
