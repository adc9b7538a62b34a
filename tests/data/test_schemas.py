"""Adapters for public feedback datasets and annotation exports, each on a few rows in its published layout."""

import json

import pytest

from rlhflab.data import SCHEMAS, Preference, Ranking, Rating, read_records
from rlhflab.errors import ConfigError, DataError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_schemas_table_names_every_adapter():
    assert set(SCHEMAS) == {"hh-rlhf", "shp", "ultrafeedback", "helpsteer2", "oasst1", "label-studio", "argilla"}


# ---- Anthropic/hh-rlhf ----------------------------------------------------------------------------

HH = [
    {
        "chosen": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is popular."
        "\n\nHuman: Something rarer?\n\nAssistant: How about Pistachio?",
        "rejected": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is popular."
        "\n\nHuman: Something rarer?\n\nAssistant: Cat.",
    },
    {
        "chosen": "\n\nHuman: Is tea healthy?\n\nAssistant: In moderation, yes.",
        "rejected": "\n\nHuman: Is tea healthy?\n\nAssistant: No idea.",
    },
]


def test_hh_rlhf_transcripts_become_turns_with_the_shared_turns_as_prompt(tmp_path, capsys):
    path = jsonl(tmp_path / "hh.jsonl", HH)
    first, second = read_records(path, "preference")
    assert first.prompt == [
        user("What is a good name for a cat?"),
        assistant("Whiskers is popular."),
        user("Something rarer?"),
    ]
    assert first.chosen == [assistant("How about Pistachio?")] and first.rejected == [assistant("Cat.")]
    assert second == Preference([user("Is tea healthy?")], [assistant("In moderation, yes.")], [assistant("No idea.")])
    assert capsys.readouterr().err == f"{path}: read as hh-rlhf rows (detected) for preference records\n"


def test_a_malformed_hh_transcript_names_its_line_and_field(tmp_path):
    path = jsonl(tmp_path / "hh.jsonl", [HH[0], {"chosen": "\n\nHuman: hi", "rejected": "Assistant: x"}])
    with pytest.raises(DataError, match=r"hh\.jsonl:2: field 'rejected': is not an hh-rlhf transcript"):
        read_records(path, "preference", format="hh-rlhf")


# ---- stanfordnlp/SHP --------------------------------------------------------------------------------


def test_shp_pairs_follow_labels(tmp_path, capsys):
    rows = [
        {
            "post_id": "a1",
            "domain": "askculinary",
            "history": "Why does bread go stale?",
            "human_ref_A": "Starch retrogradation.",
            "human_ref_B": "Magic.",
            "labels": 1,
            "score_A": 52,
            "score_B": 3,
            "score_ratio": 17.3,
        },
        {
            "post_id": "a2",
            "domain": "askculinary",
            "history": "Salt in coffee?",
            "human_ref_A": "Never.",
            "human_ref_B": "A pinch cuts bitterness.",
            "labels": 0,
            "score_A": 2,
            "score_B": 40,
            "score_ratio": 20.0,
        },
    ]
    prefs = read_records(jsonl(tmp_path / "shp.jsonl", rows), "preference")
    assert prefs == [
        Preference("Why does bread go stale?", "Starch retrogradation.", "Magic."),
        Preference("Salt in coffee?", "A pinch cuts bitterness.", "Never."),
    ]
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("read as shp rows (detected) for preference records")
    assert err[1].endswith("columns not used by preference records: domain, post_id, score_A, score_B, score_ratio")


# ---- openbmb/UltraFeedback ---------------------------------------------------------------------------


def uf_completion(response, ratings, fine_grained, overall):
    annotations = {aspect: {"Rating": r, "Rationale": "..."} for aspect, r in ratings.items()}
    return {
        "response": response,
        "annotations": annotations,
        "fine-grained_score": fine_grained,
        "overall_score": overall,
    }


UF = [
    {
        "source": "evol_instruct",
        "instruction": "Name a prime number.",
        "models": ["a", "b", "c"],
        "completions": [
            uf_completion("Nine.", {"helpfulness": "1", "honesty": "2"}, 1.5, 2.0),
            uf_completion("Seven.", {"helpfulness": "5", "honesty": "5"}, 5.0, 9.0),
            uf_completion("Two.", {"helpfulness": "4", "honesty": "N/A"}, 4.0, 8.0),
        ],
    }
]


def test_ultrafeedback_ranks_completions_by_fine_grained_score(tmp_path):
    [ranking] = read_records(jsonl(tmp_path / "uf.jsonl", UF), "ranking")
    assert ranking == Ranking("Name a prime number.", ["Seven.", "Two.", "Nine."], ties=[0, 1, 2])
    prefs = read_records(jsonl(tmp_path / "uf.jsonl", UF), "preference")
    assert [(p.chosen, p.rejected) for p in prefs] == [("Seven.", "Two."), ("Seven.", "Nine."), ("Two.", "Nine.")]


def test_ultrafeedback_ratings_are_per_aspect_skipping_na(tmp_path):
    ratings = read_records(jsonl(tmp_path / "uf.jsonl", UF), "rating")
    assert [(r.completion, r.attribute, r.score) for r in ratings] == [
        ("Nine.", "helpfulness", 1.0),
        ("Nine.", "honesty", 2.0),
        ("Seven.", "helpfulness", 5.0),
        ("Seven.", "honesty", 5.0),
        ("Two.", "helpfulness", 4.0),
    ]
    assert {r.scale for r in ratings} == {"likert:5"}


# ---- nvidia/HelpSteer2 ------------------------------------------------------------------------------


def test_helpsteer2_gives_one_rating_per_attribute(tmp_path):
    row = {
        "prompt": "Define entropy.",
        "response": "A measure of disorder.",
        "helpfulness": 3,
        "correctness": 4,
        "coherence": 4,
        "complexity": 1,
        "verbosity": 0,
    }
    ratings = read_records(jsonl(tmp_path / "hs2.jsonl", [row]), "rating")
    assert ratings == [
        Rating("Define entropy.", "A measure of disorder.", score, scale="continuous", attribute=attribute)
        for attribute, score in [
            ("helpfulness", 3),
            ("correctness", 4),
            ("coherence", 4),
            ("complexity", 1),
            ("verbosity", 0),
        ]
    ]


def test_helpsteer2_is_refused_as_preferences(tmp_path):
    row = {
        "prompt": "p",
        "response": "r",
        "helpfulness": 3,
        "correctness": 4,
        "coherence": 4,
        "complexity": 1,
        "verbosity": 0,
    }
    with pytest.raises(DataError, match="helpsteer2 rows give rating records, not preference"):
        read_records(jsonl(tmp_path / "hs2.jsonl", [row]), "preference")


# ---- OpenAssistant/oasst1 ---------------------------------------------------------------------------

OASST = [
    {
        "message_id": "m1",
        "parent_id": None,
        "role": "prompter",
        "text": "Tell me a joke.",
        "rank": None,
        "deleted": False,
    },
    {"message_id": "m2", "parent_id": "m1", "role": "assistant", "text": "Knock knock.", "rank": 1, "deleted": False},
    {
        "message_id": "m3",
        "parent_id": "m1",
        "role": "assistant",
        "text": "Why did the chicken...",
        "rank": 0,
        "deleted": False,
    },
    {"message_id": "m4", "parent_id": "m1", "role": "assistant", "text": "(deleted)", "rank": 2, "deleted": True},
    {"message_id": "m5", "parent_id": "m3", "role": "prompter", "text": "Another!", "rank": 0, "deleted": False},
    {"message_id": "m6", "parent_id": "m5", "role": "assistant", "text": "Puns.", "rank": 0, "deleted": False},
    {"message_id": "m7", "parent_id": "m5", "role": "assistant", "text": "No.", "rank": 1, "deleted": False},
]


def test_oasst1_ranks_sibling_replies_with_the_thread_as_prompt(tmp_path):
    first, second = read_records(jsonl(tmp_path / "oasst.jsonl", OASST), "ranking")
    assert first == Ranking(
        [user("Tell me a joke.")], [[assistant("Why did the chicken...")], [assistant("Knock knock.")]]
    )
    assert second.prompt == [user("Tell me a joke."), assistant("Why did the chicken..."), user("Another!")]
    assert second.completions == [[assistant("Puns.")], [assistant("No.")]]


# ---- Label Studio ---------------------------------------------------------------------------------

LABEL_STUDIO = [
    {
        "id": 1,
        "data": {"prompt": "Summarise: the cat sat.", "answer1": "A cat sat.", "answer2": "Dogs ran."},
        "annotations": [
            {
                "id": 10,
                "completed_by": 3,
                "was_cancelled": False,
                "result": [
                    {
                        "id": "r1",
                        "type": "pairwise",
                        "from_name": "comparison",
                        "to_name": "answer1",
                        "value": {"selected": "left"},
                    }
                ],
            },
            {
                "id": 11,
                "completed_by": 4,
                "was_cancelled": False,
                "result": [
                    {
                        "id": "r2",
                        "type": "pairwise",
                        "from_name": "comparison",
                        "to_name": "answer1",
                        "value": {"selected": "right"},
                    }
                ],
            },
            {"id": 12, "completed_by": 5, "was_cancelled": True, "result": []},
        ],
    }
]


def test_label_studio_pairwise_export_gives_one_preference_per_annotation(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(LABEL_STUDIO))
    assert read_records(path, "preference") == [
        Preference("Summarise: the cat sat.", "A cat sat.", "Dogs ran.", annotator="3"),
        Preference("Summarise: the cat sat.", "Dogs ran.", "A cat sat.", annotator="4"),
    ]


# ---- Argilla --------------------------------------------------------------------------------------


def test_argilla_v2_export_label_and_ranking_questions(tmp_path):
    rows = [
        {
            "id": "r1",
            "status": "completed",
            "_server_id": "s1",
            "prompt": "Best fruit?",
            "response1": "Mango.",
            "response2": "Rocks.",
            "preference.responses": ["response1", "response2"],
            "preference.responses.users": ["u1", "u2"],
            "preference.responses.status": ["submitted", "discarded"],
        },
    ]
    assert read_records(rows, "preference", format="argilla") == [
        Preference("Best fruit?", "Mango.", "Rocks.", annotator="u1")
    ]
    ranked = [
        {
            "id": "r2",
            "prompt": "Order?",
            "a1": "First.",
            "a2": "Second.",
            "a3": "Third.",
            "rank.responses": [["a2", "a1", "a3"]],
            "rank.responses.users": ["u9"],
            "rank.responses.status": ["submitted"],
        }
    ]
    assert read_records(ranked, "ranking") == [Ranking("Order?", ["Second.", "First.", "Third."], annotator="u9")]


def test_argilla_v1_export_ranking_question(tmp_path):
    row = {
        "prompt": "Order?",
        "response-1": "Good.",
        "response-2": "Bad.",
        "external_id": None,
        "metadata": "{}",
        "ranking": [
            {
                "user_id": "u3",
                "status": "submitted",
                "value": [{"value": "response-2", "rank": 2}, {"value": "response-1", "rank": 1}],
            }
        ],
    }
    assert read_records([row], "preference", format="argilla") == [
        Preference("Order?", "Good.", "Bad.", annotator="u3")
    ]


# ---- choosing a schema --------------------------------------------------------------------------


def test_an_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown data format 'csv'"):
        read_records([{"prompt": "p"}], "prompt", format="csv")


def test_rlhflab_and_trl_rows_detect_no_schema(capsys):
    read_records([{"prompt": "p", "chosen": "a", "rejected": "b"}], "preference")
    assert capsys.readouterr().err == ""
