"""An HRU as one block of an HSSM: the bit-exact integer HRU with per-step streams and δ's accumulator.

A block runs exactly the integer HRU of hru_fixed (linear) or hru_fixed_nonlinear: the same
steps, echo pair, nudge alignment and overflow phases. A stack needs three things more from it
(docs/numerics.md, "HSSM blocks", states them for the HDL):

- **forward**: every position y_k (k = 1..L) is an output, not only the position sum, because
  the block's read-out C·y_k + D⊙u_k runs on the host at every step;
- **echo pair**: the nudge is a per-step (L, P) stream (the gradient the host computes from the
  block above), and each echo step j (consuming u_j) emits the block's input gradient
      e_i  = W(R(g_i·Δ_i, s_g))            g, Δ, s_g: δ, d = yh⁺ − yh⁻, Fd   (linear)
                                                      g = δσc/W, Δt = t⁺ − t⁻, Fg + T − Fs (nonlinear)
      du_j = W(R(Σ_i B_ij·e_i, Fb))        state units; the host scales it by ±1/(2ε')
  which the host carries through the feed-forward maps into the nudge stream of the block below;
- **δ's gradient**: dL/dδ = −1/(2ε')·Σ_k (H⁺_{1/2} − H⁻_{1/2}) (rhel-algorithm.md §2.8). The
  potential part of H is linear in the HRU's parameters (V = A·∂V/∂A + Σ B·∂V/∂B, resp.
  α·∂V/∂α + σc·∂V/∂σc), so its difference is already in the HRU's accumulators and the host
  forms it from them exactly; only the kinetic part needs a new accumulator
      kin_i += R(Δzin_i·Σzin_i + Δzout_i·Σzout_i, Ra)      Σ (zin⁺² − zin⁻² + zout⁺² − zout⁻²)
  with Δz = W(z⁺ − z⁻), Σz = W(z⁺ + z⁻) of the momenta entering and leaving the kick.

Every new wrap counts in the **gradient** phase. Accumulators start from zero for each echo pair;
the host sums them over a minibatch as integers (two's-complement sums: any order, same bits).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import hru_fixed_nonlinear as nl
from echoboard.golden_model.fixed import add_wrap, count, round_shift, wrap
from echoboard.golden_model.formats import FixedFormat, dequantize, quantize

HRU_KINDS = ("linear", "nonlinear")
#: the trained float parameters of each kind (hru_float's names; the nonlinear σc is sigmoid(c))
PARAM_NAMES = {"linear": ("A", "B", "delta"), "nonlinear": ("W", "b", "c", "alpha", "B", "delta")}


class BlockParamsInt(NamedTuple):
    """The stored words of one block: the HRU's own parameters and the input-gradient gain g."""

    q: tuple  # hru_fixed.LinearParamsInt or hru_fixed_nonlinear.NonlinearParamsInt
    gain: jax.Array  # (P,) delta_frac: δ (linear, = q.delta) or δ·σc/W (nonlinear)


class BlockForward(NamedTuple):
    y: jax.Array  # (P,) final positions
    z: jax.Array  # (P,) final momenta
    positions: jax.Array  # (L, P) y_1..y_L
    overflows: jax.Array  # () forward-phase wrap events


class BlockEcho(NamedTuple):
    acc: tuple  # the HRU's accumulators: (acc_a, acc_b) or NonlinearAccumulators
    kin: jax.Array  # (P,) δ's kinetic accumulator
    du: jax.Array  # (L, N) input gradient stream, row j = the echo step that consumed u_j
    overflows: jax.Array  # (3,) echo_plus, echo_minus, gradient


def base_format(fmt) -> FixedFormat:
    """The shared word formats (a NonlinearFormat extends a FixedFormat)."""
    return fmt.base if isinstance(fmt, nl.NonlinearFormat) else fmt


def default_format(hru: str):
    if hru not in HRU_KINDS:
        raise ValueError(f"unknown HRU {hru!r}; choose one of {', '.join(HRU_KINDS)}")
    return FixedFormat() if hru == "linear" else nl.NonlinearFormat()


def quantize_block_params(hru: str, params: dict, fmt) -> BlockParamsInt:
    """Float block parameters (PARAM_NAMES) -> the words the core stores (clear errors when out of range)."""
    base = base_format(fmt)
    if hru == "linear":
        q = hx.quantize_linear_params(params, fmt)
        return BlockParamsInt(q, q.delta)
    sigma_c = 1.0 / (1.0 + np.exp(-np.asarray(params["c"], np.float64)))
    q = nl.quantize_nonlinear_params({**params, "sigma_c": sigma_c}, fmt)
    # g from the stored words, so that it is a function of what the core holds
    stored = nl.dequantize_nonlinear_params(q, fmt)
    g = np.asarray(stored["delta"]) * dequantize(q.sigma_c, fmt.coef_sigma_frac) / np.asarray(stored["W"])
    return BlockParamsInt(q, jnp.asarray(quantize(g, base.coef_width, base.delta_frac, "input-gradient gain δσc/W")))


def dequantize_block_params(hru: str, bq: BlockParamsInt, fmt) -> dict:
    """The float parameters the stored words represent (PARAM_NAMES)."""
    if hru == "linear":
        return hx.dequantize_linear_params(bq.q, fmt)
    return {k: v for k, v in nl.dequantize_nonlinear_params(bq.q, fmt).items() if k in PARAM_NAMES["nonlinear"]}


def step_function(hru: str, q, fmt):
    if hru == "linear":
        return lambda y, z, b: hx.leapfrog_step(q, y, z, b, fmt)
    return lambda y, z, b: nl.leapfrog_step(q, y, z, b, fmt)


@partial(jax.jit, static_argnames=("hru", "fmt"))
def forward(hru: str, bq: BlockParamsInt, uq, fmt) -> BlockForward:
    """Forward from the zero state over uq (L, N): final state, every position, overflow events."""
    zero = jnp.zeros(bq.gain.shape, jnp.int64)
    result, positions = hx.run_forward(step_function(hru, bq.q, fmt), bq.q, uq, zero, zero, base_format(fmt),
                                       emit_positions=True)
    return BlockForward(result.y, result.z, positions, result.overflows)


def accumulate(hru: str, bq: BlockParamsInt, fmt, acc, read_out, u_j, z_in, z_out):
    """The HRU's own read-out plus kin and du_j (module docstring); returns (acc, events, du_j)."""
    base = base_format(fmt)
    w = base.state_width
    hru_acc, kin = acc
    if hru == "linear":
        hru_acc, events, _ = hx._accumulate(hru_acc, read_out, u_j, z_in, z_out, fmt)
        (yh,) = read_out
        diff, od = wrap(yh[0] - yh[1], w)
        e, oe = wrap(round_shift(bq.gain * diff, base.delta_frac), w)
    else:
        hru_acc, events, _ = nl._accumulate(hru_acc, *read_out, u_j, fmt)
        _, _, t = read_out
        od = jnp.zeros((), bool)  # Δt = t⁺ − t⁻ is exact (T + 2 bits)
        e, oe = wrap(round_shift(bq.gain * (t[0] - t[1]), base.delta_frac + fmt.tanh.out_frac - base.state_frac), w)
    dz_in, o1 = wrap(z_in[0] - z_in[1], w)
    sz_in, o2 = wrap(z_in[0] + z_in[1], w)
    dz_out, o3 = wrap(z_out[0] - z_out[1], w)
    sz_out, o4 = wrap(z_out[0] + z_out[1], w)
    kin, ok = add_wrap(kin, round_shift(dz_in * sz_in + dz_out * sz_out, base.acc_a_shift), base.acc_width)
    du, odu = wrap(round_shift(e @ bq.q.B, base.coef_b_frac), w)
    events = events + sum(count(o) for o in (od, oe, o1, o2, o3, o4, ok, odu))
    return (hru_acc, kin), events, du


def zero_accumulators(hru: str, p: int, n: int):
    zeros = jnp.zeros(p, jnp.int64)
    if hru == "linear":
        return zeros, jnp.zeros((p, n), jnp.int64)
    return nl.NonlinearAccumulators(zeros, zeros, jnp.zeros((p, n), jnp.int64), zeros, zeros)


@partial(jax.jit, static_argnames=("hru", "fmt"))
def echo(hru: str, bq: BlockParamsInt, uq, y_final, z_final, nudge, fmt) -> BlockEcho:
    """The ±ε echo pair with a per-step nudge stream (L, P): accumulators, kin, the du stream, overflows."""
    p, n = bq.q.B.shape
    acc0 = (zero_accumulators(hru, p, n), jnp.zeros(p, jnp.int64))
    _, _, (acc, kin), overflows, du = hx.run_echo(
        step_function(hru, bq.q, fmt), partial(accumulate, hru, bq, fmt), acc0, bq.q, uq, y_final, z_final, nudge,
        base_format(fmt))
    return BlockEcho(acc, kin, du, overflows)


@partial(jax.jit, static_argnames=("hru", "fmt"))
def forward_chunk(hru: str, q, carry, uq, fmt):
    """Some steps of a forward pass, resumable: ``carry`` is hru_fixed.forward_start's (y, z, Σy,
    overflows) or what the previous chunk returned; uq (k, N). Returns (carry, positions (k, P)).
    A board's forward pass as its DATA chunks arrive (firmware.board_model)."""

    def body(c, u_k):
        c = hx.forward_step(step_function(hru, q, fmt), q, base_format(fmt), c, u_k)
        return c, c[0]

    return jax.lax.scan(body, carry, uq)


@partial(jax.jit, static_argnames=("hru", "fmt"))
def echo_chunk(hru: str, bq: BlockParamsInt, carry, uq, nudges, fmt):
    """Some steps of an echo pair, resumable: ``carry`` is hru_fixed.echo_start's with the block's
    accumulators (``(hru accumulators, kin)``) or what the previous chunk returned; uq (k, N) in
    echo order (u_{L−1} first), nudges (k, P) the nudge for the state each step starts from.
    Returns (carry, du (k, N) in echo order): the same integers as :func:`echo`, chunk by chunk."""

    def body(c, xs):
        u_j, n_j = xs
        return hx.echo_step(step_function(hru, bq.q, fmt), partial(accumulate, hru, bq, fmt), bq.q,
                            base_format(fmt), c, u_j, n_j)

    return jax.lax.scan(body, carry, (uq, nudges))


def gradients(hru: str, bq: BlockParamsInt, acc, kin, fmt) -> dict:
    """Host side: summed accumulators -> float64 dL/dθ for PARAM_NAMES (δ included).

    dL/dδ = −1/(2ε')·(¼·Σ kinetic differences + Σ potential differences), the potential part from
    the HRU's accumulators: ½A·Σ(yh⁺² − yh⁻²) − Σ_j B_ij·Σ(yh⁺ − yh⁻)u_j (linear), resp.
    ½α·Σ(yh⁺² − yh⁻²) + σc/W·Σ(log cosh a⁺ − log cosh a⁻) (nonlinear).
    """
    base = base_format(fmt)
    fs, eps = base.state_frac, fmt.nudge_scale
    kinetic = np.asarray(kin, np.float64) * 2.0 ** (base.acc_a_shift - 2 * fs) / 4.0
    if hru == "linear":
        acc_a, acc_b = acc
        grads = hx.gradients(bq.q, acc_a, acc_b, fmt)
        p = hx.dequantize_linear_params(bq.q, fmt)
        sum_ds = np.asarray(acc_a, np.float64) * 2.0 ** (base.acc_a_shift - 2 * fs)
        sum_du = np.asarray(acc_b, np.float64) * 2.0 ** (base.acc_b_shift - fs - base.input_frac)
        potential = 0.5 * np.asarray(p["A"]) * sum_ds - np.sum(np.asarray(p["B"]) * sum_du, axis=1)
    else:
        g = nl.gradients(bq.q, acc, fmt)
        grads = {k: g[k] for k in PARAM_NAMES["nonlinear"] if k in g}
        W = dequantize(bq.q.W, fmt.coef_w_frac)
        sigma_c = dequantize(bq.q.sigma_c, fmt.coef_sigma_frac)
        alpha = np.broadcast_to(dequantize(bq.q.alpha, base.coef_a_frac), W.shape)
        sum_yy = np.asarray(acc.yy, np.float64) * 2.0 ** (base.acc_a_shift - 2 * fs)
        sum_lc = np.asarray(acc.lc, np.float64) * 2.0 ** (fmt.acc_logcosh_shift - fmt.tanh.out_frac - fs)
        potential = 0.5 * alpha * sum_yy + sigma_c / W * sum_lc
    grads["delta"] = -(kinetic + potential) / (2.0 * eps)
    return grads


def input_gradient(hru: str, du, fmt) -> jax.Array:
    """The du stream (state units) -> dL/du (float64): +du/(2ε') (linear), −du/(2ε') (nonlinear);
    traceable, for the lockstep schedule's scan.

    Linear: ∇u(δH) = −δ·Bᵀyh, so −1/(2ε')·Σ differences = +Bᵀ(δ⊙d)/(2ε'); nonlinear:
    ∇u(δH) = +Bᵀ(δσc⊙tanh(a)/W), hence the minus sign.
    """
    base = base_format(fmt)
    sign = 1.0 if hru == "linear" else -1.0
    return sign * jnp.asarray(du, jnp.float64) * 2.0 ** -base.state_frac / (2.0 * fmt.nudge_scale)
