"""Render the PWA's PNG icons from SVG with the system Chromium (no image library needed).

Run once after changing the logo: ``.venv/bin/python tests/browser/render_icons.py``. Then
re-encode them as 64-colour palettes (the icons on main are: a third of the bytes, the same to
the eye; the 192 px one is in every first load, cached by the service worker), for example
with Pillow: ``Image.open(p).convert("RGBA").quantize(64).save(p, optimize=True)``.
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import sync_playwright

ICONS = Path(__file__).resolve().parents[2] / "web" / "icons"
BLUE = "#0b5cad"
GLYPH = (
    '<path d="M14 24l18-10 18 10v18L32 52 14 42z M14 24l18 10 18-10 M32 34v18" fill="none" '
    'stroke="#fff" stroke-width="4" stroke-linejoin="round"/>'
)


def svg(size: int, *, maskable: bool, rounded: bool) -> str:
    # Maskable icons keep the glyph inside the central 80 % safe zone on a full-bleed background.
    scale = 0.62 if maskable else 1.0
    offset = 32 * (1 - scale)
    radius = 14 if rounded else 0
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" '
        f'width="{size}" height="{size}">'
        f'<rect width="64" height="64" rx="{radius}" fill="{BLUE}"/>'
        f'<g transform="translate({offset} {offset}) scale({scale})">{GLYPH}</g></svg>'
    )


def main() -> None:
    targets = {
        "icon-192.png": (192, False, True),
        "icon-512.png": (512, False, True),
        "maskable-192.png": (192, True, False),
        "maskable-512.png": (512, True, False),
        "apple-touch-icon.png": (180, True, False),
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for name, (size, maskable, rounded) in targets.items():
            page = browser.new_page(viewport={"width": size, "height": size})
            page.set_content(
                "<html><body style='margin:0;background:transparent'>"
                + svg(size, maskable=maskable, rounded=rounded)
                + "</body></html>"
            )
            page.screenshot(path=str(ICONS / name), omit_background=True)
            page.close()
        browser.close()


if __name__ == "__main__":
    main()
