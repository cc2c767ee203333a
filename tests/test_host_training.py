"""Training through the Board API (host/train.py BoardTarget) equals the in-process integer model.

golden_model.model runs one driver for both; these tests prove that the board behind the wire
protocol (the golden board model in process, the same model served on a TCP port as the
simulated board will be, a link that drops and corrupts bytes) gives the in-process target's
integers, losses and parameters bit for bit, including the overflow counts when accumulators wrap.
"""
import dataclasses
import json

import numpy as np
import pytest

from golden_board_tcp import golden_on_tcp
from echoboard.firmware.board_model import MODEL_BUILD_HASH
from echoboard.firmware.protocol import Capability, CoreConfig
from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import model
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.host import cli, plots
from echoboard.host.board import Board
from echoboard.host.datasets import load_dataset
from echoboard.host.train import BoardTarget, TrainConfig, adam_step, params_sha256, train
from echoboard.host.transports import Faults

FMT = FixedFormat()
P = 8


@pytest.fixture(scope="module")
def vowels():
    """A JapaneseVowels subset: 24 samples of three true lengths, in data set order (mixed lengths
    in every minibatch; full and part-filled chunks). Few lengths: few compilations."""
    d = load_dataset("JapaneseVowels", clip=15.0)
    idx = np.concatenate([np.flatnonzero(d.train.lengths == n)[:k] for n, k in ((9, 2), (15, 13), (21, 9))])
    idx = np.sort(idx)
    return d.train.x[idx], d.train.lengths[idx], d.train.labels[idx], d.n_inputs, d.n_classes


def few_steps(data, target=None, fmt=FMT, steps=3, batch=12):
    """``steps`` Adam steps over minibatches of ``data``; (losses, overflow events, final params)."""
    x, lengths, labels, n_inputs, n_classes = data
    params, _ = model.project(model.init_params(np.random.default_rng(5), n_inputs, n_classes, P), fmt)
    adam = {"t": 0, **{s: {k: np.zeros_like(params[k]) for k in model.TRAINED} for s in ("m", "v")}}
    losses, overflows = [], []
    for step in range(steps):
        idx = np.arange(step * batch, (step + 1) * batch) % len(labels)
        r = model.batch_gradients(params, x[idx], lengths[idx], labels[idx], "rhel", fmt, target)
        losses.append(r.loss)
        overflows.append(r.overflow_events)
        params, adam = adam_step(params, r.grads, adam, 0.05)
        params, _ = model.project(params, fmt)
    return losses, overflows, params


@pytest.fixture(scope="module")
def reference(vowels):
    return few_steps(vowels)


def assert_same_run(a, b):
    assert a[0] == b[0] and a[1] == b[1]  # losses and overflow counts, exactly
    assert params_sha256(a[2]) == params_sha256(b[2])


def golden(n_inputs, fmt=FMT, **kw):
    return Board.open("golden", size=HRUSize(P, n_inputs), fmt=fmt, **kw)


def test_board_path_equals_the_in_process_path(vowels, reference):
    with golden(vowels[3]) as board:
        got = few_steps(vowels, BoardTarget(board))
        stats = board.link_stats
    assert_same_run(reference, got)
    assert stats["retries"] == 0 and stats["payload_bytes_sent"] > 0


def test_board_over_tcp_equals_the_in_process_path(vowels, reference):
    config = CoreConfig(HRUSize(P, vowels[3]), FMT, capabilities=Capability.ECHO_STREAM, build_hash=MODEL_BUILD_HASH)
    with golden_on_tcp(config) as url, Board.open(url, fmt=FMT) as board:
        assert_same_run(reference, few_steps(vowels, BoardTarget(board)))


def test_a_faulty_link_ends_with_the_same_parameters(vowels, reference):
    with golden(vowels[3], faults=Faults(drop=2e-4, corrupt=2e-4, insert=2e-4), fault_seed=1, retries=64) as board:
        got = few_steps(vowels, BoardTarget(board))
        stats, injected = board.link_stats, board.client.port.injected
    assert_same_run(reference, got)
    assert stats["retries"] > 0 and sum(injected["to_board"].values()) > 0 and sum(injected["from_board"].values()) > 0


def test_wrapping_accumulators_are_counted_as_the_board_counts_them(vowels, monkeypatch):
    """A narrow accumulator wraps inside the minibatch sum: the counts agree step by step.

    The board adds each echo step onto the running sums; the in-process target does the same
    (lane after lane) whenever a wrap is possible. Its vmapped shortcut (each sample from zero,
    summed once) gives the same values but other counts, which is why it is only taken when no
    running sum can wrap.
    """
    fmt = FMT.replace(acc_width=32, acc_a_shift=0)
    inprocess = few_steps(vowels, fmt=fmt, steps=1, batch=24)
    assert inprocess[1][0] > 0
    with golden(vowels[3], fmt) as board:
        assert_same_run(inprocess, few_steps(vowels, BoardTarget(board), fmt=fmt, steps=1, batch=24))
    monkeypatch.setattr(model, "_max_term", lambda fmt: 0)  # pretend nothing can wrap: the shortcut
    shortcut = few_steps(vowels, fmt=fmt, steps=1, batch=24)
    assert shortcut[0] == inprocess[0] and shortcut[1] != inprocess[1]


def test_a_larger_board_runs_the_model_zero_padded(vowels, reference):
    with Board.open("golden", size=HRUSize(P + 3, vowels[3] + 2), fmt=FMT) as board:
        assert_same_run(few_steps(vowels, steps=1, batch=6), few_steps(vowels, BoardTarget(board), steps=1, batch=6))
    with golden(vowels[3] - 1) as board, pytest.raises(ValueError, match="the board has 8 oscillators and 11 inputs"):
        few_steps(vowels, BoardTarget(board), steps=1)


def _config(tmp_path, **kw):
    return TrainConfig(**{"dataset": "BasicMotions", "algo": "rhel", "epochs": 1, "batch": 20,
                          "oscillators": 4, "seed": 2, "out": str(tmp_path), **kw})


def test_train_on_golden_equals_inprocess_and_reports_the_link(tmp_path):
    board = train(_config(tmp_path / "golden", target="golden"), progress=False)
    inprocess = train(_config(tmp_path / "inprocess", target="inprocess"), progress=False)
    assert board["params_sha256"] == inprocess["params_sha256"] and board["history"] == inprocess["history"]
    assert inprocess["link"] is None
    link = board["link"]
    assert link["retries"] == 0 and 0.5 < link["efficiency"] < 1
    # per sample (40 train + 40 test forwards per epoch, 40 echoes), per minibatch 3 WRITEs, 4 READs, 1 clear
    assert link["requests"] >= 3 * 40 + 2 * 40
    for path in ("curves.png", "echo_retrace.png"):
        assert (tmp_path / "golden" / path).stat().st_size > 1000


def test_cli_train_with_faults_ends_as_the_clean_run(tmp_path, capsys):
    args = ["train", "--dataset", "BasicMotions", "--epochs", "1", "--batch", "20", "--oscillators", "4",
            "--seed", "2", "--target", "golden"]
    assert cli.main(args + ["--out", str(tmp_path / "clean")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "faulty"), "--faults", "3e-4"]) == 0
    clean, faulty = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("clean", "faulty"))
    assert faulty["params_sha256"] == clean["params_sha256"] and faulty["history"] == clean["history"]
    assert faulty["link"]["retries"] > 0 and "faults_injected" in faulty["link"]
    capsys.readouterr()
    assert cli.main(args + ["--out", str(tmp_path / "x"), "--target", "tcp://1.2.3.4"]) == 2
    assert "unknown target 'tcp://1.2.3.4'" in capsys.readouterr().err
    assert cli.main(args + ["--out", str(tmp_path / "x"), "--algo", "bptt", "--faults", "0.01"]) == 2
    assert "--faults needs a board link" in capsys.readouterr().err


@pytest.mark.slow  # ~40 s; the simulated board's training = golden: test_simulated_board_trains_bit_identically_...
def test_cli_train_defaults_to_the_simulated_board(tmp_path, capsys):
    """`echoboard train` on its defaults trains on the simulated board (built for the model's size,
    saying so) with energy features, bit-identically to the in-process reference."""
    small = ["--epochs", "1", "--batch", "20", "--oscillators", str(P)]
    assert cli.main(["train", *small, "--out", str(tmp_path / "sim")]) == 0
    err = capsys.readouterr().err
    assert f"simulated board (P = {P}, N = 12): building" in err and "simulated board ready" in err
    sim = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert (sim["dataset"], sim["target"], sim["settings"]["features"]) == ("BasicMotions", "sim", "energy")
    inprocess = train(TrainConfig(epochs=1, batch=20, oscillators=P, target="inprocess", out=str(tmp_path / "ref")),
                      progress=False)
    assert sim["params_sha256"] == inprocess["params_sha256"] and sim["history"] == inprocess["history"]
    assert sim["link"]["retries"] == 0 and sim["link"]["payload_bytes_sent"] > 0


def test_resume_refuses_other_features(tmp_path):
    cfg = _config(tmp_path, target="inprocess", features="raw")
    assert train(cfg, progress=False)["settings"]["features"] == "raw"
    with pytest.raises(ValueError, match=r"different settings.*'features': \('raw', 'energy'\)"):
        train(dataclasses.replace(cfg, features="energy", epochs=2, resume=True), progress=False)
    with pytest.raises(ValueError, match="unknown input features 'squares'"):
        train(dataclasses.replace(cfg, features="squares"), progress=False)


def test_the_echo_retraces_the_forward_trajectory(vowels, tmp_path):
    x, lengths, _, n_inputs, n_classes = vowels
    params, _ = model.project(model.init_params(np.random.default_rng(0), n_inputs, n_classes, P), FMT)
    q, uq = hx.quantize_linear_params(params, FMT), hx.quantize_inputs(x[0, :lengths[0]], FMT)
    forward, echo = plots.echo_trajectories(q, uq, FMT)
    assert forward.shape == (lengths[0] + 1, P) and np.abs(forward).max() > 0
    assert np.array_equal(forward, echo)
    zero = np.zeros(P, np.int64)
    assert np.array_equal(forward[-1], hx.forward(q, uq, zero, zero, FMT).y)
    assert plots.plot_echo_retrace(q, uq, FMT, str(tmp_path / "echo.png"), "test") == 0
    assert (tmp_path / "echo.png").stat().st_size > 1000


@pytest.mark.parametrize("core", ["pipelined", "serial"])
def test_simulated_board_trains_bit_identically_to_the_golden_board(vowels, reference, core):
    """Issue 5's acceptance: a few training steps on the Verilated board image (Board.open("sim"))
    give the golden model's losses, overflow counts and parameters bit for bit; also on the
    iCEBreaker's image (the serial core)."""
    with Board.open("sim", size=HRUSize(P, vowels[3]), fmt=FMT, timeout=5.0, core=core) as board:
        got = few_steps(vowels, BoardTarget(board))
        stats = board.link_stats
    assert_same_run(reference, got)
    assert stats["payload_bytes_sent"] > 0
