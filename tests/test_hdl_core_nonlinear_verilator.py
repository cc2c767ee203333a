"""The nonlinear HRUCore under cocotb + Verilator against golden_model.hru_fixed_nonlinear, with ==.

Default suite: one small core with the default NonlinearFormat (the 2048-entry tanh ROM), the
same Verilog as ``echoboard verify --hru nonlinear -P 4 -N 2 -K 2 --max-length 4096``, so the
CLI tests reuse its Verilator build: random cases (constant and per-step nudges, random idle on
the input streams, one whose operations mostly wrap), a corrupted expectation that must fail,
the ``verilog`` and ``verify`` commands. Slow: a 16-oscillator core with long sequences and its
cycles per step, and a 4,096-step (the small core's longest) ε = 0 echo that must return the
initial state bit for bit.
"""
import json

import pytest
from test_hdl_core_verilator import _cases, block_compared, check_block_mode, the_only_mismatch

from echoboard.golden_model.formats import HRUSize
from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
from echoboard.hdl.timing import cycles_per_step
from echoboard.hdl.verilog import golden_expectation, random_case, run_core_case

CONFIGS = {  # name: (format, size, lanes)
    "small": (NonlinearFormat(), HRUSize(oscillators=4, inputs=2, max_length=4096), 2),
    "wide": (NonlinearFormat(), HRUSize(oscillators=16, inputs=4, max_length=4096), 2),
}


def _compared(size: HRUSize, cases: int) -> int:
    """Integers per case: forward y, z, pos_sum; both echoes' y, z; 4 per-oscillator
    accumulators and the P×N one; the 4 counters."""
    p, n = size.oscillators, size.inputs
    return cases * (11 * p + p * n + 4)


def test_nonlinear_core_matches_golden_under_verilator():
    fmt, size, lanes = CONFIGS["small"]
    cases = [random_case(fmt, size, length, 60 + length) for length in (1, 40)]
    cases += [random_case(fmt, size, 40, 70, per_step_nudge=True), random_case(fmt, size, 40, 71, wild=True)]
    expected = [golden_expectation(fmt, c) for c in cases]
    assert expected[-1]["forward"]["overflows"]["forward"] > 0 and expected[-1]["echo"]["overflows"]["gradient"] > 0
    result = run_core_case(fmt, size, lanes, cases, expected, run_name="random", idle_prob=0.3)
    assert result.scoreboards["hru_core"] == {"compared": _compared(size, len(cases)), "mismatches": 0,
                                              "first_mismatch": None}


def test_nonlinear_block_mode_checks_every_step_under_verilator():
    """Block mode (golden_model.hru_block): every step's state, y_k, du_j (g = the GAIN words),
    kin and the block's counts, with random idle on the input streams."""
    fmt, size, lanes = CONFIGS["small"]
    check_block_mode(fmt, size, lanes, seed=72, accumulator_words=size.oscillators * (4 + size.inputs))


def test_nonlinear_corrupted_expectation_fails_and_names_the_field():
    fmt, size, lanes = CONFIGS["small"]
    case = random_case(fmt, size, 40, seed=60 + 40)  # the case above: the golden model is already compiled
    want = golden_expectation(fmt, case)
    want["echo"]["acc_lc"][3] -= 1
    first = the_only_mismatch(fmt, size, lanes, case, want)
    assert (first["phase"], first["step"], first["lane"], first["field"]) == ("echo", 40, 3, "acc_lc")
    assert first["expected"] == first["actual"] - 1


def test_nonlinear_verilog_cli_writes_the_core(tmp_path):
    from echoboard.host.cli import main

    out = tmp_path / "core.v"
    assert main(["verilog", "--hru", "nonlinear", "-P", "4", "-N", "2", "-K", "2", "-o", str(out)]) == 0
    text = out.read_text()
    assert "module hru_core(" in text and "tanh_even" in text and "acc_lc" in text


def test_nonlinear_verify_cli_reports_a_clean_run(capfd):
    from echoboard.host.cli import main

    fmt, size, lanes = CONFIGS["small"]
    assert fmt == NonlinearFormat()  # the CLI builds the default format: the same Verilog as above
    status = main(["verify", "--level", "core", "--hru", "nonlinear", "--seed", "3", "--length", "40",
                   "-P", str(size.oscillators), "-N", str(size.inputs), "-K", str(lanes),
                   "--max-length", str(size.max_length), "--nudge", "per-step", "--json"])
    out = capfd.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # stdout is the JSON object only
    report = json.loads(out[0])
    assert status == 0  # the pipelined core is verified as an HSSM block, every step checked
    p, n = size.oscillators, size.inputs
    assert report | {"cycles": None} == {"level": "core", "steps": 40, "compared": block_compared(size, [40], 4 * p + p * n),
                                         "mismatches": 0, "first_mismatch": None, "cycles": None}
    assert report["cycles"]["echo"] >= 40 * cycles_per_step(size, lanes, echo=True, hru="nonlinear")


@pytest.mark.slow
def test_nonlinear_wide_core_long_sequences_and_cycles_per_step():
    """16 oscillators in 2 lanes (R = 8): a step costs max(E·R, 24, echo R + 16) = 24 cycles in
    both phases; at L = 1,000 a command stays within 1 % of L times that."""
    fmt, size, lanes = CONFIGS["wide"]
    cases = _cases(fmt, size, seed=80, lengths=(1, 300))
    cases.append(random_case(fmt, size, 1000, seed=81))
    expected = [golden_expectation(fmt, c) for c in cases]
    result = run_core_case(fmt, size, lanes, cases, expected, run_name="long", idle_prob=0.0)
    assert result.scoreboards["hru_core"]["mismatches"] == 0
    assert result.scoreboards["hru_core"]["compared"] == _compared(size, len(cases))
    cycles = json.loads((result.test_dir / "hru_core.cycles.json").read_text())[-1]
    for phase, echo in (("forward", False), ("echo", True)):
        ideal = 1000 * cycles_per_step(size, lanes, echo, hru="nonlinear")
        assert ideal == 24_000 and ideal <= cycles[phase] <= 1.01 * ideal, (phase, cycles)


@pytest.mark.slow
def test_nonlinear_zero_nudge_echo_of_the_longest_sequence_returns_the_initial_state():
    fmt, size, lanes = CONFIGS["small"]
    case = random_case(fmt, size, size.max_length, seed=6, zero_nudge=True)  # 4,096 steps
    want = golden_expectation(fmt, case)
    half = 1 << (fmt.base.state_width - 1)
    flipped = [((-z + half) % (2 * half)) - half for z in case["z0"]]
    for echo in ("plus", "minus"):  # the golden model itself retraces; the RTL must equal it
        assert want["echo"][echo] == {"y": case["y0"], "z": flipped}
    result = run_core_case(fmt, size, lanes, [case], [want], run_name="reversible", idle_prob=0.0)
    assert result.scoreboards["hru_core"]["mismatches"] == 0
