"""``rlhflab loop`` (iterated RLHF) on tiny models: the rounds, the report, resuming after SIGKILL in
every stage, and its errors. The app mode is tested in tests/app/test_loop_app.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlhflab.commands.iterate import LoopConfig, round_prompts, run_loop, split_evenly
from rlhflab.data import read_records, write_records
from rlhflab.errors import ConfigError, DataError
from tests.evaluation.report_runs import TINY_LOOP

# A loop small enough for a test: 2 rounds of 4 prompts × 4 samples (6 pairs each) on tiny models.
TINY = {**TINY_LOOP, "poll_seconds": 0.05}
TINY_FLAGS = [f"--{k}" if v is True else f"--{k}={v}" for k, v in TINY.items()]


def test_budgets_split_evenly_and_every_round_covers_the_seen_head():
    assert split_evenly(160, 3) == [54, 53, 53] and sum(split_evenly(7, 7)) == 7
    rounds = round_prompts(list(range(10)), 3)
    assert rounds == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert {p for r in rounds for p in r[:2]} == {0, 1, 2, 3, 4, 5}  # the head is spread over the rounds


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    run_loop(LoopConfig(**TINY, output_dir=str(run_dir)))
    return run_dir


def test_two_rounds_write_every_stage_and_a_report(tiny_run):
    rows = json.loads((tiny_run / "rounds.json").read_text())
    assert [r["round"] for r in rows] == [1, 2]
    for r, row in enumerate(rows, 1):
        folder = tiny_run / f"round-{r:02d}"
        samples = read_records(folder / "samples.jsonl", "samples")
        assert len(samples) == 4 and all(len(s.completions) == 4 for s in samples)
        assert row["labels"] == len(read_records(folder / "preferences.jsonl", "preference"))
        assert (folder / "reward" / "reward_model").is_dir() and (folder / "policy_run" / "policy").is_dir()
        for contexts in ("seen", "unseen"):
            ev = row[contexts]
            assert ev["J"] is not None and ev["J_hat"] is not None and ev["kl_initial"] is not None
            assert 0.0 <= ev["reward_model_order_accuracy"] <= 1.0
    # round 1 starts from π_0: its KL to the last policy is its KL to π_0; round 2's differs
    assert rows[0]["seen"]["kl_previous"] == rows[0]["seen"]["kl_initial"]
    assert rows[1]["seen"]["kl_previous"] != rows[1]["seen"]["kl_initial"]
    # the shift is measured from round 2 on, with a reliability diagram of the old model on new pairs
    assert rows[0]["shift"] is None
    shift = rows[1]["shift"]
    assert (
        shift["num_pairs"] == rows[1]["labels"]
        and sum(b["count"] for b in shift["reliability"]) == 2 * shift["num_pairs"]
    )
    # round 2 retrains on every label so far
    assert (
        len(read_records(tiny_run / "round-02" / "reward_data.jsonl", "preference"))
        == rows[0]["labels"] + rows[1]["labels"]
    )
    report = (tiny_run / "report.md").read_text()
    assert "| 2 | " in report and "KL to π_r−1" in report
    for plot in ("by_round.png", "reliability.png"):
        assert (tiny_run / plot).read_bytes()[:4] == b"\x89PNG"


def test_each_round_samples_the_policy_the_last_round_trained(tiny_run):
    import yaml

    config = yaml.safe_load((tiny_run / "round-02" / "policy_run" / "config.yaml").read_text())
    assert config["policy"] == str(tiny_run / "round-01" / "policy_run" / "policy")


def _digests(run_dir: Path) -> dict[str, str]:
    """Every finished stage result that must never change once written."""
    names = ["samples.jsonl", "preferences.jsonl", "shift.json", "evaluation.json", "round.json"]
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for name in names
        for path in run_dir.glob(f"round-*/{name}")
    }


def _run_until(run_dir: Path, extra: list[str], kill_at: str | None) -> int:
    """``rlhflab loop`` in a child process, SIGKILLed as soon as it prints ``kill_at``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "rlhflab.cli", "loop", *TINY_FLAGS, *extra]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        for line in proc.stdout:
            if kill_at is not None and line.startswith(f"[loop] {kill_at} ..."):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=300)
    return proc.returncode


@pytest.mark.subprocess
def test_killed_in_every_stage_it_resumes_without_asking_for_a_label_twice(tmp_path):
    reference = tmp_path / "reference"
    assert _run_until(reference, ["--output_dir", str(reference)], None) == 0
    run_dir = tmp_path / "killed"
    stages = ["evaluate pi_0", "round 1: update policy", "round 2: sample", "round 2: feedback",
              "round 2: measure the last reward model on the new samples", "round 2: train reward model",
              "round 2: evaluate"]  # fmt: skip
    kept: dict[str, str] = {}
    for i, stage in enumerate(stages):
        where = ["--output_dir", str(run_dir)] if i == 0 else ["--resume", str(run_dir)]
        returncode = _run_until(run_dir, where, stage)
        if returncode == 0:  # the stage was already done when the last kill landed: nothing left to kill
            break
        assert returncode == -signal.SIGKILL, stage
        now = _digests(run_dir)
        assert {k: now.get(k) for k in kept} == kept, f"a finished result changed when resumed before {stage}"
        kept = now
    assert _run_until(run_dir, ["--resume", str(run_dir)], None) == 0
    assert {k: v for k, v in _digests(run_dir).items() if k in kept} == kept
    # the stages rerun from their start with their own seeds: the same run as one never killed
    for name in ("round-01/preferences.jsonl", "round-02/preferences.jsonl"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes()
    killed, clean = (json.loads((d / "rounds.json").read_text()) for d in (run_dir, reference))
    for a, b in zip(killed, clean):
        for contexts in ("seen", "unseen"):
            assert a[contexts]["J"] == pytest.approx(b[contexts]["J"], abs=1e-6)
            assert a[contexts]["J_hat"] == pytest.approx(b[contexts]["J_hat"], abs=1e-4)


def test_resume_refuses_a_changed_option_and_names_it(tiny_run):
    with pytest.raises(ConfigError, match=r"--rounds is 3 now but 2"):
        run_loop(LoopConfig(resume=str(tiny_run), rounds=3), explicit={"resume", "rounds"})
    with pytest.raises(ConfigError, match=r"--kl_coef is 0.2 now but 0.05"):
        run_loop(LoopConfig(resume=str(tiny_run), kl_coef=0.2))
    with pytest.raises(ConfigError, match="no such run directory"):
        run_loop(LoopConfig(resume=str(tiny_run.parent / "missing")))
    with pytest.raises(ConfigError, match="not a loop run directory"):
        run_loop(LoopConfig(resume=str(tiny_run / "round-01")))


def test_a_finished_run_resumed_changes_nothing(tiny_run):
    before = _digests(tiny_run)
    run_loop(LoopConfig(resume=str(tiny_run)))
    assert _digests(tiny_run) == before


def test_the_command_line_names_the_changed_option(tiny_run, capsys):
    from rlhflab.cli import main

    assert main(["loop", "--resume", str(tiny_run), "--seed", "3"]) == 2
    assert "--seed is 3 now but 0" in capsys.readouterr().err


def test_a_new_run_into_a_used_directory_is_refused(tiny_run):
    with pytest.raises(ConfigError, match="not empty.*--resume"):
        run_loop(LoopConfig(**TINY, output_dir=str(tiny_run)))


def test_file_feedback_waits_then_names_the_bad_line(tmp_path, tiny_run):
    import torch

    torch.set_num_threads(1)
    run_dir = tmp_path / "run"
    cfg = LoopConfig(**{**TINY, "rounds": 1}, feedback="file", wait_timeout=0.2, output_dir=str(run_dir))
    with pytest.raises(ConfigError, match=r"0 of 1 labels after 0.2 s; rerun with --resume"):
        run_loop(cfg)
    feedback = run_dir / "round-01" / "preferences.jsonl"
    assert (run_dir / "round-01" / "samples.jsonl").is_file() and not feedback.exists()
    feedback.write_text('{"prompt": "hi", "chosen": "a"}\n')
    with pytest.raises(DataError, match=r"preferences.jsonl:1.*rejected"):
        run_loop(LoopConfig(resume=str(run_dir)))
    # labels made elsewhere (here: the tiny run's) are taken as they are
    write_records(read_records(tiny_run / "round-01" / "preferences.jsonl", "preference"), feedback)
    run_loop(LoopConfig(resume=str(run_dir)))
    rows = json.loads((run_dir / "rounds.json").read_text())
    assert rows[0]["labels"] == len(read_records(feedback, "preference"))


def _first_metrics(run_dir: Path, round_number: int) -> dict:
    return json.loads(
        (run_dir / f"round-{round_number:02d}" / "policy_run" / "metrics.jsonl").read_text().splitlines()[0]
    )


def _config_of(run_dir: Path, round_number: int, what: str) -> dict:
    import yaml

    return yaml.safe_load((run_dir / f"round-{round_number:02d}" / what / "config.yaml").read_text())


def test_a_fixed_reference_keeps_round_twos_kl_to_pi0(tiny_run):
    # round 2 starts from π_1 ≠ π_0: its first rollout is already away from the fixed anchor
    assert _first_metrics(tiny_run, 2)["kl"] > 1e-3
    assert _config_of(tiny_run, 2, "reward")["model"] == "tiny-reward"  # retrained from the backbone


@pytest.mark.parametrize(
    "options",
    [
        dict(algorithm="ppo", reference="moved", reward_init="warm_start"),
        dict(algorithm="dpo", reference="moved"),
        dict(algorithm="grpo", rl_samples_per_prompt=2),
        dict(algorithm="ppo", policy_init="restart", reward_data="round"),
        dict(algorithm="dpo", policy_init="restart"),
    ],
    ids=["ppo-moved-warm", "dpo-moved", "grpo", "ppo-restart-round-data", "dpo-restart"],
)
def test_loop_options(tmp_path, options):
    import torch

    torch.set_num_threads(1)
    run_dir = tmp_path / "run"
    run_loop(LoopConfig(**TINY, **options, output_dir=str(run_dir)))
    rows = json.loads((run_dir / "rounds.json").read_text())
    assert [r["round"] for r in rows] == [1, 2]
    first = _first_metrics(run_dir, 2)
    if options.get("reference") == "moved" and options["algorithm"] == "ppo":
        # anchored to π_1, which round 2 starts from: the first rollout has no KL to its reference
        assert abs(first["kl"]) < 1e-4
    if options["algorithm"] == "dpo":
        # DPO's implicit rewards β·log(π/π_ref) start at zero when π_ref is the policy it starts from
        assert abs(first["chosen_reward"]) < 1e-4 and abs(first["rejected_reward"]) < 1e-4
        assert rows[1]["policy_iterations"] == 0
    if options.get("reward_init") == "warm_start":
        reward_config = _config_of(run_dir, 2, "reward")
        assert reward_config["model"] == str(run_dir / "round-01" / "reward" / "reward_model")
        assert reward_config["data"] == str(run_dir / "round-02" / "preferences.jsonl")  # the round's labels only
    if options["algorithm"] == "grpo":
        assert _config_of(run_dir, 1, "policy_run")["samples_per_prompt"] == 2
    if options.get("policy_init") == "restart":  # round 2 optimises π_0 again, on the whole budget
        policy_config = _config_of(run_dir, 2, "policy_run")
        assert policy_config["policy"] == "tiny-policy"
        if options["algorithm"] == "ppo":
            assert abs(first["kl"]) < 1e-4  # its first rollout is π_0's own: no KL to the fixed anchor
            assert rows[1]["policy_iterations"] == TINY["policy_iterations"]
        else:  # DPO from π_0 on both rounds' pairs
            assert policy_config["data"] == str(run_dir / "round-02" / "dpo_data.jsonl")
    if options.get("reward_data") == "round":  # retrained from the backbone on the round's labels only
        reward_config = _config_of(run_dir, 2, "reward")
        assert reward_config["model"] == "tiny-reward"
        assert reward_config["data"] == str(run_dir / "round-02" / "preferences.jsonl")
