"""The protocol client: one request at a time, with sequence numbers, timeouts and retries.

Frames, layouts and limits come from firmware/protocol.py; this module adds what the host side
of docs/protocol.md ("Retries and sequence numbers") asks for:

- each new request gets ``seq = previous + 1 mod 256``; a session starts with a flush byte
  and IDENTIFY, so the first seq cannot be mistaken for a retry of a previous session's last
  request;
- stop-and-wait: the request's bytes are sent, then the client reads until the reply to that
  (seq, cmd) arrives;
- the *same bytes* are resent, after a flush byte (0x00, which closes any half-received frame on
  the board), when the reply does not come within the timeout, when a reply arrives garbled
  (the board executed the request, and its reply cache answers the resend without executing it
  again), or when the board answers with a link error (it never executed the request). Each
  resend is safe for the same reason, so the client resends rather than waits whenever in
  doubt;
- CRC-good replies to another (seq, cmd) are stale answers to earlier attempts: ignored;
- after ``retries`` resends it gives up with :class:`LinkError`, naming the command.

:class:`LinkStats` counts what happened on the link, for the training summary.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from echoboard.firmware.protocol import (Command, CoreConfig, Deframer, FrameError, Reply, Request, Status, identify_request,
                               unpack_identify)
from echoboard.host.transports import Transport

__all__ = ["Client", "LinkError", "LinkStats"]

_LINK_ERRORS = frozenset(int(s) for s in Status if s.retry)
_FLUSH = b"\x00"


class LinkError(ConnectionError):
    """No valid reply to a request within the retry budget (the link, not the board, failed)."""


@dataclass
class LinkStats:
    """Counters of one client's link, in the units the training summary reports.

    ``bytes_*`` count everything on the wire (flush bytes, resends, stale replies);
    ``payload_bytes_*`` only the payloads of completed requests, so their ratio is the link
    efficiency. ``crc_errors``: replies the host could not decode (CRC or framing);
    ``link_errors``: link-error replies, i.e. requests the board received damaged.
    """

    requests: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    payload_bytes_sent: int = 0
    payload_bytes_received: int = 0
    retries: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    link_errors: int = 0
    stale_replies: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Client:
    """Requests and replies over one transport; context-managed (closing closes the transport).

    ``timeout``: seconds to wait for a reply (a request may ask for more, e.g. a chunk that
    completes a long pass); ``retries``: resends before :class:`LinkError`.
    """

    def __init__(self, port: Transport, *, timeout: float = 1.0, retries: int = 8):
        if timeout <= 0 or retries < 0:
            raise ValueError(f"timeout must be > 0 and retries >= 0, got {timeout} and {retries}")
        self.port, self.timeout, self.retries = port, timeout, retries
        self.port.timeout = timeout
        self.stats = LinkStats()
        self._seq = 0

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.port.close()

    def start(self) -> CoreConfig:
        """Begin a session: flush the board's receiver, IDENTIFY, return the core's configuration."""
        self._send(_FLUSH)
        return unpack_identify(self.call(Command.IDENTIFY, identify_request()))

    def call(self, cmd: int, payload: bytes = b"", *, timeout: float | None = None) -> bytes:
        """:meth:`request`, then the reply's payload; ``protocol.BoardError`` on a non-OK status."""
        return self.request(cmd, payload, timeout=timeout).check().payload

    def request(self, cmd: int, payload: bytes = b"", *, timeout: float | None = None) -> Reply:
        """Send one request and return the board's reply to it, whatever its status.

        Raises :class:`LinkError` when no valid reply came within ``retries`` resends.
        """
        seq, self._seq = self._seq, (self._seq + 1) % 256
        wire = Request(seq, cmd, payload).encode()
        self.stats.requests += 1
        failures: list[str] = []
        with self._timeout(timeout or self.timeout):
            for attempt in range(self.retries + 1):
                self.port.reset_input_buffer()  # stop-and-wait: anything already here is stale
                if attempt:
                    self.stats.retries += 1
                self._send((_FLUSH if attempt else b"") + wire)
                self.stats.frames_sent += 1
                outcome = self._await_reply(seq, cmd)
                if isinstance(outcome, Reply):
                    self.stats.payload_bytes_sent += len(payload)
                    self.stats.payload_bytes_received += len(outcome.payload)
                    return outcome
                failures.append(outcome)
        summary = ", ".join(f"{failures.count(f)} {f}" for f in dict.fromkeys(failures))
        raise LinkError(f"no valid reply to {_name(cmd)} (seq {seq}) after {len(failures)} attempts: {summary}")

    def _send(self, data: bytes) -> None:
        self.port.write(data)
        self.stats.bytes_sent += len(data)

    def _await_reply(self, seq: int, cmd: int) -> Reply | str:
        """The reply to (seq, cmd), or why to resend: "timeouts", "garbled replies", "link errors".

        Every frame already received is looked at before a resend, so a good reply that arrived
        right behind a garbled one is still taken. A line that keeps babbling without the reply
        times out after ``timeout`` seconds as a silent one does.
        """
        deframer, resend = Deframer(), None
        deadline = time.monotonic() + self.port.timeout
        while data := self.port.read(max(1, self.port.in_waiting)):
            self.stats.bytes_received += len(data)
            for frame in deframer.feed(data):
                self.stats.frames_received += 1
                try:
                    reply = Reply.decode(frame)
                except FrameError:
                    self.stats.crc_errors += 1
                    resend = resend or "garbled replies"
                    continue
                if reply.status in _LINK_ERRORS:  # its seq/cmd may be damaged: ours or not, resend
                    self.stats.link_errors += 1
                    resend = resend or "link errors"
                elif (reply.seq, reply.cmd) == (seq, cmd):
                    return reply
                else:
                    self.stats.stale_replies += 1
            if resend and not self.port.in_waiting:
                return resend
            if time.monotonic() > deadline:
                break
        self.stats.timeouts += 1
        return "timeouts"

    @contextmanager
    def _timeout(self, seconds: float):
        """Set the port's timeout for one request (only when it changes: a serial port
        reconfigures the device on every change)."""
        previous = self.port.timeout
        if seconds != previous:
            self.port.timeout = seconds
        try:
            yield
        finally:
            if self.port.timeout != previous:
                self.port.timeout = previous


def _name(cmd: int) -> str:
    return Command(cmd).name if cmd in Command._value2member_map_ else f"command 0x{cmd:02x}"
