"""The thread team (``nn_core._kernels._team``) and the GEMMs on it (``nn_core._linalg``)."""
import os
import threading
import time

import numpy as np
import pytest

from nn_core import _linalg, _parallel
from nn_core._kernels import _team


@pytest.fixture
def threads():
    """Run a block at a given thread budget: ``with threads(n): ...``."""
    return _parallel.limit_threads


@pytest.fixture
def team():
    """Skip where the team cannot run several threads (an OpenBLAS without
    ``openblas_set_num_threads_local``, or BLAS threads that cannot be set)."""
    libs = _parallel._BLAS.libs()
    if not libs or _team.blas_registered() != len(libs):
        pytest.skip("the team runs one thread here: its BLAS cannot be held")


def _operand(rng, rows, cols, dtype, padded):
    """A random ``[rows, cols]`` matrix, as a view with a row stride past ``cols``
    when ``padded`` (the layers pass such slices)."""
    x = rng.standard_normal((rows, cols + (3 if padded else 0))).astype(dtype)
    return x[:, :cols] if padded else x


# m, n, k picked so that every cut is taken: rows, columns, the reduction, one block
SHAPES = [(1536, 256, 64), (64, 256, 1536), (256, 64, 1536), (5, 7, 3), (1, 300, 40),
          (300, 1, 40), (700, 900, 33), (48, 40, 4000)]


@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_numpy_for_every_cut(rng, m, n, k, dtype):
    ta, tb = bool(rng.integers(2)), bool(rng.integers(2))
    a = _operand(rng, k if ta else m, m if ta else k, dtype, rng.integers(2))
    b = _operand(rng, n if tb else k, k if tb else n, dtype, rng.integers(2))
    c0 = rng.standard_normal((m, n)).astype(dtype)
    alpha, beta = 0.75, -0.5
    c = c0.copy()
    _team.gemm(a, b, c, ta, tb, alpha, beta)
    A = (a.T if ta else a).astype(np.float64)
    B = (b.T if tb else b).astype(np.float64)
    ref = alpha * A @ B + beta * c0
    tol = 1e-12 if dtype == np.float64 else 2e-5
    scale = np.abs(A) @ np.abs(B) + np.abs(c0)
    assert np.all(np.abs(c - ref) <= tol * scale + tol), (ta, tb, _team.gemm_blocks(m, n, k))


@pytest.mark.parametrize("m, n, k", SHAPES)
def test_gemm_gives_the_same_bits_at_any_thread_count(rng, threads, m, n, k):
    dtype = [np.float32, np.float64][int(rng.integers(2))]
    a = rng.standard_normal((k, m)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    out = []
    for t in (1, 2, 3, 4):
        with threads(t):
            c = np.ones((m, n), dtype)
            out.append(_team.gemm(a, b, c, True, False, 1.0, 1.0))
    for c in out[1:]:
        np.testing.assert_array_equal(c, out[0])


def test_gemm_cuts_depend_on_the_shape_only(threads):
    with threads(1):
        one = [_team.gemm_blocks(*s) for s in SHAPES]
    with threads(3):
        three = [_team.gemm_blocks(*s) for s in SHAPES]
    assert one == three
    cuts = {cut for cut, _, count in one if count > 1}
    assert cuts == {"rows", "cols", "k"}, one


def test_gemm_rejects_bad_operands():
    a = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="share the dtype"):
        _team.gemm(a, a.T.copy().astype(np.float64), np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"b must have shape \(3, 5\), got \(3, 4\)"):
        _team.gemm(a, np.ones((3, 4), np.float32), np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _team.gemm(a, np.ones((3, 4), np.float32), np.empty((4, 4), np.float32).T)
    with pytest.raises(ValueError, match="contiguous rows"):
        _team.gemm(np.ones((3, 4), np.float32).T, np.ones((3, 4), np.float32),
                   np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match="numpy arrays"):
        _team.gemm([[1.0]], a, a)


def test_gemm_with_an_empty_reduction_scales_c(rng):
    c = rng.standard_normal((3, 4))
    want = 2.0 * c
    _team.gemm(np.empty((3, 0)), np.empty((0, 4)), c, beta=2.0)
    np.testing.assert_array_equal(c, want)
    _team.gemm(np.empty((3, 0)), np.empty((0, 4)), c)
    assert not c.any()


def test_matmul_helper(rng):
    a = rng.standard_normal((50, 20))
    b = rng.standard_normal((30, 20))
    np.testing.assert_allclose(_linalg.matmul(a, b, trans_b=True), a @ b.T, rtol=1e-13)
    out = rng.standard_normal((20, 20))
    want = out + a.T @ a
    _linalg.matmul(a, a, trans_a=True, out=out, accumulate=True)
    np.testing.assert_allclose(out, want, rtol=1e-13)
    c = rng.standard_normal((50, 30))
    fortran = np.asfortranarray(rng.standard_normal((50, 30)))
    _linalg.matmul(a.T, c, out=fortran[:20, :30])          # an out that is not C-contiguous
    np.testing.assert_allclose(fortran[:20, :30], a.T @ c, rtol=1e-13)
    ints = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(_linalg.matmul(ints, ints, trans_b=True), ints @ ints.T)


# ------------------------------------------------------------ Python tasks --
def test_tasks_return_in_order_and_run_on_named_workers(threads, team):
    with threads(2):
        got = _parallel.run_tasks(lambda t: (t, threading.current_thread().name), 4)
    assert [t for t, _ in got] == [0, 1, 2, 3]
    me = threading.current_thread().name
    assert got[0][1] == me
    assert any(name.startswith(_team.WORKER_PREFIX) for _, name in got)


def test_every_task_runs_then_the_first_error_by_task_number_is_raised(threads):
    ran = []

    def work(t):
        ran.append(t)
        if t in (1, 3):
            raise ValueError(f"task {t}")
        return t

    with threads(2), pytest.raises(ValueError, match="task 1"):
        _parallel.run_tasks(work, 4)
    assert sorted(ran) == [0, 1, 2, 3]
    assert _team.blas_holds() == 0


def test_a_task_that_starts_a_job_runs_it_inline(threads):
    def work(t):
        assert _team.in_job() and _team.available() == 1
        return _parallel.run_tasks(lambda u: threading.get_ident(), 2)

    with threads(2):
        for inner in _parallel.run_tasks(work, 2):
            assert inner[0] == inner[1]


def test_two_python_threads_share_the_team(rng, threads):
    """A second caller while a job runs gets its work done inline, correctly."""
    a = rng.standard_normal((600, 300))
    b = rng.standard_normal((300, 500))
    want = a @ b
    errors = []

    def caller():
        try:
            for _ in range(20):
                np.testing.assert_allclose(_linalg.matmul(a, b), want, rtol=1e-12)
                assert _parallel.run_tasks(lambda t: t + 1, 3) == [1, 2, 3]
        except BaseException as exc:
            errors.append(exc)

    with threads(2):
        ts = [threading.Thread(target=caller) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors, errors


def test_blas_is_held_at_one_thread_during_a_job_and_restored(threads, team):
    libs = _parallel._BLAS.libs()
    with threads(2):
        before = [lc.get_num_threads() for lc in libs]
        inside = _parallel.run_tasks(lambda t: [lc.get_num_threads() for lc in libs], 2)
        after = [lc.get_num_threads() for lc in libs]
        with _parallel.hold_blas():
            held = [lc.get_num_threads() for lc in libs]
            assert _parallel.blas_threads() == 2      # a hold keeps the budget
    assert before == after == [2] * len(libs)
    assert inside == [[1] * len(libs)] * 2
    assert held == [1] * len(libs)


def test_an_idle_team_sleeps(threads):
    """After a job the workers spin for at most the spin time, then sleep."""
    with threads(2):
        _parallel.run_tasks(lambda t: None, 2)
        time.sleep(0.05)
        c0 = time.process_time()
        time.sleep(0.3)
        burnt = time.process_time() - c0
    assert burnt < 0.05, f"the idle process used {burnt:.3f} s of CPU in 0.3 s"


def test_team_settings_are_checked():
    with pytest.raises(ValueError, match="team size must be >= 1, got 0"):
        _team.set_size(0)
    with pytest.raises(ValueError, match="spin must be >= 0"):
        _team.set_spin(-1.0)
    with pytest.raises(RuntimeError, match="without blas_hold"):
        _team.blas_release()
    old = _team.spin()
    _team.set_spin(1e-5)
    try:
        assert _team.spin() == pytest.approx(1e-5)
    finally:
        _team.set_spin(old)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_team(rng, threads, team):
    a = rng.standard_normal((512, 256))
    with threads(2):
        want = _linalg.matmul(a, a, trans_b=True)           # the parent's workers run
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                        # pragma: no cover - child
            ok = np.array_equal(_linalg.matmul(a, a, trans_b=True), want)
            os.write(w, b"1" if ok and _team.workers() >= 1 else b"0")
            os._exit(0)
        os.close(w)
        got = os.read(r, 1)
        os.waitpid(pid, 0)
    assert got == b"1"


def test_a_trace_records_each_job_its_pieces_and_barriers(rng, threads):
    a = rng.standard_normal((3000, 64)).astype(np.float32)
    b = rng.standard_normal((3000, 256)).astype(np.float32)
    cut, _, pieces = _team.gemm_blocks(64, 256, 3000)
    assert cut == "k" and pieces > 1
    with threads(2):
        _team.trace_start()
        _linalg.matmul(a, b, trans_a=True)
        _parallel.run_tasks(lambda t: _linalg.matmul(a, b, trans_a=True), 3)  # nested: one job
        rec = _team.trace_stop()
        assert _team.trace_stop() is None
        cost = _team.barrier_cost(200)
    assert list(rec["want"]) == [pieces, 3]
    # the calling thread's own task passes its (inline) GEMM's barrier inside the job
    assert list(rec["barriers"]) == [1, 1]
    assert (rec["t1"] > rec["t0"]).all()
    assert cost is None or cost > 0


@pytest.mark.parametrize("shape, src_shape", [((64, 40, 50), (64, 40, 50)),
                                              ((64, 40, 50), (1, 40, 50)),
                                              ((64, 40, 50), (50,)), ((3, 2), (3, 2))])
def test_copy_splits_large_copies_and_keeps_broadcasts(rng, threads, shape, src_shape):
    src = rng.standard_normal(src_shape)
    base = rng.standard_normal(shape[:-1] + (shape[-1] + 2,))
    dst = base[..., 1:-1]                                   # a strided destination
    with threads(2):
        _parallel.copy(dst, src)
    np.testing.assert_array_equal(dst, np.broadcast_to(src, shape))
    assert not np.isnan(base).any()


def test_size_ranges_cut_items_into_about_equal_sums(threads):
    with threads(3):
        r = _parallel.size_ranges([10, 10, 10, 10, 10, 10], 1)
        assert r == [(0, 2), (2, 4), (4, 6)]
        assert _parallel.size_ranges([100, 1, 1], 1)[0] == (0, 1)
        assert _parallel.size_ranges([5], 1) == [(0, 1)]
        assert _parallel.size_ranges([3, 3], 10) == [(0, 2)]
    with threads(1):
        assert _parallel.size_ranges([10] * 6, 1) == [(0, 6)]


def test_optimizer_updates_give_the_same_bits_at_any_thread_count(threads):
    from nn_core.layers import Linear, Sequential
    from nn_core.optim import SGD, AdamW

    out = []
    with threads(3):
        assert len(_parallel.size_ranges([240_000, 400, 240_000, 600], 1 << 16)) == 3
    for t in (1, 2, 3):
        with threads(t):
            model = Sequential(Linear(600, 400, rng=1), Linear(400, 600, rng=2))  # 480K
            for opt in (AdamW(model, lr=1e-2), SGD(model, lr=1e-2, momentum=0.9)):
                for step in range(3):
                    for g in model.gradients().values():
                        g[...] = np.random.default_rng(step).standard_normal(g.shape)
                    opt.step()
            out.append([p.copy() for p in model.parameters().values()])
    for params in out[1:]:
        for a, b in zip(params, out[0]):
            np.testing.assert_array_equal(a, b)
