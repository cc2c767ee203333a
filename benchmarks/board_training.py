"""Training through the board link: samples per second and link efficiency, per target (issue 5).

The same RHEL training (host/train.py's epoch loop, BasicMotions by default) runs on each target
in one process, one after the other:

- ``sim``: the simulated board (Verilated board image on a loopback TCP port), the main target;
- ``golden``: the golden board model in process behind the same wire protocol (framing, CRCs);
- ``inprocess``: the vmapped integer model without a link, the reference.

Per target: training samples per second over ``--epochs`` timed epochs (after ``--warmup``
untimed ones, which absorb JAX compilation), and for the board targets the link over the timed
epochs: payload bytes per second, bytes on the wire per second (both directions) and the
efficiency payload / wire. All targets must end with the same parameters (``bit_identical``);
``open_s`` is the time to open the target (for ``sim``: the image build when not cached, and
the start of the simulator).

Run: ``python -m benchmarks.run_all --only board_training`` (~1 min once the image is built);
``--targets golden,inprocess --samples 8 --epochs 1`` for a quick run; ``--out`` for the JSON path.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks import save_result
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.host.datasets import Dataset, Split
from echoboard.host.train import (TARGETS, TrainConfig, initial_state, load_training_data, make_model, open_target,
                        params_sha256, train_epoch)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "board_training.json"


def _link(before: dict, after: dict, seconds: float) -> dict:
    """The link over one interval: payload and wire bytes (both directions) per second, their ratio."""
    delta = {k: after[k] - before[k] for k in after}
    payload = delta["payload_bytes_sent"] + delta["payload_bytes_received"]
    wire = delta["bytes_sent"] + delta["bytes_received"]
    return {"requests": delta["requests"], "retries": delta["retries"], "payload_bytes": payload, "wire_bytes": wire,
            "payload_bytes_per_s": payload / seconds, "wire_bytes_per_s": wire / seconds,
            "efficiency": payload / wire if wire else None}


def measure(cfg: TrainConfig, data: Dataset, split: Split, warmup: int) -> dict:
    """Train on ``cfg.target`` over ``split`` of ``data`` for ``warmup`` + ``cfg.epochs`` epochs; time and
    link of the last ``cfg.epochs``."""
    fmt, size = FixedFormat(), HRUSize()
    with ExitStack() as stack:
        net = make_model(cfg, data, fmt)
        t0 = time.perf_counter()
        board, target = open_target(cfg, net, size, data.n_inputs, stack)
        open_s = time.perf_counter() - t0
        params, adam, rng = initial_state(cfg, data, fmt)
        for _ in range(warmup):
            params, adam, _ = train_epoch(params, adam, rng, split, cfg, net, target)
        before = board.link_stats if board else None
        overflows, t0 = 0, time.perf_counter()
        for _ in range(cfg.epochs):
            params, adam, totals = train_epoch(params, adam, rng, split, cfg, net, target)
            overflows += totals["overflow_events"]
        seconds = time.perf_counter() - t0
        link = _link(before, board.link_stats, seconds) if board else None
    samples = cfg.epochs * len(split)
    return {"open_s": open_s, "seconds": seconds, "samples": samples, "samples_per_s": samples / seconds,
            "overflow_events": overflows, "params_sha256": params_sha256(params), "link": link}


def format_table(result: dict) -> str:
    rows = ["target     samples/s  payload kB/s  wire kB/s  efficiency  requests/sample  open s"]
    for name, r in result["targets"].items():
        link = r["link"]
        cols = ("—", "—", "—", "—") if link is None else (
            f"{link['payload_bytes_per_s'] / 1e3:.1f}", f"{link['wire_bytes_per_s'] / 1e3:.1f}",
            f"{link['efficiency']:.4f}", f"{link['requests'] / r['samples']:.2f}")
        rows.append(f"{name:<10} {r['samples_per_s']:>9.1f}  {cols[0]:>12}  {cols[1]:>9}  {cols[2]:>10}  "
                    f"{cols[3]:>15}  {r['open_s']:>6.1f}")
    rows.append(f"bit-identical parameters on every target: {result['bit_identical']}")
    return "\n".join(rows)


def main(argv=None) -> dict:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.board_training", description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    ap.add_argument("--dataset", default=d.dataset)
    ap.add_argument("--features", default=d.features)
    ap.add_argument("--samples", type=int, default=None, help="train on the first SAMPLES training samples only")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs before them (default 1)")
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--oscillators", type=int, default=d.oscillators)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown targets {unknown}; choose from {','.join(TARGETS)}")
    base = TrainConfig(dataset=args.dataset, features=args.features, algo="rhel", epochs=args.epochs,
                       batch=args.batch, seed=args.seed, oscillators=args.oscillators)
    data = load_training_data(base, FixedFormat(), HRUSize())
    split = data.train
    if args.samples is not None:
        split = Split(split.x[:args.samples], split.lengths[:args.samples], split.labels[:args.samples])
    config = {**dataclasses.asdict(base), "samples_per_epoch": len(split), "warmup": args.warmup}
    per_target = {}
    for name in targets:
        per_target[name] = measure(dataclasses.replace(base, target=name), data, split, args.warmup)
    result = {"config": config, "targets": per_target,
              "bit_identical": len({r["params_sha256"] for r in per_target.values()}) == 1}
    print(format_table(result))
    save_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
