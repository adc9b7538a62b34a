"""The one training loop, on ``accelerate``: every method (SFT, reward modelling, PPO, A2C,
REINFORCE, RLOO, GRPO, DPO, ...) is an :class:`Algorithm` plugged into :func:`train`.

One *iteration* = ``algorithm.collect`` (e.g. sample a rollout; nothing for offline methods) and
then the optimiser steps of ``algorithm.updates`` (several epochs of minibatches for PPO, one step
for offline methods). Everything a method need not care about lives here once: device placement
and distribution (``accelerate launch`` gives DDP/FSDP), gradient accumulation and clipping,
NaN/inf detection, metrics JSONL and experiment trackers (``--report_to``: TensorBoard, trackio,
W&B, MLflow, through accelerate's trackers), progress bars, atomic checkpoints and exact resume.

**Precision** (``--mixed_precision``, or accelerate launch's own setting when the flag is not
given; :func:`rlhflab.hardware.resolve_mixed_precision`). ``dtype`` is the *storage* dtype of the
weights; ``mixed_precision`` is *autocast*: the weights, their gradients and AdamW's moments stay
fp32 (the optimiser updates fp32 master weights) while matmuls, linear layers and attention run in
bf16. Both at once would mean two answers to one question, so ``--dtype bfloat16 --mixed_precision
bf16`` is a ConfigError. The loop enters ``accelerator.autocast()`` around each iteration's
``collect`` (sampling, reference and reward scoring) and each micro-batch's ``loss``, so a rollout is
sampled and scored in the precision it is trained in. What stays fp32 under autocast, and why:
log-softmax and the gathered token log-probs (``logprobs_from_logits`` upcasts the logits: a bf16
log-softmax over 49k entries loses ~3 digits), hence PPO/GRPO ratios exp(log pi - log pi_old), KL
estimates and advantages (elementwise on fp32 log-probs and rewards; value-head outputs are upcast),
and every loss reduction. Logits themselves are bf16 matmul outputs, as in any bf16 trainer.

**Scale-out** (``accelerate launch``): DDP as accelerate sets it up (``--multi_gpu`` / torchrun;
on a machine without GPUs the processes join over gloo). FSDP (``--use_fsdp`` or
``distributed_type: FSDP``) is FSDP2's ``fully_shard`` applied here, on CPU/gloo as on GPUs: each
decoder layer and each model is one unit, so every process holds 1/N of the trained weights,
their gradients and optimiser state; sampling gathers the policy's weights once per rollout
(:func:`rlhflab.hardware.gathered_parameters`) and the final save gathers them once. Its checkpoints
keep models and optimiser as torch.distributed.checkpoint shards, one per process (:func:`save_checkpoint`),
and resume under the same launch only.
DeepSpeed (``--use_deepspeed --zero_stage 2|3``, the ``rlhflab[deepspeed]`` extra) is accelerate's
DeepSpeed engine (:func:`deepspeed_plugin`; tested on CPU processes over gloo, not on GPUs): ZeRO-2
partitions gradients and optimiser state, ZeRO-3 the weights too. The loop drives no torch
DataLoader, so the plugin's config gets the micro-batch, accumulation steps and clipping from
rlhflab's own options (accelerate's defaults would be a dataloader's batch size and a silent clip at
1.0); the engine clips and steps on each step's last micro-batch and the loop only reads its
gradient norm. One trained model per engine, fp32 weights without autocast; ZeRO-3 trains the
offline methods only (sampling would need the gathered weights), and the final save gathers the
weights once. Its checkpoints are DeepSpeed's own (accelerate's save_state: one ZeRO shard per
process) and resume under the same launch only. What it cannot run (PPO/A2C with a separate critic,
RL or RAFT under ZeRO-3, mixed precision, ZeRO-0/1) is a one-line error naming what to launch
instead, and so is ``--cpu --num_processes N`` (which accelerate's launcher runs as one process
without mpirun).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rlhflab.config import TrainConfig, default_run_dir, save_config, tracker_names
from rlhflab.errors import ConfigError, TrainingError
from rlhflab.files import append_jsonl, write_json
from rlhflab.hardware import autocast, resolve_mixed_precision
from rlhflab.progress import bar, progress_shown

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "rlhflab_state.json"
SHARDED_DIR = "sharded"  # CHECKPOINT/sharded/: an FSDP run's models and optimiser, one DCP file per process
TRACKER_PROJECT = "rlhflab"  # trackio / W&B project, MLflow experiment
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: the run's TensorBoard event files


class Algorithm(Protocol):
    """What a method provides to the loop."""

    name: str
    # Whether training samples from the policy being trained (RL rollouts, RAFT's rounds): a sharding
    # that keeps the weights partitioned between steps (DeepSpeed ZeRO-3) cannot run it.
    samples_from_policy: bool

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules the optimiser trains (prepared and checkpointed by the loop)."""

    def bind(self, accelerator, modules: dict[str, nn.Module]) -> None:
        """Receive the prepared (possibly DDP-wrapped) modules before training starts."""

    def num_iterations(self) -> int: ...

    def total_optimizer_steps(self) -> int:
        """For the learning-rate schedule."""

    def collect(self, iteration: int) -> dict[str, float]:
        """Work done once per iteration before the updates (rollouts, scoring)."""

    def updates(self, iteration: int) -> Iterable[list[Any]]:
        """Optimiser steps of this iteration, each a list of this process's micro-batches."""

    def loss(self, micro_batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch, already weighted so that summing the gradients of one
        step's micro-batches (and averaging over processes) gives the global-batch loss."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def save_final(self, run_dir: Path) -> None:
        """Write the trained model(s) with ``save_pretrained``."""


def make_accelerator(config: TrainConfig, run_dir: str | Path | None = None):
    """The run's Accelerator; with ``config.report_to`` trackers, logging into ``run_dir``
    (TensorBoard event files in RUN/tensorboard/; trackio, W&B and MLflow where they keep runs).

    Its ``mixed_precision`` is the resolved ``config.mixed_precision`` (module docstring); under
    FSDP accelerate is kept from wrapping the models (the loop shards them, see :func:`train`)."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.tracking import TensorBoardTracker

    _check_launch()
    log_with = tracker_names(getattr(config, "report_to", None))
    if run_dir is not None and "tensorboard" in log_with:
        # an instance, so that the event files go to RUN/tensorboard rather than RUN/<project name>
        log_with[log_with.index("tensorboard")] = TensorBoardTracker(TENSORBOARD_DIR, run_dir)
    project_dir = None if run_dir is None else str(run_dir)
    if deepspeed_requested():
        from accelerate.utils import InitProcessGroupKwargs

        # accelerate refuses cpu=True with DeepSpeed; without a backend named, on a machine with no
        # GPU it would count one process and DeepSpeed's batch arithmetic would fail.
        group = {} if torch.cuda.is_available() else {"backend": "gloo"}
        state = PartialState(**group)
        precision = _agreed_precision(config, state)
        plugin = deepspeed_plugin(config, state.num_processes, precision)
        AcceleratorState._reset_state()
        return Accelerator(
            deepspeed_plugin=plugin,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            kwargs_handlers=[InitProcessGroupKwargs(**group)],
            log_with=log_with or None,
            project_dir=project_dir,
        )
    # Without cpu=True, accelerate ignores a multi-process launch on a machine with no GPU and each
    # process trains alone (into the same run directory); with it, the processes join over gloo.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    with _without_env("ACCELERATE_USE_FSDP"):
        precision = _agreed_precision(config, PartialState(cpu=cpu))
        # accelerate keeps one process-wide state, which refuses a second run (the demo's next stage,
        # a test) in another precision; the processes' group (PartialState) is kept.
        AcceleratorState._reset_state()
        return Accelerator(mixed_precision=precision, cpu=cpu, log_with=log_with or None, project_dir=project_dir)


def fsdp_requested() -> bool:
    """``accelerate launch --use_fsdp`` or an accelerate config with ``distributed_type: FSDP``."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def deepspeed_requested() -> bool:
    """``accelerate launch --use_deepspeed`` or an accelerate config with ``distributed_type: DEEPSPEED``."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


DEEPSPEED_INSTEAD = "or launch with --use_fsdp (FSDP2: parameters, gradients and optimiser state sharded)"


def deepspeed_plugin(config: TrainConfig, processes: int, precision: str):
    """accelerate's DeepSpeedPlugin as accelerate launch set it (zero stage, config file), with what
    rlhflab's loop decides written into its config: ``train_micro_batch_size_per_gpu`` (this
    process's share of one micro-batch, ``batch_size / processes``; accelerate would take it from a
    DataLoader passed to ``prepare``, which the loop has none of), ``gradient_accumulation_steps``
    and ``gradient_clipping`` (``max_grad_norm``; 0 clips nothing; accelerate's default is a silent
    1.0). The engine clips, so the loop does not clip again."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage", plugin.zero_stage)
    if stage not in (2, 3):
        raise ConfigError(
            f"DeepSpeed ZeRO stage {stage}: rlhflab runs ZeRO-2 and ZeRO-3 (accelerate launch --use_deepspeed "
            "--zero_stage 2 or 3); for plain data parallelism launch with --multi_gpu"
        )
    if precision != "no" or getattr(config, "dtype", "float32") != "float32":
        what = f"--mixed_precision {precision}" if precision != "no" else f"--dtype {config.dtype}"
        raise ConfigError(
            f"DeepSpeed with {what}: rlhflab trains fp32 weights under DeepSpeed (its bf16 keeps bf16 weights, not "
            f"rlhflab's fp32-weight autocast); launch with --mixed_precision no, {DEEPSPEED_INSTEAD}"
        )
    micro = max(1, getattr(config, "batch_size", 1) // processes)
    accumulation = config.gradient_accumulation_steps
    plugin.deepspeed_config.update(
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=accumulation,
        train_batch_size=micro * accumulation * processes,
        gradient_clipping=float(config.max_grad_norm),
    )
    plugin.gradient_accumulation_steps = accumulation
    return plugin


def _check_deepspeed_run(algorithm: Algorithm, modules: dict[str, nn.Module], stage: int) -> None:
    """One-line errors for the runs a DeepSpeed engine cannot take through accelerate."""
    if len(modules) > 1:
        raise ConfigError(
            f"{algorithm.name} trains {len(modules)} models ({', '.join(modules)}) and accelerate gives DeepSpeed one "
            f"model per engine; train it with --critic shared (a value head on the policy), {DEEPSPEED_INSTEAD}"
        )
    if stage == 3 and algorithm.samples_from_policy:
        # Sampling reads whole weights, which ZeRO-3 keeps partitioned (RAFT samples between rounds).
        raise ConfigError(
            f"{algorithm.name} samples from the policy, whose weights DeepSpeed ZeRO-3 keeps partitioned; "
            f"use --zero_stage 2 (full weights on each process), {DEEPSPEED_INSTEAD}"
        )


def _check_launch() -> None:
    """One-line errors for the launches accelerate would otherwise quietly run as something else."""
    if deepspeed_requested():
        import importlib.util

        requested = "DeepSpeed requested (accelerate launch --use_deepspeed / distributed_type DEEPSPEED)"
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                f"{requested} but the deepspeed package is not installed: pip install 'rlhflab[deepspeed]', "
                f"{DEEPSPEED_INSTEAD}"
            )
        if "LOCAL_RANK" not in os.environ:
            # accelerate would take this process for one of a group that was never started
            raise ConfigError(
                f"{requested} but no launcher started this process (no LOCAL_RANK); run it under "
                "`accelerate launch --use_deepspeed --zero_stage 2|3 --num_processes N ...`"
            )
    requested = processes_the_launcher_dropped()
    if requested > 1:
        raise ConfigError(
            f"accelerate launch --cpu --num_processes {requested} started one process (accelerate's launcher starts "
            f"several CPU processes only through mpirun); launch with `accelerate launch --multi_gpu --num_processes "
            f"{requested} ...` or `torchrun --nproc_per_node {requested} ...`: on a CPU they join over gloo"
        )


def processes_the_launcher_dropped() -> int:
    """N when this process was started by ``accelerate launch --cpu --num_processes N`` (N > 1) as
    its only process, else 0. The launcher passes no process count, so it is read from the
    launcher's own command line (the parent process)."""
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() != "true" or "WORLD_SIZE" in os.environ:
        return 0
    if any(k in os.environ for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return 0
    try:
        import psutil
        from accelerate.commands.launch import launch_command_parser

        argv = psutil.Process().parent().cmdline()
        at = next(i for i, a in enumerate(argv) if a.endswith("launch") or a == "accelerate.commands.launch")
        args, _ = launch_command_parser().parse_known_args(argv[at + 1 :])
    except Exception:  # noqa: BLE001 - not launched by accelerate, or a launcher we cannot read
        return 0
    return int(args.num_processes or 0) if args.mpirun_hostfile is None else 0


def torchrun_argv(processes: int) -> list[str]:
    """This command line again, as ``processes`` processes started by torchrun (which join over
    gloo on a CPU): what ``rlhflab`` runs when :func:`processes_the_launcher_dropped` says N."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        f"--master_addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master_port={os.environ.get('MASTER_PORT', '29500')}",
        *sys.argv,
    ]


@contextlib.contextmanager
def _without_env(name: str):
    """``name`` unset while the block runs, restored after."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _agreed_precision(config, state) -> str:
    """The run's resolved autocast precision, the same on every process (``auto`` is measured on
    the main process and broadcast: processes that chose differently would train different maths)."""
    from accelerate.utils import broadcast_object_list

    requested = getattr(config, "mixed_precision", None)
    device_type = state.device.type
    if requested == "auto" and state.num_processes > 1:
        choice = [resolve_mixed_precision("auto", device_type) if state.is_main_process else None]
        precision = broadcast_object_list(choice)[0]
    else:
        precision = resolve_mixed_precision(requested, device_type, announce=state.is_main_process)
    dtype = getattr(config, "dtype", "float32")
    if precision != "no" and dtype != "float32":
        raise ConfigError(
            f"accelerate launch --mixed_precision {precision} with --dtype {dtype}: choose one (low-precision weights, "
            "or fp32 weights under autocast: --dtype float32)"
        )
    return precision


def _tracker_config(config: Any) -> dict:
    """The run's options as flat scalars (what every tracker's hyperparameter table accepts)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}


def start_trackers(accelerator, config: Any, run_dir: Path) -> None:
    """One tracker run per training run, named after its directory (``demo-X/ppo``), in the project
    ``rlhflab``. trackio stays local (its SQLite database under $TRACKIO_DIR, default
    ~/.cache/huggingface/trackio; ``trackio show`` opens it); nothing is embedded or served."""
    if not accelerator.log_with:
        return
    name = "/".join(Path(run_dir).resolve().parts[-2:])
    accelerator.init_trackers(
        TRACKER_PROJECT,
        config=_tracker_config(config),
        init_kwargs={
            "trackio": {"name": name, "embed": False},
            "wandb": {"name": name, "dir": str(run_dir)},
            "mlflow": {"run_name": name},
        },
    )


def make_optimizer(config: TrainConfig, modules: dict[str, nn.Module], total_steps: int):
    from transformers import get_scheduler

    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: no parameter requires a gradient")
    # The fused kernel does the whole AdamW update in one pass over each tensor; the default CPU
    # path runs a dozen elementwise ops per parameter (4-5x slower on SmolLM2, and much slower
    # still when the second moments turn subnormal). Same update up to float rounding.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(
        _param_groups(params), lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused or None
    )
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=max(1, total_steps)
    )
    return optimizer, scheduler


def _param_groups(params: list[torch.Tensor]) -> list[dict]:
    """One group, or under FSDP with replicated leftovers (a value head) two: FSDP's sharded
    parameters and the plain ones, since one fused/foreach kernel call cannot mix them."""
    from torch.distributed.tensor import DTensor

    sharded = [p for p in params if isinstance(p, DTensor)]
    plain = [p for p in params if not isinstance(p, DTensor)]
    return [{"params": group} for group in (sharded, plain) if group] if sharded else [{"params": params}]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / CHECKPOINT_DIR
    done = sorted(p for p in root.glob("iter-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def _check_finite(value: torch.Tensor, what: str, iteration: int, algorithm: str) -> None:
    if not torch.isfinite(value).all():
        raise TrainingError(
            f"{algorithm}: {what} is {value.detach().float().flatten()[0].item()} at iteration {iteration}; "
            "lower the learning rate, check the reward source, or clip rewards"
        )


class RunLogger:
    """metrics.jsonl, the experiment trackers (``--report_to``) and a progress bar, on the main
    process only. Trackers get every row of metrics.jsonl at its optimiser step: proxy and oracle
    reward, each reward component, KL, losses, learning rate, seconds and steps per second."""

    def __init__(self, run_dir: Path, accelerator, total: int, start: int, desc: str, enabled: bool):
        self.path = run_dir / "metrics.jsonl"
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.bar = None
        if self.main and enabled:
            self.bar = bar(total, f"{desc}: training", unit="iteration", leave=True, initial=start)

    def log(self, row: dict) -> None:
        if not self.main:
            return
        append_jsonl(self.path, row)
        if self.accelerator.trackers:
            numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("iteration", "step")}
            self.accelerator.log(numbers, step=int(row.get("step", row["iteration"])))
        if self.bar is not None:
            shown = {}
            for key in ("loss", "reward", "oracle_reward", "kl", "accuracy"):
                if key in row:
                    shown[key] = f"{row[key]:.3g}"
            self.bar.set_postfix(shown)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.accelerator.trackers:
            self.accelerator.end_training()


def _truncate_metrics(path: Path, last_iteration: int) -> None:
    """After a resume, drop rows the killed run wrote past its last checkpoint."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from the kill
        if row.get("iteration", -1) <= last_iteration:
            kept.append(line + "\n")
    path.write_text("".join(kept))


def train(
    config: TrainConfig,
    algorithm: Algorithm,
    accelerator=None,
    config_to_save: Any = None,
    should_stop: Callable[[int], bool] | None = None,
) -> Path:
    """Run ``algorithm`` to completion (or resume it) and return the run directory.

    ``should_stop(iteration)``, if given, is asked after each iteration's updates; True ends training
    there (the learning-rate schedule still spans the full ``num_iterations`` budget) and the model
    is saved as after a full run. Under several processes it must answer the same on every one."""
    from accelerate.utils import set_seed

    run_dir = Path(config.resume or config.output_dir or default_run_dir(algorithm.name))
    accelerator = accelerator or make_accelerator(config, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not config.resume:
            save_config(config_to_save or config, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    start_trackers(accelerator, config_to_save or config, run_dir)
    set_seed(config.seed, device_specific=True)

    modules = algorithm.trainable_modules()
    if getattr(config, "gradient_checkpointing", False):
        enable_gradient_checkpointing(modules)
    deepspeed_stage = _deepspeed_stage(accelerator)
    if deepspeed_stage:
        _check_deepspeed_run(algorithm, modules, deepspeed_stage)
    fsdp = fsdp_requested() and accelerator.num_processes > 1
    if fsdp_requested() and not fsdp:
        print("FSDP requested on one process: nothing to shard, training unsharded", file=sys.stderr)
    if fsdp:
        modules = shard_modules(modules, accelerator)
    total_iterations = algorithm.num_iterations()
    optimizer, scheduler = make_optimizer(config, modules, algorithm.total_optimizer_steps())
    names = list(modules)
    # The scheduler is stepped here once per optimiser step (accelerate's wrapper would step it
    # once per process, assuming a sharded dataloader), so it is only registered for checkpoints.
    # Sharded modules are not given to accelerate, which would wrap them in DDP as well.
    prepared = accelerator.prepare(*([] if fsdp else modules.values()), optimizer)
    if not fsdp:
        modules = dict(zip(names, prepared[: len(names)]))
    optimizer = prepared[-1] if isinstance(prepared, (list, tuple)) else prepared
    accelerator.register_for_checkpointing(scheduler)
    algorithm.bind(accelerator, modules)
    sharded = (modules, optimizer) if fsdp else None
    if deepspeed_stage and accelerator.is_main_process:
        print(
            f"DeepSpeed: ZeRO-{deepspeed_stage} over {accelerator.num_processes} processes, micro-batch "
            f"{accelerator.deepspeed_config['train_micro_batch_size_per_gpu']} per process, "
            f"gradient_clipping {accelerator.deepspeed_config['gradient_clipping']} (from --max_grad_norm)",
            file=sys.stderr,
        )

    start = 0
    if config.resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(f"{run_dir}: no checkpoint to resume from")
        state = load_checkpoint(accelerator, checkpoint, algorithm, sharded)
        start = state["iteration"] + 1
        if accelerator.is_main_process:
            _truncate_metrics(run_dir / "metrics.jsonl", state["iteration"])

    logger = RunLogger(run_dir, accelerator, total_iterations, start, algorithm.name, config.progress)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    step = scheduler.last_epoch
    for iteration in range(start, total_iterations):
        t0, first_step = time.perf_counter(), step
        row: dict[str, Any] = {"iteration": iteration}
        # the training bar says what this waits for; no bar per rollout
        with progress_shown(False), autocast(accelerator.mixed_precision, accelerator.device.type):
            row.update(algorithm.collect(iteration))
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for micro_batches in algorithm.updates(iteration):
            step_loss = 0.0
            for i, micro in enumerate(micro_batches):
                last = i == len(micro_batches) - 1
                # Gradients are all-reduced once per optimiser step, on its last micro-batch.
                with _no_sync(accelerator, modules.values(), active=not last):
                    with autocast(accelerator.mixed_precision, accelerator.device.type):
                        loss, stats = algorithm.loss(micro)
                    _check_finite(loss, "the loss", iteration, algorithm.name)
                    if deepspeed_stage:
                        # The engine reduces, clips and steps on the boundary; the losses come
                        # weighted already, so it must not divide them by the accumulation steps.
                        accelerator.gradient_state._set_sync_gradients(last)
                        accelerator.backward(loss, scale_wrt_gas=False)
                    else:
                        accelerator.backward(loss)
                # Micro-batch losses come weighted by their share, so the step's loss is their sum.
                step_loss += loss.item()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                    counts[key] = counts.get(key, 0) + 1
            sums["loss"] = sums.get("loss", 0.0) + step_loss
            counts["loss"] = counts.get("loss", 0) + 1
            if fsdp:
                _average_replicated_gradients(params, accelerator.num_processes)
            if config.max_grad_norm > 0:
                # (Under DeepSpeed the engine clipped in its step; this reads the norm it measured.)
                norm = _clip_grad_norm(accelerator, params, config.max_grad_norm, fsdp)
                _check_finite(torch.as_tensor(norm), "the gradient norm", iteration, algorithm.name)
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
                counts["grad_norm"] = counts.get("grad_norm", 0) + 1
            optimizer.step()
            # Autocast caches its bf16 casts of the weights until the *outermost* autocast block ends,
            # and the pool commands hold one around the whole command: without this, every forward
            # after the first step would run on the weights as they were before it (stale casts).
            torch.clear_autocast_cache()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        row.update({k: sums[k] / counts[k] for k in sums})
        row = _mean_over_processes(accelerator, row)
        seconds = time.perf_counter() - t0
        row.update({"step": step, "lr": scheduler.get_last_lr()[0], "seconds": seconds})
        row["steps_per_second"] = (step - first_step) / seconds if seconds > 0 else 0.0
        if iteration % max(1, config.logging_steps) == 0 or iteration == total_iterations - 1:
            logger.log(row)
        logger.advance()
        if config.save_steps > 0 and (iteration + 1) % config.save_steps == 0 and iteration < total_iterations - 1:
            save_checkpoint(accelerator, run_dir, iteration, algorithm, sharded)
        if should_stop is not None and should_stop(iteration):
            if iteration % max(1, config.logging_steps) != 0 and iteration != total_iterations - 1:
                logger.log(row)  # the last row of a stopped run is always logged
            break
    logger.close()
    accelerator.wait_for_everyone()
    with _full_state_dicts(modules.values()) if fsdp else _zero3_gathered(modules.values()):
        if accelerator.is_main_process:
            algorithm.save_final(run_dir)
    accelerator.wait_for_everyone()
    if deepspeed_stage == 3:
        # accelerate's plugin tells transformers to build every model loaded from now on already
        # partitioned (zero.Init), which only an engine can run: a frozen reference of the next run
        # in this process could not. (The trained model itself stays partitioned: RUN/ holds it.)
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    return run_dir


def _deepspeed_stage(accelerator) -> int:
    """The ZeRO stage of a DeepSpeed accelerator; 0 without DeepSpeed."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"])


def _zero3_gathered(modules: Iterable[nn.Module]) -> contextlib.AbstractContextManager:
    """The full weights of ZeRO-3-partitioned ``modules`` on every process while the block runs
    (one all-gather; collective, so every process enters), so that ``save_pretrained`` on the
    main process writes an ordinary checkpoint; nothing for weights DeepSpeed does not partition."""
    partitioned = [p for m in modules for p in m.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def enable_gradient_checkpointing(modules: dict[str, nn.Module]) -> None:
    """HF gradient checkpointing (non-reentrant) on every outermost transformers model inside the
    trained modules: each decoder layer's activations are recomputed in the backward pass."""
    from transformers import PreTrainedModel

    for name, module in modules.items():
        models = _outermost(module, PreTrainedModel)
        models = [m for m in models if m.supports_gradient_checkpointing]
        if not models:
            raise ConfigError(f"--gradient_checkpointing: the {name} model does not support gradient checkpointing")
        for model in models:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _outermost(module: nn.Module, kind: type) -> list[nn.Module]:
    """The submodules of type ``kind`` (``module`` included) not inside another one."""
    found: list[tuple[str, nn.Module]] = []
    for name, sub in module.named_modules():
        if isinstance(sub, kind) and not any(name.startswith(f"{p}.") or p == "" for p, _ in found):
            found.append((name, sub))
    return [sub for _, sub in found]


def shard_modules(modules: dict[str, nn.Module], accelerator) -> dict[str, nn.Module]:
    """FSDP2 (``fully_shard``) over all processes: each decoder layer (a model's
    ``_no_split_modules``) and then each outermost transformers model is one unit, so every
    process keeps 1/N of its weights, gradients and optimiser state and all-gathers a unit's
    weights around its forward and backward. Parameters outside those models (a value head on
    a wrapper) stay replicated; the loop averages their gradients."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import PreTrainedModel

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for module in modules.values():
        module.to(accelerator.device)
        roots = _outermost(module, PreTrainedModel) or [module]
        for root in roots:
            layer_names = set(getattr(root, "_no_split_modules", None) or [])
            for sub in root.modules():
                if type(sub).__name__ in layer_names:
                    fully_shard(sub, mesh=mesh)
            fully_shard(root, mesh=mesh)
            # The sampling engine calls a root's trunk and head directly; FSDP must know the root
            # before any unit's own forward runs, or that unit would make itself the root.
            root._get_fsdp_state()._lazy_init()
    if accelerator.is_main_process:
        print(
            f"FSDP: FSDP2 fully_shard over {accelerator.num_processes} processes, one unit per decoder layer and per "
            "model (accelerate's other FSDP settings, e.g. version, wrap policy, offload, are not read)",
            file=sys.stderr,
        )
    return modules


def _average_replicated_gradients(params: list[torch.Tensor], processes: int) -> None:
    """Gradients of parameters FSDP does not shard, averaged over the processes (as DDP would)."""
    from torch.distributed.tensor import DTensor

    for p in params:
        # (A parameter outside the step's graph has no gradient on any process: skipped alike.)
        if isinstance(p, DTensor) or p.grad is None:
            continue
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(processes)


def _clip_grad_norm(accelerator, params: list[torch.Tensor], max_norm: float, fsdp: bool) -> torch.Tensor:
    """Clip to ``max_norm`` and return the global gradient norm (over the full, unsharded gradient)."""
    if not fsdp:
        return accelerator.clip_grad_norm_(params, max_norm)
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    replicated = [g for g in grads if not isinstance(g, DTensor)]
    squares = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    if sharded:
        norm = torch.nn.utils.get_total_norm(sharded)
        squares = squares + norm.full_tensor().double() ** 2
    if replicated:
        squares = squares + torch.nn.utils.get_total_norm(replicated).double() ** 2
    total = squares.sqrt().float()
    scale = min(1.0, max_norm / (float(total) + 1e-6))  # as torch.nn.utils.clip_grad_norm_
    if scale < 1.0:
        for g in grads:
            g.mul_(scale)
    return total


@contextlib.contextmanager
def _full_state_dicts(modules: Iterable[nn.Module]):
    """While the block runs, every submodule of the FSDP-sharded ``modules`` answers
    ``state_dict()`` with its full, gathered weights (on CPU, on the main process), so that the
    algorithm's ``save_pretrained`` on the main process writes an ordinary checkpoint. Every
    process must enter (the gather is collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    overridden = []
    for module in modules:
        full = get_model_state_dict(module, options=options)
        first: dict[int, str] = {}  # tied weights (embeddings and LM head) stay one tensor, as saving expects
        for name, p in module.named_parameters(remove_duplicate=False):
            if id(p) in first and name in full and first[id(p)] in full:
                full[name] = full[first[id(p)]]
            first.setdefault(id(p), name)
        for prefix, sub in module.named_modules():
            start = f"{prefix}." if prefix else ""
            part = {k[len(start) :]: v for k, v in full.items() if k.startswith(start)}
            sub.state_dict = lambda *args, _part=part, **kwargs: dict(_part)
            overridden.append(sub)
    try:
        yield
    finally:
        for sub in overridden:
            del sub.state_dict


def _mean_over_processes(accelerator, row: dict) -> dict:
    """Each process measured its own shard; the logged row describes the global batch (shards are
    equal-sized, and the per-process losses are those whose DDP average is the global loss)."""
    if accelerator.num_processes == 1:
        return row
    keys = [k for k in row if k != "iteration"]
    values = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return {"iteration": row["iteration"], **dict(zip(keys, values.tolist()))}


def _no_sync(accelerator, modules, active: bool) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if active and accelerator.num_processes > 1:
        for module in modules:
            stack.enter_context(_fsdp_no_sync(module) if _is_sharded(module) else accelerator.no_sync(module))
    return stack


def _is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


@contextlib.contextmanager
def _fsdp_no_sync(module: nn.Module):
    """FSDP2's form of ``no_sync``: gradients accumulate unsharded-locally, reduce-scattered on the
    step's last micro-batch."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_requires_gradient_sync(True, recurse=False)


def save_checkpoint(
    accelerator, run_dir: Path, iteration: int, algorithm: Algorithm, sharded: tuple[dict, Any] | None = None
) -> Path:
    """Save models, optimiser, scheduler and RNG states, then mark the checkpoint complete by
    renaming it into place: a checkpoint directory that exists is a finished one.

    ``sharded``, the ``(modules, optimizer)`` of an FSDP run: those two are saved with
    torch.distributed.checkpoint instead, each process writing its own shard into SHARDED_DIR;
    scheduler, RNG and the algorithm's state are saved as without FSDP."""
    root = run_dir / CHECKPOINT_DIR
    final = root / f"iter-{iteration:07d}"
    tmp = root / f".tmp-iter-{iteration:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    with _accelerate_keeps_no_optimizer(accelerator) if sharded else contextlib.nullcontext():
        accelerator.save_state(str(tmp))
    state = {"iteration": iteration, "algorithm": algorithm.state_dict() if accelerator.is_main_process else None}
    if sharded:
        _save_sharded(tmp / SHARDED_DIR, *sharded)
        state["fsdp_processes"] = accelerator.num_processes
    if _deepspeed_stage(accelerator):
        state["deepspeed"] = _deepspeed_layout(accelerator)  # accelerate saved the engine: one ZeRO shard per process
    accelerator.wait_for_everyone()  # every process's files are written before the rename
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, state)
        os.replace(tmp, final)
        for old in root.glob("iter-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: Path, algorithm: Algorithm, sharded: tuple[dict, Any] | None) -> dict:
    """Restore what :func:`save_checkpoint` saved into ``checkpoint`` and return its state file."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    _check_same_layout(checkpoint, state.get("fsdp_processes"), accelerator.num_processes if sharded else None)
    _check_same_deepspeed_layout(checkpoint, state.get("deepspeed"), _deepspeed_layout(accelerator))
    with _accelerate_keeps_no_optimizer(accelerator) if sharded else contextlib.nullcontext():
        accelerator.load_state(str(checkpoint))
    if sharded:
        _load_sharded(checkpoint / SHARDED_DIR, *sharded)
    algorithm.load_state_dict(state["algorithm"])
    return state


def _check_same_layout(checkpoint: Path, written: int | None, resuming: int | None) -> None:
    """A sharded checkpoint resumes under FSDP over as many processes as wrote it (each restores
    its own RNG states; the trajectory would not be the uninterrupted one), an unsharded one
    without FSDP. ``written`` / ``resuming``: the FSDP process count, None without FSDP."""
    if written == resuming:
        return

    def launch(processes: int | None) -> str:
        return f"under FSDP over {processes} processes" if processes else "without FSDP"

    raise ConfigError(
        f"{checkpoint}: written {launch(written)}, resumed {launch(resuming)}; resume it as the run was launched"
        + (f" (accelerate launch --use_fsdp --num_processes {written})" if written else "")
    )


def _deepspeed_layout(accelerator) -> str | None:
    """``ZeRO-S over N processes`` under DeepSpeed, else None: what a DeepSpeed checkpoint resumes under."""
    stage = _deepspeed_stage(accelerator)
    return f"ZeRO-{stage} over {accelerator.num_processes} processes" if stage else None


def _check_same_deepspeed_layout(checkpoint: Path, written: str | None, resuming: str | None) -> None:
    """A DeepSpeed checkpoint (the engine's own ZeRO shards, one per process) resumes under the
    same stage over as many processes, and an ordinary one without DeepSpeed."""
    if written == resuming:
        return

    def launch(layout: str | None) -> str:
        return f"under DeepSpeed {layout}" if layout else "without DeepSpeed"

    how = ""
    if written:
        stage, processes = written.removeprefix("ZeRO-").split(" over ")
        how = f" (accelerate launch --use_deepspeed --zero_stage {stage} --num_processes {processes.split()[0]})"
    raise ConfigError(
        f"{checkpoint}: written {launch(written)}, resumed {launch(resuming)}; resume it as the run was launched{how}"
    )


@contextlib.contextmanager
def _accelerate_keeps_no_optimizer(accelerator):
    """accelerate's save_state / load_state keep the optimiser's state in one file of the main
    process; under FSDP each process holds a different shard of it, saved by :func:`_save_sharded`.
    While the block runs accelerate sees no optimiser (its scheduler, RNG and scaler states stay)."""
    kept = accelerator._optimizers
    accelerator._optimizers = []
    try:
        yield
    finally:
        accelerator._optimizers = kept


def _sharded_state(modules: dict[str, nn.Module], optimizer) -> tuple[nn.Module, Any, dict]:
    """The FSDP modules as one module (their names the keys' prefixes), the bare torch optimiser
    (accelerate's wrapper unwrapped), and their sharded state dicts (DTensors: this process's shards)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = nn.ModuleDict(modules)
    bare = getattr(optimizer, "optimizer", optimizer)
    model_state, optimizer_state = get_state_dict(model, bare)
    return model, bare, {"model": model_state, "optimizer": optimizer_state}


def _save_sharded(directory: Path, modules: dict[str, nn.Module], optimizer) -> None:
    """Every process writes its shard of the models and the optimiser (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_sharded_state(modules, optimizer)[2], checkpoint_id=str(directory))


def _load_sharded(directory: Path, modules: dict[str, nn.Module], optimizer) -> None:
    """Every process reads its shard of the models and the optimiser back (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model, bare, state = _sharded_state(modules, optimizer)
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, bare, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def optimizer_batch_size(config) -> int:
    """Examples per optimiser step of an offline method, across all processes: ``batch_size`` per
    micro-batch times ``gradient_accumulation_steps``, as TRL's effective batch multiplies them."""
    return config.batch_size * config.gradient_accumulation_steps


def shard(items: list, accelerator) -> list:
    """This process's share of a global batch (contiguous, equal-sized blocks)."""
    n, k = accelerator.num_processes, accelerator.process_index
    if len(items) % n:
        raise ConfigError(f"a batch of {len(items)} does not split evenly over {n} processes")
    size = len(items) // n
    return items[k * size : (k + 1) * size]


def split(items: list, parts: int) -> list[list]:
    size = math.ceil(len(items) / parts)
    return [items[i : i + size] for i in range(0, len(items), size)]
