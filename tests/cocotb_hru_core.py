"""cocotb testbench of hdl.hru_core.HRUCore (Verilated): random cases against golden_model.hru_fixed
(linear core) or golden_model.hru_fixed_nonlinear (nonlinear core: the format in the case file says which).

Input: ``HRU_CASES`` names a JSON file written by hdl.verilog.run_core_case: the format, size and
lanes of the core, the input-stream idle probability, the cases (parameters, initial state, nudge,
inputs) and the golden model's expectations (computed outside the simulator: no JAX in here).

Per case: load the stores over the host port, CLEAR, FORWARD u_0..u_{L-1}, read back and compare,
ECHO u_{L-1}..u_0, read back and compare; every integer with == on the sim.cocotb_lib Scoreboard
(first mismatch reported as phase, step = L, lane = oscillator index, field). The run directory
also gets ``hru_core.cycles.json``: per case the cycles from command accepted to ``done``, and
``hru_core.speed.json``: the clock cycles simulated by this test and its wall time (from reset to
the last comparison: the build and the simulator's start-up excluded), for the speed benchmark.
"""
import json
import os
import random
import time
from pathlib import Path

import cocotb
from cocotb.simtime import get_sim_time

from golden_model.formats import HRUSize
from hdl.cores import make_core
from hdl.address_map import PHASES, Region
from hdl.hru_core import HRUCore, Op
from hdl.verilog import format_from_json
from sim.cocotb_lib import CLOCK_PERIOD_NS, PayloadCodec, Scoreboard, StreamDriver, start_clock_and_reset


class CoreHost:
    """The board image's view of the core: host-port reads/writes and commands with their inputs."""

    def __init__(self, dut, core: HRUCore, rng: random.Random, idle_prob: float):
        self.dut, self.core, self.amap = dut, core, core.address_map
        self._width = core.data_width
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
        await self._cmd.send([{"op": op.value, "length": len(inputs), "nudge_stream": int(nudges is not None)}])
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

    async def run_case(self, case: dict) -> tuple[dict, dict]:
        amap, core = self.amap, self.core
        per_step = isinstance(case["nudge"][0], list)
        stores = (*((r, k) for k, r in core.parameter_regions.items()), (Region.Y0, "y0"), (Region.Z0, "z0"),
                  *(() if per_step else ((Region.NUDGE, "nudge"),)))
        await self.write([word for r, k in stores for word in self._store_words(r, case[k])])
        cycles = {"clear": await self.command(Op.CLEAR)}
        cycles["forward"] = await self.command(Op.FORWARD, case["u"])
        counters = [amap.address(Region.COUNTERS, k) for k in range(len(PHASES))]
        got = {"forward": {
            "y": await self.read_vector(Region.Y0), "z": await self.read_vector(Region.Z0),
            "pos_sum": await self.read_vector(Region.POS_SUM),
            "overflows": {"forward": (await self.read(counters[:1], signed=False))[0]}}}
        cycles["echo"] = await self.command(Op.ECHO, case["u"][::-1], case["nudge"] if per_step else None)
        got["echo"] = {
            "plus": {"y": await self.read_vector(Region.Y0), "z": await self.read_vector(Region.Z0)},
            "minus": {"y": await self.read_vector(Region.Y1), "z": await self.read_vector(Region.Z1)},
            **{name: await self.read_store(region) for name, region in core.accumulator_regions.items()},
            "overflows": dict(zip(PHASES[1:], await self.read(counters[1:], signed=False)))}
        return got, cycles


@cocotb.test()
async def hru_core_cases(dut):
    spec = json.loads(Path(os.environ["HRU_CASES"]).read_text())
    core = make_core(spec["core"], format_from_json(spec["format"]), HRUSize(*spec["size"]), spec["lanes"])
    wall, start = time.perf_counter(), get_sim_time("ns")
    await start_clock_and_reset(dut)
    host = CoreHost(dut, core, random.Random(cocotb.RANDOM_SEED), spec["idle_prob"])
    board = Scoreboard("hru_core")
    all_cycles = []
    for index, (case, want) in enumerate(zip(spec["cases"], spec["expected"])):
        got, cycles = await host.run_case(case)
        length = len(case["u"])
        for phase in ("forward", "echo"):
            if not board.compare(want[phase], got[phase], phase=phase, step=length):
                dut._log.error("case %d: %s differs", index, phase)
        all_cycles.append(cycles)
    Path("hru_core.cycles.json").write_text(json.dumps(all_cycles))
    wall = time.perf_counter() - wall
    cycles = round((get_sim_time("ns") - start) / CLOCK_PERIOD_NS)
    Path("hru_core.speed.json").write_text(json.dumps({"cycles": cycles, "wall_s": wall,
                                                       "cycles_per_s": cycles / wall if wall > 0 else None}))
    dut._log.info("scoreboard %s, cycles %s", board.finish(), all_cycles)
