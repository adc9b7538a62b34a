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
    monkeypatch.setattr(uvicorn, "run", lambda app, **server: served.update(app=app, **server))
    assert main(["serve", "--db", sqlite_url, "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert "open http://127.0.0.1:8123/" in out and "rlhflab feedback users --add NAME --role admin" in out
    assert served["host"] == "127.0.0.1" and served["port"] == 8123 and served["app"].state.store.url == sqlite_url
    assert served["timeout_keep_alive"] == 5
    Store(sqlite_url, password_hasher=FAST_HASHER).create_user("boss", PASSWORD, "admin")
    assert main(["serve", "--db", sqlite_url]) == 0
    assert "no admin yet" not in capsys.readouterr().out


SAMPLES_ROW = {"prompt": "p", "completions": ["a", "b"]}


def labelled_project(url, samples_file) -> None:
    """Project 'x' on ``url`` with one label from annotator 'ann'."""
    assert feedback("create", "--name", "x", "--samples", samples_file, "--db", url) == 0
    with Store(url, password_hasher=FAST_HASHER) as store:
        user = store.create_user("ann", PASSWORD, "annotator")
        store.add_members("x", ["ann"])
        task = store.next_task(store.project("x").id, user)
        store.submit_label(task.assignment_id, user, {"choice": "left"}, "k", 1.0)


def test_export_never_replaces_a_folder_of_files_unless_told_to(sqlite_url, samples_file, tmp_path, capsys):
    labelled_project(sqlite_url, samples_file)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    assert feedback("export", "--project", "x", "--output", folder, "--db", sqlite_url) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert feedback("export", "--project", "x", "--output", folder, "--overwrite", "--db", sqlite_url) == 0
    assert not (folder / "thesis.tex").exists() and len(read_records(folder, "preference")) == 1


def test_hostile_command_line_input_is_a_one_line_error(sqlite_url, samples_file, tmp_path, capsys):
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    huge = tmp_path / "huge.jsonl"
    huge.write_text('{"prompt": "p", "completions": [' + "9" * 5001 + "]}\n")
    lonely = tmp_path / "lonely.jsonl"
    lonely.write_text(json.dumps(SAMPLES_ROW) + '\n{"prompt": "p", "completions": ["a", "b\\ud800"]}\n')
    for samples, expected in ((deep, f"{deep}:1: unreadable JSON"), (huge, f"{huge}:1: unreadable JSON"),
                              (lonely, f"{lonely}:2: field 'completions[1]': holds a lone UTF-16 surrogate")):  # fmt: skip
        assert feedback("create", "--name", "x", "--samples", samples, "--db", sqlite_url) == 2
        assert expected in one_line_error(capsys)
    nul = tmp_path / "nul.md"
    nul.write_text("read\x00me")
    assert feedback("create", "--name", "x", "--samples", samples_file, "--instructions", nul, "--db", sqlite_url) == 2
    assert f"{nul}: holds a NUL character" in one_line_error(capsys)
    assert (
        feedback("create", "--name", "x", "--samples", samples_file, "--instructions", "a\x00b", "--db", sqlite_url)
        == 2
    )
    assert "--instructions holds a NUL character" in one_line_error(capsys)
    assert feedback("create", "--name", "x\udcff", "--samples", samples_file, "--db", sqlite_url) == 2
    assert "--name holds a lone UTF-16 surrogate" in one_line_error(capsys)

    assert feedback("invite", "--ttl_hours", "inf", "--db", sqlite_url) == 2
    assert "at most" in one_line_error(capsys)
    latin1 = tmp_path / "password.txt"
    latin1.write_bytes("pässwörd long enough\n".encode("latin-1"))
    assert feedback("users", "--add", "ann", "--password_file", latin1, "--db", sqlite_url) == 2
    assert "not UTF-8" in one_line_error(capsys)

    labelled_project(sqlite_url, samples_file)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for output in (a_file / "out.jsonl", "/proc/rlhflab/out.jsonl", "/proc/self/out.jsonl"):
        assert feedback("export", "--project", "x", "--output", output, "--db", sqlite_url) == 2
        assert f"{output}: cannot write the export there" in one_line_error(capsys)


def test_serve_links_invitations_to_its_public_url(sqlite_url, monkeypatch, capsys):
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **server: served.update(app=app))
    assert main(["serve", "--db", sqlite_url, "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert served["app"].state.public_url == "http://0.0.0.0:8123"
    assert main(["serve", "--db", sqlite_url, "--public_url", "https://labels.example.org/"]) == 0
    assert served["app"].state.public_url == "https://labels.example.org"
    capsys.readouterr()
    assert main(["serve", "--db", sqlite_url, "--public_url", "labels.example.org"]) == 2
    assert "public URL" in one_line_error(capsys)


def test_serve_with_workers_hands_each_process_the_same_options(sqlite_url, monkeypatch, capsys):
    import uvicorn

    from rlhflab.app.web import SERVE_OPTIONS_ENV, app_from_environment

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **server: served.update(app=app, **server))
    monkeypatch.setenv(SERVE_OPTIONS_ENV, "{}")  # restored after the test, which run_serve changes
    argv = [
        "serve",
        "--db",
        sqlite_url,
        "--workers",
        "3",
        "--public_url",
        "https://l.example.org",
        "--read_timeout",
        "7",
    ]
    assert main(argv) == 0
    assert "3 workers" in capsys.readouterr().out
    assert served["app"] == "rlhflab.app.web:app_from_environment" and served["factory"] and served["workers"] == 3
    app = app_from_environment()  # as a worker process builds it, from the environment it inherits
    assert app.state.store.url == sqlite_url and app.state.public_url == "https://l.example.org"
    app.state.store.close()
    for bad in (["--workers", "0"], ["--read_timeout", "inf"], ["--read_timeout", "0"], ["--keep_alive_timeout", "0"]):
        assert main(["serve", "--db", sqlite_url, *bad]) == 2
        assert bad[0] in one_line_error(capsys)
