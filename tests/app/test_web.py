"""The feedback app's pages and JSON API, in process (FastAPI's TestClient over a real Store on SQLite
and PostgreSQL): signing in and out, invitations, every task type through the form and through the
API, idempotent resubmission, CSRF, body limits, invalid values, the dashboard, review and export."""

from __future__ import annotations

import json
import re

import pytest

from rlhflab.app import quality
from rlhflab.app.auth import PRELOGIN_COOKIE, SESSION_COOKIE
from rlhflab.app.middleware import CONTENT_SECURITY_POLICY
from rlhflab.app.tasks import TASKS
from rlhflab.app.web import DEFAULT_PUBLIC_URL, create_app
from tests.app import web_fixtures
from tests.app.web_fixtures import PASSWORD, hidden_fields, start_labelling, write_samples

world = web_fixtures.world  # the fixture, used by name

# What each task's page posts (displayed positions) and what the JSON API sends for the same answer.
FORM_VALUES = {
    "pairwise": {"choice": "left"},
    "ranking": {"rank_0": "2", "rank_1": "3", "rank_2": "1"},  # displayed 2 best, then 0, then 1
    "rating": {"score_0": "6", "score_1": "3"},
    "binary": {"good": "yes"},
    "critique": {"critique": "Too short;\n  no kigo.", "correction": "An old silent pond\n  a frog jumps in\n  splash"},
    "turns": {"turn_0": "no", "turn_1": "yes"},
}
API_VALUES = {
    "pairwise": {"choice": "left"},
    "ranking": {"ranking": [2, 0, 1]},
    "rating": {"scores": {"helpful": 6, "honest": 3}},
    "binary": {"good": True},
    "critique": {"critique": "Too short;\n  no kigo.", "correction": "An old silent pond\n  a frog jumps in\n  splash"},
    "turns": {"turns": [False, True]},
}


def expected_stored(task: str, shown_order: list[int]) -> dict:
    """What the Store keeps for FORM_VALUES / API_VALUES, in original completion indices."""
    if task == "pairwise":
        return {"choice": "left", "winner": shown_order[0]}
    if task == "ranking":
        return {"ranking": [shown_order[p] for p in (2, 0, 1)]}
    if task == "rating":
        return {"scores": {"helpful": 6, "honest": 3}}
    if task == "binary":
        return {"good": True}
    if task == "turns":
        return {"turns": [False, True]}
    return dict(API_VALUES["critique"])


def labels_of(world, task: str, annotator: str) -> list[dict]:
    return [r for r in world.store.label_rows(world.project(task).id) if r["annotator"] == annotator]


# ---- signing in and out ------------------------------------------------------------------------------


def test_signing_in_and_out(world):
    world.project("pairwise")
    anonymous = world.client()
    page = anonymous.get("/projects/1/label?x=1")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fprojects%2F1%2Flabel%3Fx%3D1"
    assert anonymous.get("/api/projects/1/next").status_code == 401

    login = anonymous.get("/login?next=/admin")
    token = hidden_fields(login.text)["csrf_token"]
    assert 'name="next" value="/admin"' in login.text
    wrong = anonymous.post("/login", {"username": "alice", "password": "nope", "csrf_token": token}, csrf=False)
    assert wrong.status_code == 400 and "Wrong username or password." in wrong.text
    assert SESSION_COOKIE not in anonymous.http.cookies
    unknown = anonymous.post("/login", {"username": "zed", "password": PASSWORD, "csrf_token": token}, csrf=False)
    assert unknown.status_code == 400

    signed_in = anonymous.post(
        "/login", {"username": "alice", "password": PASSWORD, "csrf_token": token, "next": "/"}, csrf=False
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    cookie = signed_in.headers["set-cookie"].lower()
    assert f"{SESSION_COOKIE}=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie.replace(SESSION_COOKIE, "")
    home = anonymous.get("/")
    assert home.status_code == 200 and "alice" in home.text and "pairwise project" in home.text
    assert anonymous.get("/login").status_code == 303  # already signed in

    session = anonymous.http.cookies[SESSION_COOKIE]
    csrf = hidden_fields(home.text)["csrf_token"]
    out = anonymous.post("/logout", {"csrf_token": csrf}, csrf=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert world.store.session_user(session) is None
    replay = world.client()
    replay.http.cookies.set(SESSION_COOKIE, session)
    assert replay.get("/").status_code == 303


def test_sign_in_goes_only_to_paths_on_this_site(world):
    client = world.client()
    token = hidden_fields(client.get("/login").text)["csrf_token"]
    for target in (
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example",
        " //evil.example",
    ):
        form = {"username": "alice", "password": PASSWORD, "csrf_token": token, "next": target}
        response = world.client()
        response.http.cookies.set(PRELOGIN_COOKIE, token)
        answer = response.post("/login", form, csrf=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/", target


def test_the_login_form_needs_its_double_submit_token(world):
    client = world.client()
    form = {"username": "alice", "password": PASSWORD}
    assert client.post("/login", form).status_code == 403  # neither cookie nor field
    token = hidden_fields(client.get("/login").text)["csrf_token"]
    assert client.post("/login", form).status_code == 403  # the cookie alone
    assert client.post("/login", {**form, "csrf_token": token + "x"}).status_code == 403
    other = world.client()
    assert other.post("/login", {**form, "csrf_token": token}).status_code == 403  # the field alone
    assert client.post("/login", {**form, "csrf_token": token}).status_code == 303


def test_secure_cookies_when_served_over_https(store):
    store.create_user("alice", PASSWORD, "annotator")
    from fastapi.testclient import TestClient

    client = TestClient(create_app(store=store, secure_cookies=True), base_url="https://testserver")
    page = client.get("/login")
    assert "secure" in page.headers["set-cookie"].lower()
    token = hidden_fields(page.text)["csrf_token"]
    response = client.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token}, follow_redirects=False
    )
    session_cookie = [c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)]
    assert session_cookie and "secure" in session_cookie[0].lower() and "httponly" in session_cookie[0].lower()


def test_an_invitation_link_registers_once_and_joins_its_projects(world):
    admin = world.client("admin")
    world.project("binary"), world.project("pairwise")
    made = admin.post("/admin/invitations", {"role": "annotator", "projects": ["binary project"]})
    assert made.status_code == 201
    link = re.search(r'id="invitation-link" class="copy" readonly value="([^"]+)"', made.text).group(1)
    assert link.startswith(DEFAULT_PUBLIC_URL + "/invite/")
    path = link.removeprefix(DEFAULT_PUBLIC_URL)
    assert path.startswith("/invite/")

    guest = world.client()
    page = guest.get(path)
    assert page.status_code == 200 and "binary project" in page.text
    token = hidden_fields(page.text)["csrf_token"]
    form = {"username": "carol", "password": "a long password", "password2": "a long password", "csrf_token": token}
    differ = guest.post(path, {**form, "password2": "another one"}, csrf=False)
    assert differ.status_code == 400 and "passwords differ" in differ.text
    short = guest.post(path, {**form, "password": "short", "password2": "short"}, csrf=False)
    assert short.status_code == 400 and "at least 8 characters" in short.text
    assert guest.post(path, {**form, "username": "bob"}, csrf=False).status_code == 400  # taken
    joined = guest.post(path, form, csrf=False)
    assert joined.status_code == 303 and joined.headers["location"] == "/"
    home = guest.get("/")
    assert home.status_code == 200 and "carol" in home.text and "binary project" in home.text
    assert "pairwise project" not in home.text

    assert world.client().get(path).status_code == 404  # used up
    again = world.client()
    again.http.cookies.set(PRELOGIN_COOKIE, token)
    assert again.post(path, {**form, "username": "dave"}, csrf=False).status_code == 404
    assert world.client().get("/invite/not-a-token").status_code == 404


# ---- headers and markup ------------------------------------------------------------------------------


def test_security_headers_on_every_kind_of_response(world):
    alice = world.client("alice")
    responses = [
        world.client().get("/login"),
        world.client().get("/static/app.js"),
        world.client().get("/api/projects/1/next"),
        alice.get("/"),
        alice.get("/no/such/page"),
        alice.get("/admin"),
    ]
    for response in responses:
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
    assert [r.status_code for r in responses] == [200, 200, 401, 200, 404, 403]
    assert responses[3].headers["cache-control"] == "no-store"


def test_pages_have_no_inline_script_style_or_handlers(world):
    alice, admin = world.client("alice"), world.client("admin")
    pages = [world.client().get("/login").text, alice.get("/").text]
    for task in TASKS:
        pages.append(start_labelling(alice, world.project(task)))
        pages.append(admin.get(f"/projects/{world.project(task).id}/dashboard").text)
    pages += [admin.get("/admin").text, world.client("rita").get(f"/projects/{world.project('rating').id}/review").text]
    for page in pages:
        assert re.findall(r"<script\b.*?</script>", page, re.S) == ['<script src="/static/app.js" defer></script>']
        assert re.search(r"\sstyle=", page) is None and "<style" not in page
        assert re.search(r"\son[a-z]+=", page) is None
        assert "javascript:" not in page


def test_static_assets(world):
    client = world.client()
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "innerHTML" not in js.text and "eval(" not in js.text and "document.write" not in js.text
    css = client.get("/static/app.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "white-space: pre-wrap" in css.text


# ---- labelling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_each_task_through_the_form(world, task):
    alice = world.client("alice")
    project = world.project(task)
    page = start_labelling(alice, project)
    assert 'id="progress"' in page and f'data-task="{task}"' in page
    fields = hidden_fields(page, "label-form")
    assert set(fields) == {"csrf_token", "assignment_id", "idempotency_key", "seconds"}
    if task == "pairwise":
        for choice in ("left", "right", "tie", "both-bad"):
            assert f'id="choice-{choice}"' in page
    response = alice.post(f"/projects/{project.id}/label", {**fields, **FORM_VALUES[task], "seconds": "12.5"})
    assert response.status_code == 303, response.text
    assert re.fullmatch(rf"/projects/{project.id}/label\?saved=\d+", response.headers["location"])
    after = alice.get(response.headers["location"])
    assert after.status_code == 200 and 'id="saved"' in after.text

    [row] = labels_of(world, task, "alice")
    assert row["value"] == expected_stored(task, row["shown_order"])
    assert row["seconds"] == 12.5


@pytest.mark.parametrize("task", TASKS)
def test_each_task_through_the_api(world, task):
    alice = world.client("alice")
    project = world.project(task)
    answer = alice.get(f"/api/projects/{project.id}/next")
    assert answer.status_code == 200
    body = answer.json()
    assert body["progress"]["done"] == 0 and body["qualification"] == "not_required"
    next_task = body["task"]
    assert next_task["task"] == task and "is_gold" not in next_task and "shown_order" not in next_task
    assert alice.get(f"/api/projects/{project.id}/next").json()["task"] == next_task  # resumable

    label = {"assignment_id": next_task["assignment_id"], "value": API_VALUES[task], "idempotency_key": f"k-{task}"}
    first = alice.api_post(f"/api/projects/{project.id}/labels", {**label, "seconds": 3})
    assert first.status_code == 201, first.text
    assert first.json()["label"]["duplicate"] is False
    again = alice.api_post(f"/api/projects/{project.id}/labels", {**label, "seconds": 3})
    assert again.status_code == 200 and again.json()["label"]["duplicate"] is True
    assert again.json()["label"]["id"] == first.json()["label"]["id"]

    [row] = labels_of(world, task, "alice")
    assert row["value"] == expected_stored(task, row["shown_order"]) == first.json()["label"]["value"]
    assert alice.get(f"/api/projects/{project.id}/next").json()["progress"]["done"] == 1


def test_resubmitting_a_form_is_idempotent(world):
    alice = world.client("alice")
    project = world.project("pairwise")
    fields = hidden_fields(start_labelling(alice, project), "label-form")
    first = alice.post(f"/projects/{project.id}/label", {**fields, "choice": "tie"})
    second = alice.post(f"/projects/{project.id}/label", {**fields, "choice": "tie"})
    assert first.status_code == second.status_code == 303
    assert second.headers["location"] == first.headers["location"] + "&duplicate=1"
    assert len(labels_of(world, "pairwise", "alice")) == 1
    # the page after it is the next item, with a fresh key
    fresh = hidden_fields(alice.get(first.headers["location"]).text, "label-form")
    assert fresh["assignment_id"] != fields["assignment_id"] and fresh["idempotency_key"] != fields["idempotency_key"]


def test_seconds_fall_back_to_zero(world):
    alice = world.client("alice")
    project = world.project("binary")
    fields = hidden_fields(start_labelling(alice, project), "label-form")
    del fields["seconds"]
    assert alice.post(f"/projects/{project.id}/label", {**fields, "good": "no"}).status_code == 303
    fields = hidden_fields(alice.get(f"/projects/{project.id}/label").text, "label-form")
    assert alice.post(f"/projects/{project.id}/label", {**fields, "good": "no", "seconds": "nan"}).status_code == 303
    assert [r["seconds"] for r in labels_of(world, "binary", "alice")] == [0.0, 0.0]


def test_a_missing_or_wrong_csrf_token_is_403(world):
    alice = world.client("alice")
    project = world.project("pairwise")
    fields = hidden_fields(start_labelling(alice, project), "label-form")
    url = f"/projects/{project.id}/label"
    no_token = {k: v for k, v in fields.items() if k != "csrf_token"}
    assert alice.post(url, {**no_token, "choice": "left"}, csrf=False).status_code == 403
    assert alice.post(url, {**fields, "csrf_token": "forged", "choice": "left"}).status_code == 403
    bob = world.client("bob")
    assert alice.post(url, {**fields, "csrf_token": bob.csrf, "choice": "left"}).status_code == 403  # not hers
    api = f"/api/projects/{project.id}/labels"
    body = {"assignment_id": int(fields["assignment_id"]), "value": {"choice": "left"}, "idempotency_key": "k"}
    assert alice.api_post(api, body, csrf=False).status_code == 403
    assert alice.api_post(api, body, csrf=False, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert alice.post("/logout", csrf=False).status_code == 403
    assert (
        alice.post(f"/projects/{project.id}/skip", {"assignment_id": fields["assignment_id"]}, csrf=False).status_code
        == 403
    )
    assert labels_of(world, "pairwise", "alice") == []
    assert alice.api_post(api, body).status_code == 201  # the right token works


def test_bodies_over_one_mib_get_413(world):
    alice = world.client("alice")
    project = world.project("critique")
    api = f"/api/projects/{project.id}/labels"
    big = {"assignment_id": 1, "value": {"critique": "x" * (2 << 20)}, "idempotency_key": "k"}
    assert alice.api_post(api, big).status_code == 413
    assert world.client().api_post(api, big).status_code == 413  # before anything else is looked at

    def chunks():  # no Content-Length: the body is counted as it streams in
        for _ in range(32):
            yield b"x" * (64 << 10)

    streamed = alice.http.post(api, content=chunks(), headers={"X-CSRF-Token": alice.csrf})
    assert streamed.status_code == 413
    fields = hidden_fields(start_labelling(alice, project), "label-form")
    form = alice.post(f"/projects/{project.id}/label", {**fields, "critique": "y" * (2 << 20)})
    assert form.status_code == 413
    assert labels_of(world, "critique", "alice") == []
    small = {"assignment_id": int(fields["assignment_id"]), "value": {"critique": "fine"}, "idempotency_key": "k"}
    assert alice.api_post(api, small).status_code == 201


def test_invalid_values_get_422(world):
    alice = world.client("alice")
    project = world.project("ranking")
    fields = hidden_fields(start_labelling(alice, project), "label-form")
    api = f"/api/projects/{project.id}/labels"
    label = {"assignment_id": int(fields["assignment_id"]), "idempotency_key": "k1"}
    for value in ({"ranking": [0, 0, 1]}, {"ranking": [0, 1]}, {"choice": "left"}, {"ranking": "012"}):
        answer = alice.api_post(api, {**label, "value": value})
        assert answer.status_code == 422 and answer.json()["detail"], value
    malformed = alice.http.post(api, content=b'{"assignment_id": 1,', headers={"X-CSRF-Token": alice.csrf})
    assert malformed.status_code == 422 and "malformed JSON" in malformed.json()["detail"]
    assert alice.api_post(api, [1, 2]).status_code == 422
    assert alice.api_post(api, {**label, "value": {"ranking": [0, 1, 2]}, "idempotency_key": ""}).status_code == 422
    assert alice.api_post(api, {"value": {"ranking": [0, 1, 2]}, "idempotency_key": "k2"}).status_code == 422

    url = f"/projects/{project.id}/label"
    same_rank = alice.post(url, {**fields, "rank_0": "1", "rank_1": "1", "rank_2": "2"})
    assert same_rank.status_code == 422 and 'id="error"' in same_rank.text
    assert hidden_fields(same_rank.text, "label-form")["assignment_id"] == fields["assignment_id"]  # the same item
    assert labels_of(world, "ranking", "alice") == []

    rating = world.project("rating")
    rating_fields = hidden_fields(start_labelling(alice, rating), "label-form")
    too_high = alice.post(f"/projects/{rating.id}/label", {**rating_fields, "score_0": "9", "score_1": "3"})
    assert too_high.status_code == 422 and "from 1 to 7" in too_high.text
    missing = alice.post(f"/projects/{rating.id}/label", {**rating_fields, "score_0": "2"})
    assert missing.status_code == 422 and "honest" in missing.text
    critique = world.project("critique")
    critique_fields = hidden_fields(start_labelling(alice, critique), "label-form")
    empty = alice.post(f"/projects/{critique.id}/label", {**critique_fields, "critique": "   "})
    assert empty.status_code == 422 and "critique is empty" in empty.text


def test_another_annotators_assignment_is_not_found(world):
    alice, bob = world.client("alice"), world.client("bob")
    project = world.project("pairwise")
    fields = hidden_fields(start_labelling(alice, project), "label-form")
    start_labelling(bob, project)
    body = {"assignment_id": int(fields["assignment_id"]), "value": {"choice": "left"}, "idempotency_key": "b"}
    assert bob.api_post(f"/api/projects/{project.id}/labels", body).status_code == 404
    form = {**fields, "csrf_token": bob.csrf, "choice": "left"}
    assert bob.post(f"/projects/{project.id}/label", form).status_code == 404
    assert bob.post(f"/projects/{project.id}/skip", {"assignment_id": fields["assignment_id"]}).status_code == 404
    assert labels_of(world, "pairwise", "bob") == [] and labels_of(world, "pairwise", "alice") == []


def test_an_assignment_is_answered_only_through_its_own_project(world):
    """A page of one project cannot answer (or skip) the annotator's open task of another."""
    alice = world.client("alice")
    pairwise, binary = world.project("pairwise"), world.project("binary")
    fields = hidden_fields(start_labelling(alice, pairwise), "label-form")
    start_labelling(alice, binary)
    body = {"assignment_id": int(fields["assignment_id"]), "value": {"choice": "left"}, "idempotency_key": "x"}
    assert alice.api_post(f"/api/projects/{binary.id}/labels", body).status_code == 404
    assert alice.post(f"/projects/{binary.id}/label", {**fields, "good": "yes"}).status_code == 404
    assert alice.post(f"/projects/{binary.id}/skip", {"assignment_id": fields["assignment_id"]}).status_code == 404
    assert labels_of(world, "pairwise", "alice") == []
    assert alice.api_post(f"/api/projects/{pairwise.id}/labels", body).status_code == 201


# ---- what the task pages show ------------------------------------------------------------------------


def test_chat_prompts_render_as_turns_and_text_keeps_its_whitespace(world):
    alice = world.client("alice")
    pairwise = world.project("pairwise")
    start_labelling(alice, pairwise)
    pages = []
    for _ in range(3):  # every pairwise item, one of them a chat
        page = alice.get(f"/projects/{pairwise.id}/label").text
        pages.append(page)
        fields = hidden_fields(page, "label-form")
        alice.post(f"/projects/{pairwise.id}/label", {**fields, "choice": "tie"})
    chat = next(p for p in pages if 'class="chat"' in p)
    assert re.search(r'data-role="system"><span class="role">system</span><div class="text">Be brief\.</div>', chat)
    assert re.search(r'data-role="user"><span class="role">user</span><div class="text">Count to three\.</div>', chat)
    plain = next(p for p in pages if "Say hello." in p)
    assert '<div class="text prompt-text">Say hello.</div>' in plain

    ranking = world.project("ranking")
    page = start_labelling(alice, ranking)
    if "Describe the sea." not in page:
        alice.post(
            f"/projects/{ranking.id}/skip", {"assignment_id": hidden_fields(page, "label-form")["assignment_id"]}
        )
        page = alice.get(f"/projects/{ranking.id}/label").text
    assert '<div class="text">Deep and\n\n  wet.</div>' in page  # verbatim, shown with pre-wrap
    assert page.count('class="rank-item"') == 3 and page.count('<select name="rank_') == 3


def test_pairwise_shows_completions_in_the_assignments_order(world):
    alice = world.client("alice")
    project = world.project("pairwise")
    page = start_labelling(alice, project)
    task = alice.get(f"/api/projects/{project.id}/next").json()["task"]
    left, right = (
        re.search(rf'data-side="{side}".*?<div class="text">(.*?)</div>', page, re.S).group(1)
        for side in ("left", "right")
    )
    assert [left, right] == task["completions"]


def test_skip_moves_on_and_never_comes_back(world):
    alice = world.client("alice")
    project = world.project("binary")
    first = hidden_fields(start_labelling(alice, project), "label-form")["assignment_id"]
    skipped = alice.post(f"/projects/{project.id}/skip", {"assignment_id": first})
    assert skipped.status_code == 303 and skipped.headers["location"] == f"/projects/{project.id}/label"
    second = hidden_fields(alice.get(f"/projects/{project.id}/label").text, "label-form")
    assert second["assignment_id"] != first
    assert alice.post(f"/projects/{project.id}/label", {**second, "good": "yes"}).status_code == 303
    done = alice.get(f"/projects/{project.id}/label")
    assert done.status_code == 200 and 'id="all-done"' in done.text and 'id="progress"' in done.text


def test_the_instructions_come_before_the_first_task(world):
    alice = world.client("alice")
    project = world.add_project("with instructions", "binary", [{"prompt": "p", "completions": ["c"]}])
    instructed = world.store.create_project(
        "instructed",
        "binary",
        write_samples(world.tmp / "i.jsonl", [{"prompt": "p", "completions": ["c"]}]),
        instructions="Judge <b>truthfulness</b>.\n\nNothing else.",
    )
    world.store.add_members(instructed.id, ["alice"], "annotator")
    page = alice.get(f"/projects/{instructed.id}/instructions")
    assert "Judge &lt;b&gt;truthfulness&lt;/b&gt;.\n\nNothing else." in page.text
    assert alice.get(f"/projects/{instructed.id}/label").status_code == 303
    assert alice.get(f"/projects/{project.id}/label").status_code == 303  # each project's own
    alice.post(f"/projects/{instructed.id}/instructions")
    assert alice.get(f"/projects/{instructed.id}/label").status_code == 200


def test_the_qualification_round_and_failing_it(world):
    gold = write_samples(
        world.tmp / "gold.jsonl",
        [
            {"prompt": "Gold one?", "completions": ["right answer", "wrong answer"], "answer": 0},
            {"prompt": "Gold two?", "completions": ["right again", "wrong again"], "answer": 0},
        ],
    )
    project = world.store.create_project(
        "screened",
        "pairwise",
        write_samples(world.tmp / "s.jsonl", TASK_SAMPLES_PAIRWISE),
        gold=gold,
        qualification_items=2,
        qualification_threshold=1.0,
    )
    world.store.add_members(project.id, ["alice"], "annotator")
    alice = world.client("alice")
    assert "qualification round of 2 items" in alice.get(f"/projects/{project.id}/instructions").text
    page = start_labelling(alice, project)
    assert "Qualification round: 1 of 2 gold items" in page
    for n in (1, 2):
        task = alice.get(f"/api/projects/{project.id}/next").json()["task"]
        assert task["is_qualification"] is True
        wrong = "right" if task["completions"][0].startswith("right") else "left"  # pick the wrong one
        fields = hidden_fields(alice.get(f"/projects/{project.id}/label").text, "label-form")
        if n == 2:
            assert "Qualification round: 2 of 2 gold items" in alice.get(f"/projects/{project.id}/label").text
        assert alice.post(f"/projects/{project.id}/label", {**fields, "choice": wrong}).status_code == 303
    failed = alice.get(f"/projects/{project.id}/label")
    assert failed.status_code == 200 and 'id="qualification-failed"' in failed.text
    assert alice.get(f"/api/projects/{project.id}/next").json() == {
        "task": None,
        "qualification": "failed",
        "progress": {"done": 2, "total": 2},
    }


TASK_SAMPLES_PAIRWISE = [{"prompt": "Say hi.", "completions": ["Hi!", "Bye."]}]


# ---- dashboard, review, export, admin ---------------------------------------------------------------


def label_pairwise(world, name: str, winner: int) -> None:
    """``name`` labels their next pairwise item, preferring original completion ``winner``."""
    client = world.client(name)
    project = world.project("pairwise")
    world.store.mark_instructions_seen(project.id, world.users[name].id)
    task = client.get(f"/api/projects/{project.id}/next").json()["task"]
    shown = world.store.next_task(project.id, world.users[name]).shown_order
    choice = "left" if shown[0] == winner else "right"
    body = {
        "assignment_id": task["assignment_id"],
        "value": {"choice": choice},
        "idempotency_key": f"{name}{task['item_id']}",
    }
    assert client.api_post(f"/api/projects/{project.id}/labels", body).status_code == 201


def test_the_dashboard_shows_agreement_and_excludes_annotators(world):
    project = world.project("pairwise")
    admin, rita = world.client("admin"), world.client("rita")
    empty = admin.get(f"/projects/{project.id}/dashboard")
    assert empty.status_code == 200 and '<dd id="alpha" data-stat="alpha" data-format="num">—</dd>' in empty.text
    assert f'data-stats-url="/api/projects/{project.id}/stats"' in empty.text

    for winners in ((0, 0), (1, 0), (0, 0)):  # alice and bob agree on two items of three
        label_pairwise(world, "alice", winners[0])
        label_pairwise(world, "bob", winners[1])
    stats = rita.get(f"/api/projects/{project.id}/stats").json()
    rows = world.store.label_rows(project.id)
    expected = quality.agreement(rows)
    assert stats["alpha"] == pytest.approx(expected.krippendorff_alpha) and stats["n_items"] == 3
    assert {a["annotator"]: a["n_labels"] for a in stats["annotators"]} == {"alice": 3, "bob": 3}
    page = rita.get(f"/projects/{project.id}/dashboard").text
    alpha = "—" if expected.krippendorff_alpha is None else f"{expected.krippendorff_alpha:.3f}"
    assert f'<dd id="alpha" data-stat="alpha" data-format="num">{alpha}</dd>' in page
    assert 'data-annotator="alice"' in page and "/exclude" not in page  # reviewers do not exclude

    page = admin.get(f"/projects/{project.id}/dashboard").text
    row = page[page.index('data-annotator="bob"') :]
    form = hidden_fields(row[: row.index("</tr>")], None)
    assert form["username"] == "bob" and form["excluded"] == "1"
    assert admin.post(f"/projects/{project.id}/exclude", {"username": "bob", "excluded": "1"}).status_code == 303
    stats = admin.get(f"/api/projects/{project.id}/stats").json()
    assert [a["excluded"] for a in stats["annotators"]] == [False, True]
    assert stats["alpha"] is None and stats["n_items"] == 0  # one annotator left: no agreement
    assert "Include" in admin.get(f"/projects/{project.id}/dashboard").text
    assert admin.post(f"/projects/{project.id}/exclude", {"username": "bob", "excluded": "0"}).status_code == 303
    assert admin.get(f"/api/projects/{project.id}/stats").json()["n_items"] == 3
    assert admin.post(f"/projects/{project.id}/exclude", {"username": "nobody", "excluded": "1"}).status_code == 404


def test_export_downloads_jsonl(world):
    project = world.project("pairwise")
    label_pairwise(world, "alice", 0)
    admin = world.client("admin")
    response = admin.get(f"/projects/{project.id}/export?kind=preferences")
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="pairwise_project-preferences.jsonl"'
    [record] = [json.loads(line) for line in response.text.splitlines()]
    assert record["chosen"] == "Hello there!" and record["rejected"] == "Go away." and record["annotator"] == "alice"
    assert admin.get(f"/projects/{project.id}/export?kind=ratings").status_code == 400  # not a pairwise kind
    assert admin.get(f"/projects/{project.id}/export?kind=nonsense").status_code == 422
    assert admin.get(f"/projects/{world.project('binary').id}/export?kind=ratings").status_code == 400  # no labels


def test_review_shows_disagreements_and_sets_gold(world):
    project = world.project("pairwise")
    label_pairwise(world, "alice", 0)
    label_pairwise(world, "bob", 1)
    rita = world.client("rita")
    page = rita.get(f"/projects/{project.id}/review")
    assert page.status_code == 200
    assert "completion 0 is better" in page.text and "completion 1 is better" in page.text
    item_id = int(re.search(r'data-item-id="(\d+)"', page.text).group(1))
    assert rita.post(f"/projects/{project.id}/gold", {"item_id": item_id, "answer": "3"}).status_code == 422
    saved = rita.post(f"/projects/{project.id}/gold", {"item_id": item_id, "answer": "0"})
    assert saved.status_code == 303 and saved.headers["location"] == f"/projects/{project.id}/review?saved=gold"
    after = rita.get(saved.headers["location"]).text
    assert 'id="saved"' in after and "Gold answer: <span" in after
    [item] = world.store.disagreements(project.id, world.users["rita"])
    assert item["is_gold"] and item["gold_answer"] == 0


def test_admin_invites_and_adds_members(world):
    world.project("pairwise")
    admin = world.client("admin")
    page = admin.get("/admin")
    assert page.status_code == 200 and all(name in page.text for name in ("alice", "bob", "rita", "pairwise project"))
    store = world.store
    store.create_user("dora", PASSWORD, "annotator")
    added = admin.post(
        "/admin/members", {"project": world.project("binary").id, "usernames": "dora", "role": "annotator"}
    )
    assert added.status_code == 303
    assert [p.name for p in store.projects_for(store.authenticate("dora", PASSWORD))] == ["binary project"]
    assert (
        admin.post("/admin/members", {"project": world.project("binary").id, "usernames": "nobody"}).status_code == 404
    )
    assert admin.post("/admin/invitations", {"role": "wizard"}).status_code == 422


def test_home_lists_my_projects_with_progress(world):
    other = world.store.create_project(
        "not alices", "binary", write_samples(world.tmp / "o.jsonl", [{"prompt": "p", "completions": ["c"]}])
    )
    alice = world.client("alice")
    project = world.project("binary")
    fields = hidden_fields(start_labelling(alice, project), "label-form")
    alice.post(f"/projects/{project.id}/label", {**fields, "good": "yes"})
    home = alice.get("/").text
    assert "binary project" in home and other.name not in home
    row = home[home.index(f'data-project-id="{project.id}"') :]
    assert re.search(r"</progress> 1 of 2", row[: row.index("</tr>")])
    assert alice.get(f"/projects/{other.id}/label").status_code == 404
    assert alice.get(f"/projects/{other.id}/instructions").status_code == 404
