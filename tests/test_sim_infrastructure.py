"""Self-test of sim/: codec against Amaranth's own layouts, the runner, and a scoreboard that can fail."""
import json
import random
import time
from pathlib import Path

import pytest
from amaranth import signed, unsigned
from amaranth.lib import data
from hypothesis import given, settings
from hypothesis import strategies as st

from echoboard.sim.cocotb_lib import PayloadCodec, Scoreboard
from echoboard.sim.verilator import (MISMATCH_SUFFIX, MISMATCH_VCD_SUFFIX, SimulationFailed, amaranth_to_verilog, build,
                           build_and_test, cut_vcd, read_results)
from stream_dut import Sample, StreamFifo

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "build" / "sim"
TESTBENCH = HERE / "cocotb_stream_fifo.py"
ITEMS = 2000


@pytest.fixture(scope="module")
def fifo_verilog():
    return amaranth_to_verilog(StreamFifo(depth=4), "stream_fifo", BUILD / "stream_fifo.v")


# ---------------------------------------------------------------- codec (no simulator)

def _sample_values():
    def ints(w):
        return st.integers(-(1 << (w - 1)), (1 << (w - 1)) - 1)
    return st.fixed_dictionaries({"a": ints(12), "b": st.integers(0, 127), "flag": st.integers(0, 1),
                                  "lanes": st.lists(ints(5), min_size=3, max_size=3), "c": ints(17)})


@settings(max_examples=300, deadline=None)
@given(_sample_values())
def test_codec_matches_amaranth_layout(value):
    codec = PayloadCodec.from_shape(Sample)
    word = codec.pack(value)
    assert word == Sample.as_shape().const(value).as_value().value  # Amaranth is the oracle
    assert codec.unpack(word) == value


@given(st.lists(st.tuples(st.integers(1, 40), st.booleans()), min_size=1, max_size=6), st.randoms())
def test_codec_from_fields_round_trip(spec, rng):
    codec = PayloadCodec.from_fields([(f"f{i}", w, s) for i, (w, s) in enumerate(spec)])
    value = codec.random(rng)
    assert codec.width == sum(w for w, _ in spec)
    assert codec.unpack(codec.pack(value)) == value
    assert codec.pack(value) == data.StructLayout(
        {f"f{i}": (signed if s else unsigned)(w) for i, (w, s) in enumerate(spec)}).const(value).as_value().value


def test_codec_rejects_values_that_do_not_fit():
    codec = PayloadCodec.from_fields([("x", 4, True)])
    with pytest.raises(ValueError):
        codec.pack({"x": 8})
    with pytest.raises(ValueError):
        codec.pack({"x": 1, "y": 0})


# ---------------------------------------------------------------- scoreboard and VCD cut (no simulator)

def test_scoreboard_reports_lane_and_refuses_floats(tmp_path, monkeypatch):
    monkeypatch.setattr("echoboard.sim.cocotb_lib.get_sim_time", lambda unit: 1234.0)
    board = Scoreboard("unit", out_dir=tmp_path)
    board.expect({"y": [1, 2, 3], "n": 4}, phase="forward", step=7)
    board.check({"y": [1, 5, 3], "n": 4})
    assert board.summary["compared"] == 4 and board.summary["mismatches"] == 1
    assert board.first_mismatch | {"sim_time_ps": 0} == {
        "phase": "forward", "step": 7, "lane": 1, "field": "y", "expected": 2, "actual": 5,
        "sim_time_ps": 0, "clock_period_ps": 10_000}
    with pytest.raises(AssertionError, match="1 mismatches"):
        board.finish()
    with pytest.raises(TypeError):
        board.compare(1.0, 1, phase="p", step=0)


@pytest.mark.parametrize("expected, actual, field, lane, exp, act", [
    ({"y": [1, 2]}, {"y": [1, 2, 3]}, "y", 2, None, 3),  # a longer list: the extra value
    ({"y": [1, 2, 3]}, {"y": [1, 2]}, "y", 2, 3, None),  # a shorter one: the missing value
    ({"y": 1}, {"y": 1, "z": 0}, "z", None, None, 0),  # a field on one side only
    ([], [[]], "<structure>", None, [], [[]]),  # no values on either side, another shape
])
def test_scoreboard_counts_values_on_one_side_only(tmp_path, monkeypatch, expected, actual, field, lane, exp, act):
    """A comparison that differs is never a pass without a mismatch: values present on one side
    only (a length difference, an extra field) count, and so does a differing empty shape."""
    monkeypatch.setattr("echoboard.sim.cocotb_lib.get_sim_time", lambda unit: 0.0)
    board = Scoreboard("unit", out_dir=tmp_path)
    assert board.compare(expected, actual, phase="echo", step=3) is False
    assert board.mismatches == 1
    assert {k: board.first_mismatch[k] for k in ("phase", "step", "field", "lane", "expected", "actual")} == {
        "phase": "echo", "step": 3, "field": field, "lane": lane, "expected": exp, "actual": act}
    assert json.loads((tmp_path / f"unit{MISMATCH_SUFFIX}").read_text())["first_mismatch"] == board.first_mismatch
    with pytest.raises(AssertionError, match="1 mismatches"):
        board.finish()
    assert board.compare(actual, actual, phase="echo", step=4) is True and board.mismatches == 1


def test_cut_vcd_keeps_window_with_initial_values(tmp_path):
    src = tmp_path / "full.vcd"
    src.write_text("$timescale 1ps $end\n$var wire 1 ! clk $end\n$var wire 4 \" x $end\n$enddefinitions $end\n"
                   "#0\n$dumpvars\n0!\nb0000 \"\n$end\n#5000\n1!\n#10000\n0!\nb0011 \"\n#15000\n1!\n#20000\n0!\n")
    dst = tmp_path / "cut.vcd"
    cut_vcd(src, dst, 12e-9, 16e-9)
    body = dst.read_text().split("$enddefinitions $end\n")[1]
    assert body == "#15000\n$dumpvars\n0!\nb0011 \"\n$end\n1!\n"


# ---------------------------------------------------------------- Verilator runs

def test_unchanged_design_is_not_rebuilt_and_keeps_no_precompiled_header(fifo_verilog):
    """A cache hit takes no build; a finished build keeps no precompiled headers (~74 MB each, two
    per build), and a cache hit removes one an older version left."""
    first = build(fifo_verilog, "stream_fifo", BUILD)
    assert (first / "stream_fifo").is_file() and not list(first.glob("*.gch"))
    (first / "Vtop__pch.h.fast.gch").write_bytes(b"left by an older version")
    start = time.monotonic()
    assert build(fifo_verilog, "stream_fifo", BUILD) == first
    assert time.monotonic() - start < 1.0
    assert not list(first.glob("*.gch"))
    assert build(fifo_verilog, "stream_fifo", BUILD, waves=True) != first  # traced build is another design


def test_fifo_random_traffic_passes(fifo_verilog):
    result = build_and_test(fifo_verilog, "stream_fifo", TESTBENCH, BUILD, extra_env={"FIFO_ITEMS": str(ITEMS)})
    assert result.passed and result.counts.tests == 2
    assert result.scoreboards["fifo"] == {"compared": ITEMS * 7, "mismatches": 0, "first_mismatch": None}


def test_corrupted_expectation_fails_with_mismatch_file_and_vcd_window(fifo_verilog):
    step = random.Random(3).randrange(100, ITEMS)
    with pytest.raises(SimulationFailed) as failure:
        build_and_test(fifo_verilog, "stream_fifo", TESTBENCH, BUILD, testcase="fifo_random_traffic",
                       run_name="corrupted", waves=True, vcd_window_cycles=20,
                       extra_env={"FIFO_ITEMS": str(ITEMS), "FIFO_CORRUPT_STEP": str(step)})
    result = failure.value.result
    assert read_results(result.results_xml).failed == 1
    assert "scoreboard fifo: 1 mismatches" in str(failure.value)
    report = json.loads((result.test_dir / ("fifo" + MISMATCH_SUFFIX)).read_text())
    first = report["first_mismatch"]
    assert (first["phase"], first["step"], first["lane"], first["field"]) == ("pass", step, 1, "lanes")
    assert first["expected"] == first["actual"] ^ 1
    assert report["expected"]["lanes"][1] == report["actual"]["lanes"][1] ^ 1
    assert result.scoreboards["fifo"]["mismatches"] == 1
    window = (result.test_dir / ("fifo" + MISMATCH_VCD_SUFFIX)).read_text()
    times = [int(line[1:]) for line in window.splitlines() if line.startswith("#")]
    assert min(times) >= first["sim_time_ps"] - 20 * 10_000 and max(times) <= first["sim_time_ps"] + 20 * 10_000
    assert len(window) < result.waves.stat().st_size / 10


def test_wall_clock_timeout_is_a_clear_failure(fifo_verilog):
    with pytest.raises(SimulationFailed, match="wall-clock timeout"):
        build_and_test(fifo_verilog, "stream_fifo", TESTBENCH, BUILD, testcase="fifo_random_traffic",
                       run_name="timeout", timeout_s=2, extra_env={"FIFO_ITEMS": str(10**7)})
