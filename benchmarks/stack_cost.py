"""Cost of one HSSM gradient: time per training sample and peak memory of BPTT vs RHEL (issue 10).

One sample through the golden model's HSSM (echoboard.golden_model.hssm: encoder, K blocks of norm → linear
HRU → C/D read-out → GELU → GLU → skip, mean, head; default K = 2, H = 32, P = 32, N = 4) at
L ∈ {1k, 16k, 50k}, by

- ``bptt_float``: float64 autodiff through the whole stack (one jit over the sample);
- ``rhel_float``: block by block, float64 echo pairs (hssm.FloatBlocks);
- ``rhel_fixed``: block by block, the bit-exact integer blocks (hssm.FixedBlocks), the host's
  float64 feed-forward parts in between: what a host and one board compute;
- ``rhel_float_lockstep`` / ``rhel_fixed_lockstep``: all blocks one step at a time
  (echoboard.golden_model.hssm_lockstep), each block's forward states recomputed by an un-nudged retrace.

Block by block, every method keeps each block's input and output sequence, O(L·H) per block
(rhel-algorithm.md §2.7); BPTT also keeps what autodiff stores inside each HRU's scan. The
lockstep schedule keeps the input and O(K·(P + H)) numbers: its memory is flat in L.

Time: compiled and warmed up first, then ``--repeats`` runs in rotating order (median). Memory:
each (method, L) in a fresh child process; its peak RSS while computing the gradient (VmHWM reset
after the warm-up run, gradient_cost's helpers) and the same at ``--baseline-length`` steps,
subtracted. Run: ``python -m benchmarks.stack_cost`` (``--lengths 1000,4000 --repeats 1`` for a
quick one); ``--table`` prints README's table from the JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import echoboard.golden_model  # noqa: F401  (enables x64 before jax is used)
import jax
from benchmarks import save_result
from benchmarks.gradient_cost import _maxrss_bytes, _proc_status, _reset_peak_rss
from echoboard.golden_model import hru_block as hb
from echoboard.golden_model import hssm
from echoboard.golden_model.hssm_lockstep import LockstepBlocks
from echoboard.golden_model.report import cosine

#: method -> (algorithm, schedule): block by block (what one board does) or lockstep (hssm_lockstep)
METHODS = {"bptt_float": ("bptt", None), "rhel_float": ("rhel-float", "blocks"), "rhel_fixed": ("rhel", "blocks"),
           "rhel_float_lockstep": ("rhel-float", "lockstep"), "rhel_fixed_lockstep": ("rhel", "lockstep")}
DEFAULT_LENGTHS = (1000, 16000, 50000)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stack_cost.json"
# the paper's code on a 2-core CPU like ours (float32, batch 8, one LinHRU block, H = P = 64),
# from shared/reference/ecosystem-notes.md: peak memory at L = 16k
PAPER_CODE_L16K_PEAK_GB = {"bptt": 2.0, "rhel": 9.3}


def make_problem(length: int, blocks: int, hidden: int, oscillators: int, inputs: int, seed: int = 0):
    """(params, x (1, L, N), lengths, labels, arch, fmt): one random sample, the HRU coefficients
    quantised (echoboard.golden_model.report.check_stack_gradients does the same), norm statistics calibrated."""
    arch = hssm.Architecture(inputs, 4, blocks, hidden, oscillators, "linear")
    fmt = hb.default_format("linear").for_length(length)
    rng = np.random.default_rng(seed)
    params, _ = hssm.project(hssm.init_params(rng, arch), arch, fmt)
    for k in range(blocks):  # the exactly representable system the integers run (a coefficient's rounding
        # error shifts an oscillator's phase by ~1 rad over 16k steps: BPTT must see the same system)
        names = [f"block{k}.{n}" for n in hb.PARAM_NAMES["linear"]]
        bq = hb.quantize_block_params("linear", {n.split(".", 1)[1]: params[n] for n in names}, fmt)
        params |= {f"block{k}.{n}": np.asarray(v) for n, v in hb.dequantize_block_params("linear", bq, fmt).items()}
    x = np.clip(rng.normal(size=(1, length, inputs)), -4.0, 4.0)
    lengths, labels = np.array([length]), np.array([1])
    return hssm.calibrate(params, x, lengths, arch), x, lengths, labels, arch, fmt


def gradient(method: str, problem) -> hssm.BatchResult:
    params, x, lengths, labels, arch, fmt = problem
    algo, schedule = METHODS[method]
    blocks = LockstepBlocks(arch, algo, fmt) if schedule == "lockstep" else None
    return hssm.batch_gradients(params, x, lengths, labels, arch, algo, fmt, blocks=blocks)


def child_main(method: str, length: int, shape: dict) -> dict:
    """A fresh process: set up, warm up (compiles), reset the peak, compute the gradient twice."""
    problem = make_problem(length, **shape)
    gradient(method, problem)
    gc.collect()
    reset = _reset_peak_rss()
    before = _proc_status("VmRSS")
    r = gradient(method, problem)
    gradient(method, problem)
    peak = _maxrss_bytes()
    return {"method": method, "length": length, "peak_reset": reset, "rss_before_bytes": before,
            "run_peak_bytes": peak, "run_transient_bytes": None if before is None else peak - before,
            "overflow_events": r.overflow_events}


def measure_memory(method: str, length: int, shape: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.stack_cost", "--child", method, str(length),
           "--shape", json.dumps(shape)]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {method} L={length} failed:\n{proc.stderr[-4000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def time_length(length: int, methods, repeats: int, shape: dict) -> dict:
    problem = make_problem(length, **shape)
    out, grads = {}, {}
    for m in methods:
        t0 = time.perf_counter()
        grads[m] = gradient(m, problem)
        out[m] = {"first_run_s": time.perf_counter() - t0, "samples_s": []}
    for r in range(repeats):
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            t0 = time.perf_counter()
            gradient(m, problem)
            out[m]["samples_s"].append(time.perf_counter() - t0)
    for m in methods:
        out[m]["median_s"] = statistics.median(out[m]["samples_s"])
        out[m]["overflow_events"] = grads[m].overflow_events
        if m != "bptt_float" and "bptt_float" in grads:
            ref = grads["bptt_float"].grads
            cos = {k: cosine(ref[k], v) for k, v in grads[m].grads.items() if np.linalg.norm(ref[k]) > 0}
            out[m]["min_cosine_vs_bptt"] = min(cos.values())
            out[m]["min_cosine_param"] = min(cos, key=cos.get)
    return out


def run(lengths, methods, repeats: int, shape: dict, memory: bool, baseline_length: int, log=print) -> dict:
    result = {"benchmark": "stack_cost",
              "description": "time per training sample and peak memory of one HSSM gradient (one sample)",
              "config": {**shape, "lengths": list(lengths), "methods": list(methods), "repeats": repeats,
                         "baseline_length": baseline_length, "float_epsilon": hssm.FLOAT_EPSILON["linear"]},
              "paper_code_L16k_peak_GB": PAPER_CODE_L16K_PEAK_GB,
              "machine": {"python": platform.python_version(), "jax": jax.__version__, "cpu_count": os.cpu_count()},
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "timing": {}, "memory": {}}
    for length in lengths:
        log(f"[stack_cost] timing L={length} ...", flush=True)
        result["timing"][str(length)] = time_length(length, list(methods), repeats, shape)
    if memory:
        for m in methods:
            log(f"[stack_cost] memory {m} ...", flush=True)
            base = measure_memory(m, baseline_length, shape)
            result["memory"][m] = {"baseline": base}
            for length in lengths:
                c = measure_memory(m, length, shape)
                c["over_baseline_bytes"] = c["run_peak_bytes"] - base["run_peak_bytes"]
                result["memory"][m][str(length)] = c
    result["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def format_table(result: dict) -> str:
    """README's table: per L and method, ms per sample, peak RSS and its growth over the baseline."""
    cfg = result["config"]
    lines = [f"| L | method | ms / sample | peak RSS MiB | above L = {cfg['baseline_length']} MiB | "
             "growth while computing MiB | min cos vs BPTT |", "|---|---|---|---|---|---|---|"]
    for length in cfg["lengths"]:
        for m in cfg["methods"]:
            t = result["timing"][str(length)][m]
            mm = result["memory"].get(m, {}).get(str(length), {})
            mib = lambda b: "—" if b is None else f"{b / 2**20:,.0f}"  # noqa: E731
            cos = t.get("min_cosine_vs_bptt")
            lines.append(f"| {length:,} | {m} | {1e3 * t['median_s']:,.0f} | {mib(mm.get('run_peak_bytes'))} | "
                         f"{mib(mm.get('over_baseline_bytes'))} | {mib(mm.get('run_transient_bytes'))} | "
                         f"{'—' if cos is None else f'{cos:.6f}'} |")
    return "\n".join(lines)


def _int_list(s: str):
    return [int(float(x)) for x in s.split(",") if x.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stack_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=_int_list, default=list(DEFAULT_LENGTHS))
    ap.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=list(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--oscillators", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--baseline-length", type=int, default=16)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.table:
        print(format_table(json.loads(args.out.read_text())))
        return None
    if args.child:
        print(json.dumps(child_main(args.child[0], int(args.child[1]), json.loads(args.shape))), flush=True)
        return None
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; choose from {','.join(METHODS)}")
    shape = {"blocks": args.blocks, "hidden": args.hidden, "oscillators": args.oscillators, "inputs": args.inputs}
    result = run(args.lengths, args.methods, args.repeats, shape, not args.no_memory, args.baseline_length)
    print(format_table(result))
    save_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
