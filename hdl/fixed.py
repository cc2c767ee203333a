"""Amaranth twins of golden_model.fixed: rounding shift, wrap with overflow flag, saturating count.

Each helper builds a combinational expression; the caller decides where the registers go.
They mirror the integer model bit for bit:

- ``round_shift(x, s)`` is (x + 2^(s-1) - [x < 0]) >> s, round half away from zero. The bias
  needs only the sign bit, so the hardware is one adder and wires (no absolute value).
- ``add_round_shift(y, p, s)`` = y + round_shift(p, s) and ``sub_round_shift(y, p, s)`` =
  y − round_shift(p, s) as ONE addition, i.e. one carry chain instead of two: y is placed above
  the s fraction bits of p, the constant part of the bias fills those zero bits and the sign
  part becomes the carry-in. Every drift, force and kick of the integrator has this form.
- ``wrap(x, width)`` keeps the low ``width`` bits and flags a change of value (for an
  accumulator's width+1-bit sum that is golden_model.fixed.add_wrap, 64 bits included).
- ``partial_products(a, b)`` splits a wide signed product into 18×18-bit signed products (one
  MULT18X18D each) whose shifted sum is a·b, so the DSP outputs can be registered before the
  adder that combines them (synthesis would otherwise chain DSP and adder in one cycle).
- ``saturating_add(counter, events, width)`` is the sticky overflow-event counter of one phase.
"""
from amaranth.hdl import Cat, Const, Mux, Value, unsigned

__all__ = ["round_shift", "add_round_shift", "sub_round_shift", "wrap", "saturating_add", "partial_products"]

DSP_LIMB = 17  # an 18x18 signed multiplier (ECP5 MULT18X18D) takes 17-bit unsigned limbs + a sign

_GOLDEN_INT_WIDTH = 64  # the golden model computes in int64: no wider words


def round_shift(x, shift: int) -> Value:
    """``x / 2**shift`` rounded half away from zero; ``x`` must be a signed value, ``shift`` >= 0."""
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    x = Value.cast(x)
    if not x.shape().signed:
        raise TypeError(f"round_shift needs a signed value, got {x.shape()}")
    if shift == 0:
        return x
    biased = x + Const(1 << (shift - 1), unsigned(shift)) - x[-1]
    return biased.as_signed() >> shift


def _check_shift_operands(y, p, shift):
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    y, p = Value.cast(y), Value.cast(p)
    if not (y.shape().signed and p.shape().signed):
        raise TypeError(f"need signed values, got {y.shape()} and {p.shape()}")
    return y, p


def add_round_shift(y, p, shift: int) -> Value:
    """``y + round_shift(p, shift)`` = ((y·2^s + 2^(s−1) − 1) + p + [p >= 0]) >> s, one adder."""
    y, p = _check_shift_operands(y, p, shift)
    if shift == 0:
        return y + p
    above = Cat(Const((1 << (shift - 1)) - 1, shift), y).as_signed()
    return (above + p + ~p[-1]).as_signed() >> shift


def sub_round_shift(y, p, shift: int) -> Value:
    """``y − round_shift(p, shift)`` = ((y·2^s + 2^(s−1)) + ~p + [p < 0]) >> s, one adder.

    (−floor(q / 2^s) = floor((2^s − 1 − q) / 2^s) with q = p + 2^(s−1) − [p < 0], and ~p = −p − 1.)
    """
    y, p = _check_shift_operands(y, p, shift)
    if shift == 0:
        return y - p
    above = Cat(Const(1 << (shift - 1), shift), y).as_signed()
    return (above + ~p + p[-1]).as_signed() >> shift


def wrap(x, width: int) -> tuple[Value, Value]:
    """Two's-complement wrap of signed ``x`` to ``width`` bits: (wrapped ``signed(width)``, overflow flag)."""
    if not 1 <= width <= _GOLDEN_INT_WIDTH:
        raise ValueError(f"width must be in 1..{_GOLDEN_INT_WIDTH}, got {width}")
    x = Value.cast(x)
    if not x.shape().signed:
        raise TypeError(f"wrap needs a signed value, got {x.shape()}")
    if x.shape().width <= width:
        return x.as_signed(), Const(0, 1)
    wrapped = x[:width].as_signed()
    return wrapped, wrapped != x


def saturating_add(counter, events, width: int) -> Value:
    """``min(counter + events, 2**width - 1)`` for unsigned ``counter`` and ``events``."""
    total = Value.cast(counter) + Value.cast(events)
    top = (1 << width) - 1
    return Mux(total > top, top, total)[:width]


def _limbs(x: Value, limb: int) -> list[tuple[Value, int]]:
    """Signed ``x`` as [(limb value, bit offset)]: unsigned ``limb``-bit limbs, a signed top limb."""
    width = x.shape().width
    parts, pos = [], 0
    while width - pos > limb + 1:
        parts.append((Cat(x[pos:pos + limb], Const(0, 1)).as_signed(), pos))
        pos += limb
    parts.append((x[pos:].as_signed(), pos))
    return parts


def partial_products(a, b, limb: int = DSP_LIMB) -> list[tuple[Value, int]]:
    """Signed ``a × b`` as [(product of two ≤ limb+1-bit signed limbs, shift)]; Σ p << shift = a·b."""
    a, b = Value.cast(a), Value.cast(b)
    if not (a.shape().signed and b.shape().signed):
        raise TypeError(f"need signed values, got {a.shape()} and {b.shape()}")
    return [(x * y, sx + sy) for x, sx in _limbs(a, limb) for y, sy in _limbs(b, limb)]
