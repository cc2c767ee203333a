"""HRUCore in Amaranth's simulator against golden_model.hru_fixed: every field compared with ==.

Small sizes and short sequences only (amaranth.sim runs ~10-35 k cycles/s); the long and wide
runs are in test_hdl_core_verilator.py.
"""
import random

import pytest
from amaranth.sim import Simulator

from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.hdl.address_map import PHASES, Region
from echoboard.hdl.hru_core import HRUCore, Op
from echoboard.hdl.timing import SlotLengths, cycles_per_step, default_macs, oscillator_bound
from echoboard.hdl.verilog import StepAssembler, golden_expectation, random_case

SMALL = FixedFormat(state_width=16, state_frac=8, input_width=8, input_frac=5, coef_width=10,
                    coef_a_frac=6, coef_b_frac=7, delta_frac=8, acc_width=24, acc_a_shift=4,
                    acc_b_shift=2, counter_width=8)


class CoreDriver:
    """Drives one HRUCore in an amaranth.sim testbench: host port, commands and input stream."""

    def __init__(self, core: HRUCore, ctx):
        self.core, self.ctx, self.amap = core, ctx, core.address_map
        self.streams, self.trace = {}, []

    async def write(self, region, value, osc=0, col=0):
        bus = self.core.bus
        self.ctx.set(bus.addr, self.amap.address(region, osc, col))
        self.ctx.set(bus.w_data, int(value) & ((1 << self.core.data_width) - 1))
        self.ctx.set(bus.w_en, 1)
        await self.ctx.tick()
        self.ctx.set(bus.w_en, 0)

    async def read(self, region, osc=0, col=0) -> int:
        self.ctx.set(self.core.bus.addr, self.amap.address(region, osc, col))
        await self.ctx.tick()
        raw = self.ctx.get(self.core.bus.r_data)
        width = self.core.data_width
        return raw if region == Region.COUNTERS or raw < 1 << (width - 1) else raw - (1 << width)

    async def write_vector(self, region, values):
        for i, v in enumerate(values):
            await self.write(region, v, i)

    async def read_vector(self, region, count):
        return [await self.read(region, i) for i in range(count)]

    async def read_matrix(self, region, p, n):
        return [[await self.read(region, i, j) for j in range(n)] for i in range(p)]

    async def write_store(self, region, values):
        """A per-oscillator vector, or a P×N matrix (B) row by row."""
        if not self.amap.is_matrix(region):
            return await self.write_vector(region, values)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                await self.write(region, v, i, j)

    async def read_store(self, region):
        p, n = self.core.size.oscillators, self.core.size.inputs
        return await (self.read_matrix(region, p, n) if self.amap.is_matrix(region) else self.read_vector(region, p))

    async def command(self, op: Op, length: int = 0, inputs=(), nudges=None, block: bool = False,
                      ready=None) -> int:
        """Issue one command, stream ``inputs`` (one row per beat) and, for an echo with per-step
        nudges (``nudges``: (L, P), golden order), their vectors in reverse, R beats each; wait for
        ``done``. Returns the cycles from the command to ``done``.

        ``block``: HSSM block mode; the ``y`` / ``du`` beats go to ``self.streams``, the trace's
        write-backs to ``self.trace`` (both kept until the caller takes them). ``ready()``: the
        streams' ready per cycle (default always), e.g. random back-pressure."""
        ctx, core = self.ctx, self.core
        ctx.set(core.cmd.payload, {"op": op, "length": length, "nudge_stream": int(nudges is not None),
                                   **({"block": 1} if block else {})})
        ctx.set(core.cmd.valid, 1)
        await ctx.tick()
        ctx.set(core.cmd.valid, 0)
        lanes, rows = core.lanes, self.amap.rows
        pending = [(core.u, [list(row) for row in inputs])]
        if nudges is not None:
            pending.append((core.nudge, [[vector[r * lanes + k] for k in range(lanes)]
                                         for vector in nudges[::-1] for r in range(rows)]))
        cycles, outputs, done = 1, [(name, getattr(core, name)) for name in ("y", "du") if block], None
        # done comes with the first idle cycle (the port is usable now); the streams may still hold beats
        while done is None or any(ctx.get(port.valid) for _, port in outputs):
            if done is None and ctx.get(core.done):
                done = cycles
            moved = []
            for port, items in pending:
                ctx.set(port.valid, bool(items))
                if items:
                    ctx.set(port.payload, items[0])
                moved.append(bool(items) and ctx.get(port.ready))
            for name, port in outputs:
                ctx.set(port.ready, ready() if ready else 1)
                if ctx.get(port.valid) and ctx.get(port.ready):
                    self.streams.setdefault(name, []).append(list(ctx.get(port.payload)))
            if hasattr(core, "trace") and ctx.get(core.trace.valid):
                t = ctx.get(core.trace.payload)
                self.trace.append({"echo": t.echo, "slot": t.slot, "row": t.row, "y": list(t.y), "z": list(t.z)})
            await ctx.tick()
            cycles += 1
            for (_, items), transferred in zip(pending, moved):
                if transferred:
                    items.pop(0)
        for port, _ in pending:
            ctx.set(port.valid, 0)
        return done


def run_core(fmt, size: HRUSize, lanes: int, case: dict, macs: int | None = None, core=None, **kwargs) -> dict:
    """Load the case, run CLEAR, FORWARD, ECHO; read back the fields of hdl.verilog.golden_expectation."""
    return run_minibatch(fmt, size, lanes, [case], macs, core, **kwargs)[0]


def run_minibatch(fmt, size: HRUSize, lanes: int, cases: list[dict],
                  macs: int | None = None, core=None, block: bool = False, ready=None) -> list[dict]:
    """CLEAR once, then per case: load it, FORWARD, read back, ECHO, read back (the accumulators sum up).

    ``fmt`` a FixedFormat (linear core) or a NonlinearFormat (nonlinear core): the stores written
    and read are the core's ``parameter_regions`` and ``accumulator_regions``. ``core``: a core
    to drive instead of ``HRUCore(fmt, size, lanes, macs)`` (hdl.hru_serial's has the same ports).
    ``block``: HSSM block mode (its parameters and accumulators too); each output then also has
    ``steps`` (every step's write-back and du, as golden_expectation's) and ``y_stream`` (the y
    beats per step); ``ready``: the streams' ready per cycle (CoreDriver.command)."""
    core = core or HRUCore(fmt, size, lanes, macs)
    p = size.oscillators
    outs = []

    async def bench(ctx):
        drv = CoreDriver(core, ctx)
        clear_cycles = await drv.command(Op.CLEAR)
        for case in cases:
            length, per_step = len(case["u"]), isinstance(case["nudge"][0], list)
            block_parameters = core.block_parameter_regions.items() if block else ()
            for region, key in (*((r, k) for k, r in (*core.parameter_regions.items(), *block_parameters)),
                                (Region.Y0, "y0"), (Region.Z0, "z0"),
                                *(() if per_step else ((Region.NUDGE, "nudge"),))):
                await drv.write_store(region, case[key])
            out = {"clear_cycles": clear_cycles}
            drv.streams, drv.trace = {}, []
            out["forward_cycles"] = await drv.command(Op.FORWARD, length, case["u"], block=block, ready=ready)
            forward_trace, y_beats = drv.trace, drv.streams.get("y", [])
            out["forward"] = {
                "y": await drv.read_vector(Region.Y0, p), "z": await drv.read_vector(Region.Z0, p),
                "pos_sum": await drv.read_vector(Region.POS_SUM, p),
                "overflows": {"forward": await drv.read(Region.COUNTERS, 0)},
            }
            drv.streams, drv.trace = {}, []
            out["echo_cycles"] = await drv.command(Op.ECHO, length, case["u"][::-1],
                                                   case["nudge"] if per_step else None, block=block, ready=ready)
            accumulators = {**core.accumulator_regions, **(core.block_accumulator_regions if block else {})}
            out["echo"] = {
                "plus": {"y": await drv.read_vector(Region.Y0, p), "z": await drv.read_vector(Region.Z0, p)},
                "minus": {"y": await drv.read_vector(Region.Y1, p), "z": await drv.read_vector(Region.Z1, p)},
                **{name: await drv.read_store(region) for name, region in accumulators.items()},
                "overflows": {phase: await drv.read(Region.COUNTERS, k) for k, phase in enumerate(PHASES) if k},
            }
            if block:
                out["steps"] = {kind: steps(p, lanes, kind, items) for kind, items in
                                (("forward", forward_trace), ("echo", drv.trace))}
                out["steps"]["du"] = drv.streams.get("du", [])
                out["y_stream"] = steps(p, lanes, "y", y_beats)
            outs.append(out)

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return outs


def steps(p: int, lanes: int, kind: str, items: list) -> list:
    """Items of one pass -> its steps (hdl.verilog.StepAssembler); a partial last step is kept as is."""
    assembler = StepAssembler(p, lanes, kind)
    done = [step for step in map(assembler.feed, items) if step is not None]
    return done + ([assembler.pending] if assembler.pending else [])


CONFIGS = [  # (format, size, lanes, macs: None = the default)
    (SMALL, HRUSize(oscillators=2, inputs=1, max_length=64), 1, None),
    (SMALL, HRUSize(oscillators=4, inputs=3, max_length=64), 2, None),  # macs 1: 3 groups per row
    (FixedFormat(), HRUSize(oscillators=3, inputs=2, max_length=64), 3, None),  # macs 2: one row per clock
    (SMALL, HRUSize(oscillators=8, inputs=1, max_length=64), 1, None),  # echo: d's hazard = write-back (16)
    (SMALL, HRUSize(oscillators=4, inputs=4, max_length=64), 1, 2),  # 2 groups per row: tree + row sum
    (SMALL, HRUSize(oscillators=6, inputs=4, max_length=64), 3, 1),  # one MAC, 4 groups per row
    (FixedFormat(), HRUSize(oscillators=2, inputs=8, max_length=64), 2, None),  # 8-product tree
    (SMALL, HRUSize(oscillators=6, inputs=8, max_length=64), 2, 2),  # 4 groups of 2
]


@pytest.mark.parametrize("fmt,size,lanes,macs", CONFIGS)
def test_core_matches_golden(fmt, size, lanes, macs):
    case = random_case(fmt, size, length=12, seed=size.oscillators * 7 + lanes)
    got, want = run_core(fmt, size, lanes, case, macs), golden_expectation(fmt, case)
    assert got["forward"] == want["forward"]
    assert got["echo"] == want["echo"]
    assert any(want["echo"]["acc_a"]) and any(v for row in want["echo"]["acc_b"] for v in row)
    assert got["forward_cycles"] <= 13 * cycles_per_step(size, lanes, echo=False, macs=macs) + 30  # + settling


def test_default_core_reaches_the_oscillator_bound():
    """With the default ``macs`` (N = 8: a whole row of B·u per clock) a step costs the oscillator
    pipeline's bound max(E·R, 16), not the single-MAC budget R·N; measured on a P16/N8/K1 core."""
    size = HRUSize(oscillators=16, inputs=8, max_length=64)
    assert default_macs(8) == 8 and default_macs(12) == 4 and default_macs(3) == 1
    for lanes, fwd, ech in ((1, 16, 32), (4, 16, 16), (2, 16, 16)):
        assert cycles_per_step(size, lanes, echo=False) == oscillator_bound(size, lanes, echo=False) == fwd
        assert cycles_per_step(size, lanes, echo=True) == oscillator_bound(size, lanes, echo=True) == ech
    assert cycles_per_step(size, 1, echo=False, macs=1) == 128  # the single-MAC budget R·N
    assert cycles_per_step(size, 1, echo=True, macs=2) == 64
    length = 5
    case = random_case(FixedFormat(), size, length=length, seed=77)
    got, want = run_core(FixedFormat(), size, 1, case), golden_expectation(FixedFormat(), case)
    assert got["forward"] == want["forward"] and got["echo"] == want["echo"]
    # a command: L steps, its first slot (b(0): R·G = 16 cycles), settling and the handshake
    assert got["forward_cycles"] <= (length + 1) * 16 + 30, got["forward_cycles"]
    assert got["echo_cycles"] <= length * 32 + 2 * 16 + 30, got["echo_cycles"]


@pytest.mark.parametrize("lanes", [1, 3])
def test_echo_with_per_step_nudge_stream(lanes):
    check_per_step_nudge_stream(lanes, seed=21 + lanes)


def check_per_step_nudge_stream(lanes: int, seed: int, make_core=None):
    """An echo fed one nudge vector per step (STREAM) on a P3/N2 core; ``make_core(size)``: the
    core to drive (default: the pipelined one with ``lanes``)."""
    size = HRUSize(oscillators=3, inputs=2, max_length=64)
    case = random_case(SMALL, size, length=9, seed=seed, per_step_nudge=True)
    core = make_core(size) if make_core else None
    got, want = run_core(SMALL, size, lanes, case, core=core), golden_expectation(SMALL, case)
    assert got["forward"] == want["forward"]
    assert got["echo"] == want["echo"]
    constant = golden_expectation(SMALL, {**case, "nudge": case["nudge"][-1]})
    assert want["echo"]["acc_a"] != constant["echo"]["acc_a"]  # the per-step nudges mattered


def test_accumulators_sum_over_a_minibatch_until_clear():
    check_minibatch_sums(lanes=2)


def check_minibatch_sums(lanes: int, make_core=None):
    """Two cases after one CLEAR: the second echo's accumulators hold both sums (wrapped)."""
    size = HRUSize(oscillators=2, inputs=2, max_length=64)
    first = random_case(SMALL, size, length=7, seed=31)
    second = {**random_case(SMALL, size, length=5, seed=32), **{k: first[k] for k in ("A", "B", "delta")}}
    got = run_minibatch(SMALL, size, lanes, [first, second], core=make_core(size) if make_core else None)
    want = [golden_expectation(SMALL, case) for case in (first, second)]
    half = 1 << (SMALL.acc_width - 1)
    wrapped = lambda v: ((v + half) % (2 * half)) - half  # noqa: E731
    assert got[0]["echo"] == want[0]["echo"]
    assert got[1]["forward"] == want[1]["forward"]
    total = {"acc_a": [wrapped(a + b) for a, b in zip(want[0]["echo"]["acc_a"], want[1]["echo"]["acc_a"])],
             "acc_b": [[wrapped(a + b) for a, b in zip(r0, r1)]
                       for r0, r1 in zip(want[0]["echo"]["acc_b"], want[1]["echo"]["acc_b"])]}
    assert {k: got[1]["echo"][k] for k in ("acc_a", "acc_b")} == total
    assert got[1]["echo"]["plus"] == want[1]["echo"]["plus"] and got[1]["echo"]["minus"] == want[1]["echo"]["minus"]


def test_host_writes_while_busy_are_dropped():
    size = HRUSize(oscillators=2, inputs=1, max_length=64)
    core = HRUCore(SMALL, size, 1)
    seen = {}

    async def bench(ctx):
        drv = CoreDriver(core, ctx)
        await drv.write(Region.A, 5, 1)
        ctx.set(core.cmd.payload, {"op": Op.FORWARD, "length": 3, "nudge_stream": 0})
        ctx.set(core.cmd.valid, 1)
        await ctx.tick()
        ctx.set(core.cmd.valid, 0)
        seen["busy"] = ctx.get(core.busy)
        await drv.write(Region.A, 9, 1)  # busy: dropped
        ctx.set(core.u.payload, [1])
        ctx.set(core.u.valid, 1)
        while not ctx.get(core.done):
            await ctx.tick()
        ctx.set(core.u.valid, 0)
        seen["A1"] = await drv.read(Region.A, 1)

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"busy": 1, "A1": 5}


def test_core_counts_forced_overflows_and_saturates():
    check_forced_overflows_saturate(SMALL.replace(counter_width=5), seed=3)


def check_forced_overflows_saturate(fmt, seed: int, core=None):
    """A wild case (most operations wrap) on a core whose counters saturate at 31 (counter_width 5);
    ``core``: a P4/N2 core to use instead of the pipelined one with two lanes."""
    size = HRUSize(oscillators=4, inputs=2, max_length=64)
    case = random_case(fmt, size, length=6, seed=seed, wild=True)
    got, want = run_core(fmt, size, 2, case, core=core), golden_expectation(fmt, case)
    counts = [want["forward"]["overflows"]["forward"], *want["echo"]["overflows"].values()]
    assert min(counts) > 0 and 31 in counts
    assert got["forward"] == want["forward"]
    assert got["echo"] == want["echo"]


def test_zero_nudge_echo_returns_the_initial_state_bit_for_bit():
    size = HRUSize(oscillators=4, inputs=2, max_length=64)
    case = random_case(SMALL, size, length=16, seed=11, zero_nudge=True)
    got = run_core(SMALL, size, 4, case)
    flipped = [((-z + (1 << 15)) % (1 << 16)) - (1 << 15) for z in case["z0"]]
    for echo in ("plus", "minus"):
        assert got["echo"][echo] == {"y": case["y0"], "z": flipped}
    assert got["echo"]["acc_a"] == [0] * 4
    assert got["echo"] == golden_expectation(SMALL, case)["echo"]


@pytest.mark.parametrize("size", [HRUSize(oscillators=2, inputs=1, max_length=64),  # y/z write-back bound
                                  HRUSize(oscillators=8, inputs=1, max_length=64)])  # echo: d's hazard = 16
def test_slot_minimum_is_tight(size, monkeypatch):
    """The hazard minimum of a slot is necessary, not just sufficient: one cycle less breaks the result."""
    import echoboard.hdl.timing

    case = random_case(SMALL, size, length=6, seed=41)
    want = golden_expectation(SMALL, case)
    assert run_core(SMALL, size, 1, case)["echo"] == want["echo"]
    exact = echoboard.hdl.timing.SlotLengths.of

    def one_short(rows, inputs, echo, macs=1, timing=echoboard.hdl.timing.TIMINGS["linear"]):
        lengths = exact(rows, inputs, echo, macs, timing)
        return echoboard.hdl.timing.SlotLengths(mac=lengths.mac, osc=lengths.osc - 1, both=max(lengths.mac, lengths.osc - 1))

    monkeypatch.setattr(echoboard.hdl.timing.SlotLengths, "of", one_short)
    assert run_core(SMALL, size, 1, case)["echo"] != want["echo"]


def test_core_rejects_bad_configurations():
    with pytest.raises(ValueError, match="must divide"):
        HRUCore(SMALL, HRUSize(oscillators=6, inputs=2), lanes=4)
    with pytest.raises(ValueError, match="half_away"):
        HRUCore(SMALL.replace(drift_rounding="floor"), HRUSize(oscillators=2, inputs=2), lanes=1)
    with pytest.raises(ValueError, match="lanes"):
        HRUCore(SMALL, HRUSize(oscillators=2, inputs=2), lanes=0)
    with pytest.raises(ValueError, match="macs must be a positive integer"):
        HRUCore(SMALL, HRUSize(oscillators=2, inputs=4), lanes=1, macs=0)
    with pytest.raises(ValueError, match=r"macs \(3\) must be a power of two that divides .* largest allowed is 2"):
        HRUCore(SMALL, HRUSize(oscillators=2, inputs=6), lanes=1, macs=3)
    with pytest.raises(ValueError, match=r"macs \(8\) must be a power of two that divides the number of inputs \(4\)"):
        HRUCore(SMALL, HRUSize(oscillators=2, inputs=4), lanes=1, macs=8)


def test_slot_lengths_follow_the_mac_groups():
    """R·G MAC cycles; the b hazard (the next slot's OSC reads b) adds to a slot only for tiny R."""
    assert SlotLengths.of(rows=16, inputs=8, echo=False, macs=8) == SlotLengths(mac=16, osc=16, both=16)
    assert SlotLengths.of(rows=16, inputs=8, echo=True, macs=8) == SlotLengths(mac=16, osc=32, both=32)
    assert SlotLengths.of(rows=16, inputs=8, echo=False, macs=1) == SlotLengths(mac=128, osc=16, both=128)
    assert SlotLengths.of(rows=4, inputs=8, echo=True, macs=4) == SlotLengths(mac=8, osc=16, both=16)
    assert SlotLengths.of(rows=8, inputs=1, echo=True, macs=1).osc == 16  # d's hazard R + 8 = the write-back bound


# ---------------------------------------------------------------- HSSM block mode (golden_model.hru_block)

def check_block_mode(fmt, size: HRUSize, lanes: int, case: dict, macs: int | None = None, ready=None) -> dict:
    """Block mode: every step's write-back (forward and both echoes), the y_k and du_j streams,
    kin and the counters equal golden_model.hru_block's (hdl.verilog.golden_expectation with
    block=True); with an always-ready reader each command takes the cycles it takes without
    ``block`` (the streams cost no cycle). Returns the expectation."""
    want = golden_expectation(fmt, case, block=True)
    got = run_core(fmt, size, lanes, case, macs, block=True, ready=ready)
    assert got["forward"] == want["forward"]
    assert got["echo"] == want["echo"]
    assert got["steps"] == want["steps"]
    assert got["y_stream"] == [step["y"] for step in want["steps"]["forward"]]
    if ready is None:
        plain = run_core(fmt, size, lanes, case, macs)
        assert (got["forward_cycles"], got["echo_cycles"]) == (plain["forward_cycles"], plain["echo_cycles"])
    return want


BLOCK_CONFIGS = [CONFIGS[0], CONFIGS[1], CONFIGS[2], CONFIGS[7]]  # 1 row; 3 groups; 3 lanes; 4 groups of 2


@pytest.mark.parametrize("fmt,size,lanes,macs", BLOCK_CONFIGS)
def test_block_mode_matches_golden_at_every_step(fmt, size, lanes, macs):
    case = random_case(fmt, size, length=9, seed=size.oscillators * 11 + lanes, per_step_nudge=True)
    want = check_block_mode(fmt, size, lanes, case, macs)
    assert any(want["echo"]["kin"]) and any(v for du in want["steps"]["du"] for v in du)


def test_block_mode_counts_the_blocks_wraps():
    """A wild case: e, du and kin wrap too, and the gradient counter holds the block's count
    (more than the plain HRU's); the forward and echo counts are the plain ones."""
    size = HRUSize(oscillators=4, inputs=2, max_length=64)
    fmt = SMALL.replace(counter_width=12)
    case = random_case(fmt, size, length=6, seed=3, wild=True)
    want, plain = check_block_mode(fmt, size, 2, case), golden_expectation(fmt, case)
    assert want["echo"]["overflows"]["gradient"] > plain["echo"]["overflows"]["gradient"] > 0
    assert want["forward"] == plain["forward"] and want["echo"]["overflows"]["echo_plus"] > 0


def test_block_mode_streams_survive_back_pressure():
    """A reader that takes a beat one cycle in four: the core waits between steps, nothing is lost."""
    size = HRUSize(oscillators=4, inputs=3, max_length=64)
    case = random_case(SMALL, size, length=8, seed=19)
    rng = random.Random(5)
    check_block_mode(SMALL, size, 2, case, ready=lambda: rng.random() < 0.25)
