"""``nn_core.enable_backward()``: backward through modules in eval(), dropout still off."""
import threading

import numpy as np
import pytest

import nn_core
from nn_core import enable_backward, inference_mode
from nn_core.attention import MultiHeadAttention
from nn_core.layers import Linear
from nn_core.recurrent import BidirectionalGRU, LSTMCell, StackedLSTM
from nn_core.transformer import TransformerEncoderLayer

F64 = dict(dtype=np.float64)


def _encoder(dropout=0.3, rng=0):
    return TransformerEncoderLayer(8, 2, 12, dropout=dropout, rng=rng, **F64)


def test_eval_without_it_keeps_nothing_and_backward_raises(rng):
    lin = Linear(4, 3, rng=0, **F64).eval()
    y = lin(rng.standard_normal((2, 4)))
    assert lin.num_pending == 0
    with pytest.raises(RuntimeError, match="enable_backward"):
        lin.backward(np.ones_like(y))


def test_eval_inside_keeps_the_cache_and_gives_the_training_gradients(rng):
    x, g = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    trained = Linear(4, 3, rng=0, **F64)
    trained(x)
    want = trained.backward(g)
    lin = Linear(4, 3, rng=0, **F64).eval()
    with enable_backward():
        lin(x)
    assert lin.num_pending == 1
    np.testing.assert_array_equal(lin.backward(g), want)     # backward outside the block
    for k, v in trained.gradients().items():
        np.testing.assert_array_equal(lin.gradients()[k], v, err_msg=k)


def test_nesting_innermost_wins(rng):
    lin = Linear(4, 3, rng=0, **F64).eval()
    x = rng.standard_normal((2, 4))
    with enable_backward():
        assert nn_core.is_backward_enabled() and not nn_core.is_inference_mode()
        with inference_mode():
            assert nn_core.is_inference_mode() and not nn_core.is_backward_enabled()
            lin(x)
            assert lin.num_pending == 0
            with enable_backward():
                lin(x)
                assert lin.num_pending == 1
            lin.clear_pending()
            with inference_mode(False):          # the default rule: eval keeps nothing
                lin(x)
                assert lin.num_pending == 0
        lin(x)                                   # the outer block is back
        assert lin.num_pending == 1
    assert not nn_core.is_backward_enabled() and not nn_core.is_inference_mode()
    lin.train()
    with inference_mode():
        with enable_backward():
            lin(x)
        lin(x)
    assert lin.num_pending == 0                  # the last forward ran in inference mode
    with pytest.raises(RuntimeError, match="inference_mode"):
        lin.backward(np.ones((2, 3)))


def test_mode_is_restored_after_an_exception():
    with pytest.raises(ValueError):
        with enable_backward():
            raise ValueError("x")
    assert not nn_core.is_backward_enabled()


def test_per_thread(rng):
    """Another thread keeps its own mode while this one is inside the block."""
    inside, checked = threading.Event(), threading.Event()
    seen = []
    other_model = Linear(4, 3, rng=1, **F64).eval()

    def other():
        inside.wait()
        other_model(rng.standard_normal((2, 4)))
        seen.append((nn_core.is_backward_enabled(), other_model.num_pending))
        checked.set()

    t = threading.Thread(target=other)
    t.start()
    with enable_backward():
        inside.set()
        checked.wait()
    t.join()
    assert seen == [(False, 0)]


def test_decorator_forms(rng):
    lin = Linear(4, 3, rng=0, **F64).eval()

    @enable_backward
    def bare(x):
        """Doc."""
        return lin(x), nn_core.is_backward_enabled()

    @enable_backward()
    def called(x):
        return lin(x), nn_core.is_backward_enabled()

    x = rng.standard_normal((2, 4))
    for fn in (bare, called):
        y, on = fn(x)
        assert on and not nn_core.is_backward_enabled()
        assert lin.backward(np.ones_like(y)).shape == x.shape
    assert bare.__name__ == "bare" and bare.__doc__ == "Doc."


def test_one_decorated_function_on_two_threads():
    """One decorator instance entered on two threads at once restores each thread's mode."""
    barrier = threading.Barrier(2)
    seen = []

    @enable_backward()
    def work(outer_inference):
        barrier.wait()
        return nn_core.is_backward_enabled()

    def run(outer_inference):
        if outer_inference:
            with inference_mode():
                seen.append((work(True), nn_core.is_inference_mode()))
        else:
            seen.append((work(False), nn_core.is_inference_mode()))

    threads = [threading.Thread(target=run, args=(flag,)) for flag in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == [(True, False), (True, True)]


def test_recurrent_step_api_in_eval(rng):
    cell = LSTMCell(3, 4, rng=0, **F64).eval()
    x = rng.standard_normal((3, 2, 3))
    state = None
    for t in range(3):
        state = cell(x[t], state)
    assert cell.num_pending == 0
    with enable_backward():
        for t in range(3):
            state = cell(x[t], state)
    assert cell.num_pending == 3
    grad_x, grad_h, grad_c = cell.backward(np.ones((2, 4)), np.zeros((2, 4)))
    assert grad_x.shape == (2, 3) and cell.num_pending == 2
    cell.clear_pending()                         # drops the pushed steps too
    assert cell.num_pending == 0
    with pytest.raises(RuntimeError):
        cell.backward(np.ones((2, 4)), np.zeros((2, 4)))
    cell(x[0])                                   # eval alone: the error says what to do
    with pytest.raises(RuntimeError, match="enable_backward"):
        cell.backward(np.ones((2, 4)), np.zeros((2, 4)))


def test_encoder_dropout_still_follows_train_and_eval(rng):
    x = rng.standard_normal((2, 5, 8))
    m = _encoder().eval()
    with inference_mode():
        want = m(x)
    with enable_backward():
        y = m(x)
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)   # dropout off in eval
    m.train()
    with enable_backward():
        y_train = m(x)
    assert np.abs(y_train - want).max() > 1e-3                     # dropout on in train


def test_encoder_gradcheck_in_eval(rng):
    m = _encoder().eval()
    x = rng.standard_normal((2, 4, 8))
    mask = np.array([[True] * 4, [True, True, True, False]])[:, None, None, :]
    with pytest.raises(RuntimeError, match="enable_backward"):   # eval alone: no backward
        nn_core.gradcheck(m, (x, mask))
    with enable_backward():
        rep = nn_core.gradcheck(m, (x, mask), rng=rng)
    assert rep.ok, str(rep)
    assert "input[0]" in rep.entries and "self_attn.W_q" in rep.entries
    assert m.num_pending == 0 and not m.training


@pytest.mark.parametrize("make, inputs", [
    (lambda: MultiHeadAttention(8, 2, dropout=0.4, rng=0, **F64), lambda r: (r((2, 4, 8)),)),
    (lambda: StackedLSTM(3, 4, 2, dropout=0.5, rng=0, **F64), lambda r: (r((4, 2, 3)),)),
    (lambda: BidirectionalGRU(3, 4, rng=0, **F64), lambda r: (r((4, 2, 3)),)),
], ids=["mha", "stacked_lstm", "bigru"])
def test_attention_and_recurrent_gradcheck_in_eval(rng, make, inputs):
    m = make().eval()
    x = inputs(rng.standard_normal)
    with pytest.raises(RuntimeError):            # eval alone: no backward
        nn_core.gradcheck(m, x)
    with enable_backward():
        rep = nn_core.gradcheck(m, x, rng=rng)
    assert rep.ok, str(rep)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_matches_torch_in_eval(rng, norm_first):
    torch = pytest.importorskip("torch")
    from nn_core.interop import load_torch_state_dict, to_torch_state_dict

    theirs = torch.nn.TransformerEncoderLayer(8, 2, 12, dropout=0.3, batch_first=True,
                                              norm_first=norm_first,
                                              dtype=torch.float64).eval()
    ours = TransformerEncoderLayer(8, 2, 12, dropout=0.3, norm_first=norm_first, rng=1,
                                   **F64).eval()
    load_torch_state_dict(ours, theirs.state_dict())
    x = rng.standard_normal((3, 5, 8))
    g = rng.standard_normal((3, 5, 8))
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    ty.backward(torch.tensor(g))
    with enable_backward():
        y = ours(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.backward(g), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    _assert_param_grads_match(ours, theirs, to_torch_state_dict)


def test_stacked_lstm_matches_torch_in_eval(rng):
    torch = pytest.importorskip("torch")
    from nn_core.interop import load_torch_state_dict, to_torch_state_dict

    theirs = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5, dtype=torch.float64).eval()
    ours = StackedLSTM(3, 4, 2, dropout=0.5, rng=1, **F64).eval()
    load_torch_state_dict(ours, theirs.state_dict())
    x, g = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 2, 4))
    tx = torch.tensor(x, requires_grad=True)
    ty, _ = theirs(tx)
    ty.backward(torch.tensor(g))
    with enable_backward():
        y, _ = ours(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    grad_x, _ = ours.backward(g)
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    _assert_param_grads_match(ours, theirs, to_torch_state_dict)


def _assert_param_grads_match(ours, theirs, to_torch_state_dict):
    """Our parameter gradients, exported in torch's layout, equal torch's ``.grad``."""
    import copy
    view = copy.deepcopy(ours)
    for src, dst in zip(ours.modules(), view.modules()):
        dst.params.update(src.grads)
    want = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
    got = to_torch_state_dict(view)
    assert set(got) == set(want)
    for k, v in got.items():
        np.testing.assert_allclose(v, want[k], rtol=1e-10, atol=1e-12, err_msg=k)
