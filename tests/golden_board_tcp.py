"""The golden board model serving its byte stream on a loopback TCP port, as the simulated board
does: lets host tests exercise the socket:// path without a Verilator build."""
import socket
import threading
from contextlib import contextmanager

from echoboard.firmware.board_model import GoldenBoard
from echoboard.firmware.protocol import CoreConfig


@contextmanager
def golden_on_tcp(config: CoreConfig):
    """Yields the socket:// URL of a GoldenBoard(config) that serves one client."""
    board = GoldenBoard(config)
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        connection, _ = server.accept()
        with connection:
            while data := connection.recv(65536):
                connection.sendall(board.receive(data))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"socket://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        thread.join(timeout=5)
