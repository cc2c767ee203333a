"""The nonlinear HRUCore in Amaranth's simulator against golden_model.hru_fixed_nonlinear, with ==.

Forward (y, z, position sum, counter), both echoes, the five accumulators and the gradient
counter; small sizes and short sequences (amaranth.sim), the long runs are under Verilator
(test_hdl_core_nonlinear_verilator.py). The driver is test_hdl_core_pysim's.
"""
import dataclasses

import pytest
from test_hdl_core_pysim import SMALL, check_block_mode, check_forced_overflows_saturate, run_core, run_minibatch

import echoboard.hdl.timing
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
from echoboard.golden_model.tanh_table import TanhSpec
from echoboard.hdl.address_map import AddressMap, Region
from echoboard.hdl.hru_core import HRUCore, lane_class
from echoboard.hdl.regions import NonlinearBlockRegion
from echoboard.hdl.timing import TIMINGS, SlotLengths, cycles_per_step, oscillator_bound
from echoboard.hdl.verilog import golden_expectation, random_case

# 16-bit state, a 128-entry tanh table (T = 10): every product still spans two DSP limbs somewhere
SMALL_NL = NonlinearFormat(base=SMALL, tanh=TanhSpec(addr_frac=4, range_log2=3, out_frac=10), coef_w_frac=8,
                           coef_bias_frac=6, coef_sigma_frac=9, acc_logcosh_shift=6, acc_ty_shift=6)
ACCUMULATORS = ("acc_yy", "acc_t", "acc_tu", "acc_lc", "acc_ty")

CONFIGS = [  # (format, size, lanes, macs: None = the default)
    (SMALL_NL, HRUSize(oscillators=2, inputs=1, max_length=64), 1, None),
    (SMALL_NL, HRUSize(oscillators=4, inputs=3, max_length=64), 2, None),  # macs 1: 3 groups per row
    (NonlinearFormat(), HRUSize(oscillators=3, inputs=2, max_length=64), 3, None),  # the default 2048-entry ROM
    (SMALL_NL, HRUSize(oscillators=8, inputs=4, max_length=64), 1, 2),  # echo: Δt's hazard R + 16 binds
]


def nonzero(values) -> bool:
    return any(v for row in values for v in (row if isinstance(row, list) else [row]))


@pytest.mark.parametrize("fmt,size,lanes,macs", CONFIGS)
def test_nonlinear_core_matches_golden(fmt, size, lanes, macs):
    length = 12
    case = random_case(fmt, size, length=length, seed=size.oscillators * 5 + lanes)
    got, want = run_core(fmt, size, lanes, case, macs), golden_expectation(fmt, case)
    assert got["forward"] == want["forward"]
    assert got["echo"] == want["echo"]
    assert all(nonzero(want["echo"][name]) for name in ACCUMULATORS)
    for phase, echo in (("forward", False), ("echo", True)):  # L steps, first (and last) slot, settling
        per_step = cycles_per_step(size, lanes, echo, macs, hru="nonlinear")
        assert got[f"{phase}_cycles"] <= (length + 2) * per_step + TIMINGS["nonlinear"].settle + 4


def test_nonlinear_echo_with_per_step_nudge_stream():
    size = HRUSize(oscillators=3, inputs=2, max_length=64)
    case = random_case(SMALL_NL, size, length=9, seed=23, per_step_nudge=True)
    got, want = run_core(SMALL_NL, size, 3, case), golden_expectation(SMALL_NL, case)
    assert got["forward"] == want["forward"] and got["echo"] == want["echo"]
    constant = golden_expectation(SMALL_NL, {**case, "nudge": case["nudge"][-1]})
    assert want["echo"]["acc_lc"] != constant["echo"]["acc_lc"]  # the per-step nudges mattered


def test_nonlinear_zero_nudge_echo_returns_the_initial_state_bit_for_bit():
    size = HRUSize(oscillators=4, inputs=2, max_length=64)
    case = random_case(SMALL_NL, size, length=16, seed=12, zero_nudge=True)
    got = run_core(SMALL_NL, size, 2, case)
    half = 1 << (SMALL.state_width - 1)
    flipped = [((-z + half) % (2 * half)) - half for z in case["z0"]]
    for echo in ("plus", "minus"):
        assert got["echo"][echo] == {"y": case["y0"], "z": flipped}
    for name in ACCUMULATORS:  # identical echoes: every difference is zero
        assert not nonzero(got["echo"][name]), name
    assert got["echo"] == golden_expectation(SMALL_NL, case)["echo"]


def test_nonlinear_core_counts_wraps_and_saturates():
    check_forced_overflows_saturate(dataclasses.replace(SMALL_NL, base=SMALL.replace(counter_width=5)), seed=4)


def test_nonlinear_accumulators_sum_over_a_minibatch_until_clear():
    size = HRUSize(oscillators=2, inputs=2, max_length=64)
    first = random_case(SMALL_NL, size, length=7, seed=33)
    params = ("W", "bias", "sigma_c", "alpha", "B", "delta")
    second = {**random_case(SMALL_NL, size, length=5, seed=34), **{k: first[k] for k in params}}
    got = run_minibatch(SMALL_NL, size, 2, [first, second])
    want = [golden_expectation(SMALL_NL, case) for case in (first, second)]
    half = 1 << (SMALL.acc_width - 1)

    def total(a, b):
        if isinstance(a, list):
            return [total(x, y) for x, y in zip(a, b)]
        return ((a + b + half) % (2 * half)) - half

    assert got[0]["echo"] == want[0]["echo"]
    assert got[1]["forward"] == want[1]["forward"]
    assert {k: got[1]["echo"][k] for k in ACCUMULATORS} == {
        k: total(want[0]["echo"][k], want[1]["echo"][k]) for k in ACCUMULATORS}


@pytest.mark.parametrize("size", [HRUSize(oscillators=2, inputs=1, max_length=64),  # y/z write-back (24) binds
                                  HRUSize(oscillators=12, inputs=1, max_length=64)])  # echo: Δt's hazard R + 16
def test_nonlinear_slot_minimum_is_tight(size, monkeypatch):
    """The nonlinear lane's hazard minimum is necessary: one cycle less in the echo slots breaks
    the echo (so a wrong ``TIMINGS["nonlinear"]`` cannot pass the tests above)."""
    case = random_case(SMALL_NL, size, length=6, seed=43)
    want = golden_expectation(SMALL_NL, case)
    lengths = SlotLengths.of(size.oscillators, 1, True, 1, TIMINGS["nonlinear"])
    assert lengths.osc == (24 if size.oscillators == 2 else 28) and lengths.osc > 2 * size.oscillators
    exact = SlotLengths.of

    def one_short(rows, inputs, echo, macs=1, timing=TIMINGS["linear"]):
        lengths = exact(rows, inputs, echo, macs, timing)
        osc = lengths.osc - echo
        return SlotLengths(mac=lengths.mac, osc=osc, both=max(lengths.mac, osc))

    monkeypatch.setattr(echoboard.hdl.timing.SlotLengths, "of", one_short)
    got = run_core(SMALL_NL, size, 1, case)
    assert got["forward"] == want["forward"] and got["echo"] != want["echo"]


def test_nonlinear_cycles_per_step():
    """Write-back at 24 cycles and Δt read back by the next MAC pass: max(E·R, 24, echo R + 16)."""
    size = HRUSize(oscillators=16, inputs=8, max_length=64)
    assert [cycles_per_step(size, k, False, hru="nonlinear") for k in (1, 2, 4)] == [24, 24, 24]
    assert [cycles_per_step(size, k, True, hru="nonlinear") for k in (1, 2, 4)] == [32, 24, 24]
    assert oscillator_bound(HRUSize(oscillators=64, inputs=8), 2, False, hru="nonlinear") == 32  # II = 1
    assert cycles_per_step(HRUSize(oscillators=64, inputs=8), 2, True, hru="nonlinear") == 64


def test_nonlinear_address_map_keeps_the_shared_region_numbers():
    for name in ("B", "DELTA", "NUDGE", "Y0", "Z0", "Y1", "Z1", "POS_SUM", "COUNTERS"):
        assert NonlinearBlockRegion[name] == Region[name]
    for nonlinear_name, linear_name in (("ACC_YY", "ACC_A"), ("ACC_TU", "ACC_B"), ("ALPHA", "A")):  # same roles
        assert NonlinearBlockRegion[nonlinear_name] == Region[linear_name]
    linear, nonlinear = AddressMap(6, 3, 2), AddressMap(6, 3, 2, NonlinearBlockRegion)
    assert nonlinear.addr_width == linear.addr_width + 1  # 20 regions: 5 bits
    # {region[5], lane[1], index[4]}: oscillator 5 = lane 1, row 2; index row·N + column
    assert nonlinear.address(NonlinearBlockRegion.ACC_TU, 5, 2) == (10 << 5) | (1 << 4) | (2 * 3 + 2)
    assert nonlinear.address(NonlinearBlockRegion.ACC_TY, 4) == (17 << 5) | 2
    lane = lane_class(SMALL_NL)
    assert lane.kind == "nonlinear" and lane.regions is NonlinearBlockRegion and set(lane.ACCUMULATORS) == set(ACCUMULATORS)


def test_nonlinear_core_rejects_bad_formats():
    with pytest.raises(TypeError, match="FixedFormat or a NonlinearFormat"):
        HRUCore({"state_width": 16}, HRUSize(oscillators=2, inputs=2), lanes=1)
    with pytest.raises(ValueError, match="half_away"):
        HRUCore(NonlinearFormat(base=FixedFormat(drift_rounding="floor")), HRUSize(oscillators=2, inputs=2), 1)
    with pytest.raises(ValueError, match="must divide"):
        HRUCore(NonlinearFormat(), HRUSize(oscillators=6, inputs=2), lanes=4)


@pytest.mark.parametrize("fmt,size,lanes,macs", [CONFIGS[1], CONFIGS[2], CONFIGS[3]])
def test_nonlinear_block_mode_matches_golden_at_every_step(fmt, size, lanes, macs):
    """HSSM block mode (golden_model.hru_block): every step's write-back, y_k, du_j (g = the GAIN
    words), kin and the counters, at the cycles of the plain core (test_hdl_core_pysim.check_block_mode)."""
    case = random_case(fmt, size, length=8, seed=size.oscillators * 13 + lanes, per_step_nudge=True)
    want = check_block_mode(fmt, size, lanes, case, macs)
    assert any(want["echo"]["kin"]) and any(v for du in want["steps"]["du"] for v in du)


def test_nonlinear_block_mode_counts_the_blocks_wraps():
    size = HRUSize(oscillators=4, inputs=2, max_length=64)
    fmt = dataclasses.replace(SMALL_NL, base=SMALL.replace(counter_width=12))
    case = random_case(fmt, size, length=6, seed=4, wild=True)
    want, plain = check_block_mode(fmt, size, 2, case), golden_expectation(fmt, case)
    assert want["echo"]["overflows"]["gradient"] > plain["echo"]["overflows"]["gradient"] > 0
