"""``accelerate launch`` means what it says, on two CPU processes over gloo: FSDP shards the trained
weights (each process holds about half) and trains to the same numbers as one process, RL
rollouts included, and resumes from its sharded checkpoint as the uninterrupted run;
DeepSpeed ZeRO-2/3 (where the ``deepspeed`` package and a C++ compiler are present) trains and
resumes to the same numbers too, ZeRO-3 holding about half the weights per process;
``--cpu --num_processes 2`` runs two processes; what DeepSpeed cannot run and a dropped
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


def _launch(
    model_cache, *launch_args: str, script: list[str], timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
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
        command,
        env={**_env(model_cache), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        text=True,
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


# ---- DeepSpeed ---------------------------------------------------------------------------------
DEEPSPEED_ENTRY = Path(__file__).with_name("_deepspeed_entry.py")


def _deepspeed_env() -> dict:
    """The environment of a DeepSpeed launch, or a skip saying what is missing. DeepSpeed's CPU
    collectives JIT-compile one C++ op (``deepspeed_shm_comm``) on first use, ~3 min on 2 cores;
    it is cached under ~/.cache (or $TORCH_EXTENSIONS_DIR), so later runs start in seconds."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install 'rlhflab[deepspeed]' with DS_BUILD_OPS=0)")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler}) to build DeepSpeed's deepspeed_shm_comm op")
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rlhflab" / "torch_extensions"))
    venv_bin = str(Path(sys.executable).parent)  # ninja, which builds the op, is installed beside python
    return {"TORCH_EXTENSIONS_DIR": extensions, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}


def _launch_deepspeed(model_cache, stage: int, script: list[str]) -> subprocess.CompletedProcess:
    # No --cpu: accelerate refuses it with DeepSpeed; on a CPU the loop joins the processes over gloo.
    launch = ("--use_deepspeed", "--zero_stage", str(stage), "--num_processes", "2")
    return _launch(model_cache, *launch, script=script, timeout=900, env=_deepspeed_env())


def _assert_same_saved_model(one_dir: Path, two_dir: Path, what: str) -> None:
    from safetensors.torch import load_file

    saved_one = load_file(one_dir / "model.safetensors")
    saved_two = load_file(two_dir / "model.safetensors")
    assert saved_one.keys() == saved_two.keys()
    for name, tensor in saved_one.items():
        assert saved_two[name].shape == tensor.shape
        assert (saved_two[name] - tensor).abs().max() < 1e-4, (what, name)


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "stage,kinds,extra",
    [
        # ZeRO-2 keeps whole weights, so PPO samples as without it (its value head is on the policy).
        (2, "sft,dpo,ppo", PPO),
        # ZeRO-3 trains the offline methods; SFT with 2 micro-batches per step.
        (3, "sft,dpo,reward", ["sft.gradient_accumulation_steps=2"]),
    ],
)
def test_deepspeed_zero_trains_as_one_process(model_cache, tmp_path, stage, kinds, extra):
    """Two processes under ``--use_deepspeed --zero_stage N`` log the one-process losses and
    gradient norms (the engine clips at rlhflab's --max_grad_norm, not accelerate's 1.0) and save
    the same ordinary HF model (gathered under ZeRO-3); under ZeRO-3 each process keeps about half
    the trained parameter bytes, under ZeRO-2 all of them."""
    from tests._distributed_entry import main as entry_main

    two = tmp_path / f"zero{stage}"
    done = _launch_deepspeed(model_cache, stage, [str(DEEPSPEED_ENTRY), kinds, str(two), *extra])
    assert done.returncode == 0, done.stdout[-4000:]
    assert f"DeepSpeed: ZeRO-{stage} over 2 processes" in done.stdout
    entry_main([kinds, str(tmp_path / "one"), *extra])

    for kind in kinds.split(","):
        one_dir, two_dir = tmp_path / "one" / kind, two / kind
        full, kept = _bytes(one_dir, 0), [_bytes(two_dir, r) for r in (0, 1)]
        if stage == 3:
            assert all(0.45 * full < k < 0.55 * full for k in kept), (kind, full, kept)
            assert sum(kept) >= full
        else:
            assert kept == [full, full], (kind, full, kept)
        one, two_rows = _metrics(one_dir), _metrics(two_dir)
        assert len(one) == len(two_rows) > 1
        keys = ("loss", "grad_norm", *(("reward", "kl", "value_loss") if kind == "ppo" else ()))
        for a, b in zip(one, two_rows):
            for key in keys:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (kind, key, a["iteration"])
        model_dir = "reward_model" if kind == "reward" else "policy"
        _assert_same_saved_model(one_dir / model_dir, two_dir / model_dir, kind)


@pytest.mark.subprocess
def test_a_deepspeed_run_resumed_from_its_checkpoint_continues_as_the_uninterrupted_run(model_cache, tmp_path):
    """SFT under ZeRO-3 over two processes, 4 iterations with a checkpoint after 2: the checkpoint
    is DeepSpeed's own (one ZeRO model and optimiser shard per process, through accelerate's
    save_state); resumed from it in a fresh launch, the last 2 iterations log the same losses and
    end in the same weights. Resumed without DeepSpeed, it is a one-line error."""
    from rlhflab.train.loop import CHECKPOINT_DIR

    run = ["save_steps=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = _launch_deepspeed(model_cache, 3, [str(DEEPSPEED_ENTRY), "sft", str(straight), *run])
    assert done.returncode == 0, done.stdout[-4000:]
    checkpoints = straight / "sft" / CHECKPOINT_DIR
    assert [p.name for p in checkpoints.iterdir()] == ["iter-0000001"]
    layout = _checkpoint_layout(checkpoints / "iter-0000001")
    for rank in (0, 1):
        assert f"pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in layout, layout
        assert f"random_states_{rank}.pkl" in layout
    (resumed / "sft").mkdir(parents=True)
    for name in ("checkpoints", "config.yaml", "metrics.jsonl"):
        copy = shutil.copytree if (straight / "sft" / name).is_dir() else shutil.copy
        copy(straight / "sft" / name, resumed / "sft" / name)

    script = [str(DEEPSPEED_ENTRY), "sft", str(resumed), *run, f"resume={resumed / 'sft'}"]
    done = _launch_deepspeed(model_cache, 3, script)
    assert done.returncode == 0, done.stdout[-4000:]
    want, got = _metrics(straight / "sft"), _metrics(resumed / "sft")
    assert [r["iteration"] for r in got] == [0, 1, 2, 3]
    for a, b in zip(want[2:], got[2:]):
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a["iteration"])
    _assert_same_saved_model(straight / "sft" / "policy", resumed / "sft" / "policy", "resumed")

    from tests import _train_entry

    with pytest.raises(ConfigError, match="written under DeepSpeed ZeRO-3 over 2 processes, resumed without") as err:
        _train_entry.run("sft", str(resumed / "sft"), {"resume": str(resumed / "sft")})
    assert "\n" not in str(err.value) and "--use_deepspeed --zero_stage 3 --num_processes 2" in str(err.value)


def test_what_deepspeed_cannot_run_is_a_one_line_error(monkeypatch):
    """No deepspeed package, no launcher, ZeRO-0/1, mixed precision, two trained models (PPO with a
    separate critic), and sampling methods under ZeRO-3: each a one-line error naming what to run."""
    import importlib.util
    from types import SimpleNamespace

    from torch import nn

    from rlhflab.train import loop
    from rlhflab.train.offline import SFTConfig

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    find_spec = importlib.util.find_spec
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a))
        with pytest.raises(ConfigError, match="deepspeed package is not installed") as err:
            loop.make_accelerator(SFTConfig())
        assert "\n" not in str(err.value) and "pip install 'rlhflab[deepspeed]'" in str(err.value)

    checks = [
        (
            lambda: loop._check_deepspeed_run(
                SimpleNamespace(name="ppo", samples_from_policy=True), {"policy": nn.Linear(1, 1)}, 3
            ),
            "--zero_stage 2",
        ),
        (
            lambda: loop._check_deepspeed_run(
                SimpleNamespace(name="ppo", samples_from_policy=True),
                {"policy": nn.Linear(1, 1), "critic": nn.Linear(1, 1)},
                2,
            ),
            "--critic shared",
        ),
    ]
    if find_spec("deepspeed") is not None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        checks.append((lambda: loop.make_accelerator(SFTConfig()), "no launcher started this process"))
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
        checks.append((lambda: loop.deepspeed_plugin(SFTConfig(), 2, "no"), "ZeRO-2 and ZeRO-3"))
        checks.append((lambda: _plugin_at_stage(monkeypatch, 2, "bf16"), "--mixed_precision no"))
    for call, says in checks:
        with pytest.raises(ConfigError, match=says) as err:
            call()
        assert "\n" not in str(err.value)
    # ZeRO-2 keeps whole weights: one model that samples is fine there
    loop._check_deepspeed_run(SimpleNamespace(name="grpo", samples_from_policy=True), {"policy": nn.Linear(1, 1)}, 2)


def _plugin_at_stage(monkeypatch, stage: int, precision: str):
    from rlhflab.train.loop import deepspeed_plugin
    from rlhflab.train.offline import SFTConfig

    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(stage))
    return deepspeed_plugin(SFTConfig(), 2, precision)
