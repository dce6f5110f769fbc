"""nn_core: attention and recurrent layers for the CPU, with explicit backward passes.

Every layer follows the :class:`Module` protocol (``forward`` / hand-derived
``backward``, ``params`` / ``grads``); :func:`gradcheck` checks any of them against
central finite differences.

``import nn_core`` loads the layers (the module level of docs/architecture.md).  The
training toolkit, checkpoints, the demo models and their data, MPI and the command line
load on first use: ``nn_core.training``, ``nn_core.fit``, ``nn_core.save`` ... are
attributes as usual.
"""
from __future__ import annotations

import importlib

from . import attention
from . import recurrent
from .gradcheck import GradcheckReport, gradcheck
from .module import (Module, ModuleList, enable_backward, inference_mode, is_backward_enabled,
                     is_inference_mode)
from . import layers, losses, memory, transformer

__version__ = "0.1.0"

# subpackages above the module level, imported on first attribute access (PEP 562)
_LAZY_SUBMODULES = ("optim", "checkpoint", "datasets", "models", "training",
                    "distributed", "interop", "pretrained", "tasks", "sklearn", "cli", "bench")
# names re-exported from them: name -> the subpackage that defines it
_LAZY_NAMES = {"save": "checkpoint", "load": "checkpoint",
               "load_training_state": "checkpoint", "CheckpointError": "checkpoint",
               "Trainer": "training", "fit": "training"}


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value                      # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_NAMES))


__all__ = ["Module", "ModuleList", "inference_mode", "is_inference_mode", "enable_backward",
           "is_backward_enabled", "gradcheck",
           "GradcheckReport", "attention", "recurrent", "layers", "losses", "optim", "transformer",
           "memory",
           "save", "load", "load_training_state", "CheckpointError", "datasets", "models",
           "training", "Trainer", "fit", "distributed", "__version__"]
