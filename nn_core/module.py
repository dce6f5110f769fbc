"""The Module protocol every nn_core layer follows (docs/guide/tour.md, "The Module protocol").

A module owns

* ``params``: its own live parameter arrays, by name;
* ``grads``: arrays of the same keys and shapes that ``backward`` **adds** into;
* children: sub-modules assigned as attributes (or held by a :class:`ModuleList`),
  whose parameters appear in :meth:`Module.parameters` under dotted names such as
  ``"layers.0.W_ih"``.

``forward`` computes the output and keeps exactly what ``backward`` needs with
``self._save_cache(cache)`` (a small dataclass); ``backward(grad_output)`` reads it
with ``self._peek_cache()``, validates ``grad_output`` once, consumes the cache with
``self._pop_cache()`` (one forward allows one backward), accumulates parameter
gradients and returns the gradients of the forward's array inputs in the forward's
argument order.

Example
-------
>>> import numpy as np
>>> class Scale(Module):
...     def __init__(self, n, *, dtype=np.float32, rng=None):
...         super().__init__(dtype=dtype, rng=rng)
...         self.add_param("w", self.rng.standard_normal(n))
...     def forward(self, x):
...         self._save_cache(x)
...         return x * self.params["w"]
...     def backward(self, grad_output):
...         x = self._pop_cache()
...         self.grads["w"] += (grad_output * x).reshape(-1, x.shape[-1]).sum(0)
...         return grad_output * self.params["w"]
>>> m = Scale(3, dtype=np.float64, rng=0)
>>> y = m(np.ones((2, 3)))
>>> gx = m.backward(np.ones((2, 3)))
>>> sorted(m.parameters())
['w']
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import contextlib
import functools
import threading
import warnings

import numpy as np

from ._validation import check_keys, make_rng, require_forward, resolve_dtype

if TYPE_CHECKING:  # names used in annotations only
    from collections.abc import Iterable
    from nn_core._typing import DTypeLike, RNGLike

__all__ = ["Module", "ModuleList", "NoBackward", "enable_backward", "inference_mode",
           "is_backward_enabled", "is_inference_mode"]

_MODE = threading.local()
# per thread: the innermost grad-mode block ("inference", "backward", or None for the
# default rule: train() keeps backward caches, eval() keeps none) and the modes it replaced
_INFERENCE, _BACKWARD = "inference", "backward"


def _grad_mode():
    return getattr(_MODE, "mode", None)


def is_inference_mode() -> bool:
    """True inside :func:`inference_mode` on this thread (the innermost block)."""
    return _grad_mode() == _INFERENCE


def is_backward_enabled() -> bool:
    """True inside :func:`enable_backward` on this thread (the innermost block)."""
    return _grad_mode() == _BACKWARD


class _GradMode(contextlib.ContextDecorator):
    """A per-thread block that sets the grad mode; the innermost block wins.

    Each ``__enter__`` saves the thread's current mode on a per-thread stack, so one
    instance may decorate a function that runs on several threads or recursively.
    Used bare as a decorator (``@enable_backward``), the class decorates directly.
    """

    _mode = None

    def __new__(cls, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return cls()(args[0])                # used bare: @inference_mode
        return super().__new__(cls)

    def __enter__(self):
        saved = _MODE.__dict__.setdefault("saved", [])
        saved.append(_grad_mode())
        _MODE.mode = self._mode
        return self

    def __exit__(self, *exc):
        _MODE.mode = _MODE.saved.pop()
        return False


class inference_mode(_GradMode):
    """Run forwards without keeping anything for a backward.

    Inside the block (or the decorated function), every module's ``forward`` keeps no
    backward cache and no weight copies, so memory holds only the outputs; a
    ``backward`` afterwards raises ``RuntimeError``.  Modules in ``eval()`` behave the
    same way outside the block.  Dropout is governed by ``train()`` / ``eval()`` alone,
    as in PyTorch.  The mode is per thread; nested with :func:`enable_backward`, the
    innermost block wins.

    Parameters
    ----------
    mode : bool, default True
        ``False`` turns inference mode off inside the block: the default rule applies
        again (``train()`` keeps backward caches, ``eval()`` keeps none).

    Examples
    --------
    >>> import numpy as np, nn_core
    >>> lin = nn_core.layers.Linear(3, 2, rng=0)
    >>> with nn_core.inference_mode():
    ...     y = lin(np.ones((4, 3), np.float32))
    >>> @nn_core.inference_mode()
    ... def predict(x):
    ...     return lin(x)
    """

    def __init__(self, mode: bool = True) -> None:
        self.mode = bool(mode)
        self._mode = _INFERENCE if self.mode else None


class enable_backward(_GradMode):
    """Keep backward caches whatever ``train()`` / ``eval()`` says (the counterpart of
    ``torch.enable_grad()``).

    Inside the block (or the decorated function), every module's ``forward`` keeps what
    its ``backward`` needs, also in ``eval()``; dropout still follows ``train()`` /
    ``eval()``.  This is how to differentiate a trained model as it predicts: input
    gradients for saliency or sensitivity analysis, adversarial examples,
    physics-informed losses.  The mode is per thread; nested with
    :func:`inference_mode`, the innermost block wins.

    Examples
    --------
    >>> import numpy as np, nn_core
    >>> lin = nn_core.layers.Linear(3, 2, rng=0).eval()
    >>> x = np.ones((4, 3), np.float32)
    >>> with nn_core.enable_backward():
    ...     y = lin(x)
    >>> grad_x = lin.backward(np.ones_like(y))
    >>> grad_x.shape
    (4, 3)
    """

    _mode = _BACKWARD


class NoBackward:
    """Cache marker of a forward that allows no backward (e.g. incremental decoding)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_get_ident = threading.get_ident
_GUARDED = ("forward", "backward", "forward_sequence", "backward_sequence")
#: most forwards a module keeps for later backwards (beyond: RuntimeError, not a leak)
MAX_PENDING_FORWARDS = 4096
#: pending forwards past which a module warns, once, that memory grows without a backward
WARN_PENDING_FORWARDS = 64


def _guarded(fn):
    """``fn`` (a forward or backward) refusing to run while another thread runs one of
    this instance's guarded methods: one instance, one thread at a time."""

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        token = (_get_ident(),)
        held = self.__dict__.setdefault("_owner_thread", token)   # atomic claim
        if held is not token:
            if held[0] != token[0]:
                raise RuntimeError(
                    f"{type(self).__name__} is being used from two threads at once; a "
                    "module instance must be used by one thread at a time (give each "
                    "thread its own instance, e.g. copy.deepcopy(module))")
            return fn(self, *args, **kwargs)             # re-entrant on this thread
        try:
            return fn(self, *args, **kwargs)
        finally:
            del self.__dict__["_owner_thread"]

    method._nn_guarded = True
    return method


_INFERENCE_FORWARD = NoBackward("the forward ran in eval() or inference_mode(), which keep "
                                "no backward cache; run forward again in train() or inside "
                                "nn_core.enable_backward()")


class Module:
    """Base class: parameters, gradients, children, train/eval, state dicts.

    Parameters
    ----------
    dtype : {np.float32, np.float64}, keyword-only
        Dtype of every parameter, gradient and output.
    rng : None, int or numpy.random.Generator, keyword-only
        Source of randomness for initialisation and dropout.  The same seed gives
        the same weights.
    """

    def __init_subclass__(cls, **kwargs):
        # Record the outermost constructor call (arguments only) so that checkpoints
        # can rebuild a module without the code that constructed it.
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            @functools.wraps(init)
            def __init__(self, *args, **kw):
                if "_init_args" not in self.__dict__:
                    object.__setattr__(self, "_init_args", (args, dict(kw)))
                init(self, *args, **kw)

            cls.__init__ = __init__
        # one thread at a time per instance (see _guarded)
        for name in _GUARDED:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_nn_guarded", False):
                setattr(cls, name, _guarded(fn))

    #: attributes that are per-process working state, not part of the model: dropped by
    #: pickling / deepcopy and restored to these defaults (subclasses extend it)
    _TRANSIENT = {"_stack": list, "_owner_thread": None, "_flat": None, "_warned_pending": None}

    def __getstate__(self):
        state = dict(self.__dict__)
        for cls in type(self).__mro__:
            for name in vars(cls).get("_TRANSIENT", ()):
                state.pop(name, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for cls in type(self).__mro__:
            for name, default in vars(cls).get("_TRANSIENT", {}).items():
                if default is not None:
                    self.__dict__.setdefault(name, default())

    def __init__(self, *, dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        object.__setattr__(self, "_children", {})
        self.dtype = resolve_dtype(dtype)
        self.rng = make_rng(rng)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True
        self._stack = []                # pending forwards: (thread id, cache), newest last

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        children = self.__dict__.get("_children")
        if isinstance(value, Module):
            if children is None:
                raise RuntimeError("call Module.__init__ before assigning sub-modules")
            children[name] = value
        elif children is not None and name in children:
            del children[name]
        object.__setattr__(self, name, value)

    def add_param(self, name: str, value) -> np.ndarray:
        """Register parameter ``name`` (cast to the module dtype) and its zero gradient."""
        if "." in name:
            raise ValueError(f"parameter name must not contain '.', got {name!r}")
        arr = np.ascontiguousarray(value, dtype=self.dtype)
        if arr is value:
            arr = arr.copy()
        self.params[name] = arr
        self.grads[name] = np.zeros(arr.shape, arr.dtype)   # calloc: pages untouched until used
        return arr

    def children(self):
        """``(name, module)`` pairs of the direct sub-modules, in registration order."""
        return list(self._children.items())

    def modules(self):
        """This module and every descendant, depth first."""
        out = [self]
        for _, child in self.children():
            out.extend(child.modules())
        return out

    # -------------------------------------------------------------- parameters
    def _named(self, attr: str, prefix: str = "") -> dict:
        out = {prefix + k: v for k, v in getattr(self, attr).items()}
        for name, child in self.children():
            out.update(child._named(attr, f"{prefix}{name}."))
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        """Flat dict of live parameter arrays over this module and its children."""
        return self._named("params")

    def gradients(self) -> dict[str, np.ndarray]:
        """Flat dict of live gradient arrays; same keys as :meth:`parameters`."""
        return self._named("grads")

    def flat_parameters(self):
        """``(flat_params, flat_grads)``: every parameter and gradient of this module and
        its children in two contiguous 1-D buffers, in :meth:`parameters` order.

        The first call moves the values there and makes ``params`` / ``grads`` views of
        the buffers: arrays taken from ``params`` / ``parameters()`` before the call are
        no longer the live ones, so call it right after building the model.  Later
        calls return the same buffers while every parameter still lives there.
        :func:`~nn_core.optim.clip_grad_norm` then needs one pass, and a distributed
        all-reduce one call.
        """
        flat = self._flat_buffers()
        if flat is not None:
            return flat
        named = self._named_param_slots()
        total = sum(m.params[k].size for m, k in named)
        fp, fg = np.empty(total, self.dtype), np.empty(total, self.dtype)
        off = 0
        for m, k in named:
            p, g = m.params[k], m.grads[k]
            n = p.size
            fp[off:off + n] = p.reshape(-1)
            fg[off:off + n] = g.reshape(-1)
            m.params[k] = fp[off:off + n].reshape(p.shape)
            m.grads[k] = fg[off:off + n].reshape(g.shape)
            off += n
        object.__setattr__(self, "_flat", (fp, fg))
        return fp, fg

    def _flat_buffers(self):
        """The buffers of :meth:`flat_parameters` if every parameter still lives there."""
        flat = self.__dict__.get("_flat")
        if flat is None:
            return None
        named = self._named_param_slots()
        if (sum(m.params[k].size for m, k in named) == flat[0].size
                and all(m.params[k].base is flat[0] and m.grads[k].base is flat[1]
                        for m, k in named)):
            return flat
        return None

    def _named_param_slots(self):
        """``(module, name)`` of every parameter, in :meth:`parameters` order."""
        out = [(self, k) for k in self.params]
        for _, child in self.children():
            out.extend(child._named_param_slots())
        return out

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters().values()))

    def zero_grad(self) -> None:
        """Set every gradient of this module and its children to 0 (in place)."""
        for g in self.gradients().values():
            g[...] = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of :meth:`parameters`."""
        return {k: v.copy() for k, v in self.parameters().items()}

    def load_state_dict(self, state_dict) -> None:
        """Copy ``state_dict`` into the live parameters after checking it completely.

        Raises
        ------
        ValueError
            Missing or unexpected keys, or a shape that differs (all named).
        TypeError
            A value whose dtype is not this module's dtype.
        """
        params = self.parameters()
        check_keys(state_dict, params, f"state_dict of {type(self).__name__}")
        for key, value in state_dict.items():
            arr = np.asarray(value)
            if arr.shape != params[key].shape:
                raise ValueError(
                    f"state_dict[{key!r}] must have shape {params[key].shape}, got {arr.shape}"
                )
            if arr.dtype != params[key].dtype:
                raise TypeError(
                    f"state_dict[{key!r}] must have dtype {params[key].dtype}, got {arr.dtype}"
                )
        for key, value in state_dict.items():
            params[key][...] = value

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True):
        """Set training mode on this module and its children; returns ``self``."""
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: dropout off, and forwards keep no backward cache (a backward
        after them raises RuntimeError; see :func:`inference_mode`) unless inside
        :func:`enable_backward`; returns ``self``."""
        return self.train(False)

    # ------------------------------------------------------- forward/backward
    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------- backward caches
    # forward keeps what backward needs with _save_cache (a small dataclass, never a
    # positional tuple); backward reads it with _peek_cache, validates grad_output,
    # then consumes it with _pop_cache, so a rejected grad_output leaves the forward
    # usable for a corrected retry.  Pending forwards form a stack: each backward
    # matches the most recent unmatched forward (a module applied twice in one graph).
    def keeps_cache(self) -> bool:
        """True when a ``forward`` now keeps what ``backward`` needs: inside
        :func:`enable_backward`; in training mode outside :func:`inference_mode`."""
        mode = _grad_mode()
        return mode == _BACKWARD or (mode is None and self.training)

    @property
    def num_pending(self) -> int:
        """How many forwards of this module (not its children) wait for a backward."""
        return sum(not isinstance(c, NoBackward) for _, c in self.__dict__.get("_stack", ()))

    def clear_pending(self) -> None:
        """Drop every forward still waiting for a backward, in this module and its
        children, and free what they keep.

        A training-mode ``forward`` keeps a backward cache until its ``backward`` runs;
        call this after forwards whose backward will never come (an early exit from a
        training step, a forward on a training-mode model for logging).  It is what
        discarding the output's graph is in PyTorch.  A ``backward`` afterwards raises
        ``RuntimeError``.  Forward-only code is better run in ``eval()`` or
        :func:`inference_mode`, where nothing is kept in the first place.
        """
        for m in self.modules():
            m._clear_own_pending()

    def _clear_own_pending(self) -> None:
        """Drop this module's pending forwards (not its children's).  A module that
        keeps forwards outside the cache stack extends it, and :attr:`num_pending`."""
        self._stack = []

    def _save_cache(self, cache) -> None:
        """Keep ``cache`` for a later ``backward`` (nothing in eval / inference mode)."""
        if not self.keeps_cache():
            self._save_marker(_INFERENCE_FORWARD)
            return
        stack = self._stack
        if stack and isinstance(stack[-1][1], NoBackward):
            stack.clear()
        if len(stack) >= MAX_PENDING_FORWARDS:
            raise RuntimeError(
                f"{type(self).__name__} holds {len(stack)} forwards waiting for a backward; "
                "run forward-only code in eval() or nn_core.inference_mode(), or call "
                "backward (or clear_pending()) first")
        stack.append((threading.get_ident(), cache))
        if len(stack) > WARN_PENDING_FORWARDS and not self.__dict__.get("_warned_pending"):
            self._warned_pending = True
            warnings.warn(
                f"{type(self).__name__} holds {len(stack)} training-mode forwards waiting "
                "for a backward, and memory grows with each; run forward-only code in "
                "eval() or nn_core.inference_mode(), or call clear_pending()",
                RuntimeWarning, stacklevel=3)

    def _save_no_backward(self, reason: str) -> None:
        """Record a forward that allows no backward; ``backward`` then raises
        ``RuntimeError(reason)``."""
        self._save_marker(NoBackward(reason))

    def _save_marker(self, marker):
        # a forward without a backward replaces what was pending: the next backward
        # must fail rather than silently consume an older forward
        self._stack = [(threading.get_ident(), marker)]

    def _peek_cache(self):
        """The newest pending forward cache, not consumed (RuntimeError when there is
        none, when it allows no backward, or when another thread ran it)."""
        stack = self._stack
        if not stack:
            require_forward(None, self)
        tid, cache = stack[-1]
        if isinstance(cache, NoBackward):
            stack.pop()
            raise RuntimeError(f"{type(self).__name__}.backward is not available: "
                               f"{cache.reason}")
        if tid != threading.get_ident():
            raise RuntimeError(
                f"{type(self).__name__}.backward: the newest pending forward ran on another "
                "thread; a module instance must be used by one thread at a time")
        return cache

    def _pop_cache(self):
        """The newest pending forward cache, consumed (RuntimeError when there is none)."""
        cache = self._peek_cache()
        self._stack.pop()
        return cache

    def __repr__(self) -> str:
        args, kwargs = getattr(self, "_init_args", ((), {}))
        parts = [repr(a) for a in args] + [
            f"{k}={v!r}" for k, v in kwargs.items() if k not in ("rng",)
        ]
        return f"{type(self).__name__}({', '.join(parts)})"


class ModuleList(Module):
    """An ordered container of modules named ``"0"``, ``"1"``, ...

    Parameters of item ``k`` appear as ``"{k}.{name}"`` (``"layers.0.W_ih"`` when
    the list is assigned to ``self.layers``).
    """

    def __init__(self, modules: Iterable[Module] = (), *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self._items = []
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList items must be Modules, got {type(module).__name__}")
        self._children[str(len(self._items))] = module
        self._items.append(module)

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)
