"""cocotb 2.1 verification components for Amaranth ``lib.stream`` ports under Verilator.

The split follows cocotb's examples: a codec (payload layout), a driver and a monitor (signal
level, random idle and back-pressure), a model (the golden model, supplied by the testbench) and
an in-order checker (:class:`Scoreboard`).

Conventions (toolchain-notes.md §3.2): a stream port ``p`` appears in Verilog as ``p__valid``,
``p__ready`` and a flat ``p__payload``; signals are driven just after the falling edge and
sampled in the ReadOnly phase that follows, so a transfer seen there happens at the next rising
edge. The driver and monitor cost two triggers per clock and pack/unpack only on transfers:
they are the simulation's hot loop.
"""
from __future__ import annotations

import json
import logging
import os
import random
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cocotb
from amaranth.hdl import Shape, ShapeCastable, signed, unsigned
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, ReadOnly, with_timeout

from echoboard.sim.verilator import MISMATCH_SUFFIX, SUMMARY_SUFFIX

#: The clock period every testbench uses unless it says otherwise.
CLOCK_PERIOD_NS = 10


# ---------------------------------------------------------------- payload codec

class PayloadCodec:
    """Packs Python values into the flat bit vector an Amaranth payload becomes in Verilog.

    Build it from the hardware's own shape (``PayloadCodec.from_shape(MyStruct)``) so the
    layout has one source of truth. Values: an int for a scalar shape, a dict for a struct,
    a list for an array, nested as the layout is. Packing rejects values that do not fit, since
    a silently wrapped stimulus would make the model and the hardware disagree for no reason.
    """

    width: int

    @staticmethod
    def from_shape(shape) -> PayloadCodec:
        """Codec for any Amaranth shape-castable: ``signed(16)``, a ``data.Struct``, a Layout."""
        if isinstance(shape, ShapeCastable) and not isinstance(shape, data.Layout):
            return PayloadCodec.from_shape(shape.as_shape())
        if isinstance(shape, data.ArrayLayout):
            return _Array(PayloadCodec.from_shape(shape.elem_shape), shape.length)
        if isinstance(shape, data.UnionLayout):
            raise TypeError("union payloads are ambiguous to pack; use a struct")
        if isinstance(shape, data.Layout):
            return _Struct([(name, f.offset, PayloadCodec.from_shape(f.shape)) for name, f in shape], shape.size)
        shape = Shape.cast(shape)
        return _Scalar(shape.width, shape.signed)

    @staticmethod
    def from_fields(fields: Sequence[tuple[str, int, bool]]) -> PayloadCodec:
        """Codec for ``[(name, width, signed), ...]`` laid out LSB first, as a ``data.StructLayout``."""
        return PayloadCodec.from_shape(data.StructLayout(
            {name: signed(width) if is_signed else unsigned(width) for name, width, is_signed in fields}))

    def pack(self, value) -> int:
        raise NotImplementedError

    def unpack(self, word: int):
        raise NotImplementedError

    def random(self, rng: random.Random):
        """A uniformly random value over the full range of every field."""
        raise NotImplementedError


class _Scalar(PayloadCodec):
    def __init__(self, width: int, is_signed: bool):
        self.width, self._signed, self._mask = width, is_signed, (1 << width) - 1
        self._lo = -(1 << (width - 1)) if is_signed and width else 0
        self._hi = self._lo + self._mask

    def pack(self, value: int) -> int:
        if not self._lo <= value <= self._hi:
            raise ValueError(f"{value} does not fit {'signed' if self._signed else 'unsigned'}({self.width})")
        return value & self._mask

    def unpack(self, word: int) -> int:
        word &= self._mask
        return word - (1 << self.width) if self._signed and word > self._hi else word

    def random(self, rng: random.Random) -> int:
        return rng.randint(self._lo, self._hi)


class _Array(PayloadCodec):
    def __init__(self, elem: PayloadCodec, length: int):
        self._elem, self._length, self.width = elem, length, elem.width * length

    def pack(self, value: Sequence) -> int:
        if len(value) != self._length:
            raise ValueError(f"expected {self._length} elements, got {len(value)}")
        stride, pack = self._elem.width, self._elem.pack
        return sum(pack(v) << (i * stride) for i, v in enumerate(value))

    def unpack(self, word: int) -> list:
        stride, unpack = self._elem.width, self._elem.unpack
        return [unpack(word >> (i * stride)) for i in range(self._length)]

    def random(self, rng: random.Random) -> list:
        return [self._elem.random(rng) for _ in range(self._length)]


class _Struct(PayloadCodec):
    def __init__(self, fields: list[tuple[str, int, PayloadCodec]], width: int):
        self._fields, self._names, self.width = fields, {name for name, _, _ in fields}, width

    def pack(self, value: dict) -> int:
        if value.keys() != self._names:
            raise ValueError(f"fields {sorted(value)} differ from the layout's {sorted(self._names)}")
        return sum(codec.pack(value[name]) << offset for name, offset, codec in self._fields)

    def unpack(self, word: int) -> dict:
        return {name: codec.unpack(word >> offset) for name, offset, codec in self._fields}

    def random(self, rng: random.Random) -> dict:
        return {name: codec.random(rng) for name, _, codec in self._fields}


# ---------------------------------------------------------------- clock, reset, driver, monitor

async def start_clock_and_reset(dut, *, period_ns: float = CLOCK_PERIOD_NS, reset_cycles: int = 2) -> None:
    """Start ``dut.clk`` and hold Amaranth's synchronous ``dut.rst`` for a few cycles."""
    Clock(dut.clk, period_ns, unit="ns").start()
    dut.rst.value = 1
    for _ in range(reset_cycles):
        await dut.clk.falling_edge
    dut.rst.value = 0


class StreamDriver:
    """Drives an Amaranth stream *input* port, idling at random between transfers.

    ``idle_prob`` is the chance, checked each cycle before a new item is offered, that valid
    stays low; once offered, an item is held until it is accepted (valid/ready rule).
    """

    def __init__(self, dut, port: str, codec: PayloadCodec, *, idle_prob: float = 0.0,
                 rng: random.Random | None = None, clock=None):
        self.codec, self.idle_prob, self.rng = codec, idle_prob, rng or random.Random(0)
        self._clk = clock if clock is not None else dut.clk
        self._valid = getattr(dut, f"{port}__valid")
        self._ready = getattr(dut, f"{port}__ready")
        self._payload = getattr(dut, f"{port}__payload")
        self._valid.value = 0

    async def send(self, items: Iterable) -> None:
        """Transfer every item in order; returns after the last one has been accepted."""
        falling, readonly, rng, idle = self._clk.falling_edge, ReadOnly(), self.rng, self.idle_prob
        valid, ready, payload, pack = self._valid, self._ready, self._payload, self.codec.pack
        for item in items:
            word = pack(item)
            await falling
            if idle and rng.random() < idle:
                valid.value = 0
                await falling
                while rng.random() < idle:
                    await falling
            valid.value = 1
            payload.value = word
            await readonly
            while not ready.value:
                await falling
                await readonly
        await falling
        valid.value = 0


class StreamMonitor:
    """Records the transfers of an Amaranth stream *output* port and drives its ready.

    Ready is high with probability ``ready_prob`` each cycle (random back-pressure; 1.0 keeps it
    high). Each transfer is unpacked, appended to ``items`` and passed to ``callback`` (typically
    :meth:`Scoreboard.check`). It starts monitoring on construction.
    """

    def __init__(self, dut, port: str, codec: PayloadCodec, *, ready_prob: float = 1.0,
                 rng: random.Random | None = None, callback: Callable[[Any], None] | None = None,
                 clock=None, period_ns: float = CLOCK_PERIOD_NS):
        self.codec, self.ready_prob, self.rng, self.callback = codec, ready_prob, rng or random.Random(0), callback
        self.port, self.period_ns = port, period_ns
        self.items: list = []
        self._clk = clock if clock is not None else dut.clk
        self._valid = getattr(dut, f"{port}__valid")
        self._ready = getattr(dut, f"{port}__ready")
        self._payload = getattr(dut, f"{port}__payload")
        self._wanted, self._reached = 0, Event()
        self._ready.value = int(ready_prob >= 1.0)
        self._task = cocotb.start_soon(self._run())

    async def _run(self) -> None:
        falling, readonly, rng, prob = self._clk.falling_edge, ReadOnly(), self.rng, self.ready_prob
        valid, ready, payload, unpack = self._valid, self._ready, self._payload, self.codec.unpack
        items, callback, was = self.items, self.callback, prob >= 1.0
        while True:
            await falling
            if prob < 1.0:
                accept = rng.random() < prob
                if accept != was:
                    ready.value = was = accept
                if not accept:
                    continue
            await readonly
            if valid.value:
                item = unpack(payload.value.to_unsigned())
                items.append(item)
                if callback is not None:
                    callback(item)
                if len(items) == self._wanted:
                    self._reached.set()

    async def wait_for(self, count: int, *, timeout_cycles: int) -> None:
        """Wait until ``count`` transfers have been seen; fail with a clear message otherwise."""
        if len(self.items) >= count:
            return
        self._wanted = count
        self._reached.clear()
        try:
            await with_timeout(self._reached.wait(), timeout_cycles * self.period_ns, "ns")
        except TimeoutError:
            raise AssertionError(f"stream {self.port!r}: {len(self.items)} of {count} transfers "
                                 f"after {timeout_cycles} cycles") from None

    def stop(self) -> None:
        self._task.cancel()


# ---------------------------------------------------------------- scoreboard

class Scoreboard:
    """In-order checker of integers: the model's items against the hardware's, with ``==`` only.

    Items are ints or nested dicts/lists of ints (numpy/JAX arrays are converted with
    ``tolist``; floats are refused). Each item carries its context (phase, step, lane); an
    integer inside a list is reported with its index as the lane when no lane was given. The
    first mismatch is written at once to ``<out_dir>/<name>.mismatch.json`` with both full
    items and the simulation time, so :func:`sim.verilator.build_and_test` can cut a VCD
    window around it; :meth:`finish` writes ``<name>.scoreboard.json`` with the summary.
    """

    def __init__(self, name: str, *, out_dir: os.PathLike | str | None = None,
                 clock_period_ns: float = CLOCK_PERIOD_NS):
        self.name, self.clock_period_ns = name, clock_period_ns
        self.out_dir = Path(out_dir) if out_dir is not None else Path.cwd()  # the runner's test_dir
        self.compared = self.mismatches = 0
        self.first_mismatch: dict | None = None
        self._expected: deque = deque()

    def expect(self, item, *, phase: str, step: int, lane: int | None = None) -> None:
        """Queue the model's next item for :meth:`check`."""
        item = _plain(item)
        self._expected.append((item, _count(item), phase, step, lane))

    def check(self, actual) -> None:
        """Compare the hardware's next item with the oldest queued expectation."""
        if not self._expected:
            self._record_mismatch("unexpected", None, None, "<item>", None, _plain(actual), None, actual)
            return
        expected, count, phase, step, lane = self._expected.popleft()
        self._compare(expected, count, _plain(actual), phase, step, lane)

    def compare(self, expected, actual, *, phase: str, step: int, lane: int | None = None) -> bool:
        """Compare one item directly (e.g. a memory read back after a pass); True if equal."""
        expected = _plain(expected)
        return self._compare(expected, _count(expected), _plain(actual), phase, step, lane)

    def _compare(self, expected, count, actual, phase, step, lane) -> bool:
        """Every leaf on either side that the other lacks or holds differently is one mismatch (a
        longer list or an extra field too: a comparison that says "differ" always counts one)."""
        self.compared += count
        if expected == actual:
            return True
        exp_leaves, act_leaves = dict(_leaves(expected)), dict(_leaves(actual))
        before = self.mismatches
        for path in [*exp_leaves, *(p for p in act_leaves if p not in exp_leaves)]:
            exp, act = exp_leaves.get(path, _MISSING), act_leaves.get(path, _MISSING)
            if exp != act:
                field, where = _locate(path, lane)
                self._record_mismatch(phase, step, where, field, None if exp is _MISSING else exp,
                                      None if act is _MISSING else act, expected, actual)
        if self.mismatches == before:  # same leaves, other shape (e.g. [] against [[]])
            self._record_mismatch(phase, step, lane, "<structure>", expected, actual, expected, actual)
        return False

    def _record_mismatch(self, phase, step, lane, field, exp, act, expected_item, actual_item) -> None:
        self.mismatches += 1
        if self.first_mismatch is not None:
            return
        self.first_mismatch = {
            "phase": phase, "step": step, "lane": lane, "field": field, "expected": exp, "actual": act,
            "sim_time_ps": round(get_sim_time("ps")), "clock_period_ps": round(self.clock_period_ns * 1000)}
        self._write(MISMATCH_SUFFIX, {"first_mismatch": self.first_mismatch,
                                      "expected": expected_item, "actual": actual_item})
        logging.getLogger(f"cocotb.scoreboard.{self.name}").error("first mismatch %s", self.first_mismatch)

    @property
    def summary(self) -> dict:
        return {"compared": self.compared, "mismatches": self.mismatches, "first_mismatch": self.first_mismatch}

    def finish(self) -> dict:
        """Count unmet expectations as mismatches, write the summary, raise if anything differed."""
        for expected, _, phase, step, lane in self._expected:
            self._record_mismatch(phase, step, lane, "<item>", expected, None, expected, None)
        self._expected.clear()
        self._write(SUMMARY_SUFFIX, self.summary)
        if self.mismatches:
            raise AssertionError(f"scoreboard {self.name}: {self.mismatches} mismatches in {self.compared} "
                                 f"compared integers; first {self.first_mismatch}")
        return self.summary

    def _write(self, suffix: str, content: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / (self.name + suffix)).write_text(json.dumps(content, indent=1))


#: A leaf present on one side of a comparison only; the mismatch report shows it as null, like an unmet expectation.
_MISSING = object()


def _plain(value):
    """Python ints in dicts/lists, from whatever the model produced (numpy, JAX, tuples)."""
    if type(value) is int:  # the common case, first: this runs for every compared integer
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        raise TypeError(f"the scoreboard compares integers only, got {value!r}")
    return value


def _count(value) -> int:
    if type(value) is int:
        return 1
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count(v) for v in value)
    return 1


def _leaves(value, path: tuple = ()):
    if isinstance(value, dict):
        for key, v in value.items():
            yield from _leaves(v, path + (key,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))
    else:
        yield path, value


def _locate(path: tuple, lane: int | None) -> tuple[str, int | None]:
    """(field name, lane) of a leaf: the first list index becomes the lane unless one was given."""
    field = ""
    for part in path:
        if isinstance(part, int) and lane is None:
            lane = part
        elif isinstance(part, int):
            field += f"[{part}]"
        else:
            field += f".{part}" if field else part
    return field or "value", lane
