"""Exports: people's labels become the records ``rlhflab.data`` reads, and a reward model trains on them."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from sqlalchemy import func, select

from rlhflab.app import models as m
from rlhflab.app.store import Store, StoreError
from rlhflab.data import LanguageFeedback, read_records
from rlhflab.errors import DataError
from tests.app.conftest import FAST_HASHER, PASSWORD


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def labelled_project(store, samples_file, task, answers, annotators=2, overlap=None, **options):
    """A project of ``task`` that ``annotators`` annotators label completely (each item ``overlap``
    times, default: by all of them); ``answers(shown_task, user)`` gives each label value, in
    displayed positions as a page posts it."""
    store.create_user("admin", PASSWORD, "admin")
    users = [store.create_user(f"ann{i}", PASSWORD, "annotator") for i in range(annotators)]
    project = store.create_project("p", task, samples_file, overlap=overlap or annotators, gold_rate=0, **options)
    store.add_members("p", [u.username for u in users])
    for user in users:
        while (shown := store.next_task(project.id, user)) is not None:
            store.submit_label(shown.assignment_id, user, answers(shown, user), uuid.uuid4().hex, 2.5)
    return project, users


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the record type the export adds to ---------------------------------------------------------


def test_language_feedback_takes_an_optional_correction_validated_like_a_completion():
    record = LanguageFeedback("Say hi.", "Go away.", "Rude.", correction="Hello!")
    assert record.to_dict()["correction"] == "Hello!"
    assert LanguageFeedback("Say hi.", "Go away.", "Rude.").correction is None
    chat = [{"role": "assistant", "content": "Hello!"}]
    assert LanguageFeedback("Say hi.", "Go away.", "Rude.", correction=chat).correction == chat
    for bad, problem in (("  ", "is empty"), (3, "expected a string or a list"), ([{"role": "user", "content": "x"}], "has no non-empty assistant")):  # fmt: skip
        with pytest.raises(DataError, match=f"field 'correction': {problem}"):
            LanguageFeedback("Say hi.", "Go away.", "Rude.", correction=bad)
    row = {"prompt": "p", "completion": "c", "feedback": "f", "correction": ""}
    with pytest.raises(DataError, match=r"^f.jsonl:4: field 'correction': is empty"):
        LanguageFeedback.from_dict(row, "f.jsonl", 4)


# ---- each kind ----------------------------------------------------------------------------------


def test_pairwise_labels_export_as_preferences_skipping_ties_and_both_bad(store, samples_file, tmp_path):
    def answers(shown, user):  # ann0 prefers what was shown left; ann1 calls the first item a tie, then both bad
        if user.username == "ann0":
            return {"choice": "left"}
        return {"choice": "tie" if shown.position == 1 else "both_bad" if shown.position == 2 else "right"}

    project, (ann0, _) = labelled_project(store, samples_file, "pairwise", answers)
    out = tmp_path / "prefs.jsonl"
    counts = store.export("p", "preferences", out)
    assert (counts["labels"], counts["tie_skipped"], counts["both_bad_skipped"]) == (12, 1, 1)
    assert counts["records"] == 10
    prefs = read_records(out, "preference")
    rows = read_jsonl(out)
    labels = {r["label_id"]: r for r in store.label_rows(project.id)}
    for pref, row in zip(prefs, rows):
        label = labels[row["label_id"]]
        winner = label["value"]["winner"]
        assert (pref.chosen, pref.rejected) == (label["completions"][winner], label["completions"][1 - winner])
        assert pref.annotator == label["annotator"] and row["annotator_id"] == label["annotator_id"]
        assert (row["item_id"], row["project"], row["seconds"], row["gold"]) == (label["item_id"], "p", 2.5, False)
        assert row["shown_order"] == label["shown_order"] and row["swapped"] == (label["shown_order"] == [1, 0])
    # ann0 always chose "left": what was shown on the left, whichever completion that was
    for row in rows:
        if row["annotator"] == "ann0":
            label = labels[row["label_id"]]
            assert row["chosen"] == label["completions"][row["shown_order"][0]]


def test_rankings_export_as_rankings_and_as_their_implied_preferences(store, samples_file, tmp_path):
    project, _ = labelled_project(store, samples_file, "ranking", lambda t, u: {"ranking": list(range(len(t.completions)))[::-1]}, annotators=1)  # fmt: skip
    store.export("p", "rankings", tmp_path / "rankings.jsonl")
    rankings = read_records(tmp_path / "rankings.jsonl", "ranking")
    labels = store.label_rows(project.id)
    for ranking, label in zip(rankings, labels):
        # displayed positions ranked last-shown first: the original indices in reverse shown order
        assert ranking.completions == [label["completions"][i] for i in reversed(label["shown_order"])]
    counts = store.export("p", "preferences", tmp_path / "prefs.jsonl")
    k = [len(r.completions) for r in rankings]
    assert (
        counts["records"]
        == sum(n * (n - 1) // 2 for n in k)
        == len(read_records(tmp_path / "prefs.jsonl", "preference"))
    )


def test_ratings_export_one_likert_row_per_attribute_and_binary_on_the_binary_scale(store, samples_file, tmp_path):
    attributes = ["helpfulness", "harmlessness"]
    labelled_project(
        store,
        samples_file,
        "rating",
        lambda t, u: {"scores": {"helpfulness": 1 + t.position % 7, "harmlessness": 7}},
        annotators=1,
        attributes=attributes,
    )
    out = tmp_path / "ratings.jsonl"
    counts = store.export("p", "ratings", out)
    ratings, rows = read_records(out, "rating"), read_jsonl(out)
    assert counts["records"] == 2 * counts["labels"] == 2 * 14
    assert {r.scale for r in ratings} == {"likert:7"}
    assert [r["attribute"] for r in rows[:2]] == attributes
    assert [r.score for r, row in zip(ratings, rows) if row["attribute"] == "harmlessness"] == [7.0] * 14

    user = store.users()[1]
    project = store.create_project("b", "binary", samples_file, overlap=1)
    store.add_members("b", [user.username])
    while (shown := store.next_task(project.id, user)) is not None:
        store.submit_label(shown.assignment_id, user, {"good": shown.position % 2 == 0}, uuid.uuid4().hex, None)
    store.export("b", "ratings", tmp_path / "binary.jsonl")
    verdicts = read_records(tmp_path / "binary.jsonl", "rating")
    assert {r.scale for r in verdicts} == {"binary"} and [r.score for r in verdicts][:4] == [0.0, 1.0, 0.0, 1.0]


def test_critiques_export_as_language_feedback_with_corrections(store, samples_file, tmp_path):
    def answers(shown, user):
        return {"critique": f"Critique {shown.position}.", "correction": "Better." if shown.position == 1 else None}

    labelled_project(store, samples_file, "critique", answers, annotators=1)
    store.export("p", "language", tmp_path / "language.jsonl")
    feedback = read_records(tmp_path / "language.jsonl", "language_feedback")
    assert [f.feedback for f in feedback][:2] == ["Critique 1.", "Critique 2."]
    assert [f.correction for f in feedback][:2] == ["Better.", None]


def test_excluded_annotators_are_left_out_unless_asked_for(store, samples_file, tmp_path):
    labelled_project(store, samples_file, "pairwise", lambda t, u: {"choice": "left"})
    admin = store.users()[0]
    store.set_excluded("p", "ann1", True, admin)
    kept = store.export("p", "preferences", tmp_path / "kept.jsonl")
    assert (kept["records"], kept["excluded_labels"]) == (6, 6)
    assert {p.annotator for p in read_records(tmp_path / "kept.jsonl", "preference")} == {"ann0"}
    everyone = store.export("p", "preferences", tmp_path / "all.jsonl", include_excluded=True)
    assert everyone["records"] == 12


def test_an_export_reads_one_consistent_snapshot(store, samples_file):
    """Labels committed while an export reads are not half in it: the read transaction sees the
    database as of its first statement (REPEATABLE READ on PostgreSQL, a WAL snapshot on SQLite)."""
    project, _ = labelled_project(store, samples_file, "pairwise", lambda t, u: {"choice": "left"}, overlap=3)
    late = store.create_user("late", PASSWORD, "annotator")
    store.add_members("p", ["late"])
    with store._read() as snapshot:
        before = snapshot.scalar(select(func.count(m.Label.id)))

        def label_one():
            shown = store.next_task(project.id, late)
            store.submit_label(shown.assignment_id, late, {"choice": "left"}, "late-key", 1.0)

        writer = threading.Thread(target=label_one)
        writer.start()
        writer.join(timeout=30)
        assert not writer.is_alive(), "a writer waited for a reader"
        assert snapshot.scalar(select(func.count(m.Label.id))) == before == 12
    assert len(store.label_rows(project.id)) == 13


# ---- files --------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'f.db'}", password_hasher=FAST_HASHER) as opened:
        yield opened


def test_parquet_and_save_to_disk_exports_load_as_records(sqlite_store, samples_file, tmp_path):
    labelled_project(sqlite_store, samples_file, "pairwise", lambda t, u: {"choice": "right"})
    jsonl = read_records(sqlite_store.export("p", "preferences", tmp_path / "p.jsonl")["output"], "preference")
    text_only = [p for p in jsonl if isinstance(p.prompt, str)]
    # Arrow needs one type per column: a file mixing chat and string prompts is JSONL-only.
    with pytest.raises(DataError, match="export to .jsonl instead"):
        sqlite_store.export("p", "preferences", tmp_path / "p.parquet")
    assert not (tmp_path / "p.parquet").exists()
    assert text_only

    project = sqlite_store.create_project("strings", "pairwise", write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Hi?", "completions": ["a", "b"]}]))  # fmt: skip
    user = sqlite_store.users()[1]
    sqlite_store.add_members("strings", [user.username])
    shown = sqlite_store.next_task(project.id, user)
    sqlite_store.submit_label(shown.assignment_id, user, {"choice": "left"}, "k", 1.0)
    for output, fmt in ((tmp_path / "s.parquet", "parquet"), (tmp_path / "s_dataset", "dataset")):
        counts = sqlite_store.export("strings", "preferences", output)
        assert counts["format"] == fmt
        (pref,) = read_records(output, "preference")
        assert pref.chosen == shown.completions[0] and pref.annotator == user.username


def test_a_bad_export_is_one_line_and_writes_nothing(sqlite_store, samples_file, tmp_path):
    sqlite_store.create_project("p", "pairwise", samples_file)
    for kind, output, problem in (
        ("preferences", tmp_path / "none.jsonl", "no preferences to export"),
        ("ratings", tmp_path / "r.jsonl", "export as preferences, not ratings"),
        ("preferences", tmp_path / "p.csv", "unsupported output type '.csv'"),
        ("votes", tmp_path / "v.jsonl", "unknown export kind 'votes'"),
    ):
        with pytest.raises(StoreError, match=problem) as raised:
            sqlite_store.export("p", kind, output)
        assert "\n" not in str(raised.value) and not output.exists()
    assert list(tmp_path.glob(".*.tmp")) == []


def test_exported_preferences_train_a_reward_model(sqlite_store, tmp_path, model_cache):
    """The export is an ordinary preference file: ``rlhflab reward --data FILE`` trains on it."""
    from rlhflab.cli import main

    samples = [{"prompt": f"Rate {i}.", "completions": [f"good answer {i}", f"bad {i}"]} for i in range(12)]
    labelled_project(sqlite_store, write_jsonl(tmp_path / "s.jsonl", samples), "pairwise", lambda t, u: {"choice": "left"})  # fmt: skip
    data = tmp_path / "prefs.jsonl"
    assert sqlite_store.export("p", "preferences", data)["records"] == 24
    run = tmp_path / "run"
    options = ["--batch_size", "8", "--max_steps", "2", "--progress", "false", "--max_length", "64"]
    assert main(["reward", "--model", "tiny-reward", "--data", str(data), "--output_dir", str(run), *options]) == 0
    assert (run / "reward_model" / "config.json").exists()
    report = json.loads((run / "reward_report.json").read_text())
    assert report["heldout_records"] >= 1
