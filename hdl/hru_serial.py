"""The serial HRU core: the linear HRU with ONE 16×16 multiplier, for small FPGAs (iCE40UP5K).

Same contract as ``hdl.hru_core.HRUCore`` — the same ports (``cmd``, ``u``, ``nudge``, ``bus``,
``busy``, ``done``), commands, address map and overflow counters, bit-exact to
golden_model.hru_fixed — so the command sequencer and the host drive either core unchanged. One
difference: the host cannot write the accumulator regions (POS_SUM, ACC_A, ACC_B; the protocol's
READ_ONLY_REGIONS never does, CLEAR and FORWARD reset them), which saves their write multiplexers.
What differs is the cost model: the pipelined core issues one oscillator update per clock into
a 16-stage pipeline with 36 wide multipliers (13,000+ iCE40 cells even at P4/N2); this one walks
the integer model's operations one after another through one datapath:

    MAC unit    ACC = Σ a·b over 15-bit limbs: one 16×16 signed product per clock (an iCE40
                SB_MAC16 with registered inputs and output), shifted into a wide accumulator.
    round unit  one adder: result = W(x + R(ACC, s)) for every drift, force, kick, drive,
                nudge, d/S word and accumulator update (R odd-symmetric, see hdl.fixed), every
                product aligned to the largest shift S on its way in (``products``), so one
                carry chain and no shifter serve every shift.
    stores      three block RAMs by word width (coefficients, states, accumulators), each with
                one read and one write port, shared with the host port while idle. The state
                store is also the datapath's register file: y, z of both echoes are updated in
                place and the intermediate words (yh±, b, f, S, a streamed nudge) live in
                scratch words after the per-oscillator regions, so the core holds no 32-bit
                register bank (the UP5K's cells, not its memories, are the budget); the
                four overflow counters are a fourth, 4-word block RAM.

Per time step the core handles oscillator 0..P−1 in turn; an oscillator's forward update is
b = W(R(B·u)) (N products), drift, force, kick, drift (4 products), the position sum; an echo
update applies the nudge to both echoes (the −ε echo first: at step 0 both start from slot 0,
which the +ε echo then overwrites), shares b, runs both leapfrogs, then d, S, acc_a += R(d·S),
acc_b += R(d·u) (N products). Products of w-bit operands take ceil((w−1)/15) limbs each
(coefficient 18 bits: 2, state 32: 3, input 16: 1); ``cycles_per_step`` is the exact cost, for
the default format at P16/N8 1,201 clocks per forward step and 3,281 per echo step: at 12 MHz
~10,000 and ~3,700 steps/s, of the order of what a 3 Mbaud link carries (an 8-channel input
sample is 16 bytes, a streamed nudge vector 64).

The nudge is applied before each echo step (vector v before step v, as the pipelined core
does), each oscillator taking its word from the ``nudge`` stream (one word per beat, lanes = 1)
just when it needs it; the input sample is taken at the start of each step.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from echoboard.golden_model.formats import HRUSize
from echoboard.hdl.address_map import PHASES, AddressMap, Region
from echoboard.hdl.fixed import add_round_shift, wrap
from echoboard.hdl.hru_core import Op, check_config
from echoboard.hdl.hru_lane import HRULane
from echoboard.hdl.kinds import hru_kind
from echoboard.hdl.memories import MemoryBus, SharedMemory

__all__ = ["SerialHRUCore", "LIMB", "SCRATCH", "check_serial_config", "cycles_per_step", "limbs", "products"]

LIMB = 15  # an iCE40 SB_MAC16 is 16×16 signed: 15-bit unsigned limbs below a signed top limb


def limbs(width: int) -> int:
    """16×16 products needed per operand of ``width`` bits: 16 → 1, 17..31 → 2, 32..46 → 3."""
    return max(1, -(-(width - 1) // LIMB))


def products(fmt) -> tuple[int, dict, dict]:
    """(S, {product: its rounding shift s}, {product: (a operand, a's width aligned, b's width)}).

    Every rounding shifts by the largest shift S: R(p·2^(S−s), S) = R(p, s) exactly, so each
    product's a operand (a coefficient or d) is shifted left by S − s on its way into the
    multiplier, costing limbs only where it crosses a 15-bit boundary, and a value added without
    rounding is loaded as v·2^S: one rounding adder and no shifter in the datapath.
    """
    ws, wc, wu = fmt.state_width, fmt.coef_width, fmt.input_width
    shifts = {"drive": fmt.coef_b_frac + fmt.input_frac - fmt.state_frac, "drift": fmt.delta_frac + 1,
              "force": fmt.coef_a_frac, "kick": fmt.delta_frac, "acc_a": fmt.acc_a_shift, "acc_b": fmt.acc_b_shift}
    top = max(max(shifts.values()), 1)
    operands = {"drive": ("COEF", wc, wu), "drift": ("COEF", wc, ws), "force": ("COEF", wc, ws),
                "kick": ("COEF", wc, ws + 1), "acc_a": ("D", ws, ws), "acc_b": ("D", ws, wu)}  # kick: −f
    return top, shifts, {op: (a, width + top - shifts[op], b_width) for op, (a, width, b_width) in operands.items()}


#: Scratch words of the state store, after the five per-oscillator regions: the half-step
#: positions of both echoes, the drive b, the force f, the sum S, a streamed nudge word.
SCRATCH = ("YH0", "YH1", "B", "F", "S", "N")


def cycles_per_step(fmt, size: HRUSize, echo: bool) -> int:
    """Clock cycles of one time step (input waiting, nudges streaming in time), exact.

    A product of k limb pairs (``products``: the aligned widths) takes k + 5 cycles (read its
    operands, start, k issues, the DSP and accumulator registers, the rounding); the drive's
    columns run back to back: its first B word, k + 1 per column, the drain and b's rounding (3).
    Per oscillator: the drive, then
    forward: the leapfrog and the position sum (3); echo: the nudge (5), both leapfrogs, d and S
    (3 each), acc_a and N acc_b columns (no operand to read: k + 4).
    """
    _, _, operands = products(fmt)
    cost = {op: limbs(a_width) * limbs(b_width) + 5 for op, (_, a_width, b_width) in operands.items()}
    n = size.inputs
    drive = 1 + n * (cost["drive"] - 4) + 3
    leapfrog = 2 * cost["drift"] + cost["force"] + cost["kick"]
    if echo:
        per_oscillator = drive + 5 + 2 * leapfrog + 6 + cost["acc_a"] + n * (cost["acc_b"] - 1)
    else:
        per_oscillator = drive + leapfrog + 3
    return 1 + size.oscillators * per_oscillator


def check_serial_config(fmt, size: HRUSize, lanes: int = 1) -> None:
    """Clear errors for configurations the serial core cannot implement."""
    if hru_kind(fmt) != "linear":
        raise ValueError("the serial core implements the linear HRU only; build the nonlinear HRU with "
                         "hdl.hru_core.HRUCore (the pipelined core)")
    if lanes != 1:
        raise ValueError(f"the serial core has one datapath: lanes must be 1, got {lanes}")
    check_config(fmt, size, 1)


class SerialHRUCore(wiring.Component):
    """The linear HRU core as one sequential datapath; see the module docstring.

    ``fmt`` a golden_model FixedFormat (the serial core implements the linear HRU only), ``size``
    P, N and the longest sequence, ``lanes`` must be 1 (accepted for the common constructor).
    """

    hru = "linear"
    lanes = 1
    parameter_regions, accumulator_regions = HRULane.PARAMETERS, HRULane.ACCUMULATORS  # the linear HRU's

    def __new__(cls, fmt, size: HRUSize, lanes: int = 1, **kwargs):
        check_serial_config(fmt, size, lanes)  # before the object exists: no "unused elaboratable" warning
        return super().__new__(cls, **kwargs)

    def __init__(self, fmt, size: HRUSize, lanes: int = 1):
        self.fmt, self.size = fmt, size
        self.address_map = AddressMap(size.oscillators, size.inputs, 1, Region)
        self.data_width = max(fmt.acc_width, fmt.state_width, fmt.coef_width, fmt.counter_width)
        self.command_layout = data.StructLayout({
            "op": Op, "length": unsigned(ceil_log2(size.max_length + 1)), "nudge_stream": 1})
        super().__init__({
            "cmd": In(stream.Signature(self.command_layout)),
            "u": In(stream.Signature(data.ArrayLayout(signed(fmt.input_width), size.inputs))),
            "nudge": In(stream.Signature(data.ArrayLayout(signed(fmt.state_width), 1))),
            "bus": In(MemoryBus(self.address_map.addr_width, self.data_width)),
            "busy": Out(1),
            "done": Out(1),
        })

    # ---- where each host region lives: (store, base address) --------------------------------

    def store_layout(self) -> dict:
        """Region -> (store name, base): A, δ, B in "coef"; nudge and both state slots in
        "state"; the position sum and the gradient accumulators in "acc"."""
        p = self.size.oscillators
        return {
            Region.A: ("coef", 0), Region.DELTA: ("coef", p), Region.B: ("coef", 2 * p),
            Region.NUDGE: ("state", 0), Region.Y0: ("state", p), Region.Z0: ("state", 2 * p),
            Region.Y1: ("state", 3 * p), Region.Z1: ("state", 4 * p),
            Region.POS_SUM: ("acc", 0), Region.ACC_A: ("acc", p), Region.ACC_B: ("acc", 2 * p),
        }

    def elaborate(self, platform):
        fmt, size = self.fmt, self.size
        P, N = size.oscillators, size.inputs
        ws, wc, wu, wacc = fmt.state_width, fmt.coef_width, fmt.input_width, fmt.acc_width
        m = Module()

        # ---- stores: the state store is also the datapath's register file ---------------------
        layout = self.store_layout()
        state_words = P * sum(store == "state" for store, _ in layout.values())  # the scratch words follow
        scratch = {name: state_words + k for k, name in enumerate(SCRATCH)}
        # the datapath never writes a coefficient; the host never writes an accumulator (the
        # protocol's READ_ONLY_REGIONS: CLEAR and FORWARD reset them)
        stores = {"coef": SharedMemory(signed(wc), (2 + N) * P, writer="host"),
                  "state": SharedMemory(signed(ws), state_words + len(SCRATCH)),
                  "acc": SharedMemory(signed(wacc), (2 + N) * P, writer="datapath")}
        for name, store in stores.items():
            m.submodules[name] = store
            m.d.comb += store.host_sel.eq(~self.busy)
        coef, state, acc_mem = stores["coef"], stores["state"], stores["acc"]

        def addr(region, index):
            return layout[region][1] + index

        # the input sample stays in the stream's payload: it is taken (ready) when its step ends
        col = Signal(range(N))
        u_col = Signal(signed(wu))
        with m.Switch(col):
            for j in range(N):
                with m.Case(j):
                    m.d.comb += u_col.eq(self.u.payload[j])
        diff = Signal(signed(ws))  # d = W(yh⁺ − yh⁻): the multiplier's a for both gradient products
        # the state word read last cycle, negated on request (−z at the flip, −b, −f, −yh⁻, −n)
        negate = Signal()
        state_word = Signal(signed(ws + 1))
        m.d.comb += state_word.eq(Mux(negate, -state.rd_data, state.rd_data))

        top_shift, shifts, operands = products(fmt)
        a_widths = {op: a_width for op, (_, a_width, _) in operands.items()}
        most_limbs = max(limbs(w) for _, a_width, b_width in operands.values() for w in (a_width, b_width))

        # ---- MAC unit: ACC = Σ a·b, one limb pair per clock -------------------------------------
        # The operands are not registered: while a product issues, the stores keep presenting
        # its coefficient and state word (their read addresses held), d and u_j stand still.
        op_width = LIMB * (most_limbs - 1) + 16  # operands are sign-extended into it
        opa, opb = Signal(signed(op_width)), Signal(signed(op_width))
        product_sel, b_is_u = Signal(range(len(operands))), Signal()
        na, nb = Signal(range(most_limbs + 1)), Signal(range(most_limbs + 1))
        ka, kb = Signal(range(most_limbs)), Signal(range(most_limbs))
        issuing = Signal()
        la, lb = Signal(signed(16)), Signal(signed(16))  # SB_MAC16 input registers
        pp = Signal(signed(32))  # its output register
        v1, v2 = Signal(), Signal()
        sh1, sh2 = Signal(range(2 * most_limbs - 1)), Signal(range(2 * most_limbs - 1))
        acc_width = max(*(a_widths[op] + b_width for op, (_, _, b_width) in operands.items()),
                        a_widths["drive"] + wu + ceil_log2(N), ws + 1 + top_shift) + 1
        acc = Signal(signed(acc_width))

        def limb(x, k, n):
            top = x[LIMB * k:LIMB * k + 16].as_signed()
            low = Cat(x[LIMB * k:LIMB * k + LIMB], Const(0, 1)).as_signed()
            return Mux(k == n - 1, top, low)

        limb_a, limb_b = Signal(signed(16)), Signal(signed(16))
        for limb_sig, x, k, n in ((limb_a, opa, ka, na), (limb_b, opb, kb, nb)):
            with m.Switch(k):
                for i in range(most_limbs):
                    with m.Case(i):
                        m.d.comb += limb_sig.eq(limb(x, i, n))
        m.d.sync += [v1.eq(issuing), la.eq(limb_a), lb.eq(limb_b), sh1.eq(ka + kb),
                     v2.eq(v1), pp.eq(la * lb), sh2.eq(sh1)]
        last_issue = issuing & (kb == nb - 1) & (ka == na - 1)  # the product's last limb pair
        with m.If(issuing):
            m.d.sync += kb.eq(kb + 1)
            with m.If(kb == nb - 1):
                m.d.sync += [kb.eq(0), ka.eq(ka + 1)]
        with m.If(last_issue):
            m.d.sync += [ka.eq(0), issuing.eq(0)]
        shifted = Signal(signed(acc_width))
        with m.Switch(sh2):
            for k in range(2 * most_limbs - 1):
                with m.Case(k):
                    m.d.comb += shifted.eq(pp << (LIMB * k))
        acc_load, acc_clear = Signal(), Signal()
        with m.If(acc_load):  # ACC = ± the state word, aligned
            m.d.sync += acc.eq(state_word << top_shift)
        with m.Elif(acc_clear):
            m.d.sync += acc.eq(0)
        with m.Elif(v2):
            m.d.sync += acc.eq(acc + shifted)
        mac_busy = issuing | v1 | v2

        with m.Switch(product_sel):
            for k, (op, (a_source, _, _)) in enumerate(operands.items()):
                with m.Case(k):
                    m.d.comb += opa.eq((coef.rd_data if a_source == "COEF" else diff) << (top_shift - shifts[op]))
        m.d.comb += opb.eq(Mux(b_is_u, u_col, state_word))

        def multiply(op: str, *, b="STATE", accumulate=False):
            """Start ACC = a·b for product ``op`` (a: the coefficient read or d, aligned); ``b``
            "STATE" (the state word read, ± by ``negate``) or "U" (u_j); ``accumulate``: ACC +=
            (the drive sums its N products). The operands must stand still while ``issuing``."""
            m.d.comb += acc_clear.eq(not accumulate)
            m.d.sync += [product_sel.eq(list(operands).index(op)), b_is_u.eq(b == "U"),
                         na.eq(limbs(a_widths[op])), nb.eq(limbs(operands[op][2])), issuing.eq(1), ka.eq(0), kb.eq(0)]

        # ---- round unit: W(x + R(ACC, S)) ---------------------------------------------------------
        x_sel = Signal(2)  # x: the state word, the accumulator word read, or zero
        X_STATE, X_MEM, X_ZERO = 0, 1, 2
        x = Signal(signed(max(wacc, ws + 1)))
        with m.Switch(x_sel):
            with m.Case(X_STATE):
                m.d.comb += x.eq(state_word)
            with m.Case(X_MEM):
                m.d.comb += x.eq(acc_mem.rd_data)
        total = add_round_shift(x, acc, top_shift)
        res_state, ovf_state = wrap(total, ws)
        res_acc, ovf_acc = wrap(total, wacc)
        wide = Signal()  # the result is an accumulator word
        ovf = Mux(wide, ovf_acc, ovf_state)
        count_phase, count_event = Signal(range(len(PHASES))), Signal()  # at most one event per cycle
        write_nudge = Signal()  # the state store takes a streamed nudge word instead of the result
        m.d.comb += [state.wr_data.eq(Mux(write_nudge, self.nudge.payload[0], res_state)),
                     acc_mem.wr_data.eq(res_acc)]

        def count(phase, event):
            m.d.comb += [count_phase.eq(phase), count_event.eq(event)]

        def round_add(x_src, phase, to, *, neg=False):
            """This cycle: result = W(x + R(ACC, s)), its wrap counted in ``phase`` (None: not).
            ``x_src``: "STATE" (± the state word read last cycle), "MEM" (the accumulator word
            read), "ZERO", or a 1-bit value choosing ZERO over MEM. ``to``: ("state", address),
            ("acc", address) or "D"."""
            if phase is not None:
                count(phase, ovf)
            if not isinstance(x_src, str):
                m.d.comb += x_sel.eq(Mux(x_src, X_ZERO, X_MEM))
            else:
                m.d.comb += x_sel.eq({"STATE": X_STATE, "MEM": X_MEM, "ZERO": X_ZERO}[x_src])
                if x_src == "STATE":
                    m.d.comb += negate.eq(neg)
            if to == "D":
                m.d.sync += diff.eq(res_state)
            elif to[0] == "state":
                m.d.comb += [state.wr_en.eq(1), state.wr_addr.eq(to[1])]
            else:
                m.d.comb += [wide.eq(1), acc_mem.wr_en.eq(1), acc_mem.wr_addr.eq(to[1])]

        def load_acc(*, neg=False):
            """ACC = ± the state word read last cycle."""
            m.d.comb += [acc_load.eq(1), negate.eq(neg)]

        # ---- overflow counters: a 4-word block RAM and one saturating incrementer ---------------
        # At most one wrap per cycle (b's wrap in an echo counts for the −ε echo a cycle later):
        # the counter is read in the event's cycle and written back incremented in the next (the
        # read is transparent, so back-to-back events see each other). The host reads them through
        # the same port while idle. Cell budget: no 4 × 32 flip-flops and their multiplexers.
        counter_mem = memory.Memory(shape=unsigned(fmt.counter_width), depth=len(PHASES), init=[],
                                    attrs={"ram_style": "block"})  # yosys would make so small a memory of FFs
        m.submodules.counters = counter_mem
        counter_wr = counter_mem.write_port()
        counter_rd = counter_mem.read_port(transparent_for=(counter_wr,))
        pending, pending_phase = Signal(), Signal(range(len(PHASES)))  # last cycle's event
        clear_now, clear_phase, clear_minus = Signal(), Signal(range(len(PHASES))), Signal()
        m.d.sync += [pending.eq(count_event), pending_phase.eq(count_phase), clear_minus.eq(0)]
        with m.If(clear_now):
            m.d.comb += [counter_wr.en.eq(1), counter_wr.addr.eq(clear_phase), counter_wr.data.eq(0)]
        with m.Elif(clear_minus):  # an echo restarts two counters: the second one a cycle later
            m.d.comb += [counter_wr.en.eq(1), counter_wr.addr.eq(PHASES.index("echo_minus")), counter_wr.data.eq(0)]
        with m.Elif(pending & ~counter_rd.data.all()):
            m.d.comb += [counter_wr.en.eq(1), counter_wr.addr.eq(pending_phase), counter_wr.data.eq(counter_rd.data + 1)]

        # ---- control ------------------------------------------------------------------------------
        op = Signal(Op)
        length = Signal.like(self.cmd.payload.length)
        step = Signal.like(length)
        nudge_stream = Signal()
        echo = op == Op.ECHO
        first = step == 0
        osc = Signal(range(P))
        row = Signal(range((N + 1) * P))  # osc·N; CLEAR's word counter
        FWD, PLUS, MINUS, GRAD = range(len(PHASES))
        b_wrapped = Signal()  # b's wrap in an echo, still to count for the −ε echo
        y_addr = (addr(Region.Y0, osc), Mux(first, addr(Region.Y0, osc), addr(Region.Y1, osc)))  # step 0: slot 0
        z_addr = (addr(Region.Z0, osc), addr(Region.Z1, osc))
        phase = (Mux(echo, PLUS, FWD), MINUS)  # of echo e's leapfrog (forward: e = 0)

        def next_oscillator():
            m.d.sync += [osc.eq(osc + 1), row.eq(row + N)]
            m.next = "DRIVE_READ"
            with m.If(osc == P - 1):
                m.d.comb += self.u.ready.eq(1)  # the step's input sample is used up
                m.d.sync += step.eq(step + 1)
                m.next = "STEP"
                with m.If(step == length - 1):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"

        m.d.sync += self.done.eq(0)  # a one-cycle pulse in the first idle cycle
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~pending)  # the last pass's last count has landed
                with m.If(self.cmd.valid & ~pending):
                    cmd = self.cmd.payload
                    m.d.sync += [op.eq(cmd.op), length.eq(cmd.length), step.eq(0), row.eq(0), col.eq(0),
                                 nudge_stream.eq(cmd.nudge_stream & (cmd.op == Op.ECHO)),
                                 clear_minus.eq(cmd.op == Op.ECHO)]
                    m.d.comb += [clear_now.eq(1),
                                 clear_phase.eq(Mux(cmd.op == Op.CLEAR, GRAD, Mux(cmd.op == Op.ECHO, PLUS, FWD))),
                                 acc_clear.eq(1)]  # CLEAR writes W(0 + R(ACC)) = 0
                    with m.If(cmd.op == Op.CLEAR):
                        m.next = "CLEAR"
                    with m.Elif(cmd.length == 0):
                        m.d.sync += self.done.eq(1)
                    with m.Else():
                        m.next = "STEP"

            with m.State("CLEAR"):  # acc_a and acc_b: every word from ACC_A's base on (ACC = 0)
                round_add("ZERO", None, ("acc", addr(Region.ACC_A, row)))
                m.d.sync += row.eq(row + 1)
                with m.If(row == (1 + N) * P - 1):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"

            # ---- one time step: take u, then oscillator 0..P−1 ----------------------------------
            with m.State("STEP"):
                with m.If(self.u.valid):
                    m.d.sync += [osc.eq(0), row.eq(0)]
                    m.next = "DRIVE_READ"

            # b = W(R(Σ_j B_ij·u_j)): one product per column into one exact sum, back to back:
            # the next column's B word is read in the last issue cycle of this one (its limbs are
            # latched by then), and only the last column waits for the MAC to drain. b counts in
            # the forward phase or in both echoes (they share it).
            with m.State("DRIVE_READ"):
                m.d.comb += [coef.rd_addr.eq(addr(Region.B, row)), acc_clear.eq(1)]
                m.next = "DRIVE_MUL"
            with m.State("DRIVE_MUL"):
                m.d.comb += coef.rd_addr.eq(addr(Region.B, row + col))
                multiply("drive", b="U", accumulate=True)
                m.next = "DRIVE_WAIT"
            with m.State("DRIVE_WAIT"):
                m.d.comb += coef.rd_addr.eq(addr(Region.B, row + col))
                with m.If(last_issue):
                    m.d.sync += col.eq(col + 1)
                    m.d.comb += coef.rd_addr.eq(addr(Region.B, row + col + 1))
                    m.next = "DRIVE_MUL"
                    with m.If(col == N - 1):
                        m.d.sync += col.eq(0)
                        m.next = "DRIVE_ROUND"
            with m.State("DRIVE_ROUND"):
                with m.If(~mac_busy):
                    round_add("ZERO", Mux(echo, PLUS, FWD), ("state", scratch["B"]))
                    m.d.sync += b_wrapped.eq(ovf)
                    with m.If(echo):
                        m.next = "NUDGE_IN"
                    with m.Else():
                        m.next = "E0_DRIFT1"

            # ---- echo: z± = W(±z + n±), the flip at step 0 (−z_L), the −ε echo first: it reads
            # slot 0 at step 0, which the +ε echo then overwrites
            nudge_addr = Mux(nudge_stream, scratch["N"], addr(Region.NUDGE, osc))
            with m.State("NUDGE_IN"):  # a streamed word goes to scratch N (read through the store)
                m.d.comb += [self.nudge.ready.eq(nudge_stream), state.rd_addr.eq(nudge_addr)]
                with m.If(nudge_stream):
                    m.d.comb += [write_nudge.eq(1), state.wr_en.eq(1), state.wr_addr.eq(scratch["N"])]
                with m.If(~nudge_stream | self.nudge.valid):
                    count(MINUS, b_wrapped)
                    m.next = "NUDGE_MINUS_LOAD"
            for e, name, after in ((1, "NUDGE_MINUS", "NUDGE_PLUS_LOAD"), (0, "NUDGE_PLUS", "E1_DRIFT1")):
                with m.State(name + "_LOAD"):
                    m.d.comb += state.rd_addr.eq(Mux(first, z_addr[0], z_addr[e]))
                    load_acc(neg=e == 1)
                    m.next = name
                with m.State(name):
                    m.d.comb += state.rd_addr.eq(nudge_addr)
                    round_add("STATE", (PLUS, MINUS)[e], ("state", z_addr[e]), neg=first)
                    m.next = after

            def product(name, a, b, x, shift, phases, to, after, *, neg_b=False, neg_x=False):
                """Read δ/A and the state word b; ACC = a·(±b); then read x; round into ``to``."""
                with m.State(name):
                    m.d.comb += [coef.rd_addr.eq(a), state.rd_addr.eq(b)]
                    m.next = name + "_MUL"
                with m.State(name + "_MUL"):
                    m.d.comb += [coef.rd_addr.eq(a), state.rd_addr.eq(b), negate.eq(neg_b)]
                    multiply(shift)
                    m.next = name + "_WAIT"
                with m.State(name + "_WAIT"):  # x is read once the last limb pair has issued
                    m.d.comb += [coef.rd_addr.eq(a), state.rd_addr.eq(Mux(issuing, b, x)),
                                 negate.eq(Mux(issuing, neg_b, neg_x))]
                    with m.If(~mac_busy):
                        round_add("STATE", phases, to, neg=neg_x)
                        after()

            # ---- the leapfrog of echo e: drift, force (−b), kick (ACC = δ·(−f): z + R(−δf) =
            # z − R(δf), R being odd), drift
            delta_addr, a_addr = addr(Region.DELTA, osc), addr(Region.A, osc)
            def goto(state_name):
                return lambda: setattr(m, "next", state_name)

            for e in (1, 0):
                def after_leapfrog(e=e):
                    if e == 1:
                        m.next = "E0_DRIFT1"
                    else:
                        with m.If(echo):
                            m.next = "DIFF_LOAD"
                        with m.Else():
                            m.next = "POS_READ"

                yh = scratch[f"YH{e}"]
                product(f"E{e}_DRIFT1", delta_addr, z_addr[e], y_addr[e], "drift", phase[e], ("state", yh),
                        goto(f"E{e}_FORCE"))
                product(f"E{e}_FORCE", a_addr, yh, scratch["B"], "force", phase[e], ("state", scratch["F"]),
                        goto(f"E{e}_KICK"), neg_x=True)
                product(f"E{e}_KICK", delta_addr, scratch["F"], z_addr[e], "kick", phase[e], ("state", z_addr[e]),
                        goto(f"E{e}_DRIFT2"), neg_b=True)
                product(f"E{e}_DRIFT2", delta_addr, z_addr[e], yh, "drift", phase[e], ("state", addr(Region.Y0 if e == 0 else Region.Y1, osc)),
                        after_leapfrog)

            # ---- forward: position sum (restarted at step 0) ------------------------------------
            pos_addr = addr(Region.POS_SUM, osc)
            with m.State("POS_READ"):
                m.d.comb += [state.rd_addr.eq(y_addr[0]), acc_mem.rd_addr.eq(pos_addr)]
                m.next = "POS_LOAD"
            with m.State("POS_LOAD"):
                m.d.comb += acc_mem.rd_addr.eq(pos_addr)
                load_acc()
                m.next = "POS_ADD"
            with m.State("POS_ADD"):
                round_add(first, FWD, ("acc", pos_addr))
                next_oscillator()

            # ---- echo read-out: d = W(yh⁺ − yh⁻), S = W(yh⁺ + yh⁻), acc_a += R(d·S), acc_b += R(d·u)
            for name, neg, to, after in (("DIFF", True, "D", "SUM_LOAD"), ("SUM", False, ("state", scratch["S"]), "ACC_A")):
                with m.State(name + "_LOAD"):
                    m.d.comb += state.rd_addr.eq(scratch["YH1"])
                    m.next = name + "_LOAD2"
                with m.State(name + "_LOAD2"):
                    m.d.comb += state.rd_addr.eq(scratch["YH0"])
                    load_acc(neg=neg)
                    m.next = name
                with m.State(name):
                    round_add("STATE", GRAD, to)
                    m.next = after

            acc_a_addr, acc_b_addr = addr(Region.ACC_A, osc), addr(Region.ACC_B, row + col)
            with m.State("ACC_A"):
                m.d.comb += [state.rd_addr.eq(scratch["S"]), acc_mem.rd_addr.eq(acc_a_addr)]
                m.next = "ACC_A_MUL"
            with m.State("ACC_A_MUL"):
                multiply("acc_a")
                m.d.comb += [state.rd_addr.eq(scratch["S"]), acc_mem.rd_addr.eq(acc_a_addr)]
                m.next = "ACC_A_WAIT"
            with m.State("ACC_A_WAIT"):
                m.d.comb += [state.rd_addr.eq(scratch["S"]), acc_mem.rd_addr.eq(acc_a_addr)]
                with m.If(~mac_busy):
                    round_add("MEM", GRAD, ("acc", acc_a_addr))
                    m.next = "ACC_B"
            with m.State("ACC_B"):
                multiply("acc_b", b="U")
                m.d.comb += acc_mem.rd_addr.eq(acc_b_addr)
                m.next = "ACC_B_WAIT"
            with m.State("ACC_B_WAIT"):
                m.d.comb += acc_mem.rd_addr.eq(acc_b_addr)
                with m.If(~mac_busy):
                    round_add("MEM", GRAD, ("acc", acc_b_addr))
                    m.d.sync += col.eq(col + 1)
                    m.next = "ACC_B"
                    with m.If(col == N - 1):
                        m.d.sync += col.eq(0)
                        next_oscillator()
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))

        # ---- host port: {region, index} -> (store, base + index); counters ----------------------
        bus, amap = self.bus, self.address_map
        index, region = bus.addr[:amap.index_width], bus.addr[amap.index_width:]
        for name, store in stores.items():
            with m.Switch(region):
                for r, (store_name, _) in layout.items():
                    if store_name == name:
                        with m.Case(r):
                            m.d.comb += [store.host.addr.eq(addr(r, index)), store.host.w_en.eq(bus.w_en)]
            m.d.comb += store.host.w_data.eq(bus.w_data)
        # the read returns one cycle later: which store (or counter) the address chose, registered
        sources = {"coef": 0, "state": 1, "acc": 2, "counter": 3}
        read_source = Signal(range(len(sources)))
        m.d.sync += read_source.eq(sources["counter"])
        with m.Switch(region):
            for r, (store_name, _) in layout.items():
                with m.Case(r):
                    m.d.sync += read_source.eq(sources[store_name])
        m.d.comb += counter_rd.addr.eq(Mux(self.busy, count_phase, index))
        with m.Switch(read_source):
            for name, k in sources.items():
                with m.Case(k):
                    m.d.comb += bus.r_data.eq(counter_rd.data if name == "counter" else stores[name].host.r_data.as_signed())
        return m
