"""The golden board: a bit-exact model of the whole board image, as seen from the wire.

``GoldenBoard(config).receive(request_bytes)`` returns the reply bytes the board image sends for
those request bytes. It is the reference that the gateware sequencer (and the simulated board)
is verified against, byte for byte; it is also the in-process backend behind host.board.Board
("golden"). It is built on firmware/protocol.py (frames, layouts, checks) and
golden_model.hru_fixed (the integers of every pass), so it re-implements neither.

This docstring is the behavioural specification. docs/protocol.md explains the protocol; the
points it leaves open are settled here and marked *(decision)*.

Link (docs/protocol.md "Frames"; firmware/link.py)
--------------------------------------------------
1. The byte stream is cut at 0x00 delimiters. An empty frame (two delimiters in a row, e.g.
   the host's flush byte) produces nothing.
2. Each frame is checked as ``protocol.decode_frame`` checks it, in the receiver's order: a COBS
   block running past the delimiter (TRUNCATED), more than MAX_FRAME_BYTES decoded (OVERSIZED),
   fewer than seq + cmd + CRC bytes (TRUNCATED), a CRC mismatch (BAD_CRC).
3. A bad frame gets a link-error reply with an empty payload. Its seq and cmd are the first two
   bytes the COBS decoder produced, 0 where there were none (the receiver latches them before it
   knows the frame is bad). Nothing is executed, nothing stored changes, the reply is not
   cached, and the previous good frame stays the one a retry is compared with. BAD_CRC counts
   in ``crc_errors``, TRUNCATED and OVERSIZED in ``framing_errors``.
4. A good frame counts in ``frames_ok``. If its (seq, cmd) equal the previous good frame's, it
   is a host retry: the cached reply is sent again, byte for byte, and nothing is executed.
   Otherwise the sequencer executes it and its reply (whatever its status) becomes the cached
   reply.
5. The model answers every frame at once, so it never drops one for being busy: ``overruns``
   stays 0 (the gateware counts frames a host sent without waiting for the reply).
6. *(decision)* A run of more than :data:`DEFRAMER_LIMIT` bytes without a delimiter is judged
   on its first DEFRAMER_LIMIT bytes (it is OVERSIZED or TRUNCATED either way).

Sequencer: checks, in this order *(decision)*
---------------------------------------------
The first check that fails answers with its status and an empty payload; nothing is executed
and nothing stored changes. ``command_errors`` counts these replies (not their replays).

1. UNKNOWN_COMMAND: cmd is not a ``protocol.Command``.
2. WRONG_STATE: in IDLE, FORWARD_DATA and ECHO_DATA; during a pass, everything except that
   pass's DATA, IDENTIFY, STATUS and ABORT.
3. BAD_LENGTH: the payload length does not fit the command's layout (``protocol.Messages``).
   ECHO_DATA's layout is that of the running echo's mode. WRITE's layout depends on its region
   (the region sets the word width): an empty WRITE is BAD_LENGTH, but a WRITE naming an
   unknown region is BAD_ARGUMENT before its length can be judged.
4. BAD_ARGUMENT: an unknown region; WRITE to a read-only region; words outside their region or
   more than one frame holds (``Messages.check_range``); a pass length of 0 or above max_length;
   FORWARD_START flags with bits other than ZERO_STATE set *(decision: reserved bits must be 0,
   so a future flag is never silently ignored)*; an unknown echo mode; STREAM mode without
   the ECHO_STREAM capability; a DATA offset other than the steps done so far; offset + k
   beyond the pass length.

Words arrive in ⌈W/8⌉ bytes; the board keeps the low W bits of each and does not check the
sign extension (the host never sends a value that does not fit, docs/protocol.md).

Stores and counters
-------------------
After reset every region is 0, the state is IDLE and every counter is 0. Regions are stored as
raw integers: a READ returns exactly the words written (after truncation to W bits).

- IDENTIFY: ``Messages.identify_reply`` of the configuration (a v1 host's request, without payload,
  gets the first 46 bytes); allowed in every state.
- STATUS: the link counters (wrapping at 2^32; ``frames_ok`` already counts the STATUS request
  itself *(decision)*), ``command_errors``, the pass state, and ``length`` / ``steps_done`` of
  the pass in progress: the steps acknowledged so far, 0 and 0 in IDLE *(decision)*. The four
  overflow counters are those of the COUNTERS region. *(decision)* The model updates a phase's
  counter when its pass completes (START clears it), so during a pass STATUS shows the running
  phase's counter as 0; in the gateware that counter runs with the pipeline and its value
  mid-pass depends on timing, so mid-pass overflow counters are not part of the contract.
- ABORT: in IDLE it does nothing and answers OK. During a pass *(decision)* the board feeds
  zero inputs (and, in STREAM mode, zero nudges) for the remaining steps, so every store ends
  exactly as if the host had sent those zeros; only the final reply is never sent. ABORT
  answers OK with an empty payload.
- WRITE / READ: see "Regions" in docs/protocol.md; IDLE only.
- CLEAR_GRADIENTS: the accumulators (``CoreConfig.accumulators``: ACC_A, ACC_B; nonlinear ACC_YY,
  ACC_T, ACC_TU, ACC_LC, ACC_TY) and the gradient overflow counter become 0; IDLE only.
- FORWARD_START ``length, flags``: ZERO_STATE clears Y0/Z0; POS_SUM and the forward overflow
  counter are cleared; the state becomes FORWARD.
- FORWARD_DATA: inputs u_0 … u_{L−1} in order. The chunk that completes the pass runs
  ``hru_fixed.forward`` (nonlinear: ``hru_fixed_nonlinear.forward``) from Y0/Z0 with the parameters
  in their regions (``CoreConfig.parameters``: A, B, DELTA; nonlinear W, BIAS, SIGMA, ALPHA, B,
  DELTA); Y0/Z0 take the final
  state, POS_SUM the position sums, COUNTERS[forward] the overflow count, and the reply is
  ``Messages.forward_result``. Earlier chunks get an empty OK reply.
- ECHO_START ``length, mode, nudge``: *(decision)* writes ``nudge`` to NUDGE in both modes
  (in STREAM mode it is n_{L−1}; the per-step nudges never touch NUDGE); clears the echo_plus
  and echo_minus counters; the state becomes ECHO.
- ECHO_DATA: inputs in echo order (u_{L−1} first), each STREAM step with the nudge n_{j−1}
  added after the step consuming u_j (the last step's nudge is ignored). The completing chunk
  runs the hru_fixed (nonlinear: hru_fixed_nonlinear) echo pair from Y0/Z0 with the nudge
  (CONSTANT: NUDGE as a (P,) vector; STREAM: the (L, P) sequence), *continuing* from the stored
  accumulators: the accumulators add the
  pass's terms and each wrap counts against the running sums, so COUNTERS[gradient] (cleared
  only by CLEAR_GRADIENTS) adds this pass's events, saturating. Y0/Z0 take the +ε echo's final
  state, Y1/Z1 the −ε echo's, COUNTERS[echo_plus, echo_minus] the pass's counts. The reply is
  ``Messages.echo_result`` with the gradient counter as stored (cumulative).

All overflow counters saturate at 2^counter_width − 1.

The model runs a whole pass when its last DATA chunk arrives (one jitted scan, fast for any
length); the replies are the same as when the gateware runs each step as it arrives.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from echoboard.firmware.protocol import (BLOCK_ACCUMULATORS, BLOCK_PARAMETERS, ECHO_OUTPUTS_FLAG, Capability, Command,
                                         CoreConfig, Deframer, EchoMode, ForwardFlags, FrameError, Layout,
                                         MATRIX_REGION_CODES, Messages, PassState, PayloadLengthError, ProtocolError,
                                         Region, Reply, Status, UnknownCommand, decode_frame, word_bytes)
from echoboard.golden_model import hru_fixed

__all__ = ["GoldenBoard", "WrongState", "MODEL_BUILD_HASH", "DEFRAMER_LIMIT"]

#: IDENTIFY's build hash for the golden model: recognisably not a gateware build.
MODEL_BUILD_HASH = hashlib.sha256(b"echoboard golden board model").digest()[:16]

#: Bytes of one frame the model keeps before its delimiter arrives (far above any valid frame).
DEFRAMER_LIMIT = 1 << 20

_COUNTER_INDEX = {phase: i for i, phase in enumerate(hru_fixed.PHASES)}
_U32 = (1 << 32) - 1
_OUTPUTS_CAPABILITIES = Capability.FORWARD_OUTPUTS | Capability.ECHO_OUTPUTS

#: Commands allowed in every state; the others are allowed in IDLE only, except DATA.
_ANY_STATE = frozenset({Command.IDENTIFY, Command.STATUS, Command.ABORT})
_DATA_STATE = {Command.FORWARD_DATA: PassState.FORWARD, Command.ECHO_DATA: PassState.ECHO}


class WrongState(ProtocolError):
    """The command is not allowed in the current pass state."""

    status = Status.WRONG_STATE


@dataclass
class _Pass:
    """A pass in progress: its inputs (and STREAM nudges) in the order the core consumes them.

    The buffers start as zeros, so ABORT completes a pass by simply running it: the steps the
    host never sent are the zero inputs (and zero nudges) the board feeds.
    """

    state: PassState
    length: int
    inputs: np.ndarray  # (length, N)
    mode: EchoMode | None = None
    nudges: np.ndarray | None = None  # (length, P), STREAM only
    steps_done: int = 0
    # an outputs pass runs chunk by chunk (its replies carry the previous chunk's outputs):
    outputs: bool = False
    carry: tuple | None = None  # hru_block.forward_chunk's / echo_chunk's resumable state
    pending_nudge: np.ndarray | None = None  # echo: the nudge for the next step's state
    previous_part: bytes = b""  # the outputs part of the previous chunk


class GoldenBoard:
    """The board image as a byte-stream transformer; see the module docstring for its behaviour."""

    def __init__(self, config: CoreConfig):
        self.config = config
        self.messages = Messages(config)
        self._shape = (config.size.oscillators, config.size.inputs)  # (P, N)
        self._regions = {r: np.zeros(config.region_depth(r), np.int64) for r in config.regions}
        self._pass: _Pass | None = None
        self._deframer = Deframer(limit=DEFRAMER_LIMIT)
        self._last_good: tuple[int, int] | None = None
        self._cached_reply = b""
        self._last_outputs = self.messages.pack_outputs(PassState.FORWARD, 0, [])  # what OUTPUTS answers
        self._accumulator_regions = [*config.accumulators.values(),
                                     *(BLOCK_ACCUMULATORS[config.hru].values() if config.block else ())]
        self.frames_ok = self.crc_errors = self.framing_errors = self.overruns = self.command_errors = 0
        self._handlers = {
            Command.IDENTIFY: self._identify, Command.STATUS: self._status, Command.ABORT: self._abort,
            Command.WRITE: self._write, Command.READ: self._read, Command.CLEAR_GRADIENTS: self._clear_gradients,
            Command.FORWARD_START: self._forward_start, Command.FORWARD_DATA: self._data,
            Command.ECHO_START: self._echo_start, Command.ECHO_DATA: self._data, Command.OUTPUTS: self._outputs,
        }

    # ------------------------------------------------------------------ the link

    def receive(self, data: bytes) -> bytes:
        """Feed bytes from the host; return every reply they complete, in order."""
        return b"".join(self._answer(frame) for frame in self._deframer.feed(data))

    def _answer(self, frame: bytes) -> bytes:
        try:
            body = decode_frame(frame)
        except FrameError as fault:
            if fault.status == Status.BAD_CRC:
                self.crc_errors += 1
            else:
                self.framing_errors += 1
            return Reply(*_received_seq_cmd(frame), fault.status).encode()
        self.frames_ok += 1
        seq, cmd = body[0], body[1]
        if (seq, cmd) != self._last_good:
            self._last_good = (seq, cmd)
            self._cached_reply = self._execute(seq, cmd, body[2:]).encode()
        return self._cached_reply

    # ------------------------------------------------------------------ the sequencer

    def _execute(self, seq: int, cmd: int, payload: bytes) -> Reply:
        try:
            if cmd not in Command._value2member_map_ or (
                    cmd == Command.OUTPUTS and not self.config.capabilities & _OUTPUTS_CAPABILITIES):
                raise UnknownCommand(f"unknown command 0x{cmd:02x}")
            command = Command(cmd)
            self._check_state(command)
            return Reply(seq, cmd, Status.OK, self._handlers[command](payload))
        except ProtocolError as error:
            self.command_errors += 1
            return Reply(seq, cmd, error.status)

    def _check_state(self, command: Command) -> None:
        state = self._pass.state if self._pass else PassState.IDLE
        allowed = _DATA_STATE.get(command, PassState.IDLE)
        if command not in _ANY_STATE and state != allowed:
            raise WrongState(f"{command.name} is not allowed in {state.name}")

    def _identify(self, payload):
        return self.messages.identify_reply(payload)

    def _status(self, payload):
        self.messages.empty.unpack(payload)
        p, counters = self._pass, self._regions[Region.COUNTERS]
        return self.messages.status_reply.pack(
            frames_ok=self.frames_ok & _U32, crc_errors=self.crc_errors & _U32,
            framing_errors=self.framing_errors & _U32, overruns=self.overruns & _U32,
            command_errors=self.command_errors & _U32,
            state=p.state if p else PassState.IDLE, length=p.length if p else 0, steps_done=p.steps_done if p else 0,
            **{f"overflow_{phase}": int(counters[i]) for phase, i in _COUNTER_INDEX.items()})

    def _abort(self, payload):
        self.messages.empty.unpack(payload)
        if self._pass:
            self._finish_pass()  # the unsent steps are the zeros already in the buffers
            self._last_outputs = self.messages.pack_outputs(PassState.FORWARD, 0, [])  # discarded
        return b""

    def _write(self, payload):
        if not payload:
            raise PayloadLengthError("WRITE request without a region")
        region = self.config.region(payload[0])
        values = _unpack_truncating(self.messages.write_request(region), payload)
        self.messages.check_range(region, values["start"], len(values["values"]), write=True)
        self._regions[region][values["start"]:values["start"] + len(values["values"])] = values["values"]
        return b""

    def _read(self, payload):
        region, start, count = self.messages.unpack_read(payload)
        words = self._regions[region][start:start + count].tolist()
        return self.messages.read_reply(region, count).pack(values=_field_value(words))

    def _clear_gradients(self, payload):
        self.messages.empty.unpack(payload)
        for region in self._accumulator_regions:
            self._regions[region][:] = 0
        self._regions[Region.COUNTERS][_COUNTER_INDEX["gradient"]] = 0
        return b""

    def _forward_start(self, payload):
        v = self.messages.forward_start.unpack(payload)
        self._check_length(v["length"])
        known = ForwardFlags.ZERO_STATE | (ForwardFlags.OUTPUTS if self.config.capabilities & Capability.FORWARD_OUTPUTS
                                           else 0)
        if v["flags"] & ~int(known):  # int: ~ of an IntFlag flips only its defined bits
            raise ProtocolError(f"FORWARD_START flags 0x{v['flags']:02x} set reserved bits")
        if v["flags"] & ForwardFlags.ZERO_STATE:
            self._regions[Region.Y0][:] = 0
            self._regions[Region.Z0][:] = 0
        self._regions[Region.POS_SUM][:] = 0
        self._regions[Region.COUNTERS][_COUNTER_INDEX["forward"]] = 0
        self._pass = p = _Pass(PassState.FORWARD, v["length"], np.zeros((v["length"], self._shape[1]), np.int64),
                               outputs=bool(v["flags"] & ForwardFlags.OUTPUTS))
        self._start_outputs(p)
        return b""

    def _echo_start(self, payload):
        v = _unpack_truncating(self.messages.echo_start, payload)
        self._check_length(v["length"])
        outputs = bool(self.config.capabilities & Capability.ECHO_OUTPUTS and v["mode"] & ECHO_OUTPUTS_FLAG)
        code = v["mode"] & ~ECHO_OUTPUTS_FLAG if outputs else v["mode"]
        if code not in EchoMode._value2member_map_:
            raise ProtocolError(f"unknown echo mode {v['mode']}")
        mode = EchoMode(code)
        if mode is EchoMode.STREAM and not self.config.capabilities & Capability.ECHO_STREAM:
            raise ProtocolError("echo STREAM mode is not implemented by this board")
        self._regions[Region.NUDGE][:] = v["nudge"]
        self._regions[Region.COUNTERS][[_COUNTER_INDEX["echo_plus"], _COUNTER_INDEX["echo_minus"]]] = 0
        length, (P, N) = v["length"], self._shape
        nudges = np.zeros((length, P), np.int64) if mode is EchoMode.STREAM else None
        self._pass = p = _Pass(PassState.ECHO, length, np.zeros((length, N), np.int64), mode, nudges, outputs=outputs)
        self._start_outputs(p)
        return b""

    def _outputs(self, payload):
        self.messages.empty.unpack(payload)
        return self._last_outputs

    def _data(self, payload):
        p = self._pass
        layout = self.messages.forward_data if p.state is PassState.FORWARD else self.messages.echo_data(p.mode)
        v = _unpack_truncating(layout, payload)
        steps = layout.steps(len(payload))
        if p.outputs and steps > self.messages.max_output_steps(p.state):
            raise PayloadLengthError(f"{steps} steps in one chunk of an outputs pass; at most "
                                     f"{self.messages.max_output_steps(p.state)} fit a reply")
        if p.outputs and p.state is PassState.ECHO and steps == 1 and 0 < p.steps_done < p.length - 1:
            raise PayloadLengthError("a chunk inside an outputs echo needs 2 steps or more")
        if v["offset"] != p.steps_done:
            raise ProtocolError(f"offset {v['offset']} but {p.steps_done} steps are done")
        if p.steps_done + steps > p.length:
            raise ProtocolError(f"{steps} steps from offset {p.steps_done} run past the length {p.length}")
        rows = slice(p.steps_done, p.steps_done + steps)
        p.inputs[rows] = np.reshape(v["inputs"], (steps, -1))
        if p.nudges is not None:
            p.nudges[rows] = np.reshape(v["nudges"], (steps, -1))
        p.steps_done += steps
        if not p.outputs:
            return self._finish_pass() if p.steps_done == p.length else b""
        reply, p.previous_part = p.previous_part, self._run_chunk(p, rows)
        if p.steps_done < p.length:
            return reply
        self._last_outputs = p.previous_part
        return reply + self._finish_pass()

    def _check_length(self, length: int) -> None:
        if not 1 <= length <= self.config.size.max_length:
            raise ProtocolError(f"pass length {length} is not in 1..{self.config.size.max_length}")

    # ------------------------------------------------------------------ the passes

    def _finish_pass(self) -> bytes:
        """Run the pass in progress on its buffered steps, store its results, return to IDLE."""
        p, self._pass = self._pass, None
        if p.outputs:
            if p.steps_done < p.length:  # ABORT: the unsent steps are zeros
                self._run_chunk(p, slice(p.steps_done, p.length))
            return self._store_forward(p) if p.state is PassState.FORWARD else self._store_echo(p)
        return self._run_forward(p) if p.state is PassState.FORWARD else self._run_echo(p)

    # ---- outputs passes: an HSSM block's integers (golden_model.hru_block), run as chunks arrive

    def _start_outputs(self, p: _Pass) -> None:
        """Any START forgets the last outputs; an outputs pass gets its resumable state."""
        self._last_outputs = self.messages.pack_outputs(p.state, 0, [])
        p.previous_part = self._last_outputs
        if not p.outputs:
            return
        r = self._regions
        if p.state is PassState.FORWARD:
            p.carry = hru_fixed.forward_start(r[Region.Y0].copy(), r[Region.Z0].copy())
            return
        p.pending_nudge = r[Region.NUDGE].copy()
        p.carry = hru_fixed.echo_start(r[Region.Y0].copy(), r[Region.Z0].copy(), self._stored_block_accumulators())

    def _run_chunk(self, p: _Pass, rows: slice) -> bytes:
        """Steps ``rows`` of an outputs pass: advance its state, return their outputs part."""
        from echoboard.golden_model import hru_block  # imported only for an outputs pass: JAX

        model, q = self._model()
        if p.state is PassState.FORWARD:
            p.carry, outputs = hru_block.forward_chunk(self.config.hru, q, p.carry, p.inputs[rows], self.config.fmt)
        else:
            if p.mode is EchoMode.STREAM:  # each step starts from the nudge the step before it carried
                carried = p.nudges[rows]
                nudges = np.concatenate([p.pending_nudge[None, :], carried[:-1]])
                p.pending_nudge = carried[-1].copy()
            else:
                nudges = np.broadcast_to(self._regions[Region.NUDGE], (rows.stop - rows.start, self._shape[0]))
            p.carry, outputs = hru_block.echo_chunk(self.config.hru, self._block_params(q), p.carry, p.inputs[rows],
                                                    nudges, self.config.fmt)
        return self.messages.pack_outputs(p.state, rows.start, np.asarray(outputs).tolist())

    def _block_params(self, q):
        """hru_block.BlockParamsInt: the gain is DELTA (linear) or the GAIN region (nonlinear)."""
        from echoboard.golden_model.hru_block import BlockParamsInt

        gains = BLOCK_PARAMETERS[self.config.hru]
        return BlockParamsInt(q, self._regions[gains["gain"]].copy() if gains else q.delta)

    def _stored_block_accumulators(self):
        """(the HRU's accumulators as hru_block keeps them, KIN) from the stored regions."""
        return self._stored_accumulators(), self._regions[BLOCK_ACCUMULATORS[self.config.hru]["kin"]].copy()

    def _stored_accumulators(self):
        """The stored accumulators (copies) as the golden model takes them (CoreConfig.golden_accumulators)."""
        return self.config.golden_accumulators({name: self._shaped(region).copy()
                                                for name, region in self.config.accumulators.items()})

    def _store_forward(self, p: _Pass) -> bytes:
        y, z, pos_sum, overflows = (np.asarray(x) for x in p.carry)
        return self._forward_stores(y, z, pos_sum, int(overflows))

    def _store_echo(self, p: _Pass) -> bytes:
        y, z, (hru_acc, kin), echo_overflows, gradient_overflows = p.carry
        sums = self.config.accumulators_by_name(hru_acc)
        self._regions[BLOCK_ACCUMULATORS[self.config.hru]["kin"]][:] = np.asarray(kin)
        return self._echo_stores(np.asarray(y), np.asarray(z), sums, *(int(x) for x in echo_overflows),
                                 int(gradient_overflows))

    def _model(self):
        """The golden integer model of this HRU and its parameters as stored: hru_fixed and
        LinearParamsInt, or hru_fixed_nonlinear and NonlinearParamsInt (imported only then: JAX)."""
        if self.config.hru == "linear":
            model, params = hru_fixed, hru_fixed.LinearParamsInt
        else:
            from echoboard.golden_model import hru_fixed_nonlinear as model

            params = model.NonlinearParamsInt
        return model, params(**{name: self._shaped(region) for name, region in self.config.parameters.items()})

    def _shaped(self, region):
        """A region's words as the golden model takes them: (P, N) for B and its accumulator."""
        words = self._regions[region]
        return words.reshape(self._shape) if int(region) in MATRIX_REGION_CODES else words

    def _run_forward(self, p: _Pass) -> bytes:
        r, fmt = self._regions, self.config.fmt
        model, q = self._model()
        result = model.forward(q, p.inputs, r[Region.Y0], r[Region.Z0], fmt)
        return self._forward_stores(result.y, result.z, result.pos_sum, int(result.overflows))

    def _forward_stores(self, y, z, pos_sum, overflows: int) -> bytes:
        """A finished forward pass into the stores; its final reply."""
        r = self._regions
        r[Region.Y0][:], r[Region.Z0][:], r[Region.POS_SUM][:] = y, z, pos_sum
        r[Region.COUNTERS][_COUNTER_INDEX["forward"]] = overflows
        return self.messages.forward_result.pack(overflow_forward=overflows,
                                                 pos_sum=_field_value(r[Region.POS_SUM].tolist()))

    def _run_echo(self, p: _Pass) -> bytes:
        r, fmt = self._regions, self.config.fmt
        if p.mode is EchoMode.STREAM:
            # step m consumed u_j (j = L-1-m) and carried n_{j-1}; ECHO_START carried n_{L-1}
            nudge = np.concatenate([p.nudges[:-1][::-1], r[Region.NUDGE][None, :]])
        else:
            nudge = r[Region.NUDGE]
        model, q = self._model()
        stored = self._stored_accumulators()
        if self.config.hru == "linear":
            acc_a, acc_b = stored
            result = model.echo(q, p.inputs[::-1], r[Region.Y0], r[Region.Z0], nudge, fmt, acc_a=acc_a, acc_b=acc_b)
            sums = self.config.accumulators_by_name((result.acc_a, result.acc_b))
        else:
            result = model.echo(q, p.inputs[::-1], r[Region.Y0], r[Region.Z0], nudge, fmt, acc=stored)
            sums = self.config.accumulators_by_name(result.acc)
        return self._echo_stores(result.y, result.z, sums, *(int(x) for x in result.overflows))

    def _echo_stores(self, y, z, sums: dict, plus: int, minus: int, gradient: int) -> bytes:
        """A finished echo pair into the stores (the gradient counter adds, saturating); its final reply."""
        r = self._regions
        counters = r[Region.COUNTERS]
        limit = (1 << self.config.base.counter_width) - 1
        counters[_COUNTER_INDEX["echo_plus"]] = plus
        counters[_COUNTER_INDEX["echo_minus"]] = minus
        counters[_COUNTER_INDEX["gradient"]] = min(int(counters[_COUNTER_INDEX["gradient"]]) + gradient, limit)
        r[Region.Y0][:], r[Region.Z0][:] = y[0], z[0]
        r[Region.Y1][:], r[Region.Z1][:] = y[1], z[1]
        for name, region in self.config.accumulators.items():
            r[region][:] = np.ravel(sums[name])
        return self.messages.echo_result.pack(overflow_echo_plus=plus, overflow_echo_minus=minus,
                                              overflow_gradient=int(counters[_COUNTER_INDEX["gradient"]]))

    # ------------------------------------------------------------------ inspection

    def stores(self) -> dict:
        """A copy of everything stored: each region's words by name, and the pass in progress.

        For tests ("nothing stored changed") and debugging; the host sees the same through READ
        and STATUS.
        """
        p = self._pass
        snapshot = {r.name: self._regions[r].tolist() for r in self.config.regions}
        snapshot["outputs"] = self._last_outputs
        snapshot["pass"] = None if p is None else (p.state, p.length, p.steps_done, p.inputs.tolist(),
                                                   None if p.nudges is None else p.nudges.tolist())
        return snapshot


def _unpack_truncating(layout: Layout, payload: bytes) -> dict:
    """``layout.unpack`` as the board reads words: it keeps the low W bits of each ⌈W/8⌉-byte word.

    The host-side ``unpack`` refuses bytes that are not a proper sign extension; the board does
    not check, it truncates. Reading every field at its whole-byte width (which any bytes fit)
    and then truncating reuses the layout's field walk and its BAD_LENGTH check.
    """
    wide = Layout(layout.name, tuple(dataclasses.replace(f, width=8 * word_bytes(f.width)) for f in layout.fields))
    values = wide.unpack(payload)
    for f in layout.fields:
        if f.width % 8:
            values[f.name] = _truncate(values[f.name], f.width, f.signed)
    return values


def _truncate(value, width: int, signed: bool):
    if isinstance(value, list):
        return [_truncate(v, width, signed) for v in value]
    low = value & ((1 << width) - 1)
    return low - (1 << width) if signed and low >> (width - 1) else low


def _field_value(words: list[int]):
    """A Layout field's value: a list of words, or a bare int for a one-word field."""
    return words[0] if len(words) == 1 else words


def _received_seq_cmd(encoded: bytes) -> tuple[int, int]:
    """The first two bytes the board's COBS decoder produced from a bad frame, 0 where none.

    The receiver latches seq and cmd as they arrive, before it knows the frame is bad, so this
    decodes block by block as far as the bytes go, even where ``cobs.decode`` refuses the frame
    (a block running past the delimiter). A block's implicit zero is produced only when another
    block follows, as in firmware.link.COBSDecoder.
    """
    out, pos = bytearray(), 0
    while pos < len(encoded) and len(out) < 2:
        code = encoded[pos]
        out += encoded[pos + 1:pos + code]
        pos += code
        if code < 0xFF and pos < len(encoded):
            out.append(0)
    out += bytes(2)
    return out[0], out[1]
