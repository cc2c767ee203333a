"""The HSSM's lockstep schedule: all K blocks advance one step at a time, memory flat in L.

The block-by-block schedule (hssm.StagedBlocks, what one board and its host do) keeps every
block's input and output sequence for the backward pass: O(L·H) per block. Here the forward pass
runs every block at step k before any block runs step k + 1 and keeps only each block's state and
running sums. The backward pass walks time backwards once, and each block runs three HRU copies
side by side: its ±ε echo pair and an un-nudged third echo, the **retrace**, which returns the
block's forward state j (bit for bit in integers while no wrap was counted — docs/numerics.md,
"Why this is reversible"; to float rounding in float64). From the retraced states and x_j the
feed-forward column of step j is recomputed; its vjp, top block first, gives each block's nudge
for state j, and the block's echo step consuming u_j gives du_j for the block below, as in
rhel-algorithm.md §2.6. What is kept: the input x and O(K·(P + H)) numbers per lane, independent
of L. What it costs: one more HRU pass per block (the retrace) and the feed-forward maps twice.

This is the schedule of a board that holds all K blocks (or K boards in a chain), as the paper's
physical mapping runs them. Its integer operations are the block-by-block schedule's
(hru_fixed.forward_step / echo_step, the same nudge exponent); only the host's float64
feed-forward arithmetic runs per step instead of per sequence, so the two agree to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from echoboard.golden_model import hru_block as hb
from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import hru_float as hf
from echoboard.golden_model.hssm import (FEED_FORWARD, HEAD, NORM_EPS, Architecture, add_into, block_slice, hru_params, sum_live_lanes,
                               block_output, encode, head_loss, normalize, nudge_exponent, saturate, FLOAT_EPSILON)

ENCODER = ("encoder.W", "encoder.b")


@dataclass(frozen=True)
class _FloatHRU:
    """float64 blocks (``rhel-float``): state (y, z, clipped = 0); hru_float's echo carry.
    Frozen (hashable by value): a jit's static argument, compiled once per configuration."""

    hru: str
    epsilon: float

    @property
    def model(self):
        return hf.HRUS[self.hru]

    def start(self, hp):
        zero = jnp.zeros(hp["B"].shape[0])
        return zero, zero, jnp.zeros((), jnp.int64)  # y, z, clipped (float inputs never clip)

    def step(self, hp, state, u):
        y, z, *_ = hf.leapfrog_step(self.model, hp, state[0], state[1], u)
        return (y, z, state[2]), y

    def position(self, state):
        return state[0]

    def retrace_start(self, state):
        return state[0], -state[1], state[2]

    def echo_start(self, hp, state):
        return hf.echo_start(hp, state[0], state[1])

    def echo_step(self, hp, carry, u, nudge):
        carry, du = hf.echo_step(self.model, hp, self.epsilon, carry, u, nudge)
        return carry, -du / (2.0 * self.epsilon), jnp.zeros((), jnp.int64)

    def gradients(self, hp, carries, live, scale):
        """Summed over live lanes, scaled back by the chunk's exponent; float: no wraps."""
        acc = jax.tree.map(lambda a: np.sum(np.asarray(a)[np.asarray(live)], axis=0), carries[2])
        return {n: -v / (2.0 * self.epsilon) / scale for n, v in acc.items()}, 0

    def forward_overflows(self, state, live):
        return 0

    def echo_overflows(self, carry, live):
        return 0


@dataclass(frozen=True)
class _FixedHRU:
    """The integer blocks (``rhel``): hru_fixed's forward and echo steps on hru_block's words;
    state = hru_fixed's forward carry + the inputs clipped."""

    hru: str
    fmt: object

    @property
    def base(self):
        return hb.base_format(self.fmt)

    def _words(self, u):
        return saturate(u, self.base.input_width, self.base.input_frac)

    def start(self, bq):
        zero = jnp.zeros(bq.gain.shape, jnp.int64)
        return hx.forward_start(zero, zero) + (jnp.zeros((), jnp.int64),)

    def step(self, bq, state, u):
        uq, clipped = self._words(u)
        *carry, total_clipped = state
        carry = hx.forward_step(hb.step_function(self.hru, bq.q, self.fmt), bq.q, self.base, tuple(carry), uq)
        return carry + (total_clipped + clipped,), carry[0] * 2.0 ** -self.base.state_frac

    def position(self, state):
        return state[0] * 2.0 ** -self.base.state_frac

    def retrace_start(self, state):
        y, z, _, _, clipped = state
        return hx.forward_start(y, -z) + (clipped,)

    def echo_start(self, bq, state):
        p, n = bq.q.B.shape
        return hx.echo_start(state[0], state[1], (hb.zero_accumulators(self.hru, p, n), jnp.zeros(p, jnp.int64)))

    def echo_step(self, bq, carry, u, nudge):
        uq, _ = self._words(u)  # the forward pass counted this input's clipping
        nq, clipped = saturate(nudge * self.fmt.nudge_scale, self.base.state_width, self.base.state_frac)
        carry, du = hx.echo_step(hb.step_function(self.hru, bq.q, self.fmt), partial(hb.accumulate, self.hru, bq, self.fmt),
                                 bq.q, self.base, carry, uq, nq)
        return carry, hb.input_gradient(self.hru, du, self.fmt), clipped

    def gradients(self, bq, carries, live, scale):
        """The lanes' accumulators summed as integers (wraps counted), then scaled (hru_block.gradients)."""
        lanes = carries[2]
        zero = jax.tree.map(lambda a: jnp.zeros(a.shape[1:], a.dtype), lanes)
        (acc, kin), wraps = sum_live_lanes(zero, lanes, jnp.asarray(live), self.base.acc_width)
        grads = hb.gradients(self.hru, bq, acc, kin, self.fmt)
        return {n: np.asarray(v) / scale for n, v in grads.items()}, int(wraps)

    def forward_overflows(self, state, live):
        return int(np.sum(np.asarray(state[3])[np.asarray(live)]))

    def echo_overflows(self, carry, live):
        """Both echoes' counters and the gradient phase's."""
        live = np.asarray(live)
        return int(np.sum(np.asarray(carry[3])[live]) + np.sum(np.asarray(carry[4])[live]))


def _column(p, blocks, x_k, positions):
    """The feed-forward column of one step from x_k and each block's position: [(h, u, y)] and the top h."""
    h, col = encode(p, x_k), []
    for pk, y in zip(blocks, positions):
        u = normalize(pk, h)
        col.append((h, u, y))
        h = block_output(pk, h, u, y)
    return col, h


@partial(jax.jit, static_argnames=("arch", "hrus"))
def _forward(p, hps, x, arch: Architecture, hrus):
    """Per lane: final states, Σ_k h_top, Σh and Σh² of each block's input."""
    blocks = [block_slice(p, k) for k in range(arch.blocks)]

    def lane(xx):
        def step(carry, x_k):
            states, h_sum, m1, m2 = carry
            h, new_states, n1, n2 = encode(p, x_k), [], [], []
            for k, pk in enumerate(blocks):
                n1.append(m1[k] + h)
                n2.append(m2[k] + h * h)
                u = normalize(pk, h)
                state, y = hrus.step(hps[k], states[k], u)
                new_states.append(state)
                h = block_output(pk, h, u, y)
            return (new_states, h_sum + h, n1, n2), None

        zero_h = jnp.zeros(arch.hidden)
        init = ([hrus.start(hp) for hp in hps], zero_h, [zero_h] * arch.blocks, [zero_h] * arch.blocks)
        return jax.lax.scan(step, init, xx)[0]

    return jax.vmap(lane)(x)


@partial(jax.jit, static_argnames=("arch", "hrus"))
def _backward(p, hps, x, states, dh_top, scale, arch: Architecture, hrus):
    """Per lane: the echo carries, the retraced states (they end at the zero state) and the summed
    feed-forward and encoder gradients; ``dh_top`` (H,) is dL/dh_top per step, ``scale`` 2^s."""
    blocks = [block_slice(p, k) for k in range(arch.blocks)]
    ff = [{n: pk[n] for n in FEED_FORWARD} for pk in blocks]
    enc = {n: p[n] for n in ENCODER}

    def lane(xx, lane_states, dh):
        def step(carry, x_j):
            retraced, echoes, g_ff, g_enc, clipped = carry
            col, _ = _column(p, blocks, x_j, [hrus.position(r) for r in retraced])
            d, retraced, echoes, g_ff = dh, list(retraced), list(echoes), list(g_ff)
            for k in reversed(range(arch.blocks)):
                h, u, y = col[k]
                dp, dh_skip, du_ff, dys = jax.vjp(block_output, ff[k], h, u, y)[1](d)
                g_ff[k] = jax.tree.map(jnp.add, g_ff[k], dp)
                echoes[k], du_echo, c = hrus.echo_step(hps[k], echoes[k], u, dys * scale)
                clipped = clipped + c
                d = dh_skip + (du_ff + du_echo / scale) / jnp.sqrt(blocks[k]["norm.var"] + NORM_EPS)
                retraced[k], _ = hrus.step(hps[k], retraced[k], u)
            g_enc = jax.tree.map(jnp.add, g_enc, jax.vjp(lambda q: encode(q, x_j), enc)[1](d)[0])
            return (retraced, echoes, g_ff, g_enc, clipped), None

        zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
        init = ([hrus.retrace_start(s) for s in lane_states], [hrus.echo_start(hp, s) for hp, s in zip(hps, lane_states)],
                [zeros(f) for f in ff], zeros(enc), jnp.zeros((), jnp.int64))
        return jax.lax.scan(step, init, xx, reverse=True)[0]

    return jax.vmap(lane)(x, states, dh_top)


@jax.jit
def _head_of_mean(ph, h_sum, length, labels, weights):
    """Per lane (loss, logits), summed weighted head gradients, weighted dL/dh̄ per lane."""
    def one(hs, label, w):
        (loss, logits), (gp, gh) = jax.value_and_grad(
            lambda q, hbar: head_loss(q, hbar[None, :], label), argnums=(0, 1), has_aux=True)(ph, hs / length)
        return loss, logits, jax.tree.map(lambda t: w * t, gp), w * gh

    loss, logits, gp, gh = jax.vmap(one)(h_sum, labels, weights)
    return loss, logits, jax.tree.map(lambda t: t.sum(0), gp), gh


class LockstepBlocks:
    """``blocks`` for hssm.batch_gradients / predict that runs the lockstep schedule (module docstring)."""

    def __init__(self, arch: Architecture, algo: str, fmt=None, epsilon: float | None = None):
        if algo not in ("rhel", "rhel-float"):
            raise ValueError(f"the lockstep schedule runs rhel or rhel-float, not {algo!r}")
        self.arch = arch
        self.hrus = (_FixedHRU(arch.hru, fmt) if algo == "rhel"
                     else _FloatHRU(arch.hru, FLOAT_EPSILON[arch.hru] if epsilon is None else epsilon))
        self.fmt, self.fixed = fmt, algo == "rhel"
        self.overflow_events = self.clipped = 0

    def load(self, params: dict) -> None:
        self.overflow_events = self.clipped = 0
        hru = self.arch.hru
        floats = [hru_params(block_slice(params, k), hru) for k in range(self.arch.blocks)]
        self.hps = ([hb.quantize_block_params(hru, f, self.fmt) for f in floats] if self.fixed
                    else [{n: jnp.asarray(v) for n, v in f.items()} for f in floats])
        self.grads = [{} for _ in range(self.arch.blocks)]

    def chunk(self, p: dict, x, labels, live, grads: dict | None, moments: list):
        arch, hrus, length = self.arch, self.hrus, x.shape[1]
        states, h_sum, m1, m2 = _forward(p, self.hps, x, arch, hrus)
        live_np = np.asarray(live)
        for k in range(arch.blocks):
            s1, s2 = np.asarray(m1[k])[live_np].sum(0), np.asarray(m2[k])[live_np].sum(0)
            moments[k] = moments[k] + np.concatenate([[live_np.sum() * length], s1, s2])
            self.overflow_events += hrus.forward_overflows(states[k], live)
            self.clipped += int(np.sum(np.asarray(states[k][-1])[live_np]))
        loss, logits, g_head, gh = _head_of_mean({n: p[n] for n in HEAD}, h_sum, float(length), jnp.asarray(labels),
                                                 jnp.asarray(live, jnp.float64))
        if grads is not None:
            add_into(grads, g_head)
            dh = gh / length  # dL/dh_top at every step (the mean's vjp)
            scale = 2.0 ** nudge_exponent(dh, live, length)
            retraced, echoes, g_ff, g_enc, clipped = _backward(p, self.hps, x, states, dh, scale, arch, hrus)
            self.clipped += int(np.sum(np.asarray(clipped)[live_np]))
            for k in range(arch.blocks):
                add_into(grads, {f"block{k}.{n}": np.asarray(v).sum(0) for n, v in g_ff[k].items()})
                g, wraps = hrus.gradients(self.hps[k], echoes[k], live, scale)
                add_into(self.grads[k], g)
                self.overflow_events += wraps + hrus.echo_overflows(echoes[k], live)
            add_into(grads, {n: np.asarray(v).sum(0) for n, v in g_enc.items()})
        return np.asarray(loss), np.asarray(logits)

    def finish(self) -> list[dict]:
        return self.grads
