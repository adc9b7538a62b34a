"""The Python API: every public name resolves, configs validate when built (as on the command line),
data may be a datasets.Dataset or a list of dicts, and a finished run loads as model + metrics."""

import pytest

import rlhflab
from rlhflab.errors import ConfigError


def test_every_public_name_resolves():
    for name in rlhflab.__all__:
        assert getattr(rlhflab, name) is not None, name


def test_a_config_built_in_python_is_validated_as_on_the_command_line():
    with pytest.raises(ConfigError, match="kl_coef"):
        rlhflab.PreferenceConfig(kl_coef=0.0)
    with pytest.raises(ConfigError, match="report_to"):
        rlhflab.SFTConfig(report_to="comet")
    assert rlhflab.SFTConfig(report_to=["none"]).report_to == ["none"]  # a list, as transformers takes it


def test_a_datasets_dataset_trains_and_the_run_loads_as_model_and_metrics(tmp_path, model_cache):
    from datasets import Dataset

    data = Dataset.from_list([{"prompt": f"say {i}", "completion": f"{i} {i}"} for i in range(8)])
    cfg = rlhflab.SFTConfig(
        policy="tiny-policy", data=data, max_steps=2, batch_size=4, output_dir=str(tmp_path / "sft"), progress=False
    )
    run = rlhflab.load_run(rlhflab.run_sft(cfg))
    assert run.dir == tmp_path / "sft" and len(run.metrics) == 2 and "loss" in run.metrics[-1]
    assert run.config["data"] == "<Dataset of 8 rows>" and hasattr(run.model, "generate")


def test_a_list_of_dicts_in_trl_columns_is_data_too(tmp_path, model_cache):
    rows = [{"prompt": f"q{i}", "completion": "ab", "label": i % 2 == 0} for i in range(4)]
    cfg = rlhflab.KTOConfig(
        policy="tiny-policy", max_steps=1, batch_size=2, output_dir=str(tmp_path / "kto"), progress=False
    )
    run = rlhflab.load_run(rlhflab.run_kto(cfg, records=rows))
    assert "kl" in run.metrics[-1]
