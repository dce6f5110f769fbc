"""Shared fixtures.

``rng`` is seeded.  The session seed is 0 unless given (so that every run, and CI, sees
the same inputs); ``--seed random`` draws a new one to explore other inputs.  The seed is
printed in the header of every run and in the report of every failing test that used
``rng``; each test's generator is seeded from the session seed and the test's id, so one
failing test can be re-run alone with the same inputs::

    python -m pytest --seed 12345 tests/test_sdpa.py::test_name
    NN_CORE_TEST_SEED=12345 python -m pytest ...
    python -m pytest --seed random
"""
import os
import secrets
import signal
import zlib

import numpy as np
import pytest

SEED_ENV = "NN_CORE_TEST_SEED"


def pytest_addoption(parser):
    parser.addoption("--seed", default=None,
                     help=f"seed of the rng fixture: an integer or 'random' "
                          f"(default: ${SEED_ENV}, else 0)")


def pytest_configure(config):
    # A shell's background job starts with SIGINT ignored, and Python keeps it ignored;
    # the tests that interrupt training need the terminal's behaviour.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    seed = config.getoption("--seed")
    if seed is None:
        seed = os.environ.get(SEED_ENV, "").strip() or "0"
    seed = secrets.randbits(32) if seed == "random" else int(seed)
    config._nn_core_seed = seed


def pytest_report_header(config):
    return f"rng fixture seed: {config._nn_core_seed} (re-run with --seed {config._nn_core_seed})"


def _seed_for(config, nodeid):
    return [config._nn_core_seed, zlib.crc32(nodeid.encode())]


@pytest.fixture
def rng(request):
    """A generator seeded from the session seed and this test's id."""
    request.node._nn_core_uses_rng = True
    return np.random.default_rng(_seed_for(request.config, request.node.nodeid))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and getattr(item, "_nn_core_uses_rng", False):
        seed = item.config._nn_core_seed
        report.sections.append(
            ("rng seed", f"rng fixture seed {seed}: reproduce with "
                         f"python -m pytest --seed {seed} '{item.nodeid}'"))


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param
