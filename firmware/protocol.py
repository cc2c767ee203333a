"""The wire protocol between the host and the board: frames, commands, byte layouts, limits.

Pure Python (no Amaranth), imported by the host library, the golden backend and the board's
gateware generators alike, so each number here has exactly one definition. docs/protocol.md
explains the protocol in prose; tests/test_firmware_protocol.py checks its code tables, limits
and examples against this module.

Frames
------
On the wire a frame is ``COBS(body + CRC32_LE(body)) + b"\\x00"``:

- request body ``[seq:u8][cmd:u8][payload...]``; reply body ``[seq:u8][cmd:u8][status:u8][payload...]``;
- the CRC is ``zlib.crc32`` of the body (= ``amaranth.lib.crc.catalog.CRC32_ISO_HDLC``),
  little-endian; COBS (the PyPI ``cobs`` package on the host) removes every 0x00 so the
  delimiter can resynchronise the receiver after any corruption.

The board stores a whole request before acting on it (nothing runs on a frame whose CRC is
wrong), in a receive buffer of :data:`RX_BUFFER_BYTES`; that buffer size is the one limit
every other size is derived from.

Payloads
--------
Integers are little-endian. Words of the fixed-point format (parameters, states, accumulators,
inputs) are two's-complement integers of the format's width stored in ``ceil(width/8)`` bytes,
sign-extended to whole bytes; :func:`pack_words` refuses values that do not fit the width and
:func:`unpack_words` refuses bytes that are not a proper sign extension. Every command's
payloads are :class:`Layout` objects built from a :class:`CoreConfig` by :class:`Messages`.
"""
from __future__ import annotations

import enum
import math
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cobs import cobs

from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.hdl.kinds import base_format, hru_kind
from echoboard.hdl.regions import LinearBlockRegion, NonlinearBlockRegion, NonlinearRegion, Region

# ---------------------------------------------------------------- version and limits

#: 2: IDENTIFY reports the HRU kind and the nonlinear format (a v1 host's empty IDENTIFY still
#: gets v1's 46 bytes, now saying version 2, so it refuses the board by its version).
PROTOCOL_VERSION = 2

#: Bytes of the board's receive buffer: one decoded request (seq, cmd, payload, CRC) must fit.
#: 1 KiB is one ECP5 DP16KD or two iCE40 SB_RAM40_4K; at 3 Mbaud it is ~3.4 ms of line time,
#: long enough that per-frame overhead (9 bytes + USB latency) stays small.
RX_BUFFER_BYTES = 1024

SEQ_CMD_BYTES = 2  # [seq][cmd]
STATUS_BYTES = 1  # replies carry a status byte after cmd
CRC_BYTES = 4
MAX_FRAME_BYTES = RX_BUFFER_BYTES  # decoded body + CRC
MIN_REQUEST_FRAME_BYTES = SEQ_CMD_BYTES + CRC_BYTES
MIN_REPLY_FRAME_BYTES = SEQ_CMD_BYTES + STATUS_BYTES + CRC_BYTES
MAX_REQUEST_PAYLOAD = MAX_FRAME_BYTES - MIN_REQUEST_FRAME_BYTES
MAX_REPLY_PAYLOAD = MAX_FRAME_BYTES - MIN_REPLY_FRAME_BYTES
BUILD_HASH_BYTES = 16  # the first 16 bytes of the SHA-256 of the board image's design


def cobs_max_encoded(n: int) -> int:
    """Longest COBS encoding of ``n`` bytes (one overhead byte per started 254-byte block)."""
    return n + max(1, math.ceil(n / 254))


#: The longest valid frame on the wire, delimiter included.
MAX_WIRE_BYTES = cobs_max_encoded(MAX_FRAME_BYTES) + 1


# ---------------------------------------------------------------- codes


class Command(enum.IntEnum):
    IDENTIFY = 0x01
    STATUS = 0x02
    ABORT = 0x03
    WRITE = 0x10
    READ = 0x11
    CLEAR_GRADIENTS = 0x12
    FORWARD_START = 0x20
    FORWARD_DATA = 0x21
    ECHO_START = 0x30
    ECHO_DATA = 0x31
    OUTPUTS = 0x22  # the per-step outputs of an outputs pass's last chunk (IDLE; FORWARD/ECHO_OUTPUTS)


class Status(enum.IntEnum):
    """The reply's status byte. 1-3 come from the link (the frame itself), 4-7 from the sequencer."""

    OK = 0
    BAD_CRC = 1
    TRUNCATED = 2  # shorter than [seq][cmd][crc], or a COBS block runs past the delimiter
    OVERSIZED = 3  # decodes to more than MAX_FRAME_BYTES
    UNKNOWN_COMMAND = 4
    BAD_LENGTH = 5  # the payload length does not fit the command's layout
    WRONG_STATE = 6  # e.g. DATA without START, WRITE during a pass
    BAD_ARGUMENT = 7  # region, address range, offset, length or mode out of range

    @property
    def retry(self) -> bool:
        """Link errors: the request was not executed, resend it unchanged (same seq)."""
        return self in (Status.BAD_CRC, Status.TRUNCATED, Status.OVERSIZED)


#: Wire code of IDENTIFY's ``hru`` field, and the region enum of each HRU kind.
HRU_CODES = {"linear": 0, "nonlinear": 1}
REGIONS = {"linear": Region, "nonlinear": NonlinearRegion}
#: Region names by word kind (the rest hold states: NUDGE, Y0, Z0, Y1, Z1). Accumulators and
#: counters are read-only; B and its gradient accumulator (codes 1 and 10) are P×N.
COEFFICIENT_REGIONS = frozenset({"A", "ALPHA", "B", "DELTA", "W", "BIAS", "SIGMA", "GAIN"})
ACCUMULATOR_REGIONS = frozenset({"POS_SUM", "ACC_A", "ACC_B", "ACC_YY", "ACC_TU", "ACC_T", "ACC_LC", "ACC_TY", "KIN"})
MATRIX_REGION_CODES = frozenset({int(Region.B), int(Region.ACC_B)})
#: Per HRU kind: golden-model parameter names (the fields of hru_fixed.LinearParamsInt /
#: hru_fixed_nonlinear.NonlinearParamsInt) and accumulator names (hdl.verilog.golden_expectation's
#: echo keys) -> their regions.
PARAMETERS = {"linear": {"A": Region.A, "B": Region.B, "delta": Region.DELTA},
              "nonlinear": {"W": NonlinearRegion.W, "bias": NonlinearRegion.BIAS, "sigma_c": NonlinearRegion.SIGMA,
                            "alpha": NonlinearRegion.ALPHA, "B": NonlinearRegion.B, "delta": NonlinearRegion.DELTA}}
ACCUMULATORS = {"linear": {"acc_a": Region.ACC_A, "acc_b": Region.ACC_B},
                "nonlinear": {"acc_yy": NonlinearRegion.ACC_YY, "acc_t": NonlinearRegion.ACC_T,
                              "acc_tu": NonlinearRegion.ACC_TU, "acc_lc": NonlinearRegion.ACC_LC,
                              "acc_ty": NonlinearRegion.ACC_TY}}


BLOCK_REGIONS = {"linear": LinearBlockRegion, "nonlinear": NonlinearBlockRegion}
BLOCK_PARAMETERS = {"linear": {}, "nonlinear": {"gain": NonlinearBlockRegion.GAIN}}
BLOCK_ACCUMULATORS = {"linear": {"kin": LinearBlockRegion.KIN}, "nonlinear": {"kin": NonlinearBlockRegion.KIN}}


def read_only_regions(regions: type[enum.IntEnum]) -> frozenset:
    return frozenset(r for r in regions if r.name in ACCUMULATOR_REGIONS or r.name == "COUNTERS")


READ_ONLY_REGIONS = read_only_regions(Region)


class EchoMode(enum.IntEnum):
    CONSTANT = 0  # the nudge given in ECHO_START is added after every echo step but the last
    STREAM = 1  # each ECHO_DATA step carries its own nudge (per-step losses)


class PassState(enum.IntEnum):
    """STATUS reply's ``state``: which pass is in progress."""

    IDLE = 0
    FORWARD = 1
    ECHO = 2


class ForwardFlags(enum.IntFlag):
    ZERO_STATE = 1  # clear Y0/Z0 before the pass (otherwise start from what was written there)
    OUTPUTS = 2  # Capability.FORWARD_OUTPUTS: the DATA replies carry y_k of every step (an HSSM block)


#: Bit 1 of ECHO_START's ``mode`` byte, beside the EchoMode in bit 0 (Capability.ECHO_OUTPUTS): an
#: HSSM block's echo, whose DATA replies carry du_j of every step and which adds to KIN.
ECHO_OUTPUTS_FLAG = 2


class Capability(enum.IntFlag):
    """IDENTIFY's ``capabilities``: what a board implements beyond the protocol's core."""

    ECHO_STREAM = 1  # EchoMode.STREAM is implemented
    FORWARD_OUTPUTS = 2  # ForwardFlags.OUTPUTS in FORWARD_START (y_k, docs/numerics.md B1), OUTPUTS
    ECHO_OUTPUTS = 4  # ECHO_OUTPUTS_FLAG in ECHO_START (du_j), OUTPUTS, the KIN region, nonlinear GAIN (B2-B5)


#: What the board image with the pipelined core implements (the serial core has no block mode: ECHO_STREAM
#: only); the golden board's default, so that it is the reference for that image.
PIPELINED_CAPABILITIES = Capability.ECHO_STREAM | Capability.FORWARD_OUTPUTS | Capability.ECHO_OUTPUTS

DRIFT_ROUNDING_CODES = {"half_away": 0, "floor": 1}

#: FixedFormat fields in wire order (explicit, so reordering formats.py cannot change the wire).
FORMAT_FIELDS = ("state_width", "state_frac", "input_width", "input_frac", "coef_width", "coef_a_frac",
                 "coef_b_frac", "delta_frac", "acc_width", "acc_a_shift", "acc_b_shift", "epsilon_log2",
                 "loss_scale_log2", "counter_width")
#: golden_model.hru_fixed_nonlinear.NonlinearFormat's own fields in wire order (its ``base`` is the
#: FixedFormat above), then its TanhSpec's as ``tanh_<field>``; all 0 on a linear board.
NONLINEAR_FORMAT_FIELDS = ("coef_w_frac", "coef_bias_frac", "coef_sigma_frac", "acc_logcosh_shift", "acc_ty_shift")
TANH_FIELDS = ("addr_frac", "range_log2", "out_frac")


# ---------------------------------------------------------------- exceptions


class ProtocolError(ValueError):
    """Anything malformed; ``status`` is the code the board answers for the same fault."""

    status = Status.BAD_ARGUMENT


class FrameError(ProtocolError):
    """The frame itself is bad (the request was not executed; safe to resend)."""


class CrcError(FrameError):
    status = Status.BAD_CRC


class TruncatedFrame(FrameError):
    status = Status.TRUNCATED


class OversizedFrame(FrameError):
    status = Status.OVERSIZED


class UnknownCommand(ProtocolError):
    status = Status.UNKNOWN_COMMAND


class PayloadLengthError(ProtocolError):
    status = Status.BAD_LENGTH


class BoardError(ProtocolError):
    """The board answered with a non-OK status."""

    def __init__(self, reply: "Reply"):
        self.status = Status(reply.status) if reply.status in Status._value2member_map_ else reply.status
        self.reply = reply
        name = getattr(self.status, "name", str(self.status))
        super().__init__(f"board answered {name} to {_command_name(reply.cmd)} (seq {reply.seq})")


def _command_name(cmd: int) -> str:
    return Command(cmd).name if cmd in Command._value2member_map_ else f"command 0x{cmd:02x}"


# ---------------------------------------------------------------- frames


def frame_crc(body: bytes) -> bytes:
    return zlib.crc32(body).to_bytes(CRC_BYTES, "little")


def encode_frame(body: bytes) -> bytes:
    """``body`` -> wire bytes (COBS, CRC appended, 0x00 delimiter)."""
    if len(body) + CRC_BYTES > MAX_FRAME_BYTES:
        raise OversizedFrame(f"frame of {len(body) + CRC_BYTES} bytes exceeds {MAX_FRAME_BYTES}")
    return cobs.encode(body + frame_crc(body)) + b"\x00"


def decode_frame(encoded: bytes, min_bytes: int = MIN_REQUEST_FRAME_BYTES) -> bytes:
    """Bytes between two delimiters (a trailing delimiter is allowed) -> the CRC-checked body.

    The checks run in the order the board's receiver applies them at the delimiter, so both
    report the same fault: COBS violation, then size, then too short, then CRC.
    """
    if encoded.endswith(b"\x00"):
        encoded = encoded[:-1]
    if b"\x00" in encoded:
        raise TruncatedFrame("a delimiter inside the frame: it was cut short")
    try:
        frame = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        raise TruncatedFrame(f"COBS block runs past the delimiter: {exc}") from None
    if len(frame) > MAX_FRAME_BYTES:
        raise OversizedFrame(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    if len(frame) < min_bytes:
        raise TruncatedFrame(f"frame of {len(frame)} bytes is shorter than the minimum {min_bytes}")
    body, crc = frame[:-CRC_BYTES], frame[-CRC_BYTES:]
    if frame_crc(body) != crc:
        raise CrcError(f"CRC {crc.hex()} differs from computed {frame_crc(body).hex()}")
    return body


class Deframer:
    """Splits a received byte stream at 0x00 delimiters into encoded frames (host side).

    Empty frames (consecutive delimiters, used to flush the line) are skipped. A run of more
    than ``limit`` bytes without a delimiter keeps only its first ``limit`` bytes, so garbage
    cannot grow memory; decoding that frame then raises a :class:`FrameError`.
    """

    def __init__(self, limit: int = 4 * MAX_WIRE_BYTES):
        self.limit, self._partial = limit, bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        frames = []
        *complete, rest = bytes(data).split(b"\x00")
        for piece in complete:
            self._append(piece)
            if self._partial:
                frames.append(bytes(self._partial))
            self._partial.clear()
        self._append(rest)
        return frames

    def _append(self, piece: bytes) -> None:
        self._partial += piece[: max(0, self.limit - len(self._partial))]


@dataclass(frozen=True)
class Request:
    seq: int
    cmd: int
    payload: bytes = b""

    def encode(self) -> bytes:
        _check_byte("seq", self.seq)
        _check_byte("cmd", self.cmd)
        if len(self.payload) > MAX_REQUEST_PAYLOAD:
            raise OversizedFrame(f"request payload of {len(self.payload)} bytes exceeds {MAX_REQUEST_PAYLOAD}")
        return encode_frame(bytes([self.seq, self.cmd]) + bytes(self.payload))

    @classmethod
    def decode(cls, encoded: bytes) -> "Request":
        """Board-side view: raises FrameError subclasses or UnknownCommand."""
        body = decode_frame(encoded, MIN_REQUEST_FRAME_BYTES)
        if body[1] not in Command._value2member_map_:
            raise UnknownCommand(f"unknown command 0x{body[1]:02x}")
        return cls(body[0], body[1], body[2:])


@dataclass(frozen=True)
class Reply:
    seq: int
    cmd: int
    status: int = Status.OK
    payload: bytes = b""

    def encode(self) -> bytes:
        for name in ("seq", "cmd", "status"):
            _check_byte(name, getattr(self, name))
        if len(self.payload) > MAX_REPLY_PAYLOAD:
            raise OversizedFrame(f"reply payload of {len(self.payload)} bytes exceeds {MAX_REPLY_PAYLOAD}")
        return encode_frame(bytes([self.seq, self.cmd, self.status]) + bytes(self.payload))

    @classmethod
    def decode(cls, encoded: bytes) -> "Reply":
        body = decode_frame(encoded, MIN_REPLY_FRAME_BYTES)
        return cls(body[0], body[1], body[2], body[3:])

    def check(self) -> "Reply":
        """Return self if the status is OK, else raise :class:`BoardError`."""
        if self.status != Status.OK:
            raise BoardError(self)
        return self


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be a byte, got {value}")


# ---------------------------------------------------------------- integer packing


def word_bytes(width: int) -> int:
    return (width + 7) // 8


def pack_words(values: Iterable[int], width: int, signed: bool = True) -> bytes:
    """Integers -> ``ceil(width/8)``-byte little-endian words; ValueError if one does not fit."""
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    n = word_bytes(width)
    out = bytearray()
    for v in values:
        v = int(v)
        if not lo <= v <= hi:
            raise ValueError(f"{v} does not fit a {'signed' if signed else 'unsigned'} {width}-bit word")
        out += v.to_bytes(n, "little", signed=signed)
    return bytes(out)


def unpack_words(data: bytes, width: int, signed: bool = True) -> list[int]:
    """Inverse of :func:`pack_words`; ProtocolError if the bytes are not a valid ``width``-bit word."""
    n = word_bytes(width)
    if len(data) % n:
        raise PayloadLengthError(f"{len(data)} bytes is not a whole number of {n}-byte words")
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    values = [int.from_bytes(data[i:i + n], "little", signed=signed) for i in range(0, len(data), n)]
    bad = [v for v in values if not lo <= v <= hi]
    if bad:
        raise ProtocolError(f"word {bad[0]} is not a {width}-bit {'signed' if signed else 'unsigned'} value")
    return values


def dense_bytes(count: int, width: int) -> int:
    """Bytes of ``count`` densely packed ``width``-bit words (:func:`pack_dense`)."""
    return (count * width + 7) // 8


def pack_dense(values: Iterable[int], width: int) -> bytes:
    """Signed ``width``-bit words as one little-endian bit string (word 0 in the lowest bits), zero
    bits only to fill the last byte: the per-step outputs' packing, which wastes no bits
    on a width that is not a whole number of bytes. ValueError if a value does not fit."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    bits, count = 0, 0
    for count, v in enumerate(values, start=1):
        if not lo <= int(v) <= hi:
            raise ValueError(f"{v} does not fit a signed {width}-bit word")
        bits |= (int(v) & ((1 << width) - 1)) << ((count - 1) * width)
    return bits.to_bytes(dense_bytes(count, width), "little")


def unpack_dense(data: bytes, width: int, count: int) -> list[int]:
    """Inverse of :func:`pack_dense`; PayloadLengthError for another length, ProtocolError for a
    set fill bit."""
    if len(data) != dense_bytes(count, width):
        raise PayloadLengthError(f"{len(data)} bytes are not {count} packed {width}-bit words "
                                 f"({dense_bytes(count, width)} bytes)")
    bits = int.from_bytes(data, "little")
    if bits >> (count * width):
        raise ProtocolError("the fill bits after the last packed word are not 0")
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    return [((bits >> (k * width) & mask) ^ sign) - sign for k in range(count)]


# ---------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Field:
    """``count`` words of ``width`` bits; ``per_step`` fields repeat ``count`` words per step.

    A layout has at most one unknown: the number of steps ``k`` of its ``per_step`` fields,
    which the payload length determines (``k >= 1``).
    """

    name: str
    width: int
    signed: bool = False
    count: int = 1
    per_step: bool = False

    @property
    def nbytes(self) -> int:
        return word_bytes(self.width) * self.count


def u8(name: str) -> Field:
    return Field(name, 8)


def u16(name: str) -> Field:
    return Field(name, 16)


def u32(name: str) -> Field:
    return Field(name, 32)


@dataclass(frozen=True)
class Layout:
    """An ordered list of fields; packs keyword values to bytes and unpacks bytes to a dict.

    Scalars (``count == 1`` and not ``per_step``) are ints; other fields are flat lists of
    ints. ``per_step`` fields must come last; on the wire they are interleaved step by step
    (step 0 of every per-step field, then step 1, ...) so a streaming decoder on the board can
    hand each step to the core as soon as its bytes have arrived.
    """

    name: str
    fields: tuple[Field, ...] = ()

    def __post_init__(self):
        kinds = [f.per_step for f in self.fields]
        if kinds != sorted(kinds):
            raise ValueError(f"{self.name}: per-step fields must come last")

    @property
    def fixed_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if not f.per_step)

    @property
    def step_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.per_step)

    @property
    def fixed_bytes(self) -> int:
        return sum(f.nbytes for f in self.fixed_fields)

    @property
    def step_bytes(self) -> int:
        return sum(f.nbytes for f in self.step_fields)

    def size(self, steps: int = 0) -> int:
        return self.fixed_bytes + steps * self.step_bytes

    def max_steps(self, limit: int) -> int:
        """The most steps whose payload fits ``limit`` bytes (0 if none or no per-step fields)."""
        return max(0, (limit - self.fixed_bytes) // self.step_bytes) if self.step_bytes else 0

    def steps(self, length: int) -> int:
        """Steps in a payload of ``length`` bytes; PayloadLengthError if it does not fit exactly."""
        if self.step_bytes:
            rest = length - self.fixed_bytes
            if rest >= self.step_bytes and rest % self.step_bytes == 0:
                return rest // self.step_bytes
            raise PayloadLengthError(f"{self.name}: {length} bytes is not {self.fixed_bytes} + "
                                     f"k * {self.step_bytes} with k >= 1")
        if length != self.fixed_bytes:
            raise PayloadLengthError(f"{self.name}: expected {self.fixed_bytes} bytes, got {length}")
        return 0

    def pack(self, **values) -> bytes:
        if values.keys() != {f.name for f in self.fields}:
            raise ValueError(f"{self.name}: fields {sorted(values)} differ from {[f.name for f in self.fields]}")
        out = bytearray()
        for f in self.fixed_fields:
            words = [values[f.name]] if f.count == 1 else list(values[f.name])
            if len(words) != f.count:
                raise ValueError(f"{self.name}.{f.name}: expected {f.count} words, got {len(words)}")
            out += pack_words(words, f.width, f.signed)
        per_step = {f.name: list(values[f.name]) for f in self.step_fields}
        steps = {len(words) / f.count for f, words in zip(self.step_fields, per_step.values())}
        if len(steps) > 1 or any(k < 1 or k != int(k) for k in steps):
            raise ValueError(f"{self.name}: per-step fields must hold the same whole number k >= 1 of steps, "
                             f"got {({n: len(w) for n, w in per_step.items()})}")
        for s in range(int(next(iter(steps), 0))):
            for f in self.step_fields:
                out += pack_words(per_step[f.name][s * f.count:(s + 1) * f.count], f.width, f.signed)
        return bytes(out)

    def unpack(self, payload: bytes) -> dict:
        steps = self.steps(len(payload))
        values, pos = {}, 0
        for f in self.fixed_fields:
            words = unpack_words(payload[pos:pos + f.nbytes], f.width, f.signed)
            values[f.name] = words[0] if f.count == 1 else words
            pos += f.nbytes
        for f in self.step_fields:
            values[f.name] = []
        for _ in range(steps):
            for f in self.step_fields:
                values[f.name] += unpack_words(payload[pos:pos + f.nbytes], f.width, f.signed)
                pos += f.nbytes
        return values


# ---------------------------------------------------------------- the core's configuration

#: IDENTIFY's reply does not depend on the configuration (it describes it). Its first 46 bytes
#: are version 1's whole reply, which a request without payload (a v1 host) gets: every host can
#: read the version there and refuse a board of another one by name.
IDENTIFY_V1_REPLY = Layout("IDENTIFY reply (v1 request)", (
    u16("protocol_version"), u16("max_request_payload"), u16("oscillators"), u16("inputs"), u16("lanes"),
    u32("max_length"), *(Field(name, 8, True) for name in FORMAT_FIELDS), u8("drift_rounding"),
    u8("capabilities"), Field("build_hash", 8, False, BUILD_HASH_BYTES)))
IDENTIFY_REPLY = Layout("IDENTIFY reply", (
    *IDENTIFY_V1_REPLY.fields, u8("hru"), *(Field(name, 8, True) for name in NONLINEAR_FORMAT_FIELDS),
    *(Field(f"tanh_{name}", 8, True) for name in TANH_FIELDS)))
#: A v2 host's IDENTIFY carries its version (the board answers any value with IDENTIFY_REPLY).
IDENTIFY_REQUEST = Layout("IDENTIFY request", (u16("host_version"),))


def check_addressable(size: HRUSize) -> None:
    """ValueError unless a host can address a core of ``size``: P·N words of B in 16-bit word
    addresses, the sequence length in 32 bits. It costs nothing, so the CLI applies it to the core
    alone too (``verilog``, ``verify --level core``) before elaborating anything."""
    words = size.oscillators * size.inputs
    if words > 0xFFFF or size.max_length > 0xFFFFFFFF:
        raise ValueError(f"P*N ({size.oscillators}*{size.inputs} = {words}) must fit 16-bit word addresses "
                         f"(at most 65535) and max_length ({size.max_length}) 32 bits")


@dataclass(frozen=True)
class CoreConfig:
    """What IDENTIFY reports: the core's size and number format, lanes, features, build.

    ``fmt`` is a FixedFormat (the linear HRU) or a golden_model.hru_fixed_nonlinear.NonlinearFormat
    (the nonlinear HRU): its type is the HRU kind (``hru``), which sets the regions.

    Construction checks that the configuration can be driven through frames of
    :data:`RX_BUFFER_BYTES`: one input step, the echo nudge vector and the forward result
    (overflow counter + P position sums) must each fit one payload.
    """

    size: HRUSize = field(default_factory=HRUSize)
    fmt: FixedFormat = field(default_factory=FixedFormat)
    lanes: int = 1
    capabilities: Capability = Capability(0)
    build_hash: bytes = bytes(BUILD_HASH_BYTES)

    def __post_init__(self):
        if len(self.build_hash) != BUILD_HASH_BYTES:
            raise ValueError(f"build_hash must be {BUILD_HASH_BYTES} bytes, got {len(self.build_hash)}")
        if self.base.drift_rounding not in DRIFT_ROUNDING_CODES:
            raise ValueError(f"drift_rounding {self.base.drift_rounding!r} has no wire code")
        check_addressable(self.size)
        m = Messages(self)
        for layout in (m.forward_result, m.echo_start, m.forward_data, m.echo_data(EchoMode.STREAM)):
            if layout.size(1) > MAX_REPLY_PAYLOAD:
                raise ValueError(f"{layout.name} needs {layout.size(1)} bytes, more than a frame holds: "
                                 f"this core is too large for RX_BUFFER_BYTES={RX_BUFFER_BYTES}")

    @property
    def hru(self) -> str:
        """"linear" or "nonlinear" (hdl.kinds.hru_kind of ``fmt``)."""
        return hru_kind(self.fmt)

    @property
    def base(self) -> FixedFormat:
        """The FixedFormat of the shared widths (``fmt`` itself, or a NonlinearFormat's ``base``)."""
        return base_format(self.fmt)

    @property
    def block(self) -> bool:
        """The board runs HSSM block echoes (Capability.ECHO_OUTPUTS), so it has KIN (and GAIN)."""
        return bool(self.capabilities & Capability.ECHO_OUTPUTS)

    @property
    def regions(self) -> type[enum.IntEnum]:
        """The region enum of this HRU: :class:`Region` or :class:`NonlinearRegion`; with
        :attr:`block`, :class:`LinearBlockRegion` or :class:`NonlinearBlockRegion`."""
        return (BLOCK_REGIONS if self.block else REGIONS)[self.hru]

    @property
    def read_only_regions(self) -> frozenset:
        return read_only_regions(self.regions)

    @property
    def parameters(self) -> dict:
        """Golden-model parameter name -> region (:data:`PARAMETERS` of this HRU; a block board's
        GAIN is in :data:`BLOCK_PARAMETERS`)."""
        return PARAMETERS[self.hru]

    @property
    def accumulators(self) -> dict:
        """Accumulator name -> region (:data:`ACCUMULATORS` of this HRU; a block board's KIN is
        in :data:`BLOCK_ACCUMULATORS`)."""
        return ACCUMULATORS[self.hru]

    def golden_accumulators(self, by_name: dict):
        """Accumulator words by :attr:`accumulators` name, in the form the golden model takes them:
        linear (acc_a, acc_b), nonlinear a hru_fixed_nonlinear.NonlinearAccumulators (its fields are
        the names without "acc_"). Host and golden board convert through this pair alone."""
        if self.hru == "linear":
            return by_name["acc_a"], by_name["acc_b"]
        from echoboard.golden_model.hru_fixed_nonlinear import NonlinearAccumulators  # JAX: only here

        return NonlinearAccumulators(**{name[len("acc_"):]: value for name, value in by_name.items()})

    def accumulators_by_name(self, acc) -> dict:
        """The inverse of :meth:`golden_accumulators`."""
        if self.hru == "linear":
            return dict(zip(("acc_a", "acc_b"), acc))
        return {f"acc_{name}": value for name, value in acc._asdict().items()}

    def region(self, code: int) -> enum.IntEnum:
        """The region of ``code`` in this HRU's enum; ProtocolError (BAD_ARGUMENT) if unknown."""
        if code not in self.regions._value2member_map_:
            raise ProtocolError(f"unknown region {code}")
        return self.regions(code)

    def region_depth(self, region) -> int:
        P, N, code = self.size.oscillators, self.size.inputs, int(self.region(region))
        return P * N if code in MATRIX_REGION_CODES else 4 if code == Region.COUNTERS else P

    def region_field(self, region, count: int = 1, *, per_step: bool = False) -> Field:
        """``values``: words of ``region``: coefficients, states, accumulators or counters."""
        f, name = self.base, self.region(region).name
        if name == "COUNTERS":
            return Field("values", f.counter_width, False, count, per_step)
        width = (f.coef_width if name in COEFFICIENT_REGIONS else f.acc_width if name in ACCUMULATOR_REGIONS
                 else f.state_width)
        return Field("values", width, True, count, per_step)


# ---------------------------------------------------------------- messages


class Messages:
    """Every command's request and reply layout for one :class:`CoreConfig`, plus the checks
    the board applies, so the host, the golden backend and the tests share one definition.

    Requests: :meth:`request` (WRITE depends on the region, ECHO_DATA on the echo mode).
    Replies: :meth:`reply` (READ depends on region and count, the DATA commands on whether
    the chunk completes the pass: only the final chunk's reply carries results).
    """

    def __init__(self, config: CoreConfig):
        self.config = c = config
        P, N, f = c.size.oscillators, c.size.inputs, c.base

        def counters(*names):
            return tuple(Field(name, f.counter_width) for name in names)

        self.status_reply = Layout("STATUS reply", (
            u32("frames_ok"), u32("crc_errors"), u32("framing_errors"), u32("overruns"), u32("command_errors"),
            u8("state"), u32("length"), u32("steps_done"),
            *counters("overflow_forward", "overflow_echo_plus", "overflow_echo_minus", "overflow_gradient")))
        self.read_request = Layout("READ request", (u8("region"), u16("start"), u16("count")))
        self.forward_start = Layout("FORWARD_START request", (u32("length"), u8("flags")))
        self.forward_data = Layout("FORWARD_DATA request", (
            u32("offset"), Field("inputs", f.input_width, True, N, per_step=True)))
        self.forward_result = Layout("FORWARD_DATA final reply", (
            *counters("overflow_forward"), Field("pos_sum", f.acc_width, True, P)))
        self.echo_start = Layout("ECHO_START request", (
            u32("length"), u8("mode"), Field("nudge", f.state_width, True, P)))
        self.echo_result = Layout("ECHO_DATA final reply",
                                  counters("overflow_echo_plus", "overflow_echo_minus", "overflow_gradient"))
        self.empty = Layout("empty")
        #: the head of a per-step outputs part (a DATA reply in an outputs pass, OUTPUTS)
        self.outputs_head = Layout("outputs head", (u32("first"), u16("steps")))

    # ---- per-step outputs (docs/protocol.md, *Per-step streams*)

    def output_words(self, state: PassState) -> int:
        """Words per step of a pass's outputs: y_k (P) forward, du_j (N) echo, each i(Ws)."""
        return {PassState.FORWARD: self.config.size.oscillators, PassState.ECHO: self.config.size.inputs}[state]

    def max_output_steps(self, state: PassState) -> int:
        """The most steps per DATA chunk of an outputs pass: their outputs, after the head, must fit
        one reply beside the pass's final result (the last chunk's reply carries both)."""
        final = (self.forward_result if state is PassState.FORWARD else self.echo_result).size()
        room = MAX_REPLY_PAYLOAD - self.outputs_head.size() - final
        return room * 8 // (self.output_words(state) * self.config.base.state_width)

    def check_outputs_fit(self) -> None:
        """ValueError unless an outputs pass can be cut into chunks: >= 1 forward step, >= 2 echo steps
        (an echo's inner chunk of 1 step is BAD_LENGTH, docs/protocol.md). Large P or N leave too little
        room in one reply; the image still runs plain passes then."""
        room = {state: self.max_output_steps(state) for state in (PassState.FORWARD, PassState.ECHO)}
        if room[PassState.FORWARD] < 1 or room[PassState.ECHO] < 2:
            size = self.config.size
            raise ValueError(f"with {size.oscillators} oscillators and {size.inputs} inputs one reply has room for "
                             f"{room[PassState.FORWARD]} forward and {room[PassState.ECHO]} echo steps of outputs; "
                             "outputs passes (HSSM blocks) need 1 and 2: use a board with fewer oscillators or inputs")

    def pack_outputs(self, state: PassState, first: int, outputs) -> bytes:
        """An outputs part: ``first`` step, the step count, the steps' words densely packed."""
        rows = [list(r) for r in outputs]
        if any(len(r) != self.output_words(state) for r in rows):
            raise ValueError(f"every step's outputs must be {self.output_words(state)} words")
        return (self.outputs_head.pack(first=first, steps=len(rows))
                + pack_dense((x for r in rows for x in r), self.config.base.state_width))

    def unpack_outputs(self, state: PassState, payload: bytes) -> tuple[int, list[list[int]], bytes]:
        """An outputs part -> (first step, the steps' words, the bytes after it: the final result
        of the pass's last chunk, else empty)."""
        head = self.outputs_head.size()
        if len(payload) < head:
            raise PayloadLengthError(f"an outputs part needs {head} bytes, got {len(payload)}")
        v = self.outputs_head.unpack(payload[:head])
        per, width = self.output_words(state), self.config.base.state_width
        end = head + dense_bytes(v["steps"] * per, width)
        words = unpack_dense(payload[head:end], width, v["steps"] * per)
        return v["first"], [words[k * per:(k + 1) * per] for k in range(v["steps"])], payload[end:]

    def write_request(self, region) -> Layout:
        return Layout(f"WRITE request ({self.config.region(region).name})",
                      (u8("region"), u16("start"), self.config.region_field(region, per_step=True)))

    def read_reply(self, region, count: int) -> Layout:
        return Layout(f"READ reply ({self.config.region(region).name})", (self.config.region_field(region, count),))

    def echo_data(self, mode: EchoMode) -> Layout:
        P, N, f = self.config.size.oscillators, self.config.size.inputs, self.config.base
        fields = [u32("offset"), Field("inputs", f.input_width, True, N, per_step=True)]
        if EchoMode(mode) is EchoMode.STREAM:
            fields.append(Field("nudges", f.state_width, True, P, per_step=True))
        return Layout(f"ECHO_DATA request ({EchoMode(mode).name})", tuple(fields))

    def request(self, cmd: Command, *, region: Region | None = None, mode: EchoMode | None = None) -> Layout:
        cmd = Command(cmd)
        if cmd is Command.WRITE:
            return self.write_request(region)
        if cmd is Command.ECHO_DATA:
            return self.echo_data(mode)
        return {Command.READ: self.read_request, Command.FORWARD_START: self.forward_start,
                Command.FORWARD_DATA: self.forward_data, Command.ECHO_START: self.echo_start}.get(cmd, self.empty)

    def reply(self, cmd: Command, *, region: Region | None = None, count: int = 0, final: bool = False) -> Layout:
        cmd = Command(cmd)
        if cmd is Command.READ:
            return self.read_reply(region, count)
        if cmd in (Command.FORWARD_DATA, Command.ECHO_DATA):
            return (self.forward_result if cmd is Command.FORWARD_DATA else self.echo_result) if final else self.empty
        if cmd is Command.IDENTIFY:
            return IDENTIFY_REPLY
        return {Command.STATUS: self.status_reply}.get(cmd, self.empty)

    # ---- payloads that need more than a layout

    def pack_identify(self, version: int = PROTOCOL_VERSION) -> bytes:
        """The IDENTIFY reply to a v2 request; its first ``IDENTIFY_V1_REPLY.size()`` bytes answer a
        v1 request (no payload)."""
        c = self.config
        nonlinear = c.hru == "nonlinear"
        return IDENTIFY_REPLY.pack(
            protocol_version=version, max_request_payload=MAX_REQUEST_PAYLOAD,
            oscillators=c.size.oscillators, inputs=c.size.inputs, lanes=c.lanes, max_length=c.size.max_length,
            **{name: getattr(c.base, name) for name in FORMAT_FIELDS},
            drift_rounding=DRIFT_ROUNDING_CODES[c.base.drift_rounding], capabilities=int(c.capabilities),
            build_hash=list(c.build_hash), hru=HRU_CODES[c.hru],
            **{name: getattr(c.fmt, name) if nonlinear else 0 for name in NONLINEAR_FORMAT_FIELDS},
            **{f"tanh_{name}": getattr(c.fmt.tanh, name) if nonlinear else 0 for name in TANH_FIELDS})

    def identify_reply(self, payload: bytes) -> bytes:
        """Board side: the IDENTIFY reply to request ``payload`` (none: a v1 host's request, which
        gets the v1 prefix; ``host_version:u16``: the whole reply); PayloadLengthError otherwise."""
        if not payload:
            return self.pack_identify()[:IDENTIFY_V1_REPLY.size()]
        IDENTIFY_REQUEST.unpack(payload)
        return self.pack_identify()

    def pack_write(self, region: Region, start: int, values: Sequence[int]) -> bytes:
        self.check_range(region, start, len(values), write=True)
        return self.write_request(region).pack(region=int(region), start=start, values=list(values))

    def unpack_write(self, payload: bytes) -> tuple[Region, int, list[int]]:
        """Board side: raises PayloadLengthError (BAD_LENGTH) or ProtocolError (BAD_ARGUMENT)."""
        if not payload:
            raise PayloadLengthError("WRITE request without a region")
        region = self.config.region(payload[0])
        v = self.write_request(region).unpack(payload)
        self.check_range(region, v["start"], len(v["values"]), write=True)
        return region, v["start"], v["values"]

    def pack_read(self, region: Region, start: int, count: int) -> bytes:
        self.check_range(region, start, count)
        return self.read_request.pack(region=int(region), start=start, count=count)

    def unpack_read(self, payload: bytes) -> tuple[Region, int, int]:
        v = self.read_request.unpack(payload)
        region = self.config.region(v["region"])
        self.check_range(region, v["start"], v["count"])
        return region, v["start"], v["count"]

    def check_range(self, region, start: int, count: int, *, write: bool = False) -> None:
        """BAD_ARGUMENT faults of WRITE/READ: read-only region, words outside it, reply too long."""
        region = self.config.region(region)
        if write and region in self.config.read_only_regions:
            raise ProtocolError(f"region {region.name} is read-only")
        depth = self.config.region_depth(region)
        if count < 1 or start < 0 or start + count > depth:
            raise ProtocolError(f"words {start}..{start + count - 1} outside {region.name} (0..{depth - 1})")
        if count > self.max_words(region, write=write):
            raise ProtocolError(f"{count} words of {region.name} do not fit one frame")

    def max_words(self, region: Region, *, write: bool = False) -> int:
        """The most words of ``region`` one WRITE request (or READ reply) carries."""
        if write:
            return self.write_request(region).max_steps(MAX_REQUEST_PAYLOAD)
        return MAX_REPLY_PAYLOAD // self.config.region_field(region).nbytes

    def data_payloads(self, inputs, *, nudges=None, mode: EchoMode | None = None, outputs: bool = False
                      ) -> list[bytes]:
        """Split a sequence (L rows of N inputs, in the order the pass consumes them) into
        FORWARD_DATA (``mode`` None) or ECHO_DATA payloads, each as full as a frame allows (with
        ``outputs``: and as its outputs allow, :meth:`max_output_steps`)."""
        layout = self.forward_data if mode is None else self.echo_data(mode)
        rows = [list(r) for r in inputs]
        nudge_rows = None if nudges is None else [list(r) for r in nudges]
        per = layout.max_steps(MAX_REQUEST_PAYLOAD)
        if outputs:
            self.check_outputs_fit()
            per = min(per, self.max_output_steps(PassState.FORWARD if mode is None else PassState.ECHO))
        payloads = []
        for offset in range(0, len(rows), per):
            chunk = {"offset": offset, "inputs": [x for r in rows[offset:offset + per] for x in r]}
            if mode is not None and EchoMode(mode) is EchoMode.STREAM:
                chunk["nudges"] = [x for r in nudge_rows[offset:offset + per] for x in r]
            payloads.append(layout.pack(**chunk))
        return payloads


def identify_request() -> bytes:
    """This host's IDENTIFY payload: its protocol version."""
    return IDENTIFY_REQUEST.pack(host_version=PROTOCOL_VERSION)


def unpack_identify(payload: bytes) -> CoreConfig:
    """IDENTIFY reply -> CoreConfig; ProtocolError on another protocol version (read first, from the
    two bytes every version starts with) or buffer size, or an unknown HRU kind."""
    if len(payload) >= 2 and int.from_bytes(payload[:2], "little") != PROTOCOL_VERSION:
        raise ProtocolError(f"board speaks protocol {int.from_bytes(payload[:2], 'little')}, host "
                            f"{PROTOCOL_VERSION}: use the host of the board's checkout, or rebuild the board")
    v = IDENTIFY_REPLY.unpack(payload)
    if v["max_request_payload"] != MAX_REQUEST_PAYLOAD:
        raise ProtocolError(f"board buffer holds {v['max_request_payload']} payload bytes, "
                            f"host expects {MAX_REQUEST_PAYLOAD}")
    rounding = {code: name for name, code in DRIFT_ROUNDING_CODES.items()}
    if v["drift_rounding"] not in rounding:
        raise ProtocolError(f"unknown drift rounding code {v['drift_rounding']}")
    fmt = FixedFormat(**{name: v[name] for name in FORMAT_FIELDS}, drift_rounding=rounding[v["drift_rounding"]])
    kinds = {code: name for name, code in HRU_CODES.items()}
    if v["hru"] not in kinds:
        raise ProtocolError(f"unknown HRU kind code {v['hru']}")
    if kinds[v["hru"]] == "nonlinear":  # imported only then: it needs JAX
        from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
        from echoboard.golden_model.tanh_table import TanhSpec

        fmt = NonlinearFormat(base=fmt, tanh=TanhSpec(**{name: v[f"tanh_{name}"] for name in TANH_FIELDS}),
                              **{name: v[name] for name in NONLINEAR_FORMAT_FIELDS})
    return CoreConfig(HRUSize(v["oscillators"], v["inputs"], v["max_length"]), fmt, v["lanes"],
                      Capability(v["capabilities"]), bytes(v["build_hash"]))
