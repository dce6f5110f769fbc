"""The sweep objects of the sequence kernels (``nn_core._kernels._recurrent``) validate
every buffer before any ``nogil`` code runs: a wrong call raises, never crashes."""
import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nn_core._kernels import _recurrent as K

from test_recurrent_threads import _backward_args, _forward_args

T, B, D, H = 3, 4, 2, 3


@pytest.fixture
def fw(rng):
    return _forward_args(rng, "lstm", T, B, D, H, np.full(B, T, np.int64), False)


@pytest.mark.parametrize("name, bad", [
    ("W_ih", np.zeros((12, 3))), ("W_hh", np.zeros((12, 4))), ("W_hhT", np.zeros((12, 3))),
    ("lengths", np.full(3, 3, np.int64)), ("gates", np.zeros((3, 4, 11))),
    ("hs", np.zeros((3, 4, 3))), ("cs", np.zeros((4, 4, 2))), ("aux", np.zeros((3, 3, 3))),
    ("bx", np.zeros(11)), ("out", np.zeros((3, 4, 2))), ("hh", np.zeros((4, 13))),
])
def test_forward_sweep_checks_shapes(fw, name, bad):
    fw[name] = bad
    with pytest.raises(ValueError, match=f"{name} must have shape"):
        K.ForwardSweep(**fw)


@pytest.mark.parametrize("name", ["gates", "hs", "cs", "aux", "out", "hh"])
def test_forward_sweep_refuses_read_only_outputs(fw, name):
    fw[name].setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        K.ForwardSweep(**fw)


def test_forward_sweep_checks_dtype_layout_and_lengths(fw):
    with pytest.raises(TypeError, match="float32 or float64"):
        K.ForwardSweep(**dict(fw, x=fw["x"].astype(np.int64)))
    with pytest.raises(ValueError, match="dtype mismatch"):
        K.ForwardSweep(**dict(fw, W_hh=fw["W_hh"].astype(np.float32)))
    with pytest.raises(ValueError, match="contiguous"):
        K.ForwardSweep(**dict(fw, W_ih=np.asfortranarray(fw["W_ih"])))
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="1 <= lengths"):
            K.ForwardSweep(**dict(fw, lengths=np.array([T, bad, T, T], np.int64)))
    with pytest.raises(ValueError, match="kind"):
        K.ForwardSweep(**dict(fw, kind=5))
    with pytest.raises(ValueError, match="empty"):
        K.ForwardSweep(**dict(fw, x=np.zeros((T, B, 0))))
    with pytest.raises(TypeError):
        K.rnn_forward(object())


def test_backward_sweep_checks(fw, rng):
    K.rnn_forward(K.ForwardSweep(**fw))
    g = _backward_args(rng, fw)
    K.BackwardSweep(**g)
    for name in ("dh", "dc", "grad_x", "grad_W_ih", "grad_W_hh", "grad_b_ih", "dGs",
                 "grad_out"):
        bad = dict(g, **{name: np.zeros(g[name].shape[:-1] + (g[name].shape[-1] + 1,))})
        with pytest.raises(ValueError, match=f"{name} must have shape"):
            K.BackwardSweep(**bad)
    with pytest.raises(ValueError, match="both"):
        K.BackwardSweep(**dict(g, grad_b_hh=None))
    with pytest.raises(ValueError, match="both"):
        K.BackwardSweep(**dict(g, gw=None))
    with pytest.raises(ValueError, match="forward direction"):
        K.BackwardSweep(**dict(g, reverse=True, dGt=np.empty_like(g["dGs"])))
    with pytest.raises(ValueError, match="separate buffer"):
        K.BackwardSweep(**dict(g, reverse=True, xh=None, gw=None))
    with pytest.raises(TypeError):
        K.rnn_backward(K.ForwardSweep(**fw))


def test_a_sweep_keeps_its_buffers_alive(rng):
    """The sweep holds every buffer it points to: dropping the caller's references
    before running it is safe."""
    a = _forward_args(rng, "gru", T, B, D, H, np.full(B, T, np.int64), True)
    want = dict(a)
    K.rnn_forward(K.ForwardSweep(**want))
    b = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in a.items()}
    b["hs"][1:] = 0
    sweep = K.ForwardSweep(**b)
    hs = b["hs"]
    del b
    gc.collect()
    K.rnn_forward(sweep)
    np.testing.assert_allclose(hs, want["hs"], rtol=1e-13)


def test_an_uninitialised_sweep_raises():
    with pytest.raises(ValueError, match="not initialised"):
        K.rnn_forward(K.ForwardSweep.__new__(K.ForwardSweep))
    with pytest.raises(ValueError, match="not initialised"):
        K.rnn_backward(K.BackwardSweep.__new__(K.BackwardSweep))


def test_a_failed_reinit_leaves_the_sweep_unusable(fw):
    sweep = K.ForwardSweep(**fw)
    with pytest.raises(ValueError):
        sweep.__init__(**dict(fw, out=np.zeros((1, 1, 1))))
    with pytest.raises(ValueError, match="not initialised"):
        K.rnn_forward(sweep)


@pytest.mark.parametrize("name", ["lengths", "W_ih", "hs", "gates", "bx", "out", "hh"])
def test_a_missing_buffer_raises(fw, name):
    with pytest.raises(ValueError, match=f"{name} is required"):
        K.ForwardSweep(**dict(fw, **{name: None}))


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "blas"])
def test_ctrl_c_stops_a_long_sweep(cell, packed):
    """SIGINT during a million-step compiled sweep raises KeyboardInterrupt from the
    sweep (its loops check every 256 steps) instead of after the whole sequence; the
    cell works afterwards.  In a subprocess: the signal must reach a main thread."""
    code = textwrap.dedent(f"""
        import os, signal, threading, traceback
        import numpy as np
        from nn_core.recurrent import {cell}, base
        base.STEP_MODE = {"'packed'" if packed else "'blas'"}
        c = {cell}(16, 16, rng=0)
        x = np.random.default_rng(0).standard_normal((1_000_000, 1, 16)).astype(np.float32)
        try:
            threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            c.forward_sequence(x)
            print("finished")
        except KeyboardInterrupt as exc:     # raised by the sweep, not after it returned
            where = traceback.extract_tb(exc.__traceback__)[-1].line
            print("interrupted" if "nn_stop_raise" in where else "late:" + where)
        out, _ = c.forward_sequence(x[:50])
        print(out.shape)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["interrupted", "(50,", "1,", "16)"], res.stdout


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_ctrl_c_stops_both_halves_of_a_split_sweep(direction):
    """With two BLAS threads and 64 rows the sweep runs as two half batches, one on a
    worker thread, which cannot run signal handlers: the main thread's half cancels it,
    so SIGINT (sent 30 % into the call) ends the whole call within a few hundred steps
    (under 15 % of the call, where the worker used to run to its end), as
    KeyboardInterrupt; the cell works afterwards."""
    code = textwrap.dedent(f"""
        import os, signal, threading, time
        import numpy as np
        from nn_core import _parallel
        from nn_core.recurrent import GRUCell, base
        _parallel.limit_threads(2)
        c = GRUCell(1, 64, rng=0)                  # one input: the step loops dominate
        T, B = 5000, 64
        assert base.row_halves(B) is not None, "no split"
        x = np.random.default_rng(0).standard_normal((T, B, 1)).astype(np.float32)
        g = np.random.default_rng(1).standard_normal((T, B, 64)).astype(np.float32)
        def prepare():
            if "{direction}" == "backward":
                c.forward_sequence(x)
        def call():
            if "{direction}" == "forward":
                c.forward_sequence(x)
                c.clear_pending()
            else:
                c.backward_sequence(g)
        prepare(); call(); prepare()                # warm: buffers allocated
        t0 = time.perf_counter(); call(); whole = time.perf_counter() - t0
        prepare()
        threading.Timer(0.3 * whole, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.perf_counter()
        try:
            call()
            print("finished")
        except KeyboardInterrupt:
            late = (time.perf_counter() - t0) / whole - 0.3
            print("interrupted", "soon" if late < 0.15 else f"late:{{late:.2f}}")
        c.clear_pending()
        out, _ = c.forward_sequence(x[:50])
        print(out.shape)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    if "no split" in res.stderr:
        pytest.skip("the split path needs two cores")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["interrupted", "soon", "(50,", "64,", "64)"], res.stdout
