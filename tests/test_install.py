"""The built wheel, installed into a fresh venv and run from an empty folder, as a user would.

The wheel is built (``pip wheel --no-deps``, with build isolation: setuptools from PyPI, as for a
user) from a copy of this checkout's files, so the working tree is neither built in nor written
to, and installed with ``--no-deps`` into a new venv; the dependencies come from this test's own
environment through a ``.pth`` line (a path line only: the editable install's finder in that
environment is not activated, so ``echoboard``'s own modules can only come from the wheel, which
the first test checks). Slow: the wheel, the venv, two Verilator builds, a small bitstream and a one-epoch run take minutes.
"""
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["-P", "4", "-N", "2", "-K", "1", "--max-length", "64"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """{"bin": the venv's bin folder, "site": its site-packages, "env": the environment to run in}."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp / "dist"), str(source)], check=True, capture_output=True, text=True)
    [wheel] = (tmp / "dist").glob("echoboard-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies-of-the-test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ECHOBOARD_BUILD_DIR", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return {"bin": venv / "bin", "site": site, "env": env}


def run_cli(installed, cwd: Path, *argv, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["bin"] / "echoboard"), *argv], cwd=cwd, env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_the_modules_and_their_data_come_from_the_wheel(installed, tmp_path):
    import echoboard.firmware
    import echoboard.hdl
    import echoboard.host.cli

    code = (f"import importlib.resources, {echoboard.host.cli.__name__} as m; print(m.__file__); "
            f"print(*(len(list((importlib.resources.files(p) / 'baselines').glob('*.json'))) "
            f"for p in {[echoboard.firmware.__name__, echoboard.hdl.__name__]}))")
    where, baselines = subprocess.run([str(installed["bin"] / "python"), "-c", code], cwd=tmp_path,
                                      env=installed["env"], check=True, capture_output=True, text=True).stdout.splitlines()
    assert Path(where).is_relative_to(installed["site"]), where
    assert all(int(n) > 0 for n in baselines.split()), baselines  # echoboard build compares against them
    version = run_cli(installed, tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.split() == ["echoboard", "0.1.0"], version


def test_sim_board_serves_from_an_empty_folder_and_builds_there(installed, tmp_path):
    """``echoboard sim-board`` builds the board image under ./build and listens (a PORT line, then
    Ctrl-C); nothing lands in the installed packages."""
    before = files_under(installed["site"])
    proc = subprocess.Popen([str(installed["bin"] / "echoboard"), "sim-board", *SMALL], cwd=tmp_path,
                            env=installed["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline, line = time.monotonic() + 600, ""
            while not line.startswith("PORT ") and time.monotonic() < deadline and proc.poll() is None:
                if sel.select(5):
                    line = proc.stdout.readline()
        assert line.startswith("PORT "), (line, proc.poll())
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped after" in out
    assert files_under(installed["site"]) == before
    assert list((tmp_path / "build" / "board_sim").glob("*/obj/board_sim"))


def test_verify_core_runs_from_an_empty_folder_and_writes_only_there(installed, tmp_path):
    before = files_under(installed["site"])
    run = run_cli(installed, tmp_path, "verify", "--level", "core", *SMALL, "-L", "8", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["mismatches"] == 0
    assert files_under(installed["site"]) == before
    assert (tmp_path / "build").is_dir()


def test_train_and_build_run_from_an_empty_folder_and_write_only_there(installed, tmp_path):
    """One epoch in process and a small iCEBreaker bitstream, from an empty folder: their output
    (the run folder, the bitstream under ./build) lands there, nothing in the installed packages."""
    before = files_under(installed["site"])
    run = run_cli(installed, tmp_path, "train", "--dataset", "BasicMotions", "--target", "inprocess", "--epochs", "1",
                  "--out", "run")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 1
    build = run_cli(installed, tmp_path, "build", "--board", "icebreaker", "-P", "4", "-N", "2", "--json")
    assert build.returncode == 0, build.stderr[-3000:]
    bitstream = Path(json.loads(build.stdout)["bitstream"])
    assert bitstream.is_file() and (tmp_path / "build") in bitstream.resolve().parents
    assert files_under(installed["site"]) == before
