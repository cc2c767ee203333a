"""Numerics reports: RHEL (float and fixed point) against float64 BPTT, and the format sweep.

Both reports use the on-board model's loss: mean of positions -> random linear head ->
softmax cross-entropy. The fixed-point run gets its nudge the way a board would: the host
reads the position sum, computes dL/dȳ in float and quantises (dL/dȳ)/L into state units.
The float references run on the DEQUANTISED parameters and inputs, i.e. on exactly the system
the integers represent, so the comparison measures the arithmetic, not the coefficient rounding.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from itertools import product

import jax
import jax.numpy as jnp
import numpy as np

from echoboard.golden_model import hru_block as hb
from echoboard.golden_model import hru_fixed, hru_float, hssm
from echoboard.golden_model import hru_fixed_nonlinear as nl
from echoboard.golden_model.formats import FixedFormat
from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat


def cosine(reference, estimate) -> float:
    a, b = np.ravel(np.asarray(reference, np.float64)), np.ravel(np.asarray(estimate, np.float64))
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float("nan")


def norm_ratio(reference, estimate) -> float:
    """‖estimate‖ / ‖reference‖ (1.0 is perfect)."""
    ref = np.linalg.norm(np.asarray(reference, np.float64))
    return float(np.linalg.norm(np.asarray(estimate, np.float64)) / ref) if ref > 0 else float("nan")


def classifier_loss(head, target: int):
    """Cross-entropy of the linear head on the mean position: a position-only (time-reversal invariant) loss."""

    def loss(y_mean):
        logits = head @ y_mean
        return jax.nn.logsumexp(logits) - logits[target]

    return loss


@dataclass
class Case:
    """One random, exactly representable problem: integer parameters/inputs and their float values."""

    hru: str
    q: tuple
    params: dict
    u_int: jax.Array
    u: jax.Array
    head: jax.Array
    target: int

    @property
    def length(self) -> int:
        return int(self.u.shape[0])


def _base(fmt) -> FixedFormat:
    """The shared word formats (the nonlinear format extends a FixedFormat)."""
    return fmt.base if isinstance(fmt, NonlinearFormat) else fmt


def _linear_init(rng, oscillators, inputs) -> dict:
    """Paper-like initialisation, with A >= 0.1.

    A is drawn from U(0.1, 1) rather than U(0, 1): an oscillator with A -> 0 is a free particle
    whose position under white-noise forcing grows like L^1.5 and leaves any fixed word width
    at long L (the float model reaches |y| ~ 1,200 at L = 16k). δ = sigmoid(U(0, 1)) and
    B ~ U(±1/√N)/2 keep |y| below ~300 at L = 16k for unit-variance inputs.
    """
    return {
        "A": rng.uniform(0.1, 1.0, oscillators),
        "B": rng.uniform(-1.0, 1.0, (oscillators, inputs)) / (2.0 * math.sqrt(inputs)),
        "delta": 1.0 / (1.0 + np.exp(-rng.uniform(0.0, 1.0, oscillators))),
    }


def _nonlinear_init(rng, oscillators, inputs) -> dict:
    """rhel-algorithm.md §3.3's initialisation with σ(c) stored directly and a small per-oscillator δ."""
    return {
        "W": rng.uniform(0.5, 1.0, oscillators),
        "b": rng.uniform(-0.5, 0.5, oscillators),
        "sigma_c": rng.uniform(0.5, 0.73, oscillators),
        "alpha": rng.uniform(0.1, 1.0, oscillators),
        "B": rng.uniform(-1.0, 1.0, (oscillators, inputs)) / math.sqrt(inputs),
        "delta": rng.uniform(0.05, 0.2, oscillators),
    }


# per HRU: (initialisation, quantise, dequantise, integer module, accumulators -> gradients)
_FIXED = {
    "linear": (_linear_init, hru_fixed.quantize_linear_params, hru_fixed.dequantize_linear_params, hru_fixed,
               lambda q, ech, fmt: hru_fixed.gradients(q, ech.acc_a, ech.acc_b, fmt)),
    "nonlinear": (_nonlinear_init, nl.quantize_nonlinear_params, nl.dequantize_nonlinear_params, nl,
                  lambda q, ech, fmt: nl.gradients(q, ech.acc, fmt)),
}


def make_case(hru: str, oscillators: int, inputs: int, length: int, seed: int, fmt) -> Case:
    """Random parameters (quantised), unit-variance inputs clipped to ±4, a random 4-class head."""
    init, quantize_params, dequantize_params, _, _ = _FIXED[hru]
    rng = np.random.default_rng(seed)
    q = quantize_params(init(rng, oscillators, inputs), fmt)
    base = _base(fmt)
    u_int = hru_fixed.quantize_inputs(np.clip(rng.normal(size=(length, inputs)), -4.0, 4.0), base)
    head = jnp.asarray(rng.normal(size=(4, oscillators)))
    return Case(hru, q, dequantize_params(q, fmt), u_int, jnp.asarray(np.asarray(u_int) / 2.0 ** base.input_frac),
                head, int(rng.integers(4)))


def bptt_gradients(case: Case) -> dict:
    """Float64 BPTT (autodiff through the whole trajectory) of the case's loss."""
    zeros = jnp.zeros(case.params["B"].shape[0])
    loss = classifier_loss(case.head, case.target)
    _, grads = hru_float.bptt(hru_float.HRUS[case.hru], case.params, case.u, zeros, zeros,
                              lambda ys: loss(ys.mean(axis=0)))
    return grads


def rhel_float_gradients(case: Case, epsilon: float) -> dict:
    """Float64 RHEL with the board's nudge: (dL/dȳ)/L at every step, from the forward pass's Σy."""
    zeros = jnp.zeros(case.params["B"].shape[0])
    loss = classifier_loss(case.head, case.target)
    mean_nudge = lambda y, z, pos_sum: jax.grad(loss)(pos_sum / case.length) / case.length
    grads, _ = hru_float.rhel(hru_float.HRUS[case.hru], case.params, case.u, zeros, zeros, mean_nudge, epsilon)
    return grads


def fixed_gradients(case: Case, fmt) -> tuple[dict, int]:
    """Fixed-point RHEL gradients as a board computes them; returns (grads, overflow events)."""
    *_, module, to_gradients = _FIXED[case.hru]
    base = _base(fmt)
    zeros = jnp.zeros(case.q.B.shape[0], jnp.int64)
    fwd = module.forward(case.q, case.u_int, zeros, zeros, fmt)
    y_mean = np.asarray(fwd.pos_sum, np.float64) / 2.0 ** base.state_frac / case.length
    e = jax.grad(classifier_loss(case.head, case.target))(jnp.asarray(y_mean))
    nudge = hru_fixed.quantize_nudge(np.asarray(e) / case.length, base)
    ech = module.echo(case.q, case.u_int, fwd.y, fwd.z, nudge, fmt)
    overflows = int(fwd.overflows) + int(np.sum(ech.overflows))
    return to_gradients(case.q, ech, fmt), overflows


def echo_error_lsb(case: Case, fmt, seed: int) -> int:
    """Largest |echo − initial| (in LSBs) after forward + ε = 0 echo from a random initial state."""
    return _echo_error(case.hru, case.q, case.u_int, fmt, seed)


def _echo_error(hru: str, q, u_int, fmt, seed: int) -> int:
    module = _FIXED[hru][3]
    rng = np.random.default_rng(seed + 1)
    p = q.B.shape[0]
    one = 1 << _base(fmt).state_frac
    y0 = jnp.asarray(rng.integers(-one, one, p))
    z0 = jnp.asarray(rng.integers(-one, one, p))
    fwd = module.forward(q, u_int, y0, z0, fmt)
    ech = module.echo(q, u_int, fwd.y, fwd.z, jnp.zeros(p, jnp.int64), fmt)
    return int(jnp.maximum(jnp.abs(ech.y - y0[None]).max(), jnp.abs(ech.z + z0[None]).max()))


def epsilon_log2(epsilon: float) -> int:
    """The exponent of a power-of-two ε (the board scales nudges by shifts)."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive number, got {epsilon}")
    exponent = math.log2(epsilon)
    if exponent != round(exponent):
        raise ValueError(f"epsilon must be a power of two for the fixed-point model (e.g. 0.125), got {epsilon}")
    return int(exponent)


def check_gradients(hru: str = "linear", length: int = 1024, oscillators: int = 16, inputs: int = 4,
                    epsilon: float = 0.125, seed: int = 0, fmt=None) -> dict:
    """The gradient report: reversibility, overflow events and per-parameter agreement with BPTT.

    ``fmt`` defaults to FixedFormat() (linear) or NonlinearFormat() (nonlinear); its ε is
    replaced by ``epsilon``, which must be a power of two, and its loss scale raised for
    ``length`` (formats.length_scale_log2).
    """
    if hru not in _FIXED:
        raise ValueError(f"unknown HRU {hru!r}; choose from {sorted(_FIXED)}")
    fmt = fmt or (FixedFormat() if hru == "linear" else NonlinearFormat())
    if isinstance(fmt, NonlinearFormat):
        fmt = dataclasses.replace(fmt, base=fmt.base.replace(epsilon_log2=epsilon_log2(epsilon)))
    else:
        fmt = fmt.replace(epsilon_log2=epsilon_log2(epsilon))
    fmt = fmt.for_length(length)  # the nudge's scale follows L (unchanged up to 2048 steps)
    case = make_case(hru, oscillators, inputs, length, seed, fmt)
    bptt, rhel = bptt_gradients(case), rhel_float_gradients(case, epsilon)
    fixed, overflows = fixed_gradients(case, fmt)
    error = echo_error_lsb(case, fmt, seed)
    params = {}
    for name in hru_float.HRUS[hru].param_names:
        entry = {"rhel_float_cos": cosine(bptt[name], rhel[name]),
                 "rhel_float_norm_ratio": norm_ratio(bptt[name], rhel[name])}
        if name in fixed:
            entry |= {"rhel_fixed_cos": cosine(bptt[name], fixed[name]),
                      "rhel_fixed_norm_ratio": norm_ratio(bptt[name], fixed[name])}
        else:  # δ is a fixed hyperparameter on the board: no accumulator for it
            entry |= {"rhel_fixed_cos": None, "rhel_fixed_norm_ratio": None}
        params[name] = entry
    return {"hru": hru, "length": length, "oscillators": oscillators, "inputs": inputs, "epsilon": epsilon,
            "nudge_scale": fmt.nudge_scale, "seed": seed, "reversible": error == 0, "echo_max_error_lsb": error,
            "overflow_events": overflows, "params": params}


class _RecordingBlocks(hssm.FixedBlocks):
    """The integer blocks, keeping each block's integer input sequence (lane 0) for the ε = 0 self-test."""

    def forward(self, k, u, live):
        ys, ctx = super().forward(k, u, live)
        self.inputs[k] = jnp.asarray(ctx[0][0])
        return ys, ctx


def check_stack_gradients(hru: str = "linear", blocks: int = 2, hidden: int = 16, length: int = 1024,
                          oscillators: int = 16, inputs: int = 4, epsilon: float = 0.125, seed: int = 0) -> dict:
    """The gradient report of an HSSM of ``blocks`` blocks: every trained tensor of the stack (dotted
    names) by float RHEL and fixed-point RHEL against float64 BPTT (autodiff through the whole
    stack) on one random sample, its HRU coefficients quantised (the same quantised system for all).

    Float RHEL uses ``epsilon`` itself; the fixed point uses it with the format's loss scale
    raised for ``length`` (formats.length_scale_log2). ``reversible`` / ``echo_max_error_lsb``:
    every block's ε = 0 echo from a random state over that block's own integer input sequence.
    """
    fmt = hb.default_format(hru)
    exponent = epsilon_log2(epsilon)
    fmt = (dataclasses.replace(fmt, base=fmt.base.replace(epsilon_log2=exponent)) if isinstance(fmt, NonlinearFormat)
           else fmt.replace(epsilon_log2=exponent)).for_length(length)
    arch = hssm.Architecture(inputs, 4, blocks, hidden, oscillators, hru)
    rng = np.random.default_rng(seed)
    params, _ = hssm.project(hssm.init_params(rng, arch), arch, fmt)
    for k in range(blocks):  # the exactly representable system the integers run
        names = [f"block{k}.{n}" for n in hb.PARAM_NAMES[hru]]
        bq = hb.quantize_block_params(hru, {n.split(".", 1)[1]: params[n] for n in names}, fmt)
        params |= {f"block{k}.{n}": np.asarray(v) for n, v in hb.dequantize_block_params(hru, bq, fmt).items()}
    x = np.clip(rng.normal(size=(1, length, inputs)), -4.0, 4.0)
    lengths, labels = np.array([length]), np.array([int(rng.integers(4))])
    params = hssm.calibrate(params, x, lengths, arch)
    bptt = hssm.batch_gradients(params, x, lengths, labels, arch, "bptt", fmt).grads
    rhel = hssm.batch_gradients(params, x, lengths, labels, arch, "rhel-float", fmt,
                                hssm.FloatBlocks(arch, epsilon)).grads
    recorder = _RecordingBlocks(arch, fmt)
    recorder.inputs = {}
    fixed_result = hssm.batch_gradients(params, x, lengths, labels, arch, "rhel", fmt, recorder)
    errors = [_echo_error(hru, recorder.bq[k].q, recorder.inputs[k], fmt, seed + k) for k in range(blocks)]
    table = {name: {"rhel_float_cos": cosine(bptt[name], rhel[name]),
                    "rhel_float_norm_ratio": norm_ratio(bptt[name], rhel[name]),
                    "rhel_fixed_cos": cosine(bptt[name], fixed_result.grads[name]),
                    "rhel_fixed_norm_ratio": norm_ratio(bptt[name], fixed_result.grads[name])}
             for name in arch.trained()}
    return {"hru": hru, "blocks": blocks, "hidden": hidden, "length": length, "oscillators": oscillators,
            "inputs": inputs, "epsilon": epsilon, "nudge_scale": fmt.nudge_scale, "seed": seed,
            "reversible": max(errors) == 0, "echo_max_error_lsb": max(errors), "echo_error_lsb_per_block": errors,
            "overflow_events": fixed_result.overflow_events, "saturated": fixed_result.clipped, "params": table}


def format_report_table(report: dict) -> str:
    fmt_num = lambda v: "   —    " if v is None else f"{v:.6f}"
    width = max(8, *(len(name) for name in report["params"]))
    stack = f"HSSM of {report['blocks']} blocks, H = {report['hidden']}, " if "blocks" in report else ""
    lines = [f"{stack}HRU {report['hru']}, L = {report['length']}, P = {report['oscillators']}, N = {report['inputs']}, "
             f"ε = {report['epsilon']}, seed {report['seed']}",
             f"reversible (ε = 0 echo returns the initial state): {report['reversible']} "
             f"(max error {report['echo_max_error_lsb']} LSB); overflow events: {report['overflow_events']}",
             "",
             f"{'param':<{width}} {'float cos':>10} {'float ratio':>12} {'fixed cos':>10} {'fixed ratio':>12}"]
    for name, e in report["params"].items():
        lines.append(f"{name:<{width}} {fmt_num(e['rhel_float_cos']):>10} {fmt_num(e['rhel_float_norm_ratio']):>12} "
                     f"{fmt_num(e['rhel_fixed_cos']):>10} {fmt_num(e['rhel_fixed_norm_ratio']):>12}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Format sweep: widths x epsilon x loss scale, on the linear HRU


SWEEP_GRID = {
    "state_frac": (16, 18, 20, 22, 24),
    "coef_width": (16, 18),
    "epsilon_log2": (-6, -3, 0),
    "loss_scale_log2": (0, 4, 8, 12),
}


def _coef_format(base: FixedFormat, coef_width: int) -> FixedFormat:
    """Keep the coefficients' integer bits fixed (A < 8, |B| < 4, δ < 2) while the width changes."""
    return base.replace(coef_width=coef_width, coef_a_frac=coef_width - 4,
                        coef_b_frac=coef_width - 3, delta_frac=coef_width - 2)


def sweep_formats(length: int = 4096, oscillators: int = 32, inputs: int = 8, seeds=(0, 1),
                  grid: dict | None = None, progress=None) -> list[dict]:
    """Fixed-point RHEL vs float64 BPTT for every format in ``grid``; worst case over ``seeds``."""
    grid = grid or SWEEP_GRID
    rows = []
    keys = list(grid)
    for values in product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values))
        fmt = _coef_format(FixedFormat(), setting["coef_width"]).replace(
            state_frac=setting["state_frac"], epsilon_log2=setting["epsilon_log2"],
            loss_scale_log2=setting["loss_scale_log2"])
        worst = {"A_cos": 1.0, "B_cos": 1.0, "A_ratio_err": 0.0, "B_ratio_err": 0.0, "overflow_events": 0}
        for seed in seeds:
            case = make_case("linear", oscillators, inputs, length, seed, fmt)
            bptt = _bptt_cached(case, fmt, seed, length, oscillators, inputs)
            fixed, overflows = fixed_gradients(case, fmt)
            for name in ("A", "B"):
                worst[f"{name}_cos"] = min(worst[f"{name}_cos"], cosine(bptt[name], fixed[name]))
                worst[f"{name}_ratio_err"] = max(worst[f"{name}_ratio_err"], abs(norm_ratio(bptt[name], fixed[name]) - 1))
            worst["overflow_events"] += overflows
        rows.append(setting | worst)
        if progress:
            progress(rows[-1])
    return rows


_BPTT_CACHE: dict = {}


def _bptt_cached(case, fmt, seed, length, oscillators, inputs):
    """BPTT depends on the quantised coefficients only, not on the state format or ε: compute once per coefficient format."""
    key = (seed, length, oscillators, inputs, fmt.coef_width, fmt.input_frac)
    if key not in _BPTT_CACHE:
        _BPTT_CACHE[key] = bptt_gradients(case)
    return _BPTT_CACHE[key]


def sweep_table(rows: list[dict]) -> str:
    head = ("| state Q | coef bits | ε | loss scale | A cos | A ‖·‖ err | B cos | B ‖·‖ err | overflows |\n"
            "|---|---|---|---|---|---|---|---|---|")
    body = [f"| Q{32 - r['state_frac'] - 1}.{r['state_frac']} | {r['coef_width']} | 2^{r['epsilon_log2']} | "
            f"2^{r['loss_scale_log2']} | {r['A_cos']:.6f} | {100 * r['A_ratio_err']:.3f} % | {r['B_cos']:.6f} | "
            f"{100 * r['B_ratio_err']:.3f} % | {r['overflow_events']} |" for r in rows]
    return "\n".join([head, *body])


# ---------------------------------------------------------------------------------------------
# Nonlinear HRU, float: RHEL's finite-nudge bias is O(ε²)


def nonlinear_float_bias(epsilons, length: int = 1024, oscillators: int = 16, inputs: int = 4,
                         seed: int = 0) -> list[dict]:
    """Float64 nonlinear RHEL vs BPTT for each ε: per parameter (1 − cosine, norm ratio − 1)."""
    case = make_case("nonlinear", oscillators, inputs, length, seed, NonlinearFormat())
    bptt = bptt_gradients(case)
    rows = []
    for eps in epsilons:
        rhel = rhel_float_gradients(case, eps)
        rows.append({"epsilon": eps, **{
            name: {"one_minus_cos": 1.0 - cosine(bptt[name], rhel[name]),
                   "norm_ratio_error": norm_ratio(bptt[name], rhel[name]) - 1.0}
            for name in (*hru_float.NONLINEAR.param_names, "u")}})
    return rows
