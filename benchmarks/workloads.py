"""The benchmark workloads: one settings table shared by both frameworks, and synthetic text whose
token counts are exact.

Every word of the synthetic text is a single SmolLM2 token with its leading space, so a prompt of
``k`` words is ``k`` tokens whether a trainer tokenizes prompt and completion separately or
together; both trainers then append one EOS token to each completion. Each runner reports the token
counts it actually fed its model, so any difference shows in the results.
"""

from __future__ import annotations

import random

# Identical settings for rlhflab and TRL (SmolLM2-135M-Instruct, fp32, no gradient checkpointing).
SETTINGS = {
    "sft": {"batch": 8, "prompt_tokens": 63, "completion_tokens": 64, "lr": 2e-5},  # 63 + 64 + EOS = 128
    "pairs": {"batch": 8, "prompt_tokens": 48, "completion_tokens": 48, "beta": 0.1, "lr": 1e-6},  # 48 + 48 + EOS = 97
    "reward": {"lr": 5e-5},  # same pairs
    "rl": {"prompts": 2, "generations": 4, "prompt_tokens": 32, "new_tokens": 32, "beta": 0.05, "lr": 1e-6},
    "ppo": {"prompts": 8, "prompt_tokens": 32, "new_tokens": 32, "beta": 0.05, "lr": 1e-6},
    # Rollout sets (prompts, samples per prompt, new tokens, rows per engine call); generate runs
    # them at batch 8, the target's baseline. The first set is the same-batch comparison.
    "generation": {
        "baseline_batch": 8,
        "repeats": 1,
        "sets": [(8, 1, 32, 8), (16, 4, 32, 64), (64, 1, 32, 64), (64, 1, 128, 64)],
    },
}

_WORDS = (
    "the of and to in is was for that with as on by he at from his it an were are which this be or "
    "has had not but first one their its new after who they have her she two been other when there all "
    "during into school time may years more most only over city some world would where later up such used "
    "many can state about national out known university united then made team under most government "
    "river game year north both these series work film called south because well people through world "
    "house music water light small great large good long little old right high different place part "
    "number way day man thing woman life child hand eye week case point company group problem fact "
    "garden window morning evening story letter question answer friend family mountain forest ocean "
    "train road bridge market village summer winter spring autumn color green blue red yellow white "
    "black happy quiet strong simple early late young clear short open close bring carry write read"
).split()


def single_token_words(tokenizer) -> list[str]:
    words = []
    for w in dict.fromkeys(_WORDS):
        if len(tokenizer(" " + w, add_special_tokens=False).input_ids) == 1:
            words.append(w)
    return words


def text(words: list[str], n: int, rng: random.Random) -> str:
    """``n`` tokens of text (each word is one token with its leading space)."""
    return "".join(" " + rng.choice(words) for _ in range(n))


def pair_records(tokenizer, n: int, prompt_tokens: int, completion_tokens: int, seed: int = 0) -> list[dict]:
    rng, words = random.Random(seed), single_token_words(tokenizer)
    return [
        {
            "prompt": text(words, prompt_tokens, rng),
            "chosen": text(words, completion_tokens, rng),
            "rejected": text(words, completion_tokens, rng),
        }
        for _ in range(n)
    ]


def demonstration_records(tokenizer, n: int, prompt_tokens: int, completion_tokens: int, seed: int = 0) -> list[dict]:
    rng, words = random.Random(seed), single_token_words(tokenizer)
    return [
        {"prompt": text(words, prompt_tokens, rng), "completion": text(words, completion_tokens, rng)} for _ in range(n)
    ]


def prompt_texts(tokenizer, n: int, prompt_tokens: int, seed: int = 0) -> list[str]:
    rng, words = random.Random(seed), single_token_words(tokenizer)
    return [text(words, prompt_tokens, rng) for _ in range(n)]


def length_reward(completions: list[str]) -> list[float]:
    """The reward both frameworks optimise in the RLOO/GRPO cases: cheap and deterministic, so the
    step times measure the trainers, not a reward model."""
    return [min(len(c.split()), 32) / 32.0 for c in completions]


CHAT_PROMPTS = [
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Explain gravity to a child.",
    "Give me three tips for sleeping well.",
    "Tell me a joke about cats.",
    "How do I boil an egg?",
    "Describe a sunset in one sentence.",
    "Why is the sky blue?",
    "Name three famous painters.",
    "What should I cook for dinner tonight?",
    "Summarise the plot of Hamlet.",
    "How do airplanes fly?",
    "Suggest a name for a pet turtle.",
    "What is photosynthesis?",
    "Write a haiku about winter.",
    "How can I learn to play the guitar?",
]
