"""What the tasks share for ``--data FILE``: the file's identity in the configuration
(absolute path and SHA-256, so that eval, generate and resume use the same data), and
the option lists."""
from __future__ import annotations

import os
import re

from ..datasets.files import DataFileError, file_sha256

__all__ = ["data_identity", "check_identity", "verify_identity", "recorded_data",
           "RecordedDataError", "names", "split_point"]


def data_identity(path):
    """``{"data": absolute path, "data_sha256": hex digest}`` of a readable file."""
    path = os.path.abspath(path)
    try:
        return {"data": path, "data_sha256": file_sha256(path)}
    except OSError as exc:
        raise ValueError(f"--data: cannot read {path}: {exc.strerror or exc}") from None


def check_identity(c):
    """``c["data"]``/``c["data_sha256"]`` are a path and a hex digest (``ValueError``)."""
    if not isinstance(c["data"], str) or not c["data"]:
        raise ValueError(f"--data must be a file name, got {c['data']!r:.60}")
    if not (isinstance(c["data_sha256"], str) and re.fullmatch(r"[0-9a-f]{64}",
                                                                 c["data_sha256"])):
        raise ValueError("data_sha256 must be a SHA-256 hex digest")


class RecordedDataError(ValueError):
    """The data file a run recorded cannot be used (missing, changed, not a regular file
    of a bounded size): a command that cannot be carried out, not a bad command line."""


def verify_identity(c):
    """The file ``c["data"]`` is still the one the configuration was made from: a
    regular file of at most :data:`~nn_core.datasets.files.MAX_FILE_BYTES` whose SHA-256
    is ``c["data_sha256"]``.  A path read from a checkpoint is data, not an instruction:
    nothing else is opened (:class:`RecordedDataError`, one line naming the file and why)."""
    path = c["data"]
    hint = "; give the data file with --data (nn-core predict), or restore it"
    try:
        digest = file_sha256(path)
    except FileNotFoundError:
        raise RecordedDataError(f"the training data {path} is missing (moved or deleted?); "
                                f"put it back to evaluate or resume this run{hint}") from None
    except DataFileError as exc:
        raise RecordedDataError(f"the run's recorded training data is refused: {exc}"
                                f"{hint}") from None
    except OSError as exc:
        raise RecordedDataError(f"cannot read the training data {path}: "
                                f"{exc.strerror or exc}") from None
    if digest != c["data_sha256"]:
        raise RecordedDataError(f"the training data {path} changed since the run started "
                                f"(its SHA-256 differs from the recorded one){hint}")
    return path


def recorded_data(c, given=None):
    """The data file a command reads: ``given`` (named by the user with ``--data``), else
    the run's own recorded file once :func:`verify_identity` accepts it."""
    return given if given is not None else verify_identity(c)


def names(text, flag):
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (``ValueError`` naming ``flag`` if empty)."""
    out = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in out):
        raise ValueError(f"{flag} takes column names separated by commas, got {text!r}")
    return out


def split_point(n, val_frac):
    """How many of ``n`` items (characters, rows, pairs) train: the last ``val_frac`` of
    them, at least one, validate."""
    return n - max(1, int(round(val_frac * n)))
