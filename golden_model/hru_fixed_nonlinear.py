"""The bit-exact integer NONLINEAR HRU: the specification of what the hardware computes.

Potential (hru_float.NONLINEAR, rhel-algorithm.md §3.3), per oscillator i:
    V_i = (α_i/2)·y_i² + σc_i·log cosh(a_i)/W_i,   a_i = W_i·y_i + (B u)_i + bias_i,
    force ∂V/∂y_i = α_i·y_i + σc_i·tanh(a_i).
σc = σ(c) is stored directly as a coefficient in [0, 1): the host applies the sigmoid (and its
chain rule, see ``gradients``), so the core needs no sigmoid. α may be one scalar register or
one word per oscillator.

Integers as in hru_fixed.py (the linear HRU, whose helpers this module reuses): Fs = state_frac,
Ws = state_width, Fd = delta_frac, Fu = input_frac, Fa = coef_a_frac (α), Fb = coef_b_frac,
Fw = coef_w_frac, Fc = coef_bias_frac, Fσ = coef_sigma_frac, T = tanh out_frac,
R(x, s) = round_shift (half away from zero), W(x) = wrap to Ws bits with the wrap counted,
tanhQ(x, f) = tanh_table.tanh_fixed of x with f fractional bits (ROM + interpolation).
Per time step and oscillator i, in this order:

    b_i   = W(R(Σ_j B_ij·u_j, Fb + Fu − Fs))           input drive (hru_fixed.input_drive)
    yh_i  = W(y_i + R(δ_i·z_i, Fd + 1))                drift 1
    a_i   = W(R(W_i·yh_i, Fw) + b_i + bias_i·2^(Fs−Fc))  tanh argument (bias: exact left shift)
    t_i   = tanhQ(a_i, Fs)                             T fractional bits, |t_i| <= 2^T
    f_i   = W(R(α_i·yh_i, Fa) + R(σc_i·t_i, Fσ + T − Fs))   force at the half-step position
    z_i   = W(z_i − R(δ_i·f_i, Fd))                    kick
    y_i   = W(yh_i + R(δ_i·z_i, Fd + 1))               drift 2
    Σy_i  = Wacc(Σy_i + y_i)                           position sum (forward only)

Only the drift rounding has to be odd for the flip-and-replay echo to retrace bit for bit; the
force (tanh included) only has to be deterministic. Echo pair, nudges and their alignment are
exactly those of hru_fixed.echo: start at (y_L, −z_L ± n_{L−1}), shared b, z ± n_{j−1} after the
step consuming u_j when j >= 1.

Gradient read-out at each echo step's half-step position, on differences of the two echoes
(⁺ = +ε echo, ⁻ = −ε echo; every accumulator wraps at acc_width, wraps counted):

    d_i    = W(yh⁺_i − yh⁻_i)        S_i = W(yh⁺_i + yh⁻_i)        Δa_i = W(a⁺_i − a⁻_i)
    Δt_i   = t⁺_i − t⁻_i                                   exact, T + 2 bits
    tm_i   = tanhQ(a⁺_i + a⁻_i, Fs + 1)                    tanh(ā): the sum read with one more
                                                           fractional bit, so no rounding
    acc_yy_i  += R(d_i·S_i, acc_a_shift)                   Σ (yh⁺² − yh⁻²)
    acc_t_i   += Δt_i                                      Σ (tanh a⁺ − tanh a⁻)
    acc_tu_ij += R(Δt_i·u_j, acc_b_shift)                  Σ (tanh a⁺ − tanh a⁻)·u
    acc_lc_i  += R(tm_i·Δa_i, acc_logcosh_shift)           Σ (log cosh a⁺ − log cosh a⁻)
    acc_ty_i  += R(t⁺_i·yh⁺_i − t⁻_i·yh⁻_i, acc_ty_shift)  Σ (tanh a⁺·yh⁺ − tanh a⁻·yh⁻)

The log cosh difference uses the midpoint rule, log cosh a⁺ − log cosh a⁻ = tanh(ā)·Δa + O(Δa³):
the two log cosh values are O(1) while their difference is O(ε'), so subtracting them would
cancel catastrophically (rhel-algorithm.md §2.8, §6.5); t⁺·yh⁺ − t⁻·yh⁻ is the difference of two
exact products, rounded once. ``gradients`` scales the accumulators on the host by −δ/(2ε') and
the parameter factors of ∂V/∂θ (see its docstring), ε' = epsilon·loss_scale.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from echoboard.golden_model.fixed import add_wrap, count, round_shift, wrap
from echoboard.golden_model.formats import FixedFormat, dequantize, quantize
from echoboard.golden_model.hru_fixed import ForwardResult, drift_shift, run_echo, run_forward
from echoboard.golden_model.tanh_table import TanhSpec, tanh_fixed


@dataclass(frozen=True)
class NonlinearFormat:
    """The linear HRU's FixedFormat plus what only the nonlinear HRU needs.

    From ``base``: state/input widths, coef_width (every coefficient word), α uses coef_a_frac,
    B coef_b_frac, δ delta_frac; the acc_yy / acc_tu accumulators use acc_a_shift / acc_b_shift.
    coef_w_frac: W in (0, 2) for 18-bit words. coef_bias_frac: bias in [−8, 8), must be <= Fs
    so that it enters the state-unit argument by an exact left shift. coef_sigma_frac: σc in
    [0, 1) using every bit of the word. acc_logcosh_shift / acc_ty_shift: rounded right shifts of
    the (T + Fs)-fractional-bit products before they enter acc_lc / acc_ty (L-fold headroom).

    The default effective nudge ε' = 2^-3·2^2 = 0.5 is 64 times smaller than the linear HRU's:
    the nonlinear RHEL estimate has an O(ε'²) bias (ε' = 8 already costs 8 % of norm at L = 2048)
    while ε' = 1/8 leaves nudges of ~100 LSB at L = 2048, whose rounding costs up to 1.7 % of norm
    (sweep in tests/test_golden_nonlinear_fixed.py). The nudge per step shrinks as 1/L under mean
    pooling, so longer sequences want a larger loss scale.
    """

    base: FixedFormat = field(default_factory=lambda: FixedFormat(loss_scale_log2=2))
    tanh: TanhSpec = field(default_factory=TanhSpec)
    coef_w_frac: int = 16
    coef_bias_frac: int = 14
    coef_sigma_frac: int = 17
    acc_logcosh_shift: int = 16
    acc_ty_shift: int = 16

    def __post_init__(self):
        b, problems = self.base, []
        if not isinstance(self.base, FixedFormat) or not isinstance(self.tanh, TanhSpec):
            raise ValueError("NonlinearFormat needs base: FixedFormat and tanh: TanhSpec")
        for name in ("coef_w_frac", "coef_bias_frac", "coef_sigma_frac", "acc_logcosh_shift", "acc_ty_shift"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.coef_bias_frac > b.state_frac:
            problems.append("coef_bias_frac must be <= state_frac (the bias enters the argument by a left shift)")
        if self.coef_sigma_frac >= b.coef_width:
            problems.append("coef_sigma_frac must be <= coef_width - 1 (sigma_c is a signed word)")
        if self.coef_sigma_frac + self.tanh.out_frac < b.state_frac:
            problems.append("coef_sigma_frac + tanh.out_frac must be >= state_frac (sigma_c*tanh is rounded down to the state)")
        if self.tanh.addr_frac > b.state_frac:
            problems.append("tanh.addr_frac must be <= state_frac (the table is addressed by the state-unit argument)")
        # int64 headroom of the widest read-out product: (T + 2)-bit tanh difference x (Ws + 1)-bit word.
        if self.tanh.out_frac + 2 + b.state_width + 1 > 63:
            problems.append("tanh.out_frac + state_width must be <= 60")
        if problems:
            raise ValueError("invalid NonlinearFormat: " + "; ".join(problems))

    @property
    def nudge_scale(self) -> float:
        return self.base.nudge_scale

    def for_length(self, length: int) -> "NonlinearFormat":
        """This format with the loss scale following the sequence length (formats.length_scale_log2)."""
        return dataclasses.replace(self, base=self.base.for_length(length))


class NonlinearParamsInt(NamedTuple):
    """Integer parameters as stored in the core's memories (all coef_width-bit words)."""

    W: jax.Array  # (P,) coef_w_frac, > 0
    bias: jax.Array  # (P,) coef_bias_frac
    sigma_c: jax.Array  # (P,) coef_sigma_frac, σ(c) in [0, 1)
    alpha: jax.Array  # () or (P,) coef_a_frac
    B: jax.Array  # (P, N) coef_b_frac
    delta: jax.Array  # (P,) delta_frac, > 0


class NonlinearAccumulators(NamedTuple):
    """The five gradient-difference accumulators (module docstring), acc_width bits each."""

    yy: jax.Array  # (P,)
    t: jax.Array  # (P,)
    tu: jax.Array  # (P, N)
    lc: jax.Array  # (P,)
    ty: jax.Array  # (P,)


class NonlinearEchoResult(NamedTuple):
    y: jax.Array  # (2, P) final positions of the [+ε, −ε] echoes
    z: jax.Array  # (2, P) final momenta
    acc: NonlinearAccumulators
    overflows: jax.Array  # (3,) int64: echo_plus, echo_minus, gradient


def quantize_nonlinear_params(params: dict, fmt: NonlinearFormat) -> NonlinearParamsInt:
    """Float {W, b, sigma_c, alpha, B, delta} -> the stored integers (clear errors when out of range)."""
    b = fmt.base
    cw = b.coef_width
    W = quantize(params["W"], cw, fmt.coef_w_frac, "W", lo=0.0)
    if np.any(W <= 0):
        raise ValueError(f"W must be > 0 after quantisation (>= 2**-{fmt.coef_w_frac})")
    bias = quantize(params["b"], cw, fmt.coef_bias_frac, "b")
    sigma_c = quantize(params["sigma_c"], cw, fmt.coef_sigma_frac, "sigma_c", lo=0.0)
    alpha = quantize(params["alpha"], cw, b.coef_a_frac, "alpha")
    B = quantize(params["B"], cw, b.coef_b_frac, "B")
    delta = quantize(params["delta"], cw, b.delta_frac, "delta", lo=0.0)
    p = W.shape[0] if W.ndim == 1 else -1
    if (W.ndim != 1 or bias.shape != (p,) or sigma_c.shape != (p,) or delta.shape != (p,)
            or alpha.shape not in ((), (p,)) or B.ndim != 2 or B.shape[0] != p):
        raise ValueError("parameter shapes must be W, b, sigma_c, delta (P,), alpha () or (P,), B (P, N); got "
                         f"{W.shape}, {bias.shape}, {sigma_c.shape}, {delta.shape}, {alpha.shape}, {B.shape}")
    return NonlinearParamsInt(*(jnp.asarray(v) for v in (W, bias, sigma_c, alpha, B, delta)))


def dequantize_nonlinear_params(q: NonlinearParamsInt, fmt: NonlinearFormat) -> dict:
    """The float parameters the integers represent, named as hru_float.NONLINEAR expects (c = logit σc)."""
    sigma_c = dequantize(q.sigma_c, fmt.coef_sigma_frac)
    return {
        "W": jnp.asarray(dequantize(q.W, fmt.coef_w_frac)),
        "b": jnp.asarray(dequantize(q.bias, fmt.coef_bias_frac)),
        "c": jnp.asarray(np.log(sigma_c) - np.log1p(-sigma_c)),
        "alpha": jnp.asarray(dequantize(q.alpha, fmt.base.coef_a_frac)),
        "B": jnp.asarray(dequantize(q.B, fmt.base.coef_b_frac)),
        "delta": jnp.asarray(dequantize(q.delta, fmt.base.delta_frac)),
    }


def _argument(q: NonlinearParamsInt, yh, b, fmt: NonlinearFormat):
    """a = W(R(W·yh, Fw) + b + bias·2^(Fs−Fc)): returns (a, overflow flags)."""
    fs = fmt.base.state_frac
    return wrap(round_shift(q.W * yh, fmt.coef_w_frac) + b + q.bias * (1 << (fs - fmt.coef_bias_frac)),
                fmt.base.state_width)


def leapfrog_step(q: NonlinearParamsInt, y, z, b, fmt: NonlinearFormat):
    """One integer step; returns (y, z, yh, a, t, overflow_events). a, t are what the read-out needs."""
    base = fmt.base
    w, fs = base.state_width, base.state_frac
    yh, o1 = wrap(y + drift_shift(q.delta * z, base), w)
    a, o2 = _argument(q, yh, b, fmt)
    t = tanh_fixed(a, fs, fmt.tanh)
    f, o3 = wrap(round_shift(q.alpha * yh, base.coef_a_frac)
                 + round_shift(q.sigma_c * t, fmt.coef_sigma_frac + fmt.tanh.out_frac - fs), w)
    z, o4 = wrap(z - round_shift(q.delta * f, base.delta_frac), w)
    y, o5 = wrap(yh + drift_shift(q.delta * z, base), w)
    return y, z, yh, a, t, count(o1) + count(o2) + count(o3) + count(o4) + count(o5)


@partial(jax.jit, static_argnames=("fmt",))
def forward(q: NonlinearParamsInt, u, y0, z0, fmt: NonlinearFormat) -> ForwardResult:
    """Forward phase: u (L, N) int64 -> final state, position sum and overflow count."""
    return run_forward(lambda y, z, b: leapfrog_step(q, y, z, b, fmt), q, u, y0, z0, fmt.base)


def _accumulate(acc: NonlinearAccumulators, yh, a, t, u_k, fmt: NonlinearFormat):
    """One step of the read-out on the [+ε, −ε] pair (module docstring); returns (acc, overflow events, None)."""
    base = fmt.base
    w, aw, fs = base.state_width, base.acc_width, base.state_frac
    d, od = wrap(yh[0] - yh[1], w)
    s, os = wrap(yh[0] + yh[1], w)
    da, oda = wrap(a[0] - a[1], w)
    dt = t[0] - t[1]
    tm = tanh_fixed(a[0] + a[1], fs + 1, fmt.tanh)
    terms = NonlinearAccumulators(
        yy=round_shift(d * s, base.acc_a_shift),
        t=dt,
        tu=round_shift(dt[:, None] * u_k[None, :], base.acc_b_shift),
        lc=round_shift(tm * da, fmt.acc_logcosh_shift),
        ty=round_shift(t[0] * yh[0] - t[1] * yh[1], fmt.acc_ty_shift),
    )
    wrapped = [add_wrap(old, new, aw) for old, new in zip(acc, terms)]
    events = count(od) + count(os) + count(oda) + sum(count(o) for _, o in wrapped)
    return NonlinearAccumulators(*(v for v, _ in wrapped)), events, None


@partial(jax.jit, static_argnames=("fmt",))
def echo(q: NonlinearParamsInt, u, y_final, z_final, nudge, fmt: NonlinearFormat,
         acc: NonlinearAccumulators | None = None) -> NonlinearEchoResult:
    """The ±ε echo pair with gradient accumulation. ``nudge``: (P,) constant or (L, P) per state.

    ``acc``: accumulators to continue from (default zeros), as the board's stores add every echo
    of a minibatch, each wrap counted against the running sum (like hru_fixed.echo's acc_a/acc_b).
    """
    p, n = q.B.shape
    zeros = jnp.zeros(p, jnp.int64)
    acc0 = NonlinearAccumulators(zeros, zeros, jnp.zeros((p, n), jnp.int64), zeros, zeros) if acc is None else acc
    y, z, acc, overflows, _ = run_echo(
        lambda yy, zz, b: leapfrog_step(q, yy, zz, b, fmt),
        lambda acc, read_out, u_k, z_in, z_out: _accumulate(acc, *read_out, u_k, fmt),
        acc0, q, u, y_final, z_final, nudge, fmt.base)
    return NonlinearEchoResult(y, z, acc, overflows)


def gradients(q: NonlinearParamsInt, acc: NonlinearAccumulators, fmt: NonlinearFormat) -> dict:
    """Host side: accumulators -> float64 dL/dθ for W, b, sigma_c, c, alpha, B.

    dL/dθ = −δ/(2ε')·Σ(∂V/∂θ⁺ − ∂V/∂θ⁻) per oscillator, with
        ∂V/∂α = ½yh²,  ∂V/∂b = σc·tanh(a)/W,  ∂V/∂B_ij = σc·tanh(a)·u_j/W,
        ∂V/∂σc = log cosh(a)/W,  ∂V/∂W = σc·(tanh(a)·yh/W − log cosh(a)/W²),
    and dL/dc = dL/dσc·σc(1 − σc). A scalar α gets the sum over oscillators.
    """
    base, T = fmt.base, fmt.tanh.out_frac
    fs = base.state_frac
    W = dequantize(q.W, fmt.coef_w_frac)
    sigma_c = dequantize(q.sigma_c, fmt.coef_sigma_frac)
    scale = -dequantize(q.delta, base.delta_frac) / (2.0 * fmt.nudge_scale)

    def real(a, frac_bits, shift):
        return np.asarray(a, np.float64) * 2.0 ** (shift - frac_bits)

    sum_yy = real(acc.yy, 2 * fs, base.acc_a_shift)
    sum_t = real(acc.t, T, 0)
    sum_tu = real(acc.tu, T + base.input_frac, base.acc_b_shift)
    sum_lc = real(acc.lc, T + fs, fmt.acc_logcosh_shift)
    sum_ty = real(acc.ty, T + fs, fmt.acc_ty_shift)
    alpha = scale * 0.5 * sum_yy
    g_sigma = scale * sum_lc / W
    return {
        "W": scale * sigma_c * (sum_ty / W - sum_lc / W**2),
        "b": scale * sigma_c / W * sum_t,
        "sigma_c": g_sigma,
        "c": g_sigma * sigma_c * (1.0 - sigma_c),
        "alpha": alpha.sum() if np.ndim(q.alpha) == 0 else alpha,
        "B": (scale * sigma_c / W)[:, None] * sum_tu,
    }
