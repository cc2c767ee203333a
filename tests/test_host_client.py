"""host/: the Board API over the golden model and over TCP, the client's retries, fault injection, validation."""

import numpy as np
import pytest
import serial

from echoboard.firmware import link
from echoboard.firmware import protocol as p
from golden_board_tcp import golden_on_tcp
from echoboard.firmware.board_model import MODEL_BUILD_HASH, GoldenBoard
from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.host.board import Board
from echoboard.host.client import Client, LinkError
from echoboard.host.transports import DEFAULT_BAUD, Faults, FaultyTransport, GoldenTransport, open_serial

DEFAULT_CORE = p.CoreConfig(HRUSize(16, 8), FixedFormat(), capabilities=p.PIPELINED_CAPABILITIES,
                            build_hash=MODEL_BUILD_HASH)
SMALL = HRUSize(4, 3, 64)


def problem(size: HRUSize, length: int, seed: int = 0):
    """Parameters, inputs and both kinds of nudge for one forward/echo sample."""
    rng = np.random.default_rng(seed)
    P, N = size.oscillators, size.inputs
    q = hx.LinearParamsInt(rng.integers(0, 1 << 14, P), rng.integers(-(1 << 14), 1 << 14, (P, N)),
                           rng.integers(1 << 11, 1 << 14, P))
    return (q, rng.integers(-(1 << 11), 1 << 11, (length, N)), rng.integers(-(1 << 16), 1 << 16, P),
            rng.integers(-(1 << 16), 1 << 16, (length, P)))


def session(board: Board, q, u, nudge, nudges) -> list:
    """Every kind of request a training step makes; the results as plain lists."""
    board.write_params(q)
    results = [board.read_params(), board.forward(u, read_state=True), board.echo(u, nudge), board.read_gradients(),
               board.forward(u), board.echo(u, nudges), board.read_gradients()]
    board.clear_gradients()
    results.append(board.read_gradients())
    return [np.asarray(leaf).tolist() for r in results for leaf in (r if isinstance(r, tuple) else (r,))
            if leaf is not None]


# ---------------------------------------------------------------- the golden backend


def test_golden_board_gives_the_integers_of_hru_fixed():
    q, u, nudge, nudges = problem(DEFAULT_CORE.size, 100)  # several frames per pass on the default core
    fmt, zero = DEFAULT_CORE.fmt, np.zeros(16, np.int64)
    with Board.open("golden") as board:
        assert board.config == DEFAULT_CORE and board.identify() == DEFAULT_CORE
        board.write_params(q)
        assert all(np.array_equal(a, b) for a, b in zip(board.read_params(), q))
        fwd = board.forward(u, read_state=True)
        ref = hx.forward(q, u, zero, zero, fmt)
        assert all(np.array_equal(a, b) for a, b in zip(fwd, ref))
        e1 = hx.echo(q, u, ref.y, ref.z, nudge, fmt)
        assert board.echo(u, nudge).tolist() == np.asarray(e1.overflows).tolist()
        board.forward(u)
        e2 = hx.echo(q, u, ref.y, ref.z, nudges, fmt)
        board.echo(u, nudges)
        acc_a, acc_b = board.read_gradients()
        assert np.array_equal(acc_a, e1.acc_a + e2.acc_a) and np.array_equal(acc_b, e1.acc_b + e2.acc_b)
        board.clear_gradients()
        assert not any(a.any() for a in board.read_gradients())
        status = board.status()
        assert status["state"] is p.PassState.IDLE and status["command_errors"] == 0
        assert status["frames_ok"] == board.link_stats["requests"]


def test_an_interrupted_pass_is_aborted(monkeypatch):
    q, u, nudge, _ = problem(DEFAULT_CORE.size, 200)
    with Board.open("golden") as board:
        board.write_params(q)
        call, sent = board.client.call, []

        def interrupted(cmd, payload=b"", **kw):
            sent.append(cmd)
            if cmd == p.Command.FORWARD_DATA and sent.count(cmd) == 2:
                raise KeyboardInterrupt
            return call(cmd, payload, **kw)

        monkeypatch.setattr(board.client, "call", interrupted)
        with pytest.raises(KeyboardInterrupt):
            board.forward(u)
        monkeypatch.undo()
        assert sent[-1] == p.Command.ABORT and board.status()["state"] is p.PassState.IDLE
        board.abort()  # in IDLE: nothing to do
        board.client.call(p.Command.FORWARD_START, board.messages.forward_start.pack(length=5, flags=1))
        with pytest.raises(p.BoardError, match="WRONG_STATE to FORWARD_START"):
            board.forward(u)  # a pass left over (e.g. by a killed session) ...
        assert board.status()["state"] is p.PassState.IDLE  # ... is aborted, so the next call works
        assert np.array_equal(board.forward(u).pos_sum, hx.forward(q, u, np.zeros(16, np.int64),
                                                                   np.zeros(16, np.int64), DEFAULT_CORE.fmt).pos_sum)


# ---------------------------------------------------------------- over TCP, like the simulated board


def test_a_board_on_a_socket_gives_the_same_integers_as_golden():
    problem_ = problem(SMALL, 50)
    config = p.CoreConfig(SMALL, FixedFormat(), capabilities=p.Capability.ECHO_STREAM)
    with Board.open("golden", size=SMALL) as board:
        expected = session(board, *problem_)
    with golden_on_tcp(config) as url, Board.open(url, size=SMALL, timeout=5.0) as board:
        assert board.config == config
        assert session(board, *problem_) == expected
        assert board.link_stats["retries"] == 0


def test_a_board_reporting_another_size_is_refused():
    with golden_on_tcp(p.CoreConfig(SMALL)) as url:
        with pytest.raises(ValueError, match="reports size"):
            Board.open(url, size=HRUSize(16, 8), timeout=5.0)


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("size, length, rate", [
    (DEFAULT_CORE.size, 100, 2e-4),  # ~1 KB frames: about 1 in 5 of those is hit, a few % of all frames
    (SMALL, 6, 0.01),  # short frames under 1 % byte faults: most requests need a retry
], ids=["default-core", "small-core-1pc"])
def test_faults_change_no_integer_and_show_in_the_link_stats(size, length, rate):
    problem_ = problem(size, length, seed=2)
    with Board.open("golden", size=size) as board:
        expected = session(board, *problem_)
    faults = Faults(drop=rate, corrupt=rate, insert=rate / 2)
    # at 1 % faults per byte in both directions a ~100-byte READ reply gets through ~1 try in 16:
    # 40 resends failed such a READ with ~8 % probability (it did for IDENTIFY v2's other stream)
    with Board.open("golden", size=size, faults=faults, retries=100) as board:
        assert session(board, *problem_) == expected
        stats, injected = board.link_stats, board.client.port.injected
    assert stats["retries"] > 0 and stats["link_errors"] > 0
    assert injected["to_board"]["dropped"] and injected["to_board"]["corrupted"] and injected["to_board"]["inserted"]
    if rate >= 0.01:
        assert stats["crc_errors"] > 0 and stats["timeouts"] > 0


def test_a_long_stream_echo_under_faults_equals_hru_fixed():
    q, u, _, nudges = problem(DEFAULT_CORE.size, 65536, seed=4)  # max_length: ~1000 + ~5500 frames
    with Board.open("golden", faults=Faults(1e-4, 1e-4, 5e-5), retries=20) as board:
        board.write_params(q)
        fwd = board.forward(u, read_state=True)
        counters = board.echo(u, nudges)
        acc_a, acc_b = board.read_gradients()
        assert board.link_stats["retries"] > 0
    ref = hx.forward(q, u, np.zeros(16, np.int64), np.zeros(16, np.int64), DEFAULT_CORE.fmt)
    e = hx.echo(q, u, ref.y, ref.z, nudges, DEFAULT_CORE.fmt)
    assert all(np.array_equal(a, b) for a, b in zip(fwd, ref))
    assert counters.tolist() == np.asarray(e.overflows).tolist()
    assert np.array_equal(acc_a, e.acc_a) and np.array_equal(acc_b, e.acc_b)


def test_fault_injection_is_reproducible():
    runs = []
    for _ in range(2):
        port = FaultyTransport(GoldenTransport(GoldenBoard(p.CoreConfig(SMALL))), Faults(0.02, 0.02, 0.02), seed=3)
        with Client(port, retries=100) as client:
            client.start()
            runs.append((client.stats.as_dict(), port.injected))
    assert runs[0] == runs[1] and runs[0][0]["retries"] > 0


# ---------------------------------------------------------------- the client alone


def test_client_over_loop_frames_and_gives_up_with_the_commands_name():
    with Client(open_serial("loop://", timeout=0.2), retries=2) as client:
        # loop:// returns the request itself; with a payload starting with 0 it parses as an OK reply
        reply = client.request(p.Command.READ, bytes([0, 1, 0, 2, 0]))
        assert (reply.seq, reply.cmd, reply.status, reply.payload) == (0, p.Command.READ, 0, bytes([1, 0, 2, 0]))
        with pytest.raises(LinkError, match=r"no valid reply to IDENTIFY \(seq 1\) after 3 attempts: 3 link errors"):
            client.start()  # the echoed IDENTIFY request (payload: version 2, 02 00) reads as a TRUNCATED reply
        assert client.stats.retries == 2 and client.stats.link_errors == 3


def test_client_times_out_and_retries_the_same_seq():
    board = GoldenBoard(p.CoreConfig(SMALL))
    port = FaultyTransport(GoldenTransport(board), Faults(drop=1.0))  # nothing reaches the board
    with Client(port, timeout=0.05, retries=3) as client, pytest.raises(LinkError, match="STATUS .* 4 timeouts"):
        client.call(p.Command.STATUS)
    assert client.stats.timeouts == 4 and board.frames_ok == 0


class StaleFirst(GoldenTransport):
    """A golden board whose next reply is preceded by a (CRC-good) reply to an earlier request."""

    def write(self, data):
        self._replies += p.Reply(200, p.Command.STATUS).encode()
        return super().write(data)


def test_client_ignores_stale_replies_and_board_errors_are_not_retried():
    with Client(StaleFirst(GoldenBoard(p.CoreConfig(SMALL)))) as client:
        config = client.start()
        assert config.size == SMALL and client.stats.stale_replies == 1
        with pytest.raises(p.BoardError, match="WRONG_STATE to FORWARD_DATA"):
            client.call(p.Command.FORWARD_DATA, bytes(4 + 6))
        assert client.stats.retries == 0


# ---------------------------------------------------------------- opening and validation


def test_open_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="frame"):  # an image frames cannot drive: refused before any build
        Board.open("sim", size=HRUSize(300, 8))
    with pytest.raises(ValueError, match="loop://"):
        Board.open("loop://")
    with pytest.raises(ValueError, match="serial:///dev/"):
        open_serial("serial:///dev/ttyUSB9?speed=9600")
    for rate in ("abc", "0", "-9600"):  # before any device is touched
        with pytest.raises(ValueError, match=f"the baud rate must be a positive integer, got '{rate}'"):
            open_serial(f"serial:///dev/ttyUSB9?baud={rate}")
    with pytest.raises(serial.SerialException, match="ttyEchoboardNone"):
        open_serial("serial:///dev/ttyEchoboardNone?baud=115200")
    assert DEFAULT_BAUD == link.DEFAULT_BAUD  # host.transports repeats it so the host need not import Amaranth


@pytest.fixture(scope="module")
def small_board():
    with Board.open("golden", size=SMALL, capabilities=p.Capability(0)) as board:
        yield board


@pytest.mark.parametrize("call, message", [
    (lambda b, u: b.forward(u[:, :2]), r"shape \(L, 3\)"),
    (lambda b, u: b.forward(np.zeros((65, 3), np.int64)), "exceeds the maximum of 64"),
    (lambda b, u: b.forward(np.zeros((0, 3), np.int64)), "at least one time step"),
    (lambda b, u: b.forward(u + (1 << 15)), r"16-bit signed words \[-32768, 32767\]"),
    (lambda b, u: b.forward(np.where(u > 0, np.nan, 0.0)), "NaN"),
    (lambda b, u: b.forward(u / 3), "must hold integers"),
    (lambda b, u: b.forward(u.astype(str)), "integer array"),
    (lambda b, u: b.echo(u, np.zeros(5, np.int64)), r"nudge must have shape \(4,\)"),
    (lambda b, u: b.echo(u, np.zeros((10, 4), np.int64)), "no echo stream mode"),
    (lambda b, u: b.echo(u, np.full(4, 1 << 31)), "32-bit"),
    (lambda b, u: b.write_params(hx.LinearParamsInt(np.zeros(4), np.zeros((3, 4)), np.zeros(4))), r"B must have shape"),
    (lambda b, u: b.write_params(hx.LinearParamsInt(np.full(4, 1 << 17), np.zeros((4, 3)), np.zeros(4))), "A must fit"),
    (lambda b, u: b.write(p.Region.ACC_A, [1]), "read-only"),
])
def test_bad_arguments_get_clear_errors_before_anything_is_sent(small_board, call, message):
    u = problem(SMALL, 10)[1]
    sent = small_board.link_stats["frames_sent"]
    with pytest.raises(ValueError, match=message):
        call(small_board, u)
    assert small_board.link_stats["frames_sent"] == sent


def test_a_socket_port_counts_every_waiting_byte():
    """pyserial's socket:// says at most 1 byte waits; ours counts them, so a reply is one read."""
    import socket
    import time

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = open_serial(f"socket://127.0.0.1:{server.getsockname()[1]}", timeout=1.0)
        peer, _ = server.accept()
        with peer:
            assert port.in_waiting == 0
            peer.sendall(bytes(range(200)))
            deadline = time.monotonic() + 5
            while port.in_waiting < 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert port.in_waiting == 200
            assert port.read(port.in_waiting) == bytes(range(200))
            assert port.in_waiting == 0
        port.close()
