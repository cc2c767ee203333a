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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from golden_model import hru_fixed as hx
from golden_model import hru_float as hf
from golden_model.fixed import int_range, wrap
from golden_model.formats import FixedFormat, dequantize

ALGOS = ("bptt", "rhel-float", "rhel")
TRAINED = ("A", "B", "W", "c")  # delta is fixed (see module docstring)
DEFAULT_OSCILLATORS = 32
LANES = 8  # samples run side by side (vmapped); one fixed width = one compiled shape per length
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

def _head_loss(head, ybar, label):
    logits = head["W"] @ ybar + head["c"]
    return jax.nn.logsumexp(logits) - logits[label], logits


# per sample: ((loss, logits), (d head, e = dL/dybar))
_head = jax.jit(jax.vmap(jax.value_and_grad(_head_loss, argnums=(0, 1), has_aux=True), in_axes=(None, 0, 0)))


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
def _fixed_echo(q, uq, y, z, nudge, acc_a, acc_b, fmt):
    """Echo pairs of a chunk added onto the running accumulators: the board's sum until read."""
    r = jax.vmap(lambda uu, yy, zz, nn: hx.echo(q, uu, yy, zz, nn, fmt))(uq, y, z, nudge)
    acc_a, oa = wrap(acc_a + r.acc_a.sum(axis=0), fmt.acc_width)
    acc_b, ob = wrap(acc_b + r.acc_b.sum(axis=0), fmt.acc_width)
    return acc_a, acc_b, r.overflows.sum(axis=1), jnp.sum(oa) + jnp.sum(ob)


# ---- driver --------------------------------------------------------------------------------------

def _check(algo: str, x, lengths, labels=None):
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


def _chunks(lengths):
    """(length, sample indices, weights) for chunks of LANES samples of one true length."""
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        for start in range(0, len(idx), LANES):
            part = idx[start:start + LANES]
            yield int(length), np.concatenate([part, np.full(LANES - len(part), part[0])]), np.arange(LANES) < len(part)


def _run(params, x, lengths, labels, algo, fmt, with_grads):
    """The three stages over every chunk; returns (loss, grads, logits, overflow events)."""
    fixed = algo == "rhel"
    hp, head = _hru(params), {"W": jnp.asarray(params["W"]), "c": jnp.asarray(params["c"])}
    labels = np.zeros(len(lengths), np.int64) if labels is None else np.asarray(labels)
    logits = np.zeros((len(lengths), params["W"].shape[0]))
    loss, overflows = 0.0, 0
    grads = {k: np.zeros_like(params[k]) for k in TRAINED}
    if fixed:
        q = hx.quantize_linear_params(params, fmt)
        acc_a, acc_b = jnp.zeros(q.A.shape, jnp.int64), jnp.zeros(q.B.shape, jnp.int64)
    for length, idx, w in _chunks(lengths):
        u = x[idx, :length]
        if fixed:
            uq = hx.quantize_inputs(u, fmt)
            fwd = _fixed_forward(q, uq, fmt)
            ybar = jnp.asarray(dequantize(fwd.pos_sum, fmt.state_frac) / length)
            overflows += int(np.sum(np.asarray(fwd.overflows)[w]))
        else:
            y, z, ybar = _float_forward(hp, jnp.asarray(u))
        (sample_loss, sample_logits), (dhead, e) = _head(head, ybar, jnp.asarray(labels[idx]))
        logits[idx[w]] = np.asarray(sample_logits)[w]
        loss += float(np.sum(np.asarray(sample_loss)[w]))
        if not with_grads:
            continue
        for k in ("W", "c"):
            grads[k] += np.tensordot(w, np.asarray(dhead[k]), axes=1)
        e = np.asarray(e) * w[:, None]  # zero-weight copies get a zero nudge: exactly zero gradient
        if fixed:
            nudge = hx.quantize_nudge(e / length, fmt)
            acc_a, acc_b, echo_ovf, acc_ovf = _fixed_echo(q, uq, fwd.y, fwd.z, nudge, acc_a, acc_b, fmt)
            overflows += int(np.sum(np.asarray(echo_ovf)[w])) + int(acc_ovf)
        else:
            g = (_bptt_grads(hp, jnp.asarray(u), jnp.asarray(e)) if algo == "bptt"
                 else _rhel_float_grads(hp, jnp.asarray(u), y, z, jnp.asarray(e)))
            for k in ("A", "B"):
                grads[k] += np.asarray(g[k])
    if with_grads and fixed:
        grads.update(hx.gradients(q, acc_a, acc_b, fmt))
    n = len(lengths)
    return loss / n, {k: v / n for k, v in grads.items()}, logits, overflows


def batch_gradients(params: dict, x, lengths, labels, algo: str, fmt: FixedFormat = FixedFormat()) -> BatchResult:
    """Mean loss and gradients of a minibatch (x (S, L_max, N) zero-padded, true ``lengths``) by ``algo``.

    Gradients are averaged over the batch: the board sums its accumulators over the whole batch
    and the host scales once. The head always gets its exact float64 gradient.
    """
    x, lengths = _check(algo, x, lengths, labels)
    loss, grads, logits, overflows = _run(params, x, lengths, labels, algo, fmt, with_grads=True)
    correct = int(np.sum(np.argmax(logits, axis=1) == np.asarray(labels)))
    return BatchResult(loss, grads, correct, overflows)


def predict(params: dict, x, lengths, algo: str, fmt: FixedFormat = FixedFormat()) -> tuple[np.ndarray, int]:
    """Logits (S, C) from the forward pass ``algo`` trains with (the integer model for ``rhel``), and overflows."""
    x, lengths = _check(algo, x, lengths)
    _, _, logits, overflows = _run(params, x, lengths, None, algo, fmt, with_grads=False)
    return logits, overflows
