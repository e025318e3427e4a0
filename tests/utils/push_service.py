"""A loopback Web Push service that behaves like FCM or autopush towards the application server.

It hands out subscriptions the way a browser does (a P-256 key pair and a 16-byte auth secret
per subscription), checks every request's VAPID JWT (ES256, ``aud``, ``exp`` at most 24 h
ahead, ``sub``) against the server's public key, decrypts the ``aes128gcm`` body with
``http_ece`` and keeps what it received. Tests choose the answers: 201, 404, 410, 429 with
``Retry-After`` or 5xx.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class BrowserSubscription:
    """What ``pushManager.subscribe()`` gives a page, plus the browser's private half."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    # the applicationServerKey it was made with: only messages signed by it are taken (FCM
    # answers 403 otherwise); None: the service's expected_key, if any
    server_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)},
        }


@dataclass
class Delivery:
    subscription_id: str
    headers: dict[str, str]
    payload: dict[str, Any]
    claims: dict[str, Any]
    received_at: float = field(default_factory=time.time)


class PushService:
    def __init__(
        self, *, decrypt: bool = True, delay: float = 0.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.decrypt, self.delay = decrypt, delay
        self.expected_key: str | None = None
        self.subscriptions: dict[str, BrowserSubscription] = {}
        self.deliveries: list[Delivery] = []
        self.attempts: list[tuple[str, int]] = []  # (subscription id, status answered)
        self.errors: list[str] = []  # requests that failed verification
        self.answers: deque[tuple[int, dict[str, str]]] = deque()  # next answers, in order
        self.per_subscription: dict[str, tuple[int, dict[str, str]]] = {}
        self.default_answer: tuple[int, dict[str, str]] = (201, {})
        self.drop_idle = False
        self.lock = threading.Condition()
        self._ids = itertools.count(1)
        self.count = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, headers = service.handle(self.path, dict(self.headers.items()), body)
                if service.delay:
                    time.sleep(service.delay)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if service.drop_idle:  # as an idle timeout does: no notice, just gone
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 256
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        if tls is not None:  # a push service over https, as the real ones are
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.origin = f"https://localhost:{self.port}"
        self._thread: threading.Thread | None = None

    # --- control ------------------------------------------------------------------------------

    def start(self) -> PushService:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def subscribe(self, server_key: str | None = None) -> BrowserSubscription:
        sid = f"s{next(self._ids)}"
        sub = BrowserSubscription(
            sid,
            f"{self.origin}/push/{sid}",
            ec.generate_private_key(ec.SECP256R1()),
            os.urandom(16),
            server_key,
        )
        self.subscriptions[sid] = sub
        return sub

    def answer_next(self, status: int, times: int = 1, **headers: str) -> None:
        for _ in range(times):
            self.answers.append((status, {k.replace("_", "-"): v for k, v in headers.items()}))

    def answer_always(self, status: int, **headers: str) -> None:
        self.default_answer = (status, {k.replace("_", "-"): v for k, v in headers.items()})

    def for_subscription(self, sub: BrowserSubscription, status: int) -> None:
        self.per_subscription[sub.id] = (status, {})

    def delivered_to(self, sub: BrowserSubscription) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.subscription_id == sub.id]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
        return True

    # --- one request --------------------------------------------------------------------------

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        headers = {k.lower(): v for k, v in headers.items()}
        sid = path.rsplit("/", 1)[-1]
        sub = self.subscriptions.get(sid)
        if sub is None:
            return self._done(sid, 404, {})
        try:
            claims = self.verify_vapid(headers.get("authorization", ""), sub.server_key)
            for name in ("ttl", "urgency", "topic"):
                if name not in headers:
                    raise ValueError(f"no {name} header")
            if headers.get("content-encoding") != "aes128gcm":
                raise ValueError("content-encoding is not aes128gcm")
            if len(body) > 4096:
                return self._done(sid, 413, {})
            payload: dict[str, Any] = {}
            if self.decrypt:
                plain = http_ece.decrypt(
                    body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
                )
                payload = json.loads(plain)
        except Exception as exc:
            with self.lock:
                self.errors.append(f"{exc.__class__.__name__}: {exc}")
                self.lock.notify_all()
            return self._done(sid, 400 if "header" in str(exc) else 403, {})
        with self.lock:
            if sid in self.per_subscription:
                status, extra = self.per_subscription[sid]
            elif self.answers:
                status, extra = self.answers.popleft()
            else:
                status, extra = self.default_answer
            if 200 <= status < 300:
                self.deliveries.append(Delivery(sid, headers, payload, claims))
        return self._done(sid, status, extra)

    def _done(self, sid: str, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.attempts.append((sid, status))
            self.count += 1
            self.lock.notify_all()
        return status, headers

    def verify_vapid(
        self, authorization: str, subscribed_with: str | None = None
    ) -> dict[str, Any]:
        """RFC 8292: ``vapid t=<JWT>, k=<public key>``; the JWT signed ES256 by that key, which
        must be the key the subscription was made with."""
        scheme, _, params = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError("authorization is not vapid")
        fields = dict(p.strip().split("=", 1) for p in params.split(","))
        token, key = fields["t"], fields["k"]
        expected = subscribed_with or self.expected_key
        if expected is not None and key != expected:
            raise ValueError("k is not the key the subscription was made with")
        header_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(unb64url(header_b64))
        if header.get("alg") != "ES256":
            raise ValueError("JWT alg is not ES256")
        sig = unb64url(sig_b64)
        if len(sig) != 64:
            raise ValueError("ES256 signature is not 64 bytes")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ValueError("bad JWT signature") from None
        claims = json.loads(unb64url(claims_b64))
        now = time.time()
        if claims.get("aud") != self.origin:
            raise ValueError(f"aud {claims.get('aud')!r} is not {self.origin}")
        if not now < int(claims.get("exp", 0)) <= now + 24 * 3600:
            raise ValueError("exp is not within 24 hours")
        if not str(claims.get("sub", "")).startswith(("mailto:", "https://")):
            raise ValueError("sub is not mailto: or https:")
        return claims


def self_signed_tls(tmp: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for ``localhost`` and a client context that trusts only it."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "push-cert.pem", tmp / "push-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client
