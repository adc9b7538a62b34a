"""The labelling queue in the order that teaches the reward model most (`rlhflab feedback create --order`,
`rlhflab feedback reorder`): items come out in score order, a reorder changes what comes next, and
nothing already handed out moves. Every test runs on SQLite and on PostgreSQL (``db_url``)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from rlhflab.app import models as m
from rlhflab.app.store import Forbidden, Store
from rlhflab.cli import main
from rlhflab.commands.feedback import order_queue
from rlhflab.rewards.base import RewardSource
from rlhflab.rewards.ensemble import Objective, RewardEnsemble
from tests.app.conftest import FAST_HASHER, PASSWORD

# Six pairs, pair i's left completion n_i words long against a one-word right one: the gap in length
# sets how far apart a reward of length puts the pair.
WORDS = {"p0": 1, "p1": 4, "p2": 2, "p3": 6, "p4": 3, "p5": 5}
PAIRS = [(prompt, " ".join(["a"] * n), "b") for prompt, n in WORDS.items()]


def samples(path):
    path.write_text("".join(json.dumps({"prompt": p, "completions": [a, b]}) + "\n" for p, a, b in PAIRS))
    return path


def gold(path):
    path.write_text(json.dumps({"prompt": "gold", "completions": ["good", "bad"], "answer": 0}) + "\n")
    return path


def ensemble_by_length() -> RewardSource:
    """Two members: one scores every text 0, the other its length, so they disagree most on the pair
    whose completions differ most in length (the longest left completion)."""
    members = [lambda c, o: torch.zeros(len(o)), lambda c, o: torch.tensor([float(len(x)) for x in o])]
    ensemble = RewardEnsemble(members, [0.0, 0.0], Objective("mean"))
    return RewardSource("length ensemble", ensemble, is_model=True, ensemble=ensemble)


def handed_out(store, project_id, user, limit=100) -> list[str]:
    """The prompts of the tasks ``user`` gets, labelling each, in order."""
    prompts = []
    while len(prompts) < limit and (task := store.next_task(project_id, user)) is not None:
        store.submit_label(task.assignment_id, user, {"choice": "left"}, uuid.uuid4().hex, 1.0)
        prompts.append(task.prompt)
    return prompts


def positions(store, project_id) -> dict[str, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(m.Item.prompt, m.Item.position).where(m.Item.project_id == project_id))
        return {prompt: position for prompt, position in rows}


@pytest.fixture
def people(store):
    admin = store.create_user("admin", PASSWORD, "admin")
    annotators = [store.create_user(f"ann{i}", PASSWORD, "annotator") for i in range(2)]
    return admin, annotators


def test_an_uncertainty_queue_hands_out_the_pairs_the_ensemble_disagrees_on_most_first(store, people, tmp_path):
    _, (ann, _) = people
    project = store.create_project("p", "pairwise", samples(tmp_path / "s.jsonl"), overlap=1, gold_rate=0.0)
    store.add_members("p", [ann.username])
    assert order_queue(store, project.id, "uncertainty", ensemble_by_length()) > 0
    assert handed_out(store, project.id, ann) == ["p3", "p5", "p1", "p4", "p2", "p0"]


def test_a_reorder_changes_what_comes_next_and_moves_nothing_already_handed_out(store, people, tmp_path):
    admin, (first, second) = people
    project = store.create_project(
        "p", "pairwise", samples(tmp_path / "s.jsonl"), overlap=1, gold=gold(tmp_path / "g.jsonl"), gold_rate=0.0
    )
    store.add_members("p", [first.username, second.username])
    order_queue(store, project.id, "margin", ensemble_by_length())  # smallest gap first: p0, p2, p4, ...
    assert handed_out(store, project.id, first, limit=2) == ["p0", "p2"]
    held = store.next_task(project.id, second)  # open, not yet labelled
    assert held.prompt == "p4"
    before = positions(store, project.id)

    # the refresh, as after retraining: the widest gap first now (the uncertainty order)
    moved = order_queue(store, project.id, "uncertainty", ensemble_by_length())
    after = positions(store, project.id)
    assert moved > 0
    for prompt in ("p0", "p2", "p4", "gold"):  # labelled, assigned (overlap 1: full) or gold: never moved
        assert after[prompt] == before[prompt]
    assert store.next_task(project.id, second).assignment_id == held.assignment_id  # the open task stays
    assert handed_out(store, project.id, first) == ["p3", "p5", "p1"]
    with pytest.raises(Forbidden):
        store.reorder_items(project.id, {}, user=first)


def test_partly_labelled_items_are_reordered_with_the_rest_and_positions_stay_unique(store, people, tmp_path):
    _, (first, second) = people
    project = store.create_project("p", "pairwise", samples(tmp_path / "s.jsonl"), overlap=2, gold_rate=0.0)
    store.add_members("p", [first.username, second.username])
    assert handed_out(store, project.id, first, limit=1) == ["p0"]  # p0 still needs one more label
    items = {i["prompt"]: i["item_id"] for i in store.items_to_order(project.id)}
    assert set(items) == {p for p, _, _ in PAIRS}
    store.reorder_items(project.id, {items["p0"]: 1.0, items["p5"]: 3.0, items["p3"]: 2.0})
    ordered = sorted(positions(store, project.id).items(), key=lambda kv: kv[1])
    assert [p for p, _ in ordered] == ["p5", "p3", "p0", "p1", "p2", "p4"]  # unscored ones after, as they were
    assert handed_out(store, project.id, second) == ["p5", "p3", "p0", "p1", "p2", "p4"]


def feedback(*argv) -> int:
    return main(["feedback", *map(str, argv)])


def test_create_and_reorder_from_the_command_line(db_url, tmp_path, capsys):
    path = samples(tmp_path / "s.jsonl")
    # brevity (R* = words / 20 below 20 words) as the scorer: margin puts the closest lengths first
    assert feedback("create", "--db", db_url, "--name", "q", "--samples", path, "--overlap", 1,
                    "--gold_rate", 0, "--order", "margin", "--reward", "brevity") == 0  # fmt: skip
    with Store(db_url, password_hasher=FAST_HASHER) as store:
        order = [p for p, _ in sorted(positions(store, 1).items(), key=lambda kv: kv[1])]
    assert order == ["p0", "p2", "p4", "p1", "p5", "p3"]
    assert feedback("reorder", "--db", db_url, "--project", "q", "--order", "random", "--seed", 5) == 0
    assert "items moved in the queue (random order)" in capsys.readouterr().out
    with Store(db_url, password_hasher=FAST_HASHER) as store:
        shuffled = [p for p, _ in sorted(positions(store, 1).items(), key=lambda kv: kv[1])]
    assert shuffled != order and sorted(shuffled) == sorted(order)


def test_an_order_that_cannot_be_scored_is_a_one_line_error_and_no_project(db_url, tmp_path, capsys):
    path = samples(tmp_path / "s.jsonl")
    for extra, message in (
        (["--order", "uncertainty"], "give --reward DIR"),
        (["--order", "uncertainty", "--reward", "brevity"], "needs an ensemble"),
        (["--order", "margin", "--reward", "brevity", "--task", "ranking"], "a pairwise project only"),
        (["--reward", "brevity"], "not --order position"),
    ):
        assert feedback("create", "--db", db_url, "--name", "q", "--samples", path, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    with Store(db_url, password_hasher=FAST_HASHER) as store:
        assert store.projects_for(store.create_user("root", PASSWORD, "admin")) == []


def test_the_loop_orders_each_rounds_project_with_the_last_rounds_reward_model(db_url, tmp_path):
    from rlhflab.commands.iterate import LoopConfig, _app_feedback
    from rlhflab.errors import ConfigError

    with pytest.raises(ConfigError, match="--reward_ensemble K >= 2"):
        LoopConfig(order="uncertainty").validate()
    cfg = LoopConfig(feedback="app", db=db_url, order="margin", wait_timeout=0.01, poll_seconds=0.01)
    round_dir = tmp_path / "run" / "round-02"
    round_dir.mkdir(parents=True)
    # brevity stands in for round 1's reward model (any reward source scores margins)
    with pytest.raises(ConfigError, match="0 of 6 labels"):  # no one labels: the wait times out, the run resumes later
        _app_feedback(cfg, tmp_path / "run", 2, samples(tmp_path / "s.jsonl"), round_dir / "p.jsonl", Path("brevity"))
    with Store(db_url, password_hasher=FAST_HASHER) as store:
        order = [p for p, _ in sorted(positions(store, 1).items(), key=lambda kv: kv[1])]
    assert order == ["p0", "p2", "p4", "p1", "p5", "p3"]
