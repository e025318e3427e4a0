"""Lighthouse (12.2.3, pinned in bench/package.json) on the tracking page and the home page.

A fresh instance seeded with the demo data is served by ``waybill serve`` on 127.0.0.1; Lighthouse
drives the system Chromium (CHROME_PATH=/usr/bin/chromium) with its default mobile emulation and
a cold cache. Reported: performance, accessibility and best-practices scores and the bytes
transferred on the first load (goals: 100 / 100 / 100 and under 50 KB).
Prints a table and, as its last line, one JSON object; the full reports go to bench/out/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _procs import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CHROME = os.environ.get("CHROME_PATH", "/usr/bin/chromium")
WAYBILL = Path(sys.executable).with_name("waybill")
BUDGET = 50 * 1024
OUT = BENCH / "out"  # the full reports, for a closer look (git-ignored)
CATEGORIES = ("performance", "accessibility", "best-practices")


def lighthouse_cli() -> Path | None:
    cli = BENCH / "node_modules" / "lighthouse" / "cli" / "index.js"
    if not cli.exists() and shutil.which("npm"):
        subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=BENCH, check=False)
    return cli if cli.exists() else None


def wait_for(url: str, proc: subprocess.Popen[bytes], deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {deadline}s")


def session_cookie(base: str, link: str) -> str:
    """Follow the demo sign-in link's button (a POST) and keep the session cookie."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(link, data=b"", method="POST")
    try:
        response = opener.open(request, timeout=10)
        headers = response.headers
    except urllib.error.HTTPError as exc:  # the 303 to / arrives as an "error" without redirects
        headers = exc.headers
    cookie = headers.get("Set-Cookie", "")
    match = re.search(r"(waybill_session=[^;]+)", cookie)
    if not match:
        raise RuntimeError("signing in with the demo link set no session cookie")
    return match.group(1)


def run_lighthouse(cli: Path, url: str, out: Path, cookie: str | None) -> dict[str, object]:
    args = [
        "node",
        str(cli),
        url,
        "--output=json",
        f"--output-path={out}",
        "--quiet",
        f"--only-categories={','.join(CATEGORIES)}",
        "--chrome-flags=--headless=new --no-sandbox --disable-gpu --no-first-run "
        "--disable-background-networking --disable-component-update --disable-sync",
        "--max-wait-for-load=30000",
    ]
    if cookie:
        args.append("--extra-headers=" + json.dumps({"Cookie": cookie}))
    env = {**os.environ, "CHROME_PATH": CHROME}
    subprocess.run(args, check=True, env=env, timeout=240)
    report = json.loads(out.read_text())
    scores = {c: round(report["categories"][c]["score"] * 100) for c in CATEGORIES}
    audits = report["audits"]
    failing = {
        c: [
            ref["id"]
            for ref in report["categories"][c]["auditRefs"]
            if ref["weight"]
            and (audits[ref["id"]].get("score") or 0) < 1
            and audits[ref["id"]].get("scoreDisplayMode") == "binary"
        ]
        for c in CATEGORIES
    }
    requests = audits["network-requests"]["details"]["items"]
    return {
        **scores,
        "bytes": int(audits["total-byte-weight"]["numericValue"]),
        "requests": len(requests),
        "fcp_ms": round(audits["first-contentful-paint"]["numericValue"]),
        "lcp_ms": round(audits["largest-contentful-paint"]["numericValue"]),
        "failing": {c: ids for c, ids in failing.items() if ids},
        "metric_scores": {
            m: audits[m]["score"]
            for m in (
                "first-contentful-paint",
                "largest-contentful-paint",
                "total-blocking-time",
                "cumulative-layout-shift",
                "speed-index",
            )
        },
    }


def start_server(instance: Path, port: int) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {
        **os.environ,
        "WAYBILL_INSTANCE_DIR": str(instance),
        "WAYBILL_BASE_URL": f"http://127.0.0.1:{port}",
    }
    subprocess.run([str(WAYBILL), "init"], env=env, check=True, capture_output=True)
    demo = subprocess.run(
        [str(WAYBILL), "demo"], env=env, check=True, capture_output=True, text=True
    ).stdout
    link = re.search(r"(http://\S+/auth/link/\S+)", demo)
    if not link:
        raise RuntimeError(f"`waybill demo` printed no sign-in link:\n{demo}")
    proc = subprocess.Popen(
        [str(WAYBILL), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, link.group(1), env["WAYBILL_BASE_URL"]


def main() -> int:
    cli = lighthouse_cli()
    if cli is None or not Path(CHROME).exists():
        print("lighthouse: skipped (needs npm for bench/node_modules and /usr/bin/chromium)")
        print(json.dumps({"bench": "lighthouse", "skipped": True}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp) / "instance"
        port = free_port()
        proc, link, base = start_server(instance, port)
        try:
            wait_for(base + "/manifest.json", proc)
            cookie = session_cookie(base, link)
            tracking = json.loads(
                urllib.request.urlopen(
                    urllib.request.Request(base + "/api/me/orders", headers={"Cookie": cookie}),
                    timeout=10,
                ).read()
            )["orders"][0]["tracking_url"]
            pages = {"tracking /t/<token>": (tracking, None), "home /": (base + "/", cookie)}
            results = {}
            OUT.mkdir(parents=True, exist_ok=True)
            for name, (url, with_cookie) in pages.items():
                report = OUT / f"lighthouse-{name.split()[0]}.json"
                results[name] = run_lighthouse(cli, url, report, with_cookie)
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    print(
        f"Lighthouse {json.loads((cli.parents[1] / 'package.json').read_text())['version']}, "
        "mobile emulation, cold cache, system Chromium"
    )
    print(
        f"{'page':<22}{'perf':>6}{'a11y':>6}{'best':>6}{'KB':>8}{'reqs':>6}{'FCP ms':>8}"
        f"{'LCP ms':>8}"
    )
    for name, r in results.items():
        print(
            f"{name:<22}{r['performance']:>6}{r['accessibility']:>6}{r['best-practices']:>6}"
            f"{r['bytes'] / 1024:>8.1f}{r['requests']:>6}{r['fcp_ms']:>8}{r['lcp_ms']:>8}"
        )
    for name, r in results.items():
        if r["failing"]:
            print(f"  {name}: audits below full marks: {r['failing']}")
    goals_met = all(
        all(r[c] == 100 for c in CATEGORIES) and int(r["bytes"]) < BUDGET  # type: ignore[call-overload]
        for r in results.values()
    )
    print(
        f"goals (100/100/100, < {BUDGET // 1024} KB first load): "
        f"{'met' if goals_met else 'not met'}"
    )
    print(json.dumps({"bench": "lighthouse", "goals_met": goals_met, "pages": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
