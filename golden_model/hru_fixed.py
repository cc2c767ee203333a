"""The bit-exact integer linear HRU: the specification of what the hardware computes.

Everything is int64 two's-complement integers in the units of ``FixedFormat`` (formats.py);
docs/numerics.md restates the same contract operation by operation for the HDL. Per time step
and oscillator i, in this order (Fs = state_frac, Fd = delta_frac, Fa = coef_a_frac,
Fb = coef_b_frac, Fu = input_frac, Ws = state_width, R(x, s) = round_shift half away from zero,
W(x) = wrap to Ws bits, each wrap counted in the phase's overflow counter):

    b_i   = W(R(Σ_j B_ij·u_j, Fb + Fu − Fs))       input drive, exact MAC then one rounding
    yh_i  = W(y_i + R(δ_i·z_i, Fd + 1))            drift 1 (δ/2: one more fractional bit)
    f_i   = W(R(A_i·yh_i, Fa) − b_i)               force at the half-step position
    z_i   = W(z_i − R(δ_i·f_i, Fd))                kick
    y_i   = W(yh_i + R(δ_i·z_i, Fd + 1))           drift 2
    Σy_i  = Wacc(Σy_i + y_i)                       position sum (forward only, for the mean pool)

The drift rounding is odd, R(−x) = −R(x), so flipping z and running the same steps with the
inputs reversed retraces the trajectory bit for bit; the kick only has to be deterministic.

The echo pair runs the +ε and −ε echoes in lockstep from (y_L, −z_L); they share b. Before the
echo step that consumes u_j (j = L, …, 1) both add the nudge for state j, z ± n_j.
At each echo step's half-step position the gradient accumulators take the difference of the
two echoes (never the difference of two large sums, which would cancel catastrophically):

    d_i    = W(yh⁺_i − yh⁻_i)          S_i = W(yh⁺_i + yh⁻_i)
    accA_i = Wacc(accA_i + R(d_i·S_i, acc_a_shift))          Σ (yh⁺² − yh⁻²)
    accB_ij = Wacc(accB_ij + R(d_i·u_j, acc_b_shift))        Σ (yh⁺ − yh⁻) u

``gradients`` turns the accumulators into dL/dA = −δ/(4ε')·ΣdS and dL/dB = δ/(2ε')·Σd·u,
with ε' = epsilon·loss_scale the effective nudge scale (rhel-algorithm.md §2.8).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from echoboard.golden_model.fixed import add_wrap, count, floor_shift, round_shift, wrap
from echoboard.golden_model.formats import FixedFormat, quantize, dequantize

PHASES = ("forward", "echo_plus", "echo_minus", "gradient")


class LinearParamsInt(NamedTuple):
    """Integer parameters as stored in the core's memories."""

    A: jax.Array  # (P,)   coef_width bits, coef_a_frac fractional, >= 0
    B: jax.Array  # (P, N) coef_width bits, coef_b_frac fractional
    delta: jax.Array  # (P,) coef_width bits, delta_frac fractional, > 0


class ForwardResult(NamedTuple):
    y: jax.Array  # (P,) final positions
    z: jax.Array  # (P,) final momenta
    pos_sum: jax.Array  # (P,) Σ_{k=1..L} y_k, acc_width bits
    overflows: jax.Array  # () int64: wrap events in the forward phase


class EchoResult(NamedTuple):
    y: jax.Array  # (2, P) final positions of the [+ε, −ε] echoes
    z: jax.Array  # (2, P) final momenta (before any nudge: none follows the last step)
    acc_a: jax.Array  # (P,)
    acc_b: jax.Array  # (P, N)
    overflows: jax.Array  # (3,) int64: echo_plus, echo_minus, gradient


def quantize_linear_params(params: dict, fmt: FixedFormat) -> LinearParamsInt:
    """Float parameters {A, B, delta} -> the integers the core stores (clear errors if out of range)."""
    A = quantize(params["A"], fmt.coef_width, fmt.coef_a_frac, "A", lo=0.0)
    B = quantize(params["B"], fmt.coef_width, fmt.coef_b_frac, "B")
    delta = quantize(params["delta"], fmt.coef_width, fmt.delta_frac, "delta", lo=0.0)
    if A.ndim != 1 or delta.shape != A.shape or B.ndim != 2 or B.shape[0] != A.shape[0]:
        raise ValueError(f"parameter shapes must be A (P,), B (P, N), delta (P,); got {A.shape}, {B.shape}, {delta.shape}")
    return LinearParamsInt(jnp.asarray(A), jnp.asarray(B), jnp.asarray(delta))


def dequantize_linear_params(q: LinearParamsInt, fmt: FixedFormat) -> dict:
    """The float values the integer parameters represent exactly (what float references should use)."""
    return {
        "A": jnp.asarray(dequantize(q.A, fmt.coef_a_frac)),
        "B": jnp.asarray(dequantize(q.B, fmt.coef_b_frac)),
        "delta": jnp.asarray(dequantize(q.delta, fmt.delta_frac)),
    }


def quantize_inputs(u, fmt: FixedFormat):
    return jnp.asarray(quantize(u, fmt.input_width, fmt.input_frac, "inputs u"))


def quantize_nudge(dl_dy, fmt: FixedFormat):
    """dL/dy (float, (P,) or (L, P)) -> the integer momentum nudge ε'·dL/dy in state units."""
    return jnp.asarray(quantize(np.asarray(dl_dy) * fmt.nudge_scale, fmt.state_width, fmt.state_frac, "nudge"))


def drift_shift(x, fmt: FixedFormat):
    shift = fmt.delta_frac + 1
    return floor_shift(x, shift) if fmt.drift_rounding == "floor" else round_shift(x, shift)


def input_drive(q: LinearParamsInt, u_k, fmt: FixedFormat):
    """b = W(R(B·u_k)): returns (b, overflow flags). Shared by the forward step and both echoes."""
    return wrap(round_shift(q.B @ u_k, fmt.coef_b_frac + fmt.input_frac - fmt.state_frac), fmt.state_width)


def leapfrog_step(q: LinearParamsInt, y, z, b, fmt: FixedFormat):
    """One integer step; returns (y, z, yh, overflow_events). Works on (P,) or batched (…, P)."""
    w = fmt.state_width
    yh, o1 = wrap(y + drift_shift(q.delta * z, fmt), w)
    f, o2 = wrap(round_shift(q.A * yh, fmt.coef_a_frac) - b, w)
    z, o3 = wrap(z - round_shift(q.delta * f, fmt.delta_frac), w)
    y, o4 = wrap(yh + drift_shift(q.delta * z, fmt), w)
    return y, z, yh, count(o1) + count(o2) + count(o3) + count(o4)


def _saturating_add(counter, events, fmt: FixedFormat):
    return jnp.minimum(counter + events, (1 << fmt.counter_width) - 1)


def forward_step(step, q, fmt: FixedFormat, carry, u_k):
    """One forward step of any HRU: carry (y, z, Σy, overflows) -> the same after consuming u_k.

    ``step(y, z, b)`` -> (y, z, *read_out, events). Shared by run_forward and the HSSM's lockstep
    schedule (hssm.py), which runs every block one step at a time.
    """
    y, z, pos_sum, ovf = carry
    b, ob = input_drive(q, u_k, fmt)
    y, z, *_, events = step(y, z, b)
    pos_sum, os = add_wrap(pos_sum, y, fmt.acc_width)
    return y, z, pos_sum, _saturating_add(ovf, events + count(ob) + count(os), fmt)


def forward_start(y0, z0):
    return y0, z0, jnp.zeros_like(y0), jnp.zeros((), jnp.int64)


def run_forward(step, q, u, y0, z0, fmt: FixedFormat, emit_positions: bool = False):
    """The forward scan shared by every HRU; ``step(y, z, b)`` -> (y, z, *read_out, events).

    Returns the ForwardResult; with ``emit_positions`` (an HSSM block, whose read-out needs every
    y_k) it returns (ForwardResult, positions y_1..y_L of shape (L, P)) instead.
    """

    def body(carry, u_k):
        carry = forward_step(step, q, fmt, carry, u_k)
        return carry, (carry[0] if emit_positions else None)

    carry, positions = lax.scan(body, forward_start(y0, z0), u)
    result = ForwardResult(*carry)
    return (result, positions) if emit_positions else result


def nudge_for_state(nudge, j):
    """The nudge for forward state j (1..L): the (P,) constant, or row j−1 of an (L, P) sequence.

    Indexing inside the scan keeps the echo's memory flat in L (no reversed or broadcast copy).
    """
    return nudge if nudge.ndim == 1 else lax.dynamic_index_in_dim(nudge, j - 1, keepdims=False)


ECHO_SIGNS = jnp.array([1, -1], jnp.int64)[:, None]  # the [+ε, −ε] echoes, stacked


def echo_start(y_final, z_final, acc0):
    """The echo pair's carry before its first step: both at (y_L, −z_L), not yet nudged (the flip's
    wrap is counted with the first nudge, as one W(−z_L ± n_L))."""
    zero = jnp.zeros((), jnp.int64)
    return jnp.stack([y_final, y_final]), jnp.stack([-z_final, -z_final]), acc0, jnp.zeros(2, jnp.int64), zero


def echo_step(step, accumulate, q, fmt: FixedFormat, carry, u_j, n_j):
    """One echo step of the pair: nudge for state j (n_j, zero for j = 0), then consume u_j.

    ``step(y, z, b)`` -> (y, z, *read_out, events) runs on one echo (vmapped over the pair);
    ``accumulate(acc, read_out, u_j, z_in, z_out)`` -> (acc, events, per_step_output) gets each
    read-out and the momenta entering and leaving the step (after the nudge / before the next),
    stacked [+ε, −ε]. Returns (carry, per_step_output). Shared by run_echo and the HSSM's lockstep
    schedule.
    """
    y, z_prev, acc, ovf_echo, ovf_grad = carry
    z_in, on = wrap(z_prev + ECHO_SIGNS * n_j[None, :], fmt.state_width)
    b, ob = input_drive(q, u_j, fmt)
    y, z_out, *read_out, events = jax.vmap(lambda yy, zz: step(yy, zz, b))(y, z_in)
    acc, grad_events, out = accumulate(acc, read_out, u_j, z_in, z_out)
    echo_events = events + count(ob) + jnp.sum(on, axis=1, dtype=jnp.int64)
    return (y, z_out, acc, _saturating_add(ovf_echo, echo_events, fmt), _saturating_add(ovf_grad, grad_events, fmt)), out


def run_echo(step, accumulate, acc0, q, u, y_final, z_final, nudge, fmt: FixedFormat):
    """The echo-pair scan shared by every HRU (echo_step: the step and the callbacks).

    The scan walks u backwards in place (reverse=True): the step that consumes u_j (row j−1)
    first adds the nudge for state j, so the pair starts from (y_L, −z_L ± n_L).
    Returns (y, z, acc, overflows[echo_plus, echo_minus, gradient], per-step outputs in the
    order of u: row j−1 is the output of the step that consumed u_j).
    """
    length = u.shape[0]

    def body(carry, xs):
        u_j, j = xs
        return echo_step(step, accumulate, q, fmt, carry, u_j, nudge_for_state(nudge, j))

    carry, outs = lax.scan(body, echo_start(y_final, z_final, acc0), (u, jnp.arange(1, length + 1)), reverse=True)
    y, z, acc, ovf_echo, ovf_grad = carry
    return y, z, acc, jnp.concatenate([ovf_echo, ovf_grad[None]]), outs


@partial(jax.jit, static_argnames=("fmt",))
def forward(q: LinearParamsInt, u, y0, z0, fmt: FixedFormat) -> ForwardResult:
    """Forward phase: u (L, N) int64 -> final state, position sum and overflow count."""
    return run_forward(lambda y, z, b: leapfrog_step(q, y, z, b, fmt), q, u, y0, z0, fmt)


def _accumulate(acc, read_out, u_k, z_in, z_out, fmt: FixedFormat):
    """accA += R(d·S), accB += R(d·u) at the half-step position; returns (acc, overflow events, None)."""
    (yh,) = read_out
    acc_a, acc_b = acc
    w = fmt.state_width
    d, od = wrap(yh[0] - yh[1], w)
    s, os = wrap(yh[0] + yh[1], w)
    acc_a, oa = add_wrap(acc_a, round_shift(d * s, fmt.acc_a_shift), fmt.acc_width)
    acc_b, ob = add_wrap(acc_b, round_shift(d[:, None] * u_k[None, :], fmt.acc_b_shift), fmt.acc_width)
    return (acc_a, acc_b), count(od) + count(os) + count(oa) + count(ob), None


@partial(jax.jit, static_argnames=("fmt",))
def echo(q: LinearParamsInt, u, y_final, z_final, nudge, fmt: FixedFormat, acc_a=None, acc_b=None) -> EchoResult:
    """The ±ε echo pair with gradient accumulation. ``nudge``: (P,) constant or (L, P) per state.

    ``acc_a`` / ``acc_b`` (default zero) are the accumulators to add onto: the board sums over a
    minibatch step by step, so a wrap is counted when the running sum wraps.
    """
    p, n = q.B.shape
    acc0 = (jnp.zeros(p, jnp.int64) if acc_a is None else acc_a, jnp.zeros((p, n), jnp.int64) if acc_b is None else acc_b)
    y, z, (acc_a, acc_b), overflows, _ = run_echo(
        lambda yy, zz, b: leapfrog_step(q, yy, zz, b, fmt), partial(_accumulate, fmt=fmt), acc0,
        q, u, y_final, z_final, nudge, fmt)
    return EchoResult(y, z, acc_a, acc_b, overflows)


def gradients(q: LinearParamsInt, acc_a, acc_b, fmt: FixedFormat) -> dict:
    """Scale the accumulators to dL/dA and dL/dB (float64, host side): −δ/(4ε')·ΣdS, δ/(2ε')·Σd·u."""
    delta = dequantize(q.delta, fmt.delta_frac)
    sum_ds = np.asarray(acc_a, np.float64) * 2.0 ** (fmt.acc_a_shift - 2 * fmt.state_frac)
    sum_du = np.asarray(acc_b, np.float64) * 2.0 ** (fmt.acc_b_shift - fmt.state_frac - fmt.input_frac)
    eps = fmt.nudge_scale
    return {"A": -delta / (4.0 * eps) * sum_ds, "B": (delta / (2.0 * eps))[:, None] * sum_du}


def validate_sequence(u, n_inputs: int, max_length: int | None = None):
    """Clear errors for wrong shapes, empty or too-long sequences before anything runs."""
    u = np.asarray(u)
    if u.ndim != 2 or u.shape[1] != n_inputs:
        raise ValueError(f"inputs must have shape (L, {n_inputs}), got {u.shape}")
    if u.shape[0] < 1:
        raise ValueError("inputs must contain at least one time step")
    if max_length is not None and u.shape[0] > max_length:
        raise ValueError(f"sequence length {u.shape[0]} exceeds the maximum of {max_length}")
    return u
