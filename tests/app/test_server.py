"""The feedback app served by uvicorn on 127.0.0.1, driven by real HTTP clients: 50 annotators at
once, and a server killed with SIGKILL in the middle of a stream of labels. On SQLite and on
PostgreSQL (``db_url``)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import httpx
import pytest

from rlhflab.app.auth import CSRF_HEADER, SESSION_COOKIE
from rlhflab.app.store import Store
from tests.app.browser_fixtures import live_server
from tests.app.conftest import FAST_HASHER

pytestmark = pytest.mark.server

NUM_ANNOTATORS = 50
LABELS_EACH = 20  # 1,000 labels in all
OVERLAP = 3


def _project(store: Store, tmp_path, num_items: int, annotators: int):
    """A pairwise project of ``num_items`` items, ``annotators`` signed-in annotators (session and
    CSRF token each) and its id."""
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"prompt": f"prompt {i} ';--", "completions": [f"a{i}", f"b{i}"]}) + "\n"
            for i in range(num_items)
        )
    )
    project = store.create_project("load", "pairwise", str(samples), overlap=OVERLAP)
    names = [f"annotator{i:02d}" for i in range(annotators)]
    users = [store.create_user(name, "pw-" + name, "annotator") for name in names]
    store.add_members("load", names)
    return project.id, [(user, *store.create_session(user.id)) for user in users]


def _client(base_url: str, session: str, csrf: str, **kw):
    return dict(base_url=base_url, cookies={SESSION_COOKIE: session}, headers={CSRF_HEADER: csrf}, **kw)


async def _annotate(base_url: str, project_id: int, session: str, csrf: str, count: int, acked: list, retried: list):
    """Ask for the next task and label it, ``count`` times; every 7th label is sent twice with the
    same idempotency key, as a browser retrying after a lost response would."""
    async with httpx.AsyncClient(**_client(base_url, session, csrf, timeout=60)) as client:
        for n in range(count):
            task = (await client.get(f"/api/projects/{project_id}/next")).raise_for_status().json()["task"]
            if task is None:
                return
            body = {
                "assignment_id": task["assignment_id"],
                "value": {"choice": "left" if n % 2 else "right"},
                "idempotency_key": uuid.uuid4().hex,
                "seconds": 1.5,
            }
            response = await client.post(f"/api/projects/{project_id}/labels", json=body)
            assert response.status_code == 201, response.text
            acked.append(response.json()["label"])
            if n % 7 == 0:
                again = await client.post(f"/api/projects/{project_id}/labels", json=body)
                assert again.status_code == 200, again.text
                retried.append((response.json()["label"]["id"], again.json()["label"]["id"]))


def test_fifty_concurrent_annotators_lose_and_duplicate_nothing(db_url, tmp_path):
    store = Store(db_url, password_hasher=FAST_HASHER)
    # 400 items x overlap 3 = 1,200 slots for 1,000 labels: the overlap limit is reached on many items
    project_id, people = _project(store, tmp_path, 400, NUM_ANNOTATORS)
    acked, retried = [], []

    async def everyone(base_url):
        await asyncio.gather(
            *(_annotate(base_url, project_id, s, c, LABELS_EACH, acked, retried) for _, s, c in people)
        )

    with live_server(db_url) as server:
        asyncio.run(everyone(server.url))

    rows = store.label_rows(project_id)
    store.close()
    assert len(acked) == NUM_ANNOTATORS * LABELS_EACH == 1000
    stored = {row["label_id"]: row for row in rows}
    assert len(rows) == len(stored) == 1000, "labels lost or written twice"
    assert {label["id"] for label in acked} == set(stored)
    assert all(first == second for first, second in retried), "a retried submission wrote a second label"
    per_item: dict[int, list[str]] = {}
    for row in rows:
        per_item.setdefault(row["item_id"], []).append(row["annotator"])
    assert max(len(names) for names in per_item.values()) <= OVERLAP
    assert all(len(set(names)) == len(names) for names in per_item.values()), "an item given twice to one annotator"


def test_labels_acknowledged_before_a_sigkill_survive_it(db_url, tmp_path):
    store = Store(db_url, password_hasher=FAST_HASHER)
    project_id, people = _project(store, tmp_path, 300, 4)
    acked: list[int] = []
    stop = threading.Event()

    def stream(session, csrf, base_url):
        """Label as fast as the server answers; what it acknowledged is what must survive."""
        with httpx.Client(**_client(base_url, session, csrf, timeout=10)) as client:
            while not stop.is_set():
                try:
                    task = client.get(f"/api/projects/{project_id}/next").json()["task"]
                    if task is None:
                        return
                    response = client.post(
                        f"/api/projects/{project_id}/labels",
                        json={
                            "assignment_id": task["assignment_id"],
                            "value": {"choice": "tie"},
                            "idempotency_key": uuid.uuid4().hex,
                        },
                    )
                except (httpx.TransportError, ValueError):
                    return  # the server died mid-request: that label was never acknowledged
                if response.status_code == 201:
                    acked.append(response.json()["label"]["id"])

    with live_server(db_url) as server:
        threads = [threading.Thread(target=stream, args=(s, c, server.url)) for _, s, c in people]
        for t in threads:
            t.start()
        while len(acked) < 60:
            threading.Event().wait(0.02)
        server.kill()  # SIGKILL: no shutdown handler runs
        stop.set()
        for t in threads:
            t.join(timeout=30)

    assert len(acked) >= 60
    with live_server(db_url) as server:  # restart on the same database
        user, session, csrf = people[0]
        with httpx.Client(**_client(server.url, session, csrf, timeout=10)) as client:
            assert client.get(f"/api/projects/{project_id}/next").status_code == 200  # it serves again
    rows = store.label_rows(project_id)
    store.close()
    stored = {row["label_id"] for row in rows}
    assert set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged labels lost"
    # none half-written: every stored label is complete (its value and its annotator's assignment)
    assert all(row["value"].get("choice") == "tie" for row in rows)
