"""Training through the board link: samples per second and link efficiency, per model and target,
and what a real board would reach (issues 5 and 11).

The same RHEL training (host/train.py's epoch loop, BasicMotions by default) of each model
(``--models``: ``single`` = the single-HRU model, ``hssm`` / ``hssm-nonlinear`` = a 2-block HSSM whose
HRU blocks run on the board through the per-step streams) runs on each target in one process, one
after the other:

- ``sim``: the simulated board (Verilated board image on a loopback TCP port), the main target;
- ``golden``: the golden board model in process behind the same wire protocol (framing, CRCs);
- ``inprocess``: the vmapped integer model without a link, the reference.

Per target: training samples per second over ``--epochs`` timed epochs (after ``--warmup``
untimed ones, which absorb JAX compilation), and for the board targets the link over the timed
epochs: payload bytes per second, bytes on the wire per second (both directions) and the
efficiency payload / wire. All targets must end with the same parameters (``bit_identical``);
``open_s`` is the time to open the target (for ``sim``: the image build when not cached, and
the start of the simulator).

**Projection to real boards** (``projection``): for each board of firmware.boards with an image
that holds the model, samples/s = min(core, link), where core = the board's clock / the core's
cycles per training sample (hdl.timing's cycles per step for the pipelined core, which
benchmarks.core_cycles measures within 0.2 %; hdl.hru_serial's exact count for the serial core;
each pass adds two slots and 25 cycles of start and settling) for the mean training length, and
link = baud / 10 (8N1) / the wire bytes per training sample measured on the ``golden`` target
(the very bytes a board exchanges), both directions summed as the host's stop-and-wait sends
them. ``limit`` names the smaller. The image is taken as sized for the model.

Run: ``python -m benchmarks.run_all --only board_training`` (minutes once the images are built);
``--targets golden,inprocess --samples 8 --epochs 1`` for a quick run; ``--out`` for the JSON path.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks import save_result
from echoboard.firmware.boards import BOARDS
from echoboard.firmware.link import DEFAULT_BAUD
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.host.datasets import Dataset, Split
from echoboard.host.train import (TARGETS, TrainConfig, initial_state, load_training_data, make_model, open_target,
                                  params_sha256, train_epoch)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "board_training.json"

#: The models of the rows: TrainConfig fields over the command line's (the HSSM sized so that the
#: simulated board of a block, P = H = 16, builds and runs in minutes).
MODELS = {"single": {}, "hssm": {"blocks": 2, "hidden": 16, "oscillators": 16},
          "hssm-nonlinear": {"blocks": 2, "hidden": 16, "oscillators": 16, "hru": "nonlinear"}}
PASS_OVERHEAD_SLOTS, PASS_OVERHEAD_CYCLES = 2, 25  # hdl.timing: first and last slot, settling, the command


def core_cycles_per_sample(cfg: TrainConfig, n_inputs: int, mean_length: float, core: str) -> float | None:
    """Clock cycles of one training sample's passes on ``core`` (None: the core cannot run the model):
    the single HRU one forward and one echo of P oscillators and N inputs, an HSSM K of each of a
    block's (P oscillators, H inputs)."""
    from echoboard.hdl import timing
    from echoboard.hdl.hru_serial import cycles_per_step as serial_cycles_per_step

    if core == "serial" and (cfg.blocks or cfg.hru != "linear"):
        return None  # the serial core has no block mode (and is linear)
    size = HRUSize(cfg.oscillators, cfg.hidden if cfg.blocks else n_inputs)
    passes = cfg.blocks or 1
    total = 0.0
    for echo in (False, True):
        per_step = (timing.cycles_per_step(size, 1, echo, hru=cfg.hru) if core == "pipelined"
                    else serial_cycles_per_step(FixedFormat(), size, echo))
        total += passes * ((mean_length + PASS_OVERHEAD_SLOTS) * per_step + PASS_OVERHEAD_CYCLES)
    return total


def projection(cfg: TrainConfig, n_inputs: int, mean_length: float, golden: dict) -> dict:
    """Per board: the projected samples/s from the core's cycles and the measured wire bytes (module docstring)."""
    wire_per_sample = golden["link"]["wire_bytes"] / golden["samples"]
    link_rate = DEFAULT_BAUD / 10 / wire_per_sample
    boards = {}
    for name, spec in BOARDS.items():
        cycles = core_cycles_per_sample(cfg, n_inputs, mean_length, spec.core)
        if cycles is None:
            boards[name] = {"core": spec.core, "holds_model": False}
            continue
        core_rate = spec.image_clock_hz / cycles
        boards[name] = {"core": spec.core, "holds_model": True, "clock_hz": spec.image_clock_hz, "baud": DEFAULT_BAUD,
                        "cycles_per_sample": cycles, "wire_bytes_per_sample": wire_per_sample,
                        "core_samples_per_s": core_rate, "link_samples_per_s": link_rate,
                        "samples_per_s": min(core_rate, link_rate), "limit": "core" if core_rate < link_rate else "link"}
    return boards


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
    rows = ["model           target     samples/s  payload kB/s  wire kB/s  efficiency  requests/sample  open s"]
    for model, m in result["models"].items():
        for name, r in m["targets"].items():
            link = r["link"]
            cols = ("—", "—", "—", "—") if link is None else (
                f"{link['payload_bytes_per_s'] / 1e3:.1f}", f"{link['wire_bytes_per_s'] / 1e3:.1f}",
                f"{link['efficiency']:.4f}", f"{link['requests'] / r['samples']:.2f}")
            rows.append(f"{model:<15} {name:<10} {r['samples_per_s']:>9.1f}  {cols[0]:>12}  {cols[1]:>9}  {cols[2]:>10}  "
                        f"{cols[3]:>15}  {r['open_s']:>6.1f}")
        rows.append(f"{model}: bit-identical parameters on every target: {m['bit_identical']}")
        for board, b in m.get("projection", {}).items():
            rows.append(f"  {board}: " + (f"projected {b['samples_per_s']:.0f} samples/s (core {b['core_samples_per_s']:.0f}, "
                                          f"link {b['link_samples_per_s']:.0f}: the {b['limit']} limits)"
                                          if b["holds_model"] else f"the {b['core']} core cannot run this model"))
    return "\n".join(rows)


TARGET_NAMES = {"sim": "`sim` (the simulated board)", "golden": "`golden` (golden board model behind the protocol)",
                "inprocess": "`inprocess` (no link)"}


def markdown_tables(result: dict) -> str:
    """README's tables: training speed per model and target, then the projection per model and board."""
    lines = ["| model | target | training samples/s | wire kB/s | link efficiency | requests/sample | bit-identical |",
             "|---|---|---|---|---|---|---|"]
    for model, m in result["models"].items():
        for name, r in m["targets"].items():
            link = r["link"]
            cols = ("—", "—", "—") if link is None else (
                f"{link['wire_bytes_per_s'] / 1e3:.1f}", f"{link['efficiency']:.3f}", f"{link['requests'] / r['samples']:.2f}")
            lines.append(f"| {model} | {TARGET_NAMES[name]} | {r['samples_per_s']:.1f} | {' | '.join(cols)} | "
                         f"{m['bit_identical']} |")
    lines += ["", "| model | board (core) | clock MHz | core samples/s | wire bytes/sample | link samples/s | "
                  "projected samples/s | limit |", "|---|---|---|---|---|---|---|---|"]
    for model, m in result["models"].items():
        for board, b in m.get("projection", {}).items():
            if not b["holds_model"]:
                lines.append(f"| {model} | {board} ({b['core']}) | — | — | — | — | cannot run it | no block mode |")
                continue
            lines.append(f"| {model} | {board} ({b['core']}) | {b['clock_hz'] / 1e6:g} | {b['core_samples_per_s']:.0f} | "
                         f"{b['wire_bytes_per_sample']:.0f} | {b['link_samples_per_s']:.1f} | "
                         f"{b['samples_per_s']:.1f} | {b['limit']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.board_training", description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--dataset", default=d.dataset)
    ap.add_argument("--features", default=d.features, help="default: each model's (energy single, raw HSSM)")
    ap.add_argument("--samples", type=int, default=None, help="train on the first SAMPLES training samples only")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs before them (default 1)")
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--oscillators", type=int, default=d.oscillators, help="the single HRU's P")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--table", action="store_true", help="print README's markdown tables of --out and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_tables(json.loads(args.out.read_text())))
        return None
    targets = [t for t in args.targets.split(",") if t]
    models = [m for m in args.models.split(",") if m]
    for names, known, what in ((targets, TARGETS, "targets"), (models, MODELS, "models")):
        unknown = sorted(set(names) - set(known))
        if unknown:
            ap.error(f"unknown {what} {unknown}; choose from {','.join(known)}")
    result = {"models": {}}
    for model in models:
        base = TrainConfig(dataset=args.dataset, features=args.features, algo="rhel", epochs=args.epochs,
                           batch=args.batch, seed=args.seed, **{"oscillators": args.oscillators, **MODELS[model]})
        data = load_training_data(base, FixedFormat(), HRUSize())
        split = data.train
        if args.samples is not None:
            split = Split(split.x[:args.samples], split.lengths[:args.samples], split.labels[:args.samples])
        config = {**dataclasses.asdict(base), "samples_per_epoch": len(split), "warmup": args.warmup,
                  "mean_length": float(split.lengths.mean())}
        per_target = {name: measure(dataclasses.replace(base, target=name), data, split, args.warmup)
                      for name in targets}
        row = {"config": config, "targets": per_target,
               "bit_identical": len({r["params_sha256"] for r in per_target.values()}) == 1}
        if "golden" in per_target:
            row["projection"] = projection(base, data.n_inputs, config["mean_length"], per_target["golden"])
        result["models"][model] = row
    print(format_table(result))
    save_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
