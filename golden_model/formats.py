"""The fixed-point format and the core size: the two objects the hardware is generated from.

Every width, fractional-bit count and shift that the integer model (hru_fixed.py) uses lives
here, so one change flows to the golden model, the HDL, the board image and the host.
A value ``v`` stored with ``frac`` fractional bits is the integer ``round(v * 2**frac)``.

Default widths target the ECP5's 18x18 multipliers: coefficients (A, B, delta) are 18-bit
words; the oscillator state is 32 bits with 20 fractional bits (Q11.20), chosen by the format
sweep (``echoboard sweep-formats``, docs/numerics.md) for headroom up to |y| < 1024.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from echoboard.golden_model.fixed import int_range


@dataclass(frozen=True)
class FixedFormat:
    """Word widths (bits, two's complement) and fractional bits of every stored quantity.

    state: positions y, momenta z, the half-step position, the force (A*yh - B*u) and the
        echo difference/sum words; all wrap at ``state_width`` with counted overflows.
    input: the input samples u_k streamed to the core.
    coef_a / coef_b / delta: the spring constants A (>= 0), the input matrix B and the step
        delta (> 0, per oscillator). The drift uses delta/2, i.e. one extra fractional bit.
    acc_width: gradient accumulators and the position sum for the mean pool.
    acc_a_shift / acc_b_shift: right shifts (rounded) applied to each per-step product before
        it enters the A / B accumulator, trading resolution for L-fold headroom.
    epsilon_log2 / loss_scale_log2: the nudge is epsilon * loss_scale * dL/dy; both are powers
        of two so the host scales by shifts and the board only sees an integer nudge.
    counter_width: saturating overflow-event counters (one per phase).
    drift_rounding: "half_away" (odd-symmetric, reversible). "floor" exists only to show that
        the reversibility tests fail without odd rounding; the HDL refuses it.
    """

    state_width: int = 32
    state_frac: int = 20
    input_width: int = 16
    input_frac: int = 11
    coef_width: int = 18
    coef_a_frac: int = 14
    coef_b_frac: int = 15
    delta_frac: int = 16
    acc_width: int = 64
    acc_a_shift: int = 16
    acc_b_shift: int = 0
    epsilon_log2: int = -3
    loss_scale_log2: int = 8
    counter_width: int = 32
    drift_rounding: Literal["half_away", "floor"] = "half_away"

    def __post_init__(self):
        problems = []
        if not 2 <= self.state_width <= 32:
            problems.append(f"state_width must be in 2..32 (int64 products), got {self.state_width}")
        if not 0 <= self.state_frac < self.state_width:
            problems.append(f"state_frac must be in 0..state_width-1, got {self.state_frac}")
        if not 2 <= self.input_width <= 24:
            problems.append(f"input_width must be in 2..24, got {self.input_width}")
        if not 2 <= self.coef_width <= 25:
            problems.append(f"coef_width must be in 2..25, got {self.coef_width}")
        for name in ("input_frac", "coef_a_frac", "coef_b_frac", "delta_frac"):
            v = getattr(self, name)
            if v < 0:
                problems.append(f"{name} must be >= 0, got {v}")
        if self.coef_b_frac + self.input_frac < self.state_frac:
            problems.append("coef_b_frac + input_frac must be >= state_frac (B*u is rounded down to the state)")
        if not 16 <= self.acc_width <= 64:
            problems.append(f"acc_width must be in 16..64, got {self.acc_width}")
        if self.acc_a_shift < 0 or self.acc_b_shift < 0:
            problems.append("acc_a_shift and acc_b_shift must be >= 0")
        if not 1 <= self.counter_width <= 63:
            problems.append(f"counter_width must be in 1..63, got {self.counter_width}")
        if self.drift_rounding not in ("half_away", "floor"):
            problems.append(f"drift_rounding must be 'half_away' or 'floor', got {self.drift_rounding!r}")
        # int64 headroom of the widest products: coefficient x state and difference x sum.
        if self.coef_width + self.state_width > 63:
            problems.append("coef_width + state_width must be <= 63")
        if problems:
            raise ValueError("invalid FixedFormat: " + "; ".join(problems))

    def replace(self, **changes) -> "FixedFormat":
        return dataclasses.replace(self, **changes)

    @property
    def epsilon(self) -> float:
        return 2.0 ** self.epsilon_log2

    @property
    def nudge_scale(self) -> float:
        """The effective epsilon: the nudge added to the momentum is nudge_scale * dL/dy."""
        return 2.0 ** (self.epsilon_log2 + self.loss_scale_log2)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def for_length(self, length: int) -> "FixedFormat":
        """This format for ``length`` steps: from 2049 steps on, the loss scale raised by
        :func:`length_scale_log2` and the state given ⌈that/2⌉ more integer bits.

        Why the state too: a non-dissipative oscillator driven by noise gains energy linearly in
        time, so its amplitude grows like √L (DESIGN.md's prototype: |y| ~ 1,000 at 16k); one more
        integer bit per 4× in L keeps the same headroom. The state keeps its width (the hardware's
        32-bit words); the bits come from the fraction, which the larger nudge makes up for.
        """
        shift = length_scale_log2(length)
        return self.replace(loss_scale_log2=self.loss_scale_log2 + shift, state_frac=self.state_frac - (shift + 1) // 2)


#: sequences up to 2^11 = 2048 steps use a format's loss scale unchanged (every aeon set we train on)
NUDGE_REFERENCE_LENGTH_LOG2 = 11


def length_scale_log2(length: int) -> int:
    """Extra loss-scale bits for ``length`` steps: max(0, ceil(log2 L) − 11).

    Why: with mean pooling over time the per-step gradient dL/dy_k shrinks like 1/L, so a fixed
    ε' leaves the integer nudge fewer LSBs the longer the sequence (the single HRU's fixed-point
    cosine fell to 0.997 at L = 50k). Doubling ε' whenever L doubles past 2048 keeps the nudge's
    size in LSBs roughly constant; a power of two keeps it a shift on the host. A training run
    fixes it once from its data set's longest sequence, so a minibatch never mixes scales.
    """
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    return max(0, math.ceil(math.log2(length)) - NUDGE_REFERENCE_LENGTH_LOG2)


@dataclass(frozen=True)
class HRUSize:
    """How big the core is: P oscillators, N input channels, the longest sequence it accepts."""

    oscillators: int = 16
    inputs: int = 8
    max_length: int = 65536

    def __post_init__(self):
        for name in ("oscillators", "inputs", "max_length"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"HRUSize.{name} must be a positive integer, got {v!r}")

    def check_length(self, length: int) -> None:
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds the core's max_length {self.max_length}")

    def pos_sum_guard_bits(self) -> int:
        """Extra bits the position-sum accumulator needs over the state: ceil(log2(max_length))."""
        return math.ceil(math.log2(self.max_length))


def quantize(x, width: int, frac: int, name: str, *, lo: float | None = None) -> np.ndarray:
    """Float array -> int64 with ``frac`` fractional bits, round half away from zero.

    Raises ValueError naming ``name`` on NaN/inf or on values outside the ``width``-bit range
    (or below ``lo``): out-of-range parameters or inputs are a user error, never silently wrapped.
    """
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if lo is not None and np.any(a < lo):
        raise ValueError(f"{name} must be >= {lo}, min is {a.min():.6g}")
    q = round_half_away(a * (2.0 ** frac))
    vmin, vmax = int_range(width)
    if np.any(q < vmin) or np.any(q > vmax):
        bad = a[(q < vmin) | (q > vmax)]
        raise ValueError(
            f"{name} out of range for {width}-bit words with {frac} fractional bits "
            f"([{vmin / 2**frac:.6g}, {vmax / 2**frac:.6g}]): e.g. {bad.flat[0]:.6g}"
        )
    return q.astype(np.int64)


def round_half_away(scaled):
    """Round half away from zero (odd, as the hardware's R): the host's float -> word conversion.

    numpy in, numpy out; a jax array (or a tracer inside jit) in, jax out: the same exact operations."""
    xp = jnp if isinstance(scaled, jax.Array) else np
    return xp.sign(scaled) * xp.floor(xp.abs(scaled) + 0.5)


def dequantize(q, frac: int) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) / (2.0 ** frac)
