"""``import nn_core`` loads the layers only; the upper subpackages load on first use."""
import os
import subprocess
import sys

import pytest

import nn_core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nn_core.__file__)))
UPPER = ("training", "datasets", "models", "distributed", "checkpoint", "optim",
         "tasks", "cli", "sklearn", "interop", "pretrained")


def _fresh(code):
    """Run ``code`` in a new interpreter that imports this checkout's nn_core."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_import_loads_no_upper_subpackage():
    loaded = _fresh("import sys, nn_core\n"
                    f"print(*[m for m in {UPPER!r} if 'nn_core.' + m in sys.modules])\n"
                    "print('layers:', 'nn_core.attention' in sys.modules, "
                    "'nn_core.recurrent' in sys.modules)")
    assert loaded == ["layers:", "True", "True"]


def test_upper_names_load_on_first_use():
    out = _fresh("import sys, nn_core\n"
                 "fit = nn_core.fit\n"
                 "print('nn_core.training' in sys.modules, fit is nn_core.training.fit, "
                 "'nn_core.cli' in sys.modules)\n"
                 "print(nn_core.load is nn_core.checkpoint.load, "
                 "issubclass(nn_core.CheckpointError, ValueError))")
    assert out == ["True", "True", "False", "True", "True"]


def test_every_public_name_resolves():
    for name in nn_core.__all__:
        assert getattr(nn_core, name) is not None, name
    assert set(nn_core.__all__) <= set(dir(nn_core))
    from nn_core.training import Trainer
    assert nn_core.Trainer is Trainer


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        nn_core.not_a_name
    assert not hasattr(nn_core, "_private_thing")
