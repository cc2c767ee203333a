"""Verilog generation of the HRU core, and the core-level verification run behind the CLI.

``core_verilog`` writes the core as Verilog (Amaranth's bundled Yosys, pinned through
``AMARANTH_USE_YOSYS=builtin`` so the text does not depend on a Yosys found on PATH).

``verify_core`` runs one random case through the Verilated core (tests/cocotb_hru_core.py under
sim.verilator) and the golden model. It needs the golden integer model and the simulation layer,
which sit beside and above hdl in the dependency order, so they are imported only inside the
functions that use them.

The case helpers (``random_case``, ``golden_expectation``) are shared by the command and the
tests, so every level checks the same fields the same way. Both HRUs go through them: the
format's type picks the linear (FixedFormat) or nonlinear (NonlinearFormat) core, parameters
and golden model; a case's keys are the core's ``parameter_regions`` (plus u, y0, z0, nudge), an
expectation's echo keys its ``accumulator_regions`` (plus plus, minus, overflows).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from golden_model.formats import FixedFormat, HRUSize
from hdl.cores import check_core, make_core
from hdl.kinds import base_format, hru_kind

__all__ = ["core_verilog", "format_to_json", "format_from_json", "random_case", "golden_expectation",
           "run_core_case", "verify_core"]

TOPLEVEL = "hru_core"
REPO = Path(__file__).resolve().parent.parent
TESTBENCH = REPO / "tests" / "cocotb_hru_core.py"
BUILD_ROOT = REPO / "build" / "hru_core"


def core_verilog(fmt, size: HRUSize, lanes: int, name: str = TOPLEVEL, core: str = "pipelined") -> str:
    """The Verilog text of the ``core`` (hdl.cores.CORES) for ``fmt, size, lanes`` as module ``name``."""
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    from amaranth.back import verilog

    return verilog.convert(make_core(core, fmt, size, lanes), name=name, emit_src=False)


def format_to_json(fmt) -> dict:
    """The format as JSON (the testbench rebuilds the core from it): a FixedFormat's fields, or
    {"nonlinear": the NonlinearFormat's fields, base and tanh nested}."""
    return fmt.as_dict() if hru_kind(fmt) == "linear" else {"nonlinear": dataclasses.asdict(fmt)}


def format_from_json(spec: dict):
    if "nonlinear" not in spec:
        return FixedFormat(**spec)
    from golden_model.hru_fixed_nonlinear import NonlinearFormat
    from golden_model.tanh_table import TanhSpec

    fields = dict(spec["nonlinear"])
    return NonlinearFormat(base=FixedFormat(**fields.pop("base")), tanh=TanhSpec(**fields.pop("tanh")), **fields)


# ---------------------------------------------------------------- random cases and their expectations

def random_case(fmt, size: HRUSize, length: int, seed: int, *, wild: bool = False,
                zero_nudge: bool = False, per_step_nudge: bool = False) -> dict:
    """Integer parameters, inputs (L, N), initial state and nudge, as lists of ints.

    Default: a stable bank (A in [0, 2), δ in (0, 0.5]) with moderate inputs and state, and a
    constant nudge (P,); ``per_step_nudge``: one nudge per forward state, (L, P) as in
    golden_model.hru_fixed.echo. ``wild``: every word uniformly random over its full width, so
    most operations overflow. Nonlinear (a NonlinearFormat): W in (0, 2), |bias| < 1, σc in
    [0, 1), α in [0, 2) per oscillator in place of A, drawn after δ (the linear draws unchanged).
    """
    full_fmt, fmt = fmt, base_format(fmt)
    size.check_length(length)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    rng = np.random.default_rng(seed)
    p, n = size.oscillators, size.inputs

    def words(width, shape, bits):
        bits = width - 1 if wild else min(bits, width - 1)
        return rng.integers(-(1 << bits), 1 << bits, size=shape, dtype=np.int64)

    if wild:
        a, delta = words(fmt.coef_width, p, 0), words(fmt.coef_width, p, 0)
    else:
        a = rng.integers(0, 2 << fmt.coef_a_frac, size=p)
        delta = rng.integers(1, (1 << fmt.delta_frac) // 2 + 1, size=p)
    coefs = {"A": a, "delta": delta}
    if hru_kind(full_fmt) == "nonlinear":
        coefs = {"alpha": a, "delta": delta, **_nonlinear_coefficients(full_fmt, p, rng, words, wild)}
    case = {
        **coefs,
        "B": words(fmt.coef_width, (p, n), fmt.coef_b_frac),
        "u": words(fmt.input_width, (length, n), fmt.input_frac),
        "y0": words(fmt.state_width, p, fmt.state_frac),
        "z0": words(fmt.state_width, p, fmt.state_frac),
        "nudge": (np.zeros(p, np.int64) if zero_nudge
                  else words(fmt.state_width, (length, p) if per_step_nudge else p, fmt.state_frac - 3)),
    }
    return {k: np.asarray(v, np.int64).tolist() for k, v in case.items()}


def _nonlinear_coefficients(fmt, p: int, rng, words, wild: bool) -> dict:
    """W > 0 in (0, 2), bias in (−1, 1), σc in [0, 1) (all full-width words when ``wild``)."""
    cw = fmt.base.coef_width
    if wild:
        return {"W": words(cw, p, 0), "bias": words(cw, p, 0), "sigma_c": words(cw, p, 0)}
    top = (1 << (cw - 1)) - 1
    return {"W": rng.integers(1, min(2 << fmt.coef_w_frac, top) + 1, size=p),
            "bias": words(cw, p, fmt.coef_bias_frac),
            "sigma_c": rng.integers(0, min(1 << fmt.coef_sigma_frac, top + 1), size=p)}


def golden_expectation(fmt, case: dict) -> dict:
    """What the core must hold after CLEAR, FORWARD (from y0, z0) and ECHO, per golden_model.hru_fixed
    (linear) or golden_model.hru_fixed_nonlinear (nonlinear: the five accumulators).

    Lists are indexed by oscillator first, so a scoreboard reports the oscillator of a mismatch.
    """
    import jax.numpy as jnp

    from golden_model import hru_fixed

    ints = lambda x: np.asarray(x).tolist()  # noqa: E731
    arrays = {k: jnp.asarray(v, jnp.int64) for k, v in case.items()}
    if hru_kind(fmt) == "linear":
        model, q = hru_fixed, hru_fixed.LinearParamsInt(*(arrays[k] for k in ("A", "B", "delta")))
    else:
        from golden_model import hru_fixed_nonlinear as model

        q = model.NonlinearParamsInt(*(arrays[k] for k in ("W", "bias", "sigma_c", "alpha", "B", "delta")))
    fwd = model.forward(q, arrays["u"], arrays["y0"], arrays["z0"], fmt)
    ech = model.echo(q, arrays["u"], fwd.y, fwd.z, arrays["nudge"], fmt)
    accumulators = ({"acc_a": ech.acc_a, "acc_b": ech.acc_b} if hru_kind(fmt) == "linear"
                    else {f"acc_{k}": v for k, v in ech.acc._asdict().items()})
    return {
        "forward": {"y": ints(fwd.y), "z": ints(fwd.z), "pos_sum": ints(fwd.pos_sum),
                    "overflows": {"forward": int(fwd.overflows)}},
        "echo": {"plus": {"y": ints(ech.y[0]), "z": ints(ech.z[0])},
                 "minus": {"y": ints(ech.y[1]), "z": ints(ech.z[1])},
                 **{k: ints(v) for k, v in accumulators.items()},
                 "overflows": dict(zip(hru_fixed.PHASES[1:], ints(ech.overflows)))},
    }


@functools.lru_cache(maxsize=None)
def _verilog_file(fmt, size: HRUSize, lanes: int, core: str) -> tuple[str, Path]:
    """(configuration name, Verilog path) of a core, converted once per process."""
    from sim.verilator import amaranth_to_verilog

    fmt_key = hashlib.sha256(json.dumps(format_to_json(fmt), sort_keys=True).encode()).hexdigest()[:8]
    prefix = ("" if hru_kind(fmt) == "linear" else "nl-") + ("" if core == "pipelined" else f"{core}-")
    config = f"{prefix}p{size.oscillators}-n{size.inputs}-k{lanes}-m{size.max_length}-{fmt_key}"
    return config, amaranth_to_verilog(make_core(core, fmt, size, lanes), TOPLEVEL, BUILD_ROOT / f"{config}.v")


def run_core_case(fmt, size: HRUSize, lanes: int, cases: list[dict], expected: list[dict], *,
                  run_name: str, idle_prob: float = 0.2, seed: int | None = None, waves: bool = False,
                  check: bool = True, timeout_s: float = 600, core: str = "pipelined"):
    """Verilate the ``core`` (cached per configuration) and run ``cases`` against ``expected``.

    Returns sim.verilator's ``SimResult``; its ``scoreboards["hru_core"]`` holds the summary and
    ``test_dir / "hru_core.cycles.json"`` the cycles of every command.
    """
    from sim.verilator import build_and_test

    config, verilog_path = _verilog_file(fmt, size, lanes, core)
    case_file = BUILD_ROOT / "cases" / f"{config}-{run_name}.json"
    case_file.parent.mkdir(parents=True, exist_ok=True)
    case_file.write_text(json.dumps({"format": format_to_json(fmt),
                                     "size": [size.oscillators, size.inputs, size.max_length],
                                     "lanes": lanes, "core": core, "idle_prob": idle_prob, "cases": cases, "expected": expected}))
    return build_and_test(verilog_path, TOPLEVEL, TESTBENCH, BUILD_ROOT, run_name=f"{config}-{run_name}",
                          seed=seed, waves=waves, check=check, timeout_s=timeout_s,
                          extra_env={"HRU_CASES": str(case_file)})


# ---------------------------------------------------------------- one verification run

def verify_core(fmt, size: HRUSize, lanes: int, *, length: int, seed: int,
                per_step_nudge: bool = False, core: str = "pipelined") -> tuple[bool, dict]:
    """One random case through the Verilated core and the golden model: (passed, report).

    The report has the fields of ``echoboard verify``: level, steps, compared, mismatches,
    first_mismatch, cycles (and error when the simulation itself failed).
    """
    check_core(core, fmt, size, lanes)  # argument errors before the (slow) build
    case = random_case(fmt, size, length, seed, per_step_nudge=per_step_nudge)
    result = run_core_case(fmt, size, lanes, [case], [golden_expectation(fmt, case)], idle_prob=0.0,
                           run_name=f"verify-s{seed}-l{length}", seed=seed, check=False, core=core)
    board = result.scoreboards.get(TOPLEVEL, {})
    cycles_file = result.test_dir / f"{TOPLEVEL}.cycles.json"
    report = {"level": "core", "steps": length, "compared": board.get("compared", 0),
              "mismatches": board.get("mismatches"), "first_mismatch": board.get("first_mismatch"),
              "cycles": json.loads(cycles_file.read_text())[0] if cycles_file.is_file() else None}
    passed = result.passed and board.get("mismatches") == 0
    if not passed and report["mismatches"] is None:
        report["error"] = result.describe()
    return passed, report
