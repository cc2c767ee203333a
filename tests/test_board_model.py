"""firmware/board_model.py: the golden board against hru_fixed, its stores, every error path, retries, ABORT.

The board is driven with raw frames (protocol.Request / Reply, no client), so each test sees
exactly the bytes the gateware will be compared on.
"""
import numpy as np
import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from echoboard.firmware import protocol as p
from echoboard.firmware.board_model import GoldenBoard
from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model.fixed import wrap
from echoboard.golden_model.formats import FixedFormat, HRUSize

C = p.Command
P, N, MAX_LENGTH = 4, 3, 300
CONFIG = p.CoreConfig(HRUSize(P, N, MAX_LENGTH), FixedFormat(), capabilities=p.Capability.ECHO_STREAM)
FMT = CONFIG.fmt


class Host:
    """Sends one request at a time to a GoldenBoard and decodes the one reply it must produce."""

    def __init__(self, board: GoldenBoard):
        self.board, self.m, self.seq = board, board.messages, 0

    def send(self, cmd, payload=b"", seq=None) -> p.Reply:
        if seq is None:
            seq, self.seq = self.seq, (self.seq + 1) % 256
        return self.raw(p.Request(seq, cmd, payload).encode())

    def raw(self, wire: bytes) -> p.Reply:
        replies = self.board.receive(wire)
        (frame,) = p.Deframer().feed(replies)
        return p.Reply.decode(frame)

    def ok(self, cmd, payload=b"") -> bytes:
        return self.send(cmd, payload).check().payload

    def write(self, region, values, start=0):
        self.ok(C.WRITE, self.m.pack_write(region, start, [int(v) for v in np.ravel(values)]))

    def read(self, region):
        depth = self.board.config.region_depth(region)
        values = self.m.read_reply(region, depth).unpack(self.ok(C.READ, self.m.pack_read(region, 0, depth)))["values"]
        return np.atleast_1d(values)

    def status(self) -> dict:
        return self.m.status_reply.unpack(self.ok(C.STATUS))

    def params(self, q):
        self.write(p.Region.A, q.A)
        self.write(p.Region.B, q.B)
        self.write(p.Region.DELTA, q.delta)

    def forward(self, u, flags=p.ForwardFlags.ZERO_STATE) -> dict:
        self.ok(C.FORWARD_START, self.m.forward_start.pack(length=len(u), flags=flags))
        *_, final = [self.ok(C.FORWARD_DATA, chunk) for chunk in self.m.data_payloads(u)]
        return self.m.forward_result.unpack(final)

    def echo(self, u, nudge) -> dict:
        """The echo pair with hru_fixed.echo's arguments: u in forward order, nudge (P,) or (L, P)."""
        if nudge.ndim == 1:
            mode, first, stream = p.EchoMode.CONSTANT, nudge, None
        else:
            mode, first, stream = p.EchoMode.STREAM, nudge[-1], np.concatenate([nudge[:-1][::-1], np.zeros((1, P))])
        self.ok(C.ECHO_START, self.m.echo_start.pack(length=len(u), mode=mode, nudge=[int(x) for x in first]))
        chunks = self.m.data_payloads(u[::-1].tolist(), nudges=None if stream is None else stream.astype(int).tolist(),
                                      mode=mode)
        *_, final = [self.ok(C.ECHO_DATA, chunk) for chunk in chunks]
        return self.m.echo_result.unpack(final)


def random_params(rng, p_=P, n_=N) -> hx.LinearParamsInt:
    return hx.LinearParamsInt(rng.integers(0, 1 << 14, p_), rng.integers(-(1 << 14), 1 << 14, (p_, n_)),
                              rng.integers(1 << 11, 1 << 14, p_))


def random_inputs(rng, length, n_=N, bits=11):
    return rng.integers(-(1 << bits), 1 << bits, (length, n_))


@pytest.fixture
def host():
    return Host(GoldenBoard(CONFIG))


def zeros():
    return np.zeros(P, np.int64)


# ---------------------------------------------------------------- the passes equal hru_fixed


@pytest.mark.parametrize("stream", [False, True])
def test_forward_echo_and_accumulators_equal_hru_fixed(host, stream):
    rng = np.random.default_rng(1 + stream)
    q, L = random_params(rng), 200  # forward: 2 chunks; echo: 2 (CONSTANT) or 5 (STREAM) chunks
    u, u2 = random_inputs(rng, L), random_inputs(rng, L)
    nudge = rng.integers(-(1 << 16), 1 << 16, (L, P) if stream else (P,))
    host.params(q)

    fwd = host.forward(u)
    ref = hx.forward(q, u, zeros(), zeros(), FMT)
    assert fwd == {"overflow_forward": int(ref.overflows), "pos_sum": np.asarray(ref.pos_sum).tolist()}
    assert host.read(p.Region.Y0).tolist() == np.asarray(ref.y).tolist()
    assert host.read(p.Region.Z0).tolist() == np.asarray(ref.z).tolist()

    echo = host.echo(u, nudge)
    e1 = hx.echo(q, u, ref.y, ref.z, nudge, FMT)
    assert list(echo.values()) == np.asarray(e1.overflows).tolist()
    for region, want in ((p.Region.Y0, e1.y[0]), (p.Region.Z0, e1.z[0]), (p.Region.Y1, e1.y[1]),
                         (p.Region.Z1, e1.z[1]), (p.Region.ACC_A, e1.acc_a), (p.Region.ACC_B, np.ravel(e1.acc_b))):
        assert host.read(region).tolist() == np.asarray(want).tolist(), region.name
    if not stream:
        assert host.read(p.Region.NUDGE).tolist() == nudge.tolist()

    # a second sample of the minibatch adds onto the accumulators
    ref2 = hx.forward(q, u2, zeros(), zeros(), FMT)
    host.forward(u2)
    host.echo(u2, nudge)
    e2 = hx.echo(q, u2, ref2.y, ref2.z, nudge, FMT)
    assert host.read(p.Region.ACC_A).tolist() == np.asarray(wrap(e1.acc_a + e2.acc_a, FMT.acc_width)[0]).tolist()
    assert host.read(p.Region.ACC_B).tolist() == np.ravel(wrap(e1.acc_b + e2.acc_b, FMT.acc_width)[0]).tolist()

    host.ok(C.CLEAR_GRADIENTS)
    assert not host.read(p.Region.ACC_A).any() and not host.read(p.Region.ACC_B).any()


def test_nonlinear_board_equals_hru_fixed_nonlinear_and_accumulates_two_echoes():
    """The nonlinear golden board: forward and echo equal hru_fixed_nonlinear, a second echo adds
    onto all five accumulators (each wrap counted against the running sum: the same as one
    continued echo, hru_fixed_nonlinear.echo(acc=...)), CLEAR_GRADIENTS zeroes them."""
    from echoboard.golden_model import hru_fixed_nonlinear as nl
    from echoboard.hdl.verilog import random_case

    fmt = nl.NonlinearFormat()
    config = p.CoreConfig(HRUSize(P, N, MAX_LENGTH), fmt, capabilities=p.Capability.ECHO_STREAM)
    host, size = Host(GoldenBoard(config)), config.size
    cases = [random_case(fmt, size, 90, seed, wild=seed == 1) for seed in (0, 1)]  # seed 1: every word full width
    q = nl.NonlinearParamsInt(*(np.asarray(cases[0][k]) for k in nl.NonlinearParamsInt._fields))
    for name, region in config.parameters.items():
        host.write(region, getattr(q, name))
    acc, gradient = None, 0
    for case in cases:
        u, y0, z0, nudge = (np.asarray(case[k]) for k in ("u", "y0", "z0", "nudge"))
        host.write(p.NonlinearRegion.Y0, y0)
        host.write(p.NonlinearRegion.Z0, z0)
        ref = nl.forward(q, u, y0, z0, fmt)
        assert host.forward(u, flags=0) == {"overflow_forward": int(ref.overflows),
                                            "pos_sum": np.asarray(ref.pos_sum).tolist()}
        echo = nl.echo(q, u, ref.y, ref.z, nudge, fmt, acc=acc)
        counters = host.echo(u, nudge)
        gradient += int(echo.overflows[2])  # the board's counter adds every echo's events until CLEAR
        assert list(counters.values()) == [*np.asarray(echo.overflows[:2]).tolist(), gradient]
        acc = echo.acc
        for name, region in config.accumulators.items():
            assert host.read(region).tolist() == np.ravel(getattr(acc, name[4:])).tolist(), name
    assert int(ref.overflows) > 0 and int(echo.overflows[2]) > 0  # the wild case wrapped
    host.ok(C.CLEAR_GRADIENTS)
    assert not any(host.read(region).any() for region in config.accumulators.values())
    assert host.status()["overflow_gradient"] == 0


def test_forward_from_the_written_state_and_an_epsilon_zero_echo_returns_to_it(host):
    rng = np.random.default_rng(3)
    q, u = random_params(rng), random_inputs(rng, 37)
    y0, z0 = rng.integers(-(1 << 20), 1 << 20, P), rng.integers(-(1 << 20), 1 << 20, P)
    host.params(q)
    host.write(p.Region.Y0, y0)
    host.write(p.Region.Z0, z0)
    fwd = host.forward(u, flags=0)
    ref = hx.forward(q, u, y0, z0, FMT)
    assert fwd["pos_sum"] == np.asarray(ref.pos_sum).tolist()
    host.echo(u, np.zeros(P, np.int64))  # nudge 0: both echoes retrace the forward pass exactly
    for y, z in ((p.Region.Y0, p.Region.Z0), (p.Region.Y1, p.Region.Z1)):
        assert host.read(y).tolist() == y0.tolist() and host.read(z).tolist() == (-z0).tolist()


def test_overflow_counters_saturate_and_the_gradient_counter_adds_across_echoes():
    fmt = FixedFormat(state_width=12, state_frac=6, counter_width=7)  # a narrow state wraps often
    host = Host(GoldenBoard(p.CoreConfig(HRUSize(P, N, MAX_LENGTH), fmt)))
    rng = np.random.default_rng(4)
    q = hx.LinearParamsInt(rng.integers(1 << 15, 1 << 17, P), rng.integers(-(1 << 17), 1 << 17, (P, N)),
                           rng.integers(1 << 14, 1 << 15, P))
    u, nudge = random_inputs(rng, 50, bits=15), rng.integers(-(1 << 10), 1 << 10, P)
    host.params(q)
    ref = hx.forward(q, u, zeros(), zeros(), fmt)
    e = hx.echo(q, u, ref.y, ref.z, nudge, fmt)
    assert int(ref.overflows) == 127 and np.asarray(e.overflows).tolist() == [127, 127, 90]  # the case tested
    assert host.forward(u)["overflow_forward"] == 127  # saturated at 2**7 - 1
    assert list(host.echo(u, nudge).values()) == [127, 127, 90]
    host.forward(u)
    assert list(host.echo(u, nudge).values()) == [127, 127, 127]  # 90 + 90, saturated: counts since the clear
    assert host.read(p.Region.COUNTERS).tolist() == [127, 127, 127, 127]
    host.ok(C.CLEAR_GRADIENTS)
    assert host.read(p.Region.COUNTERS).tolist() == [127, 127, 127, 0]


# ---------------------------------------------------------------- regions


def test_every_writable_region_reads_back_what_was_written(host):
    rng = np.random.default_rng(5)
    written = {}
    for region in p.Region:
        if region in p.READ_ONLY_REGIONS:
            continue
        width = CONFIG.region_field(region).width
        written[region] = rng.integers(-(1 << (width - 1)), 1 << (width - 1), CONFIG.region_depth(region))
        written[region][:2] = [-(1 << (width - 1)), (1 << (width - 1)) - 1]
        host.write(region, written[region])
    for region, values in written.items():
        assert host.read(region).tolist() == values.tolist(), region.name
    host.write(p.Region.B, [11, 12], start=5)  # a partial write touches only its words
    assert host.read(p.Region.B).tolist() == [*written[p.Region.B][:5], 11, 12, *written[p.Region.B][7:]]


def test_the_board_truncates_words_to_their_width(host):
    """18-bit coefficients in 3 bytes: the board keeps the low 18 bits, without checking the top 6."""
    raws = [0x020000, 0xFC0005, 0x41FFFF, 0xFFFFFF]
    payload = bytes([p.Region.A, 0, 0]) + b"".join(r.to_bytes(3, "little") for r in raws)
    host.ok(C.WRITE, payload)
    expect = [((r + (1 << 17)) % (1 << 18)) - (1 << 17) for r in raws]
    assert host.read(p.Region.A).tolist() == expect == [-131072, 5, 131071, -1]


# ---------------------------------------------------------------- link errors


def _frame(body: bytes) -> bytes:
    return cobs.encode(body) + b"\x00"


GOOD = p.Request(9, C.STATUS).encode()
LINK_ERRORS = {
    "bad CRC": (_frame(bytes([9, C.STATUS]) + b"\x00\x00\x00\x00"), p.Status.BAD_CRC, (9, C.STATUS)),
    "COBS block past the delimiter": (b"\x07\x09\x02\x11\x00", p.Status.TRUNCATED, (9, 2)),
    "one byte": (_frame(b"\x07"), p.Status.TRUNCATED, (7, 0)),
    "shorter than seq+cmd+crc": (_frame(bytes([9, C.STATUS, 1, 2, 3])), p.Status.TRUNCATED, (9, C.STATUS)),
    "implicit zero as cmd": (b"\x02\x09\x03\x05\x00", p.Status.TRUNCATED, (9, 0)),
    "oversized": (_frame(bytes([5, C.WRITE]) + bytes(p.MAX_FRAME_BYTES)), p.Status.OVERSIZED, (5, C.WRITE)),
    "cut short by a delimiter": (GOOD[:3] + b"\x00", None, None),
}


@pytest.mark.parametrize("name", LINK_ERRORS)
def test_link_errors_answer_with_the_received_seq_and_cmd_and_change_nothing(host, name):
    wire, status, header = LINK_ERRORS[name]
    if status is None:  # the status follows protocol.decode_frame, whatever the cut gives
        with pytest.raises(p.FrameError) as fault:
            p.decode_frame(wire)
        status = fault.value.status
    before = host.board.stores()
    reply = host.raw(wire)
    assert reply.status == status and reply.payload == b""
    if header:
        assert (reply.seq, reply.cmd) == header
    assert host.board.stores() == before
    counters = host.status()
    assert (counters["crc_errors"], counters["framing_errors"]) == ((1, 0) if status == p.Status.BAD_CRC else (0, 1))
    assert counters["frames_ok"] == 1 and counters["command_errors"] == 0


def test_empty_frames_get_no_reply_and_a_flush_closes_a_half_frame(host):
    assert host.board.receive(b"\x00\x00\x00") == b""
    half = p.Request(4, C.IDENTIFY).encode()[:4]
    reply = host.raw(half + b"\x00")  # the host's flush byte after a timeout
    assert reply.status in (p.Status.BAD_CRC, p.Status.TRUNCATED) and (reply.seq, reply.cmd) == (4, C.IDENTIFY)
    assert host.send(C.IDENTIFY, p.identify_request()).check().payload == host.m.pack_identify()
    assert host.send(C.IDENTIFY).check().payload == host.m.pack_identify()[:p.IDENTIFY_V1_REPLY.size()]  # v1 host


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000))
def test_garbage_never_changes_anything_and_every_frame_gets_a_link_error(garbage):
    board = GoldenBoard(CONFIG)
    before = board.stores()
    frames = p.Deframer(limit=1 << 20).feed(garbage + b"\x00")
    replies = [p.Reply.decode(f) for f in p.Deframer().feed(board.receive(garbage + b"\x00"))]
    assert len(replies) == len(frames)
    for frame, reply in zip(frames, replies):
        with pytest.raises(p.FrameError) as fault:
            p.decode_frame(frame)
        assert reply.status == fault.value.status
    assert board.stores() == before


# ---------------------------------------------------------------- sequencer errors

M = p.Messages(CONFIG)
FWD = (C.FORWARD_START, M.forward_start.pack(length=10, flags=1))
ECHO_STREAM = (C.ECHO_START, M.echo_start.pack(length=10, mode=p.EchoMode.STREAM, nudge=[1, 2, 3, 4]))
ECHO_CONSTANT = (C.ECHO_START, M.echo_start.pack(length=10, mode=p.EchoMode.CONSTANT, nudge=[1, 2, 3, 4]))
FWD_CHUNK = M.forward_data.pack(offset=0, inputs=[1, 2, 3] * 4)
S = p.Status
# (name, state set-up requests, the request, its expected status)
SEQUENCER_ERRORS = [
    ("unknown command", [], (0x7E, b""), S.UNKNOWN_COMMAND),
    ("unknown command during a pass", [FWD], (0x00, b"\x01"), S.UNKNOWN_COMMAND),
    ("IDENTIFY with a payload", [], (C.IDENTIFY, b"\x00"), S.BAD_LENGTH),
    ("STATUS with a payload", [FWD], (C.STATUS, b"\x00"), S.BAD_LENGTH),
    ("ABORT with a payload", [FWD], (C.ABORT, b"\x00"), S.BAD_LENGTH),
    ("CLEAR with a payload", [], (C.CLEAR_GRADIENTS, b"\x00"), S.BAD_LENGTH),
    ("READ too short", [], (C.READ, bytes(4)), S.BAD_LENGTH),
    ("WRITE empty", [], (C.WRITE, b""), S.BAD_LENGTH),
    ("WRITE without words", [], (C.WRITE, bytes(3)), S.BAD_LENGTH),
    ("WRITE with part of a word", [], (C.WRITE, bytes(3 + 3 + 2)), S.BAD_LENGTH),
    ("FORWARD_START too short", [], (C.FORWARD_START, bytes(4)), S.BAD_LENGTH),
    ("ECHO_START without the nudge", [], (C.ECHO_START, M.echo_start.pack(length=5, mode=0, nudge=[0] * P)[:-1]),
     S.BAD_LENGTH),
    ("FORWARD_DATA with part of a step", [FWD], (C.FORWARD_DATA, FWD_CHUNK[:-1]), S.BAD_LENGTH),
    ("FORWARD_DATA without a step", [FWD], (C.FORWARD_DATA, bytes(4)), S.BAD_LENGTH),
    ("CONSTANT-mode chunk during a STREAM echo", [ECHO_STREAM], (C.ECHO_DATA, FWD_CHUNK), S.BAD_LENGTH),
    ("FORWARD_DATA in IDLE", [], (C.FORWARD_DATA, FWD_CHUNK), S.WRONG_STATE),
    ("FORWARD_DATA of bad length in IDLE", [], (C.FORWARD_DATA, b"\x01"), S.WRONG_STATE),
    ("ECHO_DATA in IDLE", [], (C.ECHO_DATA, FWD_CHUNK), S.WRONG_STATE),
    ("ECHO_DATA during a forward pass", [FWD], (C.ECHO_DATA, FWD_CHUNK), S.WRONG_STATE),
    ("FORWARD_DATA during an echo", [ECHO_CONSTANT], (C.FORWARD_DATA, FWD_CHUNK), S.WRONG_STATE),
    ("WRITE during a pass", [FWD], (C.WRITE, M.pack_write(p.Region.A, 0, [1])), S.WRONG_STATE),
    ("READ during a pass", [ECHO_CONSTANT], (C.READ, M.pack_read(p.Region.A, 0, 1)), S.WRONG_STATE),
    ("CLEAR during a pass", [FWD], (C.CLEAR_GRADIENTS, b""), S.WRONG_STATE),
    ("FORWARD_START during a pass", [FWD], FWD, S.WRONG_STATE),
    ("ECHO_START during a pass", [FWD], ECHO_CONSTANT, S.WRONG_STATE),
    ("READ of an unknown region", [], (C.READ, bytes([12, 0, 0, 1, 0])), S.BAD_ARGUMENT),
    ("WRITE to an unknown region", [], (C.WRITE, bytes([12, 0, 0])), S.BAD_ARGUMENT),
    ("WRITE to a read-only region", [], (C.WRITE, bytes([p.Region.ACC_A, 0, 0]) + bytes(8)), S.BAD_ARGUMENT),
    ("WRITE past the region", [], (C.WRITE, bytes([p.Region.A, 3, 0]) + bytes(6)), S.BAD_ARGUMENT),
    ("READ past the region", [], (C.READ, bytes([p.Region.COUNTERS, 1, 0, 4, 0])), S.BAD_ARGUMENT),
    ("READ of no words", [], (C.READ, bytes([p.Region.A, 0, 0, 0, 0])), S.BAD_ARGUMENT),
    ("FORWARD_START of length 0", [], (C.FORWARD_START, M.forward_start.pack(length=0, flags=0)), S.BAD_ARGUMENT),
    ("FORWARD_START above max_length", [], (C.FORWARD_START, M.forward_start.pack(length=MAX_LENGTH + 1, flags=0)),
     S.BAD_ARGUMENT),
    ("FORWARD_START with a reserved flag", [], (C.FORWARD_START, M.forward_start.pack(length=5, flags=2)),
     S.BAD_ARGUMENT),
    ("ECHO_START of length 0", [], (C.ECHO_START, M.echo_start.pack(length=0, mode=0, nudge=[0] * P)), S.BAD_ARGUMENT),
    ("ECHO_START of an unknown mode", [], (C.ECHO_START, M.echo_start.pack(length=5, mode=2, nudge=[0] * P)),
     S.BAD_ARGUMENT),
    ("DATA at the wrong offset", [FWD], (C.FORWARD_DATA, M.forward_data.pack(offset=1, inputs=[0] * N)),
     S.BAD_ARGUMENT),
    ("DATA past the length", [FWD], (C.FORWARD_DATA, M.forward_data.pack(offset=0, inputs=[0] * N * 11)),
     S.BAD_ARGUMENT),
]


@pytest.mark.parametrize("setup, request_, status", [case[1:] for case in SEQUENCER_ERRORS],
                         ids=[case[0] for case in SEQUENCER_ERRORS])
def test_sequencer_errors_change_nothing(host, setup, request_, status):
    host.params(random_params(np.random.default_rng(6)))
    for cmd, payload in setup:
        host.ok(cmd, payload)
    before = host.board.stores()
    reply = host.send(*request_)
    assert (reply.status, reply.payload) == (status, b"")
    assert host.board.stores() == before
    assert host.status()["command_errors"] == 1


def test_stream_mode_needs_the_capability():
    host = Host(GoldenBoard(p.CoreConfig(HRUSize(P, N, MAX_LENGTH), FMT)))  # capabilities 0
    assert host.send(*ECHO_STREAM).status == S.BAD_ARGUMENT
    assert host.send(*ECHO_CONSTANT).status == S.OK


# ---------------------------------------------------------------- retries


def test_a_retry_gets_the_cached_reply_and_is_not_executed_again(host):
    rng = np.random.default_rng(7)
    q, u = random_params(rng), random_inputs(rng, 200)
    host.params(q)
    host.ok(C.FORWARD_START, M.forward_start.pack(length=200, flags=1))
    first, last = M.data_payloads(u)
    request = p.Request(50, C.FORWARD_DATA, first).encode()
    reply = host.board.receive(request)
    assert host.board.receive(request) == reply  # the same bytes again: not a second chunk
    assert host.board.receive(b"\x13\x00") != b""  # a link error in between does not matter ...
    assert host.board.receive(request) == reply  # ... nor is it cached
    final_request = p.Request(51, C.FORWARD_DATA, last).encode()
    final = host.board.receive(final_request)
    stores = host.board.stores()
    assert host.board.receive(final_request) == final and host.board.stores() == stores
    ref = hx.forward(q, u, zeros(), zeros(), FMT)
    (frame,) = p.Deframer().feed(final)
    assert M.forward_result.unpack(p.Reply.decode(frame).payload)["pos_sum"] == np.asarray(ref.pos_sum).tolist()
    counters = host.status()
    assert counters["frames_ok"] == 4 + 6 and counters["framing_errors"] == 1


def test_error_replies_are_cached_too_and_only_consecutive_repeats_count(host):
    wrong = p.Request(8, C.FORWARD_DATA, FWD_CHUNK).encode()
    reply = host.board.receive(wrong)
    assert host.board.receive(wrong) == reply
    assert host.status()["command_errors"] == 1  # the replay executed nothing
    assert host.send(C.FORWARD_DATA, FWD_CHUNK, seq=8).status == S.WRONG_STATE  # not consecutive: executed
    assert host.status()["command_errors"] == 2
    host.send(C.IDENTIFY, seq=7)
    assert host.send(C.STATUS, seq=7).status == S.OK  # same seq, other command: executed


# ---------------------------------------------------------------- STATUS and ABORT


def test_status_reports_the_pass_in_progress(host):
    host.params(random_params(np.random.default_rng(8)))
    host.ok(*FWD)
    host.ok(C.FORWARD_DATA, FWD_CHUNK)
    s = host.status()
    assert (s["state"], s["length"], s["steps_done"]) == (p.PassState.FORWARD, 10, 4)
    host.ok(C.ABORT)
    s = host.status()
    assert (s["state"], s["length"], s["steps_done"]) == (p.PassState.IDLE, 0, 0)
    assert s["frames_ok"] == 8 and s["command_errors"] == 0


def test_abort_completes_the_pass_with_zero_inputs(host):
    rng = np.random.default_rng(9)
    q, u = random_params(rng), random_inputs(rng, 200)
    host.params(q)
    host.ok(C.FORWARD_START, M.forward_start.pack(length=200, flags=1))
    first = M.data_payloads(u)[0]
    host.ok(C.FORWARD_DATA, first)
    assert host.ok(C.ABORT) == b""
    done = M.forward_data.steps(len(first))
    padded = np.concatenate([u[:done], np.zeros((200 - done, N), np.int64)])
    ref = hx.forward(q, padded, zeros(), zeros(), FMT)
    assert host.read(p.Region.POS_SUM).tolist() == np.asarray(ref.pos_sum).tolist()
    assert host.read(p.Region.Y0).tolist() == np.asarray(ref.y).tolist()
    assert host.send(C.FORWARD_DATA, M.data_payloads(u)[1]).status == S.WRONG_STATE

    # a STREAM echo aborted after its first chunk: zero inputs and zero nudges from there on
    nudge = rng.integers(-(1 << 16), 1 << 16, (200, P))
    host.ok(C.ECHO_START, M.echo_start.pack(length=200, mode=p.EchoMode.STREAM, nudge=nudge[-1].tolist()))
    stream = np.concatenate([nudge[:-1][::-1], np.zeros((1, P), np.int64)])
    first = M.data_payloads(u[::-1].tolist(), nudges=stream.tolist(), mode=p.EchoMode.STREAM)[0]
    host.ok(C.ECHO_DATA, first)
    host.ok(C.ABORT)
    done = M.echo_data(p.EchoMode.STREAM).steps(len(first))
    u_echo = np.concatenate([u[::-1][:done], np.zeros((200 - done, N), np.int64)])[::-1]
    n_echo = nudge.copy()
    n_echo[:200 - 1 - done] = 0  # n_{j-1}, carried by the unsent steps j = L-1-done .. 1
    e = hx.echo(q, u_echo, ref.y, ref.z, n_echo, FMT)
    assert host.read(p.Region.ACC_A).tolist() == np.asarray(e.acc_a).tolist()
    assert host.read(p.Region.Y1).tolist() == np.asarray(e.y[1]).tolist()


def test_abort_in_idle_changes_nothing(host):
    host.params(random_params(np.random.default_rng(10)))
    before = host.board.stores()
    assert host.send(C.ABORT).status == S.OK
    assert host.board.stores() == before


def test_board_api_drives_the_nonlinear_hru():
    """host.board.Board on the nonlinear golden board: write_params/read_params (a scalar alpha on
    every oscillator), forward and echo equal hru_fixed_nonlinear, read_gradients is its
    NonlinearAccumulators, clear_gradients zeroes them."""
    from echoboard.golden_model import hru_fixed_nonlinear as nl
    from echoboard.hdl.verilog import random_case
    from echoboard.host.board import Board

    fmt, size = nl.NonlinearFormat(), HRUSize(P, N, MAX_LENGTH)
    case = random_case(fmt, size, 40, 2)
    q = nl.NonlinearParamsInt(*(np.asarray(case[k]) for k in nl.NonlinearParamsInt._fields))
    q = q._replace(alpha=np.int64(case["alpha"][0]))
    u, nudge = np.asarray(case["u"]), np.asarray(case["nudge"])
    with Board.open("golden", size=size, hru="nonlinear") as board:
        board.write_params(q)
        stored = board.read_params()
        assert stored.alpha.tolist() == [int(q.alpha)] * P
        assert all(np.array_equal(getattr(stored, k), getattr(q, k)) for k in ("W", "bias", "sigma_c", "B", "delta"))
        fwd = board.forward(u, read_state=True)
        ref = nl.forward(stored, u, np.zeros(P, np.int64), np.zeros(P, np.int64), fmt)
        assert all(np.array_equal(a, b) for a, b in zip(fwd, ref))
        counters = board.echo(u, nudge)
        echo = nl.echo(stored, u, ref.y, ref.z, nudge, fmt)
        assert counters.tolist() == np.asarray(echo.overflows).tolist()
        sums = board.read_gradients()
        assert isinstance(sums, nl.NonlinearAccumulators)
        assert all(np.array_equal(a, b) for a, b in zip(sums, echo.acc))
        board.clear_gradients()
        assert not any(np.any(a) for a in board.read_gradients())
