"""Who may call which route: every route of the app (enumerated from ``app.routes``, so a new route
without a row here fails) × {anonymous, annotator A, annotator B, reviewer, admin}, with the status each
must get. Signed-in callers send the right CSRF token, so what is tested here is authorisation alone.

A is alice, whose open assignment the requests name; B is bob, an annotator of the same project; the
reviewer rita and both annotators are members of the project; the admin is not (admins see every
project). Alice goes last in each row, because her requests change what the others would see."""

from __future__ import annotations

import itertools

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from rlhflab.app.auth import PRELOGIN_COOKIE
from rlhflab.app.deps import ACCESS
from rlhflab.app.web import ROUTERS, create_app
from tests.app import web_fixtures
from tests.app.web_fixtures import write_samples

world = web_fixtures.world  # the fixture, used by name

CALLERS = ("anonymous", "bob", "rita", "admin", "alice")
P = "/projects/{project_id:id}"
API = "/api/projects/{project_id:id}"


def row(anonymous, alice, bob, rita, admin) -> dict[str, int]:
    return {"anonymous": anonymous, "alice": alice, "bob": bob, "rita": rita, "admin": admin}


# route -> expected status per caller (303 for an anonymous page request is the redirect to /login)
EXPECTED: dict[str, dict[str, int]] = {
    "GET /login": row(200, 303, 303, 303, 303),  # signed in: on to the projects
    "POST /login": row(400, 400, 400, 400, 400),  # a wrong password, with a valid form token
    "GET /invite/{token}": row(200, 200, 200, 200, 200),
    "POST /invite/{token}": row(400, 400, 400, 400, 400),  # passwords that differ
    "POST /logout": row(303, 303, 303, 303, 303),
    "GET /": row(303, 200, 200, 200, 200),
    f"GET {P}/instructions": row(303, 200, 200, 200, 200),
    f"POST {P}/instructions": row(303, 303, 303, 303, 303),
    f"GET {P}/label": row(303, 200, 200, 403, 403),  # bob sees his own task, not alice's
    f"POST {P}/label": row(303, 303, 404, 403, 403),
    f"POST {P}/skip": row(303, 303, 404, 403, 403),
    f"GET {API}/next": row(401, 200, 200, 403, 403),
    f"POST {API}/labels": row(401, 201, 404, 403, 403),
    f"GET {P}/dashboard": row(303, 403, 403, 200, 200),
    f"GET {API}/stats": row(401, 403, 403, 200, 200),
    f"GET {P}/review": row(303, 403, 403, 200, 200),
    f"POST {P}/gold": row(303, 403, 403, 303, 303),
    f"GET {P}/adjudicate": row(303, 403, 403, 200, 200),
    f"POST {P}/adjudicate": row(303, 403, 403, 400, 400),  # authorised; the item has no disagreement
    f"POST {P}/exclude": row(303, 403, 403, 403, 303),
    f"GET {P}/export": row(303, 403, 403, 403, 200),
    "GET /admin": row(303, 403, 403, 403, 200),
    "POST /admin/invitations": row(303, 403, 403, 403, 201),
    "POST /admin/members": row(303, 403, 403, 403, 303),
    "GET /static": row(200, 200, 200, 200, 200),
}


def route_keys(app) -> set[str]:
    """Every route of the app: its own, and those of the routers it includes (FastAPI lists an
    included router as one entry, so they are read from ``web.ROUTERS``)."""
    keys, included = set(), 0
    for route in [*app.routes, *(r for router in ROUTERS for r in router.routes)]:
        if isinstance(route, APIRoute):
            keys.update(f"{method} {route.path}" for method in route.methods)
        elif isinstance(route, Mount):
            keys.add(f"GET {route.path}")
        else:
            included += 1
    assert included == len(ROUTERS), "the app includes a router that web.ROUTERS does not list"
    return keys


def test_every_route_has_a_row_here_and_an_access_rule(world):
    keys = route_keys(world.app)
    assert keys == set(EXPECTED), (
        f"routes without a row: {keys - set(EXPECTED)}; rows without a route: {set(EXPECTED) - keys}"
    )
    assert keys - {"GET /static"} == set(ACCESS)


def test_the_authorisation_matrix(world):
    store, users = world.store, world.users
    rows = [{"prompt": f"Prompt {i}", "completions": [f"yes {i}", f"no {i}"]} for i in range(40)]
    project = world.add_project("matrix", "pairwise", rows)  # enough items for every request
    for name in ("alice", "bob"):
        store.mark_instructions_seen(project.id, users[name].id)
    # alice has one label (something to export, an item to mark gold) and an open assignment
    first = store.next_task(project.id, users["alice"])
    store.submit_label(first.assignment_id, users["alice"], {"choice": "left"}, "setup", 1.0)
    keys = itertools.count()

    def request(key: str, caller: str):
        client = world.client(None if caller == "anonymous" else caller)
        method, path = key.split(" ", 1)
        url = path.replace("{project_id:id}", str(project.id))
        if "{token}" in url:
            url = url.replace("{token}", store.create_invitation("annotator", users["admin"].id, [project.name]))
        if method == "GET":
            query = {"GET /static": "/app.js", f"GET {P}/export": "?kind=preferences"}.get(key, "")
            return client.get(url + query)
        if path in ("/login",) or path.startswith("/invite/"):
            token = "a-form-token"  # the double-submit pair: the same value in the cookie and the form
            client.http.cookies.set(PRELOGIN_COOKIE, token)
            data = {"csrf_token": token, "username": "alice", "password": "wrong password", "password2": "other"}
            return client.http.post(url, data=data)
        open_task = store.next_task(project.id, users["alice"])  # alice's open assignment (made if needed)
        body = {
            f"POST {P}/label": {"assignment_id": open_task.assignment_id, "idempotency_key": f"k{next(keys)}", "choice": "left"},
            f"POST {P}/skip": {"assignment_id": open_task.assignment_id},
            f"POST {P}/gold": {"item_id": first.item_id, "answer": "0"},
            f"POST {P}/adjudicate": {"item_id": first.item_id, "cause": "other", "note": "n", "choice": "left"},
            f"POST {P}/exclude": {"username": "bob", "excluded": "1"},
            "POST /admin/invitations": {"role": "annotator"},
            "POST /admin/members": {"project": project.id, "usernames": "bob", "role": "annotator"},
        }.get(key, {})  # fmt: skip
        if key == f"POST {API}/labels":
            label = {"assignment_id": open_task.assignment_id, "value": {"choice": "tie"}, "idempotency_key": "api"}
            return client.api_post(url, label)
        return client.post(url, body)

    wrong = []
    for key, expected in EXPECTED.items():
        for caller in CALLERS:
            response = request(key, caller)
            if response.status_code != expected[caller]:
                wrong.append(f"{key} as {caller}: {response.status_code}, expected {expected[caller]}")
            elif caller == "anonymous" and expected[caller] == 303 and key not in ("GET /login", "POST /logout"):
                if not response.headers["location"].startswith("/login?next="):
                    wrong.append(f"{key} as anonymous: redirected to {response.headers['location']}, not /login")
    assert not wrong, "\n".join(wrong)


def test_members_of_other_projects_learn_nothing(world):
    """A project alice, bob and rita are not in is 404 to them (as if it did not exist), 200 to the admin."""
    store = world.store
    secret = store.create_project(
        "secret", "binary", write_samples(world.tmp / "secret.jsonl", [{"prompt": "p", "completions": ["c", "d"]}])
    )
    alice, rita, admin = world.client("alice"), world.client("rita"), world.client("admin")
    for url in (
        f"/projects/{secret.id}/label",
        f"/projects/{secret.id}/instructions",
        f"/api/projects/{secret.id}/next",
    ):
        assert alice.get(url).status_code == 404, url
    assert (
        alice.post(
            f"/projects/{secret.id}/label", {"assignment_id": "1", "idempotency_key": "k", "good": "yes"}
        ).status_code
        == 404
    )
    assert (
        alice.api_post(
            f"/api/projects/{secret.id}/labels", {"assignment_id": 1, "value": {"good": True}, "idempotency_key": "k"}
        ).status_code
        == 404
    )
    for url in (
        f"/projects/{secret.id}/dashboard",
        f"/api/projects/{secret.id}/stats",
        f"/projects/{secret.id}/review",
    ):
        assert rita.get(url).status_code == 404, url
        assert admin.get(url).status_code == 200, url
    assert rita.post(f"/projects/{secret.id}/gold", {"item_id": "1", "answer": "yes"}).status_code == 404
    assert world.client("bob").get(f"/projects/{secret.id + 1000}/label").status_code == 404


def test_a_route_missing_from_the_access_table_is_refused(store):
    app = create_app(store=store)

    @app.get("/forgotten")
    def forgotten() -> dict:
        return {"secret": 42}

    client = TestClient(app, raise_server_exceptions=False)
    response = client.get("/forgotten")
    assert response.status_code == 500 and "42" not in response.text


@pytest.mark.parametrize("caller", ["alice", "rita"])
def test_a_non_admin_cannot_reach_admin_actions_even_with_a_valid_token(world, caller):
    client = world.client(caller)
    assert client.post("/admin/invitations", {"role": "admin"}).status_code == 403
    assert world.store.invitations() == []
