"""Float64 reference HRUs: leapfrog dynamics, BPTT by autodiff, and RHEL.

Two Hamiltonian Recurrent Units (rhel-algorithm.md §2.1, §3.2, §3.3), both separable,
H = ½‖z‖² + V(y, u), with per-oscillator (diagonal) potentials:

- linear:    V = ½ Σ A_i y_i² − y·(B u)
- nonlinear: V = (α/2)‖y‖² + Σ_i σ(c_i)·log cosh(W_i y_i + (B u)_i + b_i) / W_i

One leapfrog step (drift δ/2, kick δ at the half-step position, drift δ/2):
    yh = y + (δ/2) z;   z ← z − δ ∂V/∂y(yh, u);   y = yh + (δ/2) z.

RHEL follows the paper, not the official code (rhel-algorithm.md §5): the force is evaluated at
the half-step position, and gradients are read from H_{1/2} at the half step of every echo step:
    Δθ = −1/(2ε) Σ_k [∇θ(δ·H_{1/2})(echo +ε) − ∇θ(δ·H_{1/2})(echo −ε)],
    δ·H_{1/2} = δ·(¼(z_in² + z_out²) + V(yh, u)),
which gives the δ gradient (M_{H,δ} = M_{δH,1}) and δ·∇θH for every other parameter.
Only the final state is kept by the forward pass; memory of RHEL is O(1) in the length L.

Index alignment: ``u`` has shape (L, N); state k+1 is the state after consuming u_k; the loss
gradient ``nudges[k]`` = dL/dy_{k+1} (shape (L, P), or (P,) for the same nudge every step).
The echo starts at (y_L, −z_L + s·ε·nudges[L−1]); echo step m consumes u_{L−1−m} and is then
followed by the nudge for state L−1−m (none after the last step).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class HRU(NamedTuple):
    """A separable HRU: its per-oscillator potential V(params, y, u) -> (P,)."""

    name: str
    potential: Callable
    param_names: tuple[str, ...]

    def force(self, params, y, u):
        """∂V/∂y, per oscillator (the potentials are diagonal in y)."""
        return jax.grad(lambda yy: jnp.sum(self.potential(params, yy, u)))(y)


def _linear_potential(p, y, u):
    return 0.5 * p["A"] * y * y - y * (p["B"] @ u)


def _nonlinear_potential(p, y, u):
    a = p["W"] * y + p["B"] @ u + p["b"]
    # log cosh(a) = |a| + log1p(exp(-2|a|)) - log 2, stable for large |a|
    logcosh = jnp.abs(a) + jnp.log1p(jnp.exp(-2.0 * jnp.abs(a))) - jnp.log(2.0)
    return 0.5 * p["alpha"] * y * y + jax.nn.sigmoid(p["c"]) * logcosh / p["W"]


LINEAR = HRU("linear", _linear_potential, ("A", "B", "delta"))
NONLINEAR = HRU("nonlinear", _nonlinear_potential, ("W", "b", "c", "alpha", "B"))
HRUS = {"linear": LINEAR, "nonlinear": NONLINEAR}


def leapfrog_step(hru: HRU, params, y, z, u):
    """One drift–kick–drift step; returns (y_next, z_next, yh, z_in, z_out)."""
    h = 0.5 * params["delta"]
    yh = y + h * z
    z_out = z - params["delta"] * hru.force(params, yh, u)
    return yh + h * z_out, z_out, yh, z, z_out


def forward(hru: HRU, params, u, y0, z0):
    """Run L steps keeping O(1) state: returns (y_L, z_L, Σ_{k=1..L} y_k)."""

    def body(carry, uk):
        y, z, s = carry
        y, z, *_ = leapfrog_step(hru, params, y, z, uk)
        return (y, z, s + y), None

    (y, z, s), _ = lax.scan(body, (y0, z0, jnp.zeros_like(y0)), u)
    return y, z, s


def trajectory(hru: HRU, params, u, y0, z0):
    """Positions y_1..y_L, shape (L, P): what BPTT differentiates through."""

    def body(carry, uk):
        y, z, *_ = leapfrog_step(hru, params, *carry, uk)
        return (y, z), y

    _, ys = lax.scan(body, (y0, z0), u)
    return ys


def bptt(hru: HRU, params, u, y0, z0, loss_of_positions: Callable):
    """Gradients of loss_of_positions(y_1..y_L) by reverse-mode autodiff through the scan.

    Returns (loss, grads) with grads for every parameter and for the input ``u``.
    """

    def loss(p, uu):
        return loss_of_positions(trajectory(hru, p, uu, y0, z0))

    value, (gp, gu) = jax.value_and_grad(loss, argnums=(0, 1))(params, u)
    return value, {**gp, "u": gu}


def _scaled_half_hamiltonian(hru: HRU, params, yh, z_in, z_out, u):
    """Σ_i δ_i·H_{1/2,i}: differentiating it gives δ·∇θH_{1/2} and, for δ, H_{1/2} itself."""
    kinetic = 0.25 * (z_in * z_in + z_out * z_out)
    return jnp.sum(params["delta"] * (kinetic + hru.potential(params, yh, u)))


def _nudge_for_state(nudges, j):
    """dL/dy_j for state j (1..L): the (P,) constant or row j−1 of an (L, P) sequence."""
    return nudges if nudges.ndim == 1 else lax.dynamic_index_in_dim(nudges, j - 1, keepdims=False)


ECHO_SIGNS = jnp.array([1.0, -1.0])  # the [+ε, −ε] echoes, stacked


def echo_start(params, y_final, z_final):
    """The echo pair's carry before its first step: both at (y_L, −z_L), accumulators zero."""
    return jnp.stack([y_final, y_final]), jnp.stack([-z_final, -z_final]), jax.tree.map(jnp.zeros_like, params)


def echo_step(hru: HRU, params, epsilon: float, carry, u_j, n_j):
    """One step of the pair: nudge ±ε·n_j for state j, then consume u_j; accumulates the difference
    of δ·∇θH_{1/2} and returns (carry, δ·∇uH_{1/2} difference). Shared by echo and the HSSM's
    lockstep schedule (hssm.py)."""
    y, z, acc = carry
    z = z + ECHO_SIGNS[:, None] * epsilon * n_j[None, :]
    y, z_next, yh, z_in, z_out = jax.vmap(lambda yy, zz: leapfrog_step(hru, params, yy, zz, u_j))(y, z)
    gp, gu = jax.vmap(lambda a, b, c: _grad_h(hru, params, a, b, c, u_j))(yh, z_in, z_out)
    acc = jax.tree.map(lambda total, g: total + g[0] - g[1], acc, gp)
    return (y, z_next, acc), gu[0] - gu[1]


_grad_h = jax.grad(_scaled_half_hamiltonian, argnums=(1, 5))


def echo(hru: HRU, params, u, y_final, z_final, nudges, epsilon: float):
    """The RHEL echo pair from the final forward state.

    Returns (grads, echo_states) where grads has every parameter and ``u`` (dL/du_k),
    and echo_states = (y, z) of both echoes after the last step, stacked as [+ε, −ε].
    The scan walks u backwards in place (reverse=True): the step consuming u_j first nudges
    with state j's row, so the only O(L) array it creates is the input gradient, the size of
    the input.
    """
    length = u.shape[0]
    nudges = jnp.asarray(nudges, dtype=jnp.float64)

    def body(carry, xs):
        u_j, j = xs
        return echo_step(hru, params, epsilon, carry, u_j, _nudge_for_state(nudges, j))

    (y, z, acc), du = lax.scan(body, echo_start(params, y_final, z_final), (u, jnp.arange(1, length + 1)),
                               reverse=True)
    scale = -1.0 / (2.0 * epsilon)
    grads = {k: scale * v for k, v in acc.items()}
    grads["u"] = scale * du
    return grads, (y, z)


def rhel(hru: HRU, params, u, y0, z0, nudge_of_final: Callable, epsilon: float):
    """Forward (final state only), then the echo pair; ``nudge_of_final(y_L, z_L, Σy)`` gives the nudges.

    Returns (grads, echo_states). The nudge callback sees only what the forward pass keeps,
    which is what a board can provide (e.g. the mean-pooled positions for a classifier head).
    """
    y, z, pos_sum = forward(hru, params, u, y0, z0)
    return echo(hru, params, u, y, z, nudge_of_final(y, z, pos_sum), epsilon)
