"""Failure handling under MPI: an uncaught exception (or ``sys.exit(n)``, ``n != 0``,
inside :class:`abort_on_error`) on one rank prints its traceback prefixed with the rank
and aborts every rank, instead of leaving the others waiting in a collective."""
from __future__ import annotations

import contextlib
import sys
import traceback

from . import _world


def _prefixed(text, r):
    return "".join(f"[rank {r}] {line}" for line in text.splitlines(True))


def _abort(status, message):
    """Print ``message`` (prefixed with the rank) and abort every rank of the job."""
    w = _world._WORLD
    try:
        if message:
            sys.stderr.write(_prefixed(message if message.endswith("\n") else message + "\n",
                                       w.rank))
        sys.stderr.write(f"[rank {w.rank}] nn_core.distributed: aborting all {w.size} "
                         f"ranks (exit status {status})\n")
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        w.comm.Abort(status)


def _status_of(exc_type, exc):
    if issubclass(exc_type, KeyboardInterrupt):
        return 130
    return 1


def _install_excepthook():
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if previous is not sys.__excepthook__:      # someone else's hook: let it report
            previous(exc_type, exc, tb)
            text = ""
        else:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
        _abort(_status_of(exc_type, exc), text)

    sys.excepthook = hook


class abort_on_error(contextlib.ContextDecorator):
    """Abort the whole MPI job when the block (or decorated function) ends with an
    exception or with ``sys.exit(n)``, ``n != 0`` (which bypass ``sys.excepthook``).

    On a single process, or with no error, it does nothing and exceptions propagate
    as usual.

    Examples
    --------
    >>> @abort_on_error()
    ... def main():
    ...     return 0
    >>> main()
    0
    """

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        w = _world._WORLD
        if exc_type is None or w is None or w.size <= 1:
            return False
        if issubclass(exc_type, SystemExit):
            code = exc.code
            if code is None or code == 0:
                return False
            status = code if isinstance(code, int) else 1
            _abort(status, "" if isinstance(code, int) else str(code))
        _abort(_status_of(exc_type, exc),
               "".join(traceback.format_exception(exc_type, exc, tb)))
        return False  # pragma: no cover - Abort does not return
