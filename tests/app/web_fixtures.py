"""Shared set-up of the web tests: a populated Store (an admin, two annotators, a reviewer, one project
per task, made when a test first asks for it), the app over it, and clients signed in as each of them.

Import the fixtures into a test module with::

    from tests.app.web_fixtures import world  # noqa: F401

``world`` builds on conftest's ``store`` fixture, so every test using it runs on SQLite and on
PostgreSQL. Clients sign in through ``Store.create_session`` (no password hashing) unless a test is
about signing in.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rlhflab.app.auth import PRELOGIN_COOKIE, SESSION_COOKIE
from rlhflab.app.store import ProjectInfo, Store, UserInfo
from rlhflab.app.web import create_app

PASSWORD = "correct horse battery"
# name -> global role; the annotators and the reviewer are members of every project
PEOPLE = {"admin": "admin", "alice": "annotator", "bob": "annotator", "rita": "reviewer"}
TASK_SAMPLES = {
    "pairwise": [
        {"prompt": "Say hello.", "completions": ["Hello there!", "Go away."]},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three."}],
         "completions": ["1 2 3", "3 2 1"]},
        {"prompt": "Name a colour.", "completions": ["Blue.", "Seven."]},
    ],
    "ranking": [
        {"prompt": "Describe the sea.", "completions": ["Vast and blue.", "A table.", "Deep and\n\n  wet."]},
        {"prompt": "Name a fruit.", "completions": ["Apple.", "Brick.", "Pear."]},
    ],
    "rating": [{"prompt": "Explain rain.", "completions": ["Water falls from clouds.", "Because."]}],
    "binary": [{"prompt": "Is 2 prime?", "completions": ["Yes.", "No."]}],
    "critique": [{"prompt": "Write a haiku.", "completions": ["An old silent pond\n  a frog jumps in"]}],
    "turns": [{"prompt": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "5."},
                          {"role": "user", "content": "Are you sure?"}],
               "completions": ["Sorry: it is 4."]}],  # two assistant turns: the prompt's and the reply
}  # fmt: skip
RATING_ATTRIBUTES = ["helpful", "honest"]
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def hidden_fields(page: str, form_id: str | None = None) -> dict[str, str]:
    """The hidden inputs of a page (or of the form with ``id=form_id``), unescaped."""
    if form_id is not None:
        start = page.index(f'id="{form_id}"')
        page = page[start : page.index("</form>", start)]
    return {name: html.unescape(value) for name, value in HIDDEN.findall(page)}


def write_samples(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@dataclass
class Client:
    """A TestClient signed in as ``user`` (or anonymous), holding the session's CSRF token."""

    http: TestClient
    user: UserInfo | None = None
    csrf: str = ""

    def get(self, url: str, **kwargs):
        return self.http.get(url, **kwargs)

    def post(self, url: str, data: dict | None = None, csrf: bool = True, **kwargs):
        """A form post, with the session's CSRF token unless ``csrf=False``."""
        data = dict(data or {})
        if csrf and self.csrf:
            data.setdefault("csrf_token", self.csrf)
        return self.http.post(url, data=data, **kwargs)

    def api_post(self, url: str, body, csrf: bool = True, **kwargs):
        headers = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        return self.http.post(url, json=body, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)


@dataclass
class World:
    store: Store
    app: object
    tmp: Path
    users: dict[str, UserInfo] = field(default_factory=dict)
    projects: dict[str, ProjectInfo] = field(default_factory=dict)

    def client(self, name: str | None = None) -> Client:
        http = TestClient(self.app, follow_redirects=False)
        if name is None:
            return Client(http)
        user = self.users[name]
        token, csrf = self.store.create_session(user.id)
        http.cookies.set(SESSION_COOKIE, token)
        return Client(http, user, csrf)

    def login(self, name: str, password: str = PASSWORD) -> Client:
        """Sign in through the login form (its double-submit token included)."""
        http = TestClient(self.app, follow_redirects=False)
        page = http.get("/login")
        token = hidden_fields(page.text)["csrf_token"]
        assert http.cookies.get(PRELOGIN_COOKIE) == token
        response = http.post("/login", data={"username": name, "password": password, "csrf_token": token})
        assert response.status_code == 303, response.text
        client = Client(http, self.users[name])
        home = http.get("/")
        client.csrf = hidden_fields(home.text)["csrf_token"]
        return client

    def project(self, task: str) -> ProjectInfo:
        """The project "{task} project" (made on first use: most tests need one or two)."""
        if task not in self.projects:
            options = {"attributes": RATING_ATTRIBUTES} if task == "rating" else {}
            self.projects[task] = self.add_project(f"{task} project", task, TASK_SAMPLES[task], overlap=2, **options)
        return self.projects[task]

    def add_project(self, name: str, task: str, rows: list[dict], **options) -> ProjectInfo:
        path = write_samples(self.tmp / (re.sub(r"\W+", "_", name) + ".jsonl"), rows)
        project = self.store.create_project(name, task, path, **options)
        self.store.add_members(project.id, ["alice", "bob"], "annotator")
        self.store.add_members(project.id, ["rita"], "reviewer")
        return project


def make_world(store: Store, tmp: Path) -> World:
    world = World(store=store, app=create_app(store=store), tmp=tmp)
    for name, role in PEOPLE.items():
        world.users[name] = store.create_user(name, PASSWORD, role)
    return world


@pytest.fixture
def world(store, tmp_path) -> World:
    return make_world(store, tmp_path)


def start_labelling(client: Client, project: ProjectInfo) -> str:
    """Read the instructions (as the first visit requires) and return the first task page's HTML."""
    first = client.get(f"/projects/{project.id}/label")
    assert first.status_code == 303 and first.headers["location"] == f"/projects/{project.id}/instructions"
    assert client.get(f"/projects/{project.id}/instructions").status_code == 200
    seen = client.post(f"/projects/{project.id}/instructions")
    assert seen.status_code == 303 and seen.headers["location"] == f"/projects/{project.id}/label"
    page = client.get(f"/projects/{project.id}/label")
    assert page.status_code == 200, page.text
    return page.text
