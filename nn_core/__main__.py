"""``python -m nn_core`` runs the ``nn-core`` command (see :mod:`nn_core.cli`).

Importing this module runs nothing: the command starts only when it is the program.
"""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
