"""Tiny Hugging Face model folders built in the test session with ``transformers`` (no
download): random BERT, RoBERTa and DistilBERT models of 2 layers, width 16, their
tokenizer from a small vocabulary, and a sentence-transformers layout written by hand."""
import json
import os

import numpy as np

WORDS = ("the a an cat dog bird fish sat ran flew swam on under over mat log tree pond "
         "quick slow red blue green big small and or not very it is was".split())
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + WORDS + ["##s", "##ed", "##ing", ".", ","]

SIZES = dict(hidden=16, layers=2, heads=4, ffn=32, max_pos=40)


def _perturb(torch, model, seed):
    """Weights of order 1 (transformers' init is 0.02-scaled, zero biases, unit norms)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.copy_(0.3 * noise)
    return model


def build_model(kind, folder, seed=0, dropout=0.0, pooler=True):
    """Save a random ``kind`` ("bert", "roberta", "distilbert") model into ``folder`` and
    return the torch model (float32, eval)."""
    import torch
    import transformers as tf

    s = SIZES
    V = len(VOCAB)
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=V, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                            num_attention_heads=s["heads"], intermediate_size=s["ffn"],
                            max_position_embeddings=s["max_pos"], hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, pad_token_id=0)
        model = tf.BertModel(cfg, add_pooling_layer=pooler)
    elif kind == "roberta":
        cfg = tf.RobertaConfig(vocab_size=V, hidden_size=s["hidden"],
                               num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                               intermediate_size=s["ffn"], max_position_embeddings=s["max_pos"],
                               hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                               pad_token_id=1, bos_token_id=2, eos_token_id=3, type_vocab_size=1)
        model = tf.RobertaModel(cfg, add_pooling_layer=pooler)
    elif kind == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=V, dim=s["hidden"], n_layers=s["layers"],
                                  n_heads=s["heads"], hidden_dim=s["ffn"],
                                  max_position_embeddings=s["max_pos"], dropout=dropout,
                                  attention_dropout=dropout, pad_token_id=0)
        model = tf.DistilBertModel(cfg)
    else:
        raise ValueError(kind)
    _perturb(torch, model, seed)
    model.eval()
    model.save_pretrained(folder)
    return model


def write_tokenizer(folder, tokenizer_json=True):
    """``vocab.txt`` (and, with ``tokenizer_json``, a WordPiece ``tokenizer.json``)."""
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": SIZES["max_pos"],
                   "tokenizer_class": "BertTokenizer"}, f)
    if tokenizer_json:
        from tokenizers import BertWordPieceTokenizer
        tok = BertWordPieceTokenizer(os.path.join(folder, "vocab.txt"), lowercase=True)
        tok.save(os.path.join(folder, "tokenizer.json"))


def write_sentence_layout(folder, pooling="mean", normalize=True, max_seq_length=24):
    """The files sentence-transformers saves next to the encoder."""
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump(modules, f)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    modes = {f"pooling_mode_{m}": False
             for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
    modes[{"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
           "max": "pooling_mode_max_tokens"}[pooling]] = True
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": SIZES["hidden"], **modes}, f)
    with open(os.path.join(folder, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": max_seq_length, "do_lower_case": False}, f)


def random_batch(rng, kind, B=4, L=9):
    """``input_ids`` and a 0/1 ``attention_mask`` of mixed lengths (one full row), padded
    with the model's pad id, starting with [CLS] and ending with [SEP]."""
    pad = 1 if kind == "roberta" else 0
    lengths = rng.integers(2, L + 1, B)
    lengths[0] = L
    ids = rng.integers(len(SPECIAL), len(VOCAB), (B, L))
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 2
    ids[np.arange(B), lengths - 1] = 3
    ids[mask == 0] = pad
    return ids, mask
