"""Models built from nn_core layers: importable, documented, saved and loaded with
:func:`nn_core.save` / :func:`nn_core.load` like any layer.

* :class:`Seq2SeqModel` -- attentional encoder-decoder (bidirectional GRU/LSTM encoder,
  LSTM decoder with cross attention, greedy decoding with the cached cross attention);
* :class:`Forecaster` -- recurrent forecaster with a residual read-out;
* :class:`TransformerLM` and its :class:`TransformerBlock` -- a pre-LN causal
  transformer (multi-head or grouped-query attention) with KV-cache generation.

The ``nn-core`` command trains them on the tasks of :mod:`nn_core.tasks`.
"""
from .forecaster import Forecaster
from .seq2seq import Seq2SeqModel
from .transformer_lm import TransformerBlock, TransformerLM

__all__ = ["Seq2SeqModel", "Forecaster", "TransformerLM", "TransformerBlock"]
