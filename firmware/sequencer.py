"""The command sequencer: the link's frames in, the HRU core driven, replies out (docs/protocol.md).

It sits between ``firmware.link`` (``header`` / ``payload`` / ``reply`` streams and the link
counters) and ``hdl.hru_core.HRUCore`` (``cmd``, ``u``, the ``bus`` host port, ``busy``). Its
behaviour is specified, byte for byte, by the golden board (firmware/board_model.py): the order
of the checks, the error codes, the STATUS fields, what ABORT does.

Structure: one control FSM (:class:`Sequencer`) plus small datapath helpers, each with one job,
so the FSM only says *which* field is read or written next, never how bytes become words:

- :class:`FieldAssembler` turns payload bytes into little-endian fields of 1..4 bytes (more
  only for a format with wider writable words; the
  FSM names the width of the field it wants; words of the fixed-point format are truncated by
  the stores, so no sign handling is needed on the way in);
- :class:`FieldSerializer` turns fields (value, byte count) into reply bytes, and a ``replay``
  request into the link's single ``replay`` beat;
- :class:`Divider` gives the number of words / steps in a payload (a payload length divided by
  a word or step size; the check must be done BEFORE any byte is acted on);
- :class:`AddressWalker` maps the protocol's word index (oscillator-major, B row-major) to the
  core's {region, lane, index} address, one step per word, so no division by the lane count is
  needed anywhere;
- :class:`NudgeFeeder` buffers one streamed nudge vector and cuts it into the core's K-word beats
  (echo STREAM mode, see below).

Every check of a request (UNKNOWN_COMMAND, WRONG_STATE, BAD_LENGTH, BAD_ARGUMENT, in that order)
is made from the header and the request's fixed fields before anything is written or any input
reaches the core, so an error changes nothing stored; its payload is then drained.

Overflow counters: the core's COUNTERS region is readable only while the core is idle, but
STATUS must answer during a pass too. The sequencer therefore keeps a copy of the four counters
(in a small block RAM), read from the core after every pass, ABORT and CLEAR, and zeroes the
running pass's counters at its START exactly as the core does; so STATUS reports during a pass
what the golden board reports (the running phase's counter as 0).

Echo STREAM mode (capability bit 0): ECHO_START's nudge is the first vector of the core's
``nudge`` stream and each ECHO_DATA step's nudge the next one, through :class:`NudgeFeeder`; the
last step's nudge is dropped. ABORT feeds zero inputs and zero nudges.

Outputs passes (protocol v2 *Per-step streams*; only with a core in HSSM block mode, the
pipelined one: the serial core's image has none of this logic): a START with the outputs flag
runs the core with ``block`` set; :class:`OutputBuffer` takes its ``y`` / ``du`` beats into a ring
of two chunks' words, always draining them (ABORT included), and the reply to chunk c, sent once
chunk c − 1's last output is in, carries chunk c − 1's part (``first``, ``steps``, the words
through :class:`DensePacker`) between its header and its body; OUTPUTS reads the last chunk's
part again without moving anything. KIN and GAIN are plain regions of the block's address map.
"""

from typing import NamedTuple

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from echoboard.firmware import protocol
from echoboard.firmware.link import FrameByte, FrameHeader, ReplyByte
from echoboard.firmware.protocol import (ECHO_OUTPUTS_FLAG, IDENTIFY_REQUEST, IDENTIFY_V1_REPLY, PIPELINED_CAPABILITIES,
                               Capability, Command, CoreConfig, EchoMode, ForwardFlags, Messages, PassState, Region,
                               Status, word_bytes)
from echoboard.hdl.address_map import PHASES
from echoboard.hdl.cores import CORES
from echoboard.hdl.hru_core import HRUCore, Op
from echoboard.hdl.memories import MemoryBus

__all__ = ["FieldAssembler", "FieldSerializer", "Divider", "AddressWalker", "NudgeFeeder", "OutputBuffer",
           "DensePacker", "Sequencer", "core_config", "has_block_mode"]

FIELD_BITS = 64  # the widest field: an accumulator word of up to 64 bits


def has_block_mode(core_class: type) -> bool:
    """The pipelined core has HSSM block mode (its ``y`` / ``du`` streams, KIN, GAIN); the serial one
    (iCE40UP5K) has not, so its image carries none of the outputs passes' logic."""
    return issubclass(core_class, HRUCore)


def core_config(fmt, size, lanes: int, build_hash: bytes, core: str = "pipelined") -> CoreConfig:
    """The :class:`CoreConfig` that IDENTIFY reports for a ``core`` of hdl.cores.CORES: echo STREAM
    mode, and with block mode the outputs passes (``protocol.PIPELINED_CAPABILITIES``)."""
    capabilities = PIPELINED_CAPABILITIES if has_block_mode(CORES[core]) else Capability.ECHO_STREAM
    return CoreConfig(size, fmt, lanes, capabilities, bytes(build_hash))


class ReplyField(data.Struct):
    value: unsigned(FIELD_BITS)
    nbytes: unsigned(4)  # 1..8 bytes, little-endian
    last: 1  # the reply body ends with this field
    replay: 1  # instead of a field: the link resends its cached reply (value/nbytes ignored)


class FieldAssembler(wiring.Component):
    """Payload bytes -> little-endian fields of ``nbytes`` (1..``width_bytes``) bytes.

    ``nbytes`` is the size of the field that the next byte taken belongs to, so it is the FSM
    that decides where fields end. Bytes are taken only while ``en`` is high, and while a
    finished field waits in ``o`` only with ``chain``: then the byte taken in the cycle that
    field is taken starts the NEXT field, and ``nbytes`` must already give that field's size.
    A parse state reads one field and moves on, so it leaves ``chain`` low (one idle cycle per
    field); the input stream of a pass knows its next field and chains, at one byte per clock.
    Upper bytes of a field narrower than ``width_bytes`` are zero.

    Cell budget (iCE40UP5K): ``width_bytes`` is the widest field a request carries (4 bytes for
    the default format: the u32 fields and 32-bit words; the 64-bit accumulators are read-only),
    not :data:`FIELD_BITS`, and one register both assembles a field and holds it in ``o``: a byte
    taken while ``o`` is valid (``chain``) is only stored at the clock edge that takes ``o``.
    """

    def __init__(self, width_bytes: int = 4):
        self.width_bytes = width_bytes
        super().__init__({
            "i": In(stream.Signature(FrameByte)),
            "o": Out(stream.Signature(data.StructLayout({"value": unsigned(8 * width_bytes), "last": 1}))),
            "en": In(1), "chain": In(1), "nbytes": In(unsigned(4)),
        })

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.width_bytes))  # bytes of the field being assembled so far
        m.d.comb += self.i.ready.eq(self.en & (~self.o.valid | (self.chain & self.o.ready)))
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            for k in range(self.width_bytes):  # byte k: this byte at k, zero above it
                with m.If(count == k):
                    m.d.sync += self.o.p.value.word_select(k, 8).eq(self.i.p.data)
                with m.Elif(count < k):
                    m.d.sync += self.o.p.value.word_select(k, 8).eq(0)
            with m.If(count + 1 >= self.nbytes):
                m.d.sync += [self.o.valid.eq(1), self.o.p.last.eq(self.i.p.last), count.eq(0)]
            with m.Else():
                m.d.sync += count.eq(count + 1)
        return m


class FieldSerializer(wiring.Component):
    """Reply fields -> reply bytes (little-endian), at one byte per cycle, registered.

    A ``replay`` field becomes the single ``replay`` beat of :class:`firmware.link.ReplyCache`.
    """

    i: In(stream.Signature(ReplyField))
    o: Out(stream.Signature(ReplyByte))

    def elaborate(self, platform):
        m = Module()
        shift = Signal(FIELD_BITS)
        left = Signal(range(9))
        last, replay = Signal(), Signal()
        m.d.comb += [
            self.o.valid.eq(left != 0),
            self.o.p.data.eq(shift[:8]),
            self.o.p.last.eq(last & (left == 1)),
            self.o.p.replay.eq(replay),
            self.i.ready.eq((left == 0) | ((left == 1) & self.o.ready)),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shift.eq(self.i.p.value), left.eq(Mux(self.i.p.replay, 1, self.i.p.nbytes)),
                         last.eq(self.i.p.last | self.i.p.replay), replay.eq(self.i.p.replay)]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += [shift.eq(shift >> 8), left.eq(left - 1)]
        return m


class Divider(wiring.Component):
    """``dividend // divisor`` and ``% divisor`` by restoring division, one quotient bit per cycle.

    A division takes ``width`` cycles: the width of a payload length, which the receiver's frame
    buffer (:data:`protocol.RX_BUFFER_BYTES`) bounds to 10 bits. ``start`` loads the operands and
    ``busy`` is high until the results are valid. Used once per request, for the number of
    words of a WRITE and the number of steps of a DATA chunk.
    """

    def __init__(self, width: int = 10):
        self.width = width
        super().__init__({
            "start": In(1), "dividend": In(unsigned(width)), "divisor": In(unsigned(width)),
            "busy": Out(1), "quotient": Out(unsigned(width)), "remainder": Out(unsigned(width)),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.width
        divisor = Signal(w)
        left = Signal(range(w + 1))
        trial = Signal(w + 1)
        m.d.comb += [self.busy.eq(left != 0), trial.eq(Cat(self.quotient[w - 1], self.remainder))]
        with m.If(self.start):
            m.d.sync += [self.quotient.eq(self.dividend), self.remainder.eq(0), divisor.eq(self.divisor),
                         left.eq(w)]
        with m.Elif(left != 0):
            m.d.sync += left.eq(left - 1)
            with m.If(trial >= divisor):
                m.d.sync += [self.remainder.eq(trial - divisor), self.quotient.eq(Cat(1, self.quotient[:w - 1]))]
            with m.Else():
                m.d.sync += [self.remainder.eq(trial), self.quotient.eq(Cat(0, self.quotient[:w - 1]))]
        return m


class AddressWalker(wiring.Component):
    """The core address of word ``index`` of a region, walked one word at a time.

    Protocol index i of a per-oscillator region is oscillator i; of B / ACC_B it is i·N + j.
    The core keeps oscillator i in lane i % K at row i // K (hdl.address_map.AddressMap). Walking
    (column fastest, then lane, then row) needs only counters, where the direct mapping would
    need a division by K. ``load`` restarts at index 0 of ``region``; ``step`` moves on by one
    word (a READ or WRITE starting at ``start`` first steps ``start`` times). COUNTERS are
    addressed by their index in lane 0.
    """

    def __init__(self, core: HRUCore):
        self._amap = amap = core.address_map
        self._inputs = core.size.inputs
        super().__init__({
            "load": In(1), "region": In(unsigned(region_bits(amap))), "step": In(1),
            "addr": Out(unsigned(amap.addr_width)),
        })

    def elaborate(self, platform):
        m = Module()
        amap, inputs = self._amap, self._inputs
        region = Signal(region_bits(amap))
        matrix, counters = Signal(), Signal()
        col = Signal(range(max(inputs, 2)))
        lane = Signal(range(max(amap.lanes, 2)))
        base = Signal(amap.index_width + 1)  # row · columns
        index = Signal(amap.index_width)
        m.d.comb += [
            index.eq(base + col),
            self.addr.eq(Cat(index, lane[:amap.lane_width], region)),
        ]
        ncols = Mux(matrix, inputs, 1)
        last_lane = Mux(counters, 0, amap.lanes - 1)
        with m.If(self.load):
            m.d.sync += [region.eq(self.region), matrix.eq((self.region == Region.B) | (self.region == Region.ACC_B)),
                         counters.eq(self.region == Region.COUNTERS), col.eq(0), lane.eq(0), base.eq(0)]
        with m.Elif(self.step):
            with m.If(col != ncols - 1):
                m.d.sync += col.eq(col + 1)
            with m.Else():
                m.d.sync += col.eq(0)
                with m.If(lane != last_lane):
                    m.d.sync += lane.eq(lane + 1)
                with m.Else():
                    m.d.sync += [lane.eq(0), base.eq(base + ncols)]
        return m


class NudgeFeeder(wiring.Component):
    """Streamed nudge words (oscillator order) -> the core's ``nudge`` beats of K words.

    A FIFO of one whole vector (P words) sits in front of the beat builder. It is needed, not
    an optimisation: the wire carries each step's nudge AFTER its input (n_{j-1} follows u_j),
    while the core takes vector k only once it runs step k - 1, i.e. after it has the NEXT
    step's input. Without room for one vector the request stream would stall on a vector the
    core cannot take yet, in front of the input the core waits for.
    """

    def __init__(self, fmt, oscillators: int, lanes: int):
        self._width, self._depth, self._lanes = fmt.state_width, oscillators, lanes
        super().__init__({
            "i": In(stream.Signature(unsigned(fmt.state_width))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(fmt.state_width), lanes))),
        })

    def elaborate(self, platform):
        from amaranth.lib.fifo import SyncFIFOBuffered

        m = Module()
        w, k = self._width, self._lanes
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=w, depth=self._depth)
        m.d.comb += [fifo.w_data.eq(self.i.payload), fifo.w_en.eq(self.i.valid), self.i.ready.eq(fifo.w_rdy)]
        # the beat's last word is the FIFO's (registered) output itself: only K - 1 words are
        # shifted into ``beat`` (cell budget; with K = 1 there is no beat register at all)
        beat = Signal(w * (k - 1))
        words = Signal(range(k))  # words in ``beat``
        complete = words == k - 1
        m.d.comb += [self.o.valid.eq(complete & fifo.r_rdy), self.o.payload.eq(Cat(beat, fifo.r_data)),
                     fifo.r_en.eq(~complete | self.o.ready)]
        with m.If(fifo.r_rdy & fifo.r_en):  # word 0 of a beat ends at the bottom after K - 1 shifts
            with m.If(complete):
                m.d.sync += words.eq(0)
            with m.Else():
                m.d.sync += [beat.eq(Cat(beat[w:], fifo.r_data)), words.eq(words + 1)]
        return m


class OutputBuffer(wiring.Component):
    """An outputs pass's per-step outputs: the core's ``y`` beats (K words) and ``du`` beats (N
    words) -> a ring of ``depth`` state words, one word written per clock, and ``written``, the
    steps whose words are all in.

    A ring of two chunks' words (docs/protocol.md *Replies, double-buffered*): the reply to chunk c
    reads chunk c − 1's words while the core's outputs of chunk c land behind them, and chunk
    c + 1's inputs reach the core only after that reply, so two chunks never need more than
    2 · max_output_steps steps of words and the writer needs no full check. Both ends walk the
    ring in order (the reader's pointer is the sequencer's), so no chunk boundary, multiply or
    division is needed. The streams are taken whenever the word register is free (a beat of K
    words per K clocks: at K = 1 the core never waits; the du stream's N-word beats take N
    clocks, far less than an echo step), so the core is never held for long, ABORT included.
    ``restart`` (a pass's START) empties the ring; ``echo`` sets the words per step (N, else P).
    """

    def __init__(self, width: int, oscillators: int, inputs: int, lanes: int, depth: int, max_length: int):
        self._width, self._p, self._n, self._lanes, self.depth = width, oscillators, inputs, lanes, depth
        super().__init__({
            "y": In(stream.Signature(data.ArrayLayout(signed(width), lanes))),
            "du": In(stream.Signature(data.ArrayLayout(signed(width), inputs))),
            "restart": In(1), "echo": In(1),
            "written": Out(range(max_length + 1)),
            "raddr": In(range(depth)), "rdata": Out(unsigned(width)),  # rdata: one clock after raddr
        })

    def elaborate(self, platform):
        m = Module()
        w, P, N, depth = self._width, self._p, self._n, self.depth
        beat = max(self._lanes, N)
        m.submodules.ring = ring = memory.Memory(shape=unsigned(w), depth=depth, init=[])
        wr, rd = ring.write_port(), ring.read_port()
        m.d.comb += [rd.addr.eq(self.raddr), self.rdata.eq(rd.data)]
        shift = Signal(w * beat)  # the beat being written, word 0 at the bottom
        left = Signal(range(beat + 1))  # its words still to write
        wptr = Signal(range(depth))
        word = Signal(range(max(P, N)))  # the word's index within its step
        free = left <= 1  # the register is free after this clock's write
        m.d.comb += [self.y.ready.eq(free), self.du.ready.eq(free & ~self.y.valid)]
        with m.If(left != 0):
            last_word = word == Mux(self.echo, N - 1, P - 1)
            m.d.comb += [wr.en.eq(1), wr.addr.eq(wptr), wr.data.eq(shift[:w])]
            m.d.sync += [shift.eq(shift >> w), left.eq(left - 1), wptr.eq(Mux(wptr == depth - 1, 0, wptr + 1)),
                         word.eq(Mux(last_word, 0, word + 1))]
            with m.If(last_word):
                m.d.sync += self.written.eq(self.written + 1)
        with m.If(self.y.valid & self.y.ready):
            m.d.sync += [shift.eq(self.y.payload.as_value()), left.eq(self._lanes)]
        with m.Elif(self.du.valid & self.du.ready):
            m.d.sync += [shift.eq(self.du.payload.as_value()), left.eq(N)]
        with m.If(self.restart):
            m.d.sync += [wptr.eq(0), word.eq(0), self.written.eq(0)]
        return m


class DensePacker(wiring.Component):
    """Words of ``width`` bits -> bytes of one little-endian bit string (``protocol.pack_dense``):
    word 0 in bits 0…width−1, zero bits only to fill the byte after the ``last`` word.

    At most width + 7 bits wait in the register; a word is taken when fewer than 8 are left, so
    a 32-bit word costs 5 clocks for its 4 bytes, far below the link's 10 · divisor per byte.
    """

    def __init__(self, width: int):
        self._width = width
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"data": unsigned(width), "last": 1}))),
            "o": Out(stream.Signature(FrameByte)),
        })

    def elaborate(self, platform):
        m = Module()
        w = self._width
        bits = Signal(w + 7)
        count = Signal(range(w + 8))  # valid bits in ``bits``
        flush = Signal()  # the last word is in: what is left goes out, the last byte zero-filled
        m.d.comb += [self.i.ready.eq((count < 8) & ~flush),
                     self.o.valid.eq((count >= 8) | (flush & (count != 0))),
                     self.o.p.data.eq(bits[:8]), self.o.p.last.eq(flush & (count <= 8))]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [bits.eq(bits | (self.i.p.data << count)), count.eq(count + w), flush.eq(self.i.p.last)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [bits.eq(bits >> 8), count.eq(count - 8)]
            with m.If(self.o.p.last):
                m.d.sync += [bits.eq(0), count.eq(0), flush.eq(0)]
        return m


def region_bits(amap) -> int:
    """Bits of the region field at the top of a core address: 4 (linear), 5 (nonlinear)."""
    return amap.addr_width - amap.lane_width - amap.index_width


# reply bodies after [seq][cmd][status]; _IDENTIFY_V1: the first bytes of _IDENTIFY (a v1 host's)
_NONE, _IDENTIFY, _STATUS, _READ, _FORWARD, _ECHO, _IDENTIFY_V1 = range(7)


class _OverflowCopy(NamedTuple):
    """A reply table field read from the sequencer's copy of overflow counter ``counter``."""

    counter: int


class Sequencer(wiring.Component):
    """Executes requests on ``core``; see the module docstring and firmware/board_model.py.

    Ports: ``header``, ``payload`` (from the link's receiver), ``reply`` (to its reply cache),
    the link counters ``frames_ok``, ``crc_errors``, ``framing_errors``, ``overruns`` (in), and
    the core side ``core_cmd``, ``core_u``, ``core_nudge``, ``core_bus`` (initiator), ``core_busy``,
    and with a core in block mode (``block``) its outputs ``core_y``, ``core_du``.
    ``build_hash``: 16 bytes reported by IDENTIFY.
    """

    def __init__(self, core: HRUCore, build_hash: bytes):
        self._core = core
        self.block = has_block_mode(type(core))
        kind = next(name for name, cls in CORES.items() if type(core) is cls)
        self.config = core_config(core.fmt, core.size, core.lanes, build_hash, kind)
        self.messages = Messages(self.config)
        fmt = self.config.base
        # the core's per-step outputs (block mode only: the serial core's image has no such ports)
        outputs = {"core_y": In(stream.Signature(data.ArrayLayout(signed(fmt.state_width), core.lanes))),
                   "core_du": In(stream.Signature(data.ArrayLayout(signed(fmt.state_width), core.size.inputs)))
                   } if self.block else {}
        super().__init__({
            "header": In(stream.Signature(FrameHeader)),
            "payload": In(stream.Signature(FrameByte)),
            "reply": Out(stream.Signature(ReplyByte)),
            "frames_ok": In(32), "crc_errors": In(32), "framing_errors": In(32), "overruns": In(32),
            "core_cmd": Out(stream.Signature(core.command_layout)),
            "core_u": Out(stream.Signature(data.ArrayLayout(signed(fmt.input_width), core.size.inputs))),
            "core_nudge": Out(stream.Signature(data.ArrayLayout(signed(fmt.state_width), core.lanes))),
            "core_bus": Out(MemoryBus(core.address_map.addr_width, core.data_width)),
            "core_busy": In(1),
            **outputs,
        })

    # -- constants of the configuration

    def _region_words(self):
        """Per region code: (word bits, signed, depth, most words per WRITE, per READ)."""
        c, msg = self.config, self.messages
        table = {}
        for r in c.regions:
            f = c.region_field(r)
            table[int(r)] = (f.width, f.signed, c.region_depth(r),
                             0 if r in c.read_only_regions else msg.max_words(r, write=True),
                             msg.max_words(r))
        return table

    def elaborate(self, platform):
        m = Module()
        fsm = _SequencerFSM(self, m)
        with m.FSM(name="seq"):
            fsm.receive()
            fsm.decode()
            fsm.read_write()
            fsm.pass_start()
            fsm.pass_data()
            fsm.pass_end()
            fsm.send_reply()
            if self.block:
                fsm.outputs()
        return m


class _SequencerFSM:
    """One elaboration of a :class:`Sequencer`: its datapath, then its FSM, one method per
    command group (each adds its states to the FSM open in ``m``).

    The datapath (``__init__``) holds the registers, the helper components, the per-region
    constants and the reply tables that every group shares; the small methods below it
    (``error``, ``reply``, ``read_field`` …) are the steps the groups are written in.
    """

    def __init__(self, sequencer: Sequencer, m: Module):
        s = sequencer
        core, c, msg = s._core, s.config, s.messages
        fmt, P, N = c.base, c.size.oscillators, c.size.inputs
        self.m, self.s, self.c, self.msg, self.fmt, self.P, self.N = m, s, c, msg, fmt, P, N
        regions = s._region_words()
        wn = word_bytes(fmt.counter_width)
        self.wu = wu = word_bytes(fmt.input_width)
        self.ws = ws = word_bytes(fmt.state_width)
        self.counter_addr = [core.address_map.address(core_region, p) for core_region, p in
                             ((Region.COUNTERS, p) for p in range(len(PHASES)))]

        # the widest request field: a u32, or a word of a writable region / of a DATA step
        in_bytes = max(4, wu, ws, *(word_bytes(bits) for bits, _, _, max_write, _ in regions.values() if max_write))
        m.submodules.asm = self.asm = asm = FieldAssembler(in_bytes)
        # payload bytes of the request: the receiver's frame buffer bounds them, so not the header's
        # 16 bits (cell budget, here and in the divider)
        self.length = length = Signal(range(protocol.RX_BUFFER_BYTES))
        m.submodules.ser = self.ser = ser = FieldSerializer()
        m.submodules.div = self.div = Divider(len(length))
        m.submodules.walker = self.walker = walker = AddressWalker(core)
        m.submodules.feeder = self.feeder = feeder = NudgeFeeder(fmt, P, core.lanes)
        # ECHO_START's nudge in STREAM mode: the core's stream overwrites the NUDGE store during the
        # pass (it double-buffers the streamed vectors there), and NUDGE must hold it afterwards
        m.submodules.start_nudge = start_nudge = memory.Memory(shape=fmt.state_width, depth=P, init=[])
        copy_wr, copy_rd = start_nudge.write_port(), start_nudge.read_port()
        self.copy_wr, self.copy_rd = copy_wr, copy_rd
        m.d.comb += [s.core_nudge.valid.eq(feeder.o.valid), s.core_nudge.payload.eq(feeder.o.payload),
                     feeder.o.ready.eq(s.core_nudge.ready)]
        wiring.connect(m, wiring.flipped(s.payload), asm.i)
        wiring.connect(m, ser.o, wiring.flipped(s.reply))
        self.bus = bus = s.core_bus

        # ---- registers ---------------------------------------------------------------------
        self.seq, self.cmd = Signal(8), Signal(8)
        self.got_last = got_last = Signal()  # the request's last payload byte has been taken
        self.status = Signal(8)  # of the reply being made
        self.body = body = Signal(range(7))
        self.pass_state = pass_state = Signal(2)  # PassState
        # pass lengths and step counts are at most max_length: 17 bits, not the protocol's 32
        # (cell budget); ``arg`` saturates a u32 to all ones, which is above max_length
        arg_bits = (c.size.max_length + 1).bit_length()
        self.pass_length = pass_length = Signal(range(c.size.max_length + 1))
        self.steps_done = steps_done = Signal(range(c.size.max_length + 1))
        self.command_errors = command_errors = Signal(32)
        # the copy of the core's overflow counters (PHASES order), in a block RAM rather than
        # 4 × 32 flip-flops and their muxes (cell budget; ram_style, or yosys would make so small a
        # memory of flip-flops): written by COUNTERS, zeroed at a pass's start, read one cycle
        # after its address (so each reply table field is fetched first: TABLE_FETCH)
        m.submodules.overflow = overflow = memory.Memory(shape=fmt.counter_width, depth=4, init=[],
                                                          attrs={"ram_style": "block"})
        overflow_wr, overflow_rd = overflow.write_port(), overflow.read_port()
        self.overflow_wr = overflow_wr
        self.region = region = Signal(8)
        self.start = Signal(16)
        self.count = Signal(max(16, arg_bits))  # words (a u16), or steps (ABORT: up to max_length), still to move
        self.arg = Signal(arg_bits)  # a pass length or a DATA offset (a u32), saturated
        self.arg8 = Signal(8)  # FORWARD_START flags, ECHO_START mode
        identify = msg.pack_identify()
        self.index = index = Signal(range(max(len(identify), N + P, 4) + 1))  # field / word index in a reply part or a step
        self.op = op = Signal(Op)
        self.u_shift = u_shift = Signal(N * fmt.input_width)
        self.u_full = u_full = Signal()
        self.stream_mode = stream_mode = Signal()  # the echo pass in progress has per-step nudges
        self.aborting = Signal()  # DATA_STEPS feeds zeros for the rest of the pass (ABORT)

        # ---- per-region constants, selected by ``region`` -----------------------------------
        r_known, r_bits_bytes, r_depth, r_max_write, r_max_read, r_read_only = (
            Signal(), Signal(4), Signal(17), Signal(16), Signal(16), Signal())
        self.r_known, self.r_bits_bytes, self.r_depth = r_known, r_bits_bytes, r_depth
        self.r_max_write, self.r_max_read, self.r_read_only = r_max_write, r_max_read, r_read_only
        self.r_value = r_value = Signal(FIELD_BITS)  # bus read data, sign-extended from the region's width
        self.r_word = Signal(FIELD_BITS)  # r_value, registered
        read_region = Signal(region_bits(core.address_map))  # the region of the bus read in flight (walker's)
        with m.Switch(region):
            for code, (bits, signed_, depth, max_write, max_read) in regions.items():
                with m.Case(code):
                    m.d.comb += [r_known.eq(1), r_bits_bytes.eq(word_bytes(bits)), r_depth.eq(depth),
                                 r_max_write.eq(max_write), r_max_read.eq(max_read),
                                 r_read_only.eq(max_write == 0)]
        # A READ sends a word's word_bytes(bits) bytes only, so only the bits between a region's
        # width and its whole bytes need its sign (or zero); every other bit is the bus's (cell
        # budget: one small mux per such bit instead of a 64-bit extension mux).
        m.d.comb += r_value.eq(bus.r_data)
        for bit in range(FIELD_BITS):
            extended = {code: (bus.r_data[bits - 1] if signed_ else 0)
                        for code, (bits, signed_, *_rest) in regions.items() if bits <= bit < 8 * word_bytes(bits)}
            if extended:
                with m.Switch(read_region):
                    for code, value in extended.items():
                        with m.Case(code):
                            m.d.comb += r_value[bit].eq(value)

        # ---- reply fields: the header bytes, constant and register fields ---------------------
        counters_of = [(_OverflowCopy(p), wn) for p in range(len(PHASES))]
        tables = {
            _IDENTIFY: [(b, 1) for b in identify],
            _IDENTIFY_V1: [(b, 1) for b in identify[:IDENTIFY_V1_REPLY.size()]],
            _STATUS: [(s.frames_ok, 4), (s.crc_errors, 4), (s.framing_errors, 4), (s.overruns, 4),
                      (command_errors, 4), (pass_state, 1), (Mux(pass_state == PassState.IDLE, 0, pass_length), 4),
                      (Mux(pass_state == PassState.IDLE, 0, steps_done), 4), *counters_of],
            _FORWARD: [counters_of[0]],
            _ECHO: counters_of[1:],
        }
        assert msg.status_reply.size() == sum(n for _, n in tables[_STATUS])
        t_value, t_nbytes, t_end = Signal(FIELD_BITS), Signal(4), Signal()  # t_end: the table's last field
        self.t_value, self.t_nbytes, self.t_end = t_value, t_nbytes, t_end
        with m.Switch(body):
            for kind, fields in tables.items():
                with m.Case(kind):
                    with m.Switch(index):
                        for k, (value, nbytes) in enumerate(fields):
                            with m.Case(k):
                                if isinstance(value, _OverflowCopy):
                                    m.d.comb += [overflow_rd.addr.eq(value.counter), t_value.eq(overflow_rd.data)]
                                else:
                                    m.d.comb += t_value.eq(value)
                                m.d.comb += [t_nbytes.eq(nbytes), t_end.eq(k == len(fields) - 1)]

        # ---- the walker and the bus ---------------------------------------------------------
        m.d.comb += [bus.addr.eq(walker.addr), walker.region.eq(region)]
        m.d.sync += read_region.eq(walker.addr >> (core.address_map.addr_width - len(read_region)))
        with m.If(asm.o.valid & asm.o.ready & asm.o.p.last):
            m.d.sync += got_last.eq(1)
        self.field = asm.o.p.value

        # ---- core command and input --------------------------------------------------------
        m.d.comb += [s.core_cmd.p.op.eq(op), s.core_cmd.p.length.eq(pass_length),
                     s.core_cmd.p.nudge_stream.eq(stream_mode), s.core_u.p.eq(u_shift),
                     s.core_u.valid.eq(u_full), copy_rd.addr.eq(index)]
        with m.If(s.core_u.valid & s.core_u.ready):
            m.d.sync += u_full.eq(0)

        # ---- outputs passes (block mode): the ring of per-step outputs and the reply's part ----
        # ``outputs``: the pass in progress is one (its core command sets ``block``); ``part``: the
        # reply being made carries an outputs part (out_first, out_steps: chunk c − 1's, or the
        # last chunk's for OUTPUTS; 0, 0 after reset, START and ABORT), ``advance``: a DATA reply's,
        # after which the ring's read pointer and the part move on to the chunk just taken (next_*)
        if s.block:
            self.outputs_pass = outputs_pass = Signal()
            self.part, self.advance, self.out_echo = Signal(), Signal(), Signal()
            self.out_first, self.next_first = Signal.like(steps_done), Signal.like(steps_done)
            self.max_steps = {state: msg.max_output_steps(state) for state in (PassState.FORWARD, PassState.ECHO)}
            depth = 2 * max(steps * msg.output_words(state) for state, steps in self.max_steps.items())
            m.submodules.output_buffer = self.obuf = obuf = OutputBuffer(
                fmt.state_width, P, N, core.lanes, depth, c.size.max_length)
            m.submodules.packer = self.packer = DensePacker(fmt.state_width)
            wiring.connect(m, wiring.flipped(s.core_y), obuf.y)
            wiring.connect(m, wiring.flipped(s.core_du), obuf.du)
            self.out_steps, self.next_steps = (Signal(range(max(self.max_steps.values()) + 1)) for _ in range(2))
            self.rptr, self.part_word = Signal(range(depth)), Signal(range(max(P, N)))
            self.part_left = Signal.like(self.out_steps)
            self.raddr = Signal(range(depth))  # the word being read: rptr onwards
            m.d.comb += [s.core_cmd.p.block.eq(outputs_pass), obuf.echo.eq(self.out_echo), obuf.raddr.eq(self.raddr)]

        self.data_layout = {Command.FORWARD_DATA: msg.forward_data,
                            Command.ECHO_DATA: msg.echo_data(EchoMode.CONSTANT),
                            EchoMode.STREAM: msg.echo_data(EchoMode.STREAM)}
        assert msg.forward_data.step_bytes == N * wu and msg.echo_data(EchoMode.STREAM).step_bytes == N * wu + P * ws

    # ---- the steps every group is written in --------------------------------------------------

    def error(self, code):
        self.m.d.sync += [self.status.eq(code), self.body.eq(_NONE), self.command_errors.eq(self.command_errors + 1)]
        self.m.next = "DRAIN"

    def proceed_if(self, length_ok, next_state):
        """Go on to ``next_state`` when the payload length fits the command, else BAD_LENGTH."""
        with self.m.If(length_ok):
            self.m.next = next_state
        with self.m.Else():
            self.error(Status.BAD_LENGTH)

    def reply(self, kind=_NONE):
        self.m.d.sync += [self.status.eq(Status.OK), self.body.eq(kind), self.index.eq(0)]
        self.m.next = "DRAIN"

    def read_field(self, nbytes):
        """Take the next payload field of ``nbytes`` bytes; yields inside m.If(field taken)."""
        asm = self.asm
        self.m.d.comb += [asm.en.eq(1), asm.nbytes.eq(nbytes), asm.o.ready.eq(1)]
        return self.m.If(asm.o.valid)

    def field_state(self, name, nbytes, register, next_state, saturate=False):
        """A state that only stores the next ``nbytes``-byte field in ``register``, then moves on
        (``saturate``: all ones in ``register`` when the field does not fit in it)."""
        m, field = self.m, self.field
        with m.State(name):
            with self.read_field(nbytes):
                value = field
                if saturate:
                    value = Mux(field[len(register):].any(), (1 << len(register)) - 1, field)
                m.d.sync += register.eq(value)
                m.next = next_state

    def start_division(self, dividend, divisor):
        self.m.d.comb += [self.div.start.eq(1), self.div.dividend.eq(dividend), self.div.divisor.eq(divisor)]

    def count_from_division(self, next_state, too_many=False):
        """Once the divider is done: a remainder means a partial word or step, ``too_many`` (of
        the quotient) more than the command allows (BAD_LENGTH)."""
        m, div = self.m, self.div
        with m.If(~div.busy):
            with m.If((div.remainder != 0) | too_many):
                self.error(Status.BAD_LENGTH)
            with m.Else():
                m.d.sync += self.count.eq(div.quotient)
                m.next = next_state

    # ---- the command groups -------------------------------------------------------------------

    def receive(self):
        """IDLE takes a header: a link error is answered at once, a retry replayed from the cache."""
        m, s, h = self.m, self.s, self.s.header.p
        with m.State("IDLE"):
            m.d.comb += s.header.ready.eq(1)
            with m.If(s.header.valid):
                m.d.sync += [self.seq.eq(h.seq), self.cmd.eq(h.cmd), self.length.eq(h.length),
                             self.got_last.eq(0), self.index.eq(0), self.body.eq(_NONE), self.aborting.eq(0)]
                if self.s.block:
                    m.d.sync += self.part.eq(0)
                with m.If(h.status != Status.OK):  # a link error: answered, not counted here
                    m.d.sync += [self.status.eq(h.status), self.body.eq(_NONE)]
                    m.next = "HEAD"
                with m.Elif(h.repeat):
                    m.next = "REPLAY"
                with m.Else():
                    m.next = "DECODE"

        with m.State("REPLAY"):  # a host retry: take its payload, resend the cached reply
            with m.If(self.got_last | (self.length == 0)):
                m.d.comb += [self.ser.i.valid.eq(1), self.ser.i.p.replay.eq(1)]
                with m.If(self.ser.i.ready):
                    m.next = "IDLE"
            with m.Else():
                self.read_field(1)

    def decode(self):
        """DECODE: the checks made from the header alone (UNKNOWN_COMMAND, WRONG_STATE, BAD_LENGTH
        of the fixed layouts), then the commands without a payload, and each other group's entry."""
        m, cmd, length, pass_state, msg = self.m, self.cmd, self.length, self.pass_state, self.msg
        with m.State("DECODE"):
            allowed_in_pass = Signal()
            m.d.comb += allowed_in_pass.eq(
                (cmd == Command.IDENTIFY) | (cmd == Command.STATUS) | (cmd == Command.ABORT) |
                ((cmd == Command.FORWARD_DATA) & (pass_state == PassState.FORWARD)) |
                ((cmd == Command.ECHO_DATA) & (pass_state == PassState.ECHO)))
            is_data = (cmd == Command.FORWARD_DATA) | (cmd == Command.ECHO_DATA)
            known = Cat(*(cmd == code for code in Command if self.s.block or code != Command.OUTPUTS)).any()
            with m.If(~known):
                self.error(Status.UNKNOWN_COMMAND)
            with m.Elif(Mux(pass_state == PassState.IDLE, is_data, ~allowed_in_pass)):
                self.error(Status.WRONG_STATE)
            with m.Else():
                with m.Switch(cmd):
                    with m.Case(Command.IDENTIFY):  # v1 hosts send no payload, v2 hosts their version
                        with m.If(length == 0):
                            self.reply(_IDENTIFY_V1)
                        with m.Elif(length == IDENTIFY_REQUEST.size()):
                            self.reply(_IDENTIFY)
                        with m.Else():
                            self.error(Status.BAD_LENGTH)
                    with m.Case(Command.STATUS, Command.ABORT, Command.CLEAR_GRADIENTS):
                        with m.If(length != 0):
                            self.error(Status.BAD_LENGTH)
                        with m.Elif(cmd == Command.STATUS):
                            self.reply(_STATUS)
                        with m.Elif(cmd == Command.CLEAR_GRADIENTS):
                            m.d.sync += self.op.eq(Op.CLEAR)
                            m.next = "CORE_CMD"
                        with m.Elif(pass_state == PassState.IDLE):  # ABORT with nothing to abort
                            self.reply()
                        with m.Else():  # zeros (inputs and nudges) for the remaining steps
                            m.d.sync += [self.count.eq(self.pass_length - self.steps_done),
                                         self.steps_done.eq(self.pass_length), self.aborting.eq(1), self.index.eq(0)]
                            m.next = "DATA_STEPS"
                    if self.s.block:
                        with m.Case(Command.OUTPUTS):  # the last completed outputs pass's last part
                            with m.If(length != 0):
                                self.error(Status.BAD_LENGTH)
                            with m.Else():
                                m.d.sync += [self.part.eq(1), self.advance.eq(0)]
                                self.reply()
                    with m.Case(Command.READ):
                        self.proceed_if(length == msg.read_request.size(), "READ_REGION")
                    with m.Case(Command.WRITE):
                        self.proceed_if(length != 0, "WRITE_REGION")
                    with m.Case(Command.FORWARD_START):
                        self.proceed_if(length == msg.forward_start.size(), "START_LENGTH")
                    with m.Case(Command.ECHO_START):
                        self.proceed_if(length == msg.echo_start.size(), "START_LENGTH")
                    with m.Case(Command.FORWARD_DATA, Command.ECHO_DATA):
                        data_layout = self.data_layout
                        fixed = data_layout[Command.FORWARD_DATA].fixed_bytes
                        assert {layout.fixed_bytes for layout in data_layout.values()} == {fixed}
                        step_bytes = Mux(self.stream_mode & (cmd == Command.ECHO_DATA),
                                         data_layout[EchoMode.STREAM].step_bytes,
                                         data_layout[Command.FORWARD_DATA].step_bytes)
                        with m.If(length < fixed + step_bytes):
                            self.error(Status.BAD_LENGTH)
                        with m.Else():
                            self.start_division(length - fixed, step_bytes)
                            m.next = "DATA_LENGTH"

    def read_write(self):
        """READ ``region:u8 start:u16 count:u16`` and WRITE ``region:u8 start:u16 k×value``: the
        region's checks, the walker stepped to word ``start``, then the words (a READ's go out
        with the reply, ``send_reply``)."""
        m, walker, count, start = self.m, self.walker, self.count, self.start
        self.field_state("READ_REGION", 1, self.region, "READ_START")
        self.field_state("READ_START", 2, start, "READ_COUNT")
        self.field_state("READ_COUNT", 2, count, "READ_CHECK")
        with m.State("READ_CHECK"):
            with m.If(~self.r_known | (count == 0) | (start + count > self.r_depth) | (count > self.r_max_read)):
                self.error(Status.BAD_ARGUMENT)
            with m.Else():
                m.d.comb += walker.load.eq(1)
                m.d.sync += [self.body.eq(_READ), self.status.eq(Status.OK)]
                m.next = "SEEK"

        self.field_state("WRITE_REGION", 1, self.region, "WRITE_LENGTH")
        with m.State("WRITE_LENGTH"):
            with m.If(~self.r_known):
                self.error(Status.BAD_ARGUMENT)
            with m.Elif(self.length < 3 + self.r_bits_bytes):
                self.error(Status.BAD_LENGTH)
            with m.Else():
                self.start_division(self.length - 3, self.r_bits_bytes)
                m.next = "WRITE_DIVIDE"
        with m.State("WRITE_DIVIDE"):
            self.count_from_division("WRITE_START")
        self.field_state("WRITE_START", 2, start, "WRITE_CHECK")
        with m.State("WRITE_CHECK"):
            with m.If(self.r_read_only | (start + count > self.r_depth) | (count > self.r_max_write)):
                self.error(Status.BAD_ARGUMENT)
            with m.Else():
                m.d.comb += walker.load.eq(1)
                m.d.sync += self.body.eq(_NONE)
                m.next = "SEEK"

        with m.State("SEEK"):  # step the walker to word ``start``
            with m.If(start != 0):
                m.d.comb += walker.step.eq(1)
                m.d.sync += start.eq(start - 1)
            with m.Elif(self.body == _READ):
                m.next = "HEAD"
            with m.Else():
                m.next = "WRITE_WORDS"
        with m.State("WRITE_WORDS"):
            with self.read_field(self.r_bits_bytes):
                m.d.comb += [self.bus.w_en.eq(1), self.bus.w_data.eq(self.field), walker.step.eq(1)]
                m.d.sync += count.eq(count - 1)
                with m.If(count == 1):
                    self.reply()

    def pass_start(self):
        """FORWARD_START ``length:u32 flags:u8`` / ECHO_START ``length:u32 mode:u8 nudge×P``, and
        CLEAR_GRADIENTS: their checks, the stores they clear or write, then the core's command."""
        m, c, P, walker, bus = self.m, self.c, self.P, self.walker, self.bus
        count, region, arg, arg8 = self.count, self.region, self.arg, self.arg8
        overflow_wr, op, stream_mode = self.overflow_wr, self.op, self.stream_mode
        self.field_state("START_LENGTH", 4, arg, "START_FLAGS", saturate=True)
        self.field_state("START_FLAGS", 1, arg8, "START_CHECK")
        # the outputs flag is FORWARD_START's flag bit 1 and ECHO_START's mode bit 1 (block mode
        # only: otherwise a reserved bit, an unknown mode)
        block = self.s.block
        outputs_flag = ECHO_OUTPUTS_FLAG if block else 0
        assert ForwardFlags.OUTPUTS == ECHO_OUTPUTS_FLAG
        with m.State("START_CHECK"):
            bad_length = (arg == 0) | (arg > c.size.max_length)

            def started():
                """Any START (checked): OUTPUTS has no part until this pass completes; the ring restarts."""
                if block:
                    m.d.sync += [self.outputs_pass.eq((arg8 & outputs_flag) != 0), self.out_first.eq(0),
                                 self.out_steps.eq(0), self.rptr.eq(0),
                                 self.out_echo.eq(self.cmd == Command.ECHO_START)]
                    m.d.comb += self.obuf.restart.eq(1)

            with m.If(self.cmd == Command.FORWARD_START):
                reserved = ~int(ForwardFlags.ZERO_STATE | outputs_flag) & 0xFF  # int: an IntFlag's ~ keeps its bits
                with m.If(bad_length | ((arg8 & reserved) != 0)):
                    self.error(Status.BAD_ARGUMENT)
                with m.Else():
                    m.d.sync += [op.eq(Op.FORWARD), self.pass_length.eq(arg), count.eq(P), region.eq(Region.Y0),
                                 stream_mode.eq(0)]
                    started()
                    m.d.comb += [walker.load.eq(1), walker.region.eq(Region.Y0),
                                 overflow_wr.en.eq(1), overflow_wr.addr.eq(PHASES.index("forward"))]  # := 0
                    with m.If(arg8 & ForwardFlags.ZERO_STATE):
                        m.next = "ZERO_STATE"
                    with m.Else():
                        m.next = "CORE_CMD"
            with m.Else():
                mode = arg8 & ~outputs_flag & 0xFF
                with m.If(bad_length | (mode > max(EchoMode))):
                    self.error(Status.BAD_ARGUMENT)
                with m.Else():
                    m.d.sync += [op.eq(Op.ECHO), self.pass_length.eq(arg), count.eq(P), region.eq(Region.NUDGE),
                                 stream_mode.eq(mode == EchoMode.STREAM)]
                    started()
                    m.d.comb += [walker.load.eq(1), walker.region.eq(Region.NUDGE),
                                 overflow_wr.en.eq(1), overflow_wr.addr.eq(PHASES.index("echo_plus"))]  # := 0
                    m.next = "NUDGE_WORDS"
        with m.State("ZERO_STATE"):  # Y0 then Z0 := 0
            m.d.comb += [bus.w_en.eq(1), bus.w_data.eq(0), walker.step.eq(1)]
            m.d.sync += count.eq(count - 1)
            with m.If(count == 1):
                with m.If(region == Region.Y0):
                    m.d.sync += [count.eq(P), region.eq(Region.Z0)]
                    m.d.comb += [walker.step.eq(0), walker.load.eq(1), walker.region.eq(Region.Z0)]
                with m.Else():
                    m.next = "CORE_CMD"
        with m.State("NUDGE_WORDS"):  # to NUDGE; in STREAM mode also the first streamed vector
            feeder = self.feeder
            with m.If(~stream_mode | feeder.i.ready):
                with self.read_field(self.ws):
                    m.d.comb += [bus.w_en.eq(1), bus.w_data.eq(self.field), walker.step.eq(1),
                                 self.copy_wr.en.eq(1), self.copy_wr.addr.eq(P - count),
                                 self.copy_wr.data.eq(self.field),
                                 feeder.i.valid.eq(stream_mode), feeder.i.payload.eq(self.field)]
                    m.d.sync += count.eq(count - 1)
                    with m.If(count == 1):
                        m.next = "CORE_CMD"

        with m.State("CORE_CMD"):
            m.d.comb += self.s.core_cmd.valid.eq(1)
            # the running pass's overflow counters read 0: FORWARD's and echo_plus's were zeroed
            # by START_CHECK (one write port), echo_minus is here
            with m.If(op == Op.ECHO):
                m.d.comb += [overflow_wr.en.eq(1), overflow_wr.addr.eq(PHASES.index("echo_minus"))]
            with m.If(self.s.core_cmd.ready):
                with m.If(op == Op.CLEAR):
                    m.next = "CORE_WAIT"
                with m.Elif(op == Op.FORWARD):
                    m.d.sync += [self.pass_state.eq(PassState.FORWARD), self.steps_done.eq(0)]
                    self.reply()
                with m.Else():
                    m.d.sync += [self.pass_state.eq(PassState.ECHO), self.steps_done.eq(0)]
                    self.reply()

    def pass_data(self):
        """FORWARD_DATA / ECHO_DATA ``offset:u32 k×[u×N]`` (STREAM echoes: ``k×[u×N, nudge×P]``),
        and ABORT's zero steps: the offset check, then every step's words to the core."""
        m, N, P, asm, feeder = self.m, self.N, self.P, self.asm, self.feeder
        count, index, steps_done, pass_length = self.count, self.index, self.steps_done, self.pass_length
        u_full, aborting, pass_state = self.u_full, self.aborting, self.pass_state
        with m.State("DATA_LENGTH"):
            too_many = False
            if self.s.block:  # an outputs pass's chunk: its outputs must fit one reply; in an echo a
                # chunk inside the pass needs 2 steps, since the core emits du_j one step after it
                # takes the next input (the reply waits for the previous chunk's last du_j)
                echo, steps = pass_state == PassState.ECHO, self.div.quotient
                most = Mux(echo, self.max_steps[PassState.ECHO], self.max_steps[PassState.FORWARD])
                inside = (steps_done != 0) & (steps_done + 1 != pass_length)
                too_many = self.outputs_pass & ((steps > most) | (echo & (steps == 1) & inside))
            self.count_from_division("DATA_OFFSET", too_many)
        self.field_state("DATA_OFFSET", 4, self.arg, "DATA_CHECK", saturate=True)
        with m.State("DATA_CHECK"):
            with m.If((self.arg != steps_done) | (steps_done + count > pass_length)):
                self.error(Status.BAD_ARGUMENT)
            with m.Else():
                m.d.sync += [steps_done.eq(steps_done + count), index.eq(0)]
                if self.s.block:  # the part the reply after this chunk's will carry
                    m.d.sync += [self.next_first.eq(steps_done), self.next_steps.eq(count)]
                m.next = "DATA_STEPS"
        with m.State("DATA_STEPS"):
            # a step is N input words (one u beat), in STREAM echoes then P nudge words (to the
            # feeder; the pass's last step's nudge is dropped: the core takes L vectors, the
            # first of which came with ECHO_START). ABORT feeds zeros instead of payload words.
            is_u = index < N
            last_word = Mux(self.stream_mode & (pass_state == PassState.ECHO), N + P - 1, N - 1)
            last_step = (count == 1) & (steps_done == pass_length)
            next_is_u = (index == last_word) | (index < N - 1)  # the word after this one
            wu, ws = self.wu, self.ws
            with m.If(Mux(is_u, ~u_full, last_step | feeder.i.ready)):
                # chained: while word ``index`` is taken, the next byte starts word index + 1
                m.d.comb += [asm.en.eq(~aborting), asm.chain.eq(1), asm.o.ready.eq(~aborting),
                             asm.nbytes.eq(Mux(asm.o.valid, Mux(next_is_u, wu, ws), Mux(is_u, wu, ws)))]
                with m.If(aborting | asm.o.valid):
                    word = Mux(aborting, 0, self.field)
                    with m.If(is_u):
                        m.d.sync += self.u_shift.eq(Cat(self.u_shift[self.fmt.input_width:],
                                                        word[:self.fmt.input_width]))
                        with m.If(index == N - 1):
                            m.d.sync += u_full.eq(1)
                    with m.Else():
                        m.d.comb += [feeder.i.valid.eq(~last_step), feeder.i.payload.eq(word)]
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == last_word):
                        m.d.sync += [index.eq(0), count.eq(count - 1)]
                        with m.If(count == 1):
                            m.next = "DATA_FLUSH"
        with m.State("DATA_FLUSH"):  # the chunk's last input reaches the core: reply
            # an outputs pass's reply carries chunk c − 1's part: its last output must be in
            # the ring (the final chunk's waits for the whole pass in CORE_WAIT)
            previous_in = 1 if not self.s.block else ~self.outputs_pass | (self.obuf.written >= self.next_first)
            with m.If(~u_full):
                if self.s.block:
                    m.d.sync += [self.part.eq(self.outputs_pass & ~aborting), self.advance.eq(1)]
                with m.If(steps_done == pass_length):
                    m.d.sync += self.body.eq(Mux(aborting, _NONE,
                                                 Mux(pass_state == PassState.FORWARD, _FORWARD, _ECHO)))
                    m.next = "CORE_WAIT"
                with m.Elif(previous_in):
                    self.reply()

    def pass_end(self):
        """The end of a pass or CLEAR: wait for the core, restore NUDGE after a STREAM echo, copy
        the core's overflow counters, then the reply (the position sums follow a forward's)."""
        m, P, walker, bus, index, count = self.m, self.P, self.walker, self.bus, self.index, self.count
        with m.State("CORE_WAIT"):
            # an outputs pass ends when its last output is in the ring too (for OUTPUTS; after
            # ABORT the outputs are drained and dropped: OUTPUTS then has no part)
            drained = 1 if not self.s.block else ~self.outputs_pass | (self.obuf.written == self.pass_length)
            with m.If(~self.s.core_busy & drained):
                m.d.sync += [index.eq(0), self.pass_state.eq(PassState.IDLE), self.stream_mode.eq(0), count.eq(P)]
                if self.s.block:
                    m.d.sync += self.outputs_pass.eq(0)
                    with m.If(self.aborting):
                        m.d.sync += [self.out_first.eq(0), self.out_steps.eq(0)]
                with m.If(self.stream_mode):
                    m.d.comb += [walker.load.eq(1), walker.region.eq(Region.NUDGE)]
                    m.next = "RESTORE_READ"
                with m.Else():
                    m.next = "COUNTERS"
        with m.State("RESTORE_READ"):  # NUDGE := ECHO_START's nudge again (copy_rd.addr = index)
            m.next = "RESTORE_WRITE"
        with m.State("RESTORE_WRITE"):
            m.d.comb += [bus.w_en.eq(1), bus.w_data.eq(self.copy_rd.data.as_signed()), walker.step.eq(1)]
            m.d.sync += [index.eq(index + 1), count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += index.eq(0)
                m.next = "COUNTERS"
            with m.Else():
                m.next = "RESTORE_READ"
        with m.State("COUNTERS"):  # 4 reads, r_data one cycle after addr
            with m.Switch(index):
                for k, address in enumerate(self.counter_addr):
                    with m.Case(k):
                        m.d.comb += bus.addr.eq(address)
            with m.If(index != 0):
                m.d.comb += [self.overflow_wr.en.eq(1), self.overflow_wr.addr.eq(index - 1),
                             self.overflow_wr.data.eq(bus.r_data)]
            m.d.sync += index.eq(index + 1)
            with m.If(index == 4):
                m.d.sync += [self.status.eq(Status.OK), index.eq(0), self.region.eq(Region.POS_SUM),
                             self.start.eq(0), count.eq(P)]
                m.d.comb += [walker.load.eq(1), walker.region.eq(Region.POS_SUM)]
                m.next = "HEAD"

    def body_next(self):
        """After the reply's head (and outputs part): the body's words, or IDLE when it has none."""
        m, body = self.m, self.body
        with m.If(body == _NONE):
            m.next = "IDLE"
        with m.Elif(body == _READ):
            m.next = "BUS_ISSUE"
        with m.Else():
            m.next = "TABLE_FETCH"

    def send_reply(self):
        """Drain what is left of the payload, then the reply: [seq][cmd][status], then the body
        (a reply table's fields, then for READ and a forward's final chunk the bus's words)."""
        m, ser, index, body, count = self.m, self.ser, self.index, self.body, self.count
        with m.State("DRAIN"):
            with m.If(self.got_last | (self.length == 0)):
                m.d.sync += index.eq(0)
                m.next = "HEAD"
            with m.Else():
                self.read_field(1)

        with m.State("HEAD"):
            head_value = Signal(8)
            with m.Switch(index):
                with m.Case(0):
                    m.d.comb += head_value.eq(self.seq)
                with m.Case(1):
                    m.d.comb += head_value.eq(self.cmd)
                with m.Default():
                    m.d.comb += head_value.eq(self.status)
            no_part = ~self.part if self.s.block else 1
            m.d.comb += [ser.i.valid.eq(1), ser.i.p.value.eq(head_value), ser.i.p.nbytes.eq(1),
                         ser.i.p.last.eq((index == 2) & (body == _NONE) & no_part)]
            with m.If(ser.i.ready):
                m.d.sync += index.eq(index + 1)
                with m.If(index == 2):
                    m.d.sync += index.eq(0)
                    if self.s.block:
                        with m.If(self.part):  # an outputs part comes first
                            m.next = "PART_HEAD"
                        with m.Else():
                            self.body_next()
                    else:
                        self.body_next()
        with m.State("TABLE_FETCH"):  # the field's overflow counter (if any) is read
            m.next = "TABLE"
        with m.State("TABLE"):
            is_last = self.t_end & (body != _FORWARD)
            m.d.comb += [ser.i.valid.eq(1), ser.i.p.value.eq(self.t_value), ser.i.p.nbytes.eq(self.t_nbytes),
                         ser.i.p.last.eq(is_last)]
            with m.If(ser.i.ready):
                m.d.sync += index.eq(index + 1)
                with m.If(self.t_end):
                    with m.If(body == _FORWARD):
                        m.next = "BUS_ISSUE"
                    with m.Else():
                        m.next = "IDLE"
                with m.Else():
                    m.next = "TABLE_FETCH"
        with m.State("BUS_ISSUE"):  # the walker's address is on the bus: data next cycle
            m.next = "BUS_LATCH"
        with m.State("BUS_LATCH"):  # a register after the core's read mux: it is the critical path
            m.d.sync += self.r_word.eq(self.r_value)
            m.next = "BUS_WORD"
        with m.State("BUS_WORD"):
            m.d.comb += [ser.i.valid.eq(1), ser.i.p.value.eq(self.r_word), ser.i.p.nbytes.eq(self.r_bits_bytes),
                         ser.i.p.last.eq(count == 1)]
            with m.If(ser.i.ready):
                m.d.comb += self.walker.step.eq(1)
                m.d.sync += count.eq(count - 1)
                with m.If(count == 1):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "BUS_ISSUE"

    def outputs(self):
        """An outputs part (block mode): ``first:u32 steps:u16`` and the steps' words from the ring,
        densely packed, between a reply's head and its body: a DATA reply's in an outputs pass
        (chunk c − 1's; then the ring's read pointer and the part move on to chunk c) and OUTPUTS'
        (the last chunk's: it changes nothing, so a repeat gets the same bytes)."""
        m, ser, packer, obuf, body = self.m, self.ser, self.packer, self.obuf, self.body
        raddr, part_left, part_word = self.raddr, self.part_left, self.part_word

        def done(end):
            """The part is out; ``end``: the ring's read pointer after it."""
            with m.If(self.advance):
                m.d.sync += [self.rptr.eq(end), self.out_first.eq(self.next_first),
                             self.out_steps.eq(self.next_steps)]
            self.body_next()

        def pump():
            """The packer's bytes to the reply (the part's last byte ends a reply without a body)."""
            m.d.comb += [ser.i.valid.eq(packer.o.valid), ser.i.p.value.eq(packer.o.p.data), ser.i.p.nbytes.eq(1),
                         ser.i.p.last.eq(packer.o.p.last & (body == _NONE)), packer.o.ready.eq(ser.i.ready)]

        with m.State("PART_HEAD"):
            head = self.msg.outputs_head
            assert [(f.name, f.width) for f in head.fields] == [("first", 32), ("steps", 16)]
            m.d.comb += [ser.i.valid.eq(1), ser.i.p.value.eq(Cat(self.out_first, Signal(32 - len(self.out_first)),
                                                                   self.out_steps)),
                         ser.i.p.nbytes.eq(head.size()), ser.i.p.last.eq((self.out_steps == 0) & (body == _NONE))]
            with m.If(ser.i.ready):
                m.d.sync += [raddr.eq(self.rptr), part_left.eq(self.out_steps), part_word.eq(0)]
                with m.If(self.out_steps == 0):
                    done(self.rptr)
                with m.Else():
                    m.next = "PART_READ"
        with m.State("PART_READ"):  # the ring's word at raddr: rdata next clock
            pump()
            m.next = "PART_WORD"
        with m.State("PART_WORD"):
            pump()
            last_word = part_word == Mux(self.out_echo, self.N - 1, self.P - 1)
            m.d.comb += [packer.i.valid.eq(1), packer.i.p.data.eq(obuf.rdata),
                         packer.i.p.last.eq(last_word & (part_left == 1))]
            with m.If(packer.i.ready):
                m.d.sync += [raddr.eq(Mux(raddr == obuf.depth - 1, 0, raddr + 1)),
                             part_word.eq(Mux(last_word, 0, part_word + 1))]
                with m.If(last_word):
                    m.d.sync += part_left.eq(part_left - 1)
                with m.If(last_word & (part_left == 1)):
                    m.next = "PART_FLUSH"
                with m.Else():
                    m.next = "PART_READ"
        with m.State("PART_FLUSH"):  # the packer's last bytes
            pump()
            with m.If(packer.o.valid & packer.o.ready & packer.o.p.last):
                done(raddr)

