"""The run report in a real browser: Debian's headless chromium opens each kind of report from a
file:// URL; nothing is fetched but the file itself, no console error, every plot loads. The demo's
report is saved as docs/screenshots/report.png (the README shows it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhflab.evaluation.html_report import write_report
from tests.app.browser_fixtures import browser  # noqa: F401
from tests.evaluation.report_runs import tiny_demo, tiny_loop, toy_report_folder

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "report.png"


@pytest.fixture(scope="module")
def reports(tmp_path_factory, model_cache) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser-reports")
    demo, loop = tiny_demo(root / "demo"), tiny_loop(root / "loop")
    toy = toy_report_folder(root / "toy")
    return {
        "demo": demo / "report.html",
        "loop": loop / "report.html",
        "toy": write_report([toy]),
        "several runs": write_report([demo, loop, demo / "ppo"], root / "several.html"),
    }


@pytest.mark.parametrize("kind", ["demo", "loop", "toy", "several runs"])
def test_each_report_opens_with_no_error_no_request_and_every_plot(kind, reports, browser):  # noqa: F811
    url = reports[kind].resolve().as_uri()
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    requests, errors = [], []

    def route(r):  # anything but the report itself is refused before it leaves, and noted
        if r.request.url == url:
            r.continue_()
        else:
            requests.append(r.request.url)
            r.abort("blockedbyclient")

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda r: None if r.url == url or r.url.startswith("data:") else requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    assert not requests, f"the report asked for {requests}"
    assert not errors, f"the browser's console said {errors}"
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
    expected = reports[kind].read_text().count("<img ")
    assert len(images) == expected and expected >= 1
    assert all(complete and width > 0 for _, complete, width in images), images
    assert page.title().startswith("rlhflab report")
    if kind == "demo":
        assert page.locator("table").first.is_visible()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        assert SCREENSHOT.stat().st_size > 10_000
    context.close()
    assert not requests and not errors, (requests, errors)
