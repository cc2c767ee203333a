"""The paper's Hamiltonian SSM (HSSM, rhel-algorithm.md §3.1), trained by BPTT or by RHEL.

    x_k (N) -> encoder h_k = W_e·x_k + b_e (H)                                   host
    K blocks:  u_k = (h_k − μ)/√(v + 1e-5)                 norm (running statistics) host
               y_k = HRU(u)_k, P oscillators, linear or nonlinear              board
               o_k = C·y_k + D⊙u_k;  g = GELU(o_k)                               host
               h_k ← h_k + (W1·g + b1) ⊙ sigmoid(W2·g + b2)      GLU, skip      host
    mean over time -> head W_h·h̄ + b_h -> softmax cross-entropy                  host

**Normalisation.** The paper's BatchNorm normalises each channel with the statistics of the
current minibatch over batch × time: a block could not start before the whole minibatch had
passed the block below, samples would be coupled in the backward pass (the nudges of one sample
would depend on all others), and evaluation would use other statistics than training. LayerNorm
per step streams, but for a univariate set (ACSF1) the encoder output is rank one plus a bias,
and normalising it per step throws away the signal's amplitude, which is the information there.
So each block normalises channel-wise with **running statistics**: μ and v are buffers updated
after every training minibatch from that minibatch's block inputs (exponential average, momentum
0.9) and treated as constants by every gradient. A block's normalisation is then known before
its first step, every sample is independent (any chunking gives the same bits), and training and
evaluation normalise alike. The buffers live in the parameter dict under ``block<k>.norm.mean``
/ ``.var`` (checkpointed, never trained).

**Algorithms.** ``bptt``: float64 autodiff through the whole stack. ``rhel-float`` and ``rhel``
run the stack the way the board mapping does (DESIGN.md, §2.6 of the reference), block by
block: the forward pass of every block (the HRU returns y_k per step), the loss, autodiff of
everything above the top HRU down to its per-step nudge dL/dy_k, the block's echo pair (its
parameter gradients, δ included, and its input-gradient stream du_j), autodiff through the
feed-forward maps into the nudge of the block below, and so on down. ``rhel-float`` echoes with
hru_float.echo; ``rhel`` with the bit-exact integer block (hru_block), everything between blocks
float64 on the host, exactly what a board and its host compute.

**Constraints** (``project``, after every update): δ in [2^-6, 1], A in [0.05, 4/δ²] (stable
leapfrog; A > 0 keeps an oscillator from drifting as a free particle past the state word under a
constant input), the nonlinear W in [0.5, 1.99], α in [0, 4], δ² (α + 2) ≤ 4, c in [−10, 10];
every HRU word within its fixed-point range.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from echoboard.golden_model import hru_block as hb
from echoboard.golden_model import hru_float as hf
from echoboard.golden_model.fixed import add_wrap, int_range
from echoboard.golden_model.formats import round_half_away
from echoboard.golden_model.model import ALGOS, check_batch, chunks  # noqa: F401 (ALGOS: the same three)

NORM_EPS = 1e-5
FEED_FORWARD = ("C", "D", "glu.W1", "glu.b1", "glu.W2", "glu.b2")
HEAD = ("head.W", "head.b")
NORM_MOMENTUM = 0.9
FLOAT_EPSILON = {"linear": 0.1, "nonlinear": 2.0 ** -4}  # float RHEL nudge; the nonlinear bias is O(ε²)
DELTA_RANGE = (2.0 ** -6, 1.0)
DELTA_INITS = ("paper", "log-uniform")
A_MIN = 0.05


@dataclass(frozen=True)
class Architecture:
    """Sizes of an HSSM: N inputs -> H hidden -> K blocks of P oscillators -> C classes."""

    inputs: int
    classes: int
    blocks: int = 2
    hidden: int = 32
    oscillators: int = 32
    hru: str = "linear"
    delta_init: str = "paper"  # or "log-uniform": DELTA_INITS

    def __post_init__(self):
        for name in ("inputs", "classes", "blocks", "hidden", "oscillators"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.hru not in hb.HRU_KINDS:
            raise ValueError(f"unknown HRU {self.hru!r}; choose one of {', '.join(hb.HRU_KINDS)}")
        if self.delta_init not in DELTA_INITS:
            raise ValueError(f"unknown delta init {self.delta_init!r}; choose one of {', '.join(DELTA_INITS)}")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("inputs", "classes", "blocks", "hidden", "oscillators", "hru", "delta_init")}

    def trained(self) -> tuple[str, ...]:
        """Dotted names of every trained tensor, input side first."""
        names = ["encoder.W", "encoder.b"]
        for k in range(self.blocks):
            names += [f"block{k}.{n}" for n in hb.PARAM_NAMES[self.hru]]
            names += [f"block{k}.{n}" for n in ("C", "D", "glu.W1", "glu.b1", "glu.W2", "glu.b2")]
        return (*names, "head.W", "head.b")


class BatchResult(NamedTuple):
    loss: float  # mean cross-entropy over the batch
    grads: dict  # mean gradients of Architecture.trained()
    correct: int
    overflow_events: int  # integer wraps (0 for the float algorithms)
    stats: dict  # the norm buffers after this minibatch (block<k>.norm.mean / .var)
    clipped: int  # block inputs and nudges the host saturated into their words (rhel only)


def _uniform(rng, bound, shape):
    return rng.uniform(-bound, bound, shape)


def _delta_init(rng, arch: Architecture, P: int):
    """The linear HRU's δ: the paper's sigmoid(U(0, 1)) ∈ (0.5, 0.73), or log-uniform over DELTA_RANGE.

    Why the second: an oscillator of period T steps averages out an input that lasts much longer
    than T. With the paper's δ every period is below ~13 steps (A ≥ 0.05), so a slow event (the
    64-step pulse of DelayedRecall-16000) barely moves any oscillator; log-spaced timescales, as
    S4 and LRU initialise theirs, put some periods in the hundreds of steps.
    """
    if arch.delta_init == "log-uniform":
        return np.exp(rng.uniform(np.log(DELTA_RANGE[0]), np.log(DELTA_RANGE[1]), P))
    return 1.0 / (1.0 + np.exp(-rng.uniform(0.0, 1.0, P)))


def init_params(rng: np.random.Generator, arch: Architecture) -> dict:
    """The paper's initialisation (rhel-algorithm.md §3.2, §3.3; eqx.nn.Linear's U(±1/√fan_in))."""
    N, H, P, C = arch.inputs, arch.hidden, arch.oscillators, arch.classes
    p = {"encoder.W": _uniform(rng, 1 / np.sqrt(N), (H, N)), "encoder.b": _uniform(rng, 1 / np.sqrt(N), H)}
    for k in range(arch.blocks):
        b = f"block{k}."
        if arch.hru == "linear":
            p |= {b + "A": rng.uniform(0.0, 1.0, P), b + "B": _uniform(rng, 1 / np.sqrt(H), (P, H)),
                  b + "delta": _delta_init(rng, arch, P)}
        else:
            p |= {b + "W": rng.uniform(0.5, 1.0, P), b + "b": np.zeros(P), b + "c": rng.uniform(-1.0, 1.0, P),
                  b + "alpha": rng.uniform(0.1, 1.0, P), b + "B": _uniform(rng, 1 / np.sqrt(H), (P, H)),
                  b + "delta": rng.uniform(0.05, 0.2, P)}
        p |= {b + "C": _uniform(rng, 1 / np.sqrt(P), (H, P)), b + "D": rng.normal(size=H)}
        for i in ("1", "2"):
            p |= {b + "glu.W" + i: _uniform(rng, 1 / np.sqrt(H), (H, H)), b + "glu.b" + i: _uniform(rng, 1 / np.sqrt(H), H)}
        p |= {b + "norm.mean": np.zeros(H), b + "norm.var": np.ones(H)}
    p |= {"head.W": _uniform(rng, 1 / np.sqrt(H), (C, H)), "head.b": _uniform(rng, 1 / np.sqrt(H), C)}
    return p


def project(params: dict, arch: Architecture, fmt) -> tuple[dict, int]:
    """Onto the constraints of the module docstring; returns (params, entries that left the format's
    range), which says the format is too narrow for what training wants (the model's own bounds,
    such as A >= 0.05, are not counted)."""
    base = hb.base_format(fmt)
    coef_hi = lambda frac: int_range(base.coef_width)[1] / 2.0 ** frac
    p, clipped = dict(params), 0

    def clip(name, lo, hi, format_range=False):
        nonlocal clipped
        v = np.asarray(p[name], np.float64)
        if format_range:
            clipped += int(np.count_nonzero((v < lo) | (v > hi)))
        p[name] = np.clip(v, lo, hi)

    for k in range(arch.blocks):
        b = f"block{k}."
        clip(b + "B", -coef_hi(base.coef_b_frac), coef_hi(base.coef_b_frac), format_range=True)
        clip(b + "delta", *DELTA_RANGE)
        if arch.hru == "linear":
            clip(b + "A", A_MIN, np.inf)
            clip(b + "A", A_MIN, coef_hi(base.coef_a_frac), format_range=True)
            p[b + "A"] = np.minimum(p[b + "A"], 4.0 / p[b + "delta"] ** 2)
        else:
            clip(b + "W", 0.5, 1.99)
            clip(b + "b", -8.0, coef_hi(fmt.coef_bias_frac), format_range=True)
            clip(b + "alpha", 0.0, 4.0)
            clip(b + "c", -10.0, 10.0)
            p[b + "delta"] = np.minimum(p[b + "delta"], 2.0 / np.sqrt(p[b + "alpha"] + 2.0))
    return p, clipped


# ---- the float pieces, one sample: x (L, N) ------------------------------------------------------

def block_slice(p: dict, k: int) -> dict:
    """Block k's tensors of a stack's ``p`` under their names within the block (``A``, ``norm.mean``, …)."""
    prefix = f"block{k}."
    return {name[len(prefix):]: v for name, v in p.items() if name.startswith(prefix)}


def hru_params(pk: dict, hru: str) -> dict:
    """The HRU's own float parameters (hru_block.PARAM_NAMES) of a block's tensors."""
    return {n: pk[n] for n in hb.PARAM_NAMES[hru]}


def encode(p, x):
    return x @ p["encoder.W"].T + p["encoder.b"]


def normalize(pk, h):
    return (h - pk["norm.mean"]) / jnp.sqrt(pk["norm.var"] + NORM_EPS)


def block_output(pk, h, u, ys):
    """h + GLU(GELU(C·y + D⊙u)): the feed-forward part of a block after its HRU."""
    g = jax.nn.gelu(ys @ pk["C"].T + pk["D"] * u, approximate=False)
    return h + (g @ pk["glu.W1"].T + pk["glu.b1"]) * jax.nn.sigmoid(g @ pk["glu.W2"].T + pk["glu.b2"])


def head_loss(p, h, label):
    """(cross-entropy, logits) of the mean over time of the top block's output."""
    logits = p["head.W"] @ h.mean(axis=0) + p["head.b"]
    return jax.nn.logsumexp(logits) - logits[label], logits


def stack_loss(p: dict, x, label, arch: Architecture):
    """One sample's loss with every HRU a float64 trajectory: what ``bptt`` differentiates.

    Returns (loss, (logits, the input h of every block)); the inputs give the norm's statistics.
    """
    hru = hf.HRUS[arch.hru]
    zero = jnp.zeros(arch.oscillators)
    h, inputs = encode(p, x), []
    for k in range(arch.blocks):
        pk = block_slice(p, k)
        inputs.append(h)
        u = normalize(pk, h)
        h = block_output(pk, h, u, hf.trajectory(hru, hru_params(pk, arch.hru), u, zero, zero))
    loss, logits = head_loss(p, h, label)
    return loss, (logits, inputs)


# ---- jitted, vmapped over a chunk's lanes ---------------------------------------------------------

@partial(jax.jit, static_argnames="arch")
def _bptt_chunk(p, x, labels, weights, arch):
    """(losses, logits, block inputs, summed weighted gradients of every tensor) by autodiff."""
    def one(xx, label, w):
        (loss, (logits, inputs)), g = jax.value_and_grad(lambda q: stack_loss(q, xx, label, arch), has_aux=True)(p)
        return loss, logits, inputs, jax.tree.map(lambda t: w * t, g)

    loss, logits, inputs, g = jax.vmap(one)(x, labels, weights)
    return loss, logits, inputs, jax.tree.map(lambda t: t.sum(0), g)


_encode = jax.jit(jax.vmap(encode, in_axes=(None, 0)))
_normalize = jax.jit(jax.vmap(normalize, in_axes=(None, 0)))
_block_output = jax.jit(jax.vmap(block_output, in_axes=(None, 0, 0, 0)))


@jax.jit
def _block_output_vjp(pk, h, u, ys, dh_next):
    """Summed parameter cotangents and per-lane (dh, du, dys) of block_output, recomputed inside."""
    def one(hh, uu, yy, dd):
        _, vjp = jax.vjp(block_output, pk, hh, uu, yy)
        return vjp(dd)

    dp, dh, du, dys = jax.vmap(one)(h, u, ys, dh_next)
    return jax.tree.map(lambda t: t.sum(0), dp), dh, du, dys


@jax.jit
def _head(ph, h, labels, weights):
    """Per-lane (loss, logits), the summed weighted head gradients and the weighted dL/dh per lane."""
    def one(hh, label, w):
        (loss, logits), (g_p, g_h) = jax.value_and_grad(lambda q, x: head_loss(q, x, label), argnums=(0, 1),
                                                        has_aux=True)(ph, hh)
        return loss, logits, jax.tree.map(lambda t: w * t, g_p), w * g_h

    loss, logits, gp, gh = jax.vmap(one)(h, labels, weights)
    return loss, logits, jax.tree.map(lambda t: t.sum(0), gp), gh


@jax.jit
def _encode_vjp(p, x, dh):
    def one(xx, dd):
        return jax.vjp(lambda q: encode(q, xx), p)[1](dd)[0]

    return jax.tree.map(lambda t: t.sum(0), jax.vmap(one)(x, dh))


@partial(jax.jit, static_argnames="hru")
def _float_block_forward(hp, u, hru):
    """Per lane: positions y_1..y_L and the final state (y_L, z_L) the echo starts from, in one scan."""
    def one(uu):
        zero = jnp.zeros(hp["B"].shape[0])

        def step(carry, u_k):
            y, z, *_ = hf.leapfrog_step(hf.HRUS[hru], hp, *carry, u_k)
            return (y, z), y

        (y, z), ys = jax.lax.scan(step, (zero, zero), uu)
        return ys, y, z

    return jax.vmap(one)(u)


@partial(jax.jit, static_argnames=("hru", "epsilon"))
def _float_block_echo(hp, u, y, z, dys, hru, epsilon):
    g, _ = jax.vmap(lambda uu, yy, zz, nn: hf.echo(hf.HRUS[hru], hp, uu, yy, zz, nn, epsilon))(u, y, z, dys)
    du = g.pop("u")
    return jax.tree.map(lambda t: t.sum(0), g), du


_fixed_block_forward = jax.jit(jax.vmap(hb.forward, in_axes=(None, None, 0, None)), static_argnums=(0, 3))
_fixed_block_echo = jax.jit(jax.vmap(hb.echo, in_axes=(None, None, 0, 0, 0, 0, None)), static_argnums=(0, 6))


@partial(jax.jit, static_argnames="width")
def sum_live_lanes(total, lanes, live, width: int):
    """``total`` plus every live lane of ``lanes`` (a pytree of (G, ...) integer arrays, ``total`` the
    same pytree without G), lane after lane in two's complement at ``width`` bits: (sum, wraps)."""
    totals, treedef = jax.tree.flatten(total)

    def add(carry, lane):
        acc, events = carry
        terms, is_live = lane
        summed = [add_wrap(a, jnp.where(is_live, t, 0), width) for a, t in zip(acc, terms)]
        return ([v for v, _ in summed], events + sum(jnp.sum(w, dtype=jnp.int64) for _, w in summed)), None

    (totals, events), _ = jax.lax.scan(add, (totals, jnp.zeros((), jnp.int64)), (jax.tree.leaves(lanes), live))
    return jax.tree.unflatten(treedef, totals), events


# ---- where the HRU blocks run -----------------------------------------------------------------------

MAX_NUDGE_EXPONENT = 40


def nudge_exponent(dh, live, length: int) -> int:
    """Block floating point for one chunk's backward pass: from the loss gradient at the top of the
    stack per step, dh (lanes, …) over a chunk of ``length`` steps, the power of two 2^s (s >= 0) that lifts its largest live
    value to 1/L, the per-step size of a confidently wrong prediction's gradient, which is what the
    formats and ε are sized for. Every block's nudge stream of the chunk is multiplied by 2^s.

    Why: once a sample's loss saturates (2e-6 at L = 50k is common) its nudges fall below the
    state word's LSB and the integer echo returns zeros (float RHEL loses digits to cancellation
    the same way). The backward pass is linear in dh and RHEL in the nudge, so the echoes run with
    2^s·n and their outputs are scaled back by 2^-s on the host; a chunk's lanes share s, so their
    accumulators still add as integers. s never lowers a nudge: large ones run exactly as before.
    Taken from dh (known before any echo), not from each block's nudges, so that a schedule running
    all blocks at once (hssm_lockstep) uses the same s.
    """
    dh = np.asarray(dh)
    peak = float(np.max(np.abs(dh[np.asarray(live)]))) if np.any(live) else 0.0
    if peak == 0.0:
        return 0
    return int(np.clip(np.floor(np.log2(1.0 / (length * peak))), 0, MAX_NUDGE_EXPONENT))


class StagedBlocks:
    """The block-by-block schedule (what one board and its host do): every block's forward pass
    over the whole chunk, then the echoes top block first. Subclasses run the HRU blocks:
    ``forward(k, u, live)`` -> (positions, saved) and ``backward(k, saved, dys, live, scale)`` -> dL/du."""

    def chunk(self, p: dict, x, labels, live, grads: dict | None, moments: list):
        """One chunk through the stack block by block; with ``grads`` the echoes run top block first.

        Returns per-lane (loss, logits); adds the chunk's gradients into ``grads`` and each block's
        input statistics (count, Σh, Σh²) into ``moments``.
        """
        arch = self.arch
        h = _encode(p, x)
        saved = []
        for k in range(arch.blocks):
            pk = block_slice(p, k)
            moments[k] = moments[k] + _moments(h, live)
            u = _normalize(pk, h)
            ys, ctx = self.forward(k, u, live)
            saved.append((h, u, ys, ctx))
            h = _block_output(pk, h, u, ys)
        loss, logits, g_head, dh = _head({n: p[n] for n in HEAD}, h, jnp.asarray(labels), jnp.asarray(live, jnp.float64))
        if grads is not None:
            add_into(grads, g_head)
            scale = 2.0 ** nudge_exponent(dh, live, x.shape[1])
            for k in reversed(range(arch.blocks)):
                pk = block_slice(p, k)
                h_in, u, ys, ctx = saved[k]
                g_ff, dh_skip, du, dys = _block_output_vjp({n: pk[n] for n in FEED_FORWARD}, h_in, u, ys, dh)
                add_into(grads, {f"block{k}.{n}": v for n, v in g_ff.items()})
                du = du + self.backward(k, ctx, dys, live, scale)  # D⊙u's share plus the HRU's echo
                dh = dh_skip + du / jnp.sqrt(pk["norm.var"] + NORM_EPS)  # the statistics are constants
            add_into(grads, _encode_vjp({n: p[n] for n in ("encoder.W", "encoder.b")}, x, dh))
        return np.asarray(loss), np.asarray(logits)


class FloatBlocks(StagedBlocks):
    """Float64 RHEL blocks: hru_float's trajectory forward and echo pair (``rhel-float``)."""

    def __init__(self, arch: Architecture, epsilon: float | None = None):
        self.arch, self.epsilon = arch, FLOAT_EPSILON[arch.hru] if epsilon is None else epsilon
        self.overflow_events = self.clipped = 0

    def load(self, params: dict) -> None:
        """New parameters for one batch; the counters start from zero."""
        self.overflow_events = self.clipped = 0
        self.hp = [hru_params(block_slice(params, k), self.arch.hru) for k in range(self.arch.blocks)]
        self.grads = [{} for _ in range(self.arch.blocks)]

    def forward(self, k: int, u, live):
        ys, y, z = _float_block_forward(self.hp[k], u, self.arch.hru)
        return ys, (u, y, z)

    def backward(self, k: int, saved, dys, live, scale: float):
        u, y, z = saved
        g, du = _float_block_echo(self.hp[k], u, y, z, jnp.asarray(dys) * scale, self.arch.hru, self.epsilon)
        add_into(self.grads[k], {n: np.asarray(v) / scale for n, v in g.items()})
        return du / scale

    def finish(self) -> list[dict]:
        return self.grads


def saturate(x, width: int, frac: int):
    """Host-side conversion of a float array into ``width``-bit words (formats.quantize's rounding,
    saturating instead of refusing): (int64 words, number of saturated values). numpy in: numpy
    words and an int; a jax array (inside jit too): jax words and a jax count."""
    xp = jnp if isinstance(x, jax.Array) else np
    lo, hi = int_range(width)
    q = round_half_away(xp.asarray(x, xp.float64) * 2.0 ** frac)
    clipped = xp.sum((q < lo) | (q > hi))
    return xp.clip(q, lo, hi).astype(xp.int64), (int(clipped) if xp is np else clipped)


class FixedBlocks(StagedBlocks):
    """The integer blocks in process (hru_block, vmapped over a chunk's lanes): ``rhel``.

    Per chunk the accumulators of each block are summed over the live lanes as integers
    (two's-complement, wraps counted; the lanes share the chunk's nudge exponent) and scaled to
    float64 gradients with that exponent; the host adds the chunks' gradients.
    """

    def __init__(self, arch: Architecture, fmt):
        self.arch, self.fmt, self.base = arch, fmt, hb.base_format(fmt)
        self.overflow_events = self.clipped = 0

    def load(self, params: dict) -> None:
        """New parameters for one batch; accumulators and counters start from zero."""
        self.overflow_events = self.clipped = 0
        hru = self.arch.hru
        self.bq = [hb.quantize_block_params(hru, hru_params(block_slice(params, k), hru), self.fmt)
                   for k in range(self.arch.blocks)]
        self.grads = [{} for _ in range(self.arch.blocks)]

    def forward(self, k: int, u, live):
        uq, clipped = saturate(np.asarray(u), self.base.input_width, self.base.input_frac)
        fwd = _fixed_block_forward(self.arch.hru, self.bq[k], jnp.asarray(uq), self.fmt)
        self.clipped += clipped
        self.overflow_events += int(np.sum(np.asarray(fwd.overflows)[live]))
        return jnp.asarray(np.asarray(fwd.positions) * 2.0 ** -self.base.state_frac), (uq, fwd.y, fwd.z)

    def backward(self, k: int, saved, dys, live, scale: float):
        uq, y, z = saved
        nudge, clipped = saturate(np.asarray(dys) * (self.fmt.nudge_scale * scale), self.base.state_width,
                                  self.base.state_frac)
        self.clipped += clipped
        ech = _fixed_block_echo(self.arch.hru, self.bq[k], jnp.asarray(uq), y, z, jnp.asarray(nudge), self.fmt)
        self.overflow_events += int(np.sum(np.asarray(ech.overflows)[live]))
        lanes = (ech.acc, ech.kin)
        zero = jax.tree.map(lambda a: jnp.zeros(a.shape[1:], a.dtype), lanes)
        (acc, kin), wraps = sum_live_lanes(zero, lanes, jnp.asarray(live), self.base.acc_width)
        self.overflow_events += int(wraps)
        grads = hb.gradients(self.arch.hru, self.bq[k], acc, kin, self.fmt)
        add_into(self.grads[k], {n: np.asarray(v) / scale for n, v in grads.items()})
        return jnp.asarray(hb.input_gradient(self.arch.hru, ech.du, self.fmt) / scale)

    def finish(self) -> list[dict]:
        return self.grads


# ---- the driver -----------------------------------------------------------------------------------

def _jnp(params: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in params.items()}


def _moments(h, live) -> np.ndarray:
    """(count, Σh (H), Σh² (H)) over the live lanes' steps, as one row of 1 + 2H numbers."""
    hl = np.asarray(h)[np.asarray(live)]
    return np.concatenate([[hl.shape[0] * hl.shape[1]], hl.sum(axis=(0, 1)), (hl * hl).sum(axis=(0, 1))])


def add_into(total: dict, part: dict):
    """total[k] += part[k] (float64 numpy), creating missing keys: gradients summed in a fixed order."""
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + np.asarray(v)


def updated_stats(params: dict, moments: list, arch: Architecture, momentum: float = NORM_MOMENTUM) -> dict:
    """The norm buffers after one training minibatch: an exponential average of its statistics."""
    stats, H = {}, arch.hidden
    for k, m in enumerate(moments):
        n, s, ss = m[0], m[1:1 + H], m[1 + H:]
        mean, var = s / n, np.maximum(ss / n - (s / n) ** 2, 0.0)
        b = f"block{k}.norm."
        stats[b + "mean"] = momentum * params[b + "mean"] + (1 - momentum) * mean
        stats[b + "var"] = momentum * params[b + "var"] + (1 - momentum) * var
    return stats


def calibrate(params: dict, x, lengths, arch: Architecture) -> dict:
    """``params`` with every block's norm buffers set to the statistics of its input over the samples
    (x, lengths), block by block with the float64 forward pass: the starting point of the running
    statistics, so that no block starts on inputs many times its word's range (the skip
    connections make each block's input larger than the one below)."""
    x, lengths = check_batch("rhel-float", x, lengths)
    for k in range(arch.blocks):
        moments = _run(params, x, lengths, None, arch, "rhel-float", None, False)[3]
        stats = updated_stats(params, moments, arch, momentum=0.0)
        params = {**params, f"block{k}.norm.mean": stats[f"block{k}.norm.mean"],
                  f"block{k}.norm.var": stats[f"block{k}.norm.var"]}
    return params


def make_blocks(algo: str, arch: Architecture, fmt, epsilon: float | None = None):
    """Where the HRU blocks of ``algo`` run: the integer blocks (``rhel``) or float64 ones (otherwise;
    ``bptt`` uses them for forward passes without gradients)."""
    return FixedBlocks(arch, fmt) if algo == "rhel" else FloatBlocks(arch, epsilon)


def _run(params, x, lengths, labels, arch: Architecture, algo: str, fmt, with_grads: bool, blocks=None):
    """Every chunk of a batch; returns (summed loss, summed grads, logits, moments, overflows, clipped)."""
    p = _jnp(params)
    n = len(lengths)
    labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels)
    logits = np.zeros((n, arch.classes))
    grads = {k: np.zeros(np.shape(params[k])) for k in arch.trained()} if with_grads else None
    moments = [np.zeros(1 + 2 * arch.hidden) for _ in range(arch.blocks)]
    autodiff = algo == "bptt" and with_grads
    if not autodiff:
        blocks = blocks or make_blocks(algo, arch, fmt)
        blocks.load(params)
    total = 0.0
    for length, idx, live in chunks(lengths):
        xc, lc = jnp.asarray(x[idx, :length]), labels[idx]
        if autodiff:
            loss, lg, inputs, g = _bptt_chunk(p, xc, jnp.asarray(lc), jnp.asarray(live, jnp.float64), arch)
            add_into(grads, {k: g[k] for k in arch.trained()})
            for k, h in enumerate(inputs):
                moments[k] = moments[k] + _moments(h, live)
            loss, lg = np.asarray(loss), np.asarray(lg)
        else:
            loss, lg = blocks.chunk(p, xc, lc, live, grads, moments)
        total += float(np.sum(loss[live]))
        logits[idx[live]] = lg[live]
    overflows = clipped = 0
    if not autodiff:
        if with_grads:
            for k, g in enumerate(blocks.finish()):
                add_into(grads, {f"block{k}.{name}": v for name, v in g.items()})
        overflows, clipped = blocks.overflow_events, blocks.clipped
    return total, grads, logits, moments, overflows, clipped


def batch_gradients(params: dict, x, lengths, labels, arch: Architecture, algo: str, fmt, blocks=None) -> BatchResult:
    """Mean loss and gradients of a minibatch (x (S, L_max, N) zero-padded, true ``lengths``) by ``algo``,
    and the norm buffers updated with the minibatch's statistics (``stats``)."""
    x, lengths = check_batch(algo, x, lengths, labels)
    total, grads, logits, moments, overflows, clipped = _run(params, x, lengths, labels, arch, algo, fmt, True, blocks)
    n = len(lengths)
    correct = int(np.sum(np.argmax(logits, axis=1) == np.asarray(labels)))
    return BatchResult(total / n, {k: v / n for k, v in grads.items()}, correct, overflows,
                       updated_stats(params, moments, arch), clipped)


def predict(params: dict, x, lengths, arch: Architecture, algo: str, fmt, blocks=None) -> tuple[np.ndarray, int]:
    """Logits (S, C) from the forward pass ``algo`` trains with (integer blocks for ``rhel``), and overflows."""
    x, lengths = check_batch(algo, x, lengths)
    _, _, logits, _, overflows, _ = _run(params, x, lengths, None, arch, algo, fmt, False, blocks)
    return logits, overflows
