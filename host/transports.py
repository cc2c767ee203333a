"""Byte transports between the host and a board, all behind pyserial's port interface.

The protocol client (host/client.py) talks to whatever it is given through the part of
pyserial's ``SerialBase`` interface listed in :class:`Transport`, so a real board, the simulated
board on a TCP port, the in-process golden model and a deliberately faulty line are
interchangeable and the client cannot tell them apart:

- :func:`open_serial`: pyserial's ``serial_for_url`` (``/dev/ttyUSB0``, ``socket://host:port``,
  ``loop://``), plus our ``serial:///dev/ttyUSB0?baud=3000000`` form.
- :class:`GoldenTransport`: the golden board model (firmware/board_model.py) in process.
- :class:`FaultyTransport`: wraps any of them and drops, corrupts and inserts bytes at seeded
  per-byte rates, to prove that retries recover every fault.
"""
from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import serial
from serial.urlhandler import protocol_socket

from echoboard.firmware.board_model import GoldenBoard

__all__ = ["Transport", "DEFAULT_BAUD", "open_serial", "SocketPort", "GoldenTransport", "Faults", "FaultyTransport"]

#: The boards' UART rate (firmware.link.DEFAULT_BAUD; repeated so the host need not import Amaranth).
DEFAULT_BAUD = 3_000_000


class Transport(Protocol):
    """What the client uses of a port: pyserial semantics.

    ``read(size)`` waits at most ``timeout`` seconds for ``size`` bytes and returns what came
    (``b""`` means nothing arrived in time); ``in_waiting`` is how many bytes can be read at once.
    """

    timeout: float | None

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...

    @property
    def in_waiting(self) -> int: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


def open_serial(url: str, *, timeout: float = 1.0, baudrate: int = DEFAULT_BAUD) -> serial.SerialBase:
    """A pyserial port for ``url``.

    ``serial://<device>?baud=<rate>`` names a local serial device with its rate (the form a
    Board URL uses); anything else goes to ``serial.serial_for_url`` as is (a device path,
    ``socket://127.0.0.1:PORT``, ``loop://``), with ``baudrate`` (ignored by sockets and loops).
    """
    parts = urlsplit(url)
    if parts.scheme == "serial":
        query, device = parse_qs(parts.query), parts.netloc + parts.path  # serial:///dev/ttyUSB0, serial://COM3
        if set(query) - {"baud"} or not device:
            raise ValueError(f"expected serial:///dev/<device>[?baud=<rate>], got {url!r}")
        if "baud" in query:
            rate = query["baud"][-1]
            if not rate.isdigit() or int(rate) == 0:
                raise ValueError(f"the baud rate must be a positive integer, got {rate!r} in {url!r}")
            baudrate = int(rate)
        url = device
    if parts.scheme == "socket":
        port = SocketPort(None, baudrate=baudrate, timeout=timeout)
        port.port = url
        port.open()
        return port
    return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)


class SocketPort(protocol_socket.Serial):
    """pyserial's ``socket://`` port with an ``in_waiting`` that counts the bytes waiting.

    pyserial's says 0 or 1 (a select), so the client's ``read(in_waiting)`` took a reply one
    byte per call: on the simulated board most of the host's time went into select calls. A
    non-blocking peek tells how many bytes the socket holds without taking them.
    """

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise serial.PortNotOpenError()
        try:
            return len(self._socket.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return 0


class GoldenTransport:
    """The golden board model behind the port interface, in process.

    A write runs the model on the bytes at once and queues its replies; a read takes from that
    queue and never waits: no byte can arrive later, so an empty queue already is the timeout
    (fault-injection runs therefore cost no waiting).
    """

    def __init__(self, board: GoldenBoard, timeout: float | None = 1.0):
        self.board, self.timeout = board, timeout
        self._replies = bytearray()
        self.is_open = True

    def write(self, data: bytes) -> int:
        self._check_open()
        self._replies += self.board.receive(bytes(data))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        self._check_open()
        data = bytes(self._replies[:size])
        del self._replies[:size]
        return data

    @property
    def in_waiting(self) -> int:
        return len(self._replies)

    def reset_input_buffer(self) -> None:
        self._replies.clear()

    def close(self) -> None:
        self.is_open = False

    def _check_open(self) -> None:
        if not self.is_open:
            raise serial.PortNotOpenError()


@dataclass(frozen=True)
class Faults:
    """Per-byte probabilities for one direction of a faulty line.

    ``drop``: the byte is lost; ``corrupt``: it is XORed with a random non-zero byte (which may
    make it a delimiter or remove one); ``insert``: a random garbage byte follows it.
    """

    drop: float = 0.0
    corrupt: float = 0.0
    insert: float = 0.0

    def __post_init__(self):
        if not all(0.0 <= rate <= 1.0 for rate in (self.drop, self.corrupt, self.insert)) \
                or self.drop + self.corrupt > 1.0:
            raise ValueError(f"fault rates must be probabilities with drop + corrupt <= 1, got {self}")


class FaultyTransport:
    """Wraps a transport and injects byte faults in both directions, reproducibly.

    ``to_board`` garbles what the host writes, ``from_board`` (default: the same rates) what it
    reads. Each direction has its own RNG seeded from ``seed``, so a run is repeatable. A read
    returns ``b""`` only when the wrapped transport did (a timeout), never because every byte
    read was dropped; it may return more than ``size`` bytes when garbage was inserted.
    ``injected`` counts the faults per direction and kind.
    """

    def __init__(self, inner: Transport, to_board: Faults, from_board: Faults | None = None, *, seed: int = 0):
        self.inner = inner
        self._faults = {"to_board": to_board, "from_board": to_board if from_board is None else from_board}
        self._rng = {direction: random.Random(f"{seed}:{direction}") for direction in self._faults}
        self.injected = {direction: {"dropped": 0, "corrupted": 0, "inserted": 0} for direction in self._faults}

    @property
    def timeout(self):
        return self.inner.timeout

    @timeout.setter
    def timeout(self, value):
        self.inner.timeout = value

    def write(self, data: bytes) -> int:
        self.inner.write(self._garble(bytes(data), "to_board"))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        while data := self.inner.read(size):
            if garbled := self._garble(data, "from_board"):
                return garbled
        return b""

    @property
    def in_waiting(self) -> int:
        return self.inner.in_waiting

    def reset_input_buffer(self) -> None:
        self.inner.reset_input_buffer()

    def close(self) -> None:
        self.inner.close()

    def _garble(self, data: bytes, direction: str) -> bytes:
        faults, rng, count = self._faults[direction], self._rng[direction], self.injected[direction]
        out = bytearray()
        for byte in data:
            r = rng.random()
            if r < faults.drop:
                count["dropped"] += 1
            else:
                if r < faults.drop + faults.corrupt:
                    byte ^= rng.randrange(1, 256)
                    count["corrupted"] += 1
                out.append(byte)
            if faults.insert and rng.random() < faults.insert:
                out.append(rng.randrange(256))
                count["inserted"] += 1
        return bytes(out)
