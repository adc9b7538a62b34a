"""``--report_to``: the training loop logs every metrics row to accelerate's experiment trackers.
TensorBoard and trackio are installed by default and checked offline here, read back from the event
files and from trackio's local SQLite database; W&B and MLflow are optional (``rlhflab[trackers]``)
and checked in their offline modes where they are installed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from rlhflab.cli import COMMANDS
from rlhflab.cli import main as cli_main
from rlhflab.commands.iterate import LoopConfig

# Proxy and oracle reward, each component of the composite reward, KL, losses, learning rate, throughput.
EXPECTED = [
    "reward",
    "oracle_reward",
    "reward/keyword:e",
    "reward/brevity",
    "kl",
    "loss",
    "policy_loss",
    "value_loss",
    "lr",
    "steps_per_second",
]
PPO_FLAGS = [
    "--policy=tiny-policy",
    "--reward=0.5*keyword:e + 0.5*brevity",
    "--oracle=keyword:e",
    "--num_iterations=3",
    "--prompts_per_iteration=4",
    "--max_new_tokens=8",
    "--use_chat_template=false",
    "--no_progress",
]


def _offline(cmd: list[str]) -> list[str]:
    """``cmd`` in a network namespace of its own (no network at all) where the machine allows it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n", *cmd]
    return cmd


def _run_ppo(run_dir, report_to: str, **env) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "rlhflab.cli",
        "ppo",
        *PPO_FLAGS,
        f"--report_to={report_to}",
        f"--output_dir={run_dir}",
    ]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env)
    done = subprocess.run(_offline(cmd), env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("trackers")
    _run_ppo(root / "run", "tensorboard,trackio", TRACKIO_DIR=str(root / "trackio"))
    return root


@pytest.mark.subprocess
def test_tensorboard_event_files_hold_every_metric_of_the_run(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "run" / "tensorboard"))
    events.Reload()
    assert set(EXPECTED) <= set(events.Tags()["scalars"])
    rows = _metrics(tracked_run / "run")
    for key in ("reward", "oracle_reward", "kl", "loss", "lr"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [r["step"] for r in rows]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-6)


@pytest.mark.subprocess
def test_trackio_writes_its_local_database_offline_with_every_metric(tracked_run):
    database = tracked_run / "trackio" / "rlhflab.db"
    assert database.is_file()
    with sqlite3.connect(database) as db:
        logged = db.execute("SELECT run_name, step, metrics FROM metrics ORDER BY step").fetchall()
    rows = _metrics(tracked_run / "run")
    assert {name for name, _, _ in logged} == {f"{tracked_run.name}/run"}
    assert [step for _, step, _ in logged] == [r["step"] for r in rows]
    for (_, _, metrics), row in zip(logged, rows):
        values = json.loads(metrics)
        assert set(EXPECTED) <= set(values)
        assert values["oracle_reward"] == pytest.approx(row["oracle_reward"])
        assert values["kl"] == pytest.approx(row["kl"])


@pytest.mark.subprocess
@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_optional_trackers_log_offline_where_installed(tracker, model_cache, tmp_path):
    pytest.importorskip(tracker, reason=f"{tracker} is an optional extra (pip install 'rlhflab[trackers]')")
    if tracker == "wandb":
        _run_ppo(tmp_path / "run", "wandb", WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true")
        (history,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
        data = history.read_bytes()
    else:
        _run_ppo(tmp_path / "run", "mlflow", MLFLOW_TRACKING_URI=(tmp_path / "mlruns").as_uri())
        data = "\n".join(p.name for p in (tmp_path / "mlruns").rglob("*")).encode()
    for key in ("oracle_reward", "kl", "loss", "lr"):
        assert key.encode() in data, key


def test_every_training_command_and_demo_compare_loop_take_report_to():
    training = ["sft", "reward", "ppo", "a2c", "reinforce", "rloo", "grpo", "dpo", "ipo", "slic", "rrhf", "pro"]
    for name in [*training, "raft", "rso", "sft-positive", "demo", "compare"]:
        fields = {f.name: f for f in dataclasses.fields(COMMANDS[name].config)}
        assert fields["report_to"].default == "none", name
    assert "report_to" in {f.name for f in dataclasses.fields(LoopConfig)}


@pytest.mark.parametrize("command", ["ppo", "demo"])
def test_an_unknown_tracker_is_a_one_line_error(command, capsys):
    assert cli_main([command, "--report_to", "tensorboard,comet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--report_to comet: unknown tracker" in err
