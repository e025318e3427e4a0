"""``make bench``: every benchmark, one after another, then one table of every figure against
its goal (a helper by name, ``_``: the runner is not a benchmark itself).

Each ``bench/*.py`` but ``_*`` and ``baseline_*`` runs as a subprocess with this process's
environment (``BENCH_QUICK`` and the rest pass through; ``PYTHONUNBUFFERED=1`` is added so its
output streams), its output goes straight through to the terminal, and the last line it prints
is read as its JSON object. The goals are the table ``GOALS`` below, one row per figure: the
figure's key path in that JSON, the comparison, the target (a number, or another figure of the
same run times a factor, as "the marketplace's MAE less 15%") and the issue that sets it.

At the end: one table, per benchmark its wall time and then each goal's row (measured, goal,
met), then the whole run's time against issue 16's 10 minutes; and, as the last line, one JSON
object ``{"bench": "all", "seconds", "figures", "met", "missed", ...}``. A missed goal never
fails the run (as in each benchmark); a benchmark that exits non-zero or prints no JSON is a
row saying so, the others still run, and the runner exits 1 after the table.

Usage: ``python bench/_run_all.py [NAME ...]`` (by default every benchmark, by name order).
``BENCH_TIMEOUT`` (seconds, default 1200): a benchmark still running then is interrupted
(SIGINT to its process group, so that its servers stop too) and counts as failed.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
QUICK = os.environ.get("BENCH_QUICK") == "1"
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT", "1200"))
TOTAL_GOAL_S = 600.0  # issue 16: every benchmark in under 10 minutes


@dataclass(frozen=True)
class Ref:
    """A target taken from the same run: ``factor`` x the figure at ``path``."""

    path: str
    factor: float = 1.0


@dataclass(frozen=True)
class Goal:
    bench: str
    path: str  # key path into the benchmark's JSON: ``a.b``, ``list[key=value].c``
    op: str  # ">=", ">", "<=", "<", "==", "±" (|measured - target| <= tol)
    target: float | bool | Ref
    issue: int
    unit: str = ""  # how to show the values: "%", "bytes", "ms", "/s", "s", "x", "d", ...
    tol: float = 0.0
    skip: str = ""  # a key path: when it holds a value, the row is skipped for that reason


PG_SKIP = {
    "ingest": "details.postgresql.skipped",
    "api": "details.postgresql.skipped",
    "webhooks": "details.postgresql.skipped",
}
LIVE = "results[server=waybill]"
LIGHTHOUSE_PAGES = ("tracking /t/<token>", "home /")


def _per_db(
    bench: str, figure: str, op: str, target: float, issue: int, unit: str = ""
) -> list[Goal]:
    """The same goal on SQLite and on PostgreSQL (skipped when the run could not reach it)."""
    return [
        Goal(bench, f"sqlite.{figure}", op, target, issue, unit),
        Goal(bench, f"postgresql.{figure}", op, target, issue, unit, skip=PG_SKIP[bench]),
    ]


#: Every goal the issues set for a figure a benchmark reports.
GOALS: list[Goal] = [
    # issue 12: the hot paths
    Goal("ingest", "sqlite.events_per_s", ">=", 500, 12, "/s"),
    Goal("ingest", "postgresql.events_per_s", ">=", 1000, 12, "/s", skip=PG_SKIP["ingest"]),
    *_per_db("ingest", "batch_events_per_s", ">=", 5000, 12, "/s"),
    # p99 < 50 ms for single events at half the goal rates (the benchmark paces at half of
    # what it reached flat out; the rate it kept is the second row)
    Goal("ingest", "sqlite.paced_p99_ms", "<", 50, 12, "ms"),
    Goal("ingest", "sqlite.paced_events_per_s", ">=", 0.95 * 250, 12, "/s"),
    Goal("ingest", "postgresql.paced_p99_ms", "<", 50, 12, "ms", skip=PG_SKIP["ingest"]),
    Goal("ingest", "postgresql.paced_events_per_s", ">=", 0.95 * 500, 12, "/s",
         skip=PG_SKIP["ingest"]),
    Goal("ingest", "long_order.last_answer_bytes", "<", 64 * 1024, 12, "bytes"),
    Goal("ingest", "long_order.track_answer_bytes", "<", 64 * 1024, 12, "bytes"),
    Goal("ingest", "long_order.growth", "±", 1.0, 12, "x", tol=0.20),
    Goal("live", "goal.p99_ms", "<", 50, 12, "ms"),
    Goal("live", "goal.lost", "==", 0, 12),
    Goal("live", "goal.dropped", "==", 0, 12),
    Goal("live", "goal.sockets", ">=", 5000, 12),
    Goal("live", f"{LIVE}.phases[target_per_s=300].kept_up", "==", True, 12),
    Goal("push", "end_to_end.0ms.first_post_to_last_push_s", "<=", 2.0, 12, "s"),
    Goal("push", "end_to_end.50ms.first_post_to_last_push_s", "<=", 3.0, 12, "s"),
    Goal("push", "end_to_end.0ms.lost", "==", 0, 12),
    Goal("push", "end_to_end.50ms.lost", "==", 0, 12),
    Goal("push", "end_to_end.0ms.wrong", "==", 0, 12),
    Goal("push", "end_to_end.50ms.wrong", "==", 0, 12),
    *_per_db("api", "x_baseline", ">=", 0.5, 12, "x"),
    *_per_db("api", "p99_ms", "<", 50, 12, "ms"),
    # issue 3: live updates (its goal size was 10,000 sockets; the run holds 5,000)
    Goal("live", f"{LIVE}.phases[target_per_s=100].p99_ms", "<", 100, 3, "ms"),
    Goal("live", f"{LIVE}.phases[target_per_s=100].lost", "==", 0, 3),
    Goal("live", f"{LIVE}.rss_kb_per_socket", "<", 40, 3, "KB"),
    # issue 4: the PWA's first load
    *[
        Goal("lighthouse", f"pages.{page}.{metric}", "==", 100, 4)
        for page in LIGHTHOUSE_PAGES
        for metric in ("performance", "accessibility", "best-practices")
    ],
    *[Goal("lighthouse", f"pages.{p}.bytes", "<", 50 * 1024, 4, "bytes") for p in LIGHTHOUSE_PAGES],
    # issue 5 and issue 9: Web Push throughput
    Goal("push", "x_naive_at_0ms", ">=", 4.0, 5, "x"),
    Goal("push", "worker_50ms", ">=", 2500, 9, "/s"),
    Goal("push", "processes_2_vs_1_at_0ms", ">=", 1.6, 9, "x"),
    Goal("push", "processes_2_vs_1_at_50ms", ">=", 1.6, 9, "x"),
    # issue 14: webhooks under a burst
    *_per_db("webhooks", "burst_slowest_answer_ms", "<=", 1000, 14, "ms"),
    *_per_db("webhooks", "lost_events", "==", 0, 14),
    *_per_db("webhooks", "errors", "==", 0, 14),
    Goal("webhooks", "details.sqlite.burst.left_queued", "==", 0, 14),
    Goal("webhooks", "details.postgresql.burst.left_queued", "==", 0, 14,
         skip=PG_SKIP["webhooks"]),
    # issue 15: delivery estimates against the marketplace's promise
    Goal("eta", "ours_on_time", ">=", Ref("marketplace_on_time"), 15, "%"),
    Goal("eta", "ours_mae", "<=", Ref("marketplace_mae", 0.85), 15, "d"),
    Goal("eta", "ours_coverage", ">=", 0.80, 15, "%"),
    Goal("eta", "ours_width", "<", 12, 15, "d"),
]  # fmt: skip


# --- reading a benchmark's JSON -------------------------------------------------------------

_STEP = re.compile(r"\[([^\]=]+)=([^\]]*)\]|([^.\[\]]+)")
MISSING = object()


def lookup(data: Any, path: str) -> Any:
    """The value at ``path``: dict keys separated by dots; ``[key=value]`` picks the first
    item of a list whose ``key`` reads as ``value``. ``MISSING`` when there is none."""
    for m in _STEP.finditer(path):
        sel_key, sel_value, key = m.groups()
        if key is not None:
            key = key.strip()
            if not isinstance(data, dict) or key not in data:
                return MISSING
            data = data[key]
        else:
            if not isinstance(data, list):
                return MISSING
            found = [x for x in data if isinstance(x, dict) and _same(x.get(sel_key), sel_value)]
            if not found:
                return MISSING
            data = found[0]
    return data


def _same(value: Any, text: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value) == text
    try:
        return float(value) == float(text)
    except ValueError:
        return False


def show(value: Any, unit: str) -> str:
    if value is MISSING or value is None:
        return "not reported"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if unit == "%":
        return f"{value:.1%}"
    if unit == "bytes":
        return f"{value / 1024:,.1f} KB"
    if unit == "d":  # days: the goals are hundredths apart
        return f"{value:,.2f} d"
    if isinstance(value, int) or abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:,.1f}"
    else:
        text = f"{value:,.2f}"
    return {"x": f"{text}x", "": text, "/s": f"{text}/s"}.get(unit, f"{text} {unit}")


def compare(value: Any, op: str, target: Any, tol: float) -> bool:
    if value is MISSING or value is None or target is MISSING or target is None:
        return False
    try:
        if op == "±":
            return bool(abs(value - target) <= tol)
        return bool(
            {
                ">=": value >= target,
                ">": value > target,
                "<=": value <= target,
                "<": value < target,
                "==": value == target,
            }[op]
        )
    except TypeError:
        return False


def evaluate(goal: Goal, data: dict[str, Any]) -> dict[str, Any]:
    """One goal's row: measured, goal, met (True / False, None when skipped) and the
    measured value as shown."""
    row: dict[str, Any] = {"bench": goal.bench, "figure": goal.path, "issue": goal.issue}
    reason = data.get("skipped") or (lookup(data, goal.skip) if goal.skip else None)
    if reason and reason is not MISSING:
        why = reason if isinstance(reason, str) else "by the benchmark (see its output)"
        row.update(measured=None, goal="", met=None, shown=f"skipped: {why[:70]}")
        return row
    value = lookup(data, goal.path)
    target: Any = goal.target
    from_run = ""
    if isinstance(target, Ref):
        from_run = f" ({'' if target.factor == 1 else f'{target.factor:g} x '}{target.path})"
        base = lookup(data, target.path)
        is_number = isinstance(base, int | float) and not isinstance(base, bool)
        target = base * target.factor if is_number else MISSING
    if goal.op == "±":
        want = f"{show(target, goal.unit)} ± {goal.tol:.0%}"
    elif isinstance(target, bool):
        want = "yes" if target else "no"
    else:
        want = f"{goal.op} {show(target, goal.unit)}"
    row.update(
        measured=None if value is MISSING else value,
        goal=want + from_run,
        met=compare(value, goal.op, target, goal.tol),
        shown=show(value, goal.unit),
    )
    return row


# --- running one benchmark ------------------------------------------------------------------


@dataclass
class Run:
    name: str
    seconds: float = 0.0
    returncode: int | None = None
    data: dict[str, Any] | None = None
    problem: str = ""  # why it counts as failed
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    warning: str = ""  # worth saying, not a failure


def stop_group(pgid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """The benchmark and everything it started (its own process group): SIGINT first, so
    that it stops its servers and drops its databases, then harder."""
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return  # nothing left in the group
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        else:
            time.sleep(1)


def run(name: str) -> Run:
    result = Run(name)
    print(f"== bench/{name}.py", flush=True)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / f"{name}.py")],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=BENCH.parent,
        start_new_session=True,  # its own process group: stopped as a whole if need be
    )
    last = [b""]

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            if line.strip():
                last[0] = line

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    problems = []
    try:
        result.returncode = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"\n!! bench/{name}.py still running after {TIMEOUT_S:.0f} s: stopping it")
        problems.append(f"stopped after {TIMEOUT_S:.0f} s")
        stop_group(proc.pid, proc)
        result.returncode = proc.wait()
    except KeyboardInterrupt:
        stop_group(proc.pid, proc)
        raise
    result.seconds = time.perf_counter() - started
    result.load = (load_before, os.getloadavg()[0])
    reader.join(10)
    if reader.is_alive():  # a process it started still holds its output open
        result.warning = "left processes running after it exited (stopped them)"
        stop_group(proc.pid)
        reader.join(10)
    try:
        data = json.loads(last[0])
    except ValueError:
        data = None
    result.data = data if isinstance(data, dict) else None
    if result.returncode:
        problems.append(f"exit status {result.returncode}")
    if result.data is None:
        problems.append("no JSON on its last line")
    result.problem = "; ".join(problems)
    done = ", ".join(x for x in (f"{result.seconds:.0f} s", result.problem, result.warning) if x)
    print(f"== bench/{name}.py: {done}\n", flush=True)
    return result


# --- the table ------------------------------------------------------------------------------


def table(runs: list[Run], total_s: float, complete: bool) -> dict[str, Any]:
    rows: list[list[str]] = []
    figures: list[dict[str, Any]] = []
    for r in runs:
        load = f"wall time (load average {r.load[0]:.1f} before, {r.load[1]:.1f} after)"
        rows.append([r.name, load, f"{r.seconds:,.0f} s", "", "", ""])
        if r.problem:
            rows.append([r.name, "(the run)", r.problem, "exit 0 and a JSON line", "no", "16"])
            figures.append(
                {"bench": r.name, "figure": "run", "measured": r.problem, "met": False, "issue": 16}
            )
        if r.warning:
            rows.append([r.name, "(the run)", r.warning, "", "-", ""])
        goals = [g for g in GOALS if g.bench == r.name]
        if r.data is None:
            continue
        if not goals:
            rows.append([r.name, "(no goal listed for it)", "", "", "", ""])
        for goal in goals:
            row = evaluate(goal, r.data)
            met = {True: "yes", False: "no", None: "-"}[row["met"]]
            rows.append([r.name, goal.path, row.pop("shown"), row["goal"], met, str(goal.issue)])
            figures.append(row)
    under = total_s < TOTAL_GOAL_S
    rows.append(
        [
            "all",
            "wall time" + ("" if complete else " (not every benchmark ran)"),
            f"{total_s:,.0f} s",
            f"< {TOTAL_GOAL_S:,.0f} s" if complete else "",
            ("yes" if under else "no") if complete else "-",
            "16" if complete else "",
        ]
    )
    if complete:
        figures.append(
            {
                "bench": "all",
                "figure": "seconds",
                "measured": round(total_s, 1),
                "goal": f"< {TOTAL_GOAL_S:.0f} s",
                "met": under,
                "issue": 16,
            }
        )
    head = ["benchmark", "figure", "measured", "goal", "met", "issue"]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print()
    print(f"Every benchmark against its goals{' (BENCH_QUICK=1)' if QUICK else ''}")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in rows:
        print(line(cells))
    met = sum(f["met"] is True for f in figures)
    missed = sum(f["met"] is False for f in figures)
    skipped = sum(f["met"] is None for f in figures)
    failed = [r.name for r in runs if r.problem]
    print()
    print(
        f"{met} goals met, {missed} missed, {skipped} skipped"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + f"; {total_s:,.0f} s in all"
    )
    return {
        "bench": "all",
        "quick": QUICK,
        "seconds": round(total_s, 1),
        "wall_s": {r.name: round(r.seconds, 1) for r in runs},
        "load_average": {r.name: [round(x, 2) for x in r.load] for r in runs},
        "figures": figures,
        "met": met,
        "missed": missed,
        "skipped": skipped,
        "failed": failed,
    }


def benchmarks() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith(("_", "baseline_")))


def main(argv: list[str]) -> int:
    every = benchmarks()
    names = argv or every
    unknown = [n for n in names if n not in every]
    if unknown:
        print(f"no such benchmark: {', '.join(unknown)} (there are: {', '.join(every)})")
        return 2
    started = time.perf_counter()
    runs = [run(name) for name in names]
    summary = table(runs, time.perf_counter() - started, complete=names == every)
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
