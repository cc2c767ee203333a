"""The board image (firmware/top.py + firmware/sequencer.py) as the simulated board, over TCP.

The Verilated image (P = 4, N = 2, K = 1: a small build; the linear HRU and the nonlinear one) and the golden board
(firmware/board_model.py) receive the same request bytes; every reply must be equal byte for
byte, and the integers of a forward/echo pair must equal golden_model.hru_fixed's (through
sim.board_image.verify_board). Each test gets a fresh board process (reset state) and a fresh
golden board. The build is cached under build/board_sim (first build 20-50 s on two shared
cores, then ~0 s); the default tests take ~15 s more, the slow ones (two more builds) ~2.5 min.
The pins variant, the address walker and random back-pressure run in amaranth.sim (no build).
"""
from __future__ import annotations

import random

import numpy as np
import pytest
from cobs import cobs

from echoboard.firmware.board_model import GoldenBoard
from echoboard.firmware.protocol import (IDENTIFY_V1_REPLY, MAX_WIRE_BYTES, PIPELINED_CAPABILITIES, PROTOCOL_VERSION,
                               Command, CoreConfig, EchoMode, Messages, NonlinearBlockRegion, PassState, Region, Reply,
                               Request, Status, identify_request, unpack_identify)
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.sim import board_image
from echoboard.sim.board_image import ImageConfig, ProtocolClient, verify_board

SMALL = ImageConfig(HRUSize(4, 2, 65536), FixedFormat(), 1)


@pytest.fixture(scope="module")
def executable():
    return board_image.simulated_board_executable(SMALL)


class Pair:
    """The simulated board and the golden board side by side: same bytes in, replies compared."""

    def __init__(self, client: ProtocolClient, config):
        self.client, self.golden = client, GoldenBoard(config)
        self.config, self.msg = config, Messages(config)
        self.seq = 0

    def request(self, cmd, payload=b"", seq=None) -> bytes:
        if seq is None:
            self.seq = (self.seq + 1) % 256
            seq = self.seq
        return Request(seq, cmd, payload).encode()

    def send(self, wire: bytes, replies: int = 1) -> list[Reply]:
        """Send raw bytes; the board's replies must equal the golden board's, byte for byte."""
        want = self.golden.receive(wire)
        self.client.send(wire)
        got = b"".join(self.client.receive(replies)) if replies else self.client.drain()
        assert got == want, f"board {got.hex()} != golden {want.hex()}"
        return [Reply.decode(f[:-1]) for f in _frames(got)]

    def call(self, cmd, payload=b"", status=Status.OK, seq=None) -> Reply:
        (reply,) = self.send(self.request(cmd, payload, seq))
        assert reply.status == status, f"{Command(cmd).name if cmd in Command._value2member_map_ else cmd}: " \
                                       f"status {reply.status}, expected {status}"
        return reply

    def read(self, region: Region) -> list[int]:
        depth = self.config.region_depth(region)
        reply = self.call(Command.READ, self.msg.pack_read(region, 0, depth))
        return self.msg.read_reply(region, depth).unpack(reply.payload)["values"]

    def write(self, region: Region, values) -> None:
        self.call(Command.WRITE, self.msg.pack_write(region, 0, list(values)))

    def snapshot(self) -> dict:
        """Every region, read through the protocol (compared with the golden board on the way)."""
        return {r: self.read(r) for r in self.config.regions}


def _frames(wire: bytes) -> list[bytes]:
    return [f + b"\x00" for f in wire.split(b"\x00")[:-1] if f]


@pytest.fixture
def pair(executable):
    from echoboard.sim import board_sim

    with board_sim.SimulatedBoard(executable) as board, ProtocolClient(board.address) as client:
        client.send(b"\x00")
        yield Pair(client, board_image.board_config(SMALL))


def _random_words(rng, width, n, signed=True):
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    return [int(x) for x in rng.integers(lo, hi, size=n, endpoint=True)]


def _load_case(pair, case):
    for region, key in ((Region.A, "A"), (Region.DELTA, "delta"), (Region.Y0, "y0"), (Region.Z0, "z0")):
        pair.write(region, case[key])
    pair.write(Region.B, [x for row in case["B"] for x in row])


# ---------------------------------------------------------------- identify, regions


def test_identify(pair):
    reply = pair.call(Command.IDENTIFY, identify_request())
    config = unpack_identify(reply.payload)
    assert config == pair.config
    assert (config.size, config.fmt, config.lanes) == (SMALL.size, SMALL.fmt, SMALL.lanes)
    from echoboard.firmware.top import design_hash

    assert config.build_hash == design_hash(SMALL.fmt, SMALL.size, SMALL.lanes) != bytes(16)
    assert config.capabilities == PIPELINED_CAPABILITIES and config.hru == "linear"
    # a v1 host's IDENTIFY (no payload) gets version 1's 46 bytes, which say version 2
    v1 = pair.call(Command.IDENTIFY).payload
    assert v1 == reply.payload[:IDENTIFY_V1_REPLY.size()]
    assert IDENTIFY_V1_REPLY.unpack(v1)["protocol_version"] == PROTOCOL_VERSION == 2


def test_write_read_back_every_region(pair):
    rng = np.random.default_rng(1)
    written = {}
    for region in pair.config.regions:  # KIN too (read-only)
        f = pair.config.region_field(region)
        depth = pair.config.region_depth(region)
        if region in pair.config.read_only_regions:
            assert pair.read(region) == [0] * depth  # after reset
            pair.call(Command.WRITE, pair.msg.write_request(region).pack(region=region, start=0, values=[0]),
                      Status.BAD_ARGUMENT)
            continue
        words = _random_words(rng, f.width, depth)
        words[0], words[-1] = -(1 << (f.width - 1)), (1 << (f.width - 1)) - 1  # the extremes
        pair.write(region, words)
        written[region] = words
    for region, words in written.items():
        assert pair.read(region) == words
    # partial writes and reads inside a region, at an offset
    pair.call(Command.WRITE, pair.msg.pack_write(Region.B, 3, [-1, 2, -3]))
    written[Region.B][3:6] = [-1, 2, -3]
    reply = pair.call(Command.READ, pair.msg.pack_read(Region.B, 2, 5))
    assert pair.msg.read_reply(Region.B, 5).unpack(reply.payload)["values"] == written[Region.B][2:7]
    # a word that is not a proper sign extension is truncated to its width (as the golden board does)
    pair.call(Command.WRITE, bytes([Region.A, 0, 0]) + bytes([0x01, 0x00, 0xFE]))
    assert pair.read(Region.A)[0] == 0x20001 - (1 << 18)


# ---------------------------------------------------------------- passes against hru_fixed


def test_forward_echo_equal_hru_fixed(executable):
    from echoboard.sim import board_sim

    with board_sim.SimulatedBoard(executable) as board:
        result = verify_board(SMALL, seed=5, length=70, address=board.address)
    assert result["mismatches"] == 0, result["first_mismatch"]
    assert result["compared"] >= 4 * 4 + 8 + 5 + 4 * 4 + 4 + 8 + 4


def test_per_step_nudge_echo_equal_hru_fixed(executable):
    """Echo STREAM mode: one nudge per step, several frames per pass."""
    from echoboard.sim import board_sim

    with board_sim.SimulatedBoard(executable) as board:
        result = verify_board(SMALL, seed=6, length=150, per_step_nudge=True, address=board.address)
    assert result["mismatches"] == 0, result["first_mismatch"]


def test_a_corrupted_expectation_fails(executable):
    from echoboard.sim import board_sim

    with board_sim.SimulatedBoard(executable) as board:
        result = verify_board(SMALL, seed=5, length=9, address=board.address, corrupt=True)
    assert result["mismatches"] == 1
    assert result["first_mismatch"]["where"] == "echo.acc_a[0]"


def test_passes_in_chunks_accumulate_and_clear(pair):
    """FORWARD and ECHO in several DATA chunks, two echoes summed in the accumulators, STATUS
    during a pass, CLEAR_GRADIENTS: every reply equal to the golden board's."""
    from echoboard.hdl.verilog import random_case

    case = random_case(SMALL.fmt, SMALL.size, 23, 7)
    _load_case(pair, case)
    u = case["u"]
    for _ in range(2):
        pair.call(Command.FORWARD_START, pair.msg.forward_start.pack(length=23, flags=0))
        for offset, k in ((0, 5), (5, 1), (6, 17)):
            pair.call(Command.FORWARD_DATA, pair.msg.forward_data.pack(
                offset=offset, inputs=[x for row in u[offset:offset + k] for x in row]))
            if offset == 5:
                status = pair.msg.status_reply.unpack(pair.call(Command.STATUS).payload)
                assert (status["state"], status["length"], status["steps_done"]) == (PassState.FORWARD, 23, 6)
        pair.call(Command.ECHO_START, pair.msg.echo_start.pack(length=23, mode=EchoMode.CONSTANT,
                                                              nudge=case["nudge"]))
        rev = u[::-1]
        for offset, k in ((0, 11), (11, 12)):
            pair.call(Command.ECHO_DATA, pair.msg.echo_data(EchoMode.CONSTANT).pack(
                offset=offset, inputs=[x for row in rev[offset:offset + k] for x in row]))
    snapshot = pair.snapshot()
    assert any(snapshot[Region.ACC_B]) and any(snapshot[Region.ACC_A])
    pair.call(Command.CLEAR_GRADIENTS)
    assert pair.read(Region.ACC_A) == [0] * 4 and pair.read(Region.ACC_B) == [0] * 8
    pair.call(Command.STATUS)


def test_zero_nudge_echo_returns_the_initial_state(pair):
    from echoboard.hdl.verilog import random_case

    L = 57
    case = random_case(SMALL.fmt, SMALL.size, L, 11, zero_nudge=True)
    _load_case(pair, case)
    pair.call(Command.FORWARD_START, pair.msg.forward_start.pack(length=L, flags=0))
    for chunk in pair.msg.data_payloads(case["u"]):
        pair.call(Command.FORWARD_DATA, chunk)
    assert pair.read(Region.Y0) != case["y0"]
    pair.call(Command.ECHO_START, pair.msg.echo_start.pack(length=L, mode=EchoMode.CONSTANT, nudge=[0] * 4))
    for chunk in pair.msg.data_payloads(case["u"][::-1], mode=EchoMode.CONSTANT):
        reply = pair.call(Command.ECHO_DATA, chunk)
    assert pair.msg.echo_result.unpack(reply.payload) == {"overflow_echo_plus": 0, "overflow_echo_minus": 0,
                                                          "overflow_gradient": 0}
    neg_z0 = [-z for z in case["z0"]]
    assert pair.read(Region.Y0) == case["y0"] and pair.read(Region.Z0) == neg_z0
    assert pair.read(Region.Y1) == case["y0"] and pair.read(Region.Z1) == neg_z0
    assert pair.read(Region.ACC_A) == [0] * 4 and pair.read(Region.ACC_B) == [0] * 8


def test_zero_state_flag_and_abort(pair):
    from echoboard.hdl.verilog import random_case

    case = random_case(SMALL.fmt, SMALL.size, 30, 3)
    _load_case(pair, case)
    pair.call(Command.ABORT)  # in IDLE: nothing to do
    pair.call(Command.FORWARD_START, pair.msg.forward_start.pack(length=30, flags=1))
    pair.call(Command.FORWARD_DATA, pair.msg.forward_data.pack(offset=0, inputs=[x for r in case["u"][:4] for x in r]))
    pair.call(Command.ABORT)  # the remaining 26 steps run with zero inputs
    status = pair.msg.status_reply.unpack(pair.call(Command.STATUS).payload)
    assert status["state"] == PassState.IDLE
    pair.snapshot()
    pair.call(Command.ECHO_START, pair.msg.echo_start.pack(length=30, mode=EchoMode.CONSTANT, nudge=case["nudge"]))
    pair.call(Command.ABORT)
    pair.snapshot()
    # STREAM mode: a chunk, a wrong-length chunk (CONSTANT layout), then ABORT (zero inputs and nudges)
    stream = pair.msg.echo_data(EchoMode.STREAM)
    pair.call(Command.ECHO_START, pair.msg.echo_start.pack(length=30, mode=EchoMode.STREAM, nudge=[9, -9, 99, -99]))
    pair.call(Command.ECHO_DATA, stream.pack(offset=0, inputs=[1, 2, 3, 4], nudges=[5, 6, 7, 8, -5, -6, -7, -8]))
    pair.call(Command.ECHO_DATA, pair.msg.echo_data(EchoMode.CONSTANT).pack(offset=2, inputs=[1, 2]),
              Status.BAD_LENGTH)
    pair.call(Command.ABORT)
    assert pair.read(Region.NUDGE) == [9, -9, 99, -99]
    pair.snapshot()


# ---------------------------------------------------------------- malformed frames, errors


def _bad_frames(pair) -> list[tuple[bytes, int]]:
    """(wire bytes, replies expected) of frames that must change nothing."""
    msg, P = pair.msg, 4
    good = pair.request(Command.STATUS)
    body = bytes([pair.seq, Command.READ]) + msg.pack_read(Region.A, 0, 2)
    bad_crc = cobs.encode(body + bytes([1, 2, 3, 4])) + b"\x00"
    return [
        (bad_crc, 1),  # BAD_CRC
        (b"\x02\x05\x00", 1),  # TRUNCATED: shorter than seq + cmd + CRC
        (b"\x09\x01\x02\x00", 1),  # TRUNCATED: a COBS block runs past the delimiter
        (good[:-1][: len(good) // 2] + b"\x00", 1),  # a frame cut short
        (cobs.encode(bytes([0x37] * (MAX_WIRE_BYTES + 40))) + b"\x00", 1),  # OVERSIZED
        (bytes([0x37] * (MAX_WIRE_BYTES + 40)) + b"\x00", 1),  # garbage
        (b"\x00\x00\x00", 0),  # empty frames: no reply
        (pair.request(0x7E), 1),  # UNKNOWN_COMMAND
        (pair.request(Command.IDENTIFY, b"\x00"), 1),  # BAD_LENGTH
        (pair.request(Command.STATUS, b"\x01\x02"), 1),
        (pair.request(Command.CLEAR_GRADIENTS, b"\x01"), 1),
        (pair.request(Command.READ, msg.pack_read(Region.A, 0, 2)[:-1]), 1),
        (pair.request(Command.WRITE, b""), 1),
        (pair.request(Command.WRITE, bytes([Region.A, 0])), 1),
        (pair.request(Command.WRITE, bytes([Region.A, 0, 0, 1, 2, 3, 4])), 1),  # 4 bytes: not 3-byte words
        (pair.request(Command.FORWARD_START, b"\x05\x00\x00\x00"), 1),
        (pair.request(Command.ECHO_START, bytes(5 + 4 * P - 1)), 1),
        (pair.request(Command.FORWARD_DATA, bytes(3)), 1),  # WRONG_STATE before BAD_LENGTH
        (pair.request(Command.ECHO_DATA, bytes(8)), 1),
        (pair.request(Command.WRITE, bytes([13, 0, 0, 1, 2, 3])), 1),  # BAD_ARGUMENT: unknown region
        (pair.request(Command.WRITE, bytes([Region.ACC_A, 0, 0]) + bytes(8)), 1),  # read-only
        (pair.request(Command.WRITE, bytes([Region.A, 3, 0]) + bytes(6)), 1),  # past the region
        (pair.request(Command.READ, bytes([Region.B, 0, 0, 9, 0])), 1),
        (pair.request(Command.READ, bytes([Region.COUNTERS, 4, 0, 1, 0])), 1),
        (pair.request(Command.READ, bytes([Region.A, 0, 0, 0, 0])), 1),  # count 0
        (pair.request(Command.READ, bytes([99, 0, 0, 1, 0])), 1),
        (pair.request(Command.FORWARD_START, msg.forward_start.pack(length=0, flags=0)), 1),
        (pair.request(Command.FORWARD_START, msg.forward_start.pack(length=65537, flags=0)), 1),
        (pair.request(Command.FORWARD_START, msg.forward_start.pack(length=5, flags=4)), 1),  # a reserved bit
        (pair.request(Command.ECHO_START, msg.echo_start.pack(length=5, mode=4, nudge=[1] * P)), 1),
        (pair.request(Command.ECHO_START, msg.echo_start.pack(length=0, mode=0, nudge=[1] * P)), 1),
        (pair.request(Command.ECHO_START, msg.echo_start.pack(length=0, mode=EchoMode.STREAM, nudge=[1] * P)), 1),
    ]


def test_malformed_frames_get_error_replies_and_change_nothing(pair):
    rng = np.random.default_rng(2)
    for region in (Region.A, Region.B, Region.DELTA, Region.NUDGE, Region.Y0, Region.Z0):
        f = pair.config.region_field(region)
        pair.write(region, _random_words(rng, f.width, pair.config.region_depth(region), f.signed))
    before = pair.snapshot()
    statuses = []
    for wire, replies in _bad_frames(pair):
        got = pair.send(wire, replies)
        statuses += [r.status for r in got]
        assert all(r.status != Status.OK for r in got)
    assert set(statuses) == set(range(1, 8))
    assert pair.snapshot() == before
    # in a pass: everything but that pass's DATA, IDENTIFY, STATUS and ABORT is WRONG_STATE, and a
    # bad DATA chunk (wrong offset, past the length, wrong length) changes nothing either
    pair.call(Command.FORWARD_START, pair.msg.forward_start.pack(length=6, flags=0))
    for cmd, payload in ((Command.WRITE, pair.msg.pack_write(Region.A, 0, [1])),
                         (Command.READ, pair.msg.pack_read(Region.A, 0, 1)), (Command.CLEAR_GRADIENTS, b""),
                         (Command.FORWARD_START, pair.msg.forward_start.pack(length=6, flags=0)),
                         (Command.ECHO_START, pair.msg.echo_start.pack(length=6, mode=0, nudge=[0] * 4)),
                         (Command.ECHO_DATA, pair.msg.forward_data.pack(offset=0, inputs=[0, 0]))):
        pair.call(cmd, payload, Status.WRONG_STATE)
    pair.call(Command.FORWARD_DATA, pair.msg.forward_data.pack(offset=1, inputs=[1, 2]), Status.BAD_ARGUMENT)
    pair.call(Command.FORWARD_DATA, pair.msg.forward_data.pack(offset=0, inputs=[1, 2] * 7), Status.BAD_ARGUMENT)
    pair.call(Command.FORWARD_DATA, pair.msg.forward_data.pack(offset=0, inputs=[1, 2])[:-1], Status.BAD_LENGTH)
    pair.call(Command.IDENTIFY)
    for k in range(6):
        pair.call(Command.FORWARD_DATA, pair.msg.forward_data.pack(offset=k, inputs=[100 * k, -7 * k]))
    status = pair.msg.status_reply.unpack(pair.call(Command.STATUS).payload)
    assert status["command_errors"] > 30 and status["crc_errors"] >= 1 and status["framing_errors"] >= 4
    pair.snapshot()


def test_a_retry_is_answered_from_the_cache(pair):
    """The same (seq, cmd) again: the cached reply, byte for byte, and nothing runs again."""
    pair.write(Region.A, [1 << 14] * 4)
    pair.write(Region.DELTA, [1 << 12] * 4)
    pair.call(Command.FORWARD_START, pair.msg.forward_start.pack(length=4, flags=1))
    chunk = pair.request(Command.FORWARD_DATA, pair.msg.forward_data.pack(offset=0, inputs=[2048, -2048] * 2))
    first = pair.send(chunk)
    assert pair.send(chunk) == first  # a retry: not a BAD_ARGUMENT for a repeated offset
    status = pair.msg.status_reply.unpack(pair.call(Command.STATUS).payload)
    assert status["steps_done"] == 2
    last = pair.request(Command.FORWARD_DATA, pair.msg.forward_data.pack(offset=2, inputs=[1, 1, 1, 1]))
    result = pair.send(last)
    assert pair.send(last) == result and result[0].payload  # the final reply, replayed
    # a corrupted retry gets a link error and does not displace the cached reply
    body = bytes([pair.seq, Command.FORWARD_DATA]) + pair.msg.forward_data.pack(offset=2, inputs=[1, 1, 1, 1])
    (link_error,) = pair.send(cobs.encode(body + bytes(4)) + b"\x00")
    assert link_error.status == Status.BAD_CRC
    assert pair.send(last) == result
    pair.snapshot()


@pytest.mark.slow
@pytest.mark.parametrize("image", ["pair", "nonlinear_pair"])
def test_random_garbage_and_commands_fuzz(image, request):
    """Random bytes, random (often malformed) commands and good ones: always the golden replies
    (READ/WRITE name one of the first 20 region codes half the time: both HRUs' regions and beyond)."""
    pair = request.getfixturevalue(image)
    rng = random.Random(4)
    for _ in range(300):
        kind = rng.random()
        if kind < 0.3:
            wire = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + b"\x00"
            want = pair.golden.receive(wire)
            pair.client.send(wire)
            got = b"".join(pair.client.receive(want.count(0))) if want else pair.client.drain()
            assert got == want
        else:
            cmd = rng.choice(list(Command) + [0x00, 0x44])
            payload = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 3, 5, 8, 21))))
            if cmd in (Command.READ, Command.WRITE) and payload and rng.random() < 0.5:
                payload = bytes([rng.randrange(20)]) + payload[1:]
            pair.send(pair.request(cmd, payload))
    pair.call(Command.ABORT)
    pair.snapshot()


@pytest.mark.slow
@pytest.mark.parametrize("lanes,length", [(2, 700), (4, 301)])
def test_lanes_and_long_passes(lanes, length):
    config = ImageConfig(HRUSize(4, 2, 65536), FixedFormat(), lanes)
    for seed, per_step in ((0, False), (1, True)):
        result = verify_board(config, seed=seed, length=length, per_step_nudge=per_step)
        assert result["mismatches"] == 0, result["first_mismatch"]


def test_pins_variant_identifies_over_the_uart():
    """make_image (UART pins, what firmware/boards.py builds) in amaranth.sim at 12 MHz / 3 Mbaud:
    an IDENTIFY sent bit by bit gets the golden board's reply bit by bit."""
    from amaranth.sim import Simulator

    from echoboard.firmware.top import make_image

    image = make_image(clock_hz=12_000_000, oscillators=4, inputs=2, lanes=1)
    assert image.divisor == 4
    golden = GoldenBoard(image.config)
    request = Request(7, Command.IDENTIFY, identify_request()).encode()
    want = golden.receive(request)
    got = bytearray()

    async def host(ctx):  # the reply starts only after the whole request: one sequential testbench
        ctx.set(image.rx, 1)
        await ctx.tick().repeat(8)
        for byte in request:
            for bit in [0, *((byte >> k) & 1 for k in range(8)), 1]:
                ctx.set(image.rx, bit)
                await ctx.tick().repeat(4)
        budget = 200 * 40 * len(want)
        while len(got) < len(want) and budget > 0:
            await ctx.tick()
            budget -= 1
            if ctx.get(image.tx) == 0:  # a start bit: sample each bit in its middle
                await ctx.tick().repeat(2 + 4)
                byte = 0
                for k in range(8):
                    byte |= ctx.get(image.tx) << k
                    await ctx.tick().repeat(4)
                got.append(byte)

    sim = Simulator(image)
    sim.add_clock(1 / 12e6)
    sim.add_testbench(host)
    sim.run()
    assert bytes(got) == want
    assert unpack_identify(Reply.decode(want[:-1]).payload).build_hash == image.build_hash


def test_random_back_pressure_and_gaps_in_amaranth_sim():
    """The byte-stream image in amaranth.sim (no build) with random gaps between request bytes and
    random back-pressure on the reply stream, lanes = 2: a forward pass, a STREAM echo, READs,
    STATUS and a retry, every reply equal to the golden board's."""
    from amaranth.sim import Simulator

    from echoboard.firmware.top import BoardImage
    from echoboard.hdl.verilog import random_case

    size, L = HRUSize(4, 2, 64), 6
    image = BoardImage(FixedFormat(), size, 2, build_hash=bytes(range(16)))
    golden = GoldenBoard(image.config)
    msg = Messages(image.config)
    case = random_case(FixedFormat(), size, L, 9, per_step_nudge=True)
    n, u = case["nudge"], case["u"]
    stream = msg.echo_data(EchoMode.STREAM)
    seqs = iter(range(1, 256))
    requests = [Request(next(seqs), cmd, payload).encode() for cmd, payload in (
        (Command.WRITE, msg.pack_write(Region.A, 0, case["A"])),
        (Command.WRITE, msg.pack_write(Region.B, 0, [x for r in case["B"] for x in r])),
        (Command.WRITE, msg.pack_write(Region.DELTA, 0, case["delta"])),
        (Command.WRITE, msg.pack_write(Region.Z0, 1, case["z0"][1:])),
        (Command.FORWARD_START, msg.forward_start.pack(length=L, flags=0)),
        (Command.FORWARD_DATA, msg.forward_data.pack(offset=0, inputs=[x for r in u for x in r])),
        (Command.ECHO_START, msg.echo_start.pack(length=L, mode=EchoMode.STREAM, nudge=n[-1])),
        (Command.ECHO_DATA, stream.pack(offset=0, inputs=[x for r in u[::-1][:4] for x in r],
                                        nudges=[x for r in n[-2:-6:-1] for x in r])),
        (Command.STATUS, b""),
        (Command.ECHO_DATA, stream.pack(offset=4, inputs=[x for r in u[::-1][4:] for x in r],
                                        nudges=n[0] + [0] * 4)),
        (Command.READ, msg.pack_read(Region.ACC_B, 0, 8)),
        (Command.READ, msg.pack_read(Region.Z1, 0, 4)),
        (Command.READ, msg.pack_read(Region.NUDGE, 0, 4)),
    )]
    requests.insert(6, requests[5])  # a retry of the final FORWARD_DATA
    want = [golden.receive(r) for r in requests]
    got = bytearray()
    rng = random.Random(3)

    async def host(ctx):
        for k, request in enumerate(requests):
            for byte in request:
                while rng.random() < 0.3:
                    ctx.set(image.rx.valid, 0)
                    await ctx.tick()
                ctx.set(image.rx.valid, 1)
                ctx.set(image.rx.payload, byte)
                await ctx.tick().until(image.rx.ready)
            ctx.set(image.rx.valid, 0)
            for _ in range(20_000):
                if got.count(0) == k + 1:
                    break
                ctx.set(image.tx.ready, rng.random() < 0.4)
                await ctx.tick()
        ctx.set(image.tx.ready, 0)

    async def collector(ctx):
        async for _clk, _rst, valid, ready, byte in ctx.tick().sample(image.tx.valid, image.tx.ready,
                                                                        image.tx.payload):
            if valid and ready:
                got.append(byte)

    sim = Simulator(image)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    sim.add_process(collector)
    sim.run()
    assert _frames(bytes(got)) == want


@pytest.mark.parametrize("P,N,K", [(4, 2, 1), (6, 3, 3), (8, 4, 4), (16, 8, 2)])
def test_address_walker_matches_the_core_address_map(P, N, K):
    """firmware.sequencer.AddressWalker walks every region exactly as hdl.hru_core.AddressMap maps it."""
    from amaranth.sim import Simulator

    from echoboard.firmware.sequencer import AddressWalker
    from echoboard.hdl.hru_core import HRUCore

    core = HRUCore(FixedFormat(), HRUSize(P, N, 64), K)
    core._MustUse__silence = True  # only its address map is used
    amap, walker = core.address_map, AddressWalker(core)
    config = CoreConfig(HRUSize(P, N, 64), FixedFormat(), K)
    mismatches = []

    async def bench(ctx):
        for region in Region:
            ctx.set(walker.region, region)
            ctx.set(walker.load, 1)
            await ctx.tick()
            ctx.set(walker.load, 0)
            ctx.set(walker.step, 1)
            for index in range(config.region_depth(region)):
                if region is Region.COUNTERS:
                    want = amap.address(region, index)
                elif region in (Region.B, Region.ACC_B):
                    want = amap.address(region, index // N, index % N)
                else:
                    want = amap.address(region, index)
                if ctx.get(walker.addr) != want:
                    mismatches.append((region.name, index, ctx.get(walker.addr), want))
                await ctx.tick()
            ctx.set(walker.step, 0)

    sim = Simulator(walker)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:5]


# ---------------------------------------------------------------- the nonlinear HRU's image

def _nonlinear_config() -> ImageConfig:
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat

    return ImageConfig(HRUSize(4, 2, 65536), NonlinearFormat(), 1)


@pytest.fixture(scope="module")
def nonlinear_executable():
    return board_image.simulated_board_executable(_nonlinear_config())


@pytest.fixture
def nonlinear_pair(nonlinear_executable):
    from echoboard.sim import board_sim

    with board_sim.SimulatedBoard(nonlinear_executable) as board, ProtocolClient(board.address) as client:
        client.send(b"\x00")
        yield Pair(client, board_image.board_config(_nonlinear_config()))


def _verify_nonlinear(executable, **case) -> dict:
    from echoboard.sim import board_sim

    with board_sim.SimulatedBoard(executable) as board:
        return verify_board(_nonlinear_config(), address=board.address, **case)


def test_nonlinear_identify_and_regions(nonlinear_pair):
    config = unpack_identify(nonlinear_pair.call(Command.IDENTIFY, identify_request()).payload)
    assert config == nonlinear_pair.config and config.hru == "nonlinear" and config.fmt == _nonlinear_config().fmt
    assert config.regions is NonlinearBlockRegion  # the HRU's regions, KIN and GAIN
    rng = np.random.default_rng(3)
    for region in config.regions:  # every writable region reads back; the read-only ones refuse a WRITE
        f, depth = config.region_field(region), config.region_depth(region)
        if region in config.read_only_regions:
            assert nonlinear_pair.read(region) == [0] * depth
            nonlinear_pair.call(Command.WRITE, nonlinear_pair.msg.write_request(region).pack(
                region=region, start=0, values=[0]), Status.BAD_ARGUMENT)
        else:
            words = _random_words(rng, f.width, depth)
            nonlinear_pair.write(region, words)
            assert nonlinear_pair.read(region) == words
    nonlinear_pair.call(Command.READ, bytes([max(config.regions) + 1, 0, 0, 1, 0]), Status.BAD_ARGUMENT)


def test_nonlinear_forward_echo_equal_hru_fixed_nonlinear(nonlinear_executable):
    result = _verify_nonlinear(nonlinear_executable, seed=5, length=40)
    assert result["mismatches"] == 0, result["first_mismatch"]
    # P·(y, z, pos_sum) + 1 + 4·P (echo states) + 3 + 5 accumulators (4·P + P·N) + 4 counters + replies
    assert result["compared"] >= 3 * 4 + 1 + 4 * 4 + 3 + 4 * 4 + 8 + 4


def test_nonlinear_stream_nudges_equal_hru_fixed_nonlinear(nonlinear_executable):
    result = _verify_nonlinear(nonlinear_executable, seed=6, length=30, per_step_nudge=True)
    assert result["mismatches"] == 0, result["first_mismatch"]


def test_nonlinear_wrapping_case_counts_the_same_overflows(nonlinear_executable):
    """Every word over its full width: most operations wrap; the board's counters equal the model's."""
    from echoboard.hdl.verilog import golden_expectation, random_case

    config = _nonlinear_config()
    expected = golden_expectation(config.fmt, random_case(config.fmt, config.size, 12, 9, wild=True))
    assert expected["forward"]["overflows"]["forward"] > 0 and all(expected["echo"]["overflows"].values())
    result = _verify_nonlinear(nonlinear_executable, seed=9, length=12, wild=True)
    assert result["mismatches"] == 0, result["first_mismatch"]


def test_nonlinear_corrupted_expectation_fails(nonlinear_executable):
    result = _verify_nonlinear(nonlinear_executable, seed=5, length=9, corrupt=True)
    assert result["mismatches"] == 1 and result["first_mismatch"]["where"] == "echo.acc_yy[0]"


def test_nonlinear_echoes_accumulate_until_clear(nonlinear_pair):
    """Two echoes add into all five accumulators, CLEAR_GRADIENTS zeroes them: byte for byte the
    golden board's replies (which continue hru_fixed_nonlinear.echo from the stored sums)."""
    from echoboard.hdl.verilog import random_case

    pair, config = nonlinear_pair, nonlinear_pair.config
    case = random_case(config.fmt, config.size, 11, 4)
    for name, region in config.parameters.items():
        pair.write(region, np.ravel(case[name]).tolist())
    msg = pair.msg
    for _ in range(2):
        pair.write(Region.Y0, case["y0"])
        pair.write(Region.Z0, case["z0"])
        pair.call(Command.FORWARD_START, msg.forward_start.pack(length=11, flags=0))
        for chunk in msg.data_payloads(case["u"]):
            pair.call(Command.FORWARD_DATA, chunk)
        pair.call(Command.ECHO_START, msg.echo_start.pack(length=11, mode=EchoMode.CONSTANT, nudge=case["nudge"]))
        for chunk in msg.data_payloads(case["u"][::-1], mode=EchoMode.CONSTANT):
            pair.call(Command.ECHO_DATA, chunk)
    sums = {region: pair.read(region) for region in config.accumulators.values()}
    assert all(any(words) for words in sums.values())
    pair.call(Command.CLEAR_GRADIENTS)
    for region in config.accumulators.values():
        assert pair.read(region) == [0] * config.region_depth(region)
