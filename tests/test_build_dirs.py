"""Generated files go to one build folder (``--build-dir``, ``ECHOBOARD_BUILD_DIR``, else ./build).
(That a finished Verilator build keeps no precompiled headers is checked on the shared FIFO build in
test_sim_infrastructure.)"""
from echoboard.sim.paths import ENV, build_root


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
