"""Reward-model ensembles (Coste et al. 2023): the objectives by hand, the spec grammar and its errors,
`rlhflab reward --ensemble K` on the tiny reward backbone, and the uncertainty report."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlhflab.cli import main
from rlhflab.commands.evaluate import EvalConfig, run_eval
from rlhflab.data import Prompt, write_records
from rlhflab.data.records import Rating
from rlhflab.errors import ConfigError
from rlhflab.evaluation.metrics import ensemble_uncertainty_report
from rlhflab.rewards.ensemble import (
    MANIFEST,
    Objective,
    RewardEnsemble,
    bootstrap_indices,
    ensemble_reward,
    load_ensemble,
    member_seed,
    parse_objective,
    write_manifest,
)
from rlhflab.rewards.registry import RewardSource, load_reward_source
from rlhflab.seeds import derive_seed
from rlhflab.train.reward_model import RewardConfig
from tests._train_entry import a_preferences

# Three members' rewards on two samples, as constant functions of the batch.
MEMBER_REWARDS = [[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]]


def fake_members(values=MEMBER_REWARDS):
    return [lambda c, o, v=v: torch.tensor(v) for v in values]


# ---- objectives and their grammar -----------------------------------------------------------------


def test_mean_wco_and_uwo_match_mean_min_and_mean_minus_lambda_var_by_hand():
    rewards = torch.tensor(MEMBER_REWARDS)
    # sample 1: mean 3, deviations (−2, −1, 3) → var 14/3; sample 2: mean 1, deviations (−1, −1, 2) → var 2
    assert ensemble_reward(rewards, Objective("mean")).tolist() == pytest.approx([3.0, 1.0])
    assert ensemble_reward(rewards, Objective("wco")).tolist() == pytest.approx([1.0, 0.0])
    assert ensemble_reward(rewards, Objective("uwo", 0.5)).tolist() == pytest.approx([3 - 7 / 3, 0.0])
    assert ensemble_reward(rewards, Objective("uwo", 0.0)).tolist() == pytest.approx([3.0, 1.0])
    one = torch.tensor([[0.3, -2.0]])  # one member: every objective is that member
    for objective in (Objective("mean"), Objective("wco"), Objective("uwo", 5.0)):
        assert ensemble_reward(one, objective).tolist() == pytest.approx([0.3, -2.0])


def test_an_ensemble_centres_its_members_and_records_their_disagreement():
    ensemble = RewardEnsemble(fake_members(), offsets=[1.0, 2.0, 3.0], objective=Objective("wco"))
    # centred members: (0, −1), (0, −2), (3, 0)
    assert ensemble.member_rewards(["c", "c"], ["a", "b"]).tolist() == [[0.0, -1.0], [0.0, -2.0], [3.0, 0.0]]
    assert ensemble(["c", "c"], ["a", "b"]).tolist() == [0.0, -2.0]
    assert ensemble.uncertainty_last.tolist() == pytest.approx([2**0.5, (2 / 3) ** 0.5])


@pytest.mark.parametrize(
    "text, expected",
    [("mean", Objective("mean")), ("wco", Objective("wco")), ("uwo", Objective("uwo", 1.0))]
    + [("uwo:0.5", Objective("uwo", 0.5)), (" uwo:0 ", Objective("uwo", 0.0))],
)
def test_objective_grammar(text, expected):
    assert parse_objective(text) == expected
    assert parse_objective(str(expected)) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("median", "unknown ensemble objective 'median'"),
        ("", "unknown ensemble objective ''"),
        ("wco:2", "'wco' takes no coefficient"),
        ("uwo:lots", "the uwo coefficient 'lots' is not a number"),
        ("uwo:-1", "must be a finite number >= 0"),
        ("uwo:nan", "must be a finite number >= 0"),
    ],
)
def test_bad_objectives_are_one_line_config_errors_naming_where(text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_objective(text, "runs/x::" + text)
    assert str(caught.value).startswith("runs/x::") and "\n" not in str(caught.value)


def test_member_seeds_are_derived_and_bootstrap_resamples_differ_by_member():
    seeds = [member_seed(7, k) for k in range(3)]
    assert seeds == [derive_seed(7, "ensemble", k) % 2**31 for k in range(3)] and len(set(seeds)) == 3
    resamples = [bootstrap_indices(50, s) for s in seeds]
    assert all(len(r) == 50 and 0 <= min(r) and max(r) < 50 for r in resamples)
    assert len({tuple(r) for r in resamples}) == 3
    assert all(len(set(r)) < 50 for r in resamples), "with replacement: some records repeat"
    assert bootstrap_indices(50, seeds[0]) == resamples[0]


# ---- the manifest and load_reward_source ---------------------------------------------------------


def test_spec_errors_name_the_file_or_member(tmp_path):
    run = tmp_path / "run"
    write_manifest(run, [{"path": run / "member-00" / "reward_model", "offset": 0.0}], "mean")
    assert json.loads((run / MANIFEST).read_text())["members"][0]["path"] == "member-00/reward_model"
    with pytest.raises(ConfigError, match=r"member-00/reward_model: ensemble member 0 not found \(listed in"):
        load_reward_source(str(run))
    with pytest.raises(ConfigError, match=r"::median: unknown ensemble objective 'median'"):
        load_reward_source(f"{run}::median")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match=r"plain: '::wco' selects an ensemble objective, but the folder holds no"):
        load_reward_source(f"{plain}::wco")
    (run / MANIFEST).write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match=r"ensemble.json: field 'format'"):
        load_reward_source(str(run))


def test_load_ensemble_uses_the_manifests_objective_unless_the_spec_names_one(tmp_path):
    members = [{"path": tmp_path / f"m{k}", "offset": float(k)} for k in range(3)]
    for m in members:
        m["path"].mkdir()
    write_manifest(tmp_path, members, "uwo:0.5")
    loaded = {}

    def load_member(path):
        k = int(path[-1])
        loaded[k] = path
        return fake_members()[k]

    assert load_ensemble(tmp_path, None, load_member).objective == Objective("uwo", 0.5)
    ensemble = load_ensemble(tmp_path, "wco", load_member)
    assert ensemble.objective == Objective("wco") and sorted(loaded) == [0, 1, 2]
    # offsets 0, 1, 2 from the manifest: centred members (1, 0), (1, −1), (4, 1)
    assert ensemble(["c"] * 2, ["a", "b"]).tolist() == [1.0, -1.0]


# ---- rlhflab reward --ensemble on the tiny reward backbone -----------------------------------------


@pytest.fixture
def fake_member_training(monkeypatch):
    """``train_reward_ensemble`` with each member's training recorded instead of run, every member scoring 2."""
    from rlhflab.train import reward_model

    calls = []

    def fake_train(cfg, records):
        calls.append({"seed": cfg.seed, "ensemble": cfg.ensemble, "dir": cfg.output_dir, "records": list(records)})
        (Path(cfg.output_dir) / "reward_model").mkdir(parents=True)
        return Path(cfg.output_dir)

    monkeypatch.setattr(reward_model, "train_reward_model", fake_train)
    monkeypatch.setattr(reward_model, "load_reward_source", lambda spec: lambda c, o: torch.full((len(o),), 2.0))
    return calls


def test_bootstrap_members_train_on_their_own_resamples_and_resume_keeps_finished_ones(tmp_path, fake_member_training):
    from rlhflab.train.reward_model import train_reward_ensemble

    records = a_preferences(20, seed=3)
    cfg = RewardConfig(output_dir=str(tmp_path / "run"), ensemble=3, ensemble_data="bootstrap", seed=5)
    out = train_reward_ensemble(cfg, records)
    calls = fake_member_training
    assert [(c["seed"], c["ensemble"], c["dir"]) for c in calls] == [
        (member_seed(5, k), 1, str(out / f"member-{k:02d}")) for k in range(3)
    ]
    for c in calls:
        assert c["records"] == [records[i] for i in bootstrap_indices(20, c["seed"])]
    assert calls[0]["records"] != calls[1]["records"] != calls[2]["records"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert [m["offset"] for m in manifest["members"]] == [2.0] * 3 and manifest["ensemble_data"] == "bootstrap"
    assert (out / "config.yaml").is_file()
    calls.clear()
    train_reward_ensemble(replace(cfg, resume=str(out)), records)
    assert calls == [], "finished members are not trained again"


def test_rating_members_keep_their_level_and_seed_members_share_the_records(tmp_path, fake_member_training):
    from rlhflab.train.reward_model import train_reward_ensemble

    records = [Rating(prompt="p", completion=f"c{i}", score=float(i)) for i in range(6)]
    out = train_reward_ensemble(RewardConfig(output_dir=str(tmp_path), ensemble=2, feedback="rating"), records)
    assert all(c["records"] == records for c in fake_member_training)
    assert [m["offset"] for m in json.loads((out / MANIFEST).read_text())["members"]] == [0.0, 0.0]


def test_reward_config_rejects_bad_ensemble_options():
    with pytest.raises(ConfigError, match="ensemble must be at least 1"):
        RewardConfig(ensemble=0).validate()
    with pytest.raises(ConfigError, match="--ensemble_objective: unknown ensemble objective 'max'"):
        RewardConfig(ensemble_objective="max").validate()


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("ensemble")
    data = root / "prefs.jsonl"
    write_records(a_preferences(32, seed=0), data)
    out = root / "run"
    argv = ["reward", "--model", "tiny-reward", "--data", str(data), "--output_dir", str(out), "--ensemble", "2"]
    argv += ["--batch_size", "8", "--num_epochs", "1", "--learning_rate", "1e-3", "--progress", "false"]
    assert main(argv) == 0
    return out


def assert_every_objective_combines(out, centred, contexts, outputs):
    """Every way of naming the ensemble at ``out`` scores as its objective of the ``centred`` member
    rewards (K × N) worked by hand, and leaves their std as the last batch's uncertainty. Returns the
    sources loaded."""
    sources = []
    for spec, expected in (
        (str(out), centred.mean(0)),
        (str(out / "reward_model"), centred.mean(0)),
        (f"{out}::wco", centred.min(0).values),
        (f"{out}::uwo:0.5", centred.mean(0) - 0.5 * centred.var(0, unbiased=False)),
    ):
        source = load_reward_source(spec)
        torch.testing.assert_close(source(contexts, outputs), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(source.ensemble.uncertainty_last, centred.std(0, unbiased=False))
        sources.append(source)
    return sources


def test_reward_ensemble_writes_members_and_manifests_and_loads_from_either_folder(ensemble_run):
    out = ensemble_run
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "rlhflab-ensemble/1" and manifest["objective"] == "mean"
    assert [m["path"] for m in manifest["members"]] == ["member-00/reward_model", "member-01/reward_model"]
    assert [m["seed"] for m in manifest["members"]] == [member_seed(0, 0), member_seed(0, 1)]
    for k in range(2):
        assert (out / f"member-{k:02d}" / "reward_model" / "config.json").is_file()
        assert (out / f"member-{k:02d}" / "metrics.jsonl").is_file()
    inner = json.loads((out / "reward_model" / MANIFEST).read_text())
    assert [m["path"] for m in inner["members"]] == ["../member-00/reward_model", "../member-01/reward_model"]
    assert (out / "reward_report.json").is_file()

    contexts, outputs = ["pick"] * 3, ["aaaa", "xyzx", "axyz"]
    members = [load_reward_source(str(out / f"member-{k:02d}" / "reward_model")) for k in range(2)]
    raw = torch.stack([m(contexts, outputs) for m in members])
    assert not torch.allclose(raw[0], raw[1]), "members with different seeds should differ"
    offsets = torch.tensor([m["offset"] for m in manifest["members"]])
    centred = raw - offsets[:, None]
    assert_every_objective_combines(out, centred, contexts, outputs)


def test_each_member_is_centred_on_the_training_completions(ensemble_run):
    from rlhflab.data import read_records
    from rlhflab.rewards.ensemble import feedback_completions
    from rlhflab.train.reward_model import split_heldout

    train_records, _ = split_heldout(read_records(ensemble_run.parent / "prefs.jsonl", "preference"), 0.1, 0)
    contexts, outputs = feedback_completions(train_records, "preference")
    members = load_reward_source(str(ensemble_run)).ensemble.member_rewards(contexts, outputs)
    torch.testing.assert_close(members.mean(1), torch.zeros(2), atol=1e-4, rtol=0)


def test_eval_with_an_ensemble_reports_uncertainty_per_context_set(ensemble_run, tmp_path):
    seen, unseen = tmp_path / "seen.jsonl", tmp_path / "unseen.jsonl"
    write_records([Prompt(p) for p in ("pick", "choose one", "say a")], seen)
    write_records([Prompt(p) for p in ("what now", "another")], unseen)
    oracle = RewardSource("fraction of 'a'", lambda c, o: [x.count("a") / max(1, len(x)) for x in o])
    cfg = EvalConfig(
        policy="tiny-policy",
        prompts=str(seen),
        unseen_prompts=str(unseen),
        reward_model=f"{ensemble_run}::wco",
        num_samples=3,
        max_new_tokens=8,
        use_chat_template=False,
        output=str(tmp_path / "eval.json"),
    )
    results = run_eval(cfg, oracle_source=oracle)
    written = json.loads((tmp_path / "eval.json").read_text())
    for name, n in (("seen", 9), ("unseen", 6)):
        entry = results[name].uncertainty
        assert entry == written[name]["uncertainty"] and entry["n"] == n
        assert entry["mean_disagreement"] >= 0
        assert entry["spearman"] is None or -1 <= entry["spearman"] <= 1


# ---- the uncertainty report on fake sources ------------------------------------------------------


def test_uncertainty_report_ranks_disagreement_against_the_standardised_error():
    star = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    mean = torch.tensor([0.5, 3.0, 2.5, 9.0, 4.0], dtype=torch.float64)  # R̄, on its own scale
    z = lambda x: (x - x.mean()) / x.std(unbiased=False)  # noqa: E731
    error = (z(mean) - z(star)).abs()  # 0.25, 0.43, 0.46, 1.12, 1.34
    oracle = RewardSource("star", lambda c, o: star)
    samples = {"seen": (["c"] * 5, list("abcde"))}
    for spread, expected in ((error, 1.0), (error.max() - error, -1.0)):
        # two members at R̄ ± spread: their std is the spread, their mean R̄
        members = [lambda c, o, s=s, d=spread: mean + s * d for s in (-1.0, 1.0)]
        report = ensemble_uncertainty_report(RewardEnsemble(members, [0.0, 0.0], Objective("wco")), oracle, samples)
        assert report["seen"]["spearman"] == pytest.approx(expected) and report["seen"]["n"] == 5
        assert report["seen"]["mean_error"] == pytest.approx(float(error.mean()), rel=1e-5)
        assert report["seen"]["mean_disagreement"] == pytest.approx(float(spread.mean()), rel=1e-5)


def test_uncertainty_report_standardises_over_all_sets_pooled_and_says_when_undefined():
    star = RewardSource("star", lambda c, o: [float(len(x)) for x in o])
    agree = RewardEnsemble([lambda c, o: [float(len(x)) for x in o]] * 2, [0.0, 0.0], Objective("mean"))
    sets = {"seen": (["c"] * 3, ["a", "bb", "ccc"]), "unseen": (["d"] * 3, ["dddd", "eeeee", "ffffff"])}
    report = ensemble_uncertainty_report(agree, star, sets)
    for name in sets:  # members agree with each other and with R*: no error, no disagreement
        assert report[name]["mean_error"] == pytest.approx(0.0, abs=1e-12)
        assert report[name]["mean_disagreement"] == 0.0 and report[name]["spearman"] is None
        assert "constant" in report[name]["note"]
    # A whole-set error survives pooled standardisation: R̄ is R* on seen, R* + 10 on unseen.
    shifted = RewardEnsemble(
        [lambda c, o: [float(len(x)) + (10.0 if c[0] == "d" else 0.0) for x in o]] * 2, [0.0, 0.0], Objective("mean")
    )
    report = ensemble_uncertainty_report(shifted, star, sets)
    z = lambda x: (x - x.mean()) / x.std(unbiased=False)  # noqa: E731
    error = (z(torch.tensor([1.0, 2, 3, 14, 15, 16])) - z(torch.arange(1.0, 7.0))).abs()
    # standardising each set alone would map R̄ onto R* exactly there, and report no error at all
    assert report["seen"]["mean_error"] == pytest.approx(float(error[:3].mean()), rel=1e-5)
    assert report["unseen"]["mean_error"] == pytest.approx(float(error[3:].mean()), rel=1e-5)
    assert min(report["seen"]["mean_error"], report["unseen"]["mean_error"]) > 0.1
    flat = RewardEnsemble([lambda c, o: [1.0] * len(o)] * 2, [0.0, 0.0], Objective("mean"))
    assert "constant" in ensemble_uncertainty_report(flat, star, sets)["seen"]["note"]
