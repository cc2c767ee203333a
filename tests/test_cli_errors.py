"""The `echoboard` command line fails in one line: run in a subprocess, each bad input or
environment gives exactly one stderr line, a non-zero exit and no traceback; `--help` shows every
default and examples that parse; `--version` comes from the package metadata."""
import importlib.metadata
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from echoboard.host import cli

ROOT = Path(__file__).resolve().parent.parent


# A job started in the background (`cmd &`, as CI may start the suite) inherits SIGINT ignored, and a
# Python started so never raises KeyboardInterrupt: the Ctrl-C test starts the CLI through this
# one-liner, which gives SIGINT its default disposition and execs the CLI (kept across exec).
DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.executable, [sys.executable, '-m', 'echoboard.host.cli', *sys.argv[1:]])")


def start_cli(*argv, cwd=None, env=None, default_sigint=False) -> subprocess.Popen:
    launcher = ["-c", DEFAULT_SIGINT] if default_sigint else ["-m", "echoboard.host.cli"]
    return subprocess.Popen([sys.executable, *launcher, *argv], cwd=cwd or ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_cli(*argv, cwd=None, env=None) -> tuple[int, str, list[str], float]:
    """(exit status, stdout, stderr lines, seconds) of `python -m echoboard.host.cli ARGV`."""
    start = time.monotonic()
    proc = start_cli(*argv, cwd=cwd, env=env)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err.splitlines(), time.monotonic() - start


def assert_one_line_failure(status: int, err: list[str], command: str, message: str) -> None:
    assert status != 0
    assert len(err) == 1, err
    assert err[0].startswith(f"echoboard {command}: error: ") and message in err[0], err[0]


@pytest.mark.parametrize("argv, message", [
    (["verilog", "-P", "abc"], "argument --oscillators/-P: expected a positive integer, got 'abc'"),
    (["verify", "--length", "0"], "expected a positive integer, got 0"),
    (["sim-board", "--port", "abc"], "expected a TCP port number, got 'abc'"),
    (["sim-board", "--port", "70000"], "expected a TCP port number (0 to 65535), got 70000"),
    (["build", "--board", "ulx3s-85f", "-P", "many"], "argument --oscillators/-P: invalid int value: 'many'"),
    (["program", "--board", "de0-nano"], "argument --board: invalid choice: 'de0-nano'"),
])
def test_bad_arguments_are_one_line(argv, message):
    status, out, err, _ = run_cli(*argv)
    assert status == 2 and out == ""
    assert_one_line_failure(status, err, argv[0], message)


@pytest.mark.parametrize("argv", [
    ["verilog", "-o", "OUT/core.v"], ["verify"], ["verify", "--level", "board"], ["sim-board"],
    ["build", "--board", "icebreaker", "--build-dir", "OUT"], ["build", "--board", "ulx3s-85f", "--build-dir", "OUT"],
])
def test_impossible_sizes_are_refused_before_any_work(argv, tmp_path):
    """-P 1000000: no host can address it (16-bit word addresses). Refused in one line before
    anything is elaborated or built (the time is the interpreter's and the imports', see below)."""
    argv = [str(tmp_path / "out") + a[3:] if a.startswith("OUT") else a for a in argv]
    status, out, err, seconds = run_cli(*argv, "-P", "1000000")
    assert status == 2 and out == ""
    assert_one_line_failure(status, err, argv[0], "P*N (1000000*8 = 8000000) must fit 16-bit word addresses")
    assert not (tmp_path / "out").exists()
    assert seconds < 30  # it used to elaborate for minutes (verilog, verify --level core)


def test_refusing_an_impossible_size_takes_milliseconds(tmp_path, capsys):
    """In process, after the imports (which a fresh `echoboard` pays: ~1.2 s, mostly jax), the
    refusal itself is immediate for every sized command."""
    commands = [["verilog", "-o", str(tmp_path / "core.v")], ["verify"], ["verify", "--level", "board"],
                ["sim-board"], ["build", "--board", "icebreaker", "--build-dir", str(tmp_path / "b")]]
    for argv in commands:  # warm-up: the imports
        assert cli.main([*argv, "-P", "1000000"]) == 2
    for argv in commands:
        start = time.monotonic()
        assert cli.main([*argv, "-P", "1000000"]) == 2
        assert time.monotonic() - start < 1.0, argv
    assert not any(tmp_path.iterdir())
    capsys.readouterr()


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    status, out, err, _ = run_cli("verilog", "-o", str(tmp_path / "file" / "core.v"))
    assert status == 1 and out == ""
    assert_one_line_failure(status, err, "verilog", f"File exists: '{tmp_path / 'file'}'")


def test_port_in_use_is_one_line_before_the_build():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, out, err, _ = run_cli("sim-board", "--port", str(port))
    assert status == 1 and out == ""
    assert_one_line_failure(status, err, "sim-board", f"127.0.0.1:{port}: Address already in use")


def test_missing_serial_device_is_one_line(monkeypatch, capsys):
    """An OSError from pyserial (serial.SerialException) reaching main: one line, exit 1."""
    from echoboard.host.transports import open_serial

    monkeypatch.setattr(cli, "run_verilog", lambda args: open_serial("serial:///dev/ttyEchoboardNone?baud=3000000"))
    assert cli.main(["verilog"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert_one_line_failure(1, err, "verilog", "could not open port /dev/ttyEchoboardNone")


def test_a_failing_tool_is_one_line_naming_its_log_and_its_error(monkeypatch, capsys):
    """A ToolError (yosys, nextpnr), whose message quotes its log's tail: one line, exit 1, the log's
    path and the tail's last error line (what went wrong, not a warning after it) kept."""
    from echoboard.hdl.synth import ToolError

    def fail(args):
        raise ToolError("sh build_top.sh failed with exit status 1 (log: build/x/build.log)\n...\n"
                        "ERROR: Assert `GetSize(a) == GetSize(b)' failed.\nWarning: a later warning\n")

    monkeypatch.setattr(cli, "run_verilog", fail)
    assert cli.main(["verilog"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert_one_line_failure(1, err, "verilog", "(log: build/x/build.log) ... ERROR: Assert")


def test_ctrl_c_is_one_line(tmp_path):
    """SIGINT while a command waits on a child process (`program` on a stand-in loader that
    hangs): the child is stopped, one line, exit 130."""
    loader, started = tmp_path / "openFPGALoader", tmp_path / "loader-started"
    loader.write_text('#!/bin/sh\n[ "$1" = --Version ] && echo "openFPGALoader v0" && exit 0\n'
                      f'touch {started}\nexec sleep 60\n')
    loader.chmod(loader.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "top.bin").write_bytes(bytes(16))
    proc = start_cli("program", "--board", "icebreaker", str(tmp_path / "top.bin"),
                     env={"OPENFPGALOADER": str(loader)}, default_sigint=True)
    first = proc.stderr.readline()
    assert first.startswith("programming the icebreaker: ")
    # interrupt only once the loader runs: a SIGINT while Popen is still starting it would leave
    # the loader holding our pipes (a race of the test, not of the command)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists()
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=30)
    assert proc.returncode == 130 and out == ""
    assert_one_line_failure(proc.returncode, rest.splitlines(), "program", "interrupted")


def test_version_comes_from_the_package_metadata():
    status, out, err, _ = run_cli("--version")
    assert (status, out, err) == (0, f"echoboard {importlib.metadata.version('echoboard')}\n", [])


def _subcommands(parser):
    return next(a for a in parser._actions if a.dest == "command").choices


def test_help_shows_every_default_and_examples_that_parse():
    """Each subcommand's --help: every option that takes a value and has a default names it; an
    examples section whose commands parse; the top-level help lists examples too."""
    parser = cli.build_parser()
    assert "examples:\n  echoboard " in parser.format_help()
    for name, sub in _subcommands(parser).items():
        text = sub.format_help()
        examples = text.split("examples:\n", 1)[1].splitlines()
        assert examples and all(line.startswith("  echoboard " + name) for line in examples), name
        for example in examples:
            parser.parse_args(shlex.split(example)[1:])
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.required or action.default is None:
                continue
            start = re.search(rf"^  {re.escape(action.option_strings[0])}[ ,\n]", text, re.M).start()
            block = text[start:].split("\n  -", 1)[0]
            assert "default" in block, (name, action.option_strings)
