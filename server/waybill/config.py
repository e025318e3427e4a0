"""Settings, read from ``WAYBILL_*`` environment variables (and an optional ``.env``)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A setting has a value Waybill cannot use; the message says which and why."""


_DB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
_BROKER_SCHEMES = ("memory", "redis", "rediss")
_SMTP_SCHEMES = ("smtp", "smtps", "smtp+starttls")


@dataclass(frozen=True)
class Settings:
    instance_dir: Path = Path("instance")
    database_url: str = ""
    broker_url: str = "memory://"
    base_url: str = "http://127.0.0.1:8000"
    secret_key: str = ""
    vapid_private_key: str = ""
    vapid_subject: str = "mailto:operator@waybill.invalid"
    smtp_url: str = ""
    mail_from: str = "Waybill <no-reply@waybill.invalid>"
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    push_endpoint_hosts: tuple[str, ...] = ()
    run_worker: bool = True
    outbox_lease_seconds: int = 120  # a dead worker's claimed notifications wait this long
    proxy_hops: int = 0  # reverse proxies in front that set X-Forwarded-For/-Proto
    blocked_loop_warn_ms: int = 500  # a worker's event loop blocked this long is logged
    rate_limits: tuple[tuple[str, str], ...] = ()  # overrides, see waybill.security
    testing: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Read settings from the environment, validate them and fill the generated defaults."""
        env = dict(os.environ if environ is None else environ)
        if environ is None:
            _load_dotenv(env)
        instance_dir = Path(env.get("WAYBILL_INSTANCE_DIR", "instance")).resolve()
        hosts = tuple(
            h.strip() for h in env.get("WAYBILL_PUSH_ENDPOINT_HOSTS", "").split(",") if h.strip()
        )
        values: dict[str, object] = {
            "instance_dir": instance_dir,
            "database_url": env.get("WAYBILL_DATABASE_URL", ""),
            "broker_url": env.get("WAYBILL_BROKER_URL", "memory://"),
            "base_url": env.get("WAYBILL_BASE_URL", "http://127.0.0.1:8000").rstrip("/"),
            "secret_key": env.get("WAYBILL_SECRET_KEY", ""),
            "vapid_private_key": env.get("WAYBILL_VAPID_PRIVATE_KEY", ""),
            "vapid_subject": env.get("WAYBILL_VAPID_SUBJECT", "mailto:operator@waybill.invalid"),
            "smtp_url": env.get("WAYBILL_SMTP_URL", ""),
            "mail_from": env.get("WAYBILL_MAIL_FROM", "Waybill <no-reply@waybill.invalid>"),
            "oidc_issuer": env.get("WAYBILL_OIDC_ISSUER", ""),
            "oidc_client_id": env.get("WAYBILL_OIDC_CLIENT_ID", ""),
            "oidc_client_secret": env.get("WAYBILL_OIDC_CLIENT_SECRET", ""),
            "push_endpoint_hosts": hosts,
            "run_worker": env.get("WAYBILL_RUN_WORKER", "1") not in ("0", "false", "no"),
            "outbox_lease_seconds": _whole_number(
                "WAYBILL_OUTBOX_LEASE_SECONDS", env.get("WAYBILL_OUTBOX_LEASE_SECONDS", "120")
            ),
            "proxy_hops": _whole_number("WAYBILL_PROXY_HOPS", env.get("WAYBILL_PROXY_HOPS", "0")),
            "blocked_loop_warn_ms": _whole_number(
                "WAYBILL_BLOCKED_LOOP_WARN_MS", env.get("WAYBILL_BLOCKED_LOOP_WARN_MS", "500")
            ),
            "rate_limits": tuple(
                tuple(part.strip() for part in item.split("=", 1))  # type: ignore[misc]
                for item in env.get("WAYBILL_RATE_LIMITS", "").split(",")
                if "=" in item
            ),
        }
        values.update(overrides)
        return cls(**values).resolved()  # type: ignore[arg-type]

    def resolved(self) -> Settings:
        """Check every value and fill the defaults that live in the instance directory."""
        s = self
        if not s.database_url:
            s = replace(s, database_url=f"sqlite:///{s.instance_dir / 'waybill.db'}")
        _check_scheme("WAYBILL_DATABASE_URL", s.database_url, _DB_SCHEMES)
        _check_scheme("WAYBILL_BROKER_URL", s.broker_url, _BROKER_SCHEMES)
        _check_scheme("WAYBILL_BASE_URL", s.base_url, ("http", "https"))
        if not urlsplit(s.base_url).hostname:
            raise ConfigError(f"WAYBILL_BASE_URL has no host: {s.base_url!r}")
        if s.smtp_url:
            _check_scheme("WAYBILL_SMTP_URL", s.smtp_url, _SMTP_SCHEMES)
        if not s.vapid_subject.startswith(("mailto:", "https://")):
            raise ConfigError("WAYBILL_VAPID_SUBJECT must start with mailto: or https://")
        if bool(s.oidc_issuer) != bool(s.oidc_client_id):
            raise ConfigError("WAYBILL_OIDC_ISSUER and WAYBILL_OIDC_CLIENT_ID go together")
        for pattern in s.push_endpoint_hosts:
            host, _, port = pattern.rpartition(":")
            if not host or not (port == "*" or port.isdigit()):
                raise ConfigError(
                    f"WAYBILL_PUSH_ENDPOINT_HOSTS entry {pattern!r} is not host:port or host:*"
                )
        if not s.secret_key:
            s = replace(s, secret_key=_instance_secret(s.instance_dir, "secret_key"))
        return s

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _whole_number(name: str, value: str) -> int:
    if not value.strip().isdigit():
        raise ConfigError(f"{name}={value!r}: expected a whole number such as 0 or 1")
    return int(value)


def _check_scheme(name: str, url: str, allowed: tuple[str, ...]) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in allowed:
        raise ConfigError(
            f"{name}={url!r}: unknown scheme {scheme!r}; expected one of {', '.join(allowed)}"
        )


def _instance_secret(instance_dir: Path, name: str) -> str:
    """A secret generated once and kept in the instance directory (mode 0600)."""
    path = instance_dir / name
    if path.exists():
        return path.read_text().strip()
    instance_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def _load_dotenv(env: dict[str, str]) -> None:
    """Values from ``./.env`` fill in what the real environment leaves unset."""
    if not Path(".env").exists():
        return
    from dotenv import dotenv_values

    for key, value in dotenv_values(".env").items():
        if key.startswith("WAYBILL_") and value is not None:
            env.setdefault(key, value)
