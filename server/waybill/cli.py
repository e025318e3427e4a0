"""The ``waybill`` command."""

from __future__ import annotations

import json
import os
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
    context = click.get_current_context(silent=True)
    if context is not None:  # its connections close with the command (in tests, many run)
        context.call_on_close(engine.dispose)
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
    migrate(engine, secret_key=settings.secret_key)  # seals the tracking tokens of old orders
    click.echo(f"database ready: {engine.url.render_as_string(hide_password=True)}")
    from waybill.notify.vapid import load_vapid

    vapid = load_vapid(settings)  # made once into the instance dir unless given by environment
    _stamp_vapid_key(engine, vapid.public_key)
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
    help="Notifications in flight at once, per process.",
)
@click.option(
    "--processes",
    default=None,
    type=click.IntRange(1, 64),
    help="Worker processes, each claiming rows of its own [default: one per core on "
    "PostgreSQL, 1 on SQLite, whose writers queue behind one lock].",
)
@_config_errors
def worker(concurrency: int, processes: int | None) -> None:
    """Send queued notifications (Web Push, email) until stopped; the server can then run
    with WAYBILL_RUN_WORKER=0."""
    import multiprocessing
    import signal

    settings = _settings()
    _engine(settings).dispose()  # a bad database URL fails here, once, with its message
    if processes is None:
        processes = 1 if settings.is_sqlite else (os.cpu_count() or 1)
    if processes == 1:
        run_worker(concurrency)
        return
    spawn = multiprocessing.get_context("spawn")
    children = [
        spawn.Process(target=run_worker, args=(concurrency,), name=f"waybill-worker-{i}")
        for i in range(processes)
    ]
    for child in children:
        child.start()

    def stop_children(*_: object) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_children)
    click.echo(f"{processes} outbox worker processes running; Ctrl-C to stop")
    for child in children:
        child.join()


@main.group()
def outbox() -> None:
    """The notification outbox."""


@outbox.command("dead")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@_config_errors
def outbox_dead(limit: int) -> None:
    """Notifications that failed every attempt (newest first), one JSON object a line."""
    from sqlmodel import Session

    from waybill.notify.outbox import dead_letters

    with Session(_engine(_settings())) as session:
        for row in dead_letters(session, limit=limit):
            click.echo(
                json.dumps(
                    {
                        "id": row.id,
                        "order_id": row.order_id,
                        "channel": row.channel,
                        "destination": row.destination,
                        "status": row.status,
                        "attempts": row.attempts,
                        "last_error": row.last_error,
                        "dead_at": row.done_at.isoformat() if row.done_at else None,
                    }
                )
            )


@main.group()
def webhooks() -> None:
    """Webhooks received from merchants' platforms (kept 30 days, for support)."""


def _receipt_json(row: Any, *, body: bool) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": row.id,
        "merchant_id": row.merchant_id,
        "platform": row.platform,
        "topic": row.topic,
        "state": row.state,
        "result": row.result,
        "received_at": row.received_at.isoformat(),
        "applied_at": row.applied_at.isoformat() if row.applied_at else None,
    }
    if body:
        try:
            shown["payload"] = json.loads(row.body)
        except ValueError:
            shown["payload"] = row.body
    return shown


@webhooks.command("show")
@click.argument("receipt_id", type=int)
@_config_errors
def webhooks_show(receipt_id: int) -> None:
    """One webhook as it arrived (its raw payload) and what became of it."""
    from sqlmodel import Session

    from waybill.models import WebhookReceipt

    with Session(_engine(_settings())) as session:
        row = session.get(WebhookReceipt, receipt_id)
        if row is None:
            raise click.ClickException(f"no webhook {receipt_id} (kept 30 days)")
        click.echo(json.dumps(_receipt_json(row, body=True), indent=2))


@webhooks.command("list")
@click.option("--merchant", "merchant_id", default=None, help="Only this merchant's.")
@click.option("--state", default=None, help="queued, applied, held, ignored or failed.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@_config_errors
def webhooks_list(merchant_id: str | None, state: str | None, limit: int) -> None:
    """The latest webhooks, newest first, one JSON object a line (without payloads)."""
    from sqlmodel import Session, col, select

    from waybill.models import WebhookReceipt

    query = select(WebhookReceipt).order_by(col(WebhookReceipt.id).desc()).limit(limit)
    if merchant_id:
        query = query.where(WebhookReceipt.merchant_id == merchant_id)
    if state:
        query = query.where(WebhookReceipt.state == state)
    with Session(_engine(_settings())) as session:
        for row in session.exec(query):
            click.echo(json.dumps(_receipt_json(row, body=False)))


def run_worker(concurrency: int) -> None:
    """One outbox worker in this process until SIGTERM or SIGINT."""
    import signal
    import threading
    from datetime import timedelta

    from waybill.notify.delivery import Worker
    from waybill.realtime.broker import create_broker

    settings = _settings()
    # The broker tells the servers' sockets what the worker applies (webhooks, polls).
    w = Worker(
        _engine(settings),
        settings,
        concurrency=concurrency,
        # a worker that dies leaves its claimed rows this long before another takes them
        lease=timedelta(seconds=settings.outbox_lease_seconds),
        broker=create_broker(settings.broker_url),
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from waybill import gctune

    gctune.tune()  # started: what it loaded stays out of every collection
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


@main.command("rotate-secret")
@click.option(
    "--new",
    "new_key",
    is_flag=True,
    help="First make a new secret key in the instance directory (the old one stays accepted).",
)
@_config_errors
def rotate_secret(new_key: bool) -> None:
    """Seal what is stored again under the current secret key, so that old keys can go.

    Rotating: give every process the new key with the old one in WAYBILL_OLD_SECRET_KEYS (or
    run with --new where the key lives in the instance directory), restart them, then run this.
    """
    settings = _settings()
    if new_key:
        _new_secret_key(settings)
        return
    from waybill.auth.rotation import reseal

    done = reseal(_engine(settings), settings.secret_key)
    click.echo(f"{'':26} {'resealed':>9} {'current':>9} {'unopened':>9} {'changed':>9}")
    for kind, c in done.kinds.items():
        click.echo(f"{kind:26} {c.resealed:>9} {c.current:>9} {c.unopened:>9} {c.changed:>9}")
    old = len(settings.secret_key.old)  # type: ignore[attr-defined]
    if done.unopened:
        raise click.ClickException(
            f"{done.unopened} stored values open with no key given: keep every old key in "
            "WAYBILL_OLD_SECRET_KEYS and run this again"
        )
    if any(c.changed for c in done.kinds.values()):
        click.echo("some values were written anew meanwhile: run this again to check them")
    click.echo(
        f"everything read is sealed with the current key; {old} old key(s) are still accepted "
        "for links and tokens made before (unsubscribe links in mail already sent, open pages' "
        "CSRF tokens, sign-in codes): drop one when that mail is old enough (we keep 30 days)"
    )


def _new_secret_key(settings: Settings) -> None:
    """A new current key in the instance directory. Nothing is resealed: running processes do
    not know the new key yet."""
    from waybill.config import OLD_SECRET_KEYS_FILE, replace_instance_secret

    current = str(settings.secret_key)
    key_file = settings.instance_dir / "secret_key"
    if not key_file.exists() or key_file.read_text().strip() != current:
        raise click.ClickException(
            "the secret key is given by WAYBILL_SECRET_KEY, not kept in the instance directory: "
            "set WAYBILL_SECRET_KEY to a new key and put the old one first in "
            "WAYBILL_OLD_SECRET_KEYS, restart every process, then run `waybill rotate-secret`"
        )
    replace_instance_secret(settings.instance_dir, current)
    click.echo(
        f"new secret key written to {key_file}; the old one is kept in "
        f"{settings.instance_dir / OLD_SECRET_KEYS_FILE}. Restart every Waybill process (they "
        "accept both keys), then run `waybill rotate-secret` to seal what is stored again"
    )


def _stamp_vapid_key(engine: Any, public_key: str) -> int:
    """Subscriptions from before keys were recorded were made with this key (the only one)."""
    from waybill.db import session_scope
    from waybill.notify.subscriptions import stamp_vapid_key

    with session_scope(engine) as session:
        return stamp_vapid_key(session, public_key)


@main.command("rotate-vapid")
@click.option(
    "--new",
    "new_key",
    is_flag=True,
    help="Make a new VAPID key in the instance directory (the old one stays in use for now).",
)
@_config_errors
def rotate_vapid(new_key: bool) -> None:
    """How many push subscriptions are still on each VAPID key; --new starts a rotation.

    Devices move to the current key by themselves: the app checks the key when it opens, and a
    notification sent with an old key tells the service worker to subscribe again."""
    from waybill.db import session_scope
    from waybill.notify.subscriptions import count_by_vapid_key
    from waybill.notify.vapid import load_old_vapid, load_vapid, replace_instance_key

    settings = _settings()
    engine = _engine(settings)
    current = load_vapid(settings)
    if new_key:
        _stamp_vapid_key(engine, current.public_key)
        made = replace_instance_key(settings)
        click.echo(
            f"new VAPID public key: {made.public_key}; the old one is kept in "
            f"{settings.instance_dir}. Restart every Waybill process: devices then subscribe "
            "again with the new key as they open the app or get their next notification"
        )
        return
    with session_scope(engine) as session:
        counts = count_by_vapid_key(session)
    old = [k.public_key for k in load_old_vapid(settings) if k.public_key != current.public_key]
    rows = [
        ("current", current.public_key, counts.pop(current.public_key, 0) + counts.pop(None, 0))
    ]
    rows += [(f"old {i}", key, counts.pop(key, 0)) for i, key in enumerate(old, 1)]
    rows += [("not held", key or "", n) for key, n in counts.items()]
    click.echo(f"{'key':10} {'subscriptions':>13}  public key")
    for name, key, n in rows:
        click.echo(f"{name:10} {n:>13}  {key}")
    waiting = sum(n for name, _, n in rows if name.startswith("old"))
    if old:
        click.echo(
            f"{waiting} subscription(s) still on an old key. Drop an old key (from "
            "WAYBILL_OLD_VAPID_PRIVATE_KEYS or the instance directory) when few are left: "
            "the devices still on it stop getting notifications, and are forgotten at the next"
        )


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


from waybill.tracking.eta_cli import eta  # noqa: E402  (its own module: no Flask)

main.add_command(eta)


@eta.command("train")
@_config_errors
def eta_train() -> None:
    """Learn delivery estimates from this database's delivered orders (the worker does it
    daily); every server process uses the new model within a minute."""
    from waybill import eta as estimates

    row = estimates.train(_engine(_settings()))
    click.echo(
        json.dumps(
            {
                "model": row.id,
                "deliveries": row.deliveries,
                "trained_at": row.trained_at.isoformat(),
            }
        )
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
