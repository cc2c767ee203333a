"""``echoboard selftest``: is the board behind a URL the image this checkout builds, and does it work?

Everything goes over the wire through :class:`host.board.Board` (the protocol client with its
retries), so the same checks run on ``golden``, ``sim``, ``socket://HOST:PORT`` and
``serial:///dev/X?baud=B``:

1. ``identify``: the configuration IDENTIFY reports (size, lanes, format, capabilities, build
   hash) equals that of the image the host would build for it: for ``golden`` the golden board
   model of ``size`` (``firmware.board_model.MODEL_BUILD_HASH``); for ``sim`` the simulated image
   of ``size`` and ``core``; for a board, the image of the size, format and lanes it reports with
   ``core`` (``sim.board_image.board_config``, i.e. ``firmware.top.design_hash``), and ``size``
   when given. A second IDENTIFY must say the same.
2. ``regions``: every writable region of the board's HRU (``CoreConfig.regions`` minus
   ``CoreConfig.read_only_regions``)
   takes random words over the region's full width, then their bitwise complement (every bit of
   every word is written as 0 and as 1), and reads both back; every read-only region refuses a
   WRITE with BAD_ARGUMENT and keeps its words.
3. ``retrace``: ``passes`` random cases (``hdl.verilog.random_case``: a stable bank, random initial
   state and inputs): a forward pass from that state, then the echo pair with a zero nudge; both
   echoes must end on the flipped initial state (y0, −z0) bit for bit, and the accumulators and
   the gradient overflow counter must not move (the two echoes are identical: their difference
   adds zero). The numerics contract promises the retrace only when no wrap
   was counted (docs/numerics.md): a pass whose overflow counters report a wrap is reported as
   "wrapped, retrace not checked", not as a failure.
4. ``restore``: the writable regions get back the words they held before the self-test.

Afterwards the board is IDLE with its parameters, state and NUDGE as before; POS_SUM and the
forward and echo overflow counters hold the last self-test pass's values; the accumulators are
unchanged (the two zero-nudge echoes are identical, so their difference adds zero), and so is the
gradient overflow counter unless a pass wrapped (the accumulation then counts its wraps).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import suppress

import numpy as np

from echoboard.firmware.protocol import PIPELINED_CAPABILITIES, Command, CoreConfig, ProtocolError, Region, Status

__all__ = ["BOARD_TARGETS", "board_target", "expected_config", "run_selftest", "verify_board_at",
           "add_selftest_arguments"]

#: What ``--target`` takes (the Board API's URLs that reach a board through the wire protocol).
BOARD_TARGETS = "sim|golden|socket://HOST:PORT|serial:///dev/X?baud=B"

CHECKS = ("identify", "regions", "retrace", "restore")
WRAPPED = "wrapped, retrace not checked"


def board_target(text: str) -> str:
    """argparse type: a target the Board API opens (``inprocess`` has no wire, ``loop://`` no board)."""
    if text in ("sim", "golden") or text.startswith(("socket://", "serial://")):
        return text
    raise argparse.ArgumentTypeError(f"expected {BOARD_TARGETS}, got {text!r}")


def expected_config(target: str, reported: CoreConfig, *, size=None, fmt=None, core: str = "pipelined") -> CoreConfig:
    """What IDENTIFY must say: the configuration of the image the host would build (module docstring)."""
    from echoboard.firmware.top import image_format
    from echoboard.golden_model.formats import HRUSize

    if target == "golden":
        from echoboard.firmware.board_model import MODEL_BUILD_HASH

        return CoreConfig(size or HRUSize(16, 8), fmt or image_format(), capabilities=PIPELINED_CAPABILITIES,
                          build_hash=MODEL_BUILD_HASH)  # Board.open("golden")'s: the pipelined image's
    from echoboard.sim.board_image import ImageConfig, board_config

    if target == "sim":
        return board_config(ImageConfig(size or HRUSize(16, 8), fmt or image_format(), 1, core))
    return board_config(ImageConfig(size or reported.size, fmt or reported.fmt, reported.lanes, core))


def _differences(got: CoreConfig, want: CoreConfig) -> list[str]:
    out = []
    for name in ("size", "fmt", "lanes", "capabilities", "build_hash"):
        g, w = getattr(got, name), getattr(want, name)
        if g != w:
            g, w = (_show(g), _show(w)) if name in ("build_hash", "size") else (g, w)
            out.append(f"{name} {g}, expected {w}")
    return out


def _show(value) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return f"P{value.oscillators} N{value.inputs} max_length {value.max_length}"


def _other_core(reported: CoreConfig, core: str) -> str | None:
    """The other core whose image has the reported hash, if any (a hint for --core)."""
    from echoboard.sim.board_image import ImageConfig, board_config

    for other in ("pipelined", "serial"):
        if other == core:
            continue
        with suppress(ValueError):
            if board_config(ImageConfig(reported.size, reported.fmt, reported.lanes, other)) == reported:
                return other
    return None


def check_identify(board, target: str, *, size=None, fmt=None, core: str = "pipelined") -> dict:
    reported = board.config
    try:
        want = expected_config(target, reported, size=size, fmt=fmt, core=core)
    except ValueError as exc:  # a configuration this checkout cannot build
        return {"name": "identify", "passed": False, "detail": f"no image of this configuration: {exc}",
                "build_hash": reported.build_hash.hex()}
    problems = _differences(reported, want)
    if problems and target not in ("golden", "sim") and reported.build_hash != want.build_hash:
        other = _other_core(reported, core)
        if other:
            problems.append(f"(the build hash is the {other} core's image: --core {other})")
    again = board.identify()
    if again != reported:
        problems.append(f"a second IDENTIFY says {_differences(again, reported)}")
    s = reported.size
    summary = f"P{s.oscillators} N{s.inputs} K{reported.lanes} build {reported.build_hash.hex()[:12]}"
    return {"name": "identify", "passed": not problems,
            "detail": "; ".join(problems) if problems else f"{summary}, as this checkout builds it",
            "build_hash": reported.build_hash.hex(), "expected_build_hash": want.build_hash.hex()}


def _width(config: CoreConfig, region: Region) -> tuple[int, int]:
    f = config.region_field(region)
    return (-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1) if f.signed else (0, (1 << f.width) - 1)


def check_regions(board, rng: np.random.Generator) -> dict:
    config, words, failures = board.config, 0, []
    read_only = config.read_only_regions
    writable = [r for r in config.regions if r not in read_only]
    for region in writable:
        lo, hi = _width(config, region)
        first = rng.integers(lo, hi, size=config.region_depth(region), endpoint=True, dtype=np.int64)
        first[:2] = (lo, hi)[:len(first[:2])]  # the extremes (their complements: hi, lo)
        for name, pattern in (("random", first), ("complement", -1 - first)):
            board.write(region, pattern)
            got = board.read(region)
            words += len(pattern)
            bad = np.flatnonzero(got != pattern)
            if len(got) != len(pattern):
                failures.append(f"{region.name}: {len(got)} words read back, {len(pattern)} written")
                break
            if len(bad):
                k = int(bad[0])
                failures.append(f"{region.name}[{k}] read back {int(got[k])}, wrote {int(pattern[k])} "
                                f"({name} pattern; {len(bad)} words differ)")
                break
    for region in sorted(read_only):
        before = board.read(region)
        payload = board.messages.write_request(region).pack(region=int(region), start=0, values=[0])
        reply = board.client.request(Command.WRITE, payload)
        if reply.status != Status.BAD_ARGUMENT:
            failures.append(f"a WRITE to read-only {region.name} got status {reply.status}, expected "
                            f"{int(Status.BAD_ARGUMENT)} (BAD_ARGUMENT)")
        elif not np.array_equal(board.read(region), before):
            failures.append(f"a refused WRITE changed read-only {region.name}")
    detail = "; ".join(failures) if failures else (
        f"{len(writable)} writable regions read back 2 patterns ({words} words); "
        f"{len(read_only)} read-only regions refused a WRITE")
    return {"name": "regions", "passed": not failures, "detail": detail, "words": words,
            "writable": [r.name for r in writable], "read_only": sorted(r.name for r in read_only)}


def _wrap(values, width: int) -> np.ndarray:
    half = 1 << (width - 1)
    return (np.asarray(values, np.int64) + half) % (2 * half) - half


def _accumulators(board) -> list:
    """Every accumulator region of the board's HRU, then the gradient overflow counter."""
    return [*(board.read(r) for r in board.config.accumulators.values()), board.read(Region.COUNTERS)[3:]]


def check_retrace(board, *, passes: int, length: int, seed: int) -> dict:
    from echoboard.hdl.verilog import random_case

    config = board.config
    P, ws = config.size.oscillators, config.base.state_width
    runs, failures = [], []
    for k in range(passes):
        case = random_case(config.fmt, config.size, length, seed + k, zero_nudge=True)
        for key, region in (*config.parameters.items(), ("y0", Region.Y0), ("z0", Region.Z0)):
            board.write(region, np.ravel(case[key]))
        u = np.asarray(case["u"], np.int64)
        forward = board.forward(u, zero_state=False)
        acc_before = _accumulators(board)
        plus, minus, _ = board.echo(u, np.zeros(P, np.int64))
        overflows = {"forward": int(forward.overflows), "echo_plus": int(plus), "echo_minus": int(minus)}
        run = {"seed": seed + k, "length": length, "overflows": overflows}
        if any(overflows.values()):
            run["result"] = WRAPPED
        else:
            if not all(np.array_equal(a, b) for a, b in zip(acc_before, _accumulators(board))):
                failures.append(f"pass {k} (seed {seed + k}): the zero-nudge echo changed an accumulator or the "
                                f"gradient overflow counter")
            want_y, want_z = np.asarray(case["y0"], np.int64), _wrap(-np.asarray(case["z0"]), ws)
            bad = None
            for name, region, want in (("Y0", Region.Y0, want_y), ("Z0", Region.Z0, want_z),
                                       ("Y1", Region.Y1, want_y), ("Z1", Region.Z1, want_z)):
                got = board.read(region)
                if not np.array_equal(got, want) and bad is None:
                    i = int(np.flatnonzero(got != want)[0])
                    bad = f"{name}[{i}] = {int(got[i])}, expected {int(want[i])}"
            run["result"] = "retraced" if bad is None else "mismatch"
            if bad:
                failures.append(f"pass {k} (seed {seed + k}, L = {length}): the ε = 0 echo ended on {bad} "
                                f"(the flipped initial state) with no wrap counted")
        runs.append(run)
    retraced = sum(r["result"] == "retraced" for r in runs)
    wrapped = sum(r["result"] == WRAPPED for r in runs)
    detail = "; ".join(failures) if failures else (
        f"{retraced}/{passes} ε = 0 echoes retraced bit for bit (L = {length})"
        + (f", {wrapped} {WRAPPED}" if wrapped else ""))
    return {"name": "retrace", "passed": not failures, "detail": detail, "retraced": retraced, "wrapped": wrapped,
            "passes": runs}


def _save(board) -> dict:
    return {r: board.read(r) for r in board.config.regions if r not in board.config.read_only_regions}


def check_restore(board, saved: dict) -> dict:
    for region, words in saved.items():
        board.write(region, words)
    wrong = [r.name for r, words in saved.items() if not np.array_equal(board.read(r), words)]
    return {"name": "restore", "passed": not wrong,
            "detail": f"{', '.join(wrong)} did not get their words back" if wrong else
            f"the {len(saved)} writable regions hold what they held before"}


def run_selftest(board, target: str, *, passes: int = 3, length: int = 256, seed: int = 0, size=None, fmt=None,
                 core: str = "pipelined") -> dict:
    """The four checks on an open :class:`host.board.Board`; {"verdict", "target", "checks", ...}.

    A board that answers a request with an error fails the check that sent it (the others still
    run); the writable regions are restored whatever happened, as far as the link allows.
    """
    board.config.size.check_length(length)  # before anything is written
    start = time.monotonic()
    checks: list[dict] = []

    def run(name, fn, *args, **kwargs):
        try:
            checks.append(fn(*args, **kwargs))
        except ProtocolError as exc:  # the board refused a valid request, or answered garbage
            checks.append({"name": name, "passed": False, "detail": f"{type(exc).__name__}: {exc}"})

    board.abort()  # a pass left over from an interrupted session
    run("identify", check_identify, board, target, size=size, fmt=fmt, core=core)
    saved = _save(board)
    try:
        run("regions", check_regions, board, np.random.default_rng(seed))
        run("retrace", check_retrace, board, passes=passes, length=length, seed=seed)
    finally:
        run("restore", check_restore, board, saved)
    passed = all(c["passed"] for c in checks)
    s = board.config.size
    return {"verdict": "PASS" if passed else "FAIL", "target": target,
            "config": {"oscillators": s.oscillators, "inputs": s.inputs, "lanes": board.config.lanes,
                       "max_length": s.max_length, "build_hash": board.config.build_hash.hex()},
            "checks": checks, "seconds": round(time.monotonic() - start, 3), "link": board.link_stats}


def verdict_line(result: dict) -> str:
    checks = result["checks"]
    if result["verdict"] == "PASS":
        return f"selftest PASS: {result['target']}: " + "; ".join(c["detail"] for c in checks)
    return f"selftest FAIL: {result['target']}: " + "; ".join(f"{c['name']}: {c['detail']}" for c in checks
                                                               if not c["passed"])


def verify_board_at(target: str, fmt, size, lanes: int, core: str, **case) -> dict:
    """``echoboard verify --level board`` on any target: sim.board_image.verify_board through the
    board at ``target`` (``case``: seed, length, per_step_nudge).

    ``sim`` and ``golden`` are built from ``fmt``, ``size``, ``lanes``; a board at ``socket://`` or
    ``serial://`` is verified at the size, format and lanes it reports, and must report the build
    hash of this checkout's image of that configuration with ``core``.
    """
    from echoboard.firmware.board_model import MODEL_BUILD_HASH, GoldenBoard
    from echoboard.firmware.top import image_config
    from echoboard.host.board import Board
    from echoboard.host.transports import GoldenTransport, open_serial
    from echoboard.sim.board_image import ImageConfig, verify_board

    if target == "sim":
        size.check_length(case["length"])
        return verify_board(ImageConfig(size, fmt, lanes, core), **case)
    if target == "golden":
        image = ImageConfig(size, fmt, lanes, core)
        identify = image_config(fmt, size, lanes, MODEL_BUILD_HASH, core)
        size.check_length(case["length"])
        return verify_board(image, port=GoldenTransport(GoldenBoard(identify)), target=target, identify=identify,
                            **case)
    with Board.open(target) as board:  # what the board is: its size, format and lanes
        reported = board.config
    image = ImageConfig(reported.size, reported.fmt, reported.lanes, core)
    reported.size.check_length(case["length"])
    return verify_board(image, port=open_serial(target, timeout=1.0), target=target, **case)


# ---------------------------------------------------------------------------------- CLI


def add_selftest_arguments(parser: argparse.ArgumentParser) -> None:
    from echoboard.hdl.cores import CORES
    from echoboard.host.cli import positive_int

    parser.add_argument("--target", type=board_target, default="sim", metavar="URL",
                        help=f"{BOARD_TARGETS} (default sim: the simulated board, started here)")
    parser.add_argument("--oscillators", "-P", type=positive_int, default=None,
                        help="P: the sim/golden image's size (default 16); for a board, checked when given")
    parser.add_argument("--inputs", "-N", type=positive_int, default=None,
                        help="N: the sim/golden image's size (default 8); for a board, checked when given")
    parser.add_argument("--core", choices=tuple(CORES), default="pipelined",
                        help="the core whose image's build hash IDENTIFY must report (serial: the iCEBreaker's)")
    parser.add_argument("--hru", choices=("linear", "nonlinear"), default=None,
                        help="the HRU of the sim/golden image (default linear); for a board, checked when given")
    parser.add_argument("--passes", type=positive_int, default=3, help="random ε = 0 forward/echo passes")
    parser.add_argument("--length", "-L", type=positive_int, default=256, help="steps per pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for a reply before a resend")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every check")
    parser.set_defaults(run=run_selftest_command)


def run_selftest_command(args) -> int:
    from echoboard.golden_model.formats import HRUSize
    from echoboard.host.board import Board

    if not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    size = None
    if args.oscillators or args.inputs:
        size = HRUSize(args.oscillators or HRUSize.oscillators, args.inputs or HRUSize.inputs)
    elif args.target in ("sim", "golden"):
        size = HRUSize(16, 8)
    local = args.target in ("sim", "golden")
    fmt = None
    if args.hru is not None or local:
        from echoboard.firmware.top import image_format

        fmt = image_format(args.hru or "linear")
    try:  # a board of another size is the identify check's failure, not an error
        board = Board.open(args.target, size=size if local else None, fmt=fmt if local else None, hru=args.hru,
                           core=args.core, timeout=args.timeout)
    except ProtocolError as exc:  # IDENTIFY came back, but another protocol version or buffer size
        result = {"verdict": "FAIL", "target": args.target, "config": None, "seconds": 0.0, "link": None,
                  "checks": [{"name": "identify", "passed": False, "detail": str(exc)}]}
    else:
        with board:
            result = run_selftest(board, args.target, passes=args.passes, length=args.length, seed=args.seed,
                                  size=size, fmt=fmt, core=args.core)
    print(json.dumps(result) if args.json else verdict_line(result))
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":  # pragma: no cover
    from echoboard.host.cli import main

    sys.exit(main(["selftest", *sys.argv[1:]]))
