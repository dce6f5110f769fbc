"""Training tasks for the ``nn-core`` command, on generated data (nothing is downloaded)
or on the user's file (``--data``).

Each task binds a model of :mod:`nn_core.models` to a data set of
:mod:`nn_core.datasets` for the loop in :mod:`nn_core.training`: its configuration and
command-line options, the training step, the metrics and what it prints.

* ``seq2seq`` — reverse/sort digit strings, or the source/target pairs of a TSV file:
  bidirectional GRU/LSTM encoder, LSTM decoder with cross attention, greedy decoding
  with the cached cross attention.
* ``forecast`` — GRU/LSTM forecaster on the Lorenz system (SciPy ``solve_ivp``) or a
  CSV/``.npy``/``.npz`` series, validation MSE against persistence (and seasonal-naive).
* ``lm`` — a small causal transformer (MHA or GQA) on generated arithmetic text or any
  UTF-8 text, sampled with the KV cache.
"""
from __future__ import annotations

import importlib

from ._command import CommandTask, Option

__all__ = ["TASKS", "DEFAULT_TASK", "get_task", "CommandTask", "Option"]

#: what ``nn-core train`` trains when no task is named
DEFAULT_TASK = "seq2seq"

TASKS = {
    "seq2seq": ("nn_core.tasks.seq2seq", "Seq2SeqTask"),
    "forecast": ("nn_core.tasks.forecast", "ForecastTask"),
    "lm": ("nn_core.tasks.lm", "LanguageModelTask"),
}


def get_task(name):
    """The :class:`~nn_core.training.Task` subclass registered as ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)
