"""What docs/protocol.md says about the link and the retry detector, tried on the simulated board.

Each test gets a fresh simulated board (the default P16/N8 image, cached under build/board_sim)
and speaks raw frames to it (sim.board_image.ProtocolClient), so seq numbers, back-to-back frames,
half frames and reconnects are under the test's control. Where the golden board model defines
the same behaviour (single frames, stop-and-wait), its replies are compared too. The simulated
board offers the host's bytes to the image one per clock cycle, far faster than a UART
(10 × divisor cycles a byte): back-to-back frames are where it shows the receive buffer's limits.
"""
from __future__ import annotations

import time

import pytest
from cobs import cobs

from echoboard.firmware.board_model import GoldenBoard
from echoboard.firmware.protocol import READ_ONLY_REGIONS, Command, Messages, Region, Reply, Request, Status
from echoboard.sim import board_sim
from echoboard.sim.board_image import ImageConfig, ProtocolClient, board_config, simulated_board_executable

IMAGE = ImageConfig()
COUNTERS = ("frames_ok", "crc_errors", "framing_errors", "overruns", "command_errors")


@pytest.fixture(scope="module")
def executable():
    return simulated_board_executable(IMAGE)


@pytest.fixture(scope="module")
def config():
    return board_config(IMAGE)


@pytest.fixture
def board(executable):
    with board_sim.SimulatedBoard(executable) as b:
        yield b


class Host:
    """Raw frames to the simulated board; the golden board gets the same bytes when asked."""

    def __init__(self, board, config):
        self.board, self.msg = board, Messages(config)
        self.golden = GoldenBoard(config)
        self.client = ProtocolClient(board.address)

    def send(self, wire: bytes, golden: bool = True) -> list[Reply]:
        """Every reply the bytes get (waiting until the line is quiet)."""
        self.client.send(wire)
        got = self.client.drain(0.3)
        if golden:
            assert got == self.golden.receive(wire)
        return [Reply.decode(f) for f in got.split(b"\x00") if f]

    def call(self, seq: int, cmd: int, payload: bytes = b"", golden: bool = True) -> Reply:
        (reply,) = self.send(Request(seq, cmd, payload).encode(), golden)
        return reply

    def counters(self, seq: int) -> dict:
        reply = self.call(seq, Command.STATUS, golden=False)
        assert reply.status == Status.OK and (reply.seq, reply.cmd) == (seq, Command.STATUS)
        return {k: v for k, v in self.msg.status_reply.unpack(reply.payload).items() if k in COUNTERS}

    def read_a0(self, seq: int) -> int:
        reply = self.call(seq, Command.READ, self.msg.pack_read(Region.A, 0, 1), golden=False)
        return self.msg.read_reply(Region.A, 1).unpack(reply.payload)["values"]

    def reconnect(self) -> None:
        self.client.close()
        time.sleep(0.1)
        self.client = ProtocolClient(self.board.address)


@pytest.fixture
def host(board, config):
    h = Host(board, config)
    yield h
    h.client.close()


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in COUNTERS}


def test_a_write_to_a_read_only_region_is_bad_argument(host):
    for seq, region in enumerate(sorted(READ_ONLY_REGIONS), start=1):
        payload = host.msg.write_request(region).pack(region=int(region), start=0, values=[5])
        reply = host.call(seq, Command.WRITE, payload)
        assert (reply.status, reply.payload) == (Status.BAD_ARGUMENT, b""), region.name
    assert host.counters(20)["command_errors"] == len(READ_ONLY_REGIONS)


def test_read_with_count_0_is_bad_argument(host, config):
    for seq, (region, start) in enumerate(((Region.A, 0), (Region.COUNTERS, 0), (Region.B, 5),
                                          (Region.A, config.size.oscillators)), start=1):
        payload = host.msg.read_request.pack(region=int(region), start=start, count=0)
        assert host.call(seq, Command.READ, payload).status == Status.BAD_ARGUMENT


def test_what_the_link_counters_count(host):
    before = host.counters(1)
    host.send(cobs.encode(bytes([2, Command.STATUS]) + bytes(4)) + b"\x00")  # BAD_CRC
    host.send(b"\x02\x05\x00")  # TRUNCATED: shorter than seq + cmd + CRC
    host.send(cobs.encode(bytes(1100)) + b"\x00")  # OVERSIZED
    assert host.send(b"\x00\x00\x00") == []  # empty frames: nothing
    assert host.call(3, 0x7E).status == Status.UNKNOWN_COMMAND  # a sequencer error
    assert host.call(3, 0x7E).status == Status.UNKNOWN_COMMAND  # its retry, answered from the cache
    host.call(4, Command.IDENTIFY)
    after = host.counters(5)
    # frames_ok: CRC-good frames the sequencer took (repeats and sequencer errors included, the
    # STATUS that reports them too); framing_errors: TRUNCATED and OVERSIZED; command_errors: not replays
    assert _delta(after, before) == {"frames_ok": 4, "crc_errors": 1, "framing_errors": 2, "overruns": 0,
                                     "command_errors": 1}


def test_a_frame_waits_while_a_reply_is_produced_and_the_next_one_is_dropped(host):
    """One frame can wait in the buffer while the sequencer produces a reply; a frame that starts
    before that one was taken is dropped (no reply) and counted in ``overruns``."""
    before = host.counters(1)
    replies = host.send(b"".join(Request(10 + k, Command.STATUS).encode() for k in range(3)), golden=False)
    assert [(r.seq, r.status) for r in replies] == [(10, Status.OK), (11, Status.OK)]
    assert _delta(host.counters(20), before)["overruns"] == 1
    # link errors too: the TRUNCATED frame's reply is short, so the two frames behind it both get in
    before = host.counters(21)
    wire = b"\x02\x05\x00" + b"".join(Request(30 + k, Command.STATUS).encode() for k in range(2))
    assert [(r.seq, r.status) for r in host.send(wire, golden=False)] == [
        (5, Status.TRUNCATED), (30, Status.OK), (31, Status.OK)]
    assert _delta(host.counters(40), before)["overruns"] == 0


def test_retry_detection_keys_on_seq_and_cmd_only(host):
    assert host.call(7, Command.WRITE, host.msg.pack_write(Region.A, 0, [111])).status == Status.OK
    # the same (seq, cmd) with another payload is a "retry": the cached OK, nothing written
    assert host.call(7, Command.WRITE, host.msg.pack_write(Region.A, 0, [222])).status == Status.OK
    assert host.read_a0(8) == 111


def test_the_retry_detectors_reset_state(host):
    """After reset no frame counts as a retry (the first (0, WRITE) runs); a link error does not
    change the frame a retry is compared with; a TCP reconnect does not reset it either."""
    assert host.call(0, Command.WRITE, host.msg.pack_write(Region.A, 0, [5])).status == Status.OK
    assert host.read_a0(1) == 5
    host.call(2, Command.WRITE, host.msg.pack_write(Region.A, 0, [6]))
    host.send(cobs.encode(bytes([9, Command.STATUS]) + bytes(4)) + b"\x00")  # BAD_CRC in between
    host.call(2, Command.WRITE, host.msg.pack_write(Region.A, 0, [7]))  # still a repeat of (2, WRITE)
    assert host.read_a0(3) == 6
    host.call(4, Command.WRITE, host.msg.pack_write(Region.A, 0, [8]))
    host.reconnect()
    assert host.call(4, Command.WRITE, host.msg.pack_write(Region.A, 0, [9]), golden=False).status == Status.OK
    assert host.read_a0(5) == 8


def test_a_half_received_frame_survives_a_reconnect(host):
    wire = Request(1, Command.IDENTIFY).encode()
    host.client.send(wire[:4])
    host.reconnect()
    (reply,) = host.send(wire[4:], golden=False)  # the board completes the frame begun before
    assert (reply.seq, reply.cmd, reply.status) == (1, Command.IDENTIFY, Status.OK)
    host.client.send(wire[:4])
    host.reconnect()
    # a flush first (Client.start's): the half frame ends there and gets its link-error reply
    # (which the host skips), then the new frame is clean
    half, reply = host.send(b"\x00" + Request(2, Command.STATUS).encode(), golden=False)
    assert half.status in (Status.BAD_CRC, Status.TRUNCATED) and (reply.seq, reply.status) == (2, Status.OK)
    # without the flush, the old half and a new frame merge into one bad frame
    host.client.send(wire[:4])
    host.reconnect()
    (reply,) = host.send(Request(3, Command.STATUS).encode(), golden=False)
    assert reply.status in (Status.BAD_CRC, Status.TRUNCATED)


def test_every_frame_is_answered_or_counted(host):
    """`05 41 42 00 01 00 01 00` in one write: three non-empty frames, two TRUNCATED replies, and
    the third, a frame that decodes to no bytes arriving while the second waits, counts as an
    overrun (it sets no byte-driven drop flag; FrameReceiver counts it by its non-empty end)."""
    before = host.counters(1)
    replies = host.send(bytes.fromhex("0541420001000100"), golden=False)
    assert [r.status for r in replies] == [Status.TRUNCATED, Status.TRUNCATED]
    delta = _delta(host.counters(2), before)
    assert delta["framing_errors"] == 2
    assert delta["overruns"] == 1, f"{len(replies)} replies, overruns +{delta['overruns']}"
