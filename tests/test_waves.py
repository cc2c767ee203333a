"""``echoboard verify --waves``: a VCD of the core's and of the simulated board's run, and on a
core-level mismatch a short VCD around the first one; the CLI prints every path.

Small configurations (one traced build each, cached under build/ like every Verilator build).
"""
import json
import re
from pathlib import Path

import pytest

import echoboard.hdl.verilog as verilog
from echoboard.host.cli import main

SMALL = ["-P", "4", "-N", "2", "-K", "2", "--max-length", "64"]


def vcd_header(path: Path) -> tuple[str, set[str]]:
    """(timescale, names of the declared signals) of a VCD; fails unless the header is complete."""
    head, timescale, names = "", None, set()
    with open(path) as f:
        for line in f:
            head += line
            if "$enddefinitions" in line:
                break
        else:
            raise AssertionError(f"{path}: no $enddefinitions")
    timescale = re.search(r"\$timescale\s+(\S+)\s+\$end", head)
    assert timescale, f"{path}: no $timescale"
    names = set(re.findall(r"\$var\s+\S+\s+\d+\s+\S+\s+(\S+)", head))
    return timescale[1], names


def times(path: Path) -> list[int]:
    with open(path) as f:
        return [int(line[1:]) for line in f if line.startswith("#")]


def run_cli(capfd, *argv) -> tuple[int, str]:
    status = main(list(argv))
    return status, capfd.readouterr().out


def test_core_mismatch_writes_the_run_and_a_window_and_prints_both(capfd, monkeypatch):
    real = verilog.golden_expectation

    def corrupted(*args, **kwargs):
        want = real(*args, **kwargs)
        want["forward"]["pos_sum"][1] ^= 2
        return want

    monkeypatch.setattr(verilog, "golden_expectation", corrupted)
    status, out = run_cli(capfd, "verify", "--level", "core", *SMALL, "-L", "20", "--seed", "4", "--waves")
    assert status == 1 and out.startswith("FAIL"), out
    printed = dict(re.findall(r"^(waveform|mismatch window): (.+)$", out, re.M))
    assert printed.keys() == {"waveform", "mismatch window"}, out
    full, window = Path(printed["waveform"]), Path(printed["mismatch window"])
    assert full.name == "dump.vcd" and window.name == "hru_core.mismatch.vcd"
    for path in (full, window):
        timescale, names = vcd_header(path)
        assert timescale == "1ps" and {"clk", "u__payload", "cmd__valid"} <= names, (path, names)
    first = json.loads((window.parent / "hru_core.mismatch.json").read_text())["first_mismatch"]
    assert (first["phase"], first["field"], first["lane"]) == ("forward", "pos_sum", 1)
    half = 256 * first["clock_period_ps"]
    in_window = times(window)
    assert first["sim_time_ps"] - half <= min(in_window) and max(in_window) <= first["sim_time_ps"] + half
    assert max(times(full)) > max(in_window) or min(times(full)) < min(in_window)  # a cut, not a copy
    assert window.stat().st_size < full.stat().st_size


def test_core_pass_json_lists_the_trace(capfd):
    status, out = run_cli(capfd, "verify", "--level", "core", *SMALL, "-L", "20", "--seed", "4", "--waves", "--json")
    report = json.loads(out)
    assert status == 0 and report["mismatches"] == 0
    [trace] = report["waves"]
    assert Path(trace).stat().st_size > 0 and "clk" in vcd_header(Path(trace))[1]


@pytest.mark.slow  # its own traced board build, ~39 s: the default suite stays under 20 min
def test_board_sim_run_is_traced(capfd):
    status, out = run_cli(capfd, "verify", "--level", "board", "-P", "4", "-N", "2", "-K", "1", "-L", "9",
                          "--waves", "--json")
    report = json.loads(out)
    assert status == 0 and report["mismatches"] == 0, report
    [trace] = map(Path, report["waves"])
    timescale, names = vcd_header(trace)
    assert {"clk", "rx__valid", "rx__payload", "tx__valid", "tx__payload"} <= names
    assert timescale == "1ns" and max(times(trace)) >= 10 * report["cycles"]["forward"]  # 10 ns per cycle


def test_waves_need_a_simulation(capfd):
    status = main(["verify", "--level", "board", "--target", "golden", "--waves"])
    assert status == 2
    assert "--waves records a simulation" in capfd.readouterr().err


@pytest.mark.slow  # two core builds, 75 s: the default suite stays under 20 min
def test_tracing_is_a_separate_build_that_plain_runs_do_not_pay_for(tmp_path):
    from echoboard.golden_model.formats import FixedFormat, HRUSize
    from echoboard.sim import board_sim, waves
    from echoboard.sim.board_image import ImageConfig, simulated_board_executable

    config = ImageConfig(HRUSize(4, 2, 64), FixedFormat(), 1)
    plain = simulated_board_executable(config)
    with waves.recording() as traces:
        traced = simulated_board_executable(config)
    assert traced != plain and traces == []  # a build records nothing; a started board does
    with pytest.raises(board_sim.BoardStartError, match="--trace needs an executable built with tracing"):
        board_sim.SimulatedBoard(plain, trace=tmp_path / "t.vcd").start()
    with board_sim.SimulatedBoard(traced, trace=tmp_path / "t.vcd"):
        pass
    assert "clk" in vcd_header(tmp_path / "t.vcd")[1]
