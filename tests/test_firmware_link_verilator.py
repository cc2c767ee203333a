"""The whole link under Verilator with cocotb (tests/cocotb_link.py): random traffic at the UART
pins, random back-pressure on the sequencer side, replies checked against PyPI cobs + zlib,
counters checked. One seed in the default suite, two more under ``-m slow``."""
from pathlib import Path

import pytest

from echoboard.firmware.link import Link
from echoboard.sim.verilator import amaranth_to_verilog, build_and_test

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "build" / "sim"
# -O0 halves the compile time of the 1 KiB buffers' initialisers (the run is short either way).
BUILD_ARGS = ["-CFLAGS", "-O0"]


# 4 clocks per bit (iCEBreaker's 12 MHz at 3 Mbaud): a quarter of the cycles of the 48 MHz
# default, and the tightest divisor the receiver supports. pysim covers divisors 4, 5 and 16.
DIVISOR = 4


@pytest.fixture(scope="module")
def link_verilog():
    return amaranth_to_verilog(Link(DIVISOR), "link", BUILD / "link.v")


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_link_random_traffic_under_verilator(link_verilog, seed):
    frames = 40
    result = build_and_test(link_verilog, "link", HERE / "cocotb_link.py", BUILD, seed=seed, build_args=BUILD_ARGS,
                            run_name=f"link-{seed}", timeout_s=300,
                            extra_env={"LINK_FRAMES": str(frames), "LINK_DIVISOR": str(DIVISOR)})
    assert result.scoreboards["link"]["mismatches"] == 0 and result.scoreboards["link"]["compared"] > frames
