"""The web console (console/, served at /console/ on the admin listener) in headless Chromium.

Starts one `joule demo` for the module (ephemeral loopback ports, retried when another process
takes one, as conftest.py does; a temporary SQLite store; the energy replay at 600× so prices
move within seconds; a copy of the built-in strategy plugins, so uploads do not touch
target/). The console is the one compiled into the binary; set JOULE_CONSOLE_DIR=console to
test the files on disk instead (joule then serves that directory).

Browser: Debian's /usr/bin/chromium driven by Playwright for Python (`executable_path`;
Playwright's own browser download is never used). Missing chromium or playwright is a failure,
not a skip. Every page fails its test on a console error or an uncaught page error; the only
messages let through are the browser's own "Failed to load resource" lines for the HTTP errors
a test provokes on purpose (a wrong credential → 401, deleting a busy project → 409, a bad
plugin → 400), each declared by that test for its path and status.

No sleeps: Playwright's auto-waiting `expect` and `wait_for_function` synchronise on what the
page shows. Screenshots of every page, wide (1400 px) and narrow (390 px), go to
target/console-shots/.
"""

import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import openai
import pytest

from conftest import ROOT, start_demo

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by the browser fixture as a failure
    sync_playwright = None
    expect = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_TOKEN = "joule-demo-admin"
DEMO_KEY = "sk-joule-demo"
SHOTS = ROOT / "target" / "console-shots"
PLUGINS = ROOT / "target" / "plugins" / "built-in"
STORAGE_KEY = "joule.console.credential"
HOSTED = "llama-3.1-8b-instruct"
FREE = "llama-3.2-1b-instruct"
WIDE = {"width": 1400, "height": 900}
NARROW = {"width": 390, "height": 844}
# Live data arrives by polling every 3 s and usage records are written in the background:
# generous, but only ever waited on a condition.
LIVE_TIMEOUT_MS = 30_000

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---- the gateway --------------------------------------------------------------------------


class Demo:
    def __init__(self, port: int, admin: int):
        self.api = f"http://127.0.0.1:{port}/v1"
        self.admin = f"http://127.0.0.1:{admin}"
        self.console = f"{self.admin}/console/"

    def call(self, method: str, path: str, body=None, token: str = ADMIN_TOKEN):
        """An admin API call: (status, headers, parsed JSON or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _opener.open(req, timeout=30) as r:
                status, headers, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, headers, raw = e.code, e.headers, e.read()
        try:
            return status, headers, json.loads(raw)
        except ValueError:
            return status, headers, raw.decode(errors="replace")

    def create_project(self, name: str, **fields) -> dict:
        status, _, body = self.call("POST", "/admin/projects", {"name": name, **fields})
        assert status == 201, body
        return body

    def create_key(self, name: str, project: str | None = None) -> str:
        status, _, body = self.call("POST", "/admin/keys", {"name": name, "project": project})
        assert status == 201, body
        return body["key"]

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api, api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def demo():
    if not PLUGINS.is_dir() or not list(PLUGINS.glob("*.wasm")):
        pytest.fail(f"no strategy plugins in {PLUGINS}: run scripts/build-plugins first")
    tmp = Path(tempfile.mkdtemp(prefix="joule-console-"))
    plugins = tmp / "plugins"
    shutil.copytree(PLUGINS, plugins)
    proc = None
    try:
        proc, port, admin = start_demo(tmp, "--energy-speed", "600", "--plugins", str(plugins))
        yield Demo(port, admin)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.fail("Python Playwright is not installed (scripts/setup installs it)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found (scripts/setup installs Debian's chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watch:
    """Collects a page's console errors and uncaught errors, minus the declared HTTP errors."""

    FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")

    def __init__(self, page):
        self.problems: list[str] = []
        self.expected: set[tuple[str, int]] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

    def allow_http_error(self, path: str, status: int):
        """The test provokes `status` from `path` on purpose; Chromium logs it as an error."""
        self.expected.add((path, status))

    def _console(self, msg):
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        m = self.FAILED_LOAD.match(msg.text)
        if m and (urlsplit(url).path, int(m.group(1))) in self.expected:
            return
        self.problems.append(f"console error: {msg.text} ({url})")

    def assert_clean(self):
        assert not self.problems, "browser errors:\n" + "\n".join(self.problems)


@pytest.fixture()
def page(browser):
    # A fresh context per test: its own sessionStorage, clipboard permission for Copy.
    context = browser.new_context(viewport=WIDE, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    pg.watch = Watch(pg)
    yield pg
    context.close()
    pg.watch.assert_clean()


def sign_in(page, demo: Demo, credential: str):
    page.goto(demo.console)
    page.get_by_test_id("credential").fill(credential)
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("role")).to_be_visible()


def go(page, route: str):
    page.get_by_test_id(f"nav-{route}").click()
    expect(page.get_by_test_id(f"page-{route}")).to_be_visible()


def next_frames(page):
    """Two animation frames: resize observers and their deferred redraws have run."""
    page.wait_for_function("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")


def shoot(page, name: str):
    """Full-page screenshots, wide then narrow (390 px); the narrow page must not overflow sideways."""
    page.set_viewport_size(WIDE)
    page.evaluate("() => window.scrollTo(0, 0)")  # a sticky header stays on top in the picture
    next_frames(page)
    page.screenshot(path=str(SHOTS / f"{name}-wide.png"), full_page=True)
    page.set_viewport_size(NARROW)
    page.evaluate("() => window.scrollTo(0, 0)")
    next_frames(page)
    page.screenshot(path=str(SHOTS / f"{name}-narrow.png"), full_page=True)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name}: the page is {overflow}px wider than a 390px screen"
    page.set_viewport_size(WIDE)
    next_frames(page)


def stored_credential(page):
    return page.evaluate(f"() => sessionStorage.getItem({json.dumps(STORAGE_KEY)})")


# ---- the tests ----------------------------------------------------------------------------


def test_console_assets_are_served_with_csp(demo):
    """Every file the console references (index.html's src/href, the JS modules' imports,
    recursively) is served 200 with the CSP and the caching headers; a repeat with its ETag is
    304; the docs (*.md) are not served."""
    def get(url, headers=None):
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with _opener.open(req, timeout=10) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    status, headers, body = get(demo.admin + "/console")
    assert status in (200, 308), status  # urllib follows the redirect to /console/
    seen, queue = set(), [demo.console]
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        status, headers, body = get(url)
        assert status == 200, f"{url}: {status}"
        csp = headers.get("Content-Security-Policy", "")
        for rule in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"):
            assert rule in csp, f"{url}: CSP {csp!r} lacks {rule}"
        assert headers.get("X-Content-Type-Options") == "nosniff", url
        etag = headers.get("ETag")
        assert etag and headers.get("Cache-Control"), url
        assert get(url, {"If-None-Match": etag})[0] == 304, url
        text = body.decode("utf-8", errors="replace")
        path = urlsplit(url).path
        refs = []
        if path.endswith("/") or path.endswith(".html"):
            assert "text/html" in headers.get("Content-Type", "")
            refs = re.findall(r"""(?:src|href)=["']([^"'#]+)["']""", text)
        elif path.endswith(".js"):
            assert "javascript" in headers.get("Content-Type", ""), f"{url}: {headers.get('Content-Type')}"
            if "/vendor/" not in path:
                refs = re.findall(r"""(?:import|export)\s[^'";]*?from\s*['"]([^'"]+)['"]""", text)
                refs += re.findall(r"""import\(\s*['"]([^'"]+)['"]\s*\)""", text)
                refs += re.findall(r"""^import\s*['"]([^'"]+)['"]""", text, re.M)
        elif path.endswith(".css"):
            assert "text/css" in headers.get("Content-Type", "")
        for ref in refs:
            target = urljoin(url, ref)
            assert urlsplit(target).netloc == urlsplit(demo.admin).netloc, f"{url} references another origin: {ref}"
            queue.append(target)
    paths = {urlsplit(u).path for u in seen}
    for needed in ("/console/app.js", "/console/api.js", "/console/chart.js", "/console/pages/models.js", "/console/vendor/uplot/uPlot.iife.min.js", "/console/style.css"):
        assert needed in paths, f"{needed} is not referenced"
    assert get(demo.admin + "/console/README.md")[0] == 404


def test_console_sources_follow_the_csp_rules():
    """The console's own files hold nothing the CSP would refuse or that could inject markup."""
    console = ROOT / "console"
    html = (console / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html, "inline <style>"
    assert not re.search(r"\sstyle\s*=", html), "style attribute"
    assert not re.search(r"\son[a-z]+\s*=", html), "event handler attribute"
    for js in console.rglob("*.js"):
        if "vendor" in js.parts:
            continue
        text = js.read_text()
        for bad in (r"\.innerHTML\s*=", r"\.outerHTML\s*=", r"insertAdjacentHTML", r"\beval\s*\(", r"new\s+Function\s*\(", r"setAttribute\(\s*['\"]style", r"document\.write"):
            assert not re.search(bad, text), f"{js.relative_to(ROOT)}: {bad}"
    version = (console / "vendor" / "uplot" / "VERSION").read_text()
    pinned = re.search(r"\b(\d+\.\d+\.\d+)\b", version).group(1)
    assert f"(v{pinned})" in (console / "vendor" / "uplot" / "uPlot.iife.min.js").read_text()[:200]
    assert "sha512-" in version and (console / "vendor" / "uplot" / "LICENSE").is_file()


def test_operator_sees_models_in_three_categories(page, demo):
    sign_in(page, demo, ADMIN_TOKEN)
    expect(page.get_by_test_id("role")).to_have_text("Operator")
    assert stored_credential(page) == ADMIN_TOKEN
    for nav in ("models", "keys", "projects", "usage", "routing"):
        expect(page.get_by_test_id(f"nav-{nav}")).to_be_visible()
    badges = page.get_by_test_id("category-badge")
    for category in ("Free", "Hosted", "Third-party"):
        expect(badges.filter(has_text=re.compile(f"^{category}$")).first).to_be_visible()
    hosted = page.locator(f'[data-testid=model-card][data-model="{HOSTED}"]')
    expect(hosted.get_by_test_id("category-badge")).to_have_text("Hosted")
    expect(page.locator(f'[data-testid=model-card][data-model="{FREE}"]').get_by_test_id("category-badge")).to_have_text("Free")
    expect(page.locator('[data-testid=model-card][data-model="gpt-4o-mini"]').get_by_test_id("category-badge")).to_have_text("Third-party")
    # Best prices, deployments with energy price and health; charts only on hosted models.
    expect(hosted.get_by_test_id("best-output")).to_contain_text("$")
    expect(hosted.get_by_test_id("deployment-row")).to_have_count(3)
    expect(hosted.get_by_test_id("breaker").first).to_have_text("healthy")
    expect(hosted.get_by_test_id("deployment-row").first).to_contain_text("/MWh")
    expect(page.get_by_test_id("price-chart")).to_have_count(2)
    expect(page.locator('[data-testid=model-card][data-model="gpt-4o-mini"] [data-testid=price-chart]')).to_have_count(0)
    # The data centers with their current energy price.
    expect(page.get_by_test_id("data-center-row")).to_have_count(3)
    expect(page.get_by_test_id("data-center-row").first).to_contain_text("/MWh")
    expect(hosted.get_by_test_id("price-chart")).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    # Keyboard: the skip link moves focus to the content (the route stays); Tab then reaches
    # a control there, drawn with a visible focus ring.
    page.locator(".skip-link").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    expect(page).to_have_url(re.compile(r"#/models$"))
    page.keyboard.press("Tab")
    focused = page.evaluate("() => { const e = document.activeElement; return { inMain: document.getElementById('main').contains(e), outline: getComputedStyle(e).outlineStyle }; }")
    assert focused == {"inMain": True, "outline": "solid"}, focused
    shoot(page, "models")
    page.watch.assert_clean()


def test_price_chart_windows_and_live_updates(page, demo):
    sign_in(page, demo, ADMIN_TOKEN)
    card = page.locator(f'[data-testid=model-card][data-model="{HOSTED}"]')
    chart = card.get_by_test_id("price-chart")
    expect(card.get_by_test_id("window-4h")).to_have_attribute("aria-pressed", "true")
    expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    counts = {"4h": int(chart.get_attribute("data-points"))}
    for window, previous in (("24h", "4h"), ("7d", "24h")):
        card.get_by_test_id(f"window-{window}").click()
        expect(card.get_by_test_id(f"window-{window}")).to_have_attribute("aria-pressed", "true")
        expect(card.get_by_test_id(f"window-{previous}")).to_have_attribute("aria-pressed", "false")
        # The plotted point count changes once the other window's history is drawn.
        expect(chart).not_to_have_attribute("data-points", str(counts[previous]))
        counts[window] = int(chart.get_attribute("data-points"))
    assert len(set(counts.values())) == 3, counts
    # Back to 4h: the replay (600×) brings new samples; the newest plotted sample changes.
    card.get_by_test_id("window-4h").click()
    expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    expect(card.get_by_test_id("chart-note")).to_contain_text("one every 5 min")
    first = chart.get_attribute("data-last")
    assert first
    expect(chart).not_to_have_attribute("data-last", first, timeout=LIVE_TIMEOUT_MS)
    # The legend shows the newest sample; hovering shows the time and values under the pointer.
    legend = chart.locator(".u-legend .u-series")
    when = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$")
    expect(legend.first.locator(".u-value")).to_have_text(when)
    newest = legend.first.locator(".u-value").inner_text()
    box = chart.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    expect(legend.first.locator(".u-value")).not_to_have_text(newest)
    expect(legend.first.locator(".u-value")).to_have_text(when)
    assert legend.first.locator(".u-value").inner_text() < newest  # an earlier sample
    expect(legend.nth(1).locator(".u-value")).to_have_text(re.compile(r"^\$\d"))
    # The energy view of the same chart ($/MWh).
    card.get_by_test_id("chart-metric").select_option("energy")
    expect(legend.nth(1).locator(".u-label")).to_have_text("caiso-sp15")
    page.watch.assert_clean()


def test_stale_and_negative_energy_prices_are_marked(page, demo):
    """The replay has neither right now, so the server's real price answer is altered in
    flight: three stale intervals and two negative energy prices in one data center."""
    def altered(route):
        response = route.fetch()
        doc = response.json()
        for entry in doc["data"]:
            if entry["model"] == HOSTED:
                points = entry["data_centers"][0]["points"]
                for p in points[2:5]:
                    p["stale"] = True
                for p in points[8:10]:
                    p["usd_per_mwh"] = -15.5
        route.fulfill(response=response, json=doc)

    page.route(re.compile(r"/admin/prices\?"), altered)
    sign_in(page, demo, ADMIN_TOKEN)
    card = page.locator(f'[data-testid=model-card][data-model="{HOSTED}"]')
    chart = card.get_by_test_id("price-chart")
    expect(chart).to_have_attribute("data-bands", "1")
    expect(chart).to_have_attribute("data-markers", "2")
    note = card.get_by_test_id("chart-note")
    expect(note).to_contain_text("Shaded: stale energy price — caiso-sp15 (1)")
    expect(note).to_contain_text("negative energy price — caiso-sp15 (2 points)")
    card.get_by_test_id("chart-metric").select_option("energy")
    expect(chart).to_have_attribute("data-markers", "2")
    shoot(page, "models-stale-negative")
    page.watch.assert_clean()


def test_project_and_key_created_in_the_console_are_used_metered_and_revoked(page, demo):
    sign_in(page, demo, ADMIN_TOKEN)

    # A project allowing one model, with a budget.
    go(page, "projects")
    page.get_by_test_id("project-name").fill("console-team")
    page.get_by_test_id(f"allowed-{HOSTED}").check()
    page.get_by_test_id("project-budget").fill("5")
    page.get_by_test_id("save-project").click()
    row = page.locator('[data-testid=project-row][data-name="console-team"]')
    expect(row).to_contain_text(HOSTED)
    expect(row.get_by_test_id("budget-bar")).to_be_visible()
    expect(page.get_by_test_id("projects-status")).to_contain_text("created")
    # Edit it: a requests-per-minute limit.
    row.get_by_test_id("edit-project").click()
    expect(page.get_by_test_id("project-name")).to_have_value("console-team")
    expect(page.get_by_test_id(f"allowed-{HOSTED}")).to_be_checked()
    page.get_by_test_id("project-rpm").fill("600")
    page.get_by_test_id("save-project").click()
    expect(row).to_contain_text("600 rpm")
    expect(page.get_by_test_id("projects-status")).to_contain_text("saved")

    # A key for it: shown once, with the base URL and snippets.
    go(page, "keys")
    page.get_by_test_id("key-name").fill("console-key")
    page.get_by_test_id("key-project").select_option("console-team")
    page.get_by_test_id("create-key").click()
    panel = page.get_by_test_id("new-key-panel")
    expect(panel).to_be_visible()
    key = panel.get_by_test_id("new-key-value").input_value()
    assert key.startswith("sk-"), key
    base = panel.get_by_test_id("api-base").input_value()
    assert base == demo.api
    curl = panel.get_by_test_id("snippet-curl").input_value()
    python = panel.get_by_test_id("snippet-python").input_value()
    assert key in curl and f"{base}/chat/completions" in curl and HOSTED in curl
    assert key in python and f'base_url="{base}"' in python
    panel.get_by_test_id("copy-key").click()
    expect(panel.get_by_test_id("copy-status")).to_contain_text("Cop")
    assert page.evaluate("() => navigator.clipboard.readText()") == key
    expect(page.locator('[data-testid=key-row][data-name="console-key"]')).to_have_attribute("data-status", "active")
    shoot(page, "keys-new-key")

    # The key works with the OpenAI SDK on the project's model.
    client = demo.client(key)
    raw = client.chat.completions.with_raw_response.create(model=HOSTED, messages=[{"role": "user", "content": "Hello"}])
    request_id = raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content

    # The request shows in Usage (written in the background; the first page refreshes itself).
    go(page, "usage")
    usage_row = page.locator(f'[data-testid=usage-row][data-request-id="{request_id}"]')
    expect(usage_row).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(usage_row).to_have_attribute("data-model", HOSTED)
    expect(usage_row).to_contain_text("console-team")
    cost = usage_row.get_by_test_id("usage-cost").inner_text()
    assert re.fullmatch(r"\$\d+\.\d+", cost) and float(cost[1:]) > 0, cost
    _, _, records = demo.call("GET", "/admin/usage?project=console-team")
    record = next(r for r in records["records"] if r["id"] == request_id)
    assert abs(float(cost[1:]) - record["cost_total"]) <= record["cost_total"] * 0.01
    breakdown = usage_row.get_by_test_id("cost-breakdown")
    expect(breakdown).to_contain_text("input")
    expect(breakdown).to_contain_text("output")
    expect(page.get_by_test_id("total-requests")).not_to_have_text("0")
    # CSV of this page, fetched with the bearer header.
    with page.expect_download() as download:
        page.get_by_test_id("download-csv").click()
    csv_text = Path(download.value.path()).read_text()
    assert csv_text.startswith("id,") and request_id in csv_text
    # Filtering by the project keeps the request.
    page.get_by_test_id("filter-project").select_option("console-team")
    page.get_by_test_id("apply-filters").click()
    expect(usage_row).to_be_visible()
    expect(page.get_by_test_id("total-requests")).to_have_text("1")
    shoot(page, "usage")

    # Revoke it in the console: the SDK gets 401.
    go(page, "keys")
    key_row = page.locator('[data-testid=key-row][data-name="console-key"]')
    key_row.get_by_test_id("revoke-key").click()
    key_row.get_by_test_id("confirm").click()
    expect(key_row).to_have_attribute("data-status", "revoked")
    expect(key_row.get_by_test_id("key-status")).to_have_text("revoked")
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model=HOSTED, messages=[{"role": "user", "content": "Hello again"}])
    assert e.value.status_code == 401
    go(page, "projects")
    shoot(page, "projects")
    page.watch.assert_clean()


def test_api_key_sees_only_its_project_and_sign_out_forgets_it(page, demo):
    demo.create_project("viewer-team", allowed_models=[FREE])
    key = demo.create_key("viewer-key", "viewer-team")
    mine = demo.client(key).chat.completions.with_raw_response.create(model=FREE, messages=[{"role": "user", "content": "mine"}])
    other = demo.client(DEMO_KEY).chat.completions.with_raw_response.create(model=HOSTED, messages=[{"role": "user", "content": "not mine"}])
    mine_id, other_id = mine.headers["x-request-id"], other.headers["x-request-id"]

    sign_in(page, demo, key)
    expect(page.get_by_test_id("role")).to_contain_text("Project: viewer-team")
    expect(page.get_by_test_id("role")).to_contain_text("viewer-key")
    expect(page.locator("#nav a")).to_have_count(2)
    expect(page.get_by_test_id("nav-models")).to_be_visible()
    expect(page.get_by_test_id("nav-usage")).to_be_visible()
    for hidden in ("keys", "projects", "routing"):
        expect(page.get_by_test_id(f"nav-{hidden}")).to_have_count(0)
    # Only the models this key may use, with its chart.
    expect(page.get_by_test_id("model-card")).to_have_count(1)
    expect(page.get_by_test_id("model-card")).to_have_attribute("data-model", FREE)
    expect(page.get_by_test_id("price-chart")).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    shoot(page, "project-models")
    # An operator page by its address falls back to the models page.
    page.goto(demo.console + "#/keys")
    expect(page.get_by_test_id("page-models")).to_be_visible()
    expect(page).to_have_url(re.compile(r"#/models$"))

    # Usage: its project's request, not the other one; no project/key filters.
    go(page, "usage")
    expect(page.locator(f'[data-testid=usage-row][data-request-id="{mine_id}"]')).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(page.get_by_test_id("filter-project")).to_have_count(0)
    expect(page.get_by_test_id("filter-key")).to_have_count(0)
    rows = page.get_by_test_id("usage-row")
    for i in range(rows.count()):
        expect(rows.nth(i)).to_have_attribute("data-key-name", "viewer-key")
    expect(page.locator(f'[data-testid=usage-row][data-request-id="{other_id}"]')).to_have_count(0)
    shoot(page, "project-usage")

    # Cursor paging: 11 records, 10 per page.
    client = demo.client(key)
    for i in range(10):
        client.chat.completions.create(model=FREE, messages=[{"role": "user", "content": f"page filler {i}"}])
    expect(page.get_by_test_id("total-requests")).to_have_text("11", timeout=LIVE_TIMEOUT_MS)
    page.get_by_test_id("filter-limit").select_option("10")
    page.get_by_test_id("apply-filters").click()
    expect(rows).to_have_count(10)
    first_page = {rows.nth(i).get_attribute("data-request-id") for i in range(10)}
    page.get_by_test_id("next-page").click()
    expect(page.get_by_test_id("page-info")).to_contain_text("Page 2")
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-request-id") not in first_page
    expect(page.get_by_test_id("next-page")).to_be_disabled()
    page.get_by_test_id("first-page").click()
    expect(page.get_by_test_id("page-info")).to_contain_text("Page 1")
    expect(rows).to_have_count(10)

    # Sign out forgets the credential: storage empty, sign-in shown, also after a reload.
    assert stored_credential(page) == key
    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("credential")).to_be_visible()
    assert stored_credential(page) is None
    expect(page.get_by_test_id("nav-models")).to_have_count(0)
    page.reload()
    expect(page.get_by_test_id("credential")).to_be_visible()
    assert stored_credential(page) is None
    page.watch.assert_clean()


def test_wrong_credential_and_busy_project_show_their_messages(page, demo):
    page.watch.allow_http_error("/admin/session", 401)
    page.goto(demo.console)
    expect(page.get_by_test_id("credential")).to_be_focused()
    shoot(page, "sign-in")
    page.get_by_test_id("credential").fill("sk-joule-not-a-real-key")
    page.get_by_test_id("credential").press("Enter")  # the keyboard submits the form
    error = page.get_by_test_id("sign-in-error")
    expect(error).to_contain_text("That token or key was not accepted")
    expect(error).to_contain_text(re.compile(r"not accepted: \S"))  # the server's message follows
    assert stored_credential(page) is None
    expect(page.get_by_test_id("role")).to_be_hidden()

    # A project with an active key cannot be deleted: the 409 message is shown.
    demo.create_project("busy-team")
    demo.create_key("busy-key", "busy-team")
    page.watch.allow_http_error("/admin/projects/busy-team", 409)
    sign_in(page, demo, ADMIN_TOKEN)
    go(page, "projects")
    row = page.locator('[data-testid=project-row][data-name="busy-team"]')
    row.get_by_test_id("delete-project").click()
    expect(row.get_by_test_id("confirm")).to_be_focused()
    row.get_by_test_id("confirm").click()
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_contain_text("active key")
    status, _, body = demo.call("DELETE", "/admin/projects/busy-team")
    assert status == 409 and body["error"]["message"] in banner.inner_text()
    expect(row).to_be_visible()
    # Once its key is revoked (here through the API), the console deletes it.
    _, _, keys = demo.call("GET", "/admin/keys?project=busy-team")
    for k in keys["keys"]:
        demo.call("DELETE", f"/admin/keys/{k['id']}")
    row.get_by_test_id("delete-project").click()
    row.get_by_test_id("confirm").click()
    expect(row).to_have_count(0)
    expect(page.get_by_test_id("projects-status")).to_contain_text("deleted")
    page.watch.assert_clean()


def test_routing_page_shows_deployments_and_plugins(page, demo, tmp_path):
    page.watch.allow_http_error("/admin/plugins", 400)
    page.watch.allow_http_error("/admin/plugins/price/rollback", 400)
    sign_in(page, demo, ADMIN_TOKEN)
    go(page, "routing")
    rows = page.get_by_test_id("routing-deployment-row")
    expect(rows).to_have_count(7)
    for i in range(7):
        expect(rows.nth(i).get_by_test_id("breaker")).to_have_attribute("data-breaker", re.compile("^(closed|open|half_open)$"))
    plugins = page.get_by_test_id("plugin-row")
    expect(plugins).to_have_count(3)
    for tag in ("latency", "price", "tokenrate"):
        expect(page.locator(f'[data-testid=plugin-row][data-tag="{tag}"]')).to_contain_text("1.0.0")

    # Live: a request through the gateway shows in the polled counters.
    demo.client(DEMO_KEY).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}])
    gpt = page.locator('[data-testid=routing-deployment-row][data-deployment="gpt-4o-mini-sim"]')
    expect(gpt.locator('td[data-label="Requests"]')).not_to_have_text("0", timeout=LIVE_TIMEOUT_MS)

    # Upload: a file that is not a component is refused with the server's reason…
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"not a component")
    page.get_by_test_id("plugin-file").set_input_files(str(bogus))
    page.get_by_test_id("upload-plugin").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("not a valid WebAssembly component")
    # …a real one is loaded (the same price strategy again) and reported.
    page.get_by_test_id("plugin-file").set_input_files(str(PLUGINS / "price.wasm"))
    page.get_by_test_id("upload-plugin").click()
    expect(page.get_by_test_id("plugins-status")).to_contain_text("Loaded price")
    expect(page.get_by_test_id("error-banner")).to_be_empty()
    # Rolling back with no earlier version shows that message.
    page.locator('[data-testid=plugin-row][data-tag="price"]').get_by_test_id("rollback-plugin").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("no earlier version")
    page.get_by_test_id("error-banner").get_by_role("button", name="Dismiss this message").click()
    expect(page.get_by_test_id("error-banner")).to_be_empty()
    shoot(page, "routing")
    page.watch.assert_clean()
