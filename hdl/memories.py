"""Word stores of the HRU core: one datapath side, one host side, and a read-modify-write accumulator.

Every store is a synchronous-read ``amaranth.lib.memory.Memory`` with ONE read and ONE write
port, so it maps onto a block RAM (ECP5 DP16KD, iCE40 SB_RAM40_4K) or LUT RAM. The host side
(the memory-mapped port the board image drives) and the datapath share those two ports through
a multiplexer selected by ``host_sel``: the core grants the host access only while it is idle,
so neither side ever waits and no arbitration logic sits in the datapath.
"""
from amaranth.hdl import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from echoboard.hdl.fixed import wrap

__all__ = ["MemoryBus", "SharedMemory", "AccumulatorMemory", "addr_width"]


def addr_width(depth: int) -> int:
    """Address bits for ``depth`` words (at least one, so a one-word store still has a port)."""
    return max(1, ceil_log2(depth))


class MemoryBus(wiring.Signature):
    """Word-addressed host access (initiator's view): ``r_data`` is valid the cycle after ``addr``.

    ``w_en`` writes ``w_data`` to ``addr`` at the clock edge. Data are raw bits; signed words are
    truncated on write and sign-extended by whoever widens them on read.
    """

    def __init__(self, addr_width: int, data_width: int):
        super().__init__({
            "addr": Out(unsigned(addr_width)),
            "w_en": Out(1),
            "w_data": Out(unsigned(data_width)),
            "r_data": In(unsigned(data_width)),
        })


class SharedMemory(wiring.Component):
    """A store of ``depth`` words of ``shape`` with a datapath port pair and a host bus.

    Datapath: ``rd_addr`` -> ``rd_data`` one cycle later; ``wr_en/wr_addr/wr_data`` write at the edge.
    The read port is transparent for the write port: a read of the row being written returns
    the new word, which lets a read-modify-write loop issue the same row on consecutive cycles.
    While ``host_sel`` is high the host bus drives both ports and the datapath is ignored.

    ``writer``: who writes — "both" (default), "host" (a parameter store the datapath only reads)
    or "datapath" (an accumulator the host only reads): the other side's write data and address
    multiplexers are then left out (the iCE40 image counts every cell).
    """

    def __init__(self, shape, depth: int, writer: str = "both"):
        if writer not in ("both", "host", "datapath"):
            raise ValueError(f"writer must be 'both', 'host' or 'datapath', got {writer!r}")
        self._shape, self._depth, self._writer = shape, depth, writer
        aw = addr_width(depth)
        super().__init__({
            "rd_addr": In(unsigned(aw)),
            "rd_data": Out(shape),
            "wr_en": In(1),
            "wr_addr": In(unsigned(aw)),
            "wr_data": In(shape),
            "host": In(MemoryBus(aw, Shape.cast(shape).width)),
            "host_sel": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=self._shape, depth=self._depth, init=[])
        wr = mem.write_port()
        rd = mem.read_port(transparent_for=(wr,))
        m.d.comb += [
            rd.addr.eq(Mux(self.host_sel, self.host.addr, self.rd_addr)),
            self.rd_data.eq(rd.data),
            self.host.r_data.eq(rd.data),
        ]
        if self._writer == "host":
            m.d.comb += [wr.addr.eq(self.host.addr), wr.data.eq(self.host.w_data), wr.en.eq(self.host_sel & self.host.w_en)]
        elif self._writer == "datapath":
            m.d.comb += [wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data), wr.en.eq(~self.host_sel & self.wr_en)]
        else:
            m.d.comb += [
                wr.addr.eq(Mux(self.host_sel, self.host.addr, self.wr_addr)),
                wr.data.eq(Mux(self.host_sel, self.host.w_data, self.wr_data)),
                wr.en.eq(Mux(self.host_sel, self.host.w_en, self.wr_en)),
            ]
        return m


class AccumulatorMemory(wiring.Component):
    """``mem[addr] = wrap(base + addend, width)`` at one update per clock; base is 0 when ``clear``.

    Latency 3: the row is read in the cycle ``valid`` is high, the read word and the addend are
    registered (a block RAM's output is slow; the wide adder gets a cycle of its own), and the sum
    is written back in the third cycle; ``overflow`` reports whether it wrapped
    (golden_model.fixed.add_wrap, 64 bits included) one cycle later, registered: the wide
    adder's carry chain then ends in a register, not in the caller's event counting. The read is
    transparent for the write, so updates of one row must be at least 2 cycles apart (the core's
    updates of a row are a whole time slot apart). Used for the position sum and the A and B
    gradient accumulators.
    """

    def __init__(self, width: int, depth: int, addend_width: int):
        self._width, self._depth = width, depth
        aw = addr_width(depth)
        super().__init__({
            "valid": In(1),
            "addr": In(unsigned(aw)),
            "addend": In(signed(addend_width)),
            "clear": In(1),
            "overflow": Out(1),
            "host": In(MemoryBus(aw, width)),
            "host_sel": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.store = store = SharedMemory(signed(self._width), self._depth)
        wiring.connect(m, wiring.flipped(self.host), store.host)
        valid, addr = Signal.like(self.valid), Signal.like(self.addr)
        addend, clear = Signal.like(self.addend), Signal.like(self.clear)
        m.d.sync += [valid.eq(self.valid), addr.eq(self.addr), addend.eq(self.addend), clear.eq(self.clear)]
        valid2, addr2, addend2 = Signal.like(valid), Signal.like(addr), Signal.like(addend)
        base = Signal.like(store.rd_data)
        m.d.sync += [valid2.eq(valid), addr2.eq(addr), addend2.eq(addend), base.eq(Mux(clear, 0, store.rd_data))]
        total, overflow = wrap(base + addend2, self._width)
        m.d.sync += self.overflow.eq(valid2 & overflow)
        m.d.comb += [
            store.host_sel.eq(self.host_sel),
            store.rd_addr.eq(self.addr),
            store.wr_en.eq(valid2),
            store.wr_addr.eq(addr2),
            store.wr_data.eq(total),
        ]
        return m
