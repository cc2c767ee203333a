"""``echoboard selftest`` (host/selftest.py) and ``verify --level board`` beyond ``sim``.

The golden board runs in process (no build); the simulated board is the default P16/N8 image
(cached under build/board_sim: ~0 s once built, the first build 20-50 s). A broken board is the
golden board model with one fault patched in: a region that reads back wrong, another build hash,
an echo that does not retrace.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from echoboard.firmware.board_model import GoldenBoard
from echoboard.firmware.protocol import READ_ONLY_REGIONS, LinearBlockRegion, Region, read_only_regions
from echoboard.host import selftest
from echoboard.host.board import Board
from echoboard.host.cli import main

FAST = ["--passes", "2", "--length", "48"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def _json(capsys, *argv) -> tuple[int, dict]:
    status, out, _ = _run(capsys, *argv, "--json")
    assert out.count("\n") == 1  # one JSON object, one line
    return status, json.loads(out)


def test_golden_passes_with_one_verdict_line(capsys):
    status, out, err = _run(capsys, "selftest", "--target", "golden", *FAST)
    assert status == 0, out + err
    assert out.startswith("selftest PASS: golden: ") and out.count("\n") == 1
    assert "2/2 ε = 0 echoes retraced bit for bit (L = 48)" in out


def test_sim_passes(capsys):
    status, result = _json(capsys, "selftest", "--target", "sim", *FAST)
    assert status == 0 and result["verdict"] == "PASS", result
    from echoboard.firmware.top import design_hash
    from echoboard.golden_model.formats import FixedFormat, HRUSize

    assert result["config"]["build_hash"] == design_hash(FixedFormat(), HRUSize(16, 8), 1).hex()


def test_json_shape(capsys):
    status, result = _json(capsys, "selftest", "--target", "golden", *FAST)
    assert status == 0
    assert set(result) == {"verdict", "target", "config", "checks", "seconds", "link"}
    assert [c["name"] for c in result["checks"]] == list(selftest.CHECKS)
    assert all({"name", "passed", "detail"} <= set(c) and c["passed"] is True for c in result["checks"])
    regions = result["checks"][1]
    # the golden board is the pipelined image's: its HRU's regions and an HSSM block's KIN
    assert set(regions["writable"]) | set(regions["read_only"]) == {r.name for r in LinearBlockRegion}
    assert set(regions["read_only"]) == {r.name for r in read_only_regions(LinearBlockRegion)} >= {"KIN"}
    retrace = result["checks"][2]
    assert [p["result"] for p in retrace["passes"]] == ["retraced"] * 2
    assert retrace["passes"][0]["overflows"] == {"forward": 0, "echo_plus": 0, "echo_minus": 0}


def test_a_region_that_reads_back_wrong_fails(capsys, monkeypatch):
    read = GoldenBoard._read

    def broken(self, payload):  # B word 37 has a stuck bit 3
        reply = read(self, payload)
        if payload[0] == Region.B:
            words = self.messages.unpack_read(payload)
            start = words[1]
            if start <= 37 < start + words[2]:
                k = 3 * (37 - start)  # 3-byte coefficients
                reply = reply[:k] + bytes([reply[k] | 0x08]) + reply[k + 1:]
        return reply

    monkeypatch.setattr(GoldenBoard, "_read", broken)
    status, out, _ = _run(capsys, "selftest", "--target", "golden", *FAST)
    assert status == 1
    assert out.startswith("selftest FAIL: golden: regions: B[37] read back") and out.count("\n") == 1
    assert "identify" not in out and "retrace" not in out


def test_another_build_hash_fails_identify(capsys, monkeypatch):
    import echoboard.host.board

    monkeypatch.setattr(echoboard.host.board, "MODEL_BUILD_HASH", bytes(range(16)))
    status, result = _json(capsys, "selftest", "--target", "golden", *FAST)
    assert status == 1 and result["verdict"] == "FAIL"
    identify = result["checks"][0]
    assert identify["passed"] is False and identify["build_hash"] == bytes(range(16)).hex()
    assert "build_hash 000102" in identify["detail"]
    assert all(c["passed"] for c in result["checks"][1:])


def test_an_echo_that_does_not_retrace_fails(capsys, monkeypatch):
    run_echo = GoldenBoard._run_echo

    def broken(self, p):
        reply = run_echo(self, p)
        self._regions[Region.Z1][2] ^= 1  # the -ε echo ends one LSB off
        return reply

    monkeypatch.setattr(GoldenBoard, "_run_echo", broken)
    status, out, _ = _run(capsys, "selftest", "--target", "golden", *FAST)
    assert status == 1
    assert out.startswith("selftest FAIL: golden: retrace: pass 0 (seed 0, L = 48): the ε = 0 echo ended on Z1[2]")


def test_a_wrap_is_reported_not_failed(capsys, monkeypatch):
    import echoboard.hdl.verilog

    random_case = echoboard.hdl.verilog.random_case
    monkeypatch.setattr(echoboard.hdl.verilog, "random_case", lambda *a, **k: random_case(*a, **k, wild=True))
    status, result = _json(capsys, "selftest", "--target", "golden", *FAST)
    retrace = result["checks"][2]
    assert status == 0 and result["verdict"] == "PASS"
    assert [p["result"] for p in retrace["passes"]] == [selftest.WRAPPED] * 2
    assert all(sum(p["overflows"].values()) > 0 for p in retrace["passes"])
    assert "0/2 ε = 0 echoes retraced bit for bit (L = 48), 2 wrapped, retrace not checked" == retrace["detail"]


def test_the_board_keeps_its_parameters_and_state():
    rng = np.random.default_rng(7)
    with Board.open("golden") as board:
        before = {}
        for region in Region:
            if region not in READ_ONLY_REGIONS:
                f = board.config.region_field(region)
                before[region] = rng.integers(-(1 << (f.width - 2)), 1 << (f.width - 2), board.config.region_depth(region))
                board.write(region, before[region])
        result = selftest.run_selftest(board, "golden", passes=2, length=40)
        assert result["verdict"] == "PASS", result
        for region, words in before.items():
            assert np.array_equal(board.read(region), words), region.name
        assert not board.read(Region.ACC_A).any() and not board.read(Region.ACC_B).any()


def test_errors_and_exit_codes(capsys):
    status, out, err = _run(capsys, "selftest", "--target", "inprocess")
    assert status == 2 and out == "" and err.count("\n") == 1 and "expected sim|golden|socket://" in err
    status, out, err = _run(capsys, "selftest", "--target", "socket://127.0.0.1:1")
    assert status == 1 and out == "" and err.count("\n") == 1 and err.startswith("echoboard selftest: error: ")
    status, out, err = _run(capsys, "selftest", "--target", "golden", "--length", "0")
    assert status == 2 and err.count("\n") == 1
    status, out, err = _run(capsys, "selftest", "--target", "golden", "--length", "70000")
    assert status == 2 and "max_length" in err and err.count("\n") == 1


def test_a_simulated_board_on_a_socket_twice(capsys):
    """selftest and verify reach a running board; the second session meets a used board."""
    from echoboard.sim import board_sim
    from echoboard.sim.board_image import ImageConfig, simulated_board_executable

    with board_sim.SimulatedBoard(simulated_board_executable(ImageConfig())) as board:
        for _ in range(2):
            status, out, err = _run(capsys, "selftest", "--target", board.url, *FAST)
            assert status == 0 and out.startswith(f"selftest PASS: {board.url}: "), out + err
            status, report = _json(capsys, "verify", "--level", "board", "--target", board.url, "-L", "40")
            assert status == 0 and report["mismatches"] == 0 and report["target"] == board.url
        status, out, _ = _run(capsys, "selftest", "--target", board.url, "--core", "serial", *FAST)
        assert status == 1 and "identify: capabilities 7, expected 1; build_hash" in out and "--core pipelined" in out


def test_verify_board_on_golden(capsys):
    status, report = _json(capsys, "verify", "--level", "board", "--target", "golden", "-L", "50")
    assert status == 0 and report["mismatches"] == 0 and report["target"] == "golden", report
    assert report["compared"] > 50 and report["cycles"] is None


def test_verify_board_on_golden_catches_a_wrong_echo(capsys, monkeypatch):
    """The golden board behind the port and the reference golden board share the fault; the
    integers are also compared with golden_model.hru_fixed, which does not."""
    run_echo = GoldenBoard._run_echo

    def broken(self, p):
        reply = run_echo(self, p)
        self._regions[Region.ACC_A][1] += 1
        return reply

    monkeypatch.setattr(GoldenBoard, "_run_echo", broken)
    status, report = _json(capsys, "verify", "--level", "board", "--target", "golden", "-L", "50")
    assert status == 1 and report["first_mismatch"]["where"] == "echo.acc_a[1]", report


def test_nonlinear_golden_and_sim_pass_selftest_and_verify(capsys):
    """--hru nonlinear: every nonlinear region reads back, ε = 0 echoes retrace, and verify
    --level board compares every integer and reply with 0 mismatches (the sim image at P4/N2)."""
    status, result = _json(capsys, "selftest", "--target", "golden", "--hru", "nonlinear", *FAST)
    assert status == 0 and result["verdict"] == "PASS", result
    assert set(result["checks"][1]["writable"]) == {"ALPHA", "B", "DELTA", "NUDGE", "Y0", "Z0", "Y1", "Z1", "W",
                                                    "BIAS", "SIGMA", "GAIN"}  # GAIN: an HSSM block's
    status, report = _json(capsys, "verify", "--level", "board", "--target", "golden", "--hru", "nonlinear", "-L", "30")
    assert status == 0 and report["mismatches"] == 0 and report["compared"] > 30, report
    status, report = _json(capsys, "verify", "--level", "board", "--target", "sim", "--hru", "nonlinear",
                           "-P", "4", "-N", "2", "-K", "1", "-L", "30")
    assert status == 0 and report["mismatches"] == 0 and report["compared"] > 30, report


def test_a_board_of_the_other_hru_is_refused_in_one_line(capsys):
    """A host that asks for one HRU and meets a board of the other gets one clear line, exit 2."""
    from echoboard.sim import board_sim
    from echoboard.sim.board_image import ImageConfig, simulated_board_executable

    with board_sim.SimulatedBoard(simulated_board_executable(ImageConfig())) as board:
        url = board.url
        status, out, err = _run(capsys, "selftest", "--target", url, "--hru", "nonlinear", *FAST)
    assert status == 2 and out == "" and err.count("\n") == 1
    assert f"the board at {url} holds the linear HRU, not the nonlinear one" in err
    with pytest.raises(ValueError, match="holds the nonlinear HRU: write_params takes NonlinearParamsInt"):
        from echoboard.golden_model import hru_fixed

        with Board.open("golden", hru="nonlinear") as nonlinear:
            nonlinear.write_params(hru_fixed.LinearParamsInt(np.zeros(16), np.zeros((16, 8)), np.ones(16)))
