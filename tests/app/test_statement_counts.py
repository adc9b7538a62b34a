"""How many statements, transactions and pool checkouts the hot requests cost, pinned so they cannot
creep back up (issue 26: the labelling page's speed on PostgreSQL is round trips, not CPU).

Counted with SQLAlchemy's engine events on the app's own engine: every statement the app sends
(``before_cursor_execute``; SQLite's ``BEGIN IMMEDIATE`` and the commit are not statements of the
app's work and are left out), every transaction (``begin``) and every connection taken from the pool
(``checkout``). A statement is one round trip to PostgreSQL; a write transaction's commit is another,
and waits for the disk.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import event

from tests.app import web_fixtures
from tests.app.web_fixtures import hidden_fields, start_labelling

world = web_fixtures.world  # the fixture, used by name

# request -> (statements, transactions, pool checkouts) at most. Before issue 26's work: page 18-19
# statements in 4 transactions, a reload 15 in 4, a submission 11 in 3 (and a pre-ping per checkout).
# The session lookup is one statement of its own: autocommit on PostgreSQL (no BEGIN, no COMMIT), a
# deferred read transaction on SQLite; the rest of each request is one transaction.
BUDGET = {
    "sqlite": {"page (new item)": (8, 2, 2), "page (resumed)": (4, 2, 2), "submit": (6, 2, 2)},
    # the candidate item's count is read again once its row lock is held (FOR UPDATE SKIP LOCKED)
    "postgresql": {"page (new item)": (9, 1, 2), "page (resumed)": (4, 1, 2), "submit": (6, 1, 2)},
}


@dataclass
class Counts:
    statements: list[str] = field(default_factory=list)
    transactions: int = 0
    checkouts: int = 0

    def totals(self) -> tuple[int, int, int]:
        return len(self.statements), self.transactions, self.checkouts


class Counter:
    """Counts what the engine does while ``with counter.counting() as counts:`` is open."""

    def __init__(self, engine) -> None:
        self.current: Counts | None = None
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)
        event.listen(engine.pool, "checkout", self._checkout)

    def _statement(self, _conn, _cursor, statement, *_args) -> None:
        if self.current is not None and not statement.lstrip().upper().startswith("BEGIN"):
            self.current.statements.append(statement)

    def _begin(self, conn) -> None:
        # an autocommit connection (PostgreSQL's one-statement reads) sends no BEGIN and no COMMIT
        if self.current is not None and conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            self.current.transactions += 1

    def _checkout(self, *_args) -> None:
        if self.current is not None:
            self.current.checkouts += 1

    def measure(self, request) -> Counts:
        self.current = Counts()
        try:
            request()
            return self.current
        finally:
            self.current = None


def hot_requests(world) -> dict[str, Counts]:
    """The counts of a labelling page that hands out a new item, one that resumes the open
    assignment (a reload), and the submission of its form."""
    project = world.add_project(
        "counted", "pairwise", [{"prompt": f"p{i}", "completions": [f"a{i}", f"b{i}"]} for i in range(5)], overlap=2
    )
    alice = world.client("alice")
    start_labelling(alice, project)
    fields = hidden_fields(alice.get(f"/projects/{project.id}/label").text)
    assert alice.post(f"/projects/{project.id}/label", data={**fields, "choice": "left"}).status_code == 303
    counter = Counter(world.store.engine)
    url = f"/projects/{project.id}/label"
    pages: list = []
    counts = {
        "page (new item)": counter.measure(lambda: pages.append(alice.get(url))),
        "page (resumed)": counter.measure(lambda: pages.append(alice.get(url))),
    }
    assert [p.status_code for p in pages] == [200, 200]
    fields = hidden_fields(pages[-1].text)
    answers = []
    counts["submit"] = counter.measure(lambda: answers.append(alice.post(url, data={**fields, "choice": "right"})))
    assert answers[0].status_code == 303, answers[0].text
    return counts


def test_hot_requests_stay_within_their_statement_budget(world):
    budget = BUDGET[world.store.engine.dialect.name]
    for name, counts in hot_requests(world).items():
        shown = f"{name}: {counts.totals()} statements, transactions, checkouts\n" + "\n".join(
            " ".join(s.split())[:120] for s in counts.statements
        )
        assert all(n <= most for n, most in zip(counts.totals(), budget[name])), shown


def test_connections_the_database_closed_are_replaced_without_a_failed_request(world):
    """No pre-ping: a pooled connection the server closed (as on a restart; here every backend of the
    test's database is terminated) is found by polling its socket at checkout and replaced, so the
    next request succeeds."""
    engine = world.store.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to restart")
    import psycopg

    project = world.project("pairwise")
    alice = world.client("alice")
    start_labelling(alice, project)
    assert engine.pool.checkedin() >= 1
    url = engine.url
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE datname = %s",
            (url.database,),
        ).fetchone()[0]
    assert ended >= 1
    page = alice.get(f"/projects/{project.id}/label")
    assert page.status_code == 200, page.text
    fields = hidden_fields(page.text)
    answer = alice.post(f"/projects/{project.id}/label", data={**fields, "choice": "left"})
    assert answer.status_code == 303, answer.text


def test_password_hashing_does_not_stall_labelling(world, monkeypatch):
    """A sign-in's argon2 verification (slow on purpose) runs in a worker thread: a labelling page
    asked for while it runs is answered before the sign-in is."""
    project = world.project("pairwise")
    alice = world.client("alice")
    start_labelling(alice, project)
    monkeypatch.setattr(world.store, "_hasher", PasswordHasher(time_cost=8, memory_cost=65536, parallelism=1))
    world.store.create_user("slowpoke", web_fixtures.PASSWORD, "annotator")
    finished: list[str] = []

    async def both() -> None:
        transport = httpx.ASGITransport(app=world.app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as anonymous,
            httpx.AsyncClient(
                transport=transport, base_url="http://test", cookies=dict(alice.http.cookies)
            ) as labeller,
        ):
            token = hidden_fields((await anonymous.get("/login")).text)["csrf_token"]
            form = {"username": "slowpoke", "password": web_fixtures.PASSWORD, "csrf_token": token}

            async def sign_in() -> None:
                assert (await anonymous.post("/login", data=form)).status_code == 303
                finished.append("sign-in")

            async def label_page() -> None:
                await asyncio.sleep(0.05)  # once the sign-in is hashing
                assert (await labeller.get(f"/projects/{project.id}/label")).status_code == 200
                finished.append("page")

            await asyncio.gather(sign_in(), label_page())

    asyncio.run(both())
    assert finished == ["page", "sign-in"]
