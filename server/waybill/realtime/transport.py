"""How bytes reach a WebSocket client: frames, writes that never wait, reading in place.

A frame is encoded once and the same bytes go to every socket (no compression, no masking).
A write goes out with a non-blocking ``send``; whatever the kernel does not take waits in a
small per-socket buffer drained by a short-lived writer, and a socket whose buffer overflows
is closed with :data:`CLOSE_RECONNECT` so that it reconnects and resumes.

This is the one module that reaches into flask-sock, simple-websocket, wsproto and gevent
beyond their documented use; their versions are pinned in ``pyproject.toml`` and
``tests/test_realtime_internals.py`` fails when what is relied on here changes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from flask import Flask
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import ProtocolError

#: Sent when a socket fell too far behind: "reconnect and resume from your last cursor".
CLOSE_RECONNECT = 1013
#: Sent on shutdown (SIGTERM): "going away, reconnect (elsewhere) and resume".
CLOSE_GOING_AWAY = 1001
#: No session cookie, a session that is over, or a cookie from another site's page.
CLOSE_UNAUTHORIZED = 4401
#: ``?track=`` with a token that matches no order.
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_BIG = 1009

PING_FRAME = b"\x89\x00"
MAX_INCOMING = 4096  # a resume message is ~40 bytes


# --- frames ---------------------------------------------------------------------------------


def text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed text frame: the same bytes suit every socket."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    payload = struct.pack("!H", code) + reason.encode()[:120]
    return bytes((0x88, len(payload))) + payload


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def hello_frame(cursor: int) -> bytes:
    return text_frame(json_bytes({"type": "hello", "cursor": cursor}))


def updated_frame(cursor: int, order: bytes) -> bytes:
    """An ``order.updated`` frame around an order already encoded once for every socket."""
    return text_frame(b'{"type":"order.updated","cursor":%d,"order":%s}' % (cursor, order))


# --- one socket -----------------------------------------------------------------------------


class Owner(Protocol):
    """What a connection needs from whoever keeps it."""

    lock: threading.RLock
    max_pending: int
    overflows: int

    def kill_later(self, conns: list[Any], grace: float | None = None) -> None: ...


class Connection:
    """One open socket's writing side and its bounded pending-write buffer.

    Every method is called with the owner's lock held, except :meth:`_drain` (its own writer).
    """

    __slots__ = (
        "owner",
        "sock",
        "raw",
        "pending",
        "pending_size",
        "partial",
        "draining",
        "closing",
        "closed",
        "alive",
    )

    def __init__(self, owner: Owner, sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock
        # gevent wraps the OS socket; writes go straight to it, flagged not to wait.
        self.raw: socket.socket = getattr(sock, "_sock", sock)
        self.pending: deque[bytes | memoryview] = deque()
        self.pending_size = 0
        self.partial = False  # the first pending chunk is the tail of a half-sent frame
        self.draining = False
        self.closing = False  # a close frame is queued: nothing else goes out
        self.closed = False
        self.alive = True  # heard from since the last ping

    def write(self, data: bytes) -> None:
        """Queue ``data`` after everything before it; never waits for the client."""
        if self.closed or self.closing:
            return
        if self.pending or self.draining:
            if self.pending_size + len(data) > self.owner.max_pending:
                self.owner.overflows += 1
                self.close(CLOSE_RECONNECT, "too far behind: reconnect and resume", drop=True)
                return
            self.pending.append(data)
            self.pending_size += len(data)
            return
        try:
            sent = self.raw.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.kill()
            return
        if sent < len(data):
            self.pending.append(memoryview(data)[sent:])
            self.pending_size += len(data) - sent
            self.partial = True
            self._start_drain()

    def close(self, code: int, reason: str, *, drop: bool = False, cut_off: bool = True) -> None:
        """Send a close frame after what is queued (or instead of it, when ``drop``)."""
        if self.closed or self.closing:
            return
        if drop and self.pending:
            # the chunk being written (or half written) must finish, or the stream breaks
            head = self.pending[0] if self.partial or self.draining else None
            self.pending.clear()
            self.pending_size = 0
            if head is not None:
                self.pending.append(head)
                self.pending_size = len(head)
        self.write(close_frame(code, reason))
        self.closing = True
        if cut_off:  # a client that does not read never takes the close frame
            self.owner.kill_later([self])

    def kill(self) -> None:
        """Drop the TCP connection; the reading greenlet then ends and unregisters."""
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        self.pending_size = 0
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _start_drain(self) -> None:
        if not self.draining:
            self.draining = True
            threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        """Write the pending chunks, waiting for the client only in this writer."""
        lock = self.owner.lock
        while True:
            with lock:
                if not self.pending or self.closed:
                    self.draining = False
                    return
                chunk = self.pending[0]
            try:
                sent = self.sock.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                with lock:
                    self.draining = False
                    self.kill()
                return
            with lock:
                if self.closed:
                    self.draining = False
                    return
                self.pending_size -= sent
                if sent == len(chunk):
                    self.pending.popleft()
                    self.partial = False
                else:
                    self.pending[0] = memoryview(chunk)[sent:]
                    self.partial = True


def read_frames(ws: Any, conn: Connection, on_text: Callable[[bytes], None]) -> None:
    """Read frames in this socket's own greenlet (no reader thread per socket) until it ends;
    each whole text message goes to ``on_text``."""
    wsconn, sock_ = ws.ws, ws.sock
    lock = conn.owner.lock
    incoming = bytearray()
    while not conn.closed:
        try:
            data = sock_.recv(4096)
        except OSError:
            return
        if not data:
            return
        conn.alive = True
        try:
            wsconn.receive_data(data)
            events = list(wsconn.events())
        except ProtocolError:
            return
        for event in events:
            if isinstance(event, (TextMessage, BytesMessage)):
                incoming += event.data if isinstance(event.data, bytes) else event.data.encode()
                if len(incoming) > MAX_INCOMING:
                    with lock:
                        conn.close(CLOSE_TOO_BIG, "message too big")
                    return
                if event.message_finished:
                    text = bytes(incoming)
                    incoming.clear()
                    if isinstance(event, TextMessage):
                        on_text(text)
            elif isinstance(event, Ping):
                try:
                    pong = wsconn.send(event.response())
                except ProtocolError:  # a close came in the same read: it is answered below
                    continue
                with lock:
                    conn.write(pong)
            elif isinstance(event, Pong):
                pass
            elif isinstance(event, CloseConnection):
                with lock:
                    if not conn.closing:
                        conn.write(close_frame(event.code or 1000))
                        conn.closing = True
                return


# --- flask-sock and simple-websocket --------------------------------------------------------


class NoReaderThread:
    """simple-websocket starts a reader thread per socket; the hub reads in the request's own
    greenlet instead (half the greenlets, no selector per socket)."""

    name = "ws"

    def __init__(self, target: Any = None, **_kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass


def configure(app: Flask) -> None:
    """Have flask-sock build its sockets without their reader thread."""
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"thread_class": NoReaderThread})


def without_compression(environ: dict[str, Any]) -> None:
    """Decline permessage-deflate, which would compress per socket: one encoded frame fits all.
    simple-websocket's handshake reads the client's offer from the WSGI environ."""
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)


def socket_of(ws: Any, *, send_buffer: int) -> socket.socket:
    """The TCP socket under a simple-websocket ``Server``, its kernel send buffer set."""
    sock: socket.socket = ws.sock
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    return sock


def closed_by_us(ws: Any) -> None:
    """The socket is closed already: flask-sock must not send a close frame of its own."""
    ws.connected = False


def refuse(ws: Any, code: int, reason: str) -> None:
    """Close a socket at once with ``code``, before anything else is sent on it."""
    with contextlib.suppress(OSError):
        ws.sock.sendall(close_frame(code, reason))
    closed_by_us(ws)
