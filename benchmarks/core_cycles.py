"""Cycles per time step of the Verilated HRU core vs its ideal, and the cocotb regression's speed.

For each HRU kind (linear: FixedFormat(), nonlinear: NonlinearFormat(), the golden model's
defaults) and configuration (P oscillators, N inputs, K lanes; the core's default ``macs``) one
random case of L steps (default 2000) runs through the Verilated core (hdl.verilog.run_core_case:
load, CLEAR, FORWARD, ECHO, read back, compare with the golden model, input stream always valid)
and reports per phase:

- ``measured``: cycles from the command's acceptance to ``done`` divided by L (a command also
  pays its first / last slot and ~23 cycles of settling, spread over the L steps);
- ``oscillator_ideal``: max(E·R, W) — one oscillator update (echo: one echo of one
  oscillator) per lane per clock, R = P / K, E = 1 forward / 2 echo, and no step of an
  oscillator before its previous one is written back (the W-stage pipeline: 16 linear, 24
  nonlinear); ``E·R`` alone is listed too;
- ``resource_bound``: hdl.timing.cycles_per_step, max(R·N/macs, E·R, W) for the built core
  (nonlinear echo: also R + 16, Δt's read-back hazard; equal to the oscillator ideal with the
  default ``macs`` otherwise), and ``single_mac_budget``, the same with one B·u multiplier per
  lane (the core before ``macs``, for comparison);
- ``ratio``: measured / oscillator ideal (goal of issue 3: within 1.10 at L >= 1000).

Simulation speed: the clock cycles the cocotb test simulated (loading, reads and both commands)
per second of its wall time, measured inside the test (sim/testbenches/cocotb_hru_core.py writes
``hru_core.speed.json``), so the Verilator build and the simulator's start-up are excluded; the
build time is reported separately (0 when the build was cached).

The serial core (hdl.hru_serial, the iCEBreaker's) is measured the same way for ``--serial``
configurations (P x N, one lane; default 16x8): ``measured`` against ``model``
(hdl.hru_serial.cycles_per_step: exact, measured = L·model + the command's 2 handshake cycles), and the time per step at
the iCEBreaker's 12 MHz against the time the 3 Mbaud UART needs for the step's payload (10 bits per
byte, framing excluded): the input sample, and in echo STREAM mode also a nudge vector.

Run: ``python -m benchmarks.core_cycles [--configs 16x8x1,16x8x4,64x8x4] [--lengths 2000]
[--hrus linear,nonlinear] [--serial 16x8]``.
Unknown arguments (from benchmarks.run_all) are ignored. Writes benchmarks/results/core_cycles.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from benchmarks import save_result

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "core_cycles.json"
DEFAULT_CONFIGS = ((16, 8, 1), (16, 8, 4), (64, 8, 4))
DEFAULT_LENGTH = 2000
HRUS = ("linear", "nonlinear")
GOAL_RATIO = 1.10


def _configs(text: str) -> list[tuple[int, int, int]]:
    out = []
    for item in filter(None, text.split(",")):
        try:
            p, n, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected PxNxK (e.g. 16x8x4), got {item!r}") from None
        out.append((p, n, k))
    if not out:
        raise argparse.ArgumentTypeError("need at least one PxNxK configuration")
    return out


def _configs_pn(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in item.lower().split("x", 1)) for item in filter(None, text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PxN (e.g. 16x8), got {text!r}") from None


def _lengths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated lengths, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be positive, got {text!r}")
    return values


def _hrus(text: str) -> list[str]:
    values = [v for v in text.split(",") if v]
    if not values or set(values) - set(HRUS):
        raise argparse.ArgumentTypeError(f"expected comma-separated HRU kinds of {', '.join(HRUS)}, got {text!r}")
    return values


def measure(p: int, n: int, k: int, length: int, seed: int = 0, hru: str = "linear") -> dict:
    """One Verilated run of a P/N/K core of the ``hru`` kind on a random case of ``length`` steps:
    cycles and speed."""
    from echoboard.golden_model.formats import FixedFormat, HRUSize
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
    from echoboard.hdl.timing import cycles_per_step, default_macs, oscillator_bound
    from echoboard.hdl.verilog import TOPLEVEL, golden_expectation, random_case, run_core_case

    fmt = NonlinearFormat() if hru == "nonlinear" else FixedFormat()
    size = HRUSize(p, n, max(length, HRUSize.max_length))
    case = random_case(fmt, size, length, seed)
    want = golden_expectation(fmt, case)
    t0 = time.perf_counter()
    result = run_core_case(fmt, size, k, [case], [want], run_name=f"bench-l{length}-s{seed}", idle_prob=0.0,
                           seed=seed, check=False, timeout_s=3600)
    total_s = time.perf_counter() - t0
    board = result.scoreboards.get(TOPLEVEL, {})
    cycles_file, speed_file = (result.test_dir / f"{TOPLEVEL}.{name}.json" for name in ("cycles", "speed"))
    if not (result.passed and board.get("mismatches") == 0 and cycles_file.is_file() and speed_file.is_file()):
        raise RuntimeError(f"{hru} P{p}/N{n}/K{k}, L={length}: the core run failed\n{result.describe()}")
    cycles = json.loads(cycles_file.read_text())[0]
    speed = json.loads(speed_file.read_text())
    rows = p // k
    phases = {}
    for phase, echo in (("forward", False), ("echo", True)):
        ideal = oscillator_bound(size, k, echo, hru)
        measured = cycles[phase] / length
        phases[phase] = {
            "cycles": cycles[phase], "measured_per_step": measured,
            "oscillator_ideal_per_step": ideal, "e_times_r": (2 if echo else 1) * rows,
            "resource_bound_per_step": cycles_per_step(size, k, echo, hru=hru),
            "single_mac_budget_per_step": cycles_per_step(size, k, echo, macs=1, hru=hru),
            "ratio": measured / ideal, "within_goal": measured / ideal <= GOAL_RATIO,
        }
    return {
        "hru": hru, "oscillators": p, "inputs": n, "lanes": k, "macs": default_macs(n), "rows": rows, "length": length,
        "seed": seed, "compared": board["compared"], "mismatches": board["mismatches"], "phases": phases,
        "sim": {"cycles": speed["cycles"], "wall_s": speed["wall_s"], "cycles_per_s": speed["cycles_per_s"],
                "build_and_setup_s": max(0.0, total_s - speed["wall_s"])},
    }


SERIAL_CLOCK_HZ, UART_BAUD = 12_000_000, 3_000_000


def measure_serial(p: int, n: int, length: int, seed: int = 0) -> dict:
    """One Verilated run of the serial core (P/N, FixedFormat()) on a random case of ``length`` steps."""
    from echoboard.golden_model.formats import FixedFormat, HRUSize
    from echoboard.hdl.hru_serial import cycles_per_step
    from echoboard.hdl.verilog import TOPLEVEL, golden_expectation, random_case, run_core_case

    fmt, size = FixedFormat(), HRUSize(p, n, max(length, HRUSize.max_length))
    case = random_case(fmt, size, length, seed)
    result = run_core_case(fmt, size, 1, [case], [golden_expectation(fmt, case)], run_name=f"bench-l{length}-s{seed}",
                           idle_prob=0.0, seed=seed, check=False, timeout_s=3600, core="serial")
    board = result.scoreboards.get(TOPLEVEL, {})
    cycles_file = result.test_dir / f"{TOPLEVEL}.cycles.json"
    if not (result.passed and board.get("mismatches") == 0 and cycles_file.is_file()):
        raise RuntimeError(f"serial P{p}/N{n}, L={length}: the core run failed\n{result.describe()}")
    cycles = json.loads(cycles_file.read_text())[0]
    sample_bytes = n * -(-fmt.input_width // 8)
    phases = {}
    for phase, echo in (("forward", False), ("echo", True)):
        measured = cycles[phase] / length
        payload = {"input only": sample_bytes, **({"input + streamed nudge": sample_bytes + p * -(-fmt.state_width // 8)}
                                                   if echo else {})}
        phases[phase] = {"cycles": cycles[phase], "measured_per_step": measured,
                         "model_per_step": cycles_per_step(fmt, size, echo),
                         "core_us_per_step_12mhz": measured / SERIAL_CLOCK_HZ * 1e6,
                         "uart_us_per_step_3mbaud": {k: v * 10 / UART_BAUD * 1e6 for k, v in payload.items()}}
    return {"core": "serial", "oscillators": p, "inputs": n, "length": length, "seed": seed,
            "compared": board["compared"], "mismatches": board["mismatches"], "phases": phases}


def format_serial_table(results: list[dict]) -> str:
    head = f"{'serial core':<16}{'phase':<9}{'L':>6}{'meas/step':>11}{'model':>7}{'µs @12MHz':>11}  UART µs @3Mbaud"
    lines = [head, "-" * len(head)]
    for r in results:
        name = f"P{r['oscillators']}/N{r['inputs']}"
        for phase, v in r["phases"].items():
            uart = ", ".join(f"{k} {us:.0f}" for k, us in v["uart_us_per_step_3mbaud"].items())
            lines.append(f"{name:<16}{phase:<9}{r['length']:>6}{v['measured_per_step']:>11.2f}{v['model_per_step']:>7}"
                         f"{v['core_us_per_step_12mhz']:>11.1f}  {uart}")
            name = ""
    return "\n".join(lines)


def format_table(results: list[dict]) -> str:
    head = (f"{'config':<24}{'phase':<9}{'L':>6}{'cycles':>10}{'meas/step':>11}{'ideal':>7}{'E*R':>5}"
            f"{'bound':>7}{'1-MAC':>7}{'ratio':>7}{'sim cyc/s':>11}{'build s':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        name = f"{r['hru']} P{r['oscillators']}/N{r['inputs']}/K{r['lanes']}"
        for phase, v in r["phases"].items():
            lines.append(f"{name:<24}{phase:<9}{r['length']:>6}{v['cycles']:>10}{v['measured_per_step']:>11.2f}"
                         f"{v['oscillator_ideal_per_step']:>7}{v['e_times_r']:>5}{v['resource_bound_per_step']:>7}"
                         f"{v['single_mac_budget_per_step']:>7}{v['ratio']:>7.3f}"
                         f"{r['sim']['cycles_per_s']:>11.0f}{r['sim']['build_and_setup_s']:>9.1f}")
            name = ""
    lines.append("ideal = max(E·R, W) (oscillator pipeline, W = 16 linear / 24 nonlinear), bound = "
                 "max(R·N/macs, E·R, W; nonlinear echo R + 16) of the built core (default macs), 1-MAC = the "
                 "same with one B·u multiplier per lane; sim cyc/s = cocotb regression cycles per wall second, "
                 "build excluded")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.core_cycles", description=__doc__.split("\n")[0])
    ap.add_argument("--configs", type=_configs, default=list(DEFAULT_CONFIGS),
                    help="comma-separated PxNxK (default 16x8x1,16x8x4,64x8x4)")
    ap.add_argument("--lengths", type=_lengths, default=[DEFAULT_LENGTH], help="comma-separated L (default 2000)")
    ap.add_argument("--hrus", type=_hrus, default=list(HRUS), help="comma-separated HRU kinds (default both)")
    ap.add_argument("--serial", type=_configs_pn, default=[(16, 8)],
                    help="comma-separated PxN of the serial core (default 16x8; empty: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        print(f"core_cycles: ignoring arguments {unknown}", file=sys.stderr)
    results = [measure(p, n, k, length, args.seed, hru) for p, n, k in args.configs for hru in args.hrus
               for length in args.lengths]
    serial = [measure_serial(p, n, length, args.seed) for p, n in args.serial for length in args.lengths]
    report = {"benchmark": "core_cycles", "goal_ratio": GOAL_RATIO, "serial": serial,
              "format": "golden_model defaults: FixedFormat() linear, NonlinearFormat() nonlinear",
              "platform": {"python": platform.python_version(), "machine": platform.machine(),
                           "processor": platform.processor()},
              "results": results}
    print(format_table(results))
    if serial:
        print(format_serial_table(serial))
    save_result(args.out, report)
    return report


if __name__ == "__main__":
    main()
