"""rlhflab compare: one pool, several methods, each method's ΔJ against π_0 paired by prompt; over
several seeds (resumable), one summary with crossed intervals, J at matched KL and the budget that
would resolve what is within noise."""

import json

import pytest

from rlhflab.commands.compare import CompareConfig, parse_seeds, run_compare, seed_record
from rlhflab.errors import ConfigError

# A compare run small enough for a test: tiny models, 8 feedback prompts, 4 × 2 evaluation samples.
TINY_COMPARE = dict(quick=True, feedback_prompts=8, eval_prompts=4, eval_samples=2, offline_steps=2, max_new_tokens=8)
# ppo with 4 iterations (its midpoint evaluated at 2), dpo with 2 steps (at 1), best-of-4 (read at n = 2 too)
TINY_SEEDS = dict(TINY_COMPARE, methods="ppo,dpo,bon", online_samples=32, prompts_per_iteration=8)


def test_seeds_are_ranges_or_lists_and_anything_else_is_a_one_line_error():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("0-2, 7") == [0, 1, 2, 7]
    for bad, words in [("4-0", "runs backwards"), ("0,x", "neither a seed"), ("0-2,1", "named twice"), ("", "neither")]:
        with pytest.raises(ConfigError, match=words):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="--seed or --seeds, not both"):
        CompareConfig(quick=True, seed=3, seeds="0-1").resolved()


@pytest.mark.integration
def test_quick_compare_reports_each_methods_paired_change_its_path_and_a_verdict(model_cache, tmp_path):
    run_dir = run_compare(
        CompareConfig(methods="ppo,dpo,kto,bon", output_dir=str(tmp_path / "cmp"), online_samples=16, **TINY_COMPARE)
    )
    comparison = json.loads((run_dir / "comparison.json").read_text())
    rows = comparison["rows"]
    assert {r["method"] for r in rows} == {"initial", "ppo", "dpo", "kto", "bon"}
    for r in rows:
        assert r["n"] == 4 * 2  # every method, best-of-n included, judged on 2 samples of each of 4 prompts
        if r["method"] != "initial":
            assert r["delta_J_se"] is not None
            assert r["z"] == (pytest.approx(r["delta_J"] / r["delta_J_se"]) if r["delta_J_se"] else None)
    # points along the way: dpo at step 1 of 2, bon at n = 2 of 4; kto (no hook) and ppo (1 iteration) once
    points = {m: [p["point"] for p in comparison["paths"][m]["seen"]] for m in ("ppo", "dpo", "kto", "bon")}
    assert points == {"ppo": ["final"], "dpo": ["step 1", "final"], "kto": ["final"], "bon": ["n=2", "final"]}
    final = {r["method"]: r for r in rows if r["contexts"] == "unseen"}
    for method in ("dpo", "bon"):  # the path's final point is the table's row
        assert comparison["paths"][method]["unseen"][-1]["kl"] == pytest.approx(final[method]["kl"])
        assert len(comparison["paths"][method]["unseen"][-1]["per_prompt_J"]) == 4
    methods = comparison["summary"]["methods"]
    assert methods["dpo"]["seen"]["at_matched_kl"]["interpolated"]
    assert not methods["kto"]["seen"]["at_matched_kl"]["interpolated"]  # one point: flagged, at its own KL
    report = (run_dir / "comparison.md").read_text()
    assert "## Beyond noise?" in report and report.count("\n- ") >= 8  # 4 methods × 2 context sets
    assert "unmeasured with one seed" in report or "beyond noise." in report
    assert "Can this design tell the methods apart?" in report and "kto †" not in report
    assert json.loads((run_dir / "done.json").read_text())["seed"] == 0  # written last

    # a run from before paths were recorded: its final points, read from evaluation.json
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "evaluation.json").write_text((run_dir / "evaluation.json").read_text())
    (legacy / "comparison.json").write_text(json.dumps({k: v for k, v in comparison.items() if k != "paths"}))
    old = seed_record(legacy)["paths"]
    for method in ("initial", "ppo", "dpo", "kto", "bon"):
        for contexts in ("seen", "unseen"):
            assert old[method][contexts][-1]["per_prompt_J"] == pytest.approx(
                comparison["paths"][method][contexts][-1]["per_prompt_J"]
            )
            assert old[method][contexts][-1]["kl"] == pytest.approx(comparison["paths"][method][contexts][-1]["kl"])


@pytest.mark.integration
def test_path_evaluations_leave_the_training_run_as_it_would_be_without_them(model_cache, tmp_path):
    finals = []
    for count in (0, 1):
        run_dir = run_compare(
            CompareConfig(
                path_evaluations=count, output_dir=str(tmp_path / f"cmp{count}"), **{**TINY_SEEDS, "methods": "ppo"}
            )
        )
        evaluation = json.loads((run_dir / "evaluation.json").read_text())["ppo"]["unseen"]
        finals.append((evaluation["texts"], evaluation["oracle_rewards"]))
    assert finals[0] == finals[1]


@pytest.mark.integration
def test_compare_over_seeds_resumes_only_unfinished_seeds_and_summarises_them_all(model_cache, tmp_path, capsys):
    out = tmp_path / "seeds"
    run_compare(CompareConfig(seeds="0-1", output_dir=str(out), **TINY_SEEDS))
    for seed in (0, 1):
        assert (out / f"seed-{seed}" / "done.json").is_file()
    first = json.loads((out / "summary.json").read_text())
    assert first["seeds"] == [0, 1] and set(first["methods"]) == {"ppo", "dpo", "bon"}
    for method in ("ppo", "dpo", "bon"):  # every method has a midpoint: compared at one KL, none flagged
        for contexts in ("seen", "unseen"):
            entry = first["methods"][method][contexts]
            assert entry["points"] == 2 and entry["at_matched_kl"]["interpolated"]
            assert entry["delta_J"]["seeds"] == 2 and entry["delta_J"]["prompts"] == 4
            assert entry["at_matched_kl"]["kl"] == pytest.approx(first["matched_kl"][contexts])
    assert len(first["pairs"]) == 3 * 2
    text = (out / "summary.md").read_text()
    assert "| ppo |" in text and "ΔJ unseen at matched KL" in text and "## Beyond noise?" in text
    assert "2 seeds × 4 prompts" in text

    # a run killed during seed 1: its directory is there, its completion marker is not
    kept = (out / "seed-0" / "comparison.json").stat().st_mtime_ns
    (out / "seed-1" / "done.json").unlink()
    (out / "seed-1" / "half-written").write_text("")
    capsys.readouterr()
    run_compare(CompareConfig(seeds="0-2", output_dir=str(out), **TINY_SEEDS))
    said = capsys.readouterr().out
    assert "seed 0: finished before" in said and "seed 1: " in said and "left unfinished, redoing it" in said
    assert (out / "seed-0" / "comparison.json").stat().st_mtime_ns == kept
    assert not (out / "seed-1" / "half-written").exists() and (out / "seed-1" / "done.json").is_file()
    assert json.loads((out / "summary.json").read_text())["seeds"] == [0, 1, 2]

    with pytest.raises(ConfigError, match="field 'eval_prompts': this run was started with 4, now 3"):
        run_compare(CompareConfig(seeds="0-2", output_dir=str(out), **{**TINY_SEEDS, "eval_prompts": 3}))
    with pytest.raises(ConfigError, match="holds no compare_seeds_config.yaml"):
        run_compare(CompareConfig(seeds="0-1", output_dir=str(out / "seed-0"), **TINY_SEEDS))


@pytest.mark.integration
def test_compare_optimises_and_measures_the_given_reward_in_place_of_the_pools(model_cache, tmp_path):
    run_dir = run_compare(
        CompareConfig(
            methods="bon",
            reward="length",  # minus the word count: nothing like the pool's reward model
            output_dir=str(tmp_path / "cmp"),
            **TINY_COMPARE,
        )
    )
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    for method in ("initial", "bon"):
        for contexts in ("seen", "unseen"):
            e = evaluation[method][contexts]
            assert e["proxy_rewards"] == [-float(len(t.split())) for t in e["texts"]], (method, contexts)
    assert "optimise `length` (`--reward`)" in (run_dir / "comparison.md").read_text()


@pytest.mark.parametrize("seeds", [None, "0-1"])
def test_compare_rejects_a_bad_reward_spec_before_writing_anything(tmp_path, seeds):
    out = tmp_path / "cmp"
    with pytest.raises(ConfigError, match="no-such-dir': no such directory"):
        run_compare(
            CompareConfig(
                quick=True, methods="bon", reward=str(tmp_path / "no-such-dir"), output_dir=str(out), seeds=seeds
            )
        )
    assert not out.exists()
