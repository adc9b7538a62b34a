"""What probes of the app found, each pinned down (SQLite and PostgreSQL): ids past the id columns'
range, bodies built to break the parser, text no column can store, Unicode digits as ratings,
headers on error responses, HEAD, overlap under an admin's exclusions, ids of another project,
invitation links and the Host header, and login throttling."""

from __future__ import annotations

import html
import re
import socket
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from rlhflab.app.middleware import CONTENT_SECURITY_POLICY
from rlhflab.app.store import MAX_FAILURES_PER_ACCOUNT, MAX_FAILURES_PER_ADDRESS, NotFound, Store, StoreError
from rlhflab.app.web import create_app
from tests.app import web_fixtures
from tests.app.conftest import FAST_HASHER
from tests.app.web_fixtures import PASSWORD, hidden_fields

world = web_fixtures.world  # the fixture, used by name

TOO_BIG_IDS = ["9223372036854775808", "2147483648", "99999999999999999999999999"]


def open_task(world, name: str, task: str = "pairwise"):
    project = world.project(task)
    world.store.mark_instructions_seen(project.id, world.users[name].id)
    return project, world.store.next_task(project.id, world.users[name])


# ---- 1. no 500 from any input -------------------------------------------------------------------------


@pytest.mark.parametrize("big", TOO_BIG_IDS)
def test_ids_past_the_id_columns_range_are_not_found(world, big):
    project, task = open_task(world, "alice")
    alice, rita, admin = world.client("alice"), world.client("rita"), world.client("admin")
    for client, url in ((alice, f"/projects/{big}/label"), (alice, f"/api/projects/{big}/next"),
                        (rita, f"/projects/{big}/dashboard"), (admin, f"/projects/{big}/export")):  # fmt: skip
        assert client.get(url).status_code == 404, url
    assert alice.post(f"/projects/{project.id}/skip", {"assignment_id": big}).status_code == 404
    form = {"assignment_id": big, "idempotency_key": "k", "choice": "left"}
    assert alice.post(f"/projects/{project.id}/label", form).status_code == 404
    body = {"assignment_id": int(big), "value": {"choice": "left"}, "idempotency_key": "k"}
    assert alice.api_post(f"/api/projects/{project.id}/labels", body).status_code == 404
    assert rita.post(f"/projects/{project.id}/gold", {"item_id": big, "answer": "0"}).status_code == 404
    assert admin.post("/admin/members", {"project": big, "usernames": "bob"}).status_code == 404
    with pytest.raises(NotFound):
        world.store.project(int(big))
    assert alice.get(f"/projects/{'9' * 5001}/label").status_code == 404  # matches no route: no conversion


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"assignment_id": ' + b"9" * 5001 + b"}",
        b'{"assignment_id": 1, "seconds": 1e999999}',
        b'{"assignment_id": NaN}',
        b'{"value": "\xff"}',
    ],
    ids=["arrays-2000-deep", "objects-50000-deep", "5001-digits", "float-overflow", "nan", "not-utf8"],
)
def test_json_built_to_break_the_parser_is_422(world, body):
    project, _ = open_task(world, "alice")
    alice = world.client("alice")
    response = alice.http.post(f"/api/projects/{project.id}/labels", content=body, headers={"X-CSRF-Token": alice.csrf})
    assert response.status_code == 422 and "malformed JSON" in response.json()["detail"]


def test_a_lone_surrogate_is_refused_naming_the_field_and_never_stored(world):
    project, task = open_task(world, "alice", "critique")
    alice = world.client("alice")
    url = f"/api/projects/{project.id}/labels"
    critique = '{"assignment_id": %d, "idempotency_key": "k", "value": {"critique": "bad \\ud800 text"}}'
    refused = alice.http.post(url, content=critique % task.assignment_id, headers={"X-CSRF-Token": alice.csrf})
    assert refused.status_code == 422 and "'value.critique'" in refused.json()["detail"]
    key = '{"assignment_id": %d, "idempotency_key": "\\ud800key", "value": {"critique": "fine"}}'
    refused = alice.http.post(url, content=key % task.assignment_id, headers={"X-CSRF-Token": alice.csrf})
    assert refused.status_code == 422 and "'idempotency_key'" in refused.json()["detail"]
    assert world.store.label_rows(project.id) == []
    with pytest.raises(Exception, match="value.critique"):  # the Store refuses it too, for any caller
        world.store.submit_label(task.assignment_id, world.users["alice"], {"critique": "\udc00"}, "k2", 1.0)
    assert world.store.label_rows(project.id) == []


def test_a_nul_in_a_form_field_is_422_naming_it(world):
    client = world.client()
    token = hidden_fields(client.get("/login").text)["csrf_token"]
    refused = client.post("/login", {"username": "nul\x00user", "password": "x", "csrf_token": token}, csrf=False)
    assert refused.status_code == 422 and "field 'username' holds a NUL character" in html.unescape(refused.text)
    project, task = open_task(world, "alice", "critique")
    form = {"assignment_id": task.assignment_id, "idempotency_key": "k", "critique": "a\x00b"}
    assert world.client("alice").post(f"/projects/{project.id}/label", form).status_code == 422
    assert world.store.label_rows(project.id) == []
    with pytest.raises(StoreError, match="NUL"):
        world.store.create_project("nul", "binary", [], instructions="read\x00me")


@pytest.mark.parametrize("digit", ["²", "④", "٣", "５"])
def test_unicode_digits_are_not_ratings(world, digit):
    project, task = open_task(world, "alice", "rating")
    alice = world.client("alice")
    body = {
        "assignment_id": task.assignment_id,
        "idempotency_key": "k",
        "value": {"scores": {"helpful": digit, "honest": 3}},
    }
    answer = alice.api_post(f"/api/projects/{project.id}/labels", body)
    assert answer.status_code == 422 and "from 1 to 7" in answer.json()["detail"]
    fields = hidden_fields(alice.get(f"/projects/{project.id}/label").text, "label-form")
    assert alice.post(f"/projects/{project.id}/label", {**fields, "score_0": digit, "score_1": "3"}).status_code == 422
    assert world.store.label_rows(project.id) == []


# ---- 2. headers on every response, HEAD wherever GET ---------------------------------------------------


def test_a_500_carries_the_security_headers(store):
    app = create_app(store=store)

    @app.get("/broken")
    def broken() -> dict:
        raise RuntimeError("a bug")

    from rlhflab.app.deps import ACCESS

    ACCESS["GET /broken"] = ()
    try:
        response = TestClient(app, raise_server_exceptions=False).get("/broken")
    finally:
        del ACCESS["GET /broken"]
    assert response.status_code == 500 and "a bug" not in response.text
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-frame-options"] == "DENY" and response.headers["x-content-type-options"] == "nosniff"


def test_head_is_allowed_wherever_get_is(world):
    project = world.project("pairwise")
    alice, admin = world.client("alice"), world.client("admin")
    for client, url in ((world.client(), "/login"), (alice, "/"), (alice, f"/projects/{project.id}/instructions"),
                        (admin, "/admin"), (world.client(), "/static/app.js")):  # fmt: skip
        got, head = client.get(url), client.http.head(url)
        assert head.status_code == got.status_code == 200, url
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["x-frame-options"] == "DENY"
    assert world.client().http.head("/admin").status_code == 303  # the same rules as GET


def test_a_body_shorter_than_its_content_length_is_answered_408_and_the_connection_closed(tmp_path):
    import uvicorn

    with Store(f"sqlite:///{tmp_path / 'f.db'}", password_hasher=FAST_HASHER) as store:
        server = uvicorn.Server(uvicorn.Config(create_app(store=store, read_timeout=0.3), log_level="warning"))
        listening = socket.create_server(("127.0.0.1", 0))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
        thread.start()
        try:
            while not server.started:
                time.sleep(0.01)
            with socket.create_connection(listening.getsockname(), timeout=10) as client:
                started = time.perf_counter()
                client.sendall(
                    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: 100\r\n\r\nusername=a"
                )
                answer = b""
                while chunk := client.recv(4096):  # until the server closes the connection
                    answer += chunk
                waited = time.perf_counter() - started
        finally:
            server.should_exit = True
            thread.join()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
    assert b"x-frame-options: DENY" in answer and 0.3 <= waited < 5


# ---- 3. overlap under every admin action; ids of another project -----------------------------------------


def test_excluding_and_including_again_never_overfills_an_item(world):
    store, users = world.store, world.users
    store.create_user("carl", PASSWORD, "annotator")
    users["carl"] = store.authenticate("carl", PASSWORD)
    rows = [{"prompt": f"q{i}", "completions": [f"a{i}", f"b{i}"]} for i in range(3)]
    project = world.add_project("tight", "pairwise", rows, overlap=1)
    store.add_members(project.id, ["carl"], "annotator")
    admin = users["admin"]
    for name in ("alice", "bob", "carl"):
        store.mark_instructions_seen(project.id, users[name].id)
    done = store.next_task(project.id, users["alice"])
    store.submit_label(done.assignment_id, users["alice"], {"choice": "left"}, "a1", 1.0)
    opened = store.next_task(project.id, users["alice"])  # open when she is excluded

    store.set_excluded(project.id, "alice", True, admin)
    with pytest.raises(NotFound):  # a page opened before the exclusion cannot be submitted
        store.submit_label(opened.assignment_id, users["alice"], {"choice": "left"}, "a2", 1.0)
    for name in ("bob", "carl"):  # her slots go to the others, who fill every item
        while (task := store.next_task(project.id, users[name])) is not None:
            store.submit_label(task.assignment_id, users[name], {"choice": "right"}, uuid.uuid4().hex, 1.0)
    store.set_excluded(project.id, "alice", False, admin)
    assert store.next_task(project.id, users["alice"]) is None  # nothing left with a free slot

    counted = [r for r in store.label_rows(project.id, include_excluded=False)]
    per_item = {item: sum(r["item_id"] == item for r in counted) for item in {r["item_id"] for r in counted}}
    assert per_item and max(per_item.values()) <= project.overlap and len(per_item) == 3
    assert len(store.label_rows(project.id)) == 4  # her label is kept, left out like an excluded one's


def test_including_again_keeps_labels_whose_slot_is_still_free(world):
    project, task = open_task(world, "bob")  # overlap 2: alice and bob
    store, admin = world.store, world.users["admin"]
    store.submit_label(task.assignment_id, world.users["bob"], {"choice": "left"}, "b1", 1.0)
    store.set_excluded(project.id, "bob", True, admin)
    store.set_excluded(project.id, "bob", False, admin)
    assert [r["excluded"] for r in store.label_rows(project.id)] == [False]


def test_gold_answers_change_only_items_of_the_project_in_the_url(world):
    pairwise, binary = world.project("pairwise"), world.project("binary")
    with world.store._read() as session:  # an item of the binary project
        from sqlalchemy import select

        from rlhflab.app import models as m

        other_item = session.scalars(select(m.Item.id).where(m.Item.project_id == binary.id)).first()
    for name in ("rita", "admin"):
        answer = world.client(name).post(f"/projects/{pairwise.id}/gold", {"item_id": other_item, "answer": "0"})
        assert answer.status_code == 404
    with world.store._read() as session:
        assert session.get(m.Item, other_item).is_gold is False


# ---- 4. invitation links -------------------------------------------------------------------------------


def test_invitation_links_come_from_the_configured_public_url_not_the_host_header(store):
    store.create_user("boss", PASSWORD, "admin")
    app = create_app(store=store, public_url="https://feedback.example.org/lab/")
    client = TestClient(app, follow_redirects=False)
    token, csrf = store.create_session(store.authenticate("boss", PASSWORD).id)
    client.cookies.set("rlhflab_session", token)
    made = client.post(
        "/admin/invitations", data={"role": "annotator", "csrf_token": csrf}, headers={"Host": "evil.example"}
    )
    assert made.status_code == 201
    link = re.search(r'id="invitation-link" class="copy" readonly value="([^"]+)"', made.text).group(1)
    assert link.startswith("https://feedback.example.org/lab/invite/") and "evil" not in made.text
    with pytest.raises(Exception, match="public URL"):
        create_app(store=store, public_url="feedback.example.org")


# ---- 5. login throttling -------------------------------------------------------------------------------


def login_attempt(world, client, name: str, password: str):
    token = hidden_fields(client.get("/login").text)["csrf_token"]
    return client.post("/login", {"username": name, "password": password, "csrf_token": token}, csrf=False)


def test_failed_logins_per_account_are_throttled_with_429(world):
    client = world.client()
    for _ in range(MAX_FAILURES_PER_ACCOUNT):
        assert login_attempt(world, client, "alice", "wrong password").status_code == 400
    refused = login_attempt(world, client, "alice", PASSWORD)  # even the right password, for a while
    assert refused.status_code == 429 and "Too many failed sign-ins" in refused.text
    assert 0 < int(refused.headers["retry-after"]) <= 15 * 60
    assert login_attempt(world, world.client(), "bob", PASSWORD).status_code == 303  # another account is not


def test_failed_logins_per_address_are_throttled_across_accounts(world):
    client = world.client()
    for i in range(MAX_FAILURES_PER_ADDRESS):
        assert login_attempt(world, client, f"nobody{i}", "wrong password").status_code == 400
    assert login_attempt(world, client, "bob", PASSWORD).status_code == 429
    # the counts are in the database: another app (a worker, a restart) over it sees them
    other = TestClient(create_app(store=world.store), follow_redirects=False)
    token = hidden_fields(other.get("/login").text)["csrf_token"]
    refused = other.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": token})
    assert refused.status_code == 429


def test_a_successful_login_clears_the_accounts_failures(world):
    client = world.client()
    for _ in range(MAX_FAILURES_PER_ACCOUNT - 1):
        login_attempt(world, client, "alice", "wrong password")
    assert login_attempt(world, client, "alice", PASSWORD).status_code == 303
    assert login_attempt(world, world.client(), "alice", "wrong password").status_code == 400  # counting anew
