"""The optimised paths agree with the plain ones: the lean sampling engine with ``generate`` and a
full forward pass, the shared-prompt reward forward with one pass per pair. Tiny models, no timing."""

from __future__ import annotations

import pytest
import torch

from rlhflab.models.tiny import build_char_tokenizer, build_tiny_policy
from rlhflab.sampling import generation
from rlhflab.sampling.rollout import completion_logprobs, join_prompt_completion, pad_left, sample


@pytest.fixture(scope="module")
def policy():
    tokenizer = build_char_tokenizer()
    model, _ = build_tiny_policy(seed=1, tokenizer=tokenizer)
    with torch.no_grad():  # sharper random logits, so samples and argmaxes are not degenerate
        model.lm_head.weight.mul_(8.0)
    return model.eval(), tokenizer


def _prompts(tokenizer):
    texts = ["hello world", "a", "the quick brown fox", "xyz"]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def test_next_token_probs_match_generate_warpers():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 10, 0.5)]:
        warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        expected = warpers(None, logits.clone()).softmax(-1)
        got = generation.next_token_probs(logits, temperature, top_k, top_p)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("samples", [3, 10])  # 12 rows: x @ W^T products; 40 rows: W @ x^T
@pytest.mark.parametrize("stepper", ["lean", "model trunk"])
def test_engine_logprobs_equal_a_full_forward_pass(policy, monkeypatch, samples, stepper):
    """Shared prefill, the decode cache and left padding give the same per-token log-probs as
    scoring the finished rollouts with one full forward pass (what the trainers do), whether the
    steps run through the lean Llama stepper or through the model's own trunk."""
    model, tokenizer = policy
    assert generation.LlamaStepper.applies(model.model)
    if stepper == "model trunk":
        monkeypatch.setattr(generation.LlamaStepper, "applies", staticmethod(lambda trunk: False))
    prompts = _prompts(tokenizer)
    torch.manual_seed(0)
    rows, logprobs = generation.generate(
        model,
        prompts,
        samples,
        12,
        [tokenizer.eos_token_id],
        tokenizer.pad_token_id,
        temperature=0.8,
        return_logprobs=True,
    )
    assert len(rows) == samples * len(prompts)
    batch = join_prompt_completion([p for p in prompts for _ in range(samples)], rows, tokenizer.pad_token_id)
    with torch.no_grad():
        full = completion_logprobs(model, batch, temperature=0.8)
    for i, row in enumerate(rows):
        torch.testing.assert_close(full[i, : len(row)], torch.tensor(logprobs[i]), atol=2e-4, rtol=1e-4)


def test_sampled_logprobs_match_a_forward_pass_of_the_padded_rollout(policy):
    """``sample(return_logprobs=True)`` lines the engine's numbers up with the rollout's padded
    completion positions, so evaluation can use them in place of a forward pass."""
    model, tokenizer = policy
    prompts = _prompts(tokenizer)
    torch.manual_seed(0)
    rollout = sample(model, tokenizer, prompts, 3, 10, temperature=0.7, return_logprobs=True)
    with torch.no_grad():
        full = completion_logprobs(model, rollout.batch, temperature=0.7)
    mask = rollout.batch.completion_mask.bool()
    engine = rollout.extras["logprobs"]
    torch.testing.assert_close(engine[mask], full[mask], atol=2e-4, rtol=1e-4)
    assert (engine[~mask] == 0).all()


def test_lean_stepper_leaves_lora_models_to_their_own_forward(policy):
    """Adapter-wrapped projections are not plain nn.Linear: the lean step would skip the adapter."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, _ = policy
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert generation.supports(lora)
    assert not generation.LlamaStepper.applies(lora.get_base_model().model)


def test_engine_greedy_matches_generate(policy):
    model, tokenizer = policy
    prompts = _prompts(tokenizer)
    eos = [tokenizer.eos_token_id]
    rows = generation.generate(model, prompts, 2, 10, eos, tokenizer.pad_token_id, temperature=0)
    ids, mask = pad_left(prompts, tokenizer.pad_token_id)
    out = model.generate(
        input_ids=ids.repeat_interleave(2, 0),
        attention_mask=mask.repeat_interleave(2, 0),
        do_sample=False,
        max_new_tokens=10,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    for row, ref in zip(rows, out[:, ids.shape[1] :].tolist()):
        assert row == ref[: len(row)]
        assert len(row) == 10 or row[-1] == tokenizer.eos_token_id


def test_inverse_cdf_sampler_draws_from_the_given_distribution():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2], [0.1, 0.0, 0.0, 0.0, 0.9]])
    torch.manual_seed(0)
    draws = torch.stack([generation.sample_from_probs(probs) for _ in range(20000)])
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=5).float() / len(draws)
        assert set(freq.nonzero().flatten().tolist()) == set(probs[row].nonzero().flatten().tolist())
        assert torch.allclose(freq, probs[row], atol=0.015)


def test_engine_first_token_frequencies_match_the_policy(policy):
    """Ancestral sampling: the first sampled token of many samples of one prompt follows
    pi(. | prompt) (with top-k applied as generate applies it)."""
    model, tokenizer = policy
    prompt = _prompts(tokenizer)[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    probs = generation.next_token_probs(logits[None], 1.0, 4, 1.0)[0]
    torch.manual_seed(0)
    rows = generation.generate(model, [prompt], 4000, 1, [], tokenizer.pad_token_id, top_k=4)
    freq = torch.bincount(torch.tensor([r[0] for r in rows]), minlength=probs.numel()).float() / 4000
    assert set(freq.nonzero().flatten().tolist()) <= set(probs.nonzero().flatten().tolist())
    assert torch.allclose(freq, probs, atol=0.03)


def test_sample_returns_the_same_rollout_layout_with_the_engine(policy, monkeypatch):
    model, tokenizer = policy
    prompts = _prompts(tokenizer)
    torch.manual_seed(0)
    lean = sample(model, tokenizer, prompts, num_samples=2, max_new_tokens=6, batch_size=3)
    monkeypatch.setattr(generation, "supports", lambda m: False)
    torch.manual_seed(0)
    plain = sample(model, tokenizer, prompts, num_samples=2, max_new_tokens=6, batch_size=3)
    for r in (lean, plain):
        assert r.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert r.batch.input_ids.shape[0] == 8 and r.batch.completion_mask.shape[1] <= 6
        assert len(r.completion_texts) == 8 and r.truncated.shape == (8,)
    # the engine's completions are scored in the same layout: prompt rows identical
    P = lean.batch.input_ids.shape[1] - lean.batch.num_completion_tokens
    P2 = plain.batch.input_ids.shape[1] - plain.batch.num_completion_tokens
    assert torch.equal(lean.batch.input_ids[:, :P], plain.batch.input_ids[:, :P2])


# ---- reward model: one pass over each prompt for all its completions ------------------------------
def _tiny_decoder_reward_model(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config)


def _char_tokenizer_without_pair_tokens():
    tokenizer = build_char_tokenizer()
    tokenizer.sep_token, tokenizer.cls_token = None, None  # a decoder's tokenizer: no sentence pairs
    tokenizer.padding_side = "right"
    return tokenizer


@pytest.mark.parametrize("group_size", [2, 3])
def test_shared_prompt_rewards_and_gradients_equal_the_plain_forward(group_size):
    from rlhflab.models.scoring import encode_for_reward
    from rlhflab.train.reward_model import shared_prompt_encoding, shared_prompt_rewards, supports_shared_prompt

    tokenizer = _char_tokenizer_without_pair_tokens()
    model = _tiny_decoder_reward_model(tokenizer)
    assert supports_shared_prompt(model, tokenizer)
    contexts = ["what is up", "hi", "tell me a story please"]
    outputs = ["not much", "the sky", "ok", "sure thing", "once upon", "no", "x", "yes yes", "a b c"][: 3 * group_size]
    rows = [c for c in contexts for _ in range(group_size)]
    encoded = shared_prompt_encoding(tokenizer, contexts, outputs, group_size, 512)
    assert encoded is not None
    shared = shared_prompt_rewards(model, encoded, "cpu")
    shared.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain_in = encode_for_reward(tokenizer, rows, outputs, 512)
    plain = model(**plain_in).logits.squeeze(-1).float()
    plain.sum().backward()
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)


def test_reward_loss_is_unchanged_by_prompt_sharing():
    from types import SimpleNamespace

    from rlhflab.data.records import Preference
    from rlhflab.train.reward_model import RewardAlgorithm, RewardConfig

    tokenizer = _char_tokenizer_without_pair_tokens()
    model = _tiny_decoder_reward_model(tokenizer)
    records = [Preference(prompt=f"prompt {i}", chosen=f"good answer {i}", rejected=f"bad {i}") for i in range(4)]
    algo = RewardAlgorithm(RewardConfig(batch_size=4), model, tokenizer, records)
    algo.accelerator = SimpleNamespace(device="cpu")
    assert algo.share_prompts
    shared_loss, shared_stats = algo.loss((list(range(len(records))), 1.0))
    algo.share_prompts = False
    plain_loss, plain_stats = algo.loss((list(range(len(records))), 1.0))
    torch.testing.assert_close(shared_loss, plain_loss, atol=1e-6, rtol=1e-5)
    assert shared_stats["accuracy"] == plain_stats["accuracy"]


def test_encoder_reward_models_do_not_share_prompts():
    from transformers import BertConfig, BertForSequenceClassification

    from rlhflab.train.reward_model import supports_shared_prompt

    tokenizer = build_char_tokenizer()  # has [CLS]/[SEP]: sentence pairs, bidirectional attention
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
        )
    )
    assert not supports_shared_prompt(model, tokenizer)


# ---- one policy (and critic) forward per iteration ---------------------------------------------------
@pytest.mark.parametrize(
    "algorithm, critic",
    [("rloo", "shared"), ("grpo", "shared"), ("ppo", "shared"), ("ppo", "separate"), ("a2c", "separate")],
)
def test_single_pass_iteration_equals_the_two_pass_one(algorithm, critic, tmp_path, monkeypatch):
    """With one update on the whole rollout, the old log-probs (and the critic's old values) are
    taken from the update's own forward instead of a separate no-grad pass: same losses, KL and
    trained weights."""
    from rlhflab.data.records import Prompt
    from rlhflab.rewards.registry import RewardSource
    from rlhflab.train.loop import train
    from rlhflab.train.policy_optimization import PolicyOptimization, RLConfig

    tokenizer = build_char_tokenizer()
    prompts = [Prompt(prompt=f"q{i}") for i in range(8)]
    reward = RewardSource("a-count", lambda c, o: [x.count("a") / max(1, len(x)) for x in o])
    runs = {}
    for single in (True, False):
        monkeypatch.setattr(PolicyOptimization, "_single_pass", lambda self, single=single: single)
        model, _ = build_tiny_policy(seed=3, tokenizer=tokenizer)
        config = RLConfig(
            algorithm=algorithm,
            policy="tiny-policy",
            output_dir=str(tmp_path / str(single)),
            num_iterations=3,
            prompts_per_iteration=2,
            samples_per_prompt=4,
            max_new_tokens=6,
            learning_rate=1e-2,
            kl_coef=0.1,
            progress=False,
            use_chat_template=False,
            seed=0,
            epochs=1,
            critic=critic,
        )
        algo = PolicyOptimization(config, model, tokenizer, prompts, reward)
        algo.save_final = lambda run_dir: None
        run_dir = train(config, algo)
        import json
        from pathlib import Path

        trained = [m for m in algo.trainable_modules().values()]
        runs[single] = (
            [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()],
            [p.detach().clone() for m in trained for p in m.parameters()],
        )
    (rows_a, params_a), (rows_b, params_b) = runs[True], runs[False]
    for a, b in zip(rows_a, rows_b):
        for key in ("loss", "kl", "kl_k3", "reward", "completion_length") + (
            ("value_loss",) if algorithm in ("ppo", "a2c") else ()
        ):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    for pa, pb in zip(params_a, params_b):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head", ["trunk then head once", "model forward twice"])
def test_shared_prompt_logits_and_gradients_equal_the_full_forward(policy, monkeypatch, head):
    """Rows sharing a prompt (GRPO groups, DPO pairs) compute it once: same logits, hidden states
    and parameter gradients as one full forward per row — whether the LM head is applied once to
    the trunk's outputs (plain-head architectures) or by the model's own forward on each part."""
    import copy

    from rlhflab.sampling import rollout

    if head == "model forward twice":
        monkeypatch.setattr(rollout, "_PLAIN_HEAD_MODELS", set())

    model, tokenizer = policy
    enc = lambda t: tokenizer(t, add_special_tokens=False).input_ids  # noqa: E731
    prompts = [enc("hello world"), enc("abc"), enc("hello world"), enc("abc"), enc("abc"), enc("zz top")]
    completions = [enc("foo"), enc("x"), enc("barbaz"), enc("yyyy"), enc("hello"), enc("q")]
    batch = join_prompt_completion(prompts, completions, tokenizer.pad_token_id)

    def run(shared: bool):
        m = copy.deepcopy(model).train()
        if shared:
            logits, hidden = rollout.shared_prompt_logits(m, batch, output_hidden_states=True)
        else:
            parts = [rollout.completion_logits(m, batch.select(slice(i, i + 1)), True) for i in range(len(prompts))]
            width = batch.num_completion_tokens
            logits = torch.cat([torch.nn.functional.pad(l, (0, 0, 0, width - l.shape[1])) for l, _ in parts])
            hidden = torch.cat([torch.nn.functional.pad(h, (0, 0, 0, width - h.shape[1])) for _, h in parts])
        picked = logits.log_softmax(-1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)
        ((picked * batch.completion_mask).sum() + 0.01 * (hidden * batch.completion_mask[..., None]).sum()).backward()
        return logits.detach(), hidden.detach(), {n: p.grad for n, p in m.named_parameters()}

    shared, plain = run(True), run(False)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(shared[0][mask], plain[0][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared[1][mask], plain[1][mask], atol=1e-5, rtol=1e-5)
    for name, grad in shared[2].items():
        torch.testing.assert_close(grad, plain[2][name], atol=1e-5, rtol=1e-4)
    # No two rows share a prompt: nothing to share, the plain forward runs.
    assert rollout.shared_prompt_logits(model, batch.select([0, 1])) is None


def test_token_logprobs_and_their_gradient_match_log_softmax():
    from rlhflab.sampling.rollout import _TokenLogprob, logprobs_from_logits

    torch.manual_seed(0)
    tokens = torch.randint(0, 13, (3, 7))
    exact = torch.randn(3, 7, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _TokenLogprob.apply(x, tokens), (exact,))
    logits = torch.randn(3, 7, 13, dtype=torch.bfloat16) * 4
    for temperature in (1.0, 0.7):
        ours_in = logits.clone().requires_grad_(True)
        plain_in = logits.clone().requires_grad_(True)
        ours = logprobs_from_logits(ours_in, tokens, temperature)
        plain = torch.log_softmax(plain_in.float() / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)
        assert ours.dtype == torch.float32 and torch.allclose(ours, plain, atol=1e-5)
        weights = torch.randn(3, 7)
        (ours * weights).sum().backward()
        (plain * weights).sum().backward()
        assert ours_in.grad.dtype == torch.bfloat16 and torch.allclose(ours_in.grad.float(), plain_in.grad.float())
