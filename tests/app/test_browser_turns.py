"""The turns task in a real browser (Debian's headless chromium through Playwright, the app served by
uvicorn on 127.0.0.1): an annotator judges a conversation's assistant turns one by one, by keyboard
and by mouse, and the export holds one unpaired-preference row per turn. The task page is saved as
docs/screenshots/turns.png (from the SQLite run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.app import browser_fixtures, web_fixtures
from tests.app.test_browser import open_task, press, sign_in

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.browser

# the fixtures, by name
world = web_fixtures.world
browser, browser_log = browser_fixtures.browser, browser_fixtures.browser_log
new_browser_page = browser_fixtures.new_browser_page
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CONVERSATION = [
    {"role": "system", "content": "You are a helpful, honest assistant."},
    {"role": "user", "content": "My sourdough starter smells like nail polish remover. Is it ruined?"},
    {"role": "assistant", "content": "Yes, throw it away and start a new one: that smell means it has gone bad."},
    {"role": "user", "content": "Really? It was my grandmother's."},
]
REPLY = (
    "Sorry, I was wrong: it is not ruined, only hungry. An acetone smell means the yeast and bacteria have "
    "run out of food. Feed it twice a day at 1:1:1 (starter, flour, water) for two days and the smell fades."
)


@pytest.fixture
def server(world, db_url):
    with browser_fixtures.live_server(db_url) as running:
        yield running


def test_an_annotator_judges_each_assistant_turn_and_the_export_has_a_row_per_turn(
    world, server, db_url, new_browser_page, browser_log
):
    rows = [{"prompt": CONVERSATION, "completions": [REPLY, "It is fine."]}]
    project = world.add_project("sourdough turns", "turns", rows, overlap=1, instructions="Judge every reply.")
    page = new_browser_page(viewport={"width": 1200, "height": 900})
    sign_in(page, server, "alice")
    open_task(page, server, project)
    expect(page.locator("fieldset.turn-verdict")).to_have_count(2)
    expect(page.locator("#prompt-heading")).to_have_count(0)
    if db_url.startswith("sqlite"):
        page.locator("#turn-0-bad").check()
        page.locator("#turn-1-good").focus()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "turns.png"), full_page=True)
        page.goto(page.url)  # a fresh page (a reload would restore the checked radio)
        expect(page.locator("#turn-0-bad")).not_to_be_checked()

    # by keyboard: x (turn 1 bad), g (turn 2 good), Enter submits
    page.keyboard.press("x")
    expect(page.locator("#turn-0-bad")).to_be_checked()
    expect(page.locator("fieldset.turn-verdict").nth(1)).to_have_class(re.compile(r"\bis-current\b"))
    page.keyboard.press("g")
    expect(page.locator("#turn-1-good")).to_be_checked()
    press(page, "Enter")
    expect(page.locator("#saved")).to_have_text("Saved.")

    # by mouse, with the browser refusing a submission that leaves a turn unjudged
    page.click("#turn-1-bad")
    page.click("#submit")
    expect(page.locator("#saved")).to_be_visible()  # still the same page: turn 1 has no verdict
    page.click("#turn-0-good")
    page.click("#submit")
    expect(page.locator("#all-done")).to_be_visible()
    values = [r["value"] for r in world.store.label_rows(project.id) if r["annotator"] == "alice"]
    assert sorted(map(str, values)) == sorted(map(str, [{"turns": [False, True]}, {"turns": [True, False]}]))

    admin = new_browser_page()
    sign_in(admin, server, "admin")
    admin.goto(f"{server.url}/projects/{project.id}/dashboard")
    with admin.expect_download() as download:
        admin.click("#export-unpaired")
    exported = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    [reply_label] = {r["label_id"] for r in exported if r["completion"][0]["content"] == REPLY}
    reply_rows = [r for r in exported if r["label_id"] == reply_label]  # the keyboard's label
    assert [(r["prompt"], r["completion"], r["label"]) for r in reply_rows] == [
        (CONVERSATION[:2], [CONVERSATION[2]], False),
        (CONVERSATION, [{"role": "assistant", "content": REPLY}], True),
    ]
    assert len(exported) == 4 and {r["annotator"] for r in exported} == {"alice"}
    browser_log.assert_clean()


def test_a_reviewer_sets_a_disagreeing_conversations_gold_verdicts(world, server, new_browser_page, browser_log):
    rows = [{"prompt": CONVERSATION, "completions": [REPLY]}]
    project = world.add_project("sourdough gold", "turns", rows, overlap=2, instructions="Judge every reply.")
    for name, verdicts in (("alice", [False, True]), ("bob", [True, True])):
        user = world.users[name]
        world.store.mark_instructions_seen(project.id, user.id)
        task = world.store.next_task(project.id, user)
        world.store.submit_label(task.assignment_id, user, {"turns": verdicts}, f"key-{name}", 3.0)
    page = new_browser_page()
    sign_in(page, server, "rita")
    page.goto(f"{server.url}/projects/{project.id}/review")
    expect(page.locator(".turn-gold")).to_have_count(2)
    page.click("button:has-text('Save gold answer')")  # the browser refuses: no turn judged yet
    expect(page.locator("#saved")).to_have_count(0)
    page.check('.turn-gold input[name="answer_0"][value="no"]')
    page.check('.turn-gold input[name="answer_1"][value="yes"]')
    page.click("button:has-text('Save gold answer')")
    expect(page.locator("#saved")).to_be_visible()
    expect(page.locator(".review-item")).to_contain_text("Gold answer: turn 1 bad, turn 2 good")
    [item] = world.store.disagreements(project.id, world.users["rita"])
    assert item["is_gold"] and item["gold_answer"] == [False, True]
    browser_log.assert_clean()
