"""The integer helpers against an independent Python-integer oracle (exact Fractions)."""
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from echoboard.golden_model.fixed import floor_shift, round_shift, wrap
from echoboard.golden_model.formats import FixedFormat, quantize

INT62 = st.integers(min_value=-(2**62), max_value=2**62)


def round_half_away_oracle(x: int, shift: int) -> int:
    q = Fraction(x, 2**shift)
    magnitude = int(abs(q) + Fraction(1, 2))  # floor(|q| + 1/2)
    return magnitude if q >= 0 else -magnitude


@settings(max_examples=300, deadline=None)
@given(x=INT62, shift=st.integers(0, 40))
def test_round_shift_is_round_half_away_from_zero(x, shift):
    assert int(round_shift(jnp.asarray(x, jnp.int64), shift)) == round_half_away_oracle(x, shift)


@settings(max_examples=200, deadline=None)
@given(x=INT62, shift=st.integers(1, 40))
def test_round_shift_is_odd_and_floor_is_not_always(x, shift):
    assert int(round_shift(jnp.asarray(-x, jnp.int64), shift)) == -int(round_shift(jnp.asarray(x, jnp.int64), shift))
    assert int(floor_shift(jnp.asarray(x, jnp.int64), shift)) == x // 2**shift


def test_floor_shift_breaks_odd_symmetry():
    x = jnp.asarray(3, jnp.int64)
    assert int(floor_shift(-x, 1)) != -int(floor_shift(x, 1))


@settings(max_examples=300, deadline=None)
@given(x=INT62, width=st.integers(2, 63))
def test_wrap_keeps_low_bits_and_flags_changes(x, width):
    wrapped, overflowed = wrap(jnp.asarray(x, jnp.int64), width)
    expected = ((x + 2 ** (width - 1)) % 2**width) - 2 ** (width - 1)
    assert int(wrapped) == expected
    assert bool(overflowed) == (expected != x)


def test_quantize_rejects_nan_out_of_range_and_negative():
    with pytest.raises(ValueError, match="NaN"):
        quantize([0.0, np.nan], 16, 8, "B")
    with pytest.raises(ValueError, match="out of range"):
        quantize([200.0], 16, 8, "B")
    with pytest.raises(ValueError, match="A must be >= 0"):
        quantize([-0.5], 16, 8, "A", lo=0.0)
    assert quantize([-1.5, 1.5, 0.25], 16, 1, "x").tolist() == [-3, 3, 1]


def test_format_validation_names_the_problem():
    with pytest.raises(ValueError, match="state_width"):
        FixedFormat(state_width=40)
    with pytest.raises(ValueError, match="drift_rounding"):
        FixedFormat(drift_rounding="nearest_even")
