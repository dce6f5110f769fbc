"""Recurrent sweeps on the thread team (``base.team_threads``): the GEMM phases in
fixed pieces and the packed step loops split by hidden units give the same bits on
1, 2, 3 and 4 threads, for every cell kind, odd sizes, one or three rows, padded
lengths, both directions, stacks and bidirectional layers; they agree with the
float64 reference and torch; the entry points still check their inputs."""
import numpy as np
import pytest

from nn_core import _parallel
from nn_core._kernels import _recurrent as K
from nn_core.recurrent import (BidirectionalWrapper, StackedBidirectional, StackedLSTM,
                               base)
from recurrent_reference import reference_sequence
from test_determinism import THREADS, _assert_same_bits, _at_threads
from test_recurrent_cells import is_lstm, make_cell

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_ra"]


@pytest.fixture
def split_everything(monkeypatch):
    """Split every step loop (and every GEMM phase into pieces) whatever its size, and
    run the packed step loops, so that small shapes take the team's paths."""
    old = K._set_team_rule(1.0, 0.0)
    monkeypatch.setattr(base, "STEP_MODE", "packed")
    yield
    K._set_team_rule(*old)


def _grads(module):
    return [module.grads[k] for k in sorted(module.grads)]


def _sequence_run(cell, x, go, lengths, reverse):
    H = cell.hidden_size
    B = x.shape[1]
    gh = np.linspace(-1, 1, B * H).reshape(B, H).astype(cell.dtype)

    def run():
        cell.zero_grad()
        out, final, cache = cell.run_sequence(x, *cell.state_arrays(None, B), lengths,
                                              reverse)
        gx, dh, dc = cell.run_sequence_backward(cache, go, gh,
                                                gh if cell.has_cell_state else None)
        finals = list(final) if isinstance(final, tuple) else [final]
        return [out, *finals, gx, dh] + ([dc] if dc is not None else []) + _grads(cell)
    return run


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_sweep_same_bits_at_any_thread_count(split_everything, rng, kind, B, dtype,
                                             padded, reverse):
    T, D, H = 7, 5, 37                  # odd H: a partial last unit block
    cell = make_cell(kind, D, H, dtype=dtype, rng=rng)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    go = rng.standard_normal((T, B, H)).astype(dtype)
    lengths = None
    if padded:
        lengths = np.array([T, 2, 5][:B] if B > 1 else [4], np.int64)
    results = _at_threads(_sequence_run(cell, x, go, lengths, reverse))
    _assert_same_bits(results)


@pytest.mark.parametrize("kind", KINDS)
def test_the_split_really_runs_on_the_team(split_everything, rng, kind):
    """The kernels report the threads their job ran on: one per thread allowed, up
    to the unit blocks (and never more inside another job)."""
    T, B, D, H = 4, 3, 5, 70            # float64: 9 unit blocks of 8
    cell = make_cell(kind, D, H, dtype=np.float64, rng=rng)
    x = rng.standard_normal((T, B, D))
    h0, c0 = cell.state_arrays(None, B)
    out, final, cache = cell.run_sequence(x, h0, c0)
    sweep = K.ForwardSweep(cell._kind(), False, x=cache.x, lengths=cache.lengths,
                           W_ih=cache.W_ih, W_hh=cache.W_hh, W_hhT=cache.W_hhT,
                           gates=cache.gates, hs=cache.hs, cs=cache.cs, aux=cache.aux,
                           bx=cell._kernel_bias()[0], bhn=cell._kernel_bias()[1],
                           out=np.empty_like(out), hh=np.empty((B, cache.W_hh.shape[0])))
    with _parallel.limit_threads(3):
        assert _parallel.blas_threads() == 3          # (also sizes the team)
        assert K.rnn_forward(sweep, mode=K.STEP_MODES["packed"], threads=3) == 3
        assert K.rnn_forward(sweep, mode=K.STEP_MODES["packed"], threads=1) == 1
        nested = _parallel.run_tasks(
            lambda t: t or K.rnn_forward(sweep, mode=K.STEP_MODES["packed"], threads=3), 2)
        assert nested == [1, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_team_sweep_matches_the_reference(split_everything, rng, kind):
    T, B, D, H = 6, 3, 4, 21
    cell = make_cell(kind, D, H, dtype=np.float64, rng=rng)
    x = rng.standard_normal((T, B, D))
    lengths = np.array([6, 3, 5], np.int64)
    p = {k: v for k, v in cell.params.items()}
    h0 = rng.standard_normal((B, H))
    c0 = rng.standard_normal((B, H)) if is_lstm(kind) else None
    ref, hT, cT = reference_sequence(kind, p, x, h0, c0, lengths, reverse=True)
    with _parallel.limit_threads(3):
        out, final, _ = cell.run_sequence(x, h0, c0, lengths, reverse=True)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(final[0] if c0 is not None else final, hT, rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru", "gru_ra"])
def test_team_gradients_match_finite_differences(split_everything, rng, kind):
    from nn_core import gradcheck
    from test_recurrent_cells import Seq
    T, B, D, H = 4, 3, 3, 19
    cell = make_cell(kind, D, H, dtype=np.float64, rng=rng)
    x = rng.standard_normal((T, B, D))
    with _parallel.limit_threads(2):
        report = gradcheck(Seq(cell, reverse=True), (x, None, np.array([4, 2, 3])),
                           rng=rng)
    assert report.ok, str(report)


@pytest.mark.parametrize("mode", ["lstm", "gru_ra"])
def test_team_sweep_matches_torch(rng, mode):
    """The default rule (no forced split) at the issue's first shape, float32 (torch's
    GRU is the reset-after form)."""
    torch = pytest.importorskip("torch")
    T, B, D, H = 16, 32, 64, 256
    cell = make_cell(mode, D, H, dtype=np.float32, rng=rng)
    assert base.team_threads(cell._kind(), B, H, np.float32) is not None
    assert K.team_rule(T, B, D, H, cell._kind(), False)[2]
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    go = rng.standard_normal((T, B, H)).astype(np.float32)
    tm = (torch.nn.LSTM if mode == "lstm" else torch.nn.GRU)(D, H)
    with torch.no_grad():
        names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
        for n, k in zip(names, ["W_ih", "W_hh", "b_ih", "b_hh"]):
            getattr(tm, n).copy_(torch.from_numpy(cell.params[k]))
    xt = torch.from_numpy(x).requires_grad_(True)
    ref, _ = tm(xt)
    ref.backward(torch.from_numpy(go))
    with _parallel.limit_threads(2):
        out, _ = cell.forward_sequence(x)
        gx, _ = cell.backward_sequence(go)
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(cell.grads["W_hh"], tm.weight_hh_l0.grad.numpy(),
                               rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("layer", ["stacked", "bidirectional", "stacked_bidirectional"])
def test_layers_same_bits_at_any_thread_count(split_everything, rng, layer):
    T, B, D, H = 6, 3, 5, 23
    if layer == "stacked":
        net = StackedLSTM(D, H, 2, dtype=np.float32, rng=rng)
        F = H
    elif layer == "bidirectional":
        net = BidirectionalWrapper(make_cell("gru", D, H, dtype=np.float32, rng=rng))
        F = 2 * H
    else:
        net = StackedBidirectional("lstm", D, H, 2, dtype=np.float32, rng=rng)
        F = 2 * H
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    lengths = np.array([6, 4, 2], np.int64)

    def run():
        net.zero_grad()
        out, _ = net.forward(x, lengths=lengths)
        go = np.linspace(-1, 1, out.size).reshape(out.shape).astype(np.float32)
        gx, _ = net.backward(go)
        assert out.shape[-1] == F
        return [out, gx] + _grads(net)

    _assert_same_bits(_at_threads(run))


def test_the_pieces_depend_on_the_shape_only():
    rule = K.team_rule(64, 32, 256, 256, K.LSTM, False)
    for n in THREADS:
        with _parallel.limit_threads(n):
            assert K.team_rule(64, 32, 256, 256, K.LSTM, False) == rule
    assert rule[0] > 1 and rule[1] > 1 and rule[2]
    assert K.team_rule(3, 1, 2, 4, K.LSTM, False) == (1, 1, False)
    assert not K.team_rule(64, 32, 256, 256, K.LSTM, False, K.STEP_MODES["blas"])[2]


@pytest.mark.parametrize("threads", [0, -2])
def test_the_entry_points_check_threads(rng, threads):
    cell = make_cell("lstm", 3, 4, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 1, 3))
    out, final, cache = cell.run_sequence(x, *cell.state_arrays(None, 1))
    bx, bhn = cell._kernel_bias()
    sweep = K.ForwardSweep(cell._kind(), False, x=cache.x, lengths=cache.lengths,
                           W_ih=cache.W_ih, W_hh=cache.W_hh, W_hhT=cache.W_hhT,
                           gates=cache.gates, hs=cache.hs, cs=cache.cs, aux=cache.aux,
                           bx=bx, bhn=bhn, out=np.empty_like(out), hh=np.empty((1, 16)))
    with pytest.raises(ValueError, match="threads must be >= 1"):
        K.rnn_forward(sweep, threads=threads)
    with pytest.raises(ValueError, match="not initialised"):
        K.rnn_backward(K.BackwardSweep.__new__(K.BackwardSweep), threads=2)
    with pytest.raises(ValueError, match="range must satisfy"):
        K.rnn_forward(sweep, K.PHASE_STEPS, 0, 5, threads=2)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_ctrl_c_stops_a_split_sweep(cell, direction):
    """SIGINT during a long sweep whose step loop is split over two threads: every
    thread leaves at the same step (none waits at a barrier the others left) and the
    sweep raises KeyboardInterrupt; the cell works afterwards.  In a subprocess: the
    signal must reach a main thread."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent(f"""
        import os, signal, threading
        import numpy as np
        from nn_core import _parallel
        from nn_core._kernels import _recurrent as K
        from nn_core.recurrent import {cell}, base
        K._set_team_rule(1.0, 0.0)
        base.STEP_MODE = "packed"
        c = {cell}(8, 40, rng=0)
        T = 200_000
        x = np.random.default_rng(0).standard_normal((T, 2, 8)).astype(np.float32)
        with _parallel.limit_threads(2):
            try:
                if "{direction}" == "backward":
                    out, _ = c.forward_sequence(x)
                threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
                if "{direction}" == "backward":
                    c.backward_sequence(np.ones_like(out))
                else:
                    c.forward_sequence(x)
                print("finished")
            except KeyboardInterrupt:
                print("interrupted")
            c.reset()
            out, _ = c.forward_sequence(x[:50])
        print(out.shape)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["interrupted", "(50,", "2,", "40)"], res.stdout
