"""How long a push service keeps a message, how urgently it wakes the phone, and which older
message it replaces: the ``TTL``, ``Urgency`` and ``Topic`` headers of every notification."""

from __future__ import annotations

#: Statuses worth waking a phone in power-saving mode for (RFC 8030 ``Urgency: high``).
HIGH_URGENCY = frozenset({"out_for_delivery", "delivered", "attempted", "exception"})
#: How long a push service keeps a message for an offline phone, per status (seconds).
TTL_BY_STATUS = {"out_for_delivery": 6 * 3600, "attempted": 24 * 3600, "delivered": 24 * 3600}
DEFAULT_TTL = 2 * 24 * 3600


def ttl_for(status: str) -> int:
    return TTL_BY_STATUS.get(status, DEFAULT_TTL)


def urgency_for(status: str) -> str:
    return "high" if status in HIGH_URGENCY else "normal"


def topic_for(order_id: int) -> str:
    """At most 32 URL-safe characters, one per order: a newer status replaces an older one."""
    return f"order-{order_id}"[:32]
