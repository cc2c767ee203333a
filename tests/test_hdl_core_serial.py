"""The serial HRU core (hdl.hru_serial, the iCEBreaker's) against golden_model.hru_fixed, with ==.

Amaranth's simulator for small cases (the driver is test_hdl_core_pysim's, the same as the
pipelined core's), cocotb + Verilator for long and wide ones, and the whole serial board image
through the wire protocol on the simulated board.
"""
import pytest
from amaranth.sim import Simulator
from test_hdl_core_pysim import (SMALL, CoreDriver, check_forced_overflows_saturate, check_minibatch_sums,
                                 check_per_step_nudge_stream, run_core)

from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
from echoboard.hdl.cores import check_core
from echoboard.hdl.address_map import Region
from echoboard.hdl.hru_serial import SerialHRUCore, cycles_per_step, limbs
from echoboard.hdl.verilog import golden_expectation, random_case, run_core_case

CONFIGS = [
    (SMALL, HRUSize(oscillators=2, inputs=1, max_length=64)),  # one limb per state operand
    (SMALL, HRUSize(oscillators=4, inputs=3, max_length=64)),
    (FixedFormat(), HRUSize(oscillators=3, inputs=2, max_length=64)),  # 3 state limbs, 2 coefficient limbs
    (FixedFormat(), HRUSize(oscillators=2, inputs=8, max_length=64)),
]


@pytest.mark.parametrize("fmt,size", CONFIGS)
def test_serial_core_matches_golden(fmt, size):
    length = 6
    case = random_case(fmt, size, length=length, seed=size.oscillators * 5 + size.inputs)
    got, want = run_core(fmt, size, 1, case, core=SerialHRUCore(fmt, size)), golden_expectation(fmt, case)
    assert got["forward"] == want["forward"]
    assert got["echo"] == want["echo"]
    assert any(want["echo"]["acc_a"]) and any(v for row in want["echo"]["acc_b"] for v in row)
    # the cycle model is exact: L steps and the command's handshake cycle
    assert got["forward_cycles"] == length * cycles_per_step(fmt, size, echo=False) + 1
    assert got["echo_cycles"] == length * cycles_per_step(fmt, size, echo=True) + 1


def test_serial_echo_with_per_step_nudge_stream():
    check_per_step_nudge_stream(1, seed=5, make_core=lambda size: SerialHRUCore(SMALL, size))


def test_serial_accumulators_sum_over_a_minibatch_until_clear():
    check_minibatch_sums(1, make_core=lambda size: SerialHRUCore(SMALL, size))


def test_serial_core_counts_forced_overflows_and_saturates():
    fmt = SMALL.replace(counter_width=5)
    check_forced_overflows_saturate(fmt, seed=4, core=SerialHRUCore(fmt, HRUSize(4, 2, 64)))


def test_serial_zero_nudge_echo_returns_the_initial_state_bit_for_bit():
    size = HRUSize(oscillators=2, inputs=2, max_length=64)
    case = random_case(FixedFormat(), size, length=12, seed=11, zero_nudge=True)
    got = run_core(FixedFormat(), size, 1, case, core=SerialHRUCore(FixedFormat(), size))
    flipped = [((-z + (1 << 31)) % (1 << 32)) - (1 << 31) for z in case["z0"]]
    for echo in ("plus", "minus"):
        assert got["echo"][echo] == {"y": case["y0"], "z": flipped}
    assert got["echo"]["acc_a"] == [0, 0]
    want = golden_expectation(FixedFormat(), case)
    assert got["forward"] == want["forward"]  # (any deterministic kick retraces: the forward pins it)
    assert got["echo"] == want["echo"]


def test_serial_core_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="linear HRU only"):
        check_core("serial", NonlinearFormat(), HRUSize(2, 2))
    with pytest.raises(ValueError, match="lanes must be 1"):
        SerialHRUCore(FixedFormat(), HRUSize(4, 2), lanes=2)
    with pytest.raises(ValueError, match="half_away"):
        check_core("serial", FixedFormat(drift_rounding="floor"), HRUSize(2, 2))
    with pytest.raises(ValueError, match="unknown core 'fast'"):
        check_core("fast", FixedFormat(), HRUSize(2, 2))
    assert [limbs(w) for w in (2, 16, 17, 31, 32, 46)] == [1, 1, 2, 2, 3, 3]


def test_host_writes_only_parameters_and_state():
    """Coefficients, state and the nudge are writable; the accumulators are not (the protocol's
    READ_ONLY_REGIONS, so the serial core leaves out their write multiplexers)."""
    size = HRUSize(2, 2, 64)
    core = SerialHRUCore(SMALL, size)
    seen = {}

    async def bench(ctx):
        drv = CoreDriver(core, ctx)
        for region, value in ((Region.A, 7), (Region.B, -3), (Region.Z1, 11), (Region.ACC_A, 5), (Region.POS_SUM, 9)):
            await drv.write(region, value, 1, 1 if region == Region.B else 0)
            seen[region.name] = await drv.read(region, 1, 1 if region == Region.B else 0)

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"A": 7, "B": -3, "Z1": 11, "ACC_A": 0, "POS_SUM": 0}


def test_default_serial_core_cost():
    """P16/N8 default format: ~75 clocks per oscillator forward, ~205 per echo pair (the budget
    the iCEBreaker's one multiplier buys; 3 Mbaud moves a 16-byte input sample in ~53 µs)."""
    size = HRUSize(16, 8)
    assert cycles_per_step(FixedFormat(), size, echo=False) <= 1201  # README's numbers
    assert cycles_per_step(FixedFormat(), size, echo=True) <= 3281


def test_serial_core_matches_golden_under_verilator():
    """Long and wild cases (most operations wrap), constant and streamed nudges, random input stalls."""
    fmt, size = FixedFormat(), HRUSize(oscillators=5, inputs=3, max_length=4096)
    cases = [random_case(fmt, size, length, 70 + length) for length in (1, 2, 150)]
    cases += [random_case(fmt, size, 60, 81, per_step_nudge=True), random_case(fmt, size, 30, 82, wild=True)]
    expected = [golden_expectation(fmt, c) for c in cases]
    assert expected[-1]["forward"]["overflows"]["forward"] > 0
    result = run_core_case(fmt, size, 1, cases, expected, run_name="random", idle_prob=0.3, core="serial")
    p, n = size.oscillators, size.inputs
    assert result.scoreboards["hru_core"] == {"compared": len(cases) * (8 * p + p * n + 4), "mismatches": 0,
                                              "first_mismatch": None}


@pytest.mark.parametrize("per_step", [False, True])
def test_serial_board_image_through_the_protocol(per_step):
    """The iCEBreaker's image (link + sequencer + serial core) as a simulated board: every integer
    and every reply equal to the golden board's, constant nudge or echo STREAM mode."""
    from echoboard.sim.board_image import ImageConfig, verify_board

    config = ImageConfig(HRUSize(4, 2, 65536), FixedFormat(), 1, core="serial")
    result = verify_board(config, seed=3 + per_step, length=30, per_step_nudge=per_step)
    assert result["mismatches"] == 0 and result["compared"] > 50, result
