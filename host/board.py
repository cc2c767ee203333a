"""One ``Board`` API over every backend: the golden model, the simulated board, a real board.

::

    with Board.open("golden") as board:              # or "socket://127.0.0.1:PORT",
        board.write_params(q)                        #    "serial:///dev/ttyUSB0?baud=3000000"
        fwd = board.forward(u)                       # u: (L, N) integer inputs
        counters = board.echo(u, nudge)              # nudge: (P,) constant or (L, P) per step
        acc_a, acc_b = board.read_gradients()

The HRU is the board's (IDENTIFY): ``Board.open("golden", fmt=NonlinearFormat())`` or a board
built with ``--hru nonlinear`` holds the nonlinear HRU, whose parameters are
golden_model.hru_fixed_nonlinear.NonlinearParamsInt and whose gradients are its
NonlinearAccumulators; ``hru="linear"`` (or a format) asks for a kind, and a board of the other
kind is refused with one line.

Every backend speaks the wire protocol (docs/protocol.md) through host.client.Client, so the
integers are identical whichever is behind the URL. Whole sequences are streamed as full frames
(``Messages.data_payloads``); there is no round trip per time step. Arguments are checked here,
with messages that name the argument, before anything is sent.
"""
from __future__ import annotations

from contextlib import suppress

import numpy as np

from echoboard.firmware.board_model import MODEL_BUILD_HASH, GoldenBoard
from echoboard.firmware.protocol import (ECHO_OUTPUTS_FLAG, MATRIX_REGION_CODES, PIPELINED_CAPABILITIES, Capability,
                                         Command, CoreConfig, EchoMode, ForwardFlags, Messages, PassState, ProtocolError,
                                         Region, identify_request, unpack_identify)
from echoboard.golden_model import hru_fixed
from echoboard.golden_model.fixed import int_range
from echoboard.golden_model.formats import HRUSize
from echoboard.hdl.kinds import hru_kind
from echoboard.host.client import Client, LinkError
from echoboard.host.transports import Faults, FaultyTransport, GoldenTransport, open_serial

__all__ = ["Board"]

#: Host-side allowance per time step when a reply waits for the core (a completing chunk, ABORT).
#: Generous for the simulated board; a timeout only costs time when a reply is lost.
SECONDS_PER_STEP = 1e-4
#: Cycles between the simulated board's socket polls (sim/board_sim/harness.cpp, --poll-cycles).
SIM_POLL_CYCLES = 128


class Board:
    """A board session: the configuration it reported, and one method per protocol command.

    Use :meth:`open`. ``config`` is what IDENTIFY reported; ``link_stats`` the client's
    counters. A pass interrupted by any exception (a link failure, Ctrl-C) is ABORTed before the
    exception propagates, so the board is IDLE again.
    """

    def __init__(self, client: Client, config: CoreConfig, *, seconds_per_step: float = SECONDS_PER_STEP,
                 process=None):
        self.client, self.config, self.messages = client, config, Messages(config)
        self.seconds_per_step = seconds_per_step
        self._process = process  # the simulated board this Board started, stopped on close

    @classmethod
    def open(cls, url: str = "golden", *, size: HRUSize | None = None, fmt=None, hru: str | None = None,
             capabilities: Capability = PIPELINED_CAPABILITIES, timeout: float = 1.0, retries: int = 8,
             seconds_per_step: float = SECONDS_PER_STEP, faults: Faults | None = None,
             fault_seed: int = 0, core: str = "pipelined") -> "Board":
        """Open a session with the board at ``url`` and IDENTIFY it.

        - ``"golden"``: the golden board model in process, built from ``size`` (default
          HRUSize(16, 8)), ``fmt`` (default: firmware.top.image_format(``hru``), the linear
          FixedFormat() without ``hru``) and ``capabilities``.
        - ``"sim"``: the simulated board (the Verilated board image, built and cached for ``size``,
          ``fmt`` and ``core``: "pipelined", the ULX3S image's, or "serial", the iCEBreaker's),
          started now and stopped when the Board closes.
        - ``"socket://127.0.0.1:PORT"``: a board serving its byte stream on TCP (the simulated board).
        - ``"serial:///dev/ttyUSB0?baud=3000000"``: a board on a serial port.

        For a board that reports its own configuration, ``size``/``fmt`` when given must match it, and
        its HRU must be ``hru`` (or ``fmt``'s kind) when given.
        ``faults`` injects byte faults in both directions (host.transports.FaultyTransport).
        """
        from echoboard.firmware.top import image_format

        if fmt is not None and hru is not None and hru_kind(fmt) != hru:
            raise ValueError(f"fmt is a {hru_kind(fmt)} HRU's format, not a {hru} one")
        wanted_hru = hru or (None if fmt is None else hru_kind(fmt))
        process = None
        local_fmt = fmt or image_format(hru or "linear")
        if url == "sim":  # build (cached) and start the Verilated board image of this size; stop it on close
            from echoboard.sim.board_image import ImageConfig, simulated_board_executable
            from echoboard.sim.board_sim import SimulatedBoard

            config = ImageConfig(size or HRUSize(16, 8), local_fmt, core=core)
            # poll the socket every 128 cycles, not the harness's 1024: a request's round trip is
            # ~9 per training sample, and one run measured 27.6 -> 35.3 samples/s (32: 36.3)
            process = SimulatedBoard(simulated_board_executable(config), poll_cycles=SIM_POLL_CYCLES).start()
            url = process.url
        if url.startswith("loop://"):
            raise ValueError("loop:// echoes the host's own bytes back: it is for host.client.Client tests only")
        if url == "golden":
            config = CoreConfig(size or HRUSize(16, 8), local_fmt, capabilities=capabilities,
                                build_hash=MODEL_BUILD_HASH)
            port = GoldenTransport(GoldenBoard(config), timeout)
        else:
            port = open_serial(url, timeout=timeout)
        if faults is not None:
            port = FaultyTransport(port, faults, seed=fault_seed)
        client = Client(port, timeout=timeout, retries=retries)
        try:
            config = client.start()
            if wanted_hru is not None and config.hru != wanted_hru:
                raise ValueError(f"the board at {url} holds the {config.hru} HRU, not the {wanted_hru} one "
                                 f"(build or start it with --hru {wanted_hru})")
            for name, wanted, got in (("size", size, config.size), ("fmt", fmt, config.fmt)):
                if wanted is not None and wanted != got:
                    raise ValueError(f"the board at {url} reports {name} {got}, not the requested {wanted}")
        except BaseException:
            client.close()
            if process is not None:
                process.stop()
            raise
        return cls(client, config, seconds_per_step=seconds_per_step, process=process)

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        if self._process is not None:
            self._process.stop()

    @property
    def link_stats(self) -> dict:
        return self.client.stats.as_dict()

    # ------------------------------------------------------------------ session and status

    def identify(self) -> CoreConfig:
        """Ask the board again what it is (the session's IDENTIFY is in ``config``)."""
        return unpack_identify(self.client.call(Command.IDENTIFY, identify_request()))

    def status(self) -> dict:
        """STATUS: link and decoder counters, the pass state (a PassState), overflow counters."""
        values = self.messages.status_reply.unpack(self.client.call(Command.STATUS))
        values["state"] = PassState(values["state"])
        return values

    def abort(self) -> None:
        """End any pass in progress (the board completes it with zero inputs; docs/protocol.md)."""
        self.client.call(Command.ABORT, timeout=self._wait(self.config.size.max_length))

    # ------------------------------------------------------------------ regions

    def write(self, region, values, start: int = 0) -> None:
        """WRITE words to a region (of ``config.regions``), split into as many frames as needed."""
        region = self.config.region(region)
        flat = np.ravel(_numbers(values, region.name))
        values = _integers(flat, region.name, flat.shape, self.config.region_field(region).width)
        per_frame = self.messages.max_words(region, write=True)
        for offset in range(0, len(values), per_frame):
            words = values[offset:offset + per_frame].tolist()
            self.client.call(Command.WRITE, self.messages.pack_write(region, start + offset, words))

    def read(self, region, start: int = 0, count: int | None = None) -> np.ndarray:
        """READ words of a region (all of it by default), split into as many frames as needed."""
        region = self.config.region(region)
        count = self.config.region_depth(region) - start if count is None else count
        per_frame = self.messages.max_words(region)
        words: list[int] = []
        for offset in range(start, start + count, per_frame):
            n = min(per_frame, start + count - offset)
            payload = self.client.call(Command.READ, self.messages.pack_read(region, offset, n))
            words += np.atleast_1d(self.messages.read_reply(region, n).unpack(payload)["values"]).tolist()
        return np.asarray(words, np.int64)

    def write_params(self, q) -> None:
        """Write the parameters as raw integers of the coefficient width: a hru_fixed.LinearParamsInt
        (A (P,), B (P, N), delta (P,)) to a linear board, a hru_fixed_nonlinear.NonlinearParamsInt
        (W, bias, sigma_c (P,), alpha () or (P,), B (P, N), delta (P,)) to a nonlinear one; a scalar
        alpha is written to every oscillator's word."""
        kind = self._params_class()
        if not isinstance(q, kind):
            raise ValueError(f"this board holds the {self.config.hru} HRU: write_params takes {kind.__name__}, "
                             f"got {type(q).__name__}")
        P, width = self.config.size.oscillators, self.config.base.coef_width
        checked = []
        for name, region in self.config.parameters.items():
            value = getattr(q, name)
            if name == "alpha" and np.ndim(value) == 0:
                value = np.full(P, value)
            checked.append((region, _integers(value, name, self._shape(region), width)))
        for region, words in checked:  # all checked before the first is written
            self.write(region, words)

    def read_params(self):
        """The parameters as stored (numpy int64): exactly what :meth:`write_params` wrote (a
        nonlinear alpha as P words)."""
        return self._params_class()(**{name: self._read_shaped(region)
                                       for name, region in self.config.parameters.items()})

    def read_gradients(self):
        """The accumulators, every echo since the last clear summed: linear (acc_a (P,), acc_b (P, N));
        nonlinear a hru_fixed_nonlinear.NonlinearAccumulators (yy, t, lc, ty (P,), tu (P, N))."""
        return self.config.golden_accumulators({name: self._read_shaped(region)
                                                for name, region in self.config.accumulators.items()})

    def _params_class(self):
        """hru_fixed.LinearParamsInt or hru_fixed_nonlinear.NonlinearParamsInt (imported only then: JAX)."""
        if self.config.hru == "linear":
            return hru_fixed.LinearParamsInt
        from echoboard.golden_model.hru_fixed_nonlinear import NonlinearParamsInt

        return NonlinearParamsInt

    def _shape(self, region) -> tuple:
        P, N = self.config.size.oscillators, self.config.size.inputs
        return (P, N) if int(region) in MATRIX_REGION_CODES else (self.config.region_depth(region),)

    def _read_shaped(self, region) -> np.ndarray:
        return self.read(region).reshape(self._shape(region))

    def clear_gradients(self) -> None:
        """Zero the accumulators (all of them, either HRU) and the gradient overflow counter."""
        self.client.call(Command.CLEAR_GRADIENTS)

    # ------------------------------------------------------------------ passes

    def forward(self, u, zero_state: bool = True, read_state: bool = False) -> hru_fixed.ForwardResult:
        """The forward pass over integer inputs ``u`` (L, N), from zero or from Y0/Z0 as stored.

        Returns ``hru_fixed.ForwardResult`` (numpy): pos_sum, the forward overflow counter, and
        the final y, z when ``read_state`` (else None; they stay in Y0/Z0 for the echo).
        """
        u = self._inputs(u)
        start = self.messages.forward_start.pack(length=len(u), flags=ForwardFlags.ZERO_STATE if zero_state else 0)
        final = self._pass(Command.FORWARD_START, start, Command.FORWARD_DATA, self.messages.data_payloads(u))[-1]
        result = self.messages.forward_result.unpack(final)
        y, z = (self.read(Region.Y0), self.read(Region.Z0)) if read_state else (None, None)
        return hru_fixed.ForwardResult(y, z, np.atleast_1d(result["pos_sum"]).astype(np.int64),
                                       np.int64(result["overflow_forward"]))

    def echo(self, u, nudge) -> np.ndarray:
        """The ±ε echo pair from the state in Y0/Z0, accumulating into ACC_A/ACC_B.

        ``u`` (L, N): the inputs in forward order (the board gets them reversed). ``nudge``: a
        (P,) constant nudge, or an (L, P) sequence (row j−1 is the nudge for state j, as in
        ``hru_fixed.echo``; needs the ECHO_STREAM capability). Returns the overflow counters
        [echo_plus, echo_minus, gradient] (the gradient counter counts since the last clear).
        """
        start, chunks, mode = self._echo_request(u, nudge, outputs=False)
        final = self._pass(Command.ECHO_START, start, Command.ECHO_DATA, chunks, mode)[-1]
        return self._echo_counters(final)

    # ---- outputs passes: an HSSM block (docs/protocol.md, *Per-step streams*)

    def forward_outputs(self, u, zero_state: bool = True) -> tuple[hru_fixed.ForwardResult, np.ndarray]:
        """:meth:`forward` with every step's positions: (ForwardResult without y, z; y_1..y_L (L, P)),
        the integers of golden_model.hru_block.forward. Needs the FORWARD_OUTPUTS capability."""
        self._require(Capability.FORWARD_OUTPUTS, "forward outputs")
        u = self._inputs(u)
        flags = ForwardFlags.OUTPUTS | (ForwardFlags.ZERO_STATE if zero_state else 0)
        start = self.messages.forward_start.pack(length=len(u), flags=flags)
        replies = self._pass(Command.FORWARD_START, start, Command.FORWARD_DATA,
                             self.messages.data_payloads(u, outputs=True))
        final, positions = self._outputs(PassState.FORWARD, replies, len(u))
        result = self.messages.forward_result.unpack(final)
        return (hru_fixed.ForwardResult(None, None, np.atleast_1d(result["pos_sum"]).astype(np.int64),
                                        np.int64(result["overflow_forward"])), positions)

    def echo_outputs(self, u, nudge) -> tuple[np.ndarray, np.ndarray]:
        """An HSSM block's echo pair (golden_model.hru_block.echo's integers): :meth:`echo` that also
        adds to KIN and returns (the overflow counters, du (L, N) in the order of ``u``: row j is the
        echo step that consumed u_j). Needs the ECHO_OUTPUTS capability."""
        self._require(Capability.ECHO_OUTPUTS, "echo outputs")
        u = self._inputs(u)
        start, chunks, mode = self._echo_request(u, nudge, outputs=True)
        replies = self._pass(Command.ECHO_START, start, Command.ECHO_DATA, chunks, mode)
        final, du = self._outputs(PassState.ECHO, replies, len(u))
        return self._echo_counters(final), du[::-1]

    def _require(self, capability: Capability, what: str) -> None:
        if not self.config.capabilities & capability:
            raise ValueError(f"this board has no {what} (IDENTIFY capability {capability.name}): "
                             f"rebuild it with the pipelined core")

    def _echo_request(self, u, nudge, outputs: bool) -> tuple[bytes, list[bytes], EchoMode]:
        u = self._inputs(u)
        P, L, width = self.config.size.oscillators, len(u), self.config.base.state_width
        nudge = np.asarray(nudge)
        if nudge.ndim == 2:
            if not self.config.capabilities & Capability.ECHO_STREAM:
                raise ValueError("this board has no echo stream mode (IDENTIFY capability bit 0): give a (P,) nudge")
            n = _integers(nudge, "nudge", (L, P), width)
            # step m consumes u_j (j = L-1-m) and carries n_{j-1}; the last step's nudge is unused
            mode, first, stream = EchoMode.STREAM, n[L - 1], np.concatenate([n[:-1][::-1], np.zeros((1, P), np.int64)])
        else:
            mode, first, stream = EchoMode.CONSTANT, _integers(nudge, "nudge", (P,), width), None
        start = self.messages.echo_start.pack(length=L, mode=mode | (ECHO_OUTPUTS_FLAG if outputs else 0),
                                              nudge=_field_value(first))
        # lists, not arrays: data_payloads re-lists ``nudges`` for every chunk (cheap for a list only)
        chunks = self.messages.data_payloads(u[::-1].tolist(), nudges=None if stream is None else stream.tolist(),
                                             mode=mode, outputs=outputs)
        return start, chunks, mode

    def _echo_counters(self, final: bytes) -> np.ndarray:
        result = self.messages.echo_result.unpack(final)
        return np.array([result["overflow_echo_plus"], result["overflow_echo_minus"], result["overflow_gradient"]],
                        np.int64)

    def _outputs(self, state: PassState, replies: list[bytes], length: int) -> tuple[bytes, np.ndarray]:
        """An outputs pass's DATA replies, then OUTPUTS -> (the final result's bytes, the steps' words
        (L, M) in the order the pass consumed them), each part checked to be the steps expected."""
        rows, final = [], b""
        for payload in [*replies, self.client.call(Command.OUTPUTS)]:
            first, words, final_part = self.messages.unpack_outputs(state, payload)
            if first != len(rows) and words:
                raise ProtocolError(f"the board sent outputs from step {first}, expected step {len(rows)}")
            rows += words
            final = final_part or final
        if len(rows) != length:
            raise ProtocolError(f"the board sent outputs of {len(rows)} steps for a pass of {length}")
        return final, np.asarray(rows, np.int64).reshape(length, self.messages.output_words(state))

    def _pass(self, start_cmd: Command, start: bytes, data_cmd: Command, chunks: list[bytes],
              mode: EchoMode | None = None) -> list[bytes]:
        """START, then every DATA chunk; the DATA replies' payloads (the last one's is the final result).

        On any exception (even in START, whose reply may be lost after it ran, or which may
        have met a pass left over from an interrupted session) the pass is ABORTed, best effort,
        before the exception propagates: the board is IDLE for the next call.
        """
        layout = self.messages.forward_data if mode is None else self.messages.echo_data(mode)
        try:
            self.client.call(start_cmd, start)
            return [self.client.call(data_cmd, chunk, timeout=self._wait(layout.steps(len(chunk)))) for chunk in chunks]
        except BaseException:
            with suppress(LinkError, ProtocolError, OSError):
                self.abort()
            raise

    def _wait(self, steps: int) -> float:
        return self.client.timeout + steps * self.seconds_per_step

    def _inputs(self, u) -> np.ndarray:
        a = _numbers(u, "inputs u")
        hru_fixed.validate_sequence(a, self.config.size.inputs, self.config.size.max_length)
        return _integers(a, "inputs u", a.shape, self.config.base.input_width)


def _field_value(words: np.ndarray):
    """A Layout field's value: a list of words, or a bare int for a one-word field (P = 1)."""
    return words.tolist() if words.size > 1 else int(words[0])


def _numbers(x, name: str) -> np.ndarray:
    """``x`` as an integer-valued array: NaN, infinities and fractions get a clear error."""
    a = np.asarray(x)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or infinite values")
        if np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold integers: quantise floats first (golden_model.hru_fixed.quantize_*)")
    elif a.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
    return a


def _integers(x, name: str, shape: tuple, width: int) -> np.ndarray:
    """``x`` as int64 of ``shape`` whose values fit signed ``width``-bit words, or a clear error."""
    a = _numbers(x, name)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    lo, hi = int_range(width)
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name} must fit {width}-bit signed words [{lo}, {hi}], got values in "
                         f"[{a.min():.0f}, {a.max():.0f}]")
    return a.astype(np.int64)
