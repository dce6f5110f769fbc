"""Pretrained BERT-family encoders from a local Hugging Face model folder, without PyTorch.

>>> from nn_core.pretrained import SentenceEncoder           # doctest: +SKIP
>>> model = SentenceEncoder("path/to/all-MiniLM-L6-v2")      # doctest: +SKIP
>>> emb = model.encode(["A first sentence.", "Another one."])  # doctest: +SKIP

* :func:`load_encoder` reads ``config.json`` and ``model.safetensors`` into a
  :class:`BertEncoder`, an ordinary nn_core module (it trains, saves with
  :func:`nn_core.save`, pickles);
* :class:`SentenceEncoder` adds the folder's tokenizer and its sentence-transformers
  pooling / normalisation, as ``sentence_transformers.SentenceTransformer.encode``.

Nothing is ever downloaded.  Reading safetensors needs the ``safetensors`` package and
tokenizing the ``tokenizers`` package: ``pip install "nn_core[text]"``.
"""
from __future__ import annotations

from ._folder import ModelFolderError, encoder_state_dict, load_encoder, read_config
from ._model import BertEncoder, BertPooler
from ._sentence import SentenceEncoder

__all__ = ["load_encoder", "SentenceEncoder", "BertEncoder", "BertPooler", "ModelFolderError",
           "read_config", "encoder_state_dict"]

