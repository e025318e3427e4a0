"""What a notification says: a title and body per status and language, the push payload, the mail.

Plain functions of their inputs, so every wording is tested without sending anything.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from waybill.notify.preferences import zone

#: RFC 8291 leaves 3,993 bytes of plaintext in a 4,096-byte aes128gcm record.
MAX_PAYLOAD = 3993

_PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "confirmed": "is confirmed",
        "processing": "is being prepared",
        "shipped": "has shipped",
        "in_transit": "is on its way",
        "out_for_delivery": "is out for delivery",
        "partially_delivered": "is partly delivered",
        "estimate_changed": "has a new delivery estimate",
        "delivered": "has been delivered",
        "attempted": "could not be delivered",
        "available_for_pickup": "is ready for pickup",
        "exception": "is delayed",
        "returned": "is going back to the sender",
        "cancelled": "was cancelled",
    },
    "de": {
        "confirmed": "ist bestätigt",
        "processing": "wird vorbereitet",
        "shipped": "wurde versendet",
        "in_transit": "ist unterwegs",
        "out_for_delivery": "ist in Zustellung",
        "partially_delivered": "ist teilweise zugestellt",
        "estimate_changed": "hat einen neuen Liefertermin",
        "delivered": "wurde zugestellt",
        "attempted": "konnte nicht zugestellt werden",
        "available_for_pickup": "liegt zur Abholung bereit",
        "exception": "verzögert sich",
        "returned": "geht zurück an den Absender",
        "cancelled": "wurde storniert",
    },
}
_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Order #{number} {phrase}",
        "today": "arriving today",
        "tomorrow": "arriving tomorrow",
        "on": "arriving {date}",
        "window": "arriving {first} – {last}",
        "from": "From {merchant}",
        "delivered": "Enjoy your order from {merchant}.",
        "partially_delivered": "{merchant}: one package has arrived, the rest is on its way.",
        "attempted": "{merchant}: the carrier will try again or leave a note.",
        "pickup": "{merchant}: collect it with your ID.",
        "pickup_by": "{merchant}: collect it with your ID by {deadline}.",
        "pickup_over": "{merchant}: the pickup period ended {deadline}.",
        "cancelled": "{merchant} has cancelled this order.",
        "track": "Track your order",
        "why": "You get this email because you follow this order on Waybill.",
        "unsubscribe": "Stop these emails",
    },
    "de": {
        "title": "Bestellung #{number} {phrase}",
        "today": "kommt heute",
        "tomorrow": "kommt morgen",
        "on": "kommt am {date}",
        "window": "kommt {first} – {last}",
        "from": "Von {merchant}",
        "delivered": "Viel Freude mit deiner Bestellung von {merchant}.",
        "partially_delivered": "{merchant}: Ein Paket ist angekommen, der Rest ist unterwegs.",
        "attempted": "{merchant}: Der Zusteller versucht es erneut.",
        "pickup": "{merchant}: Bitte mit Ausweis abholen.",
        "pickup_by": "{merchant}: Bitte bis {deadline} mit Ausweis abholen.",
        "pickup_over": "{merchant}: Die Abholfrist ist am {deadline} abgelaufen.",
        "cancelled": "{merchant} hat diese Bestellung storniert.",
        "track": "Sendung verfolgen",
        "why": "Du erhältst diese E-Mail, weil du diese Bestellung bei Waybill verfolgst.",
        "unsubscribe": "Diese E-Mails abbestellen",
    },
}
_WEEKDAYS = {
    "en": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
    "de": ["Mo.", "Di.", "Mi.", "Do.", "Fr.", "Sa.", "So."],
}


@dataclass(frozen=True)
class OrderFacts:
    """What the wording needs to know about the order."""

    order_id: int
    number: str  # the merchant's order number (external id)
    merchant: str
    status: str
    url: str
    estimated_delivery: datetime | None = None
    #: What the carrier or the shop wrote with the event ("Recipient not at home…", the reason
    #: for a cancellation), in their words.
    note: str | None = None
    #: Until when a parcel of the order waits at its pickup point (the latest such deadline).
    pickup_until: datetime | None = None
    #: Waybill's own window (dates in the reader's zone), when it has one: said instead of
    #: ``estimated_delivery``, the merchant's or carrier's single date.
    window: tuple[date, date] | None = None


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    lang: str = "en"
    note: str = ""  # the event's own words, shown as they came


def _lang(language: str) -> str:
    return language if language in _TEXT else "en"


def estimate_phrase(estimate: datetime, now: datetime, language: str, timezone: str) -> str:
    t = _TEXT[_lang(language)]
    local = zone(timezone)
    day, today = estimate.astimezone(local).date(), now.astimezone(local).date()
    if day == today:
        return t["today"]
    if (day - today).days == 1:
        return t["tomorrow"]
    weekday = _WEEKDAYS[_lang(language)][day.weekday()]
    date = f"{weekday} {day.day}.{day.month}." if language == "de" else f"{weekday} {day:%d %b}"
    return t["on"].format(date=date)


_TODAY = {"en": "today", "de": "heute"}


def _day_phrase(day: date, today: date, lang: str) -> str:
    if day == today:
        return _TODAY[lang]
    weekday = _WEEKDAYS[lang][day.weekday()]
    return f"{weekday} {day.day}.{day.month}." if lang == "de" else f"{weekday} {day:%d %b}"


def window_phrase(first: date, last: date, now: datetime, language: str, timezone: str) -> str:
    """Waybill's window as "arriving Tue 14 Dec – Thu 16 Dec" ("arriving tomorrow" for one
    day), its dates already in the reader's zone."""
    lang = _lang(language)
    t = _TEXT[lang]
    today = now.astimezone(zone(timezone)).date()
    first = max(first, today)  # a window that began is said from today
    if last <= first:
        if last == today:
            return t["today"]
        if (last - today).days == 1:
            return t["tomorrow"]
        return t["on"].format(date=_day_phrase(last, today, lang))
    return t["window"].format(
        first=_day_phrase(first, today, lang), last=_day_phrase(last, today, lang)
    )


def deadline_phrase(deadline: datetime, language: str, timezone: str) -> str:
    """A deadline as "Fri 12 Dec, 18:00" (German "Fr. 12.12., 18:00") in the reader's zone,
    named when it is UTC: the zone we assume until the reader tells us theirs."""
    lang = _lang(language)
    at = deadline.astimezone(zone(timezone))
    weekday = _WEEKDAYS[lang][at.weekday()]
    day = f"{weekday} {at.day}.{at.month}." if lang == "de" else f"{weekday} {at:%d %b}"
    return f"{day}, {at:%H:%M}" + (" UTC" if timezone == "UTC" else "")


def message(facts: OrderFacts, *, language: str, now: datetime, timezone: str = "UTC") -> Message:
    """The title and body for one status, e.g. "Order #1042 is out for delivery"."""
    lang = _lang(language)
    t = _TEXT[lang]
    phrase = _PHRASES[lang].get(facts.status, facts.status)
    title = t["title"].format(number=facts.number, phrase=phrase)
    if facts.status in ("delivered", "partially_delivered"):
        body = t[facts.status].format(merchant=facts.merchant)
    elif facts.status == "attempted":
        body = t["attempted"].format(merchant=facts.merchant)
    elif facts.status == "available_for_pickup":
        until = facts.pickup_until
        words = "pickup" if until is None else "pickup_by" if until > now else "pickup_over"
        deadline = deadline_phrase(until, lang, timezone) if until else ""
        body = t[words].format(merchant=facts.merchant, deadline=deadline)
    elif facts.status == "cancelled":
        body = t["cancelled"].format(merchant=facts.merchant)
    else:
        body = t["from"].format(merchant=facts.merchant)
        active = facts.status in (
            "confirmed",
            "processing",
            "shipped",
            "in_transit",
            "out_for_delivery",
            "exception",
            "estimate_changed",
        )
        # The carrier's or the shop's own date for this parcel, when one gave it; else ours
        # (and ours, always, when it is our estimate that changed).
        given = facts.estimated_delivery if facts.status != "estimate_changed" else None
        if given and active:
            body += " — " + estimate_phrase(given, now, lang, timezone)
        elif facts.window and active:
            body += " — " + window_phrase(*facts.window, now, lang, timezone)
    return Message(title=title, body=body, lang=lang, note=(facts.note or "").strip())


def push_payload(facts: OrderFacts, msg: Message, *, renew_with: str | None = None) -> bytes:
    """The JSON the service worker shows; trimmed so it always fits one push message.

    ``renew_with``: the current VAPID public key, for a device subscribed with an old one (the
    service worker subscribes again with it)."""
    doc: dict[str, Any] = {
        "title": msg.title[:200],
        "body": msg.body,
        "url": facts.url,
        "tag": f"order-{facts.order_id}",
        "order_id": facts.order_id,
        "status": facts.status,
        "lang": msg.lang,  # for the notification's own lang attribute
    }
    if renew_with:
        doc["vapid_key"] = renew_with
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    while len(data) > MAX_PAYLOAD and doc["body"]:
        doc["body"] = doc["body"][: max(0, len(doc["body"]) - (len(data) - MAX_PAYLOAD) - 1)]
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    return data


def email_parts(
    facts: OrderFacts, msg: Message, *, language: str, unsubscribe_url: str
) -> tuple[str, str]:
    """The plain-text and HTML bodies of a notification email: the title, what it means, the
    event's own note (the carrier's, or the shop's reason for a cancellation), the link."""
    t = _TEXT[_lang(language)]
    note = f"{msg.note}\n\n" if msg.note else ""
    text = (
        f"{msg.title}\n\n{msg.body}\n\n{note}{t['track']}: {facts.url}\n\n"
        f"--\n{t['why']}\n{t['unsubscribe']}: {unsubscribe_url}\n"
    )
    e = html.escape
    note_markup = f"<p>{e(msg.note)}</p>" if msg.note else ""
    markup = (
        f'<!doctype html><html lang="{_lang(language)}"><body style="font-family:sans-serif">'
        f'<h1 style="font-size:1.3em">{e(msg.title)}</h1><p>{e(msg.body)}</p>{note_markup}'
        f'<p><a href="{e(facts.url)}">{e(t["track"])}</a></p>'
        f'<hr><p style="font-size:.85em;color:#555">{e(t["why"])} '
        f'<a href="{e(unsubscribe_url)}">{e(t["unsubscribe"])}</a></p></body></html>'
    )
    return text, markup


# --- "find my order": the mail with an order's tracking link -------------------------------

_FOUND: dict[str, dict[str, str]] = {
    "en": {
        "subject": "Your tracking link for order {number}",
        "subject_many": "Your tracking links for order {number}",
        "intro": "You asked for the tracking link of order {number}. Here it is:",
        "intro_many": "You asked for the tracking link of order {number}. "
        "{count} of your orders have that number:",
        "order": "Order {number} {phrase}",
        "note": "We sent this link only to you. If you did not ask for it, ignore this email.",
    },
    "de": {
        "subject": "Dein Sendungslink für Bestellung {number}",
        "subject_many": "Deine Sendungslinks für Bestellung {number}",
        "intro": "Du hast den Sendungslink für Bestellung {number} angefordert. Hier ist er:",
        "intro_many": "Du hast den Sendungslink für Bestellung {number} angefordert. "
        "{count} deiner Bestellungen haben diese Nummer:",
        "order": "Bestellung {number} {phrase}",
        "note": "Wir haben diesen Link nur an dich geschickt. Wenn du ihn nicht angefordert "
        "hast, ignoriere diese E-Mail einfach.",
    },
}


def found_orders_mail(orders: list[OrderFacts], *, language: str) -> tuple[str, str, str]:
    """The subject, plain text and HTML of the answer to "find my order": each order the number
    matched, with where it is and its tracking link."""
    lang = _lang(language)
    t, words = _TEXT[lang], _FOUND[lang]
    many = len(orders) > 1
    number = orders[0].number
    subject = words["subject_many" if many else "subject"].format(number=number)
    intro = words["intro_many" if many else "intro"].format(number=number, count=len(orders))
    # As the PWA writes it, without a "#" of our own: the shop's number may carry one.
    titles = [
        words["order"].format(number=o.number, phrase=_PHRASES[lang].get(o.status, o.status))
        for o in orders
    ]
    blocks = [
        f"{title}\n{t['from'].format(merchant=o.merchant)}\n{t['track']}: {o.url}"
        for title, o in zip(titles, orders, strict=True)
    ]
    text = f"{intro}\n\n" + "\n\n".join(blocks) + f"\n\n--\n{words['note']}\n"
    e = html.escape
    items = "".join(
        f'<li style="margin:0 0 1em"><strong>{e(title)}</strong><br>'
        f"{e(t['from'].format(merchant=o.merchant))}<br>"
        f'<a href="{e(o.url)}">{e(t["track"])}</a></li>'
        for title, o in zip(titles, orders, strict=True)
    )
    markup = (
        f'<!doctype html><html lang="{lang}"><body style="font-family:sans-serif">'
        f'<p>{e(intro)}</p><ul style="padding-left:1.2em">{items}</ul>'
        f'<hr><p style="font-size:.85em;color:#555">{e(words["note"])}</p></body></html>'
    )
    return subject, text, markup
