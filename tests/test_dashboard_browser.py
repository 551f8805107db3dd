"""The dashboard in a real browser (Debian's chromium driven by Playwright, headless) against a real
`granary serve` whose local workers run real actions meanwhile: the overview's numbers move, operations
filter and page, an operation shows its outputs and stdout, the CAS browser lists and downloads, the
workers page shows a running job, the builds the Build Event Service stored list and link to their
operations and back, and a running action's output shows on its page as it prints. Screenshots of every
page go to test-artifacts/dashboard/.

Skipped when /usr/bin/chromium or the playwright package is missing (scripts/test installs both)."""

from __future__ import annotations

import threading
import time
import urllib.parse
from pathlib import Path

import bcrypt
import pytest
from besutil import publish_build
from dashutil import CONFIG, client, get_json, run
from obsutil import http_url
from serverutil import start_granary

from granary._proto.build_event_stream import build_event_stream_pb2 as bep

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"

if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
expect = sync_api.expect

TIMEOUT = 30_000  # ms


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard-browser")
    server = start_granary(tmp, CONFIG)
    try:
        c = client(server.address)
        name, response, _, _ = run(
            c, "cat in.txt; echo to-stderr >&2; mkdir -p d/e; echo deep > d/e/f; printf 'data' > out",
            outputs=("out", "d"), files={"in.txt": b"hello from the input\n", "run.sh": b"#!/bin/sh\necho hi\n"},
            env={"GREETING": "<b>hi</b>", "PATH": "/usr/bin:/bin"}, invocation="inv-main")
        assert response.result.exit_code == 0
        for i in range(25):
            run(c, f"echo page {i}", outputs=(), tool="page-test", invocation=f"page-{i}")
        # builds, as Bazel's --bes_backend sends them: one per invocation above and a failed one
        publish_build(server.address, "inv-main", ["//app:bin", "//app:lib", "//app:docs"], build_id="req-main",
                      tests={"//app:bin_test": bep.PASSED})
        for i in range(3):
            run(c, f"echo broken {i}", outputs=(), tool="bazel", invocation="inv-broken")
        publish_build(server.address, "inv-broken", ["//gen:ok", "//gen:broken", "//gen:other"], failing="//gen:broken",
                      tests={"//gen:ok_test": bep.PASSED, "//gen:slow_test": bep.TIMEOUT})
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        print(f"dashboard screenshots in {ARTIFACTS}")
        yield server, http_url(server), c, name
        c.close()
    finally:
        server.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT)
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg, errors
    context.close()


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_overview_numbers_move_while_work_runs(served, page):
    _, base, c, _ = served
    pg, errors = page
    stop = threading.Event()

    def work() -> None:
        i = 0
        while not stop.is_set():
            run(c, f"echo busy {i}; sleep 0.2", outputs=(), tool="busy", invocation="busy")
            i += 1

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        pg.goto(f"{base}/ui/")
        expect(pg.locator("#ov-requests-sub")).to_contain_text("in all")
        first = pg.text_content("#ov-requests-sub")
        # the page polls: the totals it shows change while work goes on (waits that evaluate no
        # script text: the dashboard's Content-Security-Policy forbids eval, Playwright's too)
        expect(pg.locator("#ov-requests-sub")).not_to_have_text(first)
        expect(pg.locator("#ov-requests")).not_to_have_text("–")
        assert pg.text_content("#ov-workers") == "2"
        assert float(pg.text_content("#ov-requests").split()[0]) > 0
        pg.wait_for_selector("#ov-methods td:text('Execution/Execute')")
        pg.wait_for_timeout(2500)  # a few polls drawn on the graph
        shot(pg, "overview")
    finally:
        stop.set()
        worker.join(60)
    assert errors == []


def test_operations_filter_and_page(served, page):
    _, base, _, _ = served
    pg, errors = page
    pg.goto(f"{base}/ui/operations")
    pg.wait_for_selector("#ops-table")
    shot(pg, "operations")
    pg.fill("#ops-filter", "tool_name = page-test & sort_order = queued_time(desc)")
    pg.select_option("#ops-size", "20")
    pg.click("#ops-apply")
    expect(pg.locator("#ops-table tbody tr")).to_have_count(20)
    first = pg.locator("#ops-table tbody tr td:nth-child(2) a").evaluate_all("l => l.map(a => a.href)")
    assert pg.text_content("#ops-page") == "page 1"
    pg.click("#ops-next")
    expect(pg.locator("#ops-page")).to_have_text("page 2")
    second = pg.locator("#ops-table tbody tr td:nth-child(2) a").evaluate_all("l => l.map(a => a.href)")
    assert len(second) == 5 and not set(first) & set(second)
    assert pg.is_disabled("#ops-next")
    shot(pg, "operations-page-2")
    pg.click("#ops-prev")
    expect(pg.locator("#ops-page")).to_have_text("page 1")
    assert pg.locator("#ops-table tbody tr td:nth-child(2) a").evaluate_all("l => l.map(a => a.href)") == first
    pg.fill("#ops-filter", "colour = red")
    pg.click("#ops-apply")
    pg.wait_for_selector("#error")
    assert "unknown field 'colour'" in pg.text_content("#error") and "HTTP 400" in pg.text_content("#error")
    shot(pg, "operations-bad-filter")
    assert [e for e in errors if "400" not in e] == []  # the refused request itself is logged by the browser


def test_operation_page_shows_outputs_and_stdout(served, page):
    _, base, _, name = served
    pg, errors = page
    pg.goto(f"{base}/ui/operations")
    pg.fill("#ops-filter", "invocation_id = inv-main")
    pg.click("#ops-apply")
    pg.click("#ops-table tbody tr td:nth-child(2) a")
    pg.wait_for_selector("#op-stdout")
    assert name in pg.text_content("#op-name")
    assert pg.text_content("#op-stdout") == "hello from the input\n"
    assert pg.text_content("#op-stderr") == "to-stderr\n"
    assert pg.text_content("#op-exit") == "0" and pg.text_content("#op-worker").startswith("local-")
    assert "out" in pg.text_content("#op-files") and "d" in pg.text_content("#op-dirs")
    assert "<b>hi</b>" in pg.text_content("#op-env") and pg.locator("#op-env b").count() == 0  # shown, not parsed
    assert "Execution completed" in pg.text_content("#op-timeline")
    shot(pg, "operation")
    # its input root in the CAS browser; a file downloaded from there
    pg.click("#op-input-root a")
    pg.wait_for_selector("#cas-listing")
    assert "run.sh" in pg.text_content("#cas-listing") and "exec" in pg.text_content("#cas-listing")
    shot(pg, "cas-directory")
    with pg.expect_download() as info:
        pg.click("#cas-listing tr:has-text('in.txt') a.download")
    download = info.value
    assert download.suggested_filename == "in.txt"
    assert Path(download.path()).read_bytes() == b"hello from the input\n"
    pg.click("#cas-listing a:text('in.txt')")
    pg.wait_for_selector("#cas-text")
    assert pg.text_content("#cas-text") == "hello from the input\n"
    shot(pg, "cas-text")
    # an output directory, walked inside its Tree
    pg.go_back()
    pg.go_back()
    pg.wait_for_selector("#op-dirs")
    pg.click("#op-dirs td:nth-child(2) a")
    pg.wait_for_selector("#cas-listing")
    pg.click("#cas-listing a:text('e/')")
    expect(pg.locator("#cas-listing a", has_text="f")).to_have_count(1)
    expect(pg.locator("#cas-out")).to_contain_text("tree /e")
    shot(pg, "cas-tree")
    assert errors == []


def test_cas_browser_bad_digest(served, page):
    _, base, _, _ = served
    pg, _errors = page
    pg.goto(f"{base}/ui/cas")
    pg.fill("#cas-digest", "not-a-digest")
    pg.click("#cas-go")
    pg.wait_for_selector("#error")
    assert "digest 'not-a-digest' is not of the form HASH/SIZE" in pg.text_content("#error")
    shot(pg, "cas-bad-digest")


def test_workers_page_shows_a_running_job(served, page):
    _, base, c, _ = served
    pg, errors = page
    done = threading.Event()
    slow = threading.Thread(target=lambda: (run(c, "sleep 6", outputs=(), tool="slow"), done.set()), daemon=True)
    slow.start()
    pg.goto(f"{base}/ui/workers")
    pg.wait_for_selector("#workers-table")
    pg.wait_for_selector("#workers-table .badge.stage-executing", timeout=20_000)
    assert pg.locator("#workers-table tbody tr").count() == 2
    assert "OSFamily=linux" in pg.text_content("#workers-table")
    shot(pg, "workers")
    slow.join(60)
    assert done.is_set() and errors == []


def test_the_browser_is_asked_for_credentials(tmp_path, browser):
    data = tmp_path / "granary-data"
    data.mkdir()
    (data / "htpasswd").write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    config = CONFIG.replace("local_workers: 2", "local_workers: 0") + """
auth:
  htpasswd: htpasswd
  rules: [{identities: [alice], permissions: [cache-read, execute]}]
"""
    with start_granary(tmp_path, config) as server:
        base = http_url(server)
        anonymous = browser.new_context()
        # a headless browser cannot show the prompt a Basic challenge asks for: it fails the navigation
        with pytest.raises(sync_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            anonymous.new_page().goto(f"{base}/ui/")
        anonymous.close()
        wrong = browser.new_context(http_credentials={"username": "alice", "password": "wrong"})
        refused = wrong.new_page().goto(f"{base}/ui/")  # the credentials were sent, and refused
        assert refused.status == 401 and refused.headers["www-authenticate"] == 'Basic realm="granary"'
        wrong.close()
        alice = browser.new_context(http_credentials={"username": "alice", "password": "pw"})
        pg = alice.new_page()
        assert pg.goto(f"{base}/ui/").status == 200
        expect(pg.locator("#ov-workers")).to_have_text("0")
        pg.goto(f"{base}/ui/operations")
        pg.wait_for_selector("#ops-empty")
        alice.close()


def test_builds_page_and_an_invocation_linked_to_its_operations(served, page):
    _, base, _, _ = served
    pg, errors = page
    pg.goto(f"{base}/ui/builds")
    pg.wait_for_selector("#builds-table")
    rows = pg.locator("#builds-table tbody tr")
    expect(rows).to_have_count(2)
    assert "inv-broken" in rows.nth(0).text_content() and "inv-main" in rows.nth(1).text_content()
    assert "failed (BUILD_FAILURE)" in rows.nth(0).text_content() and "//gen:broken" in rows.nth(0).text_content()
    assert "success" in rows.nth(1).text_content() and "alice" in rows.nth(1).text_content()
    shot(pg, "builds")
    pg.click("#builds-table a:text('inv-broken')")
    pg.wait_for_selector("#build-targets")
    assert "inv-broken" in pg.text_content("#build-id")
    assert "failed" in pg.text_content("#build-result") and "BUILD_FAILURE" in pg.text_content("#build-result")
    assert pg.text_content("#build-command") == "build //gen:ok //gen:broken //gen:other"
    first = pg.locator("#build-targets tbody tr").first  # the failed target first
    assert "//gen:broken" in first.text_content() and "failed" in first.text_content()
    assert "Executing genrule failed: exit 1" in pg.text_content("#build-failures")
    assert "TIMEOUT" in pg.text_content("#build-tests") and "PASSED" in pg.text_content("#build-tests")
    assert "3 operations on instance (default)" in pg.text_content("#build-ops")
    shot(pg, "build")
    # its operations, and back from one of them
    pg.click("#build-ops li a")
    pg.wait_for_selector("#ops-table")
    expect(pg.locator("#ops-table tbody tr")).to_have_count(3)
    assert "Operations of build inv-broken" in pg.text_content("#ops-build")
    shot(pg, "build-operations")
    pg.click("#ops-table tbody tr td:nth-child(2) a >> nth=0")
    pg.wait_for_selector("#op-invocation a")
    assert "inv-broken" in pg.text_content("#op-invocation") and "failed" in pg.text_content("#op-invocation")
    pg.click("#op-invocation a")
    pg.wait_for_selector("#build-targets")
    assert "inv-broken" in pg.text_content("#build-id")
    assert errors == []


TICKER = "for i in $(seq 1 16); do echo line $i; sleep 0.5; done; echo done >&2"  # a line every 0.5 s for 8 s


def test_operation_page_shows_output_while_the_action_runs(served, page):
    _, base, c, _ = served
    pg, errors = page
    finished: dict = {}
    runner = threading.Thread(target=lambda: finished.update(
        response=run(c, TICKER, outputs=(), tool="ticker", invocation="inv-live")[1]), daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while True:  # the operation's name, once it exists
        _, ops, _ = get_json(f"{base}/api/v1/operations?" + urllib.parse.urlencode({"filter": "invocation_id = inv-live"}))
        if ops["operations"]:
            name = ops["operations"][0]["name"]
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pg.goto(f"{base}/ui/operation?" + urllib.parse.urlencode({"name": name}))
    expect(pg.locator("#op-live-stdout")).to_contain_text("line 1\n")
    _, now, _ = get_json(f"{base}/api/v1/operation?" + urllib.parse.urlencode({"name": name}))
    assert now["operation"]["stage"] == "EXECUTING", "the first line showed only after the action completed"
    assert pg.is_visible("#op-live") and pg.locator("#op-stdout").count() == 0  # no result yet
    expect(pg.locator("#op-live-stdout")).to_contain_text("line 3\n")
    shot(pg, "operation-live")
    # once completed: the result's stdout and stderr, the live section gone
    expect(pg.locator("#op-stdout")).to_have_text("".join(f"line {i}\n" for i in range(1, 17)), timeout=TIMEOUT)
    expect(pg.locator("#op-stderr")).to_have_text("done\n")
    assert pg.is_hidden("#op-live")
    shot(pg, "operation-live-done")
    runner.join(60)
    assert finished["response"].result.exit_code == 0 and errors == []


def test_builds_page_when_build_events_are_off(tmp_path, browser):
    config = CONFIG.replace("local_workers: 2", "local_workers: 0") + "build_events: {enabled: false}\n"
    with start_granary(tmp_path, config) as server:
        pg = browser.new_page()
        pg.goto(f"{http_url(server)}/ui/builds")
        expect(pg.locator("#builds-off")).to_contain_text("Build events are off on this server")
        shot(pg, "builds-off")
        pg.close()
