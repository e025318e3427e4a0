"""What the live transport relies on in flask-sock, simple-websocket, wsproto and gevent beyond
their documented use (``waybill/realtime/transport.py``), checked against the installed versions:
an upgrade that changes any of it fails here, not in production."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import tomllib
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import wsproto
from flask import Flask, request
from flask_sock import Sock
from packaging.requirements import Requirement
from simple_websocket import Server
from wsproto.connection import ConnectionState

from waybill.realtime import transport

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
REACHED_INTO = ("flask-sock", "simple-websocket", "wsproto", "gevent")
UPGRADE = "change realtime/transport.py to match, then move the pin in pyproject.toml"


def test_the_libraries_reached_into_are_pinned_and_installed_within_the_pins() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = {r.name: r.specifier for r in map(Requirement, declared)}
    for name in REACHED_INTO:
        assert name in pins, f"{name} is not a dependency in pyproject.toml: pin it"
        assert any(s.operator == "<" for s in pins[name]), f"{name} needs an upper bound"
        installed = version(name)
        assert pins[name].contains(installed), (
            f"{name} {installed} is installed but pyproject.toml pins {pins[name]}: "
            f"if this file passes with it, {UPGRADE}"
        )


# --- simple-websocket and flask-sock --------------------------------------------------------

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _upgrade_environ(sock: socket.socket) -> dict[str, Any]:
    return {
        "werkzeug.socket": sock,
        "HTTP_HOST": "localhost",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate; client_max_window_bits",
    }


def _received(sock: socket.socket) -> bytes:
    """Everything the peer has written so far (it writes before we read, in these tests)."""
    sock.setblocking(False)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def _masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client's frame: clients must mask theirs."""
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + mask + body


def _server_options() -> dict[str, Any]:
    app = Flask(__name__)
    transport.configure(app)
    return dict(app.config["SOCK_SERVER_OPTIONS"])


@pytest.mark.parametrize("offered", [True, False])
def test_simple_websocket_takes_our_reader_keeps_the_socket_and_reads_the_offer_from_environ(
    offered: bool,
) -> None:
    ours, client = socket.socketpair()
    try:
        environ = _upgrade_environ(ours)
        if not offered:
            transport.without_compression(environ)
        threads = threading.active_count()
        ws = Server(environ, **_server_options())
        answer = _received(client)
        assert answer.startswith(b"HTTP/1.1 101"), answer
        assert isinstance(ws.thread, transport.NoReaderThread), (
            f"simple-websocket no longer takes thread_class for its reader: {UPGRADE}"
        )
        assert threading.active_count() == threads, "a reader thread was started anyway"
        assert ws.connected is True
        assert ws.sock is ours, f"simple-websocket's Server.sock is not the TCP socket: {UPGRADE}"
        assert isinstance(ws.ws, wsproto.WSConnection), (
            f"simple-websocket's Server.ws is not a wsproto connection: {UPGRADE}"
        )
        assert ws.ws.state is ConnectionState.OPEN
        # without the environ's offer no compression: one encoded frame suits every socket
        assert (b"permessage-deflate" in answer.lower()) is offered, (
            f"simple-websocket no longer negotiates compression from the environ: {UPGRADE}"
        )
    finally:
        ours.close()
        client.close()


def _accepted(ours: socket.socket, client: socket.socket) -> tuple[Any, Any]:
    """A socket upgraded by simple-websocket, without compression, and our connection on it."""
    environ = _upgrade_environ(ours)
    transport.without_compression(environ)
    ws = Server(environ, **_server_options())
    _received(client)
    owner = SimpleNamespace(
        lock=threading.RLock(), max_pending=1 << 16, overflows=0, kill_later=lambda *a: None
    )
    return ws, transport.Connection(owner, transport.socket_of(ws, send_buffer=1 << 16))


def test_frames_are_read_through_simple_websockets_wsproto_connection() -> None:
    ours, client = socket.socketpair()
    try:
        ws, conn = _accepted(ours, client)
        conn.write(transport.hello_frame(7))
        texts: list[bytes] = []
        reader = threading.Thread(target=transport.read_frames, args=(ws, conn, texts.append))
        reader.start()
        client.setblocking(True)
        client.settimeout(5)
        client.sendall(
            _masked(0x1, b'{"type":"resume",', fin=False)  # a text message in two fragments
            + _masked(0x0, b'"cursor":7}')
            + _masked(0x9, b"hi")  # ping
        )
        expected = transport.hello_frame(7) + b"\x8a\x02hi"  # hello, then the pong
        got = b""
        while len(got) < len(expected):
            got += client.recv(65536)
        assert got == expected
        client.sendall(_masked(0x8, b"\x03\xe8"))  # close, 1000
        reader.join(timeout=5)
        assert not reader.is_alive()
        assert texts == [b'{"type":"resume","cursor":7}']
        assert _received(client) == transport.close_frame(1000)
        assert conn.closing
    finally:
        ours.close()
        client.close()


@pytest.mark.parametrize("ours_closed", [True, False])
def test_flask_sock_builds_the_server_from_config_and_sends_no_close_frame_after_ours(
    ours_closed: bool,
) -> None:
    app = Flask(__name__)
    transport.configure(app)
    sock = Sock(app)
    seen: dict[str, Any] = {}

    @app.before_request
    def _no_compression() -> None:
        transport.without_compression(request.environ)

    @sock.route("/ws")
    def ws_route(ws: Any) -> None:
        seen["ws"] = ws
        if ours_closed:
            transport.refuse(ws, 4404, "no such order")

    ours, client = socket.socketpair()
    try:
        with app.test_request_context("/ws", environ_overrides=_upgrade_environ(ours)):
            app.full_dispatch_request()
        answer = _received(client)
        head, _, frames = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and b"deflate" not in head.lower()
        assert isinstance(seen["ws"].thread, transport.NoReaderThread), (
            f"flask-sock no longer builds its Server from SOCK_SERVER_OPTIONS: {UPGRADE}"
        )
        if ours_closed:
            assert frames == transport.close_frame(4404, "no such order"), (
                f"flask-sock sent a frame after the handler marked the socket closed: {UPGRADE}"
            )
        else:  # the control: without closed_by_us, flask-sock closes it itself
            assert frames.startswith(b"\x88"), frames
    finally:
        ours.close()
        client.close()


# --- gevent ---------------------------------------------------------------------------------

# In a process of its own: a gevent hub in the test process would stay for every later test.
GEVENT_PROBE = """
import _socket, json, socket
import gevent.socket
from waybill.realtime.transport import Connection

ours, peer = gevent.socket.socketpair()
raw = getattr(ours, "_sock", None)
found = {
    "raw_is_os_socket": isinstance(raw, _socket.socket) and not isinstance(raw, type(ours)),
    "same_fd": raw is not None and raw.fileno() == ours.fileno(),
    "non_blocking": raw is not None and raw.gettimeout() == 0.0,
    "connection_writes_to_it": Connection(None, ours).raw is raw,
    "plain_socket_has_none": not hasattr(socket.socket(), "_sock"),
}
full = False
if raw is not None:
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        for _ in range(100_000):
            raw.send(b"x" * 65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        full = True
found["full_buffer_raises_at_once"] = full
print(json.dumps(found))
"""


def test_gevent_sockets_keep_a_non_blocking_os_socket_to_write_to_without_waiting() -> None:
    run = subprocess.run(
        [sys.executable, "-c", GEVENT_PROBE], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    broken = [what for what, ok in found.items() if not ok]
    assert not broken, (
        f"gevent's socket changed: {broken}; Connection.raw (the OS socket under gevent's, "
        f"written with MSG_DONTWAIT) no longer holds: {UPGRADE}"
    )


def test_a_ping_and_a_close_in_one_read_end_the_socket_cleanly() -> None:
    ours, client = socket.socketpair()
    try:
        ws, conn = _accepted(ours, client)
        failures: list[BaseException] = []

        def read() -> None:
            try:
                transport.read_frames(ws, conn, lambda _text: None)
            except BaseException as exc:  # what would escape into flask-sock
                failures.append(exc)

        reader = threading.Thread(target=read)
        client.sendall(_masked(0x9, b"hi") + _masked(0x8, b"\x03\xe8"))  # ping, close: one read
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive()
        assert failures == []
        assert _received(client) == transport.close_frame(1000)
    finally:
        ours.close()
        client.close()
