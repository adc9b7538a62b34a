"""``rlhflab feedback ...`` from the command line: the whole round trip, and one-line errors (exit 2)
that leave nothing half-made."""

from __future__ import annotations

import json
import uuid

import pytest

from rlhflab.app.store import Store
from rlhflab.cli import main
from rlhflab.commands.feedback import PASSWORD_ENV
from rlhflab.data import read_records
from tests.app.conftest import FAST_HASHER, PASSWORD


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


def feedback(*argv) -> int:
    return main(["feedback", *map(str, argv)])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_help_lists_the_feedback_subcommands_and_serve(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  feedback" in out and "  serve" in out
    assert feedback() == 0
    out = capsys.readouterr().out
    for sub in ("create", "assign", "users", "invite", "stats", "export"):
        assert f"  {sub}" in out
    with pytest.raises(SystemExit) as exited:
        feedback("create", "--help")
    assert exited.value.code == 0 and "--qualification_items" in capsys.readouterr().out


def test_from_samples_to_an_exported_preference_file(db_url, samples_file, tmp_path, capsys, monkeypatch):
    password_file = tmp_path / "password.txt"
    password_file.write_text(PASSWORD + "\n")
    assert feedback("users", "--add", "boss", "--role", "admin", "--password_file", password_file, "--db", db_url) == 0
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    for name in ("ann0", "ann1"):
        assert feedback("users", "--add", name, "--db", db_url) == 0
    assert "added annotator 'ann1'" in capsys.readouterr().out
    assert feedback("users", "--db", db_url) == 0
    assert capsys.readouterr().out.split() == ["ann0", "annotator", "ann1", "annotator", "boss", "admin"]

    guide = tmp_path / "guide.md"
    guide.write_text("# How to choose\nPrefer the **kinder** reply.\n")
    assert feedback("create", "--name", "kind", "--samples", samples_file, "--task", "pairwise", "--overlap", 2, "--instructions", guide, "--db", db_url) == 0  # fmt: skip
    assert "created pairwise project 'kind' (id 1) with 6 items" in capsys.readouterr().out
    assert feedback("assign", "--project", "kind", "--users", "ann0, ann1", "--db", db_url) == 0
    assert feedback("invite", "--role", "reviewer", "--projects", "kind", "--db", db_url) == 0
    link = capsys.readouterr().out.strip().splitlines()[-1]
    assert link.startswith("/invite/")

    with Store(db_url, password_hasher=FAST_HASHER) as store:
        project = store.project("kind")
        assert project.instructions == guide.read_text() and project.overlap == 2
        assert store.invitation(link.removeprefix("/invite/")) == {"role": "reviewer", "projects": ["kind"]}
        for user in store.users()[:2]:
            while (shown := store.next_task(project.id, user)) is not None:
                store.submit_label(shown.assignment_id, user, {"choice": "left"}, uuid.uuid4().hex, 3.0)

    assert feedback("stats", "--project", "kind", "--db", db_url) == 0
    assert capsys.readouterr().out.strip()
    out = tmp_path / "kind.jsonl"
    assert feedback("export", "--project", "kind", "--kind", "preferences", "--output", out, "--db", db_url) == 0
    assert f"wrote 12 preferences from 12 labels to {out}" in capsys.readouterr().out
    prefs = read_records(out, "preference")
    assert len(prefs) == 12 and {p.annotator for p in prefs} == {"ann0", "ann1"}


def test_options_come_from_a_yaml_file_too(sqlite_url, samples_file, tmp_path):
    config = tmp_path / "project.yaml"
    config.write_text(f"name: rated\nsamples: {samples_file}\ntask: rating\nattributes: helpfulness,harmlessness\n")
    assert feedback("create", "--config", config, "--db", sqlite_url, "--overlap", 1) == 0
    with Store(sqlite_url, password_hasher=FAST_HASHER) as store:
        project = store.project("rated")
    assert (project.attributes, project.overlap) == (["helpfulness", "harmlessness"], 1)


def test_bad_input_is_a_one_line_error_with_status_2_and_nothing_made(sqlite_url, samples_file, tmp_path, capsys, monkeypatch):  # fmt: skip
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completions": ["a", "b"]}) + "\n{not json\n")
    assert feedback("create", "--name", "x", "--samples", bad, "--db", sqlite_url) == 2
    assert f"{bad}:2: malformed JSON" in one_line_error(capsys)
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "p", "completions": ["a", "b"], "answer": "left"}) + "\n")
    assert feedback("create", "--name", "x", "--samples", samples_file, "--gold", gold, "--db", sqlite_url) == 2
    assert f"{gold}:1: field 'answer'" in one_line_error(capsys)
    assert feedback("create", "--name", "x", "--samples", samples_file, "--instructions", tmp_path / "nope.md", "--db", sqlite_url) == 2  # fmt: skip
    assert "nope.md: instructions file not found" in one_line_error(capsys)
    with Store(sqlite_url, password_hasher=FAST_HASHER) as store:
        assert store.projects_for(store.create_user("root", PASSWORD, "admin")) == []  # nothing half-made

    assert feedback("create", "--name", "x", "--samples", samples_file, "--db", sqlite_url) == 0
    capsys.readouterr()
    assert feedback("create", "--name", "x", "--samples", samples_file, "--db", sqlite_url) == 2
    assert "project 'x' already exists" in one_line_error(capsys)
    assert feedback("create", "--samples", samples_file, "--db", sqlite_url) == 2
    assert "--name is required" in one_line_error(capsys)
    assert feedback("assign", "--project", "x", "--users", "ghost", "--db", sqlite_url) == 2
    assert "no user 'ghost'" in one_line_error(capsys)
    assert feedback("users", "--add", "alice", "--db", sqlite_url) == 2  # no password file, env or terminal
    assert PASSWORD_ENV in one_line_error(capsys)
    assert feedback("invite", "--projects", "missing", "--db", sqlite_url) == 2
    assert "no project 'missing'" in one_line_error(capsys)
    assert feedback("stats", "--project", "missing", "--db", sqlite_url) == 2
    one_line_error(capsys)

    existing = tmp_path / "prefs.jsonl"
    existing.write_text("earlier export\n")
    assert feedback("export", "--project", "x", "--output", existing, "--db", sqlite_url) == 2
    assert "no preferences to export" in one_line_error(capsys)
    assert existing.read_text() == "earlier export\n"  # an old file is not replaced by a failed export
    with pytest.raises(SystemExit) as exited:  # argparse refuses a choice not offered, as for every command
        feedback("export", "--project", "x", "--kind", "votes", "--output", existing, "--db", sqlite_url)
    assert exited.value.code == 2 and "invalid choice: 'votes'" in capsys.readouterr().err
    assert feedback("frobnicate") == 2
    assert "unknown feedback subcommand 'frobnicate'" in one_line_error(capsys)
    assert feedback("users", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none") == 2
    assert "cannot open database" in one_line_error(capsys)


def test_serve_says_where_it_listens_and_how_to_add_the_first_admin(sqlite_url, capsys, monkeypatch):
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: served.update(app=app, host=host, port=port))
    assert main(["serve", "--db", sqlite_url, "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert "open http://127.0.0.1:8123/" in out and "rlhflab feedback users --add NAME --role admin" in out
    assert served["host"] == "127.0.0.1" and served["port"] == 8123 and served["app"].state.store.url == sqlite_url
    Store(sqlite_url, password_hasher=FAST_HASHER).create_user("boss", PASSWORD, "admin")
    assert main(["serve", "--db", sqlite_url]) == 0
    assert "no admin yet" not in capsys.readouterr().out
