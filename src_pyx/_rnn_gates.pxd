# cython: language_level=3
"""Fused-type front of the per-row gate passes in ``_rnn_gates.h`` (header only):
one name per pass; see the header for the notation.  ``n`` units from the given
pointers, ``H`` the gate stride of the ``[G*H]`` rows, ``R`` that of ``hr``."""
from cython cimport floating


cdef extern from "_rnn_gates.h" nogil:
    void nn_lstm_fwd_f(float* a, const float* hr, const float* bx, const float* cp,
                       float* cn, float* tc, float* hn, float* o, Py_ssize_t n,
                       Py_ssize_t H, Py_ssize_t R) noexcept
    void nn_lstm_fwd_d(double* a, const double* hr, const double* bx, const double* cp,
                       double* cn, double* tc, double* hn, double* o, Py_ssize_t n,
                       Py_ssize_t H, Py_ssize_t R) noexcept
    void nn_rnn_fwd_f(float* a, const float* hr, const float* bx, float* hn, float* o,
                      Py_ssize_t n, int relu) noexcept
    void nn_rnn_fwd_d(double* a, const double* hr, const double* bx, double* hn, double* o,
                      Py_ssize_t n, int relu) noexcept
    void nn_gru_ra_fwd_f(float* a, const float* hr, const float* bx, const float* bhn,
                         const float* hp, float* hw, float* hn, float* o, Py_ssize_t n,
                         Py_ssize_t H, Py_ssize_t R) noexcept
    void nn_gru_ra_fwd_d(double* a, const double* hr, const double* bx, const double* bhn,
                         const double* hp, double* hw, double* hn, double* o, Py_ssize_t n,
                         Py_ssize_t H, Py_ssize_t R) noexcept
    void nn_gru_fwd1_f(float* a, const float* hr, const float* bx, const float* hp,
                       float* rh, Py_ssize_t n, Py_ssize_t H, Py_ssize_t R) noexcept
    void nn_gru_fwd1_d(double* a, const double* hr, const double* bx, const double* hp,
                       double* rh, Py_ssize_t n, Py_ssize_t H, Py_ssize_t R) noexcept
    void nn_gru_fwd2_f(float* a, const float* hr, const float* bx, const float* hp,
                       float* hn, float* o, Py_ssize_t n, Py_ssize_t H) noexcept
    void nn_gru_fwd2_d(double* a, const double* hr, const double* bx, const double* hp,
                       double* hn, double* o, Py_ssize_t n, Py_ssize_t H) noexcept
    void nn_lstm_bwd_f(const float* g, const float* tc, const float* cp, const float* dh,
                       const float* go, float* dc, float* dgr, Py_ssize_t n,
                       Py_ssize_t H) noexcept
    void nn_lstm_bwd_d(const double* g, const double* tc, const double* cp,
                       const double* dh, const double* go, double* dc, double* dgr,
                       Py_ssize_t n, Py_ssize_t H) noexcept
    void nn_rnn_bwd_f(const float* g, const float* dh, const float* go, float* dgr,
                      Py_ssize_t n, int relu) noexcept
    void nn_rnn_bwd_d(const double* g, const double* dh, const double* go, double* dgr,
                      Py_ssize_t n, int relu) noexcept
    void nn_gru_ra_bwd_f(const float* g, const float* hw, const float* hp, const float* dh,
                         const float* go, float* dgx, float* dgr, float* dst, Py_ssize_t n,
                         Py_ssize_t H) noexcept
    void nn_gru_ra_bwd_d(const double* g, const double* hw, const double* hp,
                         const double* dh, const double* go, double* dgx, double* dgr,
                         double* dst, Py_ssize_t n, Py_ssize_t H) noexcept
    void nn_gru_bwd1_f(const float* g, const float* hp, const float* dh, const float* go,
                       float* dgr, float* dst, Py_ssize_t n, Py_ssize_t H) noexcept
    void nn_gru_bwd1_d(const double* g, const double* hp, const double* dh,
                       const double* go, double* dgr, double* dst, Py_ssize_t n,
                       Py_ssize_t H) noexcept
    void nn_gru_bwd2_f(const float* g, const float* hp, const float* drh, float* dgr,
                       float* dst, Py_ssize_t n) noexcept
    void nn_gru_bwd2_d(const double* g, const double* hp, const double* drh, double* dgr,
                       double* dst, Py_ssize_t n) noexcept


cdef inline void lstm_fwd(floating* a, const floating* hr, const floating* bx,
                          const floating* cp, floating* cn, floating* tc, floating* hn,
                          floating* o, Py_ssize_t n, Py_ssize_t H,
                          Py_ssize_t R) noexcept nogil:
    """LSTM step row: gates ``a`` in place, ``cn``, ``tc = tanh(cn)``, ``hn``, ``o``."""
    if floating is float:
        nn_lstm_fwd_f(a, hr, bx, cp, cn, tc, hn, o, n, H, R)
    else:
        nn_lstm_fwd_d(a, hr, bx, cp, cn, tc, hn, o, n, H, R)


cdef inline void rnn_fwd(floating* a, const floating* hr, const floating* bx,
                         floating* hn, floating* o, Py_ssize_t n,
                         int relu) noexcept nogil:
    """Elman step row (``relu`` or tanh): ``a`` in place, ``hn``, ``o``."""
    if floating is float:
        nn_rnn_fwd_f(a, hr, bx, hn, o, n, relu)
    else:
        nn_rnn_fwd_d(a, hr, bx, hn, o, n, relu)


cdef inline void gru_ra_fwd(floating* a, const floating* hr, const floating* bx,
                            const floating* bhn, const floating* hp, floating* hw,
                            floating* hn, floating* o, Py_ssize_t n, Py_ssize_t H,
                            Py_ssize_t R) noexcept nogil:
    """GRU (reset_after) step row; ``hw = W_hn h + b_hn`` is kept for the backward."""
    if floating is float:
        nn_gru_ra_fwd_f(a, hr, bx, bhn, hp, hw, hn, o, n, H, R)
    else:
        nn_gru_ra_fwd_d(a, hr, bx, bhn, hp, hw, hn, o, n, H, R)


cdef inline void gru_fwd1(floating* a, const floating* hr, const floating* bx,
                          const floating* hp, floating* rh, Py_ssize_t n, Py_ssize_t H,
                          Py_ssize_t R) noexcept nogil:
    """GRU step row, pass 1: ``r``, ``z`` in ``a`` and ``rh = r * hp``."""
    if floating is float:
        nn_gru_fwd1_f(a, hr, bx, hp, rh, n, H, R)
    else:
        nn_gru_fwd1_d(a, hr, bx, hp, rh, n, H, R)


cdef inline void gru_fwd2(floating* a, const floating* hr, const floating* bx,
                          const floating* hp, floating* hn, floating* o, Py_ssize_t n,
                          Py_ssize_t H) noexcept nogil:
    """GRU step row, pass 2: ``n`` (``hr = (r*h) W_hn^T``), ``hn``, ``o``."""
    if floating is float:
        nn_gru_fwd2_f(a, hr, bx, hp, hn, o, n, H)
    else:
        nn_gru_fwd2_d(a, hr, bx, hp, hn, o, n, H)


cdef inline void lstm_bwd(const floating* g, const floating* tc, const floating* cp,
                          const floating* dh, const floating* go, floating* dc,
                          floating* dgr, Py_ssize_t n, Py_ssize_t H) noexcept nogil:
    """LSTM gate gradients ``dgr`` of one row; updates the carried ``dc``."""
    if floating is float:
        nn_lstm_bwd_f(g, tc, cp, dh, go, dc, dgr, n, H)
    else:
        nn_lstm_bwd_d(g, tc, cp, dh, go, dc, dgr, n, H)


cdef inline void rnn_bwd(const floating* g, const floating* dh, const floating* go,
                         floating* dgr, Py_ssize_t n, int relu) noexcept nogil:
    """Elman gate gradients ``dgr`` of one row."""
    if floating is float:
        nn_rnn_bwd_f(g, dh, go, dgr, n, relu)
    else:
        nn_rnn_bwd_d(g, dh, go, dgr, n, relu)


cdef inline void gru_ra_bwd(const floating* g, const floating* hw, const floating* hp,
                            const floating* dh, const floating* go, floating* dgx,
                            floating* dgr, floating* dst, Py_ssize_t n,
                            Py_ssize_t H) noexcept nogil:
    """GRU (reset_after) gate gradients (``dgx`` input side, ``dgr`` recurrent side) and
    the direct part ``dst`` of grad h_prev."""
    if floating is float:
        nn_gru_ra_bwd_f(g, hw, hp, dh, go, dgx, dgr, dst, n, H)
    else:
        nn_gru_ra_bwd_d(g, hw, hp, dh, go, dgx, dgr, dst, n, H)


cdef inline void gru_bwd1(const floating* g, const floating* hp, const floating* dh,
                          const floating* go, floating* dgr, floating* dst, Py_ssize_t n,
                          Py_ssize_t H) noexcept nogil:
    """GRU backward, pass 1: ``z``, ``n`` gradients and ``dst = (dh + go) * z``."""
    if floating is float:
        nn_gru_bwd1_f(g, hp, dh, go, dgr, dst, n, H)
    else:
        nn_gru_bwd1_d(g, hp, dh, go, dgr, dst, n, H)


cdef inline void gru_bwd2(const floating* g, const floating* hp, const floating* drh,
                          floating* dgr, floating* dst, Py_ssize_t n) noexcept nogil:
    """GRU backward, pass 2: ``r`` gradient and the ``r*h`` path into ``dst``."""
    if floating is float:
        nn_gru_bwd2_f(g, hp, drh, dgr, dst, n)
    else:
        nn_gru_bwd2_d(g, hp, drh, dgr, dst, n)
