"""The turns task: a multi-turn conversation labelled turn by turn (good / bad beside every assistant
turn), from the samples file through validation, the store, agreement and adjudication to the export
as TRL conversational unpaired-preference rows that ``rlhflab kto`` reads."""

from __future__ import annotations

import json
import uuid

import pytest

from rlhflab.app.export import export_rows
from rlhflab.app.quality import agreement, annotator_quality
from rlhflab.app.store import StoreError
from rlhflab.app.tasks import (
    LabelError,
    answer_size,
    conversation,
    gold_agrees,
    items_from_samples,
    labels_disagree,
    read_gold,
    validate_gold,
    validate_label,
)
from rlhflab.cli import main
from rlhflab.data import Samples, dataset_format, dataset_type, read_records
from rlhflab.errors import DataError
from rlhflab.train.preference import unpaired_labels
from tests.app import web_fixtures
from tests.app.conftest import PASSWORD
from tests.app.test_quality import row
from tests.app.web_fixtures import hidden_fields, start_labelling

world = web_fixtures.world  # the fixture, by name
SYSTEM = {"role": "system", "content": "Be brief."}
USER_1 = {"role": "user", "content": "What is 2 + 2?"}
WRONG = {"role": "assistant", "content": "5."}
USER_2 = {"role": "user", "content": "Are you sure?"}
CHAT = [SYSTEM, USER_1, WRONG, USER_2]  # one assistant turn in the prompt, the reply makes two
SAMPLES = [
    {"prompt": CHAT, "completions": ["Sorry: it is 4.", "Yes.", "", "Yes."]},  # 2 usable, distinct replies
    {"prompt": [USER_1], "completions": [[{"role": "assistant", "content": "4."}]]},  # a message-list reply
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def labelled(store, tmp_path, answers, annotators=2):
    """A turns project over SAMPLES that ``annotators`` annotators label completely;
    ``answers(task, user)`` gives each label value."""
    store.create_user("admin", PASSWORD, "admin")
    users = [store.create_user(f"ann{i}", PASSWORD, "annotator") for i in range(annotators)]
    project = store.create_project("t", "turns", write_jsonl(tmp_path / "s.jsonl", SAMPLES), overlap=annotators, gold_rate=0)  # fmt: skip
    store.add_members("t", [u.username for u in users])
    for user in users:
        while (task := store.next_task(project.id, user)) is not None:
            store.submit_label(task.assignment_id, user, answers(task, user), uuid.uuid4().hex, 1.5)
    return project, users


# ---- items and answers --------------------------------------------------------------------------


def test_a_turns_item_is_a_conversation_and_one_usable_distinct_reply():
    records = [Samples.from_dict(r) for r in SAMPLES]
    items = items_from_samples("turns", records)
    assert [(p == CHAT, c) for p, c in items[:2]] == [(True, ["Sorry: it is 4."]), (True, ["Yes."])]
    assert len(items) == 3
    assert conversation(CHAT, "Yes.")[-1] == {"role": "assistant", "content": "Yes."}
    assert [answer_size("turns", p, c) for p, c in items] == [2, 2, 1]
    assert answer_size("binary", CHAT, ["Yes."]) == 1


@pytest.mark.parametrize(
    "prompt, problem",
    [
        ("What is 2 + 2?", "is a string, but a turns item is a conversation.*use --task binary"),
        ([WRONG, USER_2], "opens with an assistant turn"),
        ([USER_1, {"role": "assistant", "content": " "}, USER_2], "message 1 is an empty assistant turn"),
    ],
)
def test_a_prompt_that_is_no_conversation_makes_no_turns_item(prompt, problem):
    with pytest.raises(LabelError, match=f"^samples record 1: field 'prompt' {problem}"):
        items_from_samples("turns", [Samples(prompt, ["4."])])


def test_an_answer_gives_every_assistant_turn_a_boolean_verdict():
    assert validate_label("turns", [], 2, {"turns": [False, True]}) == {"turns": [False, True]}
    for value, problem in [
        ({"turns": [True]}, r"for each of the 2 assistant turns, got 1$"),
        ({"turns": [True, False, True]}, r"each of the 2 assistant turns, got 3$"),
        ({"turns": "yes"}, r"each of the 2 assistant turns, got a str$"),
        ({"turns": [True, "false"]}, r"^turns\[1\] must be true or false, got 'false'$"),
        ({"turns": [1, True]}, r"^turns\[0\] must be true or false, got 1$"),
        ({"turns": [True, None]}, r"^turns\[1\] must be true or false, got None$"),
        ({"good": True}, r"^unknown label field 'good'; expected turns$"),
        ({}, r"got a NoneType$"),
    ]:
        with pytest.raises(LabelError, match=problem):
            validate_label("turns", [], 2, value)


def test_turns_disagree_when_any_turn_does():
    assert not labels_disagree("turns", [{"turns": [True, False]}, {"turns": [True, False]}])
    assert labels_disagree("turns", [{"turns": [True, False]}, {"turns": [True, True]}])
    assert not labels_disagree("turns", [{"turns": [True, False]}])


def test_a_turns_gold_row_gives_every_assistant_turn_a_verdict(tmp_path):
    good = {"prompt": CHAT, "completions": ["Sorry: it is 4."], "answer": [False, True]}
    [(prompt, completions, answer)] = read_gold(write_jsonl(tmp_path / "gold.jsonl", [good]), "turns", [])
    assert (prompt, completions, answer) == (CHAT, ["Sorry: it is 4."], [False, True])
    for bad, field, problem in [
        ({**good, "answer": [True]}, "answer", "each of the 2 assistant turns, got 1"),
        ({**good, "answer": [True, "no"]}, "answer", r"turns\[1\] must be true or false"),
        ({**good, "completions": ["4.", "5."]}, "completions", "judges exactly 1 completion, got 2"),
        ({**good, "prompt": "What is 2 + 2?"}, "prompt", "is a string, but a turns item is a conversation"),
    ]:
        path = write_jsonl(tmp_path / "bad.jsonl", [good, bad])
        with pytest.raises(DataError, match=f"bad.jsonl:2: field '{field}': .*{problem}"):
            read_gold(path, "turns", [])
    assert validate_gold("turns", [], 2, [False, True]) == [False, True]


def test_a_turns_label_agrees_with_gold_only_on_every_turn():
    gold = [False, True]
    assert gold_agrees("turns", gold, {"turns": [False, True]})
    assert not gold_agrees("turns", gold, {"turns": [True, True]})  # the missed bad turn
    rows = [
        row("A", 1, {"turns": [False, True]}, "turns", gold=True, gold_answer=gold),
        row("B", 1, {"turns": [True, True]}, "turns", gold=True, gold_answer=gold),
    ]
    assert {q.annotator: q.gold_agreement for q in annotator_quality(rows)} == {"A": 1.0, "B": 0.0}


def test_a_turns_project_hands_out_its_gold_items_and_scores_them(store, tmp_path):
    store.create_user("ann", PASSWORD, "annotator")
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"prompt": CHAT, "completions": ["4."], "answer": [False, True]}])
    samples = write_jsonl(tmp_path / "s.jsonl", SAMPLES)
    project = store.create_project("g", "turns", samples, gold=gold, gold_rate=0.5, qualification_items=1)
    store.add_members("g", ["ann"])
    user = next(u for u in store.users() if u.username == "ann")
    task = store.next_task(project.id, user)  # the qualification item comes first
    assert task.is_gold and answer_size("turns", task.prompt, task.completions) == 2
    store.submit_label(task.assignment_id, user, {"turns": [False, True]}, uuid.uuid4().hex, 2.0)
    [quality] = annotator_quality(store.label_rows(project.id))
    assert quality.n_gold == 1 and quality.gold_agreement == 1.0


# ---- agreement ----------------------------------------------------------------------------------


def turn_rows(table):
    """{annotator: [verdicts per item]} -> label rows of a turns project."""
    return [row(a, item, {"turns": v}, "turns") for a, items in table.items() for item, v in enumerate(items, 1)]


def test_agreement_counts_each_item_turn_as_a_nominal_unit():
    # Two items of two turns each: units (1,0) (1,1) (2,0) (2,1). A: G B G G; B: G G G G.
    # The same units as four binary items give the same numbers (the binary task's statistic).
    rows = turn_rows({"A": [[True, False], [True, True]], "B": [[True, True], [True, True]]})
    turns = agreement(rows)
    binary = {"A": [True, False, True, True], "B": [True, True, True, True]}
    as_binary = agreement(
        [row(a, n, {"good": g}, "binary") for a, goods in binary.items() for n, g in enumerate(goods)]
    )
    assert (turns.task, turns.n_items, turns.alpha_level) == ("turns", 2, "nominal")
    assert turns.krippendorff_alpha == pytest.approx(as_binary.krippendorff_alpha)
    assert turns.fleiss_kappa == pytest.approx(as_binary.fleiss_kappa)
    # observed: the share of turns agreed on, item by item: (1/2 + 1) / 2
    assert turns.observed_agreement == pytest.approx(0.75) == as_binary.observed_agreement
    [a, b] = annotator_quality(rows)
    assert a.peer_agreement == b.peer_agreement == pytest.approx(0.75)
    assert a.n_gold == 0 and a.position_bias is None


# ---- the store and the export -------------------------------------------------------------------


def test_turns_labels_round_trip_through_the_store_and_export_as_unpaired_rows(store, tmp_path):
    def answers(task, user):
        n = answer_size("turns", task.prompt, task.completions)
        return {"turns": [user.username == "ann0" or i == 0 for i in range(n)]}

    project, users = labelled(store, tmp_path, answers)
    rows = store.label_rows(project.id)
    assert len(rows) == 6 and {r["task"] for r in rows} == {"turns"}
    by_annotator = {r["annotator"]: r["value"] for r in rows if r["completions"] == ["Sorry: it is 4."]}
    assert by_annotator == {"ann0": {"turns": [True, True]}, "ann1": {"turns": [True, False]}}

    out = tmp_path / "turns.jsonl"
    counts = store.export("t", "unpaired", out)
    assert (counts["labels"], counts["records"]) == (6, 2 * (2 + 2 + 1))
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    first = [r for r in exported if r["label_id"] == rows[0]["label_id"]]
    assert [r["prompt"] for r in first] == [[SYSTEM, USER_1], CHAT]
    assert [r["completion"] for r in first] == [[WRONG], [{"role": "assistant", "content": rows[0]["completions"][0]}]]
    assert [r["turn"] for r in first] == [0, 1]
    assert {r["annotator"] for r in exported} == {"ann0", "ann1"}
    assert {"annotator_id", "item_id", "project", "shown_order", "seconds", "gold", "adjudicated"} <= set(first[0])

    # rlhflab's reader takes the file as TRL conversational unpaired preferences: KTO's data
    assert (dataset_type(exported), dataset_format(exported)) == ("unpaired preference", "conversational")
    records = read_records(out, "rating")
    assert unpaired_labels(records, str(out)) == [r["label"] for r in exported]
    assert records[0].prompt == [SYSTEM, USER_1] and records[0].scale == "binary"

    with pytest.raises(StoreError, match="^a turns project's labels export as unpaired, not ratings$"):
        store.export("t", "ratings", tmp_path / "r.jsonl")


def test_a_turns_answer_of_the_wrong_length_is_refused_by_the_store(store, tmp_path):
    store.create_user("admin", PASSWORD, "admin")
    user = store.create_user("ann", PASSWORD, "annotator")
    project = store.create_project("t", "turns", write_jsonl(tmp_path / "s.jsonl", SAMPLES[:1]), overlap=1)
    store.add_members("t", ["ann"])
    task = store.next_task(project.id, user)
    with pytest.raises(LabelError, match="each of the 2 assistant turns, got 1"):
        store.submit_label(task.assignment_id, user, {"turns": [True]}, "k1", None)
    assert store.label_rows(project.id) == []


def test_a_disagreeing_turns_item_is_adjudicated_and_exported_from_its_resolution(store, tmp_path):
    project, users = labelled(store, tmp_path, lambda t, u: {"turns": [u.username == "ann0"] * answer_size("turns", t.prompt, t.completions)})  # fmt: skip
    queue = store.adjudication_queue(project.id)
    assert len(queue) == 3 and all(item["pending"] for item in queue)
    item = queue[0]
    with pytest.raises(LabelError, match="each of the 2 assistant turns, got 1"):
        store.adjudicate(item["item_id"], {"turns": [True]}, "annotator_error", "", None)
    store.adjudicate(item["item_id"], {"turns": [False, True]}, "annotator_error", "", None)
    out = tmp_path / "adjudicated.jsonl"
    store.export("t", "unpaired", out, use_adjudicated=True)
    resolved = [json.loads(line) for line in out.read_text().splitlines() if json.loads(line)["adjudicated"]]
    assert [r["label"] for r in resolved] == [False, True]


# ---- the command line ---------------------------------------------------------------------------


def test_feedback_create_refuses_a_string_prompt_for_turns_naming_the_line(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "mixed.jsonl", [SAMPLES[0], {"prompt": "Hi?", "completions": ["Hello."]}])
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["feedback", "create", "--name", "x", "--task", "turns", "--samples", str(samples), "--db", db]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{samples}:2: field 'prompt': is a string" in err and "use --task binary" in err
    ok = write_jsonl(tmp_path / "chat.jsonl", SAMPLES)
    assert main(["feedback", "create", "--name", "x", "--task", "turns", "--samples", str(ok), "--db", db]) == 0


# ---- the pages ----------------------------------------------------------------------------------


def test_the_page_puts_a_required_choice_beside_every_assistant_turn(world):
    alice = world.client("alice")
    project = world.project("turns")
    page = start_labelling(alice, project)
    assert 'id="prompt-heading"' not in page  # the conversation is the prompt, shown once
    assert page.count('class="turn"') == 4 and page.count('class="turn-verdict"') == 2
    for n in (0, 1):
        assert f'name="turn_{n}" value="yes" id="turn-{n}-good" required' in page
        assert f'name="turn_{n}" value="no" id="turn-{n}-bad"' in page
    assert "Assistant turn 2 (the response)" in page and "Assistant turn 1 (the response)" not in page
    fields = hidden_fields(page, "label-form")
    refused = alice.post(f"/projects/{project.id}/label", {**fields, "turn_1": "yes"})
    assert refused.status_code == 422 and "choose good or bad for assistant turn 1" in refused.text
    short = alice.post(f"/projects/{project.id}/label", {**fields, "turn_0": "no"})
    assert short.status_code == 422 and "each of the 2 assistant turns, got 1" in short.text
    api = alice.api_post(f"/api/projects/{project.id}/labels", {"assignment_id": int(fields["assignment_id"]), "value": {"turns": [True, "no"]}, "idempotency_key": "k"})  # fmt: skip
    assert api.status_code == 422 and "turns[1] must be true or false" in api.text


def test_a_reviewer_resolves_a_turns_item_on_the_adjudication_page(world):
    project = world.project("turns")
    for name, verdicts in (("alice", ("no", "yes")), ("bob", ("yes", "yes"))):
        client = world.client(name)
        fields = hidden_fields(start_labelling(client, project), "label-form")
        answer = {"turn_0": verdicts[0], "turn_1": verdicts[1]}
        assert client.post(f"/projects/{project.id}/label", {**fields, **answer}).status_code == 303
    rita = world.client("rita")
    page = rita.get(f"/projects/{project.id}/adjudicate")
    assert page.status_code == 200 and 'id="turn-1-good"' in page.text
    assert "turn 1 bad, turn 2 good" in page.text and "turn 1 good, turn 2 good" in page.text
    assert '<section class="prompt">' not in page.text  # the conversation is shown once, as its turns
    item_id = world.store.adjudication_queue(project.id)[0]["item_id"]
    form = {"item_id": str(item_id), "cause": "annotator_error", "note": "", "turn_0": "no", "turn_1": "yes"}
    assert rita.post(f"/projects/{project.id}/adjudicate", form).status_code == 303
    assert world.store.adjudication_queue(project.id)[0]["adjudication"]["value"] == {"turns": [False, True]}


def test_a_reviewer_makes_a_disagreeing_turns_item_gold_on_the_review_page(world):
    project = world.project("turns")
    for name, verdicts in (("alice", ("no", "yes")), ("bob", ("yes", "yes"))):
        client = world.client(name)
        fields = hidden_fields(start_labelling(client, project), "label-form")
        assert client.post(f"/projects/{project.id}/label", {**fields, "turn_0": verdicts[0], "turn_1": verdicts[1]}).status_code == 303  # fmt: skip
    rita = world.client("rita")
    page = rita.get(f"/projects/{project.id}/review").text
    assert 'name="answer_0" value="yes" required' in page and 'name="answer_1" value="no"' in page
    assert 'name="answer_2"' not in page  # two assistant turns, two choices
    item_id = world.store.disagreements(project.id, world.users["rita"])[0]["item_id"]
    short = rita.post(f"/projects/{project.id}/gold", {"item_id": item_id, "answer_0": "no"})
    assert short.status_code == 422 and "each of the 2 assistant turns, got 1" in short.text
    unchosen = rita.post(f"/projects/{project.id}/gold", {"item_id": item_id, "answer_0": "no", "answer_1": ""})
    assert unchosen.status_code == 422 and "choose good or bad for assistant turn 2" in unchosen.text
    saved = rita.post(f"/projects/{project.id}/gold", {"item_id": item_id, "answer_0": "no", "answer_1": "yes"})
    assert saved.status_code == 303
    assert 'Gold answer: <span class="text">turn 1 bad, turn 2 good</span>' in rita.get(saved.headers["location"]).text
    [item] = world.store.disagreements(project.id, world.users["rita"])
    assert item["is_gold"] and item["gold_answer"] == [False, True]


def test_rlhflab_kto_trains_on_a_turns_export(tmp_path, model_cache):
    rows = [row(a, 1, {"turns": [a == "A", True]}, "turns") for a in "AB"]
    for r in rows:
        r["prompt"], r["completions"] = CHAT, ["Sorry: it is 4."]
    out = tmp_path / "turns.jsonl"
    counts = export_rows(rows, "unpaired", out)
    assert counts["records"] == 4
    argv = ["kto", "--policy", "tiny-policy", "--batch_size", "2", "--max_steps", "1", "--no_progress"]
    assert main([*argv, "--data", str(out), "--output_dir", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "policy").is_dir()
