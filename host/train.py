"""Training the on-board model on a real data set: host-side Adam, checkpoints, summary, plots.

Per minibatch, gradients of A and B come from the target's echoes, the head's from the host;
Adam runs on the host in float64, the result is projected onto the stable set and the format's
range, and quantised for the next batch. For ``--algo rhel`` the HRU runs on the target:

- ``sim`` (default), ``golden``, ``socket://127.0.0.1:PORT``, ``serial:///dev/ttyUSB0?baud=3000000``:
  a board through host.board.Board (:class:`BoardTarget`): the quantised parameters are written
  once per minibatch; per sample a zero-state forward, the host head, the quantised nudge
  (dL/dȳ)/L and the echo pair; the board sums the accumulators over the minibatch, which are
  read once and cleared. ``sim`` is the simulated board (the Verilated board image, built on
  first use for the model's size); ``golden`` is the golden board model in process behind the
  wire protocol, so it costs the framing, CRCs and retries a real link does.
- ``inprocess``: golden_model.model.InProcessTarget (hru_fixed, vmapped): the fast reference.

Both run golden_model.model's one driver, so they give bit-identical losses, parameters and
overflow counts (tests/test_host_training.py). ``--algo bptt`` / ``rhel-float`` train the same
architecture in float64 on the host (no board). Everything is deterministic, so a checkpoint
(params, Adam moments, the shuffling RNG's state, history) written after every epoch lets
``--resume`` continue bit-identically. ``--faults RATE`` (a diagnostic) wraps the link in
host.transports.FaultyTransport; the client's retries make the run end with the same parameters.

The input features (host.datasets.FEATURES) are part of the architecture: every algorithm and
target trains on the same inputs. The single HRU's default is ``energy`` (each channel and its
square: a mean-pooled linear HRU cannot form a second moment itself); an HSSM's is ``raw`` (its
GELU and GLU are the nonlinearity, and squared spikes would saturate the input word).

``--blocks K`` trains the paper's HSSM instead (golden_model.hssm: encoder, K blocks of norm →
HRU → C/D read-out → GELU → GLU → skip, mean, head; δ trained) with ``--hidden H`` and
``--hru linear|nonlinear``. With ``--algo rhel`` its HRU blocks run where ``--target`` says: in
process (hssm.FixedBlocks), or one block after another on a board through its per-step streams
(host.board_blocks.BoardBlocks), ending with the same parameters bit for bit. Without
``--blocks`` the single-HRU model trains exactly as before.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from echoboard.golden_model import hru_block as hb
from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model import hssm, model
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.golden_model.hssm_lockstep import LockstepBlocks
from echoboard.golden_model.fixed import int_range
from echoboard.host import plots
from echoboard.host.datasets import FEATURES, load_dataset

TARGETS = ("sim", "golden", "inprocess")  # plus socket:// and serial:// board URLs
URL_SCHEMES = ("socket://", "serial://")
CHECKPOINT = "checkpoint.npz"
# settings a resumed run must share with the run that wrote the checkpoint
SCHEDULES = ("blocks", "lockstep")
_RESUME_KEYS = ("dataset", "features", "target", "algo", "batch", "lr", "seed", "oscillators", "blocks", "hidden", "hru",
                "delta_init", "schedule")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "BasicMotions"
    features: str | None = None  # None: "energy" for the single HRU, "raw" for an HSSM (module docstring)
    target: str = "sim"
    algo: str = "rhel"
    epochs: int = 60
    batch: int = 8
    lr: float | None = None  # None: 0.02 for the single HRU, 0.01 for an HSSM
    seed: int = 0
    oscillators: int = model.DEFAULT_OSCILLATORS
    blocks: int = 0  # 0: the single-HRU on-board model; K >= 1: an HSSM of K blocks
    hidden: int = 32  # H, the HSSM's width between blocks
    hru: str = "linear"  # the HSSM blocks' HRU
    delta_init: str = "log-uniform"  # the HSSM's linear δ: log-uniform timescales, or the paper's (hssm._delta_init)
    schedule: str = "blocks"  # the HSSM's RHEL: block by block (a board's) or all blocks at once (hssm_lockstep)
    out: str | None = None  # default runs/<dataset>-<algo>-<seed>
    resume: bool = False
    faults: float = 0.0  # per-byte fault rate on the board link (diagnostic; results must not change)
    boards: int | None = None  # B > 1: data-parallel over B boards with Ray (host.multiboard); not a resume key
    ray_address: str | None = None  # HOST:PORT of a Ray cluster to join (default: a local Ray instance)

    def __post_init__(self):
        if self.features is None:
            object.__setattr__(self, "features", "raw" if self.blocks else "energy")
        if self.lr is None:
            object.__setattr__(self, "lr", 0.01 if self.blocks else 0.02)

    def out_dir(self) -> str:
        return self.out or os.path.join("runs", f"{self.dataset}-{self.algo}-{self.seed}")


def adam_step(params: dict, grads: dict, state: dict, lr: float,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> tuple[dict, dict]:
    """One Adam update (Kingma & Ba, bias-corrected) of the parameters that have gradients."""
    t = state["t"] + 1
    m = {k: b1 * state["m"][k] + (1 - b1) * g for k, g in grads.items()}
    v = {k: b2 * state["v"][k] + (1 - b2) * g * g for k, g in grads.items()}
    new = dict(params)
    for k in grads:
        new[k] = params[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
    return new, {"t": t, "m": m, "v": v}


def params_sha256(params: dict) -> str:
    """Digest of the float64 master parameters (sorted names, C order): equal runs, equal digests."""
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k], dtype=np.float64).tobytes())
    return h.hexdigest()


def save_checkpoint(path: str, params: dict, adam: dict, rng: np.random.Generator, meta: dict) -> None:
    """One npz, written to a temporary file and renamed, so a kill never leaves a torn checkpoint."""
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays.update({f"{s}/{k}": v for s in ("m", "v") for k, v in adam[s].items()})
    meta = {**meta, "adam_t": adam["t"], "rng": rng.bit_generator.state}
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> tuple[dict, dict, np.random.Generator, dict]:
    """(params, Adam state, the shuffling RNG, meta) exactly as ``save_checkpoint`` wrote them."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        group = {s: {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(s + "/")} for s in ("param", "m", "v")}
    params, adam = group["param"], {"t": meta.pop("adam_t"), "m": group["m"], "v": group["v"]}
    rng = np.random.default_rng()
    rng.bit_generator.state = meta.pop("rng")
    return params, adam, rng, meta


class BoardTarget:
    """echoboard.golden_model.model's FixedTarget on a board, through the Board API (one sample at a time).

    ``load`` writes the quantised parameters (and clears accumulators left by anything else);
    ``run`` per live lane: FORWARD from zero state, the host's head and nudge, ECHO (the board
    adds onto its accumulators); ``finish`` reads the accumulators once and clears them.

    A board with more oscillators or inputs than the model runs it zero-padded: the extra
    oscillators get A = B = δ = 0 (they stay exactly 0 and never wrap) and the extra input
    channels zero inputs (exact zero terms in B·u), so the integers of the model's own
    oscillators, the accumulators and the overflow counts are those of a board of its size.
    """

    def __init__(self, board):
        self.board = board
        self._dirty = True  # accumulators possibly non-zero (a fresh session: unknown)
        self._gradient_events = 0
        self._shape = None

    def load(self, q: hx.LinearParamsInt) -> None:
        P, N = np.shape(q.B)
        size = self.board.config.size
        if size.oscillators < P or size.inputs < N:
            raise ValueError(f"the board has {size.oscillators} oscillators and {size.inputs} inputs; the model "
                             f"needs at least {P} and {N} (--oscillators, and the data set's channels)")
        self._shape, (bp, bn) = (P, N), (size.oscillators, size.inputs)
        A, B, delta = (np.asarray(a, np.int64) for a in q)
        self.board.write_params(hx.LinearParamsInt(np.pad(A, (0, bp - P)), np.pad(B, ((0, bp - P), (0, bn - N))),
                                                   np.pad(delta, (0, bp - P))))
        if self._dirty:
            self.board.clear_gradients()
            self._dirty = False
        self._gradient_events = 0

    def run(self, uq, live, on_forward) -> int:
        overflows = 0
        for lane in np.flatnonzero(live):
            pos_sum, fwd_overflows = self.forward_lane(uq[lane])
            overflows += fwd_overflows
            nudge = on_forward(lane, pos_sum)
            if nudge is not None:
                overflows += self.echo_lane(uq[lane], nudge)
        return overflows

    def forward_lane(self, u) -> tuple[np.ndarray, int]:
        """One sample's zero-state forward: (pos_sum (P,), forward overflow events); its final state
        stays on the board for :meth:`echo_lane` (host.multiboard runs the two halves apart)."""
        P, N = self._shape
        fwd = self.board.forward(np.pad(np.asarray(u, np.int64), ((0, 0), (0, self.board.config.size.inputs - N))))
        return fwd.pos_sum[:P], int(fwd.overflows)

    def echo_lane(self, u, nudge) -> int:
        """The echo pair of the sample just forwarded, onto the accumulators: its ±ε overflow events."""
        P, N = self._shape
        size = self.board.config.size
        u = np.pad(np.asarray(u, np.int64), ((0, 0), (0, size.inputs - N)))
        result = self.board.echo(u, np.pad(np.asarray(nudge, np.int64), (0, size.oscillators - P)))
        plus, minus, self._gradient_events = (int(v) for v in result)
        self._dirty = True
        return plus + minus

    def finish(self):
        P, N = self._shape
        if not self._dirty:
            return np.zeros(P, np.int64), np.zeros((P, N), np.int64), 0
        acc_a, acc_b = self.board.read_gradients()
        self.board.clear_gradients()
        self._dirty = False
        events, self._gradient_events = self._gradient_events, 0
        return acc_a[:P], acc_b[:P, :N], events


def is_board_target(target: str) -> bool:
    return target in ("golden", "sim") or target.startswith(URL_SCHEMES)


def open_board(cfg: TrainConfig, fmt: FixedFormat, size: HRUSize, n_inputs: int):
    """The Board for ``cfg.target`` (sized for the model when it is the golden board model)."""
    from echoboard.host.board import Board
    from echoboard.host.transports import Faults

    kw = {}
    if cfg.faults:
        kw = {"faults": Faults(drop=cfg.faults / 3, corrupt=cfg.faults / 3, insert=cfg.faults / 3),
              "fault_seed": cfg.seed, "retries": 64}
    if cfg.target in ("golden", "sim"):  # a board sized for the model
        model_size = HRUSize(cfg.oscillators, n_inputs, size.max_length)
        if cfg.target == "sim":
            build_simulated_board(model_size, fmt)
        return Board.open(cfg.target, size=model_size, fmt=fmt, **kw)
    return Board.open(cfg.target, fmt=fmt, **kw)


def build_simulated_board(size: HRUSize, fmt: FixedFormat) -> None:
    """Build (or find in the cache) the simulated board of ``size`` before Board.open("sim") starts it,
    saying so: the first run of a model size spends about a minute in Amaranth and Verilator, silently otherwise."""
    from echoboard.sim.board_image import ImageConfig, simulated_board_executable
    from echoboard.sim.paths import build_root

    print(f"simulated board (P = {size.oscillators}, N = {size.inputs}): building the Verilated board image "
          f"unless {build_root('board_sim')}/ has it (a first build takes about a minute) ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    exe = simulated_board_executable(ImageConfig(size, fmt))
    print(f"simulated board ready in {time.monotonic() - t0:.0f} s: {exe}", file=sys.stderr, flush=True)


def link_summary(board) -> dict:
    """Board.link_stats plus the link efficiency (payload bytes / bytes on the wire) and injected faults."""
    stats = dict(board.link_stats)
    wire = stats["bytes_sent"] + stats["bytes_received"]
    stats["efficiency"] = (stats["payload_bytes_sent"] + stats["payload_bytes_received"]) / wire if wire else None
    injected = getattr(board.client.port, "injected", None)
    if injected is not None:
        stats["faults_injected"] = injected
    return stats


def uses_ray(cfg: TrainConfig) -> bool:
    """Several boards, or a Ray cluster: host.multiboard. One board without --ray-address: BoardTarget."""
    return (cfg.boards or 1) > 1 or "," in cfg.target or cfg.ray_address is not None


def _target_kind(target: str) -> str:
    """What a resumed run must keep of ``--target``: board URLs (one or a list) may change to others."""
    return "board URLs" if all(t.strip().startswith(URL_SCHEMES) for t in target.split(",")) else target


def _validate(cfg: TrainConfig) -> None:
    if uses_ray(cfg):
        from echoboard.host.multiboard import board_targets

        board_targets(cfg.target, cfg.boards)
        if cfg.algo != "rhel" or cfg.blocks:
            raise ValueError("--boards and --ray-address train the single-HRU model with --algo rhel on boards")
    elif cfg.boards is not None and cfg.boards < 1:
        raise ValueError(f"boards must be a positive integer, got {cfg.boards}")
    elif cfg.target not in TARGETS and not cfg.target.startswith(URL_SCHEMES):
        raise ValueError(f"unknown target {cfg.target!r}; available: {', '.join(TARGETS)}, "
                         "socket://HOST:PORT, serial:///dev/DEVICE?baud=RATE")
    if not 0.0 <= cfg.faults < 0.5:
        raise ValueError(f"faults must be a per-byte rate in [0, 0.5), got {cfg.faults}")
    if cfg.faults and not (cfg.algo == "rhel" and is_board_target(cfg.target)):
        raise ValueError("--faults needs a board link: --algo rhel with a board target")
    if cfg.algo not in model.ALGOS:
        raise ValueError(f"unknown algorithm {cfg.algo!r}; choose one of {', '.join(model.ALGOS)}")
    for name in ("epochs", "batch", "oscillators", "hidden"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.blocks < 0:
        raise ValueError(f"blocks must be >= 0 (0: the single-HRU model), got {cfg.blocks}")
    if cfg.hru not in hb.HRU_KINDS:
        raise ValueError(f"unknown HRU {cfg.hru!r}; choose one of {', '.join(hb.HRU_KINDS)}")
    if cfg.hru != "linear" and not cfg.blocks:
        raise ValueError("the single-HRU model is linear; --hru nonlinear needs --blocks K (an HSSM)")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if cfg.schedule == "lockstep" and not (cfg.blocks and cfg.algo != "bptt" and cfg.target == "inprocess"):
        raise ValueError("--schedule lockstep runs an HSSM's RHEL in process: it needs --blocks K, --algo rhel or "
                         "rhel-float and --target inprocess")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}")


class SingleHRUModel:
    """The single-HRU on-board model (golden_model.model) as train_epoch drives it."""

    def __init__(self, cfg: TrainConfig, n_inputs: int, n_classes: int, fmt: FixedFormat):
        self.cfg, self.n_inputs, self.n_classes, self.fmt = cfg, n_inputs, n_classes, fmt
        self.trained = model.TRAINED

    def architecture(self) -> dict:
        return {"model": "single-hru", "hru": "linear", "oscillators": self.cfg.oscillators,
                "inputs": self.n_inputs, "classes": self.n_classes}

    def init(self, rng, split) -> dict:
        return model.project(model.init_params(rng, self.n_inputs, self.n_classes, self.cfg.oscillators), self.fmt)[0]

    def project(self, params):
        return model.project(params, self.fmt)

    def learning_rate(self, step: int, n_train: int) -> float:
        """Constant: the single HRU's runs (and their digests) stay as they were."""
        return self.cfg.lr

    def batch(self, params, x, lengths, labels, target):
        """(BatchResult, buffers to store in params, host-saturated values)."""
        return model.batch_gradients(params, x, lengths, labels, self.cfg.algo, self.fmt, target), {}, 0

    def predict(self, params, x, lengths, target):
        return model.predict(params, x, lengths, self.cfg.algo, self.fmt, target)


class HSSMModel:
    """The HSSM (golden_model.hssm) as train_epoch drives it; its norm buffers live in params."""

    def __init__(self, cfg: TrainConfig, n_inputs: int, n_classes: int, fmt):
        self.cfg, self.fmt = cfg, fmt
        self.arch = hssm.Architecture(n_inputs, n_classes, cfg.blocks, cfg.hidden, cfg.oscillators, cfg.hru,
                                      cfg.delta_init)
        self.trained = self.arch.trained()
        self.lockstep = LockstepBlocks(self.arch, cfg.algo, fmt) if cfg.schedule == "lockstep" else None

    def architecture(self) -> dict:
        return {"model": "hssm", **self.arch.as_dict()}

    def init(self, rng, split) -> dict:
        """The paper's initialisation, the norm's running statistics calibrated on ``split``."""
        params = hssm.project(hssm.init_params(rng, self.arch), self.arch, self.fmt)[0]
        return hssm.calibrate(params, split.x, split.lengths, self.arch)

    def project(self, params):
        return hssm.project(params, self.arch, self.fmt)

    def learning_rate(self, step: int, n_train: int) -> float:
        """Cosine decay from --lr to 0 over the run's --epochs: the last epochs settle instead of
        ending on one noisy step (the final accuracy is what a run reports). A run resumed with the
        same --epochs ends bit-identically; a larger --epochs on resume stretches the schedule."""
        total = self.cfg.epochs * -(-n_train // self.cfg.batch)
        return self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    def batch(self, params, x, lengths, labels, target):
        r = hssm.batch_gradients(params, x, lengths, labels, self.arch, self.cfg.algo, self.fmt, self.lockstep or target)
        return r, r.stats, r.clipped

    def predict(self, params, x, lengths, target):
        return hssm.predict(params, x, lengths, self.arch, self.cfg.algo, self.fmt, self.lockstep or target)


def make_model(cfg: TrainConfig, data, fmt: FixedFormat):
    """The model ``cfg`` trains, with the format its integers use: the nudge's scale follows the
    data set's longest sequence (formats.length_scale_log2; unchanged up to 2048 steps); an HSSM
    of nonlinear blocks uses the nonlinear HRU's format."""
    longest = int(max(data.train.lengths.max(), data.test.lengths.max()))
    if not cfg.blocks:
        return SingleHRUModel(cfg, data.n_inputs, data.n_classes, fmt.for_length(longest))
    block_fmt = fmt if cfg.hru == "linear" else hb.default_format(cfg.hru)
    return HSSMModel(cfg, data.n_inputs, data.n_classes, block_fmt.for_length(longest))


def _accuracy(params, split, net, target=None) -> tuple[float, int]:
    logits, overflows = net.predict(params, split.x, split.lengths, target)
    return float(np.mean(np.argmax(logits, axis=1) == split.labels)), overflows


def train(cfg: TrainConfig, fmt: FixedFormat = FixedFormat(), size: HRUSize = HRUSize(),
          progress: bool | None = None) -> dict:
    """Train (or resume) per ``cfg``; writes OUT/checkpoint.npz each epoch, OUT/summary.json,
    OUT/curves.png and OUT/echo_retrace.png.

    ``progress``: show a tqdm bar (None: only on a terminal). Returns the summary dict; its
    ``link`` holds this session's Board.link_stats (None when no board is used).
    """
    from contextlib import ExitStack

    _validate(cfg)
    with ExitStack() as stack:
        return _train(cfg, fmt, size, progress, stack)


def load_training_data(cfg: TrainConfig, fmt: FixedFormat, size: HRUSize):
    """cfg's data set with its features; normalised inputs clipped to what the fixed-point input word
    holds, for every algorithm alike."""
    clip = int_range(fmt.input_width)[1] / 2.0 ** fmt.input_frac
    return load_dataset(cfg.dataset, max_length=size.max_length, clip=clip, features=cfg.features)


def initial_state(cfg: TrainConfig, data, fmt: FixedFormat) -> tuple[dict, dict, np.random.Generator]:
    """(params, Adam state, the shuffling RNG) of a new run: the seed draws the init, then the batches."""
    rng = np.random.default_rng(cfg.seed)
    net = make_model(cfg, data, fmt)
    params = net.init(rng, data.train)
    adam = {"t": 0, **{s: {k: np.zeros_like(params[k]) for k in net.trained} for s in ("m", "v")}}
    return params, adam, rng


def open_target(cfg: TrainConfig, net, size: HRUSize, n_inputs: int, stack):
    """(board or None, where ``net``'s fixed-point HRUs run: the single HRU's FixedTarget, an HSSM's
    host.board_blocks.BoardBlocks, or None for in process); a board is closed with ``stack``."""
    fmt = net.fmt
    if cfg.algo != "rhel" or (cfg.blocks and not is_board_target(cfg.target)):
        return None, None  # float64 algorithms; an HSSM's integer blocks in process (hssm.FixedBlocks)
    if cfg.blocks:  # each block's HRU on the board, sized for a block (P oscillators, H inputs)
        from echoboard.host.board_blocks import BoardBlocks

        board = stack.enter_context(open_board(cfg, fmt, size, cfg.hidden))
        return board, BoardBlocks(net.arch, board)
    if not is_board_target(cfg.target):
        return None, model.InProcessTarget(fmt)
    if uses_ray(cfg):  # B boards through Ray: the summary's link and boards come from the target
        from echoboard.host.multiboard import open_multiboard

        return None, open_multiboard(cfg, fmt, size, n_inputs, stack)
    board = stack.enter_context(open_board(cfg, fmt, size, n_inputs))
    return board, BoardTarget(board)


def train_epoch(params: dict, adam: dict, rng: np.random.Generator, split, cfg: TrainConfig, net,
                target, on_batch=lambda loss: None) -> tuple[dict, dict, dict]:
    """One pass over ``split`` in an order drawn from ``rng``: Adam, projection, quantisation per minibatch.

    ``net``: make_model's model. Returns (params, adam, totals: summed ``loss`` over samples,
    ``overflow_events``, ``clipped`` parameters, ``saturated`` block inputs and nudges).
    """
    totals = {"loss": 0.0, "overflow_events": 0, "clipped": 0, "saturated": 0}
    order = rng.permutation(len(split))
    for start in range(0, len(split), cfg.batch):
        idx = order[start:start + cfg.batch]
        r, buffers, saturated = net.batch(params, split.x[idx], split.lengths[idx], split.labels[idx], target)
        params, adam = adam_step(params, r.grads, adam, net.learning_rate(adam["t"], len(split)))
        params, clipped = net.project({**params, **buffers})
        totals["loss"] += r.loss * len(idx)
        totals["overflow_events"] += r.overflow_events
        totals["clipped"] += clipped
        totals["saturated"] += saturated
        on_batch(r.loss)
    return params, adam, totals


def _train(cfg, fmt, size, progress, stack) -> dict:
    from tqdm import tqdm

    out = cfg.out_dir()
    ckpt = os.path.join(out, CHECKPOINT)
    data = load_training_data(cfg, fmt, size)
    settings = {k: getattr(cfg, k) for k in _RESUME_KEYS}
    if cfg.resume:
        if not os.path.isfile(ckpt):
            raise ValueError(f"--resume: no checkpoint at {ckpt}")
        params, adam, rng, meta = load_checkpoint(ckpt)
        written = {**{k: getattr(TrainConfig(), k) for k in _RESUME_KEYS}, **meta["settings"]}  # older checkpoints
        changed = {k: (written[k], v) for k, v in settings.items()
                   if (written[k] != v if k != "target" else _target_kind(written[k]) != _target_kind(v))}
        if changed:
            raise ValueError(f"--resume with different settings than the checkpoint (was, now): {changed}")
        epoch, history = meta["epoch"], meta["history"]
    else:
        if os.path.exists(ckpt):
            raise ValueError(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
        params, adam, rng = initial_state(cfg, data, fmt)
        epoch, history = 0, []
    os.makedirs(out, exist_ok=True)
    net = make_model(cfg, data, fmt)
    board, target = open_target(cfg, net, size, data.n_inputs, stack)

    train_split, n = data.train, len(data.train)
    n_batches = -(-n // cfg.batch)
    with tqdm(total=cfg.epochs * n_batches, initial=epoch * n_batches, disable=None if progress is None else not progress,
              desc=f"{cfg.dataset} {cfg.algo}", unit="batch") as bar:
        def on_batch(loss):
            bar.update()
            rate = bar.format_dict.get("rate")  # minibatches/s over all boards
            bar.set_postfix(loss=f"{loss:.3f}", **({"samples/s": f"{rate * cfg.batch:.1f}"} if rate else {}))

        while epoch < cfg.epochs:
            params, adam, totals = train_epoch(params, adam, rng, train_split, cfg, net, target, on_batch)
            train_acc, o1 = _accuracy(params, data.train, net, target)
            test_acc, o2 = _accuracy(params, data.test, net, target)
            epoch += 1
            history.append({"epoch": epoch, "loss": totals["loss"] / n, "train_accuracy": train_acc,
                            "test_accuracy": test_acc, "overflow_events": totals["overflow_events"] + o1 + o2,
                            "clipped": totals["clipped"], "saturated": totals["saturated"]})
            save_checkpoint(ckpt, params, adam, rng, {"settings": settings, "epoch": epoch, "history": history})

    last = history[-1]
    summary = {
        "dataset": cfg.dataset, "target": cfg.target, "algo": cfg.algo, "epochs": epoch,
        "train_accuracy": last["train_accuracy"], "test_accuracy": last["test_accuracy"],
        "params_sha256": params_sha256(params),
        "overflow_events": sum(h["overflow_events"] for h in history),
        "clipped": sum(h["clipped"] for h in history), "inputs_clipped": data.clipped,
        "saturated": sum(h.get("saturated", 0) for h in history), "architecture": net.architecture(),
        "nudge_scale": net.fmt.nudge_scale, "settings": settings, "history": history,
        "link": None if board is None else link_summary(board),
        "boards": [cfg.target] if board is not None else [], "engine": None,
    }
    if hasattr(target, "summary"):  # host.multiboard: the boards, Ray and each board's link
        summary.update(target.summary())
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    title = f"{cfg.dataset} · {cfg.algo} · {cfg.target} · seed {cfg.seed}"
    plots.plot_history(history, os.path.join(out, "curves.png"), title)
    retrace = _retrace_case(net, params, train_split.x[0, :train_split.lengths[0]])
    if retrace is not None:
        plots.plot_echo_retrace(*retrace, net.fmt, os.path.join(out, "echo_retrace.png"),
                                f"{cfg.dataset} training sample 0, trained HRU" + (" of block 0" if cfg.blocks else ""))
    return summary


def _retrace_case(net, params: dict, sample):
    """(integer linear HRU parameters, integer inputs) of the HRU whose ε = 0 echo the run plots:
    the single HRU on the sample, or an HSSM's block 0 on the sample's block-0 input; None for
    nonlinear blocks (the plot draws the linear HRU)."""
    if isinstance(net, SingleHRUModel):
        return hx.quantize_linear_params(params, net.fmt), hx.quantize_inputs(sample, net.fmt)
    if net.arch.hru != "linear":
        return None
    block0 = {k[len("block0."):]: v for k, v in params.items() if k.startswith("block0.")}
    u = hssm.normalize(block0, hssm.encode(params, sample))
    uq, _ = hssm.saturate(u, net.fmt.input_width, net.fmt.input_frac)
    return hb.quantize_block_params("linear", {k: block0[k] for k in hb.PARAM_NAMES["linear"]}, net.fmt).q, uq


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--dataset", default=d.dataset,
                        help="a classification set aeon ships, or the generated long-range task DelayedRecall-<L> "
                             f"(e.g. DelayedRecall-16000) (default {d.dataset})")
    parser.add_argument("--features", default=None, choices=FEATURES,
                        help="input features, for every algorithm alike: raw = the normalised channels; energy = "
                             "each channel and its square (2N inputs) (default: energy for the single HRU, raw for "
                             "an HSSM)")
    parser.add_argument("--target", default=d.target,
                        help="where --algo rhel runs the HRU: sim = the simulated board (the Verilated board "
                             "image, built on first use of a model size and cached) (default); golden = the golden "
                             "board model through the Board API; socket://HOST:PORT or "
                             "serial:///dev/DEVICE?baud=RATE = a board; inprocess = the vmapped integer model "
                             "without a link (the fast reference)")
    parser.add_argument("--algo", default=d.algo, choices=model.ALGOS,
                        help="rhel = fixed-point RHEL on the target; rhel-float = float64 RHEL; "
                             f"bptt = float64 BPTT on the host (default {d.algo})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"total epochs (default {d.epochs})")
    parser.add_argument("--batch", type=int, default=d.batch, help=f"minibatch size (default {d.batch})")
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam learning rate (default: 0.02 for the single HRU, 0.01 for an HSSM)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"init and shuffling seed (default {d.seed})")
    parser.add_argument("--oscillators", type=int, default=d.oscillators,
                        help=f"P, the number of oscillators (default {d.oscillators})")
    parser.add_argument("--blocks", type=int, default=d.blocks, metavar="K",
                        help="train the paper's HSSM of K blocks (encoder, K × [norm, HRU, C/D read-out, GELU, GLU, "
                             "skip], mean, head; δ trained) instead of the single-HRU model; with --algo rhel each block's "
                             "HRU runs on --target (a board: one block after another, bit-identical to inprocess) "
                             f"(default {d.blocks}: the single HRU)")
    parser.add_argument("--hidden", type=int, default=d.hidden, metavar="H",
                        help=f"the HSSM's width between blocks (default {d.hidden})")
    parser.add_argument("--hru", default=d.hru, choices=hb.HRU_KINDS,
                        help=f"the HSSM blocks' HRU (default {d.hru})")
    parser.add_argument("--delta-init", default=d.delta_init, choices=hssm.DELTA_INITS,
                        help="the linear HSSM's initial δ: log-uniform over [2^-6, 1] (timescales from ~2 to "
                             "~2,000 steps), or the paper's sigmoid(U(0, 1)) (every period below ~13 steps) "
                             f"(default {d.delta_init})")
    parser.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                        help="an HSSM's RHEL in process: blocks = block by block, as one board runs it (keeps every "
                             "block's input and output sequence); lockstep = all blocks one step at a time, each "
                             f"block's states recomputed by a retrace: memory flat in L (default {d.schedule})")
    parser.add_argument("--out", default=None, help="output folder (default runs/<dataset>-<algo>-<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz up to --epochs")
    parser.add_argument("--faults", type=float, default=d.faults, metavar="RATE",
                        help="diagnostic: inject byte faults (drop, corrupt, insert; RATE per byte in all, each "
                             "direction) on the board link; the retries must give the same parameters")
    parser.add_argument("--boards", type=int, default=None, metavar="B",
                        help="train data-parallel on B boards through Ray, bit-identically to one board: B simulated "
                             "or golden boards (--target sim|golden), or one per URL of --target URL1,URL2,... "
                             "(default: 1, or the number of URLs)")
    parser.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                        help="join this Ray cluster (ray start --head ...) and open each board on the node that "
                             "holds it (custom resource board:NAME); default: a local Ray instance")
    parser.set_defaults(run=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    summary = train(cfg)
    # the per-epoch history stays in summary.json: the terminal gets the result
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    print(f"summary.json (with the per-epoch history), curves.png, echo_retrace.png and the checkpoint are in "
          f"{cfg.out_dir()}", file=sys.stderr)
    return 0
