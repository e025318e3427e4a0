"""Screenshots of every screen, phone and desktop, from a live server seeded with the demo data
and, through the merchant API, a late order and a parcel waiting for pickup.

``.venv/bin/python -m tests.browser.capture [OUT_DIR]`` writes ``<screen>-phone.png`` and
``<screen>-desktop.png`` to OUT_DIR (default /tmp/waybill-screens) — sign-in, tracking, home,
an order on its way, a split order (one parcel delivered, one on its way), a late order, a
pickup and settings (quiet hours on) — then ``<screen>-phone-200-text.png`` for sign-in,
home, the split order and settings with the browser's text size at 200%, and refreshes the
manifest's narrow and wide screenshots in web/icons/.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright
from sqlmodel import select
from werkzeug.serving import make_server

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, free_port
from tests.browser.test_text_size import big_text
from tests.conftest import make_settings
from tests.utils.factories import make_merchant
from tests.utils.wsgi import files_read_whole
from waybill import create_app
from waybill.auth import login
from waybill.auth.tokens import tracking_token
from waybill.db import create_engine, migrate, session_scope
from waybill.demo import DEMO_EMAIL, seed
from waybill.models import Order

ICONS = Path(__file__).resolve().parents[2] / "web" / "icons"


def seed_through_the_api(app: Any) -> dict[str, int]:
    """A second shop's late order (Waybill's window for it ended two days ago, the shop's own
    date too) and a parcel at a Packstation, sent the way a shop sends them: the merchant API
    with its key. Their order ids."""
    shop = make_merchant(app, app.test_client(), name="Nordlicht Home")
    now = datetime.now(UTC)

    def at(**delta: float) -> str:
        return (now - timedelta(**delta)).isoformat()

    def order(number: str, item: str, placed_days_ago: float) -> dict[str, Any]:
        r = shop.post(
            "/orders",
            {
                "external_id": number,
                "customer": {"email": DEMO_EMAIL},
                "items": [{"name": item, "quantity": 1}],
                "placed_at": at(days=placed_days_ago),
            },
        )
        assert r.status_code == 201, r.get_json()
        return r.get_json()  # type: ignore[no-any-return]

    def scan(shipment: dict[str, Any], status: str, when: str, **fields: str) -> None:
        r = shop.scan(shipment["id"], status, when, **fields)
        assert r.status_code == 201, r.get_json()

    late = order("NH-2041", "Linen lamp shade", 7)
    parcel = shop.add_shipment(
        late["id"],
        carrier="DHL",
        tracking_number="00340434161094042557",
        estimated_delivery=at(days=2),
    )
    scan(parcel, "in_transit", at(days=5), location="Leipzig hub", description="Sorted")
    scan(parcel, "in_transit", at(days=3), location="Kassel", description="In transit")
    # The server estimates a window with each event, from its prior (1-3 working days to hand
    # over, 1-7 in transit): still ahead for this one. Its "arrives by" is written straight
    # into the order row (eta_*) to show a late order as a customer would meet one.
    ended = (now - timedelta(days=2)).date()
    with session_scope(app.extensions["waybill.engine"]) as session:
        row = session.get(Order, late["id"])
        assert row is not None
        row.eta_earliest, row.eta_latest = ended - timedelta(days=2), ended
        row.eta_most_likely = ended

    pickup = order("NH-2042", "Ceramic teapot", 4)
    parcel = shop.add_shipment(
        pickup["id"],
        carrier="DHL",
        tracking_number="00340434161094042564",
        estimated_delivery=at(days=1),
    )
    scan(parcel, "in_transit", at(days=2), location="Leipzig hub", description="Sorted")
    scan(
        parcel,
        "available_for_pickup",
        at(hours=3),
        location="Packstation 112, Berlin",
        description="Collect within 7 days with the code from your email",
        pickup_until=at(days=-7),
    )
    return {"late": late["id"], "pickup": pickup["id"]}


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
            # The demo's order in two parcels: one delivered, one on its way.
            split_id = next(o.id for o in orders if o.external_id == "1003")
        engine.dispose()
        app = create_app(settings)
        seeded = seed_through_the_api(app)

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

        def quiet_hours_on(page: Any) -> None:
            """Settings as a customer who holds notifications at night: the time fields show."""
            page.goto(f"{url}/settings")
            page.get_by_role("switch", name="Hold notifications at night").check()
            page.locator("#preferences button[type=submit]").click()
            page.locator("#settings-status").filter(has_text="saved").wait_for()

        server = make_server("127.0.0.1", port, files_read_whole(app), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        screens = {
            "tracking": f"/t/{token}",
            "home": "/",
            "order": f"/orders/{order_id}",
            "order-split": f"/orders/{split_id}",
            "order-late": f"/orders/{seeded['late']}",
            "order-pickup": f"/orders/{seeded['pickup']}",
            "settings": "/settings",
        }

        def shoot(page: Any, path: str, file: Path) -> None:
            page.goto(url + path)
            page.locator("main h1").first.wait_for()
            if path == "/settings":
                page.locator("#session-list li").first.wait_for()  # the last part drawn
            page.wait_for_timeout(300)  # the live badge settles; cosmetic only
            whole_page(page, file)

        def whole_page(page: Any, file: Path) -> None:
            """The whole page in one picture. Not ``full_page=True``: that resets the font sizes
            set over CDP to 16 px while it shoots, so a 200% text page would come out at 100%."""
            viewport = page.viewport_size
            height = page.evaluate("() => document.documentElement.scrollHeight")
            page.set_viewport_size({"width": viewport["width"], "height": height})
            page.screenshot(path=str(file))
            page.set_viewport_size(viewport)

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
                    whole_page(page, out / f"sign-in-{kind}.png")
                    sign_in(page)
                    quiet_hours_on(page)
                    for name, path in screens.items():
                        shoot(page, path, out / f"{name}-{kind}.png")
                    context.close()
                # The browser's text size at 200% on the phone; at scale 1, as the text is large.
                context = browser.new_context(
                    locale="en-GB",
                    timezone_id="Europe/Berlin",
                    **{**sizes["phone"], "device_scale_factor": 1},
                )
                page = context.new_page()
                big_text(context, page)
                page.goto(f"{url}/sign-in")
                page.locator("#email").wait_for()
                whole_page(page, out / "sign-in-phone-200-text.png")
                sign_in(page)
                for name in ("home", "order-split", "settings"):
                    shoot(page, screens[name], out / f"{name}-phone-200-text.png")
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
