"""``rlhflab loop --feedback app`` end to end on tiny models, on SQLite and PostgreSQL: the loop runs in
a thread and waits on each round's project while two annotators label it through the web app's
forms, as a browser would; the round's export is what its reward model trains on, and round 2's
retraining data holds both rounds' labels. A round that timed out waiting resumes on the same
project, with the labels given in between kept."""

from __future__ import annotations

import html
import json
import re
import threading
import time
from pathlib import Path

import pytest

from rlhflab.app.store import ProjectInfo, Store
from rlhflab.app.web import create_app
from rlhflab.commands.iterate import LoopConfig, run_loop
from rlhflab.data import read_records
from rlhflab.errors import ConfigError
from tests.app.web_fixtures import PASSWORD, World, hidden_fields, start_labelling
from tests.test_loop import TINY

ANNOTATORS = ("ann1", "ann2")
TIMEOUT = 120.0  # seconds any one wait may take before the test fails (the loop's own wait_timeout too)
# test_loop's tiny loop, its labels from people: round r's project is "run-round-0r"; 8 feedback
# prompts a round make 8 pairs (4 samples a prompt, in disjoint pairs).
LOOP = {
    **{k: v for k, v in TINY.items() if k not in ("rounds", "feedback_prompts")},
    "feedback": "app",
    "annotators": ",".join(ANNOTATORS),
    "overlap": 1,
    "poll_seconds": 0.1,
    "seed": 0,
}
SIDES = re.compile(r'data-side="(left|right)".*?<div class="text">(.*?)</div>', re.S)
ITEM_ID = re.compile(r'data-item-id="(\d+)"')


class LoopThread:
    """``run_loop(cfg)`` in a daemon thread (a failed test does not wait on its polling), keeping
    its exception for the test to raise."""

    def __init__(self, cfg: LoopConfig):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self.thread.start()

    def _run(self, cfg: LoopConfig) -> None:
        try:
            run_loop(cfg)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        self.check()
        assert not self.thread.is_alive(), f"the loop did not finish within {TIMEOUT:g} s"


def wait_for(what: str, condition, loop: LoopThread | None = None):
    """Poll ``condition()`` until it returns something truthy (and return that), failing after
    TIMEOUT seconds, or at once with the loop's own error if it stopped with one."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        if loop is not None:
            loop.check()
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def annotators_world(store: Store, tmp_path: Path) -> World:
    """The app over ``store`` with two annotators and no admin (the loop makes them members)."""
    users = {name: store.create_user(name, PASSWORD, "annotator") for name in ANNOTATORS}
    return World(store=store, app=create_app(store=store), tmp=tmp_path, users=users)


def round_project(world: World, round_number: int, loop: LoopThread) -> ProjectInfo:
    """Round r's project, once the loop has made it and both annotators are its members."""
    name = f"run-round-{round_number:02d}"

    def ready():
        seen = [[p for p in world.store.projects_for(world.users[a]) if p.name == name] for a in ANNOTATORS]
        return seen[0] if all(seen) else None

    [project] = wait_for(f"project {name} with both annotators", ready, loop)
    return project


def label_through_http(world: World, project: ProjectInfo, first_visit: bool = True, limit: int | None = None):
    """The two annotators take turns labelling ``project`` through its HTML form until no item is
    left for either (or ``limit`` labels are given), each preferring the response with more 'e's
    (the quick oracle is keyword:e). Returns what each chose, as shown on the page."""
    clients = [world.client(name) for name in ANNOTATORS]
    url = f"/projects/{project.id}/label"
    pages = [start_labelling(c, project) if first_visit else c.get(url).text for c in clients]
    given: list[dict] = []
    while limit is None or len(given) < limit:
        turns = [i for i, page in enumerate(pages) if 'id="label-form"' in page]
        if not turns:
            break
        for i in turns:
            if limit is not None and len(given) == limit:
                break
            page, client = pages[i], clients[i]
            shown = dict((side, html.unescape(text)) for side, text in SIDES.findall(page))
            left, right = shown["left"], shown["right"]
            choice = "left" if left.count("e") >= right.count("e") else "right"
            fields = hidden_fields(page, "label-form")
            response = client.post(url, {**fields, "choice": choice})
            assert response.status_code == 303, response.text
            chosen, rejected = (left, right) if choice == "left" else (right, left)
            item_id = int(ITEM_ID.search(page).group(1))
            given.append(
                {"annotator": client.user.username, "item_id": item_id, "chosen": chosen, "rejected": rejected}
            )
            after = client.get(response.headers["location"])
            assert after.status_code == 200, after.text
            pages[i] = after.text
    return given


def check_export(run_dir: Path, round_number: int, given: list[dict]) -> None:
    """The round's preferences.jsonl is exactly the labels given: one record per label, with the
    annotator, the item and the texts as they were shown, each a pair of the round's samples."""
    folder = run_dir / f"round-{round_number:02d}"
    rows = [json.loads(line) for line in (folder / "preferences.jsonl").read_text().splitlines()]

    def key(row):
        return row["annotator"], row["item_id"], row["chosen"], row["rejected"]

    assert sorted(map(key, rows)) == sorted(map(key, given))
    samples = read_records(folder / "samples.jsonl", "samples")
    for row in rows:
        assert any(
            s.prompt == row["prompt"] and {row["chosen"], row["rejected"]} <= set(s.completions) for s in samples
        ), row


def test_people_label_each_round_in_the_app_and_the_loop_trains_on_it(db_url, store, tmp_path):
    run_dir = tmp_path / "run"
    world = annotators_world(store, tmp_path)
    cfg = LoopConfig(**LOOP, rounds=2, feedback_prompts=16, db=db_url, wait_timeout=TIMEOUT, output_dir=str(run_dir))
    loop = LoopThread(cfg)

    given = {}
    for r in (1, 2):
        project = round_project(world, r, loop)
        assert not (run_dir / f"round-{r:02d}" / "preferences.jsonl").exists()  # it waits for people
        given[r] = label_through_http(world, project)
        assert len(given[r]) == project.num_items > 0
        assert {g["annotator"] for g in given[r]} == set(ANNOTATORS)
        assert len({g["item_id"] for g in given[r]}) == project.num_items  # overlap 1: each item once
        wait_for(f"round {r}'s export", (run_dir / f"round-{r:02d}" / "preferences.jsonl").exists, loop)
    loop.join()
    assert [p.name for p in store.projects_for(world.users["ann1"])] == ["run-round-01", "run-round-02"]

    for r, trained_on in ((1, len(given[1])), (2, len(given[1]) + len(given[2]))):
        check_export(run_dir, r, given[r])
        reward_dir = run_dir / f"round-{r:02d}" / "reward"
        assert (reward_dir / "reward_model").is_dir()
        report = json.loads((reward_dir / "reward_report.json").read_text())
        assert report["train_records"] + report["heldout_records"] == trained_on
    # round 2 retrains on every label so far: round 1's export, then round 2's
    first, second = (read_records(run_dir / f"round-0{r}" / "preferences.jsonl", "preference") for r in (1, 2))
    assert read_records(run_dir / "round-02" / "reward_data.jsonl", "preference") == first + second
    assert not (run_dir / "round-01" / "reward_data.jsonl").exists()  # round 1 trains on its export
    assert not (run_dir / "round-01" / "shift.json").exists()
    assert (run_dir / "round-02" / "shift.json").is_file()

    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert [row["round"] for row in rounds] == [1, 2]
    assert [row["labels"] for row in rounds] == [len(given[1]), len(given[2])]
    assert rounds[0]["shift"] is None and rounds[1]["shift"] is not None
    assert "app feedback" in (run_dir / "report.md").read_text()


def test_a_round_that_timed_out_resumes_on_its_project(db_url, store, tmp_path):
    run_dir = tmp_path / "run"
    world = annotators_world(store, tmp_path)
    cfg = LoopConfig(**LOOP, rounds=1, feedback_prompts=8, db=db_url, wait_timeout=1.0, output_dir=str(run_dir))
    with pytest.raises(ConfigError, match=re.escape(f"--resume {run_dir}")):
        run_loop(cfg)
    assert not (run_dir / "round-01" / "preferences.jsonl").exists()
    project = store.project("run-round-01")
    half = project.num_items // 2
    assert half >= 1

    given = label_through_http(world, project, limit=half)  # while no loop runs
    assert len(store.label_rows(project.id)) == half
    resumed = LoopConfig(resume=str(run_dir), db=db_url, poll_seconds=0.1, wait_timeout=TIMEOUT)
    loop = LoopThread(resumed)
    given += label_through_http(world, project, first_visit=False)
    assert len(given) == project.num_items
    loop.join()

    # the same project, not a second one; the labels of both sittings, each once
    assert [p.id for p in store.projects_for(world.users["ann1"])] == [project.id]
    assert len(store.label_rows(project.id)) == project.num_items
    check_export(run_dir, 1, given)
    assert [row["labels"] for row in json.loads((run_dir / "rounds.json").read_text())] == [len(given)]
