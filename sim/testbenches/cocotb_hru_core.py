"""cocotb testbench of hdl.hru_core.HRUCore (Verilated): random cases against golden_model.hru_fixed
(linear core) or golden_model.hru_fixed_nonlinear (nonlinear core: the format in the case file says which).

Input: ``HRU_CASES`` names a JSON file written by hdl.verilog.run_core_case: the format, size and
lanes of the core, the input-stream idle probability, the cases (parameters, initial state, nudge,
inputs) and the golden model's expectations (computed outside the simulator: no JAX in here).

Per case: load the stores over the host port, CLEAR, FORWARD u_0..u_{L-1}, read back and compare,
ECHO u_{L-1}..u_0, read back and compare; every integer with == on the sim.cocotb_lib Scoreboard
(first mismatch reported as phase, step = L, lane = oscillator index, field).

Every step, when the expectations carry "steps" (hdl.verilog.golden_expectation(steps=True)):
monitors on the core's ``trace`` (the write-back of every item: the state after every forward
step and both echoes' after every echo step, z before the nudge) and, in HSSM block mode
(``block`` in the case file), on its ``y`` and ``du`` streams compare each step as it completes
(phase "forward" / "echo", step k = 1..L: the k-th step of the pass, echo step k consuming
u_{L−k}; fields y, z / plus.y …, y_stream, du), so the first mismatch names the step where the
datapath diverged and its simulation time. A step that never comes, a partial one or an extra
one counts its values as mismatches. The run directory
also gets ``hru_core.cycles.json``: per case the cycles from command accepted to ``done``, and
``hru_core.speed.json``: the clock cycles simulated by this test and its wall time (from reset to
the last comparison: the build and the simulator's start-up excluded), for the speed benchmark.
"""
import json
import os
import random
import time
from pathlib import Path

from collections import deque

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly

from echoboard.golden_model.formats import HRUSize
from echoboard.hdl.cores import make_core
from echoboard.hdl.address_map import PHASES, Region
from echoboard.hdl.hru_core import HRUCore, Op
from echoboard.hdl.verilog import StepAssembler, format_from_json
from echoboard.sim.cocotb_lib import (CLOCK_PERIOD_NS, PayloadCodec, Scoreboard, StreamDriver, StreamMonitor,
                            start_clock_and_reset)

#: cycles a pass's last stream beats may trail its ``done`` (the y / du FIFOs and their reader)
DRAIN_CYCLES = 200


class StepChecker:
    """One pass's per-step outputs against the golden steps, each compared as it completes.

    Items (from a monitor's callback) go through hdl.verilog.StepAssembler (``kind``); each
    completed step is compared on the scoreboard as ``{field: step}`` (or the step's own dict when
    ``field`` is None) with its 1-based step number.
    """

    def __init__(self, board: Scoreboard, phase: str, oscillators: int, lanes: int, kind: str, field=None):
        self._board, self._phase, self._field = board, phase, field
        self._shape = (oscillators, lanes, kind)
        self._want: deque = deque()
        self._assembler, self._step = None, 0

    def start(self, expected_steps) -> None:
        self._want, self._step = deque(expected_steps), 0
        self._assembler = StepAssembler(*self._shape)

    def __call__(self, item) -> None:
        if self._assembler is not None and (step := self._assembler.feed(item)) is not None:
            self._check(step)

    def _check(self, got) -> None:
        self._step += 1
        want = self._want.popleft() if self._want else None
        wrap = (lambda v: v) if self._field is None else (lambda v: {self._field: v})  # noqa: E731
        self._board.compare(wrap(want) if want is not None else {}, wrap(got) if got is not None else {},
                            phase=self._phase, step=self._step)

    def finish(self) -> None:
        """The pass is over: a partial step and the steps that never came are mismatches."""
        if self._assembler is not None and self._assembler.pending:
            self._check(self._assembler.pending)
        while self._want:
            self._check(None)
        self._assembler = None


class TraceMonitor:
    """Samples the core's ``trace`` tap (valid + payload, no ready) every cycle; calls
    ``forward`` or ``echo`` with each write-back item by its echo flag."""

    def __init__(self, dut, core: HRUCore, forward, echo):
        self._dut, self._codec = dut, PayloadCodec.from_shape(core.trace.payload.shape())
        self._targets = (forward, echo)
        self._task = cocotb.start_soon(self._run())

    async def _run(self) -> None:
        dut, readonly, unpack, targets = self._dut, ReadOnly(), self._codec.unpack, self._targets
        valid, payload = dut.trace__valid, dut.trace__payload
        while True:
            await dut.clk.falling_edge
            await readonly
            if valid.value:
                item = unpack(payload.value.to_unsigned())
                targets[item["echo"]](item)


class CoreHost:
    """The board image's view of the core: host-port reads/writes and commands with their inputs."""

    def __init__(self, dut, core: HRUCore, rng: random.Random, idle_prob: float, board: Scoreboard,
                 steps: bool = False, block: bool = False):
        """``steps``: check every step (the trace, and the streams when ``block``: HSSM block mode)."""
        self.dut, self.core, self.amap, self.board = dut, core, core.address_map, board
        self._width = core.data_width
        self._block = block
        self._has_block = "block" in dict(iter(core.command_layout))  # the serial core has no block mode
        p, lanes = core.size.oscillators, core.lanes
        self._checkers, self._monitors, self._beats = {}, {}, {}
        if steps:
            self._checkers = {kind: StepChecker(board, kind, p, lanes, kind) for kind in ("forward", "echo")}
            TraceMonitor(dut, core, self._checkers["forward"], self._checkers["echo"])
        for name, phase in (("y", "forward"), ("du", "echo")) if block else ():  # read even when unchecked
            if steps:
                self._checkers[name] = StepChecker(board, phase, p, lanes, name, field=f"{name}_stream")
            self._monitors[name] = StreamMonitor(dut, name, PayloadCodec.from_shape(getattr(core, name).payload.shape()),
                                                 callback=self._checkers.get(name))
        self._cmd = StreamDriver(dut, "cmd", PayloadCodec.from_shape(core.command_layout),
                                 rng=random.Random(rng.random()))
        self._u = StreamDriver(dut, "u", PayloadCodec.from_shape(core.u.payload.shape()),
                               idle_prob=idle_prob, rng=random.Random(rng.random()))
        self._nudge = StreamDriver(dut, "nudge", PayloadCodec.from_shape(core.nudge.payload.shape()),
                                   idle_prob=idle_prob, rng=random.Random(rng.random()))
        dut.bus__w_en.value = 0

    async def write(self, words) -> None:
        """``words``: iterable of (address, value); one write per clock."""
        dut, mask = self.dut, (1 << self._width) - 1
        for addr, value in words:
            await dut.clk.falling_edge
            dut.bus__addr.value = addr
            dut.bus__w_data.value = value & mask
            dut.bus__w_en.value = 1
        await dut.clk.falling_edge
        dut.bus__w_en.value = 0

    async def read(self, addrs, signed=True) -> list[int]:
        """One read per clock, pipelined: the data of the address set at one falling edge is on
        ``r_data`` at the next (sign-extended from the host data width unless ``signed`` is False)."""
        dut, out, half = self.dut, [], 1 << (self._width - 1)
        for k in range(len(addrs) + 1):
            await dut.clk.falling_edge
            if k:
                raw = dut.bus__r_data.value.to_unsigned()
                out.append(raw - 2 * half if signed and raw >= half else raw)
            if k < len(addrs):
                dut.bus__addr.value = addrs[k]
        return out

    async def read_vector(self, region) -> list[int]:
        return await self.read([self.amap.address(region, i) for i in range(self.core.size.oscillators)])

    async def read_store(self, region) -> list:
        """A per-oscillator vector, or a P×N matrix as P rows."""
        if not self.amap.is_matrix(region):
            return await self.read_vector(region)
        p, n = self.core.size.oscillators, self.core.size.inputs
        flat = await self.read([self.amap.address(region, i, j) for i in range(p) for j in range(n)])
        return [flat[i * n:(i + 1) * n] for i in range(p)]

    def _store_words(self, region, values):
        if not self.amap.is_matrix(region):
            return [(self.amap.address(region, i), v) for i, v in enumerate(values)]
        return [(self.amap.address(region, i, j), v) for i, row in enumerate(values) for j, v in enumerate(row)]

    async def command(self, op: Op, inputs=(), nudges=None) -> int:
        """Run one command, streaming ``inputs`` and, for an echo with per-step nudges (``nudges``:
        (L, P), golden order), their vectors in reverse, R beats of one row per lane each.
        Returns the cycles from acceptance to ``done``."""
        done = cocotb.start_soon(self._done())
        await self._cmd.send([{"op": op.value, "length": len(inputs), "nudge_stream": int(nudges is not None),
                               **({"block": int(self._block)} if self._has_block else {})}])
        start = get_sim_time("ns") - CLOCK_PERIOD_NS / 2  # send returns at the falling edge after the transfer
        senders = [cocotb.start_soon(self._u.send(inputs))]
        if nudges is not None:
            lanes, rows = self.core.lanes, self.amap.rows
            senders.append(cocotb.start_soon(self._nudge.send(
                [[vector[r * lanes + k] for k in range(lanes)] for vector in nudges[::-1] for r in range(rows)])))
        for sender in senders:
            await sender
        await done
        return round((get_sim_time("ns") - start) / CLOCK_PERIOD_NS)

    async def _done(self) -> None:
        await self.dut.done.rising_edge

    async def _pass(self, op: Op, inputs, nudges, checked: dict) -> int:
        """One FORWARD / ECHO with its per-step checkers (``checked``: checker -> golden steps):
        started before the command, finished once the streams' last beats are in or late."""
        for name, expected in checked.items():
            self._checkers[name].start(expected)
        cycles = await self.command(op, inputs, nudges)
        beats = {"y": len(inputs) * self.amap.rows, "du": len(inputs)}
        for name in checked:
            if name in self._monitors:
                self._beats[name] = self._beats.get(name, 0) + beats[name]
                try:
                    await self._monitors[name].wait_for(self._beats[name], timeout_cycles=DRAIN_CYCLES)
                except AssertionError:
                    pass  # the checker's finish counts the missing values
            self._checkers[name].finish()
        return cycles

    async def run_case(self, case: dict, want: dict) -> list:
        """Load, CLEAR, FORWARD, compare, ECHO, compare (per step where checked); the cycles."""
        amap, core, board = self.amap, self.core, self.board
        length, per_step = len(case["u"]), isinstance(case["nudge"][0], list)
        parameters = {**core.parameter_regions, **(getattr(core, "block_parameter_regions", {}) if self._block else {})}
        stores = (*((r, k) for k, r in parameters.items()), (Region.Y0, "y0"), (Region.Z0, "z0"),
                  *(() if per_step else ((Region.NUDGE, "nudge"),)))
        await self.write([word for r, k in stores for word in self._store_words(r, case[k])])
        cycles = {"clear": await self.command(Op.CLEAR)}
        steps = want.get("steps") if self._checkers else None
        checked = {} if steps is None else {"forward": steps["forward"]}
        if steps is not None and self._block:
            checked["y"] = [step["y"] for step in steps["forward"]]
        cycles["forward"] = await self._pass(Op.FORWARD, case["u"], None, checked)
        counters = [amap.address(Region.COUNTERS, k) for k in range(len(PHASES))]
        got = {
            "y": await self.read_vector(Region.Y0), "z": await self.read_vector(Region.Z0),
            "pos_sum": await self.read_vector(Region.POS_SUM),
            "overflows": {"forward": (await self.read(counters[:1], signed=False))[0]}}
        board.compare(want["forward"], got, phase="forward", step=length)
        checked = {} if steps is None else {"echo": steps["echo"]}
        if steps is not None and self._block:
            checked["du"] = steps["du"]
        cycles["echo"] = await self._pass(Op.ECHO, case["u"][::-1], case["nudge"] if per_step else None, checked)
        accumulators = {**core.accumulator_regions,
                        **(getattr(core, "block_accumulator_regions", {}) if self._block else {})}
        got = {
            "plus": {"y": await self.read_vector(Region.Y0), "z": await self.read_vector(Region.Z0)},
            "minus": {"y": await self.read_vector(Region.Y1), "z": await self.read_vector(Region.Z1)},
            **{name: await self.read_store(region) for name, region in accumulators.items()},
            "overflows": dict(zip(PHASES[1:], await self.read(counters[1:], signed=False)))}
        board.compare(want["echo"], got, phase="echo", step=length)
        return cycles


@cocotb.test()
async def hru_core_cases(dut):
    spec = json.loads(Path(os.environ["HRU_CASES"]).read_text())
    core = make_core(spec["core"], format_from_json(spec["format"]), HRUSize(*spec["size"]), spec["lanes"])
    wall, start = time.perf_counter(), get_sim_time("ns")
    await start_clock_and_reset(dut)
    board = Scoreboard("hru_core")
    host = CoreHost(dut, core, random.Random(cocotb.RANDOM_SEED), spec["idle_prob"], board,
                    steps=any("steps" in want for want in spec["expected"]), block=spec.get("block", False))
    all_cycles = []
    for index, (case, want) in enumerate(zip(spec["cases"], spec["expected"])):
        before = board.mismatches
        all_cycles.append(await host.run_case(case, want))
        if board.mismatches != before:
            dut._log.error("case %d differs", index)
    Path("hru_core.cycles.json").write_text(json.dumps(all_cycles))
    wall = time.perf_counter() - wall
    cycles = round((get_sim_time("ns") - start) / CLOCK_PERIOD_NS)
    Path("hru_core.speed.json").write_text(json.dumps({"cycles": cycles, "wall_s": wall,
                                                       "cycles_per_s": cycles / wall if wall > 0 else None}))
    dut._log.info("scoreboard %s, cycles %s", board.finish(), all_cycles)
