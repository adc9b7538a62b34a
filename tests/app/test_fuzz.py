"""Every route of the app, as every kind of caller, given the values that once broke it: ids past the
32- and 64-bit ranges, non-ASCII digits, NUL bytes, lone UTF-16 surrogates, 5,000-digit numbers,
overflowing floats, very long text, and JSON nested thousands deep. Whatever the answer, it is never
a 5xx, and nothing is logged with a traceback (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote, urlencode

from fastapi.testclient import TestClient

from rlhflab.app.auth import PRELOGIN_COOKIE, SESSION_COOKIE
from rlhflab.app.tasks import TASKS
from tests.app import web_fixtures
from tests.app.test_auth_matrix import route_keys

world = web_fixtures.world  # the fixture, used by name

# one of each kind (bob, the other annotator, is alice's kind: he is in the label routes' projects)
CALLERS = ("anonymous", "alice", "rita", "admin")
HOSTILE = [
    "nul\x00user",
    "\ud800key",
    "key\udfff",
    "²",
    "④",
    "٣",
    "9223372036854775808",
    "2147483648",
    "-9223372036854775809",
    "0",
    "-1",
    "9" * 5001,
    "1e999999",
    "NaN",
    "x" * 20_000,
    "<script>alert(1)</script>",
    "",
]
# The classes that once broke a route, for the checks run as every caller (the full list is sent field
# by field as the caller each route is for).
HOSTILE_CORE = ["nul\x00user", "\ud800key", "²", "9223372036854775808", "9" * 5001]
PATH_IDS = ["9223372036854775808", "2147483648", "0", "²", "%00", "%ED%A0%80", "9" * 5001, "0x10"]
TOKENS = ["%00", "%ED%A0%80", "x" * 5000, "..%2F..%2Fetc", "²"]
JSON_VALUES = [2**63, -(2**63) - 1, 2**31, 10**30, 1.5, -1, 0, None, True, [], {}, [[[]]], *HOSTILE]
RAW_JSON = [
    b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"assignment_id": ' + b"9" * 5001 + b"}",
    b'{"assignment_id": 1e999999}',
    b'{"assignment_id": NaN, "seconds": Infinity}',
    b'{"value": "\xed\xa0\x80"}',
    b'{"value": {"critique": "\\ud800"}, "assignment_id": 1, "idempotency_key": "k"}',
    b'{"idempotency_key": "\\udfff", "assignment_id": 1, "value": {}}',
    b'{"\\u0000": 1}',
    b'"\\ud800"',
    b"[1, 2",
    b"",
    b"\x00",
]
# The fields each form route reads (the label and gold routes: per task, beside the shared ones).
FORM_FIELDS = {
    "POST /login": ["username", "password", "next"],
    "POST /invite/{token}": ["username", "password", "password2"],
    "POST /projects/{project_id:id}/skip": ["assignment_id"],
    "POST /projects/{project_id:id}/exclude": ["username", "excluded"],
    "POST /admin/invitations": ["role", "projects"],
    "POST /admin/members": ["project", "usernames", "role"],
    "POST /logout": ["x"],
    "POST /projects/{project_id:id}/instructions": ["x"],
    "POST /projects/{project_id:id}/adjudicate": ["item_id", "cause", "note", "choice"],
}
LABEL_FIELDS = {
    "pairwise": ["choice"],
    "ranking": ["rank_0", "rank_1", "rank_2"],
    "rating": ["score_0", "score_1"],
    "binary": ["good"],
    "critique": ["critique", "correction"],
    "turns": ["turn_0", "turn_1"],
}
LABEL_LEAVES = {
    "pairwise": ["choice"],
    "ranking": ["ranking"],
    "rating": ["scores"],
    "binary": ["good"],
    "critique": ["critique", "correction"],
    "turns": ["turns"],
}
LABEL_ROUTE = "POST /projects/{project_id:id}/label"
GOLD_ROUTE = "POST /projects/{project_id:id}/gold"
API_LABEL_ROUTE = "POST /api/projects/{project_id:id}/labels"
GOLD_FIELDS = {"pairwise": ["answer"], "ranking": ["answer"], "rating": ["answer_0", "answer_1"], "binary": ["answer"]}
QUERIES = {
    "GET /login": ["next"],
    "GET /projects/{project_id:id}/label": ["saved", "duplicate"],
    "GET /projects/{project_id:id}/review": ["saved"],
    "GET /projects/{project_id:id}/adjudicate": ["item", "saved"],
    "GET /projects/{project_id:id}/export": ["kind", "include_excluded"],
    "GET /admin": ["added"],
}


def _form(fields: dict) -> bytes:
    """An urlencoded body that may hold what httpx refuses to encode (lone surrogates, as the bytes a
    sloppy client would send)."""
    return urlencode(fields, encoding="utf-8", errors="surrogatepass").encode()


def test_no_input_gets_a_5xx_or_a_traceback(world, caplog):
    caplog.set_level(logging.WARNING)
    store, users = world.store, world.users
    projects = {task: world.project(task) for task in TASKS}
    for project in projects.values():
        for name in ("alice", "bob"):
            store.mark_instructions_seen(project.id, users[name].id)
    valid_form = {
        "username": "fuzzer",
        "password": "long enough pw",
        "password2": "long enough pw",
        "next": "/",
        "excluded": "1",
        "role": "annotator",
        "projects": "pairwise project",
        "usernames": "bob",
        "idempotency_key": "fuzz",
        "seconds": "1",
        "choice": "left",
        "rank_0": "1",
        "rank_1": "2",
        "rank_2": "3",
        "score_0": "3",
        "score_1": "4",
        "good": "yes",
        "turn_0": "no",
        "turn_1": "yes",
        "critique": "fine",
        "correction": "",
        "answer": "0",
        "answer_0": "3",
        "answer_1": "4",
        "cause": "ambiguous_item",
        "note": "",
    }
    failures: list[str] = []
    sent = 0

    sessions: dict[str, tuple[str, str]] = {}  # caller -> (session token, CSRF token), made once

    def client(caller: str) -> tuple[TestClient, str]:
        http = TestClient(world.app, follow_redirects=False, raise_server_exceptions=False)
        if caller == "anonymous":
            return http, ""
        if caller not in sessions:
            sessions[caller] = store.create_session(users[caller].id)
        token, csrf = sessions[caller]
        http.cookies.set(SESSION_COOKIE, token)
        return http, csrf

    def send(caller: str, method: str, url: str, fields: dict | None = None, raw: bytes | None = None) -> None:
        nonlocal sent
        http, csrf = client(caller)
        http.cookies.set(PRELOGIN_COOKIE, "prelogin-token")
        public = url.startswith(("/login", "/invite/"))
        headers = {"X-CSRF-Token": "prelogin-token" if public else csrf or "none"}
        if method == "GET":
            response = http.get(url)
        elif raw is not None:
            response = http.post(url, content=raw, headers={**headers, "content-type": "application/json"})
        else:
            body = {"csrf_token": headers["X-CSRF-Token"], **(fields or {})}
            response = http.post(
                url, content=_form(body), headers={"content-type": "application/x-www-form-urlencoded"}
            )
        sent += 1
        if method == "POST" and url.startswith(("/logout", "/login", "/invite/")):
            sessions.pop(caller, None)  # signing out, or in as someone else, ended the caller's session
        if response.status_code >= 500 or "Traceback" in response.text:
            failures.append(f"{method} {url[:120]!r} as {caller} {str(fields or raw)[:160]!r}: {response.status_code}")

    def open_task(project) -> tuple[str, str]:
        """alice's open assignment in ``project`` and its item (made if she has none and one is left)."""
        task = store.next_task(project.id, users["alice"])
        return (str(task.assignment_id), str(task.item_id)) if task is not None else ("1", "1")

    keys = route_keys(world.app)
    for key in sorted(keys):
        method, path = key.split(" ", 1)
        if path == "/static":
            for caller in CALLERS:
                send(caller, "GET", "/static/" + quote("\x00../app.js"))
                send(caller, "GET", "/static/app.js")
            continue
        # a route whose body depends on the task, on each task's project; the others on one project
        per_task = key in (LABEL_ROUTE, GOLD_ROUTE, API_LABEL_ROUTE)
        variants = [(None, None)]
        if "{project_id:id}" in path:
            variants = list(projects.items()) if per_task else [("pairwise", projects["pairwise"])]
        for task, project in variants:
            if key == GOLD_ROUTE and task not in GOLD_FIELDS:
                continue
            url = path.replace("{project_id:id}", str(project.id)) if project else path
            if "{token}" in path:
                url = path.replace(
                    "{token}", store.create_invitation("annotator", users["admin"].id, ["pairwise project"])
                )
            assignment_id, item_id = open_task(project) if project else ("1", "1")
            base = {
                **valid_form,
                "assignment_id": assignment_id,
                "item_id": item_id,
                "project": str(project.id) if project else str(projects["pairwise"].id),
            }
            fields = FORM_FIELDS.get(key, [])
            if key == LABEL_ROUTE:
                fields = ["assignment_id", "idempotency_key", "seconds", *LABEL_FIELDS[task]]
            if key == GOLD_ROUTE:
                fields = ["item_id", *GOLD_FIELDS[task]]
            if project and (not per_task or task == "pairwise"):  # the path's id
                for bad in PATH_IDS:
                    for caller in CALLERS:
                        send(caller, method, url.replace(f"/{project.id}/", f"/{bad}/", 1), base)
            if "{token}" in path:
                for bad in TOKENS:
                    send("anonymous", method, path.replace("{token}", bad), base)
            if method == "GET":
                owner = "admin" if "admin" in key or "export" in key else "rita" if "review" in key else "alice"
                owner = "rita" if "adjudicate" in key else owner
                for name in QUERIES.get(key, []):
                    for value in HOSTILE:
                        send(
                            "anonymous" if key == "GET /login" else owner,
                            "GET",
                            f"{url}?{name}={quote(value, errors='surrogatepass')}",
                        )
                continue
            if key == API_LABEL_ROUTE:
                for raw in RAW_JSON if task == "pairwise" else []:
                    for caller in CALLERS:
                        send(caller, "POST", url, raw=raw)
                good = {"assignment_id": int(base["assignment_id"]), "idempotency_key": f"fuzz-{task}", "value": {}}
                for field in ("assignment_id", "idempotency_key", "seconds", "value") if task == "pairwise" else ():
                    for value in JSON_VALUES:
                        body = json.dumps({**good, field: value}).encode("utf-8", "surrogatepass")
                        send("alice", "POST", url, raw=body)
                for leaf in LABEL_LEAVES[task]:
                    for value in JSON_VALUES:
                        for inner in (value, {"helpful": value, "honest": 3}) if task == "rating" else (value,):
                            body = json.dumps({**good, "value": {leaf: inner}}).encode("utf-8", "surrogatepass")
                            send("alice", "POST", url, raw=body)
                continue
            # each field alone, as the caller the route is for, then all at once, as everyone
            owner = {
                "/admin": "admin",
                "/exclude": "admin",
                "/gold": "rita",
                "/adjudicate": "rita",
                "/login": "anonymous",
            }
            caller = next((who for part, who in owner.items() if part in key), "alice")
            for field in fields:
                for value in HOSTILE:
                    send(caller, method, url, {**base, field: value})
            for value in HOSTILE_CORE:
                for who in CALLERS:
                    send(who, method, url, {**base, **{field: value for field in fields}})

    print(f"{sent} requests")
    assert sent > 1500
    assert not failures, f"{len(failures)} of {sent} requests failed:\n" + "\n".join(failures[:40])
    logged = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not logged, "\n".join(r.getMessage()[:300] for r in logged[:10])
