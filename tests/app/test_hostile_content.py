"""Hostile text (script tags, event handlers, javascript: links, SQL metacharacters, template syntax) in
prompts, completions, chat roles, instructions, project names, critiques and form fields: escaped
wherever a page shows it, stored and exported byte for byte. (The browser tests check that nothing
runs in a real browser.)"""

from __future__ import annotations

import html
import json

import pytest

from tests.app import web_fixtures
from tests.app.web_fixtures import hidden_fields, start_labelling, write_samples

world = web_fixtures.world  # the fixture, used by name

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
LINK = '<a href="javascript:alert(1)">click me</a>'
SQL = "'; DROP TABLE labels; --"
SVG = '"><svg onload=alert(1)>'
TEMPLATE = "{{ 7*7 }} {% if true %}x{% endif %}"
HOSTILE = [SCRIPT, IMG, LINK, SQL, SVG, TEMPLATE]
# what must never appear raw in a page, whatever else it shows
LIVE = [
    "<script>alert",
    "<img src=x",
    "<svg",
    '<a href="javascript:',
    'href="javascript:',
    "onerror=alert(1)>",
    "onload=alert(1)>",
]


def assert_inert(page: str) -> None:
    for fragment in LIVE:
        assert fragment not in page, fragment


def escaped(text: str) -> str:
    return str(html.escape(text, quote=True)).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


@pytest.fixture
def hostile(world):
    rows = [
        {"prompt": f"Prompt {SCRIPT} {SQL}", "completions": [f"A: {IMG}\n  {LINK}", f"B: {SVG} {TEMPLATE}"]},
        {
            "prompt": [
                {"role": f"user{SCRIPT}", "content": f"Chat {IMG} {SQL}"},
                {"role": "assistant", "content": LINK},
            ],
            "completions": [SQL, SCRIPT],
        },
    ]
    project = world.store.create_project(
        f"evil {SCRIPT}",
        "pairwise",
        write_samples(world.tmp / "evil.jsonl", rows),
        overlap=1,
        instructions=f"Read {IMG}",
    )
    world.store.add_members(project.id, ["alice", "bob"], "annotator")
    world.store.add_members(project.id, ["rita"], "reviewer")
    return project, rows


def test_hostile_prompts_and_completions_are_escaped_on_the_task_page(world, hostile):
    project, rows = hostile
    alice = world.client("alice")
    instructions = alice.get(f"/projects/{project.id}/instructions").text
    assert_inert(instructions)
    assert escaped(f"Read {IMG}") in instructions
    seen = []
    page = start_labelling(alice, project)
    for _ in range(2):
        assert_inert(page)
        seen.append(page)
        fields = hidden_fields(page, "label-form")
        alice.post(f"/projects/{project.id}/label", {**fields, "choice": "left"})
        page = alice.get(f"/projects/{project.id}/label").text
    both = "\n".join(seen)
    for text in (f"Prompt {SCRIPT} {SQL}", f"A: {IMG}\n  {LINK}", f"B: {SVG} {TEMPLATE}", f"Chat {IMG} {SQL}", SQL):
        assert escaped(text) in both, text
    assert f'data-role="{escaped("user" + SCRIPT)}"' in both  # the chat role, in an attribute
    assert escaped(TEMPLATE) in both and "{{ 7*7 }}" in both  # shown as typed, not evaluated


def test_hostile_text_is_stored_and_exported_verbatim(world, hostile):
    project, rows = hostile
    alice = world.client("alice")
    start_labelling(alice, project)
    winners = []
    for _ in range(2):
        task = alice.get(f"/api/projects/{project.id}/next").json()["task"]
        assert task["prompt"] in (rows[0]["prompt"], rows[1]["prompt"])  # the JSON API returns it as stored
        body = {"assignment_id": task["assignment_id"], "value": {"choice": "left"}, "idempotency_key": SQL + str(_)}
        assert alice.api_post(f"/api/projects/{project.id}/labels", body).status_code == 201
        winners.append((task["prompt"], task["completions"][0], task["completions"][1]))
    response = world.client("admin").get(f"/projects/{project.id}/export?kind=preferences")
    assert response.status_code == 200
    assert (
        response.headers["content-disposition"] == 'attachment; filename="evil_script_alert_1_script-preferences.jsonl"'
    )
    records = [json.loads(line) for line in response.text.splitlines()]
    exported = sorted(json.dumps([r["prompt"], r["chosen"], r["rejected"]]) for r in records)
    assert exported == sorted(json.dumps(list(w)) for w in winners)
    # and the labels table is still there
    assert len(world.store.label_rows(project.id)) == 2


def test_a_hostile_critique_round_trips_and_renders_inert(world):
    project = world.store.create_project(
        "critiques", "critique", write_samples(world.tmp / "c.jsonl", [{"prompt": SQL, "completions": [SCRIPT]}])
    )
    world.store.add_members(project.id, ["alice"], "annotator")
    alice = world.client("alice")
    page = start_labelling(alice, project)
    assert_inert(page)
    critique = "\n".join(HOSTILE) + "\n\t trailing  "
    correction = f"{LINK}\r\n{SVG}"
    fields = hidden_fields(page, "label-form")
    assert (
        alice.post(
            f"/projects/{project.id}/label", {**fields, "critique": critique, "correction": correction}
        ).status_code
        == 303
    )
    exported = world.client("admin").get(f"/projects/{project.id}/export?kind=language")
    [record] = [json.loads(line) for line in exported.text.splitlines()]
    assert record["feedback"] == critique and record["prompt"] == SQL and record["completion"] == SCRIPT
    assert record["correction"] in (correction, correction.replace("\r\n", "\n"))  # forms normalise line ends
    [row] = world.store.label_rows(project.id)
    assert row["value"]["critique"] == critique


def test_hostile_text_on_the_dashboard_review_admin_and_home_pages(world, hostile):
    project, _ = hostile
    for name, side in (("alice", "left"), ("bob", "right")):
        client = world.client(name)
        world.store.mark_instructions_seen(project.id, world.users[name].id)
        task = client.get(f"/api/projects/{project.id}/next").json()["task"]
        critique = {"assignment_id": task["assignment_id"], "value": {"choice": side}, "idempotency_key": name}
        assert client.api_post(f"/api/projects/{project.id}/labels", critique).status_code == 201
    admin, rita, alice = world.client("admin"), world.client("rita"), world.client("alice")
    for page in (
        admin.get("/admin").text,
        admin.get("/").text,
        alice.get("/").text,
        admin.get(f"/projects/{project.id}/dashboard").text,
        rita.get(f"/projects/{project.id}/review").text,
    ):
        assert_inert(page)
        assert escaped(f"evil {SCRIPT}") in page


def test_hostile_form_input_is_echoed_escaped(world):
    client = world.client()
    page = client.get("/login?next=/%22%3E%3Cscript%3Ealert(1)%3C/script%3E")
    assert_inert(page.text)
    token = hidden_fields(page.text)["csrf_token"]
    wrong = client.post("/login", {"username": SVG + SCRIPT, "password": "x", "csrf_token": token}, csrf=False)
    assert wrong.status_code == 400
    assert_inert(wrong.text)
    assert f'value="{escaped(SVG + SCRIPT)}"' in wrong.text

    invitation = world.store.create_invitation("annotator", world.users["admin"].id)
    guest = world.client()
    token = hidden_fields(guest.get(f"/invite/{invitation}").text)["csrf_token"]
    form = {"username": SCRIPT, "password": "long enough", "password2": "long enough", "csrf_token": token}
    refused = guest.post(f"/invite/{invitation}", form, csrf=False)
    assert refused.status_code == 400 and "invalid username" in refused.text
    assert_inert(refused.text)
    assert world.client().get(f"/invite/{SCRIPT}").status_code == 404


def test_hostile_json_in_the_api_is_refused_or_stored_verbatim(world):
    project = world.project("critique")
    alice = world.client("alice")
    world.store.mark_instructions_seen(project.id, world.users["alice"].id)
    task = alice.get(f"/api/projects/{project.id}/next").json()["task"]
    url = f"/api/projects/{project.id}/labels"
    bad = alice.api_post(url, {"assignment_id": task["assignment_id"], "value": {SCRIPT: 1}, "idempotency_key": "k"})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/json"
    good = {"critique": SCRIPT + SQL, "correction": None}
    ok = alice.api_post(url, {"assignment_id": task["assignment_id"], "value": good, "idempotency_key": "k"})
    assert ok.status_code == 201 and ok.json()["label"]["value"] == good
