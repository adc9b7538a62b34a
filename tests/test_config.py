"""Option groups, old flag spellings and named presets (config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from rlhflab.commands.compare import CompareConfig
from rlhflab.commands.demo import DemoConfig
from rlhflab.commands.iterate import LoopConfig
from rlhflab.commands.presets import PRESETS
from rlhflab.config import parse_config
from rlhflab.errors import ConfigError
from rlhflab.train.policy_optimization import DEFAULT_EPOCHS, RLConfig
from rlhflab.train.preference import PreferenceConfig
from rlhflab.train.rejection import RAFTConfig


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_policy_and_kl_coef_are_spelled_the_same_in_every_command_and_old_flags_still_work():
    cfg = parse_config(PreferenceConfig, ["--model", "tiny-policy", "--beta", "0.3"], "rlhflab dpo")
    assert (cfg.policy, cfg.kl_coef) == ("tiny-policy", 0.3)
    cfg = parse_config(PreferenceConfig, ["--policy", "tiny-policy", "--kl_coef", "0.2"], "rlhflab dpo")
    assert (cfg.policy, cfg.kl_coef) == ("tiny-policy", 0.2)


def test_old_option_names_work_in_yaml_files(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("model: tiny-policy\nbeta: 0.4\n")
    cfg = parse_config(PreferenceConfig, ["--config", str(path)], "rlhflab dpo")
    assert (cfg.policy, cfg.kl_coef) == ("tiny-policy", 0.4)


def test_commands_offer_no_option_they_ignore():
    assert not {"batch_size", "num_epochs", "max_steps"} & names(RLConfig)  # online: prompts_per_iteration
    assert "resume" not in names(RAFTConfig)  # every round starts its own SFT run


COMMANDS = {"demo": DemoConfig, "compare": CompareConfig, "loop": LoopConfig}


@pytest.mark.parametrize("cls, presets", [(DemoConfig, PRESETS["demo"]), (CompareConfig, PRESETS["compare"])])
def test_presets_fill_only_unset_options_and_help_shows_their_values(cls, presets, capsys):
    assert cls(preset="full").resolved().policy == presets["full"]["policy"]
    quick = cls(quick=True, max_new_tokens=5).resolved()
    assert (quick.preset, quick.policy, quick.max_new_tokens) == ("quick", presets["quick"]["policy"], 5)
    with pytest.raises(SystemExit):
        parse_config(cls, ["--help"], "rlhflab x")
    out = capsys.readouterr().out
    assert f"full={presets['full']['max_new_tokens']}" in out and f"quick={presets['quick']['max_new_tokens']}" in out


def test_one_preset_table_in_one_vocabulary_and_the_old_ppo_spellings_still_parse():
    for command, cls in COMMANDS.items():
        for preset, values in PRESETS[command].items():
            assert set(values) <= names(cls), (command, preset, set(values) - names(cls))
        assert not {n for n in names(cls) if n.startswith("ppo_")}, command
    cfg = parse_config(DemoConfig, ["--ppo_iterations", "3", "--ppo_learning_rate", "0.1"], "rlhflab demo")
    assert (cfg.policy_iterations, cfg.policy_learning_rate) == (3, 0.1)
    assert parse_config(LoopConfig, ["--ppo_epochs", "5"], "rlhflab loop").policy_epochs == 5
    # The loop's full run is the demo's, split over the rounds.
    assert LoopConfig().resolved().policy_iterations == DemoConfig().resolved().policy_iterations


def test_rollout_epochs_default_to_the_estimator_and_zero_is_refused():
    for algorithm, epochs in DEFAULT_EPOCHS.items():
        assert RLConfig(algorithm=algorithm, samples_per_prompt=2).num_epochs_per_rollout == epochs
    assert RLConfig(algorithm="rloo", samples_per_prompt=2, epochs=3).num_epochs_per_rollout == 3
    with pytest.raises(ConfigError, match="epochs must be positive"):
        RLConfig(epochs=0).validate()
