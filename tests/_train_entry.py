"""Subprocess entry for the trainer tests: ``python tests/_train_entry.py KIND RUN_DIR [field=value ...]``.

KIND is ``ppo`` (any estimator via ``algorithm=``), ``sft`` or ``reward``, or several joined by
commas, run one after another into RUN_DIR/KIND (one launch, several runs). The data, the tiny
model and the known reward are fixed here, so every process and every launch builds the same run.
``field=value`` (or ``KIND.field=value``) sets a config field, typed by its default;
``reward_rule=checksum`` swaps the known reward; ``slow=SECONDS`` sleeps in each reward call so
that a test has time to kill the run between checkpoints. Run directly or under ``accelerate launch``.
"""

import dataclasses
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.set_num_threads(1)


def count_a_reward(slow: float = 0.0, rule: str = "count_a"):
    """The fraction of 'a's in the output, or ("checksum") a deterministic score that varies from
    output to output even under greedy decoding, where no 'a' may ever appear."""
    from rlhflab.rewards.registry import RewardSource

    def fn(contexts, outputs):
        if slow:
            time.sleep(slow)
        if rule == "checksum":
            return [(sum(map(ord, o)) % 11) / 10 for o in outputs]
        return [o.count("a") / max(1, len(o)) for o in outputs]

    return RewardSource(rule, fn)


def demonstrations():
    from rlhflab.data.records import Demonstration

    words = ["cat", "dog", "sun", "sky", "red", "blue", "hat", "cup"]
    return [Demonstration(prompt=f"say {w}", completion=f"{w} {w}") for w in words]


def a_preferences(n: int, seed: int = 0):
    """Pairs labelled by a known rule: the completion with more 'a's is chosen."""
    import random

    from rlhflab.data.records import Preference

    rng = random.Random(seed)
    records = []
    for _ in range(n):
        length = rng.randint(4, 10)
        many, few = rng.randint(3, length), rng.randint(0, 1)
        chosen = "".join(rng.sample("a" * many + "xyz" * length, length))
        rejected = "".join(rng.sample("a" * few + "xyz" * length, length))
        if chosen.count("a") <= rejected.count("a"):
            chosen = "a" * length
        records.append(Preference(prompt="pick", chosen=chosen, rejected=rejected))
    return records


def _apply(config, overrides: dict):
    fields = {f.name: f for f in dataclasses.fields(config)}
    for key, text in overrides.items():
        default = getattr(config, key) if key in fields else None
        if isinstance(default, bool):
            value = text.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = int(text)
        elif isinstance(default, float):
            value = float(text)
        else:
            value = None if text == "None" else text
        setattr(config, key, value)
    return config


def main(argv):
    kinds, run_dir, *rest = argv
    overrides = dict(a.split("=", 1) for a in rest)
    if "," not in kinds:
        return run(kinds, run_dir, overrides)
    for kind in kinds.split(","):
        run(kind, os.path.join(run_dir, kind), dict(overrides))


def run(kind, run_dir, overrides):
    # "ppo.top_k=1" applies to the ppo run only.
    overrides = {k.split(".", 1)[-1]: v for k, v in overrides.items() if "." not in k or k.startswith(kind + ".")}
    slow = float(overrides.pop("slow", 0.0))
    rule = overrides.pop("reward_rule", "count_a")
    from rlhflab.models import load_policy, load_reward_model
    from rlhflab.train.loop import train

    if kind == "ppo":
        from rlhflab.data.records import Prompt
        from rlhflab.train.policy_optimization import PolicyOptimization, RLConfig

        config = _apply(
            RLConfig(
                algorithm="ppo",
                policy="tiny-policy",
                output_dir=run_dir,
                num_iterations=8,
                prompts_per_iteration=8,
                max_new_tokens=8,
                learning_rate=3e-3,
                kl_coef=0.1,
                progress=False,
                use_chat_template=False,
                seed=3,
            ),
            overrides,
        )
        config.validate()
        model, tokenizer = load_policy("tiny-policy")
        prompts = [Prompt(prompt=f"q{i}") for i in range(16)]
        algorithm = PolicyOptimization(config, model, tokenizer, prompts, count_a_reward(slow, rule))
    elif kind == "sft":
        from rlhflab.train.offline import SFTAlgorithm, SFTConfig, tokenize_demonstrations

        config = _apply(
            SFTConfig(
                output_dir=run_dir,
                batch_size=4,
                max_steps=4,
                learning_rate=3e-3,
                progress=False,
                use_chat_template=False,
            ),
            overrides,
        )
        config.validate()
        model, tokenizer = load_policy("tiny-policy")
        demos = demonstrations()
        examples = tokenize_demonstrations(
            [d.prompt for d in demos], [d.completion for d in demos], tokenizer, config, use_chat_template=False
        )
        algorithm = SFTAlgorithm(config, model, tokenizer, examples)
    elif kind == "reward":
        from rlhflab.train.reward_model import RewardAlgorithm, RewardConfig

        config = _apply(
            RewardConfig(output_dir=run_dir, batch_size=8, max_steps=4, learning_rate=1e-3, progress=False), overrides
        )
        config.validate()
        torch.manual_seed(config.seed)  # the fresh scalar head is drawn from the global RNG
        model, tokenizer = load_reward_model("tiny-reward")
        algorithm = RewardAlgorithm(config, model, tokenizer, a_preferences(32))
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    train(config, algorithm)


if __name__ == "__main__":
    main(sys.argv[1:])
