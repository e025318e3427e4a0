"""Bounded waits in a Playwright page that say what they were waiting for when they give up."""

from __future__ import annotations

from typing import Any

WAIT_MS = 15_000

# Built around the predicate's source in Python, not eval'd in the page: the app's strict CSP
# forbids eval there (and Playwright's function calls are exempt from it).
_POLL = """async ([arg, ms]) => {
  const predicate = (%s);
  const end = Date.now() + ms;
  const late = Symbol('late');
  while (Date.now() < end) {
    const left = new Promise((resolve) => setTimeout(() => resolve(late), end - Date.now()));
    const value = await Promise.race([Promise.resolve().then(() => predicate(arg)), left]);
    if (value !== late && value) return { value };
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return null;
}"""


def wait_until(
    page: Any, predicate: str, what: str, arg: Any = None, timeout_ms: int = WAIT_MS
) -> Any:
    """Poll ``predicate`` (a JS function of ``arg``, possibly async) in the page until it
    returns something truthy, and return that. Each call is raced against the time left, so a
    promise that never settles (``serviceWorker.ready`` without a worker) cannot hang the test.
    Fails naming ``what`` once ``timeout_ms`` have passed. One evaluate: it does not outlive a
    navigation of the page (wait on a locator for what a reload brings)."""
    found = page.evaluate(_POLL % predicate, [arg, timeout_ms])
    if found is None:
        raise AssertionError(f"gave up after {timeout_ms} ms waiting for {what}")
    return found["value"]
