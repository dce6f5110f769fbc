"""Every docstring example of nn_core's public modules runs as written (the examples the
API reference on the Sphinx site shows), with numbers printed as the docstring says."""
import doctest
import importlib
import pkgutil
import warnings

import numpy as np
import pytest

import nn_core


def public_modules():
    """``nn_core`` and every module of it whose dotted name has no ``_`` part, except
    the benchmark scripts (run by tests/test_bench.py)."""
    names = ["nn_core"]
    for info in pkgutil.walk_packages(nn_core.__path__, "nn_core."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or parts[1] == "bench":
            continue
        names.append(info.name)
    return names


MODULES = public_modules()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name.startswith("nn_core.sklearn"):
        pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)                       # an example that writes, writes here
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                                 | doctest.NORMALIZE_WHITESPACE,
                                 extraglobs={"np": np})
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_the_examples_are_found():
    """Most public modules carry an example (a test that finds none fails here)."""
    found = sum(doctest.DocTestFinder().find(importlib.import_module(n)) != []
                for n in MODULES)
    assert len(MODULES) > 20 and found > 20
