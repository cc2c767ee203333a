"""Self-test of the simulated board's harness and builder (sim/board_sim) with a loopback board image.

The board image (tests/board_sim_loopback.py) returns every byte XOR 0x5A through a small FIFO and
stalls at random in both directions, so every byte must survive valid/ready back-pressure, the
harness's ring buffers, the socket polling and reconnections.
"""
import io
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import serial

from board_sim_loopback import TOP_NAME, transform, write_verilog
from echoboard.sim.board_sim import (BoardStartError, BuildError, SimulatedBoard, build, build_key, parse_stats,
                           serve_forever)

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "build" / "board_sim"


@pytest.fixture(scope="module")
def verilog():
    return write_verilog(BUILD / f"{TOP_NAME}.v")


@pytest.fixture(scope="module")
def exe(verilog):
    return build(verilog, TOP_NAME, BUILD)


@pytest.fixture
def board(exe):
    with SimulatedBoard(exe) as b:
        yield b


def _exchange(sock: socket.socket, data: bytes, timeout: float = 30.0) -> bytes:
    """Send ``data`` from a thread (so neither side's buffers can deadlock) and read the reply."""
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    got = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    while len(got) < len(data) and time.monotonic() < deadline:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    sender.join(timeout)
    return bytes(got)


# ---------------------------------------------------------------- building


def test_build_is_cached_and_keyed_by_everything(verilog, exe):
    assert exe.is_file() and os.access(exe, os.X_OK)
    stamp = exe.parent.parent / ".echoboard-built"
    mtime = stamp.stat().st_mtime_ns
    t0 = time.monotonic()
    assert build(verilog, TOP_NAME, BUILD) == exe
    assert time.monotonic() - t0 < 2.0 and stamp.stat().st_mtime_ns == mtime  # reused, not rebuilt
    text = verilog.read_text()
    key = build_key(text, TOP_NAME)
    assert build_key(text + "\n// changed\n", TOP_NAME) != key
    assert build_key(text, "other_top") != key
    assert build_key(text, TOP_NAME, ["-GX=1"]) != key
    assert build_key(text, TOP_NAME) == key


def test_build_errors_are_clear(tmp_path, verilog):
    bad = tmp_path / "bad.v"
    bad.write_text("module broken(input clk; endmodule\n")
    with pytest.raises(BuildError, match="failed"):
        build(bad, "broken", tmp_path / "b")
    with pytest.raises(BuildError, match="no Verilog file"):
        build(tmp_path / "missing.v", "x", tmp_path / "b")
    with pytest.raises(BuildError, match="module name"):
        build(verilog, "not a name", tmp_path / "b")


# ---------------------------------------------------------------- the harness on its own


def test_max_cycles_runs_exactly_and_exits_cleanly(exe):
    proc = subprocess.run([str(exe), "--max-cycles", "100000"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("PORT ") and int(lines[0].split()[1]) > 0
    assert parse_stats(lines[-1])["cycles"] == 100000


def test_bad_option_surfaces_stderr(exe):
    with pytest.raises(BoardStartError, match="unknown option '--bogus'"):
        SimulatedBoard(exe, extra_args=["--bogus", "1"]).start()


def test_port_in_use_surfaces_stderr(exe):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(BoardStartError, match="bind"):
            SimulatedBoard(exe, port=taken.getsockname()[1]).start()


# ---------------------------------------------------------------- bytes through the board


def test_pyserial_socket_url_random_blocks(board):
    rng = random.Random(1)
    with serial.serial_for_url(board.url, timeout=10) as link:
        for size in (1, 2, 17, 255, 4096, 65537, 100_000):
            data = rng.randbytes(size)
            link.write(data)
            assert link.read(size) == transform(data), f"block of {size} bytes"
        link.timeout = 0.2
        assert link.read(1) == b""  # nothing extra arrives
    stats = board.stats()
    assert stats["rx_bytes"] == stats["tx_bytes"] == sum((1, 2, 17, 255, 4096, 65537, 100_000))
    assert stats["dropped_tx_bytes"] == 0


def test_plain_socket_large_block_and_many_small(board):
    rng = random.Random(2)
    with socket.create_connection(board.address) as sock:
        data = rng.randbytes(1_000_000)
        assert _exchange(sock, data) == transform(data)
        for _ in range(50):  # request/response latency path: small writes, each answered
            small = rng.randbytes(rng.randint(1, 40))
            sock.sendall(small)
            got = b""
            while len(got) < len(small):
                got += sock.recv(4096)
            assert got == transform(small)


def test_reconnect_keeps_board_running(board):
    rng = random.Random(3)
    before = board.stats()
    for i in range(3):
        with socket.create_connection(board.address) as sock:
            data = rng.randbytes(10_000 * (i + 1))
            assert _exchange(sock, data) == transform(data)
    # a client that sends and leaves without reading: the board keeps going and the next client
    # is served (replies still in flight may reach it, as on a real serial port: drain first)
    with socket.create_connection(board.address) as sock:
        sock.sendall(rng.randbytes(5000))
    with serial.serial_for_url(board.url, timeout=10) as link:
        time.sleep(0.2)
        link.reset_input_buffer()
        data = rng.randbytes(3000)
        link.write(data)
        assert link.read(len(data)) == transform(data)
    after = board.stats()
    assert after["clients"] - before["clients"] == 5
    assert after["cycles"] > before["cycles"] and after["seconds"] > before["seconds"]
    assert board.running()


def test_second_client_waits_for_the_first(board):
    with socket.create_connection(board.address) as first:
        assert _exchange(first, b"one") == transform(b"one")
        second = socket.create_connection(board.address)  # queued by the kernel, not yet served
        second.sendall(b"two")
        second.settimeout(0.3)
        with pytest.raises(socket.timeout):
            second.recv(10)
        assert _exchange(first, b"still first") == transform(b"still first")
    with second:
        second.settimeout(10)
        got = b""
        while len(got) < 3:
            got += second.recv(10)
        assert got == transform(b"two")


def test_idle_board_sleeps_but_wakes_on_bytes(exe):
    with SimulatedBoard(exe, idle_cycles=20_000) as board, socket.create_connection(board.address) as sock:
        time.sleep(0.3)  # far beyond 20k cycles: idle now
        s0 = board.stats()
        time.sleep(0.5)
        s1 = board.stats()
        rate = (s1["cycles"] - s0["cycles"]) / (s1["seconds"] - s0["seconds"])
        assert rate < 1e6, f"idle board still runs {rate:.0f} cycles/s"
        t0 = time.monotonic()
        assert _exchange(sock, b"wake up") == transform(b"wake up")
        assert time.monotonic() - t0 < 1.0


# ---------------------------------------------------------------- stopping


def test_stops_cleanly_on_sigterm_and_reports_stats(exe):
    board = SimulatedBoard(exe).start()
    with socket.create_connection(board.address) as sock:
        assert _exchange(sock, b"x" * 1000) == transform(b"x" * 1000)
        proc = board.proc
        assert board.stop() == 0
        assert proc.returncode == 0 and not board.running()
    assert board.final_stats["tx_bytes"] == 1000
    assert "client 1 connected" in board.stderr_text() and "stopped after" in board.stderr_text()
    assert board.stop() == 0  # idempotent
    with pytest.raises(RuntimeError):
        board.url


def test_stops_when_stdin_closes_and_on_sigint(exe):
    proc = subprocess.Popen([str(exe), "--exit-on-stdin-eof"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"PORT ")
    proc.stdin.close()  # what happens when the parent dies
    assert proc.wait(10) == 0
    assert b"stdin closed" in proc.stderr.read()
    proc.stdout.close(); proc.stderr.close()
    proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().startswith(b"PORT ")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert proc.stdout.read().startswith(b"STATS ")
    proc.stdout.close()


def test_serve_forever_until_stopped(exe):
    out, stop = io.StringIO(), threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", serve_forever(exe, 0, out=out, stop=stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while "PORT" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(out.getvalue().split()[1])
        with serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=10) as link:
            link.write(b"hello")
            assert link.read(5) == transform(b"hello")
    finally:
        stop.set()
        thread.join(30)
    assert result["rc"] == 0
    assert "cycles" in out.getvalue().splitlines()[-1]


def test_speed_benchmark_smoke(tmp_path, exe):
    """The benchmark code cannot rot (tiny sizes; no timing assertion beyond "it ran")."""
    from benchmarks import sim_board_speed

    out = tmp_path / "speed.json"
    result = sim_board_speed.main(["--bytes", "20000", "--cycles", "200000", "--poll-cycles", "64,1024",
                                   "--round-trips", "5", "--build-root", str(BUILD), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["free_running"][0]["cycles"] == 200000
    assert [r["poll_cycles"] for r in saved["streaming"]] == [64, 1024]
    assert all(r["cycles_per_s"] > 0 and 0 < r["bytes_per_cycle"] <= 1 for r in saved["streaming"])
    assert "M cycles/s" in sim_board_speed.format_table(result)
