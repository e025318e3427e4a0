"""Is the gevent loop ever blocked? Two watchers for a ``waybill serve`` worker.

* A probe greenlet that asks to wake every 50 ms and measures how late it woke: that lateness
  is how long the loop was blocked by someone else (a C call that did not yield, CPU-heavy
  work). Each block of ``warn_after`` seconds or more is logged with its length, and the longest
  one seen is logged when the worker stops.
* gevent's own monitor thread (``max_blocking_time``), which prints the stack of the greenlet
  that is blocking the loop while it blocks, to the server's output.

Both run in every worker; their figures are what the no-freeze tests read.
"""

from __future__ import annotations

import logging
import time
import warnings

log = logging.getLogger("waybill.watchdog")

PROBE_INTERVAL = 0.05


class LoopWatch:
    def __init__(self, *, warn_after: float) -> None:
        self.warn_after = warn_after
        self.longest = 0.0  # seconds
        self.blocks = 0  # how many times the loop stood still for warn_after or more
        self.reports = 0  # gevent monitor reports

    def start(self) -> LoopWatch:
        import gevent
        import gevent.events

        gevent.config.max_blocking_time = self.warn_after
        gevent.config.monitor_thread = True
        with warnings.catch_warnings():  # "install psutil": memory is not what it watches
            warnings.simplefilter("ignore")
            gevent.get_hub().start_periodic_monitoring_thread()
        # The main loop's alone: the hubs of gevent's thread pool would report their own
        # native threads' idle waits as blocks.
        gevent.config.monitor_thread = False
        # Called in the monitor's own OS thread: count only (logging there would take the
        # patched, greenlet-owned locks of the logging module from a foreign thread).
        gevent.events.subscribers.append(self._on_event)
        gevent.spawn(self._probe)
        return self

    def _on_event(self, event: object) -> None:
        import gevent.events

        if isinstance(event, gevent.events.EventLoopBlocked):
            self.reports += 1

    def _probe(self) -> None:
        import gevent

        while True:
            start = time.monotonic()
            gevent.sleep(PROBE_INTERVAL)
            late = time.monotonic() - start - PROBE_INTERVAL
            if late > self.longest:
                self.longest = late
            if late >= self.warn_after:
                self.blocks += 1
                log.warning("event loop blocked for %d ms", late * 1000)
                from waybill import observe  # here: prometheus-client reads its mode at import

                observe.loop_blocked(late)

    def summary(self) -> str:
        return (
            f"longest event loop block {self.longest * 1000:.0f} ms; "
            f"{self.blocks} block(s) of {self.warn_after * 1000:.0f} ms or more"
        )
