"""The public API is typed: py.typed ships, and the constructors, forward/backward,
save/load and optimisers annotate every parameter with names that resolve."""
import inspect
import pathlib
import typing
from collections.abc import Iterable, Mapping

import numpy as np
import pytest

import nn_core
from nn_core import _typing, attention, layers, losses, optim, recurrent, transformer
from nn_core.attention.kv_cache import KVCache

NAMES = {**vars(_typing), "np": np, "Module": nn_core.Module, "KVCache": KVCache,
         "Optimizer": optim.Optimizer, "Mapping": Mapping, "Iterable": Iterable,
         "Any": typing.Any, "os": __import__("os")}

CLASSES = [getattr(m, n) for m in (attention, recurrent, layers, losses, transformer)
           for n in m.__all__ if inspect.isclass(getattr(m, n))
           and issubclass(getattr(m, n), nn_core.Module)]
CLASSES += [optim.SGD, optim.Adam, optim.AdamW, optim.WarmupCosine]
METHODS = ("__init__", "forward", "backward", "forward_sequence", "backward_sequence")
FUNCTIONS = [nn_core.save, nn_core.load, nn_core.gradcheck, optim.clip_grad_norm]


def _targets():
    for cls in CLASSES:
        for name in METHODS:
            fn = getattr(cls, name, None)
            if fn is not None and fn is not getattr(nn_core.Module, name, None):
                yield f"{cls.__name__}.{name}", fn
    for fn in FUNCTIONS:
        yield fn.__name__, fn


TARGETS = list(_targets())


def test_py_typed_is_in_the_package():
    assert (pathlib.Path(nn_core.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize("name, fn", TARGETS, ids=[n for n, _ in TARGETS])
def test_signature_is_annotated_and_resolves(name, fn):
    sig = inspect.signature(fn)
    missing = [p.name for p in sig.parameters.values()
               if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    assert not missing, f"{name}: parameters without a type: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type"
    hints = typing.get_type_hints(fn, globalns={**fn.__globals__, **NAMES})
    assert "return" in hints
