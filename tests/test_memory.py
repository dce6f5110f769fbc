"""nn_core.memory: the caching allocator around training steps."""
import subprocess
import sys
import textwrap

import numpy as np

from nn_core import memory


def test_reuse_nesting_and_decorator():
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
    old = memory.cache_limit()
    try:
        memory.set_cache_limit(1234)
        assert memory.cache_limit() == 1234
    finally:
        memory.set_cache_limit(old)


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
