"""rlhflab: the RLHF workflow of "RLHF Deciphered" (Chaudhari et al.), measured against an oracle.

Equation numbers in docstrings refer to that paper (``shared/seeds/000_ea104b0708417c68.txt``).

The Python API: a config per method (validated when built, as on the command line) and a ``run_*``
function per training command, returning the run directory; :func:`load_run` gives its trained
model, tokenizer and metrics. Data may be a path, a ``datasets.Dataset`` or a list of dicts::

    import rlhflab
    cfg = rlhflab.PreferenceConfig(policy="smollm2-135m-instruct", data=dataset, kl_coef=0.1, output_dir="runs/dpo")
    run = rlhflab.load_run(rlhflab.run_dpo(cfg))
    run.model, run.metrics[-1]

The names below load on first use, so ``import rlhflab`` stays as light as the error classes.
"""

import importlib

__version__ = "0.1.0"

from rlhflab.errors import ConfigError, DataError, RlhflabError, TrainingError  # noqa: E402

# Public name -> (module, attribute there).
_API = {
    "SFTConfig": ("rlhflab.train.offline", "SFTConfig"),
    "RewardConfig": ("rlhflab.train.reward_model", "RewardConfig"),
    "PreferenceConfig": ("rlhflab.train.preference", "PreferenceConfig"),
    "KTOConfig": ("rlhflab.train.preference", "KTOConfig"),
    "RankingConfig": ("rlhflab.train.preference", "RankingConfig"),
    "RLConfig": ("rlhflab.train.policy_optimization", "RLConfig"),
    "RAFTConfig": ("rlhflab.train.rejection", "RAFTConfig"),
    "RSOConfig": ("rlhflab.train.rejection", "RSOConfig"),
    "PositiveSFTConfig": ("rlhflab.train.rejection", "PositiveSFTConfig"),
    "run_sft": ("rlhflab.commands.train", "run_sft"),
    "run_reward": ("rlhflab.commands.train", "run_reward"),
    "run_dpo": ("rlhflab.commands.train", "run_preference_optimization"),
    "run_kto": ("rlhflab.commands.train", "run_kto"),
    "run_ranking": ("rlhflab.commands.train", "run_ranking_optimization"),
    "run_rl": ("rlhflab.commands.train", "run_policy_optimization"),
    "run_raft": ("rlhflab.commands.train", "run_raft"),
    "run_rso": ("rlhflab.commands.train", "run_rso"),
    "run_positive_sft": ("rlhflab.commands.train", "run_positive_sft"),
    "Run": ("rlhflab.commands.train", "Run"),
    "load_run": ("rlhflab.commands.train", "load_run"),
    "read_records": ("rlhflab.data", "read_records"),
    "load_policy": ("rlhflab.models", "load_policy"),
    "load_reward_model": ("rlhflab.models", "load_reward_model"),
    "load_reward_source": ("rlhflab.rewards.registry", "load_reward_source"),
}

__all__ = ["ConfigError", "DataError", "RlhflabError", "TrainingError", "__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'rlhflab' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
