"""Ctrl-C and SIGTERM while training: an orderly stop with a resumable checkpoint."""
from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["StopSignals", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a resumable checkpoint.

    Attributes
    ----------
    checkpoint : str or None
        The checkpoint written (resume with ``train(..., resume=True)`` /
        ``Trainer.fit(..., resume=True)`` / ``nn-core train --resume --out DIR``);
        ``None`` when the run had no ``out_dir`` (the model then holds the weights of
        the last completed step).
    step, epoch : int
        Optimizer steps done, and the epoch in progress (1-based).
    signum : int
        The signal (``signal.SIGINT`` for Ctrl-C).
    """

    def __init__(self, message, checkpoint, step, epoch, signum=signal.SIGINT):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step
        self.epoch = epoch
        self.signum = int(signum)


class StopSignals:
    """Turn SIGINT/SIGTERM into an orderly stop while training.

    While active (``with StopSignals() as sig:``) a signal sets :attr:`requested`.  Inside
    ``with sig.abandonable():`` (work that leaves the training state untouched: fetching
    a batch, forward/backward, evaluation) it also raises ``KeyboardInterrupt`` there, so
    the step is abandoned at once; everywhere else (the optimizer update, saving) it
    only waits to be noticed at the next check.  Handlers are installed only on the main
    thread and only for signals that are not ignored; the previous ones come back on exit.

    With ``deferred=True`` (data-parallel training, where every rank must stop at the
    same step) a signal only sets :attr:`pending` and nothing is abandoned; the trainer
    sums ``pending`` over the ranks with each step's statistics and sets
    :attr:`requested` on all of them together.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                    if s is not None)

    def __init__(self, enabled=True, deferred=False):
        self.enabled = enabled
        self.deferred = deferred
        self.requested = None
        self.pending = None
        self._abandon = 0
        self._old = {}

    def _handler(self, signum, frame):
        if self.deferred:
            self.pending = self.pending or signum
            return
        first = self.requested is None
        self.requested = self.requested or signum
        # only the first signal abandons the step: a second one arriving while the
        # first KeyboardInterrupt unwinds must not raise inside the clean-up
        if self._abandon and first:
            raise KeyboardInterrupt

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                old = signal.getsignal(sig)
                if old is signal.SIG_IGN or old is None:
                    continue
                self._old[sig] = old
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    @contextlib.contextmanager
    def abandonable(self):
        """A region a signal interrupts at once (``KeyboardInterrupt``)."""
        if self.requested:
            raise KeyboardInterrupt
        self._abandon += 1
        try:
            yield
        finally:
            self._abandon -= 1
