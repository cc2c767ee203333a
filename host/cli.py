"""The ``echoboard`` command line: a thin layer over the library.

Each subcommand is an ``add_*_arguments(parser)`` that sets ``run`` to a function of the parsed
arguments returning an exit status. Every failure is one line on stderr and a non-zero exit, no
traceback: a bad argument (argparse, status 2), a ValueError from the library (bad input, 2), an
OSError (unwritable output, port in use, missing serial device: 1), Ctrl-C (130). ``--help``
shows every default and examples (:data:`EXAMPLES`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import json
import os
import socket
import sys
import time
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default, once (help that already names its default is left alone; flags
    are off by default, required options have none), and examples kept as written."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.required or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _format_action(self, action):
        if action.help is None and action.option_strings and action.nargs != 0 and not action.required:
            # argparse shows no help line for an option without help: give it its default
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"expected a TCP port number (0 to 65535), got {value}")
    return value


def add_check_gradients_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hru", choices=("linear", "nonlinear"), default="linear")
    parser.add_argument("--length", type=positive_int, default=1024, help="sequence length L")
    parser.add_argument("--oscillators", type=positive_int, default=16, help="number of oscillators P")
    parser.add_argument("--inputs", type=positive_int, default=4, help="number of input channels N")
    parser.add_argument("--epsilon", type=float, default=0.125, help="nudge strength ε, a power of two")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocks", type=int, default=0, metavar="K",
                        help="check an HSSM of K blocks (every trained tensor of the stack, dotted names) instead "
                             "of one HRU (default 0: one HRU)")
    parser.add_argument("--hidden", type=positive_int, default=16, metavar="H", help="the HSSM's width (default 16)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(run=run_check_gradients)


def run_check_gradients(args) -> int:
    from echoboard.golden_model import report

    if args.blocks < 0:
        raise ValueError(f"--blocks must be >= 0, got {args.blocks}")
    if args.blocks:
        result = report.check_stack_gradients(args.hru, args.blocks, args.hidden, args.length, args.oscillators,
                                              args.inputs, args.epsilon, args.seed)
    else:
        result = report.check_gradients(args.hru, args.length, args.oscillators, args.inputs, args.epsilon, args.seed)
    print(json.dumps(result) if args.json else report.format_report_table(result))
    return 0


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=positive_int, default=4096)
    parser.add_argument("--oscillators", type=positive_int, default=32)
    parser.add_argument("--inputs", type=positive_int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("docs/format_sweep.md"),
                        help="markdown table to write; the rows go to the same name with .json")
    parser.set_defaults(run=run_sweep)


def run_sweep(args) -> int:
    from echoboard.golden_model import report

    start = time.time()
    rows = report.sweep_formats(args.length, args.oscillators, args.inputs, tuple(args.seeds),
                                progress=lambda row: print(json.dumps(row), file=sys.stderr))
    command = (f"echoboard sweep-formats --length {args.length} --oscillators {args.oscillators} "
               f"--inputs {args.inputs} --seeds {' '.join(map(str, args.seeds))}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# Format sweep\n\nGenerated by `{command}` in {time.time() - start:.0f} s. Fixed-point RHEL against "
        "float64 BPTT on the same quantised system (worst case over the seeds), 32-bit state words.\n\n"
        + report.sweep_table(rows) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(report.sweep_table(rows))
    return 0


def add_core_size_arguments(parser: argparse.ArgumentParser, default_lanes: int = 4) -> None:
    from echoboard.golden_model.formats import HRUSize
    from echoboard.hdl.cores import CORES

    parser.add_argument("--oscillators", "-P", type=positive_int, default=HRUSize.oscillators, help="P")
    parser.add_argument("--inputs", "-N", type=positive_int, default=HRUSize.inputs, help="N")
    parser.add_argument("--lanes", "-K", type=positive_int, default=default_lanes, help="K parallel lanes (must divide P)")
    parser.add_argument("--max-length", type=positive_int, default=HRUSize.max_length,
                        help="longest sequence the core accepts (sizes the step counter)")
    parser.add_argument("--hru", choices=("linear", "nonlinear"), default="linear")
    parser.add_argument("--core", choices=tuple(CORES), default="pipelined",
                        help="pipelined (ECP5: one oscillator update per clock per lane) or serial "
                             "(iCE40: one 16x16 multiplier, linear HRU, --lanes 1)")


def core_config(args):
    """(format, HRUSize, lanes) from add_core_size_arguments' options: the default FixedFormat, or
    with ``--hru nonlinear`` the default golden_model.hru_fixed_nonlinear.NonlinearFormat (the
    pipelined core's, core and board image alike)."""
    from echoboard.golden_model.formats import FixedFormat, HRUSize

    from echoboard.firmware.protocol import check_addressable

    size = HRUSize(args.oscillators, args.inputs, args.max_length)
    check_addressable(size)  # -P 1000000: refused now, not after minutes of elaboration
    if args.hru == "linear":
        return FixedFormat(), size, args.lanes
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat

    return NonlinearFormat(), size, args.lanes


def add_build_root_argument(parser: argparse.ArgumentParser) -> None:
    from echoboard.sim.paths import DEFAULT, ENV

    parser.add_argument("--build-dir", dest="build_root", type=Path, default=None, metavar="DIR",
                        help=f"folder for generated Verilog, Verilator builds, runs and waves (default ${ENV}, "
                             f"else ./{DEFAULT})")


def add_verilog_arguments(parser: argparse.ArgumentParser) -> None:
    add_core_size_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, default=Path("core.v"), help="Verilog file to write")
    parser.set_defaults(run=run_verilog)


def run_verilog(args) -> int:
    from echoboard.hdl.cores import check_core
    from echoboard.hdl.verilog import TOPLEVEL, core_verilog

    fmt, size, lanes = core_config(args)
    check_core(args.core, fmt, size, lanes)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(core_verilog(fmt, size, lanes, core=args.core))
    print(f"wrote {args.output} (module {TOPLEVEL}: {args.core} core, {args.hru} HRU, P={size.oscillators}, "
          f"N={size.inputs}, K={lanes})", file=sys.stderr)
    return 0


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    from echoboard.host.selftest import BOARD_TARGETS, board_target

    add_core_size_arguments(parser)
    parser.add_argument("--level", choices=("core", "board"), default="core",
                        help="core: the Verilated HRU core; board: the whole board image through the wire protocol")
    parser.add_argument("--target", type=board_target, default="sim", metavar="URL",
                        help=f"board level: {BOARD_TARGETS} (default sim; a board at socket:// or serial:// is "
                             "verified at the size and lanes it reports, --core names its core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", "-L", type=positive_int, default=256)
    parser.add_argument("--nudge", choices=("constant", "per-step"), default="constant",
                        help="constant nudge vector (NUDGE store) or one per step through the nudge stream")
    parser.add_argument("--blocks", type=int, default=0, metavar="K",
                        help="board level: K HSSM blocks one after another, each through outputs passes (y_k and "
                             "du_j of every step compared, and KIN; the pipelined core's image) (default 0: plain "
                             "passes)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--waves", action="store_true",
                        help="write a VCD of the simulation (core, or the simulated board) and, on a core-level "
                             "mismatch, a short VCD around the first one; prints their paths (JSON: \"waves\")")
    add_build_root_argument(parser)
    parser.set_defaults(run=run_verify)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 (this process and its children) to stderr: stdout carries only the result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_verify(args) -> int:
    from echoboard.sim import waves

    fmt, size, lanes = core_config(args)
    if args.waves and args.level == "board" and args.target != "sim":
        raise ValueError(f"--waves records a simulation: --level core, or --level board --target sim "
                         f"(not {args.target})")
    per_step = args.nudge == "per-step"
    if args.blocks < 0:
        raise ValueError(f"--blocks must be >= 0, got {args.blocks}")
    if args.blocks and args.level != "board":
        raise ValueError("--blocks is a board-level option (the core level always checks the pipelined core's "
                         "block mode): add --level board")
    with stdout_to_stderr(), (waves.recording() if args.waves else contextlib.nullcontext()) as traces:
        if args.level == "core":
            from echoboard.hdl.verilog import verify_core

            passed, report = verify_core(fmt, size, lanes, length=args.length, seed=args.seed, per_step_nudge=per_step,
                                         core=args.core)
        else:
            from echoboard.host.selftest import verify_board_at

            result = verify_board_at(args.target, fmt, size, lanes, args.core, seed=args.seed, length=args.length,
                                     per_step_nudge=per_step, blocks=args.blocks)
            report = {k: result[k] for k in ("level", "target", "steps", "compared", "mismatches", "first_mismatch",
                                             "cycles")}
            passed = report["mismatches"] == 0
    if args.waves:
        report["waves"] = [str(path) for path in traces]
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{'PASS' if passed else 'FAIL'}: {report['compared']} integers compared, {report['mismatches']} "
              f"mismatches, first {report['first_mismatch']}; cycles {report['cycles']}")
        if "error" in report:
            print(report["error"], file=sys.stderr)
        for path in report.get("waves", []):
            print(f"{'mismatch window' if waves.is_window(path) else 'waveform'}: {path}")
    return 0 if passed else 1


def add_sim_board_arguments(parser: argparse.ArgumentParser) -> None:
    add_core_size_arguments(parser, default_lanes=1)
    parser.add_argument("--port", type=port_number, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    add_build_root_argument(parser)
    parser.set_defaults(run=run_sim_board)


def run_sim_board(args) -> int:
    from echoboard.sim import board_sim
    from echoboard.sim.board_image import ImageConfig, simulated_board_executable
    from echoboard.sim.paths import build_root

    fmt, size, lanes = core_config(args)
    config = ImageConfig(size, fmt, lanes, args.core)  # --core serial: the iCEBreaker's image
    if args.port:  # a port in use fails now, not after the image's build
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", args.port))
            except OSError as exc:
                raise OSError(exc.errno, f"127.0.0.1:{args.port}: {exc.strerror}") from None
    print(f"building the simulated board ({config.name}) ...", file=sys.stderr, flush=True)
    executable = simulated_board_executable(config, build_root("board_sim"), quiet=False)
    return board_sim.serve_forever(executable, args.port)


#: ``--help`` examples per subcommand (tests/test_cli_errors.py parses every one).
EXAMPLES = {
    "check-gradients": ["echoboard check-gradients", "echoboard check-gradients --hru nonlinear --length 4096 --json"],
    "sweep-formats": ["echoboard sweep-formats --length 1024 --seeds 0 --out /tmp/sweep.md"],
    "train": ["echoboard train", "echoboard train --dataset JapaneseVowels --algo bptt",
              "echoboard train --target 'serial:///dev/ttyUSB0?baud=3000000' --oscillators 16 --features raw",
              "echoboard train --target sim --boards 2"],
    "verilog": ["echoboard verilog -P 32 -N 12 -K 4 -o core.v", "echoboard verilog --core serial -K 1 -o serial.v"],
    "verify": ["echoboard verify --level core -P 24 -N 7 -K 4 -L 1500 --json",
               "echoboard verify --level board --core serial -K 1"],
    "sim-board": ["echoboard sim-board --port 5555", "echoboard sim-board --core serial -P 32 -N 12"],
    "build": ["echoboard build --board icebreaker", "echoboard build --board ulx3s-85f -P 32 -N 12 --json"],
    "program": ["echoboard program --board ulx3s-85f", "echoboard program --board icebreaker --dry-run",
                "echoboard program --board ulx3s-85f --flash build/ulx3s-85f/top.bit"],
    "selftest": ["echoboard selftest --target sim", "echoboard selftest --target golden --json",
                 "echoboard selftest --target 'serial:///dev/ttyUSB0?baud=3000000'",
                 "echoboard selftest --target 'serial:///dev/ttyUSB1?baud=3000000' --core serial -P 32 -N 12"],
}


def _epilog(examples: list[str]) -> str:
    return "examples:\n" + "\n".join(f"  {example}" for example in examples)


def _version() -> str:
    try:
        return importlib.metadata.version("echoboard")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: no package metadata)"


def build_parser() -> argparse.ArgumentParser:
    from echoboard.host import train

    parser = Parser(prog="echoboard", description="RHEL-trained Hamiltonian recurrent units on FPGAs.",
                    formatter_class=HelpFormatter,
                    epilog=_epilog([examples[0] for examples in EXAMPLES.values()])
                    + "\n\n`echoboard COMMAND --help` lists a command's options with their defaults; "
                      "a real board's bring-up: docs/bringup.md")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    from echoboard.firmware import boards, program
    from echoboard.host import selftest

    subcommands = [
        ("check-gradients", add_check_gradients_arguments, "RHEL (float and fixed point) against float64 BPTT, per parameter"),
        ("sweep-formats", add_sweep_arguments, "fixed-point format sweep (state bits x coefficient bits x ε x loss scale)"),
        ("train", lambda p: (train.add_train_arguments(p), add_build_root_argument(p)), "train the on-board model (HRU -> mean pool -> linear head) or an HSSM (--blocks) on a real data set"),
        ("verilog", add_verilog_arguments, "write the HRU core as Verilog"),
        ("verify", add_verify_arguments, "one random case through the Verilated core and the golden model"),
        ("sim-board", add_sim_board_arguments, "serve the simulated board (Verilated board image) on a loopback TCP port"),
        ("build", boards.add_build_arguments, "bitstream, utilisation and Fmax for a board (ulx3s-85f, icebreaker)"),
        ("program", program.add_program_arguments, "load a bitstream onto a board with openFPGALoader"),
        ("selftest", selftest.add_selftest_arguments,
         "IDENTIFY against the image this checkout builds, write/read-back of every writable region, "
         "ε = 0 echoes retracing random forward passes: one verdict line"),
    ]
    for name, add_arguments, help_text in subcommands:
        add_arguments(sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter,
                                     epilog=_epilog(EXAMPLES[name]) if name in EXAMPLES else None))
    return parser


def _fail(command: str, message, status: int) -> int:
    print(f"{command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    command = "echoboard"
    try:
        args = build_parser().parse_args(argv)
        command = f"echoboard {args.command}"
        if getattr(args, "build_root", None) is not None:
            from echoboard.sim.paths import set_build_root

            set_build_root(args.build_root)
        return int(args.run(args) or 0)
    except ValueError as exc:  # bad input
        return _fail(command, exc, 2)
    except OSError as exc:  # the machine: unwritable output, port in use, missing device, unreachable socket
        return _fail(command, exc, 1)
    except RuntimeError as exc:  # a tool failed (yosys, nextpnr, Verilator, the simulated board): the message
        # names its log; of the log's tail quoted after it, its last error line (else its last line)
        first, *tail = [line for line in str(exc).splitlines() if line.strip()]
        errors = [line for line in tail if "error" in line.lower()]
        return _fail(command, first + (f" ... {(errors or tail)[-1]}" if tail else ""), 1)
    except KeyboardInterrupt:
        return _fail(command, "interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
