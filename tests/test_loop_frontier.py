"""``rlhflab loop --eval_every``: each round's policy update evaluated along its path, fitted as
``rlhflab frontier`` fits a method (over-optimisation per round), on tiny models."""

from __future__ import annotations

import json
import shutil

import pytest

from rlhflab.commands.iterate import LoopConfig, run_loop
from rlhflab.errors import ConfigError
from tests.evaluation.report_runs import TINY_LOOP

# 2 rounds of 2 RL iterations each, evaluated after every one: 3 points per round and context set.
ALONG = {**TINY_LOOP, "policy_iterations": 4}


@pytest.fixture(scope="module")
def along(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("loop-frontier") / "run"
    run_loop(LoopConfig(**ALONG, eval_every=1, output_dir=str(run_dir)))
    return run_dir


def _frontier(run_dir, r: int) -> dict:
    return json.loads((run_dir / f"round-{r:02d}" / "frontier.json").read_text())


def _path(frontier: dict, contexts: str) -> list[dict]:
    return [p for p in frontier["points"] if p["contexts"] == contexts]


def test_each_round_writes_its_path_on_one_kl_axis_with_fits_and_a_table(along):
    first, second = _frontier(along, 1), _frontier(along, 2)
    for contexts in ("seen", "unseen"):
        one, two = _path(first, contexts), _path(second, contexts)
        assert [p["step"] for p in one] == [p["step"] for p in two] == [0, 1, 2]
        assert one[0]["point"] == "π_0" and one[0]["kl"] == 0.0 and one[0]["delta_J"] == pytest.approx(0.0)
        # continue: round 2 starts where round 1 ended (π_1, the same samples), away from π_0 on its axis
        assert two[0]["point"] == "π_1" and two[0]["kl"] == pytest.approx(one[-1]["kl"], abs=1e-6)
        assert two[0]["per_prompt_J"] == pytest.approx(one[-1]["per_prompt_J"])
        assert all(p["kl"] > 0 for p in two) and max(p["kl"] for p in one) > 0
        for r, frontier in ((1, first), (2, second)):
            fit = frontier["fits"][f"round {r}"][contexts]
            assert fit["J"]["form"] == "rl" and fit["J"]["points"] == 3 and "fall" in fit["measured_fall"]
    report = (along / "report.md").read_text()
    assert "## Over-optimisation per round" in report and "fitted J peak KL [95% CI]" in report
    assert "| 2 | unseen | 3 | " in report and "- round 2, seen contexts:" in report
    assert (along / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    from rlhflab.evaluation.html_report import write_report

    html = write_report([along]).read_text()
    assert "Over-optimisation per round: J and Ĵ against KL" in html
    assert "round 2, unseen contexts: measured: J is" in html


def test_evaluating_along_the_rounds_leaves_the_training_as_it_was(along, tmp_path):
    import torch

    torch.set_num_threads(1)
    plain = run_loop(LoopConfig(**ALONG, output_dir=str(tmp_path / "plain")))
    for r in (1, 2):
        policy = f"round-{r:02d}/policy_run/policy/model.safetensors"
        assert (plain / policy).read_bytes() == (along / policy).read_bytes(), policy
    assert (
        not (plain / "round-01" / "frontier.json").exists()
        and "Over-optimisation" not in (plain / "report.md").read_text()
    )


def test_dpo_with_eval_every_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^--eval_every evaluates an RL update .*not with --algorithm dpo$"):
        run_loop(LoopConfig(**ALONG, algorithm="dpo", eval_every=1, output_dir=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match="--eval_every must be >= 0"):
        run_loop(LoopConfig(**ALONG, eval_every=-1, output_dir=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_keeps_a_rounds_frontier_and_refits_a_lost_one_without_training(along, tmp_path, capsys):
    run_dir = shutil.copytree(along, tmp_path / "run")
    fitted = (run_dir / "round-02" / "frontier.json").read_bytes()
    policy = run_dir / "round-02" / "policy_run" / "policy" / "model.safetensors"
    trained = policy.stat().st_mtime_ns
    (run_dir / "round-02" / "round.json").unlink()
    run_loop(LoopConfig(resume=str(run_dir)))
    assert "round 2: fit the round's frontier: done before, kept" in capsys.readouterr().out
    assert (run_dir / "round-02" / "frontier.json").read_bytes() == fitted
    # lost after the update: fitted again from the path the update recorded, the policy not retrained
    for name in ("round.json", "frontier.json"):
        (run_dir / "round-02" / name).unlink()
    run_loop(LoopConfig(resume=str(run_dir)))
    out = capsys.readouterr().out
    assert "round 2: update policy: done before, kept" in out and "round 2: fit the round's frontier ..." in out
    assert (run_dir / "round-02" / "frontier.json").read_bytes() == fitted and policy.stat().st_mtime_ns == trained


def test_the_rounds_benchmark_gathers_each_rounds_fall_over_seeds(along, tmp_path):
    """benchmarks/loop_rounds.py: a run evaluated along its path adds the per-round fall table."""
    import importlib.util
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "benchmarks" / "loop_rounds.py"
    spec = importlib.util.spec_from_file_location("loop_rounds", source)
    loop_rounds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loop_rounds)
    for seed in (0, 1):  # the same run twice stands for two seeds
        shutil.copytree(along, tmp_path / "rounds-2" / f"seed-{seed}")
    rows = loop_rounds.frontier_rows(tmp_path / "rounds-2" / "seed-0")
    assert [(row["round"], row["contexts"]) for row in rows] == [(1, "seen"), (1, "unseen"), (2, "seen"), (2, "unseen")]
    fall = _frontier(along, 2)["fits"]["round 2"]["seen"]["measured_fall"]["fall"]
    lines = [line for line in loop_rounds.table(tmp_path).splitlines() if line.startswith("| 2 | 2 | seen |")]
    assert (
        len(lines) == 1
        and lines[0].split(" | ")[3] == "2"
        and lines[0].split(" | ")[5] == loop_rounds._cell([fall, fall])
    )
    assert loop_rounds.frontier_table(tmp_path / "nothing") == []
