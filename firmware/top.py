"""The board-agnostic board image: link + command sequencer + HRU core.

::

    rx bytes -> COBSDecoder -> FrameReceiver --header/payload--> Sequencer <--> HRUCore
    tx bytes <- COBSEncoder <- CRCAppender <- ReplyCache <--reply--'

:class:`BoardImage` has two faces that share one design:

- ``BoardImage(fmt, size, lanes)`` (no ``clock_hz``): ``rx`` / ``tx`` are byte streams
  (``In/Out(stream.Signature(8))``). This is the simulated board's top level
  (sim/board_sim's port contract: ``rx__valid/ready/payload``, ``tx__valid/ready/payload``).
- ``BoardImage(fmt, size, lanes, clock_hz=F)``: ``rx`` / ``tx`` are the UART pins; the image is
  then ``UARTRx -> BoardImage(byte streams) -> UARTTx``, so the bitstream contains exactly the
  simulated board's module plus the two UART shifters (the "pins").

The link is put together here from firmware/link.py's building blocks, the same ones and in the
same order as ``firmware.link.Link``, minus its UART: ``Link`` hard-wires ``UARTRx``/``UARTTx``
inside, and the simulated board has no bit-level UART.

The build hash that IDENTIFY reports is the first 16 bytes of the SHA-256 of the image's RTLIL
(``amaranth.back.rtlil``, without source locations) generated with an all-zero hash: it changes
with every change of the design or its configuration, and with nothing else (comments, file
paths, the clock), so the simulated board and a bitstream of the same configuration report the
same hash.
"""
from __future__ import annotations

import functools
import hashlib

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from echoboard.firmware import link
from echoboard.firmware.protocol import BUILD_HASH_BYTES, CoreConfig
from echoboard.firmware.sequencer import Sequencer, core_config
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.hdl.cores import check_core, make_core

__all__ = ["BoardImage", "make_image", "design_hash", "image_config", "image_format", "DEFAULT_SIZE", "SIM_TOP"]

#: The default core of the board image (docs/protocol.md's examples use it).
DEFAULT_SIZE = HRUSize(16, 8)
#: Verilog module name of the byte-stream image (the simulated board).
SIM_TOP = "board_image"


class BoardImage(wiring.Component):
    """Link + sequencer + core; byte streams without ``clock_hz``, UART pins with it.

    ``build_hash``: 16 bytes for IDENTIFY; None = :func:`design_hash` of this configuration.
    ``baud``: the UART rate of the pins variant (``firmware.link.baud_divisor`` checks it).
    ``core``: a key of :data:`hdl.cores.CORES` (the pipelined core, or the serial one for iCE40).
    ``fmt``: a FixedFormat builds the linear HRU, a NonlinearFormat the nonlinear one (pipelined only).
    """

    def __new__(cls, fmt: FixedFormat | None = None, size: HRUSize | None = None, lanes: int = 1, *args,
                core: str = "pipelined", **kwargs):
        # a clear error before the object exists (no "unused elaboratable" warning) or anything is elaborated
        check_core(core, fmt or FixedFormat(), size or DEFAULT_SIZE, lanes)
        # the frames' limits
        image_config(fmt or FixedFormat(), size or DEFAULT_SIZE, lanes, bytes(BUILD_HASH_BYTES), core)
        return super().__new__(cls)

    def __init__(self, fmt: FixedFormat | None = None, size: HRUSize | None = None, lanes: int = 1,
                 clock_hz: int | None = None, build_hash: bytes | None = None, *, baud: int = link.DEFAULT_BAUD,
                 core: str = "pipelined"):
        self.fmt, self.size, self.lanes, self.core = fmt or FixedFormat(), size or DEFAULT_SIZE, lanes, core
        self.clock_hz = clock_hz
        self.divisor = None if clock_hz is None else link.baud_divisor(clock_hz, baud)
        if build_hash is None:
            build_hash = design_hash(self.fmt, self.size, lanes, core)
        if len(build_hash) != BUILD_HASH_BYTES:
            raise ValueError(f"build_hash must be {BUILD_HASH_BYTES} bytes, got {len(build_hash)}")
        self.build_hash = bytes(build_hash)
        if clock_hz is None:
            ports = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))}
        else:
            ports = {"rx": In(1, init=1), "tx": Out(1, init=1)}
        super().__init__(ports)

    @property
    def config(self) -> CoreConfig:
        """What IDENTIFY reports."""
        return image_config(self.fmt, self.size, self.lanes, self.build_hash, self.core)

    def elaborate(self, platform):
        m = Module()
        if self.divisor is not None:  # the pins: UART shifters around the byte-stream image
            m.submodules.uart_rx = uart_rx = link.UARTRx(self.divisor)
            m.submodules.uart_tx = uart_tx = link.UARTTx(self.divisor)
            m.submodules.image = image = BoardImage(self.fmt, self.size, self.lanes, build_hash=self.build_hash,
                                                    core=self.core)
            m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
            wiring.connect(m, uart_rx.o, image.rx)
            wiring.connect(m, image.tx, uart_tx.i)
            return m

        m.submodules.cobs_dec = cobs_dec = link.COBSDecoder()
        m.submodules.receiver = receiver = link.FrameReceiver()
        m.submodules.cache = cache = link.ReplyCache()
        m.submodules.crc_app = crc_app = link.CRCAppender()
        m.submodules.cobs_enc = cobs_enc = link.COBSEncoder()
        m.submodules.core = core = make_core(self.core, self.fmt, self.size, self.lanes)
        m.submodules.sequencer = seq = Sequencer(core, self.build_hash)

        wiring.connect(m, wiring.flipped(self.rx), cobs_dec.i)
        wiring.connect(m, cobs_dec.o, receiver.i)
        wiring.connect(m, receiver.header, seq.header)
        wiring.connect(m, receiver.payload, seq.payload)
        wiring.connect(m, seq.reply, cache.i)
        wiring.connect(m, cache.o, crc_app.i)
        wiring.connect(m, crc_app.o, cobs_enc.i)
        wiring.connect(m, cobs_enc.o, wiring.flipped(self.tx))
        for name in ("frames_ok", "crc_errors", "framing_errors", "overruns"):
            m.d.comb += getattr(seq, name).eq(getattr(receiver, name))

        # the core side (plain assignments: the sequencer's port signatures are built from the
        # core's layouts but are distinct signature objects)
        m.d.comb += [
            core.cmd.valid.eq(seq.core_cmd.valid), core.cmd.payload.eq(seq.core_cmd.payload),
            seq.core_cmd.ready.eq(core.cmd.ready),
            core.u.valid.eq(seq.core_u.valid), core.u.payload.eq(seq.core_u.payload),
            seq.core_u.ready.eq(core.u.ready),
            core.nudge.valid.eq(seq.core_nudge.valid), core.nudge.payload.eq(seq.core_nudge.payload),
            seq.core_nudge.ready.eq(core.nudge.ready),
            core.bus.addr.eq(seq.core_bus.addr), core.bus.w_en.eq(seq.core_bus.w_en),
            core.bus.w_data.eq(seq.core_bus.w_data), seq.core_bus.r_data.eq(core.bus.r_data),
            seq.core_busy.eq(core.busy),
        ]
        if seq.block:  # the per-step outputs of an outputs pass
            for name in ("y", "du"):
                ours, theirs = getattr(seq, f"core_{name}"), getattr(core, name)
                m.d.comb += [ours.valid.eq(theirs.valid), ours.payload.eq(theirs.payload),
                             theirs.ready.eq(ours.ready)]
        return m


def image_config(fmt: FixedFormat, size: HRUSize, lanes: int, build_hash: bytes, core: str = "pipelined"
                 ) -> CoreConfig:
    """The :class:`CoreConfig` a board image of this configuration (``core`` of hdl.cores.CORES)
    reports through IDENTIFY."""
    return core_config(fmt, size, lanes, build_hash, core)


@functools.lru_cache(maxsize=None)
def design_hash(fmt: FixedFormat, size: HRUSize, lanes: int, core: str = "pipelined") -> bytes:
    """First 16 bytes of the SHA-256 of the byte-stream image's RTLIL, built with a zero hash."""
    from amaranth.back import rtlil

    image = BoardImage(fmt, size, lanes, build_hash=bytes(BUILD_HASH_BYTES), core=core)
    text = rtlil.convert(image, name=SIM_TOP, emit_src=False)
    return hashlib.sha256(text.encode()).digest()[:BUILD_HASH_BYTES]


def image_format(hru: str = "linear"):
    """The number format of the ``hru`` board image: the default FixedFormat (linear) or
    golden_model.hru_fixed_nonlinear.NonlinearFormat (nonlinear; imported only then: it needs JAX)."""
    if hru == "linear":
        return FixedFormat()
    if hru != "nonlinear":
        raise ValueError(f"unknown HRU {hru!r}; known: linear, nonlinear")
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat

    return NonlinearFormat()


def make_image(clock_hz: int, oscillators: int | None = None, inputs: int | None = None, lanes: int | None = None,
               *, hru: str = "linear", baud: int = link.DEFAULT_BAUD, core: str = "pipelined") -> BoardImage:
    """The image for ``firmware.boards`` (UART pins at ``baud``, clock ``clock_hz``, ``core`` of hdl.cores.CORES,
    the ``hru`` HRU in :func:`image_format`)."""
    size = HRUSize(oscillators or DEFAULT_SIZE.oscillators, inputs or DEFAULT_SIZE.inputs, DEFAULT_SIZE.max_length)
    return BoardImage(image_format(hru), size, lanes or 1, clock_hz=clock_hz, baud=baud, core=core)
