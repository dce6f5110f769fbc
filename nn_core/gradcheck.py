"""Finite-difference check of a module's hand-written ``backward``.

``gradcheck(module, inputs)`` runs ``module.forward(*inputs)``, contracts the
output(s) with a random ``grad_output`` into the scalar

    f = sum_i <grad_output_i, output_i>,

and compares ``backward(grad_output)`` (input gradients and the accumulated
parameter gradients) with central differences

    df/dx_k ~ (f(x + eps e_k) - f(x - eps e_k)) / (2 eps)

for every element of every floating input and every parameter.  Float64 only:
central differences in float32 carry ~1e-3 noise and prove nothing.

Conventions: ``inputs`` is passed positionally to ``forward``.  When ``forward``
returns a tuple (e.g. ``(output, final_state)``), ``backward`` is called with the
matching tuple of gradients unpacked (``backward(g_output, g_state)``).  The
gradients ``backward`` returns are matched to ``inputs`` by position, nested
tuples (``(h, c)``) included; inputs without a returned gradient (masks, lengths,
``None``) are held fixed.  Use ``dropout=0``, or ``module.eval()`` inside
:func:`~nn_core.enable_backward`: the function must be deterministic.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass, field

import numpy as np

from .module import inference_mode

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, RNGLike
    from nn_core.module import Module

__all__ = ["gradcheck", "GradcheckReport", "GradcheckEntry"]


@dataclass
class GradcheckEntry:
    name: str
    max_abs_err: float
    max_rel_err: float
    ok: bool
    size: int


@dataclass
class GradcheckReport:
    """Per-name errors of analytic vs numerical gradients; ``ok`` if all passed."""

    entries: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries.values())

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"gradcheck: {'ok' if self.ok else 'FAILED'}",
                 f"  {'name':<24} {'size':>7} {'max abs err':>12} {'max rel err':>12}"]
        for e in self.entries.values():
            flag = "" if e.ok else "  <-- mismatch"
            lines.append(f"  {e.name:<24} {e.size:>7} {e.max_abs_err:12.3e} "
                         f"{e.max_rel_err:12.3e}{flag}")
        return "\n".join(lines)

    __repr__ = __str__


def _flatten(obj):
    """Arrays of a nested tuple/list structure, in order (``None`` skipped)."""
    if obj is None:
        return []
    if isinstance(obj, (tuple, list)):
        return [a for item in obj for a in _flatten(item)]
    return [obj]


def _rebuild(struct, flat):
    """Fill the array slots of ``struct`` (nested tuples) from the list ``flat``, in order."""
    if struct is None:
        return None
    if isinstance(struct, (tuple, list)):
        return type(struct)(_rebuild(s, flat) for s in struct)
    return flat.pop(0)


def _pairs(inputs, grads, prefix):
    """Yield ``(name, path, grad)`` for every input that has a returned gradient."""
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    for i, inp in enumerate(inputs):
        if i >= len(grads) or grads[i] is None:
            continue
        name = f"{prefix}[{i}]"
        if isinstance(inp, (tuple, list)):
            for sub in _pairs(inp, grads[i], name):
                yield (sub[0], (i,) + sub[1], sub[2])
        elif isinstance(inp, np.ndarray) and inp.dtype.kind == "f":
            yield name, (i,), grads[i]


def _replace(inputs, path, value):
    items = list(inputs)
    if len(path) == 1:
        items[path[0]] = value
    else:
        items[path[0]] = _replace(items[path[0]], path[1:], value)
    return type(inputs)(items) if isinstance(inputs, tuple) else items


def _get(inputs, path):
    for p in path:
        inputs = inputs[p]
    return inputs


def _compare(name, analytic, numeric, rtol, atol):
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != numeric.shape:
        return GradcheckEntry(name, np.inf, np.inf, False, numeric.size)
    diff = np.abs(analytic - numeric)
    scale = np.maximum(np.abs(analytic), np.abs(numeric))
    rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), 0.0)
    ok = bool(np.all(diff <= atol + rtol * np.abs(numeric)))
    return GradcheckEntry(name, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)),
                          ok, numeric.size)


def gradcheck(module: Module, inputs: tuple[ArrayLike, ...], grad_output: ArrayLike | None = None,
              eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7,
              raise_on_fail: bool = False, rng: RNGLike = None) -> GradcheckReport:
    """Compare ``module.backward`` with central finite differences in float64.

    Parameters
    ----------
    module : Module
        A float64 module (``dtype=np.float64``); its parameters are perturbed in
        place during the check and restored afterwards.
    inputs : tuple
        Positional arguments of ``module.forward``.  Floating arrays are cast to
        float64 and checked; other entries are passed through unchanged.
    grad_output : array or tuple of arrays, optional
        Upstream gradient; random normal (fresh each call) when omitted.
    eps, rtol, atol : float
        Step and tolerances: an element passes if
        ``|analytic - numeric| <= atol + rtol * |numeric|``.
    raise_on_fail : bool
        Raise ``AssertionError`` with the report when any element fails.

    Returns
    -------
    GradcheckReport
        ``report.ok`` and, per input/parameter name, max abs and rel errors.
    """
    if np.dtype(module.dtype) != np.float64:
        raise TypeError(f"gradcheck needs a float64 module (dtype=np.float64), got {module.dtype}")
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    gen = np.random.default_rng(rng)

    def cast(x):
        if isinstance(x, (tuple, list)):
            return type(x)(cast(v) for v in x)
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            return x.astype(np.float64)
        return x

    inputs = cast(inputs)
    out = module.forward(*inputs)
    outs = _flatten(out)
    if grad_output is None:
        grad_flat = [gen.standard_normal(np.shape(o)) for o in outs]
    else:
        grad_flat = [np.asarray(g, dtype=np.float64) for g in _flatten(grad_output)]

    grad_struct = _rebuild(out, list(grad_flat))

    def loss(*args):
        with inference_mode():                   # outputs only: keep no caches
            o = _flatten(module.forward(*args))
        return sum(float(np.sum(a * g)) for a, g in zip(o, grad_flat))

    module.zero_grad()
    returned = (module.backward(*grad_struct) if isinstance(out, tuple)
                else module.backward(grad_struct))
    param_grads = {k: v.copy() for k, v in module.gradients().items()}

    report = GradcheckReport()
    for name, path, analytic in list(_pairs(inputs, returned, "input")):
        x = _get(inputs, path).copy()
        numeric = np.zeros(x.shape)
        flat, num = x.reshape(-1), numeric.reshape(-1)
        for k in range(flat.size):
            orig = flat[k]
            flat[k] = orig + eps
            fp = loss(*_replace(inputs, path, x))
            flat[k] = orig - eps
            fm = loss(*_replace(inputs, path, x))
            flat[k] = orig
            num[k] = (fp - fm) / (2 * eps)
        report.entries[name] = _compare(name, analytic, numeric, rtol, atol)

    for name, p in module.parameters().items():
        numeric = np.zeros(p.shape)
        flat, num = p.reshape(-1), numeric.reshape(-1)
        for k in range(flat.size):
            orig = flat[k]
            flat[k] = orig + eps
            fp = loss(*inputs)
            flat[k] = orig - eps
            fm = loss(*inputs)
            flat[k] = orig
            num[k] = (fp - fm) / (2 * eps)
        report.entries[name] = _compare(name, param_grads[name], numeric, rtol, atol)

    module.clear_pending()
    if hasattr(module, "reset"):
        module.reset()
    if raise_on_fail and not report.ok:
        raise AssertionError(str(report))
    return report
