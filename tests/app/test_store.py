"""The store: schema and migrations, people and sessions, projects, the labelling queue under
concurrency, and who may see what. Every test runs on SQLite and on PostgreSQL (``db_url``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import threading
import uuid
from collections import Counter

import pytest
from sqlalchemy import func, select, text, update

from rlhflab.app import models as m
from rlhflab.app.db import default_db_url, make_engine, migrate
from rlhflab.app.store import Forbidden, NotFound, Store, StoreError
from rlhflab.app.tasks import LabelError, gold_agrees, items_from_samples, resolve_label, validate_label
from rlhflab.data import Samples
from rlhflab.errors import DataError
from tests.app.conftest import FAST_HASHER, PASSWORD, SAMPLES


def people(store: Store, annotators: int, reviewers: int = 0):
    admin = store.create_user("admin", PASSWORD, "admin")
    ann = [store.create_user(f"ann{i}", PASSWORD, "annotator") for i in range(annotators)]
    rev = [store.create_user(f"rev{i}", PASSWORD, "reviewer") for i in range(reviewers)]
    return admin, ann, rev


def project_with_members(store, samples_file, annotators, task="pairwise", reviewers=0, **options):
    admin, ann, rev = people(store, annotators, reviewers)
    project = store.create_project("p", task, samples_file, **options)
    store.add_members("p", [u.username for u in ann])
    if rev:
        store.add_members("p", [u.username for u in rev], role="reviewer")
    return project, admin, ann, rev


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def count(store, model, **where):
    with store.engine.connect() as conn:
        query = select(func.count()).select_from(model)
        for column, value in where.items():
            query = query.where(getattr(model, column) == value)
        return conn.scalar(query)


def label_until_done(store, project_id, user, value=None, limit=100):
    """Label every task ``user`` gets (at most ``limit``); returns the tasks."""
    tasks = []
    while len(tasks) < limit and (task := store.next_task(project_id, user)) is not None:
        store.submit_label(task.assignment_id, user, value or {"choice": "left"}, uuid.uuid4().hex, 1.0)
        tasks.append(task)
    return tasks


def label_in_turns(store, project_id, users) -> dict[str, list]:
    """Annotators take one task each in turn until none gets any; returns each one's tasks."""
    tasks = {u.username: [] for u in users}
    while True:
        took = [label_until_done(store, project_id, u, limit=1) for u in users]
        if not any(took):
            return tasks
        for user, new in zip(users, took):
            tasks[user.username] += new


# ---- schema ---------------------------------------------------------------------------------------


def test_migrations_create_exactly_the_schema_the_models_declare(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(db_url)
    try:
        migrate(engine)
        migrate(engine)  # at head: nothing to do
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), m.Base.metadata) == []
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "0004"
            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        engine.dispose()


def test_ids_are_64_bit_on_every_database(store, samples_file):
    """PostgreSQL's ids were 32-bit (serial) until migration 0002; an id past 2^31 is stored now, and
    the next id the sequence hands out follows it."""
    with store.engine.begin() as conn:
        conn.execute(
            m.User.__table__.insert().values(
                id=2**62, username="far", password_hash="x", role="admin", created_at=m.utcnow()
            )
        )
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT setval(pg_get_serial_sequence('users', 'id'), :id)"), {"id": 2**62})
    token, _ = store.create_session(2**62)
    assert store.session_user(token)[0].id == 2**62
    assert store.create_user("next", PASSWORD, "annotator").id == 2**62 + 1
    with pytest.raises(NotFound):
        store.project(2**63)


def test_an_invitation_lives_a_finite_time_of_at_most_a_year(store):
    for ttl in (float("inf"), float("nan"), 0, -1, 24 * 367):
        with pytest.raises(StoreError, match="ttl_hours|at most"):
            store.create_invitation("annotator", None, ttl_hours=ttl)


def test_a_gold_item_labelled_by_more_than_the_overlap_stays_gold(store, samples_file, tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"prompt": "g", "completions": ["a", "b"], "answer": 0}])
    project, admin, annotators, _ = project_with_members(store, samples_file, 3, overlap=1, gold=gold, gold_rate=1.0)
    gold_tasks = [t for u in annotators for t in label_until_done(store, project.id, u, limit=1)]
    assert len(gold_tasks) == 3 and all(t.is_gold for t in gold_tasks)
    with pytest.raises(StoreError, match="stays gold"):
        store.set_gold(gold_tasks[0].item_id, None, admin)


def test_sqlite_write_transactions_begin_immediate_and_reads_see_one_snapshot(tmp_path):
    """A second writer waits at BEGIN for the first (no read-then-write race); a reader in WAL mode
    neither waits for the writer nor sees its uncommitted or later-committed rows."""
    store = Store(f"sqlite:///{tmp_path / 'f.db'}", password_hasher=FAST_HASHER)
    try:
        store.create_user("first", PASSWORD, "annotator")
        with store._write() as writer:
            writer.add(m.User(username="second", password_hash="x", role="annotator"))
            writer.flush()
            with store._read() as reader:  # does not block behind the open write transaction
                assert reader.scalar(select(func.count(m.User.id))) == 1
            other = sqlite3.connect(tmp_path / "f.db", timeout=0.05, isolation_level=None)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            other.close()
        assert [u.username for u in store.users()] == ["first", "second"]
    finally:
        store.close()


def test_default_database_url_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("RLHFLAB_DB", raising=False)
    assert default_db_url() == "sqlite:///rlhflab-feedback.db"
    monkeypatch.setenv("RLHFLAB_DB", "postgresql://u@h/db")
    assert default_db_url() == "postgresql://u@h/db"
    assert make_engine("postgresql://u@h/db").dialect.driver == "psycopg"


# ---- people -------------------------------------------------------------------------------------


def test_passwords_are_argon2_hashed_and_usernames_unique(store):
    user = store.create_user("alice", PASSWORD, "annotator")
    assert store.authenticate("alice", PASSWORD) == user
    assert store.authenticate("alice", PASSWORD + "!") is None
    assert store.authenticate("nobody", PASSWORD) is None
    with store.engine.connect() as conn:
        stored = conn.scalar(select(m.User.password_hash))
    assert stored.startswith("$argon2") and PASSWORD not in stored
    with pytest.raises(StoreError, match="already exists"):
        store.create_user("alice", PASSWORD, "admin")
    with pytest.raises(StoreError, match="at least 8"):
        store.create_user("bob", "short", "annotator")
    with pytest.raises(StoreError, match="unknown role"):
        store.create_user("bob", PASSWORD, "owner")
    with pytest.raises(StoreError, match="invalid username"):
        store.create_user("<script>", PASSWORD, "annotator")


def test_sessions_are_stored_as_hashes_carry_a_csrf_token_and_expire(store):
    user = store.create_user("alice", PASSWORD, "annotator")
    token, csrf = store.create_session(user.id)
    assert store.session_user(token) == (user, csrf)
    with store.engine.connect() as conn:
        assert conn.scalar(select(m.Session.token_hash)) == hashlib.sha256(token.encode()).hexdigest()
    assert store.session_user(token + "x") is None and store.session_user("") is None
    store.end_session(token)
    assert store.session_user(token) is None

    old, _ = store.create_session(user.id)
    with store.engine.begin() as conn:
        conn.execute(update(m.Session).values(expires_at=m.utcnow() - dt.timedelta(seconds=1)))
    assert store.session_user(old) is None


def test_an_invitation_is_used_once_and_expires(store, samples_file):
    admin = store.create_user("admin", PASSWORD, "admin")
    store.create_project("p", "pairwise", samples_file)
    token = store.create_invitation("annotator", admin.id, ["p"])
    assert store.invitation(token) == {"role": "annotator", "projects": ["p"]}
    with pytest.raises(StoreError, match="already exists"):
        store.accept_invitation(token, "admin", PASSWORD)  # a taken name leaves the invitation unused
    user = store.accept_invitation(token, "carol", PASSWORD)
    assert user.role == "annotator" and [p.name for p in store.projects_for(user)] == ["p"]
    assert store.invitation(token) is None
    with pytest.raises(StoreError, match="already been used"):
        store.accept_invitation(token, "dave", PASSWORD)
    with pytest.raises(NotFound):
        store.accept_invitation("no-such-token", "dave", PASSWORD)
    assert [(i.used_by, i.created_by) for i in store.invitations(admin)] == [("carol", "admin")]
    with pytest.raises(Forbidden):
        store.invitations(user)

    expired = store.create_invitation("reviewer", None, ttl_hours=1)
    with store.engine.begin() as conn:
        conn.execute(update(m.Invitation).values(expires_at=m.utcnow() - dt.timedelta(seconds=1)))
    assert store.invitation(expired) is None
    with pytest.raises(StoreError, match="expired"):
        store.accept_invitation(expired, "erin", PASSWORD)
    with pytest.raises(NotFound):
        store.create_invitation("annotator", admin.id, ["no-such-project"])


def test_of_many_people_accepting_one_invitation_at_once_exactly_one_gets_in(store):
    token = store.create_invitation("annotator", None)
    results: list = []

    def accept(i):
        try:
            results.append(store.accept_invitation(token, f"user{i}", PASSWORD))
        except StoreError as e:
            results.append(e)

    threads = [threading.Thread(target=accept, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all("already been used" in str(r) for r in results if isinstance(r, Exception))
    assert len(store.users()) == 1


# ---- projects -----------------------------------------------------------------------------------


def test_items_per_task_from_a_samples_file():
    samples = [Samples(**row) for row in SAMPLES]
    # pairwise: distinct non-empty completions in disjoint pairs; "" and the repeated "1 2 3" dropped
    pairs = items_from_samples("pairwise", samples)
    assert [c for _, c in pairs][:3] == [["Hello there!", "Go away."], ["Hi!", "Hey."], ["Blue.", "Seven."]]
    assert len(pairs) == 2 + 1 + 1 + 2
    assert [len(c) for _, c in items_from_samples("ranking", samples)] == [4, 3, 3, 4]
    assert len(items_from_samples("rating", samples)) == 4 + 3 + 3 + 4
    assert all(len(c) == 1 for _, c in items_from_samples("critique", samples))


def test_create_project_stores_items_gold_and_instructions(store, samples_file, tmp_path):
    gold = write_jsonl(
        tmp_path / "gold.jsonl",
        [{"prompt": "2+2?", "completions": ["4", "5"], "answer": 0}, {"prompt": "Sky?", "completions": ["Green", "Blue"], "answer": 1}],
    )  # fmt: skip
    project = store.create_project(
        "p",
        "pairwise",
        samples_file,
        gold=gold,
        instructions="# Pick the kinder reply",
        overlap=2,
        qualification_items=1,
    )
    assert (project.num_items, project.overlap, project.instructions) == (8, 2, "# Pick the kinder reply")
    assert store.project("p") == project == store.project(project.id)
    assert count(store, m.Item, is_gold=True) == 2 and count(store, m.Item, is_qualification=True) == 1
    rating = store.create_project("r", "rating", samples_file, attributes=["helpfulness", "harmlessness"])
    assert rating.attributes == ["helpfulness", "harmlessness"]
    assert store.create_project("r2", "rating", samples_file).attributes == ["overall"]
    with pytest.raises(StoreError, match="'p' already exists"):
        store.create_project("p", "ranking", samples_file)
    with pytest.raises(StoreError, match="rating projects only"):
        store.create_project("q", "pairwise", samples_file, attributes=["helpfulness"])
    with pytest.raises(StoreError, match="needs that many gold items"):
        store.create_project("q", "pairwise", samples_file, gold=gold, qualification_items=3)


def test_malformed_samples_and_gold_files_are_one_line_errors_naming_file_line_and_field(store, samples_file, tmp_path):
    bad_samples = tmp_path / "bad.jsonl"
    bad_samples.write_text(json.dumps(SAMPLES[0]) + "\n" + '{"prompt": "p", "completions": 3}\n')
    with pytest.raises(DataError, match=rf"^{bad_samples}:2: field 'completions'"):
        store.create_project("q", "pairwise", bad_samples)
    gold_rows = [{"prompt": "2+2?", "completions": ["4", "5"], "answer": 0}, {"prompt": "x", "completions": ["a", "b"], "answer": 2}]  # fmt: skip
    gold = write_jsonl(tmp_path / "gold.jsonl", gold_rows)
    with pytest.raises(DataError, match=rf"^{gold}:2: field 'answer': .*0 to 1, got 2") as raised:
        store.create_project("q", "pairwise", samples_file, gold=gold)
    assert "\n" not in str(raised.value)
    no_answer = write_jsonl(tmp_path / "g2.jsonl", [{"prompt": "x", "completions": ["a"]}])
    with pytest.raises(DataError, match=r"g2.jsonl:1: field 'answer': missing"):
        store.create_project("q", "binary", samples_file, gold=no_answer)
    rating_gold = write_jsonl(tmp_path / "g3.jsonl", [{"prompt": "x", "completions": ["a"], "answer": {"overall": 9}}])
    with pytest.raises(DataError, match=r"g3.jsonl:1: field 'answer': .*1 to 7"):
        store.create_project("q", "rating", samples_file, gold=rating_gold)
    with pytest.raises(DataError, match="critique projects have no gold"):
        store.create_project("q", "critique", samples_file, gold=gold)
    assert store.projects_for(store.create_user("admin", PASSWORD, "admin")) == []


# ---- the labelling queue ------------------------------------------------------------------------


def test_an_open_assignment_is_resumed_and_its_shown_order_is_reproducible(store, samples_file):
    project, _, (ann,), _ = project_with_members(store, samples_file, 1, task="ranking", seed=7)
    task = store.next_task(project.id, ann)
    assert store.next_task(project.id, ann) == task  # a reload shows the same task
    assert sorted(task.shown_order) == list(range(len(task.completions)))
    item = SAMPLES[0]["completions"]
    assert task.completions == [item[i] for i in task.shown_order]
    assert (task.position, task.total) == (1, 4)
    # The order is a function of the project's seed and the assignment id, not of the clock.
    import random

    from rlhflab.seeds import derive_seed

    expected = list(range(4))
    random.Random(derive_seed(7, "shown_order", task.assignment_id)).shuffle(expected)
    assert task.shown_order == expected


def test_labels_are_stored_in_original_completion_indices(store, samples_file):
    project, _, (ann,), _ = project_with_members(store, samples_file, 1, task="ranking")
    shown_orders = []
    while (task := store.next_task(project.id, ann)) is not None:
        shown_orders.append(task.shown_order)
        k = len(task.completions)
        label = store.submit_label(task.assignment_id, ann, {"ranking": list(range(k))}, uuid.uuid4().hex, 2)
        # the page ranked the displayed order as it was shown: best first is what was shown first
        assert label.value == {"ranking": task.shown_order}
    assert any(order != sorted(order) for order in shown_orders)  # some orders were shuffled

    assert resolve_label("pairwise", {"choice": "left"}, [1, 0]) == {"choice": "left", "winner": 1}
    assert resolve_label("pairwise", {"choice": "right"}, [1, 0]) == {"choice": "right", "winner": 0}
    assert resolve_label("pairwise", {"choice": "tie"}, [1, 0]) == {"choice": "tie", "winner": None}


def test_label_values_are_validated_with_one_line_reasons():
    assert validate_label("rating", ["a", "b"], 1, {"scores": {"a": "3", "b": 7}}) == {"scores": {"a": 3, "b": 7}}
    assert validate_label("critique", [], 1, {"critique": "Too long.", "correction": " "}) == {
        "critique": "Too long.",
        "correction": None,
    }
    for task, k, value, reason in [
        ("pairwise", 2, {"choice": "middle"}, "choice must be one of"),
        ("pairwise", 2, "left", "must be an object"),
        ("ranking", 3, {"ranking": [0, 0, 1]}, "exactly once"),
        ("ranking", 3, {"ranking": [0, 1]}, "all 3 completions"),
        ("rating", 1, {"scores": {"a": 8}}, "from 1 to 7"),
        ("rating", 1, {"scores": {"a": True}}, "from 1 to 7"),
        ("binary", 1, {"good": "maybe"}, "true or false"),
        ("critique", 1, {"critique": ""}, "critique is empty"),
        ("critique", 1, {"critique": "x" * 10_001}, "at most 10000"),
        ("pairwise", 2, {"choice": "left", "extra": 1}, "unknown label field 'extra'"),
    ]:
        with pytest.raises(LabelError, match=reason) as raised:
            validate_label(task, ["a"], k, value)
        assert "\n" not in str(raised.value)
    assert gold_agrees("rating", {"a": 4}, {"scores": {"a": 5}}) and not gold_agrees(
        "rating", {"a": 4}, {"scores": {"a": 6}}
    )
    assert gold_agrees("ranking", [2, 0, 1], {"ranking": [2, 1, 0]}) and not gold_agrees(
        "pairwise", 0, {"winner": None}
    )


def test_a_retried_submission_returns_the_stored_label_and_writes_nothing(store, samples_file):
    project, _, (ann, other), _ = project_with_members(store, samples_file, 2)
    task = store.next_task(project.id, ann)
    first = store.submit_label(task.assignment_id, ann, {"choice": "right"}, "key-1", 4.5)
    again = store.submit_label(task.assignment_id, ann, {"choice": "left"}, "key-1", 9.0)
    assert not first.duplicate and again.duplicate
    assert (again.id, again.value, again.created_at) == (first.id, first.value, first.created_at)
    assert count(store, m.Label) == 1
    # The assignment is done: a new submission with a new key has nothing open to label.
    with pytest.raises(NotFound):
        store.submit_label(task.assignment_id, ann, {"choice": "left"}, "key-2", 1.0)
    # Another annotator can neither use the key nor label someone else's assignment.
    with pytest.raises(NotFound):
        store.submit_label(task.assignment_id, other, {"choice": "left"}, "key-1", 1.0)
    theirs = store.next_task(project.id, other)
    with pytest.raises(NotFound):
        store.submit_label(theirs.assignment_id, ann, {"choice": "left"}, "key-3", 1.0)
    with pytest.raises(LabelError):
        store.submit_label(theirs.assignment_id, other, {"choice": "up"}, "key-4", 1.0)
    with pytest.raises(LabelError, match="seconds"):
        store.submit_label(theirs.assignment_id, other, {"choice": "left"}, "key-4", float("nan"))
    assert count(store, m.Label) == 1


def test_each_item_goes_to_overlap_distinct_annotators_and_gold_items_to_everyone(store, samples_file, tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"prompt": "2+2?", "completions": ["4", "5"], "answer": 0}])
    project, _, ann, _ = project_with_members(store, samples_file, 4, overlap=2, gold=gold, gold_rate=0.5)
    done = label_in_turns(store, project.id, ann)
    per_item = Counter(t.item_id for tasks in done.values() for t in tasks)
    gold_id = next(t.item_id for tasks in done.values() for t in tasks if t.is_gold)
    assert per_item.pop(gold_id) == 4  # every annotator labels the gold item once
    assert set(per_item.values()) == {2} and len(per_item) == project.num_items - 1
    for tasks in done.values():
        assert len({t.item_id for t in tasks}) == len(tasks)  # never the same item twice
    # each got the gold item as its 2nd task (gold_rate 0.5: every 2nd)
    assert all([t.is_gold for t in tasks][:2] == [False, True] for tasks in done.values())
    assert [t.position for t in done["ann0"]] == [1, 2, 3, 4]
    assert done["ann0"][0].total == project.num_items  # at first, as things stood, every item was open to it
    assert store.progress(project.id, ann[0]) == (4, 4)


def test_a_skipped_item_goes_to_someone_else_and_never_back(store, samples_file):
    project, _, (a, b), _ = project_with_members(store, samples_file, 2, overlap=1)
    first = store.next_task(project.id, a)
    store.skip(first.assignment_id, a)
    with pytest.raises(NotFound):
        store.skip(first.assignment_id, a)
    a_tasks = label_until_done(store, project.id, a)  # overlap 1: a takes everything else
    assert first.item_id not in {t.item_id for t in a_tasks} and len(a_tasks) == project.num_items - 1
    (b_task,) = label_until_done(store, project.id, b)
    assert b_task.item_id == first.item_id  # the freed slot went to someone else


def test_qualification_gates_the_queue_on_agreement_with_gold(store, samples_file, tmp_path):
    gold = write_jsonl(
        tmp_path / "gold.jsonl",
        [{"prompt": f"q{i}", "completions": ["good", "bad"], "answer": 0} for i in range(3)],
    )
    project, _, (good, bad), _ = project_with_members(
        store, samples_file, 2, gold=gold, qualification_items=2, qualification_threshold=1.0, gold_rate=0
    )
    for user, correct in ((good, True), (bad, False)):
        assert store.qualification_status(project.id, user.id) == "in_progress"
        for _ in range(2):
            task = store.next_task(project.id, user)
            assert task.is_qualification
            with pytest.raises(StoreError, match="cannot be skipped"):
                store.skip(task.assignment_id, user)
            displayed_good = task.completions.index("good")
            side = displayed_good if correct else 1 - displayed_good
            store.submit_label(task.assignment_id, user, {"choice": ["left", "right"][side]}, uuid.uuid4().hex, 1)
    assert store.qualification_status(project.id, good.id) == "qualified"
    assert store.qualification_status(project.id, bad.id) == "failed"
    assert store.next_task(project.id, bad) is None and store.progress(project.id, bad) == (2, 2)
    assert not store.next_task(project.id, good).is_gold


def test_instructions_seen_is_remembered_per_member(store, samples_file):
    project, admin, (ann,), _ = project_with_members(store, samples_file, 1)
    assert not store.instructions_seen(project.id, ann.id)
    store.mark_instructions_seen(project.id, ann.id)
    assert store.instructions_seen(project.id, ann.id)
    assert store.instructions_seen(project.id, admin.id)  # admins are never held up
    outsider = store.create_user("outsider", PASSWORD, "annotator")
    with pytest.raises(NotFound):
        store.instructions_seen(project.id, outsider.id)


# ---- who may see what ---------------------------------------------------------------------------


def test_everyone_sees_only_what_their_role_allows(store, samples_file):
    project, admin, (ann, other), (rev,) = project_with_members(store, samples_file, 2, reviewers=1)
    outsider = store.create_user("outsider", PASSWORD, "annotator")
    outside_reviewer = store.create_user("outrev", PASSWORD, "reviewer")
    task = store.next_task(project.id, ann)
    store.submit_label(task.assignment_id, ann, {"choice": "left"}, "k", 1)

    for stranger in (outsider, outside_reviewer):  # not members: the project does not exist for them
        assert store.projects_for(stranger) == []
        for call in (
            lambda u: store.project(project.id, u),
            lambda u: store.next_task(project.id, u),
            lambda u: store.progress(project.id, u),
            lambda u: store.disagreements(project.id, u),
            lambda u: store.label_rows(project.id, user=u),
            lambda u: store.set_gold(task.item_id, 0, u),
            lambda u: store.set_excluded(project.id, "ann0", True, u),
        ):
            with pytest.raises(NotFound):
                call(stranger)
    with pytest.raises(NotFound):
        store.project(project.id + 100, admin)
    assert [p.name for p in store.projects_for(admin)] == ["p"] == [p.name for p in store.projects_for(rev)]
    with pytest.raises(Forbidden):
        store.next_task(project.id, rev)  # reviewers review
    with pytest.raises(Forbidden):
        store.next_task(project.id, admin)  # an admin who is not an annotator of the project
    for forbidden in (
        lambda: store.disagreements(project.id, ann),
        lambda: store.label_rows(project.id, user=ann),
        lambda: store.set_gold(task.item_id, 0, ann),
        lambda: store.set_excluded(project.id, "ann1", True, ann),
        lambda: store.set_excluded(project.id, "ann1", True, rev),
        lambda: store.export(project.id, "preferences", "x.jsonl", user=rev),
        lambda: store.users(ann),
        lambda: store.add_members("p", ["outsider"], user=rev),
    ):
        with pytest.raises(Forbidden):
            forbidden()
    assert [r["annotator"] for r in store.label_rows(project.id, user=rev)] == ["ann0"]
    assert store.progress(project.id, other) == (0, project.num_items)
    assert store.progress(project.id, rev) == (0, 0)


def test_disagreements_reach_reviewers_who_can_set_gold(store, samples_file):
    project, _, (a, b), (rev,) = project_with_members(store, samples_file, 2, reviewers=1, overlap=2)
    for user, side in ((a, "left"), (b, "right")):
        label_until_done(store, project.id, user, {"choice": side})
    disagreeing = store.disagreements(project.id, rev)
    # Both saw each item in its own shuffled order, so "left" and "right" agree on some items only.
    rows = store.label_rows(project.id)
    winners: dict[int, set] = {}
    for row in rows:
        winners.setdefault(row["item_id"], set()).add(row["value"]["winner"])
    assert {d["item_id"] for d in disagreeing} == {i for i, w in winners.items() if len(w) > 1}
    assert all([x["annotator"] for x in d["labels"]] == ["ann0", "ann1"] for d in disagreeing)
    item_id = rows[0]["item_id"]
    store.set_gold(item_id, 1, rev)
    assert [r["gold_answer"] for r in store.label_rows(project.id) if r["item_id"] == item_id] == [1, 1]
    with pytest.raises(LabelError):
        store.set_gold(item_id, 5, rev)
    store.set_gold(item_id, None, rev)
    assert count(store, m.Item, is_gold=True) == 0


def test_an_excluded_annotator_gets_no_more_tasks_and_their_slots_are_freed(store, samples_file):
    project, admin, (a, b), _ = project_with_members(store, samples_file, 2, overlap=1)
    a_tasks = label_until_done(store, project.id, a, limit=2)
    store.set_excluded(project.id, "ann0", True, admin)
    assert store.next_task(project.id, a) is None
    b_items = {t.item_id for t in label_until_done(store, project.id, b)}
    assert {t.item_id for t in a_tasks} <= b_items and len(b_items) == project.num_items
    assert {r["annotator"] for r in store.label_rows(project.id, include_excluded=False)} == {"ann1"}
    assert len(store.label_rows(project.id)) == project.num_items + 2
    with pytest.raises(NotFound):
        store.set_excluded(project.id, "nobody", True, admin)


# ---- concurrency ----------------------------------------------------------------------------------


def test_concurrent_annotators_lose_nothing_duplicate_nothing_and_never_overfill(store, tmp_path):
    """20 threads for 6 annotators (several threads share an annotator, like tabs) label 30 items
    until the queue is empty, retrying every submission with the same key and skipping a few items."""
    overlap, annotators, threads_n = 3, 6, 20
    samples = [{"prompt": f"Question {i}?", "completions": [f"Answer {i}.", f"Reply {i}."]} for i in range(30)]
    samples_file = write_jsonl(tmp_path / "many.jsonl", samples)
    project, _, ann, _ = project_with_members(store, samples_file, annotators, overlap=overlap, gold_rate=0)
    acknowledged: list = []  # labels whose submission returned (and so must be durable)
    duplicates, skipped, errors = [], [], []
    lock = threading.Lock()

    def work(i: int) -> None:
        user = ann[i % annotators]
        try:
            while (task := store.next_task(project.id, user)) is not None:
                if (task.item_id * 7 + user.id) % 11 == 0:
                    try:
                        store.skip(task.assignment_id, user)
                        with lock:
                            skipped.append((task.item_id, user.id))
                    except NotFound:
                        pass  # another tab of this annotator labelled or skipped it first
                    continue
                key = f"{user.id}-{task.assignment_id}-{i}"
                try:
                    label = store.submit_label(task.assignment_id, user, {"choice": "left"}, key, 1.0)
                except NotFound:
                    continue  # another tab of this annotator submitted this assignment first
                retried = store.submit_label(task.assignment_id, user, {"choice": "right"}, key, 1.0)
                with lock:
                    acknowledged.append(label)
                    duplicates.append(retried.duplicate and retried.id == label.id)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(store, m.Assignment, status="open") == 0
    rows = store.label_rows(project.id)
    assert sorted(r["label_id"] for r in rows) == sorted(label.id for label in acknowledged)  # 0 lost
    assert all(duplicates) and len({label.id for label in acknowledged}) == len(acknowledged)  # 0 duplicated
    per_item = Counter(r["item_id"] for r in rows)
    assert max(per_item.values()) <= overlap  # none past its overlap
    assert len({(r["item_id"], r["annotator_id"]) for r in rows}) == len(rows)

    # A slot skipped after another annotator last asked for work is filled when they ask again.
    for user in ann:
        label_until_done(store, project.id, user)
    per_item = Counter(r["item_id"] for r in store.label_rows(project.id))
    with store.engine.connect() as conn:
        item_ids = conn.scalars(select(m.Item.id)).all()
    for item_id in item_ids:
        refused = sum(1 for skipped_item, _ in skipped if skipped_item == item_id)
        assert per_item[item_id] == min(overlap, annotators - refused)


def test_postgresql_hands_out_items_another_annotator_is_claiming_without_waiting(store, samples_file):
    """SKIP LOCKED: while one transaction holds the first item's row, the next annotator gets the
    second item at once instead of queueing behind the lock."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite runs one writer at a time (BEGIN IMMEDIATE)")
    project, _, (a,), _ = project_with_members(store, samples_file, 1)
    with store.engine.connect() as other:
        first = other.execute(
            select(m.Item.id).where(m.Item.is_gold.is_(False)).order_by(m.Item.position).limit(1).with_for_update()
        ).scalar()
        result: list = []
        worker = threading.Thread(target=lambda: result.append(store.next_task(project.id, a)))
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "next_task waited for a locked item"
        assert result[0].item_id != first
        other.rollback()
