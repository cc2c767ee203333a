"""Speed of the simulated board's harness (sim/board_sim) with the loopback board image (issue 4).

The board image is tests/board_sim_loopback.py: every byte comes back XOR 0x5A through an
8-deep FIFO, with random stalls in both directions (about 1 cycle in 8 each, decoupled by the
FIFO), so at most ~0.87 bytes move per cycle. It is tiny: these numbers measure the harness (clocking, valid/ready, ring
buffers, socket polling), which is the ceiling for any board image; a real image adds its own
evaluation cost per cycle.

Three measurements, each in a fresh simulator process:

- ``free-running``: ``--max-cycles N`` with no client (one poll() per ``--poll-cycles``);
  cycles/s from the harness's own counters.
- ``streaming``: a client sends ``--bytes`` random bytes through a loopback TCP socket while
  reading the replies (full duplex) and checks every byte; cycles/s and bytes/s are read from the
  harness's counters (SIGUSR1) just before the first byte and just after the last one. Repeated for
  each ``--poll-cycles`` value.
- ``round trip``: request/response latency of a 16-byte message (send, wait for all 16 back),
  median and 95th percentile over ``--round-trips`` exchanges.

Goal (issue 4): ≥ 1 M cycles/s while streaming.

Run: ``python -m benchmarks.sim_board_speed`` (~10 s after the first build);
``--bytes 200000 --poll-cycles 1024 --round-trips 50`` for a quick run; ``--out`` for the JSON path.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import save_result

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sim_board_speed.json"
DEFAULT_BUILD = ROOT / "build" / "board_sim"
GOAL_CYCLES_PER_S = 1e6


def _loopback():
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import board_sim_loopback

    return board_sim_loopback


def free_running(exe: Path, cycles: int, poll_cycles: int) -> dict:
    from echoboard.sim.board_sim import parse_stats

    proc = subprocess.run([str(exe), "--max-cycles", str(cycles), "--poll-cycles", str(poll_cycles)],
                          capture_output=True, text=True, timeout=600, check=True)
    stats = parse_stats(proc.stdout.splitlines()[-1])
    return {"poll_cycles": poll_cycles, "cycles": stats["cycles"], "seconds": stats["seconds"],
            "cycles_per_s": stats["cycles"] / stats["seconds"]}


def streaming(exe: Path, nbytes: int, poll_cycles: int, seed: int) -> dict:
    from echoboard.sim.board_sim import SimulatedBoard

    lb = _loopback()
    data = random.Random(seed).randbytes(nbytes)
    expected = lb.transform(data)
    with SimulatedBoard(exe, poll_cycles=poll_cycles) as board, socket.create_connection(board.address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"\0" * 64)  # warm-up: the connection is accepted and a byte went round
        got = b""
        while len(got) < 64:
            got += sock.recv(64)
        s0 = board.stats()
        t0 = time.perf_counter()
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        buf = bytearray()
        while len(buf) < nbytes:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the simulated board closed the connection")
            buf += chunk
        t1 = time.perf_counter()
        s1 = board.stats()
        sender.join()
    if bytes(buf) != expected:
        bad = next(i for i, (a, b) in enumerate(zip(buf, expected)) if a != b)
        raise AssertionError(f"byte {bad} came back wrong (poll_cycles={poll_cycles})")
    cycles, secs = s1["cycles"] - s0["cycles"], s1["seconds"] - s0["seconds"]
    return {"poll_cycles": poll_cycles, "bytes": nbytes, "cycles": cycles, "seconds": secs,
            "cycles_per_s": cycles / secs, "bytes_per_s": nbytes / (t1 - t0), "client_seconds": t1 - t0,
            "bytes_per_cycle": nbytes / cycles}


def round_trips(exe: Path, count: int, poll_cycles: int, size: int = 16) -> dict:
    from echoboard.sim.board_sim import SimulatedBoard

    rng = random.Random(0)
    times = []
    with SimulatedBoard(exe, poll_cycles=poll_cycles) as board, socket.create_connection(board.address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count + 5):
            msg = rng.randbytes(size)
            t0 = time.perf_counter()
            sock.sendall(msg)
            got = b""
            while len(got) < size:
                got += sock.recv(4096)
            times.append(time.perf_counter() - t0)
            assert got == bytes(b ^ 0x5A for b in msg)
    times = sorted(times[5:])
    return {"poll_cycles": poll_cycles, "message_bytes": size, "count": count,
            "median_s": statistics.median(times), "p95_s": times[int(0.95 * (len(times) - 1))]}


def format_table(result: dict) -> str:
    lines = [f"{'measurement':<14} {'poll':>6} {'M cycles/s':>11} {'MB/s':>7} {'bytes/cycle':>11}  goal ≥ 1 M cycles/s"]
    for r in result["free_running"]:
        ok = "ok" if r["cycles_per_s"] >= GOAL_CYCLES_PER_S else "MISSED"
        lines.append(f"{'free-running':<14} {r['poll_cycles']:>6} {r['cycles_per_s'] / 1e6:>11.2f} {'-':>7} {'-':>11}  {ok}")
    for r in result["streaming"]:
        ok = "ok" if r["cycles_per_s"] >= GOAL_CYCLES_PER_S else "MISSED"
        lines.append(f"{'streaming':<14} {r['poll_cycles']:>6} {r['cycles_per_s'] / 1e6:>11.2f} "
                     f"{r['bytes_per_s'] / 1e6:>7.2f} {r['bytes_per_cycle']:>11.3f}  {ok}")
    for r in result["round_trip"]:
        lines.append(f"round trip of {r['message_bytes']} bytes (poll {r['poll_cycles']}): median "
                     f"{r['median_s'] * 1e6:.0f} µs, p95 {r['p95_s'] * 1e6:.0f} µs over {r['count']}")
    lines.append(f"build: {result['build_seconds']:.1f} s ({'cached' if result['build_seconds'] < 2 else 'compiled'})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sim_board_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=4_000_000, help="bytes streamed per streaming run")
    ap.add_argument("--cycles", type=int, default=20_000_000, help="cycles of the free-running run")
    ap.add_argument("--poll-cycles", type=lambda s: [int(x) for x in s.split(",") if x], default=[256, 1024, 4096],
                    help="comma-separated --poll-cycles values to compare (default 256,1024,4096)")
    ap.add_argument("--round-trips", type=int, default=200, help="16-byte request/response exchanges")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-root", type=Path, default=DEFAULT_BUILD)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    from echoboard.sim.board_sim import build

    lb = _loopback()
    t0 = time.perf_counter()
    verilog = lb.write_verilog(args.build_root / f"{lb.TOP_NAME}.v")
    exe = build(verilog, lb.TOP_NAME, args.build_root)
    build_seconds = time.perf_counter() - t0
    default_poll = 1024 if 1024 in args.poll_cycles else args.poll_cycles[0]
    result = {
        "benchmark": "sim_board_speed",
        "config": {"bytes": args.bytes, "cycles": args.cycles, "poll_cycles": args.poll_cycles,
                   "round_trips": args.round_trips, "seed": args.seed, "board": "tests/board_sim_loopback.py"},
        "goal_cycles_per_s": GOAL_CYCLES_PER_S,
        "build_seconds": build_seconds,
        "executable": str(exe),
        "free_running": [free_running(exe, args.cycles, default_poll)],
        "streaming": [streaming(exe, args.bytes, p, args.seed) for p in args.poll_cycles],
        "round_trip": [round_trips(exe, args.round_trips, default_poll)] if args.round_trips else [],
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "loadavg_1min": os.getloadavg()[0]},
    }
    result["goal_met"] = all(r["cycles_per_s"] >= GOAL_CYCLES_PER_S for r in result["streaming"])
    print(format_table(result))
    save_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
