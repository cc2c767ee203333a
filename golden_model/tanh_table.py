"""The deterministic fixed-point tanh of the nonlinear HRU: a ROM plus linear interpolation.

The kick of the nonlinear HRU needs tanh, and reversibility needs it to be bit-identical in the
forward pass and both echoes, in the golden model, the HDL and a real board. So tanh is defined
here as integer operations on a table whose contents are a documented function of three numbers
(``TanhSpec``): ``k`` = addr_frac, ``m`` = range_log2, ``T`` = out_frac.

ROM: N = 2**(k + m) unsigned entries, ``table[i] = round(tanh(i / 2**k) * 2**T)`` (numpy float64,
round half up; entries are computed once and stored as int64). They cover [0, 2**m): tanh is
within 2**-T of 1 beyond 2**m = 8 for the default T = 17. Only magnitudes are stored; the sign
is applied outside, so tanh(−x) = −tanh(x) holds by construction, and the top entry is 2**T,
which needs T + 1 unsigned bits (18 for T = 17: one 18-bit BRAM word per entry).

Evaluation of x (two's complement with ``x_frac`` >= k fractional bits, r = x_frac − k):

    mag  = |x|
    i    = mag >> r                       ROM address
    if i >= N − 1:  t = table[N − 1]      clamp the ARGUMENT (tanh is flat there)
    else:           f = mag & (2**r − 1)  position inside the segment
                    t = table[i] + ((table[i+1] − table[i])·f + 2**(r−1)) >> r
    tanh(x) = −t if x < 0 else t          (T fractional bits, |tanh| <= 2**T)

Why interpolation rather than a nearest-entry lookup: the RHEL gradient is a finite difference
of two echoes whose tanh arguments differ by far less than a table step; a staircase tanh would
make that difference jump between 0 and one step, a piecewise-linear one keeps the local slope.
Measured (P = 16, N = 4, L = 2048, ε' = 0.5, vs float64 BPTT): nearest-entry lookup of the same
ROM gives W cosine 0.76 and norm ratio 1.72; interpolation gives cosine 0.99999, ratio 0.995.
It costs one (T+1)-bit x r-bit multiply and a second ROM read (dual-port BRAM, or the next entry
from the same port one cycle later). The interpolation error is at most step²/8·max|tanh''| =
2**(-2k)·0.0962 (plus 1 LSB of rounding): 0.2 LSB + 1 LSB at the defaults, i.e. 1.2 LSB of 2**-17.

The cost of clamping: the argument, not the integrator state, is clamped, so reversibility is
untouched (the kick only has to be deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jax.numpy as jnp
import numpy as np

MAX_ENTRIES = 4096


@dataclass(frozen=True)
class TanhSpec:
    """The three numbers that define the tanh ROM and its evaluation.

    addr_frac (k): fractional bits of the ROM address; step 2**-k.
    range_log2 (m): the table covers [0, 2**m); arguments beyond are clamped.
    out_frac (T): fractional bits of the result and of the entries.
    Defaults: 2048 entries x 18 bits (36 kbit: two ECP5 DP16KD blocks).
    """

    addr_frac: int = 8
    range_log2: int = 3
    out_frac: int = 17

    def __post_init__(self):
        problems = []
        if self.addr_frac < 0:
            problems.append(f"addr_frac must be >= 0, got {self.addr_frac}")
        if self.range_log2 < 1:
            problems.append(f"range_log2 must be >= 1, got {self.range_log2}")
        if not 1 <= self.out_frac <= 24:
            problems.append(f"out_frac must be in 1..24, got {self.out_frac}")
        if problems:
            raise ValueError("invalid TanhSpec: " + "; ".join(problems))
        if self.entries > MAX_ENTRIES:
            raise ValueError(f"invalid TanhSpec: {self.entries} entries exceed the block-RAM budget of {MAX_ENTRIES} "
                             "(lower addr_frac or range_log2)")

    @property
    def entries(self) -> int:
        return 1 << (self.addr_frac + self.range_log2)

    @property
    def entry_width(self) -> int:
        """Unsigned bits per ROM word: the largest entry is 2**T (tanh rounds up to 1 near 2**m)."""
        return int(self.table().max()).bit_length()

    def table(self) -> np.ndarray:
        """The ROM contents (int64, read-only): what the HDL initialises its memory with."""
        return _table(self.addr_frac, self.range_log2, self.out_frac)

    def max_interp_error_lsb(self) -> float:
        """Bound on |tanh_fixed − tanh| in output LSBs: interpolation step²/8·max|tanh''| + 1 (rounding)."""
        return 2.0 ** (-2 * self.addr_frac) / 8 * (4 / (3 * np.sqrt(3))) * 2.0 ** self.out_frac + 1.0


@lru_cache(maxsize=None)
def _table(addr_frac: int, range_log2: int, out_frac: int) -> np.ndarray:
    x = np.arange(1 << (addr_frac + range_log2), dtype=np.float64) / 2.0 ** addr_frac
    t = np.floor(np.tanh(x) * 2.0 ** out_frac + 0.5).astype(np.int64)
    t.setflags(write=False)
    return t


def tanh_fixed(x, x_frac: int, spec: TanhSpec):
    """tanh of int64 ``x`` (``x_frac`` fractional bits) with ``spec.out_frac`` fractional bits.

    Bit-exact definition in the module docstring. Works element-wise on any shape, inside jit.
    """
    r = x_frac - spec.addr_frac
    if r < 0:
        raise ValueError(f"the argument needs at least addr_frac = {spec.addr_frac} fractional bits, got {x_frac}")
    table = jnp.asarray(spec.table())
    last = spec.entries - 1
    mag = jnp.abs(x)
    i = jnp.minimum(mag >> r, last)
    lo = table[i]
    if r == 0:
        t = lo
    else:
        hi = table[jnp.minimum(i + 1, last)]
        f = jnp.where(i >= last, 0, mag & ((1 << r) - 1))
        t = lo + (((hi - lo) * f + (1 << (r - 1))) >> r)
    return jnp.where(x < 0, -t, t)
