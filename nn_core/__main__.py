"""``python -m nn_core`` runs the ``nn-core`` command (see :mod:`nn_core.cli`)."""
from .cli import main

raise SystemExit(main())
