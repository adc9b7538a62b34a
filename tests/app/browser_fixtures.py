"""Fixtures for the feedback app's browser tests: Debian's headless chromium through Playwright, and the
app served by uvicorn on 127.0.0.1.

Pull the fixtures into a conftest (or a test module) with one import:

    from tests.app.browser_fixtures import browser, browser_log, browser_page, new_browser_page  # noqa: F401

- ``browser`` (module scope): chromium from ``$RLHFLAB_CHROMIUM``, ``chromium`` on the PATH or
  ``/usr/bin/chromium``; where it is missing or does not start, every test using it skips and the reason
  is printed (in the warnings summary). Module scope on purpose: Playwright's sync API runs an event
  loop that makes ``asyncio.run`` fail while it lives, so it is stopped when the browser tests' module
  ends (keep ``asyncio.run`` out of modules that use the browser).
- ``browser_log``: what went wrong in this test's pages: console errors, uncaught page errors, dialogs
  (answered automatically: dismissed, or accepted with ``browser_log.dialog_action = "accept"``) and
  requests to any host but 127.0.0.1 (blocked before they leave). ``browser_log.assert_clean()`` fails
  listing them; ``browser_log.screenshot(page, name)`` saves a PNG. When a test fails, every page it
  opened is saved as a screenshot, its path printed with the failure.
- ``browser_page``: a page in a fresh context (its own cookies, so its own session), recorded into
  ``browser_log``; ``new_browser_page(**context_options)`` opens more (a second user, say).

``live_server(db_url, factory=...)`` serves an app factory with uvicorn in a subprocess on a free port of
127.0.0.1 and yields a :class:`LiveServer` (``url``, ``process``, ``kill()`` for a SIGKILL test, ``log()``)
once the server answers HTTP.

Screenshots go under ``$RLHFLAB_BROWSER_ARTIFACTS`` when it is set (for CI to keep), else the test's
tmp_path.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
]
ALLOWED_HOSTS = ("127.0.0.1",)
LOCAL_SCHEMES = ("data", "blob", "about")
ACTION_TIMEOUT_MS = 10_000
DEFAULT_FACTORY = "rlhflab.app.web:create_app"
SERVE_SCRIPT = Path(__file__).with_name("_serve.py")


def chromium_executable() -> tuple[str | None, str]:
    """(the chromium to launch, or None; where it was looked for)."""
    if os.environ.get("RLHFLAB_CHROMIUM"):
        path = os.environ["RLHFLAB_CHROMIUM"]
        return (path if os.access(path, os.X_OK) else None), f"RLHFLAB_CHROMIUM={path}"
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    return found, "chromium on the PATH and /usr/bin/chromium"


def _skip(reason: str):
    """Skip, and say why in the warnings summary too: pytest prints that by default, also under xdist,
    where skip reasons show only with -rs."""
    warnings.warn(f"browser tests skipped: {reason}", pytest.PytestWarning, stacklevel=2)
    pytest.skip(reason)


def _launch_failure(error: Exception) -> str:
    """The gist of Playwright's launch error: its first line, chromium's own stderr and how it exited."""
    lines = str(error).splitlines()
    gist = [lines[0]] + [line.strip() for line in lines[1:] if "[err]" in line or "did exit" in line]
    return " / ".join(line[:200] for line in gist[:6])


@dataclass
class BrowserLog:
    """What went wrong in a test's pages; :meth:`assert_clean` checks that nothing did."""

    artifacts: Path
    dialog_action: str = "dismiss"  # or "accept"
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    pages: list = field(default_factory=list)

    def watch(self, context) -> None:
        """Block and record requests to other hosts in ``context``, and watch its pages."""
        context.route("**/*", self._route)
        context.on("page", self.watch_page)

    def watch_page(self, page) -> None:
        if any(p is page for p in self.pages):
            return
        self.pages.append(page)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("dialog", self._dialog)

    def _route(self, route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in LOCAL_SCHEMES or parts.hostname in ALLOWED_HOSTS:
            route.continue_()
        else:
            self.external_requests.append(url)
            route.abort("blockedbyclient")

    def _console(self, message) -> None:
        if message.type == "error":
            where = message.location or {}
            at = f" (at {where.get('url')}:{where.get('lineNumber')})" if where.get("url") else ""
            self.console_errors.append(message.text + at)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if self.dialog_action == "accept":
            dialog.accept()
        else:
            dialog.dismiss()

    def problems(self) -> list[str]:
        return (
            [f"console error: {e}" for e in self.console_errors]
            + [f"page error: {e}" for e in self.page_errors]
            + [f"dialog: {d}" for d in self.dialogs]
            + [f"request to another host (blocked): {u}" for u in self.external_requests]
        )

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "the browser saw:\n" + "\n".join(problems)

    def screenshot(self, page, name: str) -> Path:
        """Save ``page`` as ``<artifacts>/<name>.png`` (the whole page) and return the path."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def browser():
    """Headless chromium (module scope; see the module docstring), or a skip saying why not."""
    executable, looked = chromium_executable()
    if executable is None:
        _skip(f"no chromium found ({looked}); install Debian's `chromium` or set RLHFLAB_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        _skip(f"playwright is not installed ({e})")
    playwright = sync_playwright().start()
    try:
        instance = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    except Exception as e:  # noqa: BLE001 -- any launch failure means "no browser here": skip, saying why
        playwright.stop()
        _skip(f"chromium at {executable} did not start: {_launch_failure(e)}")
    yield instance
    instance.close()
    playwright.stop()


@pytest.fixture
def browser_log(request, tmp_path) -> BrowserLog:
    root = os.environ.get("RLHFLAB_BROWSER_ARTIFACTS")
    name = re.sub(r"[^\w.-]+", "_", request.node.nodeid)
    return BrowserLog(artifacts=Path(root) / name if root else tmp_path / "browser")


@pytest.fixture
def new_browser_page(request, browser, browser_log) -> Iterator[Callable]:
    """``new_browser_page(**context_options)``: a page in a new context, watched by ``browser_log``."""
    contexts = []
    failed_before = request.session.testsfailed

    def make(**options):
        context = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **options})
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        contexts.append(context)
        browser_log.watch(context)
        page = context.new_page()
        browser_log.watch_page(page)
        return page

    yield make
    if request.session.testsfailed > failed_before:  # the test's call failed: keep what it showed
        for i, page in enumerate(browser_log.pages):
            with contextlib.suppress(Exception):
                print(f"screenshot of the failed test: {browser_log.screenshot(page, f'failure-{i}')}")
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()


@pytest.fixture
def browser_page(new_browser_page):
    return new_browser_page()


# --------------------------------------------------------------------------------------------------
# The app on a real port


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    port: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """What the server printed so far (uvicorn's warnings and errors, tracebacks)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing; as a power cut would."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def live_server(
    db_url: str | None = None,
    *,
    factory: str = DEFAULT_FACTORY,
    env: dict[str, str] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[LiveServer]:
    """Serve ``factory(db_url)`` (``factory()`` without a URL; ``factory`` as "module:function") with
    uvicorn in a subprocess on a free port of 127.0.0.1 (``tests/app/_serve.py`` binds it, so no other
    process can take it in between), wait until it answers HTTP, yield it, and stop it afterwards
    (SIGTERM, then SIGKILL). RuntimeError with the server's output if it exits or does not answer."""
    with tempfile.TemporaryDirectory(prefix="rlhflab-serve-") as tmp:
        port_file, log_path = Path(tmp) / "port", Path(tmp) / "server.log"
        command = [sys.executable, str(SERVE_SCRIPT), "--factory", factory, "--port-file", str(port_file)]
        if db_url is not None:
            command += ["--db-url", db_url]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        server = None
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited ({process.returncode}) before answering:\n" + _tail(log_path)
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer within {startup_timeout:g} s:\n" + _tail(log_path))
                if port_file.exists() and port_file.read_text().strip():
                    port = int(port_file.read_text())
                    if _answers(port):
                        break
                time.sleep(0.05)
            server = LiveServer(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
            yield server
        finally:
            if server is not None:
                server.stop()
            elif process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])
