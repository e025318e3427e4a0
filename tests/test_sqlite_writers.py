"""SQLite writers of one gevent process wait for each other without stopping the loop, also in
a process forked from one that had already opened the database (as a gunicorn worker is)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import make_settings
from waybill.db import create_engine, migrate

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {server!r})
    from waybill.config import Settings
    from waybill.db import create_engine
    settings = Settings(instance_dir=Path({instance!r}), database_url={url!r}, secret_key="k")
    create_engine(settings).dispose()  # the parent opens it first, as `waybill serve` does
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    from gevent import monkey
    monkey.patch_all()
    import gevent
    import sqlalchemy as sa
    engine = create_engine(settings)
    late = []

    def ticker():
        for _ in range(40):
            t = time.monotonic()
            gevent.sleep(0.01)
            late.append(time.monotonic() - t - 0.01)

    def slow_writer():
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))
            gevent.sleep(0.3)  # a writer that yields while it holds the write lock

    def second_writer():
        gevent.sleep(0.05)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))

    jobs = [gevent.spawn(f) for f in (ticker, slow_writer, second_writer)]
    gevent.joinall(jobs, raise_error=True)
    print(f"longest loop stall {{max(late) * 1000:.0f}} ms")
    sys.exit(0 if max(late) < 0.2 else 3)
    """
)


def test_a_writer_waiting_for_another_yields_to_the_loop_in_a_forked_gevent_worker(
    tmp_path: Path,
) -> None:
    instance = tmp_path / "instance"
    url = f"sqlite:///{instance / 'waybill.db'}"
    engine = create_engine(make_settings(instance, database_url=url))
    migrate(engine)
    engine.dispose()
    server = str(Path(__file__).resolve().parents[1] / "server")
    script = CHILD.format(server=server, instance=str(instance), url=url)
    # Without the cooperative lock the second writer's BEGIN IMMEDIATE waits in SQLite's busy
    # handler, a C call: the first writer can never run to commit, and the child hangs.
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "longest loop stall" in done.stdout
