"""Every TRL dataset type read as TRL reads it; a type a record kind cannot use is refused in one line."""

import json

import pytest

from rlhflab.data import (
    TRL_TYPES,
    Demonstration,
    Preference,
    Prompt,
    Ranking,
    Rating,
    dataset_format,
    dataset_type,
    extract_prompt,
    read_records,
)
from rlhflab.errors import DataError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# TRL's dataset-format table, one standard and one conversational row per type.
TRL_ROWS = {
    "language modeling": ({"text": "The sky is blue."}, {"messages": [user("Sky?"), assistant("Blue.")]}),
    "prompt-only": ({"prompt": "The sky is"}, {"prompt": [user("Sky?")]}),
    "prompt-completion": (
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": [user("Sky?")], "completion": [assistant("Blue.")]},
    ),
    "preference": (
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"prompt": [user("Sky?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]},
    ),
    "unpaired preference": (
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {"prompt": [user("Sky?")], "completion": [assistant("Green.")], "label": False},
    ),
    "stepwise supervision": (
        {"prompt": "Which is larger, 9.8 or 9.11?", "completions": ["11 > 8.", "So 9.11."], "labels": [True, False]},
        {"prompt": "2 + 2 * 2?", "completions": ["2 * 2 = 4.", "4 + 2 = 6."], "labels": [True, True]},
    ),
}


@pytest.mark.parametrize("name", TRL_TYPES)
def test_dataset_type_names_each_trl_type_in_both_formats(name):
    standard, conversational = TRL_ROWS[name]
    assert dataset_type([standard]) == dataset_type([conversational]) == name
    assert dataset_format([standard]) == "standard"
    assert dataset_format([conversational]) == ("conversational" if name != "stepwise supervision" else "standard")


def test_prompt_beside_messages_is_language_modelling_read_from_the_messages(capsys):
    # H4's train_sft: prompt, prompt_id, messages (the messages hold the prompt as their first turn)
    row = {"prompt": "Sky?", "prompt_id": "x1", "messages": [user("Sky?"), assistant("Blue.")]}
    assert dataset_type([row]) == "language modeling"
    [record] = read_records([row], "demonstration")
    assert record == Demonstration([user("Sky?")], "Blue.")
    assert capsys.readouterr().err == "<list>: columns not used by demonstration records: prompt, prompt_id\n"


def test_messages_split_before_the_last_assistant_turn_for_demonstrations_and_prompts():
    messages = [user("Hi"), assistant("Hello"), user("Sky?"), assistant("Blue.")]
    [demo] = read_records([{"messages": messages}], "demonstration")
    assert demo.prompt == messages[:3] and demo.completion == "Blue."
    [prompt] = read_records([{"messages": messages}], "prompt")
    assert prompt == Prompt(messages[:3])


def test_implicit_prompt_of_strings_is_the_common_prefix_up_to_a_word():
    assert extract_prompt("The sky is blue.", "The sky is green.") == ("The sky is", " blue.", " green.")
    assert extract_prompt("The sky is blue.", "The sky is black.") == ("The sky is", " blue.", " black.")


def test_implicit_prompt_of_transcripts_ends_at_the_last_shared_assistant_marker():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Sky?\n\nAssistant: Blue, mostly."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Sky?\n\nAssistant: Blurple."
    prompt, c, r = extract_prompt(chosen, rejected)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Sky?\n\nAssistant:"
    assert (c, r) == (" Blue, mostly.", " Blurple.")


def test_implicit_prompt_of_messages_is_turn_aligned():
    shared = [user("Hi"), assistant("Hello"), user("Sky?")]
    prompt, chosen, rejected = extract_prompt(shared + [assistant("Blue.")], shared + [assistant("Blur.")])
    assert prompt == shared and chosen == [assistant("Blue.")] and rejected == [assistant("Blur.")]


def test_implicit_prompt_preferences_read_as_preferences_rankings_and_prompts(tmp_path):
    # trl-lib/ultrafeedback_binarized: chosen / rejected message lists that open with the user turn
    row = {
        "chosen": [user("Sky?"), assistant("Blue.")],
        "rejected": [user("Sky?"), assistant("Green.")],
        "score_chosen": 8.0,
    }
    path = tmp_path / "ufb.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert read_records(path, "preference") == [Preference([user("Sky?")], [assistant("Blue.")], [assistant("Green.")])]
    assert read_records(path, "ranking") == [Ranking([user("Sky?")], [[assistant("Blue.")], [assistant("Green.")]])]
    assert read_records(path, "prompt") == [Prompt([user("Sky?")])]


def test_pairs_with_no_common_prefix_name_the_line():
    with pytest.raises(DataError, match=r"^<list>:2: field 'chosen': shares no common prefix"):
        read_records([{"chosen": "a b", "rejected": "a c"}, {"chosen": "Yes.", "rejected": "No."}], "preference")


def test_unpaired_preferences_are_refused_as_demonstrations_naming_kto(tmp_path):
    # The silent misread this guards: `label: false` completions trained on as demonstrations.
    path = tmp_path / "kto.jsonl"
    rows = [TRL_ROWS["unpaired preference"][0], {"prompt": "The sky is", "completion": " green.", "label": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"kto\.jsonl:1: rows are TRL's unpaired preference type .*`rlhflab kto`"):
        read_records(path, "demonstration")


def test_unpaired_preferences_read_as_binary_ratings():
    rows = [TRL_ROWS["unpaired preference"][0], {"prompt": "The sky is", "completion": " green.", "label": False}]
    assert read_records(rows, "rating") == [
        Rating("The sky is", " blue.", 1, scale="binary"),
        Rating("The sky is", " green.", 0, scale="binary"),
    ]


@pytest.mark.parametrize("kind", ["ranking", "samples", "demonstration", "preference", "rating"])
def test_stepwise_supervision_is_never_read_as_ranked_completions(kind):
    # The silent misread this guards: a solution's steps taken as completions ranked best first.
    with pytest.raises(
        DataError, match=r"^<list>:1: rows are TRL's stepwise supervision type .*no command takes it yet"
    ):
        read_records([TRL_ROWS["stepwise supervision"][0]], kind)


def test_standard_language_modelling_text_is_a_whole_text_demonstration_and_refused_elsewhere():
    [demo] = read_records([{"text": "The sky is blue."}], "demonstration")
    assert demo.prompt is None and demo.completion == "The sky is blue."
    for kind in ("prompt", "preference", "rating"):
        with pytest.raises(DataError, match=r"^<list>:1: rows are TRL's standard language-modeling type \(text\)"):
            read_records([{"text": "The sky is blue."}], kind)


def test_preferences_given_to_sft_are_refused_naming_the_commands_that_take_them():
    with pytest.raises(DataError, match=r"preference type \(prompt, chosen, rejected\).*dpo"):
        read_records([TRL_ROWS["preference"][1]], "demonstration")


def test_a_refused_row_later_in_the_file_names_its_line():
    rows = [{"prompt": "p", "completion": "o"}, {"prompt": "p", "completion": "o", "label": False}]
    with pytest.raises(DataError, match=r"^<list>:2: rows are TRL's unpaired preference type"):
        read_records(rows, "demonstration")


def test_unused_columns_are_named_once_per_file(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "o", "id": i}) + "\n" for i in range(3)))
    assert len(read_records(path, "prompt")) == 3
    assert capsys.readouterr().err == f"{path}: columns not used by prompt records: completion, id\n"


def test_a_list_of_dicts_and_a_datasets_object_are_sources():
    from datasets import Dataset

    rows = [{"prompt": "p", "completion": "o"}]
    assert read_records(rows, "demonstration") == read_records(Dataset.from_list(rows), "demonstration")


def test_a_hub_id_offline_fails_in_one_line_saying_the_hub_is_unreachable(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"^Anthropic/hh-rlhf: is no local file .*hub is unreachable") as caught:
        read_records("Anthropic/hh-rlhf", "preference")
    assert "\n" not in str(caught.value)


def test_a_missing_local_file_is_still_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_records(str(tmp_path / "owner" / "name.jsonl"), "preference")


def test_a_preference_read_for_its_prompt_names_the_pair_unused(capsys):
    [record] = read_records([TRL_ROWS["preference"][1]], "prompt")
    assert record == Prompt([user("Sky?")])
    assert capsys.readouterr().err == "<list>: columns not used by prompt records: chosen, rejected\n"


def test_a_preference_read_as_a_ranking_of_two_keeps_its_annotator_and_names_the_margin_unused(capsys):
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0, "annotator": "ann-2"}
    assert read_records([row], "ranking") == [Ranking("p", ["a", "b"], annotator="ann-2")]
    assert capsys.readouterr().err == "<list>: columns not used by ranking records: margin\n"
