"""The PWA's shell and files: one HTML shell for every screen, versioned assets cached for long.

The strict Content-Security-Policy every page runs under is set in ``security.py``.

``index.html`` and ``sw.js`` name the current version (a hash of ``web/``), so a changed file
means new asset URLs and a new service worker; neither is ever cached by HTTP itself.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, current_app, request, send_from_directory

from waybill.auth import sessions
from waybill.db import get_session
from waybill.orders import order_by_token

bp = Blueprint("pages", __name__)
ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
MANIFEST = ROOT / "manifest.json"
STATIC = Path(__file__).parent / "static"  # pages.css for the server-rendered auth pages

LONG = 365 * 24 * 3600
_SERVED = {".js", ".css", ".json", ".png", ".svg", ".webmanifest"}
_COMPRESSIBLE = {".js", ".css", ".json", ".svg", ".html"}


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


@bp.get("/")
def home() -> Response:
    response = _shell("home")
    if sessions.current() is not None:  # the app asks for these two first
        response.headers["Link"] += (
            ", </api/me>; rel=preload; as=fetch; crossorigin"
            ", </api/me/orders>; rel=preload; as=fetch; crossorigin"
        )
    return response


@bp.get("/sign-in")
def sign_in() -> Response:
    return _shell("sign-in")


@bp.get("/settings")
def settings() -> Response:
    return _shell("settings")


@bp.get("/orders/<int:order_id>")
def order_page(order_id: int) -> Response:
    """The app checks the order is theirs through the API, which answers 404 otherwise."""
    return _shell("track")


@bp.get("/t/<token>")
def tracking_page(token: str) -> Response:
    if order_by_token(get_session(), token) is None:
        return _shell("track", 404)
    response = _shell("track")
    # The browser fetches the order while it loads the modules, not after.
    response.headers["Link"] += f", </api/track/{token}>; rel=preload; as=fetch; crossorigin"
    return response


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
