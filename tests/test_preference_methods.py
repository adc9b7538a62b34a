"""Direct preference methods (DPO, IPO, cDPO, rDPO, SLiC-HF) and ranking methods (RRHF, PRO) on the
one loop, on a tiny random policy and data labelled by a known rule (more 'a's is better)."""

import copy
import json
from pathlib import Path

import pytest
import torch

from rlhflab.data.records import Ranking
from rlhflab.models import load_policy
from rlhflab.train.loop import make_accelerator, train
from rlhflab.train.preference import (
    PreferenceAlgorithm,
    PreferenceConfig,
    RankingAlgorithm,
    RankingConfig,
    sequence_logps,
    tokenize_pairs,
    tokenize_rankings,
)
from tests._env import TEST_SEED
from tests._train_entry import a_preferences


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def pref_config(tmp_path, **overrides):
    fields = dict(
        output_dir=str(tmp_path / "run"),
        batch_size=8,
        num_epochs=5,
        learning_rate=3e-3,
        progress=False,
        use_chat_template=False,
        kl_coef=0.1,
        seed=TEST_SEED,
    )
    fields.update(overrides)
    return PreferenceConfig(**fields)


@torch.no_grad()
def heldout_accuracy(model, reference, tokenizer, config, loss):
    """Share of held-out pairs the implicit reward β log(π/π_ref) (or, for SLiC, log π) ranks right."""
    pairs = tokenize_pairs(a_preferences(24, seed=1), tokenizer, config, use_chat_template=False)
    examples = [c for c, _ in pairs] + [r for _, r in pairs]
    logps = sequence_logps(model, examples, tokenizer.pad_token_id)[0]
    if loss != "slic":
        logps = logps - sequence_logps(reference, examples, tokenizer.pad_token_id)[0]
    chosen, rejected = logps.split(len(pairs))
    return float((chosen > rejected).float().mean())


@pytest.mark.parametrize("loss", ["dpo", "ipo", "cdpo", "rdpo", "slic"])
def test_each_preference_loss_learns_the_labelling_rule_on_held_out_pairs(model_cache, tmp_path, loss, record_margin):
    model, tokenizer = load_policy("tiny-policy")
    reference = copy.deepcopy(model)
    config = pref_config(tmp_path, loss=loss, label_smoothing=0.1 if loss in ("cdpo", "rdpo") else 0.0)
    before = heldout_accuracy(model, reference, tokenizer, config, loss)
    pairs = tokenize_pairs(a_preferences(32), tokenizer, config, use_chat_template=False)
    run_dir = train(config, PreferenceAlgorithm(config, model, tokenizer, pairs))
    rows = read_metrics(run_dir)
    assert len(rows) == 20  # 5 epochs of 32 pairs in batches of 8
    assert rows[-1]["accuracy"] == 1.0
    after = heldout_accuracy(model, reference, tokenizer, config, loss)
    record_margin("held-out accuracy", after, 0.9)
    assert after >= 0.9 and after > before, (before, after)
    assert (run_dir / "policy" / "config.json").is_file()


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_cached_reference_gives_the_same_losses_as_recomputing_it_every_step(model_cache, tmp_path, loss):
    runs = {}
    for cached in (True, False):
        model, tokenizer = load_policy("tiny-policy")
        config = pref_config(
            tmp_path / str(cached), loss=loss, num_epochs=1, precompute_reference=cached, reference_batch_size=5
        )  # chunks unlike the training batches: padding differs
        pairs = tokenize_pairs(a_preferences(32), tokenizer, config, use_chat_template=False)
        algorithm = PreferenceAlgorithm(config, model, tokenizer, pairs)
        runs[cached] = (read_metrics(train(config, algorithm)), algorithm)
    (cached_rows, cached_alg), (fresh_rows, fresh_alg) = runs[True], runs[False]
    assert cached_alg.reference_cache is not None and cached_alg.reference.model is None  # reference freed
    assert fresh_alg.reference_cache is None
    assert "reference_precompute_seconds" in cached_rows[0]
    for a, b in zip(cached_rows, fresh_rows):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_lora_reference_is_the_policy_with_adapters_disabled(model_cache, tmp_path):
    from rlhflab.models import apply_lora

    base, tokenizer = load_policy("tiny-policy")
    original = copy.deepcopy(base)
    config = pref_config(tmp_path, lora_r=4, lora_target_modules="q_proj,v_proj")
    policy = apply_lora(base, config)
    for name, p in policy.named_parameters():  # move the adapters off zero so they matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    pairs = tokenize_pairs(a_preferences(8), tokenizer, config, use_chat_template=False)
    algorithm = PreferenceAlgorithm(config, policy, tokenizer, pairs)
    assert algorithm.reference.model is None  # no second copy of the weights
    algorithm.bind(make_accelerator(config), {"policy": policy})
    examples = [c for c, _ in pairs] + [r for _, r in pairs]
    expected = sequence_logps(original, examples, tokenizer.pad_token_id)[0].detach()
    with torch.no_grad():
        adapted = sequence_logps(policy, examples, tokenizer.pad_token_id)[0]
    assert not torch.allclose(adapted, expected, atol=1e-3), "the adapters change the policy"
    torch.testing.assert_close(
        algorithm.reference_cache, torch.stack(expected.split(len(pairs)), -1), atol=1e-5, rtol=0
    )


def a_rankings(n: int, seed: int = 0):
    """Lists of 3 completions, best first by the count of 'a's (the pairs' rule, extended)."""
    prefs = a_preferences(n, seed)
    return [Ranking(prompt="pick", completions=[p.chosen, p.rejected, "xyz" * 2 + "y"]) for p in prefs]


# Held-out top-1 accuracy starts near 0.55. One training run's gain on 48 held-out lists was
# 0.125-0.40 (rrhf) and 0.25-0.40 (pro) over seeds 0-4; the mean of three runs, which the test
# asserts, 0.18-0.33 (rrhf) and 0.25-0.40 (pro), with a spread of about 0.05 between seeds. The bar,
# a mean gain of 0.10 (5 lists), is 3 spreads under the lowest mean seen, and a loss that does not
# learn gains about 0. The training-side check averages the last epoch's 4 batches (one batch of 8
# lists moves in steps of 0.125). Training on 64 lists instead of 32, or for 8 epochs instead of 5,
# did not raise the gains.
TRAIN_LISTS, HELD_OUT_LISTS, MIN_GAIN = 32, 48, 0.10


@torch.no_grad()
def top1_accuracy(model, tokenizer, config):
    rankings = tokenize_rankings(a_rankings(HELD_OUT_LISTS, seed=1), tokenizer, config, use_chat_template=False)
    rows = [e for examples, _ in rankings for e in examples]
    logps, lengths = sequence_logps(model, rows, tokenizer.pad_token_id)
    scores = (logps / lengths).view(len(rankings), 3)
    return float((scores.argmax(-1) == 0).float().mean())


@pytest.mark.parametrize("loss", ["rrhf", "pro"])
def test_ranking_losses_learn_to_score_the_best_response_highest(model_cache, tmp_path, loss, record_margin):
    # Judged over three training seeds: one run's held-out gain moves by ±0.1 with the batch order
    # the seed draws (rrhf 0.125-0.40 over seeds 0-4), the mean over three much less.
    gains, last_epoch_top1 = [], []
    for run in range(3):
        model, tokenizer = load_policy("tiny-policy")
        config = RankingConfig(
            loss=loss,
            output_dir=str(tmp_path / f"run{run}"),
            batch_size=8,
            num_epochs=5,
            learning_rate=3e-3,
            progress=False,
            use_chat_template=False,
            seed=TEST_SEED + 100 * run,
        )
        before = top1_accuracy(model, tokenizer, config)
        rankings = tokenize_rankings(a_rankings(TRAIN_LISTS), tokenizer, config, use_chat_template=False)
        run_dir = train(config, RankingAlgorithm(config, model, tokenizer, rankings))
        gains.append(top1_accuracy(model, tokenizer, config) - before)
        last_epoch = read_metrics(run_dir)[-TRAIN_LISTS // 8 :]
        last_epoch_top1.append(sum(r["top1_accuracy"] for r in last_epoch) / len(last_epoch))
    mean_gain, mean_top1 = sum(gains) / 3, sum(last_epoch_top1) / 3
    record_margin("held-out top-1 gain, mean of 3 runs", mean_gain, MIN_GAIN)
    record_margin("last epoch's top-1 accuracy, mean of 3 runs", mean_top1, 0.75)
    assert mean_gain >= MIN_GAIN, gains
    assert mean_top1 >= 0.75, last_epoch_top1


def test_rlhflab_dpo_command_trains_from_a_jsonl_file(model_cache, tmp_path, capsys):
    from rlhflab.cli import main

    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in a_preferences(8)))
    out = tmp_path / "dpo"
    code = main(
        [
            "dpo",
            "--model",
            "tiny-policy",
            "--data",
            str(data),
            "--output_dir",
            str(out),
            "--batch_size",
            "4",
            "--max_steps",
            "2",
            "--learning_rate",
            "1e-3",
            "--use_chat_template",
            "false",
            "--progress",
            "false",
        ]
    )
    assert code == 0
    assert "policy saved to" in capsys.readouterr().out
    assert (out / "policy" / "config.json").is_file() and len(read_metrics(out)) == 2


def test_rlhflab_cdpo_without_label_smoothing_is_a_one_line_error(model_cache, tmp_path, capsys):
    from rlhflab.cli import main

    code = main(["dpo", "--loss", "cdpo", "--model", "tiny-policy", "--data", "x.jsonl"])
    assert code == 2
    assert "label_smoothing" in capsys.readouterr().err


def test_compare_ranks_pool_samples_by_the_reward_model_best_first_with_ties():
    from rlhflab.commands.compare import _rankings_by_reward_model
    from rlhflab.data.records import Samples
    from rlhflab.rewards.registry import RewardSource

    length = RewardSource("length", lambda c, o: [float(len(x)) for x in o])
    samples = [
        Samples(prompt="p", completions=["aa", "a", "", "bb", "ccc"]),
        Samples(prompt="q", completions=["x", " "]),
    ]
    (ranking,) = _rankings_by_reward_model(samples, length)  # "q" has one non-empty completion: no list
    assert ranking.completions == ["ccc", "aa", "bb", "a"] and ranking.ties == [0, 1, 1, 2]
