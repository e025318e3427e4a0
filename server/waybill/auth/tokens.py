"""Random tokens and how they are stored: only as hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random token of ``nbytes`` random bytes (32 bytes = 256 bits)."""
    return secrets.token_urlsafe(nbytes)


def digest(token: str) -> str:
    """The stored form of a high-entropy token: SHA-256, hex.

    Looking a row up by this digest leaks nothing useful through timing: an attacker can
    not steer which bytes of the digest match.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def keyed_digest(secret: str, *parts: str) -> str:
    """The stored form of a low-entropy secret (a 6-digit code): HMAC with the server key."""
    msg = "\x1f".join(parts).encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
