"""A loopback forward HTTP proxy, as ``HTTP_PROXY`` would name: absolute-URI requests in.

A client sends ``POST http://127.0.0.1:PORT/path HTTP/1.1``; the proxy records that request
line, opens a connection to the target (one per request, ``Connection: close``), sends the
request in origin form and relays the answer with a ``Content-Length`` body, keeping the
client's connection alive. Anything else (``CONNECT``, a path without a scheme and host, a
target that cannot be reached) gets an error answer and is recorded too. Threads are daemons,
sockets have timeouts, ``stop()`` closes everything.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

from tests.utils.raw_push import (
    REASONS,
    Closed,
    Reader,
    close_gracefully,
    header,
    parse_head,
    read_body,
)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class ForwardProxy:
    def __init__(self, *, io_timeout: float = 5.0, keepalive: float = 10.0) -> None:
        self.io_timeout, self.keepalive = io_timeout, keepalive
        self.request_lines: list[str] = []  # every request line received, in order
        self.relayed: list[tuple[str, int]] = []  # (request line, upstream status) relayed
        self.connection_count = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> ForwardProxy:
        t = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            socks = list(self._socks)
            self._socks.clear()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in list(self._threads):
            t.join(2)
        self.listener.close()

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, sock: socket.socket) -> bool:
        with self.lock:
            if self._stop.is_set():
                return False
            self._socks.add(sock)
            return True

    def _forget(self, sock: socket.socket) -> None:
        with self.lock:
            live = sock in self._socks
            self._socks.discard(sock)
        if live:
            close_gracefully(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(self.io_timeout)
            if not self._track(sock):
                sock.close()
                return
            with self.lock:
                self.connection_count += 1
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        reader = Reader(sock, self._stop, self.io_timeout)
        try:
            while not self._stop.is_set():
                if not reader.wait_readable(self.keepalive):
                    return
                request_line, fields = parse_head(reader.head())
                body = read_body(reader, fields)
                with self.lock:
                    self.request_lines.append(request_line)
                status, out_fields, out_body = self._forward(request_line, fields, body)
                if status != 502:
                    with self.lock:
                        self.relayed.append((request_line, status))
                lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Whatever')}"]
                lines += [f"{k}: {v}" for k, v in out_fields if k.lower() not in HOP_BY_HOP]
                lines.append(f"Content-Length: {len(out_body)}")
                close = header(fields, "Proxy-Connection") or header(fields, "Connection") or ""
                if close.lower() == "close":
                    lines.append("Connection: close")
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + out_body)
                if close.lower() == "close":
                    return
        except (Closed, OSError, ValueError):
            return
        finally:
            self._forget(sock)

    def _forward(
        self, request_line: str, fields: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        method, target, _ = (request_line.split(" ", 2) + ["", ""])[:3]
        url = urlsplit(target)
        if method == "CONNECT" or url.scheme != "http" or not url.hostname:
            return 400, [], b"absolute http:// URIs only\n"
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}"]
        lines += [f"{k}: {v}" for k, v in fields if k.lower() not in HOP_BY_HOP | {"host"}]
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
        try:
            up = socket.create_connection((url.hostname, url.port or 80), timeout=self.io_timeout)
        except OSError:
            return 502, [], b"upstream unreachable\n"
        if not self._track(up):
            up.close()
            return 502, [], b"stopping\n"
        try:
            up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            upstream = Reader(up, self._stop, self.io_timeout)
            status_line, out_fields = parse_head(upstream.head())
            status = int(status_line.split(" ", 2)[1])
            te = (header(out_fields, "Transfer-Encoding") or "").lower()
            length = header(out_fields, "Content-Length")
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                out_body = b""
            elif "chunked" in te:
                out_body = upstream.chunked()
            elif length is not None:
                out_body = upstream.exact(int(length))
            else:
                out_body = upstream.until_eof()
            return status, out_fields, out_body
        except (Closed, OSError, ValueError, IndexError):
            return 502, [], b"bad upstream answer\n"
        finally:
            self._forget(up)
