"""The cyclic garbage collector, set for a long-running server process.

CPython's defaults suit scripts: a young collection every 700 allocations, and a full one,
which walks every object of the process (its modules, SQLAlchemy's metadata, the app), soon
after enough objects have outlived two young ones. The outbox worker keeps hundreds of
requests in flight, each request's objects alive past two young collections, so they reach the
old generation and full collections come often: measured on the sender (``bench/push.py``'s
worker, 2,000 messages, four runs each), 509 against 379 µs of CPU per message, a quarter of
it in the collector.

Two standard measures, taken once a process has started (everything is imported and the app
is built): ``gc.freeze()`` moves what is there into the permanent generation, which no later
collection walks; and a young generation of 10,000 allocations lets in-flight objects die
before a collection sees them. Reference counting still frees almost everything at once; only
objects in reference cycles wait longer to be collected, a bounded few megabytes.
"""

from __future__ import annotations

import gc

#: Young generation, then how many young collections per middle one, middle per full one.
THRESHOLDS = (10_000, 20, 10)


def tune() -> None:
    """Freeze what the started process holds and widen the young generation."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
