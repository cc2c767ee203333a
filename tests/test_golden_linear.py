"""The linear HRU: float RHEL = BPTT, the integer model = its contract, exact reversibility, fidelity."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import golden_oracle
from echoboard.golden_model import hru_fixed, report
from echoboard.golden_model.formats import FixedFormat

FMT = FixedFormat()


def _random_state(rng, p, bits):
    return jnp.asarray(rng.integers(-(2**bits), 2**bits, p))


@pytest.mark.parametrize("length", [512, 2048])
def test_float_rhel_equals_bptt_to_rounding_error(length):
    case = report.make_case("linear", 16, 4, length, seed=3, fmt=FMT)
    bptt, rhel = report.bptt_gradients(case), report.rhel_float_gradients(case, epsilon=0.1)
    for name in ("A", "B", "delta", "u"):
        assert report.cosine(bptt[name], rhel[name]) >= 0.999999, name
        assert abs(report.norm_ratio(bptt[name], rhel[name]) - 1.0) <= 1e-6, name


def test_integer_model_matches_independent_python_oracle():
    """Forward and echo pair, every field, against the plain-int re-implementation (incl. wraps)."""
    fmt = FMT.replace(state_width=24, state_frac=14, acc_width=40)  # narrow so that wraps happen
    rng = np.random.default_rng(11)
    p, n, length = 3, 2, 40
    params = {"A": rng.uniform(0, 2, p), "B": rng.uniform(-2, 2, (p, n)), "delta": rng.uniform(0.3, 1.0, p)}
    q = hru_fixed.quantize_linear_params(params, fmt)
    u = hru_fixed.quantize_inputs(rng.uniform(-15, 15, (length, n)), fmt)
    y0, z0 = _random_state(rng, p, 23), _random_state(rng, p, 23)  # near full scale
    nudges = jnp.asarray(rng.integers(-5000, 5000, (length, p)))
    A, B, delta = q.A.tolist(), q.B.tolist(), q.delta.tolist()

    fwd = hru_fixed.forward(q, u, y0, z0, fmt)
    y, z, pos_sum, ovf = golden_oracle.forward(A, B, delta, u.tolist(), y0.tolist(), z0.tolist(), fmt)
    assert (fwd.y.tolist(), fwd.z.tolist(), fwd.pos_sum.tolist(), int(fwd.overflows)) == (y, z, pos_sum, ovf)
    assert ovf > 0, "the oracle comparison must exercise wrap-around"

    ech = hru_fixed.echo(q, u, fwd.y, fwd.z, nudges, fmt)
    ys, zs, acc_a, acc_b, ovf_e = golden_oracle.echo(A, B, delta, u.tolist(), y, z, nudges.tolist(), fmt)
    assert ech.y.tolist() == ys and ech.z.tolist() == zs
    assert ech.acc_a.tolist() == acc_a and ech.acc_b.tolist() == acc_b
    assert ech.overflows.tolist() == ovf_e


def _reversal_error(fmt, seed, length, p=8, n=3, input_scale=1.0, bits=21):
    rng = np.random.default_rng(seed)
    params = {"A": rng.uniform(0, 3, p), "B": rng.uniform(-1, 1, (p, n)), "delta": rng.uniform(0.05, 1.1, p)}
    q = hru_fixed.quantize_linear_params(params, fmt)
    u = hru_fixed.quantize_inputs(np.clip(rng.normal(size=(length, n)) * input_scale, -15, 15), fmt)
    y0, z0 = _random_state(rng, p, bits), _random_state(rng, p, bits)
    fwd = hru_fixed.forward(q, u, y0, z0, fmt)
    ech = hru_fixed.echo(q, u, fwd.y, fwd.z, jnp.zeros(p, jnp.int64), fmt)
    error = max(int(jnp.abs(ech.y - y0).max()), int(jnp.abs(ech.z + z0).max()))
    return error, int(fwd.overflows)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), length=st.integers(1, 50_000), state_frac=st.sampled_from([16, 20, 24]))
def test_zero_epsilon_echo_returns_initial_state_bit_for_bit(seed, length, state_frac):
    error, _ = _reversal_error(FMT.replace(state_frac=state_frac), seed, length)
    assert error == 0


def test_reversible_through_wrap_around():
    """Overflows wrap (and are counted); the echo still retraces exactly. Saturation would not."""
    error, overflows = _reversal_error(FMT, seed=5, length=3000, input_scale=30.0, bits=30)
    assert overflows > 0
    assert error == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_floor_rounding_breaks_reversibility(seed):
    """The same test with floor drift rounding fails: the reversibility test can fail."""
    error, _ = _reversal_error(FMT.replace(drift_rounding="floor"), seed, length=2000)
    assert error > 0


@pytest.mark.parametrize("length", [1024, 4096, 16384])
def test_fixed_rhel_matches_float_bptt(length):
    """Default format, linear HRU: cosine >= 0.999 and norm ratio within 2 % for A and B, no overflow."""
    case = report.make_case("linear", 16, 4, length, seed=length, fmt=FMT)
    bptt = report.bptt_gradients(case)
    fixed, overflows = report.fixed_gradients(case, FMT)
    assert overflows == 0
    for name in ("A", "B"):
        assert report.cosine(bptt[name], fixed[name]) >= 0.999, name
        assert abs(report.norm_ratio(bptt[name], fixed[name]) - 1.0) <= 0.02, name


def test_corrupted_accumulator_is_detected():
    """A single-LSB change in one accumulator makes the exact comparison fail."""
    case = report.make_case("linear", 4, 2, 64, seed=0, fmt=FMT)
    zeros = jnp.zeros(4, jnp.int64)
    fwd = hru_fixed.forward(case.q, case.u_int, zeros, zeros, FMT)
    nudge = jnp.full(4, 1000, jnp.int64)
    a = hru_fixed.echo(case.q, case.u_int, fwd.y, fwd.z, nudge, FMT)
    b = hru_fixed.echo(case.q, case.u_int, fwd.y, fwd.z, nudge, FMT)
    assert a.acc_b.tolist() == b.acc_b.tolist()
    assert a.acc_b.at[1, 1].add(1).tolist() != b.acc_b.tolist()


def test_bad_shapes_and_lengths_get_clear_errors():
    with pytest.raises(ValueError, match=r"shape \(L, 4\)"):
        hru_fixed.validate_sequence(np.zeros((10, 3)), 4)
    with pytest.raises(ValueError, match="exceeds the maximum"):
        hru_fixed.validate_sequence(np.zeros((10, 4)), 4, max_length=8)
    with pytest.raises(ValueError, match="parameter shapes"):
        hru_fixed.quantize_linear_params({"A": np.ones(3), "B": np.ones((4, 2)), "delta": np.ones(3)}, FMT)
    with pytest.raises(ValueError, match="power of two"):
        report.check_gradients(epsilon=0.3, length=8)


def test_full_width_accumulator_wraps_are_counted():
    """A 64-bit accumulator's wrap is counted like any other, although the int64 sum wraps silently."""
    case = report.make_case("linear", 2, 1, 40, seed=4, fmt=FMT)
    zeros = jnp.zeros(2, jnp.int64)
    fwd = hru_fixed.forward(case.q, case.u_int, zeros, zeros, FMT)
    nudge = jnp.full(2, 4000, jnp.int64)
    start = [2**63 - 1, -(2**63)]  # any positive term wraps the first, any negative one the second
    ech = hru_fixed.echo(case.q, case.u_int, fwd.y, fwd.z, nudge, FMT, acc_a=jnp.asarray(start))
    *_, acc_a, _, ovf = golden_oracle.echo(case.q.A.tolist(), case.q.B.tolist(), case.q.delta.tolist(),
                                           case.u_int.tolist(), fwd.y.tolist(), fwd.z.tolist(),
                                           [nudge.tolist()] * 40, FMT, acc_a=start)
    assert ech.acc_a.tolist() == acc_a and ech.overflows.tolist() == ovf
    assert ovf[2] > 0 and ovf[:2] == [0, 0]
