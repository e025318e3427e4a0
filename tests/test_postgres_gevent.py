"""A PostgreSQL query never stops a gevent worker's other greenlets, even though the master
process imported psycopg (checking the database) before the worker patched itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    import psycopg  # imported first, as in `waybill serve`'s master: it picks its C wait
    from gevent import monkey
    monkey.patch_all()
    import gevent
    from waybill.serve import cooperative_psycopg

    switched = cooperative_psycopg() if sys.argv[2] == "fixed" else False
    ticks = []

    def tick():
        while True:
            ticks.append(1)
            gevent.sleep(0.05)

    ticker = gevent.spawn(tick)
    gevent.sleep(0.1)
    with psycopg.connect(sys.argv[1]) as conn:
        before = len(ticks)
        conn.execute("SELECT pg_sleep(0.6)")
        during = len(ticks) - before
    ticker.kill()
    print(switched, during)
    """
)


def ticks_during_a_query(url: str, mode: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, url, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    switched, during = out.stdout.split()
    return switched == "True", int(during)


def test_a_query_lets_other_greenlets_run(postgres_url: str) -> None:
    import sqlalchemy as sa

    url = sa.engine.make_url(postgres_url).set(drivername="postgresql")
    dsn = url.render_as_string(hide_password=False)
    switched, during = ticks_during_a_query(dsn, "fixed")
    assert switched  # psycopg had chosen its blocking C wait
    assert during >= 5, f"the loop ticked {during} times during a 0.6 s query"
    # and the check itself can fail: without the switch the loop stands still
    _, unfixed = ticks_during_a_query(dsn, "unfixed")
    if unfixed >= 5:
        pytest.fail("psycopg's own wait no longer blocks: cooperative_psycopg may be unneeded")
    assert unfixed <= 1
