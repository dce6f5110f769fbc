"""TransformerEncoderLayer / TransformerDecoderLayer: gradients, contract, decoding."""
import numpy as np
import pytest

import nn_core
from contract import check_contract
from nn_core import gradcheck
from nn_core.attention import create_padding_mask
from nn_core.transformer import TransformerDecoderLayer, TransformerEncoderLayer

VARIANTS = [(nf, act) for nf in (False, True) for act in ("relu", "gelu", "gelu_tanh")]


@pytest.mark.parametrize("norm_first, activation", VARIANTS)
def test_encoder_gradcheck(rng, norm_first, activation):
    m = TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation=activation,
                                norm_first=norm_first, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 5, 8))
    mask = create_padding_mask([5, 3], 5)
    assert gradcheck(m, (x, mask), rng=rng).ok


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_decoder_gradcheck(rng, norm_first, cross):
    m = TransformerDecoderLayer(8, 2, 12, dropout=0.0, activation="gelu_tanh",
                                norm_first=norm_first, cross_attention=cross, memory_dim=6,
                                dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 4, 8))
    inputs = (x, rng.standard_normal((2, 3, 6))) if cross else (x,)
    assert gradcheck(m, inputs, rng=rng).ok


def test_encoder_contract():
    check_contract(
        lambda dt: TransformerEncoderLayer(8, 2, 12, dropout=0.0, dtype=dt, rng=0),
        lambda rng: (rng.standard_normal((2, 3, 8)),),
        bad=[((np.ones((2, 3, 7)),), ValueError, r"x.shape\[-1\] must equal d_model"),
             ((np.ones((3, 8)),), ValueError, "x must be 3-dimensional"),
             ((np.ones((2, 3, 8), complex),), TypeError, "real-valued")])


def test_decoder_contract():
    check_contract(
        lambda dt: TransformerDecoderLayer(8, 2, 12, dropout=0.0, memory_dim=5, dtype=dt,
                                           rng=0),
        lambda rng: (rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 4, 5))))


def test_kv_cache_decoding_equals_the_causal_forward(rng):
    m = TransformerDecoderLayer(16, 4, 32, dropout=0.0, norm_first=True, cross_attention=False,
                                dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 6, 16))
    full = m(x)
    cache = m.self_attn.new_kv_cache(3, 6)
    with nn_core.inference_mode():
        steps = [m(x[:, t:t + 1], kv_cache=cache) for t in range(6)]
    np.testing.assert_allclose(np.concatenate(steps, 1), full, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError):
        m.backward(np.ones((3, 1, 16)))


def test_dropout_only_in_training(rng):
    m = TransformerEncoderLayer(8, 2, 12, dropout=0.5, rng=rng)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    assert not np.allclose(m(x), m(x))          # new masks each call
    m.backward(np.ones((2, 4, 8)))
    m.eval()
    np.testing.assert_array_equal(m(x), m(x))


def test_argument_errors():
    with pytest.raises(ValueError, match="activation"):
        TransformerEncoderLayer(8, 2, activation="swish")
    with pytest.raises(ValueError, match="num_heads must divide d_model"):
        TransformerEncoderLayer(8, 3)
    with pytest.raises(ValueError, match="dropout"):
        TransformerEncoderLayer(8, 2, dropout=1.0)
    dec = TransformerDecoderLayer(8, 2, 12)
    with pytest.raises(ValueError, match="memory is required"):
        dec(np.ones((1, 2, 8)))
    gpt = TransformerDecoderLayer(8, 2, 12, cross_attention=False)
    with pytest.raises(ValueError, match="memory must be None"):
        gpt(np.ones((1, 2, 8)), np.ones((1, 2, 8)))
    with pytest.raises(ValueError, match="x.shape"):
        gpt(np.ones((1, 2, 9)))


def test_parameter_names_follow_torch_layout():
    names = set(TransformerDecoderLayer(8, 2, 12, rng=0).parameters())
    assert {"self_attn.W_q", "cross_attn.W_k", "linear1.W", "linear2.b", "norm1.gamma",
            "norm3.beta"} <= names
    names = set(TransformerEncoderLayer(8, 2, 12, rng=0).parameters())
    assert "norm3.gamma" not in names and "norm2.gamma" in names
