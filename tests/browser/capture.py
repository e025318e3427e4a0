"""Screenshots of every screen, phone and desktop, from a live server seeded with the demo data.

``.venv/bin/python tests/browser/capture.py [OUT_DIR]`` writes ``<screen>-phone.png`` and
``<screen>-desktop.png`` to OUT_DIR (default /tmp/waybill-screens) and refreshes the manifest's
narrow and wide screenshots in web/icons/.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright
from sqlmodel import select
from werkzeug.serving import make_server

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, free_port
from tests.conftest import make_settings
from waybill import create_app
from waybill.auth import login
from waybill.auth.tokens import tracking_token
from waybill.db import create_engine, migrate, session_scope
from waybill.demo import DEMO_EMAIL, seed
from waybill.models import Order

ICONS = Path(__file__).resolve().parents[2] / "web" / "icons"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = make_settings(instance, base_url=url)
        engine = create_engine(settings)
        migrate(engine)
        with session_scope(engine) as session:
            seed(session=session, settings=settings)
        with session_scope(engine) as session:
            orders = list(session.exec(select(Order).order_by(Order.id)))
            moving = next(
                (o for o in orders if o.status in ("in_transit", "out_for_delivery")), orders[0]
            )
            token, order_id = tracking_token(settings.secret_key, moving), moving.id
        engine.dispose()
        app = create_app(settings)

        def sign_in(page: object) -> None:
            with session_scope(app.extensions["waybill.engine"]) as session:
                customer = login.find_customer(session, DEMO_EMAIL)
                assert customer is not None
                token = login.issue(
                    session=session, customer=customer, secret=settings.secret_key
                ).link_token
            page.goto(f"{url}/auth/link/{token}")  # type: ignore[attr-defined]
            page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
            page.wait_for_url(f"{url}/")  # type: ignore[attr-defined]

        server = make_server("127.0.0.1", port, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        screens = {
            "tracking": f"/t/{token}",
            "home": "/",
            "order": f"/orders/{order_id}",
            "settings": "/settings",
        }
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                sizes = {
                    "phone": dict(
                        viewport={"width": 360, "height": 740},
                        device_scale_factor=2,
                        is_mobile=True,
                        has_touch=True,
                    ),
                    "desktop": dict(viewport={"width": 1280, "height": 800}),
                }
                for kind, options in sizes.items():
                    context = browser.new_context(
                        locale="en-GB", timezone_id="Europe/Berlin", **options
                    )
                    page = context.new_page()
                    page.goto(f"{url}/sign-in")
                    page.locator("#email").wait_for()
                    page.screenshot(path=str(out / f"sign-in-{kind}.png"), full_page=True)
                    sign_in(page)
                    for name, path in screens.items():
                        page.goto(url + path)
                        page.locator("main h1").first.wait_for()
                        page.wait_for_timeout(300)  # the live badge settles; cosmetic only
                        page.screenshot(path=str(out / f"{name}-{kind}.png"), full_page=True)
                    context.close()
                # The manifest's screenshots for the richer install dialog.
                for name, size, path in (
                    ("screenshot-narrow.png", {"width": 360, "height": 740}, screens["tracking"]),
                    ("screenshot-wide.png", {"width": 800, "height": 500}, screens["home"]),
                ):
                    context = browser.new_context(
                        viewport=size, device_scale_factor=2, color_scheme="light"
                    )
                    page = context.new_page()
                    sign_in(page)
                    page.goto(url + path)
                    page.locator("main h1").first.wait_for()
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(ICONS / name))
                    context.close()
                browser.close()
        finally:
            server.shutdown()
    print("\n".join(str(p) for p in sorted(out.glob("*.png"))))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/waybill-screens"))
