"""cocotb testbench of tests/stream_dut.py: the self-test of sim/cocotb_lib.py.

Environment (set by tests/test_sim_infrastructure.py through ``extra_env``):
``FIFO_ITEMS`` number of random payloads; ``FIFO_CORRUPT_STEP`` if set, the expectation of
that step gets a wrong ``lanes[1]``, to prove that a mismatch fails the run.
"""
import os
import random

import cocotb
from cocotb.simtime import get_sim_time

from echoboard.sim.cocotb_lib import CLOCK_PERIOD_NS, PayloadCodec, Scoreboard, StreamDriver, StreamMonitor, start_clock_and_reset
from stream_dut import Sample


@cocotb.test()
async def fifo_random_traffic(dut):
    count = int(os.environ.get("FIFO_ITEMS", "2000"))
    corrupt = int(os.environ.get("FIFO_CORRUPT_STEP", "-1"))
    codec = PayloadCodec.from_shape(Sample)
    rng = random.Random(cocotb.RANDOM_SEED)
    items = [codec.random(rng) for _ in range(count)]

    scoreboard = Scoreboard("fifo")
    for step, item in enumerate(items):
        if step == corrupt:
            item = {**item, "lanes": [item["lanes"][0], item["lanes"][1] ^ 1, item["lanes"][2]]}
        scoreboard.expect(item, phase="pass", step=step)

    await start_clock_and_reset(dut)
    monitor = StreamMonitor(dut, "o", codec, ready_prob=0.6, rng=random.Random(rng.random()),
                            callback=scoreboard.check)
    driver = StreamDriver(dut, "i", codec, idle_prob=0.3, rng=random.Random(rng.random()))
    await driver.send(items)
    await monitor.wait_for(count, timeout_cycles=100)
    monitor.stop()
    summary = scoreboard.finish()
    dut._log.info("scoreboard: %s", summary)


@cocotb.test()
async def fifo_full_rate(dut):
    """Without idle or back-pressure the driver and monitor must move one item per clock."""
    count = 500
    codec = PayloadCodec.from_shape(Sample)
    rng = random.Random(cocotb.RANDOM_SEED)
    items = [codec.random(rng) for _ in range(count)]
    await start_clock_and_reset(dut)
    monitor = StreamMonitor(dut, "o", codec)
    start = get_sim_time("ns")
    await StreamDriver(dut, "i", codec).send(items)
    await monitor.wait_for(count, timeout_cycles=100)
    cycles = (get_sim_time("ns") - start) / CLOCK_PERIOD_NS
    assert monitor.items == items
    assert cycles <= count + 4, f"{cycles} cycles for {count} items"
