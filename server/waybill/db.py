"""The database: engine, per-request sessions, schema migrations, SQLite pragmas."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import stat
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from flask import Flask, current_app, g, request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from waybill.config import ConfigError, Settings, private_dir

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


WRITE_WAIT = 30.0  # seconds a writer waits for this process's other writer before giving up
_write_locks: dict[str, FairLock] = {}
_write_locks_guard = threading.Lock()
# A forked child (a gunicorn worker) makes its own: a lock made in the parent, before gevent
# patched the child, is a real thread lock there, which every greenlet of the child's one
# thread holds at once (it is reentrant), so it would exclude nobody.
os.register_at_fork(after_in_child=_write_locks.clear)


#: The largest id a table holds (a signed 64-bit integer): a bigger one in a URL is no row's,
#: and must not reach the database (PostgreSQL refuses it with an error, not an empty answer).
MAX_ID = 2**63 - 1


def create_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if settings.is_sqlite:
        path = url.split("sqlite:///", 1)[-1]
        db_file = Path(path) if path and path != ":memory:" else None
        if db_file is not None:
            _private_database(db_file, settings.instance_dir)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30, "factory": SQLiteConnection},
            pool_size=20,
        )
        lock = write_lock(path)
        sa.event.listen(engine, "connect", lambda conn, _: _sqlite_pragmas(conn, lock, db_file))
        sa.event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = sa.create_engine(
            url, poolclass=FairQueuePool, pool_pre_ping=True, pool_size=10, max_overflow=20
        )
    return engine


def _private_database(db_file: Path, instance_dir: Path) -> None:
    """The SQLite file is made mode 0600 before SQLite makes it (with the process's umask,
    0644 as a rule), in a 0700 directory. SQLite gives the ``-wal`` and ``-shm`` files it makes
    beside it the database file's own mode, so they are 0600 too."""
    parent = db_file.parent
    if parent.resolve() == Path(instance_dir).resolve():
        private_dir(parent)
    else:  # a directory of the operator's choosing: made private if new, else left alone
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    _narrow_database_files(db_file)


def _narrow_database_files(db_file: Path) -> None:
    """The database, ``-wal`` and ``-shm`` files narrowed to 0600 where they are wider (files
    made by an older version, or a database file made again by SQLite after a deletion)."""
    for name in (str(db_file), f"{db_file}-wal", f"{db_file}-shm"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to change: say so, and go on
            logging.getLogger("waybill").warning("%s is not mode 0600: %s", name, exc)


def _leave_queue(guard: threading.Lock, waiters: deque[Any], turn: Any) -> bool:
    """Take ``turn`` out of ``waiters``; False when it was handed its turn meanwhile."""
    with guard:
        if turn in waiters:
            waiters.remove(turn)
            return True
        return False


class FairLock:
    """A reentrant lock that hands itself to its waiters in the order they came.

    ``threading.RLock`` (gevent's, once patched) lets whoever asks first after a release take
    it: under a stream of requests, a writer that has waited — the outbox worker recording
    what it sent — can lose every race and wait for as long as the stream lasts. Here a release
    with waiters gives the lock to the oldest one; a newcomer queues behind it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiters: deque[tuple[int, threading.Event]] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        with self._guard:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._waiters:
                self._owner, self._depth = me, 1
                return True
            if not blocking:
                return False
            turn = (me, threading.Event())
            self._waiters.append(turn)
        try:
            handed = turn[1].wait(None if timeout < 0 else timeout)
        except BaseException:  # killed while waiting: leave the queue, or pass the lock on
            if not self._leave(turn):
                self.release()
            raise
        return handed or not self._leave(turn)  # it may have come as the wait timed out

    def _leave(self, turn: tuple[int, threading.Event]) -> bool:
        """Leave the queue; False when the lock was handed over meanwhile (it is ours)."""
        return _leave_queue(self._guard, self._waiters, turn)

    def release(self) -> None:
        with self._guard:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a lock this thread does not hold")
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                owner, ready = self._waiters.popleft()
                self._owner, self._depth = owner, 1
                ready.set()
            else:
                self._owner = None

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FairSemaphore:
    """``slots`` holders at once; a slot given back goes to the oldest waiter, never to a
    newcomer (the handover of :class:`FairLock`, counted)."""

    def __init__(self, slots: int) -> None:
        self._guard = threading.Lock()
        self._free = slots
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, timeout: float | None = None) -> bool:
        with self._guard:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        try:
            handed = turn.wait(timeout)
        except BaseException:  # killed while waiting: leave the queue, or pass the slot on
            if not self._leave(turn):
                self.release()
            raise
        return handed or not self._leave(turn)  # it may have come as the wait timed out

    def _leave(self, turn: threading.Event) -> bool:
        return _leave_queue(self._guard, self._waiters, turn)

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._free += 1


class FairQueuePool(sa.pool.QueuePool):
    """SQLAlchemy's pool, with its connections handed out in the order they were asked for.

    The plain pool wakes one waiter when a connection comes back, but whoever asks next
    takes it first: under a burst (a platform's thousand webhook retries, more requests than
    connections) a request could wait through many others' turns, for seconds, while newer
    ones were answered at once. Here every checkout takes a turn first (as many turns as the
    pool has connections, overflow included), and a returned turn goes to the oldest waiter."""

    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 10, **kw: Any) -> None:
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)
        self._turns = FairSemaphore(pool_size + max(max_overflow, 0))
        self._asking = threading.local()  # QueuePool._do_get may call itself: one turn each

    def _do_get(self) -> Any:
        if getattr(self._asking, "now", False):
            return super()._do_get()
        if not self._turns.acquire(self._timeout):
            raise sa.exc.TimeoutError(
                f"QueuePool limit of size {self.size()} overflow {self._max_overflow} reached, "
                f"connection timed out, timeout {self._timeout:.2f}"
            )
        self._asking.now = True
        try:
            return super()._do_get()
        except BaseException:
            self._turns.release()
            raise
        finally:
            self._asking.now = False

    def _do_return_conn(self, record: Any) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            self._turns.release()


def write_lock(path: str) -> FairLock:
    """The lock every SQLite writer of this process takes before ``BEGIN IMMEDIATE``.

    Made after gevent's monkey-patching (engines are built in each worker), it is a gevent
    lock there: a writer waiting for another one yields to the loop, and the holder runs on to
    its commit. Without it the wait is SQLite's busy handler, a C call that never yields: the
    holder, another greenlet, could never finish, and the whole worker stood still."""
    key = str(Path(path).resolve()) if path and path != ":memory:" else path
    with _write_locks_guard:
        return _write_locks.setdefault(key, FairLock())


class SQLiteConnection(sqlite3.Connection):
    """A DB-API connection that holds its process's write lock from ``BEGIN IMMEDIATE`` until
    its commit or rollback has finished."""

    write_lock: FairLock | None = None
    holds_write_lock = False

    def acquire_write(self) -> None:
        if self.write_lock is None or self.holds_write_lock:
            return
        if not self.write_lock.acquire(timeout=WRITE_WAIT):
            raise sqlite3.OperationalError(
                f"database is locked: another writer of this process held it for {WRITE_WAIT:g} s"
            )
        self.holds_write_lock = True

    def release_write(self) -> None:
        if self.holds_write_lock and self.write_lock is not None:
            self.holds_write_lock = False
            self.write_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_write()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_write()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_write()


def _sqlite_begin(conn: sa.Connection) -> None:
    """Writers take the lock up front (BEGIN IMMEDIATE), so a read never has to upgrade to a
    write mid-transaction and fail with SQLITE_BUSY; readers begin deferred and run alongside
    writers in WAL mode. Before a write begins, this process's other writers are waited for
    cooperatively (see :func:`write_lock`): SQLite's own busy wait is left for writers of other
    processes (``waybill worker``, the CLI), whose transactions are short."""
    mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
    dbapi = conn.connection.dbapi_connection
    writes = mode == "IMMEDIATE" and isinstance(dbapi, SQLiteConnection)
    if writes:
        dbapi.acquire_write()
    try:
        conn.exec_driver_sql(f"BEGIN {mode}")
    except BaseException:
        if writes:
            dbapi.release_write()
        raise


def _sqlite_pragmas(dbapi_conn, lock, db_file) -> None:  # type: ignore[no-untyped-def]
    if db_file is not None:  # before journal_mode=WAL makes -wal and -shm with the file's mode
        _narrow_database_files(db_file)
    dbapi_conn.isolation_level = None  # let the "begin" listener issue BEGIN
    dbapi_conn.write_lock = lock
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    if db_file is not None and _on_gevent():
        # SQLite checkpoints the WAL inside the commit that fills it: a C call writing the
        # pages back and syncing the file, half a second and more on a slow disk, during
        # which the event loop stood still. Here a native thread does it instead.
        cur.execute("PRAGMA wal_autocheckpoint=0")
        _checkpointer(db_file)
    cur.close()


def _on_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("threading"))


#: How often a gevent process checkpoints its SQLite WAL, off the event loop.
CHECKPOINT_EVERY_S = 1.0
_checkpointers: set[str] = set()
os.register_at_fork(after_in_child=_checkpointers.clear)


def _checkpointer(db_file: Path) -> None:
    """Once per process and file: a greenlet that every CHECKPOINT_EVERY_S has one of gevent's
    native threads run a PASSIVE checkpoint (it waits for no reader or writer) on a connection
    of its own. The event loop only waits, cooperatively, for the thread to finish."""
    key = str(db_file.resolve())
    with _write_locks_guard:
        if key in _checkpointers:
            return
        _checkpointers.add(key)
    import gevent

    uri = Path(key).as_uri() + "?mode=rw"  # never makes a file that is gone

    def checkpoint() -> None:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def run() -> None:
        pool = gevent.get_hub().threadpool
        while True:
            gevent.sleep(CHECKPOINT_EVERY_S)
            if not os.path.exists(key):  # the database was removed: nothing left to do
                with _write_locks_guard:
                    _checkpointers.discard(key)
                return
            try:
                pool.apply(checkpoint)
            except Exception:  # noqa: BLE001 - the next turn tries again
                logging.getLogger("waybill").exception("WAL checkpoint of %s failed", key)

    gevent.spawn(run)


def check_connection(engine: Engine) -> None:
    """Fail with a clear message when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError as exc:
        raise ConfigError(
            f"cannot reach the database at {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.__class__.__name__}: {str(exc.orig if hasattr(exc, 'orig') else exc)[:200]}"
        ) from None


def alembic_config(engine: Engine, secret_key: str | None = None) -> AlembicConfig:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    if secret_key:
        cfg.attributes["secret_key"] = secret_key
    return cfg


@functools.lru_cache(maxsize=1)
def schema_heads() -> frozenset[str]:
    """The revisions this code's migrations end in."""
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(alembic_config_static()).get_heads())


def alembic_config_static() -> AlembicConfig:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def schema_revisions(engine: Engine) -> frozenset[str]:
    """The revisions the database says it is at (none: never migrated)."""
    with read_engine(engine).connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return frozenset()
        return frozenset(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def migrate(engine: Engine, *, secret_key: str | None = None) -> None:
    """Create the schema, or bring an existing one up to date, keeping its data.

    ``secret_key`` is the server's: migration 0003 seals the tracking tokens of existing
    orders with it, and refuses to run without it on a database that has orders."""
    from alembic import command

    command.upgrade(alembic_config(engine, secret_key), "heads")
    if engine.dialect.name == "sqlite":
        # Page versions an upgrade replaced (the plain tokens before 0003) leave the WAL and
        # the database file now: a copy of the file alone must not hold them.
        raw = engine.raw_connection()  # autocommit: a checkpoint runs outside a transaction
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = cursor.fetchone()
            cursor.close()
            if busy and busy[0]:
                logging.getLogger("waybill").warning("WAL checkpoint after migrating was busy")
        finally:
            raw.close()


def init_app(app: Flask, engine: Engine) -> None:
    app.extensions["waybill.engine"] = engine
    app.teardown_appcontext(_close_session)


def get_engine() -> Engine:
    return current_app.extensions["waybill.engine"]  # type: ignore[no-any-return]


def get_session() -> Session:
    """The request's session, opened on first use and closed in teardown; what it commits is
    published to the app's broker."""
    if "db" not in g:
        engine = get_engine()
        if request.method in _SAFE_METHODS:
            engine = read_engine(engine)
        g.db = open_session(engine, broker=current_app.extensions.get("waybill.broker"))
    return g.db  # type: ignore[no-any-return]


class Publisher(Protocol):
    def publish(self, message: dict[str, Any]) -> None: ...


class PublishingSession(Session):
    """A session whose committed changes reach the broker: messages queued on it with
    :func:`publish_on_commit` go out after its transaction commits and are dropped when it
    rolls back, never before (a socket must not see a change that may still be undone)."""


_PENDING, _BROKER = "waybill.publish_pending", "waybill.publish_to"


def open_session(engine: Engine, *, broker: Publisher | None = None) -> Session:
    """A session of ours: with a broker, a :class:`PublishingSession`."""
    if broker is None:
        return Session(engine, expire_on_commit=False)
    session = PublishingSession(engine, expire_on_commit=False)
    session.info[_BROKER] = broker
    return session


def publish_on_commit(session: Session, message: dict[str, Any]) -> None:
    """Queue ``message`` for the broker once ``session`` commits (a session without a broker
    keeps it until it ends: a CLI command or a job has no one to tell)."""
    session.info.setdefault(_PENDING, []).append(message)


@sa.event.listens_for(PublishingSession, "after_commit")
def _publish_committed(session: Session) -> None:
    broker = session.info[_BROKER]
    for message in session.info.pop(_PENDING, []):
        broker.publish(message)


@sa.event.listens_for(PublishingSession, "after_rollback")
def _drop_unpublished(session: Session) -> None:
    session.info.pop(_PENDING, None)


def read_engine(engine: Engine) -> Engine:
    """The same engine, beginning SQLite transactions deferred: for work that only reads."""
    return engine.execution_options(sqlite_begin="DEFERRED")


def touch(statement: sa.Executable) -> None:
    """A small bookkeeping write (last used, last seen). A read-only request runs it in a
    transaction of its own, so its read transaction never has to upgrade to a write; a
    writing request already holds the lock and runs it in its own transaction."""
    if request.method in _SAFE_METHODS:
        with get_engine().begin() as conn:
            conn.execute(statement)
    else:
        get_session().execute(statement)


def _close_session(exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        if exc is not None or session.in_transaction():
            session.rollback()
        session.close()


@contextmanager
def session_scope(engine: Engine, *, broker: Publisher | None = None) -> Iterator[Session]:
    """A session for work outside a request (CLI, workers): commit on success; with a broker,
    what it commits is published."""
    with open_session(engine, broker=broker) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
