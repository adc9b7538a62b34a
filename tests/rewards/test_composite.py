"""Composite reward sources (Section 7.8, several objectives): the spec grammar and YAML files, their
one-line errors, the rule rewards, the running standardisation of each component worked by hand,
and a composite driving best-of-n and PPO end to end on the tiny policy."""

import json
import math
import re
import statistics
from dataclasses import replace

import pytest
import torch

from rlhflab.commands.decode import BestOfNConfig, run_bon
from rlhflab.commands.train import run_policy_optimization
from rlhflab.errors import ConfigError
from rlhflab.feedback.oracles import load_oracle
from rlhflab.rewards.composite import CompositeTerm, is_composite_spec, parse_composite_spec, read_composite_file
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.loop import STATE_FILE, latest_checkpoint
from rlhflab.train.policy_optimization import PolicyOptimization, RLConfig
from tests._env import TEST_SEED

SEEN_OUTPUTS: list[str] = []


def vowel_share(context: str, output: str) -> float:
    """A test objective that also records every output it scores (best-of-n's candidates)."""
    SEEN_OUTPUTS.append(output)
    return sum(ch in "aeiou" for ch in output) / max(1, len(output))


def weights(spec):
    return [(t.reward, t.weight) for t in parse_composite_spec(spec)]


# ---- the grammar -----------------------------------------------------------------------------------
def test_terms_take_weights_default_one_and_signs_from_the_operators():
    assert weights("0.7*runs/x/reward_model + 0.3*brevity") == [("runs/x/reward_model", 0.7), ("brevity", 0.3)]
    assert weights("sentiment - 0.5*length") == [("sentiment", 1.0), ("length", -0.5)]
    assert weights("- sentiment + 2*brevity") == [("sentiment", -1.0), ("brevity", 2.0)]
    assert weights("sentiment - -2*length") == [("sentiment", 1.0), ("length", 2.0)]
    assert weights("-1.5e-1*length") == [("length", -0.15)]


def test_specs_keep_dashes_dots_slashes_colons_and_stars():
    spec = "0.5*runs/rm-v2.1/reward_model - my_pkg.rewards:score + C:/models/rm-1 + .25*regex:^a.*-b$"
    assert weights(spec) == [
        ("runs/rm-v2.1/reward_model", 0.5),
        ("my_pkg.rewards:score", -1.0),
        ("C:/models/rm-1", 1.0),
        ("regex:^a.*-b$", 0.25),
    ]
    # A '*' inside a spec is not a weight: only a number before the first '*' is.
    assert not is_composite_spec("regex:a*b") and load_oracle("regex:a*b")("", "xaab") == 1.0


def test_a_composite_is_a_yaml_name_a_spec_with_spaces_or_one_weighted_term(tmp_path):
    assert is_composite_spec("sentiment + brevity") and is_composite_spec("0.5*brevity")
    assert is_composite_spec("components.yaml") and is_composite_spec("c.yml")
    assert not is_composite_spec("sentiment") and not is_composite_spec("pkg.mod:fn")
    directory = tmp_path / "my reward 0.5*model"  # an existing directory is a reward model, whatever its name
    directory.mkdir()
    assert not is_composite_spec(str(directory))


def test_a_yaml_file_gives_weights_normalisation_and_names(tmp_path):
    path = tmp_path / "components.yaml"
    path.write_text(
        "- {reward: runs/rm-1/reward_model, weight: 0.7}\n"
        "- {reward: length:20, weight: -0.3, normalize: false, name: words}\n"
        "- reward: regex:^Sure, \\w+\n"
    )
    assert read_composite_file(path) == [
        CompositeTerm("runs/rm-1/reward_model", 0.7, True, "runs/rm-1/reward_model", f"{path}: entry 1"),
        CompositeTerm("length:20", -0.3, False, "words", f"{path}: entry 2"),
        CompositeTerm("regex:^Sure, \\w+", 1.0, True, "regex:^Sure, \\w+", f"{path}: entry 3"),
    ]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0.7*", "composite reward '0.7*': term 1 has a weight but no reward"),
        ("sentiment +", "composite reward 'sentiment +': ends with '+' and no term after it"),
        ("sentiment brevity", "expected ' + ' or ' - ' before term 2, got 'brevity'"),
        ("sentiment + - brevity", "term 2 is missing (two operators in a row)"),
        ("sentiment + *brevity", "term 2 has '*' but no weight before it"),
        ("1e999*brevity", "term 1's weight 1e999 is not a finite number"),
        ("sentiment - 0.5*sentiment", "term 2: name 'sentiment' is already term 1's"),
        ("brevity + 0.5*no_such_oracle", "term 2: unknown oracle 'no_such_oracle'"),
        ("brevity - length:many", "term 2: oracle 'length:many': the target must be a whole number"),
    ],
)
def test_a_malformed_spec_is_a_one_line_error_naming_the_term(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_reward_source(spec)
    assert "\n" not in str(error.value)


def test_terms_joined_without_spaces_are_one_unknown_spec_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown oracle 'sentiment\+brevity'.*composite such as"):
        load_reward_source("sentiment+brevity")


@pytest.mark.parametrize(
    "text, message",
    [
        ("- {weight: 2}\n", "entry 1: missing key 'reward'"),
        ("- {reward: length}\n- {reward: brevity, weight: heavy}\n", "entry 2: 'weight' must be a finite number"),
        ("- {reward: length, weight: true}\n", "entry 1: 'weight' must be a finite number, got True"),
        ("- {reward: length, normalize: maybe}\n", "entry 1: 'normalize' must be true or false, got 'maybe'"),
        ("- {reward: length, wieght: 2}\n", "entry 1: unknown key 'wieght'"),
        ("- {reward: 3}\n", "entry 1: 'reward' must be a reward source spec"),
        ("- {reward: length, name: ''}\n", "entry 1: 'name' must be a non-empty string"),
        ("- length\n", "entry 1: expected a mapping with a 'reward' key, got str 'length'"),
        ("reward: length\n", "expected a non-empty list of entries"),
        ("- {reward: length}\n- {reward: no_such_oracle}\n", "entry 2: unknown oracle 'no_such_oracle'"),
        ("- {reward: length}\n- {reward: brevity, name: length}\n", "entry 2: name 'length' is already entry 1's"),
        ("- {reward: length\n", "invalid YAML"),
    ],
)
def test_a_malformed_yaml_entry_is_a_one_line_error_naming_file_and_entry(tmp_path, text, message):
    path = tmp_path / "components.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_reward_source(str(path))
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_missing_yaml_file_is_named():
    with pytest.raises(ConfigError, match=r"^nowhere/components\.yaml: composite reward file not found$"):
        load_reward_source("nowhere/components.yaml")


# ---- rule rewards ------------------------------------------------------------------------------------
def test_rule_rewards_by_hand():
    length, to_four = load_oracle("length"), load_oracle("length:4")
    assert length("", "one two  three") == -3.0 and length("", "") == 0.0
    assert to_four("", "a b") == -2.0 and to_four("", "a b c d e f") == -2.0 and to_four("", "a b c d") == 0.0
    digits = load_oracle(r"regex:^\d+$")
    assert digits("", "123") == 1.0 and digits("", "12a") == 0.0
    assert load_oracle("regex:sun")("", "a sunny day") == 1.0  # matches anywhere unless anchored
    assert load_oracle("keyword:Sun")("", "a sunny day") == 1.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("regex:(", "oracle 'regex:(': invalid regular expression"),
        ("length:-3", "oracle 'length:-3': the target must be a whole number of words"),
        ("keyword:", "oracle 'keyword:': nothing after 'keyword:'"),
    ],
)
def test_a_malformed_rule_reward_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_oracle(spec)


# ---- standardisation -----------------------------------------------------------------------------------
def test_each_component_is_standardised_by_its_running_moments_worked_by_hand():
    source = load_reward_source("2*length - keyword:b")
    # Batch 1, by its own moments. length: raw (-1, -3), mean -2, population std 1 -> (1, -1).
    # keyword:b: raw (0, 1), mean 1/2, std 1/2 -> (-1, 1). Composite 2*(1, -1) - (-1, 1) = (3, -3).
    torch.testing.assert_close(source(["c", "c"], ["a", "a b c"]), torch.tensor([3.0, -3.0]))
    assert {k: v.tolist() for k, v in source.components_last.items()} == {
        "length": [-1.0, -3.0],
        "keyword:b": [0.0, 1.0],
    }
    # Batch 2 is folded in first. length: {-1, -3, -5}, mean -3, std sqrt(8/3) -> -2/sqrt(8/3).
    # keyword:b: {0, 1, 1}, mean 2/3, std sqrt(2/9) -> (1/3)/sqrt(2/9).
    expected = 2 * (-2 / math.sqrt(8 / 3)) - (1 / 3) / math.sqrt(2 / 9)
    torch.testing.assert_close(source(["c"], ["a b c d e"]), torch.tensor([expected]))
    assert source.components_last["length"].tolist() == [-5.0] and source.components_last["keyword:b"].tolist() == [1.0]
    # The statistics belong to the object: a fresh source starts again from its first batch.
    torch.testing.assert_close(load_reward_source("2*length - keyword:b")(["c"], ["a b c d e"]), torch.tensor([0.0]))


def test_normalize_false_leaves_a_component_raw(tmp_path):
    path = tmp_path / "components.yaml"
    path.write_text("- {reward: length, weight: 0.5, normalize: false, name: words}\n")
    source = load_reward_source(str(path))
    for outputs in (["a", "a b c"], ["a b c d e"]):
        raw = torch.tensor([-len(o.split()) for o in outputs], dtype=torch.float32)
        torch.testing.assert_close(source(["c"] * len(outputs), outputs), 0.5 * raw)
        torch.testing.assert_close(source.components_last["words"], raw)


# ---- end to end ------------------------------------------------------------------------------------------
def test_best_of_n_with_a_composite_reward_keeps_each_prompts_composite_argmax(model_cache, tmp_path):
    spec = "2*length:4 - 0.5*tests.rewards.test_composite:vowel_share"
    cfg = BestOfNConfig(
        policy="tiny-policy", reward=spec, limit=3, n=4, max_new_tokens=12, use_chat_template=False,
        output=str(tmp_path / "bon.jsonl"), seed=TEST_SEED,
    )  # fmt: skip
    SEEN_OUTPUTS.clear()
    run_bon(cfg)
    chosen = [json.loads(line)["completion"] for line in (tmp_path / "bon.jsonl").read_text().splitlines()]
    candidates = list(SEEN_OUTPUTS)  # one reward call on all 3 x 4 candidates, prompt by prompt
    assert len(chosen) == 3 and len(candidates) == 12

    def standardised(values):
        mean, std = statistics.fmean(values), statistics.pstdev(values)
        return [(v - mean) / (std + 1e-8) for v in values]

    words = standardised([-abs(len(o.split()) - 4) for o in candidates])
    vowels = standardised([sum(ch in "aeiou" for ch in o) / max(1, len(o)) for o in candidates])
    by_hand = [2 * w - 0.5 * v for w, v in zip(words, vowels)]
    for i, best in enumerate(chosen):
        group = list(range(4 * i, 4 * i + 4))
        assert best in [candidates[j] for j in group]
        assert max(by_hand[j] for j in group if candidates[j] == best) == pytest.approx(max(by_hand[j] for j in group))


def test_ppo_logs_each_components_raw_mean_as_reward_slash_name(model_cache, tmp_path):
    cfg = RLConfig(
        algorithm="ppo", policy="tiny-policy", reward="length + 0.5*regex:[aeiou]", prompts="train", limit=8,
        output_dir=str(tmp_path / "ppo"), num_iterations=2, prompts_per_iteration=4, max_new_tokens=6, epochs=1,
        progress=False, use_chat_template=False, seed=TEST_SEED,
    )  # fmt: skip
    cfg.validate()
    run_dir = run_policy_optimization(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["reward/length"] <= 0 and 0 <= row["reward/regex:[aeiou]"] <= 1


def test_a_resumed_ppo_run_restores_each_components_running_moments(model_cache, tmp_path, monkeypatch):
    spec = "length + 0.5*regex:[aeiou]"
    cfg = RLConfig(
        algorithm="ppo", policy="tiny-policy", reward=spec, oracle=None, prompts="train", limit=8,
        num_iterations=4, save_steps=2, prompts_per_iteration=4, max_new_tokens=6, epochs=1, progress=False,
        use_chat_template=False, seed=TEST_SEED, output_dir=str(tmp_path / "whole"),
    )  # fmt: skip
    cfg.validate()
    whole = load_reward_source(spec)
    run_policy_optimization(cfg, reward_source=whole)

    killed_dir, real_collect = tmp_path / "killed", PolicyOptimization.collect

    def killed_at_iteration_2(self, iteration):
        if iteration == 2:
            raise RuntimeError("killed")
        return real_collect(self, iteration)

    monkeypatch.setattr(PolicyOptimization, "collect", killed_at_iteration_2)
    with pytest.raises(RuntimeError, match="killed"):
        run_policy_optimization(replace(cfg, output_dir=str(killed_dir)), reward_source=load_reward_source(spec))
    monkeypatch.setattr(PolicyOptimization, "collect", real_collect)
    state = json.loads((latest_checkpoint(killed_dir) / STATE_FILE).read_text())
    assert latest_checkpoint(killed_dir).name == "iter-0000001"
    assert [c["moments"]["count"] for c in state["algorithm"]["reward_source"]["components"]] == [8, 8]

    resumed = load_reward_source(spec)  # a fresh source: its statistics come from the checkpoint
    run_policy_optimization(replace(cfg, output_dir=str(killed_dir), resume=str(killed_dir)), reward_source=resumed)
    for want, have in zip(whole.moments, resumed.moments):
        assert have.count == want.count == 16
        assert have.mean == pytest.approx(want.mean, rel=1e-6) and have.m2 == pytest.approx(want.m2, rel=1e-6)
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("whole", "killed")}  # fmt: skip
    assert [r["iteration"] for r in rows["killed"]] == [0, 1, 2, 3]
    for want, have in zip(rows["whole"], rows["killed"]):  # the composite reward of every iteration, resumed or not
        assert have["reward"] == pytest.approx(want["reward"], rel=1e-5, abs=1e-6)
