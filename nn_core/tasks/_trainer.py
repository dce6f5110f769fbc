"""Compatibility alias: the training loop and the task interface live in
:mod:`nn_core.training`."""
from ..training import Task, plot_history, train  # noqa: F401

__all__ = ["Task", "train", "plot_history"]
