"""Settings, read from ``WAYBILL_*`` environment variables (and an optional ``.env``).

``Settings`` is a pydantic-settings model: every value is typed and checked when the object is
made, and a bad value is a :class:`ConfigError` with one line per bad variable.

There are two ways to get one, and only the first reads the environment:

* ``Settings.from_env(environ=None, **overrides)`` reads every ``WAYBILL_<FIELD>`` variable from
  ``environ`` (by default the process environment, with ``./.env`` filling in what the real
  environment leaves unset), applies ``overrides`` on top, validates and resolves the result.
* ``Settings(**values)`` uses the keyword values and the defaults, nothing else: a ``WAYBILL_*``
  variable in the process environment or a ``.env`` file never leaks into settings built in code
  (the tests build theirs that way). Call ``.resolved()`` to fill the generated defaults.

The environment is read by ``from_env`` itself, into a dict of raw strings, and not by
pydantic-settings' own sources (``settings_customise_sources`` keeps only the keyword values):
that keeps lookups case-sensitive, an explicit ``environ`` mapping usable, unrelated
``WAYBILL_*`` variables (``WAYBILL_TEST_POSTGRES_URL``) harmless, and lists in their plain
comma-separated form rather than JSON. The field validators accept both a variable's text and
the typed value, so both ways share one set of checks.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(Exception):
    """A setting has a value Waybill cannot use; the message says which and why."""


_DB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
_BROKER_SCHEMES = ("memory", "redis", "rediss")
_SMTP_SCHEMES = ("smtp", "smtps", "smtp+starttls")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WAYBILL_",
        frozen=True,
        extra="forbid",
        validate_default=True,
    )
    # read by from_env only; not in model_config, where every Settings(...) would open it
    dotenv_path: ClassVar[str] = ".env"
    # set in code only, never from a variable (a stray WAYBILL_TESTING must not weaken a server)
    _not_from_env: ClassVar[frozenset[str]] = frozenset({"testing", "extra"})

    instance_dir: Path = Path("instance")
    database_url: str = ""  # empty: sqlite:///<instance_dir>/waybill.db, filled by resolved()
    broker_url: str = "memory://"
    base_url: str = "http://127.0.0.1:8000"
    secret_key: str = Field("", repr=False)  # empty: generated into the instance dir
    # keys secret_key replaced, still accepted for opening and verifying (a Keyring, below)
    old_secret_keys: tuple[str, ...] = Field((), repr=False)
    vapid_private_key: str = Field("", repr=False)
    # VAPID keys it replaced: devices still subscribed with one are signed for with it
    old_vapid_private_keys: tuple[str, ...] = Field((), repr=False)
    vapid_subject: str = "mailto:operator@waybill.invalid"
    smtp_url: str = ""
    mail_from: str = "Waybill <no-reply@waybill.invalid>"
    aftership_api_url: str = ""  # empty: AfterShip's own Tracking API (tests point it elsewhere)
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = Field("", repr=False)
    push_endpoint_hosts: tuple[str, ...] = ()  # WAYBILL_PUSH_ENDPOINT_HOSTS=host:port,host:*
    webhook_endpoint_hosts: tuple[str, ...] = ()  # the same, for merchants' webhook URLs
    run_worker: bool = True
    outbox_lease_seconds: int = 120  # a dead worker's claimed notifications wait this long
    proxy_hops: int = 0  # reverse proxies in front that set X-Forwarded-For/-Proto
    blocked_loop_warn_ms: int = 500  # a worker's event loop blocked this long is logged
    # overrides, see waybill.security; WAYBILL_RATE_LIMITS=name=5/hour,name=20/minute
    rate_limits: tuple[tuple[str, str], ...] = ()
    testing: bool = False
    extra: dict[str, object] = Field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(type(self).model_fields)
        if unknown:  # a programming error, as with a dataclass
            raise TypeError(
                f"Settings got unexpected keyword arguments: {', '.join(sorted(unknown))}"
            )
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the keyword values: the environment is read by :meth:`from_env` alone."""
        return (init_settings,)

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of a field: ``base_url`` -> ``WAYBILL_BASE_URL``."""
        return f"{cls.model_config.get('env_prefix', '')}{field.upper()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read settings from the environment, validate them and fill the generated defaults.

        ``environ`` replaces the process environment (and then ``.env`` is not read);
        ``overrides`` are field values that win over both.
        """
        env = dict(os.environ if environ is None else environ)
        if environ is None:
            _load_dotenv(env, cls.dotenv_path)
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if name not in cls._not_from_env and cls.variable(name) in env:
                values[name] = env[cls.variable(name)]
        values["instance_dir"] = Path(values.get("instance_dir", "instance")).resolve()
        values.update(overrides)
        return cls(**values).resolved()

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some values changed, checked like a new ``Settings(...)``."""
        current = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**{**current, **changes})

    def resolved(self) -> Settings:
        """Fill the defaults that live in the instance directory (values are checked already)."""
        s = self
        if not s.database_url:
            s = s.with_overrides(database_url=f"sqlite:///{s.instance_dir / 'waybill.db'}")
        if not s.secret_key:
            s = s.with_overrides(
                secret_key=_instance_secret(s.instance_dir, "secret_key"),
                old_secret_keys=(*s.old_secret_keys, *instance_old_keys(s.instance_dir)),
            )
        return s

    def model_post_init(self, context: Any, /) -> None:
        """``secret_key`` is a :class:`Keyring`: the current key, which
        also carries ``old_secret_keys`` to wherever it is passed for opening and verifying."""
        object.__setattr__(self, "secret_key", Keyring(self.secret_key, self.old_secret_keys))

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    # --- parsing: each accepts a variable's text or the typed value -------------------------

    @field_validator("run_worker", "testing", mode="before")
    @classmethod
    def _boolean(cls, value: object) -> object:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        word = value.strip().lower() if isinstance(value, str) else None
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError("expected 1/0, true/false, yes/no or on/off")

    @field_validator("outbox_lease_seconds", "proxy_hops", "blocked_loop_warn_ms", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
            return int(value)
        raise ValueError("expected a whole number such as 0 or 1")

    @field_validator("old_secret_keys", "old_vapid_private_keys", mode="before")
    @classmethod
    def _key_list(cls, value: object) -> object:
        return _comma_list(value, "keys")

    @field_validator("push_endpoint_hosts", "webhook_endpoint_hosts", mode="before")
    @classmethod
    def _host_patterns(cls, value: object) -> object:
        hosts = _comma_list(value, "host:port patterns")
        bad = []
        for pattern in hosts:
            host, _, port = pattern.rpartition(":")
            if not host or not (port == "*" or port.isdigit()):
                bad.append(repr(pattern))
        if bad:
            raise ValueError(
                f"{_entries(bad)} not host:port or host:*; "
                "expected comma-separated host:port patterns such as 127.0.0.1:*"
            )
        return hosts

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _rate_limits(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return tuple((str(k), str(v)) for k, v in value.items())
        if not isinstance(value, str):
            return value
        pairs, bad = [], []
        for item in value.split(","):
            if not item.strip():
                continue
            name, sep, limit = item.partition("=")
            if sep and name.strip() and limit.strip():
                pairs.append((name.strip(), limit.strip()))
            else:
                bad.append(repr(item.strip()))
        if bad:
            raise ValueError(f"{_entries(bad)} not name=limit; expected name=5/hour,name=20/minute")
        return tuple(pairs)

    # --- checks --------------------------------------------------------------------------

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value:  # empty: the SQLite file in the instance directory
            _check_scheme(value, _DB_SCHEMES)
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        _check_scheme(value, _BROKER_SCHEMES)
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        _check_scheme(value, ("http", "https"))
        if not urlsplit(value).hostname:
            raise ValueError("has no host; expected an origin such as https://track.example.com")
        return value.rstrip("/")

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str) -> str:
        if value:
            _check_scheme(value, _SMTP_SCHEMES)
        return value

    @field_validator("vapid_subject")
    @classmethod
    def _vapid_subject(cls, value: str) -> str:
        if not value.startswith(("mailto:", "https://")):
            raise ValueError("must start with mailto: or https://")
        return value

    @field_validator("oidc_client_id")
    @classmethod
    def _oidc_pair(cls, value: str, info: ValidationInfo) -> str:
        issuer = info.data.get("oidc_issuer", "")
        if bool(issuer) != bool(value):
            missing = cls.variable("oidc_client_id" if issuer else "oidc_issuer")
            raise ValueError(
                "WAYBILL_OIDC_ISSUER and WAYBILL_OIDC_CLIENT_ID go together; "
                f"expected both set or neither ({missing} is unset)"
            )
        return value


class Keyring(str):
    """The server's secret key, and the keys it replaced.

    The string itself is the current key (``WAYBILL_SECRET_KEY``): everything new is sealed and
    signed with it, so a keyring goes wherever a secret key went. ``old`` are the keys it
    replaced (``WAYBILL_OLD_SECRET_KEYS``), still accepted for opening and verifying: tracking
    links, CSRF tokens, sign-in codes, unsubscribe links and sealed secrets made before a
    rotation keep working, and ``waybill rotate-secret`` re-seals what is stored."""

    old: tuple[str, ...]

    def __new__(cls, current: str, old: Iterable[str] = ()) -> Keyring:
        ring = super().__new__(cls, current)
        ring.old = tuple(dict.fromkeys(k for k in old if k and k != current))
        return ring


def keys_of(secret: str) -> tuple[str, ...]:
    """Every key ``secret`` accepts, the current one first."""
    return (str(secret), *secret.old) if isinstance(secret, Keyring) else (secret,)


def _describe(exc: ValidationError) -> str:
    """One line per bad setting: the variable, its value and what is expected."""
    lines: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = Settings.variable(field) if field not in Settings._not_from_env else field
        # our checks raise ValueError; a wrong Python type given in code gets pydantic's words
        value_error = error["type"] == "value_error"
        reason = str(error["ctx"]["error"]) if value_error else error["msg"]
        line = f"{name}={_shown(error['input'])}: {reason}"
        lines[name] = f"{lines[name]}; {reason}" if name in lines else line
    return "\n".join(lines.values())


def _comma_list(value: object, what: str) -> tuple[str, ...]:
    """A variable's comma-separated text, or a list given in code: its non-empty items."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected comma-separated {what}")
    return tuple(str(i).strip() for i in items if str(i).strip())


def _entries(bad: list[str]) -> str:
    return f"entry {bad[0]} is" if len(bad) == 1 else f"entries {', '.join(bad)} are"


def _shown(value: object) -> str:
    """The value for an error message, with any password in a URL hidden."""
    if isinstance(value, str):
        value = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", value)
    return repr(value)


def _check_scheme(url: str, allowed: tuple[str, ...]) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in allowed:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {', '.join(allowed)}")


def _instance_secret(instance_dir: Path, name: str) -> str:
    """A secret generated once and kept in the instance directory (mode 0600)."""
    path = instance_dir / name
    if path.exists():
        return path.read_text().strip()
    private_dir(instance_dir)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


#: In the instance directory, beside ``secret_key``: the keys ``waybill rotate-secret --new``
#: replaced, newest first, one per line.
OLD_SECRET_KEYS_FILE = "old_secret_keys"


def replace_instance_secret(instance_dir: Path, current: str) -> Path:
    """A new secret key in the instance directory; ``current`` goes first among the old keys
    there. Returns the key's file."""
    old = [current, *instance_old_keys(instance_dir)]
    write_private(instance_dir / OLD_SECRET_KEYS_FILE, "\n".join(dict.fromkeys(old)) + "\n")
    key_file = instance_dir / "secret_key"
    write_private(key_file, secrets.token_urlsafe(48))
    return key_file


def instance_old_keys(instance_dir: Path) -> tuple[str, ...]:
    path = instance_dir / OLD_SECRET_KEYS_FILE
    if not path.exists():
        return ()
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def write_private(path: Path, text: str) -> None:
    """Replace the file ``path`` with ``text``, mode 0600, whole or not at all."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> None:
    """Make the instance directory ``path`` mode 0700, or narrow it to 0700 when it exists with
    wider permissions: it holds the secret key, the VAPID key and the SQLite database."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as exc:  # not ours to change: say so, and go on
            logging.getLogger("waybill").warning(
                "instance directory %s is mode %04o, not 0700: %s", path, mode, exc
            )


def _load_dotenv(env: dict[str, str], path: str) -> None:
    """Values from ``./.env`` fill in the ``WAYBILL_*`` variables the real environment leaves
    unset."""
    if not Path(path).is_file():
        return
    from dotenv import dotenv_values

    for key, value in dotenv_values(path).items():
        if key.startswith("WAYBILL_") and value is not None:
            env.setdefault(key, value)
