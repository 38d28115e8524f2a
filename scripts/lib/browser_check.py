"""The browser page (functions/api/web/index.html) in headless Chromium against the local stack
(called by scripts/browser-check.sh).

1. The CORS preflight a browser sends before the cross-origin PUT to the presigned URL, sent by
   hand to LocalStack: it must allow the page's origin, PUT and the signed headers.
2. The page itself in Chromium (Debian's package, driven by Playwright): a rendered image is
   picked in the file input; the page creates the job, PUTs the image straight to S3 (a real
   cross-origin request, which CORS must let through), waits for the result and draws it. The
   test waits for the page to say it is done, checks the text beside the image, takes a
   screenshot and checks that it shows word boxes (red) and line boxes (blue) over the text.
"""
import argparse
import json
import sys
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from playwright.sync_api import sync_playwright

LINES = ["INVOICE 2026-0417", "Coffee beans 18.90", "TOTAL EUR 23.40"]


def render(path):
    img = Image.new("RGB", (720, 300), "white")
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 40)
    d = ImageDraw.Draw(img)
    for i, line in enumerate(LINES):
        d.text((40, 30 + 85 * i), line, fill=(15, 15, 15), font=font)
    img.save(path)


def call(method, url, token=None, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def preflight(api, token, origin):
    """OPTIONS on a fresh presigned URL, as Chromium sends it before the PUT."""
    status, _, body = call("POST", f"{api}/v1/jobs", token, json.dumps({"content_type": "image/png", "content_length": 10}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 201, (status, body)
    up = json.loads(body)["upload"]
    signed = sorted(k.lower() for k in up["headers"] if k.lower() != "content-length")
    status, headers, _ = call("OPTIONS", up["url"], None, None, {
        "Origin": origin, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": ",".join(signed)})
    h = {k.lower(): v for k, v in headers.items()}
    allow_origin = h.get("access-control-allow-origin", "")
    assert status in (200, 204), f"preflight answered {status}: {h}"
    assert allow_origin in ("*", origin), f"preflight allows origin {allow_origin!r}, not {origin}: {h}"
    assert "PUT" in h.get("access-control-allow-methods", ""), h
    allowed = h.get("access-control-allow-headers", "").lower()
    assert allowed == "*" or all(s in allowed for s in signed), (signed, allowed)
    print(f"browser: CORS preflight to {up['url'].split('?')[0]} from {origin}: {status}, "
          f"allow-origin {allow_origin}, headers {signed}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    image = out / "page.png"
    render(image)
    preflight(a.api, a.token, a.api)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 700})
        failed = []
        page.on("requestfailed", lambda r: failed.append(f"{r.method} {r.url.split('?')[0]}: {r.failure}"))
        page.on("console", lambda m: print(f"browser console: {m.text}") if m.type == "error" else None)
        page.goto(f"{a.api}/ui/?token={a.token}")
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.body.dataset.state === 'done' || document.body.dataset.state === 'failed'",
                               timeout=180_000)
        state = page.evaluate("document.body.dataset.state")
        status = page.inner_text("#status")
        assert state == "done", f"the page says {state}: {status}; failed requests: {failed}"
        text = page.inner_text("pre.text")
        words = int(page.evaluate("document.body.dataset.words"))
        shot = out / "screenshot.png"
        page.locator("canvas").first.screenshot(path=str(shot))
        browser.close()
    for line in LINES:
        assert line.split()[-1] in text, f"{line!r} not in the page's text:\n{text}"
    assert words >= 8, f"{words} words"
    img = Image.open(shot).convert("RGB")
    raw = img.tobytes()
    px = [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]
    red = sum(1 for r, g, b in px if r > 200 and g < 60 and b < 60)
    blue = sum(1 for r, g, b in px if b > 200 and r < 60 and g < 140)
    dark = sum(1 for r, g, b in px if r < 60 and g < 60 and b < 60)
    assert red > 500 and blue > 500 and dark > 2000, f"screenshot {shot}: red {red}, blue {blue}, text {dark} pixels"
    print(f"browser: the page read {words} words; {status}; screenshot {shot} ({img.width}x{img.height}: "
          f"{red} red word-box, {blue} blue line-box and {dark} text pixels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
