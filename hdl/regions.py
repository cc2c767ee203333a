"""The host-visible stores of every HRU core, numbered once.

The cores' address maps (hdl.address_map, hdl.hru_lane, hdl.hru_nonlinear), the wire protocol's
WRITE/READ regions (firmware.protocol) and docs/protocol.md's tables (checked by a test) all take
their numbers from these enums, as LiteX generates one CSR map for gateware and software. Plain
``enum`` (no Amaranth), so the host imports them without the HDL toolchain.

Index ``i`` of per-oscillator regions is oscillator ``i``; B and its gradient accumulator (codes 1
and 10 in every enum) are row-major P×N (index ``i*N + j``); COUNTERS (11) holds the overflow
counters in golden_model.hru_fixed.PHASES order (forward, echo_plus, echo_minus, gradient).
"""
from __future__ import annotations

import enum

__all__ = ["Region", "NonlinearRegion", "LinearBlockRegion", "NonlinearBlockRegion"]


class Region(enum.IntEnum):
    """The linear HRU's stores (4 address bits in the core)."""

    A = 0
    B = 1
    DELTA = 2
    NUDGE = 3  # constant echo nudge n (state units): +n for the +ε echo, −n for the −ε echo (not the streamed ones)
    Y0 = 4  # slot 0: initial / final forward state; after an echo the +ε echo's final state
    Z0 = 5
    Y1 = 6  # slot 1: the −ε echo's final state
    Z1 = 7
    POS_SUM = 8
    ACC_A = 9
    ACC_B = 10
    COUNTERS = 11  # read-only


class NonlinearRegion(enum.IntEnum):
    """The nonlinear HRU's stores (5 address bits). Every region whose meaning carries over keeps
    :class:`Region`'s number (the shared lane code and AddressMap rely on it): α takes A's place (the
    spring constant), ACC_YY = Σ(yh⁺² − yh⁻²) is exactly the linear ACC_A, ACC_TU = Σ Δt·u takes
    ACC_B's. The other accumulators (P words each, acc_width): ACC_T = Σ Δt, ACC_LC = Σ R(tanh(ā)·Δa),
    ACC_TY = Σ R(t⁺·yh⁺ − t⁻·yh⁻) (golden_model.hru_fixed_nonlinear's module docstring).
    """

    ALPHA = 0  # α per oscillator (coef_a_frac); a scalar α is the same word written P times
    B = 1
    DELTA = 2
    NUDGE = 3
    Y0 = 4
    Z0 = 5
    Y1 = 6
    Z1 = 7
    POS_SUM = 8
    ACC_YY = 9
    ACC_TU = 10
    COUNTERS = 11
    W = 12  # coef_w_frac
    BIAS = 13  # coef_bias_frac
    SIGMA = 14  # σc = σ(c), coef_sigma_frac
    ACC_T = 15
    ACC_LC = 16
    ACC_TY = 17


#: An HSSM block's cores (docs/numerics.md B1–B5; the board's Capability.ECHO_OUTPUTS): the HRU's stores
#: plus KIN, δ's kinetic accumulator (B3: P words, acc_width, read-only), and on the nonlinear core
#: GAIN, g = δσc/W (B4': P words, coef_width, delta_frac, written by the host). KIN takes the first
#: free number of each enum (12 linear; the nonlinear 12..17 are taken, so 18).
LinearBlockRegion = enum.IntEnum("LinearBlockRegion", {**{r.name: r.value for r in Region}, "KIN": 12})
NonlinearBlockRegion = enum.IntEnum("NonlinearBlockRegion",
                                    {**{r.name: r.value for r in NonlinearRegion}, "KIN": 18, "GAIN": 19})
