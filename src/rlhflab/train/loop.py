"""The one training loop, on ``accelerate``: every method (SFT, reward modelling, PPO, A2C,
REINFORCE, RLOO, GRPO, DPO, ...) is an :class:`Algorithm` plugged into :func:`train`.

One *iteration* = ``algorithm.collect`` (e.g. sample a rollout; nothing for offline methods) and
then the optimiser steps of ``algorithm.updates`` (several epochs of minibatches for PPO, one step
for offline methods). Everything a method need not care about lives here once: device placement
and distribution (``accelerate launch`` gives DDP/FSDP), gradient accumulation and clipping,
NaN/inf detection, metrics JSONL and experiment trackers (``--report_to``: TensorBoard, trackio,
W&B, MLflow, through accelerate's trackers), progress bars, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rlhflab.config import TrainConfig, default_run_dir, save_config, tracker_names
from rlhflab.errors import ConfigError, TrainingError
from rlhflab.files import append_jsonl, write_json
from rlhflab.progress import bar, progress_shown

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "rlhflab_state.json"
TRACKER_PROJECT = "rlhflab"  # trackio / W&B project, MLflow experiment
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: the run's TensorBoard event files


class Algorithm(Protocol):
    """What a method provides to the loop."""

    name: str

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
    (TensorBoard event files in RUN/tensorboard/; trackio, W&B and MLflow where they keep runs)."""
    from accelerate import Accelerator
    from accelerate.tracking import TensorBoardTracker

    mixed = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[config.dtype]
    # Without cpu=True, accelerate ignores a multi-process launch on a machine with no GPU and each
    # process trains alone (into the same run directory); with it, the processes join over gloo.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    log_with = tracker_names(getattr(config, "report_to", None))
    if run_dir is not None and "tensorboard" in log_with:
        # an instance, so that the event files go to RUN/tensorboard rather than RUN/<project name>
        log_with[log_with.index("tensorboard")] = TensorBoardTracker(TENSORBOARD_DIR, run_dir)
    # Parameters are loaded in config.dtype already; autocast is only needed on accelerators.
    return Accelerator(
        mixed_precision=mixed if torch.cuda.is_available() else "no",
        cpu=cpu,
        log_with=log_with or None,
        project_dir=None if run_dir is None else str(run_dir),
    )


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
        params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused or None
    )
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=max(1, total_steps)
    )
    return optimizer, scheduler


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
    total_iterations = algorithm.num_iterations()
    optimizer, scheduler = make_optimizer(config, modules, algorithm.total_optimizer_steps())
    names = list(modules)
    # The scheduler is stepped here once per optimiser step (accelerate's wrapper would step it
    # once per process, assuming a sharded dataloader), so it is only registered for checkpoints.
    prepared = accelerator.prepare(*modules.values(), optimizer)
    modules = dict(zip(names, prepared[: len(names)]))
    optimizer = prepared[len(names)]
    accelerator.register_for_checkpointing(scheduler)
    algorithm.bind(accelerator, modules)

    start = 0
    if config.resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(f"{run_dir}: no checkpoint to resume from")
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / STATE_FILE).read_text())
        algorithm.load_state_dict(state["algorithm"])
        start = state["iteration"] + 1
        if accelerator.is_main_process:
            _truncate_metrics(run_dir / "metrics.jsonl", state["iteration"])

    logger = RunLogger(run_dir, accelerator, total_iterations, start, algorithm.name, config.progress)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    step = scheduler.last_epoch
    for iteration in range(start, total_iterations):
        t0, first_step = time.perf_counter(), step
        row: dict[str, Any] = {"iteration": iteration}
        with progress_shown(False):  # the training bar says what this waits for; no bar per rollout
            row.update(algorithm.collect(iteration))
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for micro_batches in algorithm.updates(iteration):
            step_loss = 0.0
            for i, micro in enumerate(micro_batches):
                # Gradients are all-reduced once per optimiser step, on its last micro-batch.
                with _no_sync(accelerator, modules.values(), active=i < len(micro_batches) - 1):
                    loss, stats = algorithm.loss(micro)
                    _check_finite(loss, "the loss", iteration, algorithm.name)
                    accelerator.backward(loss)
                # Micro-batch losses come weighted by their share, so the step's loss is their sum.
                step_loss += loss.item()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                    counts[key] = counts.get(key, 0) + 1
            sums["loss"] = sums.get("loss", 0.0) + step_loss
            counts["loss"] = counts.get("loss", 0) + 1
            if config.max_grad_norm > 0:
                norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
                _check_finite(torch.as_tensor(norm), "the gradient norm", iteration, algorithm.name)
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
                counts["grad_norm"] = counts.get("grad_norm", 0) + 1
            optimizer.step()
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
            save_checkpoint(accelerator, run_dir, iteration, algorithm)
        if should_stop is not None and should_stop(iteration):
            if iteration % max(1, config.logging_steps) != 0 and iteration != total_iterations - 1:
                logger.log(row)  # the last row of a stopped run is always logged
            break
    logger.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        algorithm.save_final(run_dir)
    accelerator.wait_for_everyone()
    return run_dir


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
            stack.enter_context(accelerator.no_sync(module))
    return stack


def save_checkpoint(accelerator, run_dir: Path, iteration: int, algorithm: Algorithm) -> Path:
    """Save models, optimiser, scheduler and RNG states, then mark the checkpoint complete by
    renaming it into place: a checkpoint directory that exists is a finished one."""
    root = run_dir / CHECKPOINT_DIR
    final = root / f"iter-{iteration:07d}"
    tmp = root / f".tmp-iter-{iteration:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, {"iteration": iteration, "algorithm": algorithm.state_dict()})
        os.replace(tmp, final)
        for old in root.glob("iter-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


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
