"""cocotb testbench of the whole link (firmware.link.Link) under Verilator, at its UART pins.

A stop-and-wait host, written here as an independent bit-level UART model (8N1, LSB first),
sends a random mix of good frames, retries, corrupted, truncated, oversized, maximum-length and
garbage frames to ``rx``. A toy sequencer takes the link's headers and payloads under random
back-pressure and answers [seq][cmd][status][executions][payload reversed] (cut to a frame) or,
to a link error, [seq][cmd][status]; a retry gets a replay beat. The execution counter makes a
retry that was executed again instead of replayed visible. The replies the host decodes from ``tx`` (PyPI cobs + zlib) must equal
a model built from protocol.decode_frame, and the link's counters must match.

Speed: the line is idle most of the time, so nothing here runs per clock cycle except while a
stream transfer is pending (sim.cocotb_lib's StreamMonitor polls every cycle, which would cost
most of the run); the UART model waits on timers, one per bit.

Environment: ``LINK_FRAMES`` number of frames (default 40), ``LINK_DIVISOR`` clocks per bit.
"""
import os
import random

import cocotb
from cobs import cobs
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, Timer

from echoboard.firmware import protocol
from echoboard.firmware.link import FrameByte, FrameHeader, ReplyByte
from echoboard.sim.cocotb_lib import CLOCK_PERIOD_NS, PayloadCodec, Scoreboard, StreamDriver, start_clock_and_reset
from test_firmware_link_pysim import COUNTERS, counts, expected_frames

REPLY_TIMEOUT_CYCLES = 200_000


def random_pieces(rng: random.Random, count: int) -> list[bytes]:
    """Line traffic cut into pieces that each end with one 0x00 delimiter."""
    pieces, previous = [b"\x00"], None
    for i in range(count):
        kind = rng.choice(["good"] * 5 + ["retry", "flip", "cut", "garbage", "empty"])
        if i == count // 3:
            kind = "max"
        if i == count // 2:
            kind = "oversized"
        if kind == "retry" and previous:
            pieces.append(previous)
            continue
        size = rng.choice([0, 1, 2, 30, 253, 254, 255]) if kind != "max" else protocol.MAX_REQUEST_PAYLOAD
        payload = bytes(rng.choice([0, rng.randrange(256)]) for _ in range(size))
        frame = protocol.Request(rng.randrange(256), rng.randrange(256), payload).encode()
        if kind == "oversized":
            frame = cobs.encode(rng.randbytes(protocol.MAX_FRAME_BYTES + rng.randrange(1, 50))) + b"\x00"
        elif kind == "flip":
            pos = rng.randrange(len(frame) - 1)
            frame = frame[:pos] + bytes([frame[pos] ^ (1 << rng.randrange(8)) or 1]) + frame[pos + 1:]
        elif kind == "cut":
            frame = frame[:rng.randrange(1, len(frame) - 1)] + b"\x00"
        elif kind == "garbage":
            frame = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 40))) + b"\x00"
        elif kind == "empty":
            frame = b"\x00"
        previous = frame if kind in ("good", "max") else previous
        pieces.append(frame)
    return pieces


def expected_replies(wire: bytes) -> list[dict]:
    """What the host should decode: the toy sequencer's answers, replays of the cached reply for
    retries, uncached link-error replies (seq/cmd omitted where the oracle cannot know them)."""
    replies, cached, executions = [], None, 0
    for status, seq, cmd, payload, repeat in expected_frames(wire):
        if repeat:
            replies.append(cached)
            continue
        reply = {"status": int(status), "payload": [] if status.retry else toy_payload(executions, payload)}
        if seq is not None:
            reply |= {"seq": seq, "cmd": cmd}
        if not status.retry:
            cached = reply
            executions += 1
        replies.append(reply)
    return replies


def toy_payload(executions: int, payload) -> list[int]:
    return [executions & 0xFF, *reversed(payload)][:protocol.MAX_REPLY_PAYLOAD]


async def uart_send(dut, data: bytes, bit_ns: float) -> None:
    for byte in data:
        for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
            dut.rx.value = bit
            await Timer(bit_ns, "ns")


async def uart_receive(dut, out: list, bit_ns: float) -> None:
    """Sample ``tx`` mid-bit after each start edge; fail on a bad start or stop bit."""
    while True:
        await FallingEdge(dut.tx)
        await Timer(bit_ns / 2, "ns")
        assert dut.tx.value == 0, "start bit shorter than half a bit"
        byte = 0
        for i in range(8):
            await Timer(bit_ns, "ns")
            byte |= int(dut.tx.value) << i
        await Timer(bit_ns, "ns")
        assert dut.tx.value == 1, f"missing stop bit after byte {len(out)}"
        out.append(byte)


async def take(dut, port: str, codec: PayloadCodec, rng: random.Random, ready_prob: float):
    """One transfer from a stream output, ready at random; idle cycles cost nothing."""
    valid, ready, payload = (getattr(dut, f"{port}__{name}") for name in ("valid", "ready", "payload"))
    if not valid.value:
        await RisingEdge(valid)
    while True:
        await FallingEdge(dut.clk)
        accept = rng.random() < ready_prob
        ready.value = accept
        await ReadOnly()
        if accept and valid.value:
            item = codec.unpack(payload.value.to_unsigned())
            await FallingEdge(dut.clk)
            ready.value = 0
            return item


@cocotb.test()
async def link_random_traffic(dut):
    rng = random.Random(cocotb.RANDOM_SEED)
    pieces = random_pieces(rng, int(os.environ.get("LINK_FRAMES", "40")))
    bit_ns = int(os.environ.get("LINK_DIVISOR", "16")) * CLOCK_PERIOD_NS
    wire = b"".join(pieces)
    want = expected_replies(wire)

    dut.rx.value = 1
    await start_clock_and_reset(dut)
    header_codec, byte_codec = PayloadCodec.from_shape(FrameHeader), PayloadCodec.from_shape(FrameByte)
    reply = StreamDriver(dut, "reply", PayloadCodec.from_shape(ReplyByte), idle_prob=0.3,
                         rng=random.Random(rng.random()))
    seq_rng = random.Random(rng.random())

    async def sequencer():
        executions = 0
        while True:
            h = await take(dut, "header", header_codec, seq_rng, 0.5)
            data = [(await take(dut, "payload", byte_codec, seq_rng, 0.5))["data"] for _ in range(h["length"])]
            if h["repeat"]:
                await reply.send([{"data": 0, "last": 1, "replay": 1}])
                continue
            body = [h["seq"], h["cmd"], h["status"]]
            if not protocol.Status(h["status"]).retry:
                body += toy_payload(executions, data)
                executions += 1
            await reply.send([{"data": b, "last": int(i == len(body) - 1), "replay": 0} for i, b in enumerate(body)])

    received = []
    tasks = [cocotb.start_soon(sequencer()), cocotb.start_soon(uart_receive(dut, received, bit_ns))]
    answered = 0
    for piece in pieces:
        await uart_send(dut, piece, bit_ns)
        if len(piece) > 1:  # stop-and-wait: every non-empty frame gets one reply
            answered += 1
            for _ in range(REPLY_TIMEOUT_CYCLES // 1000):
                if received.count(0) >= answered:
                    break
                await ClockCycles(dut.clk, 1000)
            assert received.count(0) >= answered, f"no reply to frame {answered}"
    await ClockCycles(dut.clk, 100)
    for task in tasks:
        task.cancel()

    got = [protocol.Reply.decode(f) for f in protocol.Deframer().feed(bytes(received))]
    board = Scoreboard("link")
    assert len(got) == len(want), f"{len(got)} replies, {len(want)} expected"
    for step, (r, w) in enumerate(zip(got, want)):
        actual = {"status": r.status, "payload": list(r.payload), "seq": r.seq, "cmd": r.cmd}
        board.compare(w, {k: actual[k] for k in w}, phase="reply", step=step)
    board.compare(counts(expected_frames(wire)), {name: int(getattr(dut, name).value) for name in COUNTERS},
                  phase="counters", step=len(want))
    dut._log.info("%d frames, %d line bytes, %s", len(want), len(wire), board.finish())
