"""The on-board model: linear HRU -> mean of positions -> host head -> softmax cross-entropy.

    x_k (N) -> HRU (P oscillators, A >= 0, B (P, N), delta per oscillator) -> y_1..y_L
    ybar = (1/L) Σ_k y_k   (the board's running position sum, divided on the host)
    logits = W·ybar + c,   loss = softmax cross-entropy            (head on the host, float64)

Every algorithm runs the same three stages, so they differ only where the hardware would:
1. forward: the HRU gives ybar (float64 reference, or the bit-exact integer model = the board);
2. head: loss, exact head gradients and the upstream gradient e = dL/dybar (host, float64);
3. HRU gradients for A and B from e:
   - ``bptt``       float64 autodiff through the whole trajectory (hru_float.bptt);
   - ``rhel-float`` float64 echo pair with the mean-pool nudge dL/dy_k = e/L at every step;
   - ``rhel``       integer echo pair on the board (hru_fixed.echo) with the quantised nudge,
                    accumulators summed over the minibatch as the board's do, scaled on the host.

For ``rhel`` stages 1 and 3 run on a :class:`FixedTarget`: the in-process integer model
(:class:`InProcessTarget`, vmapped, the default) or a board (host.train.BoardTarget, through the
Board API). Everything else (chunking, quantisation, the head, the nudge, the scaling) is this
one driver, so a board and the in-process model give bit-identical losses, gradients and overflow
counts whenever the board computes hru_fixed's integers. Per minibatch the driver calls
``load(q)`` once, ``run(uq, live, on_forward)`` per chunk (per live lane in order: zero-state
forward, ``on_forward(lane, pos_sum)`` -> the integer nudge or None, echo pair onto the running
accumulators) and ``finish()`` once (read and clear the accumulators). The head is evaluated one
sample at a time in numpy (:func:`_head`) on every path, so its floats cannot depend on how many
samples a target runs side by side.

delta is *not trained* in any algorithm: the board accumulates A and B only, so freezing delta
everywhere keeps the three comparable. Parameters live on the host in float64 ("master
weights"); the fixed path quantises them (hru_fixed.quantize_linear_params) before each use.

Variable lengths: padding steps never enter the HRU. A batch is cut into chunks of LANES samples
of equal true length, each chunk vmapped over its lanes and run on exactly that length; a short
chunk is filled with zero-weight copies, so every length compiles once. A zero-weight lane gets
a zero nudge: its two echoes are identical and add exactly zero to the accumulators.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import hru_float as hf
from echoboard.golden_model.fixed import int_range, wrap
from echoboard.golden_model.formats import FixedFormat, dequantize

ALGOS = ("bptt", "rhel-float", "rhel")
TRAINED = ("A", "B", "W", "c")  # delta is fixed (see module docstring)
DEFAULT_OSCILLATORS = 32
LANES = 8  # samples run side by side (vmapped); one fixed width = one compiled shape per length
LANE_STEPS = 1 << 16  # chunks longer than this (lanes × steps) shrink to their live samples (chunk_lanes)
FLOAT_EPSILON = 0.1  # the paper's nudge strength; the linear HRU's echo is exact for any epsilon


class BatchResult(NamedTuple):
    loss: float  # mean cross-entropy over the batch
    grads: dict  # mean gradients for TRAINED
    correct: int  # samples classified correctly by the forward pass that produced the gradients
    overflow_events: int  # wrap events counted by the integer model (0 for the float paths)


def init_params(rng: np.random.Generator, n_inputs: int, n_classes: int,
                oscillators: int = DEFAULT_OSCILLATORS) -> dict:
    """The paper's init: A ~ U(0,1), B ~ U(±1/√N), delta = sigmoid(U(0,1)); head W ~ U(±1/√P), c = 0."""
    if min(n_inputs, n_classes, oscillators) < 1:
        raise ValueError(f"sizes must be positive: inputs {n_inputs}, classes {n_classes}, oscillators {oscillators}")
    p = oscillators
    return {
        "A": rng.uniform(0.0, 1.0, p),
        "B": rng.uniform(-1.0, 1.0, (p, n_inputs)) / np.sqrt(n_inputs),
        "delta": 1.0 / (1.0 + np.exp(-rng.uniform(0.0, 1.0, p))),
        "W": rng.uniform(-1.0, 1.0, (n_classes, p)) / np.sqrt(p),
        "c": np.zeros(n_classes),
    }


def project(params: dict, fmt: FixedFormat) -> tuple[dict, int]:
    """Onto the stable set (A >= 0, delta²A <= 4) and the coefficient range of ``fmt``.

    Applied after every update in every algorithm, so they train the same constrained model.
    Returns (params, clipped): how many A/B entries had left the representable range, which
    means the format is too narrow for what training wants and should be reported.
    """
    a_max = int_range(fmt.coef_width)[1] / 2.0 ** fmt.coef_a_frac
    b_lo, b_hi = (v / 2.0 ** fmt.coef_b_frac for v in int_range(fmt.coef_width))
    A, B = params["A"], params["B"]
    clipped = int(np.count_nonzero(A > a_max) + np.count_nonzero((B < b_lo) | (B > b_hi)))
    A = np.clip(A, 0.0, np.minimum(4.0 / params["delta"] ** 2, a_max))
    return {**params, "A": A, "B": np.clip(B, b_lo, b_hi)}, clipped


def _hru(params):
    return {k: jnp.asarray(params[k]) for k in ("A", "B", "delta")}


def _sum_over_lanes(tree):
    return jax.tree.map(lambda t: t.sum(0), tree)


# ---- stage 1: forward passes, (G, L, N) -> ybar (G, P) ------------------------------------------

@jax.jit
def _float_forward(hp, u):
    zero = jnp.zeros_like(hp["A"])
    y, z, pos_sum = jax.vmap(lambda uu: hf.forward(hf.LINEAR, hp, uu, zero, zero))(u)
    return y, z, pos_sum / u.shape[1]


@partial(jax.jit, static_argnames="fmt")
def _fixed_forward(q, uq, fmt):
    zero = jnp.zeros(q.A.shape, jnp.int64)
    return jax.vmap(lambda uu: hx.forward(q, uu, zero, zero, fmt))(uq)


# ---- stage 2: the head on the host ---------------------------------------------------------------

def _head(W: np.ndarray, c: np.ndarray, ybar: np.ndarray, label: int):
    """One sample: (loss, logits, {W, c} gradients, e = dL/dybar), float64 numpy."""
    logits = W @ ybar + c
    top = logits.max()
    lse = top + np.log(np.sum(np.exp(logits - top)))
    g = np.exp(logits - lse)
    g[label] -= 1.0  # dL/dlogits = softmax - onehot
    return float(lse - logits[label]), logits, {"W": np.outer(g, ybar), "c": g}, W.T @ g


# ---- stage 3: HRU gradients from e, summed over the lanes ----------------------------------------

@jax.jit
def _bptt_grads(hp, u, e):
    zero = jnp.zeros_like(hp["A"])

    def one(uu, ee):  # autodiff of e·ybar through the trajectory = BPTT of the loss (chain rule)
        _, g = hf.bptt(hf.LINEAR, hp, uu, zero, zero, lambda ys: jnp.dot(ee, ys.mean(axis=0)))
        return {"A": g["A"], "B": g["B"]}

    return _sum_over_lanes(jax.vmap(one)(u, e))


@jax.jit
def _rhel_float_grads(hp, u, y, z, e):
    length = u.shape[1]

    def one(uu, yy, zz, ee):
        g, _ = hf.echo(hf.LINEAR, hp, uu, yy, zz, ee / length, FLOAT_EPSILON)
        return {"A": g["A"], "B": g["B"]}

    return _sum_over_lanes(jax.vmap(one)(u, y, z, e))


@partial(jax.jit, static_argnames="fmt")
def _fixed_echo_lanes(q, uq, y, z, nudge, acc_a, acc_b, fmt):
    """Echo pairs of a chunk, one lane after the other onto the running accumulators.

    Sequential like the board: each pass starts from the accumulators the previous one left,
    so a wrap of the running sum is counted in the pass (and at the step) where it happens.
    """
    def one(acc, lane):
        uu, yy, zz, nn = lane
        r = hx.echo(q, uu, yy, zz, nn, fmt, acc_a=acc[0], acc_b=acc[1])
        return (r.acc_a, r.acc_b), r.overflows

    (acc_a, acc_b), overflows = jax.lax.scan(one, (acc_a, acc_b), (uq, y, z, nudge))
    return acc_a, acc_b, overflows


@partial(jax.jit, static_argnames="fmt")
def _fixed_echo_parallel(q, uq, y, z, nudge, acc_a, acc_b, fmt):
    """Echo pairs of a chunk side by side from zero accumulators, then added (one wrap each).

    Equal to :func:`_fixed_echo_lanes` (values and counts) only when no running sum can wrap:
    :meth:`InProcessTarget.run` checks that bound before it takes this faster path.
    """
    r = jax.vmap(lambda uu, yy, zz, nn: hx.echo(q, uu, yy, zz, nn, fmt))(uq, y, z, nudge)
    acc_a, _ = wrap(acc_a + r.acc_a.sum(axis=0), fmt.acc_width)
    acc_b, _ = wrap(acc_b + r.acc_b.sum(axis=0), fmt.acc_width)
    return acc_a, acc_b, r.overflows


def _max_term(fmt: FixedFormat) -> int:
    """A bound on |one step's accumulator term|: |d|, |S| < 2^(Ws-1), |u| <= 2^(Wu-1)."""
    ws, wu = fmt.state_width - 1, fmt.input_width - 1
    return max(((1 << (2 * ws)) >> fmt.acc_a_shift) + 1, ((1 << (ws + wu)) >> fmt.acc_b_shift) + 1)


# ---- the fixed-point target: where stages 1 and 3 run ---------------------------------------------

class FixedTarget(Protocol):
    """What runs the integer HRU for ``rhel``: the in-process model, or a board (host/)."""

    def load(self, q: hx.LinearParamsInt) -> None:
        """New parameters for the next minibatch (or evaluation); the accumulators start from zero."""

    def run(self, uq: np.ndarray, live: np.ndarray, on_forward) -> int:
        """One chunk uq (G, L, N) of one true length; only lanes with ``live`` are real samples.

        Per live lane in order: zero-state forward; ``nudge = on_forward(lane, pos_sum)``; if
        the nudge (P,) is not None, the echo pair adds onto the accumulators. Returns the forward
        and echo (±ε) overflow events of the live lanes.
        """

    def finish(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(acc_a, acc_b, gradient overflow events) summed since ``load``; then zero them."""


class InProcessTarget:
    """hru_fixed in process: forwards vmapped over a chunk's lanes, echoes onto running accumulators."""

    def __init__(self, fmt: FixedFormat = FixedFormat()):
        self.fmt = fmt

    def load(self, q: hx.LinearParamsInt) -> None:
        self.q = q
        self.acc_a, self.acc_b = jnp.zeros(q.A.shape, jnp.int64), jnp.zeros(q.B.shape, jnp.int64)
        self.gradient_events = 0

    def run(self, uq, live, on_forward) -> int:
        fmt, live = self.fmt, np.asarray(live)
        fwd = _fixed_forward(self.q, jnp.asarray(uq), fmt)
        pos_sum = np.asarray(fwd.pos_sum)
        overflows = int(np.sum(np.asarray(fwd.overflows)[live]))
        nudges = [on_forward(lane, pos_sum[lane]) if live[lane] else None for lane in range(len(live))]
        echoed = np.array([n is not None for n in nudges])
        if not echoed.any():
            return overflows
        # lanes not echoed get a zero nudge: identical echoes, exactly zero accumulator terms
        nudge = np.stack([np.zeros(pos_sum.shape[1], np.int64) if n is None else np.asarray(n) for n in nudges])
        # when no running sum can wrap in this chunk, any order gives the same values and counts:
        # the vmapped path; otherwise lane after lane, as the board does
        bound = max(max(-int(a.min()), int(a.max())) for a in (np.asarray(self.acc_a), np.asarray(self.acc_b)))
        safe = bound + int(echoed.sum()) * uq.shape[1] * _max_term(fmt) < 1 << (fmt.acc_width - 1)
        echo = _fixed_echo_parallel if safe else _fixed_echo_lanes
        self.acc_a, self.acc_b, ovf = echo(self.q, jnp.asarray(uq), fwd.y, fwd.z, jnp.asarray(nudge),
                                           self.acc_a, self.acc_b, fmt)
        ovf = np.asarray(ovf)[echoed]
        self.gradient_events += int(ovf[:, 2].sum())
        return overflows + int(ovf[:, :2].sum())

    def finish(self):
        limit = (1 << self.fmt.counter_width) - 1  # the board's gradient counter saturates
        result = (np.asarray(self.acc_a), np.asarray(self.acc_b), min(self.gradient_events, limit))
        self.load(self.q)
        return result


# ---- driver --------------------------------------------------------------------------------------

def check_batch(algo: str, x, lengths, labels=None):
    """Clear errors for a bad algorithm or batch shape; returns (x, lengths) as arrays (HSSM too)."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}")
    x, lengths = np.asarray(x), np.asarray(lengths)
    if x.ndim != 3 or lengths.shape != (x.shape[0],):
        raise ValueError(f"expected x (S, L_max, N) and lengths (S,), got {x.shape} and {lengths.shape}")
    if x.shape[0] == 0:
        raise ValueError("empty batch")
    if np.any(lengths < 1) or np.any(lengths > x.shape[1]):
        raise ValueError(f"lengths must be in 1..{x.shape[1]}, got {lengths.min()}..{lengths.max()}")
    if labels is not None and np.asarray(labels).shape != lengths.shape:
        raise ValueError(f"expected labels of shape {lengths.shape}, got {np.asarray(labels).shape}")
    return x, lengths


def chunk_lanes(length: int, count: int) -> int:
    """Lanes of a chunk of ``count`` samples of ``length`` steps.

    Short sequences run LANES wide (one compiled shape per length; dead lanes cost little). Past
    LANE_STEPS steps per chunk the dead lanes would hold O(L) activations each, so the width shrinks
    to the smallest power of two that holds the live samples (at most log2(LANES) + 1 shapes per
    length): one long sample costs one sample's memory.
    """
    if length * LANES <= LANE_STEPS:
        return LANES
    return min(LANES, 1 << max(0, int(count) - 1).bit_length())


def chunks(lengths):
    """(length, sample indices, weights) for chunks of up to LANES samples of one true length."""
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        for start in range(0, len(idx), LANES):
            part = idx[start:start + LANES]
            lanes = chunk_lanes(length, len(part))
            yield int(length), np.concatenate([part, np.full(lanes - len(part), part[0])]), np.arange(lanes) < len(part)


def _run(params, x, lengths, labels, algo, fmt, with_grads, target: FixedTarget | None = None):
    """The three stages over every chunk; returns (loss, grads, logits, overflow events)."""
    fixed = algo == "rhel"
    W, c = np.asarray(params["W"], np.float64), np.asarray(params["c"], np.float64)
    labels = np.zeros(len(lengths), np.int64) if labels is None else np.asarray(labels)
    logits = np.zeros((len(lengths), W.shape[0]))
    loss, overflows = 0.0, 0
    grads = {k: np.zeros_like(params[k], dtype=np.float64) for k in TRAINED}

    def head(i, ybar):
        """Stage 2 for sample i; returns e = dL/dybar (adds the loss and head gradients)."""
        nonlocal loss
        sample_loss, logits[i], dhead, e = _head(W, c, ybar, labels[i])
        loss += sample_loss
        if with_grads:
            for k in ("W", "c"):
                grads[k] += dhead[k]
        return e

    if fixed:
        q = hx.quantize_linear_params(params, fmt)
        target = InProcessTarget(fmt) if target is None else target
        target.load(q)
    else:
        hp = _hru(params)
    for length, idx, w in chunks(lengths):
        u = x[idx, :length]
        if fixed:
            def on_forward(lane, pos_sum, idx=idx, length=length):
                e = head(idx[lane], dequantize(np.asarray(pos_sum), fmt.state_frac) / length)
                return np.asarray(hx.quantize_nudge(e / length, fmt)) if with_grads else None

            overflows += target.run(np.asarray(hx.quantize_inputs(u, fmt)), w, on_forward)
            continue
        y, z, ybar = _float_forward(hp, jnp.asarray(u))
        ybar = np.asarray(ybar)
        e = np.stack([head(i, ybar[lane]) if w[lane] else np.zeros(ybar.shape[1]) for lane, i in enumerate(idx)])
        if with_grads:  # zero-weight copies got a zero e: exactly zero gradient
            g = (_bptt_grads(hp, jnp.asarray(u), jnp.asarray(e)) if algo == "bptt"
                 else _rhel_float_grads(hp, jnp.asarray(u), y, z, jnp.asarray(e)))
            for k in ("A", "B"):
                grads[k] += np.asarray(g[k])
    if fixed:
        acc_a, acc_b, gradient_events = target.finish()
        overflows += gradient_events
        if with_grads:
            grads.update(hx.gradients(q, acc_a, acc_b, fmt))
    n = len(lengths)
    return loss / n, {k: v / n for k, v in grads.items()}, logits, overflows


def batch_gradients(params: dict, x, lengths, labels, algo: str, fmt: FixedFormat = FixedFormat(),
                    target: FixedTarget | None = None) -> BatchResult:
    """Mean loss and gradients of a minibatch (x (S, L_max, N) zero-padded, true ``lengths``) by ``algo``.

    Gradients are averaged over the batch: the board sums its accumulators over the whole batch
    and the host scales once. The head always gets its exact float64 gradient. ``target``: where
    ``rhel`` runs the integer HRU (default: in process).
    """
    x, lengths = check_batch(algo, x, lengths, labels)
    loss, grads, logits, overflows = _run(params, x, lengths, labels, algo, fmt, with_grads=True, target=target)
    correct = int(np.sum(np.argmax(logits, axis=1) == np.asarray(labels)))
    return BatchResult(loss, grads, correct, overflows)


def predict(params: dict, x, lengths, algo: str, fmt: FixedFormat = FixedFormat(),
            target: FixedTarget | None = None) -> tuple[np.ndarray, int]:
    """Logits (S, C) from the forward pass ``algo`` trains with (the integer model for ``rhel``), and overflows."""
    x, lengths = check_batch(algo, x, lengths)
    _, _, logits, overflows = _run(params, x, lengths, None, algo, fmt, with_grads=False, target=target)
    return logits, overflows
