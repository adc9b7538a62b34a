"""Saved models travel: reward models are AutoModelForSequenceClassification directories whose config
says how their input is laid out and what each output is; every saved directory has a model card;
LoRA runs keep loadable adapters; a reward model trained elsewhere is scored the way it was trained."""

import json

import pytest
import torch

from rlhflab.cli import main
from rlhflab.models import load_policy, load_reward_model, resolve_model
from rlhflab.models.scoring import INPUT_FORMAT_KEY, chat_texts, encode_for_reward
from rlhflab.rewards.registry import load_reward_source


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def pairs(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a" * (3 + i % 3), "rejected": "xyz"[: 1 + i % 3]} for i in range(8)]
    return _write(tmp_path / "pairs.jsonl", rows)


@pytest.fixture
def demos(tmp_path):
    return _write(tmp_path / "demos.jsonl", [{"prompt": f"say {i}", "completion": f"{i} {i}"} for i in range(8)])


QUICK = ["--max_steps", "2", "--batch_size", "4", "--no_progress"]


def test_a_saved_reward_model_records_its_input_format_outputs_and_card(tmp_path, pairs, model_cache):
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    assert main(["reward", "--model", "tiny-reward", "--data", pairs, "--output_dir", str(run), *QUICK]) == 0
    saved = run / "reward_model"
    model = AutoModelForSequenceClassification.from_pretrained(saved)  # no rlhflab code needed
    fmt = getattr(model.config, INPUT_FORMAT_KEY)
    assert fmt["template"] == "plain" and fmt["layout"] == "sentence pair (context, output)"
    assert model.config.id2label == {0: "reward"}
    card = (saved / "README.md").read_text()
    assert "base_model: tiny-reward" in card and "`rlhflab reward`" in card and pairs in card
    assert "`batch_size=4`" in card and "rlhflab_input_format" in card


def test_attribute_heads_are_named_in_id2label(tmp_path, model_cache):
    rows = [
        {"prompt": f"q{i}", "completion": "ab" * (1 + i % 3), "score": 1 + i % 5, "scale": "likert:5", "attribute": a}
        for i in range(8)
        for a in ("helpful", "honest")
    ]
    data = _write(tmp_path / "ratings.jsonl", rows)
    run = tmp_path / "run"
    argv = ["reward", "--model", "tiny-reward", "--data", data, "--feedback", "rating", "--attributes", "all"]
    assert main([*argv, "--output_dir", str(run), *QUICK]) == 0
    config = json.loads((run / "reward_model" / "config.json").read_text())
    assert config["id2label"] == {"0": "attribute=helpful", "1": "attribute=honest"}


def test_a_plain_transformers_user_reproduces_rlhflab_scores_from_the_recorded_format(tmp_path, pairs, model_cache):
    """The other tool's side of the round trip: AutoModelForSequenceClassification plus the recorded layout."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "run"
    assert main(["reward", "--model", "tiny-reward", "--data", pairs, "--output_dir", str(run), *QUICK]) == 0
    saved = run / "reward_model"
    contexts, outputs = ["q1", "q2"], ["aaaa", "xy"]
    ours = load_reward_source(str(saved))(contexts, outputs)
    model = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert model.config.rlhflab_input_format["layout"] == "sentence pair (context, output)"
    with torch.no_grad():
        theirs = model(**tokenizer(contexts, outputs, padding=True, return_tensors="pt")).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_reward_lora_trains_adapters_not_every_weight(tmp_path, pairs, model_cache):
    run = tmp_path / "run"
    argv = ["reward", "--model", "tiny-reward", "--data", pairs, "--lora_r", "4", "--learning_rate", "1e-2"]
    assert main([*argv, "--output_dir", str(run), *QUICK]) == 0
    saved = run / "reward_model"
    assert (saved / "adapter" / "adapter_config.json").is_file() and (saved / "config.json").is_file()
    base, _ = load_reward_model("tiny-reward", seed=0)
    trained, _ = load_reward_model(str(saved))
    before, after = base.state_dict(), trained.state_dict()
    embeddings = [k for k in before if "embeddings" in k or "LayerNorm" in k]
    assert embeddings and all(torch.equal(before[k], after[k]) for k in embeddings)  # frozen under LoRA
    head = [k for k in before if k.startswith("classifier")]
    assert head and any(not torch.equal(before[k], after[k]) for k in head)  # the head trains in full


def test_lora_runs_keep_loadable_adapters_and_merge_on_request(tmp_path, demos, model_cache):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, merged = tmp_path / "lora", tmp_path / "merged"
    argv = ["sft", "--policy", "tiny-policy", "--data", demos, "--lora_r", "4", "--learning_rate", "1e-2", *QUICK]
    assert main([*argv, "--output_dir", str(run)]) == 0
    assert main([*argv, "--output_dir", str(merged), "--merge_lora"]) == 0
    adapters = run / "policy"
    assert (adapters / "adapter_config.json").is_file() and not (adapters / "config.json").exists()
    assert (merged / "policy" / "config.json").is_file() and not (merged / "policy" / "adapter_config.json").exists()
    assert "LoRA adapters" in (adapters / "README.md").read_text()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model("tiny-policy")), adapters)
    ours, tokenizer = load_policy(str(adapters))  # every rlhflab command reads the adapters merged
    ids = torch.tensor([tokenizer("say 1", add_special_tokens=False).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, peft_model.eval()(ids).logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            ours(ids).logits, load_policy(str(merged / "policy"))[0](ids).logits, rtol=1e-4, atol=1e-4
        )


def test_an_rl_run_card_reports_j_and_j_hat(tmp_path, model_cache):
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": f"q{i}"} for i in range(4)])
    run = tmp_path / "run"
    argv = ["ppo", "--policy", "tiny-policy", "--prompts", prompts, "--reward", "brevity", "--oracle", "length:3"]
    argv += ["--num_iterations", "1", "--prompts_per_iteration", "4", "--max_new_tokens", "4", "--no_progress"]
    assert main([*argv, "--output_dir", str(run)]) == 0
    card = (run / "policy" / "README.md").read_text()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"J (oracle reward R*) = {last['oracle_reward']:.4g}" in card
    assert f"Ĵ (optimised reward R_phi) = {last['reward']:.4g}" in card


@pytest.fixture
def foreign_reward_model(tmp_path, model_cache):
    """A reward model as TRL saves one: AutoModelForSequenceClassification, num_labels=1, a tokenizer
    with a chat template, and nothing recording how its input was laid out."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("tiny-policy"), num_labels=1)
    _, tokenizer = load_policy("tiny-policy")
    model.config.pad_token_id = tokenizer.pad_token_id
    path = tmp_path / "trl-reward"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _scores(model, encoded):
    with torch.no_grad():
        return model(**encoded).logits.squeeze(-1).float()


def test_a_reward_model_recording_nothing_is_scored_chat_templated_and_says_so(foreign_reward_model, capsys):
    contexts, outputs = ["q1", "hello"], ["aaaa", "xy"]
    source = load_reward_source(str(foreign_reward_model))
    assert "no input format recorded; scoring it chat" in capsys.readouterr().err
    model, tokenizer = load_reward_model(str(foreign_reward_model))
    texts = chat_texts(tokenizer, contexts, outputs)
    assert texts[0].count("q1") == 1 and "aaaa" in texts[0]
    expected = _scores(model.eval(), tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False))
    torch.testing.assert_close(source(contexts, outputs), expected, rtol=1e-5, atol=1e-5)
    plain = load_reward_source(str(foreign_reward_model), template="plain")
    torch.testing.assert_close(
        plain(contexts, outputs), _scores(model, encode_for_reward(tokenizer, contexts, outputs)), rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(plain(contexts, outputs), expected)


def test_reward_template_reaches_the_members_of_a_composite(foreign_reward_model):
    contexts, outputs = ["q1", "hello"], ["aaaa", "xy"]
    alone = load_reward_source(str(foreign_reward_model), template="plain")(contexts, outputs)
    spec = f"1.0*{foreign_reward_model} + 0.0*brevity"
    for template, same in (("plain", True), ("chat", False)):
        composite = load_reward_source(spec, template=template)
        composite(contexts, outputs)
        member = composite.components_last[str(foreign_reward_model)]  # the member's raw scores
        assert torch.allclose(member, alone, rtol=1e-5, atol=1e-5) == same


def test_reward_template_is_an_option_of_the_commands_that_score(tmp_path, foreign_reward_model, model_cache):
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": f"q{i}"} for i in range(2)])
    out = tmp_path / "bon.jsonl"
    argv = ["bon", "--policy", "tiny-policy", "--prompts", prompts, "--reward", str(foreign_reward_model)]
    argv += ["--reward_template", "plain", "--n", "2", "--max_new_tokens", "3", "--output", str(out)]
    assert main(argv) == 0 and out.is_file()
    with pytest.raises(SystemExit) as caught:  # argparse refuses it, naming the choices
        main([*argv[:-2], "--reward_template", "bogus"])
    assert caught.value.code == 2


def test_a_reward_model_trained_by_trl_is_scored_as_trl_trained_it(tmp_path, model_cache):
    trl = pytest.importorskip("trl", reason="TRL comes with the bench extra only (pip install 'rlhflab[bench]')")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    _, tokenizer = load_policy("tiny-policy")
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("tiny-policy"), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = [
        {
            "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "aaaa"}],
            "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "xyz"}],
        }
        for i in range(8)
    ]
    args = trl.RewardConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        bf16=False,
        use_cpu=True,
    )
    trainer = trl.RewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "trl-reward"))
    tokenizer.save_pretrained(tmp_path / "trl-reward")
    source = load_reward_source(str(tmp_path / "trl-reward"))  # auto: chat, as TRL trained it on messages
    saved, saved_tokenizer = load_reward_model(str(tmp_path / "trl-reward"))
    texts = chat_texts(saved_tokenizer, ["q1"], ["aaaa"])
    expected = _scores(saved.eval(), saved_tokenizer(texts, return_tensors="pt", add_special_tokens=False))
    torch.testing.assert_close(source(["q1"], ["aaaa"]), expected, rtol=1e-5, atol=1e-5)


def test_a_reward_model_trained_by_trl_on_standard_text_is_scored_with_template_text(tmp_path, model_cache):
    trl = pytest.importorskip("trl", reason="TRL comes with the bench extra only (pip install 'rlhflab[bench]')")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    _, tokenizer = load_policy("tiny-policy")
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("tiny-policy"), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = [{"prompt": f"q{i} ", "chosen": "aaaa", "rejected": "xyz"} for i in range(8)]
    args = trl.RewardConfig(
        output_dir=str(tmp_path / "trl"), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True
    )
    trainer = trl.RewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "trl-reward"))
    source = load_reward_source(str(tmp_path / "trl-reward"), template="text")
    saved, saved_tokenizer = load_reward_model(str(tmp_path / "trl-reward"))
    # TRL's own input for this row: prompt + chosen + EOS, tokenised with the tokenizer's special tokens.
    ids = saved_tokenizer("q1 aaaa" + saved_tokenizer.eos_token, return_tensors="pt")
    torch.testing.assert_close(source(["q1 "], ["aaaa"]), _scores(saved.eval(), ids), rtol=1e-5, atol=1e-5)
