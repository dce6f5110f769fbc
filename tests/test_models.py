"""nn_core.models: gradients, decoding, seeding, checkpoints."""
import doctest

import numpy as np
import pytest

import nn_core
from nn_core import gradcheck
from nn_core.attention import CrossAttention
from nn_core.datasets.digit_strings import BOS, EOS, PAD, make_examples, pad_batch
from nn_core.layers import Embedding, Linear
from nn_core.models import Forecaster, Seq2SeqModel, TransformerBlock, TransformerLM
from nn_core.models import forecaster, seq2seq, transformer_lm
from nn_core.recurrent import BidirectionalWrapper, GRUCell, LSTMCell



@pytest.mark.parametrize("module", [seq2seq, forecaster, transformer_lm],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_models_are_exported():
    assert nn_core.models.Seq2SeqModel is Seq2SeqModel
    assert set(nn_core.models.__all__) == {"Seq2SeqModel", "Forecaster", "TransformerLM",
                                           "TransformerBlock"}
    for cls in (Seq2SeqModel, Forecaster, TransformerLM, TransformerBlock):
        assert cls.__module__.startswith("nn_core.models.")
        assert "Notes" in cls.__doc__ and "Examples" in cls.__doc__


# ------------------------------------------------------------------- Seq2SeqModel
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_seq2seq_model_gradcheck_and_greedy_consistency(rng, cell):
    m = Seq2SeqModel(13, 3, 4, 2, cell, dtype=np.float64, rng=int(rng.integers(1000)))
    src, tgt = make_examples(3, 1, 4, "reverse", int(rng.integers(1000)))
    s, sl, ti, to, tl = pad_batch(src, tgt)
    assert gradcheck(m, (s, sl, ti, tl)).ok
    # the step API + cached cross attention reproduce the teacher-forced path
    m.eval()
    pred = m.greedy_decode(s, sl, max_len=6)
    B, T = pred.shape
    # the inputs greedy decoding fed: BOS, then its own previous predictions (an untrained
    # model may predict PAD before EOS; it is fed back as it is)
    tin = np.concatenate([np.full((B, 1), BOS), pred[:, :-1]], 1)
    logits = m(s, sl, tin, np.full(B, T))
    # compare up to and including each row's first EOS; after it greedy emits PAD
    live = np.concatenate([np.ones((B, 1), bool), np.cumsum(pred == EOS, 1)[:, :-1] == 0], 1)
    np.testing.assert_array_equal(logits.argmax(-1)[live], pred[live])


def _reverse_index(lengths, T):
    """Time index ``[T, B]`` reversing each sequence within its length (padding fixed)."""
    t = np.arange(T)[:, None]
    L = np.asarray(lengths)[None, :]
    return np.where(t < L, L - 1 - t, t)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_seq2seq_encoder_is_a_bidirectional_wrapper_over_two_cells(rng, cell):
    """The encoder computes what the two cells compute directly: ``fw`` left to right,
    ``bw`` over each sequence reversed within its own length (the pre-wrapper code)."""
    seed = int(rng.integers(1000))
    m = Seq2SeqModel(13, 3, 4, 2, cell, dtype=np.float64, rng=seed)
    ref = Seq2SeqModel(13, 3, 4, 2, cell, dtype=np.float64, rng=seed)
    assert isinstance(m.encoder, BidirectionalWrapper) and m.encoder.merge_mode == "concat"
    names = {k for k in m.parameters() if k.startswith("encoder.")}
    assert names == {f"encoder.{d}.{p}" for d in ("fw", "bw")
                     for p in ("W_ih", "W_hh", "b_ih", "b_hh")}
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([5, 1, 3])
    g = rng.standard_normal((5, 3, 8))
    gh = rng.standard_normal((2, 3, 4))
    gs = [(h, np.zeros_like(h)) if cell == "lstm" else h for h in gh]

    out, (fin_f, fin_b) = m.encoder(x, lengths=lengths)
    gx, _ = m.encoder.backward(g, tuple(gs))

    idx, cols = _reverse_index(lengths, 5), np.arange(3)[None, :]
    fw, bw = ref.encoder.fw, ref.encoder.bw
    out_f, ref_fin_f = fw.forward_sequence(x, lengths=lengths)
    out_b_rev, ref_fin_b = bw.forward_sequence(x[idx, cols], lengths=lengths)
    np.testing.assert_allclose(out, np.concatenate([out_f, out_b_rev[idx, cols]], -1),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fin_f), np.asarray(ref_fin_f), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fin_b), np.asarray(ref_fin_b), rtol=1e-12, atol=1e-12)
    gx_f, _ = fw.backward_sequence(np.ascontiguousarray(g[..., :4]), gs[0])
    gx_b_rev, _ = bw.backward_sequence(np.ascontiguousarray(g[..., 4:][idx, cols]), gs[1])
    np.testing.assert_allclose(gx, gx_f + gx_b_rev[idx, cols], rtol=1e-10, atol=1e-12)
    for k, v in m.encoder.gradients().items():
        np.testing.assert_allclose(v, ref.encoder.gradients()[k], rtol=1e-10, atol=1e-12,
                                   err_msg=k)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seq2seq_weights_drawn_in_the_documented_order(cell, dtype):
    """Same seed, same weights as before the encoder became a BidirectionalWrapper:
    every sub-module draws from the model's generator in this order."""
    V, E, H, heads, seed = 13, 5, 8, 2, 11
    rng = np.random.default_rng(seed)
    kw = dict(dtype=dtype, rng=rng)
    Cell = {"gru": GRUCell, "lstm": LSTMCell}[cell]
    expected = {}
    for prefix, module in [("src_embed", Embedding(V, E, padding_idx=PAD, **kw)),
                           ("tgt_embed", Embedding(V, E, padding_idx=PAD, **kw)),
                           ("encoder.fw", Cell(E, H, **kw)), ("encoder.bw", Cell(E, H, **kw)),
                           ("bridge", Linear(2 * H, H, **kw)), ("decoder", LSTMCell(E, H, **kw)),
                           ("attention", CrossAttention(H, heads, kv_dim=2 * H, **kw)),
                           ("out", Linear(2 * H, V, **kw))]:
        expected.update({f"{prefix}.{k}": v for k, v in module.parameters().items()})
    got = Seq2SeqModel(V, E, H, heads, cell, dtype=dtype, rng=seed).parameters()
    assert list(got) == list(expected)
    for k in got:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    # a shared generator is left where the old model left it
    shared = np.random.default_rng(seed)
    Seq2SeqModel(V, E, H, heads, cell, dtype=dtype, rng=shared)
    assert shared.random() == rng.random()


def test_seq2seq_model_rejects_bad_configuration():
    with pytest.raises(ValueError, match="num_heads must divide hidden_size"):
        Seq2SeqModel(13, 4, 6, 4)
    with pytest.raises(ValueError, match="cell must be one of"):
        Seq2SeqModel(13, 4, 8, 2, "transformer")


# --------------------------------------------------------- Forecaster, TransformerLM
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_forecaster_gradcheck(rng, cell):
    f = Forecaster(3, 4, cell, dtype=np.float64, rng=int(rng.integers(1000)))
    assert gradcheck(f, (rng.standard_normal((2, 5, 3)),)).ok


@pytest.mark.parametrize("kv_groups", [None, 1])
def test_transformer_lm_gradcheck_and_kv_cache(rng, kv_groups):
    lm = TransformerLM(13, 8, 2, 1, kv_groups, max_len=8, dtype=np.float64,
                       rng=int(rng.integers(1000)))
    ids = rng.integers(0, 13, (2, 4))
    assert gradcheck(lm, (ids,)).ok
    lm2 = TransformerLM(13, 8, 4, 2, kv_groups, max_len=10, dtype=np.float64,
                        rng=int(rng.integers(1000))).eval()
    ids = rng.integers(0, 13, (3, 5))
    toks, _ = lm2.generate(ids, 5)             # prefill + 4 cached steps
    full = np.concatenate([ids, toks], 1)
    logits = lm2(full[:, :-1])                 # one full causal forward
    np.testing.assert_array_equal(logits[:, 4:].argmax(-1), toks)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transformer_lm_samples_with_temperature(dtype):
    lm = TransformerLM(13, 16, 4, 1, max_len=24, dtype=dtype, rng=0).eval()
    ids = np.arange(12).reshape(2, 6) % 13
    toks, _ = lm.generate(ids, 16, temperature=0.8, rng=3)
    again, _ = lm.generate(ids, 16, temperature=0.8, rng=3)
    assert toks.shape == (2, 16) and ((toks >= 0) & (toks < 13)).all()
    np.testing.assert_array_equal(toks, again)


def test_transformer_block_gradcheck(rng):
    blk = TransformerBlock(8, 2, num_kv_groups=1, dtype=np.float64, rng=int(rng.integers(1000)))
    assert gradcheck(blk, (rng.standard_normal((2, 3, 8)),)).ok


def test_transformer_lm_context_limit():
    lm = TransformerLM(13, 8, 2, 1, max_len=4, rng=0)
    with pytest.raises(ValueError, match="exceeds max_len 4"):
        lm(np.zeros((1, 5), dtype=np.int64))


# ------------------------------------------------------------------- checkpoints
def _models(dtype):
    return [Seq2SeqModel(13, 4, 8, 2, "lstm", dtype=dtype, rng=1),
            Seq2SeqModel(13, 4, 8, 2, "gru", dtype=dtype, rng=2),
            Forecaster(3, 6, "gru", dtype=dtype, rng=3),
            TransformerLM(13, 8, 4, 2, 2, max_len=12, dtype=dtype, rng=4)]


def _run(model, rng):
    """Eval-mode outputs of ``model`` on fixed inputs (decoding included)."""
    model.eval()
    if isinstance(model, Seq2SeqModel):
        src, tgt = make_examples(3, 2, 5, "reverse", 0)
        s, sl, ti, _, tl = pad_batch(src, tgt)
        return model(s, sl, ti, tl), model.greedy_decode(s, sl, 6)
    if isinstance(model, Forecaster):
        return (model(np.linspace(-1, 1, 2 * 7 * 3).reshape(2, 7, 3)),)
    ids = np.arange(10).reshape(2, 5) % 13
    return model(ids), model.generate(ids, 4)[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_models_save_and_load_like_any_layer(tmp_path, rng, dtype):
    for i, model in enumerate(_models(dtype)):
        for p in model.parameters().values():       # trained-looking weights, not the init
            p[...] = 0.3 * rng.standard_normal(p.shape)
        path = tmp_path / f"m{i}.npz"
        nn_core.save(model, path)
        meta = nn_core.checkpoint.read_metadata(path)
        assert meta["module"]["class"].startswith("nn_core.models.")
        again = nn_core.load(path)
        assert type(again) is type(model) and again.dtype == dtype
        assert list(again.parameters()) == list(model.parameters())
        for k, v in model.parameters().items():
            np.testing.assert_array_equal(again.parameters()[k], v, err_msg=k)
        for a, b in zip(_run(model, rng), _run(again, rng)):
            np.testing.assert_array_equal(a, b)


def test_seq2seq_model_takes_its_special_token_ids(rng):
    with pytest.raises(ValueError, match="eos_id"):
        Seq2SeqModel(5, 4, 8, 2, eos_id=5)
    with pytest.raises(TypeError, match="vocab_size"):
        Seq2SeqModel(5.0, 4, 8, 2)
    m = Seq2SeqModel(7, 4, 8, 2, pad_id=6, bos_id=5, eos_id=4, dtype=np.float64, rng=0).eval()
    m.out.params["b"][4] = 5.0                   # eos becomes likely: rows stop early
    tokens = m.greedy_decode(rng.integers(0, 4, (3, 5)), np.array([5, 3, 2]), max_len=6)
    assert (tokens[:, 0] == 4).all() and (tokens[:, 1:] == 6).all()
