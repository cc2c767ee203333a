"""The on-board model (golden_model/model.py) and its training loop (host/train.py).

Gradient paths are checked against an independent oracle: plain autodiff of the whole model
(trajectory -> mean over the true length -> head -> cross-entropy), one sample at a time.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import hru_float as hf
from echoboard.golden_model import model
from echoboard.golden_model.formats import FixedFormat
from echoboard.host import cli
from echoboard.host.datasets import load_dataset
from echoboard.host.train import TrainConfig, train

FMT = FixedFormat()
P, N, C = 12, 5, 4


def _on_the_grid(params, x, lengths):
    """Parameters and inputs the fixed-point model represents exactly, so all paths see one model."""
    q = hx.quantize_linear_params(params, FMT)
    params = {**params, **{k: np.asarray(v) for k, v in hx.dequantize_linear_params(q, FMT).items()}}
    x = np.asarray(hx.quantize_inputs(x, FMT)) / 2.0 ** FMT.input_frac
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return params, x


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    lengths = np.array([64, 64, 40, 64, 40, 17, 64, 64, 64, 64])  # 7 of one length: a full and a padded chunk
    params, x = _on_the_grid(model.init_params(rng, N, C, P), rng.normal(size=(len(lengths), 64, N)), lengths)
    return params, x, lengths, rng.integers(0, C, len(lengths))


@pytest.fixture(scope="module")
def oracle(batch):
    """Mean loss and gradients by autodiff of each sample's whole model, on its true length."""
    params, x, lengths, labels = batch

    def sample_loss(p, u, label):
        ys = hf.trajectory(hf.LINEAR, p, u, jnp.zeros(P), jnp.zeros(P))
        logits = p["W"] @ ys.mean(axis=0) + p["c"]
        return jax.nn.logsumexp(logits) - logits[label]

    p = {k: jnp.asarray(v) for k, v in params.items()}
    value_and_grad = jax.jit(jax.value_and_grad(sample_loss))
    per_sample = [value_and_grad(p, jnp.asarray(u[:n]), y) for u, n, y in zip(x, lengths, labels)]
    return (np.mean([float(v) for v, _ in per_sample]),
            {k: np.mean([np.asarray(g[k]) for _, g in per_sample], axis=0) for k in params})


def _cos_and_ratio(ref, got):
    a, b = np.ravel(ref), np.ravel(got)
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b), np.linalg.norm(b) / np.linalg.norm(a)


# measured on this batch: bptt and rhel-float agree with the oracle to ~1e-13 (cos) / 5e-13 (norm);
# fixed-point rhel to 1 - cos ~ 1e-11 and norm ratio ~ 1e-5 for A and B. Asserted with margin.
TOLERANCES = {"bptt": (1e-12, 1e-10), "rhel-float": (1e-12, 1e-9), "rhel": (1e-8, 1e-4)}


@pytest.mark.parametrize("algo", model.ALGOS)
def test_gradient_paths_agree_with_autodiff_of_the_whole_model(batch, oracle, algo):
    params, x, lengths, labels = batch
    ref_loss, ref = oracle
    r = model.batch_gradients(params, x, lengths, labels, algo, FMT)
    cos_tol, norm_tol = TOLERANCES[algo]
    assert r.loss == pytest.approx(float(ref_loss), rel=1e-5 if algo == "rhel" else 1e-12)
    assert r.overflow_events == 0 and set(r.grads) == set(model.TRAINED)
    for k in model.TRAINED:
        cos, ratio = _cos_and_ratio(ref[k], r.grads[k])
        assert cos >= 1 - cos_tol, (k, cos)
        assert abs(ratio - 1) <= norm_tol, (k, ratio)


@pytest.mark.parametrize("algo", ["bptt", "rhel"])
def test_batch_gradient_is_the_mean_of_sample_gradients(batch, algo):
    """Zero-weight filler lanes contribute nothing; the board's batch sum is the sum of samples."""
    params, x, lengths, labels = batch
    whole = model.batch_gradients(params, x, lengths, labels, algo, FMT)
    singles = [model.batch_gradients(params, x[i:i + 1], lengths[i:i + 1], labels[i:i + 1], algo, FMT)
               for i in range(len(lengths))]
    for k in model.TRAINED:
        np.testing.assert_allclose(whole.grads[k], np.mean([s.grads[k] for s in singles], axis=0), rtol=1e-9, atol=1e-15)
    assert whole.correct == sum(s.correct for s in singles)


@pytest.mark.parametrize("algo", ["rhel-float", "rhel"])
def test_padding_steps_never_reach_the_hru(batch, algo):
    params, x, lengths, labels = batch
    noisy = x.copy()
    for i, n in enumerate(lengths):
        noisy[i, n:] = 3.0
    a = model.batch_gradients(params, x, lengths, labels, algo, FMT)
    b = model.batch_gradients(params, noisy, lengths, labels, algo, FMT)
    assert a.loss == b.loss and all(np.array_equal(a.grads[k], b.grads[k]) for k in model.TRAINED)


def test_projection_onto_the_stable_set_and_the_format_range():
    p = {"A": np.array([-0.5, 3.0, 20.0]), "B": np.array([[0.1, 9.0], [-9.0, 0.0], [0.0, 0.0]]),
         "delta": np.array([0.5, 1.5, 0.5])}
    q, clipped = model.project(p, FMT)
    assert q["A"][0] == 0.0 and q["A"][1] == pytest.approx(4 / 1.5**2)  # delta²A <= 4 binds
    assert q["A"][2] == pytest.approx(8.0, abs=1e-4)  # 18-bit A with 14 fractional bits: < 8
    assert np.abs(q["B"]).max() <= 4.0 and q["B"][0, 0] == 0.1
    assert clipped == 3  # A[2], B[0,1], B[1,0] left the representable range
    hx.quantize_linear_params(q, FMT)  # the projected parameters are representable


def test_bad_input_is_a_clear_error(batch):
    params, x, lengths, labels = batch
    with pytest.raises(ValueError, match="unknown algorithm 'sgd'"):
        model.batch_gradients(params, x, lengths, labels, "sgd")
    with pytest.raises(ValueError, match="lengths must be in 1..64"):
        model.batch_gradients(params, x, lengths + 1, labels, "bptt")
    with pytest.raises(ValueError, match="expected x"):
        model.predict(params, x[0], lengths, "bptt")


def test_a_few_fixed_point_rhel_steps_reduce_the_loss():
    from echoboard.host.train import adam_step

    d = load_dataset("BasicMotions", clip=15.0)
    idx = np.arange(0, 40, 5)  # two samples per class
    args = (d.train.x[idx], d.train.lengths[idx], d.train.labels[idx], "rhel", FMT)
    params, _ = model.project(model.init_params(np.random.default_rng(0), d.n_inputs, d.n_classes, 8), FMT)
    adam = {"t": 0, "m": {k: 0 * params[k] for k in model.TRAINED}, "v": {k: 0 * params[k] for k in model.TRAINED}}
    first = model.batch_gradients(params, *args)
    for _ in range(5):
        params, adam = adam_step(params, model.batch_gradients(params, *args).grads, adam, 0.02)
        params, _ = model.project(params, FMT)
    assert model.batch_gradients(params, *args).loss < 0.8 * first.loss


def _config(tmp_path, **kw):
    return TrainConfig(**{"dataset": "BasicMotions", "algo": "rhel", "target": "golden", "epochs": 2, "batch": 16,
                          "oscillators": 8, "seed": 3, "out": str(tmp_path / "run"), **kw})


def test_resume_continues_bit_identically(tmp_path):
    full = train(_config(tmp_path / "a"))
    train(_config(tmp_path / "b", epochs=1))
    resumed = train(_config(tmp_path / "b", resume=True))
    assert resumed["params_sha256"] == full["params_sha256"]
    assert resumed["history"] == full["history"]
    with np.load(tmp_path / "a" / "run" / "checkpoint.npz") as a, np.load(tmp_path / "b" / "run" / "checkpoint.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        train(_config(tmp_path, resume=True))
    train(_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="exists: pass --resume"):
        train(_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match=r"different settings.*'lr'"):
        train(_config(tmp_path, lr=0.5, resume=True))


def test_cli_train_writes_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli.main(["train", "--dataset", "BasicMotions", "--target", "golden", "--epochs", "1", "--batch", "16",
                   "--oscillators", "8", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out) == {k: v for k, v in summary.items() if k != "history"}
    for key in ("dataset", "target", "algo", "epochs", "train_accuracy", "test_accuracy", "params_sha256",
                "overflow_events", "history", "link"):
        assert key in summary
    assert (summary["target"], summary["algo"], summary["epochs"]) == ("golden", "rhel", 1)
    link = summary["link"]  # the golden board model behind the Board API
    assert link["requests"] > 0 and link["retries"] == 0 and link["bytes_sent"] > link["payload_bytes_sent"] > 0
    for png in ("curves.png", "echo_retrace.png"):
        assert (out / png).stat().st_size > 1000
    assert cli.main(["train", "--dataset", "NoSuchSet", "--out", str(tmp_path / "x")]) == 2
    assert "aeon ships these classification sets" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("dataset, floor", [("BasicMotions", 0.95), ("JapaneseVowels", 0.9)])
def test_fixed_point_rhel_trains_as_well_as_bptt(tmp_path, dataset, floor):
    """Full default runs (energy features): fixed-point RHEL within 2 points of float BPTT, same seed.

    RHEL runs in process: bit-identical to the simulated board (tests/test_host_training.py), and
    minutes instead of the simulated board's 5-20 per run."""
    acc = {algo: train(TrainConfig(dataset=dataset, algo=algo, target="inprocess", out=str(tmp_path / algo)))
           ["test_accuracy"] for algo in ("bptt", "rhel")}
    assert acc["rhel"] >= acc["bptt"] - 0.02 and acc["rhel"] >= floor, acc
