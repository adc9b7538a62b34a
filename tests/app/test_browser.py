"""The feedback app in a real browser (Debian's headless chromium through Playwright, the app served by
uvicorn on 127.0.0.1): signing in, every task type by mouse and by keyboard, hostile content staying
inert (no dialog, no console error), the dashboard's α updating live, the export download. The
pairwise task page and the dashboard are saved to docs/screenshots/ (from the SQLite run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhflab.app import quality
from tests.app import browser_fixtures, web_fixtures
from tests.app.browser_fixtures import live_server
from tests.app.web_fixtures import PASSWORD

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.browser

# the fixtures, by name
world = web_fixtures.world
browser, browser_log = browser_fixtures.browser, browser_fixtures.browser_log
browser_page, new_browser_page = browser_fixtures.browser_page, browser_fixtures.new_browser_page
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
HOSTILE = {
    "script": "<script>alert(1)</script>",
    "img": "<img src=x onerror=alert(1)>",
    "link": '<a href="javascript:alert(1)">click me</a>',
    "sql": "'; DROP TABLE labels; --",
}


@pytest.fixture
def server(world, db_url):
    """The app on a free port of 127.0.0.1, over the database ``world`` filled."""
    with live_server(db_url) as running:
        yield running


def sign_in(page, server, name: str) -> None:
    page.goto(server.url + "/login")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#login")
    expect(page.locator("header.site .who")).to_contain_text(name)


def open_task(page, server, project) -> None:
    """The project's next task, reading the instructions first when they come first."""
    page.goto(f"{server.url}/projects/{project.id}/label")
    if page.url.endswith("/instructions"):
        with page.expect_navigation():  # to the task page's load event: app.js has run
            page.click("#start")
    expect(page.locator("#progress")).to_be_visible()


def press(page, key: str) -> None:
    """Press a shortcut that submits a form, and wait for the page it leads to."""
    with page.expect_navigation():
        page.keyboard.press(key)


def labels(world, project, annotator: str) -> list[dict]:
    return [r for r in world.store.label_rows(project.id) if r["annotator"] == annotator]


def test_each_task_by_mouse(world, server, browser_page, browser_log):
    page = browser_page
    sign_in(page, server, "alice")

    pairwise = world.project("pairwise")
    open_task(page, server, pairwise)
    page.click("#choice-left")
    expect(page.locator("#saved")).to_be_visible()
    [row] = labels(world, pairwise, "alice")
    assert row["value"] == {"choice": "left", "winner": row["shown_order"][0]}

    ranking = world.project("ranking")
    open_task(page, server, ranking)
    third = page.locator('.rank-item[data-position="2"]')
    third.drag_to(page.locator('.rank-item[data-position="0"]'), target_position={"x": 40, "y": 5})
    expect(page.locator("#rank-2")).to_have_value("1")  # the dragged response is now ranked first
    expect(page.locator(".rank-item").first).to_have_attribute("data-position", "2")
    page.click("#submit")
    expect(page.locator("#saved")).to_be_visible()
    [row] = labels(world, ranking, "alice")
    assert row["value"]["ranking"] == [row["shown_order"][p] for p in (2, 0, 1)]

    rating = world.project("rating")
    open_task(page, server, rating)
    page.check("#score-0-6")
    page.check("#score-1-2")
    page.click("#submit")
    expect(page.locator("#saved")).to_be_visible()
    assert labels(world, rating, "alice")[0]["value"] == {"scores": {"helpful": 6, "honest": 2}}

    binary = world.project("binary")
    open_task(page, server, binary)
    page.click("#binary-bad")
    expect(page.locator("#saved")).to_be_visible()
    assert labels(world, binary, "alice")[0]["value"] == {"good": False}

    critique = world.project("critique")
    open_task(page, server, critique)
    page.fill("#critique", "No season word.")
    page.click("#copy-completion")
    expect(page.locator("#correction")).to_have_value("An old silent pond\n  a frog jumps in")
    page.locator("#correction").press("End")
    page.locator("#correction").type("\n  splash")
    page.click("#submit")
    expect(page.locator("#saved")).to_be_visible()
    value = labels(world, critique, "alice")[0]["value"]
    assert value == {"critique": "No season word.", "correction": "An old silent pond\n  a frog jumps in\n  splash"}
    browser_log.assert_clean()


def test_each_task_by_keyboard(world, server, browser_page, browser_log):
    page = browser_page
    sign_in(page, server, "bob")

    pairwise = world.project("pairwise")
    open_task(page, server, pairwise)
    press(page, "s")  # skip the first item
    press(page, "2")
    expect(page.locator("#saved")).to_have_text("Saved.")
    press(page, "ArrowLeft")
    expect(page.locator("#all-done")).to_be_visible()  # three items: one skipped, two labelled
    rows = labels(world, pairwise, "bob")
    assert [r["value"]["choice"] for r in rows] == ["right", "left"]
    assert all(r["seconds"] > 0 for r in rows)  # the page measured the time spent

    ranking = world.project("ranking")
    open_task(page, server, ranking)
    for key in ("3", "ArrowUp", "ArrowUp", "2", "ArrowUp", "ArrowDown"):  # 3 to the top; 2 up and back
        page.keyboard.press(key)
    expect(page.locator("#ranking-status")).to_contain_text("Response 2 is now ranked 3")
    expect(page.locator("#rank-2")).to_have_value("1")
    press(page, "Enter")
    expect(page.locator("#saved")).to_be_visible()
    row = labels(world, ranking, "bob")[0]
    assert row["value"]["ranking"] == [row["shown_order"][p] for p in (2, 0, 1)]

    rating = world.project("rating")
    open_task(page, server, rating)
    page.keyboard.press("6")
    page.keyboard.press("3")
    expect(page.locator("#score-1-3")).to_be_checked()
    press(page, "Enter")
    expect(page.locator("#saved")).to_be_visible()
    assert labels(world, rating, "bob")[0]["value"] == {"scores": {"helpful": 6, "honest": 3}}

    binary = world.project("binary")
    open_task(page, server, binary)
    press(page, "g")
    expect(page.locator("#saved")).to_be_visible()
    press(page, "x")
    expect(page.locator("#all-done")).to_be_visible()
    assert [r["value"]["good"] for r in labels(world, binary, "bob")] == [True, False]

    critique = world.project("critique")
    open_task(page, server, critique)
    page.focus("#critique")
    page.keyboard.type("gst: typed, not shortcuts")  # in a text box, letters are text
    press(page, "Control+Enter")
    expect(page.locator("#all-done")).to_be_visible()
    assert labels(world, critique, "bob")[0]["value"]["critique"] == "gst: typed, not shortcuts"
    browser_log.assert_clean()


def test_hostile_content_renders_inert(world, server, browser_page, browser_log):
    rows = [
        {"prompt": f"{HOSTILE['script']} {HOSTILE['sql']}", "completions": [HOSTILE["img"], HOSTILE["link"]]},
    ]
    project = world.add_project(f"evil {HOSTILE['script']}", "pairwise", rows, instructions=HOSTILE["img"])
    page = browser_page
    sign_in(page, server, "alice")
    expect(page.locator(f'tr[data-project-id="{project.id}"] th')).to_have_text(f"evil {HOSTILE['script']}")
    open_task(page, server, project)
    expect(page.locator(".prompt-text")).to_have_text(f"{HOSTILE['script']} {HOSTILE['sql']}")
    shown = sorted(page.locator(".completion .text").all_text_contents())
    assert shown == sorted([HOSTILE["img"], HOSTILE["link"]])
    assert page.locator("main img, main a[href^='javascript'], main svg").count() == 0
    assert page.evaluate("document.scripts.length") == 1
    press(page, "1")
    expect(page.locator("#all-done")).to_be_visible()
    [row] = labels(world, project, "alice")
    assert row["prompt"] == rows[0]["prompt"]

    page.click("#logout")
    sign_in(page, server, "rita")
    page.goto(f"{server.url}/projects/{project.id}/dashboard")
    expect(page.locator('tr[data-annotator="alice"]')).to_be_visible()
    page.goto(f"{server.url}/projects/{project.id}/instructions")
    expect(page.locator("#instructions")).to_have_text(HOSTILE["img"])
    browser_log.assert_clean()


def label_pairwise(world, name: str, project, winner: int) -> None:
    user = world.users[name]
    world.store.mark_instructions_seen(project.id, user.id)
    task = world.store.next_task(project.id, user)
    choice = "left" if task.shown_order[0] == winner else "right"
    world.store.submit_label(task.assignment_id, user, {"choice": choice}, f"{name}-{task.item_id}", 4.0)


def test_the_dashboard_updates_live_and_exports(world, server, db_url, new_browser_page, browser_log):
    rows = [
        {
            "prompt": "Explain why the sky is blue, in two sentences.",
            "completions": [
                "Sunlight is scattered by the molecules of the air, and blue light, with its shorter "
                "wavelength, is scattered far more than red (Rayleigh scattering).\n\n"
                "So blue light reaches our eyes from every part of the sky.",
                "The sky reflects the oceans, which are blue.\nThat is why it looks blue on clear days.",
            ],
        },
        {
            "prompt": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "What is the capital of Australia?"},
            ],
            "completions": ["Canberra.", "Sydney, the largest city."],
        },
        {"prompt": "Name a prime number greater than 10.", "completions": ["11", "12"]},
    ]
    project = world.add_project("sky and capitals", "pairwise", rows, instructions="Prefer the correct answer.")
    admin = new_browser_page()
    sign_in(admin, server, "admin")
    admin.goto(f"{server.url}/projects/{project.id}/dashboard")
    expect(admin.locator("#alpha")).to_have_text("—")

    for alice_winner, bob_winner in ((0, 0), (1, 1), (0, 1)):
        label_pairwise(world, "alice", project, alice_winner)
        label_pairwise(world, "bob", project, bob_winner)
    alpha = quality.agreement(world.store.label_rows(project.id)).krippendorff_alpha
    assert alpha is not None
    expect(admin.locator("#alpha")).to_have_text(f"{alpha:.3f}", timeout=15_000)  # polled, not reloaded
    expect(admin.locator('tr[data-annotator="bob"] [data-field="n_labels"]')).to_have_text("3")

    with admin.expect_download() as download:
        admin.click("#export-preferences")
    exported = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert len(exported) == 6 and {r["annotator"] for r in exported} == {"alice", "bob"}

    reviewer = new_browser_page()  # a second person, with a session of her own
    sign_in(reviewer, server, "rita")
    reviewer.goto(f"{server.url}/projects/{project.id}/review")
    expect(reviewer.locator(".review-item")).to_have_count(1)  # the item alice and bob disagree on
    if db_url.startswith("sqlite"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        admin.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
    browser_log.assert_clean()


def test_the_pairwise_page_screenshot(world, server, db_url, new_browser_page, browser_log):
    rows = [
        {
            "prompt": [
                {"role": "system", "content": "You are a helpful, honest assistant."},
                {"role": "user", "content": "My sourdough starter smells like nail polish remover. Is it ruined?"},
            ],
            "completions": [
                "Not ruined: it is hungry. An acetone smell means the yeast and bacteria have run out of food.\n\n"
                "Feed it twice a day at a 1:1:1 ratio (starter, flour, water) for two days, and the smell "
                "should fade.",
                "Yes, throw it away and start a new one: that smell means it has gone bad.",
            ],
        }
    ]
    project = world.add_project("sourdough help", "pairwise", rows, instructions="Prefer the more helpful answer.")
    page = new_browser_page(viewport={"width": 1200, "height": 760})
    sign_in(page, server, "alice")
    open_task(page, server, project)
    expect(page.locator("#choice-both-bad")).to_be_visible()
    page.locator("#choice-left").focus()
    if db_url.startswith("sqlite"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "pairwise.png"), full_page=True)
    browser_log.assert_clean()
