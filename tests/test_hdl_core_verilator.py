"""HRUCore under cocotb + Verilator against golden_model.hru_fixed: every field compared with ==.

Three size/format configurations (one Verilator build each, cached by echoboard.sim.verilator), random
parameters, inputs and nudges (constant, and per step through the nudge stream), random idle on
the input streams; a 10,000-step ε = 0 echo that must return the initial state bit for bit; a
corrupted expectation that must fail; throughput; the ``echoboard verify`` command. HSSM block
mode (golden_model.hru_block) with every step checked: the trace of every write-back, the y_k and
du_j streams, kin; corrupted per-step expectations name their step.
"""
import json
from pathlib import Path

import pytest

from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.hdl.timing import cycles_per_step, oscillator_bound
from echoboard.hdl.verilog import golden_expectation, random_case, run_core_case
from echoboard.sim.verilator import MISMATCH_SUFFIX, SimulationFailed

SMALL = FixedFormat(state_width=16, state_frac=8, input_width=8, input_frac=5, coef_width=10,
                    coef_a_frac=6, coef_b_frac=7, delta_frac=8, acc_width=24, acc_a_shift=4,
                    acc_b_shift=2, counter_width=12)
WIDE = FixedFormat(state_width=32, state_frac=16, input_width=24, input_frac=12, coef_width=25,
                   coef_a_frac=20, coef_b_frac=18, delta_frac=22, acc_width=48, acc_a_shift=8,
                   acc_b_shift=3, counter_width=20)

CONFIGS = {  # name: (format, size, lanes)
    "small": (SMALL, HRUSize(oscillators=4, inputs=3, max_length=16384), 2),
    "default": (FixedFormat(), HRUSize(oscillators=16, inputs=4, max_length=4096), 2),
    "wide": (WIDE, HRUSize(oscillators=5, inputs=1, max_length=1024), 1),
}


def _cases(fmt, size, seed, lengths=(1, 2, 37, 120)):
    cases = [random_case(fmt, size, length, seed + k) for k, length in enumerate(lengths)]
    cases += [random_case(fmt, size, length, seed + 50 + length, per_step_nudge=True) for length in (1, 60)]
    cases.append(random_case(fmt, size, 40, seed + 99, wild=True))  # most operations overflow
    return cases


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if name != "default" else [])
                                  for name in CONFIGS])  # small 33 s, wide 30 s: with make test-slow
def test_core_matches_golden_under_verilator(name):
    fmt, size, lanes = CONFIGS[name]
    cases = _cases(fmt, size, seed=len(name))
    expected = [golden_expectation(fmt, c) for c in cases]
    assert expected[-1]["forward"]["overflows"]["forward"] > 0
    result = run_core_case(fmt, size, lanes, cases, expected, run_name="random", idle_prob=0.3)
    summary = result.scoreboards["hru_core"]
    p, n = size.oscillators, size.inputs
    assert summary == {"compared": len(cases) * (8 * p + p * n + 4), "mismatches": 0, "first_mismatch": None}


def block_compared(size: HRUSize, lengths, accumulator_words: int) -> int:
    """Integers a block-mode run with every step checked compares, per case of L steps: the
    forward trace (y, z) and y stream, L·3P; the echo trace (both echoes' y, z), L·4P, and du,
    L·N; after each pass y, z, pos_sum and its counter, both echoes' y, z, the HRU's
    ``accumulator_words``, kin and 3 counters."""
    p, n = size.oscillators, size.inputs
    return sum(length * (7 * p + n) + 3 * p + 1 + 4 * p + accumulator_words + p + 3 for length in lengths)


def block_cases(fmt, size, seed: int) -> list[dict]:
    """A constant-nudge case, a per-step-nudge one and a wild one (most operations wrap)."""
    return [random_case(fmt, size, 30, seed), random_case(fmt, size, 45, seed + 1, per_step_nudge=True),
            random_case(fmt, size, 20, seed + 2, wild=True)]


def check_block_mode(fmt, size: HRUSize, lanes: int, seed: int, accumulator_words: int) -> None:
    """block_cases under Verilator in block mode with random idle on the input streams: 0 mismatches
    over every integer; the wild case's block wraps (e, du, kin) raise the gradient count over the
    plain HRU's. ``accumulator_words``: the HRU's accumulator words besides kin."""
    cases = block_cases(fmt, size, seed)
    expected = [golden_expectation(fmt, c, block=True) for c in cases]
    assert expected[-1]["echo"]["overflows"]["gradient"] > golden_expectation(fmt, cases[-1])["echo"]["overflows"]["gradient"]
    result = run_core_case(fmt, size, lanes, cases, expected, run_name="block", idle_prob=0.3, block=True)
    assert result.scoreboards["hru_core"] == {"compared": block_compared(size, (30, 45, 20), accumulator_words),
                                              "mismatches": 0, "first_mismatch": None}


def test_block_mode_checks_every_step_under_verilator():
    """Block mode: every step's state, y_k, du_j, kin and the block's counts equal golden_model.hru_block's."""
    fmt, size, lanes = CONFIGS["small"]
    check_block_mode(fmt, size, lanes, seed=12, accumulator_words=size.oscillators * (1 + size.inputs))


@pytest.mark.parametrize("where", ["forward", "echo"])
def test_corrupted_step_fails_and_names_the_step(where):
    """One integer of one step's expectation off by one: exactly one mismatch, at that step — a
    forward state's z (the trace's write-back monitor) or an echo step's du (the du stream)."""
    fmt, size, lanes = CONFIGS["small"]
    case = random_case(fmt, size, 25, seed=8)
    want = golden_expectation(fmt, case, block=True)
    if where == "forward":
        want["steps"]["forward"][6]["z"][3] += 1
        expect = ("forward", 7, 3, "z")
    else:
        want["steps"]["du"][11][2] -= 1
        expect = ("echo", 12, 2, "du_stream")
    first = the_only_mismatch(fmt, size, lanes, case, want, block=True)
    assert (first["phase"], first["step"], first["lane"], first["field"]) == expect
    assert abs(first["expected"] - first["actual"]) == 1


def test_the_core_testbench_ships_with_the_package():
    """verify --level core loads its testbench from the sim package, not from tests/ (an installed
    wheel has no tests/)."""
    import echoboard.sim
    from echoboard.sim.testbenches import HRU_CORE

    assert HRU_CORE.is_file() and HRU_CORE.parent.parent == Path(echoboard.sim.__file__).parent


def test_zero_nudge_echo_of_10000_steps_returns_the_initial_state():
    fmt, size, lanes = CONFIGS["small"]
    length = 10_000
    case = random_case(fmt, size, length, seed=5, zero_nudge=True)
    want = golden_expectation(fmt, case)
    half = 1 << (fmt.state_width - 1)
    flipped = [((-z + half) % (2 * half)) - half for z in case["z0"]]
    for echo in ("plus", "minus"):  # the golden model itself retraces; the RTL must equal it
        assert want["echo"][echo] == {"y": case["y0"], "z": flipped}
    result = run_core_case(fmt, size, lanes, [case], [want], run_name="reversible", idle_prob=0.0)
    assert result.scoreboards["hru_core"]["mismatches"] == 0


def test_corrupted_expectation_fails_and_names_the_field():
    fmt, size, lanes = CONFIGS["small"]
    case = random_case(fmt, size, 25, seed=8)
    want = golden_expectation(fmt, case)
    want["echo"]["acc_b"][2][1] += 1
    first = the_only_mismatch(fmt, size, lanes, case, want)
    assert (first["phase"], first["step"], first["lane"], first["field"]) == ("echo", 25, 2, "acc_b[1]")
    assert first["expected"] == first["actual"] + 1


def the_only_mismatch(fmt, size, lanes, case, want, block: bool = False) -> dict:
    """Run one case against a corrupted expectation: the run must fail with exactly one mismatch,
    whose record (phase, step, lane, field, expected, actual) is returned."""
    with pytest.raises(SimulationFailed) as failure:
        run_core_case(fmt, size, lanes, [case], [want], run_name="corrupted-block" if block else "corrupted",
                      block=block)
    result = failure.value.result
    assert result.scoreboards["hru_core"]["mismatches"] == 1
    return json.loads((result.test_dir / ("hru_core" + MISMATCH_SUFFIX)).read_text())["first_mismatch"]


def test_cycles_per_step_reach_the_resource_bound():
    """With the input always valid a step costs max(R·N/macs, E·R, 16) cycles; at L = 1,000 a
    command (first and last slot, settling) stays within 1 % of L times that. With the default
    ``macs`` (a row of B·u per clock) that is the oscillator bound max(E·R, 16): II = 1."""
    fmt, size, lanes = CONFIGS["default"]
    for echo in (False, True):
        assert cycles_per_step(size, lanes, echo) == oscillator_bound(size, lanes, echo) == 16  # R = 8
    length = 1000
    case = random_case(fmt, size, length, seed=2)
    result = run_core_case(fmt, size, lanes, [case], [golden_expectation(fmt, case)], run_name="cycles",
                           idle_prob=0.0)
    cycles = json.loads((result.test_dir / "hru_core.cycles.json").read_text())[0]
    for phase, echo in (("forward", False), ("echo", True)):
        ideal = length * cycles_per_step(size, lanes, echo)
        assert ideal <= cycles[phase] <= 1.01 * ideal, (phase, cycles, ideal)
        assert cycles[phase] <= 1.01 * length * oscillator_bound(size, lanes, echo), (phase, cycles)
    speed = json.loads((result.test_dir / "hru_core.speed.json").read_text())
    assert speed["cycles"] >= cycles["forward"] + cycles["echo"] and speed["cycles_per_s"] > 0


def test_verilog_cli_writes_the_core(tmp_path, capsys):
    from echoboard.host.cli import main

    out = tmp_path / "core.v"
    assert main(["verilog", "-P", "4", "-N", "2", "-K", "2", "-o", str(out)]) == 0
    text = out.read_text()
    assert "module hru_core(" in text and "u__payload" in text and "nudge__payload" in text
    assert main(["verilog", "-P", "6", "-K", "4", "-o", str(out)]) == 2
    assert "must divide" in capsys.readouterr().err


def _verify_default_config(capfd, *extra) -> tuple[int, dict]:
    """``echoboard verify`` on the "default" configuration (same Verilog, so the same build)."""
    from echoboard.host.cli import main

    fmt, size, lanes = CONFIGS["default"]
    assert fmt == FixedFormat()  # the CLI builds the default format
    status = main(["verify", "--level", "core", "--seed", "3", "--length", "40", "-P", str(size.oscillators),
                   "-N", str(size.inputs), "-K", str(lanes), "--max-length", str(size.max_length), "--json", *extra])
    out = capfd.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # stdout is the JSON object only
    return status, json.loads(out[0])


def test_verify_cli_reports_a_clean_run(capfd):
    status, report = _verify_default_config(capfd, "--nudge", "per-step")
    fmt, size, lanes = CONFIGS["default"]
    p, n = size.oscillators, size.inputs
    assert status == 0  # the pipelined core is verified as an HSSM block, every step checked
    assert report | {"cycles": None} == {"level": "core", "steps": 40, "compared": block_compared(size, [40], p + p * n),
                                         "mismatches": 0, "first_mismatch": None, "cycles": None}
    assert report["cycles"]["forward"] >= 40 * cycles_per_step(size, lanes, echo=False)


def test_verify_cli_fails_on_a_mismatch(capfd, monkeypatch):
    import echoboard.hdl.verilog

    real = echoboard.hdl.verilog.golden_expectation

    def corrupted(fmt, case, **kwargs):
        want = real(fmt, case, **kwargs)
        want["forward"]["pos_sum"][5] ^= 4
        return want

    monkeypatch.setattr(echoboard.hdl.verilog, "golden_expectation", corrupted)
    status, report = _verify_default_config(capfd)
    assert status == 1 and report["mismatches"] == 1
    first = report["first_mismatch"]
    assert (first["phase"], first["step"], first["lane"], first["field"]) == ("forward", 40, 5, "pos_sum")
