"""What a copy of a test's database would hold, whichever backend it is on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import sqlalchemy as sa


def sqlite_bytes(db_file: Path) -> bytes:
    """The database file with its -wal and -shm, as a copy of the files would hold them."""
    parts = [Path(f"{db_file}{suffix}") for suffix in ("", "-wal", "-shm")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def stored_bytes(database_url: str) -> bytes:
    """SQLite's files, or PostgreSQL's rows as ``pg_dump`` writes them for a backup."""
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return sqlite_bytes(Path(url.database or ""))
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is needed to read what a PostgreSQL backup holds"
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(
        [pg_dump, "--data-only", "--no-owner", libpq], check=True, capture_output=True
    ).stdout
