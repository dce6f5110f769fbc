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
def test_a_cancelled_sweep_off_the_main_thread_stops(direction, rng):
    """The worker half of a split sweep cannot run signal handlers; the main thread's
    half cancels it (``cancel_sweeps``), and a sweep on another thread then stops at its
    next step with KeyboardInterrupt instead of running to its end.  The main thread's
    own sweeps ignore the flag (they run the handlers); cleared, everything runs."""
    import threading
    from nn_core.recurrent import GRUCell
    c = GRUCell(3, 8, rng=0)
    x = rng.standard_normal((200, 4, 3)).astype(np.float32)
    g = rng.standard_normal((200, 4, 8)).astype(np.float32)

    def call():
        if direction == "forward":
            out = c.forward_sequence(x)[0]
            c.clear_pending()
            return out
        c.forward_sequence(x)
        return c.backward_sequence(g)[0]

    def on_thread():
        box = {}
        def run():
            try:
                box["out"] = call()
            except BaseException as exc:           # noqa: BLE001 - the thread's outcome
                box["exc"] = exc
        t = threading.Thread(target=run)
        t.start()
        t.join(120)
        return box

    expected = call()
    K.cancel_sweeps(True)
    try:
        box = on_thread()
        np.testing.assert_array_equal(call(), expected)      # main thread: not cancelled
    finally:
        K.cancel_sweeps(False)
    assert isinstance(box.get("exc"), KeyboardInterrupt), box
    assert "cancelled" in str(box["exc"])
    c.clear_pending()
    np.testing.assert_array_equal(on_thread()["out"], expected)


def test_run_tasks_cancels_the_others_when_the_calling_thread_fails():
    """``run_tasks(cancel=)``: when the calling thread's task raises (a Ctrl-C in its
    sweep), ``cancel(True)`` lets the pool's tasks stop, every task is still waited
    for, ``cancel(False)`` follows, and the calling thread's error is raised."""
    import threading
    from nn_core import _parallel
    calls, stop, seen = [], threading.Event(), []

    def cancel(on):
        calls.append(on)
        if on:
            stop.set()

    def work(t):
        if t == 0:
            raise KeyboardInterrupt("main half")
        seen.append(stop.wait(120))                  # stops only when cancelled

    with _parallel.limit_threads(2):
        with pytest.raises(KeyboardInterrupt, match="main half"):
            _parallel.run_tasks(work, 2, cancel=cancel)
    assert calls == [True, False] and seen == [True]
