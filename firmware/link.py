"""The board's link layer: UART, COBS framing and CRC-32, as small ``amaranth.lib.wiring`` blocks.

Receive path (``Link.rx`` pin -> ``header`` + ``payload`` streams)::

    UARTRx -> COBSDecoder -> FrameReceiver (1 KiB frame buffer, CRC check) -> command decoder

Transmit path (``reply`` stream -> ``Link.tx`` pin)::

    sequencer's reply body -> ReplyCache (1 KiB) -> CRCAppender -> COBSEncoder (254-byte block) -> UARTTx

The wire format is defined in firmware/protocol.py (docs/protocol.md); this file imports its
constants so a change of buffer size or status code flows into the gateware. Byte streams use
``amaranth.lib.stream`` (valid/ready, payload taken when both are high).

Robustness: nothing on the receive path ever waits for the line, and the receiver accepts a byte
every cycle in every state, so garbage, a cut cable or a babbling host cannot hang it; every
malformed frame ends at the next 0x00 delimiter, which is where the receiver resynchronises.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import crc, data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from echoboard.firmware import protocol
from echoboard.firmware.protocol import Status

__all__ = ["DEFAULT_CLOCK_HZ", "DEFAULT_BAUD", "baud_divisor", "DecodedByte", "FrameByte", "ReplyByte",
           "FrameHeader", "UARTRx", "UARTTx", "COBSDecoder", "COBSEncoder", "CRCAppender", "FrameReceiver",
           "ReplyCache", "Link"]

#: 3 Mbaud is what both boards' USB-UARTs sustain (FT231X on ULX3S, FT2232H on iCEBreaker:
#: 12 MHz / 4); a 48 MHz system clock gives an exact divisor of 16. ULX3S's 25 MHz oscillator
#: needs a PLL for it (25 MHz / 3 Mbaud = 8.33 is 4 % off); iCEBreaker's 12 MHz gives 4.
DEFAULT_CLOCK_HZ = 48_000_000
DEFAULT_BAUD = 3_000_000
MIN_DIVISOR = 4  # a start bit must be seen for >= 2 clocks after the 2-flop synchroniser


def baud_divisor(clock_hz: int = DEFAULT_CLOCK_HZ, baud: int = DEFAULT_BAUD, tolerance: float = 0.02) -> int:
    """Clock cycles per bit; ValueError if the rounded divisor is more than ``tolerance`` off.

    The receiver samples mid-bit, so it survives a total clock mismatch (ours + the host's)
    of about 5 % over a 10-bit character; 2 % leaves the other half to the USB-UART.
    """
    divisor = round(clock_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"{clock_hz} Hz is too slow for {baud} baud (divisor {divisor} < {MIN_DIVISOR})")
    error = abs(clock_hz / divisor - baud) / baud
    if error > tolerance:
        raise ValueError(f"{clock_hz} Hz / {divisor} = {clock_hz / divisor:.0f} baud is {error:.1%} off {baud}")
    return divisor


class DecodedByte(data.Struct):
    """COBS decoder output: a frame byte, or (``end``) the delimiter that closes a frame."""

    data: 8
    end: 1  # no data: the frame ended here
    error: 1  # with end: a COBS block ran past the delimiter (the frame was cut short)
    empty: 1  # with end: no byte at all since the previous delimiter (nothing to report)


class FrameByte(data.Struct):
    data: 8
    last: 1  # the last byte of a frame body / payload


class ReplyByte(data.Struct):
    """The sequencer's reply stream: reply body bytes, or one ``replay`` beat (with ``last``)."""

    data: 8
    last: 1  # the last byte of a reply body
    replay: 1  # instead of a new reply: send the cached previous reply again (data ignored)


class FrameHeader(data.Struct):
    """One per received non-empty frame, before its payload bytes (which follow only when OK)."""

    seq: 8  # 0 if the frame was shorter than one byte
    cmd: 8  # 0 if shorter than two bytes
    status: 8  # protocol.Status: OK, BAD_CRC, TRUNCATED or OVERSIZED
    length: unsigned(16)  # payload bytes that follow on ``payload`` (0 unless status is OK)
    repeat: 1  # OK and (seq, cmd) equal the previous OK frame's: a host retry (docs/protocol.md)


def _byte_stream():
    return stream.Signature(unsigned(8))


def _check_divisor(divisor: int) -> None:
    if not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be an integer >= {MIN_DIVISOR}, got {divisor!r}")


class _BitTimed(wiring.Component):
    """A component timed in UART bits: ``divisor`` clocks per bit, checked once here."""

    def __init__(self, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()


class UARTRx(_BitTimed):
    """8N1 receiver: ``divisor`` clocks per bit, sampled in the middle of each bit.

    ``rx`` is the raw pin (double-flopped here). A byte whose stop bit is low (a framing error
    or a break) is dropped and the receiver waits for the line to go high again; the frame it
    belonged to then fails its CRC. The output holds one byte; if it has not been taken when
    the next one is complete, that next byte replaces it and ``overrun`` pulses (the receive
    path downstream accepts a byte every cycle, so this only happens with a stalled consumer).
    """

    rx: In(1, init=1)
    o: Out(_byte_stream())
    overrun: Out(1)


    def elaborate(self, platform):
        m = Module()
        sync1, pin = Signal(init=1), Signal(init=1)
        m.d.sync += [sync1.eq(self.rx), pin.eq(sync1)]
        timer = Signal(range(self.divisor))
        bit = Signal(range(9))
        shift = Signal(8)
        m.d.sync += self.overrun.eq(0)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~pin):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(pin):  # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shift.eq(Cat(shift[1:], pin)), timer.eq(self.divisor - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(pin):
                        m.d.sync += [self.o.payload.eq(shift), self.o.valid.eq(1),
                                     self.overrun.eq(self.o.valid & ~self.o.ready)]
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(pin):
                    m.next = "IDLE"
        return m


class UARTTx(_BitTimed):
    """8N1 transmitter: takes a byte when idle, shifts out start, 8 data bits (LSB first), stop."""

    i: In(_byte_stream())
    tx: Out(1, init=1)


    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        bits = Signal(range(11))  # bits left to send
        shift = Signal(10, init=1)
        m.d.comb += [self.tx.eq(shift[0]), self.i.ready.eq(bits == 0)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shift.eq(1 << 9 | self.i.payload << 1), bits.eq(10), timer.eq(self.divisor - 1)]
        with m.Elif(bits != 0):
            with m.If(timer == 0):
                m.d.sync += [shift.eq(1 << 9 | shift >> 1), bits.eq(bits - 1), timer.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class COBSDecoder(wiring.Component):
    """Raw line bytes -> frame bytes plus one ``end`` token per 0x00 delimiter.

    One byte per cycle, except that the implicit zero at the end of a short block costs one
    extra cycle when the next block's code byte arrives (it is only emitted once the decoder
    knows the frame goes on). The output is registered (one cycle of latency), which keeps
    the receive path's logic between registers short. State is four small registers, cleared
    at every delimiter, so a corrupted frame cannot affect the next one. Two delimiters in a
    row give an ``end`` token marked ``empty`` (hosts send a lone 0x00 to flush a half-sent frame).
    """

    i: In(_byte_stream())
    o: Out(stream.Signature(DecodedByte))

    def elaborate(self, platform):
        m = Module()
        left = Signal(8)  # data bytes still to come in the current block
        implicit = Signal()  # the current block's code was < 0xFF: a zero follows it
        owed = Signal()  # a finished block owes its implicit zero if another block follows
        empty = Signal(init=1)  # no byte since the last delimiter
        byte, out = self.i.payload, self.o.p
        can_load = ~self.o.valid | self.o.ready
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & can_load):
            with m.If(byte == 0):
                m.d.comb += self.i.ready.eq(1)
                m.d.sync += [self.o.valid.eq(1), out.data.eq(0), out.end.eq(1), out.error.eq(left != 0),
                             out.empty.eq(empty), left.eq(0), owed.eq(0), empty.eq(1)]
            with m.Elif((left == 0) & owed):  # a code byte: first emit the previous block's zero
                m.d.sync += [self.o.valid.eq(1), out.data.eq(0), out.end.eq(0), owed.eq(0)]
            with m.Elif(left == 0):  # a code byte
                m.d.comb += self.i.ready.eq(1)
                m.d.sync += [left.eq(byte - 1), implicit.eq(byte != 0xFF), owed.eq(byte == 1), empty.eq(0)]
            with m.Else():
                m.d.comb += self.i.ready.eq(1)
                m.d.sync += [self.o.valid.eq(1), out.data.eq(byte), out.end.eq(0), left.eq(left - 1),
                             owed.eq((left == 1) & implicit)]
        return m


class COBSEncoder(wiring.Component):
    """Frame bytes (``last`` on the final one) -> COBS-encoded bytes and a 0x00 delimiter.

    A code byte gives the distance to the next zero, so each block of up to 254 non-zero bytes
    is collected in a block buffer (one small RAM) before its code byte can be sent: the
    latency is one block, and input stalls while a block drains. That is free here, as the
    UART downstream takes ~10 x divisor clocks per byte. Output equals ``cobs.cobs.encode``
    (a final block of exactly 254 bytes gets no trailing empty block).
    """

    i: In(stream.Signature(FrameByte))
    o: Out(_byte_stream())

    def elaborate(self, platform):
        m = Module()
        m.submodules.buf = buf = memory.Memory(shape=8, depth=254, init=[])
        wr, rd = buf.write_port(), buf.read_port()
        size = Signal(range(255))  # bytes in the block being filled / sent
        index = Signal(range(255))  # next buffered byte to send
        index_next = Signal.like(index)
        frame_end = Signal()  # the block being sent is the frame's last one: a delimiter follows
        empty_block = Signal()  # the frame ended on a zero: an empty block (code 1) follows
        byte, o_taken = self.i.p.data, self.o.valid & self.o.ready
        m.d.comb += [index_next.eq(index), rd.addr.eq(index_next), wr.addr.eq(size), wr.data.eq(byte)]
        m.d.sync += index.eq(index_next)

        with m.FSM():
            with m.State("FILL"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    with m.If(byte == 0):
                        m.d.sync += [frame_end.eq(self.i.p.last), empty_block.eq(self.i.p.last)]
                        m.next = "CODE"
                    with m.Else():
                        m.d.comb += wr.en.eq(1)
                        m.d.sync += [size.eq(size + 1), frame_end.eq(self.i.p.last), empty_block.eq(0)]
                        with m.If(self.i.p.last | (size == 253)):
                            m.next = "CODE"
            with m.State("CODE"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(size + 1), index_next.eq(0)]
                with m.If(o_taken):
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(index == size):
                    with m.If(empty_block):
                        m.d.sync += [size.eq(0), empty_block.eq(0)]
                        m.next = "CODE"
                    with m.Elif(frame_end):
                        m.next = "DELIMITER"
                    with m.Else():
                        m.d.sync += size.eq(0)
                        m.next = "FILL"
                with m.Else():
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(rd.data)]
                    with m.If(o_taken):
                        m.d.comb += index_next.eq(index + 1)
            with m.State("DELIMITER"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(o_taken):
                    m.d.sync += [size.eq(0), frame_end.eq(0)]
                    m.next = "FILL"
        return m


class CRCAppender(wiring.Component):
    """Passes a frame body through and appends its CRC-32 (zlib.crc32), little-endian.

    ``last`` moves from the body's final byte to the CRC's final byte. The output is registered
    (one cycle of latency, full throughput, the CRC bytes follow without a gap), which also cuts
    the combinational path from the sequencer's reply logic to the COBS encoder.
    """

    i: In(stream.Signature(FrameByte))
    o: Out(stream.Signature(FrameByte))

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc_gen = crc.catalog.CRC32_ISO_HDLC(data_width=8).create()
        first = Signal(init=1)
        index = Signal(2)
        can_load = ~self.o.valid | self.o.ready
        m.d.comb += crc_gen.data.eq(self.i.p.data)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.FSM():
            with m.State("BODY"):
                m.d.comb += self.i.ready.eq(can_load)
                with m.If(self.i.valid & can_load):
                    m.d.comb += [crc_gen.valid.eq(1), crc_gen.start.eq(first)]
                    m.d.sync += [self.o.valid.eq(1), self.o.p.data.eq(self.i.p.data), self.o.p.last.eq(0),
                                 first.eq(self.i.p.last)]
                    with m.If(self.i.p.last):
                        m.d.sync += index.eq(0)
                        m.next = "CRC"
            with m.State("CRC"):
                with m.If(can_load):
                    m.d.sync += [self.o.valid.eq(1), self.o.p.data.eq(crc_gen.crc.word_select(index, 8)),
                                 self.o.p.last.eq(index == 3), index.eq(index + 1)]
                    with m.If(index == 3):
                        m.next = "BODY"
        return m


class FrameReceiver(wiring.Component):
    """Decoded bytes -> CRC-checked frames: a ``header`` per frame, then its payload bytes.

    The whole frame is stored in a buffer of :data:`protocol.RX_BUFFER_BYTES` while the CRC
    runs, so nothing downstream ever sees a byte of a frame whose CRC fails. At the delimiter
    the frame gets a status, checked in this order (the same as protocol.decode_frame):
    TRUNCATED (COBS violation), OVERSIZED (more than RX_BUFFER_BYTES decoded bytes; the excess
    is not stored), TRUNCATED (shorter than [seq][cmd][crc]), BAD_CRC, else OK.

    Interface: ``header`` carries seq, cmd, status, payload length and the retry flag; for an
    OK frame with a payload, ``payload`` then delivers exactly ``length`` bytes (``last`` on
    the final one), read from the buffer at one per cycle. The consumer must take them all:
    the buffer is busy until then. Empty frames (consecutive delimiters) produce nothing.

    Input is accepted every cycle in every state. A frame that starts while the buffer is
    still busy (the host did not wait for the reply) is dropped whole, up to its delimiter,
    and counted in ``overruns`` (one that decodes to no bytes, ``01 00``, too); the host's
    timeout and retry recover it.

    Latency: the header is valid the cycle after the delimiter arrives; payload follows at one
    byte per cycle from the cycle after the header is taken.
    Counters wrap at 2**32.
    """

    i: In(stream.Signature(DecodedByte))
    header: Out(stream.Signature(FrameHeader))
    payload: Out(stream.Signature(FrameByte))
    frames_ok: Out(32)
    crc_errors: Out(32)
    framing_errors: Out(32)
    overruns: Out(32)

    def elaborate(self, platform):
        m = Module()
        size = protocol.RX_BUFFER_BYTES
        m.submodules.buf = buf = memory.Memory(shape=8, depth=size, init=[])
        m.submodules.crc = crc_chk = crc.catalog.CRC32_ISO_HDLC(data_width=8).create()
        wr, rd = buf.write_port(), buf.read_port()

        count = Signal(range(size + 1))  # bytes of the frame so far (stored: min(count, size))
        too_long = Signal()
        skip = Signal()  # the frame now arriving started while busy: drop it up to its delimiter
        seq, cmd = Signal(8), Signal(8)
        last_seq, last_cmd, have_last = Signal(8), Signal(8), Signal()
        addr, addr_next = Signal(range(size)), Signal(range(size))
        payload_end = Signal(range(size))  # address of the last payload byte
        tok = self.i.p
        m.d.comb += [self.i.ready.eq(1), wr.addr.eq(count), wr.data.eq(tok.data), crc_chk.data.eq(tok.data),
                     addr_next.eq(addr), rd.addr.eq(addr_next)]
        m.d.sync += addr.eq(addr_next)

        def end_of_frame():
            m.d.sync += [count.eq(0), too_long.eq(0), skip.eq(0), seq.eq(0), cmd.eq(0)]

        with m.FSM():
            with m.State("RECEIVE"):
                with m.If(self.i.valid & skip):
                    with m.If(tok.end):
                        m.d.sync += self.overruns.eq(self.overruns + 1)
                        end_of_frame()
                with m.Elif(self.i.valid & ~tok.end):
                    with m.If(count == size):
                        m.d.sync += too_long.eq(1)
                    with m.Else():
                        m.d.comb += [wr.en.eq(1), crc_chk.valid.eq(1), crc_chk.start.eq(count == 0)]
                        m.d.sync += count.eq(count + 1)
                        with m.If(count == 0):
                            m.d.sync += seq.eq(tok.data)
                        with m.If(count == 1):
                            m.d.sync += cmd.eq(tok.data)
                with m.Elif(self.i.valid & tok.end):
                    status = Signal(8)
                    with m.If(tok.error):
                        m.d.comb += status.eq(Status.TRUNCATED)
                    with m.Elif(too_long):
                        m.d.comb += status.eq(Status.OVERSIZED)
                    with m.Elif(count < protocol.MIN_REQUEST_FRAME_BYTES):
                        m.d.comb += status.eq(Status.TRUNCATED)
                    with m.Elif(~crc_chk.match_detected):
                        m.d.comb += status.eq(Status.BAD_CRC)
                    with m.Else():
                        m.d.comb += status.eq(Status.OK)
                    ok = status == Status.OK
                    length = Mux(ok, count - protocol.MIN_REQUEST_FRAME_BYTES, 0)
                    m.d.sync += [
                        self.header.p.seq.eq(seq), self.header.p.cmd.eq(cmd), self.header.p.status.eq(status),
                        self.header.p.length.eq(length),
                        self.header.p.repeat.eq(ok & have_last & (seq == last_seq) & (cmd == last_cmd)),
                        payload_end.eq(count - protocol.CRC_BYTES - 1),
                    ]
                    m.d.comb += addr_next.eq(protocol.SEQ_CMD_BYTES)
                    with m.If(~tok.empty):
                        m.d.sync += self.header.valid.eq(1)
                        m.next = "HEADER"
                    end_of_frame()
            with m.State("HEADER"):
                self._drop_while_busy(m, skip)
                with m.If(self.header.ready):
                    m.d.sync += self.header.valid.eq(0)
                    hdr = self.header.p
                    with m.Switch(hdr.status):
                        with m.Case(Status.OK):
                            m.d.sync += [self.frames_ok.eq(self.frames_ok + 1), last_seq.eq(hdr.seq),
                                         last_cmd.eq(hdr.cmd), have_last.eq(1)]
                        with m.Case(Status.BAD_CRC):
                            m.d.sync += self.crc_errors.eq(self.crc_errors + 1)
                        with m.Default():
                            m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                    with m.If(hdr.length != 0):
                        m.next = "PAYLOAD"
                    with m.Else():
                        m.next = "RECEIVE"
            with m.State("PAYLOAD"):
                self._drop_while_busy(m, skip)
                m.d.comb += [self.payload.valid.eq(1), self.payload.p.data.eq(rd.data),
                             self.payload.p.last.eq(addr == payload_end)]
                with m.If(self.payload.ready):
                    m.d.comb += addr_next.eq(addr + 1)
                    with m.If(addr == payload_end):
                        m.next = "RECEIVE"
        return m

    def _drop_while_busy(self, m, skip):
        # A frame that ends here arrived whole while the buffer was busy: count it. ``skip`` marks
        # one whose decoded bytes were seen; ``~empty`` also catches one that decoded to no bytes
        # (``01 00``: a code byte only), which sets no ``skip``. Consecutive delimiters stay uncounted.
        with m.If(self.i.valid & ~self.i.p.end):
            m.d.sync += skip.eq(1)
        with m.If(self.i.valid & self.i.p.end & (skip | ~self.i.p.empty)):
            m.d.sync += [self.overruns.eq(self.overruns + 1), skip.eq(0)]


class ReplyCache(wiring.Component):
    """Forwards reply bodies and keeps the last one, so a retried request is answered again
    without being executed again (docs/protocol.md, "Retries").

    ``i``: reply bodies ``[seq][cmd][status][payload...]`` (``last`` on the final byte), or a
    single ``replay`` beat, which sends the cached reply again. The payload is stored in a
    buffer of :data:`protocol.RX_BUFFER_BYTES` while it passes, at no extra latency.

    Replies with a link-error status (BAD_CRC, TRUNCATED, OVERSIZED) answer no executed
    command, so they pass through but are not cached: otherwise a corrupted retry would
    replace the reply the next retry must get, and the host would retry for ever. Nor are
    bodies shorter than [seq][cmd][status] (a sequencer bug); one whose payload overflows the
    buffer empties the cache. A replay with nothing cached sends nothing.
    """

    i: In(stream.Signature(ReplyByte))
    o: Out(stream.Signature(FrameByte))

    def elaborate(self, platform):
        m = Module()
        head = protocol.SEQ_CMD_BYTES + protocol.STATUS_BYTES
        depth = protocol.RX_BUFFER_BYTES  # > MAX_REPLY_PAYLOAD; longer payloads are not stored
        m.submodules.buf = buf = memory.Memory(shape=8, depth=depth, init=[])
        wr, rd = buf.write_port(), buf.read_port()

        # the reply passing through
        head_seen = Signal(range(head + 1))  # its seq/cmd/status bytes so far
        new_head = Signal(data.ArrayLayout(8, head))
        waddr = Signal(range(depth + 1))  # its payload bytes so far
        error_reply = Signal()  # its status is a link error (known once the status byte passed)
        # the cached reply
        cached, cached_head = Signal(), Signal.like(new_head)
        cached_payload = Signal()  # it has a payload, whose last byte is at cached_end
        cached_end = Signal(range(depth))
        hidx = Signal(range(head))
        raddr, raddr_next = Signal(range(depth)), Signal(range(depth))
        at_end = Signal()  # raddr == cached_end, registered to keep the compare off the output path

        byte, taken = self.i.p.data, self.i.valid & self.i.ready
        byte_is_link_error = Cat(*(byte == s for s in Status if s.retry)).any()
        m.d.comb += [wr.addr.eq(waddr), wr.data.eq(byte), raddr_next.eq(raddr), rd.addr.eq(raddr_next)]
        m.d.sync += [raddr.eq(raddr_next), at_end.eq(raddr_next == cached_end)]

        with m.FSM():
            with m.State("PASS"):
                m.d.comb += [self.o.valid.eq(self.i.valid & ~self.i.p.replay), self.o.p.data.eq(byte),
                             self.o.p.last.eq(self.i.p.last), self.i.ready.eq(self.o.ready | self.i.p.replay)]
                with m.If(taken & self.i.p.replay):
                    m.d.sync += hidx.eq(0)
                    with m.If(cached):
                        m.next = "REPLAY_HEAD"
                with m.Elif(taken):
                    with m.If(head_seen != head):
                        m.d.sync += [new_head[head_seen].eq(byte), head_seen.eq(head_seen + 1)]
                    with m.Elif(~error_reply & (waddr != depth)):
                        m.d.comb += wr.en.eq(1)
                        m.d.sync += waddr.eq(waddr + 1)
                    with m.If(head_seen == head - 1):
                        m.d.sync += error_reply.eq(byte_is_link_error)
                    with m.If(self.i.p.last):
                        m.d.sync += [head_seen.eq(0), waddr.eq(0)]
                        with m.If((head_seen == head - 1) & ~byte_is_link_error):  # ends on its status
                            m.d.sync += [cached.eq(1), cached_head.eq(new_head), cached_head[head - 1].eq(byte),
                                         cached_payload.eq(0)]
                        with m.If((head_seen == head) & ~error_reply & (waddr != depth)):
                            m.d.sync += [cached.eq(1), cached_head.eq(new_head), cached_payload.eq(1),
                                         cached_end.eq(waddr)]
                        with m.Elif((head_seen == head) & ~error_reply):  # too long: buffer overwritten
                            m.d.sync += cached.eq(0)
            with m.State("REPLAY_HEAD"):
                m.d.comb += [self.o.valid.eq(1), self.o.p.data.eq(cached_head.as_value().word_select(hidx, 8)),
                             self.o.p.last.eq((hidx == head - 1) & ~cached_payload), raddr_next.eq(0)]
                with m.If(self.o.ready):
                    m.d.sync += hidx.eq(hidx + 1)
                    with m.If((hidx == head - 1) & cached_payload):
                        m.next = "REPLAY_PAYLOAD"
                    with m.Elif(hidx == head - 1):
                        m.next = "PASS"
            with m.State("REPLAY_PAYLOAD"):
                m.d.comb += [self.o.valid.eq(1), self.o.p.data.eq(rd.data), self.o.p.last.eq(at_end)]
                with m.If(self.o.ready):
                    m.d.comb += raddr_next.eq(raddr + 1)
                    with m.If(at_end):
                        m.next = "PASS"
        return m


class Link(_BitTimed):
    """The whole link between the UART pins and the command decoder / sequencer.

    ``rx``/``tx``: the UART pins (idle high). ``header``/``payload``: received frames, see
    :class:`FrameReceiver`. ``reply``: the reply *body* ([seq][cmd][status][payload...],
    ``last`` on its final byte) or a single ``replay`` beat, see :class:`ReplyCache`; the link
    appends the CRC, COBS-encodes, adds the delimiter and sends it. Counters (wrapping 32-bit):
    good frames, CRC errors, framing errors (truncated or oversized), frames dropped while the
    receive buffer was busy.

    Retries: ``header.repeat`` flags a frame whose (seq, cmd) equal the previous good frame's.
    The sequencer answers it with a ``replay`` beat after taking its payload, and executes
    nothing. Because the sequencer reads headers in order, the cache then always holds the
    reply to that very frame, even if the retry arrived while the reply was still being made.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    header: Out(stream.Signature(FrameHeader))
    payload: Out(stream.Signature(FrameByte))
    reply: In(stream.Signature(ReplyByte))
    frames_ok: Out(32)
    crc_errors: Out(32)
    framing_errors: Out(32)
    overruns: Out(32)

    def __init__(self, divisor: int = baud_divisor()):
        super().__init__(divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.cobs_dec = cobs_dec = COBSDecoder()
        m.submodules.receiver = receiver = FrameReceiver()
        m.submodules.cache = cache = ReplyCache()
        m.submodules.crc_app = crc_app = CRCAppender()
        m.submodules.cobs_enc = cobs_enc = COBSEncoder()
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        wiring.connect(m, uart_rx.o, cobs_dec.i)
        wiring.connect(m, cobs_dec.o, receiver.i)
        wiring.connect(m, wiring.flipped(self.header), receiver.header)
        wiring.connect(m, wiring.flipped(self.payload), receiver.payload)
        wiring.connect(m, wiring.flipped(self.reply), cache.i)
        wiring.connect(m, cache.o, crc_app.i)
        wiring.connect(m, crc_app.o, cobs_enc.i)
        wiring.connect(m, cobs_enc.o, uart_tx.i)
        for name in ("frames_ok", "crc_errors", "framing_errors", "overruns"):
            m.d.comb += getattr(self, name).eq(getattr(receiver, name))
        return m
