"""The test servers' one WSGI wrapper."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wsgi import FileWrapper


def files_read_whole(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Answer file responses (the PWA's static files) from memory, the file closed at once.

    Werkzeug's development server skips closing a response when the browser resets the
    connection while it drains the request (a page that navigates away mid-load), and the
    file left open fails the suite as an unraisable ResourceWarning. ``waybill serve``
    (gunicorn) closes them; only the loopback test servers need this."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        result = app(environ, start_response)
        if isinstance(result, FileWrapper):
            try:
                return [b"".join(result)]
            finally:
                result.close()
        return result

    return wrapped
