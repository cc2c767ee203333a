"""Learning a long-range task: the generated DelayedRecall-<L> set with a 2-block HSSM (issue 10).

The label is one of 4 symbols shown in the first 5 % of the sequence (chance 25 %), the rest is
noise (host.datasets). Each run is ``echoboard train --dataset DelayedRecall-L --blocks 2
--hidden H --oscillators P --algo A --target inprocess --epochs E`` in this process; the JSON
(benchmarks/results/long_range.json) keeps its test accuracy per epoch, wall time, overflow
count and the process's peak RSS (VmHWM; the data set itself is part of it).

Run: ``python -m benchmarks.long_range --lengths 1000,16000`` (``--algos rhel,bptt``); runs of other
lengths already in the JSON are kept.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from benchmarks import save_result
from benchmarks.gradient_cost import _maxrss_bytes
from echoboard.host.train import TrainConfig, train

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "long_range.json"
CHANCE = 0.25


def run_one(length: int, algo: str, epochs: int, hidden: int, oscillators: int, seed: int, delta_init: str,
            lr: float | None = None) -> dict:
    cfg = TrainConfig(dataset=f"DelayedRecall-{length}", blocks=2, hidden=hidden, oscillators=oscillators, algo=algo,
                      target="inprocess", epochs=epochs, seed=seed, delta_init=delta_init, lr=lr)
    # the learning rate spelled out (the default's, unless given): the command reproduces the run
    command = (f"echoboard train --dataset DelayedRecall-{length} --blocks 2 --hidden {hidden} --oscillators "
               f"{oscillators} --delta-init {delta_init} --lr {cfg.lr} --algo {algo} --target inprocess "
               f"--epochs {epochs} --seed {seed}")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        s = train(dataclasses.replace(cfg, out=out), progress=False)
        wall = time.perf_counter() - t0
    return {"length": length, "algo": algo, "command": command, "chance": CHANCE,
            "test_accuracy": s["test_accuracy"], "train_accuracy": s["train_accuracy"],
            "test_accuracy_per_epoch": [h["test_accuracy"] for h in s["history"]],
            "overflow_events": s["overflow_events"], "saturated": s["saturated"], "wall_s": wall,
            "peak_rss_bytes_so_far": _maxrss_bytes(), "params_sha256": s["params_sha256"]}


def format_table(result: dict) -> str:
    lines = ["| L | algorithm | test accuracy per epoch (%) | chance | overflow events | wall time | command |",
             "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        per_epoch = ", ".join(f"{100 * a:.1f}" for a in r["test_accuracy_per_epoch"])
        lines.append(f"| {r['length']:,} | {r['algo']} | {per_epoch} | {100 * r['chance']:.0f} | {r['overflow_events']} | "
                     f"{r['wall_s'] / 60:.1f} min | `{r['command']}` |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.long_range", description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 16000])
    ap.add_argument("--algos", type=lambda s: s.split(","), default=["rhel"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--oscillators", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=None, help="Adam's rate (default: train's for an HSSM)")
    ap.add_argument("--delta-init", default="log-uniform", help="hssm.DELTA_INITS (default log-uniform: the "
                    "paper's δ leaves no oscillator slow enough for the 64-step pulse of L = 16k)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--table", action="store_true", help="print README's table from --out and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(format_table(json.loads(args.out.read_text())))
        return None
    runs = []
    for length in args.lengths:
        for algo in args.algos:
            r = run_one(length, algo, args.epochs, args.hidden, args.oscillators, args.seed, args.delta_init, args.lr)
            print(f"[long_range] L = {length} {algo}: test accuracy {100 * r['test_accuracy']:.1f} % (chance 25 %), "
                  f"{r['wall_s'] / 60:.1f} min, overflow events {r['overflow_events']}", flush=True)
            runs.append(r)
    # runs of other (length, algo) already in --out are kept: one file, filled one length at a time
    kept = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    done = {(r["length"], r["algo"]) for r in runs}
    runs = sorted([r for r in kept if (r["length"], r["algo"]) not in done] + runs, key=lambda r: (r["length"], r["algo"]))
    result = {"benchmark": "long_range", "runs": runs, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
