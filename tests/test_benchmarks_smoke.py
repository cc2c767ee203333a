"""Smoke test of benchmarks/: tiny sizes, so the benchmark code cannot rot. No timing assertions."""
import json
import subprocess
from pathlib import Path

import pytest

import numpy as np

from benchmarks import core_cycles, gradient_cost, run_all


def test_gradient_cost_tiny_timing_and_agreement(tmp_path):
    out = tmp_path / "gc.json"
    result = gradient_cost.main(["--lengths", "24", "--repeats", "2", "--min-time", "0", "--p", "4", "--n", "2",
                                 "--no-memory", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["config"]["lengths"] == [24]
    for length in ("24",):
        timing = saved["timing"][length]
        assert set(timing) == set(gradient_cost.METHODS)
        for m in gradient_cost.METHODS:
            assert len(timing[m]["samples_s"]) == 2 and timing[m]["median_s"] > 0
        # the three gradients are the same gradient (linear HRU: RHEL = BPTT)
        for k in ("A", "B", "delta"):
            assert timing["rhel_float"]["cosine_vs_bptt"][k] > 1 - 1e-9
        for k in ("A", "B"):
            assert timing["rhel_fixed"]["cosine_vs_bptt"][k] > 0.99
        assert sum(timing["rhel_fixed"]["overflows"].values()) == 0
    assert "ms/sample" in gradient_cost.format_table(result)


def test_gradient_cost_memory_child_and_run_all(tmp_path, capsys):
    out = tmp_path / "gc.json"
    assert run_all.main(["--only", "gradient_cost", "--lengths", "64", "--repeats", "1", "--min-time", "0",
                         "--p", "4", "--n", "2", "--methods", "rhel_float", "--baseline-length", "8",
                         "--memory-repeats", "1", "--out", str(out)]) == 0
    mem = json.loads(out.read_text())["memory"]["rhel_float"]
    assert mem["baseline"]["length"] == 8
    m64 = mem["64"]
    assert m64["peak_rss_bytes"] > 0 and np.isfinite(m64["peak_rss_over_baseline_bytes"])
    assert m64["xla_total_bytes"] > 0
    if m64["peak_reset_before_run"]:  # Linux: the peak RSS of the run itself
        assert m64["run_transient_bytes"] >= 0
    assert "gradient_cost done" in capsys.readouterr().out


@pytest.mark.slow  # 70 s (a simulated-board run); the targets' equality is also tests/test_host_training's
def test_board_training_on_every_target_is_bit_identical(tmp_path, capsys):
    out = tmp_path / "bt.json"
    assert run_all.main(["--only", "board_training", "--models", "single", "--samples", "8", "--epochs", "1",
                         "--warmup", "0", "--oscillators", "8", "--out", str(out)]) == 0  # P = 8, N = 12: the image tests build
    saved = json.loads(out.read_text())["models"]["single"]
    assert saved["bit_identical"] and set(saved["targets"]) == {"sim", "golden", "inprocess"}
    for name, r in saved["targets"].items():
        assert r["samples"] == 8 and r["samples_per_s"] > 0
        assert (r["link"] is None) == (name == "inprocess")
    for name in ("sim", "golden"):
        link = saved["targets"][name]["link"]
        assert link["retries"] == 0 and 0.5 < link["efficiency"] < 1 and link["payload_bytes_per_s"] > 0
    assert "single: bit-identical parameters on every target: True" in capsys.readouterr().out


def test_board_training_projects_the_hssm_onto_real_boards(tmp_path, capsys):
    """HSSM rows (golden and in process here; the simulated board's in the full run) and each board's
    projection: the smaller of the core's and the link's rate, the serial core refusing the HSSM."""
    out = tmp_path / "bt.json"
    assert run_all.main(["--only", "board_training", "--models", "single,hssm", "--targets", "golden,inprocess",
                         "--samples", "4", "--epochs", "1", "--warmup", "0", "--out", str(out)]) == 0
    models = json.loads(out.read_text())["models"]
    assert models["hssm"]["bit_identical"] and models["hssm"]["config"]["blocks"] == 2
    single, hssm = models["single"]["projection"], models["hssm"]["projection"]
    assert not hssm["icebreaker"]["holds_model"] and single["icebreaker"]["holds_model"]
    for b in (single["ulx3s-85f"], single["icebreaker"], hssm["ulx3s-85f"]):
        assert b["samples_per_s"] == min(b["core_samples_per_s"], b["link_samples_per_s"]) > 0
        assert b["limit"] == ("core" if b["core_samples_per_s"] < b["link_samples_per_s"] else "link")
    # an HSSM sample carries every step's outputs: far more bytes than the single HRU's position sums
    assert hssm["ulx3s-85f"]["wire_bytes_per_sample"] > 5 * single["ulx3s-85f"]["wire_bytes_per_sample"]
    assert "hssm: bit-identical parameters on every target: True" in capsys.readouterr().out


@pytest.mark.slow  # two Verilator builds and L = 2000 runs: 2.5-5 min, the default suite's longest test
def test_core_cycles_linear_and_nonlinear_rows(tmp_path):
    out = tmp_path / "cc.json"
    core_cycles.main(["--configs", "4x2x2", "--lengths", "8", "--serial", "4x2", "--out", str(out)])
    saved = json.loads(out.read_text())
    [serial] = saved["serial"]
    assert serial["mismatches"] == 0 and serial["compared"] > 0
    for v in serial["phases"].values():  # the serial core's cycle model is exact: L steps, plus the
        assert v["cycles"] == 8 * v["model_per_step"] + 2  # command's handshake and done cycles
    results = saved["results"]
    assert [r["hru"] for r in results] == ["linear", "nonlinear"]
    for r, write_back in zip(results, (16, 24)):  # R = 2: the pipeline's write-back is the ideal
        assert r["mismatches"] == 0 and r["compared"] > 0
        for v in r["phases"].values():
            assert v["oscillator_ideal_per_step"] == v["resource_bound_per_step"] == write_back
            assert v["cycles"] >= 8 * write_back


@pytest.mark.slow  # 80 s of child processes; the default suite stays under 20 min
def test_stack_cost_tiny_timing_memory_and_table(tmp_path):
    from benchmarks import stack_cost

    out = tmp_path / "sc.json"
    methods = ["bptt_float", "rhel_float", "rhel_fixed", "rhel_fixed_lockstep"]
    stack_cost.main(["--lengths", "32", "--repeats", "1", "--blocks", "2", "--hidden", "4", "--oscillators", "4",
                     "--inputs", "2", "--baseline-length", "8", "--methods", ",".join(methods), "--out", str(out)])
    saved = json.loads(out.read_text())
    timing = saved["timing"]["32"]
    assert set(timing) == set(methods)
    assert timing["rhel_float"]["min_cosine_vs_bptt"] > 1 - 1e-9 and timing["rhel_fixed"]["min_cosine_vs_bptt"] > 0.99
    assert timing["rhel_fixed_lockstep"]["min_cosine_vs_bptt"] > 0.99
    assert timing["rhel_fixed"]["overflow_events"] == timing["rhel_fixed_lockstep"]["overflow_events"] == 0
    for m in methods:
        assert saved["memory"][m]["32"]["run_peak_bytes"] > 0
    assert "| 32 | rhel_fixed |" in stack_cost.format_table(saved)


def _train_parser():
    """`echoboard train`'s own argument parser."""
    import argparse

    from echoboard.host.train import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser


def _fake_training(calls: list):
    """A stand-in for the CLI run hssm_accuracy starts: records the command, writes a summary."""
    def run(cmd, **kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"test_accuracy": 0.5, "train_accuracy": 0.5, "overflow_events": 0,
                                                      "params_sha256": "x"}))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_hssm_accuracy_reuses_runs_and_tabulates(tmp_path, monkeypatch):
    """The accuracy table from a tiny grid; a second call reuses the runs (no training). The runs
    are stand-ins: the commands themselves are the CLI's, tested on their own."""
    from benchmarks import hssm_accuracy

    calls = []
    monkeypatch.setattr(hssm_accuracy.subprocess, "run", _fake_training(calls))
    cells = (("BasicMotions", "linear", 1, hssm_accuracy.DEFAULTS), ("GunPoint", "linear", 1, hssm_accuracy.DEFAULTS))
    monkeypatch.setattr(hssm_accuracy, "CELLS", cells)
    monkeypatch.setattr(hssm_accuracy, "CONTROL_CELLS", cells[1:])
    args = ["--seeds", "0", "--jobs", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "acc.json")]
    first = hssm_accuracy.main(args)
    assert [r["algo"] for r in first["runs"]] == ["bptt", "rhel", "bptt", "rhel", "rhel-float"] and len(calls) == 5
    assert first["runs"][1]["command"].startswith("echoboard train --dataset BasicMotions --blocks 2")
    monkeypatch.setattr(hssm_accuracy.subprocess, "run", None)  # reused: nothing may train again
    assert hssm_accuracy.main(args)["runs"] == first["runs"]
    table = hssm_accuracy.format_table(first)
    assert "| BasicMotions | linear | 1 | `--lr 0.01 --delta-init log-uniform` (defaults) | **50.0** (50.0) | " \
           "**50.0** (50.0) | +0.0 | — |" in table
    assert "| GunPoint | linear | 1 | `--lr 0.01 --delta-init log-uniform` (defaults) | **50.0** (50.0) | " \
           "**50.0** (50.0) | +0.0 | **50.0** (50.0), +0.0 vs BPTT |" in table


def test_hssm_accuracy_defaults_are_the_training_defaults():
    """The cells labelled defaults spell out exactly what `echoboard train --blocks K` does without options."""
    from benchmarks import hssm_accuracy
    from echoboard.host.train import TrainConfig

    spelled = vars(_train_parser().parse_args(["--blocks", "2", *hssm_accuracy.DEFAULTS.split()]))
    implied = TrainConfig(blocks=2)
    assert (spelled["lr"], spelled["delta_init"]) == (implied.lr, implied.delta_init)


def test_hssm_accuracy_resumes_an_interrupted_run_and_keeps_other_runs(tmp_path, monkeypatch):
    """A run with a checkpoint but no summary continues with --resume; a partial re-run keeps the
    JSON's other runs."""
    from benchmarks import hssm_accuracy

    calls = []
    monkeypatch.setattr(hssm_accuracy.subprocess, "run", _fake_training(calls))
    monkeypatch.setattr(hssm_accuracy, "CELLS", (("GunPoint", "linear", 1, "--lr 0.02"),))
    out = tmp_path / "acc.json"
    run = {"hru": "linear", "epochs": 1, "options": "--lr 0.02", "algo": "bptt", "seed": 0, "test_accuracy": 0.5,
           "overflow_events": 0, "wall_s": 1.0}
    out.write_text(json.dumps({"runs": [{**run, "dataset": "BasicMotions"}, {**run, "dataset": "GunPoint", "epochs": 2},
                                        {**run, "dataset": "GunPoint", "old": 1}]}))
    interrupted = tmp_path / "runs" / "GunPoint-linear-bptt-0-epochs-1-lr-0.02"
    interrupted.mkdir(parents=True)
    (interrupted / "checkpoint.npz").write_bytes(b"")
    result = hssm_accuracy.main(["--seeds", "0", "--jobs", "1", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert [c[-1] == "--resume" for c in calls] == [True, False]  # bptt was interrupted, rhel never ran
    assert [(r["dataset"], r["epochs"], r["algo"], "old" in r) for r in result["runs"]] == [
        ("BasicMotions", 1, "bptt", False), ("GunPoint", 2, "bptt", False),  # another cell: kept
        ("GunPoint", 1, "bptt", False), ("GunPoint", 1, "rhel", False)]
    assert json.loads(out.read_text())["runs"] == result["runs"]
    calls.clear()
    (tmp_path / "runs" / "GunPoint-linear-rhel-0-epochs-1-lr-0.02" / "summary.json").unlink()
    collected = hssm_accuracy.main(["--seeds", "0", "--runs", str(tmp_path / "runs"), "--out", str(out), "--finished-only"])
    assert calls == [] and [(r["dataset"], r["epochs"], r["algo"]) for r in collected["runs"]] == [
        ("BasicMotions", 1, "bptt"), ("GunPoint", 2, "bptt"), ("GunPoint", 1, "rhel"),  # the stored rhel run stays
        ("GunPoint", 1, "bptt")]


def test_check_gradients_table_names_the_command_of_each_report(tmp_path):
    from benchmarks import check_gradients_table
    from echoboard.golden_model import report

    path = tmp_path / "check_gradients_x.json"
    path.write_text(json.dumps(report.check_stack_gradients("linear", 2, 4, 48, 4, 2)))
    line = check_gradients_table.table([path]).splitlines()[-1]
    assert line.startswith("| `echoboard check-gradients --hru linear --blocks 2 --hidden 4 --length 48 --oscillators 4 "
                           "--inputs 2 --epsilon 0.125 --seed 0` | 22 | 1.000000 /")
    assert line.endswith("| True | 0 |")


def test_long_range_table_names_each_run():
    from benchmarks import long_range

    run = {"length": 16000, "algo": "rhel", "test_accuracy_per_epoch": [0.3, 0.5], "chance": 0.25,
           "overflow_events": 0, "wall_s": 120.0, "command": "echoboard train --dataset DelayedRecall-16000"}
    assert long_range.format_table({"runs": [run]}).splitlines()[-1] == (
        "| 16,000 | rhel | 30.0, 50.0 | 25 | 0 | 2.0 min | `echoboard train --dataset DelayedRecall-16000` |")


def test_board_hssm_runs_trains_make_trains_model():
    """board_hssm_runs.MODEL restates the Makefile's TRAIN_ARGS (make train's model): parsed with the
    CLI's own parser, the two must name the same run."""
    import re
    import shlex

    from benchmarks import board_hssm_runs

    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    train_args = re.search(r"^TRAIN_ARGS \?= (.*)$", makefile, re.MULTILINE).group(1)
    make_train = vars(_train_parser().parse_args(shlex.split(train_args)))
    assert {k: make_train[k] for k in board_hssm_runs.MODEL} == board_hssm_runs.MODEL


def test_hssm_accuracy_cells_spell_out_their_options():
    from benchmarks import hssm_accuracy as h

    cmd = h.command("ACSF1", "linear", "rhel", 60, 3, Path("runs"), h.DEFAULTS)
    assert " ".join(cmd).startswith("echoboard train --dataset ACSF1 --blocks 2 --hru linear --algo rhel --target "
                                    "inprocess --epochs 60 --seed 3 --lr 0.01 --delta-init log-uniform --out ")
    assert cmd[-1] == str(Path("runs") / "ACSF1-linear-rhel-3-epochs-60-lr-0.01-delta-init-log-uniform")
    parsed = _train_parser().parse_args(cmd[2:])  # what the CLI's train makes of it
    assert (parsed.dataset, parsed.blocks, parsed.epochs, parsed.seed, parsed.lr) == ("ACSF1", 2, 60, 3, 0.01)
    assert h.command("ACSF1", "linear", "rhel", 30, 3, Path("runs"), h.BEFORE)[-1] == str(
        Path("runs") / "ACSF1-linear-rhel-3-epochs-30-lr-0.005-delta-init-paper")
