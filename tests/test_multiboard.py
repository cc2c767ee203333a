"""Data-parallel training over several boards with Ray (host/multiboard.py) ends bit for bit as one board.

Two's-complement accumulators summed over boards give one board's accumulators, so ``--boards 2``
must end with ``--boards 1``'s params_sha256 and history; a board that dies mid-run stops the run
with one line naming it, the last checkpoint intact, and ``--resume`` on one board continues
bit-identically; a two-node Ray cluster (ray.cluster_utils.Cluster, one board per node) trains
across both nodes.
"""
import json

import pytest

ray = pytest.importorskip("ray")

from echoboard.host import cli  # noqa: E402
from echoboard.host import multiboard  # noqa: E402
from echoboard.host.train import CHECKPOINT, TrainConfig, _target_kind, load_checkpoint, train  # noqa: E402

SMALL = ["--dataset", "BasicMotions", "--epochs", "2", "--batch", "20", "--oscillators", "4", "--seed", "2"]


def _config(out, **kw):
    return TrainConfig(**{"dataset": "BasicMotions", "algo": "rhel", "epochs": 2, "batch": 20, "oscillators": 4,
                          "seed": 2, "target": "golden", "out": str(out), **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One golden board, no Ray: the run every multi-board run must reproduce."""
    return train(_config(tmp_path_factory.mktemp("one")), progress=False)


@pytest.fixture(scope="module")
def local_ray():
    """The embedded default (host.multiboard's local ray.init), kept for the module's runs: one start."""
    started = multiboard._init_ray(None, {"board:golden": 2, "board:sim": 2})
    yield
    if started:
        ray.shutdown()


def test_two_golden_boards_end_as_one(reference, local_ray, tmp_path, capsys):
    assert cli.main(["train", *SMALL, "--target", "golden", "--boards", "2", "--out", str(tmp_path)]) == 0
    two = json.loads((tmp_path / "summary.json").read_text())
    # the history too, overflow counts included: no accumulator wraps here (where one does, the count of
    # gradient overflow events may differ between one board and several; the parameters do not)
    assert two["params_sha256"] == reference["params_sha256"] and two["history"] == reference["history"]
    assert (two["boards"], two["engine"]) == (["golden", "golden"], {"name": "ray", "version": ray.__version__})
    assert reference["boards"] == ["golden"] and reference["engine"] is None
    links = [b["link"] for b in two["board_links"]]
    assert [b["board"] for b in two["board_links"]] == [0, 1] and all(link["requests"] > 100 for link in links)
    assert two["link"]["requests"] == sum(link["requests"] for link in links) and two["link"]["retries"] == 0
    # both boards together did one board's work, plus one parameter write and read-out per board
    assert two["link"]["payload_bytes_sent"] > reference["link"]["payload_bytes_sent"]


def test_two_simulated_boards_end_as_one(local_ray, tmp_path):
    """P = 8: the image tests/test_host_training.py's simulated-board runs use, built once and cached."""
    one, two = (train(_config(tmp_path / str(b), target="sim", oscillators=8, epochs=1, boards=b), progress=False)
                for b in (1, 2))
    assert two["params_sha256"] == one["params_sha256"] and two["history"] == one["history"]
    assert two["boards"] == ["sim", "sim"] and len({b["pid"] for b in two["board_links"]}) == 2


def test_a_board_that_dies_stops_the_run_and_resume_on_one_board_ends_the_same(reference, local_ray, tmp_path,
                                                                               monkeypatch, capsys):
    load, calls = multiboard.MultiBoardTarget.load, []

    def load_then_kill(self, q):  # epoch 1: 2 minibatches and 2 evaluations; kill board 1 in epoch 2
        calls.append(1)
        if len(calls) == 5:
            ray.kill(self.actors[1])
        return load(self, q)

    monkeypatch.setattr(multiboard.MultiBoardTarget, "load", load_then_kill)
    out = tmp_path / "run"
    assert cli.main(["train", *SMALL, "--target", "golden", "--boards", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("echoboard train: error: board 1 (golden) failed: its Ray actor died")
    assert load_checkpoint(str(out / CHECKPOINT))[3]["epoch"] == 1 and not (out / "summary.json").exists()
    monkeypatch.setattr(multiboard.MultiBoardTarget, "load", load)
    resumed = train(_config(out, resume=True), progress=False)  # one board, no Ray
    assert resumed["params_sha256"] == reference["params_sha256"] and resumed["epochs"] == 2


def test_a_link_that_gives_up_names_the_board(local_ray):
    from echoboard.host.client import LinkError

    @ray.remote(num_cpus=0)
    def fails(exc):
        raise exc

    target = multiboard.MultiBoardTarget([None, None], ["golden", "socket://10.0.0.2:5000"], None)
    with pytest.raises(multiboard.BoardFailure,
                       match=r"^board 1 \(socket://10.0.0.2:5000\) failed: LinkError: no reply to ECHO_DATA$"):
        target._get({0: ray.put(0), 1: fails.remote(LinkError("no reply to ECHO_DATA"))})
    with pytest.raises(ValueError, match=r"^board 0 \(golden\): the board has 8 oscillators"):
        target._get({0: fails.remote(ValueError("the board has 8 oscillators"))})

    @ray.remote(num_cpus=0)
    class Unreachable:
        def __init__(self):
            raise OSError("Could not open port socket://127.0.0.1:1")

        def describe(self):
            return {}

    with pytest.raises(multiboard.BoardFailure, match=r"^board 0 \(golden\) could not be opened: OSError: Could not "):
        multiboard.MultiBoardTarget([Unreachable.remote()], ["golden"], None)._call("describe")
    with pytest.raises(ValueError, match=r"lacks board resources \(needed, declared\): board:127.0.0.1:1: \(1, 0\)"):
        train(TrainConfig(target="socket://127.0.0.1:1,socket://127.0.0.1:2", oscillators=4), progress=False)


def test_benchmark_measures_one_and_two_boards_and_prints_its_table(local_ray, tmp_path, capsys):
    from benchmarks import multiboard as bench

    out = tmp_path / "mb.json"
    result = bench.main(["--targets", "golden", "--boards", "1,2", "--samples", "8", "--warmup", "0",
                         "--oscillators", "4", "--out", str(out)])
    golden = result["targets"]["golden"]
    assert golden["bit_identical"] and [(r["boards"], r["engine"]) for r in golden["rows"]] == \
        [(1, "none"), (1, "ray"), (2, "ray")]
    assert all(r["samples"] == 8 and r["samples_per_s"] > 0 and r["board_s"] > 0 for r in golden["rows"])
    capsys.readouterr()
    assert bench.main(["--table", "--out", str(out)]) == json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "| golden boards | engine |" in table and "| 32 | ray | — |" in table


def test_board_lists_and_resume_keys():
    assert multiboard.board_targets("golden", 3) == ["golden"] * 3
    urls = "socket://10.0.0.2:5000,serial:///dev/ttyUSB1?baud=3000000"
    assert multiboard.board_targets(urls, None) == urls.split(",")
    assert [multiboard.resource_name(u) for u in urls.split(",")] == ["board:10.0.0.2:5000", "board:ttyUSB1"]
    for target, boards, message in ((urls, 3, "--boards 3 but --target names 2"),
                                    ("inprocess", 2, "--boards 2 needs --target sim or golden"),
                                    ("golden,sim", None, "must be socket:// or serial://")):
        with pytest.raises(ValueError, match=message):
            train(TrainConfig(target=target, boards=boards), progress=False)
    # board URLs may change on --resume (another set of boards); sim, golden and inprocess stay what they were
    assert _target_kind("socket://a:1,socket://b:2") == _target_kind("serial:///dev/ttyUSB0") != "golden"
    assert _target_kind("golden") != _target_kind("sim")
    with pytest.raises(ValueError, match="single-HRU model with --algo rhel"):
        train(TrainConfig(target="golden", boards=2, algo="bptt"), progress=False)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray's fork-exec of its node processes
def test_a_two_node_cluster_trains_one_epoch_across_both(reference, tmp_path):
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the module's local instance, if any: this test drives its own cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"board:golden": 1},
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, resources={"board:golden": 1})
        cluster.wait_for_nodes()
        got = train(_config(tmp_path, epochs=1, boards=2, ray_address=cluster.address), progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len({b["node"] for b in got["board_links"]}) == 2  # one board per node
    first = {k: v for k, v in reference["history"][0].items() if k != "overflow_events"}
    assert {k: v for k, v in got["history"][0].items() if k != "overflow_events"} == first
