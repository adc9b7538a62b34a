"""Every training command, run twice with the same --seed in one process, logs the same numbers,
whatever random state the process was in before (the run must draw everything from its seed)."""

import json

import pytest
import torch

from rlhflab.cli import main

TIMINGS = {"seconds", "steps_per_second", "reference_precompute_seconds"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _data(tmp_path) -> dict:
    pairs = [{"prompt": f"q{i}", "chosen": "a" * (3 + i % 3), "rejected": "xyz"[: 1 + i % 3]} for i in range(8)]
    return {
        "sft": _write(tmp_path / "demos.jsonl", [{"prompt": f"say {i}", "completion": f"{i} {i}"} for i in range(8)]),
        "pairs": _write(tmp_path / "pairs.jsonl", pairs),
        "unpaired": _write(
            tmp_path / "unpaired.jsonl",
            [{"prompt": f"q{i}", "completion": "ab" * (1 + i % 3), "label": i % 2 == 0} for i in range(8)],
        ),
        "prompts": _write(tmp_path / "prompts.jsonl", [{"prompt": f"q{i}"} for i in range(8)]),
        "rankings": _write(
            tmp_path / "rankings.jsonl", [{"prompt": f"q{i}", "completions": ["aaaa", "aa", "x"]} for i in range(8)]
        ),
    }


def _argv(command: str, data: dict) -> list[str]:
    policy = ["--policy", "tiny-policy", "--max_steps", "2", "--batch_size", "4", "--learning_rate", "1e-3"]
    online = ["--policy", "tiny-policy", "--prompts", data["prompts"], "--reward", "brevity", "--max_new_tokens", "6"]
    rl = [*online, "--num_iterations", "2", "--prompts_per_iteration", "4"]
    return {
        "sft": ["sft", *policy, "--data", data["sft"]],
        "ipo": ["ipo", *policy, "--data", data["pairs"]],
        "slic": ["slic", *policy, "--data", data["pairs"]],
        "rrhf": ["rrhf", *policy, "--data", data["rankings"]],
        "pro": ["pro", *policy, "--data", data["rankings"]],
        "sft-positive": ["sft-positive", *policy, "--data", data["pairs"]],
        "a2c": ["a2c", *rl],
        "reinforce": ["reinforce", *rl],
        "rloo": ["rloo", *rl, "--samples_per_prompt", "2"],
        "grpo": ["grpo", *rl, "--samples_per_prompt", "2"],
        "raft": [
            "raft",
            *online,
            "--num_rounds",
            "1",
            "--prompts_per_round",
            "4",
            "--samples_per_prompt",
            "2",
            "--max_steps",
            "2",
            "--batch_size",
            "2",
        ],  # fmt: skip
        "rso": [
            "rso",
            *online,
            "--num_candidates",
            "4",
            "--num_accepted",
            "2",
            "--max_steps",
            "2",
            "--batch_size",
            "2",
            "--limit",
            "4",
        ],  # fmt: skip
        "reward": [
            "reward",
            "--model",
            "tiny-reward",
            "--data",
            data["pairs"],
            "--max_steps",
            "2",
            "--batch_size",
            "4",
        ],
        "dpo": ["dpo", *policy, "--data", data["pairs"]],
        "kto": ["kto", *policy, "--data", data["unpaired"]],
        "ppo": [
            "ppo",
            "--policy",
            "tiny-policy",
            "--prompts",
            data["prompts"],
            "--reward",
            "brevity",
            "--num_iterations",
            "2",
            "--prompts_per_iteration",
            "4",
            "--max_new_tokens",
            "6",
        ],
        "sft-lora": ["sft", *policy, "--data", data["sft"], "--lora_r", "4"],
    }[command]


def _metrics(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMINGS and not k.startswith("time_")} for row in rows]


COMMANDS = ["sft", "reward", "dpo", "ipo", "slic", "kto", "rrhf", "pro", "sft-positive", "ppo", "a2c", "reinforce",
            "rloo", "grpo", "raft", "rso", "sft-lora"]  # fmt: skip


def _metrics_files(run) -> list:
    """Each metrics file of a run (RAFT writes one per round), in a fixed order."""
    return sorted(run.rglob("metrics.jsonl"))


@pytest.mark.parametrize("command", COMMANDS)
def test_two_runs_with_the_same_seed_log_the_same_metrics(command, tmp_path, model_cache):
    data = _data(tmp_path)
    runs = []
    for i, ambient in enumerate((1, 2)):
        torch.manual_seed(ambient)  # a different random state before each run: the seed alone must decide
        run = tmp_path / f"run{i}"
        argv = [*_argv(command, data), "--seed", "5", "--output_dir", str(run), "--no_progress"]
        assert main(argv) == 0
        files = _metrics_files(run)
        assert files, f"{command} wrote no metrics.jsonl"
        runs.append([row for f in files for row in _metrics(f.parent)])
    assert runs[0] and runs[0] == runs[1]
