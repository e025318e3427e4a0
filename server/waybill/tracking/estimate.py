"""Delivery-date estimates learned from delivered history. Plain Python: no Flask, no database.

An order's way to the customer is split in two legs, each learned as a distribution over whole
days rather than a single number, because the promise we show ("arrives by") is a quantile:

* **handling**: purchase to hand-over to the carrier. It is the seller's doing, so it is
  grouped by seller, shrunk towards the seller's state and then towards everyone;
* **transit**: hand-over to delivery. It is the carrier's doing and depends on the lane, so it
  is grouped by carrier/service (when known) and lane (origin state -> destination state),
  shrunk towards the destination state and then towards everyone.

A group with few deliveries says little about itself, so its histogram is blended with its
wider group's in proportion to how much (recency-weighted) evidence it has: with ``w`` weight of
deliveries and prior strength ``k`` the blend is ``(w * own + k * wider) / (w + k)``. Recent
deliveries weigh more (an exponential half-life) because carriers and sellers change.

With enough history (``Params.leg_model = "additive"``, the default) each leg is instead
``log1p(days) = base + sum of feature effects + residual``: ridge-shrunk effects of levels
(handling: seller's state, seller, days to the seller's ``shipping_limit_at`` deadline,
approval delay, weekday; transit: destination state, lane, customer zip prefix of 2 and 3
digits, freight, weight, seller-to-customer zip distance), fitted by backfitting, with the
empirical residual distribution turned back into a histogram of days per order. The groups
are still learned: they serve the last mile, small histories and models stored before.
Chosen on Jan-Apr -> May-Jun, Jan-May -> Jun and Jan-Mar -> Apr-May (never Jul-Aug): at
matched on-time rate it lowers the MAE of ``latest`` by ~1 day and the width by ~1.2 days.

Days are counted as Brazilian business days (no weekends, no national holidays): carriers
neither hand over nor move parcels much on those, and it lets the model carry over to months
with other holidays than the ones it learned from.

The total is the convolution of the two legs. After a tracking event only the legs still ahead
count, and time already spent without the next event truncates the leg under way, so the window
narrows as the parcel gets closer. ``earliest`` and ``latest`` are quantiles whose levels are
calibrated, at training time, on the most recent deliveries predicted by a model that had not
seen them, so that the "arrives by" promise keeps its target on-time rate out of sample.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

#: Longest leg we keep apart (in counted days); longer ones are clipped into the last bin.
MAX_DAYS = 120
FORMAT_VERSION = 2

Histogram = list[float]


# ---------------------------------------------------------------------------------------------
# The calendar


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (the anonymous algorithm): carnival and Corpus Christi move."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    el = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * el) // 451
    month, day = divmod(h + el - 7 * m + 114, 31)
    return date(year, month, day + 1)


@lru_cache(maxsize=64)
def brazil_holidays(year: int) -> frozenset[date]:
    """National holidays and the carnival days on which carriers do not move parcels."""
    easter = _easter(year)
    fixed = [(1, 1), (4, 21), (5, 1), (9, 7), (10, 12), (11, 2), (11, 15), (12, 25)]
    moving = [easter - timedelta(days=48), easter - timedelta(days=47)]  # carnival Mon, Tue
    moving += [easter - timedelta(days=2), easter + timedelta(days=60)]  # Good Friday, Corpus
    return frozenset([date(year, m, d) for m, d in fixed] + moving)


def is_working_day(day: date) -> bool:
    return day.weekday() < 5 and day not in brazil_holidays(day.year)


@dataclass(frozen=True)
class DayCount:
    """Counts days either as calendar days or as working days (Brazilian calendar)."""

    working_days: bool = True

    def between(self, start: date, end: date) -> int:
        """Counted days from ``start`` to ``end``; an event on a day off counts as the next
        working day, so a Saturday delivery is never early against a Friday promise."""
        if not self.working_days:
            return (end - start).days
        if end <= start:
            return 0
        n, day = 0, start
        while day < end:
            day += timedelta(days=1)
            if is_working_day(day):
                n += 1
        return n if is_working_day(end) else n + 1

    def add(self, start: date, n: int) -> date:
        """The date ``n`` counted days after ``start`` (a working day when counting those)."""
        if not self.working_days:
            return start + timedelta(days=n)
        day = start
        while n > 0:
            day += timedelta(days=1)
            if is_working_day(day):
                n -= 1
        return day


# ---------------------------------------------------------------------------------------------
# What the server knows about an order, and a delivered one


@dataclass(frozen=True)
class OrderFacts:
    """What is known about an order when it is placed. Everything but the purchase time may be
    missing: an estimate is still given, from wider groups."""

    purchased_at: datetime
    approved_at: datetime | None = None
    seller_id: str | None = None
    origin_region: str | None = None  # seller's state
    origin_zip: str | None = None
    destination_region: str | None = None  # customer's state
    destination_zip: str | None = None
    destination_city: str | None = None
    weight_g: float | None = None
    volume_cm3: float | None = None
    freight: float | None = None
    price: float | None = None
    carrier: str | None = None
    service: str | None = None
    shipping_limit_at: datetime | None = None  # the seller's hand-over deadline
    items: int | None = None


@dataclass(frozen=True)
class DeliveryRecord:
    """One order of the history: its facts and when it reached each step."""

    facts: OrderFacts
    handed_over_at: datetime | None = None  # to the carrier
    delivered_at: datetime | None = None
    out_for_delivery_at: datetime | None = None


@dataclass(frozen=True)
class Estimate:
    earliest: date
    latest: date  # the "arrives by" promise
    most_likely: date


@dataclass(frozen=True)
class Params:
    """Hyperparameters (chosen on held-out months of the training data, see bench/eta.py)."""

    half_life_days: float = 180.0  # recency weighting of the history
    prior_strength: float = 30.0  # deliveries' worth of the wider group in a blend
    working_days: bool = True
    # The marketplace keeps ~96.6% of its promises on Jan-Jun 2017: aim a little above.
    target_on_time: float = 0.975  # share of deliveries on or before ``latest``
    # 0.15 left one validation split (Jan–Apr → May–Jun) at 77.6% coverage; 0.12 keeps every
    # split above 81% (each ~1 day wider)
    target_early: float = 0.12  # share of deliveries allowed before ``earliest``
    calibration_share: float = 0.25  # the latest share of the history used to calibrate
    calibration_folds: int = 1  # held-out share cut in this many blocks, each judged by the past
    min_calibration: int = 80  # fewer held-out deliveries than this: use nominal levels
    destination_zip_digits: int = 0  # finer transit groups by zip prefix; 0 = off
    weight_split_g: float = 2000.0  # transit groups split light/heavy at this weight; 0 = off
    leg_model: str = "additive"  # "additive" (features on log days) or "groups" (histograms)
    additive_strength: float = 20.0  # ridge shrinkage of each feature level (deliveries)
    additive_sweeps: int = 6
    min_additive: int = 200  # fewer deliveries of a leg than this: its groups instead
    handling_features: str = "o,s,lim,ap,wd"
    transit_features: str = "d,l,z2,z3,fr,wt,zd"
    total_features: str = ""  # non-empty: one additive leg for purchase -> delivery
    scale_features: str = ""  # features of the residual's spread (log-scale model)
    scale_strength: float = 50.0


# ---------------------------------------------------------------------------------------------
# Group keys: finest last. A key with a missing part is skipped, which falls back to the wider.


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value.upper() or None


def handling_keys(facts: OrderFacts, params: Params) -> list[str]:
    origin = _clean(facts.origin_region)
    keys = ["all"]
    if origin:
        keys.append(f"o:{origin}")
    if facts.seller_id:
        keys.append(f"s:{facts.seller_id}")
    return keys


def transit_keys(facts: OrderFacts, params: Params) -> list[str]:
    origin, dest = _clean(facts.origin_region), _clean(facts.destination_region)
    carrier, service = _clean(facts.carrier), _clean(facts.service)
    keys = ["all"]
    if dest:
        keys.append(f"d:{dest}")
    lane = f"{origin}>{dest}" if origin and dest else None
    if lane:
        keys.append(f"l:{lane}")
        digits = params.destination_zip_digits
        zip_ = "".join(ch for ch in facts.destination_zip or "" if ch.isdigit()).zfill(5)
        if digits and facts.destination_zip:
            keys.append(f"lz:{lane}:{zip_[:digits]}")
        if params.weight_split_g and facts.weight_g is not None:
            heavy = "h" if facts.weight_g >= params.weight_split_g else "l"
            keys.append(f"lw:{lane}:{heavy}")
    if carrier:
        keys.append(f"c:{carrier}" + (f":{lane}" if lane else ""))
        if service:
            keys.append(f"cs:{carrier}:{service}" + (f":{lane}" if lane else ""))
    return keys


# ---------------------------------------------------------------------------------------------
# Additive legs: the facts that are not groups (deadline, parcel, freight, finer geography)


def _digits(value: str | None) -> str:
    return "".join(ch for ch in value or "" if ch.isdigit())


def _bucket(value: float | None, scale: float, top: int) -> str | None:
    """A number as the level of a log-spaced bucket (None: unknown)."""
    if value is None or value < 0:
        return None
    return str(min(int(math.log1p(value) * scale), top))


def feature_levels(facts: OrderFacts, names: str) -> list[str]:
    """``family=level`` of each named feature that is known for these facts."""
    origin, dest = _clean(facts.origin_region), _clean(facts.destination_region)
    lane = f"{origin}>{dest}" if origin and dest else None
    dzip, ozip = _digits(facts.destination_zip), _digits(facts.origin_zip)
    dzip, ozip = (dzip.zfill(5) if dzip else ""), (ozip.zfill(5) if ozip else "")
    bought = facts.purchased_at
    out = []
    for name in (n.strip() for n in names.split(",")):
        level: str | None = None
        if name == "o":
            level = origin
        elif name == "s":
            level = facts.seller_id or None
        elif name == "sz2":
            level = ozip[:2] or None
        elif name == "lim" and facts.shipping_limit_at is not None:
            level = str(max(0, min((facts.shipping_limit_at.date() - bought.date()).days, 21)))
        elif name == "ap":
            if facts.approved_at is not None:
                hours = (facts.approved_at - bought).total_seconds() / 3600
                level = str(sum(hours >= h for h in (1, 12, 24, 48, 96)))
        elif name == "wd":
            level = str(bought.weekday())
        elif name == "hr":
            level = str(bought.hour // 6)
        elif name == "d":
            level = dest
        elif name == "l":
            level = lane
        elif name in ("z1", "z2", "z3") and dzip:
            level = dzip[: int(name[1])]
        elif name == "fr":
            level = _bucket(facts.freight, 3.0, 30)
        elif name == "fri" and facts.freight is not None:
            level = _bucket(facts.freight / max(facts.items or 1, 1), 3.0, 30)
        elif name == "wt":
            level = _bucket(facts.weight_g, 1.5, 30)
        elif name == "vol":
            level = _bucket(facts.volume_cm3, 1.0, 30)
        elif name == "pr":
            level = _bucket(facts.price, 1.5, 30)
        elif name == "zd" and dzip and ozip:
            level = str(min(abs(int(dzip) - int(ozip)) // 5000, 12))
        elif name == "n":
            level = str(min(facts.items, 3)) if facts.items else None
        elif name == "c":
            level = _clean(facts.carrier)
        elif name == "cs":
            carrier, service = _clean(facts.carrier), _clean(facts.service)
            level = f"{carrier}:{service}" if carrier and service else None
        if level:
            out.append(f"{name}={level}")
    return out


#: Residuals are kept as a histogram over this grid (log days).
RESIDUAL_STEP = 0.02
RESIDUAL_BINS = 400  # -4 .. +4


@dataclass
class AdditiveLeg:
    """``log1p(days) = base + sum(effects) + spread * residual``: effects are ridge-shrunk
    levels of features, fitted by backfitting; ``spread`` is a second additive model (on the
    log of the absolute residual), and the residual's distribution is the empirical one."""

    features: str
    scale_features: str = ""
    base: float = 0.0
    effects: dict[str, float] = field(default_factory=dict)
    scale_base: float = 0.0
    scale_effects: dict[str, float] = field(default_factory=dict)
    residuals: Histogram = field(default_factory=list)

    def location(self, facts: OrderFacts) -> tuple[float, float]:
        mu = self.base + sum(self.effects.get(k, 0.0) for k in feature_levels(facts, self.features))
        if not self.scale_features:
            return mu, 1.0
        g = sum(self.scale_effects.get(k, 0.0) for k in feature_levels(facts, self.scale_features))
        return mu, math.exp(g)

    def hist(self, mu: float, spread: float) -> Histogram:
        out = _empty()
        half = RESIDUAL_BINS // 2
        for i, p in enumerate(self.residuals):
            if p > 0:
                y = mu + spread * (i - half + 0.5) * RESIDUAL_STEP
                out[max(0, min(MAX_DAYS, round(math.expm1(max(y, 0.0)))))] += p
        return _normalised(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "f": self.features,
            "sf": self.scale_features,
            "b": round(self.base, 6),
            "e": {k: round(v, 6) for k, v in sorted(self.effects.items())},
            "sb": round(self.scale_base, 6),
            "se": {k: round(v, 6) for k, v in sorted(self.scale_effects.items())},
            "r": {str(i): round(x, 6) for i, x in enumerate(self.residuals) if x > 0},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdditiveLeg:
        residuals = [0.0] * RESIDUAL_BINS
        for i, x in d["r"].items():
            residuals[int(i)] = float(x)
        return cls(
            features=d["f"],
            scale_features=d["sf"],
            base=float(d["b"]),
            effects={k: float(v) for k, v in d["e"].items()},
            scale_base=float(d["sb"]),
            scale_effects={k: float(v) for k, v in d["se"].items()},
            residuals=residuals,
        )


def _backfit(
    rows: Sequence[tuple[list[str], float, float]], strength: float, sweeps: int
) -> tuple[float, dict[str, float]]:
    """Ridge regression on one-hot levels by block coordinate descent (one block per family)."""
    total_w = sum(w for _, _, w in rows)
    base = sum(y * w for _, y, w in rows) / total_w
    effects: dict[str, float] = {}
    pred = [base] * len(rows)
    families: list[str] = []
    for levels, _, _ in rows:
        for key in levels:
            fam = key.split("=", 1)[0]
            if fam not in families:
                families.append(fam)
    for _ in range(sweeps):
        for fam in families:
            num: dict[str, float] = {}
            den: dict[str, float] = {}
            for i, (levels, y, w) in enumerate(rows):
                for key in levels:
                    if key.startswith(fam + "="):
                        partial = y - pred[i] + effects.get(key, 0.0)
                        num[key] = num.get(key, 0.0) + w * partial
                        den[key] = den.get(key, 0.0) + w
            new = {k: num[k] / (den[k] + strength) for k in num}
            for i, (levels, _, _) in enumerate(rows):
                for key in levels:
                    if key in new:
                        pred[i] += new[key] - effects.get(key, 0.0)
            effects.update(new)
    return base, effects


def _fit_additive(
    data: Sequence[tuple[OrderFacts, int, float]], features: str, params: Params
) -> AdditiveLeg | None:
    if len(data) < max(params.min_additive, 1):
        return None
    leg = AdditiveLeg(features, params.scale_features)
    rows = [(feature_levels(f, features), math.log1p(v), w) for f, v, w in data]
    leg.base, leg.effects = _backfit(rows, params.additive_strength, params.additive_sweeps)
    resid = [y - leg.base - sum(leg.effects.get(k, 0.0) for k in lv) for lv, y, _ in rows]
    spreads = [1.0] * len(rows)
    if params.scale_features:
        srows = [
            (feature_levels(f, params.scale_features), math.log(abs(r) + 0.05), w)
            for (f, _, w), r in zip(data, resid, strict=True)
        ]
        leg.scale_base, leg.scale_effects = _backfit(
            srows, params.scale_strength, params.additive_sweeps
        )
        spreads = [math.exp(sum(leg.scale_effects.get(k, 0.0) for k in lv)) for lv, _, _ in srows]
    hist = [0.0] * RESIDUAL_BINS
    half = RESIDUAL_BINS // 2
    for r, s, (_, _, w) in zip(resid, spreads, rows, strict=True):
        hist[max(0, min(RESIDUAL_BINS - 1, math.floor(r / s / RESIDUAL_STEP) + half))] += w
    total = sum(hist)
    leg.residuals = [x / total for x in hist]
    return leg


# ---------------------------------------------------------------------------------------------
# Histograms


def _empty() -> Histogram:
    return [0.0] * (MAX_DAYS + 1)


def _normalised(hist: Sequence[float]) -> Histogram:
    total = sum(hist)
    if total <= 0:
        return [1.0] + [0.0] * MAX_DAYS  # nothing known at all: no time
    return [x / total for x in hist]


def _blend(own: Sequence[float], weight: float, wider: Sequence[float], k: float) -> Histogram:
    total = sum(own)
    if total <= 0:
        return list(wider)
    return [(o / total * weight + k * w) / (weight + k) for o, w in zip(own, wider, strict=True)]


def _convolve(a: Sequence[float], b: Sequence[float]) -> Histogram:
    out = _empty()
    nz_b = [(j, y) for j, y in enumerate(b) if y > 0]
    for i, x in enumerate(a):
        if x <= 0:
            continue
        for j, y in nz_b:
            out[min(i + j, MAX_DAYS)] += x * y
    return out


def _at_least(hist: Sequence[float], elapsed: int) -> Histogram:
    """The leg given that it has already lasted ``elapsed`` days without ending. When history
    says that never happens, the parcel is late beyond what we have seen: it ends today."""
    elapsed = max(0, min(elapsed, MAX_DAYS))
    tail = [0.0] * elapsed + list(hist[elapsed:])
    if sum(tail) <= 1e-12:
        tail = _empty()
        tail[elapsed] = 1.0
    return _normalised(tail)


def _mode(hist: Sequence[float]) -> int:
    return max(range(len(hist)), key=lambda i: (hist[i], -i))


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class Group:
    weight: float
    hist: Histogram


@dataclass
class Model:
    """Learned leg distributions by group, and the calibrated quantile levels."""

    params: Params
    handling: dict[str, Group] = field(default_factory=dict)
    transit: dict[str, Group] = field(default_factory=dict)
    last_mile: dict[str, Group] = field(default_factory=dict)
    lam_latest: float = 20.0
    mu_earliest: float = 20.0
    trained_on: int = 0
    additive: dict[str, AdditiveLeg] = field(default_factory=dict)
    _cache: dict[tuple[str, tuple[str, ...]], Histogram] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def days(self) -> DayCount:
        return DayCount(self.params.working_days)

    def leg(self, name: str, keys: Sequence[str]) -> Histogram:
        """The blended distribution of a leg along a chain of group keys (widest first)."""
        cache_key = (name, tuple(keys))
        hit = self._cache.get(cache_key)
        if hit is not None:
            return hit
        groups: dict[str, Group] = getattr(self, name)
        # Start from a flat-ish floor so that no day is impossible in a group of one.
        top = groups.get(keys[0]) if keys else None
        dist = _normalised(top.hist) if top else _normalised(_default_leg(name))
        for key in keys[1:]:
            group = groups.get(key)
            if group is not None and group.weight > 0:
                dist = _blend(group.hist, group.weight, dist, self.params.prior_strength)
        self._cache[cache_key] = dist
        return dist

    def leg_of(self, name: str, facts: OrderFacts) -> Histogram:
        """The distribution of a leg for these facts: additive when fitted, else groups."""
        leg = self.additive.get(name)
        if leg is None:
            keys = {"handling": handling_keys, "transit": transit_keys}[name](facts, self.params)
            return self.leg(name, keys)
        mu, spread = leg.location(facts)
        cache_key = (name, (f"{mu:.3f}", f"{spread:.3f}"))
        hit = self._cache.get(cache_key)
        if hit is None:
            hit = self._cache[cache_key] = leg.hist(mu, spread)
        return hit

    def to_json(self) -> str:
        def groups(d: dict[str, Group]) -> dict[str, Any]:
            return {
                k: {
                    "w": round(g.weight, 6),
                    "h": {str(i): round(x, 6) for i, x in enumerate(g.hist) if x > 0},
                }
                for k, g in sorted(d.items())
            }

        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "params": asdict(self.params),
                "lam_latest": self.lam_latest,
                "mu_earliest": self.mu_earliest,
                "trained_on": self.trained_on,
                "handling": groups(self.handling),
                "transit": groups(self.transit),
                "last_mile": groups(self.last_mile),
                "additive": {k: v.to_dict() for k, v in sorted(self.additive.items())},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Model:
        data = json.loads(text)
        if data.get("version") not in (1, FORMAT_VERSION):
            raise ValueError(f"unknown model format {data.get('version')!r}")

        def groups(d: dict[str, Any]) -> dict[str, Group]:
            out = {}
            for key, g in d.items():
                hist = _empty()
                for i, x in g["h"].items():
                    hist[int(i)] = float(x)
                out[key] = Group(float(g["w"]), hist)
            return out

        return cls(
            params=Params(**data["params"]),
            handling=groups(data["handling"]),
            transit=groups(data["transit"]),
            last_mile=groups(data["last_mile"]),
            lam_latest=float(data["lam_latest"]),
            mu_earliest=float(data["mu_earliest"]),
            trained_on=int(data["trained_on"]),
            additive={k: AdditiveLeg.from_dict(v) for k, v in data.get("additive", {}).items()},
        )


def _default_leg(name: str) -> Histogram:
    """What we assume with no history at all: a short last mile, else a week."""
    hist = _empty()
    if name == "last_mile":
        hist[0], hist[1], hist[2] = 0.8, 0.15, 0.05
    else:
        for i in range(1, 11):
            hist[i] = 1.0
    return hist


def _record_legs(
    record: DeliveryRecord, days: DayCount
) -> tuple[int | None, int | None, int | None]:
    """Counted days of handling, transit and last mile of a delivered record (None: unknown).
    Clock errors (hand-over after delivery) are clipped rather than dropped."""
    f, hand, done = record.facts, record.handed_over_at, record.delivered_at
    if done is None:
        return None, None, None
    bought = f.purchased_at.date()
    handling = transit = last = None
    if hand is not None:
        hand_day = min(max(hand.date(), bought), done.date())
        handling = min(days.between(bought, hand_day), MAX_DAYS)
        transit = min(days.between(hand_day, done.date()), MAX_DAYS)
    if record.out_for_delivery_at is not None:
        ofd = min(record.out_for_delivery_at.date(), done.date())
        last = min(days.between(ofd, done.date()), MAX_DAYS)
    return handling, transit, last


def _fit(records: Sequence[DeliveryRecord], params: Params) -> Model:
    model = Model(params=params)
    days = model.days
    usable = [r for r in records if r.delivered_at is not None]
    if not usable:
        return model
    newest = max(r.facts.purchased_at for r in usable)
    legs: dict[str, list[tuple[OrderFacts, int, float]]] = {
        "handling": [],
        "transit": [],
        "total": [],
    }
    for record in usable:
        age = (newest - record.facts.purchased_at).total_seconds() / 86400
        weight = 0.5 ** (age / params.half_life_days) if params.half_life_days > 0 else 1.0
        handling, transit, last = _record_legs(record, days)
        total = days.between(record.facts.purchased_at.date(), record.delivered_at.date())  # type: ignore[union-attr]
        legs["total"].append((record.facts, min(total, MAX_DAYS), weight))
        for name, value, keys in (
            ("handling", handling, handling_keys(record.facts, params)),
            ("transit", transit, transit_keys(record.facts, params)),
            ("last_mile", last, ["all"]),
        ):
            if value is None:
                continue
            if name in legs:
                legs[name].append((record.facts, value, weight))
            groups: dict[str, Group] = getattr(model, name)
            for key in keys:
                group = groups.setdefault(key, Group(0.0, _empty()))
                group.weight += weight
                group.hist[value] += weight
    model.trained_on = len(usable)
    if params.leg_model == "additive":
        for name, features in (
            ("handling", params.handling_features),
            ("transit", params.transit_features),
            ("total", params.total_features),
        ):
            if not features:
                continue
            leg = _fit_additive(legs[name], features, params)
            if leg is not None:
                model.additive[name] = leg
    return model


# ---------------------------------------------------------------------------------------------
# Estimating

#: Stages, in the vocabulary of ``waybill.tracking.statuses``.
BEFORE_HAND_OVER = frozenset({"confirmed", "processing", "ordered", "approved"})
IN_TRANSIT = frozenset({"shipped", "in_transit", "exception", "handed_over"})
LAST_MILE = frozenset({"out_for_delivery", "attempted", "available_for_pickup"})


def distribution(
    model: Model,
    facts: OrderFacts,
    *,
    now: datetime | None = None,
    stage: str = "confirmed",
    stage_at: datetime | None = None,
) -> tuple[date, Histogram]:
    """The distribution of the delivery day as counted days after a start date."""
    days = model.days
    stage = str(stage).lower()
    if stage in IN_TRANSIT or stage in LAST_MILE:
        start = (stage_at or now or facts.purchased_at).date()
        leg = (
            model.leg_of("transit", facts)
            if stage in IN_TRANSIT
            else model.leg("last_mile", ["all"])
        )
        elapsed = days.between(start, now.date()) if now else 0
        return start, _at_least(leg, elapsed)
    start = facts.purchased_at.date()
    if "total" in model.additive:
        total = model.leg_of("total", facts)
        return start, _at_least(total, days.between(start, now.date())) if now else total
    handling = model.leg_of("handling", facts)
    if now is not None:
        # Not handed over yet: the handling leg has lasted at least this long.
        handling = _at_least(handling, days.between(start, now.date()))
    transit = model.leg_of("transit", facts)
    return start, _convolve(handling, transit)


@lru_cache(maxsize=4096)
def _offsets(start: date, working_days: bool) -> tuple[int, ...]:
    """Calendar days from ``start`` to each counted day: the promise is judged in dates."""
    days = DayCount(working_days)
    out, day = [0], start
    for _ in range(MAX_DAYS):
        day = days.add(day, 1)
        out.append((day - start).days)
    return tuple(out)


def _pick_latest(dist: Sequence[float], offsets: Sequence[int], lam: float) -> int:
    """The day that maximises ``lam * P(on time) - E|latest - actual|`` (in calendar days).

    One level for everyone would be a fixed quantile; trading on-time against error order by
    order instead spends the lateness allowance where the tail is long and thin (an extra day
    buys little there) and keeps promises tight where deliveries bunch up. ``lam`` is set by
    calibration so that the share on time hits the target.
    """
    total = sum(p * c for p, c in zip(dist, offsets, strict=False))
    best, best_value = 0, -math.inf
    cdf = partial = 0.0
    for day, p in enumerate(dist):
        cdf += p
        partial += p * offsets[day]
        c = offsets[day]
        value = lam * cdf - (c * cdf - partial + (total - partial) - c * (1.0 - cdf))
        if value > best_value + 1e-12:
            best, best_value = day, value
        if cdf >= 1.0 - 1e-9:
            break
    return best


def _pick_earliest(dist: Sequence[float], offsets: Sequence[int], mu: float, latest: int) -> int:
    """The day up to ``latest`` that maximises ``offset - mu * P(actual before it)``: the
    window is made narrow where that costs few early deliveries. ``mu`` is calibrated like
    ``lam``."""
    best, best_value = 0, -math.inf
    before = 0.0  # P(actual < day)
    for day, p in enumerate(dist[: latest + 1]):
        value = offsets[day] - mu * before
        if value > best_value + 1e-12:
            best, best_value = day, value
        before += p
        if before >= 1.0 - 1e-9:
            break
    return best


def estimate(
    model: Model,
    facts: OrderFacts,
    *,
    now: datetime | None = None,
    stage: str = "confirmed",
    stage_at: datetime | None = None,
) -> Estimate:
    """Earliest, latest ("arrives by") and most likely delivery dates.

    ``stage`` is the order's current status (``confirmed``/``processing`` before the hand-over,
    ``shipped``/``in_transit`` after it, ``out_for_delivery``, ``delivered``) and ``stage_at``
    when it was reached; ``now`` (default: ``stage_at``) is when we look, so that time spent
    without news moves the window on.
    """
    if str(stage).lower() == "delivered":
        day = (stage_at or now or facts.purchased_at).date()
        return Estimate(day, day, day)
    start, dist = distribution(model, facts, now=now, stage=stage, stage_at=stage_at)
    offsets = _offsets(start, model.params.working_days)
    hi = _pick_latest(dist, offsets, model.lam_latest)
    lo = _pick_earliest(dist, offsets, model.mu_earliest, hi)
    mode = min(max(_mode(dist), lo), hi)
    return Estimate(*(start + timedelta(days=offsets[d]) for d in (lo, hi, mode)))


def _calibrate(
    model: Model | Sequence[tuple[Model, Sequence[DeliveryRecord]]],
    held: Sequence[DeliveryRecord],
    target_on_time: float,
    target_early: float,
) -> tuple[float, float]:
    """``lam`` and ``mu`` that would have hit the targets on ``held`` (bisection: the share
    on time grows with ``lam``, the share early grows with ``mu``). ``model`` may also be a
    list of (judge, its held-out records), pooled."""
    judged = [(model, held)] if isinstance(model, Model) else list(model)
    cases = []
    for judge, records in judged:
        for record in records:
            assert record.delivered_at is not None
            start, dist = distribution(judge, record.facts)
            offsets = _offsets(start, judge.params.working_days)
            actual = (record.delivered_at.date() - start).days
            cases.append((dist, offsets, actual))

    def on_time(lam: float) -> float:
        return sum(offs[_pick_latest(d, offs, lam)] >= a for d, offs, a in cases) / len(cases)

    lo, hi = 0.0, 4096.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if on_time(mid) >= target_on_time else (mid, hi)
    lam = hi
    latest = [_pick_latest(d, offs, lam) for d, offs, _ in cases]

    def early(mu: float) -> float:
        picks = (
            offs[_pick_earliest(d, offs, mu, hi)]
            for (d, offs, _), hi in zip(cases, latest, strict=True)
        )
        return sum(p > a for p, (_, _, a) in zip(picks, cases, strict=True)) / len(cases)

    lo, hi = 0.0, 4096.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if early(mid) > target_early else (lo, mid)
    return lam, hi


def train(records: Iterable[DeliveryRecord], params: Params | None = None) -> Model:
    """Learn from delivered history and calibrate how far the window reaches.

    The most recent ``calibration_share`` of deliveries (by purchase time) is predicted by a
    model that saw only the older ones; the trade-offs that would have hit the targets there
    are the ones used by the model trained on everything. This honours the drift between
    training and use that in-sample quantiles ignore. Orders still on their way should not be
    passed: they are the slow ones, and leaving them out biases the history fast, so the
    server should train on orders purchased long enough ago.
    """
    params = params or Params()
    delivered = sorted(
        (r for r in records if r.delivered_at is not None), key=lambda r: r.facts.purchased_at
    )
    model = _fit(delivered, params)
    cut = int(len(delivered) * (1 - params.calibration_share))
    held = delivered[cut:]
    judged: list[tuple[Model, Sequence[DeliveryRecord]]]
    if len(held) >= params.min_calibration and cut >= params.min_calibration:
        folds = max(1, params.calibration_folds)
        bounds = [cut + (len(delivered) - cut) * i // folds for i in range(folds + 1)]
        judged = [
            (_fit(delivered[:a], params), delivered[a:b])
            for a, b in zip(bounds, bounds[1:], strict=False)
        ]
    else:  # too little history to hold some back: calibrate in sample
        judged = [(model, delivered)]
    if delivered:
        model.lam_latest, model.mu_earliest = _calibrate(
            judged, [], params.target_on_time, params.target_early
        )
    return model
