"""A live project (rlhflab.app.live): ``rlhflab serve --policy DIR --live_project NAME`` keeps the queue
filled with the policy's completions for new prompts as people label, never uses a prompt twice (a
restart included), records the policy in every export row, and survives a sampler that fails."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

from alembic import command
from sqlalchemy import inspect

from rlhflab.app import live
from rlhflab.app.db import alembic_config, make_engine, migrate
from rlhflab.app.live import LiveSampler, prompt_key
from rlhflab.app.store import Store
from rlhflab.cli import main
from rlhflab.commands.feedback import ServeConfig, live_sampler
from rlhflab.data import Prompt, Samples
from tests.app.conftest import FAST_HASHER, PASSWORD
from tests.app.web_fixtures import world  # noqa: F401

PROMPTS = ["Say hello.", "Name a colour.", "Describe the sea.", "Count to three.", "Name a fruit."]


def prompts_file(tmp_path, prompts=PROMPTS):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def live_project(store: Store, name: str = "arena", samples=None, **options):
    """A pairwise project the sampler fills, with annotator alice (one label per item, no gold)."""
    project = store.create_project(name, "pairwise", samples, overlap=1, gold_rate=0, **options)
    if not any(u.username == "alice" for u in store.users()):
        store.create_user("alice", PASSWORD, "annotator")
    store.add_members(project.id, ["alice"], "annotator")
    return project, next(u for u in store.users() if u.username == "alice")


def tiny_sampler(store: Store, prompts, buffer: int, **options) -> LiveSampler:
    """The sampler `rlhflab serve --policy tiny-policy --live_project arena` runs."""
    cfg = ServeConfig(
        db=store.url, policy="tiny-policy", live_project="arena", prompts=str(prompts), live_buffer=buffer,
        max_new_tokens=6, **options,
    )  # fmt: skip
    return live_sampler(cfg, store)


def label(store: Store, project_id: int, user, n: int) -> list:
    """``user`` labels ``n`` tasks (left wins); the tasks."""
    tasks = []
    for _ in range(n):
        task = store.next_task(project_id, user)
        assert task is not None
        store.submit_label(task.assignment_id, user, {"choice": "left"}, uuid.uuid4().hex, 1.0)
        tasks.append(task)
    return tasks


def labelled_prompts(store: Store, project: str) -> list[str]:
    return [prompt_key(row["prompt"]) for row in store.label_rows(project)]


def test_the_queue_is_topped_up_with_the_policys_pairs_as_items_are_labelled(db_url, model_cache, tmp_path):
    with Store(db_url, password_hasher=FAST_HASHER) as store:
        project, alice = live_project(store)
        sampler = tiny_sampler(store, "train", buffer=3)
        assert sampler.step() == 3  # one pair per prompt at --num_samples 2
        assert store.live_queue("arena")[0] == 3
        assert sampler.step() == 0  # full: nothing sampled
        label(store, project.id, alice, 2)
        assert store.live_queue("arena")[0] == 1
        assert sampler.step() == 2
        assert store.live_queue("arena")[0] == 3 and store.project("arena").num_items == 5
        rows = store.label_rows("arena")
        assert [r["policy"] for r in rows] == ["tiny-policy"] * 2
        assert all(len(set(r["completions"])) == 2 for r in rows)  # fresh, distinct completions of the policy


def test_no_prompt_is_sampled_twice_even_after_a_restart(db_url, model_cache, tmp_path, caplog):
    path = prompts_file(tmp_path, [*PROMPTS, PROMPTS[0]])  # a repeated line is one prompt
    sampled: list[str] = []

    def recording(sampler: LiveSampler) -> LiveSampler:
        inner = sampler.sample
        sampler.sample = lambda batch, seed: (sampled.extend(prompt_key(p.prompt) for p in batch), inner(batch, seed))[
            1
        ]
        return sampler

    with Store(db_url, password_hasher=FAST_HASHER) as store:
        project, alice = live_project(store)
        first = recording(tiny_sampler(store, path, buffer=2))
        first.step()
        label(store, project.id, alice, store.live_queue("arena")[0])
        first.step()
        passed_over = set(first.passed_over)
    with Store(db_url, password_hasher=FAST_HASHER) as store:  # the server restarts
        second = recording(tiny_sampler(store, path, buffer=2))
        assert set(second.order) == set(first.order) and len(second.order) == len(PROMPTS)
        label(store, project.id, alice, store.live_queue("arena")[0])
        second.step()
        label(store, project.id, alice, store.live_queue("arena")[0])
        with caplog.at_level(logging.INFO, logger=live.log.name):
            second.run(threading.Event())  # returns once the prompts run out
        assert store.live_queue("arena")[0] == 0
        used = labelled_prompts(store, "arena")  # every item's: each is labelled once
    assert len(used) == len(set(used))  # never twice in the project
    assert set(used) | passed_over | second.passed_over == {prompt_key(p) for p in PROMPTS}
    retried = [key for key in set(sampled) if sampled.count(key) > 1]
    assert set(retried) <= passed_over  # only a prompt that made no item is sampled again after a restart
    ran_out = [r for r in caplog.records if "prompts has been used" in r.getMessage()]
    assert len(ran_out) == 1 and second.exhausted


def test_export_rows_say_which_policy_sampled_each_pair(db_url, model_cache, tmp_path, samples_file, capsys):
    with Store(db_url, password_hasher=FAST_HASHER) as store:
        project, alice = live_project(store, samples=samples_file)  # a file's items, then the policy's
        from_file = project.num_items
        tiny_sampler(store, "train", buffer=from_file + 2).step()
        label(store, project.id, alice, store.project("arena").num_items)
    out = tmp_path / "prefs.jsonl"
    assert main(["feedback", "export", "--project", "arena", "--output", str(out), "--db", db_url]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    policies = [row["policy"] for row in rows]
    assert policies == [None] * from_file + ["tiny-policy"] * 2


def test_a_failing_sampler_logs_one_line_and_the_app_keeps_serving(world, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(live, "POLL_S", 0.01)
    monkeypatch.setattr(live, "MAX_BACKOFF_S", 0.05)
    project = world.store.create_project("arena", "pairwise", None, overlap=1, gold_rate=0)
    world.store.add_members(project.id, ["alice"], "annotator")
    failing = threading.Event()
    failing.set()

    def sample(batch: list[Prompt], seed: int) -> list[Samples]:
        if failing.is_set():
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")
        return [Samples(p.prompt, [f"{p.prompt} yes", f"{p.prompt} no"]) for p in batch]

    prompts = [Prompt(p) for p in PROMPTS]
    sampler = LiveSampler(world.store, "arena", prompts, sample, "runs/dpo/model", buffer=2)
    alice = world.client("alice")
    with caplog.at_level(logging.WARNING, logger=live.log.name):
        sampler.start()
        try:
            deadline = time.monotonic() + 10
            while len(caplog.records) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            answer = alice.get(f"/api/projects/{project.id}/next")
            assert answer.status_code == 200 and answer.json()["task"] is None  # still serving, nothing to do yet
            failing.clear()  # the policy recovers
            while world.store.live_queue("arena")[0] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            for _ in range(3):  # label as the queue is topped up behind the annotator
                task = alice.get(f"/api/projects/{project.id}/next").json()["task"]
                body = {
                    "assignment_id": task["assignment_id"],
                    "value": {"choice": "left"},
                    "idempotency_key": uuid.uuid4().hex,
                }
                assert alice.api_post(f"/api/projects/{project.id}/labels", body).status_code == 201
                while world.store.live_queue("arena")[0] < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
            assert world.store.live_queue("arena")[0] == 2
        finally:
            sampler.stop(timeout=5)
    failures = [r.getMessage() for r in caplog.records if "sampling failed" in r.getMessage()]
    assert failures and all("\n" not in line for line in failures)
    assert "sampling failed (RuntimeError: CUDA out of memory.); trying again in" in failures[0]
    assert {row["policy"] for row in world.store.label_rows("arena")} == {"runs/dpo/model"}
    assert world.store.project("arena").num_items == 5


def test_live_options_are_checked_in_one_line(tmp_path, capsys, model_cache):
    db = f"sqlite:///{tmp_path / 'live.db'}"

    def one_line_error(*argv) -> str:
        assert main([*map(str, argv), "--db", db]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "--live" in one_line_error("feedback", "create", "--name", "arena")
    assert main(["feedback", "create", "--name", "arena", "--live", "--db", db]) == 0
    assert "fill it with `rlhflab serve --policy DIR --live_project arena`" in capsys.readouterr().out
    assert "go together" in one_line_error("serve", "--live_project", "arena")
    assert "go together" in one_line_error("serve", "--policy", "tiny-policy")
    assert "--max_new_tokens is an option of a live project" in one_line_error("serve", "--max_new_tokens", "9")
    assert "no project 'nope'" in one_line_error("serve", "--policy", "tiny-policy", "--live_project", "nope")
    assert "needs at least 2 completions" in one_line_error(
        "serve", "--policy", "tiny-policy", "--live_project", "arena", "--num_samples", "1"
    )
    assert "--live_buffer" in one_line_error("serve", "--policy", "x", "--live_project", "arena", "--live_buffer", "0")
    assert "orders the --samples items" in one_line_error(
        "feedback", "create", "--name", "b", "--live", "--order", "random"
    )


def test_a_repeated_or_known_prompt_makes_no_second_item(store):
    project, _ = live_project(store)
    pair = ["Hello there!", "Go away."]
    assert store.add_live_items("arena", [Samples("Say hello.", pair), Samples("Say hello.", pair)], "p") == [1, 0]
    assert store.add_live_items("arena", [Samples("Say hello.", pair), Samples("Hi?", ["a", "a"])], "p") == [0, 0]
    assert store.live_queue("arena") == (1, {prompt_key("Say hello.")})


def test_migration_0004_adds_and_drops_the_item_policy_keeping_the_labels(db_url, samples_file):
    with Store(db_url, password_hasher=FAST_HASHER) as store:
        project, alice = live_project(store, samples=samples_file)
        label(store, project.id, alice, 2)
    engine = make_engine(db_url)
    try:
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0003")
        assert "policy" not in {c["name"] for c in inspect(engine).get_columns("items")}
        migrate(engine)
        assert "policy" in {c["name"] for c in inspect(engine).get_columns("items")}
    finally:
        engine.dispose()
    with Store(db_url, password_hasher=FAST_HASHER) as store:
        assert len(store.label_rows("arena")) == 2
