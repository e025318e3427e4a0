"""``waybill eta``: delivery estimates from folders in the Olist marketplace layout.

``predict`` learns from the delivered orders of ``--history`` and writes, for every order of
``--orders``, ``order_id,earliest,latest,most_likely``. Of those orders only the purchase and
approval times are read from ``orders.csv`` (their items, customers, sellers and products are
used as facts known at purchase): a prediction must not see what it predicts.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click

from waybill.tracking.estimate import DeliveryRecord, Estimate, OrderFacts, estimate, train

#: The only columns of ``--orders``' orders.csv that are read.
ORDER_COLUMNS = ("order_id", "customer_id", "order_purchase_timestamp", "order_approved_at")


@dataclass(frozen=True)
class OlistOrder:
    order_id: str
    facts: OrderFacts | None  # None: no usable purchase time
    status: str | None = None
    record: DeliveryRecord | None = None


def _rows(path: Path) -> Iterator[dict[str, str]]:
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            yield {(k or "").strip(): (v or "").strip() for k, v in row.items()}


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=None)  # local marketplace time throughout


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return number if number is not None and number == number else None  # drop NaN


def load(folder: Path, *, history: bool) -> list[OlistOrder]:
    """Orders of one folder with the facts of their first seller and their items' totals.

    With ``history=False`` only ``ORDER_COLUMNS`` of orders.csv are looked at.
    """
    customers = {r.get("customer_id", ""): r for r in _rows(folder / "customers.csv")}
    sellers = {r.get("seller_id", ""): r for r in _rows(folder / "sellers.csv")}
    products = {r.get("product_id", ""): r for r in _rows(folder / "products.csv")}
    items: dict[str, list[dict[str, str]]] = {}
    for row in _rows(folder / "order_items.csv"):
        items.setdefault(row.get("order_id", ""), []).append(row)

    orders = []
    for row in _rows(folder / "orders.csv"):
        order_id = row.get("order_id", "")
        if not order_id:
            continue
        seen = {k: row.get(k, "") for k in ORDER_COLUMNS}  # the rest stays unread unless history
        purchased = _time(seen["order_purchase_timestamp"])
        approved = _time(seen["order_approved_at"])
        if purchased is None:
            purchased = approved
        if purchased is None:
            orders.append(OlistOrder(order_id, None))
            continue
        customer = customers.get(seen["customer_id"], {})
        lines = sorted(items.get(order_id, []), key=lambda r: _number(r.get("order_item_id")) or 0)
        seller = sellers.get(lines[0].get("seller_id", ""), {}) if lines else {}
        limits = [t for t in (_time(line.get("shipping_limit_date")) for line in lines) if t]
        weight = volume = freight = price = 0.0
        known_weight = known_volume = bool(lines)
        for line in lines:
            product = products.get(line.get("product_id", ""), {})
            w = _number(product.get("product_weight_g"))
            sides = [_number(product.get(f"product_{s}_cm")) for s in ("length", "height", "width")]
            if w is None:
                known_weight = False
            else:
                weight += w
            if any(s is None for s in sides):
                known_volume = False
            else:
                volume += (sides[0] or 0) * (sides[1] or 0) * (sides[2] or 0)
            freight += _number(line.get("freight_value")) or 0.0
            price += _number(line.get("price")) or 0.0
        facts = OrderFacts(
            purchased_at=purchased,
            approved_at=approved,
            seller_id=(lines[0].get("seller_id") or None) if lines else None,
            origin_region=seller.get("seller_state") or None,
            origin_zip=seller.get("seller_zip_code_prefix") or None,
            destination_region=customer.get("customer_state") or None,
            destination_zip=customer.get("customer_zip_code_prefix") or None,
            destination_city=customer.get("customer_city") or None,
            weight_g=weight if known_weight else None,
            volume_cm3=volume if known_volume else None,
            freight=freight if lines else None,
            price=price if lines else None,
            shipping_limit_at=min(limits) if limits else None,
            items=len(lines) or None,
        )
        if not history:
            orders.append(OlistOrder(order_id, facts))
            continue
        record = DeliveryRecord(
            facts=facts,
            handed_over_at=_time(row.get("order_delivered_carrier_date")),
            delivered_at=_time(row.get("order_delivered_customer_date")),
        )
        orders.append(OlistOrder(order_id, facts, row.get("order_status") or None, record))
    return orders


def history_records(orders: list[OlistOrder]) -> list[DeliveryRecord]:
    """The delivered orders of a history folder, as records to learn from."""
    return [
        o.record
        for o in orders
        if o.record is not None
        and o.record.delivered_at is not None
        and (o.status or "delivered") == "delivered"
    ]


@click.group()
def eta() -> None:
    """Delivery-date estimates learned from delivered orders."""


@eta.command()
@click.option(
    "--history",
    "history_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder in the Olist layout whose delivered orders are learned from.",
)
@click.option(
    "--orders",
    "orders_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder in the Olist layout with the orders to estimate (only "
    + ", ".join(ORDER_COLUMNS)
    + " of orders.csv are read).",
)
def predict(history_dir: Path, orders_dir: Path) -> None:
    """Write order_id,earliest,latest,most_likely (CSV) for every order of --orders."""
    if not (history_dir / "orders.csv").exists():
        raise click.ClickException(f"{history_dir / 'orders.csv'} not found")
    if not (orders_dir / "orders.csv").exists():
        raise click.ClickException(f"{orders_dir / 'orders.csv'} not found")
    records = history_records(load(history_dir, history=True))
    model = train(records)
    targets = load(orders_dir, history=False)
    fallback = max((r.facts.purchased_at for r in records), default=datetime(2000, 1, 1))
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["order_id", "earliest", "latest", "most_likely"])
    for order in targets:
        # No purchase time at all: estimate as if bought at the end of the history.
        facts = order.facts or OrderFacts(purchased_at=fallback)
        est: Estimate = estimate(model, facts)
        out.writerow(
            [
                order.order_id,
                est.earliest.isoformat(),
                est.latest.isoformat(),
                est.most_likely.isoformat(),
            ]
        )
