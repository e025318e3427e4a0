"""The PWA's shell and files: one HTML shell for every screen, versioned assets cached for long.

The strict Content-Security-Policy every page runs under is set in ``security.py``.

``index.html`` and ``sw.js`` name the current version (a hash of ``web/``), so a changed file
means new asset URLs and a new service worker; neither is ever cached by HTTP itself.

The screens and their paths are ``web/js/routes.js``'s: the shell is served at each, and the
service worker is told which paths are the app's.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, current_app, request, send_from_directory
from flask.blueprints import BlueprintSetupState

from waybill.api.answers import browser_language
from waybill.auth import sessions
from waybill.db import get_session
from waybill.orders import order_by_token

bp = Blueprint("pages", __name__)
ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
MANIFEST = ROOT / "manifest.json"
ROUTES = WEB / "js" / "routes.js"
STATIC = Path(__file__).parent / "static"  # pages.css for the server-rendered auth pages

LONG = 365 * 24 * 3600
_SERVED = {".js", ".css", ".json", ".png", ".svg", ".webmanifest"}
_COMPRESSIBLE = {".js", ".css", ".json", ".svg", ".html"}


@dataclass(frozen=True)
class Screen:
    """One entry of ``routes.js``: a path in Flask's syntax and the view the app shows there."""

    path: str
    view: str


@functools.cache
def screens() -> tuple[Screen, ...]:
    """The list ``routes.js`` exports as ``ROUTES``: the one place the app's paths are named."""
    found = re.search(r"export const ROUTES = (\[.*?\]);", ROUTES.read_text(), re.S)
    if found is None:
        raise RuntimeError(f"{ROUTES} exports no ROUTES list")
    return tuple(Screen(r["path"], r["view"]) for r in json.loads(found[1]))


_PARAM = re.compile(r"<(?:(int):)?\w+>")


def page_pattern(path: str) -> str:
    """The JavaScript regular expression the service worker tests paths with; ``match()`` in
    routes.js reads ``path`` the same way: a trailing slash is optional, except for ``/``."""
    parts, last = [], 0
    for m in _PARAM.finditer(path):
        parts += [re.escape(path[last : m.start()]), r"(\d+)" if m[1] else "([^/]+)"]
        last = m.end()
    parts.append(re.escape(path[last:]))
    return "^" + "".join(parts) + ("" if path == "/" else "/?") + "$"


@dataclass
class WebApp:
    """``web/`` read once: its version and the gzipped bodies of its text files."""

    version: str
    shell: bytes
    worker: bytes
    gzipped: dict[str, bytes] = field(default_factory=dict)


def _load() -> WebApp:
    files = sorted(p for p in WEB.rglob("*") if p.is_file() and p.suffix in _SERVED | {".html"})
    h = hashlib.sha256()
    for p in [*files, MANIFEST]:
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    version = h.hexdigest()[:12]
    shell = (WEB / "index.html").read_bytes().replace(b"__VERSION__", version.encode())
    assets = [
        f"/assets/{version}/{p.relative_to(WEB).as_posix()}"
        for p in files
        if p.suffix in {".js", ".css", ".svg"} and p.name != "sw.js"
    ]
    worker = (
        (WEB / "sw.js")
        .read_bytes()
        .replace(b"__VERSION__", version.encode())
        .replace(b'"__ASSETS__"', json.dumps(assets).encode())
        .replace(b'"__APP_PAGES__"', json.dumps([page_pattern(s.path) for s in screens()]).encode())
    )
    return WebApp(version=version, shell=shell, worker=worker)


def web_app() -> WebApp:
    """Read once per app: the version must not change under a running page."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cached: WebApp | None = app.extensions.get("waybill.web")
    if cached is None:
        cached = _load()
        app.extensions["waybill.web"] = cached
    return cached


def _compressed(key: str, body: bytes, mimetype: str, *, cache: str, status: int = 200) -> Response:
    """Gzip text for clients that take it; the bodies are small and compressed once."""
    response = Response(body, status=status, mimetype=mimetype)
    response.headers["Cache-Control"] = cache
    response.vary.add("Accept-Encoding")
    if "gzip" in request.headers.get("Accept-Encoding", "") and len(body) > 512:
        store = web_app().gzipped
        if key not in store:
            store[key] = gzip.compress(body, 9, mtime=0)
        response.set_data(store[key])
        response.headers["Content-Encoding"] = "gzip"
    return response


# The modules each screen imports after the entry module: preloaded so they arrive at once.
_VIEW_MODULES = {
    "track": ("js/i18n/en.js", "js/views/track.js", "js/views/order-view.js", "js/push.js"),
    "home": ("js/i18n/en.js", "js/views/home.js", "js/views/order-view.js"),
    "settings": ("js/i18n/en.js", "js/views/settings.js", "js/push.js", "js/passkeys.js"),
    "sign-in": ("js/i18n/en.js", "js/views/sign-in.js", "js/passkeys.js"),
}


def _shell(view: str, status: int = 200) -> Response:
    response = _compressed(
        "index.html", web_app().shell, "text/html", cache="no-cache", status=status
    )
    version = web_app().version
    response.headers["Link"] = ", ".join(
        f"</assets/{version}/{m}>; rel=modulepreload" for m in _VIEW_MODULES[view]
    )
    return response


def _page(view: str, **params: Any) -> Response:
    """One screen: the shell, with what the app fetches first for it preloaded."""
    # The labels in the language the app will choose, unless the customer picked another.
    lang = browser_language()
    preload = [f"/api/statuses?lang={lang}"]
    token = params.get("token")
    if token is not None:
        if order_by_token(get_session(), token) is None:
            return _shell(view, 404)
        preload.append(f"/api/track/{token}")  # fetched while the modules load, not after
    elif view == "home" and sessions.current() is not None:
        preload += ["/api/me", "/api/me/orders"]
    # A signed-in order (/orders/<id>) is checked by the API, which answers 404 if not theirs.
    response = _shell(view)
    response.headers["Link"] += "".join(
        f", <{url}>; rel=preload; as=fetch; crossorigin" for url in preload
    )
    return response


@bp.record
def _register_screens(state: BlueprintSetupState) -> None:
    for screen in screens():
        state.add_url_rule(
            screen.path, f"screen:{screen.path}", _page, defaults={"view": screen.view}
        )


@bp.get("/sw.js")
def service_worker() -> Response:
    response = _compressed("sw.js", web_app().worker, "text/javascript", cache="no-cache")
    response.headers["Service-Worker-Allowed"] = "/"
    return response


@bp.get("/manifest.json")
def manifest() -> Response:
    return _compressed(
        "manifest.json", MANIFEST.read_bytes(), "application/manifest+json", cache="no-cache"
    )


@bp.get("/assets/<version>/<path:filename>")
def asset(version: str, filename: str) -> Response:
    """Long-cached under the current version; any other version is served but not kept."""
    path = (WEB / filename).resolve()
    if WEB not in path.parents or path.suffix not in _SERVED or not path.is_file():
        abort(404)
    current = version == web_app().version
    cache = f"public, max-age={LONG}, immutable" if current else "no-cache"
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if mimetype == "application/javascript":
        mimetype = "text/javascript"
    if path.suffix in _COMPRESSIBLE:
        return _compressed(
            f"{version}/{filename}" if current else filename,
            path.read_bytes(),
            mimetype,
            cache=cache,
        )
    response = send_from_directory(WEB, filename, max_age=LONG if current else 0)
    response.headers["Cache-Control"] = cache
    return response


@bp.get("/icons/<path:filename>")
def icon(filename: str) -> Any:
    """Icons and screenshots named by the manifest, which cannot carry a version."""
    return send_from_directory(WEB / "icons", filename, max_age=24 * 3600)


@bp.get("/favicon.ico")
def favicon() -> Any:
    return send_from_directory(WEB / "icons", "icon-192.png", max_age=24 * 3600)


@bp.get("/static/<path:filename>")
def static(filename: str) -> Any:
    return send_from_directory(STATIC, filename, max_age=3600)
