"""The thread budget and the worker pool (``nn_core._parallel``)."""
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from nn_core import _parallel


def _run_py(code, **env):
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, **env})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.skipif(_parallel.available_cores() < 2, reason="needs two cores")
@pytest.mark.parametrize("threadpoolctl", [True, False])
def test_a_limit_set_before_import_is_honoured(threadpoolctl):
    """(threadpoolctl: the controllers come from threadpoolctl instead of the direct
    OpenBLAS entry points.)"""
    """A limit on NumPy's BLAS set before the kernels' BLAS is loaded still holds for
    the kernels, and lifting it lifts theirs."""
    if threadpoolctl:
        pytest.importorskip("threadpoolctl")
    code = """
        import sys
        if not %r:
            sys.modules["threadpoolctl"] = None        # take the fallback
        import ctypes, numpy
        # NumPy's OpenBLAS, the only one loaded before nn_core (which loads SciPy's)
        paths = {l.split()[-1] for l in open("/proc/self/maps") if "openblas" in l.lower()}
        if len(paths) != 1:
            print("skip"); raise SystemExit
        lib = ctypes.CDLL(paths.pop())
        name = next(n for n in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads",
                                "scipy_openblas_set_num_threads", "openblas_set_num_threads64_")
                    if hasattr(lib, n))
        getattr(lib, name)(1)              # as threadpool_limits(1) before import
        import nn_core
        from nn_core import _parallel
        if %r:
            _parallel._openblas_from_maps = lambda: []
        libs = _parallel._BLAS.libs()
        if len(libs) != 2:
            print("skip"); raise SystemExit
        print(_parallel.blas_threads(), sorted(lc.get_num_threads() for lc in libs), len(libs))
        getattr(lib, name)(2)              # the limit is lifted
        print(_parallel.blas_threads(), sorted(lc.get_num_threads() for lc in libs))
    """ % (threadpoolctl, threadpoolctl)
    out = _run_py(code, OPENBLAS_NUM_THREADS="2")
    if out == "skip":
        pytest.skip("NumPy and SciPy share one BLAS here")
    first, second = out.splitlines()
    assert first == "1 [1, 1] 2"
    assert second == "2 [2, 2]"


def test_openblas_num_threads_sets_the_budget():
    assert _run_py("from nn_core import _parallel; print(_parallel.blas_threads())",
                   OPENBLAS_NUM_THREADS="1") == "1"


def test_limit_threads_as_call_and_context_manager():
    if not _parallel.controllable():
        pytest.skip("BLAS threads cannot be controlled here")
    before = _parallel.blas_threads()
    old_env = os.environ.get("OMP_NUM_THREADS")
    with _parallel.limit_threads(1):
        assert _parallel.blas_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert _parallel.blas_threads() == before
    assert os.environ.get("OMP_NUM_THREADS") == old_env
    with pytest.raises(ValueError, match="threads must be >= 1"):
        _parallel.limit_threads(0)


def test_run_tasks_runs_on_the_pool_and_returns_in_order(monkeypatch):
    names = {}

    def work(t):
        names[t] = threading.current_thread().name
        return t * t

    assert _parallel.run_tasks(work, 3) == [0, 1, 4]
    assert names[0] == threading.current_thread().name
    assert all(names[t].startswith(_parallel.WORKER_PREFIX) for t in (1, 2))
    assert not _parallel.single_thread_blas.engaged


def test_nested_work_runs_inline():
    """Work submitted from inside a split never waits on the (busy) pool."""
    inner = []

    def work(t):
        inner.append(_parallel.run_tasks(lambda u: threading.current_thread().name, 2))
        return t

    _parallel.run_tasks(work, 2)
    for names in inner:
        assert names[0] == names[1]           # both inner tasks ran on one thread


def test_run_tasks_waits_for_every_task_then_raises_the_first_error():
    done = []

    def work(t):
        if t == 0:
            raise KeyError("caller")
        done.append(t)
        raise ValueError("worker")

    with pytest.raises(KeyError, match="caller"):
        _parallel.run_tasks(work, 3)
    assert sorted(done) == [1, 2]
    assert not _parallel.single_thread_blas.engaged


def test_single_thread_blas_pins_and_restores():
    libs = _parallel._BLAS.libs()
    if not libs:
        pytest.skip("no controllable BLAS")
    before = [lc.get_num_threads() for lc in libs]
    with _parallel.single_thread_blas:
        assert _parallel.blas_threads() == 1
        assert all(lc.get_num_threads() == 1 for lc in libs)
    assert [lc.get_num_threads() for lc in libs] == before


@pytest.mark.parametrize("n, parts, expect", [
    (5, 2, [(0, 2), (2, 5)]), (2, 4, [(0, 1), (1, 2)]), (0, 3, [(0, 0)]),
])
def test_split(n, parts, expect):
    assert _parallel.split(n, parts) == expect


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_pool_of_its_own():
    """The parent's worker threads do not exist in a forked child; its first split
    starts a new pool instead of waiting forever on the parent's."""
    out = _run_py("""
        import multiprocessing as mp, threading
        from nn_core import _parallel

        def work(t):
            return (t, threading.current_thread().name.startswith(_parallel.WORKER_PREFIX))

        def child(q):
            with _parallel.limit_threads(2):
                q.put(_parallel.run_tasks(work, 2))

        with _parallel.limit_threads(2):
            print(_parallel.run_tasks(work, 2))        # the parent's pool is running
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        print(q.get(timeout=60))
        p.join(60)
        print(p.exitcode)
    """)
    assert out.splitlines() == ["[(0, False), (1, True)]"] * 2 + ["0"]
