"""An HSSM's HRU blocks on a board: ``train --blocks K --target golden|sim|socket://…|serial://…``.

golden_model.hssm runs the stack block by block (``StagedBlocks``): every block's forward pass over a
chunk of samples, the host's feed-forward maps between blocks, then the echoes top block first.
``BoardBlocks`` is that schedule with each HRU block on one board, as rhel-algorithm.md §2.6 maps it
(recurrent HRUs in hardware, everything between them on the host): per block the board gets the
block's parameters, then one *outputs pass* per sample (docs/protocol.md, *Per-step streams*):

- forward: FORWARD_START with OUTPUTS streams u_k in and y_k back; the final state is read back and
  kept on the host, since the board holds one sample's state and the other samples and blocks run
  before this sample's echo;
- echo: the state written back, ECHO_START with OUTPUTS streams u_j and the per-step nudge in and
  du_j back; the board adds the sample's gradient terms and KIN onto its accumulators, read once per
  block and chunk.

The integers are those of hssm.FixedBlocks in process (the same hru_block operations; the chunk's
samples' accumulators are summed by the board step by step instead of by the host lane by lane,
the same two's-complement sums), so a run ends with the same parameters bit for bit (tested). Only
the overflow *count* of the gradient sums may differ where a sum wraps: the board counts wraps of
its running sum, the host those of each sample's sum and of their total.

A board larger than a block runs it zero-padded, as host.train.BoardTarget does: the extra
oscillators hold all-zero parameters and stay exactly 0, the extra input channels get zeros.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from echoboard.firmware.protocol import BLOCK_ACCUMULATORS, BLOCK_PARAMETERS, Capability, Region
from echoboard.golden_model import hru_block as hb
from echoboard.golden_model.hssm import Architecture, StagedBlocks, add_into, block_slice, hru_params, saturate

__all__ = ["BoardBlocks"]

#: What a board needs for HSSM blocks: y_k forward, du_j and KIN in the echo, per-step nudges.
NEEDED = Capability.ECHO_STREAM | Capability.FORWARD_OUTPUTS | Capability.ECHO_OUTPUTS


class BoardBlocks(StagedBlocks):
    """hssm.StagedBlocks with every HRU block on ``board`` (a host.board.Board); see the module docstring."""

    def __init__(self, arch: Architecture, board):
        config = board.config
        if config.hru != arch.hru:
            raise ValueError(f"the board holds the {config.hru} HRU; the model's blocks are {arch.hru}: "
                             f"use a board built with --hru {arch.hru}")
        if ~config.capabilities & NEEDED:
            names = "|".join(c.name for c in Capability if c & config.capabilities) or "none"
            raise ValueError(f"this board has no per-step streams for HSSM blocks (IDENTIFY capabilities: {names}): "
                             "the serial core (the iCEBreaker's) has none; use an image with the pipelined core")
        if config.size.oscillators < arch.oscillators or config.size.inputs < arch.hidden:
            raise ValueError(f"the board has {config.size.oscillators} oscillators and {config.size.inputs} inputs; "
                             f"the model's blocks need at least {arch.oscillators} and {arch.hidden} "
                             f"(--oscillators, --hidden)")
        board.messages.check_outputs_fit()
        self.arch, self.board, self.fmt, self.base = arch, board, config.fmt, config.base
        self.overflow_events = self.clipped = 0

    def load(self, params: dict) -> None:
        """New parameters for one batch; accumulators and counters start from zero."""
        self.overflow_events = self.clipped = 0
        self.bq = [hb.quantize_block_params(self.arch.hru, hru_params(block_slice(params, k), self.arch.hru), self.fmt)
                   for k in range(self.arch.blocks)]
        self.grads = [{} for _ in range(self.arch.blocks)]

    def forward(self, k: int, u, live):
        board, (P, H) = self.board, (self.arch.oscillators, self.arch.hidden)
        uq, clipped = saturate(np.asarray(u), self.base.input_width, self.base.input_frac)
        self.clipped += clipped
        self._write_block(k)
        positions = np.zeros(uq.shape[:2] + (P,), np.int64)
        states = np.zeros((uq.shape[0], 2, board.config.size.oscillators), np.int64)
        for lane in np.flatnonzero(live):
            result, y = board.forward_outputs(self._pad(uq[lane], board.config.size.inputs))
            positions[lane] = y[:, :P]
            states[lane] = board.read(Region.Y0), board.read(Region.Z0)
            self.overflow_events += int(result.overflows)
        return jnp.asarray(positions * 2.0 ** -self.base.state_frac), (uq, states)

    def backward(self, k: int, saved, dys, live, scale: float):
        board, hru, H = self.board, self.arch.hru, self.arch.hidden
        uq, states = saved
        nudge, clipped = saturate(np.asarray(dys) * (self.fmt.nudge_scale * scale), self.base.state_width,
                                  self.base.state_frac)
        self.clipped += clipped
        self._write_block(k)
        board.clear_gradients()
        du = np.zeros(uq.shape, np.int64)
        counters = np.zeros(3, np.int64)
        for lane in np.flatnonzero(live):
            board.write(Region.Y0, states[lane, 0])
            board.write(Region.Z0, states[lane, 1])
            counters, du_lane = board.echo_outputs(self._pad(uq[lane], board.config.size.inputs),
                                                   self._pad(nudge[lane], board.config.size.oscillators))
            du[lane] = du_lane[:, :H]
            self.overflow_events += int(counters[0] + counters[1])
        self.overflow_events += int(counters[2])  # the gradient counter: every echo since the clear
        P = self.arch.oscillators
        acc = board.read_gradients()  # a tuple (linear) or a NamedTuple (nonlinear) of (P,) and (P, N) sums
        sliced = [a[:P, :H] if np.ndim(a) == 2 else a[:P] for a in acc]
        acc = acc._make(sliced) if hasattr(acc, "_make") else tuple(sliced)
        kin = board.read(BLOCK_ACCUMULATORS[hru]["kin"])[:P]
        grads = hb.gradients(hru, self.bq[k], acc, kin, self.fmt)
        add_into(self.grads[k], {n: np.asarray(v) / scale for n, v in grads.items()})
        return jnp.asarray(hb.input_gradient(hru, du, self.fmt) / scale)

    def finish(self) -> list[dict]:
        return self.grads

    def _write_block(self, k: int) -> None:
        """Block k's words, zero-padded to the board's size (the gain too, on a nonlinear board)."""
        board, bq = self.board, self.bq[k]
        size = board.config.size
        P = self.arch.oscillators  # a scalar (nonlinear α) becomes P words, so padding leaves the extra ones 0
        pad = {name: self._pad(np.broadcast_to(np.asarray(v, np.int64), (P,) + np.shape(v)[1:]), size.oscillators, axis=0)
               for name, v in bq.q._asdict().items()}
        pad["B"] = self._pad(pad["B"], size.inputs)
        board.write_params(type(bq.q)(**pad))
        gain = BLOCK_PARAMETERS[self.arch.hru]
        if gain:
            board.write(gain["gain"], self._pad(np.asarray(bq.gain, np.int64), size.oscillators, axis=0))

    @staticmethod
    def _pad(a, size: int, axis: int = -1) -> np.ndarray:
        """``a`` with zeros appended along ``axis`` up to ``size``."""
        a = np.asarray(a, np.int64)
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, size - a.shape[axis])
        return np.pad(a, widths)
