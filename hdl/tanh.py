"""The tanh of golden_model.tanh_table in hardware: the ROM as two block RAMs, a 5-stage pipeline.

golden_model.tanh_table.tanh_fixed is the specification (|x| -> ROM address i and fraction f,
clamp at the last entry, t = table[i] + R((table[i+1] − table[i])·f, r), sign applied last).
Interpolation needs table[i] and table[i + 1] in the same cycle. The ROM is split by index
parity into ``even`` (table[0::2]) and ``odd`` (table[1::2]): i and i + 1 always fall in
different halves, so each half needs ONE read per evaluation, at address (i + 1) >> 1 (even)
and i >> 1 (odd). Each half has one read port per user (``TanhRom.port``), so the nonlinear
lane's two evaluations per clock (the force's tanh(a) and the read-out's tanh(ā)) cost two
dual-port block RAMs for the default 2048 × 18 table (ECP5: 2 DP16KD in 1024 × 18 mode), the
same as one single copy of it.

``tanh_stages`` appends five stages to a Pipeline, argument in the current stage -> result:
  1. |x| = (x XOR sign) + sign and |x| + 2^r (whose bits r+1.. are (i + 1) >> 1: the even
     half's address without a second adder after the first), the sign;
  2. the clamp (i >= N − 1: an AND/OR of |x|'s upper bits, no comparator) selects the odd
     half's address; both ROM addresses are presented (block RAM read);
  3. the ROM words: lo = table[i] and d = even − odd, straight from the block RAM outputs
     (no mux in front of the subtraction), and ±f; hi − lo is d (i odd) or −d (i even), so
     (hi − lo)·f = d·(±f) and no carry chain sits in front of the multiplier (with hi − lo
     there, it was the core's critical path: 94.9 MHz out of context, 101.1 MHz without);
  4. d·(±f) (one 18×18 multiplier: the table's largest step has few bits) and ±lo;
  5. t = ±lo ± R((hi − lo)·f, r), one carry chain: tanh is odd and R is odd, so the sign is
     folded into the interpolation's add instead of a negation after it.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Value, signed, unsigned
from amaranth.lib import memory

from echoboard.golden_model.tanh_table import TanhSpec
from echoboard.hdl.fixed import add_round_shift, partial_products, sub_round_shift
from echoboard.hdl.pipeline import Pipeline

__all__ = ["TanhRom", "tanh_stages", "TANH_LATENCY"]

TANH_LATENCY = 5  # stages from the argument to the result


class TanhRom:
    """The tanh table as its even and odd halves (two memories with one read port per user)."""

    def __init__(self, m: Module, spec: TanhSpec, name: str = "tanh"):
        self.spec = spec
        table = spec.table()
        shape = unsigned(spec.entry_width)
        m.submodules[f"{name}_even"] = self._even = memory.Memory(shape=shape, depth=spec.entries // 2,
                                                                  init=table[0::2].tolist())
        m.submodules[f"{name}_odd"] = self._odd = memory.Memory(shape=shape, depth=spec.entries // 2,
                                                                init=table[1::2].tolist())
        self.step_width = int(max(table[1:] - table[:-1])).bit_length()  # the largest hi − lo, unsigned

    def port(self):
        """A new (even, odd) pair of read ports for one tanh evaluation per clock."""
        return self._even.read_port(), self._odd.read_port()


def tanh_stages(pipe: Pipeline, arg: str, x_frac: int, rom: TanhRom, ports, out: str, drop=()) -> dict:
    """Append TANH_LATENCY stages to ``pipe``: field ``out`` = tanh_fixed(field ``arg``, x_frac)
    (signed, out_frac + 2 bits). ``ports``: one ``rom.port()``; ``drop``: fields to drop at the
    first stage (``arg`` itself is kept)."""
    spec = rom.spec
    r = x_frac - spec.addr_frac
    if r < 0:
        raise ValueError(f"the tanh argument needs at least addr_frac = {spec.addr_frac} fractional bits, got {x_frac}")
    index_bits = spec.addr_frac + spec.range_log2  # ROM index i of N = 2**index_bits entries
    even, odd = ports
    x = Value.cast(pipe.f[arg])
    neg = x[-1]
    ones = Mux(neg, ~x, x).as_unsigned()  # |x| − [x < 0], no carry chain
    s = pipe.advance(drop=drop, tanh_neg=neg, tanh_mag=ones + neg, tanh_next=ones + neg + (1 << r))
    # |x| padded so that every slice below exists even for a narrow argument
    mag = Cat(s["tanh_mag"], Const(0, r + index_bits + 1))
    clamp = mag[r + index_bits:].any() | mag[r:r + index_bits].all()  # i >= N − 1
    half = index_bits - 1  # address bits of each half
    pipe.module.d.comb += [
        even.addr.eq(s["tanh_next"][r + 1:r + 1 + half]),  # (i + 1) >> 1 (unused when clamped: f = 0)
        odd.addr.eq(Mux(clamp, (1 << half) - 1, mag[r + 1:r + 1 + half])),  # i >> 1; clamped: (N − 2) / 2
    ]
    s = pipe.advance(drop=("tanh_mag", "tanh_next"), tanh_odd=clamp | mag[r],
                     **({"tanh_frac": Mux(clamp, 0, mag[:r])} if r else {}))
    # |hi − lo| < 2**step_width whenever f != 0 (the table is monotone); clamped, f = 0
    step = {"tanh_step": (even.data - odd.data)[:rom.step_width + 1].as_signed(),
            "tanh_sfrac": Mux(s["tanh_odd"], Cat(s["tanh_frac"], Const(0, 1)).as_signed(), -s["tanh_frac"]),
            } if r else {}
    s = pipe.advance(drop=("tanh_odd", "tanh_frac"), tanh_lo=Mux(s["tanh_odd"], odd.data, even.data), **step)
    products = partial_products(s["tanh_step"], s["tanh_sfrac"]) if r else []
    s = pipe.advance(drop=("tanh_lo", "tanh_step", "tanh_sfrac"),
                     tanh_signed_lo=Mux(s["tanh_neg"], -s["tanh_lo"], s["tanh_lo"]),
                     **{f"tanh_p{k}": p for k, (p, _) in enumerate(products)})
    interp = sum((s[f"tanh_p{k}"] << shift for k, (_, shift) in enumerate(products)), Const(0, signed(2)))
    lo = s["tanh_signed_lo"]
    t = Mux(s["tanh_neg"], sub_round_shift(lo, interp, r), add_round_shift(lo, interp, r))
    width = spec.out_frac + 2  # |t| <= 2**out_frac: exact, nothing to wrap
    return pipe.advance(drop=("tanh_neg", "tanh_signed_lo", *(f"tanh_p{k}" for k in range(len(products)))),
                        **{out: t[:width].as_signed()})
