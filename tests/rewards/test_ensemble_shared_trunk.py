"""The shared-trunk reward-model ensemble (`rlhflab reward --ensemble K --ensemble_trunk shared`): one
backbone with K heads, each initialised from its member's seed and, under bootstrap, trained on its
member's resample; loaded as the same RewardEnsemble as K separate models (Coste et al. 2023).
Tiny models only."""

import json
from dataclasses import replace

import pytest
import torch
from accelerate import Accelerator

from rlhflab.cli import main
from rlhflab.commands.train import run_reward
from rlhflab.data import read_records, write_records
from rlhflab.errors import ConfigError
from rlhflab.evaluation.metrics import ensemble_uncertainty_report
from rlhflab.models import load_reward_model
from rlhflab.models.scoring import score
from rlhflab.rewards.ensemble import MANIFEST, bootstrap_indices, feedback_completions, init_member_heads, member_seed
from rlhflab.rewards.heads import output_layer
from rlhflab.rewards.registry import RewardSource, load_reward_source
from rlhflab.train.reward_model import RewardAlgorithm, RewardConfig, split_heldout
from tests._train_entry import a_preferences
from tests.rewards.test_ensemble import assert_every_objective_combines

K = 3
CONTEXTS, OUTPUTS = ["pick"] * 4, ["aaaa", "xyzx", "axyz", "zz"]


def run_config(root, **options):
    return RewardConfig(
        model="tiny-reward", data=str(root / "prefs.jsonl"), output_dir=str(root / "run"), ensemble=K,
        ensemble_trunk="shared", ensemble_data="bootstrap", batch_size=8, num_epochs=1, learning_rate=1e-3,
        progress=False, **options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("shared")
    write_records(a_preferences(40, seed=0), root / "prefs.jsonl")
    argv = ["reward", "--model", "tiny-reward", "--data", str(root / "prefs.jsonl"), "--output_dir", str(root / "run")]
    argv += ["--ensemble", str(K), "--ensemble_trunk", "shared", "--ensemble_data", "bootstrap"]
    argv += ["--batch_size", "8", "--num_epochs", "1", "--learning_rate", "1e-3", "--progress", "false"]
    assert main(argv) == 0
    return root


def head_rewards(model_dir):
    """Every head of the saved K-output model, (K, B), scored without the ensemble machinery."""
    model, tokenizer = load_reward_model(str(model_dir), num_labels=K)
    return score(model, tokenizer, CONTEXTS, OUTPUTS).view(len(OUTPUTS), K).T


def test_one_run_writes_one_k_head_model_and_manifests_naming_its_heads(shared_run):
    out = shared_run / "run"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["trunk"] == "shared" and manifest["model"] == "reward_model"
    assert [(m["head"], m["seed"]) for m in manifest["members"]] == [(k, member_seed(0, k)) for k in range(K)]
    assert json.loads((out / "reward_model" / MANIFEST).read_text())["model"] == "."
    assert len(json.loads((out / "reward_model" / "config.json").read_text())["id2label"]) == K
    assert not list(out.glob("member-*")), "one run, not one per member"
    assert (out / "metrics.jsonl").is_file() and (out / "reward_report.json").is_file()


def test_heads_differ_and_every_objective_combines_the_centred_heads(shared_run):
    out = shared_run / "run"
    raw = head_rewards(out / "reward_model")
    assert all(not torch.allclose(raw[i], raw[j]) for i in range(K) for j in range(i + 1, K)), raw
    offsets = torch.tensor([m["offset"] for m in json.loads((out / MANIFEST).read_text())["members"]])
    centred = raw - offsets[:, None]
    sources = assert_every_objective_combines(out, centred, CONTEXTS, OUTPUTS)
    assert all(len(source.ensemble) == K for source in sources)
    # member k alone is head k
    members = load_reward_source(str(out)).ensemble.members
    torch.testing.assert_close(torch.stack([m(CONTEXTS, OUTPUTS) for m in members]), raw, atol=1e-5, rtol=0)


def test_each_head_is_centred_on_the_training_completions_and_feeds_the_uncertainty_report(shared_run):
    records, _ = split_heldout(read_records(shared_run / "prefs.jsonl", "preference"), 0.1, 0)
    contexts, outputs = feedback_completions(records, "preference")
    ensemble = load_reward_source(str(shared_run / "run")).ensemble
    torch.testing.assert_close(ensemble.member_rewards(contexts, outputs).mean(1), torch.zeros(K), atol=1e-4, rtol=0)
    oracle = RewardSource("fraction of 'a'", lambda c, o: [x.count("a") / max(1, len(x)) for x in o])
    report = ensemble_uncertainty_report(ensemble, oracle, {"seen": (CONTEXTS, OUTPUTS)})
    assert report["seen"]["n"] == 4 and report["seen"]["mean_disagreement"] > 0


def test_heads_start_from_their_members_seeds(model_cache):
    model, _ = load_reward_model("tiny-reward", num_labels=K)
    seeds = [member_seed(7, k) for k in range(K)]
    init_member_heads(model, seeds)
    layer = output_layer(model)
    for k, seed in enumerate(seeds):
        expected = torch.randn(layer.in_features, generator=torch.Generator().manual_seed(seed)) * 0.02
        torch.testing.assert_close(layer.weight[k].detach(), expected)
    assert float(layer.bias.detach().abs().sum()) == 0.0
    with pytest.raises(ValueError, match="3 outputs for 2 member seeds"):
        init_member_heads(model, seeds[:2])


def test_under_bootstrap_each_head_learns_only_from_the_records_of_its_resample(model_cache):
    records = a_preferences(20, seed=1)
    config = RewardConfig(ensemble=K, ensemble_trunk="shared", ensemble_data="bootstrap", seed=4, batch_size=4)
    model, tokenizer = load_reward_model("tiny-reward", num_labels=K)
    algorithm = RewardAlgorithm(config, model, tokenizer, records)
    counts = [torch.bincount(torch.tensor(bootstrap_indices(20, member_seed(4, k))), minlength=20) for k in range(K)]
    torch.testing.assert_close(algorithm.head_weights, torch.stack(counts, dim=1))
    algorithm.bind(Accelerator(cpu=True), {"reward_model": model})
    record = next(i for i in range(20) if 0 in algorithm.head_weights[i].tolist() and algorithm.head_weights[i].sum())
    loss, _ = algorithm.loss(([record], 1.0))
    loss.backward()
    grad = output_layer(model).weight.grad.abs().sum(-1)
    for k in range(K):
        assert (grad[k] > 0) == bool(algorithm.head_weights[record, k]), (k, grad, algorithm.head_weights[record])
    # seeds: every record trains every head, the loss the mean over heads
    seeds = RewardAlgorithm(replace(config, ensemble_data="seeds"), model, tokenizer, records)
    assert seeds.head_weights is None and seeds.heads_per_record == K


def test_a_killed_shared_trunk_run_resumes_to_the_uninterrupted_model(tmp_path, model_cache, monkeypatch):
    write_records(a_preferences(40, seed=0), tmp_path / "prefs.jsonl")
    whole = run_config(tmp_path, save_steps=2, max_steps=6)
    run_reward(replace(whole, output_dir=str(tmp_path / "whole")))

    killed = replace(whole, output_dir=str(tmp_path / "killed"))
    calls, real_loss = [], RewardAlgorithm.loss

    def dies_at_step_4(self, micro):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real_loss(self, micro)

    monkeypatch.setattr(RewardAlgorithm, "loss", dies_at_step_4)
    with pytest.raises(RuntimeError, match="killed"):
        run_reward(killed)
    monkeypatch.setattr(RewardAlgorithm, "loss", real_loss)
    assert not (tmp_path / "killed" / MANIFEST).exists(), "no manifest: the run is not finished"
    assert (tmp_path / "killed" / "checkpoints" / "iter-0000001").is_dir()
    run_reward(replace(killed, resume=str(tmp_path / "killed")))
    torch.testing.assert_close(
        head_rewards(tmp_path / "killed" / "reward_model"), head_rewards(tmp_path / "whole" / "reward_model")
    )
    assert json.loads((tmp_path / "killed" / MANIFEST).read_text()) == json.loads(
        (tmp_path / "whole" / MANIFEST).read_text()
    )
    # resumed once more when finished: the model is kept, the manifests written again
    before = (tmp_path / "killed" / "reward_model" / "model.safetensors").stat().st_mtime_ns
    run_reward(replace(killed, resume=str(tmp_path / "killed")))
    assert (tmp_path / "killed" / "reward_model" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "options, message",
    [
        ({"ensemble_trunk": "shared"}, "needs --ensemble K with K >= 2|give --ensemble K"),
        ({"ensemble_trunk": "shared", "ensemble": 2, "per_annotator": True}, "ensemble members are scalar"),
        ({"ensemble_trunk": "wide", "ensemble": 2}, "must be 'separate' or 'shared'"),
    ],
)
def test_shared_trunk_options_say_what_they_cannot_do(options, message):
    with pytest.raises(ConfigError, match=message):
        RewardConfig(**options).validate()
