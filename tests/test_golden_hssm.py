"""The HSSM in the golden model: the integer block (per-step y_k / du_j streams, δ's accumulator),
float and fixed-point RHEL of whole stacks against autodiff BPTT, training and its CLI.

Every agreement check is also run on a corrupted estimate, to show that it would fail."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from echoboard.golden_model import hru_block as hb
from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import hru_float as hf
from echoboard.golden_model import hssm, hssm_lockstep, report
from echoboard.golden_model.formats import FixedFormat, length_scale_log2
from echoboard.golden_model.report import cosine, norm_ratio
from echoboard.host import cli
from echoboard.host import train as host_train
from echoboard.host.train import TrainConfig, train

from block_cases import random_block


def _block_case(hru: str, length: int = 300, P: int = 6, N: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    fmt, _, bq = random_block(hru, P, N, rng)
    pf = {k: jnp.asarray(v) for k, v in hb.dequantize_block_params(hru, bq, fmt).items()}
    uq = hx.quantize_inputs(np.clip(rng.normal(size=(length, N)), -4, 4), hb.base_format(fmt))
    u = jnp.asarray(np.asarray(uq) / 2.0 ** hb.base_format(fmt).input_frac)
    nudges = rng.normal(size=(length, P)) / length
    return fmt, bq, pf, uq, u, nudges


def _agrees(reference, estimate, cos_min, ratio_tol):
    return cosine(reference, estimate) >= cos_min and abs(norm_ratio(reference, estimate) - 1) <= ratio_tol


@pytest.mark.parametrize("hru", hb.HRU_KINDS)
def test_block_streams_and_delta_accumulator_match_bptt(hru):
    """One integer block with a per-step nudge stream: every parameter (δ included) and the input
    gradient du against autodiff of Σ_k nudge_k·y_k through the float trajectory."""
    fmt, bq, pf, uq, u, nudges = _block_case(hru)
    zero = jnp.zeros(bq.gain.shape[0])
    model = hf.HRUS[hru]
    ref_p, ref_u = jax.grad(lambda p, uu: jnp.sum(hf.trajectory(model, p, uu, zero, zero) * nudges),
                                          argnums=(0, 1))(pf, u)
    fwd = hb.forward(hru, bq, uq, fmt)
    assert fwd.positions.shape == (len(u), bq.gain.shape[0])
    assert np.array_equal(fwd.positions[-1], fwd.y)
    float_y = np.asarray(hf.trajectory(model, pf, u, zero, zero))
    assert np.abs(np.asarray(fwd.positions) * 2.0 ** -20 - float_y).max() < 1e-3
    ech = hb.echo(hru, bq, uq, fwd.y, fwd.z, hx.quantize_nudge(nudges, hb.base_format(fmt)), fmt)
    assert int(fwd.overflows) == 0 and np.all(np.asarray(ech.overflows) == 0)
    grads = hb.gradients(hru, bq, ech.acc, ech.kin, fmt)
    du = hb.input_gradient(hru, ech.du, fmt)
    assert set(grads) == set(hb.PARAM_NAMES[hru])
    ratio = 2e-3 if hru == "linear" else 1.5e-2
    for name in hb.PARAM_NAMES[hru]:
        assert _agrees(ref_p[name], grads[name], 0.9995, ratio), name
    assert _agrees(ref_u, du, 0.99999, ratio)
    # the checks fail on a corrupted δ accumulator and a du stream read with the other sign
    wrong = hb.gradients(hru, bq, ech.acc, -np.asarray(ech.kin), fmt)["delta"]
    assert not _agrees(ref_p["delta"], wrong, 0.9995, ratio)
    assert not _agrees(ref_u, -du, 0.99999, ratio)


@pytest.mark.parametrize("hru", hb.HRU_KINDS)
def test_block_zero_nudge_echo_returns_the_initial_state(hru):
    fmt, bq, _, uq, _, _ = _block_case(hru, length=2000)
    assert report._echo_error(hru, bq.q, uq, fmt, seed=3) == 0
    fwd = hb.forward(hru, bq, uq, fmt)
    ech = hb.echo(hru, bq, uq, fwd.y, fwd.z, jnp.zeros((2000, bq.gain.shape[0]), jnp.int64), fmt)
    assert not np.any(np.asarray(ech.du)) and not np.any(np.asarray(ech.kin))  # identical echoes: all zero


def test_the_nudge_scale_and_the_state_range_follow_the_length_from_2048_steps():
    assert [length_scale_log2(n) for n in (1, 29, 1460, 2048, 2049, 16000, 50000)] == [0, 0, 0, 0, 1, 3, 5]
    assert FixedFormat().for_length(100) == FixedFormat() == FixedFormat().for_length(2048)
    assert FixedFormat().for_length(50000).nudge_scale == 32 * FixedFormat().nudge_scale
    assert [FixedFormat().for_length(n).state_frac for n in (4096, 16000, 50000)] == [19, 18, 17]


@pytest.mark.parametrize("hru, blocks", [("linear", 3), ("nonlinear", 2)])
def test_stack_gradients_of_every_tensor(hru, blocks):
    """check-gradients --blocks at a small size: the issue's thresholds, every tensor by its dotted name."""
    r = report.check_stack_gradients(hru, blocks=blocks, hidden=8, length=300, oscillators=6, inputs=3)
    arch = hssm.Architecture(3, 4, blocks, 8, 6, hru)
    assert list(r["params"]) == list(arch.trained())
    assert {"block0.delta", f"block{blocks - 1}.C", "encoder.W", "head.W"} <= set(r["params"])
    assert r["reversible"] and r["echo_max_error_lsb"] == 0 and len(r["echo_error_lsb_per_block"]) == blocks
    assert r["overflow_events"] == 0
    hru_names = {f"block{k}.{n}" for k in range(blocks) for n in hb.PARAM_NAMES[hru]}
    for name, e in r["params"].items():
        if hru == "linear":
            floor, tol = (0.999999, 1e-6) if name in hru_names else (0.9999, 1e-4)
            assert e["rhel_float_cos"] >= floor and abs(e["rhel_float_norm_ratio"] - 1) <= tol, (name, e)
            assert e["rhel_fixed_cos"] >= 0.999 and abs(e["rhel_fixed_norm_ratio"] - 1) <= 0.02, (name, e)
        else:
            assert e["rhel_float_cos"] >= 0.9999, (name, e)
            assert e["rhel_fixed_cos"] >= 0.99, (name, e)


def test_stack_check_catches_a_corrupted_input_gradient(monkeypatch):
    """With the du stream's sign flipped every block below the top gets wrong nudges: the report shows it."""
    correct = hb.input_gradient
    monkeypatch.setattr(hb, "input_gradient", lambda hru, du, fmt: -correct(hru, du, fmt))
    r = report.check_stack_gradients("linear", blocks=2, hidden=8, length=200, oscillators=6, inputs=3)
    assert r["params"]["block0.A"]["rhel_fixed_cos"] < 0.999
    assert r["params"]["block1.A"]["rhel_fixed_cos"] >= 0.999  # the top block's own nudge is right


def test_nudge_exponent_lifts_small_nudges_to_one_over_length():
    L = 100
    dys = np.zeros((2, L, 3))
    dys[0, 5, 1] = 1.0 / L / 8  # 2^3 below 1/L
    dys[1, 0, 0] = 1.0  # a dead lane's value does not count
    live = np.array([True, False])
    assert hssm.nudge_exponent(dys, live, L) == 3
    assert hssm.nudge_exponent(dys * 8, live, L) == 0  # at 1/L: unchanged
    assert hssm.nudge_exponent(dys * 1e3, live, L) == 0  # never lowered
    assert hssm.nudge_exponent(np.zeros((1, L, 3)), np.array([True]), L) == 0


@pytest.mark.parametrize("algo", ["rhel", "rhel-float"])
def test_a_saturated_loss_still_gets_its_gradient(algo):
    """A confident prediction (loss ~1e-9) has nudges far below the state word's LSB: without the
    chunk's nudge exponent the integer echo returns zeros. With it, RHEL agrees with BPTT."""
    arch = hssm.Architecture(3, 4, 2, 8, 6, "linear")
    fmt = hb.default_format("linear").for_length(400)
    rng = np.random.default_rng(2)
    params, _ = hssm.project(hssm.init_params(rng, arch), arch, fmt)
    params["head.b"] = np.array([0.0, 25.0, 0.0, 0.0])
    x, lengths, labels = rng.normal(size=(1, 400, 3)), np.array([400]), np.array([1])
    params = hssm.calibrate(params, x, lengths, arch)
    ref = hssm.batch_gradients(params, x, lengths, labels, arch, "bptt", fmt)
    assert ref.loss < 1e-9
    est = hssm.batch_gradients(params, x, lengths, labels, arch, algo, fmt)
    floor = 0.999 if algo == "rhel" else 0.999999
    for name in ("block0.A", "block0.B", "block0.delta", "block1.A", "encoder.W"):
        assert cosine(ref.grads[name], est.grads[name]) >= floor, name
        assert abs(norm_ratio(ref.grads[name], est.grads[name]) - 1) <= 0.02, name


def _lockstep_case(hru: str, length: int = 200, seed: int = 3):
    arch = hssm.Architecture(3, 4, 2, 8, 6, hru)
    fmt = hb.default_format(hru)
    rng = np.random.default_rng(seed)
    params, _ = hssm.project(hssm.init_params(rng, arch), arch, fmt)
    x = rng.normal(size=(3, length, 3))
    lengths, labels = np.array([length, length, length - 50]), np.array([0, 2, 1])
    return hssm.calibrate(params, x, lengths, arch), x, lengths, labels, arch, fmt


@pytest.mark.parametrize("hru", hb.HRU_KINDS)
@pytest.mark.parametrize("algo", ["rhel", "rhel-float"])
def test_lockstep_schedule_equals_block_by_block(hru, algo):
    """All blocks one step at a time (the retrace recomputes each block's forward states) gives the
    block-by-block schedule's loss, statistics, counters and gradients, to the float rounding of the
    per-step feed-forward arithmetic; a retrace that does not flip the momentum is caught."""
    params, x, lengths, labels, arch, fmt = _lockstep_case(hru)
    staged = hssm.batch_gradients(params, x, lengths, labels, arch, algo, fmt)

    def lockstep():
        return hssm.batch_gradients(params, x, lengths, labels, arch, algo, fmt,
                                    blocks=hssm_lockstep.LockstepBlocks(arch, algo, fmt))

    def agrees(r):
        return (abs(r.loss - staged.loss) <= 1e-12 * abs(staged.loss) and r.correct == staged.correct
                and all(cosine(staged.grads[k], r.grads[k]) >= 1 - 1e-12 and abs(norm_ratio(staged.grads[k], r.grads[k]) - 1) <= 1e-9
                        for k in staged.grads))

    r = lockstep()
    assert set(r.grads) == set(staged.grads) and agrees(r)
    assert (r.overflow_events, r.clipped) == (staged.overflow_events, staged.clipped)
    assert all(np.allclose(staged.stats[k], r.stats[k], rtol=1e-12, atol=0) for k in staged.stats)
    kit = type(hssm_lockstep.LockstepBlocks(arch, algo, fmt).hrus)
    correct = kit.retrace_start
    try:
        kit.retrace_start = lambda self, state: correct(self, tuple(state[:1]) + (-state[1],) + tuple(state[2:]))
        hssm_lockstep._backward.clear_cache()  # the kit is a static argument: recompile with the patch
        assert not agrees(lockstep())
    finally:
        kit.retrace_start = correct
        hssm_lockstep._backward.clear_cache()


def _hssm_config(tmp_path, **kw):
    return TrainConfig(**{"dataset": "BasicMotions", "algo": "rhel", "target": "inprocess", "epochs": 2, "batch": 16,
                          "blocks": 2, "hidden": 8, "oscillators": 6, "seed": 1, "out": str(tmp_path / "run"), **kw})


def test_hssm_trains_and_resumes_bit_identically(tmp_path, monkeypatch):
    """Interrupted after its first epoch's checkpoint (Ctrl-C) and resumed with the same settings, a run
    ends as the uninterrupted one (the learning-rate schedule spans --epochs, so it must not change)."""
    full = train(_hssm_config(tmp_path / "a"), progress=False)
    save = host_train.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(host_train, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_hssm_config(tmp_path / "b"), progress=False)
    monkeypatch.setattr(host_train, "save_checkpoint", save)
    resumed = train(_hssm_config(tmp_path / "b", resume=True), progress=False)
    assert resumed["params_sha256"] == full["params_sha256"] and resumed["history"] == full["history"]
    assert full["architecture"] == {"model": "hssm", "inputs": 6, "classes": 4, "blocks": 2, "hidden": 8,
                                    "oscillators": 6, "hru": "linear", "delta_init": "log-uniform"}  # train's default
    assert full["history"][-1]["loss"] < full["history"][0]["loss"]
    with np.load(tmp_path / "a" / "run" / "checkpoint.npz") as z:
        assert "param/block1.norm.var" in z.files and "m/block1.delta" in z.files and "m/block1.norm.var" not in z.files
    with pytest.raises(ValueError, match=r"different settings.*'blocks'"):
        train(dataclasses.replace(_hssm_config(tmp_path / "b", resume=True, epochs=3), blocks=3), progress=False)


@pytest.mark.parametrize("algo", ["bptt", "rhel-float"])
def test_hssm_float_algorithms_train(tmp_path, algo):
    s = train(_hssm_config(tmp_path, algo=algo, hru="nonlinear", epochs=1), progress=False)
    assert s["architecture"]["hru"] == "nonlinear" and s["overflow_events"] == 0 and np.isfinite(s["history"][0]["loss"])


def test_single_hru_model_trains_bit_identically_to_before(tmp_path):
    """Digest of the same run at the commit before the HSSM (895a4d3): nothing of the single HRU changed."""
    s = train(TrainConfig(dataset="BasicMotions", algo="rhel", epochs=1, batch=20, oscillators=4, seed=2,
                          target="inprocess", out=str(tmp_path)), progress=False)
    assert s["params_sha256"] == "a94c28be79d7e295a92ad0851717bbe57c7e7e092ac9d358208a795c21c287f3"
    assert s["architecture"]["model"] == "single-hru"


def test_cli_refuses_blocks_on_many_boards_and_nonlinear_without_blocks(tmp_path, capsys):
    base = ["train", "--dataset", "BasicMotions", "--epochs", "1", "--out", str(tmp_path / "x")]
    assert cli.main(base + ["--blocks", "2", "--target", "golden", "--boards", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--boards and --ray-address train the single-HRU model" in err and len(err.splitlines()) == 1
    assert cli.main(base + ["--hru", "nonlinear", "--target", "inprocess"]) == 2
    assert "--hru nonlinear needs --blocks" in capsys.readouterr().err
    assert cli.main(base + ["--blocks", "2", "--algo", "bptt", "--target", "inprocess", "--schedule", "lockstep"]) == 2
    assert "--schedule lockstep runs an HSSM's RHEL in process" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_lockstep_schedule_trains_as_block_by_block(tmp_path):
    """One epoch of the same run under both schedules: the same accuracies and counters, losses and
    parameters equal to float rounding (the per-step feed-forward arithmetic)."""
    blocks = train(_hssm_config(tmp_path / "a", epochs=1), progress=False)
    lockstep = train(_hssm_config(tmp_path / "b", epochs=1, schedule="lockstep"), progress=False)
    for a, b in zip(blocks["history"], lockstep["history"]):
        assert {k: v for k, v in a.items() if k != "loss"} == {k: v for k, v in b.items() if k != "loss"}
        assert abs(a["loss"] - b["loss"]) <= 1e-9 * a["loss"]


def test_cli_check_gradients_blocks_json(capsys):
    assert cli.main(["check-gradients", "--blocks", "2", "--hidden", "4", "--length", "64", "--oscillators", "4",
                     "--inputs", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["blocks"] == 2 and r["reversible"] and "block1.delta" in r["params"]
