"""Training figures: loss/accuracy curves and an echo retracing its forward trajectory (PNG, Agg).

Both are diagnostics written next to a run's summary.json. The echo figure is computed on the
host with golden_model.hru_fixed's step functions (the integers the board computes), not read
from a board: it shows the property RHEL rests on, that the ε = 0 echo from the
momentum-flipped final state, with the inputs replayed in reverse, walks the forward trajectory
back bit for bit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model.formats import FixedFormat, dequantize

__all__ = ["plot_history", "echo_trajectories", "plot_echo_retrace"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict], path: str, title: str) -> None:
    """Loss and train/test accuracy per epoch, as a PNG (Agg backend: no display needed)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o" if len(epochs) < 3 else None)
    ax1.set(xlabel="epoch", ylabel="training loss", yscale="log")
    for key in ("train_accuracy", "test_accuracy"):
        ax2.plot(epochs, [h[key] for h in history], label=key.split("_")[0], marker="o" if len(epochs) < 3 else None)
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def echo_trajectories(q: hx.LinearParamsInt, uq, fmt: FixedFormat) -> tuple[np.ndarray, np.ndarray]:
    """Integer positions (L+1, P) of the forward pass from zero, y_0 … y_L, and of the ε = 0 echo.

    The echo starts from (y_L, −z_L) and consumes u_{L−1} … u_0; its position after m steps is
    stored at row L − m, so for an exactly reversible step the two arrays are equal.
    """
    uq = jnp.asarray(uq)

    def step(carry, u_k):
        y, z = carry
        b, _ = hx.input_drive(q, u_k, fmt)
        y, z, _, _ = hx.leapfrog_step(q, y, z, b, fmt)
        return (y, z), y

    @jax.jit
    def run(uq):
        zero = jnp.zeros(q.A.shape, jnp.int64)
        (y, z), forward = jax.lax.scan(step, (zero, zero), uq)
        _, echo = jax.lax.scan(step, (y, -z), uq[::-1])
        forward = jnp.concatenate([zero[None], forward])  # y_0 .. y_L
        echo = jnp.concatenate([y[None], echo])[::-1]  # echo step m at row L - m
        return forward, echo

    forward, echo = run(uq)
    return np.asarray(forward), np.asarray(echo)


def plot_echo_retrace(q: hx.LinearParamsInt, uq, fmt: FixedFormat, path: str, title: str,
                      oscillators: int = 4) -> int:
    """One sample's forward positions for a few oscillators, the ε = 0 echo replayed on top.

    Plots the ``oscillators`` with the largest swing; returns max |echo − forward| in LSB over
    every oscillator and step (0 for the reversible integer step).
    """
    forward, echo = echo_trajectories(q, uq, fmt)
    mismatch = int(np.abs(forward - echo).max())
    chosen = np.argsort(-np.ptp(forward, axis=0))[:oscillators]
    steps = np.arange(len(forward))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for n, i in enumerate(chosen):
        color = f"C{n}"
        ax.plot(steps, dequantize(forward[:, i], fmt.state_frac), color=color, lw=2.5, alpha=0.45,
                label=f"oscillator {i}: forward" if n == 0 else f"oscillator {i}")
        ax.plot(steps, dequantize(echo[:, i], fmt.state_frac), color=color, ls="none", marker=".", ms=4,
                label="echo (ε = 0), replayed reversed" if n == 0 else None)
    ax.set(xlabel="time step k", ylabel="position y_k")
    ax.set_title(f"{title}\nmax |echo − forward| = {mismatch} LSB over {forward.shape[1]} oscillators")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return mismatch
