"""asv benchmarks: multi-head / grouped-query / multi-query attention.

``common`` is imported first so that ``asv run --python=same`` finds an in-place
build.  Inputs are seeded; BLAS is pinned to
one thread through threadpoolctl when it is installed (``BLAS_THREADS`` records the
setting used).  Imports are guarded so that older commits without these modules
still load: their benchmarks are then skipped via ``NotImplementedError``.
"""
import numpy as np

from . import common  # noqa: F401  (finds an in-place build)

try:
    from nn_core.attention import GroupedQueryAttention, MultiHeadAttention, MultiQueryAttention
except ImportError:  # older commits
    MultiHeadAttention = GroupedQueryAttention = MultiQueryAttention = None

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

BLAS_THREADS = 1
DTYPES = ["float32", "float64"]


def _pin_threads():
    if threadpool_limits is not None:
        return threadpool_limits(limits=BLAS_THREADS)
    return None


def _make(variant, d_model, heads, dtype):
    if MultiHeadAttention is None:
        raise NotImplementedError("nn_core.attention multi-head modules not available")
    if variant == "mha":
        return MultiHeadAttention(d_model, heads, dtype=dtype, rng=0)
    if variant == "gqa2":
        return GroupedQueryAttention(d_model, heads, 2, dtype=dtype, rng=0)
    return MultiQueryAttention(d_model, heads, dtype=dtype, rng=0)


class SelfAttention:
    """Training step pieces: forward, forward+backward, peak memory."""

    params = (DTYPES, ["8x128x256", "4x512x512", "1x1024x512"], ["mha", "gqa2", "mqa"],
              [False, True])
    param_names = ["dtype", "BxLxd", "variant", "causal"]
    timeout = 300

    def setup(self, dtype, shape, variant, causal):
        B, L, d = (int(v) for v in shape.split("x"))
        self._limits = _pin_threads()
        self.m = _make(variant, d, 8, np.dtype(dtype))
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((B, L, d)).astype(dtype)
        self.g = rng.standard_normal((B, L, d)).astype(dtype)
        self.causal = causal

    def teardown(self, *args):
        if self._limits is not None:
            self._limits.unregister()

    def time_forward(self, *args):
        self.m(self.x, is_causal=self.causal)

    def time_forward_backward(self, *args):
        self.m(self.x, is_causal=self.causal)
        self.m.backward(self.g)

    def peakmem_forward_backward(self, *args):
        self.m(self.x, is_causal=self.causal)
        self.m.backward(self.g)


class Decode:
    """One generated token with a KV cache holding ``context`` positions."""

    params = (["float32"], [1, 8], [128, 2048], ["mha", "gqa2", "mqa"])
    param_names = ["dtype", "B", "context", "variant"]
    timeout = 300

    def setup(self, dtype, B, context, variant):
        self._limits = _pin_threads()
        self.m = _make(variant, 512, 8, np.dtype(dtype)).eval()
        rng = np.random.default_rng(0)
        self.cache = self.m.new_kv_cache(B, context + 1)
        prefill = rng.standard_normal((B, context, 512)).astype(dtype)
        for s in range(0, context, 512):
            self.m(prefill[:, s:s + 512], kv_cache=self.cache)
        self.context = context
        self.x = rng.standard_normal((B, 1, 512)).astype(dtype)

    def teardown(self, *args):
        if self._limits is not None:
            self._limits.unregister()

    def time_decode_step(self, *args):
        self.cache.length = self.context
        self.m(self.x, kv_cache=self.cache)

    def track_kv_cache_bytes(self, dtype, B, context, variant):
        return self.m.get_kv_cache_size(B, context)

    track_kv_cache_bytes.unit = "bytes"
