"""The NumPy memory handlers of ``nn_core._kernels._alloc``."""
import threading

import numpy as np
import pytest

from nn_core._kernels import _alloc


@pytest.fixture
def handler():
    """Restore this thread's handler whatever the test installs."""
    old = _alloc.get_handler()
    yield
    _alloc.set_handler(old)


def test_caching_reuses_freed_blocks(handler, rng):
    _alloc.set_handler(_alloc.CACHING)
    n = _alloc.MIN_CACHED_BYTES // 8 * 3
    a = rng.standard_normal(n)
    before = _alloc.cache_stats()
    del a
    b = np.empty(n)
    after = _alloc.cache_stats()
    assert after["hits"] == before["hits"] + 1
    assert b.ctypes.data % 64 == 0
    z = np.zeros(n)                          # calloc from the cache is zeroed
    assert not z.any()
    c = np.resize(rng.standard_normal(n), 2 * n)     # realloc keeps the data
    np.testing.assert_array_equal(c[:n], c[n:])


def test_cache_limit_and_release(handler):
    _alloc.set_handler(_alloc.CACHING)
    _alloc.release_cache()
    old = _alloc.cache_stats()["limit_bytes"]
    try:
        _alloc.set_cache_limit(0)
        a = np.empty(_alloc.MIN_CACHED_BYTES)
        released = _alloc.cache_stats()["released"]
        del a
        assert _alloc.cache_stats()["released"] == released + 1
        assert _alloc.cache_stats()["cached_bytes"] == 0
    finally:
        _alloc.set_cache_limit(old)
    a = np.empty(_alloc.MIN_CACHED_BYTES)
    del a
    assert _alloc.cache_stats()["cached_bytes"] > 0
    assert _alloc.release_cache() > 0
    assert _alloc.cache_stats()["cached_bytes"] == 0


def test_budget_refuses_then_recovers(handler):
    h = _alloc.budget_handler(10_000_000)
    _alloc.set_handler(h)
    x = np.ones(1_000_000)                   # 8 MB of 10
    with pytest.raises(MemoryError):
        np.ones(1_000_000)
    assert _alloc.budget_exceeded(h)
    del x                                    # frees give the budget back
    y = np.ones(1_000_000)
    assert y.sum() == 1_000_000


def test_handlers_are_per_thread(handler):
    _alloc.set_handler(_alloc.budget_handler(1000))
    seen = []
    t = threading.Thread(target=lambda: seen.append(np.ones(100_000).sum()))
    t.start()
    t.join()
    assert seen == [100_000]                 # the other thread has the default handler
    with pytest.raises(MemoryError):
        np.ones(100_000)
