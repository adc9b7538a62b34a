"""The command line, configuration files and model round trips, on tiny in-process models."""

import json

import pytest
import torch

from rlhflab.cli import main
from rlhflab.config import TrainConfig, parse_config
from rlhflab.errors import ConfigError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RLHFLAB_CACHE", str(tmp_path_factory.getbasetemp() / "model-cache"))


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "sample", "annotate", "sft", "reward", "ppo", "eval", "toy"):
        assert f"  {command}" in out


def test_unknown_command_exits_with_status_2(capsys):
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_yaml_config_is_overridden_by_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.5\nseed: 7\n")
    cfg = parse_config(TrainConfig, ["--config", str(path), "--seed", "9"], "t")
    assert cfg.learning_rate == 0.5 and cfg.seed == 9


def test_unknown_yaml_option_names_the_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rat: 0.5\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown option 'learning_rat'"):
        parse_config(TrainConfig, ["--config", str(path)], "t")


def test_malformed_feedback_file_gives_one_line_error_and_status_2(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" + '{"prompt": "p", "chosen": 3}\n'
    )
    code = main(["reward", "--model", "tiny-reward", "--data", str(data), "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and f"{data}:2: field" in err
    assert not (tmp_path / "run" / "reward_model").exists()


def test_missing_config_file_is_a_clear_error(capsys):
    assert main(["sample", "--config", "/nonexistent/c.yaml"]) == 2
    assert "/nonexistent/c.yaml: config file not found" in capsys.readouterr().err


def test_policy_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhflab.models import load_policy, save_model

    policy, tokenizer = load_policy("tiny-policy")
    save_model(policy, tokenizer, str(tmp_path / "p"))
    again, _ = load_policy(str(tmp_path / "p"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    ids = tokenizer("hello", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = policy(ids).logits
        assert torch.allclose(again(ids).logits, reference) and torch.allclose(plain(ids).logits, reference)


def test_reward_model_round_trips_through_save_pretrained(tmp_path):
    from rlhflab.models import load_reward_model, save_model
    from rlhflab.models.scoring import score

    model, tokenizer = load_reward_model("tiny-reward")
    save_model(model, tokenizer, str(tmp_path / "r"))
    again, tokenizer2 = load_reward_model(str(tmp_path / "r"))
    contexts, outputs = ["a prompt", "another"], ["an output", "x"]
    assert torch.allclose(score(model, tokenizer, contexts, outputs), score(again, tokenizer2, contexts, outputs))


def test_a_path_without_a_model_is_a_config_error(tmp_path):
    from rlhflab.models import load_policy

    with pytest.raises(ConfigError, match="not a model directory"):
        load_policy(str(tmp_path))


def test_sample_then_annotate_from_the_command_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ["a", "b", "c"]))
    samples, prefs = tmp_path / "samples.jsonl", tmp_path / "prefs.jsonl"
    assert (
        main(
            [
                "sample",
                "--policy",
                "tiny-policy",
                "--prompts",
                str(prompts),
                "--num_samples",
                "3",
                "--max_new_tokens",
                "6",
                "--use_chat_template",
                "false",
                "--output",
                str(samples),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["completions"]) == 3 for r in rows)
    assert (
        main(
            [
                "annotate",
                "--samples",
                str(samples),
                "--oracle",
                "keyword:e",
                "--output",
                str(prefs),
                "--pairs_per_prompt",
                "2",
            ]
        )
        == 0
    )
    labels = [json.loads(line) for line in prefs.read_text().splitlines()]
    assert labels and all(r["annotator"].startswith("annotator-") for r in labels)


def test_eval_reports_seen_and_unseen_contexts_with_kl_to_the_reference(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--policy",
                "tiny-policy",
                "--reference",
                "tiny-policy",
                "--oracle",
                "keyword:e",
                "--limit",
                "4",
                "--max_new_tokens",
                "6",
                "--use_chat_template",
                "false",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result) == {"seen", "unseen"}
    assert result["seen"]["num_prompts"] == 4 and abs(result["seen"]["kl"]) < 1e-5  # policy == reference
    assert "J (oracle)" in capsys.readouterr().out
