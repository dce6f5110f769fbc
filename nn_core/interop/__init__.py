"""Convert between nn_core modules and PyTorch ``state_dict`` layouts.

``load_torch_state_dict(module, state_dict)`` copies a torch-layout state dict
(values: NumPy arrays or torch tensors) into ``module``;
``to_torch_state_dict(module)`` returns NumPy arrays under torch's key names.
Torch is imported only when tensors are actually passed in (never to import
nn_core).  Key names equal torch's exactly; a missing, unexpected or wrong-shape
key raises ``ValueError`` naming it.

Each module family registers its converters in a private submodule
(``_attention``, ``_recurrent``, ``_bidirectional``, ``_layers``) through
:func:`register`.
"""
from __future__ import annotations

import importlib

import numpy as np

from .._validation import check_keys  # noqa: F401  (re-exported for the providers)

__all__ = ["load_torch_state_dict", "to_torch_state_dict", "register", "to_numpy", "check_keys"]

_REGISTRY: list = []          # (module class, load function, export function)
_PROVIDERS = ("nn_core.interop._attention", "nn_core.interop._recurrent",
              "nn_core.interop._bidirectional", "nn_core.interop._layers")


def register(cls, load, export):
    """Register converters for ``cls`` (and its subclasses)."""
    _REGISTRY.append((cls, load, export))


def _lookup(module):
    for name in _PROVIDERS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    # the most specific registered class wins
    best = None
    for cls, load, export in _REGISTRY:
        if isinstance(module, cls) and (best is None or issubclass(cls, best[0])):
            best = (cls, load, export)
    if best is None:
        raise TypeError(f"no torch state_dict conversion for {type(module).__name__}")
    return best


def to_numpy(value) -> np.ndarray:
    """A NumPy copy of ``value`` (a NumPy array or a torch tensor, any device)."""
    if isinstance(value, np.ndarray):
        return value
    mod = type(value).__module__
    if mod.startswith("torch"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def load_torch_state_dict(module, state_dict) -> None:
    """Copy a torch-layout ``state_dict`` into ``module`` (in place, checked)."""
    _, load, _ = _lookup(module)
    load(module, {k: to_numpy(v) for k, v in dict(state_dict).items()})


def to_torch_state_dict(module) -> dict:
    """``module``'s parameters under torch's key names, as NumPy arrays.

    ``{k: torch.from_numpy(v) for k, v in to_torch_state_dict(m).items()}`` is
    ready for ``torch_module.load_state_dict``.
    """
    _, _, export = _lookup(module)
    return export(module)
