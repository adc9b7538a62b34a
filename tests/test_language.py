"""Learning from language (Sections 7.3.2, 7.9.2): the refinement and critique templates, selection
by embedding similarity, constitutions and their errors, critiques that say what lowers R*, the
model judge in both orders (position bias by hand), and ILF / critique-and-revise on tiny models."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlhflab.cli import main
from rlhflab.commands.collect import AnnotateConfig, run_annotate
from rlhflab.commands.language import run_ilf, run_revise
from rlhflab.data import read_records
from rlhflab.data.records import LanguageFeedback
from rlhflab.errors import DataError
from rlhflab.feedback.annotators import SimulatedAnnotator, oracle_critique
from rlhflab.feedback.judge import JudgeVerdicts, ModelJudge, load_judge
from rlhflab.feedback.language import (
    SentenceEmbedder,
    clean_generation,
    conversation,
    load_constitution,
    refinement_prompt,
    select_by_similarity,
)
from rlhflab.feedback.oracles import load_oracle, sentiment_oracle
from rlhflab.models import load_policy
from rlhflab.models.tiny import build_char_tokenizer
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.language import ILFConfig, ReviseConfig, choose_refinements
from tests._env import TEST_SEED

# ---- templates -------------------------------------------------------------------------------------


def test_refinement_template_conditions_on_prompt_output_and_feedback():
    text = refinement_prompt("How was the match?", " We lost badly. ", "Too negative.")
    assert "Prompt: How was the match?\n\nResponse: We lost badly.\n\nFeedback: Too negative." in text
    assert text.endswith("Reply with the improved response only.")
    chat = [{"role": "user", "content": "How was the match?"}]
    assert "Prompt: How was the match?" in refinement_prompt(chat, "x", "y")


def test_generations_lose_their_label_and_quotes_and_conversations_follow_the_tokenizer():
    assert clean_generation('  Improved response: "What a day!" ') == "What a day!"
    assert (
        clean_generation("Revised reply: fine") == "fine" and clean_generation("Responses vary.") == "Responses vary."
    )
    turns = [("user", "hi"), ("assistant", "meh"), ("user", "critique it")]
    tokenizer = build_char_tokenizer()
    assert conversation(turns, tokenizer) == [{"role": r, "content": t} for r, t in turns]
    plain = conversation(turns, tokenizer, use_chat_template=False)
    assert plain == "User: hi\n\nAssistant: meh\n\nUser: critique it\n\nAssistant:"


# ---- selection -----------------------------------------------------------------------------------


def test_selection_keeps_the_valid_refinement_most_similar_to_the_feedback_by_hand():
    feedback = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    candidates = torch.tensor(
        [
            [[0.0, 1.0], [1.0, 1.0], [2.0, 0.1]],  # cosines 0, 0.707, 0.999 -> the third
            [[0.0, 3.0], [0.0, 1.0], [1.0, 0.0]],  # 1, 1, 0 -> the first of the tie
            [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],  # the best is invalid -> the third (0.707)
        ]
    )
    valid = torch.tensor([[True, True, True], [True, True, True], [False, True, True]])
    index, sim = select_by_similarity(feedback, candidates, valid)
    assert index.tolist() == [2, 0, 2]
    assert sim.tolist() == pytest.approx([2 / math.hypot(2, 0.1), 1.0, 1 / math.sqrt(2)], abs=1e-6)
    index, sim = select_by_similarity(feedback[:1], candidates[:1], torch.zeros(1, 3, dtype=torch.bool))
    assert index.tolist() == [-1] and sim.item() == float("-inf")


def test_sentence_embedder_is_normalised_and_an_identical_text_is_most_similar(model_cache):
    embed = SentenceEmbedder("tiny-reward")
    e = embed(["make it warmer", "zzz qqq", "make it warmer"])
    assert e.shape[0] == 3 and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.dot(e[0], e[2]) == pytest.approx(1.0, abs=1e-5) and torch.dot(e[0], e[1]) < 0.9999


# ---- constitutions ---------------------------------------------------------------------------------


def test_the_shipped_constitution_has_critique_and_revision_requests():
    principles = load_constitution()
    assert len(principles) >= 3 and len({p.name for p in principles}) == len(principles)
    assert all(p.critique and p.revision for p in principles)


@pytest.mark.parametrize(
    "text, message",
    [
        ("principles:\n  - name: a\n    critique: [unclosed\n", r"c\.yaml:4: invalid YAML"),
        (
            "principles:\n  - name: kind\n    critique: Be kind?\n    revision: Be kinder.\n"
            "  - name: warmth\n    critique: Is it cold?\n",
            r"c\.yaml:5: field 'principles\[1\]\.revision': missing \(principle 'warmth'\)",
        ),
        (
            "principles:\n  - name: w\n    critique: ''\n    revision: r\n",
            r"c\.yaml:2: field 'principles\[0\]\.critique': expected non-empty text, got '' \(principle 'w'\)",
        ),
        (
            "principles:\n  - name: w\n    critque: c\n    revision: r\n",
            r"c\.yaml:2: field 'principles\[0\]\.critque': unknown key \(principle 'w'\)",
        ),
        ("principles: []\n", r"c\.yaml:1: field 'principles': expected a non-empty list"),
        ("rules:\n  - x\n", r"c\.yaml:1: field 'principles': missing"),
    ],
)
def test_a_bad_constitution_is_one_line_naming_the_file_line_and_principle(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_constitution(str(path))
    assert "\n" not in str(info.value)


# ---- critiques that carry information (the oracle's view) -------------------------------------------


def test_oracle_critique_quotes_the_words_whose_removal_raises_the_reward():
    def oracle(c, o):  # +1 per "good", -1 per "bad", -2 per "awful"
        words = o.split()
        return words.count("good") - words.count("bad") - 2 * words.count("awful")

    text = oracle_critique(oracle, "c", "a bad day , awful food but good friends")
    assert text == 'What pulls it down: "bad", "awful". What works: "good".'
    assert oracle_critique(oracle, "c", "neutral words only") == ""
    assert oracle_critique(oracle, "c", "awful") == ""  # nothing left to compare with


def test_simulated_language_feedback_names_what_lowers_the_sentiment_oracle():
    annotator = SimulatedAnnotator("sim", sentiment_oracle, rating_noise=0.0)
    record = annotator.language_feedback(
        "How was it?", "The trip was terrible, but the food was great.", np.random.default_rng(0)
    )
    assert record.feedback.startswith(annotator.feedback_templates[2])  # VADER 0.68: the upper third, yet
    assert '"terrible"' in record.feedback.split("What works")[0] and 'What works: "great"' in record.feedback


# ---- the model judge ---------------------------------------------------------------------------------


class FirstGoodJudgeModel(torch.nn.Module):
    """Logits for ' A' / ' B' such that P(A) = 0.9 when the response shown first is 'good' and 0.3
    otherwise: a judge that prefers 'good' and also leans towards the first position."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer, self.weight = tokenizer, torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.calls: list[str] = []

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache):
        logits = torch.zeros(input_ids.shape[0], 1, len(self.tokenizer))
        a, b = self.tokenizer.convert_tokens_to_ids(["A", "B"])
        for i, row in enumerate(input_ids):
            text = self.tokenizer.decode(row[attention_mask[i].bool()])
            self.calls.append(text)
            p = 0.9 if "Response A: good" in text else 0.3
            logits[i, 0, a] = math.log(p / (1 - p))
        return SimpleNamespace(logits=logits)


def test_judge_asks_both_orders_and_its_position_bias_matches_the_hand_computation():
    tokenizer = build_char_tokenizer()
    model = FirstGoodJudgeModel(tokenizer)
    judge = ModelJudge(model, tokenizer, use_chat_template=False)
    verdicts = judge.compare(["c", "c"], ["good", "bad"], ["bad", "good"])
    # pair 1: P(A | good, bad) = 0.9, P(A | bad, good) = 0.3 -> P(good > bad) = (0.9 + 1 - 0.3) / 2 = 0.8
    assert verdicts.first_ab.tolist() == pytest.approx([0.9, 0.3]) and verdicts.first_ba.tolist() == pytest.approx(
        [0.3, 0.9]
    )
    assert verdicts.preference.tolist() == pytest.approx([0.8, 0.2])
    assert verdicts.position_bias == pytest.approx((0.9 + 0.3) / 2 - 0.5)  # 0.1: a lean towards A
    # each order asked once per pair (the character tokenizer reads a newline as <unk>)
    assert sum("Response A: good" in t and "Response B: bad" in t for t in model.calls) == 2
    assert sum("Response A: bad" in t and "Response B: good" in t for t in model.calls) == 2
    assert all(t.endswith("Answer with A or B.<unk>Answer: ") for t in model.calls)  # " A" is 2 tokens: " " is fed
    # A judge that always answers A: P(first) = 0.75 in both orders, no preference, bias 0.25.
    always_a = JudgeVerdicts(torch.tensor([0.75, 0.75]), torch.tensor([0.75, 0.75]))
    assert always_a.preference.tolist() == [0.5, 0.5] and always_a.position_bias == pytest.approx(0.25)


def test_judge_selection_keeps_the_refinement_the_judge_prefers_to_the_original_given_the_critique():
    tokenizer = build_char_tokenizer()
    model = FirstGoodJudgeModel(tokenizer)
    judge = ModelJudge(model, tokenizer, use_chat_template=False)
    records = [LanguageFeedback("c", "meh", "be nicer")]
    cfg = ILFConfig(selection="judge")
    # P(good > meh) = (0.9 + 1 - 0.3) / 2 = 0.8, P(bad > meh) = (0.3 + 1 - 0.3) / 2 = 0.5; "meh" again is unusable
    index, score = choose_refinements(cfg, records, [["bad", "good", "meh"]], judge=judge)
    assert index.tolist() == [1] and score.tolist() == pytest.approx([0.8])
    assert all("Feedback on a reply: be nicer" in t for t in model.calls)


def test_judge_is_a_reward_source_and_an_annotator_that_reports_its_position_bias(model_cache, tmp_path, capsys):
    source = load_reward_source("judge:tiny-policy")
    rewards = source(["How was it?", "How was it?"], ["Great!", "Awful."])
    assert rewards.shape == (2,) and ((rewards > -1) & (rewards < 1)).all() and source.name == "judge:tiny-policy"
    assert -1 < load_oracle("judge:tiny-policy")("How was it?", "Great!") < 1  # --oracle judge:MODEL in annotate
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "How was it?", "completions": ["Great fun!", "Awful.", "ok"]}) + "\n")
    out = tmp_path / "prefs.jsonl"
    cfg = AnnotateConfig(samples=str(samples), annotator="judge:tiny-policy", pairs_per_prompt=3, output=str(out))
    records = run_annotate(cfg)
    assert len(records) == 3 and {r.annotator for r in records} == {"judge:tiny-policy"}
    report = json.loads((tmp_path / "prefs.jsonl.judge.json").read_text())
    assert report["pairs"] == 3 and -0.5 <= report["position_bias"] <= 0.5
    assert 0 <= report["agreement_with_oracle"] <= 1 and "position bias" in capsys.readouterr().err
    assert (
        main(["annotate", "--samples", str(samples), "--annotator", "judge:tiny-policy", "--feedback", "rating"]) == 2
    )


# ---- ILF and critique-and-revise on tiny models ---------------------------------------------------------


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _common(tmp_path, name, **kw):
    return dict(
        policy="tiny-policy",
        output_dir=str(tmp_path / name),
        max_new_tokens=8,
        eval_prompts=str(tmp_path / "prompts.jsonl"),
        eval_unseen_prompts=None,
        eval_limit=4,
        eval_samples=1,
        oracle="keyword:a",
        use_chat_template=False,
        learning_rate=3e-3,
        batch_size=4,
        progress=False,
        seed=TEST_SEED,
        **kw,
    )


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(6)))
    return str(path)


def test_ilf_keeps_the_refinement_closest_to_each_critique_and_fine_tunes_on_it(model_cache, tmp_path, prompts_file):
    data = tmp_path / "critiques.jsonl"
    rows = [
        {"prompt": "q0", "completion": "xyz", "feedback": "use more a"},
        {"prompt": "q1", "completion": "bbb", "feedback": "shorter please"},
        {"prompt": "q2", "completion": "ccc", "feedback": "fine", "correction": "aaa corrected"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy, tokenizer = load_policy("tiny-policy")
    before = _params(policy)
    cfg = ILFConfig(data=str(data), embedder="tiny-reward", num_refinements=3, num_epochs=2, **_common(tmp_path, "ilf"))
    run_dir, summary = run_ilf(cfg, policy, tokenizer)
    kept = [json.loads(line) for line in (run_dir / "round-0" / "refinements.jsonl").read_text().splitlines()]
    assert [len(k["refinements"]) for k in kept] == [3, 3, 3]
    assert kept[2]["kept"] == "aaa corrected"  # a person's correction outranks the sampled refinements
    embed, checked = SentenceEmbedder("tiny-reward"), 0
    for k in kept[:2]:
        usable = [x for x in k["refinements"] if x.strip() and x.strip() != k["completion"]]
        if usable:  # the kept one is the usable refinement most similar to the critique
            sims = [float(embed([k["feedback"]])[0] @ embed([x])[0]) for x in usable]
            assert k["kept"] == usable[int(np.argmax(sims))] and k["score"] == pytest.approx(max(sims), abs=1e-5)
            checked += 1
    assert checked > 0
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["records"] == 3 and rounds[0]["kept"] == sum(k["kept"] is not None for k in kept)
    assert not torch.equal(before, _params(policy))  # SFT on the kept refinements moved the weights
    assert (run_dir / "policy" / "config.json").is_file()
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert set(evaluation) == {"seen"} and evaluation == summary
    assert evaluation["seen"]["delta_J"] == pytest.approx(
        evaluation["seen"]["J_after"] - evaluation["seen"]["J_before"]
    )


def test_ilf_without_data_critiques_fresh_samples_every_round(model_cache, tmp_path, prompts_file):
    cfg = ILFConfig(
        prompts=prompts_file,
        num_rounds=2,
        prompts_per_round=4,
        embedder="tiny-reward",
        num_refinements=2,
        num_epochs=1,
        **_common(tmp_path, "ilf-sim"),
    )
    run_dir, _ = run_ilf(cfg)
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1] and all(1 <= r["records"] <= 4 for r in rounds)
    first = [json.loads(line) for line in (run_dir / "round-0" / "refinements.jsonl").read_text().splitlines()]
    assert all(r["annotator"] == "simulated" and r["feedback"] for r in first)


def test_language_feedback_without_its_critique_is_a_one_line_error_naming_file_line_and_field(tmp_path, capsys):
    data = tmp_path / "lf.jsonl"
    data.write_text(
        json.dumps({"prompt": "p", "completion": "o", "feedback": "ok"})
        + "\n"
        + json.dumps({"prompt": "p", "completion": "o"})
        + "\n"
    )
    assert main(["ilf", "--data", str(data), "--policy", "tiny-policy"]) == 2
    assert f"{data}:2: field 'feedback': missing required column" in capsys.readouterr().err
    assert main(["ilf", "--data", str(data), "--num_rounds", "2"]) == 2
    assert "drop --data" in capsys.readouterr().err


def test_revise_writes_revision_pairs_as_preferences_and_fine_tunes_on_the_revisions(
    model_cache, tmp_path, prompts_file
):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(
        "principles:\n  - name: warm\n    critique: Is it cold?\n    revision: Make it warm.\n"
        "  - name: kind\n    critique: Is it rude?\n    revision: Make it kind.\n"
    )
    policy, tokenizer = load_policy("tiny-policy")
    before = _params(policy)
    cfg = ReviseConfig(
        prompts=prompts_file,
        constitution=str(constitution),
        num_revisions=2,
        critique_max_new_tokens=8,
        num_epochs=2,
        **_common(tmp_path, "revise"),
    )
    run_dir, summary = run_revise(cfg, policy, tokenizer)
    rows = [json.loads(line) for line in (run_dir / "revisions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["passes"]) == 2 for r in rows)
    assert {p["principle"] for r in rows for p in r["passes"]} <= {"warm", "kind"}
    for r in rows:  # the final revision is the last non-empty one, else the original answer
        last = [p["revision"] for p in r["passes"] if p["revision"].strip()]
        assert r["revision"] == (last[-1] if last else r["original"])
    pairs = read_records(str(run_dir / "revise_preferences.jsonl"), "preference")
    expected = [r for r in rows if r["revision"].strip() and r["original"].strip() and r["revision"] != r["original"]]
    assert [(p.chosen, p.rejected) for p in pairs] == [(r["revision"], r["original"]) for r in expected]
    assert summary["pairs"] == len(pairs) and 0 <= summary["pairs_agreement_with_oracle"] <= 1
    assert not torch.equal(before, _params(policy)) and (run_dir / "policy" / "config.json").is_file()
    assert set(summary["J"]) == {"seen"}


def test_language_feedback_record_keeps_the_correction_field():
    record = LanguageFeedback("p", "o", "f", correction="better o")
    assert record.to_dict()["correction"] == "better o"


def test_revise_with_a_bad_constitution_exits_2_naming_the_file_and_principle(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("principles:\n  - name: warmth\n    critique: Is it cold?\n")
    assert main(["revise", "--constitution", str(path), "--policy", "tiny-policy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rlhflab revise: error: {path}:2: field 'principles[0].revision': missing (principle 'warmth')"


@pytest.mark.integration
def test_ilf_and_the_judge_on_the_default_models(tmp_path):
    """The default judge answers both orders (so P(a > b) + P(b > a) = 1 whatever its position
    bias), and one small ILF round runs on SmolLM2 with MiniLM selection and informative critiques."""
    judge = load_judge("judge:smollm2-135m-instruct")
    good, bad = "What a lovely day, thank you for asking!", "Awful. Everything went wrong."
    verdicts = judge.compare(["How was your day?"] * 2, [good, bad], [bad, good])
    assert float(verdicts.preference.sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(verdicts.first_ab[0]) == pytest.approx(float(verdicts.first_ba[1]), abs=1e-4)
    assert -0.5 < verdicts.position_bias < 0.5
    cfg = ILFConfig(
        limit=4,
        prompts_per_round=4,
        num_refinements=2,
        max_new_tokens=16,
        eval_limit=4,
        eval_samples=1,
        eval_unseen_prompts=None,
        num_epochs=1,
        batch_size=4,
        output_dir=str(tmp_path / "ilf"),
        progress=False,
    )
    run_dir, summary = run_ilf(cfg)
    rows = [json.loads(line) for line in (run_dir / "round-0" / "refinements.jsonl").read_text().splitlines()]
    assert rows and all(len(r["refinements"]) == 2 and r["feedback"] for r in rows)
    assert any(r["kept"] is not None for r in rows) and math.isfinite(summary["seen"]["delta_J"])
