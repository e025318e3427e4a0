"""The server's Web Push identity (RFC 8292): one P-256 key pair, and the base64url encoding
every Web Push key and header is written in.

The key comes from ``WAYBILL_VAPID_PRIVATE_KEY`` or is made once into the instance directory;
a browser subscribed with its public key hears only a sender holding the private one.
"""

from __future__ import annotations

import base64
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from waybill.config import ConfigError, Settings, private_dir, write_private

KEY_FILE = "vapid_private_key.pem"
#: Beside it: the keys ``waybill rotate-vapid --new`` replaced, newest first, one per line
#: (base64url of the raw scalar).
OLD_KEYS_FILE = "old_vapid_private_keys"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class VapidKeys:
    private_key: ec.EllipticCurvePrivateKey

    @functools.cached_property  # asked for every message sent: computed once
    def public_key(self) -> str:
        """The application server key the browser subscribes with (uncompressed point)."""
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(raw)

    @property
    def raw_private_key(self) -> str:
        """The private key as ``WAYBILL_VAPID_PRIVATE_KEY`` takes it: base64url of the scalar."""
        return b64url(self.private_key.private_numbers().private_value.to_bytes(32, "big"))


def parse_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key given as PEM or as base64url of the raw 32-byte scalar."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = b64url_decode(text)
            if len(raw) != 32:
                raise ValueError("not 32 bytes")
            key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise ConfigError(f"WAYBILL_VAPID_PRIVATE_KEY is not a P-256 private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError("WAYBILL_VAPID_PRIVATE_KEY must be a P-256 (prime256v1) key")
    return key


def load_vapid(settings: Settings, *, create: bool = True) -> VapidKeys:
    """The VAPID key pair: from the environment, else the instance dir (made once if missing)."""
    if settings.vapid_private_key:
        return VapidKeys(parse_private_key(settings.vapid_private_key))
    path = Path(settings.instance_dir) / KEY_FILE
    if not path.exists():
        if not create:
            raise ConfigError("no VAPID key: set WAYBILL_VAPID_PRIVATE_KEY or run `waybill init`")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        private_dir(path.parent)
        # Written whole under another name, then linked into place: a worker starting beside
        # this one sees no key or the whole key, never a half-written file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            return VapidKeys(key)
        finally:
            tmp.unlink(missing_ok=True)
    return VapidKeys(parse_private_key(path.read_text()))


def load_old_vapid(settings: Settings) -> tuple[VapidKeys, ...]:
    """The VAPID keys the current one replaced (``WAYBILL_OLD_VAPID_PRIVATE_KEYS`` and the
    instance directory's ``old_vapid_private_keys``): devices subscribed with one of them are
    still signed for with it, until they subscribe again with the current key."""
    texts = list(settings.old_vapid_private_keys)
    path = Path(settings.instance_dir) / OLD_KEYS_FILE
    if path.exists():
        texts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    keys: dict[str, VapidKeys] = {}
    for text in texts:
        key = VapidKeys(parse_private_key(text))
        keys.setdefault(key.public_key, key)
    return tuple(keys.values())


def replace_instance_key(settings: Settings) -> VapidKeys:
    """A new VAPID key in the instance directory; the one it replaces goes first among the old
    keys there. :class:`ConfigError` when the key is given by ``WAYBILL_VAPID_PRIVATE_KEY``."""
    if settings.vapid_private_key:
        raise ConfigError(
            "the VAPID key is given by WAYBILL_VAPID_PRIVATE_KEY, not kept in the instance "
            "directory: set it to a new key and put the old one first in "
            "WAYBILL_OLD_VAPID_PRIVATE_KEYS, then restart every process"
        )
    current = load_vapid(settings)
    directory = Path(settings.instance_dir)
    old = [current.raw_private_key, *(k.raw_private_key for k in load_old_vapid(settings))]
    write_private(directory / OLD_KEYS_FILE, "\n".join(dict.fromkeys(old)) + "\n")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(directory / KEY_FILE, pem.decode())
    return VapidKeys(key)
