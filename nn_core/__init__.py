"""nn_core: attention and recurrent layers for the CPU, with explicit backward passes.

Every layer follows the :class:`Module` protocol (``forward`` / hand-derived
``backward``, ``params`` / ``grads``); :func:`gradcheck` checks any of them against
central finite differences.
"""
from . import attention
from . import recurrent
from .gradcheck import GradcheckReport, gradcheck
from .module import (Module, ModuleList, enable_backward, inference_mode, is_backward_enabled,
                     is_inference_mode)
from . import layers, losses, optim  # noqa: E402  (training toolkit)
from .checkpoint import CheckpointError, load, load_training_state, save  # noqa: E402
from . import memory, transformer  # noqa: E402
from . import datasets, models, training  # noqa: E402  (demo models, their data, the loop)
from .training import Trainer, fit  # noqa: E402
from . import distributed  # noqa: E402  (MPI data parallelism; mpi4py only when launched)

__version__ = "0.1.0"

__all__ = ["Module", "ModuleList", "inference_mode", "is_inference_mode", "enable_backward",
           "is_backward_enabled", "gradcheck",
           "GradcheckReport", "attention", "recurrent", "layers", "losses", "optim", "transformer",
           "memory",
           "save", "load", "load_training_state", "CheckpointError", "datasets", "models",
           "training", "Trainer", "fit", "distributed", "__version__"]
