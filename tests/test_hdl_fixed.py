"""hdl.fixed against golden_model.fixed in Amaranth's simulator: random (hypothesis) and edge values."""
import random

import jax.numpy as jnp
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from echoboard.golden_model import fixed as golden
from echoboard.hdl import fixed


def _simulate(inputs: dict, outputs: dict, vectors: list[dict]) -> list[dict]:
    """Apply each vector to the combinational ``inputs`` and read all ``outputs``."""
    m = Module()
    m.d.comb += [Signal(1).eq(0)]  # a module with only combinational logic still needs a body
    for name, sig in outputs.items():
        probe = Signal(sig.shape(), name=name)
        m.d.comb += probe.eq(sig)
        outputs[name] = probe
    results = []

    async def bench(ctx):
        for vec in vectors:
            for name, value in vec.items():
                ctx.set(inputs[name], value)
            results.append({name: ctx.get(sig) for name, sig in outputs.items()})

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return results


def _padded(values: list[int], size: int = 320) -> list[int]:
    """Fixed-length vectors, so JAX compiles each golden helper once per shape, not per example."""
    assert len(values) <= size
    return values + [0] * (size - len(values))


def _edges(width: int) -> list[int]:
    lo, hi = golden.int_range(width)
    return sorted({lo, lo + 1, -2, -1, 0, 1, 2, hi - 1, hi})


@pytest.mark.parametrize("width,shift", [(8, 0), (8, 1), (8, 3), (20, 7), (50, 17), (62, 16)])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_round_shift_matches_golden(width, shift, data):
    lo, hi = golden.int_range(width)
    values = data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=200)) + _edges(width)
    # all odd multiples of 2^(shift-1) near zero: the ties, where half-away differs from other modes
    if shift:
        values += [k * (1 << (shift - 1)) for k in range(-7, 8, 2) if lo <= k * (1 << (shift - 1)) <= hi]
    values = _padded(values)
    x = Signal(signed(width))
    got = _simulate({"x": x}, {"r": fixed.round_shift(x, shift)}, [{"x": v} for v in values])
    expected = golden.round_shift(jnp.asarray(values, jnp.int64), shift)
    assert [g["r"] for g in got] == [int(e) for e in expected]


@pytest.mark.parametrize("y_width,p_width,shift", [(8, 8, 0), (8, 10, 1), (16, 20, 5), (32, 50, 17), (33, 50, 14)])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_fused_add_and_sub_round_shift_match_golden(y_width, p_width, shift, data):
    def values(width):
        lo, hi = golden.int_range(width)
        drawn = data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=150))
        half = 1 << max(shift - 1, 0)  # multiples of half an LSB: the rounding ties
        return drawn + _edges(width) + [k * half for k in range(-5, 6) if lo <= k * half <= hi]

    ys, ps = values(y_width), values(p_width)
    pairs = [(ys[k % len(ys)], ps[k % len(ps)]) for k in range(max(len(ys), len(ps)))]
    pairs = (pairs + [(0, 0)] * 320)[:320]
    y, p = Signal(signed(y_width)), Signal(signed(p_width))
    got = _simulate({"y": y, "p": p},
                    {"add": fixed.add_round_shift(y, p, shift), "sub": fixed.sub_round_shift(y, p, shift)},
                    [{"y": a, "p": b} for a, b in pairs])
    rounded = golden.round_shift(jnp.asarray([b for _, b in pairs], jnp.int64), shift)
    assert [g["add"] for g in got] == [a + int(r) for (a, _), r in zip(pairs, rounded)]
    assert [g["sub"] for g in got] == [a - int(r) for (a, _), r in zip(pairs, rounded)]


@pytest.mark.parametrize("a_width,b_width", [(18, 18), (18, 32), (25, 32), (32, 32), (10, 8), (33, 16)])
def test_partial_products_sum_to_the_product(a_width, b_width):
    a, b = Signal(signed(a_width)), Signal(signed(b_width))
    parts = fixed.partial_products(a, b)
    assert all(len(p) <= 36 for p, _ in parts)  # each fits one 18x18 multiplier
    total = sum(p << shift for p, shift in parts)
    rng = random.Random(a_width * 100 + b_width)
    vectors = [{"a": x, "b": y} for x in _edges(a_width) for y in _edges(b_width)]
    vectors += [{"a": rng.randint(*golden.int_range(a_width)), "b": rng.randint(*golden.int_range(b_width))}
                for _ in range(200)]
    got = _simulate({"a": a, "b": b}, {"p": total}, vectors)
    assert [g["p"] for g in got] == [v["a"] * v["b"] for v in vectors]


@pytest.mark.parametrize("in_width,width", [(10, 4), (34, 32), (51, 32), (65, 64), (66, 40), (8, 8), (6, 12)])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_wrap_matches_golden(in_width, width, data):
    lo, hi = golden.int_range(min(in_width, 64))
    values = data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=200)) + _edges(min(in_width, 64))
    values += [v for v in _edges(width) if lo <= v <= hi]
    values += [v + s for v in _edges(width) for s in (-1, 1) if lo <= v + s <= hi]
    values = _padded(values)
    x = Signal(signed(in_width))
    wrapped, overflow = fixed.wrap(x, width)
    got = _simulate({"x": x}, {"w": wrapped, "o": overflow}, [{"x": v} for v in values])
    exp_w, exp_o = golden.wrap(jnp.asarray(values, jnp.int64), width)
    assert [g["w"] for g in got] == [int(e) for e in exp_w]
    assert [bool(g["o"]) for g in got] == [bool(e) for e in exp_o]


@pytest.mark.parametrize("width", [40, 64])
def test_accumulator_add_wrap_matches_golden_including_64_bits(width):
    """An accumulator's (width+1)-bit sum wrapped in hardware = golden add_wrap, whose int64 sum wraps at 64."""
    a, b = Signal(signed(width)), Signal(signed(width))
    wrapped, overflow = fixed.wrap(a + b, width)
    lo, hi = golden.int_range(width)
    pairs = [(hi, 1), (lo, -1), (hi, hi), (lo, lo), (hi, lo), (-5, 3), (hi - 3, 2), (lo + 1, -1)]
    got = _simulate({"a": a, "b": b}, {"w": wrapped, "o": overflow}, [{"a": x, "b": y} for x, y in pairs])
    exp_w, exp_o = golden.add_wrap(jnp.asarray([x for x, _ in pairs], jnp.int64),
                                   jnp.asarray([y for _, y in pairs], jnp.int64), width)
    assert [g["w"] for g in got] == [int(e) for e in exp_w]
    assert [bool(g["o"]) for g in got] == [bool(e) for e in exp_o]
    assert [bool(e) for e in exp_o] == [True, True, True, True, False, False, False, False]


@pytest.mark.parametrize("width", [1, 4, 32])
def test_saturating_add(width):
    c, e = Signal(unsigned(width)), Signal(unsigned(6))
    top = (1 << width) - 1
    vectors = [{"c": cv, "e": ev} for cv in sorted({0, 1, top // 2, top - 1, top}) for ev in (0, 1, 5, 63)]
    got = _simulate({"c": c, "e": e}, {"s": fixed.saturating_add(c, e, width)}, vectors)
    assert [g["s"] for g in got] == [min(v["c"] + v["e"], top) for v in vectors]


def test_helpers_reject_bad_arguments():
    with pytest.raises(ValueError, match="shift"):
        fixed.round_shift(Signal(signed(8)), -1)
    with pytest.raises(TypeError, match="signed"):
        fixed.round_shift(Signal(8), 2)
    with pytest.raises(ValueError, match="width"):
        fixed.wrap(Signal(signed(8)), 65)
