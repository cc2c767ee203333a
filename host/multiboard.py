"""Data-parallel on-board training over several boards with Ray, bit-identical to one board.

One Ray actor (:class:`BoardActor`) owns one board: it opens the board itself (``Board.open``
inside the actor), on the node that holds it, placed there by a custom resource per board
(:func:`resource_name`: ``board:ttyUSB0`` for ``serial:///dev/ttyUSB0``, ``board:HOST:PORT``
for ``socket://HOST:PORT``, ``board:sim`` / ``board:golden`` for a simulated or golden board).
:class:`MultiBoardTarget` is golden_model.model's FixedTarget over B such actors:

- ``load(q)``: the same quantised parameters to every board;
- ``run(uq, live, on_forward)``: the chunk's live lanes are dealt round-robin, lane i to board
  i mod B. Per round every board forwards its lane at once; the host then calls ``on_forward`` for
  the round's lanes *in lane order* (the head's float sums are those of one board); each board
  echoes its lane in the same remote call that forwards its lane of the next round (a board's
  echo starts from the state its own last forward left);
- ``finish()``: the B boards' accumulators summed and wrapped to the accumulator width.

Two's-complement sums do not depend on order, so the sum of B boards' wrapped accumulators,
wrapped once more, is bit for bit the accumulator of one board that ran every sample: the
gradients, the parameters and ``params_sha256`` are those of one board. What can differ is the
*count* of gradient overflow events: a running sum that wraps on one board may not wrap when the
samples are split (or the other way round), and each board's counter saturates on its own; the
forward and echo (±ε) overflow counts are per sample and stay equal.

A board that fails (its actor died, its node went away, its link gave up after the retries) stops
the run with :class:`BoardFailure` naming the board; training writes its checkpoint after every
epoch only, so the last checkpoint stays intact and ``--resume`` with any set of boards continues
bit-identically.

The actor's board operations are per-HRU (``load``/``step``/``finish`` of the single HRU's
BoardTarget); an HSSM's blocks, once the board runs them, would add per-block methods beside
these (the actor keeps its board and session state, the host keeps the driver).
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings
from urllib.parse import urlsplit

import numpy as np

from echoboard.golden_model import hru_fixed as hx
from echoboard.golden_model.fixed import wrap
from echoboard.golden_model.formats import FixedFormat, HRUSize

__all__ = ["BoardActor", "BoardFailure", "MultiBoardTarget", "board_targets", "open_multiboard", "resource_name"]

#: Ray's worker processes for the local default instance: the actors need no CPU reservation
#: (a board actor waits on its link most of the time), so one or two fit a 2-core machine.
LOCAL_CPUS = min(2, os.cpu_count() or 1)


#: Seconds to wait for boards that other actors still hold (a previous run's, being torn down).
FREE_WAIT_S = 30.0


class BoardFailure(ConnectionError):
    """A board stopped answering mid-run (its actor died, or its link failed beyond the retries)."""


def board_targets(target: str, boards: int | None) -> list[str]:
    """The board of each actor: ``--target`` as a comma list of URLs, or ``boards`` × sim/golden."""
    parts = [t.strip() for t in target.split(",")]
    if len(parts) > 1:
        if any(not p.startswith(("socket://", "serial://")) for p in parts):
            raise ValueError(f"a list of targets must be socket:// or serial:// board URLs, got {target!r}")
        if boards not in (None, len(parts)):
            raise ValueError(f"--boards {boards} but --target names {len(parts)} boards")
        return parts
    if boards is not None and boards < 1:
        raise ValueError(f"boards must be a positive integer, got {boards}")
    if (boards or 1) > 1 and target not in ("sim", "golden"):
        raise ValueError(f"--boards {boards} needs --target sim or golden, or a comma list of {boards} board URLs "
                         f"(socket://HOST:PORT,serial:///dev/DEVICE,...); got --target {target}")
    return [target] * (boards or 1)


def resource_name(url: str) -> str:
    """The Ray custom resource that places the actor of ``url`` on the node holding the board."""
    if url in ("sim", "golden"):
        return f"board:{url}"
    parts = urlsplit(url)
    if parts.scheme == "serial":
        return f"board:{os.path.basename(parts.path)}"
    return f"board:{parts.netloc}"


class BoardActor:
    """One board in a Ray actor (``ray.remote`` is applied in :func:`open_multiboard`).

    Opens the board with host.train.open_board in the actor's process, on the node Ray placed it,
    and keeps a host.train.BoardTarget: the one-board session (padding, dirty accumulators,
    gradient counter) is the single-board path's own code.
    """

    def __init__(self, cfg, fmt: FixedFormat, size: HRUSize, n_inputs: int):
        from echoboard.host.train import BoardTarget, open_board

        self.board = open_board(cfg, fmt, size, n_inputs)
        self.target = BoardTarget(self.board)

    def describe(self) -> dict:
        import socket

        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid(),
                "size": dataclasses.asdict(self.board.config.size)}

    def load(self, q: hx.LinearParamsInt) -> None:
        self.target.load(q)

    def step(self, echo, forward):
        """``echo``: (u, nudge) of this board's last forwarded lane, or None; then ``forward``: u or None.
        Returns (echo overflow events, pos_sum or None, forward overflow events)."""
        echo_overflows = 0 if echo is None else self.target.echo_lane(*echo)
        if forward is None:
            return echo_overflows, None, 0
        pos_sum, overflows = self.target.forward_lane(forward)
        return echo_overflows, pos_sum, overflows

    def finish(self):
        return self.target.finish()

    def link(self) -> dict:
        from echoboard.host.train import link_summary

        return link_summary(self.board)

    def close(self) -> None:
        self.board.close()


class MultiBoardTarget:
    """echoboard.golden_model.model's FixedTarget over B board actors (module docstring)."""

    def __init__(self, actors: list, urls: list[str], fmt: FixedFormat):
        self.actors, self.urls, self.fmt = list(actors), list(urls), fmt
        self.nodes: list[dict] = []

    def _get(self, refs: dict):
        """{board index: ObjectRef} -> {board index: value}; a failed board raises BoardFailure naming it."""
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        out = {}
        for i, ref in refs.items():
            try:
                out[i] = ray.get(ref)
            except RayTaskError as exc:  # the board's own error (a link that gave up, a bad argument)
                cause = getattr(exc, "cause", None) or exc
                if isinstance(cause, ValueError):
                    raise ValueError(f"board {i} ({self.urls[i]}): {cause}") from exc
                raise BoardFailure(f"board {i} ({self.urls[i]}) failed: {type(cause).__name__}: "
                                   f"{' '.join(str(cause).split())}") from exc
            except RayActorError as exc:
                if getattr(exc, "actor_init_failed", False):  # Board.open raised in the actor: its last line
                    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                    raise BoardFailure(f"board {i} ({self.urls[i]}) could not be opened: "
                                       f"{lines[-1] if lines else type(exc).__name__}") from exc
                raise BoardFailure(f"board {i} ({self.urls[i]}) failed: its Ray actor died "
                                   f"({type(exc).__name__}; the board's process or node is gone)") from exc
            except RayError as exc:
                raise BoardFailure(f"board {i} ({self.urls[i]}) failed: {type(exc).__name__}") from exc
        return out

    def _call(self, method: str, *args) -> list:
        return list(self._get({i: getattr(a, method).remote(*args) for i, a in enumerate(self.actors)}).values())

    def load(self, q: hx.LinearParamsInt) -> None:
        import ray

        self._call("load", ray.put(q))

    def run(self, uq, live, on_forward) -> int:
        lanes, n = np.flatnonzero(live), len(self.actors)
        pending: dict[int, tuple] = {}  # board -> (u, nudge) of its lane forwarded last, still to echo
        overflows = 0
        for start in range(0, len(lanes), n):
            group = lanes[start:start + n]
            refs = {b: self.actors[b].step.remote(pending.pop(b, None), uq[lane]) for b, lane in enumerate(group)}
            refs.update({b: self.actors[b].step.remote(pending.pop(b), None) for b in list(pending)})
            results = self._get(refs)
            for b in sorted(results):
                echo_overflows, pos_sum, forward_overflows = results[b]
                overflows += echo_overflows + forward_overflows
            for b, lane in enumerate(group):  # the host's head and nudge in lane order
                nudge = on_forward(lane, results[b][1])
                if nudge is not None:
                    pending[b] = (uq[lane], nudge)
        if pending:
            for echo_overflows, _, _ in self._get({b: self.actors[b].step.remote(e, None)
                                                   for b, e in pending.items()}).values():
                overflows += echo_overflows
        return overflows

    def finish(self):
        results = self._call("finish")
        width = self.fmt.acc_width
        acc_a = sum(np.asarray(r[0], np.int64) for r in results)  # |sum| < B · 2^(W-1): no int64 overflow
        acc_b = sum(np.asarray(r[1], np.int64) for r in results)
        return (np.asarray(wrap(acc_a, width)[0], np.int64), np.asarray(wrap(acc_b, width)[0], np.int64),
                sum(int(r[2]) for r in results))

    def summary(self) -> dict:
        """summary.json's boards, engine, link (all boards' counters summed) and per-board links."""
        import ray

        links = self._call("link")
        total = {k: sum(link[k] for link in links) for k in links[0] if k not in ("efficiency", "faults_injected")}
        wire = total["bytes_sent"] + total["bytes_received"]
        total["efficiency"] = (total["payload_bytes_sent"] + total["payload_bytes_received"]) / wire if wire else None
        return {"boards": self.urls, "engine": {"name": "ray", "version": ray.__version__},
                "link": total,
                "board_links": [{"board": i, "target": url, **node, "link": link}
                                for i, (url, node, link) in enumerate(zip(self.urls, self.nodes, links))]}

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # a dead board: nothing to close
                pass
            ray.kill(actor)


def _init_ray(address: str | None, resources: dict) -> bool:
    """Connect to Ray; True when this call started it (and the caller shuts it down)."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    with warnings.catch_warnings():  # Ray's fork-exec of its own processes alarms JAX needlessly
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        if address and address != "local":
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:  # the embedded default ("local" too): a local instance with one resource per board
            # (quiet: not even its notice that token authentication guards this machine-local instance)
            ray.init(num_cpus=LOCAL_CPUS, resources=resources, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
    return True


def open_multiboard(cfg, fmt: FixedFormat, size: HRUSize, n_inputs: int, stack) -> MultiBoardTarget:
    """A MultiBoardTarget over ``cfg``'s boards (host.train.TrainConfig); closed, and Ray shut down
    if this call started it, with ``stack``."""
    import ray

    urls = board_targets(cfg.target, cfg.boards)
    needed: dict[str, int] = {}
    for url in urls:
        needed[resource_name(url)] = needed.get(resource_name(url), 0) + 1
    if "sim" in urls:  # build (or find) the image here once, not in every actor at the same time
        from echoboard.host.train import build_simulated_board

        build_simulated_board(HRUSize(cfg.oscillators, n_inputs, size.max_length), fmt)
    if _init_ray(cfg.ray_address, needed):
        stack.callback(ray.shutdown)
    total = ray.cluster_resources()
    short = {k: (v, total.get(k, 0)) for k, v in needed.items() if total.get(k, 0) < v}
    if short:
        raise ValueError("the Ray cluster lacks board resources (needed, declared): "
                         + ", ".join(f"{k}: ({v}, {n:g})" for k, (v, n) in short.items())
                         + "; on each board's machine: ray start --address=HEAD:PORT --resources='{\"board:NAME\": 1}'")
    deadline = time.monotonic() + FREE_WAIT_S  # boards a finished run's actors held are freed within moments
    while any(ray.available_resources().get(k, 0) < v for k, v in needed.items()):
        if time.monotonic() > deadline:
            raise ValueError(f"the Ray cluster's boards {sorted(needed)} are held by other actors (another run?)")
        time.sleep(0.1)
    remote = ray.remote(BoardActor)
    actors = [remote.options(num_cpus=0, resources={resource_name(url): 1}, max_restarts=0, max_task_retries=0)
              .remote(dataclasses.replace(cfg, target=url), fmt, size, n_inputs) for url in urls]
    target = MultiBoardTarget(actors, urls, fmt)
    stack.callback(target.close)
    target.nodes = target._call("describe")  # each board opened (or its failure, naming it)
    return target
