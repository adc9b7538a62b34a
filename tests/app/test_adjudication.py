"""The adjudication queue: items whose labels disagree go to a reviewer, who records the resolution and
its cause; exports carry the adjudicated label beside the raw ones (SQLite and PostgreSQL), and the
page works in chromium (its screenshot is docs/screenshots/adjudication.png, from the SQLite run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, inspect, select

from rlhflab.app import models as m
from rlhflab.app.db import alembic_config, make_engine, migrate
from rlhflab.app.store import Forbidden, NotFound, StoreError
from rlhflab.app.tasks import LabelError
from rlhflab.commands.feedback import run_feedback
from rlhflab.data import read_records
from tests.app import browser_fixtures, web_fixtures
from tests.app.browser_fixtures import live_server
from tests.app.web_fixtures import PASSWORD, hidden_fields

world = web_fixtures.world  # the fixtures, by name
browser, browser_log = browser_fixtures.browser, browser_fixtures.browser_log
new_browser_page = browser_fixtures.new_browser_page
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PAIRS = [
    {"prompt": "Say hello.", "completions": ["Hello there!", "Go away."]},
    {"prompt": "Name a colour.", "completions": ["Blue.", "Seven."]},
    {"prompt": "Is the sea wet?", "completions": ["Yes.", "No."]},
]


def shown(task: str, order: list[int], want):
    """``want`` (original indices: a pairwise winner or choice, a ranking best first, or a value as
    it is) as the page posts it for an annotator who saw the completions in ``order``."""
    if task == "pairwise":
        return {"choice": want if isinstance(want, str) else "left" if order[0] == want else "right"}
    if task == "ranking":
        return {"ranking": [order.index(i) for i in want]}
    return want


def label(world, project, name: str, want) -> int:
    """``name`` labels their next item of ``project`` with ``want``; returns the item's id."""
    store, user = world.store, world.users[name]
    store.mark_instructions_seen(project.id, user.id)
    task = store.next_task(project.id, user)
    store.submit_label(
        task.assignment_id, user, shown(project.task, task.shown_order, want), f"{name}{task.item_id}", 2.0
    )
    return task.item_id


def label_all(world, project, answers: dict[str, list]) -> list[int]:
    """Each annotator labels the project's items in turn with their answers; returns the item ids."""
    items = []
    for name, wants in answers.items():
        items = [label(world, project, name, want) for want in wants]
    return items


def pending(world, project, user="rita") -> list[int]:
    return [i["item_id"] for i in world.store.adjudication_queue(project.id, world.users[user]) if i["pending"]]


def pairwise_project(world, name="pairs", rows=PAIRS, answers=None):
    """A pairwise project alice and bob label: they disagree on the first item only."""
    project = world.add_project(name, "pairwise", rows, overlap=2)
    answers = answers or {"alice": [0, 0, 1], "bob": [1, 0, 1]}
    return project, label_all(world, project, answers)


def resolve(client, project, item: int, **fields):
    return client.post(f"/projects/{project.id}/adjudicate", {"item_id": str(item), **fields})


# ---- which items are queued ---------------------------------------------------------------------


def test_the_queue_holds_only_the_items_whose_labels_disagree(world):
    project, items = pairwise_project(world, rows=[*PAIRS, {"prompt": "One label only.", "completions": ["a", "b"]}])
    label(world, project, "alice", "tie")  # the fourth item: one label is no disagreement
    assert pending(world, project) == [items[0]]
    [entry] = [i for i in world.store.adjudication_queue(project.id) if i["pending"]]
    assert [(lab["annotator"], lab["value"]["winner"]) for lab in entry["labels"]] == [("alice", 0), ("bob", 1)]


@pytest.mark.parametrize(
    "task, answers, queued",
    [
        # ranking: a different best completion disagrees; the same best in another order does not
        ("ranking", {"alice": [[0, 1, 2], [0, 1, 2]], "bob": [[2, 1, 0], [0, 2, 1]]}, [0]),
        # rating: scores more than 1 apart disagree (±1 is agreement, as with gold answers)
        (
            "rating",
            {"alice": [{"scores": {"helpful": 5, "honest": 4}}], "bob": [{"scores": {"helpful": 3, "honest": 4}}]},
            [0],
        ),
        (
            "rating",
            {"alice": [{"scores": {"helpful": 5, "honest": 4}}], "bob": [{"scores": {"helpful": 4, "honest": 5}}]},
            [],
        ),
        ("binary", {"alice": [{"good": True}], "bob": [{"good": False}]}, [0]),
        # a tie against a winner is a disagreement; both bad twice is not
        ("pairwise", {"alice": ["tie", "both_bad", 1], "bob": [0, "both_bad", 1]}, [0]),
    ],
)
def test_disagreement_follows_the_review_pages_rule_for_each_task(world, task, answers, queued):
    project = world.project(task)
    items = label_all(world, project, answers)
    assert pending(world, project) == [items[i] for i in queued]


def test_critiques_never_queue_and_gold_items_and_excluded_annotators_do_not_count(world, tmp_path):
    critique = world.project("critique")
    label_all(world, critique, {"alice": [{"critique": "Too short."}], "bob": [{"critique": "Lovely."}]})
    assert pending(world, critique) == []

    project, items = pairwise_project(world)
    world.store.set_gold(items[0], 0, None)  # a gold item's answer is the gold answer: not queued
    assert pending(world, project) == []
    world.store.set_gold(items[0], None, None)
    assert pending(world, project) == [items[0]]
    world.store.set_excluded(project.id, "bob", True, None)  # alice's label alone: nothing to resolve
    assert pending(world, project) == []


def test_an_item_whose_labels_change_after_its_resolution_comes_back(world):
    carol = world.store.create_user("carol", PASSWORD, "annotator")
    world.users["carol"] = carol
    project = world.add_project("three", "pairwise", PAIRS[:1], overlap=3)
    world.store.add_members(project.id, ["carol"], "annotator")
    [item] = label_all(world, project, {"alice": [0], "bob": [1]})
    world.store.adjudicate(item, {"choice": "left"}, "annotator_error", "bob misread", world.users["rita"])
    assert pending(world, project) == []
    label(world, project, "carol", 1)  # a late label: the decision was made without it
    [entry] = world.store.adjudication_queue(project.id)
    assert entry["pending"] and entry["stale"] and entry["adjudication"]["cause"] == "annotator_error"


# ---- who may adjudicate -------------------------------------------------------------------------


def test_only_the_projects_reviewers_and_the_admins_see_and_use_the_queue(world):
    project, items = pairwise_project(world)
    url = f"/projects/{project.id}/adjudicate"
    rex = world.store.create_user("rex", PASSWORD, "reviewer")  # a reviewer of no project
    world.users["rex"] = rex
    for annotator in ("alice", "bob"):
        client = world.client(annotator)
        page = client.get(url)
        assert page.status_code == 403 and "Go away." not in page.text
        assert resolve(client, project, items[0], cause="other", note="x", choice="left").status_code == 403
    outsider = world.client("rex")
    assert outsider.get(url).status_code == 404
    assert resolve(outsider, project, items[0], cause="other", note="x", choice="left").status_code == 404
    for staff in ("rita", "admin"):  # the admin is no member: admins see every project
        page = world.client(staff).get(url)
        assert page.status_code == 200 and 'id="adjudicate-form"' in page.text and ">bob<" in page.text
    world.users["rhea"] = world.store.create_user("rhea", PASSWORD, "reviewer")
    world.store.add_members(project.id, ["rhea"], "annotator")  # a reviewer by account, an annotator here
    assert world.client("rhea").get(url).status_code == 403
    with pytest.raises(Forbidden):
        world.store.adjudication_queue(project.id, world.users["rhea"])
    with pytest.raises(NotFound):
        world.store.adjudicate(items[0], {"choice": "left"}, "other", "x", rex)
    assert world.store.adjudication_queue(project.id, world.users["rita"])[0]["adjudication"] is None


def test_the_dashboard_and_the_project_list_link_to_the_queue(world):
    project, _ = pairwise_project(world)
    rita = world.client("rita")
    assert f'href="/projects/{project.id}/adjudicate"' in rita.get(f"/projects/{project.id}/dashboard").text
    assert f'href="/projects/{project.id}/adjudicate"' in rita.get("/").text
    assert "/adjudicate" not in world.client("alice").get("/").text


# ---- recording a resolution ---------------------------------------------------------------------


def test_a_resolution_is_stored_and_the_item_leaves_the_queue_and_deciding_again_replaces_it(world):
    project, items = pairwise_project(world)
    rita, admin = world.client("rita"), world.client("admin")
    page = rita.get(f"/projects/{project.id}/adjudicate")
    form = hidden_fields(page.text, "adjudicate-form")
    assert form["item_id"] == str(items[0]) and form["csrf_token"] == rita.csrf
    response = resolve(rita, project, items[0], cause="guideline_gap", note="  rude vs. wrong \r\n", choice="right")
    assert response.status_code == 303 and response.headers["location"].endswith(f"?saved={items[0]}")
    after = rita.get(response.headers["location"])
    assert f"Resolution of item {items[0]} saved." in after.text and 'id="queue-empty"' in after.text
    assert pending(world, project) == []
    [entry] = world.store.adjudication_queue(project.id)
    decision = entry["adjudication"]
    assert decision["value"] == {"choice": "right", "winner": 1}  # original order: right is completion 1
    assert (decision["cause"], decision["note"], decision["reviewer"]) == ("guideline_gap", "rude vs. wrong", "rita")
    assert sorted(decision["label_ids"]) == sorted(lab["label_id"] for lab in entry["labels"])

    again = resolve(admin, project, items[0], cause="ambiguous_item", choice="tie")
    assert again.status_code == 303
    decision = world.store.adjudication_queue(project.id)[0]["adjudication"]
    assert (decision["value"]["choice"], decision["cause"], decision["reviewer"]) == ("tie", "ambiguous_item", "admin")
    with world.store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(m.Adjudication)) == 1
    change = rita.get(f"/projects/{project.id}/adjudicate?item={items[0]}")  # a resolved item reopens
    assert change.status_code == 200 and 'id="current-resolution"' in change.text


def test_resolving_a_ranking_uses_the_ranking_widgets_in_original_order(world):
    project = world.project("ranking")
    items = label_all(world, project, {"alice": [[0, 1, 2], [0, 1, 2]], "bob": [[2, 1, 0], [0, 1, 2]]})
    response = resolve(
        world.client("rita"), project, items[0], cause="ambiguous_item", rank_0="2", rank_1="3", rank_2="1"
    )
    assert response.status_code == 303
    assert world.store.adjudication_queue(project.id)[0]["adjudication"]["value"] == {"ranking": [2, 0, 1]}


@pytest.mark.parametrize(
    "fields, status",
    [
        ({"cause": "bored", "choice": "left"}, 422),
        ({"cause": "other", "note": "   ", "choice": "left"}, 422),  # "other" says nothing by itself
        ({"cause": "other", "note": "x" * 2001, "choice": "left"}, 422),
        ({"cause": "other", "note": "nul\x00", "choice": "left"}, 422),
        ({"cause": "ambiguous_item", "choice": "sideways"}, 422),
        ({"cause": "ambiguous_item", "choice": "left", "item_id": str(2**63)}, 404),
        ({"cause": "ambiguous_item", "choice": "left", "item_id": "٣"}, 422),
        ({"cause": "ambiguous_item", "choice": "left", "item": "agreeing"}, 400),
        ({"cause": "ambiguous_item", "choice": "left", "item": "other project"}, 404),
    ],
)
def test_bad_resolutions_are_refused_as_the_apps_other_forms_refuse_them(world, fields, status):
    project, items = pairwise_project(world)
    other, other_items = pairwise_project(world, "other pairs")
    fields = dict(fields)
    item = {"agreeing": items[1], "other project": other_items[0]}.get(fields.pop("item", None), items[0])
    response = resolve(world.client("rita"), project, item, **fields)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert pending(world, project) == [items[0]] and pending(world, other) == [other_items[0]]


def test_a_resolution_needs_the_csrf_token_and_the_page_refuses_unknown_items(world):
    project, items = pairwise_project(world)
    rita = world.client("rita")
    bare = rita.post(
        f"/projects/{project.id}/adjudicate",
        {"item_id": str(items[0]), "cause": "other", "note": "x", "choice": "left"},
        csrf=False,
    )
    assert bare.status_code == 403 and pending(world, project) == [items[0]]
    assert rita.get(f"/projects/{project.id}/adjudicate?item={items[1]}").status_code == 404  # agreeing
    assert rita.get(f"/projects/{project.id}/adjudicate?item={2**63}").status_code == 404
    assert rita.get(f"/projects/{project.id}/adjudicate?item=%00").status_code in (404, 422)
    with pytest.raises(LabelError):
        world.store.adjudicate(items[0], {"choice": "left"}, "other", "", None)
    with pytest.raises(StoreError, match="no disagreeing labels"):
        world.store.adjudicate(items[1], {"choice": "left"}, "ambiguous_item", "", None)


# ---- exports ------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exports_carry_the_adjudicated_label_beside_the_raw_ones(world, tmp_path):
    project, items = pairwise_project(world)
    world.store.adjudicate(items[0], {"choice": "right"}, "annotator_error", "alice misread", world.users["rita"])
    raw = tmp_path / "raw.jsonl"
    counts = world.store.export(project.id, "preferences", raw)
    rows = read_jsonl(raw)
    assert counts["records"] == 6 and "adjudicated_items" not in counts
    disputed = [r for r in rows if r["item_id"] == items[0]]
    assert {r["annotator"] for r in disputed} == {"alice", "bob"} and not any(r["adjudicated"] for r in rows)
    for r in disputed:
        assert r["adjudicated_label"] == {"choice": "right", "winner": 1}
        assert (r["adjudication_cause"], r["adjudication_note"]) == ("annotator_error", "alice misread")
    assert all(
        r["adjudicated_label"] is None and r["adjudication_cause"] is None for r in rows if r["item_id"] != items[0]
    )

    resolved = tmp_path / "resolved.jsonl"
    counts = world.store.export(project.id, "preferences", resolved, use_adjudicated=True)
    assert (counts["records"], counts["adjudicated_items"], counts["labels_replaced"]) == (5, 1, 2)
    [record] = [r for r in read_jsonl(resolved) if r["item_id"] == items[0]]
    assert record["adjudicated"] and record["annotator"] == "rita" and record["label_id"] is None
    assert (record["chosen"], record["rejected"]) == ("Go away.", "Hello there!")
    assert len(read_records(resolved, "preference")) == 5  # still records the trainers read


def test_an_adjudicated_ranking_and_rating_export_the_resolution_in_their_records(world, tmp_path):
    ranking = world.project("ranking")
    items = label_all(world, ranking, {"alice": [[0, 1, 2], [0, 1, 2]], "bob": [[2, 1, 0], [0, 1, 2]]})
    world.store.adjudicate(items[0], {"ranking": [1, 0, 2]}, "ambiguous_item", "", None)  # no user: the CLI
    out = tmp_path / "rankings.jsonl"
    world.store.export(ranking.id, "rankings", out, use_adjudicated=True)
    [record] = [r for r in read_jsonl(out) if r["item_id"] == items[0]]
    completions = web_fixtures.TASK_SAMPLES["ranking"][0]["completions"]
    assert record["completions"] == [completions[1], completions[0], completions[2]] and record["annotator"] is None
    pairs = tmp_path / "pairs.jsonl"
    assert world.store.export(ranking.id, "preferences", pairs, use_adjudicated=True)["records"] == 3 + 6

    rating = world.project("rating")
    [item] = label_all(
        world,
        rating,
        {"alice": [{"scores": {"helpful": 7, "honest": 4}}], "bob": [{"scores": {"helpful": 2, "honest": 4}}]},
    )
    world.store.adjudicate(item, {"scores": {"helpful": 5, "honest": 4}}, "guideline_gap", "", world.users["admin"])
    out = tmp_path / "ratings.jsonl"
    world.store.export(rating.id, "ratings", out, use_adjudicated=True)
    assert sorted((r["attribute"], r["score"], r["annotator"]) for r in read_jsonl(out)) == [
        ("helpful", 5.0, "admin"),
        ("honest", 4.0, "admin"),
    ]
    parquet = tmp_path / "ratings.parquet"  # the extra columns (a label's dict, or None) fit parquet too
    assert world.store.export(rating.id, "ratings", parquet)["records"] == 4


def test_the_command_line_and_the_download_take_use_adjudicated(world, db_url, tmp_path, capsys):
    project, items = pairwise_project(world)
    world.store.adjudicate(items[0], {"choice": "left"}, "annotator_error", "", world.users["rita"])
    out = tmp_path / "cli.jsonl"
    argv = ["export", "--db", db_url, "--project", project.name, "--output", str(out)]
    assert run_feedback([*argv, "--use_adjudicated"]) == 0
    assert "2 labels replaced by 1 items' adjudication" in capsys.readouterr().out
    assert len(read_jsonl(out)) == 5 and sum(r["adjudicated"] for r in read_jsonl(out)) == 1
    download = world.client("admin").get(f"/projects/{project.id}/export?kind=preferences&use_adjudicated=true")
    assert download.status_code == 200 and len(download.text.splitlines()) == 5
    assert len(world.client("admin").get(f"/projects/{project.id}/export?kind=preferences").text.splitlines()) == 6


def test_migration_0003_adds_and_removes_the_adjudications_table(db_url):
    engine = make_engine(db_url)
    try:
        migrate(engine)
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
        assert "adjudications" not in inspect(engine).get_table_names()
        migrate(engine)
        assert "adjudications" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


# ---- in a browser -------------------------------------------------------------------------------


@pytest.mark.browser
def test_a_reviewer_resolves_an_item_in_chromium_and_it_leaves_the_queue(world, db_url, new_browser_page, browser_log):
    expect = pytest.importorskip("playwright.sync_api").expect
    rows = [
        {
            "prompt": "My sourdough starter smells like nail polish remover. Is it ruined?",
            "completions": [
                "Not ruined: it is hungry. Feed it twice a day for two days and the smell fades.",
                "Yes, throw it away: that smell means it has gone bad.",
            ],
        },
        {"prompt": "What is the capital of Australia?", "completions": ["Canberra.", "Sydney."]},
        {"prompt": "Name a prime number greater than 10.", "completions": ["11", "12"]},
    ]
    project, items = pairwise_project(world, "sourdough help", rows, {"alice": [0, 1, 0], "bob": [1, 0, 0]})
    with live_server(db_url) as server:
        page = new_browser_page(viewport={"width": 1200, "height": 900})
        page.goto(server.url + "/login")
        page.fill("#username", "rita")
        page.fill("#password", PASSWORD)
        page.click("#login")
        expect(page.locator("header.site .who")).to_contain_text("rita")
        page.goto(f"{server.url}/projects/{project.id}/adjudicate")
        expect(page.locator("#queue tbody tr")).to_have_count(2)
        expect(page.locator("#current")).to_have_attribute("data-item-id", str(items[0]))
        expect(page.locator("#current-labels")).to_contain_text("bob")
        page.select_option("#cause", "annotator_error")
        page.fill("#note", "bob missed that the acetone smell means hunger")
        page.locator("#choice-left").focus()
        if db_url.startswith("sqlite"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "adjudication.png"), full_page=True)
        with page.expect_navigation():
            page.keyboard.press("1")  # the task page's shortcuts work here too
        expect(page.locator("#saved")).to_be_visible()
        expect(page.locator("#queue tbody tr")).to_have_count(1)
        expect(page.locator(f'#queue tr[data-item-id="{items[0]}"]')).to_have_count(0)
        expect(page.locator(f'#resolved tr[data-item-id="{items[0]}"]')).to_contain_text("annotator error")
        expect(page.locator("#current")).to_have_attribute("data-item-id", str(items[1]))
    assert pending(world, project) == [items[1]]
    assert world.store.adjudication_queue(project.id)[0]["adjudication"]["value"]["winner"] == 0
    browser_log.assert_clean()
