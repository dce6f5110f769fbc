"""Smoke test of an installed nn_core (a wheel, not the source tree).

Imports every compiled kernel module and runs each kernel family once: fused attention
forward and backward, a recurrent sequence forward and backward, the layer kernels and
an optimiser step, plus one float64 gradcheck.  Used by .ci/sdist_wheel.sh and by
cibuildwheel (pyproject.toml); run it from outside the source tree, so that the
installed package is the one imported.  Needs only NumPy and SciPy.
"""
import importlib
import pathlib
import sys

import numpy as np

import nn_core
from nn_core.attention import MultiHeadAttention
from nn_core.layers import GELU, LayerNorm, Linear, Sequential
from nn_core.losses import CrossEntropyLoss
from nn_core.optim import AdamW
from nn_core.recurrent import LSTMCell

package = pathlib.Path(nn_core.__file__).parent
kernels = sorted(p.name.split(".")[0] for p in (package / "_kernels").glob("_*.so"))
print(f"nn_core {nn_core.__version__} from {package}; kernels: {', '.join(kernels)}")
expected = {"_alloc", "_attention", "_cyutility", "_layers", "_recurrent", "_simd",
            "_softmax", "_testing"}
missing = expected - set(kernels)
if missing:
    sys.exit(f"missing compiled kernels: {sorted(missing)}")
for name in kernels:
    importlib.import_module(f"nn_core._kernels.{name}")
if not (package / "py.typed").is_file():
    sys.exit("py.typed is missing from the installed package")

rng = np.random.default_rng(0)
B, L, d_model, h, T, D, H = 2, 5, 16, 4, 6, 8, 12

mha = MultiHeadAttention(d_model, h, dtype=np.float32, rng=0)
x = rng.standard_normal((B, L, d_model)).astype(np.float32)       # [B, L, d_model]
y = mha(x, is_causal=True)
gx, _, _ = mha.backward(np.ones_like(y))
assert y.shape == gx.shape == x.shape and np.isfinite(gx).all()

cell = LSTMCell(D, H, rng=0)
xs = rng.standard_normal((T, B, D)).astype(np.float32)              # [T, B, D]
out, (h_T, c_T) = cell.forward_sequence(xs)
grad_xs, _ = cell.backward_sequence(np.ones_like(out))
assert out.shape == (T, B, H) and grad_xs.shape == xs.shape and np.isfinite(grad_xs).all()

model = Sequential(Linear(D, H, rng=0), LayerNorm(H), GELU(), Linear(H, 3, rng=1))
loss_fn = CrossEntropyLoss()
opt = AdamW(model, lr=1e-2)
loss = loss_fn(model(xs[0]), np.array([0, 2]))
model.backward(loss_fn.backward()[0])
opt.step()
assert np.isfinite(loss)

report = nn_core.gradcheck(LSTMCell(3, 4, dtype=np.float64, rng=0),
                           (rng.standard_normal((2, 3)),))
if not report.ok:
    sys.exit(f"gradcheck failed: {report}")
print("smoke test passed")
