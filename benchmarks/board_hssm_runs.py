"""Full HSSM training runs with every HRU block on the simulated board: README's table (issue 11).

``make train``'s model (BasicMotions, 2 blocks, H = P = 16, fixed-point RHEL, 20 epochs) with linear and
with nonlinear blocks on ``--target sim`` (the Verilated board image through the wire protocol), each
beside the same run ``--target inprocess``: accuracy, wall time, link statistics and whether the two
ended with the same parameters (``params_sha256``).

Run: ``python -m benchmarks.board_hssm_runs`` (~25 min on 2 cores, the simulated boards built on first
use); ``--table`` prints README's table from the JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from benchmarks import save_result
from echoboard.host.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "board_hssm_runs.json"
#: make train's model (Makefile TRAIN_ARGS; tests/test_benchmarks_smoke.py keeps the two equal)
MODEL = {"dataset": "BasicMotions", "algo": "rhel", "blocks": 2, "hidden": 16, "oscillators": 16, "epochs": 20}


def run(hru: str, target: str, runs: Path, **overrides) -> dict:
    settings = {**MODEL, "hru": hru, "target": target, **overrides}
    cfg = TrainConfig(**settings, out=str(runs / "-".join(str(v) for v in (hru, target, *overrides.values()))))
    shutil.rmtree(cfg.out, ignore_errors=True)  # this benchmark's own run of an earlier call
    t0 = time.perf_counter()
    s = train(cfg, progress=False)
    link = s["link"]
    return {"command": f"echoboard train --dataset {cfg.dataset} --blocks {cfg.blocks} --hidden {cfg.hidden} "
                       f"--oscillators {cfg.oscillators} --epochs {cfg.epochs} --hru {hru} --target {target} "
                       f"--seed {cfg.seed}",
            "wall_s": time.perf_counter() - t0, "test_accuracy": s["test_accuracy"],
            "train_accuracy": s["train_accuracy"], "overflow_events": s["overflow_events"],
            "params_sha256": s["params_sha256"],
            "link": None if link is None else {k: link[k] for k in ("requests", "retries", "bytes_sent", "bytes_received",
                                                                     "efficiency")}}


SEED_EPOCHS, SEEDS = (20, 60), range(5)


def seeds_table(result: dict) -> str:
    lines = ["| HRU | epochs | test % in process, seeds 0–4 (= on the board) | mean |", "|---|---|---|---|"]
    for hru, by_epochs in result["seeds"].items():
        for epochs, runs in by_epochs.items():
            acc = [100 * r["test_accuracy"] for r in runs]
            lines.append(f"| {hru} | {epochs} | {', '.join(f'{a:.1f}' for a in acc)} | {sum(acc) / len(acc):.1f} |")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    lines = ["| HRU | target | test % | train % | wall min | requests | wire MB (sent / received) | link efficiency | "
             "retries | same parameters as inprocess |", "|---|---|---|---|---|---|---|---|---|---|"]
    for hru, targets in result["runs"].items():
        reference = targets["inprocess"]["params_sha256"]
        for target, r in targets.items():
            link = r["link"]
            cols = (["—"] * 4 if link is None else
                    [str(link["requests"]), f"{link['bytes_sent'] / 1e6:.1f} / {link['bytes_received'] / 1e6:.1f}",
                     f"{link['efficiency']:.3f}", str(link["retries"])])
            lines.append(f"| {hru} | `{target}` | {100 * r['test_accuracy']:.1f} | {100 * r['train_accuracy']:.1f} | "
                         f"{r['wall_s'] / 60:.1f} | {' | '.join(cols)} | {r['params_sha256'] == reference} |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.board_hssm_runs", description=__doc__.split("\n")[0])
    ap.add_argument("--hru", default="linear,nonlinear", help="comma-separated HRU kinds (default both)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "board_hssm", help="where the runs' outputs go")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--table", action="store_true", help="print README's tables of --out and exit")
    ap.add_argument("--seeds-only", action="store_true", help="only the in-process seeds; keep --out's board runs")
    args = ap.parse_args(argv)
    if args.table:
        saved = json.loads(args.out.read_text())
        print(format_table(saved) + "\n\n" + seeds_table(saved))
        return None
    kinds = args.hru.split(",")
    result = json.loads(args.out.read_text()) if args.seeds_only else {"model": MODEL, "runs": {}}
    for hru in [] if args.seeds_only else kinds:
        result["runs"][hru] = {target: run(hru, target, args.runs) for target in ("sim", "inprocess")}
    result["seeds"] = {hru: {str(epochs): [run(hru, "inprocess", args.runs, epochs=epochs, seed=seed) for seed in SEEDS]
                             for epochs in SEED_EPOCHS} for hru in kinds}
    print(format_table(result) + "\n\n" + seeds_table(result))
    save_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
