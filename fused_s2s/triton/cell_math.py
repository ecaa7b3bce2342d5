"""Activation and LSTM cell math shared by the Triton kernels (the Triton twin of
csrc/include/fused_s2s/lstm_cell.h)."""
import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # 2σ(2x) − 1: exp overflow saturates to exactly ±1 without inf/inf, and NaN stays NaN
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def lstm_cell(a_i, a_f, a_g, a_o, c_prev):
    """Pre-activation gates (i, f, g, o) and c_{t-1} -> activated gates, c_t, h_t."""
    ig = sigmoid(a_i)
    fg = sigmoid(a_f)
    gg = tanh(a_g)
    og = sigmoid(a_o)
    c = fg * c_prev + ig * gg
    return ig, fg, gg, og, c, og * tanh(c)


@triton.jit
def peephole_lstm_cell(a_i, a_f, a_g, a_o, c_prev, w_ci, w_cf, w_co):
    """The peephole cell (csrc/include/fused_s2s/lstm_cell.h peephole_cell_forward): i and f also see c_{t-1},
    o sees c_t. Pre-activation gates, c_{t-1} and the peephole weights -> activated gates, c_t, h_t."""
    ig = sigmoid(a_i + w_ci * c_prev)
    fg = sigmoid(a_f + w_cf * c_prev)
    gg = tanh(a_g)
    c = fg * c_prev + ig * gg
    og = sigmoid(a_o + w_co * c)
    return ig, fg, gg, og, c, og * tanh(c)
