"""Compatibility alias: the progress bar lives in :mod:`nn_core._progress`."""
from .._progress import ProgressBar, format_rate  # noqa: F401

__all__ = ["ProgressBar", "format_rate"]
