"""Reward models that keep a pool's annotators apart (Section 5.1, marginalisation over preferences):
one head per annotator on a shared backbone, a mean-variance Bradley-Terry head, and simulated pools
whose members follow different oracles R*. Tiny models only."""

import json
import math
import random

import numpy as np
import pytest
import torch

from rlhflab.commands.collect import AnnotateConfig, run_annotate
from rlhflab.commands.train import run_reward
from rlhflab.data.records import Preference, Samples
from rlhflab.errors import ConfigError, DataError
from rlhflab.feedback.annotators import make_pool
from rlhflab.feedback.oracles import keyword_oracle
from rlhflab.losses import bradley_terry_loss, mean_variance_bradley_terry_loss
from rlhflab.models import load_reward_model
from rlhflab.models.scoring import score
from rlhflab.rewards.heads import MANIFEST
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.loop import train
from rlhflab.train.reward_model import RewardAlgorithm, RewardConfig
from tests._env import TEST_SEED
from tests._train_entry import a_preferences

# ---- the loss by hand ----------------------------------------------------------------------------


def test_mean_variance_bradley_terry_loss_matches_the_probit_approximation_by_hand():
    # Pair 1: mu gap 1, sigma^2 = sigma'^2 = 12/pi, so 1 + (pi/8)(24/pi) = 4 and the logit is 1/2:
    #   -log sigma(0.5) = log(1 + e^-0.5) = 0.474077.
    # Pair 2: (almost) no variance, so Eq. 11 with gap 2: -log sigma(2) = log(1 + e^-2) = 0.126928.
    log_var = math.log(12 / math.pi)
    loss = mean_variance_bradley_terry_loss(
        torch.tensor([1.0, 3.0]),
        torch.tensor([log_var, -60.0]),
        torch.tensor([0.0, 1.0]),
        torch.tensor([log_var, -60.0]),
    )
    assert loss.item() == pytest.approx((0.474077 + 0.126928) / 2, abs=1e-6)
    # Without variance it is the Bradley-Terry loss (Eq. 11); more variance, less confidence.
    chosen, rejected, none = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 0.5]), torch.full((2,), -80.0)
    torch.testing.assert_close(
        mean_variance_bradley_terry_loss(chosen, none, rejected, none), bradley_terry_loss(chosen, rejected)
    )
    wide = torch.zeros(1)
    assert mean_variance_bradley_terry_loss(
        torch.ones(1), wide, torch.zeros(1), wide
    ) > mean_variance_bradley_terry_loss(torch.ones(1), wide - 5, torch.zeros(1), wide - 5)
    with pytest.raises(ValueError):
        mean_variance_bradley_terry_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))


# ---- two annotators who want opposite things -----------------------------------------------------


def opposite_annotators(n: int, seed: int) -> list[Preference]:
    """``n`` pairs by annotator A (more 'a's is better) and ``n`` other pairs by B (fewer 'a's)."""
    a = [Preference(p.prompt, p.chosen, p.rejected, annotator="A") for p in a_preferences(n, seed=2 * seed)]
    b = [Preference(p.prompt, p.rejected, p.chosen, annotator="B") for p in a_preferences(n, seed=2 * seed + 1)]
    mixed = a + b
    random.Random(seed).shuffle(mixed)
    return mixed


def accuracy(source, pairs) -> float:
    contexts = [p.prompt for p in pairs]
    chosen, rejected = source(contexts, [p.chosen for p in pairs]), source(contexts, [p.rejected for p in pairs])
    return float((chosen > rejected).float().mean())


def train_reward(tmp_path, name, records, **options):
    config = RewardConfig(
        output_dir=str(tmp_path / name),
        batch_size=8,
        num_epochs=4,
        learning_rate=1e-3,
        progress=False,
        seed=TEST_SEED,
        **options,
    )
    torch.manual_seed(TEST_SEED)  # the fresh heads' initialisation
    outputs = {"per_annotator": len({r.annotator for r in records}), "distributional": 2}
    model, tokenizer = load_reward_model("tiny-reward", num_labels=max([1] + [outputs[k] for k in options]))
    run_dir = train(config, RewardAlgorithm(config, model, tokenizer, records))
    return run_dir / "reward_model", model, tokenizer


@pytest.fixture(scope="module")
def opposite_runs(model_cache, tmp_path_factory):
    """The pooled scalar model and the per-annotator model, trained once on the same labels."""
    tmp_path = tmp_path_factory.mktemp("opposite")
    records = opposite_annotators(64, seed=0)
    pooled, _, _ = train_reward(tmp_path, "pooled", records)
    per_annotator, model, tokenizer = train_reward(tmp_path, "heads", records, per_annotator=True)
    held_out = opposite_annotators(32, seed=1)
    return {"pooled": pooled, "heads": per_annotator, "model": model, "tokenizer": tokenizer, "held_out": held_out}


def test_each_annotator_head_learns_its_own_direction_where_one_pooled_reward_cannot(opposite_runs, record_margin):
    held_out = opposite_runs["held_out"]
    by = {name: [p for p in held_out if p.annotator == name] for name in ("A", "B")}
    pooled = load_reward_source(str(opposite_runs["pooled"]))
    own = {name: accuracy(load_reward_source(f"{opposite_runs['heads']}::annotator={name}"), by[name]) for name in by}
    single = {name: accuracy(pooled, by[name]) for name in by}
    for name in by:
        record_margin(f"annotator {name}'s held-out accuracy under their head", own[name], 0.9)
        assert own[name] >= 0.9, (own, single)
    # One scalar reward orders outputs one way: whatever it gives A it takes from B.
    record_margin("pooled model's worse annotator accuracy", min(single.values()), 0.65, above=False)
    assert min(single.values()) <= 0.65, single
    # And each head is wrong for the other annotator: they learnt opposite directions.
    crossed = accuracy(load_reward_source(f"{opposite_runs['heads']}::annotator=A"), by["B"])
    record_margin("B's held-out accuracy under A's head", crossed, 0.1, above=False)
    assert crossed <= 0.1, crossed


def test_annotator_heads_round_trip_and_the_annotator_spec_picks_one_head(opposite_runs):
    directory = opposite_runs["heads"]
    assert json.loads((directory / MANIFEST).read_text()) == {
        "format": "rlhflab-reward-heads/1",
        "kind": "annotator",
        "annotators": ["A", "B"],
    }
    contexts, outputs = ["pick"] * 4, ["aaaa", "axyz", "xyzx", "zz"]
    trained = score(opposite_runs["model"], opposite_runs["tokenizer"], contexts, outputs)  # (4, 2)
    for head, name in enumerate(["A", "B"]):
        torch.testing.assert_close(
            load_reward_source(f"{directory}::annotator={name}")(contexts, outputs), trained[:, head], atol=1e-5, rtol=0
        )
    # DIR alone: the heads' mean, every annotator weighed the same.
    torch.testing.assert_close(
        load_reward_source(str(directory))(contexts, outputs), trained.mean(-1), atol=1e-5, rtol=0
    )


def test_an_unknown_annotator_is_a_one_line_error_listing_the_known_ones(opposite_runs):
    directory = opposite_runs["heads"]
    with pytest.raises(ConfigError, match=r"unknown annotator 'C'; the model knows A, B$"):
        load_reward_source(f"{directory}::annotator=C")
    with pytest.raises(ConfigError, match="takes '::annotator=NAME'"):
        load_reward_source(f"{directory}::wco")


def test_a_record_without_an_annotator_names_file_line_and_field(model_cache, tmp_path):
    rows = [{"prompt": "pick", "chosen": "aa", "rejected": "xy", "annotator": "A"}] * 2
    rows.append({"prompt": "pick", "chosen": "aa", "rejected": "xy"})
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RewardConfig(model="tiny-reward", data=str(data), per_annotator=True, output_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"prefs\.jsonl:3: field 'annotator': missing") as caught:
        run_reward(config)
    assert (caught.value.line, caught.value.field) == (3, "annotator")


def test_per_annotator_and_distributional_options_say_what_they_cannot_do():
    with pytest.raises(ConfigError, match="cannot be combined"):
        RewardConfig(per_annotator=True, distributional=True).validate()
    with pytest.raises(ConfigError, match="preference feedback only"):
        RewardConfig(per_annotator=True, feedback="rating").validate()


# ---- mean-variance heads -------------------------------------------------------------------------


def test_mean_variance_reward_model_ranks_by_mu_and_reports_sigma_of_the_last_batch(
    model_cache, tmp_path, record_margin
):
    directory, model, tokenizer = train_reward(tmp_path, "mv", a_preferences(64, seed=0), distributional=True)
    assert json.loads((directory / MANIFEST).read_text())["kind"] == "mean_variance"
    source = load_reward_source(str(directory))
    held_out = a_preferences(64, seed=1)
    held_out_accuracy = accuracy(source, held_out)
    record_margin("held-out accuracy of mu", held_out_accuracy, 0.9)
    assert held_out_accuracy >= 0.9, held_out_accuracy
    contexts, outputs = ["pick"] * 3, ["aaaa", "xyzx", "zz"]
    mu = source(contexts, outputs)
    trained = score(model, tokenizer, contexts, outputs)  # (3, 2): mu, log sigma^2
    torch.testing.assert_close(mu, trained[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(source.heads.uncertainty_last, (0.5 * trained[:, 1]).exp(), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="mean-variance heads"):
        load_reward_source(f"{directory}::annotator=A")


# ---- pools whose members follow different oracles ------------------------------------------------


def test_annotator_oracles_must_be_one_per_annotator(tmp_path):
    with pytest.raises(ConfigError, match=r"--annotator_oracles names 2 oracles for --annotators 3"):
        AnnotateConfig(samples="s.jsonl", annotators=3, annotator_oracles="sentiment,brevity").validate()
    with pytest.raises(ConfigError, match="2 member oracles for a pool of 3"):
        make_pool(keyword_oracle("yes"), n=3, member_oracles=[keyword_oracle("yes")] * 2)


def test_each_pool_member_labels_by_its_own_oracle(tmp_path):
    samples = [Samples(prompt=f"question {i}", completions=["yes indeed", "no way"]) for i in range(40)]
    config = AnnotateConfig(
        samples="<in memory>",
        annotators=2,
        annotator_oracles="keyword:yes, keyword:no",
        temperature=0.0,
        bias=0.0,
        output=str(tmp_path / "feedback.jsonl"),
    )
    config.validate()
    records = run_annotate(config, samples)
    wants = {"annotator-0": "yes indeed", "annotator-1": "no way"}
    assert {r.annotator for r in records} == set(wants)
    assert all(r.chosen == wants[r.annotator] for r in records)
    # The same pool from the library: member i holds oracle i.
    pool = make_pool(keyword_oracle("x"), n=2, member_oracles=[keyword_oracle("yes"), keyword_oracle("no")])
    assert [m.reward("c", "no way") for m in pool.members] == [0.0, 1.0]
    assert np.isfinite(pool.members[0].temperature)
