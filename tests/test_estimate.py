"""The delivery-date estimator on small synthetic histories, and ``waybill eta predict`` end to
end on a slice of the real Olist data (skipped when it is absent)."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from waybill.tracking.estimate import (
    DayCount,
    DeliveryRecord,
    Model,
    OrderFacts,
    Params,
    brazil_holidays,
    estimate,
    handling_keys,
    train,
    transit_keys,
)

WAYBILL = str(Path(sys.executable).with_name("waybill"))
DATA = Path(os.environ.get("WAYBILL_ETA_DATA") or "/work/shared/data/deliveries-2017-train")
CALENDAR = Params(working_days=False, weight_split_g=0.0, min_calibration=10_000)
T0 = datetime(2017, 3, 1, 10, 0)


def record(
    bought: datetime,
    handling: int,
    transit: int,
    *,
    origin: str = "SP",
    dest: str = "RJ",
    seller: str = "s1",
) -> DeliveryRecord:
    facts = OrderFacts(
        purchased_at=bought, seller_id=seller, origin_region=origin, destination_region=dest
    )
    hand = bought + timedelta(days=handling)
    return DeliveryRecord(facts, handed_over_at=hand, delivered_at=hand + timedelta(days=transit))


def median(model: Model, leg: str, facts: OrderFacts) -> int:
    keys = (transit_keys if leg == "transit" else handling_keys)(facts, model.params)
    acc = 0.0
    for day, p in enumerate(model.leg(leg, keys)):
        acc += p
        if acc >= 0.5:
            return day
    raise AssertionError("no median")


def test_holidays_and_working_days() -> None:
    assert date(2017, 4, 14) in brazil_holidays(2017)  # Good Friday
    assert date(2017, 2, 28) in brazil_holidays(2017)  # carnival Tuesday
    days = DayCount(working_days=True)
    assert days.add(date(2017, 4, 13), 1) == date(2017, 4, 17)  # over Good Friday and a weekend
    assert days.between(date(2017, 4, 13), date(2017, 4, 17)) == 1
    assert days.between(date(2017, 3, 3), date(2017, 3, 4)) == 1  # Saturday counts as Monday


def test_a_lane_with_two_deliveries_is_pulled_towards_its_wider_group() -> None:
    history = [record(T0 + timedelta(hours=i), 1, 10, origin="MG") for i in range(200)]
    history += [record(T0 + timedelta(hours=i), 1, 2, origin="PR") for i in range(100)]
    history += [record(T0, 1, 2, origin="SC"), record(T0, 1, 2, origin="SC")]
    model = train(history, CALENDAR)
    few = OrderFacts(purchased_at=T0, origin_region="SC", destination_region="RJ")
    many = OrderFacts(purchased_at=T0, origin_region="PR", destination_region="RJ")
    assert median(model, "transit", many) == 2  # plenty of evidence: its own
    assert median(model, "transit", few) > 2  # two deliveries: mostly the destination's


def test_recent_deliveries_weigh_more() -> None:
    old = [record(T0 - timedelta(days=200, hours=i), 1, 12) for i in range(100)]
    new = [record(T0 - timedelta(hours=i), 1, 3) for i in range(60)]
    facts = OrderFacts(purchased_at=T0, origin_region="SP", destination_region="RJ")
    flat = train(old + new, Params(**{**CALENDAR.__dict__, "half_life_days": 0}))
    recent = train(old + new, Params(**{**CALENDAR.__dict__, "half_life_days": 30}))
    assert median(flat, "transit", facts) == 12  # the old majority wins unweighted
    assert median(recent, "transit", facts) == 3


def test_window_narrows_as_the_parcel_gets_closer() -> None:
    rng = random.Random(1)
    history = [
        record(T0 - timedelta(hours=6 * i), rng.randint(0, 10), rng.randint(3, 9))
        for i in range(400)
    ]
    model = train(history, CALENDAR)
    facts = OrderFacts(purchased_at=T0, seller_id="s1", origin_region="SP", destination_region="RJ")
    at_purchase = estimate(model, facts)
    handed = T0 + timedelta(days=3)
    in_transit = estimate(model, facts, stage="in_transit", stage_at=handed)
    later = estimate(model, facts, stage="in_transit", stage_at=handed, now=handed + timedelta(5))
    out = estimate(model, facts, stage="out_for_delivery", stage_at=handed + timedelta(days=9))

    def width(e: object) -> int:
        return (e.latest - e.earliest).days  # type: ignore[attr-defined]

    assert width(at_purchase) > width(in_transit) > width(later) >= width(out)
    assert later.earliest >= (handed + timedelta(5)).date()  # never before "now"
    assert out.earliest == (handed + timedelta(days=9)).date()
    done = estimate(model, facts, stage="delivered", stage_at=handed + timedelta(days=5))
    assert done.earliest == done.latest == done.most_likely == (handed + timedelta(5)).date()


def test_dates_are_ordered_even_with_unknown_facts() -> None:
    rng = random.Random(2)
    states = ["SP", "RJ", "MG", "BA"]
    history = [
        record(
            T0 - timedelta(hours=5 * i),
            rng.randint(0, 8),
            rng.randint(1, 30),
            origin=rng.choice(states),
            dest=rng.choice(states),
            seller=f"s{rng.randint(1, 40)}",
        )
        for i in range(600)
    ]
    model = train(history)  # the defaults: working days, calibrated
    cases = [
        OrderFacts(purchased_at=T0, origin_region=o, destination_region=d, seller_id=s)
        for o in [*states, "XX", None]
        for d in [*states, None]
        for s in ["s3", "unknown", None]
    ]
    for facts in cases:
        e = estimate(model, facts)
        assert facts.purchased_at.date() <= e.earliest <= e.most_likely <= e.latest


def test_calibration_hits_its_target_out_of_sample() -> None:
    rng = random.Random(3)

    def sample(n: int, start: datetime) -> list[DeliveryRecord]:
        rows = []
        for i in range(n):
            dest = rng.choice(["RJ", "MG"])
            slow = 6 if dest == "MG" else 0
            transit = int(rng.lognormvariate(1.6, 0.5)) + slow
            rows.append(
                record(start + timedelta(hours=3 * i), rng.randint(0, 4), transit, dest=dest)
            )
        return rows

    params = Params(working_days=False, target_on_time=0.9, target_early=0.1)
    model = train(sample(1500, T0), params)
    fresh = sample(1500, T0 + timedelta(days=200))
    assert all(r.delivered_at for r in fresh)
    on_time = sum(r.delivered_at.date() <= estimate(model, r.facts).latest for r in fresh)  # type: ignore[union-attr]
    early = sum(r.delivered_at.date() < estimate(model, r.facts).earliest for r in fresh)  # type: ignore[union-attr]
    assert abs(on_time / len(fresh) - 0.9) < 0.03
    assert abs(early / len(fresh) - 0.1) < 0.03


def test_json_round_trip_gives_identical_estimates() -> None:
    rng = random.Random(4)
    history = [
        record(T0 - timedelta(hours=7 * i), rng.randint(0, 5), rng.randint(1, 20), seller="s2")
        for i in range(300)
    ]
    model = train(history)
    again = Model.from_json(model.to_json())
    assert again.to_json() == model.to_json()
    facts = OrderFacts(purchased_at=T0, seller_id="s2", origin_region="SP", destination_region="RJ")
    for stage, at in [("confirmed", None), ("in_transit", T0 + timedelta(days=2))]:
        assert estimate(model, facts, stage=stage, stage_at=at) == estimate(
            again, facts, stage=stage, stage_at=at
        )
    with pytest.raises(ValueError):
        Model.from_json('{"version": 99}')


# ---------------------------------------------------------------------------------------------
# End to end, on real data

ALLOWED = ["order_id", "customer_id", "order_purchase_timestamp", "order_approved_at"]
OTHERS = ("customers.csv", "order_items.csv", "sellers.csv", "products.csv")


def _slice(tmp_path: Path) -> tuple[Path, Path, Path, list[str]]:
    """400 history orders, and 60 later ones three ways: stripped, with every column (the
    answers poisoned), and stripped with holes (no approval, unknown customer)."""
    with (DATA / "orders.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = sorted(reader, key=lambda r: r["order_purchase_timestamp"])
    history, later = rows[:400], rows[-60:]
    folders = {}
    for name in ("history", "stripped", "full", "holes"):
        folder = tmp_path / name
        folder.mkdir()
        for other in OTHERS:
            (folder / other).write_bytes((DATA / other).read_bytes())
        folders[name] = folder

    def write(folder: Path, columns: list[str], data: list[dict[str, str]]) -> None:
        with (folder / "orders.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(data)

    write(folders["history"], header, history)
    write(folders["stripped"], ALLOWED, later)
    poisoned = [
        {**r, "order_delivered_customer_date": "2017-01-01 00:00:00",
         "order_estimated_delivery_date": "2030-01-01 00:00:00"}
        for r in later
    ]  # fmt: skip
    write(folders["full"], header, poisoned)
    holes = [dict(r) for r in later]
    holes[0]["order_approved_at"] = ""
    holes[1]["customer_id"] = "nobody"
    holes[2]["order_id"] = "no-items-order"
    write(folders["holes"], ALLOWED, holes)
    return folders["history"], folders["stripped"], folders["full"], [r["order_id"] for r in later]


def _predict(history: Path, orders: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WAYBILL, "eta", "predict", "--history", str(history), "--orders", str(orders)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(not (DATA / "orders.csv").exists(), reason=f"no Olist data at {DATA}")
def test_waybill_eta_predict_on_real_orders(tmp_path: Path) -> None:
    history, stripped, full, ids = _slice(tmp_path)
    result = _predict(history, stripped)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "order_id,earliest,latest,most_likely"
    rows = list(csv.DictReader(lines))
    assert [r["order_id"] for r in rows] == ids
    for r in rows:
        earliest, latest, likely = (
            date.fromisoformat(r[k]) for k in ("earliest", "latest", "most_likely")
        )
        assert earliest <= likely <= latest
        assert (latest - earliest).days < 90

    # Extra columns of orders.csv are never read: poisoned answers change nothing.
    assert _predict(history, full).stdout == result.stdout

    holes = _predict(history, tmp_path / "holes")
    assert holes.returncode == 0, holes.stderr
    assert len(holes.stdout.splitlines()) == len(lines)
    assert "no-items-order," in holes.stdout

    missing = _predict(history, tmp_path / "nowhere")
    assert missing.returncode != 0


# ---------------------------------------------------------------------------------------------
# The additive legs: facts beyond groups


def test_a_later_shipping_deadline_gives_a_later_window() -> None:
    rng = random.Random(5)
    history = []
    for i in range(600):
        bought = T0 - timedelta(hours=4 * i)
        allowance = rng.choice([2, 10])  # the seller's hand-over deadline, in days
        handling = rng.randint(0, 2) + (6 if allowance == 10 else 0)
        r = record(bought, handling, rng.randint(2, 4), seller=f"s{i % 50}")
        facts = OrderFacts(
            **{**r.facts.__dict__, "shipping_limit_at": bought + timedelta(allowance)}
        )
        history.append(DeliveryRecord(facts, r.handed_over_at, r.delivered_at))
    model = train(history, CALENDAR)
    assert "handling" in model.additive

    def facts(allowance: int | None) -> OrderFacts:
        limit = T0 + timedelta(days=allowance) if allowance is not None else None
        return OrderFacts(
            purchased_at=T0, seller_id="s1", origin_region="SP", destination_region="RJ",
            shipping_limit_at=limit,
        )  # fmt: skip

    soon, late, unknown = (estimate(model, facts(a)) for a in (2, 10, None))
    assert late.latest > soon.latest and late.most_likely > soon.most_likely
    assert soon.latest <= unknown.latest <= late.latest  # unknown: in between


def test_a_dearer_freight_to_a_farther_zip_gives_a_later_window() -> None:
    rng = random.Random(6)
    history = []
    for i in range(600):
        far = rng.random() < 0.5
        r = record(
            T0 - timedelta(hours=4 * i), 1, rng.randint(10, 14) if far else rng.randint(2, 4)
        )
        facts = OrderFacts(
            **{**r.facts.__dict__, "freight": 60.0 if far else 10.0,
               "destination_zip": "69000" if far else "01000", "origin_zip": "01300"}
        )  # fmt: skip
        history.append(DeliveryRecord(facts, r.handed_over_at, r.delivered_at))
    model = train(history, CALENDAR)
    base = OrderFacts(purchased_at=T0, origin_region="SP", destination_region="RJ")
    near = estimate(
        model, OrderFacts(**{**base.__dict__, "freight": 10.0, "destination_zip": "01000"})
    )
    far = estimate(
        model, OrderFacts(**{**base.__dict__, "freight": 60.0, "destination_zip": "69000"})
    )
    assert far.earliest > near.latest


def test_groups_only_model_still_works() -> None:
    rng = random.Random(7)
    history = [
        record(T0 - timedelta(hours=5 * i), rng.randint(0, 4), rng.randint(2, 9))
        for i in range(300)
    ]
    params = Params(**{**CALENDAR.__dict__, "leg_model": "groups"})
    model = train(history, params)
    assert not model.additive
    facts = OrderFacts(purchased_at=T0, seller_id="s1", origin_region="SP", destination_region="RJ")
    e = estimate(Model.from_json(model.to_json()), facts)
    assert T0.date() <= e.earliest <= e.most_likely <= e.latest
    bare = estimate(Model(params=Params()), facts)  # no history at all: still a window
    assert T0.date() <= bare.earliest <= bare.latest


def test_load_reads_the_deadline_and_survives_its_absence(tmp_path: Path) -> None:
    from waybill.tracking.eta_cli import load

    def write(name: str, rows: list[dict[str, str]]) -> None:
        with (tmp_path / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    write("orders.csv", [dict(zip(ALLOWED, ["o1", "c1", "2017-03-01 10:00:00", ""], strict=True))])
    write("customers.csv", [{"customer_id": "c1", "customer_zip_code_prefix": "1000",
                             "customer_city": "sp", "customer_state": "SP"}])  # fmt: skip
    item = {"order_id": "o1", "order_item_id": "1", "product_id": "p", "seller_id": "s",
            "shipping_limit_date": "2017-03-07 10:00", "price": "10",
            "freight_value": "5"}  # fmt: skip
    write("order_items.csv", [item])
    (facts,) = [o.facts for o in load(tmp_path, history=False)]
    assert facts is not None and facts.shipping_limit_at == datetime(2017, 3, 7, 10, 0)
    assert facts.items == 1
    write("order_items.csv", [{k: v for k, v in item.items() if k != "shipping_limit_date"}])
    (facts,) = [o.facts for o in load(tmp_path, history=False)]
    assert facts is not None and facts.shipping_limit_at is None
