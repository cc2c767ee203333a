"""A tiny board image with the simulated board's port contract, for testing sim/board_sim.

Ports (Verilog): ``clk``, ``rst``, ``rx__valid/rx__ready/rx__payload[7:0]`` (bytes into the
board), ``tx__valid/tx__ready/tx__payload[7:0]`` (bytes out of it). Every received byte comes
back XOR ``KEY`` through a small FIFO. A free-running 16-bit LFSR makes the board occasionally
not ready to receive (about 1 cycle in 8) and occasionally holds back its output (about 1 in
8), so the harness's valid/ready handling is exercised in both directions, and ``tx.valid``
may even drop before a transfer (the harness must not assume it stays up).
"""
from __future__ import annotations

import os
from pathlib import Path

from amaranth import Cat, Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

KEY = 0x5A
TOP_NAME = "board_loopback"


def transform(data: bytes) -> bytes:
    """What the loopback board returns for ``data``."""
    return bytes(b ^ KEY for b in data)


class LoopbackBoard(wiring.Component):
    def __init__(self, depth: int = 8, stalls: bool = True):
        self._depth, self._stalls = depth, stalls
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = buf = fifo.SyncFIFOBuffered(width=8, depth=self._depth)
        lfsr = Signal(16, init=0xACE1)  # x^16 + x^14 + x^13 + x^11 + 1, maximal length
        m.d.sync += lfsr.eq(Cat(lfsr[5] ^ lfsr[3] ^ lfsr[2] ^ lfsr[0], lfsr[:15]))
        hold_rx = Signal()
        hold_tx = Signal()
        if self._stalls:
            m.d.comb += [hold_rx.eq(lfsr[0:3] == 0), hold_tx.eq(lfsr[8:11] == 0)]
        m.d.comb += [
            buf.w_data.eq(self.rx.payload ^ KEY),
            buf.w_en.eq(self.rx.valid & ~hold_rx),
            self.rx.ready.eq(buf.w_rdy & ~hold_rx),
            self.tx.payload.eq(buf.r_data),
            self.tx.valid.eq(buf.r_rdy & ~hold_tx),
            buf.r_en.eq(self.tx.ready & ~hold_tx),
        ]
        return m


def write_verilog(path: os.PathLike | str, **kwargs) -> Path:
    """Write the loopback board as Verilog module :data:`TOP_NAME` (file left alone if unchanged)."""
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    from amaranth.back import verilog

    text = verilog.convert(LoopbackBoard(**kwargs), name=TOP_NAME, emit_src=False)
    path = Path(path)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path.resolve()
