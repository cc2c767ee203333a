"""Integer helpers that define how every product, shift and sum is rounded and wrapped.

These are the operations the hardware implements; hdl/fixed.py has their Amaranth twins.
All values are int64 JAX arrays holding two's-complement integers of a stated width.

Why these choices:
- ``round_shift`` rounds half away from zero. It is odd-symmetric, Q(-x) = -Q(x), which is
  what makes a momentum-flipped leapfrog retrace its trajectory bit for bit. ``floor_shift``
  (a plain arithmetic shift right) is not odd and exists only to prove that tests can fail.
- ``round_shift`` is written as add-then-arithmetic-shift with a sign-dependent bias, so the
  hardware needs no absolute value: (x + 2^(s-1) - [x < 0]) >> s.
- ``wrap`` keeps the low ``width`` bits (two's complement) and reports whether the value
  changed. Wrapping keeps every leapfrog sub-step a bijection; saturation would not.
  ``add_wrap`` is the accumulators' form, which also counts wraps of a full 64-bit sum.
"""
import jax.numpy as jnp
from jax import lax


def round_shift(x, shift: int):
    """x / 2**shift rounded half away from zero (odd-symmetric). ``shift`` >= 0, static."""
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if shift == 0:
        return x
    bias = (1 << (shift - 1)) - (x < 0).astype(x.dtype)
    return lax.shift_right_arithmetic(x + bias, jnp.asarray(shift, x.dtype))


def floor_shift(x, shift: int):
    """x / 2**shift rounded toward minus infinity: NOT odd-symmetric; breaks reversibility."""
    if shift == 0:
        return x
    return lax.shift_right_arithmetic(x, jnp.asarray(shift, x.dtype))


def wrap(x, width: int):
    """Two's-complement wrap of int64 ``x`` to ``width`` bits; returns (wrapped, overflowed)."""
    if not 1 <= width <= 64:
        raise ValueError(f"width must be in 1..64, got {width}")
    if width == 64:
        return x, jnp.zeros(jnp.shape(x), bool)
    s = jnp.asarray(64 - width, x.dtype)
    wrapped = lax.shift_right_arithmetic(lax.shift_left(x, s), s)
    return wrapped, wrapped != x


def add_wrap(a, b, width: int):
    """(a + b) wrapped to ``width`` bits, with the overflow flag; exact up to width 64.

    The sum is formed in int64, which itself wraps at 64 bits silently, so at width 64 the flag
    comes from the operands' signs (two same-sign operands whose sum has the other sign), exactly
    what a 64-bit adder's carry into and out of the sign bit reports. Narrower accumulators use
    ``wrap``; their operands are far enough from 2^63 that the int64 sum is exact.
    """
    total = a + b
    if width == 64:
        return total, ((a < 0) == (b < 0)) & ((total < 0) != (a < 0))
    return wrap(total, width)


def count(flags):
    """Number of overflow events in a boolean array, as int64."""
    return jnp.sum(flags, dtype=jnp.int64)


def int_range(width: int) -> tuple[int, int]:
    """Smallest and largest value of a signed ``width``-bit integer."""
    return -(1 << (width - 1)), (1 << (width - 1)) - 1
