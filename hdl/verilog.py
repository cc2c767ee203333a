"""Verilog generation of the HRU core, and the core-level verification run behind the CLI.

``core_verilog`` writes the core as Verilog (Amaranth's bundled Yosys, pinned through
``AMARANTH_USE_YOSYS=builtin`` so the text does not depend on a Yosys found on PATH).

``verify_core`` runs one random case through the Verilated core (the packaged testbench
sim/testbenches/cocotb_hru_core.py under sim.verilator) and the golden model. It needs the golden
integer model and the simulation layer, which sit beside and above hdl in the dependency order,
so they are imported only inside the functions that use them.

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

from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.hdl.cores import check_core, make_core
from echoboard.hdl.kinds import base_format, hru_kind

__all__ = ["core_verilog", "format_to_json", "format_from_json", "random_case", "golden_expectation",
           "run_core_case", "verify_core"]

TOPLEVEL = "hru_core"


def _build_root() -> Path:
    """Verilog, Verilator builds, case files and runs: sim.paths.build_root()/hru_core (the current
    directory's build/ or --build-dir, never the package's folder)."""
    from echoboard.sim.paths import build_root

    return build_root(TOPLEVEL)


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
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
    from echoboard.golden_model.tanh_table import TanhSpec

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
    [0, 1), α in [0, 2) per oscillator in place of A, drawn after δ (the linear draws unchanged),
    and an HSSM block's input-gradient gain g in (−1, 1), drawn last (the other draws unchanged;
    the linear block's g is δ).
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
    if hru_kind(full_fmt) == "nonlinear":
        case["gain"] = words(fmt.coef_width, p, fmt.delta_frac)
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


def golden_expectation(fmt, case: dict, block: bool = False, steps: bool | None = None) -> dict:
    """What the core must hold after CLEAR, FORWARD (from y0, z0) and ECHO, per golden_model.hru_fixed
    (linear) or golden_model.hru_fixed_nonlinear (nonlinear: the five accumulators).

    ``block``: the core in HSSM block mode (golden_model.hru_block): the echo also holds ``kin``
    and the block's gradient count. ``steps`` (default: ``block``): also every step's state under
    "steps" (``block_steps``: what the core's trace shows), with the du stream when ``block``.
    Lists are indexed by oscillator first, so a scoreboard reports the oscillator of a mismatch.
    """
    import jax.numpy as jnp

    from echoboard.golden_model import hru_fixed

    ints = lambda x: np.asarray(x).tolist()  # noqa: E731
    arrays = {k: jnp.asarray(v, jnp.int64) for k, v in case.items()}
    if hru_kind(fmt) == "linear":
        model, q = hru_fixed, hru_fixed.LinearParamsInt(*(arrays[k] for k in ("A", "B", "delta")))
    else:
        from echoboard.golden_model import hru_fixed_nonlinear as model

        q = model.NonlinearParamsInt(*(arrays[k] for k in ("W", "bias", "sigma_c", "alpha", "B", "delta")))
    fwd = model.forward(q, arrays["u"], arrays["y0"], arrays["z0"], fmt)
    ech = model.echo(q, arrays["u"], fwd.y, fwd.z, arrays["nudge"], fmt)
    accumulators = ({"acc_a": ech.acc_a, "acc_b": ech.acc_b} if hru_kind(fmt) == "linear"
                    else {f"acc_{k}": v for k, v in ech.acc._asdict().items()})
    overflows, steps = ech.overflows, block if steps is None else steps
    if steps or block:
        per_step, kin, block_overflows = block_steps(fmt, case, fwd.y, fwd.z)
        if block:
            accumulators["kin"], overflows = kin, block_overflows
        else:
            del per_step["du"]
    want = {
        "forward": {"y": ints(fwd.y), "z": ints(fwd.z), "pos_sum": ints(fwd.pos_sum),
                    "overflows": {"forward": int(fwd.overflows)}},
        "echo": {"plus": {"y": ints(ech.y[0]), "z": ints(ech.z[0])},
                 "minus": {"y": ints(ech.y[1]), "z": ints(ech.z[1])},
                 **{k: ints(v) for k, v in accumulators.items()},
                 "overflows": dict(zip(hru_fixed.PHASES[1:], ints(overflows)))},
    }
    return {**want, "steps": per_step} if steps else want


def block_params(fmt, case: dict):
    """The case's words as a golden_model.hru_block.BlockParamsInt (linear: g = δ; nonlinear: the case's gain)."""
    import jax.numpy as jnp

    from echoboard.golden_model import hru_block, hru_fixed

    a = {k: jnp.asarray(v, jnp.int64) for k, v in case.items()}
    if hru_kind(fmt) == "linear":
        q = hru_fixed.LinearParamsInt(a["A"], a["B"], a["delta"])
        return hru_block.BlockParamsInt(q, q.delta)
    from echoboard.golden_model import hru_fixed_nonlinear as nl

    return hru_block.BlockParamsInt(nl.NonlinearParamsInt(*(a[k] for k in ("W", "bias", "sigma_c", "alpha", "B", "delta"))),
                                    a["gain"])


def block_steps(fmt, case: dict, y_final, z_final) -> tuple[dict, list, list]:
    """Every step's outputs of golden_model.hru_block from (y0, z0) and the echo pair from the
    forward's final state: ({"forward": [{"y", "z"}] for k = 1..L, "echo": [{"plus", "minus":
    {"y", "z"}}] and "du": [N words] per echo step m = 1..L (consuming u_{L−m}), z before the
    nudge}, kin, the echo's overflows).

    The golden scans themselves run (golden_model.hru_fixed.run_forward / run_echo with the
    block's step and read-out); only what they already compute is let out: forward, z rides
    under y so that the per-step positions carry both; in the echo the step hands its new y to
    the read-out beside its own read-out values.
    """
    import jax.numpy as jnp

    from echoboard.golden_model import hru_block
    from echoboard.golden_model import hru_fixed as hx

    hru, base = hru_kind(fmt), base_format(fmt)
    bq = block_params(fmt, case)
    u, y0, z0, nudge = (jnp.asarray(case[k], jnp.int64) for k in ("u", "y0", "z0", "nudge"))
    step = hru_block.step_function(hru, bq.q, fmt)

    def stacked(yz, z, b):
        y, z, *_, events = step(yz[0], z, b)
        return jnp.stack([y, z]), z, events

    _, states = hx.run_forward(stacked, bq.q, u, jnp.stack([y0, z0]), z0, base, emit_positions=True)

    def with_y(y, z, b):
        y, z, *read_out, events = step(y, z, b)
        return (y, z, *read_out, y, events)

    def accumulate(acc, read_out, u_j, z_in, z_out):
        *read_out, y = read_out
        acc, events, du = hru_block.accumulate(hru, bq, fmt, acc, tuple(read_out), u_j, z_in, z_out)
        return acc, events, (du, y, z_out)

    p, n = bq.q.B.shape
    acc0 = (hru_block.zero_accumulators(hru, p, n), jnp.zeros(p, jnp.int64))
    _, _, (_, kin), overflows, (du, ys, zs) = hx.run_echo(with_y, accumulate, acc0, bq.q, u, y_final, z_final,
                                                         nudge, base)
    states, ys, zs, du = (np.asarray(v).tolist() for v in (states, ys[::-1], zs[::-1], du[::-1]))
    steps = {"forward": [{"y": y, "z": z} for y, z in states],
             "echo": [{"plus": {"y": y[0], "z": z[0]}, "minus": {"y": y[1], "z": z[1]}} for y, z in zip(ys, zs)],
             "du": du}
    return steps, np.asarray(kin).tolist(), np.asarray(overflows).tolist()


class StepAssembler:
    """A core's per-item outputs -> per-step vectors in ``block_steps``' layout (index = oscillator).

    ``kind``: "forward" / "echo" (HRUCore's ``trace`` write-backs of that pass, in order: R resp. 2R
    items per step, placed by their row and slot: a wrong row leaves a hole, None, that compares
    unequal), "y" (the ``y`` stream: R beats per step, beat r = oscillators r·K .. r·K + K − 1) or
    "du" (the ``du`` stream: one beat of N words per step).
    """

    def __init__(self, oscillators: int, lanes: int, kind: str):
        self._p, self._lanes, self._kind = oscillators, lanes, kind
        self._per_step = 1 if kind == "du" else oscillators // lanes * (2 if kind == "echo" else 1)
        self._items: list = []

    def feed(self, item):
        """Take one item; returns the step it completes, else None."""
        self._items.append(item)
        if len(self._items) < self._per_step:
            return None
        items, self._items = self._items, []
        if self._kind == "du":
            return items[0]
        if self._kind == "y":
            return [word for beat in items for word in beat]
        halves: dict = {}
        for it in items:
            half = halves.setdefault("minus" if it["slot"] else "plus", {"y": [None] * self._p, "z": [None] * self._p})
            for k in range(self._lanes):
                for field in ("y", "z"):
                    if it["row"] * self._lanes + k < self._p:
                        half[field][it["row"] * self._lanes + k] = it[field][k]
        return halves if self._kind == "echo" else halves.get("plus")

    @property
    def pending(self) -> list:
        """Items of a step not completed (a pass that ended early or ran long)."""
        return self._items


@functools.lru_cache(maxsize=None)
def _verilog_file(fmt, size: HRUSize, lanes: int, core: str, root: Path) -> tuple[str, Path]:
    """(configuration name, Verilog path under ``root``) of a core, converted once per process."""
    from echoboard.sim.verilator import amaranth_to_verilog

    fmt_key = hashlib.sha256(json.dumps(format_to_json(fmt), sort_keys=True).encode()).hexdigest()[:8]
    prefix = ("" if hru_kind(fmt) == "linear" else "nl-") + ("" if core == "pipelined" else f"{core}-")
    config = f"{prefix}p{size.oscillators}-n{size.inputs}-k{lanes}-m{size.max_length}-{fmt_key}"
    return config, amaranth_to_verilog(make_core(core, fmt, size, lanes), TOPLEVEL, root / f"{config}.v")


def run_core_case(fmt, size: HRUSize, lanes: int, cases: list[dict], expected: list[dict], *,
                  run_name: str, idle_prob: float = 0.2, seed: int | None = None, waves: bool = False,
                  check: bool = True, timeout_s: float = 600, core: str = "pipelined", block: bool = False):
    """Verilate the ``core`` (cached per configuration) and run ``cases`` against ``expected``.

    ``block``: run the commands in HSSM block mode (the expectations then come from
    ``golden_expectation(..., block=True)``); expectations with "steps" get every step checked.

    Returns sim.verilator's ``SimResult``; its ``scoreboards["hru_core"]`` holds the summary and
    ``test_dir / "hru_core.cycles.json"`` the cycles of every command.
    """
    from echoboard.sim.testbenches import HRU_CORE
    from echoboard.sim.verilator import build_and_test

    root = _build_root()
    config, verilog_path = _verilog_file(fmt, size, lanes, core, root)
    case_file = root / "cases" / f"{config}-{run_name}.json"
    case_file.parent.mkdir(parents=True, exist_ok=True)
    case_file.write_text(json.dumps({"format": format_to_json(fmt),
                                     "size": [size.oscillators, size.inputs, size.max_length],
                                     "lanes": lanes, "core": core, "idle_prob": idle_prob, "block": block,
                                     "cases": cases, "expected": expected}))
    return build_and_test(verilog_path, TOPLEVEL, HRU_CORE, root, run_name=f"{config}-{run_name}",
                          seed=seed, waves=waves, check=check, timeout_s=timeout_s,
                          extra_env={"HRU_CASES": str(case_file)})


# ---------------------------------------------------------------- one verification run

def verify_core(fmt, size: HRUSize, lanes: int, *, length: int, seed: int,
                per_step_nudge: bool = False, core: str = "pipelined") -> tuple[bool, dict]:
    """One random case through the Verilated core and the golden model: (passed, report).

    The report has the fields of ``echoboard verify``: level, steps, compared, mismatches,
    first_mismatch, cycles (and error when the simulation itself failed). The pipelined core runs
    as an HSSM block with every step checked (its trace, y_k, du_j; golden_model.hru_block); the
    serial core, which has neither, as the plain HRU with the memories after each pass.
    """
    check_core(core, fmt, size, lanes)  # argument errors before the (slow) build
    case = random_case(fmt, size, length, seed, per_step_nudge=per_step_nudge)
    block = core == "pipelined"
    result = run_core_case(fmt, size, lanes, [case], [golden_expectation(fmt, case, block=block)], idle_prob=0.0,
                           run_name=f"verify-s{seed}-l{length}", seed=seed, check=False, core=core, block=block)
    board = result.scoreboards.get(TOPLEVEL, {})
    cycles_file = result.test_dir / f"{TOPLEVEL}.cycles.json"
    report = {"level": "core", "steps": length, "compared": board.get("compared", 0),
              "mismatches": board.get("mismatches"), "first_mismatch": board.get("first_mismatch"),
              "cycles": json.loads(cycles_file.read_text())[0] if cycles_file.is_file() else None}
    passed = result.passed and board.get("mismatches") == 0
    if not passed and report["mismatches"] is None:
        report["error"] = result.describe()
    return passed, report
