"""Under gevent, SQLite's WAL is checkpointed by a native thread, never inside a commit: the
automatic checkpoint (pages written back and the file synced, in the committing call) stood
the event loop still for half a second and more under load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
from gevent import monkey; monkey.patch_all()
import json, os, sys, time
import gevent, sqlalchemy as sa
from waybill import db
from waybill.config import Settings

path = sys.argv[1]
settings = Settings(database_url=f"sqlite:///{path}", secret_key="k" * 32)
engine = db.create_engine(settings)
with engine.begin() as conn:
    conn.exec_driver_sql("CREATE TABLE t (x BLOB)")
with engine.connect() as conn:
    autocheckpoint = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
for _ in range(40):  # ~5 MB through the WAL, more than SQLite's own checkpoint threshold
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (randomblob(128000))")
written = os.path.getsize(path)  # what reached the database file by the commits alone
deadline = time.monotonic() + 10
while os.path.getsize(path) <= written and time.monotonic() < deadline:
    gevent.sleep(0.1)
print(json.dumps({"autocheckpoint": autocheckpoint, "by_commits": written,
                  "later": os.path.getsize(path)}))
"""


def test_a_gevent_process_checkpoints_off_the_commit(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "w.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["autocheckpoint"] == 0  # no commit checkpoints
    assert seen["by_commits"] < 1_000_000  # the 5 MB stayed in the WAL at each commit
    assert seen["later"] > 4_000_000  # and reached the database file in the background
