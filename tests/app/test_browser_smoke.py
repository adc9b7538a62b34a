"""The browser-test machinery itself, on a tiny page the stdlib serves: chromium starts, scripts run, and
console errors, page errors, dialogs and requests to other hosts are caught; ``live_server`` serves an
app factory on 127.0.0.1 and dies on SIGKILL."""

import html
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.app import browser_fixtures
from tests.app.browser_fixtures import _answers, live_server

# The fixtures, by name (until tests/app/conftest.py imports them for every module).
browser, browser_log = browser_fixtures.browser, browser_fixtures.browser_log
browser_page, new_browser_page = browser_fixtures.browser_page, browser_fixtures.new_browser_page

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.browser

INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title><script src="/app.js" defer></script></head>
<body><h1>Smoke</h1>
<button id="go">go</button> <button id="complain">complain</button> <button id="external">external</button>
<button id="ask">ask</button> <button id="throw">throw</button>
<p id="out">loading</p></body></html>
"""
APP_JS = """
const out = document.getElementById("out");
out.textContent = "ready";
const on = (id, f) => document.getElementById(id).addEventListener("click", f);
on("go", () => { out.textContent = "clicked"; });
on("complain", () => { console.error("boom from the page"); out.textContent = "complained"; });
on("external", () => {
  fetch("https://cdn.example.invalid/tracker.js").then(() => { out.textContent = "fetched"; },
                                                       () => { out.textContent = "blocked"; });
});
on("ask", () => { out.textContent = confirm("Discard the label?") ? "accepted" : "dismissed"; });
on("throw", () => { throw new Error("kaboom"); });
"""
EXTERNAL = """<!doctype html><html><head><meta charset="utf-8"><title>external</title>
<link rel="stylesheet" href="https://fonts.example.invalid/font.css"></head>
<body><img src="http://203.0.113.9/pixel.png" alt=""><p id="out">here</p></body></html>
"""
PAGES = {
    "/": ("text/html; charset=utf-8", INDEX),
    "/app.js": ("text/javascript; charset=utf-8", APP_JS),
    "/external.html": ("text/html; charset=utf-8", EXTERNAL),
}


@pytest.fixture(scope="module")
def site():
    """The pages above on 127.0.0.1 (stdlib http.server in a thread); yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            page = PAGES.get(self.path.split("?")[0])
            if page is None:
                self.send_error(404)
                return
            body = page[1].encode()
            self.send_response(200)
            self.send_header("Content-Type", page[0])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_page_loads_and_a_click_runs_its_script(site, browser_page, browser_log):
    browser_page.goto(site + "/")
    expect(browser_page.locator("#out")).to_have_text("ready")
    browser_page.click("#go")
    expect(browser_page.locator("#out")).to_have_text("clicked")
    browser_log.assert_clean()


def test_console_errors_and_page_errors_are_recorded(site, browser_page, browser_log):
    browser_page.goto(site + "/")
    with browser_page.expect_console_message(lambda m: m.type == "error"):
        browser_page.click("#complain")
    with browser_page.expect_event("pageerror"):
        browser_page.click("#throw")
    assert len(browser_log.console_errors) == 1 and "boom from the page" in browser_log.console_errors[0]
    assert len(browser_log.page_errors) == 1 and "kaboom" in browser_log.page_errors[0]
    with pytest.raises(AssertionError, match="console error: boom from the page"):
        browser_log.assert_clean()


def test_requests_to_other_hosts_are_blocked_and_recorded(site, browser_page, browser_log):
    browser_page.goto(site + "/")
    browser_page.click("#external")
    expect(browser_page.locator("#out")).to_have_text("blocked")
    assert browser_log.external_requests == ["https://cdn.example.invalid/tracker.js"]
    browser_page.goto(site + "/external.html")
    expect(browser_page.locator("#out")).to_have_text("here")
    browser_page.wait_for_load_state("load")
    assert set(browser_log.external_requests[1:]) == {
        "https://fonts.example.invalid/font.css",
        "http://203.0.113.9/pixel.png",
    }
    with pytest.raises(AssertionError, match=r"request to another host \(blocked\): https://cdn"):
        browser_log.assert_clean()


def test_dialogs_are_answered_and_recorded(site, browser_page, browser_log):
    browser_page.goto(site + "/")
    browser_page.click("#ask")
    expect(browser_page.locator("#out")).to_have_text("dismissed")
    browser_log.dialog_action = "accept"
    browser_page.click("#ask")
    expect(browser_page.locator("#out")).to_have_text("accepted")
    assert browser_log.dialogs == ["confirm: Discard the label?"] * 2


def test_each_page_has_its_own_context_and_screenshots_are_saved(site, new_browser_page, browser_log):
    first, second = new_browser_page(), new_browser_page(viewport={"width": 400, "height": 300})
    assert first.context is not second.context
    for page in (first, second):
        page.goto(site + "/")
        expect(page.locator("#out")).to_have_text("ready")
    path = browser_log.screenshot(second, "small page")
    assert path.name == "small_page.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(browser_log.pages) == 2
    browser_log.assert_clean()


def tiny_app(url=None):
    """An ASGI app that shows the URL it was made with (a stand-in for rlhflab.app.web.create_app)."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = f"<!doctype html><title>tiny</title><p id='db'>{html.escape(str(url))}</p>".encode()
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.server
def test_live_server_serves_a_factory_on_127_0_0_1_and_dies_on_sigkill(browser_page, browser_log):
    with live_server("sqlite:///labels.db", factory="tests.app.test_browser_smoke:tiny_app") as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        browser_page.goto(server.url + "/")
        expect(browser_page.locator("#db")).to_have_text("sqlite:///labels.db")
        server.kill()
        assert server.process.returncode == -signal.SIGKILL
        assert not _answers(server.port)
    browser_log.assert_clean()


@pytest.mark.server
def test_live_server_reports_a_server_that_does_not_start():
    with pytest.raises(RuntimeError, match=r"exited \(1\)[\s\S]*AttributeError"):
        with live_server(factory="tests.app.test_browser_smoke:no_such_factory"):
            pass
