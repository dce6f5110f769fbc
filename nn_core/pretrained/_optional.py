"""Imports of the optional ``text`` extra (``safetensors``, ``tokenizers``)."""
from __future__ import annotations

import importlib


def require(module: str):
    """Import ``module`` of an optional dependency, or an ImportError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise ImportError(f"nn_core.pretrained needs the {top!r} package: "
                          f'pip install "nn_core[text]" (or pip install {top})') from exc
