"""``accelerate launch`` means what it says, on two CPU processes over gloo: FSDP shards the trained
weights (each process holds about half) and trains to the same numbers as one process, RL
rollouts included, and resumes from its sharded checkpoint as the uninterrupted run;
``--cpu --num_processes 2`` runs two processes; DeepSpeed and a dropped
process count are one-line errors, never a quiet single process or plain DDP. (DDP itself:
``tests/test_offline_training.py::test_two_processes_match_one_process``.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhflab.errors import ConfigError

ENTRY = Path(__file__).with_name("_distributed_entry.py")
# Greedy rollouts and no per-process advantage whitening, so PPO's two-process trajectory is the
# one-process one (as in the DDP test).
PPO = ["ppo.top_k=1", "ppo.num_iterations=3", "ppo.reward_rule=checksum", "ppo.whiten_advantages=false"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(model_cache) -> dict:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        RLHFLAB_CACHE=str(model_cache),
    )


def _launch(model_cache, *launch_args: str, script: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch_args,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *script,
    ]
    return subprocess.run(
        command, env=_env(model_cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, text=True
    )


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _bytes(run_dir: Path, rank: int) -> int:
    return json.loads((run_dir / f"rank-{rank}.json").read_text())["parameter_bytes"]


@pytest.mark.subprocess
def test_fsdp_shards_the_weights_and_trains_as_one_process(model_cache, tmp_path):
    """SFT, DPO and PPO (sampling from the sharded policy) under ``--use_fsdp`` on two processes:
    each holds about half of the trained parameter bytes, logs the one-process losses and
    gradient norms, and saves the same full model."""
    from safetensors.torch import load_file

    from tests._distributed_entry import main as entry_main

    kinds = "sft,dpo,ppo"
    two = tmp_path / "fsdp"
    done = _launch(
        model_cache,
        "--use_fsdp",
        "--fsdp_version",
        "2",
        "--num_processes",
        "2",
        script=[str(ENTRY), kinds, str(two), *PPO],
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "FSDP: FSDP2 fully_shard over 2 processes" in done.stdout
    entry_main([kinds, str(tmp_path / "one"), *PPO])

    for kind in kinds.split(","):
        one_dir, two_dir = tmp_path / "one" / kind, two / kind
        full, shards = _bytes(one_dir, 0), [_bytes(two_dir, r) for r in (0, 1)]
        assert all(0.45 * full < s < 0.55 * full for s in shards), (kind, full, shards)
        assert sum(shards) >= full  # nothing lost; a replicated value head counts twice
        one, fsdp = _metrics(one_dir), _metrics(two_dir)
        assert len(one) == len(fsdp) > 1
        for a, b in zip(one, fsdp):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (kind, a["iteration"])
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3, abs=1e-6), (kind, a["iteration"])
        if kind == "ppo":
            for a, b in zip(one, fsdp):
                for key in ("reward", "kl", "value_loss"):
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a["iteration"])
        saved_one = load_file(one_dir / "policy" / "model.safetensors")
        saved_two = load_file(two_dir / "policy" / "model.safetensors")
        assert saved_one.keys() == saved_two.keys()
        for name, tensor in saved_one.items():
            assert saved_two[name].shape == tensor.shape
            assert (saved_two[name] - tensor).abs().max() < 1e-4, (kind, name)


@pytest.mark.subprocess
def test_cpu_num_processes_two_runs_two_processes(model_cache, tmp_path):
    """accelerate's launcher starts one process for ``--cpu --num_processes 2`` (it wants mpirun);
    ``rlhflab`` starts the two itself through torchrun, each with half of every batch."""
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": f"{i} {i}"}) + "\n" for i in range(8)))
    rlhflab = Path(sys.executable).with_name("rlhflab")
    args = ["sft", "--policy", "tiny-policy", "--data", str(data), "--max_steps", "2", "--batch_size", "4"]
    args += ["--progress", "false"]
    done = _launch(
        model_cache,
        "--cpu",
        "--num_processes",
        "2",
        script=[str(rlhflab), *args, "--output_dir", str(tmp_path / "two")],
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "starting 2 through torchrun" in done.stdout
    one = subprocess.run(
        [str(rlhflab), *args, "--output_dir", str(tmp_path / "one")], env=_env(model_cache), capture_output=True
    )
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["tokens"] for r in b] == [r["tokens"] / 2 for r in a]  # each process saw half
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4, abs=1e-6)


def test_a_dropped_process_count_is_a_one_line_error_for_library_callers(monkeypatch):
    """Called as a library (no CLI to start the processes), the loop says what to launch instead."""
    import psutil

    from rlhflab.train.loop import make_accelerator
    from rlhflab.train.offline import SFTConfig

    class Launcher:
        def cmdline(self):
            return [sys.executable, "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "3", "train.py"]

    class Me:
        def parent(self):
            return Launcher()

    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(psutil, "Process", Me)
    with pytest.raises(ConfigError, match="--num_processes 3 started one process") as err:
        make_accelerator(SFTConfig())
    assert "\n" not in str(err.value) and "--multi_gpu --num_processes 3" in str(err.value)


def _checkpoint_layout(checkpoint: Path) -> set[str]:
    return {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()}


@pytest.mark.subprocess
def test_an_fsdp_run_resumed_from_its_checkpoint_continues_as_the_uninterrupted_run(model_cache, tmp_path):
    """SFT and PPO (sampling, a replicated value head) over two FSDP processes, 4 iterations with a
    checkpoint after 2: each process writes its own DCP shard, no single-file model or optimiser;
    resumed from that checkpoint (a fresh launch), the last 2 iterations log the same losses and
    end in the same weights as the straight run. Resumed by one process, it is a one-line error."""
    from safetensors.torch import load_file

    from rlhflab.train.loop import CHECKPOINT_DIR, SHARDED_DIR

    kinds, kept = "sft,ppo", ("checkpoints", "config.yaml", "metrics.jsonl")
    run = ["save_steps=2", "ppo.num_iterations=4", "ppo.max_new_tokens=4", "ppo.reward_rule=checksum"]
    fsdp = ("--use_fsdp", "--fsdp_version", "2", "--num_processes", "2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = _launch(model_cache, *fsdp, script=[str(ENTRY), kinds, str(straight), *run])
    assert done.returncode == 0, done.stdout[-4000:]
    for kind in kinds.split(","):
        checkpoints = straight / kind / CHECKPOINT_DIR
        assert [p.name for p in checkpoints.iterdir()] == ["iter-0000001"]  # finished ones only, no temporary
        layout = _checkpoint_layout(checkpoints / "iter-0000001")
        assert {f"{SHARDED_DIR}/__0_0.distcp", f"{SHARDED_DIR}/__1_0.distcp", f"{SHARDED_DIR}/.metadata"} <= layout
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= layout
        assert not any(name.startswith(("model", "optimizer")) for name in layout), layout
        for name in kept:
            (resumed / kind).mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (straight / kind / name).is_dir() else shutil.copy
            copy(straight / kind / name, resumed / kind / name)

    resumes = [f"{kind}.resume={resumed / kind}" for kind in kinds.split(",")]
    done = _launch(model_cache, *fsdp, script=[str(ENTRY), kinds, str(resumed), *run, *resumes])
    assert done.returncode == 0, done.stdout[-4000:]
    for kind in kinds.split(","):
        want, got = _metrics(straight / kind), _metrics(resumed / kind)
        assert [r["iteration"] for r in got] == [0, 1, 2, 3]
        for a, b in zip(want[2:], got[2:]):
            for key in ("loss", "grad_norm", *(("reward", "kl", "value_loss") if kind == "ppo" else ())):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (kind, key, a["iteration"])
        saved_straight = load_file(straight / kind / "policy" / "model.safetensors")
        saved_resumed = load_file(resumed / kind / "policy" / "model.safetensors")
        assert saved_straight.keys() == saved_resumed.keys()
        for name, tensor in saved_straight.items():
            assert (saved_resumed[name] - tensor).abs().max() < 1e-4, (kind, name)

    from tests import _train_entry

    with pytest.raises(ConfigError, match="written under FSDP over 2 processes, resumed without FSDP") as err:
        _train_entry.run("sft", str(resumed / "sft"), {"resume": str(resumed / "sft")})
    assert "\n" not in str(err.value) and "--use_fsdp --num_processes 2" in str(err.value)


def test_a_checkpoint_resumes_only_under_the_layout_that_wrote_it(tmp_path):
    """Sharded state is per process: an FSDP checkpoint needs FSDP over as many processes, an
    unsharded one no FSDP; anything else is a one-line error naming the checkpoint."""
    from rlhflab.train.loop import _check_same_layout

    _check_same_layout(tmp_path, None, None)
    _check_same_layout(tmp_path, 2, 2)
    for written, resuming, says in (
        (2, 3, "written under FSDP over 2 processes, resumed under FSDP over 3 processes"),
        (None, 2, "written without FSDP, resumed under FSDP over 2 processes"),
    ):
        with pytest.raises(ConfigError, match=says) as err:
            _check_same_layout(tmp_path, written, resuming)
        assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
