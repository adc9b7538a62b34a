"""One runner per (case, framework). A runner builds its trainer from scratch, trains ``steps``
optimiser steps, and returns the wall-clock time of each step (the time between consecutive ends
of optimiser steps, so data collation, generation and logging inside a step all count) plus what
it processed. The first step of every run is a warm-up and is dropped by the caller.

rlhflab runs through its public ``train(config, algorithm)`` loop; TRL through ``Trainer.train()``
with a ``TrainerCallback`` that stamps ``on_step_end``. Neither saves checkpoints or models.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from workloads import CHAT_PROMPTS, SETTINGS, demonstration_records, length_reward, pair_records, prompt_texts

POLICY = "smollm2-135m-instruct"
# Storage dtype: float32 on CPU; benchmarks/gpu.sh sets cuda + bfloat16 (run.py --device/--dtype).
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
DTYPE = os.environ.get("BENCH_DTYPE", "float32")
TRL_VLLM = os.environ.get("BENCH_TRL_VLLM", "0") == "1"


def mixed_precision() -> str:
    """The autocast precision every case runs under (``no`` or ``bf16``): resolved once by run.py
    (rlhflab's ``resolve_mixed_precision``) and passed in the environment, read at call time
    because run.py sets it after importing this module."""
    return os.environ.get("BENCH_MIXED_PRECISION", "no")


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


# (module, grad enabled, autocast on) -> output dtype, seen in this process (one child per trial).
ACTIVATION_DTYPES: dict[str, str] = {}


def _watch_dtypes(model):
    """Record the output dtype of the first attention projection and of the output head whenever
    they run, so each trial reports what precision its matmuls really ran in (whatever the
    framework's flags promise)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = head if head is not None else getattr(model, "score", None)
    watched = {"layer0.q_proj": model.model.layers[0].self_attn.q_proj, "head": head}
    for name, module in watched.items():
        if module is None:
            continue

        def hook(module, inputs, output, name=name):
            out = output if torch.is_tensor(output) else output[0]
            mode = "train" if torch.is_grad_enabled() else "no_grad"
            ACTIVATION_DTYPES.setdefault(f"{name} {mode}", str(out.dtype).removeprefix("torch."))

        module.register_forward_hook(hook)
    return model


def _policy():
    from rlhflab.models import load_policy

    model, tokenizer = load_policy(POLICY, DTYPE)
    return _watch_dtypes(model), tokenizer


def _reward_model():
    """SmolLM2-135M with a scalar head (``AutoModelForSequenceClassification``), as both frameworks
    load it; the head is freshly initialised (seeded)."""
    from rlhflab.models import load_reward_model

    torch.manual_seed(0)
    model, tokenizer = load_reward_model(POLICY, DTYPE)
    return _watch_dtypes(model), tokenizer


# ---- rlhflab -------------------------------------------------------------------------------------
class _Stamps:
    """Timestamps of the ends of rlhflab's iterations (each one optimiser step here)."""

    def __init__(self):
        from rlhflab.train import loop

        self.ends: list[float] = []
        self._loop, self._orig = loop, loop.RunLogger.advance
        stamps = self

        def advance(logger):
            sync()
            stamps.ends.append(time.perf_counter())
            return stamps._orig(logger)

        loop.RunLogger.advance = advance

    def close(self):
        self._loop.RunLogger.advance = self._orig


def _run_rlhflab(config, algorithm) -> dict:
    from rlhflab.train.loop import train

    algorithm.save_final = lambda run_dir: None
    stamps = _Stamps()
    t0 = time.perf_counter()
    try:
        run_dir = train(config, algorithm)
    finally:
        stamps.close()
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    starts = [t0] + stamps.ends[:-1]
    return {
        "step_times": [b - a for a, b in zip(starts, stamps.ends)],
        "metrics": rows,
        "activation_dtypes": dict(ACTIVATION_DTYPES),
    }


def _config(cls, tmp, steps, **kw):
    import dataclasses

    kw.setdefault("mixed_precision", mixed_precision())
    if "max_steps" in {f.name for f in dataclasses.fields(cls)}:  # the offline configs; RL counts iterations
        kw["max_steps"] = steps
    return cls(output_dir=str(Path(tmp) / "run"), progress=False, logging_steps=1, seed=0, dtype=DTYPE, **kw)


def rlhflab_sft(steps: int) -> dict:
    from rlhflab.train.offline import SFTAlgorithm, SFTConfig, tokenize_demonstrations

    s = SETTINGS["sft"]
    model, tokenizer = _policy()
    records = demonstration_records(tokenizer, 64, s["prompt_tokens"], s["completion_tokens"])
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(SFTConfig, tmp, steps, batch_size=s["batch"], learning_rate=s["lr"], use_chat_template=False)
        examples = tokenize_demonstrations(
            [r["prompt"] for r in records],
            [r["completion"] for r in records],
            tokenizer,
            config,
            use_chat_template=False,
        )
        out = _run_rlhflab(config, SFTAlgorithm(config, model, tokenizer, examples))
    out["tokens_per_row"] = sorted({len(p) + len(c) for p, c in examples})
    return out


def _preference_records(tokenizer):
    from rlhflab.data.records import Preference

    s = SETTINGS["pairs"]
    return [Preference(**r) for r in pair_records(tokenizer, 64, s["prompt_tokens"], s["completion_tokens"])]


def rlhflab_reward(steps: int, precision: str | None = None) -> dict:
    from rlhflab.models.scoring import encode_for_reward
    from rlhflab.train.reward_model import RewardAlgorithm, RewardConfig

    s = SETTINGS["pairs"]
    model, tokenizer = _reward_model()
    records = _preference_records(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(
            RewardConfig,
            tmp,
            steps,
            model=POLICY,
            batch_size=s["batch"],
            learning_rate=SETTINGS["reward"]["lr"],
            mixed_precision=precision or mixed_precision(),
        )
        out = _run_rlhflab(config, RewardAlgorithm(config, model, tokenizer, records))
    enc = encode_for_reward(tokenizer, [r.prompt for r in records[:8]], [r.chosen for r in records[:8]])
    out["tokens_per_row"] = sorted(set(enc["attention_mask"].sum(-1).tolist()))
    return out


def rlhflab_reward_fp32(steps: int) -> dict:
    """The reward model as rlhflab's pool commands train it: fp32 whatever the run's precision
    (README, Precision: under bf16 the demo's reward model ranked samples far worse)."""
    return rlhflab_reward(steps, "no")


def rlhflab_dpo(steps: int) -> dict:
    from rlhflab.train.preference import PreferenceAlgorithm, PreferenceConfig, tokenize_pairs

    s = SETTINGS["pairs"]
    model, tokenizer = _policy()
    records = _preference_records(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(
            PreferenceConfig,
            tmp,
            steps,
            loss="dpo",
            kl_coef=s["beta"],
            batch_size=s["batch"],
            learning_rate=s["lr"],
            use_chat_template=False,
            precompute_reference=True,
        )
        pairs = tokenize_pairs(records, tokenizer, config, use_chat_template=False)
        algorithm = PreferenceAlgorithm(config, model, tokenizer, pairs)
        out = _run_rlhflab(config, algorithm)
    out["reference"] = "pi_ref log-probs of the 64 pairs precomputed once before step 0 (not in step times)"
    out["setup_reference_seconds"] = algorithm.reference_seconds
    out["tokens_per_row"] = sorted({len(p) + len(c) for pair in pairs for p, c in pair})
    return out


def _rl_algorithm(
    tmp,
    steps,
    algorithm,
    prompts_per_iteration,
    samples,
    prompt_tokens,
    new_tokens,
    beta,
    lr,
    reward_source=None,
    **extra,
):
    from rlhflab.data.records import Prompt
    from rlhflab.rewards.registry import RewardSource
    from rlhflab.train.policy_optimization import PolicyOptimization, RLConfig

    model, tokenizer = _policy()
    prompts = [Prompt(prompt=t) for t in prompt_texts(tokenizer, 16, prompt_tokens)]
    config = _config(
        RLConfig,
        tmp,
        steps,
        algorithm=algorithm,
        policy=POLICY,
        num_iterations=steps,
        prompts_per_iteration=prompts_per_iteration,
        samples_per_prompt=samples,
        max_new_tokens=new_tokens,
        kl_coef=beta,
        learning_rate=lr,
        use_chat_template=False,
        **extra,
    )
    reward_source = reward_source or RewardSource("length", lambda c, o: length_reward(o))
    return config, PolicyOptimization(config, model, tokenizer, prompts, reward_source)


def _rl(steps, algorithm):
    s = SETTINGS["rl"]
    with tempfile.TemporaryDirectory() as tmp:
        config, algo = _rl_algorithm(
            tmp,
            steps,
            algorithm,
            s["prompts"],
            s["generations"],
            s["prompt_tokens"],
            s["new_tokens"],
            s["beta"],
            s["lr"],
        )
        out = _run_rlhflab(config, algo)
    out["completion_length"] = [r.get("completion_length") for r in out["metrics"]]
    return out


def rlhflab_rloo(steps: int) -> dict:
    return _rl(steps, "rloo")


def rlhflab_grpo(steps: int) -> dict:
    return _rl(steps, "grpo")


def rlhflab_ppo(steps: int, epochs: int = 1) -> dict:
    """PPO at the settings of TRL's last PPOTrainer figure: 8 prompts x 32 new tokens, a separate
    value model (initialised from the policy), a frozen reference and a 135M reward model."""
    from rlhflab.models.scoring import score
    from rlhflab.rewards.registry import RewardSource

    s = SETTINGS["ppo"]
    reward_model, reward_tokenizer = _reward_model()
    reward_model.eval().requires_grad_(False)
    source = RewardSource(
        "smollm2 reward model", lambda c, o: score(reward_model, reward_tokenizer, c, o), is_model=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        config, algo = _rl_algorithm(
            tmp,
            steps,
            "ppo",
            s["prompts"],
            1,
            s["prompt_tokens"],
            s["new_tokens"],
            s["beta"],
            s["lr"],
            reward_source=source,
            critic="separate",
            epochs=epochs,
        )
        out = _run_rlhflab(config, algo)
    out["completion_length"] = [r.get("completion_length") for r in out["metrics"]]
    return out


# ---- TRL -----------------------------------------------------------------------------------------
class _TrlStamps:
    def __init__(self):
        from transformers import TrainerCallback

        stamps = self
        self.ends: list[float] = []
        self.metrics: list[dict] = []

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                sync()
                stamps.ends.append(time.perf_counter())

            def on_log(self, args, state, control, logs=None, **kwargs):
                stamps.metrics.append(dict(logs or {}))

        self.callback = Callback()


def _token_lengths(dataset) -> dict:
    """Distinct lengths of every token-id column TRL's preprocessing produced."""
    return {c: sorted({len(x) for x in dataset[c]}) for c in dataset.column_names if c.endswith("ids")}


def _trl_args(cls, tmp, steps, lr, **kw):
    return cls(
        output_dir=str(Path(tmp) / "trl"),
        max_steps=steps,
        learning_rate=lr,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        # bf16 autocast over fp32 weights under rlhflab's bf16 (a forward hook confirms the matmuls
        # run in bf16 on a CPU too: ACTIVATION_DTYPES); with bf16 storage (gpu.sh), as before.
        bf16=DTYPE == "bfloat16" or mixed_precision() == "bf16",
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=DEVICE == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        gradient_accumulation_steps=1,
        lr_scheduler_type="constant",
        warmup_steps=0,
        **kw,
    )


def _run_trl(make_trainer) -> dict:
    stamps = _TrlStamps()
    t0 = time.perf_counter()
    trainer = make_trainer([stamps.callback])
    trainer.train()
    starts = [t0] + stamps.ends[:-1]
    return {
        "step_times": [b - a for a, b in zip(starts, stamps.ends)],
        "metrics": stamps.metrics,
        "trainer": trainer,
        "activation_dtypes": dict(ACTIVATION_DTYPES),
        "trl_mixed_precision": trainer.accelerator.mixed_precision,
    }


def trl_sft(steps: int) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    s = SETTINGS["sft"]
    model, tokenizer = _policy()
    data = Dataset.from_list(demonstration_records(tokenizer, 64, s["prompt_tokens"], s["completion_tokens"]))
    with tempfile.TemporaryDirectory() as tmp:
        args = _trl_args(
            SFTConfig, tmp, steps, s["lr"], per_device_train_batch_size=s["batch"], max_length=1024, packing=False
        )
        out = _run_trl(
            lambda cb: SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=cb)
        )
    out["tokens_per_row"] = _token_lengths(out.pop("trainer").train_dataset)
    return out


def trl_reward(steps: int) -> dict:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    s = SETTINGS["pairs"]
    model, tokenizer = _reward_model()
    data = Dataset.from_list(pair_records(tokenizer, 64, s["prompt_tokens"], s["completion_tokens"]))
    with tempfile.TemporaryDirectory() as tmp:
        args = _trl_args(
            RewardConfig, tmp, steps, SETTINGS["reward"]["lr"], per_device_train_batch_size=s["batch"], max_length=1024
        )
        out = _run_trl(
            lambda cb: RewardTrainer(
                model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=cb
            )
        )
    out["tokens_per_row"] = _token_lengths(out.pop("trainer").train_dataset)
    return out


def _trl_dpo(steps: int, precompute: bool) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    s = SETTINGS["pairs"]
    model, tokenizer = _policy()
    data = Dataset.from_list(pair_records(tokenizer, 64, s["prompt_tokens"], s["completion_tokens"]))
    with tempfile.TemporaryDirectory() as tmp:
        args = _trl_args(
            DPOConfig,
            tmp,
            steps,
            s["lr"],
            per_device_train_batch_size=s["batch"],
            beta=s["beta"],
            max_length=1024,
            precompute_ref_log_probs=precompute,
        )
        out = _run_trl(
            lambda cb: DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=cb)
        )
    out["tokens_per_row"] = _token_lengths(out.pop("trainer").train_dataset)
    out["reference"] = (
        "precompute_ref_log_probs=True: reference log-probs computed before step 0 (not in step times)"
        if precompute
        else "default: a reference-model forward at every step"
    )
    return out


def trl_dpo(steps: int) -> dict:
    return _trl_dpo(steps, False)


def trl_dpo_precompute(steps: int) -> dict:
    return _trl_dpo(steps, True)


def _trl_online(steps: int, kind: str) -> dict:
    from datasets import Dataset

    if kind == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    s = SETTINGS["rl"]
    model, tokenizer = _policy()
    data = Dataset.from_dict({"prompt": prompt_texts(tokenizer, 16, s["prompt_tokens"])})

    def reward(completions, **kwargs):
        return length_reward(completions)

    with tempfile.TemporaryDirectory() as tmp:
        args = _trl_args(
            Config,
            tmp,
            steps,
            s["lr"],
            per_device_train_batch_size=s["prompts"] * s["generations"],
            num_generations=s["generations"],
            max_completion_length=s["new_tokens"],
            beta=s["beta"],
            steps_per_generation=1,
            num_iterations=1,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            log_completions=False,
            **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3} if TRL_VLLM else {}),
        )
        out = _run_trl(
            lambda cb: Trainer(
                model=model,
                reward_funcs=reward,
                args=args,
                train_dataset=data,
                processing_class=tokenizer,
                callbacks=cb,
            )
        )
    out.pop("trainer")
    out["completion_length"] = [
        m.get("completions/mean_length") for m in out["metrics"] if "completions/mean_length" in m
    ]
    return out


def trl_rloo(steps: int) -> dict:
    return _trl_online(steps, "rloo")


def trl_grpo(steps: int) -> dict:
    return _trl_online(steps, "grpo")


# ---- generation ----------------------------------------------------------------------------------
def generation(quick: bool) -> dict:
    """New tokens/s for producing one set of rollouts: plain ``model.generate`` at batch 8 (the
    target's baseline; a group of n samples of one prompt via ``num_return_sequences``), against
    rlhflab's engine as the trainers call it — the whole set in one call (shared prefills, its own
    decode step). A same-batch row (both at 8 rows) is reported beside it. Every pair is timed
    interleaved (generate, engine) on the same prompts. End-of-sequence is ignored by both
    (``min_new_tokens`` for generate, no EOS ids for the engine), so every row produces exactly
    the requested number of tokens and both produce the same number of tokens. Both run under the
    run's autocast precision (``mixed_precision()``)."""
    from rlhflab.hardware import autocast
    from rlhflab.sampling import generation as engine
    from rlhflab.sampling.rollout import pad_left

    s = SETTINGS["generation"]
    model, tokenizer = _policy()
    model.to(DEVICE).eval()
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        for t in CHAT_PROMPTS
    ]
    prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    results = []

    def hf(ids_list, n, T, rows_per_call):
        """generate over the set in calls of ``rows_per_call`` rows (whole groups of n samples)."""
        per_call, made = max(1, rows_per_call // n), 0
        for i in range(0, len(ids_list), per_call):
            ids, mask = pad_left(ids_list[i : i + per_call], tokenizer.pad_token_id)
            ids, mask = ids.to(DEVICE), mask.to(DEVICE)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=T,
                    min_new_tokens=T,
                    num_return_sequences=n,
                    pad_token_id=tokenizer.pad_token_id,
                )
            made += out.shape[0] * (out.shape[1] - ids.shape[1])
        return made

    def lean(ids_list, n, T, rows_per_call):
        made = 0
        per_call = max(1, rows_per_call // n)
        for i in range(0, len(ids_list), per_call):
            made += sum(
                len(r) for r in engine.generate(model, ids_list[i : i + per_call], n, T, [], tokenizer.pad_token_id)
            )
        return made

    for prompts_n, n, T, engine_rows in s["sets"]:
        if quick and T > 32:
            continue
        ids_list = [prompt_ids[i % len(prompt_ids)] for i in range(prompts_n)]
        times, counts = {"generate": [], "rlhflab": []}, {}
        for r in range(s["repeats"]):
            for name, fn, rows_per_call in (("generate", hf, s["baseline_batch"]), ("rlhflab", lean, engine_rows)):
                torch.manual_seed(r)
                sync()
                t0 = time.perf_counter()
                # Both under the run's precision (one autocast context per set, as a trainer's collect).
                with autocast(mixed_precision(), torch.device(DEVICE).type):
                    counts[name] = fn(ids_list, n, T, rows_per_call)
                sync()
                times[name].append(time.perf_counter() - t0)
        results.append(
            {
                "rows": prompts_n * n,
                "prompts": prompts_n,
                "samples_per_prompt": n,
                "new_tokens": T,
                "generate_batch": s["baseline_batch"],
                "engine_batch": min(engine_rows, prompts_n * n),
                "prompt_tokens": sorted({len(p) for p in ids_list}),
                "prompt_tokens_mean": sum(len(p) for p in ids_list) / len(ids_list),
                "seconds": times,
                "tokens": counts,
            }
        )
    return {"generation": results, "activation_dtypes": dict(ACTIVATION_DTYPES)}


RUNNERS = {
    "sft": {"rlhflab": rlhflab_sft, "trl": trl_sft},
    "reward": {"rlhflab": rlhflab_reward, "rlhflab_fp32": rlhflab_reward_fp32, "trl": trl_reward},
    "dpo": {"rlhflab": rlhflab_dpo, "trl": trl_dpo, "trl_precompute": trl_dpo_precompute},
    "rloo": {"rlhflab": rlhflab_rloo, "trl": trl_rloo},
    "grpo": {"rlhflab": rlhflab_grpo, "trl": trl_grpo},
}
