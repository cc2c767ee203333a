"""The link blocks of firmware/link.py in amaranth.sim, against the PyPI ``cobs`` and ``zlib.crc32``.

The oracle is firmware.protocol's host-side framing (cobs + zlib): for any byte stream, the
gateware receiver must report the same frames, statuses and payloads as ``decode_frame``, and
the transmit path must produce exactly ``encode_frame``'s bytes. Runs stay short (a few
thousand cycles each) because amaranth.sim drives every cycle from Python.
"""
import random
import zlib

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from cobs import cobs

from echoboard.firmware import protocol
from echoboard.firmware.link import (COBSDecoder, COBSEncoder, CRCAppender, FrameByte, FrameHeader, FrameReceiver, Link,
                           ReplyByte, ReplyCache, UARTRx, UARTTx, baud_divisor)
from echoboard.firmware.protocol import MAX_FRAME_BYTES, FrameError, Status

COUNTERS = ("frames_ok", "crc_errors", "framing_errors", "overruns")


# ---------------------------------------------------------------- harnesses and simulation helpers

class RxPath(wiring.Component):
    """COBSDecoder -> FrameReceiver, fed with raw line bytes (the UART is tested separately)."""

    i: In(stream.Signature(8))
    header: Out(stream.Signature(FrameHeader))
    payload: Out(stream.Signature(FrameByte))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dec = dec = COBSDecoder()
        m.submodules.rcv = self.rcv = FrameReceiver()
        wiring.connect(m, wiring.flipped(self.i), dec.i)
        wiring.connect(m, dec.o, self.rcv.i)
        wiring.connect(m, wiring.flipped(self.header), self.rcv.header)
        wiring.connect(m, wiring.flipped(self.payload), self.rcv.payload)
        return m


class TxPath(wiring.Component):
    """CRCAppender -> COBSEncoder: frame bodies in, line bytes out."""

    i: In(stream.Signature(FrameByte))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = CRCAppender()
        m.submodules.enc = enc = COBSEncoder()
        wiring.connect(m, wiring.flipped(self.i), crc.i)
        wiring.connect(m, crc.o, enc.i)
        wiring.connect(m, enc.o, wiring.flipped(self.o))
        return m


class UARTLoop(wiring.Component):
    """UARTTx -> UARTRx at one divisor."""

    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))

    def __init__(self, divisor):
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = tx = UARTTx(self.divisor)
        m.submodules.rx = rx = UARTRx(self.divisor)
        wiring.connect(m, wiring.flipped(self.i), tx.i)
        m.d.comb += rx.rx.eq(tx.tx)
        wiring.connect(m, rx.o, wiring.flipped(self.o))
        return m


def simulate(dut, *testbenches, background=(), max_cycles=20_000):
    """Run until the critical testbenches finish; fail if that takes more than ``max_cycles``."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(tb)
    for tb in background:
        sim.add_testbench(tb, background=True)
    steps = 0  # advance() moves one time step: a clock period is two (rising and falling edge)
    while sim.advance():
        steps += 1
        assert steps <= 2 * max_cycles, f"simulation did not finish within {max_cycles} cycles"


# One-shot ``await ctx.tick()`` only: background testbenches are abandoned mid-await when the
# simulation ends, and an abandoned ``async for`` / ``until()`` generator fails noisily in GC.

async def put(ctx, port, items, rng=None, idle=0.0):
    """Offer each payload until taken; with ``idle``, hold valid low for random cycles first."""
    for item in items:
        while rng is not None and rng.random() < idle:
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, item)
        while not (await ctx.tick().sample(port.ready))[2]:
            pass
        ctx.set(port.valid, 0)


async def take(ctx, port):
    """Take one payload (ready only while waiting for it)."""
    ctx.set(port.ready, 1)
    while True:
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if valid:
            ctx.set(port.ready, 0)
            return payload


def collector(port, out: list, rng=None, ready_prob=1.0):
    """A background testbench appending every transfer's payload to ``out`` (random ready)."""
    async def run(ctx):
        ready = True
        ctx.set(port.ready, 1)
        while True:
            _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
            if ready and valid:
                out.append(payload)
            if rng is not None and ready_prob < 1.0:
                ready = rng.random() < ready_prob
                ctx.set(port.ready, ready)
    return run


# ---------------------------------------------------------------- the host-side oracle

def expected_frames(wire: bytes) -> list[tuple]:
    """(status, seq, cmd, payload, repeat) per non-empty frame, from protocol.decode_frame.

    seq/cmd are None where the oracle cannot know them (a COBS violation)."""
    frames, last = [], None
    for chunk in wire.split(b"\x00")[:-1]:
        if not chunk:
            continue
        try:
            body = protocol.decode_frame(chunk)
        except FrameError as exc:
            try:
                raw = cobs.decode(chunk)
                seq, cmd = (raw + b"\x00\x00")[:2]
            except cobs.DecodeError:
                seq = cmd = None
            frames.append((exc.status, seq, cmd, b"", False))
            continue
        repeat = last == body[:2]
        last = body[:2]
        frames.append((Status.OK, body[0], body[1], body[2:], repeat))
    return frames


def received_frames(headers, payload_bytes) -> list[tuple]:
    frames, pos = [], 0
    for h in headers:
        data = payload_bytes[pos:pos + h.length]
        pos += h.length
        assert [b.last for b in data] == [i == h.length - 1 for i in range(h.length)]
        frames.append((Status(h.status), h.seq, h.cmd, bytes(b.data for b in data), bool(h.repeat)))
    assert pos == len(payload_bytes), "payload bytes without a header"
    return frames


def compare(got, want):
    assert len(got) == len(want), (len(got), len(want))
    for i, (g, w) in enumerate(zip(got, want)):
        if w[1] is None:  # seq/cmd unknown to the oracle
            g, w = (g[0], g[3], g[4]), (w[0], w[3], w[4])
        assert g == w, f"frame {i}: got {g}, want {w}"


def run_rx(wire: bytes, *, seed=0, ready_prob=0.7, max_cycles=20_000):
    """Feed ``wire`` to RxPath; return (frames received, counter values).

    Bytes arrive at full rate within a frame, but like a stop-and-wait host each frame waits
    until the previous one has been delivered (the receiver drops frames that arrive while
    its buffer is busy; that is tested separately)."""
    dut = RxPath()
    rng = random.Random(seed)
    headers, payload = [], []
    counters = {}
    pieces = [chunk + b"\x00" for chunk in wire.split(b"\x00")[:-1]]

    async def feed(ctx):
        frames = 0
        for piece in pieces:
            await put(ctx, dut.i, piece)
            frames += len(piece) > 1
            while len(headers) < frames or len(payload) < sum(h.length for h in headers):
                await ctx.tick()
        await ctx.tick().repeat(3)
        counters.update({name: ctx.get(getattr(dut.rcv, name)) for name in COUNTERS})

    simulate(dut, feed, background=[collector(dut.header, headers, rng, ready_prob),
                                    collector(dut.payload, payload, rng, ready_prob)], max_cycles=max_cycles)
    return received_frames(headers, payload), counters


def request(rng, size):
    """Wire bytes of a request with random seq, cmd and payload."""
    return protocol.Request(rng.randrange(256), rng.randrange(256), rng.randbytes(size)).encode()


def body_with_zeros(rng, size):
    """Random bytes with many zeros and long non-zero runs: exercises every COBS block shape."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(size)
    if kind == 1:
        return bytes(rng.choice([0, rng.randrange(1, 256)]) for _ in range(size))
    return bytes(rng.randrange(1, 256) for _ in range(size))


def counts(frames):
    status = [f[0] for f in frames]
    return {"frames_ok": status.count(Status.OK), "crc_errors": status.count(Status.BAD_CRC),
            "framing_errors": status.count(Status.TRUNCATED) + status.count(Status.OVERSIZED), "overruns": 0}


# ---------------------------------------------------------------- receive path

def test_consecutive_random_frames_with_repeats():
    rng = random.Random(1)
    wire = b""
    for _ in range(30):
        payload = body_with_zeros(rng, rng.choice([0, 1, 5, 60, 253, 254, 255, 300]))
        frame = protocol.Request(rng.randrange(3), rng.randrange(3), payload).encode()  # small seq/cmd: repeats
        wire += frame * rng.choice([1, 1, 2])
    want = expected_frames(wire)
    assert any(f[4] for f in want) and len(want) > 30
    got, counters = run_rx(wire, seed=1)
    compare(got, want)
    assert counters == counts(want)


def test_garbage_truncated_and_bad_crc_frames_resynchronise():
    rng = random.Random(2)
    good = [request(rng, rng.randrange(40)) for _ in range(12)]
    bad = [
        rng.randbytes(50),  # garbage, may contain delimiters anywhere
        b"\x00\x00\x00",  # empty frames: ignored
        good[0][:-7] + b"\x00",  # cut short: COBS violation or short/bad CRC
        b"\x05\x00",  # a code byte pointing past the delimiter
        b"\x01\x00", cobs.encode(b"\x07\x21\x01") + b"\x00",  # shorter than seq+cmd+crc
        bytes([good[1][0] ^ 0x40]) + good[1][1:],  # one flipped code byte
        good[2][:5] + bytes([good[2][5] ^ 0x01 or 1]) + good[2][6:],  # one flipped data bit
        cobs.encode(b"\x01\x02" + b"\x00\x00\x00\x00") + b"\x00",  # zero CRC field
    ]
    pieces = good[:]
    for b in bad:
        pieces.insert(rng.randrange(len(pieces) + 1), b)
    wire = b"".join(pieces)
    want = expected_frames(wire)
    statuses = {f[0] for f in want}
    assert {Status.OK, Status.TRUNCATED, Status.BAD_CRC} <= statuses
    got, counters = run_rx(wire, seed=2)
    compare(got, want)
    assert counters == counts(want)
    # every good frame survived its neighbours
    assert [f for f in got if f[0] == Status.OK and not f[4]][-3:] == \
        [(Status.OK, *protocol.decode_frame(g)[:2], protocol.decode_frame(g)[2:], False) for g in good[-3:]]


def test_maximum_and_oversized_frames():
    rng = random.Random(3)
    biggest = protocol.Request(1, 2, body_with_zeros(rng, protocol.MAX_REQUEST_PAYLOAD)).encode()
    body = rng.randbytes(MAX_FRAME_BYTES - 3)  # + CRC = MAX_FRAME_BYTES + 1 bytes
    one_over = cobs.encode(body + protocol.frame_crc(body)) + b"\x00"
    cut_long = cobs.encode(bytes(range(1, 255)) * 5)[:-100] + b"\x00"  # over long and COBS-truncated
    wire = biggest + one_over + cut_long + biggest
    want = expected_frames(wire)
    assert [f[0] for f in want] == [Status.OK, Status.OVERSIZED, Status.TRUNCATED, Status.OK]
    assert len(want[0][3]) == protocol.MAX_REQUEST_PAYLOAD
    got, counters = run_rx(wire, seed=3, ready_prob=1.0, max_cycles=8_000)
    compare(got, want)
    assert counters == counts(want)


def test_frame_arriving_while_busy_is_dropped_and_counted():
    rng = random.Random(4)
    a, b, c = (request(rng, 20) for _ in range(3))
    dut = RxPath()
    headers, payload, counters = [], [], {}

    async def host(ctx):
        await put(ctx, dut.i, a)  # header of a now waits: the consumer is not ready
        await put(ctx, dut.i, b[:10])
        ctx.set(dut.header.ready, 1)  # a is taken while b is still arriving
        await put(ctx, dut.i, b[10:])
        await ctx.tick().repeat(40)  # a's payload has drained
        await put(ctx, dut.i, c)
        for _ in range(60):
            await ctx.tick()
        counters.update({name: ctx.get(getattr(dut.rcv, name)) for name in COUNTERS})

    async def consumer(ctx):
        ctx.set(dut.payload.ready, 1)
        while True:
            _, _, hv, hr, hp, pv, pp = await ctx.tick().sample(dut.header.valid, dut.header.ready, dut.header.payload,
                                                               dut.payload.valid, dut.payload.payload)
            if hv and hr:
                headers.append(hp)
            if pv:
                payload.append(pp)

    simulate(dut, host, background=[consumer], max_cycles=3_000)
    got = received_frames(headers, payload)
    assert [(f[1], f[2], f[3]) for f in got] == [tuple(protocol.decode_frame(x)[:2]) + (protocol.decode_frame(x)[2:],)
                                                 for x in (a, c)]
    assert counters == {"frames_ok": 2, "crc_errors": 0, "framing_errors": 0, "overruns": 1}


def test_frame_decoding_to_no_bytes_is_counted_while_busy_and_answered_while_free():
    """A frame of code bytes only (``01 00``, or ``02 00`` cut short) sets no ``skip``: arriving
    while the buffer is busy it still counts as an overrun; arriving while the buffer is free it
    is answered TRUNCATED (as before). Consecutive delimiters count nowhere in either state."""
    rng = random.Random(7)
    a, b = request(rng, 20), request(rng, 3)
    dut = RxPath()
    headers, payload, counters = [], [], {}

    async def host(ctx):
        await put(ctx, dut.i, a)  # a's header now waits: the consumer is not ready
        await put(ctx, dut.i, b"\x01\x00" + b"\x00" + b"\x02\x00" + b)  # dropped: 3 overruns, the empty one nothing
        await ctx.tick().repeat(5)
        ctx.set(dut.header.ready, 1)
        await ctx.tick().repeat(40)  # a's payload has drained: the buffer is free
        await put(ctx, dut.i, b"\x01\x00" + b"\x00")  # answered TRUNCATED; the empty frame nothing
        await ctx.tick().repeat(20)
        counters.update({name: ctx.get(getattr(dut.rcv, name)) for name in COUNTERS})

    async def consumer(ctx):
        ctx.set(dut.payload.ready, 1)
        while True:
            _, _, hv, hr, hp, pv, pp = await ctx.tick().sample(dut.header.valid, dut.header.ready, dut.header.payload,
                                                               dut.payload.valid, dut.payload.payload)
            if hv and hr:
                headers.append(hp)
            if pv:
                payload.append(pp)

    simulate(dut, host, background=[consumer], max_cycles=3_000)
    got = received_frames(headers, payload)
    body = protocol.decode_frame(a)
    assert got == [(Status.OK, body[0], body[1], body[2:], False), (Status.TRUNCATED, 0, 0, b"", False)]
    assert counters == {"frames_ok": 1, "crc_errors": 0, "framing_errors": 1, "overruns": 3}


# ---------------------------------------------------------------- transmit path

@pytest.mark.parametrize("seed", [5, 6])
def test_transmit_path_equals_cobs_and_zlib(seed):
    rng = random.Random(seed)
    sizes = [1, 2, 3, 250, 251, 252, 253, 254, 255, 600] + [rng.randrange(1, 40) for _ in range(8)]
    bodies = [body_with_zeros(rng, n) for n in sizes]
    bodies += [b"\x00", b"\x11\x00", b"\x00" * 5, bytes(range(1, 255)) + b"\x00"]
    dut = TxPath()
    out = []

    want = b"".join(protocol.encode_frame(b) for b in bodies)

    async def feed(ctx):
        items = [{"data": x, "last": i == len(b) - 1} for b in bodies for i, x in enumerate(b)]
        await put(ctx, dut.i, items, rng, idle=0.2)
        while len(out) < len(want):  # the last block drains after the input has been taken
            await ctx.tick()
        await ctx.tick().repeat(20)  # and nothing follows

    simulate(dut, feed, background=[collector(dut.o, out, rng, 0.6)], max_cycles=12_000)
    assert bytes(out) == want
    assert all(zlib.crc32(protocol.decode_frame(f + b"\x00", 1)) == zlib.crc32(b)
               for f, b in zip(bytes(out).split(b"\x00"), bodies))


# ---------------------------------------------------------------- UART

@pytest.mark.parametrize("divisor, count", [(4, 40), (5, 20), (16, 10)])
def test_uart_loopback(divisor, count):
    rng = random.Random(divisor)
    data = [0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(count)]
    dut = UARTLoop(divisor)
    out = []

    async def feed(ctx):
        await put(ctx, dut.i, data, rng, idle=0.3)
        for _ in range(12 * divisor):
            await ctx.tick()

    simulate(dut, feed, background=[collector(dut.o, out)], max_cycles=12 * divisor * (len(data) + 4))
    assert out == data


def test_uart_rx_drops_break_and_survives_glitch():
    divisor = 6
    dut = UARTRx(divisor)
    out, overruns = [], []

    async def line(ctx):
        def bits(byte):
            return [0] + [(byte >> i) & 1 for i in range(8)] + [1]

        async def drive(levels):
            for level in levels:
                ctx.set(dut.rx, level)
                for _ in range(divisor):
                    await ctx.tick()

        await drive([1, 1])
        ctx.set(dut.rx, 0)  # a one-cycle glitch is no start bit
        await ctx.tick()
        ctx.set(dut.rx, 1)
        await drive([1] + bits(0x3C))
        await drive([0] * 14 + [1, 1])  # a break: no byte
        await drive(bits(0xC3) + bits(0x81) + [1])

    async def sink(ctx):  # never ready: the second byte overruns the first
        while True:
            _, _, valid, payload, ovf = await ctx.tick().sample(dut.o.valid, dut.o.payload, dut.overrun)
            if ovf:
                overruns.append(1)
            ctx.set(dut.o.ready, len(out) < 1)
            if valid and len(out) < 1 and ctx.get(dut.o.ready):
                out.append(payload)

    simulate(dut, line, background=[sink], max_cycles=1_000)
    assert out == [0x3C] and overruns == [1]


def test_baud_divisor():
    assert baud_divisor() == 16 and baud_divisor(12_000_000) == 4
    with pytest.raises(ValueError, match="off"):
        baud_divisor(25_000_000)
    with pytest.raises(ValueError, match="too slow"):
        baud_divisor(6_000_000)


# ---------------------------------------------------------------- the whole link over its pins

class LinkHarness(wiring.Component):
    """A Link between host-side UARTs: line bytes in and out at one divisor, and the link's
    sequencer-side ports and counters brought out (also the Verilator test's top level)."""

    host_tx: In(stream.Signature(8))
    host_rx: Out(stream.Signature(8))
    header: Out(stream.Signature(FrameHeader))
    payload: Out(stream.Signature(FrameByte))
    reply: In(stream.Signature(ReplyByte))
    frames_ok: Out(32)
    crc_errors: Out(32)
    framing_errors: Out(32)
    overruns: Out(32)

    def __init__(self, divisor):
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = Link(self.divisor)
        m.submodules.tx = tx = UARTTx(self.divisor)
        m.submodules.rx = rx = UARTRx(self.divisor)
        wiring.connect(m, wiring.flipped(self.host_tx), tx.i)
        wiring.connect(m, rx.o, wiring.flipped(self.host_rx))
        m.d.comb += [link.rx.eq(tx.tx), rx.rx.eq(link.tx)]
        for name in ("header", "payload"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(link, name))
        wiring.connect(m, wiring.flipped(self.reply), link.reply)
        m.d.comb += [getattr(self, name).eq(getattr(link, name)) for name in COUNTERS]
        return m


def test_link_over_uart_answers_each_frame_and_replays_retries():
    """A toy sequencer answers [seq][cmd][status][payload reversed] and replays repeats."""
    rng = random.Random(7)
    good = protocol.Request(9, protocol.Command.READ, bytes([0, 1, 0, 3, 0])).encode()
    corrupted = good[:4] + bytes([good[4] ^ 0x10]) + good[5:]
    wire = b"\x00" + good + corrupted + good + protocol.Request(10, 0x55, b"\x00\x07").encode()
    dut = LinkHarness(divisor=4)
    out, counters, executed = [], {}, []

    async def host(ctx):
        await put(ctx, dut.host_tx, wire)
        await ctx.tick().repeat(4 * 10 * 60)
        counters.update({name: ctx.get(getattr(dut, name)) for name in COUNTERS})

    async def sequencer(ctx):
        link = dut
        while True:
            header = await take(ctx, link.header)
            payload = [(await take(ctx, link.payload)).data for _ in range(header.length)]
            if header.repeat:
                items = [{"data": 0, "last": 1, "replay": 1}]
            else:
                executed.append(header.seq)
                body = bytes([header.seq, header.cmd, header.status, *reversed(payload)])
                items = [{"data": b, "last": i == len(body) - 1, "replay": 0} for i, b in enumerate(body)]
            await put(ctx, link.reply, items, rng, idle=0.2)

    simulate(dut, host, background=[sequencer, collector(dut.host_rx, out)], max_cycles=16_000)
    replies = [protocol.Reply.decode(f) for f in protocol.Deframer().feed(bytes(out))]
    assert [(r.seq, r.cmd, r.status, r.payload) for r in replies] == [
        (9, protocol.Command.READ, Status.OK, bytes([0, 3, 0, 1, 0])),
        (9, protocol.Command.READ, Status.BAD_CRC, b""),  # not cached
        (9, protocol.Command.READ, Status.OK, bytes([0, 3, 0, 1, 0])),  # the retry: replayed
        (10, 0x55, Status.OK, b"\x07\x00"),
    ]
    assert executed == [9, 9, 10]  # the BAD_CRC frame is answered, the retry is not executed
    assert counters == {"frames_ok": 3, "crc_errors": 1, "framing_errors": 0, "overruns": 0}


def test_reply_cache_replays_last_executed_reply():
    rng = random.Random(8)
    dut = ReplyCache()
    out = []
    bodies = [bytes([1, 2, 0]) + rng.randbytes(300), bytes([3, 4, Status.TRUNCATED]), bytes([5, 6, 7]),
              bytes([7, 8, 0, 9]), bytes([9, 9]) ]

    def items(body):
        return [{"data": b, "last": i == len(body) - 1, "replay": 0} for i, b in enumerate(body)]

    replay = [{"data": 0, "last": 1, "replay": 1}]
    sequence = (replay + items(bodies[0]) + items(bodies[1]) + replay + items(bodies[2]) + replay
                + items(bodies[3]) + items(bodies[4]) + replay + replay)
    expected = [bodies[0], bodies[1], bodies[0], bodies[2], bodies[2], bodies[3], bodies[4], bodies[3], bodies[3]]

    async def feed(ctx):
        await put(ctx, dut.i, sequence, rng, idle=0.2)
        await ctx.tick().repeat(30)

    simulate(dut, feed, background=[collector(dut.o, out, rng, 0.6)], max_cycles=8_000)
    frames, current = [], []
    for byte in out:
        current.append(byte.data)
        if byte.last:
            frames.append(bytes(current))
            current = []
    assert frames == expected and not current
