"""Feedback records, strict readers with file:line errors, chat rendering, shipped prompt sets."""

import json
import math

import pytest

from rlhflab.data import (
    RECORD_TYPES,
    Demonstration,
    LanguageFeedback,
    Preference,
    Prompt,
    Ranking,
    Rating,
    Samples,
    load_prompt_set,
    parse_scale,
    prompt_text,
    ranking_to_preferences,
    read_records,
    records_to_dataset,
    render_completion,
    render_prompt,
    write_records,
)
from rlhflab.errors import ConfigError, DataError

CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"}]
REPLY = [{"role": "assistant", "content": "Hello!"}]

EXAMPLES = {
    "prompt": [Prompt("Describe a rainy Monday."), Prompt(CHAT)],
    "demonstration": [Demonstration("Say hi.", "Hi!"), Demonstration(CHAT, REPLY)],
    "preference": [
        Preference("Say hi.", "Hello, lovely day!", "Go away.", margin=0.5, annotator="ann-0"),
        Preference(CHAT, REPLY, [{"role": "assistant", "content": "No."}]),
    ],
    "ranking": [
        Ranking("Say hi.", ["Great!", "Fine.", "Bad."]),
        Ranking("Say hi.", ["Great!", "Good!", "Bad."], ties=[0, 0, 1], annotator="ann-1"),
    ],
    "rating": [
        Rating("Say hi.", "Hi!", 4, scale="likert:5"),
        Rating("Say hi.", "Hi!", 1, scale="binary", annotator="a"),
        Rating("Say hi.", "Hi!", -0.25),
        Rating("Say hi.", "Hi!", 2, scale="categorical:bad|ok|good"),
    ],
    "language_feedback": [LanguageFeedback("Say hi.", "Go away.", "Too negative; make it more upbeat.")],
    # Not feedback: policy samples awaiting it (the output of `rlhflab sample`); may be empty strings.
    "samples": [Samples("Say hi.", ["Hi!", ""]), Samples("Say hello.", ["Hello there."])],
}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def row(**fields):
    return json.dumps(fields)


# ---- records ------------------------------------------------------------------------------------


def test_record_registry_covers_the_feedback_kinds_of_section_7_3_and_samples():
    assert set(RECORD_TYPES) == set(EXAMPLES)
    for kind, cls in RECORD_TYPES.items():
        assert cls.kind == kind


def test_records_use_trl_column_names_in_to_dict():
    assert EXAMPLES["preference"][0].to_dict() == {
        "prompt": "Say hi.",
        "chosen": "Hello, lovely day!",
        "rejected": "Go away.",
        "margin": 0.5,
        "annotator": "ann-0",
    }
    assert set(EXAMPLES["ranking"][1].to_dict()) == {"prompt", "completions", "ties", "annotator"}
    assert EXAMPLES["rating"][0].score == 4.0 and isinstance(EXAMPLES["rating"][0].score, float)


def test_constructing_an_invalid_record_directly_raises_data_error_naming_the_field():
    with pytest.raises(DataError, match=r"field 'score'.*1\.\.5"):
        Rating("p", "o", 6, scale="likert:5")
    with pytest.raises(DataError, match="field 'chosen'"):
        Preference("p", "   ", "o")


@pytest.mark.parametrize(
    "scale, parsed",
    [
        ("binary", ("binary", None)),
        ("likert:7", ("likert", 7)),
        ("continuous", ("continuous", None)),
        ("categorical:bad|ok|good", ("categorical", ("bad", "ok", "good"))),
    ],
)
def test_parse_scale_reads_the_four_rating_scales(scale, parsed):
    assert parse_scale(scale) == parsed


@pytest.mark.parametrize("scale", ["likert", "likert:1", "likert:x", "stars", "categorical:one", "binary:2"])
def test_parse_scale_rejects_malformed_scales(scale):
    with pytest.raises(ConfigError):
        parse_scale(scale)


def test_ranking_expands_to_all_pairwise_preferences_skipping_ties():
    strict = ranking_to_preferences(EXAMPLES["ranking"][0])
    assert [(p.chosen, p.rejected) for p in strict] == [("Great!", "Fine."), ("Great!", "Bad."), ("Fine.", "Bad.")]
    tied = ranking_to_preferences(EXAMPLES["ranking"][1])
    assert [(p.chosen, p.rejected) for p in tied] == [("Great!", "Bad."), ("Good!", "Bad.")]
    assert all(p.annotator == "ann-1" for p in tied)


# ---- readers: round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXAMPLES))
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_written_records_read_back_identical(tmp_path, kind, suffix):
    records = EXAMPLES[kind]
    if suffix == ".parquet" and kind in ("prompt", "demonstration", "preference"):
        records = records[:1]  # one arrow column cannot mix strings and message lists
    path = tmp_path / f"{kind}{suffix}"
    write_records(records, path)
    assert read_records(path, kind) == records


def test_reader_accepts_a_json_list_a_datasets_object_and_a_save_to_disk_folder(tmp_path):
    records = EXAMPLES["rating"]
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in records]))
    assert read_records(tmp_path / "r.json", "rating") == records
    dataset = records_to_dataset(records)
    assert dataset.column_names == ["prompt", "completion", "score", "scale", "annotator", "attribute"]
    assert read_records(dataset, "rating") == records
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert read_records(tmp_path / "saved", "rating") == records


def test_reader_ignores_unknown_columns_and_blank_lines(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [row(prompt="p", chosen="a", rejected="b", source="web", id=7), ""])
    assert read_records(path, "preference") == [Preference("p", "a", "b")]


def test_messages_column_is_a_chat_prompt():
    [record] = read_records_from_rows([{"messages": CHAT}], "prompt")
    assert record == Prompt(CHAT)


def test_messages_column_splits_into_prompt_and_final_assistant_reply():
    [record] = read_records_from_rows([{"messages": CHAT + REPLY}], "demonstration")
    assert record.prompt == CHAT and record.completion == "Hello!"


def read_records_from_rows(rows, kind):
    from datasets import Dataset

    return read_records(Dataset.from_list(rows), kind)


# ---- readers: every error names file, line and field ----------------------------------------------

BAD_ROWS = [
    ("preference", row(prompt="p", chosen="a"), "rejected", "missing required column"),
    ("preference", row(prompt="", chosen="a", rejected="b"), "prompt", "is empty"),
    ("preference", row(prompt="p", chosen=" \n", rejected="b"), "chosen", "is empty"),
    ("preference", row(prompt="p", chosen="same", rejected="same"), "rejected", "is identical to 'chosen'"),
    (
        "preference",
        row(
            prompt="p", chosen=[{"role": "assistant", "content": "x"}], rejected=[{"role": "assistant", "content": "x"}]
        ),
        "rejected",
        "is identical to 'chosen'",
    ),
    ("preference", row(prompt=3, chosen="a", rejected="b"), "prompt", "expected a string or a list of messages"),
    ("preference", row(prompt="p", chosen="a", rejected="b", margin="big"), "margin", "expected a number"),
    ("preference", row(prompt=[{"role": "user"}], chosen="a", rejected="b"), "prompt", "needs a string 'content'"),
    (
        "preference",
        row(prompt="p", chosen=[{"role": "user", "content": "x"}], rejected="b"),
        "chosen",
        "no non-empty assistant",
    ),
    ("rating", row(prompt="p", completion="o", score="5", scale="likert:5"), "score", "expected a number"),
    ("rating", row(prompt="p", completion="o", score=True), "score", "expected a number"),
    ("rating", '{"prompt": "p", "completion": "o", "score": NaN}', "score", "finite"),
    ("rating", '{"prompt": "p", "completion": "o", "score": Infinity}', "score", "finite"),
    ("rating", row(prompt="p", completion="o", score=6, scale="likert:5"), "score", r"1\.\.5"),
    ("rating", row(prompt="p", completion="o", score=2.5, scale="likert:5"), "score", r"1\.\.5"),
    ("rating", row(prompt="p", completion="o", score=0.5, scale="binary"), "score", "0 or 1"),
    ("rating", row(prompt="p", completion="o", score=3, scale="categorical:a|b|c"), "score", r"0\.\.2"),
    ("rating", row(prompt="p", completion="o", score=1, scale="stars"), "scale", "unknown rating scale"),
    ("ranking", row(prompt="p", completions="a"), "completions", "expected a list"),
    ("ranking", row(prompt="p", completions=["a"]), "completions", "at least 2"),
    ("ranking", row(prompt="p", completions=["a", ""]), r"completions\[1\]", "is empty"),
    ("ranking", row(prompt="p", completions=["a", "b"], ties=[0]), "ties", "1 entries for 2"),
    ("ranking", row(prompt="p", completions=["a", "b"], ties=[1, 0]), "ties", "decreases"),
    ("language_feedback", row(prompt="p", completion="o", feedback=""), "feedback", "is empty"),
    ("demonstration", row(messages=[{"role": "user", "content": "hi"}]), "messages", "final assistant"),
]


@pytest.mark.parametrize("kind, bad, field, problem", BAD_ROWS)
def test_invalid_row_raises_data_error_with_file_line_and_field(tmp_path, kind, bad, field, problem):
    good = {
        "preference": row(prompt="p", chosen="a", rejected="b"),
        "rating": row(prompt="p", completion="o", score=1.0),
        "ranking": row(prompt="p", completions=["a", "b"]),
        "language_feedback": row(prompt="p", completion="o", feedback="ok"),
        "demonstration": row(prompt="p", completion="o"),
    }[kind]
    path = write_lines(tmp_path / "data.jsonl", [good, "", bad])
    with pytest.raises(DataError, match=rf"^{tmp_path}/data.jsonl:3: field '{field}': .*{problem}") as info:
        read_records(path, kind)
    assert info.value.line == 3


def test_malformed_json_names_its_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [row(prompt="ok"), '{"prompt": "oops"'])
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON"):
        read_records(path, "prompt")


def test_a_row_that_is_not_an_object_is_rejected(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['["a", "b"]'])
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected an object"):
        read_records(path, "prompt")


def test_parquet_errors_name_the_one_based_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"prompt": ["a", "b", "c"], "completion": ["x", "y", "z"], "score": [0.1, float("nan"), 0.3]}),
        tmp_path / "r.parquet",
    )
    with pytest.raises(DataError, match=r"r\.parquet:2: field 'score'"):
        read_records(tmp_path / "r.parquet", "rating")


def test_missing_empty_and_unsupported_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        read_records(tmp_path / "nope.jsonl", "prompt")
    assert info.value.line is None
    with pytest.raises(DataError, match="no records"):
        read_records(write_lines(tmp_path / "empty.jsonl", ["", "  "]), "prompt")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        read_records(write_lines(tmp_path / "d.csv", ["prompt"]), "prompt")
    with pytest.raises(DataError, match="expected a JSON list"):
        read_records(write_lines(tmp_path / "d.json", ['{"prompt": "p"}']), "prompt")


def test_unknown_record_kind_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown record kind 'pairs'"):
        read_records(write_lines(tmp_path / "d.jsonl", [row(prompt="p")]), "pairs")


def test_write_records_leaves_no_temporary_files(tmp_path):
    write_records(EXAMPLES["preference"], tmp_path / "out" / "prefs.jsonl")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["prefs.jsonl"]


# ---- rendering ----------------------------------------------------------------------------------


def test_string_prompt_forced_through_the_template_is_wrapped_as_a_user_turn_with_generation_prompt(char_tokenizer):
    text = render_prompt("Describe a rainy Monday.", char_tokenizer, use_chat_template=True)
    assert text == "<|im_start|>user\nDescribe a rainy Monday.<|im_end|>\n<|im_start|>assistant\n"


def test_string_prompt_stays_plain_without_chat_template(char_tokenizer):
    assert render_prompt("Once upon a time", char_tokenizer, use_chat_template=False) == "Once upon a time"
    char_tokenizer.chat_template = None
    assert render_prompt("Once upon a time", char_tokenizer) == "Once upon a time"


def test_message_prompt_goes_through_the_chat_template(char_tokenizer):
    text = render_prompt(CHAT, char_tokenizer, use_chat_template=False)
    assert text.startswith("<|im_start|>system\nBe kind.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")


def test_message_prompt_without_chat_template_is_a_config_error(char_tokenizer):
    char_tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="chat_template"):
        render_prompt(CHAT, char_tokenizer)


def test_render_completion_returns_assistant_text_without_eos(char_tokenizer):
    assert render_completion("Hi!", char_tokenizer) == "Hi!"
    two_turns = [
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": "Bye."},
    ]
    assert render_completion(two_turns) == "Hi.\nBye."
    assert char_tokenizer.eos_token not in render_completion(REPLY)


# ---- shipped prompt sets ------------------------------------------------------------------------


def test_shipped_prompt_sets_are_distinct_short_and_disjoint():
    train, unseen = load_prompt_set("train"), load_prompt_set("unseen")
    assert len(train) == 240 and len(unseen) == 80
    train_text, unseen_text = [prompt_text(p.prompt) for p in train], [prompt_text(p.prompt) for p in unseen]
    assert len(set(train_text)) == 240 and len(set(unseen_text)) == 80
    assert not set(train_text) & set(unseen_text)
    assert max(len(p.split()) for p in train_text + unseen_text) < 25


def test_unseen_prompts_come_from_a_different_domain_than_training_prompts():
    # Sections 5.1/6.2: out-of-distribution contexts. No content word of the unseen set's topics
    # (the words that vary from prompt to prompt) should be common in the training set.
    def vocabulary(prompts):
        return {w.strip(".,?'").lower() for p in prompts for w in prompt_text(p.prompt).split() if len(w) > 5}

    train, unseen = vocabulary(load_prompt_set("train")), vocabulary(load_prompt_set("unseen"))
    assert len(train & unseen) / len(unseen) < 0.1


def test_unknown_prompt_set_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown prompt set 'test'"):
        load_prompt_set("test")


def test_nan_is_never_silently_accepted_as_a_margin():
    with pytest.raises(DataError, match="field 'margin'"):
        Preference("p", "a", "b", margin=math.nan)


def test_jsonl_lines_end_at_newline_only_so_unicode_line_breaks_may_stand_in_strings(tmp_path):
    path = tmp_path / "breaks.jsonl"
    rows = [{"prompt": "a\u2028b", "completion": "c\u0085d"}, {"prompt": "e\u2029f", "completion": "g\x1ch"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert [(d.prompt, d.completion) for d in read_records(path, "demonstration")] == [
        ("a\u2028b", "c\u0085d"),
        ("e\u2029f", "g\x1ch"),
    ]
