"""Generated files go to one build folder (``--build-dir``, ``ECHOBOARD_BUILD_DIR``, else ./build),
and a finished Verilator build keeps no precompiled headers (~74 MB each, two per build)."""
from echoboard.sim.paths import ENV, build_root
from echoboard.sim.verilator import amaranth_to_verilog, build
from stream_dut import StreamFifo


def test_build_root_follows_the_environment_then_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV, "")  # empty: unset
    assert build_root("board_sim") == tmp_path / "build" / "board_sim"
    monkeypatch.setenv(ENV, "elsewhere")
    assert build_root() == tmp_path / "elsewhere"


def test_cli_build_dir_sets_the_build_root_for_its_children(tmp_path, monkeypatch):
    from echoboard.host.cli import main

    monkeypatch.setenv(ENV, "")  # restored after the test: main() sets it for this process
    monkeypatch.chdir(tmp_path)
    assert build_root() == tmp_path / "build"
    assert main(["verify", "--build-dir", "out", "--level", "board", "--target", "golden", "-P", "4", "-N", "2",
                 "-K", "1", "-L", "3", "--json"]) == 0
    assert build_root() == tmp_path / "out"


def test_a_finished_build_keeps_no_precompiled_header(tmp_path):
    verilog = amaranth_to_verilog(StreamFifo(depth=4), "stream_fifo", tmp_path / "stream_fifo.v")
    build_dir = build(verilog, "stream_fifo", tmp_path)
    assert (build_dir / "stream_fifo").is_file() and not list(build_dir.glob("*.gch"))
    (build_dir / "Vtop__pch.h.fast.gch").write_bytes(b"left by an older version")
    assert build(verilog, "stream_fifo", tmp_path) == build_dir  # a cache hit cleans it too
    assert not list(build_dir.glob("*.gch"))
