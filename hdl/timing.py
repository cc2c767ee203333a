"""The pipelined core's timing model: pipeline latencies, slot lengths, cycles per step.

Every number here is exact, not an estimate: passes never stall, so the sequencer's static gaps
(hdl.hru_core) are these distances, and each lane asserts that its pipelines match its entry in
``TIMINGS``. The benchmark (benchmarks.core_cycles) and the board's throughput projection read
the same functions.

Cycle budget per time step (``cycles_per_step``, ``SlotLengths``) with K lanes, R = P/K rows,
M = ``macs`` B·u multipliers per lane, G = N / M: max(R·G, E·R, 16) cycles, E = 1 forward /
2 echo (the b and d read-after-write hazards never exceed that with G = 1; SlotLengths keeps
them general). The default M is the largest power of two dividing N — M = N, G = 1 for a
power-of-two N — so the MAC engine never sets the pace and a step costs the oscillator bound
max(E·R, 16) (``oscillator_bound``): one oscillator (echo) update per lane per clock, II = 1;
the 16 is the oscillator pipeline's write-back latency, so II = 1 with no idle issue slots needs
E·R ≥ 16 items per lane. A command adds its first and last slot and 24 cycles of settling (the
last writes and overflow counts land before ``done``). M must be a power of two dividing N
(``check_config``) so that the host index row·N + j of B / ACC_B splits into {bank address,
bank} by bit slicing; a smaller M trades DSPs for MAC cycles.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.utils import ceil_log2

from echoboard.golden_model.formats import HRUSize

__all__ = ["LaneTiming", "TIMINGS", "SlotLengths", "cycles_per_step", "default_macs", "mac_latency",
           "oscillator_bound"]


@dataclass(frozen=True)
class LaneTiming:
    """Lane pipeline timing (cycles after an item's issue) that the sequencer's static gaps honour.

    Passes never stall, so these distances are exact; waiting for the input stream only adds slack.
    Each lane asserts that its pipelines match its entry in ``TIMINGS``.
    """

    yz_write: int  # y/z written back; the store's read is transparent, so a read then sees it
    diff_write: int  # the (row, −ε) item's diff word (d / Δt) written; the next MAC pass may read it a cycle later
    b_read: int  # the OSC pipeline presents b's read address this many cycles after issue
    last_update: int  # the last accumulator update (position sum or gradient) enters its memory

    @property
    def settle(self) -> int:
        """After the last issue of a command every write and overflow count has landed: the last
        accumulator (3) and its registered overflow flag (1), the lane's and the core's event
        registers (2) and the counter (1)."""
        return self.last_update + 7


TIMINGS = {
    # last_update: δ's kinetic accumulator (an HSSM block's), a stage after the position sum
    "linear": LaneTiming(yz_write=16, diff_write=7, b_read=6, last_update=17),
    # tanh: W·yh (2), the argument (1), the tanh unit (5), σc·t (2), the force (1) between drift 1 and
    # the kick; the gradient's second tanh and tanh(ā)·Δa end at stage 23, the position sum at 24, kin at 25
    "nonlinear": LaneTiming(yz_write=24, diff_write=15, b_read=6, last_update=25),
}


def mac_latency(macs: int) -> int:
    """Issue -> b written: read (2), partial products and their sum (2), one registered adder-tree
    level per halving of the ``macs`` products, the row's dot-product register (1)."""
    return 5 + ceil_log2(macs)


@dataclass(frozen=True)
class SlotLengths:
    """Cycles of one time slot by activity (see HRUCore): the longer engine or the hazard minimum.

    The MAC engine issues one (row, group) item per clock, G = N / macs groups of ``macs``
    columns per row. Hazards, with every pass stall-free: the same (row, echo) item is read
    again by the next OSC pass (y/z written ``yz_write`` cycles after issue); in echo mode the
    next slot's MAC reads d(row) that the (row, −ε) item wrote (issued 2r + 1 cycles into the
    slot, d readable ``diff_write + 1`` cycles later; the MAC reads it r·G cycles into the next
    slot); the next slot's OSC pass reads b(row) (``b_read`` cycles after its issue at E·r) that
    this slot's MAC wrote (``mac_latency`` after its last group, issued at (r+1)·G − 1). b and d
    are double-buffered, so only these read-after-write distances matter. With G = 1 neither
    the d nor the b hazard ever exceeds max(E·R, 16) in the linear lane; the nonlinear lane writes
    Δt later (``LaneTiming.diff_write``), so its echo slot is at least R + 16 cycles.
    """

    mac: int  # MAC engine only (first slot, last echo slot, CLEAR)
    osc: int  # OSC engine only (last forward slot)
    both: int  # steady state: one time step

    @classmethod
    def of(cls, rows: int, inputs: int, echo: bool, macs: int = 1,
           timing: LaneTiming = TIMINGS["linear"]) -> "SlotLengths":
        groups, e = inputs // macs, 2 if echo else 1
        osc = max(rows * e, timing.yz_write)
        if echo:
            osc = max(osc, max(timing.diff_write + 2 + r * (2 - groups) for r in range(rows)))
        b_hazard = max((r + 1) * groups - e * r for r in range(rows)) + mac_latency(macs) - timing.b_read
        mac = max(rows * groups, b_hazard)
        return cls(mac=mac, osc=osc, both=max(mac, osc))


def default_macs(inputs: int) -> int:
    """B·u (and d·u) multipliers per lane by default: the largest power of two dividing N, so a
    whole row per clock whenever N is a power of two (the MAC engine then never sets the pace)."""
    return inputs & -inputs


def cycles_per_step(size: HRUSize, lanes: int, echo: bool, macs: int | None = None, hru: str = "linear") -> int:
    """Clock cycles per time step in steady state (input stream always valid): linear
    max(R·N/macs, E·R, 16); nonlinear max(R·N/macs, E·R, 24, echo: R + 16)."""
    macs = default_macs(size.inputs) if macs is None else macs
    return SlotLengths.of(size.oscillators // lanes, size.inputs, echo, macs, TIMINGS[hru]).both


def oscillator_bound(size: HRUSize, lanes: int, echo: bool, hru: str = "linear") -> int:
    """The oscillator pipeline's ideal per step: max(E·R, write-back) (one update per lane per
    clock, but no oscillator's next step before its y/z write-back: 16 cycles linear, 24 nonlinear)."""
    return max((2 if echo else 1) * (size.oscillators // lanes), TIMINGS[hru].yz_write)

