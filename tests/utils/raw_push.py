"""A loopback HTTP/1.1 receiver on plain sockets, for testing the Web Push transport's wire.

Unlike ``push_service.PushService`` (an ``http.server`` that always answers politely), this one
lets a test choose, per path or for every request, exactly how the reply is framed and what
happens to the connection afterwards:

* ``length``: a status line, headers, ``Content-Length`` and the body; the connection kept;
* ``chunked``: ``Transfer-Encoding: chunked``, a few chunks and the ``0\\r\\n\\r\\n`` terminator;
* ``close``: ``Connection: close`` and a ``Content-Length`` body, then the socket is closed;
* ``http10``: an ``HTTP/1.0`` reply without a length, delimited by closing the connection;
* ``stall``: the request is read and never answered (the socket is held until ``stop()``);
* ``reset``: the request is read, then the connection is reset (``SO_LINGER`` 0) unanswered.

``Answer(split=True)`` writes the head and the body in separate segments, 20 ms apart.

And per connection, to imitate a NAT or a load balancer that forgets idle connections:

* ``idle_drop_ms``: a kept-alive connection with no new request for that long is closed
  (a FIN, or a reset when ``drop_with_reset``) between two requests;
* ``reset_on_reuse``: when a further request arrives on a connection that has already served
  one, the connection is reset before a byte of it is read, as a peer that forgot the
  connection answers the client's next write. That request is counted in ``dropped``, not
  in ``received``.

Every request read is recorded (path, connection, request line, headers, body), so tests can
assert that a message was POSTed exactly once. Sockets have timeouts, threads are daemons and
``stop()`` closes everything.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    410: "Gone",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
FRAMINGS = ("length", "chunked", "close", "http10", "stall", "reset")
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


class Closed(Exception):
    """The peer closed the connection, the receiver stopped, or a deadline passed."""


class Reader:
    """Buffered reads of an HTTP/1.x message from a socket, with a deadline and a stop flag."""

    def __init__(self, sock: socket.socket, stop: threading.Event, timeout: float) -> None:
        self.sock, self.stop, self.timeout = sock, stop, timeout
        self.buf = bytearray()

    def _fill(self, deadline: float) -> None:
        while True:
            if self.stop.is_set():
                raise Closed("stopped")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Closed("timed out")
            try:
                ready, _, _ = select.select([self.sock], [], [], min(left, 0.1))
            except (OSError, ValueError) as exc:
                raise Closed(str(exc)) from None
            if not ready:
                continue
            try:
                data = self.sock.recv(65536)
            except (OSError, ValueError) as exc:
                raise Closed(str(exc)) from None
            if not data:
                raise Closed("eof")
            self.buf += data
            return

    def wait_readable(self, seconds: float) -> bool:
        """Whether bytes (or an EOF) arrive within ``seconds``; buffered bytes count."""
        if self.buf:
            return True
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                ready, _, _ = select.select([self.sock], [], [], min(left, 0.05))
            except (OSError, ValueError):
                return True
            if ready:
                return True
        return True

    def head(self) -> bytes:
        """Up to and including the blank line; leading blank lines are skipped."""
        deadline = time.monotonic() + self.timeout
        while True:
            while self.buf.startswith(b"\r\n"):
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                data = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return data
            if len(self.buf) > MAX_HEAD:
                raise Closed("head too long")
            self._fill(deadline)

    def exact(self, n: int) -> bytes:
        if n > MAX_BODY:
            raise Closed("body too long")
        deadline = time.monotonic() + self.timeout
        while len(self.buf) < n:
            self._fill(deadline)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def line(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                data = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return data
            if len(self.buf) > MAX_HEAD:
                raise Closed("line too long")
            self._fill(deadline)

    def chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self.line().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.line():  # trailers, up to the blank line
                    pass
                return bytes(body)
            body += self.exact(size)
            if self.line():
                raise Closed("no CRLF after a chunk")
            if len(body) > MAX_BODY:
                raise Closed("body too long")

    def until_eof(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        try:
            while len(self.buf) <= MAX_BODY:
                self._fill(deadline)
        except Closed as exc:
            if str(exc) != "eof":
                raise
        data = bytes(self.buf)
        self.buf.clear()
        return data


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The start line and the header fields, in order, names as sent."""
    lines = head.decode("latin-1").split("\r\n")
    fields = []
    for text in lines[1:]:
        if not text:
            continue
        name, _, value = text.partition(":")
        fields.append((name.strip(), value.strip()))
    return lines[0], fields


def header(fields: list[tuple[str, str]], name: str) -> str | None:
    for k, v in fields:
        if k.lower() == name.lower():
            return v
    return None


def read_body(reader: Reader, fields: list[tuple[str, str]]) -> bytes:
    """A request body: chunked or by ``Content-Length`` (none: empty)."""
    if "chunked" in (header(fields, "Transfer-Encoding") or "").lower():
        return reader.chunked()
    return reader.exact(int(header(fields, "Content-Length") or 0))


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: nothing buffered is delivered, the peer sees a reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def close_gracefully(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.close()


@dataclass(frozen=True)
class Answer:
    """How one request is answered."""

    status: int = 201
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    framing: str = "length"
    #: ``length``/``close``/``http10``: the head and each half of the body in its own write,
    #: 20 ms apart, as a server that flushes its headers before the body does.
    split: bool = False

    def __post_init__(self) -> None:
        if self.framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}")


@dataclass(frozen=True)
class Request:
    connection: int
    index: int  # position among the requests of its connection, from 0
    request_line: str
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    received_at: float


class RawPushReceiver:
    def __init__(
        self,
        default: Answer | None = None,
        *,
        idle_drop_ms: float | None = None,
        drop_with_reset: bool = False,
        reset_on_reuse: bool = False,
        keepalive: float = 10.0,
        io_timeout: float = 5.0,
        stall_seconds: float = 15.0,
    ) -> None:
        self.default = default or Answer()
        self.idle_drop_ms, self.drop_with_reset = idle_drop_ms, drop_with_reset
        self.reset_on_reuse = reset_on_reuse
        self.keepalive, self.io_timeout, self.stall_seconds = keepalive, io_timeout, stall_seconds
        self.per_path: dict[str, Answer] = {}
        self.next_answers: deque[Answer] = deque()
        self.requests: list[Request] = []
        self.dropped: list[tuple[int, str]] = []  # (connection, why) for requests never read
        self.connection_count = 0
        self.lock = threading.Condition()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.origin = f"http://127.0.0.1:{self.port}"

    # --- control ------------------------------------------------------------------------------

    def start(self) -> RawPushReceiver:
        t = threading.Thread(target=self._accept_loop, name="raw-push-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            socks = list(self._socks)
            self._socks.clear()
            self.lock.notify_all()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in list(self._threads):
            t.join(2)
        self.listener.close()

    def __enter__(self) -> RawPushReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return self.origin + path

    def answer(self, path: str, answer: Answer) -> None:
        """Answer every request for ``path`` so."""
        self.per_path[path] = answer

    # --- what was received --------------------------------------------------------------------

    def received(self, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.path == path)

    def per_path_counts(self) -> Counter[str]:
        with self.lock:
            return Counter(r.path for r in self.requests)

    def per_connection(self) -> dict[int, list[str]]:
        """Connection id -> the paths requested on it, in order."""
        out: dict[int, list[str]] = {}
        with self.lock:
            for r in self.requests:
                out.setdefault(r.connection, []).append(r.path)
        return out

    def requests_for(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Until at least ``count`` requests were read."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
        return True

    # --- the wire -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(self.io_timeout)
            with self.lock:
                if self._stop.is_set():
                    sock.close()
                    return
                conn = next(self._ids)
                self.connection_count += 1
                self._socks.add(sock)
            t = threading.Thread(
                target=self._serve, args=(conn, sock), name=f"raw-push-{conn}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _choose(self, path: str) -> Answer:
        with self.lock:
            if path in self.per_path:
                return self.per_path[path]
            if self.next_answers:
                return self.next_answers.popleft()
            return self.default

    def _forget(self, sock: socket.socket) -> bool:
        """Take the socket out of the live set; False if ``stop()`` already closed it."""
        with self.lock:
            if sock not in self._socks:
                return False
            self._socks.discard(sock)
            return True

    def _serve(self, conn: int, sock: socket.socket) -> None:
        reader = Reader(sock, self._stop, self.io_timeout)
        served = 0
        how = "close"
        try:
            while not self._stop.is_set():
                if served:
                    if self.idle_drop_ms is not None and not reader.wait_readable(
                        self.idle_drop_ms / 1000
                    ):
                        how = "reset" if self.drop_with_reset else "close"
                        return  # idle too long: forgotten, as a NAT forgets
                    if not reader.wait_readable(self.keepalive):
                        return
                    if self.reset_on_reuse:
                        if reader.buf or self._peek(sock):  # a request, not the client's FIN
                            with self.lock:
                                self.dropped.append((conn, "reset on reuse"))
                        how = "reset"
                        return
                head = reader.head()
                request_line, fields = parse_head(head)
                method, path, _version = (request_line.split(" ", 2) + ["", ""])[:3]
                body = read_body(reader, fields)
                with self.lock:
                    self.requests.append(
                        Request(
                            conn,
                            served,
                            request_line,
                            method,
                            path,
                            {k.lower(): v for k, v in fields},
                            body,
                            time.time(),
                        )
                    )
                    self.lock.notify_all()
                served += 1
                answer = self._choose(path)
                if answer.framing == "stall":
                    self._stop.wait(self.stall_seconds)
                    return
                if answer.framing == "reset":
                    how = "reset"
                    return
                keep = self._reply(sock, answer)
                if not keep:
                    return
        except (Closed, OSError, ValueError):
            return
        finally:
            if self._forget(sock):
                if how == "reset":
                    reset(sock)
                else:
                    close_gracefully(sock)

    @staticmethod
    def _peek(sock: socket.socket) -> bool:
        try:
            return bool(sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def _reply(self, sock: socket.socket, a: Answer) -> bool:
        """Send the answer; whether the connection stays open."""
        reason = REASONS.get(a.status, "Whatever")
        version = "HTTP/1.0" if a.framing == "http10" else "HTTP/1.1"
        lines = [f"{version} {a.status} {reason}"]
        lines += [f"{k}: {v}" for k, v in a.headers.items()]
        if a.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        elif a.framing in ("length", "close"):
            lines.append(f"Content-Length: {len(a.body)}")
        if a.framing == "close":
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if a.framing == "chunked":
            sock.sendall(head)
            step = max(1, -(-len(a.body) // 3))  # about three chunks
            for i in range(0, len(a.body), step):
                piece = a.body[i : i + step]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.002)  # separate segments, as a streaming server sends them
            sock.sendall(b"0\r\n\r\n")
            return True
        if a.split:
            half = len(a.body) // 2
            for piece in (head, a.body[:half], a.body[half:]):
                sock.sendall(piece)
                time.sleep(0.02)
        else:
            sock.sendall(head + a.body)
        return a.framing == "length"
