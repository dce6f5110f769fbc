"""What a task declares for the ``nn-core`` command (:mod:`nn_core.cli`): its options
for ``train``, ``generate`` and ``predict``, how its configuration is made from the
parsed options, and what ``generate`` prints.  The training layer
(:class:`nn_core.training.Task`) knows nothing of the command line."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from .._validation import check_choice, check_int, check_real
from ..training import Task

__all__ = ["Option", "CommandTask"]


@dataclass(frozen=True)
class Option:
    """One command-line option of a task.

    ``flag`` (``"--kv-groups"``), ``help`` (without the default, which the command
    appends, as ``default_text`` if given), ``default`` (``None``: not given), ``dest``
    (default: the flag's name with underscores), argparse's ``type``, ``choices``,
    ``metavar``, ``nargs`` and ``action`` (``"store_true"`` for a switch), ``data``:
    ``"file"`` for an option that needs ``--data``, ``"generated"`` for one of the
    generated data, refused with ``--data``, and ``bounds``: ``(lo, hi)`` of an ``int`` or
    ``float`` option (either may be ``None``; a float's lower bound is open when
    ``lo_open``).  :meth:`check` applies the type, the bounds and the choices, to the
    flag and to the same value read back from a checkpoint's configuration.
    """

    flag: str
    help: str
    default: object = None
    dest: str = None
    type: object = None
    choices: tuple = None
    metavar: str = None
    nargs: str = None
    action: str = None
    default_text: str = None
    data: str = None
    bounds: tuple = None
    lo_open: bool = False

    @property
    def name(self):
        return self.dest or self.flag.lstrip("-").replace("-", "_")

    def check(self, value):
        """``value`` (not ``None``) checked as this option's value: its type, bounds and
        choices (``TypeError`` / ``ValueError`` naming the flag); returns it."""
        lo, hi = self.bounds or (None, None)
        if self.type is int:
            return check_int(value, self.flag, lo, hi)
        if self.type is float:
            return check_real(value, self.flag, lo, hi, lo_open=self.lo_open)
        if self.choices is not None:
            return check_choice(value, self.flag, self.choices)
        if self.type is str and not isinstance(value, str):
            raise TypeError(f"{self.flag} must be a string, got {type(value).__name__} "
                            f"{value!r:.40}")
        return value

    def argparse_kwargs(self):
        """Keyword arguments of ``add_argument`` (the default is filled in after parsing,
        so that the options given can be told from the defaults)."""
        shown = self.default_text if self.default_text is not None else (
            "off" if self.action == "store_true" else
            "none" if self.default is None else str(self.default))
        kw = {"dest": self.name, "default": _ABSENT, "help": f"{self.help} (default: {shown})"}
        if self.action:
            kw["action"] = self.action
        for key in ("type", "choices", "metavar", "nargs"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        return kw


#: an option not given leaves no attribute in the parsed namespace
_ABSENT = argparse.SUPPRESS


class CommandTask(Task):
    """A :class:`~nn_core.training.Task` the ``nn-core`` command runs.

    Class attributes: :attr:`name`, :attr:`description`, :attr:`defaults` (``epochs``,
    ``batch_size``, ``lr``, ``hidden``), the options of ``nn-core train TASK``
    (:attr:`train_options`), of ``nn-core generate`` (:attr:`generate_options`) and of
    ``nn-core predict`` (:attr:`predict_options`, with :meth:`predict`).
    """

    description = ""
    #: default ``epochs, batch_size, lr, hidden`` of ``nn-core train TASK``
    defaults: dict = {}
    train_options: tuple = ()
    generate_options: tuple = ()
    #: ``None``: ``nn-core predict`` does not apply to this task
    predict_options: tuple = None
    #: ``nn-core predict``'s output file name, beside the checkpoint
    predictions_file = "predictions.csv"

    @classmethod
    def config_from_args(cls, args):  # pragma: no cover - interface
        """The task's ``config`` from the parsed options (``ValueError`` naming the
        option if invalid); called before any data are generated."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config):
        """``config`` checked as :meth:`config_from_args` checks it (it may come from a
        checkpoint); returns a copy, raises ``ValueError`` naming the option."""
        if not isinstance(config, dict):
            raise TypeError(f"the task configuration must be a dict, got "
                            f"{type(config).__name__}")
        return dict(config)

    @classmethod
    def config_value(cls, dest, value):
        """Option ``dest`` given on the command line as it is stored in the
        configuration (compared with a resumed run's): ``--data`` as an absolute path,
        the others unchanged."""
        return os.path.abspath(value) if dest == "data" and value is not None else value

    @classmethod
    def check_generate_args(cls, args, config):
        """Check the ``nn-core generate`` options (``ValueError`` naming the option)."""

    def generate(self, model, args, out=print):  # pragma: no cover - interface
        """Run ``model`` on examples for ``nn-core generate`` (``args``: its options)."""
        raise NotImplementedError

    @classmethod
    def predict(cls, model, config, args, out=print):  # pragma: no cover - interface
        """``nn-core predict``: ``(header, rows)`` of the CSV to write; prints a summary
        with ``out``."""
        raise NotImplementedError
