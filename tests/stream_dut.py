"""A tiny stream FIFO used only to test the simulation infrastructure (sim/).

The payload mixes signed and unsigned fields of odd widths and an array, so a packing
mistake in the testbench (field order, sign extension, array stride) cannot go unnoticed.
"""
from amaranth import Module, Shape, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out


class Sample(data.Struct):
    a: signed(12)
    b: unsigned(7)
    flag: unsigned(1)
    lanes: data.ArrayLayout(signed(5), 3)
    c: signed(17)


class StreamFifo(wiring.Component):
    """Buffered FIFO between two ``Sample`` streams; the input is ready while not full."""

    def __init__(self, depth: int = 4):
        self._depth = depth
        super().__init__({"i": In(stream.Signature(Sample)), "o": Out(stream.Signature(Sample))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = buf = fifo.SyncFIFOBuffered(width=Shape.cast(Sample).width, depth=self._depth)
        m.d.comb += [
            buf.w_data.eq(self.i.payload),
            buf.w_en.eq(self.i.valid),
            self.i.ready.eq(buf.w_rdy),
            self.o.payload.eq(buf.r_data),
            self.o.valid.eq(buf.r_rdy),
            buf.r_en.eq(self.o.ready),
        ]
        return m

