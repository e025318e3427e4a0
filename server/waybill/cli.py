"""The ``waybill`` command."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from waybill.config import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _engine(settings: Settings) -> Any:
    from waybill.db import check_connection, create_engine

    engine = create_engine(settings)
    try:
        check_connection(engine)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return engine


def _config_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None

    return run


@click.group()
def main() -> None:
    """Waybill: order tracking for shoppers and merchants."""


@main.command()
@_config_errors
def init() -> None:
    """Create or migrate the schema; create the secret key and VAPID keys if none."""
    from waybill.db import migrate

    settings = _settings()
    engine = _engine(settings)
    migrate(engine)
    click.echo(f"database ready: {engine.url.render_as_string(hide_password=True)}")
    from waybill.notify.webpush import load_vapid

    vapid = load_vapid(settings)  # made once into the instance dir unless given by environment
    click.echo(f"VAPID public key: {vapid.public_key}")
    click.echo(f"instance directory: {settings.instance_dir}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="Worker processes (default: one per core).")
@_config_errors
def serve(host: str, port: int, workers: int | None) -> None:
    """Serve the app: gunicorn with gevent workers (more than one needs a Redis broker)."""
    from waybill import serve as server

    settings = _settings()
    _engine(settings).dispose()
    server.run(settings, host=host, port=port, workers=workers)


@main.command()
@click.option(
    "--concurrency",
    default=256,
    show_default=True,
    type=int,
    help="Notifications in flight at once.",
)
@_config_errors
def worker(concurrency: int) -> None:
    """Send queued notifications (Web Push, email) until stopped; the server can then run
    with WAYBILL_RUN_WORKER=0."""
    import signal
    import threading

    from waybill.notify.delivery import Worker

    settings = _settings()
    w = Worker(_engine(settings), settings, concurrency=concurrency)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    w.start()
    click.echo(f"outbox worker {w.owner} running; Ctrl-C to stop")
    stop.wait()
    w.stop()


@main.group()
def merchant() -> None:
    """Merchants and their API keys."""


@merchant.command("create")
@click.argument("name")
@_config_errors
def merchant_create(name: str) -> None:
    """Create a merchant; prints its id and its first API key (shown only this once)."""
    from waybill.auth.merchant_keys import create_merchant
    from waybill.db import session_scope

    settings = _settings()
    with session_scope(_engine(settings)) as session:
        m, key = create_merchant(session=session, name=name)
        merchant_id = m.id
    click.echo(json.dumps({"merchant_id": merchant_id, "api_key": key}))


@merchant.group("keys")
def merchant_keys_group() -> None:
    """List, add and revoke a merchant's API keys."""


@merchant_keys_group.command("list")
@click.argument("merchant_id")
@_config_errors
def keys_list(merchant_id: str) -> None:
    from waybill.auth.merchant_keys import list_keys
    from waybill.db import session_scope

    with session_scope(_engine(_settings())) as session:
        for k in list_keys(session=session, merchant_id=merchant_id):
            click.echo(
                json.dumps(
                    {
                        "prefix": k.prefix,
                        "created_at": k.created_at.isoformat(),
                        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                        "revoked": k.revoked_at is not None,
                    }
                )
            )


@merchant_keys_group.command("add")
@click.argument("merchant_id")
@_config_errors
def keys_add(merchant_id: str) -> None:
    from waybill.auth.merchant_keys import issue_key
    from waybill.db import session_scope
    from waybill.models import Merchant

    with session_scope(_engine(_settings())) as session:
        m = session.get(Merchant, merchant_id)
        if m is None:
            raise click.ClickException(f"no merchant {merchant_id}")
        click.echo(
            json.dumps({"merchant_id": m.id, "api_key": issue_key(session=session, merchant=m)})
        )


@merchant_keys_group.command("revoke")
@click.argument("merchant_id")
@click.argument("prefix")
@_config_errors
def keys_revoke(merchant_id: str, prefix: str) -> None:
    from waybill.auth.merchant_keys import revoke_key
    from waybill.db import session_scope

    with session_scope(_engine(_settings())) as session:
        if not revoke_key(session=session, merchant_id=merchant_id, prefix=prefix):
            raise click.ClickException(f"no key {prefix} for {merchant_id}")
    click.echo(f"revoked {prefix}")


@main.command("login-link")
@click.argument("email")
@_config_errors
def login_link(email: str) -> None:
    """Print a one-time sign-in URL for that customer (support tool)."""
    from waybill.auth import login
    from waybill.db import session_scope

    settings = _settings()
    with session_scope(_engine(settings)) as session:
        customer = login.find_customer(session, email)
        if customer is None:
            raise click.ClickException(f"no customer with the address {email}")
        issued = login.issue(session=session, customer=customer, secret=settings.secret_key)
    click.echo(f"{settings.base_url}/auth/link/{issued.link_token}")


@main.command()
@_config_errors
def demo() -> None:
    """Seed a demo merchant, customer and orders at several stages."""
    from waybill.db import session_scope
    from waybill.demo import seed

    settings = _settings()
    with session_scope(_engine(settings)) as session:
        result = seed(session=session, settings=settings)
    for line in result:
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
