"""HSSM blocks on a board: the golden board's outputs passes (docs/protocol.md, *Per-step streams*)
against golden_model.hru_block, their replies and refusals, host.board_blocks.BoardBlocks against the
in-process integer blocks, and ``train --blocks`` on a board against ``--target inprocess``.

Every agreement check is also run on a corrupted expectation, to show that it would fail."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from echoboard.firmware import protocol as p
from echoboard.firmware.board_model import GoldenBoard
from echoboard.golden_model import hru_block as hb
from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import hssm
from echoboard.golden_model.formats import HRUSize
from echoboard.host import cli
from echoboard.host.board import Board
from echoboard.host.board_blocks import BoardBlocks
from echoboard.host.train import TrainConfig, train

from block_cases import random_block


def _block(hru: str, P: int, N: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    fmt, _, bq = random_block(hru, P, N, rng)
    return fmt, bq, rng


def _write_block(board: Board, bq) -> None:
    board.write_params(bq.q)
    if board.config.hru == "nonlinear":
        board.write(p.NonlinearBlockRegion.GAIN, np.asarray(bq.gain))


@pytest.mark.parametrize("hru", hb.HRU_KINDS)
@pytest.mark.parametrize("nudge_kind", ["stream", "constant"])
def test_outputs_passes_are_the_integer_block(hru, nudge_kind):
    """Several chunks each way: y_k, du_j, the final states, the HRU's accumulators, KIN and the
    counters of the golden board equal hru_block's, and a second echo adds onto the first."""
    P, N, L = 4, 3, 150
    fmt, bq, rng = _block(hru, P, N)
    base = hb.base_format(fmt)
    uq = hx.quantize_inputs(np.clip(rng.normal(size=(L, N)), -4, 4), base)
    nudge = (rng.integers(-2 ** 12, 2 ** 12, (L, P)) if nudge_kind == "stream" else rng.integers(-2 ** 12, 2 ** 12, P))
    with Board.open("golden", size=HRUSize(P, N, 1024), fmt=fmt) as board:
        assert L > max(board.messages.max_output_steps(s) for s in (p.PassState.FORWARD, p.PassState.ECHO))
        _write_block(board, bq)
        result, y = board.forward_outputs(uq)
        want = hb.forward(hru, bq, jnp.asarray(uq), fmt)
        assert np.array_equal(y, want.positions) and int(result.overflows) == int(want.overflows)
        assert np.array_equal(result.pos_sum, np.sum(want.positions, axis=0))  # no wrap at this size
        assert np.array_equal(board.read(p.Region.Y0), want.y) and np.array_equal(board.read(p.Region.Z0), want.z)
        echo = hb.echo(hru, bq, jnp.asarray(uq), want.y, want.z,
                       jnp.asarray(np.broadcast_to(nudge, (L, P))), fmt)
        board.clear_gradients()
        for repeat in (1, 2):  # the second echo from the same state adds the same terms again
            board.write(p.Region.Y0, want.y)
            board.write(p.Region.Z0, want.z)
            counters, du = board.echo_outputs(uq, nudge)
            assert np.array_equal(du, echo.du)
            assert np.array_equal(board.read(board.config.regions.KIN), repeat * np.asarray(echo.kin))
            for got, wanted in zip(board.read_gradients(), echo.acc):
                assert np.array_equal(got, repeat * np.asarray(wanted))
            assert list(counters[:2]) == list(np.asarray(echo.overflows)[:2])
        assert not np.array_equal(du, np.asarray(echo.du) + np.eye(L, N, dtype=np.int64))  # a corrupted du is seen


def test_outputs_pass_counts_wraps_as_the_block_does():
    """Nudges at the edge of the state word: the echoes wrap, and the board's counters (one echo
    from cleared accumulators) are hru_block's, every one of them non-zero."""
    P, N, L = 4, 3, 40
    fmt, bq, rng = _block("linear", P, N, seed=3)
    lo, hi = -(1 << (fmt.state_width - 1)), (1 << (fmt.state_width - 1)) - 1
    uq = hx.quantize_inputs(np.clip(rng.normal(size=(L, N)), -4, 4), fmt)
    nudge = rng.integers(lo, hi, (L, P))
    with Board.open("golden", size=HRUSize(P, N, 256), fmt=fmt) as board:
        _write_block(board, bq)
        board.forward_outputs(uq)
        y, z = board.read(p.Region.Y0), board.read(p.Region.Z0)
        board.clear_gradients()
        counters, du = board.echo_outputs(uq, nudge)
    echo = hb.echo("linear", bq, jnp.asarray(uq), y, z, jnp.asarray(nudge), fmt)
    assert np.all(counters > 0) and list(counters) == list(np.asarray(echo.overflows))
    assert np.array_equal(du, echo.du)


def _frames(board: GoldenBoard, requests):
    """(status, payload) of each request sent to ``board`` (a fresh seq each)."""
    out = []
    for seq, (cmd, payload) in enumerate(requests):
        (frame,) = p.Deframer().feed(board.receive(p.Request(seq % 256, cmd, payload).encode()))
        reply = p.Reply.decode(frame)
        out.append((reply.status, reply.payload))
    return out


def test_outputs_replies_are_double_buffered_and_outputs_answers_the_last_chunk():
    config = p.CoreConfig(HRUSize(4, 2, 1000), capabilities=p.PIPELINED_CAPABILITIES)
    board, m = GoldenBoard(config), p.Messages(config)
    per = m.max_output_steps(p.PassState.FORWARD)
    L = 2 * per + 3
    inputs = [[k % 7 - 3, 1] for k in range(L)]
    chunks = m.data_payloads(inputs, outputs=True)
    replies = _frames(board, [(p.Command.OUTPUTS, b""),
                              (p.Command.FORWARD_START, m.forward_start.pack(length=L, flags=3)),
                              (p.Command.OUTPUTS, b""),
                              *[(p.Command.FORWARD_DATA, c) for c in chunks],
                              (p.Command.OUTPUTS, b""), (p.Command.OUTPUTS, b"")])
    assert all(status == p.Status.OK for status, _ in replies[:2])
    assert replies[0][1] == m.pack_outputs(p.PassState.FORWARD, 0, [])  # nothing yet after reset
    assert replies[2][0] == p.Status.WRONG_STATE  # not during a pass
    parts = [m.unpack_outputs(p.PassState.FORWARD, payload) for _, payload in replies[3:]]
    assert [(first, len(rows)) for first, rows, _ in parts] == [(0, 0), (0, per), (per, per), (2 * per, 3), (2 * per, 3)]
    assert [bool(tail) for *_, tail in parts] == [False, False, True, False, False]  # the final result
    assert m.forward_result.unpack(parts[2][2])["overflow_forward"] == 0
    # a new START forgets them; an ABORTed pass leaves none
    after = _frames(board, [(p.Command.FORWARD_START, m.forward_start.pack(length=L, flags=3)),
                            (p.Command.FORWARD_DATA, chunks[0]), (p.Command.ABORT, b""), (p.Command.OUTPUTS, b"")])
    assert [s for s, _ in after] == [p.Status.OK] * 4 and after[3][1] == m.pack_outputs(p.PassState.FORWARD, 0, [])


def test_outputs_requests_are_refused_clearly():
    config = p.CoreConfig(HRUSize(4, 2, 100), capabilities=p.PIPELINED_CAPABILITIES)
    board, m = GoldenBoard(config), p.Messages(config)
    too_long = m.forward_data.pack(offset=0, inputs=[0] * 2 * (m.max_output_steps(p.PassState.FORWARD) + 1))
    before = board.stores()
    got = _frames(board, [(p.Command.FORWARD_START, m.forward_start.pack(length=90, flags=p.ForwardFlags.OUTPUTS)),
                          (p.Command.FORWARD_DATA, too_long), (p.Command.ABORT, b""),
                          (p.Command.ECHO_START, m.echo_start.pack(length=5, mode=4, nudge=[0] * 4)),
                          (p.Command.OUTPUTS, b"\x00")])
    assert [s for s, _ in got] == [p.Status.OK, p.Status.BAD_LENGTH, p.Status.OK, p.Status.BAD_ARGUMENT,
                                   p.Status.BAD_LENGTH]
    # a board without the capabilities: OUTPUTS is unknown, the bits are reserved
    plain = GoldenBoard(dataclasses.replace(config, capabilities=p.Capability.ECHO_STREAM))
    got = _frames(plain, [(p.Command.OUTPUTS, b""),
                          (p.Command.FORWARD_START, m.forward_start.pack(length=5, flags=p.ForwardFlags.OUTPUTS)),
                          (p.Command.ECHO_START, m.echo_start.pack(length=5, mode=p.ECHO_OUTPUTS_FLAG, nudge=[0] * 4))])
    assert [s for s, _ in got] == [p.Status.UNKNOWN_COMMAND, p.Status.BAD_ARGUMENT, p.Status.BAD_ARGUMENT]
    with Board.open("golden", size=HRUSize(4, 2, 100), capabilities=p.Capability.ECHO_STREAM) as board:
        with pytest.raises(ValueError, match="no forward outputs"):
            board.forward_outputs(np.zeros((3, 2), np.int64))
        arch = hssm.Architecture(2, 2, 1, 2, 4)
        with pytest.raises(ValueError, match="no per-step streams for HSSM blocks"):
            BoardBlocks(arch, board)
    assert before["pass"] is None


def _stack_case(hru: str):
    rng = np.random.default_rng(4)
    arch = hssm.Architecture(inputs=3, classes=3, blocks=2, hidden=4, oscillators=5, hru=hru)
    fmt = hb.default_format(hru)
    params, _ = hssm.project(hssm.init_params(rng, arch), arch, fmt)
    x = rng.normal(size=(3, 60, 3))
    lengths, labels = np.array([60, 60, 35]), np.array([0, 2, 1])
    return hssm.calibrate(params, x, lengths, arch), x, lengths, labels, arch, fmt


@pytest.mark.parametrize("hru", hb.HRU_KINDS)
@pytest.mark.parametrize("board_size", [(5, 4), (8, 6)], ids=["sized", "padded"])
def test_board_blocks_equal_the_in_process_blocks(hru, board_size):
    """A minibatch's loss, gradients, statistics and counters with the blocks on a golden board (of
    the blocks' size, or larger and zero-padded) equal hssm.FixedBlocks' bit for bit."""
    params, x, lengths, labels, arch, fmt = _stack_case(hru)
    want = hssm.batch_gradients(params, x, lengths, labels, arch, "rhel", fmt)
    with Board.open("golden", size=HRUSize(*board_size, 256), fmt=fmt) as board:
        got = hssm.batch_gradients(params, x, lengths, labels, arch, "rhel", fmt, blocks=BoardBlocks(arch, board))
    assert got.loss == want.loss and got.correct == want.correct and got.clipped == want.clipped
    assert got.overflow_events == want.overflow_events
    assert set(got.grads) == set(want.grads) and all(np.array_equal(got.grads[k], want.grads[k]) for k in want.grads)
    assert all(np.array_equal(got.stats[k], want.stats[k]) for k in want.stats)
    assert any(np.any(want.grads[f"block0.{n}"]) for n in hb.PARAM_NAMES[hru])  # the blocks did learn something
    changed = {**want.grads, "block0.delta": want.grads["block0.delta"] * (1 + 1e-15) + 1e-300}
    assert not all(np.array_equal(got.grads[k], changed[k]) for k in want.grads)


@pytest.fixture(scope="module")
def inprocess_runs(tmp_path_factory):
    """The in-process reference of the runs below, once per HRU kind."""
    return {hru: _train_blocks(tmp_path_factory.mktemp("inprocess"), "inprocess", hru) for hru in hb.HRU_KINDS}


def _train_blocks(out, target: str, hru: str) -> dict:
    """Three minibatches of a 2-block HSSM of P = 4, H = 2: the simulated board of that size is
    test_board_image's (P4/N2, linear and nonlinear), built once for the suite."""
    return train(TrainConfig(dataset="BasicMotions", algo="rhel", target=target, epochs=1, batch=16, blocks=2,
                             hidden=2, oscillators=4, hru=hru, seed=5, out=str(out / target)), progress=False)


@pytest.mark.parametrize("target,hru", [("golden", "linear"), ("golden", "nonlinear"), ("sim", "linear"),
                                        pytest.param("sim", "nonlinear", marks=pytest.mark.slow)])
def test_train_blocks_on_a_board_equals_in_process(tmp_path, inprocess_runs, target, hru):
    """Issue 11's acceptance: ``train --blocks 2`` on the golden board and on the Verilated board image
    (every HRU block through the outputs passes) ends with the in-process run's parameters bit for bit.
    The nonlinear image's run (~38 s) is with make test-slow; the default suite compares that image's
    outputs passes byte for byte with the golden board (test_board_outputs), which trains bit-identically."""
    board, inprocess = _train_blocks(tmp_path, target, hru), inprocess_runs[hru]
    assert board["params_sha256"] == inprocess["params_sha256"]
    assert board["history"][0]["test_accuracy"] == inprocess["history"][0]["test_accuracy"]
    assert board["link"]["retries"] == 0 and board["link"]["requests"] > 0 and inprocess["link"] is None
    assert board["architecture"] == inprocess["architecture"] and board["architecture"]["hru"] == hru


def test_board_blocks_refuse_a_board_that_cannot_hold_them():
    arch = hssm.Architecture(inputs=3, classes=2, blocks=2, hidden=4, oscillators=5, hru="nonlinear")
    with Board.open("golden", size=HRUSize(5, 4, 64)) as linear:
        with pytest.raises(ValueError, match="holds the linear HRU; the model's blocks are nonlinear"):
            BoardBlocks(arch, linear)
    with Board.open("golden", size=HRUSize(4, 4, 64), fmt=hb.default_format("nonlinear")) as small:
        with pytest.raises(ValueError, match="4 oscillators and 4 inputs; the model's blocks need at least 5 and 4"):
            BoardBlocks(arch, small)
    with Board.open("golden", size=HRUSize(100, 8, 64), fmt=hb.default_format("nonlinear")) as wide:
        with pytest.raises(ValueError, match="room for 0 forward and .* echo steps of outputs"):
            BoardBlocks(arch, wide)
