"""Run every benchmark: ``python -m benchmarks.run_all [ARGS]`` (``make bench ARGS=...``).

Each benchmark module has ``main(argv)`` that prints a table and writes its JSON under
benchmarks/results/. ``--only NAME[,NAME]`` picks benchmarks; every other argument is passed
to each benchmark unchanged (e.g. ``--lengths 1000,4000 --repeats 3`` for a quick run).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

BENCHMARKS = ("gradient_cost", "stack_cost", "core_cycles", "sim_board_speed", "board_training", "multiboard")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n")[0])
    ap.add_argument("--only", type=lambda s: [b for b in s.split(",") if b], default=list(BENCHMARKS),
                    help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args, rest = ap.parse_known_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    unknown = [b for b in args.only if b not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmarks {unknown}; choose from {','.join(BENCHMARKS)}")
    for name in args.only:
        t0 = time.perf_counter()
        print(f"=== benchmark {name} ===", flush=True)
        importlib.import_module(f"benchmarks.{name}").main(rest)
        print(f"=== {name} done in {time.perf_counter() - t0:.1f} s ===", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
