"""Delivery estimates against the marketplace's own promise, on real Olist orders of 2017.

The data (``/work/shared/data/deliveries-2017-train``, or ``WAYBILL_ETA_DATA``) is split by
purchase date: orders bought January-June are the history, July-August the test. The test
orders are written to a temporary folder with orders.csv stripped to the four columns
``waybill eta predict`` may read (their items, customers, sellers and products go along), the
real command runs as a subprocess, and its dates are compared with the actual deliveries of
the test orders whose status is ``delivered``.

Rows: ours; the marketplace's promise (``order_estimated_delivery_date``, taken as ``latest``;
it has no window); a plain baseline, the 90th percentile of the lane's purchase-to-delivery
days (10th for ``earliest``). Figures: on-time rate of ``latest`` (actual <= latest, by
date), mean absolute error of ``latest`` in days, window coverage (earliest <= actual <=
latest) and mean window width, counted as ``latest - earliest + 1`` (the days in the window,
both ends included). Goals: on-time >= the marketplace's; MAE >= 15% below the marketplace's;
coverage >= 80% with mean width < 12 days. A missed goal never fails the run.

Hyperparameters were chosen on January-April -> May-June, January-May -> June and
January-March -> April-May, never on July-August. ``BENCH_QUICK=1`` changes nothing (the run
takes seconds). The last line printed is one JSON object.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server"))

DEFAULT_DATA = Path("/work/shared/data/deliveries-2017-train")
FILES = ("orders.csv", "customers.csv", "order_items.csv", "sellers.csv", "products.csv")
ALLOWED = ("order_id", "customer_id", "order_purchase_timestamp", "order_approved_at")


def _day(value: str) -> date | None:
    return datetime.fromisoformat(value).date() if value else None


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def split(data: Path, folder: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """History (Jan-Jun) and test (Jul-Aug) folders; the test's orders.csv stripped."""
    with (data / "orders.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        orders = list(reader)
    history = [o for o in orders if o["order_purchase_timestamp"][:7] <= "2017-06"]
    test = [o for o in orders if "2017-07" <= o["order_purchase_timestamp"][:7] <= "2017-08"]
    for name, rows, columns in (("history", history, header), ("test", test, list(ALLOWED))):
        (folder / name).mkdir()
        _write(folder / name / "orders.csv", columns, rows)
        for other in FILES[1:]:  # the facts known at purchase go along unchanged
            shutil.copy(data / other, folder / name / other)
    return history, test


def lane_baseline(
    history: list[dict[str, str]], data: Path
) -> dict[tuple[str, str], tuple[int, int]]:
    """10th and 90th percentile of purchase-to-delivery days by seller state -> customer
    state, from the delivered history (a lane with fewer than 5: every lane together)."""
    with (data / "customers.csv").open(newline="", encoding="utf-8") as fh:
        state_of_customer = {r["customer_id"]: r["customer_state"] for r in csv.DictReader(fh)}
    with (data / "sellers.csv").open(newline="", encoding="utf-8") as fh:
        state_of_seller = {r["seller_id"]: r["seller_state"] for r in csv.DictReader(fh)}
    with (data / "order_items.csv").open(newline="", encoding="utf-8") as fh:
        seller_of = {
            r["order_id"]: r["seller_id"] for r in csv.DictReader(fh) if r["order_item_id"] == "1"
        }
    lanes: dict[tuple[str, str], list[int]] = defaultdict(list)
    for o in history:
        bought, done = _day(o["order_purchase_timestamp"]), _day(o["order_delivered_customer_date"])
        if o["order_status"] != "delivered" or bought is None or done is None:
            continue
        lane = lane_of(o, seller_of, state_of_seller, state_of_customer)
        for key in (lane, ("*", "*")):
            lanes[key].append((done - bought).days)

    def pct(values: list[int], q: float) -> int:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    return {k: (pct(v, 0.1), pct(v, 0.9)) for k, v in lanes.items() if len(v) >= 5}


def lane_of(
    order: dict[str, str],
    seller_of: dict[str, str],
    state_of_seller: dict[str, str],
    state_of_customer: dict[str, str],
) -> tuple[str, str]:
    seller = state_of_seller.get(seller_of.get(order["order_id"], ""), "?")
    return seller, state_of_customer.get(order["customer_id"], "?")


def figures(pairs: list[tuple[date, date, date | None]]) -> dict[str, float | None]:
    """(actual, latest, earliest or None) -> on-time, MAE, coverage, width."""
    n = len(pairs)
    on_time = sum(actual <= latest for actual, latest, _ in pairs) / n
    mae = sum(abs((latest - actual).days) for actual, latest, _ in pairs) / n
    windows = [(a, lt, e) for a, lt, e in pairs if e is not None]
    if not windows:
        return {"on_time": on_time, "mae": mae, "coverage": None, "width": None}
    coverage = sum(e <= a <= lt for a, lt, e in windows) / len(windows)
    width = sum((lt - e).days + 1 for _, lt, e in windows) / len(windows)
    return {"on_time": on_time, "mae": mae, "coverage": coverage, "width": width}


def main() -> int:
    data = Path(os.environ.get("WAYBILL_ETA_DATA") or DEFAULT_DATA)
    if not (data / "orders.csv").exists():
        print(f"skipped: no data at {data} (set WAYBILL_ETA_DATA)")
        print(json.dumps({"skipped": f"no data at {data}"}))
        return 0
    waybill = Path(sys.executable).with_name("waybill")
    with tempfile.TemporaryDirectory(prefix="bench-eta-") as tmp:
        folder = Path(tmp)
        history, test = split(data, folder)
        started = time.perf_counter()
        # The entry point, not ``python -m waybill.cli``: run as __main__, cli.py would call
        # main() before reaching the lines at its end that register ``eta``.
        result = subprocess.run(
            [str(waybill), "eta", "predict", "--history", str(folder / "history")]
            + ["--orders", str(folder / "test")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        lines = result.stdout.splitlines()
        header, rows = lines[0], list(csv.DictReader(lines))
        baseline = lane_baseline(history, data)

    with (data / "customers.csv").open(newline="", encoding="utf-8") as fh:
        state_of_customer = {r["customer_id"]: r["customer_state"] for r in csv.DictReader(fh)}
    with (data / "sellers.csv").open(newline="", encoding="utf-8") as fh:
        state_of_seller = {r["seller_id"]: r["seller_state"] for r in csv.DictReader(fh)}
    with (data / "order_items.csv").open(newline="", encoding="utf-8") as fh:
        seller_of = {
            r["order_id"]: r["seller_id"] for r in csv.DictReader(fh) if r["order_item_id"] == "1"
        }

    ours = {r["order_id"]: r for r in rows}
    mine, market, plain = [], [], []
    for o in test:
        actual = _day(o["order_delivered_customer_date"])
        if o["order_status"] != "delivered" or actual is None:
            continue
        bought = _day(o["order_purchase_timestamp"])
        assert bought is not None
        row = ours[o["order_id"]]
        mine.append(
            (actual, date.fromisoformat(row["latest"]), date.fromisoformat(row["earliest"]))
        )
        promise = _day(o["order_estimated_delivery_date"])
        if promise is not None:
            market.append((actual, promise, None))
        lo, hi = baseline.get(
            lane_of(o, seller_of, state_of_seller, state_of_customer), baseline[("*", "*")]
        )
        plain.append((actual, bought + timedelta(days=hi), bought + timedelta(days=lo)))

    result_rows = {
        "ours": figures(mine),
        "marketplace": figures(market),
        "lane_p90": figures(plain),
    }
    m, o = result_rows["marketplace"], result_rows["ours"]
    assert m["on_time"] is not None and m["mae"] is not None
    goals = [
        ("on-time rate of latest", f">= marketplace ({m['on_time']:.1%})",
         o["on_time"] is not None and o["on_time"] >= m["on_time"]),
        ("MAE of latest", f"<= {0.85 * m['mae']:.2f} d (marketplace -15%)",
         o["mae"] is not None and o["mae"] <= 0.85 * m["mae"]),
        ("window coverage", ">= 80%", (o["coverage"] or 0) >= 0.80),
        ("mean window width", "< 12 d", (o["width"] or 99) < 12),
    ]  # fmt: skip

    def cell(value: float | None, pct: bool) -> str:
        if value is None:
            return "n/a"
        return f"{value:.1%}" if pct else f"{value:.2f}"

    print(f"Delivery estimates: history Jan-Jun 2017 ({len(history)} orders), test Jul-Aug")
    print(
        f"({len(test)} orders, {len(mine)} delivered); `waybill eta predict` took {seconds:.1f} s"
    )
    print(f"output header: {header}; rows: {len(rows)}")
    print()
    print("| estimator | on-time | MAE latest (d) | coverage | width (d, incl.) |")
    print("|---|---|---|---|---|")
    for name, fig in result_rows.items():
        print(
            f"| {name} | {cell(fig['on_time'], True)} | {cell(fig['mae'], False)} "
            f"| {cell(fig['coverage'], True)} | {cell(fig['width'], False)} |"
        )
    print()
    print("| goal | target | ours | pass |")
    print("|---|---|---|---|")
    shown = [cell(o["on_time"], True), cell(o["mae"], False)]
    shown += [cell(o["coverage"], True), cell(o["width"], False)]
    for (name, target, ok), value in zip(goals, shown, strict=True):
        print(f"| {name} | {target} | {value} | {'pass' if ok else 'FAIL'} |")
    summary = {
        "test_orders": len(test),
        "evaluated": len(mine),
        "rows": len(rows),
        "seconds": round(seconds, 2),
        "width_definition": "latest - earliest + 1",
        **{
            f"{name}_{key}": None if value is None else round(value, 4)
            for name, fig in result_rows.items()
            for key, value in fig.items()
        },
        "goals_passed": sum(ok for _, _, ok in goals),
        "goals": len(goals),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
