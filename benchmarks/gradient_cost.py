"""Cost of one gradient: time per training sample and peak memory, BPTT vs RHEL (issue 2).

Three ways to get dL/dθ for the on-board model (linear HRU → mean pool → random linear head →
softmax cross-entropy), P = 64 oscillators, N = 8 inputs, at L ∈ {1k, 4k, 16k, 50k}:

- ``bptt_float``: float64 reverse-mode autodiff through ``hru_float.trajectory`` (one jit).
- ``rhel_float``: float64 ``hru_float.rhel``: forward → ȳ → nudge (dL/dȳ)/L → echo pair (one jit).
- ``rhel_fixed``: the bit-exact integer path as the host drives a board: ``hru_fixed.forward``
  → ȳ on the host → dL/dȳ → ``quantize_nudge`` → ``hru_fixed.echo`` → ``gradients``.

All three use the same parameters and inputs (the float paths use the dequantised integers).

Time: each method is compiled ahead of time (compile seconds reported separately), run once to
warm up, then the methods are run in rotating order, at least ``--repeats`` rounds and more
(up to ``--max-repeats``) until each has ``--min-time`` seconds of runs; the table gives the
median (and min). The machines are shared and noisy: compare medians from one run only.

Memory: every (method, L) runs in fresh child processes (``--memory-repeats``, median). A child
compiles, resets its peak RSS (VmHWM, /proc/self/clear_refs), computes the gradient twice and
reports the peak RSS of that stage and its growth over the RSS before it ("run"). The same
method at a tiny L (``--baseline-length``) gives the JAX runtime/compiler baseline, subtracted
for "RSS-base". ``ru_maxrss`` is not used: Linux carries it over fork + exec, so every child
would start at the parent's peak. XLA's own buffer accounting of the compiled programs
(arguments + outputs + temporaries) is reported next to it: it is exact and shows where any
O(L) memory comes from (the summary gives the temporaries in units of one (L, P) array).

Run: ``python -m benchmarks.gradient_cost`` (or ``make bench``); ``--lengths 256,1024
--repeats 2 --min-time 0 --memory-repeats 1`` for a quick run; ``--out`` for the JSON path.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import echoboard.golden_model  # noqa: F401  (enables x64 before jax is used)
from benchmarks import save_result
import jax
import jax.numpy as jnp

from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import hru_float as hf
from echoboard.golden_model.formats import FixedFormat

METHODS = ("bptt_float", "rhel_float", "rhel_fixed")
DEFAULT_LENGTHS = (1000, 4000, 16000, 50000)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gradient_cost.json"
P_DEFAULT, N_DEFAULT, CLASSES = 64, 8, 4


# ----------------------------------------------------------------------------------------------
# The problem: parameters that stay in range for the fixed-point format over 50k steps
# ----------------------------------------------------------------------------------------------


@dataclass
class Problem:
    length: int
    fmt: FixedFormat
    q: hx.LinearParamsInt  # integer parameters
    params: dict  # the float values they represent exactly
    u_int: jax.Array | None  # (L, N) integer inputs (fixed path)
    u: jax.Array | None  # (L, N) the float values they represent (float paths)
    head_w: jax.Array  # (C, P)
    head_b: jax.Array  # (C,)
    target: int


def make_problem(length: int, p: int = P_DEFAULT, n: int = N_DEFAULT, seed: int = 0,
                 fmt: FixedFormat | None = None, need: str = "both") -> Problem:
    """A ~ U(0.1, 1), δ = sigmoid(U(0, 1)), B ~ U(±1/√N)/2, inputs N(0, 1), all quantised.

    ``need``: "float", "fixed" or "both": which input arrays to keep (memory children keep
    only what their method reads).
    """
    fmt = fmt or FixedFormat()
    rng = np.random.default_rng(seed)
    raw = {
        "A": rng.uniform(0.1, 1.0, p),
        "B": rng.uniform(-1.0, 1.0, (p, n)) / np.sqrt(n) / 2.0,
        "delta": 1.0 / (1.0 + np.exp(-rng.uniform(0.0, 1.0, p))),
    }
    q = hx.quantize_linear_params(raw, fmt)
    head_w = jnp.asarray(rng.normal(size=(CLASSES, p)) / np.sqrt(p))
    head_b = jnp.asarray(rng.normal(size=CLASSES) * 0.1)
    target = int(rng.integers(CLASSES))
    u_int = hx.quantize_inputs(np.random.default_rng(seed + 1).normal(size=(length, n)), fmt)
    u = jnp.asarray(np.asarray(u_int) / 2.0 ** fmt.input_frac) if need in ("float", "both") else None
    if need == "float":
        u_int = None
    return Problem(length, fmt, q, hx.dequantize_linear_params(q, fmt), u_int, u, head_w, head_b, target)


def _cross_entropy(head_w, head_b, target, y_bar):
    logits = head_w @ y_bar + head_b
    return jax.nn.logsumexp(logits) - logits[target]


# ----------------------------------------------------------------------------------------------
# Runners: compile() ahead of time, then run() = one training sample's gradient, blocking
# ----------------------------------------------------------------------------------------------


def _memory_stats(compiled) -> dict:
    try:
        ma = compiled.memory_analysis()
    except Exception:  # pragma: no cover - backend without the analysis
        return {}
    if ma is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "peak_memory_in_bytes")
    return {k: int(getattr(ma, k)) for k in keys if hasattr(ma, k)}


class _Runner:
    name = ""

    def __init__(self, prob: Problem):
        self.prob = prob
        self.xla: dict[str, dict] = {}

    def compile(self) -> float:
        t0 = time.perf_counter()
        self._compile()
        return time.perf_counter() - t0

    def _compile(self):
        raise NotImplementedError

    def run(self) -> dict:
        raise NotImplementedError


class BpttFloat(_Runner):
    name = "bptt_float"

    def _compile(self):
        pr = self.prob
        y0 = jnp.zeros(pr.params["A"].shape[0])

        def grad_fn(params, u, w, b):
            loss = lambda ys: _cross_entropy(w, b, pr.target, ys.mean(axis=0))  # noqa: E731
            return hf.bptt(hf.LINEAR, params, u, y0, y0, loss)

        self._args = (pr.params, pr.u, pr.head_w, pr.head_b)
        self._fn = jax.jit(grad_fn).lower(*self._args).compile()
        self.xla["bptt"] = _memory_stats(self._fn)

    def run(self) -> dict:
        loss, grads = jax.block_until_ready(self._fn(*self._args))
        return {"loss": float(loss), "grads": {k: np.asarray(grads[k]) for k in ("A", "B", "delta")},
                "overflows": None}


class RhelFloat(_Runner):
    name = "rhel_float"

    def _compile(self):
        pr = self.prob
        y0 = jnp.zeros(pr.params["A"].shape[0])
        eps = pr.fmt.epsilon

        def grad_fn(params, u, w, b):
            length = u.shape[0]
            nudge = lambda y, z, pos_sum: jax.grad(  # noqa: E731
                lambda yb: _cross_entropy(w, b, pr.target, yb))(pos_sum / length) / length
            grads, _ = hf.rhel(hf.LINEAR, params, u, y0, y0, nudge, eps)
            return grads

        self._args = (pr.params, pr.u, pr.head_w, pr.head_b)
        self._fn = jax.jit(grad_fn).lower(*self._args).compile()
        self.xla["rhel"] = _memory_stats(self._fn)

    def run(self) -> dict:
        grads = jax.block_until_ready(self._fn(*self._args))
        return {"loss": None, "grads": {k: np.asarray(grads[k]) for k in ("A", "B", "delta")},
                "overflows": None}


class RhelFixed(_Runner):
    """The board's work (integer forward, integer echo pair) plus the host's (head, nudge, scaling)."""

    name = "rhel_fixed"

    def _compile(self):
        pr, fmt = self.prob, self.prob.fmt
        zi = jnp.zeros(pr.q.A.shape[0], jnp.int64)
        self._zi = zi
        self._fwd = hx.forward.lower(pr.q, pr.u_int, zi, zi, fmt).compile()
        nudge0 = jnp.zeros(pr.q.A.shape[0], jnp.int64)
        self._echo = hx.echo.lower(pr.q, pr.u_int, zi, zi, nudge0, fmt).compile()
        head_grad = jax.value_and_grad(lambda yb, w, b: _cross_entropy(w, b, pr.target, yb))
        self._head = jax.jit(head_grad).lower(jnp.zeros(pr.q.A.shape[0]), pr.head_w, pr.head_b).compile()
        self.xla["forward"] = _memory_stats(self._fwd)
        self.xla["echo"] = _memory_stats(self._echo)

    def run(self) -> dict:
        pr, fmt = self.prob, self.prob.fmt
        fr = self._fwd(pr.q, pr.u_int, self._zi, self._zi)
        y_bar = jnp.asarray(np.asarray(fr.pos_sum) / 2.0 ** fmt.state_frac / pr.length)
        loss, e = self._head(y_bar, pr.head_w, pr.head_b)
        nudge = hx.quantize_nudge(np.asarray(e) / pr.length, fmt)
        er = jax.block_until_ready(self._echo(pr.q, pr.u_int, fr.y, fr.z, nudge))
        grads = hx.gradients(pr.q, er.acc_a, er.acc_b, fmt)
        overflows = {"forward": int(fr.overflows), "echo_plus": int(er.overflows[0]),
                     "echo_minus": int(er.overflows[1]), "gradient": int(er.overflows[2])}
        return {"loss": float(loss), "grads": grads, "overflows": overflows}


RUNNERS = {cls.name: cls for cls in (BpttFloat, RhelFloat, RhelFixed)}


def _cosine(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------------------------
# Time: in this process, methods interleaved
# ----------------------------------------------------------------------------------------------


def time_length(length: int, methods, repeats: int, p: int, n: int, seed: int,
                min_time: float = 0.0, max_repeats: int = 0) -> dict:
    """Compile, warm up, then run the methods in rotating order: at least ``repeats`` rounds, more
    (up to ``max_repeats``) until every method has ``min_time`` seconds of timed runs."""
    prob = make_problem(length, p, n, seed)
    runners = {m: RUNNERS[m](prob) for m in methods}
    out = {m: {"compile_s": runners[m].compile()} for m in methods}
    results = {}
    for m in methods:  # warm-up: first execution, not timed into the median
        t0 = time.perf_counter()
        results[m] = runners[m].run()
        out[m]["first_run_s"] = time.perf_counter() - t0
        out[m]["samples_s"] = []
    r = 0
    while r < repeats or (r < max_repeats and min(sum(out[m]["samples_s"]) for m in methods) < min_time):
        order = list(methods[r % len(methods):]) + list(methods[:r % len(methods)])
        for m in order:
            t0 = time.perf_counter()
            runners[m].run()
            out[m]["samples_s"].append(time.perf_counter() - t0)
        r += 1
    for m in methods:
        s = out[m]["samples_s"]
        out[m]["median_s"] = statistics.median(s)
        out[m]["min_s"] = min(s)
        out[m]["us_per_step"] = 1e6 * out[m]["median_s"] / length
        out[m]["xla_bytes"] = runners[m].xla
        out[m]["overflows"] = results[m]["overflows"]
        if "bptt_float" in results and m != "bptt_float":
            ref = results["bptt_float"]["grads"]
            out[m]["cosine_vs_bptt"] = {k: _cosine(ref[k], v) for k, v in results[m]["grads"].items()}
            out[m]["norm_ratio_vs_bptt"] = {
                k: float(np.linalg.norm(v) / np.linalg.norm(ref[k])) for k, v in results[m]["grads"].items()}
    return out


# ----------------------------------------------------------------------------------------------
# Memory: one fresh child process per (method, L)
# ----------------------------------------------------------------------------------------------


def _maxrss_bytes() -> int:
    """Peak resident set size of this process, in bytes.

    On Linux this is VmHWM from /proc/self/status, the high-water mark of this process's own
    address space. ``getrusage(RUSAGE_SELF).ru_maxrss`` is not usable in a child: Linux carries
    it over fork + exec, so every child would start at the parent's peak (the whole benchmark
    process, ~340 MB) and small runs would all read the same number. ``_ru_maxrss_bytes`` is
    recorded next to it for reference.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _ru_maxrss_bytes()


def _ru_maxrss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_main(method: str, length: int, p: int, n: int, seed: int) -> dict:
    """What a memory child does: set up, compile, run twice; peak RSS after each stage.

    ``maxrss_bytes`` is cumulative (it includes the compiler's peak). For the run itself the
    peak is reset after compiling, so ``run_peak_bytes`` is the highest RSS while the gradient
    is computed (runtime, compiled programs and the data included) and ``run_transient_bytes``
    is what the gradient computation allocates on top of what was resident before it.
    """
    rss = {"after_import": _maxrss_bytes()}
    prob = make_problem(length, p, n, seed, need="fixed" if method == "rhel_fixed" else "float")
    rss["after_setup"] = _maxrss_bytes()
    runner = RUNNERS[method](prob)
    runner.compile()
    rss["after_compile"] = _maxrss_bytes()
    gc.collect()
    reset = _reset_peak_rss()
    before = _proc_status("VmRSS")
    runner.run()
    runner.run()
    rss["after_run"] = _maxrss_bytes()
    out = {"method": method, "length": length, "maxrss_bytes": rss, "ru_maxrss_bytes": _ru_maxrss_bytes(),
           "peak_reset_before_run": reset, "rss_before_run_bytes": before, "xla_bytes": runner.xla}
    if reset and before is not None:
        out["run_peak_bytes"] = rss["after_run"]
        out["run_transient_bytes"] = rss["after_run"] - before
    return out


def measure_memory_median(method: str, length: int, p: int, n: int, seed: int, repeats: int) -> dict:
    """``repeats`` fresh children; the RSS figures are their medians (allocator and compiler noise
    moves a single child's RSS by several MiB), every child's raw numbers are kept."""
    kids = [measure_memory(method, length, p, n, seed) for _ in range(max(1, repeats))]
    out = dict(kids[0])
    out["maxrss_bytes"] = {k: int(statistics.median(c["maxrss_bytes"][k] for c in kids))
                           for k in kids[0]["maxrss_bytes"]}
    for k in ("run_peak_bytes", "run_transient_bytes", "rss_before_run_bytes"):
        if all(c.get(k) is not None for c in kids):
            out[k] = int(statistics.median(c[k] for c in kids))
    out["children"] = [{k: c.get(k) for k in ("maxrss_bytes", "rss_before_run_bytes", "run_peak_bytes",
                                                 "run_transient_bytes")} for c in kids]
    return out


def _xla_total(xla: dict) -> int:
    """Largest compiled program's arguments + outputs + temporaries (the fixed path runs two)."""
    totals = [d.get("argument_size_in_bytes", 0) + d.get("output_size_in_bytes", 0)
              + d.get("temp_size_in_bytes", 0) for d in xla.values()]
    return max(totals) if totals else 0


def measure_memory(method: str, length: int, p: int, n: int, seed: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.gradient_cost", "--child", method, str(length),
           "--p", str(p), "--n", str(n), "--seed", str(seed)]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {method} L={length} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _mb(b) -> str:
    return "—" if b is None else f"{b / 2**20:8.1f}"


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def run(lengths, methods, repeats: int, p: int, n: int, seed: int, memory: bool,
        baseline_length: int, min_time: float = 0.0, max_repeats: int = 0, memory_repeats: int = 1,
        log=print) -> dict:
    fmt = FixedFormat()
    result = {
        "benchmark": "gradient_cost",
        "description": "time per training sample and peak memory of one gradient: "
                       "linear HRU -> mean pool -> random linear head -> softmax cross-entropy",
        "config": {"P": p, "N": n, "classes": CLASSES, "lengths": list(lengths), "methods": list(methods),
                   "repeats": repeats, "min_time_s": min_time, "max_repeats": max_repeats, "seed": seed,
                   "baseline_length": baseline_length, "memory_repeats": memory_repeats,
                   "epsilon_float": fmt.epsilon, "format": fmt.as_dict(),
                   "params": "A~U(0.1,1), delta=sigmoid(U(0,1)), B~U(+-1/sqrt(N))/2, u~N(0,1), quantised"},
        "machine": {"python": platform.python_version(), "jax": jax.__version__,
                    "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "processor": platform.processor()},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": _loadavg(),
        "timing": {}, "memory": {},
    }
    for length in lengths:
        log(f"[gradient_cost] timing L={length} ...", flush=True)
        result["timing"][str(length)] = time_length(length, methods, repeats, p, n, seed, min_time, max_repeats)
    if memory:
        for m in methods:
            log(f"[gradient_cost] memory {m}: baseline L={baseline_length} ...", flush=True)
            base = measure_memory_median(m, baseline_length, p, n, seed, memory_repeats)
            result["memory"].setdefault(m, {})["baseline"] = base
            for length in lengths:
                log(f"[gradient_cost] memory {m}: L={length} ...", flush=True)
                c = measure_memory_median(m, length, p, n, seed, memory_repeats)
                # headline: peak RSS while computing the gradient, minus the same at the baseline L
                # (falls back to the cumulative peak where the peak cannot be reset)
                key = "run_peak_bytes" if "run_peak_bytes" in c and "run_peak_bytes" in base else None
                c["peak_rss_bytes"] = c[key] if key else c["maxrss_bytes"]["after_run"]
                base_peak = base[key] if key else base["maxrss_bytes"]["after_run"]
                c["peak_rss_metric"] = "run_peak (VmHWM reset after compile)" if key else "cumulative VmHWM"
                c["peak_rss_over_baseline_bytes"] = c["peak_rss_bytes"] - base_peak
                c["xla_total_bytes"] = _xla_total(c["xla_bytes"])
                # sizes to read the XLA buffers against: one (L, P) and one (L, N) 8-byte array
                c["reference_bytes"] = {"L*P*8": length * p * 8, "L*N*8": length * n * 8}
                result["memory"][m][str(length)] = c
    result["summary"] = _summary(result, lengths, methods)
    result["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["loadavg_end"] = _loadavg()
    return result


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover
        return None


def _summary(result, lengths, methods) -> dict:
    mem = result["memory"]
    s = {}
    if not mem or not lengths:
        return s
    lo, hi = str(min(lengths)), str(max(lengths))
    for m in methods:
        if m in mem:
            s[f"{m}_rss_growth_bytes_L{lo}_to_L{hi}"] = (mem[m][hi]["peak_rss_over_baseline_bytes"]
                                                         - mem[m][lo]["peak_rss_over_baseline_bytes"])
    for m in methods:  # where O(L) memory comes from: XLA temporaries in units of one (L, P) array
        if m in mem:
            temp = sum(d.get("temp_size_in_bytes", 0) for d in mem[m][hi]["xla_bytes"].values())
            s[f"{m}_xla_temp_in_LxPx8_arrays_L{hi}"] = temp / mem[m][hi]["reference_bytes"]["L*P*8"]
    if "bptt_float" in mem:
        b = mem["bptt_float"][hi]
        for r in ("rhel_float", "rhel_fixed"):
            if r in mem:
                x = mem[r][hi]
                s[f"bptt_over_{r}_rss_over_baseline_L{hi}"] = _ratio(b["peak_rss_over_baseline_bytes"],
                                                                    x["peak_rss_over_baseline_bytes"])
                s[f"bptt_over_{r}_rss_total_L{hi}"] = _ratio(b["peak_rss_bytes"], x["peak_rss_bytes"])
                s[f"bptt_over_{r}_run_transient_L{hi}"] = _ratio(b.get("run_transient_bytes"),
                                                                x.get("run_transient_bytes"))
                s[f"bptt_over_{r}_xla_buffers_L{hi}"] = _ratio(b["xla_total_bytes"], x["xla_total_bytes"])
    return s


def format_table(result) -> str:
    cfg = result["config"]
    lines = [f"gradient cost per training sample (P={cfg['P']}, N={cfg['N']}, median of >= {cfg['repeats']} runs, "
             f"{result['machine']['backend']}, {result['machine']['cpu_count']} CPUs)",
             f"{'L':>6} {'method':<11} {'runs':>4} {'ms/sample':>10} {'min ms':>8} {'us/step':>8} {'compile s':>9} "
             f"{'RSS MB':>8} {'RSS-base MB':>11} {'run MB':>8} {'XLA MB':>8} {'ovf':>5} {'cos A/B/δ vs BPTT':>24}"]
    for length in cfg["lengths"]:
        for m in cfg["methods"]:
            t = result["timing"][str(length)][m]
            mm = result["memory"].get(m, {}).get(str(length))
            ovf = "—" if t["overflows"] is None else str(sum(t["overflows"].values()))
            cos = t.get("cosine_vs_bptt")
            cos_s = "—" if not cos else "/".join(f"{cos[k]:.6f}" for k in ("A", "B", "delta") if k in cos)
            lines.append(
                f"{length:>6} {m:<11} {len(t['samples_s']):>4} {1e3 * t['median_s']:>10.2f} {1e3 * t['min_s']:>8.2f} "
                f"{t['us_per_step']:>8.2f} {t['compile_s']:>9.2f} "
                f"{_mb(mm and mm['peak_rss_bytes']):>8} {_mb(mm and mm['peak_rss_over_baseline_bytes']):>11} "
                f"{_mb(mm and mm.get('run_transient_bytes')):>8} "
                f"{_mb(mm and mm['xla_total_bytes']):>8} {ovf:>5} {cos_s:>24}")
    if result["memory"]:
        def base_peak(b):
            return b.get("run_peak_bytes", b["maxrss_bytes"]["after_run"])
        lines.append(f"RSS = peak RSS of a fresh process while computing the gradient; RSS-base = minus the "
                     f"same method at L={cfg['baseline_length']} (" + ", ".join(
                         f"{m} {_mb(base_peak(result['memory'][m]['baseline'])).strip()} MB"
                         for m in cfg["methods"] if m in result["memory"]) + "); run = RSS growth during the "
                     "gradient itself; XLA = compiled buffers (args + outputs + temporaries); MB = MiB")
    for k, v in result.get("summary", {}).items():
        if "_over_" in k or "_in_LxPx8_" in k:
            lines.append(f"{k}: " + ("—" if v is None else f"{v:.2f}"))
        else:
            lines.append(f"{k}: {_mb(v).strip()} MB")
    return "\n".join(lines)


def _int_list(s: str):
    return [int(float(x)) for x in s.split(",") if x.strip()]


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gradient_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=_int_list, default=list(DEFAULT_LENGTHS),
                    help="comma-separated sequence lengths (default 1000,4000,16000,50000)")
    ap.add_argument("--repeats", type=int, default=7,
                    help="at least this many timed runs per method and length (median reported)")
    ap.add_argument("--min-time", type=float, default=3.0,
                    help="keep repeating until every method has this many seconds of timed runs ...")
    ap.add_argument("--max-repeats", type=int, default=200, help="... but at most this many runs")
    ap.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=list(METHODS),
                    help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory measurement")
    ap.add_argument("--memory-repeats", type=int, default=3,
                    help="fresh child processes per (method, L); the RSS figures are their medians")
    ap.add_argument("--baseline-length", type=int, default=16, help="L of the memory baseline child")
    ap.add_argument("--p", type=int, default=P_DEFAULT)
    ap.add_argument("--n", type=int, default=N_DEFAULT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "L"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(args.child[0], int(args.child[1]), args.p, args.n, args.seed)), flush=True)
        return None
    bad = [m for m in args.methods if m not in RUNNERS]
    if bad or not args.methods:
        ap.error(f"unknown methods {bad}; choose from {','.join(METHODS)}")
    if args.repeats < 1 or args.min_time < 0 or not args.lengths or min(args.lengths) < 2:
        ap.error("need --repeats >= 1 and lengths >= 2")
    result = run(args.lengths, args.methods, args.repeats, args.p, args.n, args.seed,
                 memory=not args.no_memory, baseline_length=args.baseline_length,
                 min_time=args.min_time, max_repeats=max(args.max_repeats, args.repeats),
                 memory_repeats=args.memory_repeats)
    print(format_table(result))
    save_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
