"""Outputs passes on the board image (docs/protocol.md *Per-step streams*): y_k of every forward
step and du_j of every echo step in the DATA replies (double-buffered: each reply carries the
previous chunk's) and OUTPUTS, KIN and GAIN, every reply byte for byte the golden board's.

The simulated boards are test_board_image's (P = 4, N = 2, K = 1, linear and nonlinear: the same
cached builds, so this module adds no build to the default suite); the serial image's refusals
and the dense packing of widths that are not whole bytes run in amaranth.sim (no build). The
default size (P = 16, N = 8, K = 4: another build) is behind the slow marker.
"""
from __future__ import annotations

import random

import pytest
from test_board_image import (SMALL, _frames, _load_case, _nonlinear_config, executable,  # noqa: F401 (fixtures)
                              nonlinear_executable, pair)

from echoboard.firmware.board_model import GoldenBoard
from echoboard.firmware.protocol import (ECHO_OUTPUTS_FLAG, PIPELINED_CAPABILITIES, Capability, Command, EchoMode,
                                         ForwardFlags, LinearBlockRegion, Messages, PassState, Region, Reply, Request,
                                         Status, pack_dense)
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.sim import board_image
from echoboard.sim.board_image import ImageConfig, verify_board

OUTPUTS = ForwardFlags.OUTPUTS


def _verify(executable, config=SMALL, **case) -> dict:
    from echoboard.sim import board_sim

    with board_sim.SimulatedBoard(executable) as board:
        return verify_board(config, address=board.address, **case)


def _steps_compared(size: HRUSize, length: int, blocks: int) -> int:
    """Per-step integers of ``blocks`` blocks: L·P forward outputs and L·N echo outputs each."""
    return blocks * length * (size.oscillators + size.inputs)


# ---------------------------------------------------------------- against golden_model.hru_block


@pytest.mark.parametrize("per_step_nudge,length", [(False, 150), (True, 130)])
def test_outputs_passes_equal_hru_block(executable, per_step_nudge, length):
    """Two blocks, each a forward and an echo outputs pass in several chunks (at most 60 forward
    and 124 echo steps each at P4/N2), CONSTANT and STREAM: every y_k, du_j, KIN word and reply."""
    result = _verify(executable, seed=3, length=length, blocks=2, per_step_nudge=per_step_nudge)
    assert result["mismatches"] == 0, result["first_mismatch"]
    assert result["compared"] > _steps_compared(SMALL.size, length, 2) + 2 * (4 * 4 + 8 + 4 + 4)


def test_wrapping_block_counts_the_same_overflows(executable):
    """Every word over its full width: the forward, echo and block (e, du, KIN) wraps count."""
    from echoboard.hdl.verilog import golden_expectation, random_case

    expected = golden_expectation(SMALL.fmt, random_case(SMALL.fmt, SMALL.size, 12, 9, wild=True), block=True)
    assert expected["forward"]["overflows"]["forward"] > 0 and all(expected["echo"]["overflows"].values())
    result = _verify(executable, seed=9, length=12, blocks=1, wild=True)
    assert result["mismatches"] == 0, result["first_mismatch"]


def test_a_corrupted_step_expectation_fails(executable):
    result = _verify(executable, seed=5, length=9, blocks=1, corrupt=True)
    assert result["mismatches"] == 1 and result["first_mismatch"]["where"] == "forward.y_k[0][0]"


def test_nonlinear_outputs_passes_equal_hru_block(nonlinear_executable):
    """The nonlinear block: GAIN written, du_j from it, KIN; two blocks, STREAM nudges."""
    result = _verify(nonlinear_executable, _nonlinear_config(), seed=4, length=70, blocks=2, per_step_nudge=True)
    assert result["mismatches"] == 0, result["first_mismatch"]
    assert result["compared"] > _steps_compared(SMALL.size, 70, 2)


def test_blocks_need_the_capability():
    serial = ImageConfig(SMALL.size, SMALL.fmt, 1, core="serial")
    assert board_image.board_config(serial).capabilities == Capability.ECHO_STREAM
    assert board_image.board_config(SMALL).capabilities == PIPELINED_CAPABILITIES
    with pytest.raises(ValueError, match="no outputs passes"):
        verify_board(serial, blocks=1)


# ---------------------------------------------------------------- the protocol, byte for byte


def _chunk(msg, u, offset, k, mode=None, nudges=None):
    rows = u[offset:offset + k]
    if mode is None:
        return msg.forward_data.pack(offset=offset, inputs=[x for r in rows for x in r])
    fields = {"offset": offset, "inputs": [x for r in rows for x in r]}
    if mode is EchoMode.STREAM:
        fields["nudges"] = [x for r in nudges[offset:offset + k] for x in r]
    return msg.echo_data(mode).pack(**fields)


def _outputs(pair, state) -> tuple[int, list]:
    first, words, rest = pair.msg.unpack_outputs(state, pair.call(Command.OUTPUTS).payload)
    assert rest == b""
    return first, words


def test_chunks_outputs_kin_and_clear(pair):
    """Uneven chunks (1-step forward chunks too), each reply the previous chunk's part; OUTPUTS
    repeated and retried; KIN read-only, added by every outputs echo, zeroed by CLEAR."""
    from echoboard.hdl.verilog import random_case

    msg, L = pair.msg, 23
    case = random_case(SMALL.fmt, SMALL.size, L, 7)
    _load_case(pair, case)
    u, rev = case["u"], case["u"][::-1]
    pair.call(Command.FORWARD_START, msg.forward_start.pack(length=L, flags=OUTPUTS))
    parts = []
    for offset, k in ((0, 5), (5, 1), (6, 1), (7, 16)):
        reply = pair.call(Command.FORWARD_DATA, _chunk(msg, u, offset, k))
        parts.append(msg.unpack_outputs(PassState.FORWARD, reply.payload)[:2])
        if offset == 5:  # a retry: the cached reply, chunk 0's part again, nothing runs twice
            pair.send(pair.request(Command.FORWARD_DATA, _chunk(msg, u, offset, k), seq=pair.seq))
    assert [(first, len(words)) for first, words in parts] == [(0, 0), (0, 5), (5, 1), (6, 1)]
    last = _outputs(pair, PassState.FORWARD)
    assert last[0] == 7 and len(last[1]) == 16 and _outputs(pair, PassState.FORWARD) == last
    pair.send(pair.request(Command.OUTPUTS, seq=pair.seq))  # a retry: the cached reply
    kin = []
    for mode in (EchoMode.CONSTANT | ECHO_OUTPUTS_FLAG, EchoMode.STREAM | ECHO_OUTPUTS_FLAG):
        pair.call(Command.ECHO_START, msg.echo_start.pack(length=L, mode=mode, nudge=case["nudge"]))
        stream = EchoMode(mode & 1)
        nudges = [[k - j for j in range(4)] for k in range(L)]
        for offset, k in ((0, 11), (11, 2), (13, 10)):
            pair.call(Command.ECHO_DATA, _chunk(msg, rev, offset, k, stream, nudges))
        assert _outputs(pair, PassState.ECHO)[0] == 13
        kin.append(pair.read(LinearBlockRegion.KIN))
    assert any(kin[0]) and kin[0] != kin[1]
    pair.call(Command.WRITE, msg.write_request(LinearBlockRegion.KIN).pack(
        region=LinearBlockRegion.KIN, start=0, values=[1]), Status.BAD_ARGUMENT)
    pair.call(Command.CLEAR_GRADIENTS)
    assert pair.read(LinearBlockRegion.KIN) == [0] * 4
    pair.snapshot()


def test_abort_refusals_and_no_part(pair):
    """OUTPUTS has no part after reset, after a plain pass, after any START and after ABORT;
    WRONG_STATE in a pass; a chunk of more than max_output_steps is BAD_LENGTH; reserved bits."""
    from echoboard.hdl.verilog import random_case

    msg, L = pair.msg, 40
    case = random_case(SMALL.fmt, SMALL.size, L, 3)
    _load_case(pair, case)
    assert _outputs(pair, PassState.FORWARD) == (0, [])  # after reset
    pair.call(Command.OUTPUTS, b"\x00", Status.BAD_LENGTH)
    pair.call(Command.FORWARD_START, msg.forward_start.pack(length=L, flags=OUTPUTS | ForwardFlags.ZERO_STATE))
    pair.call(Command.OUTPUTS, status=Status.WRONG_STATE)
    pair.call(Command.OUTPUTS, b"\x00", Status.WRONG_STATE)  # WRONG_STATE before BAD_LENGTH
    pair.call(Command.FORWARD_DATA, _chunk(msg, case["u"], 0, 3))
    pair.call(Command.FORWARD_DATA, _chunk(msg, case["u"], 3, 4))
    pair.call(Command.STATUS)
    pair.call(Command.ABORT)  # zeros for the rest; the outputs are dropped
    assert _outputs(pair, PassState.FORWARD) == (0, [])
    pair.snapshot()
    # a completed outputs pass, then a plain one: no part
    pair.call(Command.FORWARD_START, msg.forward_start.pack(length=3, flags=OUTPUTS))
    pair.call(Command.FORWARD_DATA, _chunk(msg, case["u"], 0, 3))
    assert _outputs(pair, PassState.FORWARD)[0] == 0
    pair.call(Command.FORWARD_START, msg.forward_start.pack(length=3, flags=0))
    for k in range(3):
        pair.call(Command.FORWARD_DATA, _chunk(msg, case["u"], k, 1))
    assert _outputs(pair, PassState.FORWARD) == (0, [])
    # too many steps for one reply
    most = msg.max_output_steps(PassState.ECHO)
    rev = case["u"][::-1] * (most // L + 2)
    pair.call(Command.ECHO_START, msg.echo_start.pack(length=most + 5, mode=ECHO_OUTPUTS_FLAG, nudge=case["nudge"]))
    pair.call(Command.ECHO_DATA, _chunk(msg, rev, 0, most + 1, EchoMode.CONSTANT), Status.BAD_LENGTH)
    pair.call(Command.ECHO_DATA, _chunk(msg, rev, 0, most, EchoMode.CONSTANT))
    pair.call(Command.ABORT)  # an echo: the accumulators and KIN hold the zero-fed pass's sums
    assert _outputs(pair, PassState.ECHO) == (0, [])
    pair.snapshot()
    for mode in (4, 4 | ECHO_OUTPUTS_FLAG):
        pair.call(Command.ECHO_START, msg.echo_start.pack(length=5, mode=mode, nudge=[0] * 4), Status.BAD_ARGUMENT)
    pair.call(Command.FORWARD_START, msg.forward_start.pack(length=5, flags=4), Status.BAD_ARGUMENT)  # reserved
    pair.call(Command.STATUS)


def test_an_outputs_echo_refuses_a_one_step_chunk_inside_the_pass(pair):
    """The core emits du_j one step after it takes the next input, so a 1-step chunk inside an outputs
    echo would wait for ever for its reply: BAD_LENGTH (the first and the last chunk may be 1 step)."""
    from echoboard.hdl.verilog import random_case

    msg, L = pair.msg, 8
    case = random_case(SMALL.fmt, SMALL.size, L, 5)
    _load_case(pair, case)
    pair.call(Command.FORWARD_START, msg.forward_start.pack(length=L, flags=OUTPUTS | ForwardFlags.ZERO_STATE))
    pair.call(Command.FORWARD_DATA, _chunk(msg, case["u"], 0, L))
    rev = case["u"][::-1]
    for chunks, refused in (([(0, 3), (3, 1)], (3, 1)), ([(0, 1), (1, 3), (4, 3), (7, 1)], None)):
        pair.call(Command.ECHO_START, msg.echo_start.pack(length=L, mode=ECHO_OUTPUTS_FLAG, nudge=case["nudge"]))
        for offset, k in chunks:
            status = Status.BAD_LENGTH if (offset, k) == refused else Status.OK
            pair.call(Command.ECHO_DATA, _chunk(msg, rev, offset, k, EchoMode.CONSTANT), status)
        if refused:
            pair.call(Command.ECHO_DATA, _chunk(msg, rev, 3, 5, EchoMode.CONSTANT))  # the pass goes on
    assert _outputs(pair, PassState.ECHO)[0] == 7
    pair.snapshot()


# ---------------------------------------------------------------- amaranth.sim (no build)


def _pysim_replies(image, requests: list[bytes], *, overlap: bool = False) -> list[bytes]:
    """The byte-stream image's reply frames to ``requests``, each sent after the previous reply,
    or with ``overlap`` as soon as its first byte is out (docs/protocol.md *Pace*)."""
    from amaranth.sim import Simulator

    got = bytearray()

    def replies_begun() -> int:
        return got.count(0) + (1 if got and got[-1] != 0 else 0)

    async def host(ctx):
        async def wait(condition):  # a dropped frame's reply never comes: give up, what came is compared
            for _ in range(20_000):
                if condition():
                    return
                await ctx.tick()

        ctx.set(image.tx.ready, 1)
        for k, request in enumerate(requests):
            for byte in request:
                ctx.set(image.rx.valid, 1)
                ctx.set(image.rx.payload, byte)
                await ctx.tick().until(image.rx.ready)
            ctx.set(image.rx.valid, 0)
            await wait(lambda: (replies_begun() if overlap else got.count(0)) >= k + 1)
        await wait(lambda: got.count(0) >= len(requests))

    async def collector(ctx):
        async for _clk, _rst, valid, byte in ctx.tick().sample(image.tx.valid, image.tx.payload):
            if valid:
                got.append(byte)

    sim = Simulator(image)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    sim.add_process(collector)
    sim.run()
    return _frames(bytes(got))


def test_serial_image_refuses_outputs_passes():
    """The serial core has no block mode: OUTPUTS is UNKNOWN_COMMAND, the flag a reserved bit,
    mode bit 1 an unknown mode, as the golden board of its capabilities answers."""
    from echoboard.firmware.top import BoardImage

    image = BoardImage(FixedFormat(), HRUSize(4, 2, 64), 1, build_hash=bytes(16), core="serial")
    msg = Messages(image.config)
    requests = [Request(seq, cmd, payload).encode() for seq, (cmd, payload) in enumerate((
        (Command.OUTPUTS, b""),
        (Command.FORWARD_START, msg.forward_start.pack(length=3, flags=OUTPUTS)),
        (Command.ECHO_START, msg.echo_start.pack(length=3, mode=ECHO_OUTPUTS_FLAG, nudge=[0] * 4)),
        (Command.STATUS, b"")), start=1)]
    golden = GoldenBoard(image.config)
    want = [golden.receive(r) for r in requests]
    assert _pysim_replies(image, requests) == want
    assert [w[3] for w in want[:3]] == [0x04, 0x07, 0x07]  # COBS: body byte 2 is the status


def test_the_next_chunk_may_overlap_the_reply():
    """Each request sent as soon as the previous reply has begun: request c + 1 and reply c share
    the line, nothing is dropped (STATUS: no overrun), every reply the golden board's."""
    from echoboard.firmware.top import BoardImage
    from echoboard.hdl.verilog import random_case

    size, L = HRUSize(4, 2, 64), 20
    image = BoardImage(FixedFormat(), size, 1, build_hash=bytes(16))
    msg = Messages(image.config)
    case = random_case(FixedFormat(), size, L, 2, per_step_nudge=True)
    u, rev, n = case["u"], case["u"][::-1], case["nudge"]
    nudges = n[-2::-1] + [[0] * 4]
    payloads = [(Command.WRITE, msg.pack_write(Region.B, 0, [x for r in case["B"] for x in r])),
                (Command.WRITE, msg.pack_write(Region.DELTA, 0, case["delta"])),
                (Command.FORWARD_START, msg.forward_start.pack(length=L, flags=OUTPUTS))]
    payloads += [(Command.FORWARD_DATA, _chunk(msg, u, offset, k)) for offset, k in ((0, 6), (6, 6), (12, 8))]
    payloads += [(Command.ECHO_START, msg.echo_start.pack(length=L, mode=EchoMode.STREAM | ECHO_OUTPUTS_FLAG,
                                                          nudge=n[-1]))]
    payloads += [(Command.ECHO_DATA, _chunk(msg, rev, offset, k, EchoMode.STREAM, nudges))
                 for offset, k in ((0, 7), (7, 7), (14, 6))]
    payloads += [(Command.OUTPUTS, b""), (Command.STATUS, b"")]
    requests = [Request(seq, cmd, payload).encode() for seq, (cmd, payload) in enumerate(payloads, start=1)]
    golden = GoldenBoard(image.config)
    assert _pysim_replies(image, requests, overlap=True) == [golden.receive(r) for r in requests]


@pytest.mark.parametrize("width", [5, 13, 32])
def test_dense_packer_equals_pack_dense(width):
    """firmware.sequencer.DensePacker against protocol.pack_dense, with random back-pressure."""
    from amaranth.sim import Simulator

    from echoboard.firmware.sequencer import DensePacker

    rng = random.Random(width)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    runs = [[lo, hi], [-1, 1], [rng.randint(lo, hi) for _ in range(9)], [rng.randint(lo, hi)]]
    dut, got = DensePacker(width), []

    async def feed(ctx):
        for words in runs:
            for k, word in enumerate(words):
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.p.data, word & ((1 << width) - 1))
                ctx.set(dut.i.p.last, k == len(words) - 1)
                await ctx.tick().until(dut.i.ready)
                ctx.set(dut.i.valid, 0)
                for _ in range(rng.randint(0, 2)):
                    await ctx.tick()
        for _ in range(40):
            await ctx.tick()

    async def drain(ctx):
        packet = bytearray()
        while True:
            ready = rng.random() < 0.6
            ctx.set(dut.o.ready, ready)
            valid, byte, last = ctx.get(dut.o.valid), ctx.get(dut.o.p.data), ctx.get(dut.o.p.last)
            await ctx.tick()
            if ready and valid:
                packet.append(byte)
                if last:
                    got.append(bytes(packet))
                    packet.clear()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feed)
    sim.add_testbench(drain, background=True)
    sim.run()
    assert got == [pack_dense(words, width) for words in runs]
    if width == 5:
        assert got[1] == bytes([0x3F, 0x00])  # docs/protocol.md's example


# ---------------------------------------------------------------- the default size


@pytest.mark.slow
def test_default_size_outputs_passes():
    """P16/N8/K4 (another build, minutes): 13 forward and 31 echo steps per chunk, two blocks."""
    result = verify_board(ImageConfig(HRUSize(16, 8, 65536), FixedFormat(), 4), seed=1, length=100, blocks=2)
    assert result["mismatches"] == 0, result["first_mismatch"]
    assert result["compared"] > _steps_compared(HRUSize(16, 8), 100, 2)
