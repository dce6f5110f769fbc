"""Fused kernels of the toolkit layers (see ``_layers.h`` for the math and accuracy).

Each entry point checks shapes (memoryviews check dtype and C-contiguity) before the
GIL is released; the Python layers in ``nn_core.layers``, ``losses`` and ``optim``
validate the user's arguments and split large calls over threads.
"""
from cython cimport floating
from libc.stdint cimport int64_t, uint32_t, uint64_t

from _vmath cimport bind_simd

bind_simd(__name__)

cdef extern from "_layers.h" nogil:
    void nn_gelu_fwd_f(float* y, const float* x, Py_ssize_t n, int approx) noexcept
    void nn_gelu_fwd_d(double* y, const double* x, Py_ssize_t n, int approx) noexcept
    void nn_gelu_bwd_f(float* dx, const float* x, const float* dy, Py_ssize_t n,
                       int approx) noexcept
    void nn_gelu_bwd_d(double* dx, const double* x, const double* dy, Py_ssize_t n,
                       int approx) noexcept
    void nn_layernorm_fwd_f(const float* x, float* y, float* mean, float* rstd,
                            const float* gamma, const float* beta, Py_ssize_t N,
                            Py_ssize_t D, float eps) noexcept
    void nn_layernorm_fwd_d(const double* x, double* y, double* mean, double* rstd,
                            const double* gamma, const double* beta, Py_ssize_t N,
                            Py_ssize_t D, double eps) noexcept
    void nn_layernorm_bwd_f(const float* x, const float* dy, const float* mean,
                            const float* rstd, const float* gamma, float* dx, float* dgamma,
                            float* dbeta, Py_ssize_t N, Py_ssize_t D) noexcept
    void nn_layernorm_bwd_d(const double* x, const double* dy, const double* mean,
                            const double* rstd, const double* gamma, double* dx,
                            double* dgamma, double* dbeta, Py_ssize_t N,
                            Py_ssize_t D) noexcept
    Py_ssize_t nn_xent_f(const float* z, const int64_t* t, float* loss, float* grad,
                         Py_ssize_t N, Py_ssize_t C, int64_t ignore, float w) noexcept
    Py_ssize_t nn_xent_d(const double* z, const int64_t* t, double* loss, double* grad,
                         Py_ssize_t N, Py_ssize_t C, int64_t ignore, double w) noexcept
    Py_ssize_t nn_scatter_add_f(float* gW, const int64_t* ids, const float* g, Py_ssize_t N,
                                Py_ssize_t E, Py_ssize_t rows, int64_t skip) noexcept
    Py_ssize_t nn_scatter_add_d(double* gW, const int64_t* ids, const double* g,
                                Py_ssize_t N, Py_ssize_t E, Py_ssize_t rows,
                                int64_t skip) noexcept
    void nn_adam_f(float* p, const float* g, float* m, float* v, Py_ssize_t n, float b1,
                   float b2, float step, float sqrt_bc2, float eps, float wd, float decay,
                   int decoupled) noexcept
    void nn_adam_d(double* p, const double* g, double* m, double* v, Py_ssize_t n,
                   double b1, double b2, double step, double sqrt_bc2, double eps,
                   double wd, double decay, int decoupled) noexcept
    void nn_sgd_f(float* p, const float* g, float* buf, Py_ssize_t n, float lr, float mom,
                  float damp, float wd, int nesterov, int first) noexcept
    void nn_sgd_d(double* p, const double* g, double* buf, Py_ssize_t n, double lr,
                  double mom, double damp, double wd, int nesterov, int first) noexcept
    void nn_dropout_f(float* y, const float* x, Py_ssize_t n, uint64_t off, uint32_t k0,
                      uint32_t k1, uint32_t threshold, float scale) noexcept
    void nn_dropout_d(double* y, const double* x, Py_ssize_t n, uint64_t off, uint32_t k0,
                      uint32_t k1, uint32_t threshold, double scale) noexcept


cdef inline void _same(Py_ssize_t a, Py_ssize_t b, str what) except *:
    if a != b:
        raise ValueError(f"{what}: expected {a} elements, got {b}")


# ------------------------------------------------------------------------ GELU --
def gelu_forward(const floating[::1] x, floating[::1] y, bint approximate):
    """``y = GELU(x)`` (flat arrays); ``approximate``: the tanh form."""
    cdef Py_ssize_t n = x.shape[0]
    _same(n, y.shape[0], "y")
    if n == 0:
        return
    with nogil:
        if floating is float:
            nn_gelu_fwd_f(&y[0], &x[0], n, approximate)
        else:
            nn_gelu_fwd_d(&y[0], &x[0], n, approximate)


def gelu_backward(const floating[::1] x, const floating[::1] dy, floating[::1] dx,
                  bint approximate):
    """``dx = dy * GELU'(x)`` (flat arrays)."""
    cdef Py_ssize_t n = x.shape[0]
    _same(n, dy.shape[0], "dy")
    _same(n, dx.shape[0], "dx")
    if n == 0:
        return
    with nogil:
        if floating is float:
            nn_gelu_bwd_f(&dx[0], &x[0], &dy[0], n, approximate)
        else:
            nn_gelu_bwd_d(&dx[0], &x[0], &dy[0], n, approximate)


# ------------------------------------------------------------------- LayerNorm --
def layernorm_forward(const floating[:, ::1] x, floating[:, ::1] y, floating[::1] mean,
                      floating[::1] rstd, const floating[::1] gamma,
                      const floating[::1] beta, double eps):
    """Rows of ``x [N, D]`` normalised into ``y``; ``mean``, ``rstd`` ``[N]`` kept.
    ``gamma``/``beta`` ``[D]`` or None (no affine part)."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    cdef const floating* g = NULL
    cdef const floating* b = NULL
    if y.shape[0] != N or y.shape[1] != D:
        raise ValueError(f"y must have shape {(N, D)}")
    _same(N, mean.shape[0], "mean")
    _same(N, rstd.shape[0], "rstd")
    if (gamma is None) != (beta is None):
        raise ValueError("gamma and beta must both be given or both be None")
    if gamma is not None:
        _same(D, gamma.shape[0], "gamma")
        _same(D, beta.shape[0], "beta")
        if D:
            g = &gamma[0]
            b = &beta[0]
    if N == 0 or D == 0:
        return
    with nogil:
        if floating is float:
            nn_layernorm_fwd_f(&x[0, 0], &y[0, 0], &mean[0], &rstd[0], g, b, N, D,
                               <float> eps)
        else:
            nn_layernorm_fwd_d(&x[0, 0], &y[0, 0], &mean[0], &rstd[0], g, b, N, D, eps)


def layernorm_backward(const floating[:, ::1] x, const floating[:, ::1] dy,
                       const floating[::1] mean, const floating[::1] rstd,
                       const floating[::1] gamma, floating[:, ::1] dx,
                       floating[::1] dgamma, floating[::1] dbeta):
    """``dx`` from ``dy`` (rows ``[N, D]``); ``dgamma``/``dbeta`` accumulate (+=).
    ``gamma``, ``dgamma``, ``dbeta`` None without the affine part."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    cdef const floating* g = NULL
    cdef floating* dg = NULL
    cdef floating* db = NULL
    for name, a in (("dy", dy), ("dx", dx)):
        if a.shape[0] != N or a.shape[1] != D:
            raise ValueError(f"{name} must have shape {(N, D)}")
    _same(N, mean.shape[0], "mean")
    _same(N, rstd.shape[0], "rstd")
    if gamma is not None:
        if dgamma is None or dbeta is None:
            raise ValueError("dgamma and dbeta are needed with gamma")
        _same(D, gamma.shape[0], "gamma")
        _same(D, dgamma.shape[0], "dgamma")
        _same(D, dbeta.shape[0], "dbeta")
        if D:
            g, dg, db = &gamma[0], &dgamma[0], &dbeta[0]
    if N == 0 or D == 0:
        return
    with nogil:
        if floating is float:
            nn_layernorm_bwd_f(&x[0, 0], &dy[0, 0], &mean[0], &rstd[0], g, &dx[0, 0], dg,
                               db, N, D)
        else:
            nn_layernorm_bwd_d(&x[0, 0], &dy[0, 0], &mean[0], &rstd[0], g, &dx[0, 0], dg,
                               db, N, D)


# ------------------------------------------------------- softmax cross-entropy --
def cross_entropy(const floating[:, ::1] z, const int64_t[::1] targets,
                  floating[::1] loss, floating[:, ::1] grad, int64_t ignore_index,
                  double weight):
    """Per-row loss and ``grad = weight * (softmax(z) - onehot)`` of ``z [N, C]`` in one
    pass (ignored rows: 0); returns the number of rows not ignored."""
    cdef Py_ssize_t N = z.shape[0], C = z.shape[1], kept
    _same(N, targets.shape[0], "targets")
    _same(N, loss.shape[0], "loss")
    if grad.shape[0] != N or grad.shape[1] != C:
        raise ValueError(f"grad must have shape {(N, C)}")
    if N == 0:
        return 0
    if C == 0:
        raise ValueError("z must have at least one class")
    with nogil:
        if floating is float:
            kept = nn_xent_f(&z[0, 0], &targets[0], &loss[0], &grad[0, 0], N, C,
                             ignore_index, <float> weight)
        else:
            kept = nn_xent_d(&z[0, 0], &targets[0], &loss[0], &grad[0, 0], N, C,
                             ignore_index, weight)
    if kept < 0:
        raise ValueError(f"targets[{-1 - kept}] must be in [0, {C}) or ignore_index")
    return kept


# ---------------------------------------------------------- embedding backward --
def scatter_add(floating[:, ::1] grad_W, const int64_t[::1] ids,
                const floating[:, ::1] grad, int64_t skip):
    """``grad_W[ids[n]] += grad[n]`` for every ``n`` with ``ids[n] != skip``."""
    cdef Py_ssize_t N = ids.shape[0], E = grad_W.shape[1], rows = grad_W.shape[0], bad
    if grad.shape[0] != N or grad.shape[1] != E:
        raise ValueError(f"grad must have shape {(N, E)}")
    if N == 0 or E == 0:
        return
    with nogil:
        if floating is float:
            bad = nn_scatter_add_f(&grad_W[0, 0], &ids[0], &grad[0, 0], N, E, rows, skip)
        else:
            bad = nn_scatter_add_d(&grad_W[0, 0], &ids[0], &grad[0, 0], N, E, rows, skip)
    if bad < 0:
        raise ValueError(f"ids[{-1 - bad}] must be in [0, {rows})")


# ------------------------------------------------------------------ optimizers --
def adam(list params, list grads, list exp_avg, list exp_avg_sq, double lr, double beta1,
         double beta2, long step, double eps, double weight_decay, bint decoupled):
    """Step ``step`` (1, 2, ...) of Adam / AdamW (``decoupled``) on every array of
    ``params`` (flat, C-contiguous, one dtype), in place; the other lists match it array
    by array.  PyTorch's arithmetic: bias corrections ``1 - beta^step``."""
    cdef Py_ssize_t i, n = len(params)
    if not (len(grads) == len(exp_avg) == len(exp_avg_sq) == n):
        raise ValueError("params, grads, exp_avg and exp_avg_sq must have the same length")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    cdef double step_size = lr / (1.0 - beta1 ** step)
    cdef double sqrt_bc2 = (1.0 - beta2 ** step) ** 0.5
    cdef double decay = 1.0 - lr * weight_decay
    for i in range(n):
        _adam_one(params[i], grads[i], exp_avg[i], exp_avg_sq[i], beta1, beta2, step_size,
                  sqrt_bc2, eps, weight_decay, decay, decoupled)


def _adam_one(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
               double b1, double b2, double step, double sqrt_bc2, double eps, double wd,
               double decay, bint decoupled):
    cdef Py_ssize_t n = p.shape[0]
    _same(n, g.shape[0], "grad")
    _same(n, m.shape[0], "exp_avg")
    _same(n, v.shape[0], "exp_avg_sq")
    if n == 0:
        return
    with nogil:
        if floating is float:
            nn_adam_f(&p[0], &g[0], &m[0], &v[0], n, <float> b1, <float> b2, <float> step,
                      <float> sqrt_bc2, <float> eps, <float> wd, <float> decay, decoupled)
        else:
            nn_adam_d(&p[0], &g[0], &m[0], &v[0], n, b1, b2, step, sqrt_bc2, eps, wd, decay,
                      decoupled)


def sgd(list params, list grads, list buffers, double lr, double momentum, double dampening,
        double weight_decay, bint nesterov, bint first):
    """One SGD update of every array in ``params`` in place; ``buffers``: the momentum
    buffers (None entries without momentum)."""
    cdef Py_ssize_t i, n = len(params)
    if not (len(grads) == len(buffers) == n):
        raise ValueError("params, grads and buffers must have the same length")
    for i in range(n):
        _sgd_one(params[i], grads[i], buffers[i], lr, momentum, dampening, weight_decay,
                 nesterov, first)


def _sgd_one(floating[::1] p, const floating[::1] g, floating[::1] buf, double lr,
              double mom, double damp, double wd, bint nesterov, bint first):
    cdef Py_ssize_t n = p.shape[0]
    cdef floating* b = NULL
    _same(n, g.shape[0], "grad")
    if buf is not None:
        _same(n, buf.shape[0], "momentum buffer")
        if n:
            b = &buf[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            nn_sgd_f(&p[0], &g[0], b, n, <float> lr, <float> mom, <float> damp, <float> wd,
                     nesterov, first)
        else:
            nn_sgd_d(&p[0], &g[0], b, n, lr, mom, damp, wd, nesterov, first)


# --------------------------------------------------------------------- dropout --
def dropout(const floating[::1] x, floating[::1] y, uint64_t offset, uint32_t k0,
            uint32_t k1, uint32_t threshold, double scale):
    """``y[i] = x[i] * scale`` where the counter-based mask keeps element ``offset + i``
    (``hash >= threshold``), else 0; the same key regenerates the same mask."""
    cdef Py_ssize_t n = x.shape[0]
    _same(n, y.shape[0], "y")
    if n == 0:
        return
    with nogil:
        if floating is float:
            nn_dropout_f(&y[0], &x[0], n, offset, k0, k1, threshold, <float> scale)
        else:
            nn_dropout_d(&y[0], &x[0], n, offset, k0, k1, threshold, scale)
