"""Parity with torch.nn.TransformerEncoderLayer / DecoderLayer, Linear, LayerNorm, Embedding
(forward, backward and state-dict interop)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nn_core.attention import create_padding_mask  # noqa: E402
from nn_core.interop import load_torch_state_dict, to_torch_state_dict  # noqa: E402
from nn_core.layers import Embedding, LayerNorm, Linear  # noqa: E402
from nn_core.transformer import TransformerDecoderLayer, TransformerEncoderLayer  # noqa: E402

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}
TDT = {np.float64: torch.float64, np.float32: torch.float32}


def _compare(ours, theirs, inputs, dtype, rng, their_kwargs=None, our_kwargs=None):
    tin = [torch.tensor(a, dtype=TDT[dtype], requires_grad=True) for a in inputs]
    ty = theirs(*tin, **(their_kwargs or {}))
    y = ours(*[a.astype(dtype) for a in inputs], **(our_kwargs or {}))
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[dtype])
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g, dtype=TDT[dtype]))
    grads = ours.backward(g.astype(dtype))
    grads = grads if isinstance(grads, tuple) else (grads,)
    for ga, t in zip(grads, tin):
        np.testing.assert_allclose(ga, t.grad.numpy(), **TOL[dtype])
    theirs_grads = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
    ours_grads = to_torch_state_dict(_GradView(ours))
    for k, v in ours_grads.items():
        np.testing.assert_allclose(v, theirs_grads[k], err_msg=k, **TOL[dtype])


class _GradView:
    """A module whose params are another module's grads (to export them in torch layout)."""

    def __new__(cls, module):
        import copy
        clone = copy.deepcopy(module)
        for m_src, m_dst in zip(module.modules(), clone.modules()):
            for k in m_dst.params:
                m_dst.params[k] = m_src.grads[k]
        return clone


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(rng, dtype, norm_first, activation):
    theirs = torch.nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=activation,
                                              norm_first=norm_first, batch_first=True,
                                              dtype=TDT[dtype])
    ours = TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=activation,
                                   norm_first=norm_first, dtype=dtype)
    load_torch_state_dict(ours, theirs.state_dict())
    lengths = np.array([6, 4, 1])
    pad = torch.tensor(np.arange(6)[None, :] >= lengths[:, None])   # torch: True = ignore
    _compare(ours, theirs, (rng.standard_normal((3, 6, 16)),), dtype, rng,
             their_kwargs=dict(src_key_padding_mask=pad),
             our_kwargs=dict(mask=create_padding_mask(lengths, 6)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(rng, dtype, norm_first):
    theirs = torch.nn.TransformerDecoderLayer(16, 4, 24, dropout=0.0, activation="gelu",
                                              norm_first=norm_first, batch_first=True,
                                              dtype=TDT[dtype])
    ours = TransformerDecoderLayer(16, 4, 24, dropout=0.0, activation="gelu",
                                   norm_first=norm_first, dtype=dtype)
    load_torch_state_dict(ours, theirs.state_dict())
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=TDT[dtype])
    _compare(ours, theirs, (rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 7, 16))),
             dtype, rng, their_kwargs=dict(tgt_mask=causal, tgt_is_causal=True))


def test_decoder_only_layer_loads_an_encoder_layer(rng):
    """A GPT block (decoder layer without cross-attention) is torch's encoder layer
    with a causal mask."""
    theirs = torch.nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, norm_first=True,
                                              batch_first=True, dtype=torch.float64)
    ours = TransformerDecoderLayer(8, 2, 12, dropout=0.0, norm_first=True,
                                   cross_attention=False, dtype=np.float64)
    load_torch_state_dict(ours, theirs.state_dict())
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    _compare(ours, theirs, (rng.standard_normal((2, 5, 8)),), np.float64, rng,
             their_kwargs=dict(src_mask=causal, is_causal=True))


@pytest.mark.parametrize("make, theirs", [
    (lambda dt: Linear(5, 3, dtype=dt), lambda: torch.nn.Linear(5, 3)),
    (lambda dt: Linear(5, 3, bias=False, dtype=dt), lambda: torch.nn.Linear(5, 3, bias=False)),
    (lambda dt: LayerNorm(5, dtype=dt), lambda: torch.nn.LayerNorm(5)),
])
def test_layers_round_trip_and_match(rng, make, theirs):
    t = theirs().double()
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn_like(p))
    ours = make(np.float64)
    load_torch_state_dict(ours, t.state_dict())
    _compare(ours, t, (rng.standard_normal((4, 5)),), np.float64, rng)
    back = to_torch_state_dict(ours)
    assert back.keys() == t.state_dict().keys()
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy())


def test_embedding_round_trip():
    t = torch.nn.Embedding(7, 3)
    ours = Embedding(7, 3, dtype=np.float64)
    load_torch_state_dict(ours, t.state_dict())
    ids = np.array([[1, 6, 6]])
    np.testing.assert_allclose(ours(ids), t(torch.tensor(ids)).detach().numpy().astype(float),
                               rtol=1e-7)
    np.testing.assert_array_equal(to_torch_state_dict(ours)["weight"],
                                  t.weight.detach().numpy().astype(np.float64))


def test_float32_weights_load_into_a_float64_model_by_casting():
    t = torch.nn.TransformerEncoderLayer(8, 2, 12, batch_first=True)          # float32
    ours = TransformerEncoderLayer(8, 2, 12, dtype=np.float64)
    load_torch_state_dict(ours, t.state_dict())
    assert ours.linear1.params["W"].dtype == np.float64
    np.testing.assert_array_equal(ours.linear1.params["W"],
                                  t.linear1.weight.detach().numpy().T.astype(np.float64))


def test_state_dict_errors_name_the_key():
    t = torch.nn.TransformerEncoderLayer(8, 2, 12, batch_first=True).state_dict()
    ours = TransformerEncoderLayer(8, 2, 12)
    bad = dict(t)
    bad["linear1.weight"] = bad["linear1.weight"][:, :3]
    with pytest.raises(ValueError, match="linear1.*weight"):
        load_torch_state_dict(ours, bad)
    extra = dict(t, extra=t["norm1.bias"])
    with pytest.raises(ValueError, match="extra"):
        load_torch_state_dict(ours, extra)
