"""How the PWA's files are served: one shell, versioned assets cached for long, never the shell."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/assets/[^"]+)"', html)


def test_every_screen_is_the_shell_and_never_cached(client, merchant):
    order = merchant.create_order()
    token = order["tracking_url"].rsplit("/", 1)[1]
    for path in ("/", "/sign-in", "/settings", f"/orders/{order['id']}", f"/t/{token}"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.mimetype == "text/html"
        assert r.headers["Cache-Control"] == "no-cache"
        assert '<main id="main"' in r.get_data(as_text=True)


def test_wrong_tracking_token_is_404(client, merchant):
    merchant.create_order()
    assert client.get("/t/" + "A" * 32).status_code == 404


def test_shell_has_no_inline_script_or_style(client):
    html = client.get("/").get_data(as_text=True)
    assert "style=" not in html
    assert "<style" not in html
    for tag in re.findall(r"<script[^>]*>", html):
        assert 'src="/assets/' in tag
    for path in ROOT.joinpath("web").rglob("*.js"):
        assert ".innerHTML" not in path.read_text(), path


def test_assets_are_versioned_long_cached_and_gzipped(client):
    html = client.get("/").get_data(as_text=True)
    urls = asset_urls(html)
    assert any(u.endswith("/js/main.js") for u in urls)
    for url in urls:
        r = client.get(url, headers={"Accept-Encoding": "gzip, br"})
        assert r.status_code == 200, url
        assert "immutable" in r.headers["Cache-Control"]
        assert "max-age=31536000" in r.headers["Cache-Control"]
        if int(r.headers.get("Content-Length", 0)) > 0 and r.headers.get("Content-Encoding"):
            assert gzip.decompress(r.data)
    js = client.get(
        next(u for u in urls if u.endswith("/js/app.js")), headers={"Accept-Encoding": "gzip"}
    )
    assert js.headers["Content-Encoding"] == "gzip"
    assert js.mimetype == "text/javascript"
    assert b"export class App" in gzip.decompress(js.data)
    plain = client.get(next(u for u in urls if u.endswith("/js/app.js")))
    assert "Content-Encoding" not in plain.headers
    assert b"export class App" in plain.data


def test_service_worker_names_this_version_and_precaches_its_files(client):
    html = client.get("/").get_data(as_text=True)
    version = re.search(r"/assets/([0-9a-f]+)/", html).group(1)  # type: ignore[union-attr]
    r = client.get("/sw.js")
    assert r.headers["Cache-Control"] == "no-cache"
    body = r.get_data(as_text=True)
    assert f"const VERSION = '{version}'" in body
    assert f"/assets/{version}/js/views/track.js" in body
    assert "__ASSETS__" not in body
    assert client.get("/assets/" + version + "/../pyproject.toml").status_code == 404
    assert client.get(f"/assets/{version}/index.html").status_code == 404


def test_manifest_is_complete_for_a_rich_install(client):
    r = client.get("/manifest.json")
    assert r.headers["Cache-Control"] == "no-cache"
    m = json.loads(r.data)
    for key in (
        "id",
        "name",
        "short_name",
        "description",
        "start_url",
        "scope",
        "theme_color",
        "background_color",
        "shortcuts",
    ):
        assert m[key], key
    assert m["display"] == "standalone"
    purposes = {(i["sizes"], i["purpose"]) for i in m["icons"]}
    assert {
        ("192x192", "any"),
        ("512x512", "any"),
        ("192x192", "maskable"),
        ("512x512", "maskable"),
    } <= purposes
    assert {s["form_factor"] for s in m["screenshots"]} == {"narrow", "wide"}
    for image in [*m["icons"], *m["screenshots"]]:
        with client.get(image["src"]) as got:
            assert got.status_code == 200, image["src"]
            data = got.data
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert f"{width}x{height}" == image["sizes"], image["src"]


def test_every_catalogue_has_every_key():
    keys = {}
    for lang in ("en", "de"):
        text = ROOT.joinpath("web", "js", "i18n", f"{lang}.js").read_text()
        keys[lang] = set(re.findall(r"^\s+'([\w.]+)':", text, re.M))
    assert keys["en"] and keys["en"] == keys["de"]
