"""nn_core.memory: the caching allocator around training steps."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nn_core import memory


def test_reuse_nesting_and_decorator():
    memory.set_cache_limit(None)     # not the limit an earlier training run left behind
    memory.release_cache()
    before = memory.memory_stats()["hits"]
    with memory.caching_allocator():
        a = np.ones(1 << 16)
        del a
        with memory.caching_allocator(False):          # off inside
            b = np.ones(1 << 16)
        del b
        c = np.ones(1 << 16)                            # served from the cache
    assert memory.memory_stats()["hits"] >= before + 1
    assert c.sum() == 1 << 16

    @memory.caching_allocator
    def f():
        return np.zeros(1 << 16).sum()

    assert f() == 0
    cached = memory.memory_stats()["cached_bytes"]
    assert memory.release_cache() == cached
    assert memory.memory_stats()["cached_bytes"] == 0


def test_cache_limit_round_trip():
    try:
        memory.set_cache_limit(1234)
        assert memory.cache_limit() == 1234
    finally:
        memory.set_cache_limit(None)                 # sized by the steps again


def test_training_steps_stop_touching_new_pages():
    """After a warm-up step, a Linear/GELU/LayerNorm training step inside the caching
    allocator faults in (almost) no new page; the page-fault count is a property of the
    allocator, not a timing."""
    code = textwrap.dedent("""
        import resource, numpy as np
        from nn_core import memory
        from nn_core.layers import GELU, LayerNorm, Linear, Sequential
        from nn_core.optim import AdamW
        net = Sequential(Linear(256, 1024, rng=0), GELU(), Linear(1024, 256, rng=1),
                         LayerNorm(256))
        opt = AdamW(net, lr=1e-3)
        x = np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32)
        def step():
            opt.zero_grad(); y = net(x); net.backward(y); opt.step()
        with memory.caching_allocator():
            step(); step()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):
                step()
            print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 100


def _handler():
    return np._core.multiarray.get_handler_name()


def test_worker_threads_allocate_with_the_callers_allocator():
    from nn_core import _parallel
    with _parallel.limit_threads(2), memory.caching_allocator():
        names = _parallel.run_tasks(lambda t: _handler(), 2)
    assert names == ["nn_core_caching"] * 2
    with _parallel.limit_threads(2):
        assert _parallel.run_tasks(lambda t: _handler(), 2) == ["default_allocator"] * 2


def test_trainer_fits_inside_the_caching_allocator():
    from nn_core.layers import Linear
    from nn_core.training import LambdaCallback, Trainer

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 3)), rng.standard_normal((64, 2))
    for cache, expected in ((True, "nn_core_caching"), (False, "default_allocator")):
        seen = []
        model = Linear(3, 2, dtype=np.float64, rng=0)
        hook = LambdaCallback(on_batch_end=lambda step, logs: seen.append(_handler()))
        Trainer(model, "mse", verbose=0, callbacks=[hook], cache_memory=cache).fit(
            (x, y), epochs=1, batch_size=16, seed=0)
        assert seen == [expected] * 4
        assert _handler() == "default_allocator"        # restored after fit


def test_caching_allocator_is_a_context_decorator_safe_across_threads():
    import contextlib
    import threading
    assert isinstance(memory.caching_allocator(), contextlib.ContextDecorator)
    barrier = threading.Barrier(2)
    seen = []

    @memory.caching_allocator()
    def inside():
        barrier.wait()              # both threads inside the one decorated function
        seen.append(_handler())
        barrier.wait()

    threads = [threading.Thread(target=inside) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == ["nn_core_caching"] * 2
    assert _handler() == "default_allocator"
    assert memory.caching_allocator(lambda: _handler())() == "nn_core_caching"   # bare


def test_allocation_budget_refuses_then_restores_the_handler():
    budget = memory.allocation_budget(1 << 20)
    with budget:
        small = np.ones(1 << 10)
    assert not budget.exceeded and small.sum() == 1 << 10
    try:
        with budget:
            assert _handler() == "nn_core_budget"
            np.empty(1 << 22)
    except MemoryError:
        pass
    assert budget.exceeded
    assert _handler() == "default_allocator"
    with pytest.raises(ValueError, match="nbytes"):
        memory.allocation_budget(-1)
    with budget:
        with pytest.raises(RuntimeError, match="already in use"):
            with budget:
                pass


def test_workspace_reuses_one_spare_per_name(rng):
    ws = memory.Workspace(max_bytes=1 << 16)
    a = ws.take("a", (4, 8), np.float32)
    b = ws.take("a", (4, 8), np.float32)           # a not given back yet: a new array
    assert a is not b and a.shape == (4, 8) and a.dtype == np.float32
    a[...] = rng.standard_normal(a.shape)
    ws.give("a", a)
    assert len(ws) == 1 and ws.nbytes == a.nbytes
    assert ws.take("a", (4, 8), np.float32) is a and len(ws) == 0
    ws.give("a", a)
    assert ws.take("a", (4, 8), np.float64) is not a          # dtype must fit
    ws.give("a", a)
    assert ws.take("a", (8, 4), np.float32) is not a          # shape must fit
    ws.give("big", np.empty(1 << 17, np.uint8))                # over max_bytes: not kept
    ws.give("empty", np.empty((0, 3)))
    assert ws.spares() == {}
    ws.give("a", a)
    ws.clear()
    assert len(ws) == 0 and ws.nbytes == 0


def test_the_cache_limit_follows_the_steps(rng):
    """After each step the limit is twice the largest step's working set: a run whose
    shapes vary keeps what a step reuses, not the default GiB; set_cache_limit fixes
    it, None hands it back to the steps."""
    memory.set_cache_limit(None)
    memory.release_cache()
    # arrays of cached size that earlier code keeps alive (module work buffers) count too
    alive = memory.memory_stats()["in_use_bytes"]
    try:
        with memory.caching_allocator():
            for n in (200, 50, 400, 100):                     # steps of varying shapes
                a = rng.standard_normal((n, 1000))            # n * 8 KB live at once
                b = a * 2.0
                del a, b
                limit = memory.fit_cache_to_step()
        largest = 2 * 400 * 1000 * 8 + alive
        assert 2 * largest <= limit <= 2 * 1.15 * largest + 4096
        assert memory.cache_limit() == limit < memory.DEFAULT_CACHE_LIMIT
        assert memory.memory_stats()["cached_bytes"] <= limit
        memory.set_cache_limit(123 << 20)
        assert memory.fit_cache_to_step() == 123 << 20 == memory.cache_limit()
        with pytest.raises(ValueError, match="nbytes"):
            memory.set_cache_limit(-1)
    finally:
        memory.set_cache_limit(None)
        memory.release_cache()
    assert memory.cache_limit() == memory.DEFAULT_CACHE_LIMIT
