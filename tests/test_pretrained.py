"""nn_core.pretrained: model folders built here with transformers (no download) load into
nn_core and give torch's numbers (hidden states, pooler, gradients); bad folders give
one-line errors; the model saves, loads and pickles."""
import copy
import json
import os
import pickle

import numpy as np
import pytest

import nn_core
from nn_core.pretrained import (BertEncoder, ModelFolderError, SentenceEncoder,
                                encoder_state_dict, load_encoder)

from pretrained_folders import (WORDS, build_model, random_batch, write_sentence_layout,
                                write_tokenizer)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
pytest.importorskip("tokenizers")

KINDS = ("bert", "roberta", "distilbert")
TOL = {np.float32: 1e-5, np.float64: 1e-10}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """kind -> (folder, torch model in float64); each folder also has a WordPiece
    tokenizer and a sentence-transformers layout (mean pooling, normalised)."""
    out = {}
    for i, kind in enumerate(KINDS):
        folder = str(tmp_path_factory.mktemp(kind))
        out[kind] = (folder, build_model(kind, folder, seed=i).double())
        write_tokenizer(folder)
        write_sentence_layout(folder)
    return out


def _torch_forward(model, ids, mask, types=None):
    kw = {} if types is None else {"token_type_ids": torch.tensor(types)}
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kw)
    pooled = getattr(out, "pooler_output", None)
    return out.last_hidden_state, pooled


@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_torch(folders, kind, dtype, rng):
    folder, model = folders[kind]
    enc = load_encoder(folder, dtype=dtype)
    assert enc.dtype == dtype and not enc.training
    assert (enc.pooler is not None) == (kind != "distilbert")
    ids, mask = random_batch(rng, kind)
    types = rng.integers(0, 2, ids.shape) if kind == "bert" else None
    with torch.no_grad():
        h_ref, p_ref = _torch_forward(model, ids, mask, types)
    h = enc(ids, attention_mask=mask, token_type_ids=types)
    assert h.dtype == dtype and h.shape == (*ids.shape, 16)
    np.testing.assert_allclose(h, h_ref.numpy(), rtol=0, atol=TOL[dtype])
    if p_ref is not None:
        np.testing.assert_allclose(enc.pooler(h), p_ref.numpy(), rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("kind", KINDS)
def test_masks_of_every_kind_agree(folders, kind, rng):
    folder, _ = folders[kind]
    enc = load_encoder(folder, dtype=np.float64)
    ids, mask = random_batch(rng, kind)
    ref = enc(ids, attention_mask=mask)
    for m in (mask.astype(bool), mask.astype(np.int8), mask.astype(np.float32)):
        np.testing.assert_array_equal(enc(ids, attention_mask=m), ref)
    with pytest.raises(ValueError, match="only 0 and 1"):
        enc(ids, attention_mask=mask * 2)
    with pytest.raises(ValueError, match="shape of input_ids"):
        enc(ids, attention_mask=mask[:, 1:])
    # a row without padding does not depend on the others' padding
    np.testing.assert_allclose(enc(ids[:1]), ref[:1], atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_torch(folders, kind, rng):
    """Training-mode (dropout 0) input and parameter gradients in float64."""
    folder, model = folders[kind]
    enc = load_encoder(folder, dtype=np.float64).train()
    ids, mask = random_batch(rng, kind)
    kept = {}

    def keep(mod, inp, out):
        out.retain_grad()
        kept["e"] = out

    hook = model.embeddings.word_embeddings.register_forward_hook(keep)
    try:
        model.zero_grad()
        h_ref, p_ref = _torch_forward(model, ids, mask)
    finally:
        hook.remove()
    G = rng.standard_normal(h_ref.shape)
    loss = (h_ref * torch.tensor(G)).sum()
    h = enc(ids, attention_mask=mask)
    g = G
    if p_ref is not None:
        Gp = rng.standard_normal(p_ref.shape)
        loss = loss + (p_ref * torch.tensor(Gp)).sum()
        enc.pooler(h)
        g = G + enc.pooler.backward(Gp)
    loss.backward()
    gx = enc.backward(g)
    np.testing.assert_allclose(gx, kept["e"].grad.numpy(), rtol=0, atol=1e-10)
    as_params = copy.deepcopy(enc)
    for k, v in as_params.parameters().items():
        v[...] = enc.gradients()[k]
    ours = encoder_state_dict(as_params, kind)
    theirs = {k: p.grad.numpy() for k, p in model.named_parameters()}
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=0, atol=1e-10, err_msg=k)
    model.train(False)


class _FromEmbeds(nn_core.Module):
    """The encoder as a function of its word vectors (for gradcheck)."""

    def __init__(self, enc, mask):
        super().__init__(dtype=enc.dtype)
        self.enc, self.mask = enc, mask

    def forward(self, x):
        return self.enc(inputs_embeds=x, attention_mask=self.mask)

    def backward(self, g):
        return self.enc.backward(g)


@pytest.mark.parametrize("positions", ["absolute", "roberta"])
def test_gradcheck(positions, rng):
    """(The pad row gets no gradient by design, so no id is the pad id here; the pad
    positions are checked against torch above.)"""
    enc = BertEncoder(12, 8, 1, 2, 12, max_position_embeddings=9, type_vocab_size=2,
                      dropout=0.0, positions=positions, pad_token_id=1, dtype=np.float64,
                      rng=rng)
    ids = rng.integers(2, 12, (2, 5))
    mask = np.ones_like(ids)
    mask[1, 3:] = 0
    types = rng.integers(0, 2, ids.shape)
    nn_core.gradcheck(enc, (ids, mask, types), raise_on_fail=True, rng=rng)
    x = rng.standard_normal((2, 5, 8))
    nn_core.gradcheck(_FromEmbeds(enc, mask), (x,), raise_on_fail=True, rng=rng)
    pooled = nn_core.gradcheck(enc.pooler, (rng.standard_normal((2, 5, 8)),), rng=rng)
    assert pooled.ok, pooled


def test_inputs_embeds_equal_ids(folders, rng):
    folder, _ = folders["bert"]
    enc = load_encoder(folder, dtype=np.float64)
    ids, mask = random_batch(rng, "bert")
    x = enc.word_embeddings.params["W"][ids]
    np.testing.assert_array_equal(enc(inputs_embeds=x, attention_mask=mask),
                                  enc(ids, attention_mask=mask))
    with pytest.raises(ValueError, match="exactly one"):
        enc(ids, inputs_embeds=x)


def test_eval_forward_keeps_no_cache(folders, rng):
    enc = load_encoder(folders["bert"][0])
    ids, mask = random_batch(rng, "bert")
    h = enc(ids, attention_mask=mask)
    with pytest.raises(RuntimeError):
        enc.backward(np.ones_like(h))


def test_save_load_and_pickle(folders, rng, tmp_path):
    for kind in KINDS:
        enc = load_encoder(folders[kind][0], dtype=np.float32)
        ids, mask = random_batch(rng, kind)
        ref = enc(ids, attention_mask=mask)
        path = nn_core.save(enc, tmp_path / f"{kind}.npz")
        back = nn_core.load(path).eval()
        assert type(back) is BertEncoder
        np.testing.assert_array_equal(back(ids, attention_mask=mask), ref)
        again = pickle.loads(pickle.dumps(enc))
        np.testing.assert_array_equal(again(ids, attention_mask=mask), ref)


def test_round_trip_to_folder(folders, tmp_path, rng):
    """encoder_state_dict writes the names load_encoder reads."""
    folder, _ = folders["roberta"]
    enc = load_encoder(folder, dtype=np.float64)
    new = tmp_path / "copy"
    new.mkdir()
    (new / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
    safetensors_numpy.save_file(encoder_state_dict(enc, "roberta"),
                                str(new / "model.safetensors"))
    ids, mask = random_batch(rng, "roberta")
    np.testing.assert_array_equal(load_encoder(new, dtype=np.float64)(ids, attention_mask=mask),
                                  enc(ids, attention_mask=mask))


def test_prefixed_task_model_and_bin_file(tmp_path, rng):
    """A task model's file (``bert.`` prefix, a head), and pytorch_model.bin."""
    import transformers as tf

    base = tmp_path / "base"
    model = build_model("bert", str(base), seed=3)
    task = tf.BertForSequenceClassification(model.config)
    task.bert.load_state_dict(model.state_dict())
    task_dir = tmp_path / "task"
    task.save_pretrained(task_dir)
    names = safetensors_numpy.load_file(str(task_dir / "model.safetensors"))
    assert any(k.startswith("classifier.") for k in names)
    ids, mask = random_batch(rng, "bert")
    ref = load_encoder(base)(ids, attention_mask=mask)
    np.testing.assert_array_equal(load_encoder(task_dir)(ids, attention_mask=mask), ref)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((base / "config.json").read_text())
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    np.testing.assert_array_equal(load_encoder(bin_dir)(ids, attention_mask=mask), ref)


# ------------------------------------------------------------------ bad folders
def _copy_folder(src, dst, edit_config=None, edit_tensors=None):
    dst.mkdir()
    cfg = json.loads(open(os.path.join(src, "config.json")).read())
    if edit_config:
        edit_config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    tensors = safetensors_numpy.load_file(os.path.join(src, "model.safetensors"))
    if edit_tensors:
        edit_tensors(tensors)
    safetensors_numpy.save_file(tensors, str(dst / "model.safetensors"))
    return dst


def _one_line_error(folder, match):
    with pytest.raises(ModelFolderError, match=match) as info:
        load_encoder(folder)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_bad_folders(folders, tmp_path):
    src = folders["bert"][0]
    _one_line_error(tmp_path / "nowhere", "not a directory")
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", "config.json: file not found")
    _one_line_error(_copy_folder(src, tmp_path / "gpt", lambda c: c.update(model_type="gpt2")),
                    "model_type 'gpt2' is not supported")
    _one_line_error(_copy_folder(src, tmp_path / "nokey", lambda c: c.pop("vocab_size")),
                    "key 'vocab_size' is missing")
    _one_line_error(_copy_folder(src, tmp_path / "act", lambda c: c.update(hidden_act="swish")),
                    "hidden_act 'swish' is not supported")
    _one_line_error(
        _copy_folder(src, tmp_path / "missing",
                     edit_tensors=lambda t: t.pop("encoder.layer.1.attention.self.key.bias")),
        "tensor 'encoder.layer.1.attention.self.key.bias' is missing")
    _one_line_error(
        _copy_folder(src, tmp_path / "extra",
                     edit_tensors=lambda t: t.update({"encoder.layer.2.output.dense.bias":
                                                      np.zeros(16, np.float32)})),
        "unexpected tensor 'encoder.layer.2.output.dense.bias'")
    _one_line_error(
        _copy_folder(src, tmp_path / "shape",
                     edit_config=lambda c: c.update(intermediate_size=24)),
        r"tensor 'encoder.layer.0.intermediate.dense.weight' has shape \(32, 16\), "
        r"expected \(24, 16\)")
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    _one_line_error(noweights, "no weights")


def test_folder_without_pooler(tmp_path, rng):
    folder = tmp_path / "nopool"
    model = build_model("bert", str(folder), seed=4, pooler=False).double()
    enc = load_encoder(folder, dtype=np.float64)
    assert enc.pooler is None
    ids, mask = random_batch(rng, "bert")
    with torch.no_grad():
        ref = _torch_forward(model, ids, mask)[0].numpy()
    np.testing.assert_allclose(enc(ids, attention_mask=mask), ref, rtol=0, atol=1e-10)


def test_input_checks(folders, rng):
    enc = load_encoder(folders["distilbert"][0])
    ids, mask = random_batch(rng, "distilbert")
    with pytest.raises(ValueError, match="no token types"):
        enc(ids, token_type_ids=np.zeros_like(ids))
    with pytest.raises(ValueError, match="at most 40"):
        enc(np.zeros((1, 41), np.int64))
    with pytest.raises(TypeError, match="integer"):
        enc(ids.astype(np.float32))
    with pytest.raises(ValueError, match="input_ids must satisfy"):
        enc(ids + 1000)


# ------------------------------------------------------------------ sentences
def _sentences(rng, n=11):
    """Sentences of 1 to 30 words (the longest are truncated to max_seq_length)."""
    words = np.array(WORDS + ["cats", "jumped", "running"])
    out = [" ".join(rng.choice(words, rng.integers(1, 31))) + "." for _ in range(n)]
    out[-1] = "The DOG sat."
    return out


def _torch_sentences(folder, model, sentences, pooling, normalize):
    """sentence-transformers' pipeline spelled out in torch: transformers' tokenizer,
    the model on one padded batch, the pooling, the normalisation."""
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(folder)
    batch = tok(sentences, padding=True, truncation=True, max_length=24, return_tensors="pt")
    pad = model.config.pad_token_id
    ids = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, pad)
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    if pooling == "mean":
        y = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif pooling == "cls":
        y = h[:, 0]
    else:
        y = h.masked_fill(m == 0, -1e9).max(1).values
    if normalize:
        y = torch.nn.functional.normalize(y, dim=1)
    return y.numpy(), batch["input_ids"].numpy(), batch["attention_mask"].numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_encode_matches_torch(folders, kind, dtype, rng):
    folder, model = folders[kind]
    enc = SentenceEncoder(folder, dtype=dtype)
    assert enc.pooling == ("mean",) and enc.normalize and enc.max_seq_length == 24
    sentences = _sentences(rng)
    ref, ref_ids, _ = _torch_sentences(folder, model, sentences, "mean", True)
    ids, lengths = enc.tokenize(sentences)
    for row, i in zip(ref_ids, ids):                # same tokens as transformers' tokenizer
        np.testing.assert_array_equal(row[:len(i)], i)
    assert lengths.max() == 24 and lengths.min() < 10
    y = enc.encode(sentences, batch_size=3)
    assert y.shape == (len(sentences), 16) and y.dtype == dtype
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(enc.encode(sentences[5]), ref[5], rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_encode_pooling_and_normalize_options(folders, pooling, rng):
    folder, model = folders["bert"]
    enc = SentenceEncoder(folder, dtype=np.float64)
    sentences = _sentences(rng)
    ref, _, _ = _torch_sentences(folder, model, sentences, pooling, False)
    y = enc.encode(sentences, batch_size=4, pooling=pooling, normalize=False)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-10)
    both = enc.encode(sentences, pooling=("mean", pooling), normalize=False)
    assert both.shape == (len(sentences), 32)
    np.testing.assert_allclose(both[:, 16:],                  # mean after cls and max
                               enc.encode(sentences, pooling="mean", normalize=False),
                               atol=1e-12)
    with pytest.raises(ValueError, match="pooling must be one of"):
        enc.encode(sentences, pooling="median")
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(sentences, batch_size=0)


def test_encode_ids_and_batching(folders, rng):
    folder, model = folders["roberta"]
    enc = SentenceEncoder(folder, dtype=np.float64)
    sentences = _sentences(rng)
    _, ids, mask = _torch_sentences(folder, model, sentences, "mean", True)
    ref = enc.encode(sentences, batch_size=len(sentences))
    for bs in (1, 4):
        np.testing.assert_allclose(enc.encode(sentences, batch_size=bs), ref, atol=1e-12)
        np.testing.assert_allclose(enc.encode_ids(ids, mask, batch_size=bs), ref, atol=1e-12)
    assert enc.encode([]).shape == (0, 16)


def test_folder_settings(folders, tmp_path, rng):
    """vocab.txt alone; no modules.json (mean, not normalised); 1_Pooling's cls; the
    folder's own errors."""
    import shutil

    src = folders["bert"][0]
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), plain / name)
    enc = SentenceEncoder(plain, dtype=np.float64)
    assert enc.pooling == ("mean",) and not enc.normalize and enc.max_seq_length == 40
    full = SentenceEncoder(src, dtype=np.float64)
    sentences = _sentences(rng)
    for a, b in zip(enc.tokenize(sentences)[0], full.tokenize(sentences)[0]):
        np.testing.assert_array_equal(a[:24], b)
    write_sentence_layout(str(plain), pooling="cls", normalize=False)
    enc = SentenceEncoder(plain, dtype=np.float64)
    assert enc.pooling == ("cls",) and not enc.normalize
    np.testing.assert_array_equal(enc.encode(sentences),
                                  full.encode(sentences, pooling="cls", normalize=False))
    (plain / "modules.json").write_text(json.dumps(
        [{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ModelFolderError, match="module type .*Dense.* is not supported"):
        SentenceEncoder(plain)
    (plain / "modules.json").unlink()
    os.remove(plain / "vocab.txt")
    with pytest.raises(ModelFolderError, match="no tokenizer"):
        SentenceEncoder(plain)


def test_progress_and_missing_extra(folders, capsys, monkeypatch, rng):
    enc = SentenceEncoder(folders["distilbert"][0])
    enc.encode(_sentences(rng, 3))
    assert capsys.readouterr().err == ""
    enc.encode(_sentences(rng, 9), batch_size=1)
    assert "encode" in capsys.readouterr().err
    enc.encode(_sentences(rng, 9), batch_size=1, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"nn_core\[text\]"):
        SentenceEncoder(folders["distilbert"][0])


def test_bench_encode_runs(capsys):
    """``python -m nn_core.bench encode`` end to end, tiny (its numbers are not checked)."""
    from nn_core.bench import encode

    assert encode.main(["--quick", "--sentences", "12", "--batch-size", "4", "--threads", "1",
                        "--skip-load", "--skip-memory"]) == 0
    out = capsys.readouterr().out
    assert "CPU:" in out and "encode (end to end)" in out and "encoder forward" in out
    diff = float(out.split("max |nn_core - torch| over the embeddings: ")[1].split()[0])
    assert diff < 1e-5
