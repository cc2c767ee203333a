"""A second, independent implementation of the integer linear HRU contract in plain Python ints.

It follows golden_model/hru_fixed.py's documented operation order line by line, with Python's
arbitrary-precision integers and Fraction-based rounding, so a slip in the JAX int64 code (a
wrong shift, a missed wrap, int64 overflow) shows up as a mismatch.
"""
from fractions import Fraction


def rnd(x: int, shift: int) -> int:
    q = Fraction(x, 2**shift)
    m = int(abs(q) + Fraction(1, 2))
    return m if q >= 0 else -m


def wrap(x: int, width: int) -> tuple[int, int]:
    w = ((x + 2 ** (width - 1)) % 2**width) - 2 ** (width - 1)
    return w, int(w != x)


def step(A, B, delta, y, z, u, fmt):
    """One step for all oscillators; returns (y, z, yh, b, events)."""
    ws, ev = fmt.state_width, 0
    ys, zs, yhs, bs = [], [], [], []
    for i in range(len(A)):
        b, o0 = wrap(rnd(sum(B[i][j] * u[j] for j in range(len(u))), fmt.coef_b_frac + fmt.input_frac - fmt.state_frac), ws)
        yh, o1 = wrap(y[i] + rnd(delta[i] * z[i], fmt.delta_frac + 1), ws)
        f, o2 = wrap(rnd(A[i] * yh, fmt.coef_a_frac) - b, ws)
        zn, o3 = wrap(z[i] - rnd(delta[i] * f, fmt.delta_frac), ws)
        yn, o4 = wrap(yh + rnd(delta[i] * zn, fmt.delta_frac + 1), ws)
        ev += o0 + o1 + o2 + o3 + o4
        ys.append(yn), zs.append(zn), yhs.append(yh), bs.append(b)
    return ys, zs, yhs, ev


def forward(A, B, delta, u_seq, y, z, fmt):
    pos_sum, ovf = [0] * len(A), 0
    for u in u_seq:
        y, z, _, ev = step(A, B, delta, y, z, u, fmt)
        ovf += ev
        for i in range(len(A)):
            pos_sum[i], o = wrap(pos_sum[i] + y[i], fmt.acc_width)
            ovf += o
    return y, z, pos_sum, ovf


def echo(A, B, delta, u_seq, y_final, z_final, nudges, fmt, acc_a=None):
    """nudges: a list of L per-state nudge vectors (state 1..L); acc_a: starting A accumulators."""
    ws, L, P, N = fmt.state_width, len(u_seq), len(A), len(u_seq[0])
    ovf = [0, 0, 0]
    ys, zs = [], []
    for s, sign in enumerate((1, -1)):
        zz = []
        for i in range(P):
            v, o = wrap(-z_final[i] + sign * nudges[L - 1][i], ws)
            zz.append(v)
            ovf[s] += o
        ys.append(list(y_final)), zs.append(zz)
    acc_a, acc_b = list(acc_a or [0] * P), [[0] * N for _ in range(P)]
    for m in range(L):
        j = L - 1 - m
        yhs = []
        for s, sign in enumerate((1, -1)):
            ys[s], zs[s], yh, ev = step(A, B, delta, ys[s], zs[s], u_seq[j], fmt)
            # the shared b is computed once in hardware: count its wraps once per echo like the JAX model
            ovf[s] += ev
            if j >= 1:
                for i in range(P):
                    zs[s][i], o = wrap(zs[s][i] + sign * nudges[j - 1][i], ws)
                    ovf[s] += o
            yhs.append(yh)
        for i in range(P):
            d, o1 = wrap(yhs[0][i] - yhs[1][i], ws)
            S, o2 = wrap(yhs[0][i] + yhs[1][i], ws)
            acc_a[i], o3 = wrap(acc_a[i] + rnd(d * S, fmt.acc_a_shift), fmt.acc_width)
            ovf[2] += o1 + o2 + o3
            for k in range(N):
                acc_b[i][k], o = wrap(acc_b[i][k] + rnd(d * u_seq[j][k], fmt.acc_b_shift), fmt.acc_width)
                ovf[2] += o
    return ys, zs, acc_a, acc_b, ovf
