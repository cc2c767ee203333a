"""Training on several boards through Ray: samples/s with 1, 2 and 4 boards, and Amdahl's projection (issue 13).

The same RHEL training (host/train.py's epoch loop, BasicMotions by default) runs on B golden and
on B simulated boards (``--targets``): B = 1 through host.train.BoardTarget without Ray (what ``--boards 1`` runs),
then through host.multiboard's Ray actors for every B of ``--boards`` (one local Ray instance).
Per row: training samples/s over ``--epochs`` timed epochs after ``--warmup`` untimed ones, and
the time split into

- ``board_s``: inside the target's load/run/finish, less the host's head and nudge callbacks
  (the boards' work, their links, and with Ray the remote calls);
- ``host_s``: everything else, per minibatch: the head and nudges, Adam, projection and
  quantisation on the host — the serial part, which more boards do not shorten.

Projection (Amdahl): with the per-board rate and the host's per-minibatch cost of the one-board
Ray row, B boards train at ``samples / (host_s + board_s / B)``. On this 2-core machine
(shared with other jobs) the measured rows cannot follow it: the golden board model is Python in
each actor's process and a simulated board is a Verilator process, so every board needs a core
of its own, and the host needs one too; real boards (FPGAs behind serial links) compute off the
host and the actors only wait on their links, which is what the projection assumes.
All rows must end with the same parameters (``bit_identical``).

Run: ``python -m benchmarks.multiboard`` (about two minutes once the P = 8 image is built); ``--table`` prints the table of the
saved JSON (README's "Training on several boards") without running anything.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks import save_result
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.host.datasets import Split
from echoboard.host.train import TrainConfig, initial_state, load_training_data, make_model, open_target, params_sha256, train_epoch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "multiboard.json"
PROJECTED = (1, 2, 4, 8, 16, 32)


class _Timed:
    """A FixedTarget wrapper: seconds inside the target, less the host's on_forward callbacks."""

    def __init__(self, target):
        self.target, self.board_s, self.host_s = target, 0.0, 0.0

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.board_s += time.perf_counter() - t0

    def load(self, q):
        return self._timed(self.target.load, q)

    def finish(self):
        return self._timed(self.target.finish)

    def run(self, uq, live, on_forward):
        def timed_on_forward(lane, pos_sum):
            t0 = time.perf_counter()
            try:
                return on_forward(lane, pos_sum)
            finally:
                self.host_s += time.perf_counter() - t0

        before = self.host_s
        overflows = self._timed(self.target.run, uq, live, timed_on_forward)
        self.board_s -= self.host_s - before
        return overflows


def measure(cfg: TrainConfig, split: Split, data, warmup: int) -> dict:
    fmt, size = FixedFormat(), HRUSize()
    with ExitStack() as stack:
        net = make_model(cfg, data, fmt)
        t0 = time.perf_counter()
        _, target = open_target(cfg, net, size, data.n_inputs, stack)
        open_s = time.perf_counter() - t0
        params, adam, rng = initial_state(cfg, data, fmt)
        for _ in range(warmup):
            params, adam, _ = train_epoch(params, adam, rng, split, cfg, net, target)
        timed = _Timed(target)
        t0 = time.perf_counter()
        for _ in range(cfg.epochs):
            params, adam, _ = train_epoch(params, adam, rng, split, cfg, net, timed)
        seconds = time.perf_counter() - t0
    samples, minibatches = cfg.epochs * len(split), cfg.epochs * -(-len(split) // cfg.batch)
    host_s = seconds - timed.board_s
    return {"boards": cfg.boards or 1, "engine": "ray" if (cfg.boards or 1) > 1 or cfg.ray_address else "none",
            "open_s": open_s, "seconds": seconds, "samples": samples, "samples_per_s": samples / seconds,
            "board_s": timed.board_s, "host_s": host_s, "host_s_per_minibatch": host_s / minibatches,
            "board_s_per_sample": timed.board_s / samples, "params_sha256": params_sha256(params)}


def project(row: dict, batch: int) -> dict:
    """Amdahl from one measured one-board row: samples/s of B boards, and the serial fraction."""
    per_sample, host_per_batch = row["board_s_per_sample"], row["host_s_per_minibatch"]
    serial = host_per_batch / (host_per_batch + batch * per_sample)
    return {"serial_fraction": serial, "per_board_samples_per_s": 1.0 / per_sample,
            "host_s_per_minibatch": host_per_batch,
            "samples_per_s": {str(b): batch / (host_per_batch + batch * per_sample / b) for b in PROJECTED},
            "limit_samples_per_s": batch / host_per_batch}


def format_table(result: dict) -> str:
    c = result["config"]
    out = [f"{c['dataset']} ({c['samples_per_epoch']} samples/epoch, batch {c['batch']}, P = {c['oscillators']}), "
           f"{result['machine']['cpus']} CPUs, load average {result['machine']['loadavg'][0]:.1f} when it started; "
           f"Ray {result['engine']['version']}"]
    for name, t in result["targets"].items():
        out += ["", _target_table(name, t)]
    return "\n".join(out)


def _target_table(name: str, result: dict) -> str:
    proj = result["projection"]
    rows = [f"| {name} boards | engine | measured samples/s | boards' wall ms/sample | host ms/minibatch "
            "| projected samples/s |",
            "|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        projected = proj["samples_per_s"].get(str(r["boards"]))
        rows.append(f"| {r['boards']} | {r['engine']} | {r['samples_per_s']:.1f} | {1e3 * r['board_s_per_sample']:.1f} "
                    f"| {1e3 * r['host_s_per_minibatch']:.1f} | {projected:.1f} |")
    measured = {r["boards"] for r in result["rows"]}
    for b in PROJECTED:
        if b not in measured:
            rows.append(f"| {b} | ray | — | — | — | {proj['samples_per_s'][str(b)]:.1f} |")
    rows += ["", f"{name}: projection (Amdahl) from the one-board Ray row: {proj['per_board_samples_per_s']:.1f} samples/s "
             f"per board, host {1e3 * proj['host_s_per_minibatch']:.1f} ms per minibatch (serial fraction "
             f"{proj['serial_fraction']:.3f}; limit {proj['limit_samples_per_s']:.0f} samples/s); "
             f"bit-identical parameters in every row: {result['bit_identical']}"]
    return "\n".join(rows)


def main(argv=None) -> dict:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.multiboard", description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="golden,sim", help="board kinds, comma-separated: golden, sim")
    ap.add_argument("--boards", default="1,2,4", help="board counts to measure through Ray (default 1,2,4)")
    ap.add_argument("--dataset", default=d.dataset)
    ap.add_argument("--samples", type=int, default=None, help="train on the first SAMPLES training samples only")
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs (default 1)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs before them (default 1)")
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--oscillators", type=int, default=8)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--table", action="store_true", help="print the table of the saved --out JSON and exit")
    args = ap.parse_args(argv)
    if args.table:
        result = json.loads(args.out.read_text())
        print(format_table(result))
        return result
    import ray

    from echoboard.host import multiboard

    counts = [int(b) for b in args.boards.split(",") if b]
    kinds = [t for t in args.targets.split(",") if t]
    if set(kinds) - {"golden", "sim"}:
        ap.error(f"--targets: golden and/or sim, got {args.targets}")
    base = TrainConfig(dataset=args.dataset, algo="rhel", epochs=args.epochs, batch=args.batch,
                       seed=args.seed, oscillators=args.oscillators)
    data = load_training_data(base, FixedFormat(), HRUSize())
    split = data.train
    if args.samples is not None:
        split = Split(split.x[:args.samples], split.lengths[:args.samples], split.labels[:args.samples])
    machine = {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg())}
    per_target = {}
    started = multiboard._init_ray(None, {multiboard.resource_name(k): max(counts) for k in kinds})
    try:
        for kind in kinds:
            cfg = dataclasses.replace(base, target=kind)
            rows = [measure(cfg, split, data, args.warmup)]  # --boards 1: BoardTarget, no Ray
            for b in counts:  # through Ray, B = 1 included (the engine's own cost)
                rows.append(measure(dataclasses.replace(cfg, boards=b, ray_address="local" if b == 1 else None),
                                    split, data, args.warmup))
            one_ray = next((r for r in rows if r["engine"] == "ray" and r["boards"] == 1), rows[0])
            per_target[kind] = {"rows": rows, "projection": project(one_ray, args.batch),
                                "bit_identical": len({r["params_sha256"] for r in rows}) == 1}
    finally:
        if started:
            ray.shutdown()
    result = {"config": {**{k: v for k, v in dataclasses.asdict(base).items() if k not in ("target", "boards")},
                         "samples_per_epoch": len(split), "warmup": args.warmup, "boards": counts},
              "machine": machine, "engine": {"name": "ray", "version": ray.__version__}, "targets": per_target}
    print(format_table(result))
    save_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
