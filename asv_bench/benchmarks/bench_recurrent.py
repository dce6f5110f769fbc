"""asv benchmarks: recurrent cells and StackedLSTM, forward and forward+backward.

Parameters: cell x shape x dtype.  ``common`` is imported first for its BLAS pinning
and so that ``asv run --python=same`` finds an in-place build.  BLAS is pinned
to one thread when threadpoolctl is installed (``bench`` extra); the setting is
recorded in ``blas_threads`` so results from different runs can be compared.
Imports are guarded so that commits without ``nn_core.recurrent`` still load.
"""
import numpy as np

from . import common  # noqa: F401  (BLAS pinning; finds an in-place build)

try:
    from nn_core.recurrent import GRUCell, LSTMCell, RNNCell, StackedLSTM
except ImportError:  # older commits
    GRUCell = LSTMCell = RNNCell = StackedLSTM = None

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

SHAPES = {
    "S": (32, 16, 64, 64),
    "M": (64, 32, 256, 256),
    "L": (128, 64, 512, 512),
    "latency": (100, 1, 128, 128),
}
BLAS_THREADS = 1


def _make(cell, D, H, dtype):
    if cell == "rnn":
        return RNNCell(D, H, dtype=dtype, rng=0)
    if cell == "gru":
        return GRUCell(D, H, reset_after=True, dtype=dtype, rng=0)
    if cell == "gru_paper":
        return GRUCell(D, H, reset_after=False, dtype=dtype, rng=0)
    if cell == "lstm":
        return LSTMCell(D, H, dtype=dtype, rng=0)
    return StackedLSTM(D, H, 2, dtype=dtype, rng=0)


class RecurrentSuite:
    params = (["rnn", "gru", "gru_paper", "lstm", "lstm2"], list(SHAPES),
              ["float32", "float64"])
    param_names = ["cell", "shape", "dtype"]
    timeout = 300

    def setup(self, cell, shape, dtype):
        if RNNCell is None:
            raise NotImplementedError("nn_core.recurrent not available")
        self._limits = threadpool_limits(BLAS_THREADS) if threadpool_limits else None
        T, B, D, H = SHAPES[shape]
        dt = np.dtype(dtype)
        rng = np.random.default_rng(0)
        self.m = _make(cell, D, H, dt)
        self.stacked = cell == "lstm2"
        self.x = rng.standard_normal((T, B, D)).astype(dt)
        self.go = rng.standard_normal((T, B, H)).astype(dt)
        self.lengths = rng.integers(1, T + 1, B)
        self.lengths[0] = T

    def teardown(self, cell, shape, dtype):
        if getattr(self, "_limits", None) is not None:     # setup may have skipped
            self._limits.restore_original_limits()

    def _fwd(self, lengths=None):
        if self.stacked:
            return self.m(self.x, None, lengths)
        return self.m.forward_sequence(self.x, None, lengths)

    def _bwd(self):
        if self.stacked:
            return self.m.backward(self.go)
        return self.m.backward_sequence(self.go)

    def time_forward(self, cell, shape, dtype):
        self._fwd()

    def time_forward_backward(self, cell, shape, dtype):
        self._fwd()
        self._bwd()

    def time_forward_backward_lengths(self, cell, shape, dtype):
        self._fwd(self.lengths)
        self._bwd()

    def peakmem_forward_backward(self, cell, shape, dtype):
        self._fwd()
        self._bwd()

    def track_blas_threads(self, cell, shape, dtype):
        return BLAS_THREADS


class StepLoopSuite:
    """The one-step API looped over time (Python per step) vs one sequence call."""

    params = (["lstm", "gru"], ["S", "latency"])
    param_names = ["cell", "shape"]

    def setup(self, cell, shape):
        if RNNCell is None:
            raise NotImplementedError("nn_core.recurrent not available")
        T, B, D, H = SHAPES[shape]
        self.m = _make(cell, D, H, np.float32)
        self.x = np.random.default_rng(0).standard_normal((T, B, D)).astype(np.float32)

    def time_step_loop_forward(self, cell, shape):
        state = None
        for t in range(self.x.shape[0]):
            state = self.m.forward(self.x[t], state)
        self.m.reset()

    def time_sequence_forward(self, cell, shape):
        self.m.forward_sequence(self.x)


try:
    from nn_core.recurrent import base as _threads          # row-split switch
    _threads.ROW_SPLIT
except (ImportError, AttributeError):
    _threads = None


class TwoThreadSweepSuite:
    """One LSTM/GRU sweep over B = 64 rows (T=64, D=H=256) with two threads: the
    batch-row split (two half batches, BLAS on one thread each; ``split``) against one
    step loop whose GEMMs use two BLAS threads (``blas2``).  On a one-core machine
    both modes run the same single-thread code."""

    params = (["gru", "lstm"], ["float32", "float64"], ["split", "blas2"])
    param_names = ["cell", "dtype", "mode"]
    timeout = 300

    def setup(self, cell, dtype, mode):
        if _threads is None:
            raise NotImplementedError("the row-split switch is not available")
        self._limits = threadpool_limits(2) if threadpool_limits else None
        self._saved = _threads.ROW_SPLIT
        _threads.ROW_SPLIT = mode == "split"
        dt = np.dtype(dtype)
        rng = np.random.default_rng(0)
        self.m = _make(cell, 256, 256, dt)
        self.x = rng.standard_normal((64, 64, 256)).astype(dt)
        self.go = rng.standard_normal((64, 64, 256)).astype(dt)

    def teardown(self, cell, dtype, mode):
        _threads.ROW_SPLIT = self._saved
        if getattr(self, "_limits", None) is not None:     # setup may have skipped
            self._limits.restore_original_limits()

    def time_forward_backward(self, cell, dtype, mode):
        self.m.forward_sequence(self.x)
        self.m.backward_sequence(self.go)


class PaddedSweepSuite:
    """A padded batch (lengths uniform in [T/10, T]) against the same batch at full
    length: with sweeps that skip padding the ratio follows ``sum(lengths) / (B T)``
    (``python -m nn_core.bench recurrent --lengths uniform`` prints it beside torch)."""

    params = (["rnn", "gru", "lstm", "bilstm"], ["float32", "float64"], ["uniform", "full"])
    param_names = ["cell", "dtype", "lengths"]
    timeout = 600
    T, B, D, H = 200, 64, 256, 256

    def setup(self, cell, dtype, lengths):
        if RNNCell is None:
            raise NotImplementedError("nn_core.recurrent not available")
        from nn_core.recurrent import BidirectionalWrapper

        self._limits = threadpool_limits(BLAS_THREADS) if threadpool_limits else None
        dt = np.dtype(dtype)
        rng = np.random.default_rng(0)
        self.bi = cell == "bilstm"
        self.m = (BidirectionalWrapper(LSTMCell(self.D, self.H, dtype=dt, rng=0),
                                       LSTMCell(self.D, self.H, dtype=dt, rng=1),
                                       concurrent=False)
                  if self.bi else _make(cell, self.D, self.H, dt))
        self.lengths = (rng.integers(self.T // 10, self.T + 1, self.B)
                        if lengths == "uniform" else None)
        self.x = rng.standard_normal((self.T, self.B, self.D)).astype(dt)
        self.go = rng.standard_normal(
            (self.T, self.B, 2 * self.H if self.bi else self.H)).astype(dt)

    def teardown(self, cell, dtype, lengths):
        if getattr(self, "_limits", None) is not None:
            self._limits.restore_original_limits()

    def time_forward_backward(self, cell, dtype, lengths):
        if self.bi:
            self.m(self.x, lengths=self.lengths)
            self.m.backward(self.go)
        else:
            self.m.forward_sequence(self.x, None, self.lengths)
            self.m.backward_sequence(self.go)

    def track_fill(self, cell, dtype, lengths):
        """``sum(lengths) / (B T)``: the share of real steps."""
        return 1.0 if self.lengths is None else float(self.lengths.sum() / (self.B * self.T))
