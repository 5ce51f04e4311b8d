"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, never a downloaded build) driven by
Playwright, against a real cluster from the pyz (a manager and two workers, TLS, on the Docker engine with
cube-busybox). It signs in (a wrong token first, whose message it reads), sees the nodes and a running task, runs a
task from the form, scales a job and watches the count change, drains a node and makes it eligible again, reads a
task's live logs, and signs out. It saves a screenshot of the first page (CUBE_SCREENSHOT, default
build/dashboard.png) and prints the first page's load time and bytes (no assertion on time)."""

import json
import os
import pathlib
import re
import uuid

import pytest
from conftest import ROOT, wait_for
from test_cluster_docker import TOKEN, Cluster

pytestmark = [pytest.mark.docker, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    """Chromium from Debian's package, headless. Missing, the test skips, except in CI (CI=true), where it fails."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed: pip install -e '.[test]' (never `playwright install`)"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing: apt-get install chromium"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def cluster(pyz, procs, tmp_path, busybox_image):
    c = Cluster(pyz, procs, tmp_path)
    yield c
    c.cleanup()


def test_the_dashboard_signs_in_shows_the_cluster_and_acts_on_it(browser, cluster, busybox_image):
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    tag = uuid.uuid4().hex[:6]
    job, single = f"talk-{tag}", f"one-{tag}"
    cluster.client.post(
        "/jobs",
        {
            "name": job,
            "count": 1,
            "task": {
                "image": busybox_image,
                "command": ["sh", "-c", f'i=0; while true; do i=$((i+1)); echo "{tag} line $i"; sleep 0.3; done'],
                "cpu": 0.25,
                "memory": "128m",
            },
            # A drain moves max_parallel tasks at a time, each once its successor has served min_healthy_time:
            # the defaults (one at a time, 10 s) would make the drain below outlast the page's 30 s wait when all
            # three tasks sit on the drained node.
            "update": {"min_healthy_time": 1, "max_parallel": 3},
        },
    )
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    failures: list[str] = []
    page.on("pageerror", lambda error: failures.append(str(error)))

    # Sign in: a wrong token is refused with the server's message, the right one opens the dashboard.
    page.goto(cluster.url + "/")
    expect(page.locator("#signin-form")).to_be_visible()
    page.fill("#token", "not-the-token")
    page.click("#signin-form button")
    expect(page.locator("#signin-error")).to_contain_text("wrong cluster token")
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#token", TOKEN)
    page.click("#signin-form button")
    expect(page.locator("#app")).to_be_visible()

    # The nodes, and the job's running task.
    expect(page.locator("#nodes-ready")).to_have_text("nodes 2/2 ready")
    for name in cluster.workers:
        expect(page.locator(f'.node[data-node="{name}"]')).to_contain_text("ready")
    expect(page.locator(f'#jobs tr[data-job="{job}"] td.count')).to_have_text("1 / 1")
    expect(page.locator("#tasks tbody tr", has_text=job)).to_contain_text("running")

    # Run a task from the form.
    page.fill("#run-form input[name=image]", busybox_image)
    page.fill("#run-form input[name=command]", "sleep 300")
    page.fill("#run-form input[name=name]", single)
    page.click("#run-form button")
    expect(page.locator("#tasks tbody tr", has_text=single)).to_contain_text("running")

    # Scale the job, and watch the count change.
    row = page.locator(f'#jobs tr[data-job="{job}"]')
    row.locator("input").fill("3")
    row.locator("button", has_text="Scale").click()
    expect(row.locator("td.count")).to_have_text("3 / 3")
    assert cluster.client.get(f"/jobs/{job}")["running"] == 3

    # Drain a node: its card says so and its tasks move to the other node; then make it eligible again.
    drained, other = sorted(cluster.workers)
    card = page.locator(f'.node[data-node="{drained}"]')
    card.locator("button", has_text="Drain").click()
    expect(card.locator(".badge", has_text=re.compile("draining|ineligible"))).to_be_visible()
    assert {n["name"]: n for n in cluster.client.get("/nodes")}[drained]["eligibility"] in ("draining", "ineligible")
    wait_for(
        lambda: (
            {t["node"] for t in cluster.client.get(f"/tasks?job={job}&state=running")} == {other}
            and cluster.client.get(f"/jobs/{job}")["running"] == 3
        ),
        timeout=WAIT_MS / 1000,
    )
    expect(card).to_contain_text("0 task(s)")
    card.locator("button", has_text="Make eligible").click()
    expect(card.locator(".badge", has_text=re.compile("^eligible$"))).to_be_visible()

    # A task's page: its events and its live logs (lines that arrive after the page opened).
    page.locator("#tasks tbody tr", has_text=job).first.locator("a").click()
    expect(page.locator("#task-page")).to_be_visible()
    expect(page.locator("#task-events")).to_contain_text("running")
    fields = page.locator("#task-fields")
    expect(fields).to_contain_text(f"image{busybox_image}")
    assert "[object" not in fields.inner_text()
    expect(page.locator("#task-placement")).to_contain_text(other)  # the explanation lists every node
    logs = page.locator("#task-logs")
    expect(logs).to_contain_text(f"{tag} line")
    first = _last_line(logs.inner_text(), tag)
    wait_for(lambda: _last_line(logs.inner_text(), tag) >= first + 3, timeout=WAIT_MS / 1000)

    # The first page: screenshot and figures, from a fresh load with the session's cookie.
    page.goto(cluster.url + "/#/")
    page.reload()  # the overview as it first shows, without the notices of the actions above
    expect(page.locator(f'#jobs tr[data-job="{job}"] td.count')).to_have_text("3 / 3")
    expect(page.locator("#events li").first).to_be_visible()
    shot = pathlib.Path(os.environ.get("CUBE_SCREENSHOT") or ROOT / "build" / "dashboard.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    print("first page:", json.dumps(_first_page_figures(context, cluster.url)))

    # Sign out: the data is closed to this browser again.
    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible()
    assert page.evaluate("fetch('/tasks').then(r => r.status)") == 401
    assert failures == [], failures
    context.close()


def _last_line(text: str, tag: str) -> int:
    numbers = [int(n) for n in re.findall(rf"{tag} line (\d+)", text)]
    return max(numbers, default=0)


def _first_page_figures(context, url: str) -> dict:
    """A signed-in browser opens the first page anew: milliseconds until the page's files are loaded and until the
    nodes are shown, and the bytes of the files and of the data (as sent: gzipped, with headers)."""
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_selector(".node")
    shown_ms = page.evaluate("performance.now()")
    entries = page.evaluate(
        """() => performance.getEntriesByType("navigation").concat(performance.getEntriesByType("resource"))
            .map(e => ({name: e.name, kind: e.initiatorType, sent: e.transferSize, body: e.decodedBodySize,
                        end: e.responseEnd || 0, load: e.loadEventEnd || 0}))"""
    )
    page.close()
    files = [e for e in entries if e["kind"] in ("navigation", "script", "link", "css")]
    data = [e for e in entries if e["kind"] in ("fetch", "xmlhttprequest")]
    return {
        "files_loaded_ms": round(max(e["load"] or e["end"] for e in files)),
        "nodes_shown_ms": round(shown_ms),
        "files_bytes_sent": sum(e["sent"] for e in files),
        "files_bytes": sum(e["body"] for e in files),
        "data_requests": len(data),
        "data_bytes_sent": sum(e["sent"] for e in data),
    }
