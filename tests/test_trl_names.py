"""TRL's option names (TrainingArguments, TRL's configs, ModelConfig) read with TRL's meaning, or refused
naming rlhflab's equivalent; every key of a file not taken reported at once."""

import pytest

from rlhflab.config import parse_config
from rlhflab.errors import ConfigError
from rlhflab.train.offline import OfflineSchedule, SFTConfig
from rlhflab.train.preference import PreferenceConfig
from rlhflab.train.reward_model import RewardConfig


def yaml_file(tmp_path, text: str):
    path = tmp_path / "trl.yaml"
    path.write_text(text)
    return str(path)


def test_trl_names_in_a_yaml_file_take_trl_meaning(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    path = yaml_file(
        tmp_path,
        "model_name_or_path: tiny-policy\ndataset_name: data/prefs.jsonl\nper_device_train_batch_size: 4\n"
        "num_train_epochs: 3\nlr_scheduler_type: cosine\nbf16: true\ngradient_checkpointing: true\n"
        "report_to: [tensorboard]\nbeta: 0.2\nlora_target_modules: [q_proj, v_proj]\n",
    )
    monkeypatch.setattr("rlhflab.config.tracker_names", lambda report_to: [])  # tensorboard need not be installed
    cfg = parse_config(PreferenceConfig, ["--config", path], "dpo")
    assert (cfg.policy, cfg.data, cfg.batch_size, cfg.num_epochs) == ("tiny-policy", "data/prefs.jsonl", 4, 3)
    assert (cfg.lr_scheduler, cfg.mixed_precision, cfg.gradient_checkpointing) == ("cosine", "bf16", True)
    assert (cfg.report_to, cfg.kl_coef, cfg.lora_target_modules) == ("tensorboard", 0.2, "q_proj,v_proj")


def test_trl_flags_on_the_command_line_take_trl_meaning(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # per-device batch x 2 processes = rlhflab's global batch
    monkeypatch.setattr("rlhflab.config.tracker_names", lambda report_to: [])
    argv = ["--model_name_or_path", "tiny-reward", "--per_device_train_batch_size", "3", "--bf16"]
    argv += ["--report_to", "tensorboard", "wandb", "--num_train_epochs=2"]
    cfg = parse_config(RewardConfig, argv, "reward")
    assert (cfg.model, cfg.batch_size, cfg.mixed_precision) == ("tiny-reward", 6, "bf16")
    assert (cfg.report_to, cfg.num_epochs) == ("tensorboard,wandb", 2.0)


def test_every_key_a_file_cannot_take_is_reported_in_one_error(tmp_path):
    path = yaml_file(tmp_path, "learning_rat: 0.1\nwarmup_ratio: 0.1\nmax_prompt_length: 128\nfoo: 1\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(SFTConfig, ["--config", path], "sft")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: unknown options 'foo', 'learning_rat'")
    assert "'warmup_ratio' (TRL's; rlhflab takes --warmup_steps" in message
    assert "'max_prompt_length' (TRL's; rlhflab takes --max_length" in message


def test_a_trl_flag_for_an_option_the_command_lacks_names_the_rlhflab_option():
    with pytest.raises(ConfigError, match=r"'beta' \(TRL's name for --kl_coef, which this command does not take\)"):
        parse_config(SFTConfig, ["--beta", "0.1"], "sft")
    with pytest.raises(ConfigError, match=r"'warmup_ratio' \(TRL's; rlhflab takes --warmup_steps"):
        parse_config(SFTConfig, ["--warmup_ratio=0.1"], "sft")


def test_bf16_false_beside_fp16_true_is_fp16_and_both_true_is_refused(tmp_path):
    cfg = parse_config(SFTConfig, ["--config", yaml_file(tmp_path, "bf16: false\nfp16: true\n")], "sft")
    assert cfg.mixed_precision == "fp16"
    with pytest.raises(ConfigError, match="another key sets"):
        parse_config(SFTConfig, ["--config", yaml_file(tmp_path, "bf16: true\nfp16: true\n")], "sft")


def test_gradient_accumulation_multiplies_the_batch_as_in_trl():
    config = SFTConfig(batch_size=2, gradient_accumulation_steps=3)
    schedule = OfflineSchedule(12, config)
    assert len(schedule.indices(0)) == 6 and schedule.steps_per_epoch == 2
    with pytest.raises(ConfigError, match=r"batch_size 2 x gradient_accumulation_steps 3 = 6 .* \(4 examples\)"):
        OfflineSchedule(4, config)


def test_trl_names_count_as_the_options_they_set(tmp_path):
    from rlhflab.config import explicit_options

    path = yaml_file(tmp_path, "model_name_or_path: tiny-reward\nnum_train_epochs: 2\n")
    given = explicit_options(RewardConfig, ["--config", path, "--per_device_train_batch_size", "2"])
    assert {"model", "num_epochs", "batch_size"} <= given
