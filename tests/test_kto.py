"""KTO (Ethayarajh et al. 2024): the loss against numbers worked by hand, and `rlhflab kto` on the tiny
policy raising the log-prob of desirable completions relative to undesirable ones.

Trial runs (seeds 0-3, 1 thread; 8 steps of 8 at lr 3e-3): the mean summed log-prob gap desirable −
undesirable rose by 17.5-19.7 nats, and fell by 17.6-20.0 with the labels flipped (the control), so
the bar is 5 nats each way on each of two seeds."""

import json
import math

import pytest
import torch

from rlhflab.cli import main
from rlhflab.errors import ConfigError, DataError
from rlhflab.losses import kto_loss
from rlhflab.models import load_policy
from rlhflab.train.preference import KTOConfig, mismatched_examples, sequence_logps
from tests._env import TEST_SEED


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_loss_matches_hand_computation():
    # Two examples: one desirable (log-ratio 1), one undesirable (log-ratio -1).
    policy, ref = torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -3.0])
    desirable = torch.tensor([True, False])
    # Mismatched pairs: log-ratios 1 and 0, so z_ref = 0.5.
    policy_kl, ref_kl = torch.tensor([-5.0, -6.0]), torch.tensor([-6.0, -6.0])
    loss, rewards, z_ref = kto_loss(policy, ref, desirable, policy_kl, ref_kl, 0.5, 2.0, 1.0)
    # desirable: λ_D (1 − σ(β (1 − 0.5))) = 2 (1 − σ(0.25)) = 2 × 0.4378235 = 0.8756470
    # undesirable: λ_U (1 − σ(β (0.5 − (−1)))) = 1 − σ(0.75) = 0.3208213
    assert z_ref.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx((0.8756470 + 0.3208213) / 2, abs=1e-6)
    assert loss.item() == pytest.approx((2 * (1 - sigmoid(0.25)) + (1 - sigmoid(0.75))) / 2, abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.5, -0.5])


def test_kto_reference_point_is_clamped_at_zero_and_detached():
    policy = torch.tensor([-1.0], requires_grad=True)
    policy_kl = torch.tensor([-9.0, -8.0], requires_grad=True)  # log-ratios -3, -2: a negative estimate
    ref_kl = torch.tensor([-6.0, -6.0])
    loss, _, z_ref = kto_loss(policy, torch.tensor([-1.0]), torch.tensor([True]), policy_kl, ref_kl, 1.0)
    assert z_ref.item() == 0.0
    assert loss.item() == pytest.approx(1 - sigmoid(0.0))
    loss.backward()
    assert policy_kl.grad is None and policy.grad is not None
    # d/dr [1 − σ(β r)] at r = 0 = −β σ(0)(1 − σ(0)) = −0.25
    assert policy.grad.item() == pytest.approx(-0.25)


def test_kto_loss_of_only_undesirable_examples_uses_lambda_u():
    loss, _, _ = kto_loss(
        torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([False]), torch.zeros(1), torch.zeros(1), 1.0, 5.0, 3.0
    )
    assert loss.item() == pytest.approx(3.0 * (1 - sigmoid(0.0 - -1.0)))


def test_kto_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        kto_loss(torch.zeros(2), torch.zeros(3), torch.ones(2, dtype=torch.bool), torch.zeros(1), torch.zeros(1))


def test_mismatched_pairs_give_every_prompt_another_examples_completion():
    examples = [([i], [100 + i]) for i in range(5)]
    mismatched = mismatched_examples(examples, KTOConfig(seed=3))
    assert [p for p, _ in mismatched] == [p for p, _ in examples]
    partners = [c[0] - 100 for _, c in mismatched]
    assert sorted(partners) == list(range(5)) and all(j != i for i, j in enumerate(partners))


def test_kto_config_refuses_a_non_positive_beta():
    with pytest.raises(ConfigError, match="beta"):
        KTOConfig(kl_coef=0.0).validate()


STEPS = 8
MARGIN = 5.0  # nats
GOOD = ["aaaa", "aaba", "abaa", "aaaa a"]
BAD = ["xyzq", "zqxy", "qqzx", "yx zq"]


def _unpaired_rows() -> list[dict]:
    rows = []
    for i in range(8):
        rows.append({"prompt": f"q{i}", "completion": GOOD[i % 4], "label": True})
        rows.append({"prompt": f"q{i}", "completion": BAD[i % 4], "label": False})
    return rows


def _gap(model, tokenizer, rows) -> float:
    """Mean summed log-prob of the desirable completions minus that of the undesirable ones."""
    enc = lambda t: tokenizer(t, add_special_tokens=False).input_ids  # noqa: E731
    examples = [(enc(r["prompt"]), enc(r["completion"]) + [tokenizer.eos_token_id]) for r in rows]
    with torch.no_grad():
        logps, _ = sequence_logps(model.eval(), examples, tokenizer.pad_token_id)
    labels = torch.tensor([r["label"] for r in rows])
    return float(logps[labels].mean() - logps[~labels].mean())


@pytest.mark.parametrize("flipped", [False, True], ids=["labels", "flipped"])
@pytest.mark.parametrize("seed", [TEST_SEED, TEST_SEED + 1])
def test_rlhflab_kto_raises_desirable_log_probs_over_undesirable(tmp_path, model_cache, seed, flipped, record_margin):
    """With the labels flipped (the control) the same run must lower the gap: the rise comes from the labels."""
    rows = _unpaired_rows()
    trained = [{**r, "label": r["label"] != flipped} for r in rows]
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in trained))
    run = tmp_path / "run"
    argv = ["kto", "--policy", "tiny-policy", "--data", str(data), "--output_dir", str(run), "--seed", str(seed)]
    argv += ["--batch_size", "8", "--max_steps", str(STEPS), "--learning_rate", "3e-3", "--no_progress"]
    assert main(argv) == 0
    before = _gap(*load_policy("tiny-policy"), rows)
    after = _gap(*load_policy(str(run / "policy")), rows)
    rise = (before - after) if flipped else (after - before)
    record_margin("kto log-prob gap change, toward the trained labels", rise, MARGIN)
    assert rise > MARGIN, (before, after)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"kl", "desirable_reward", "undesirable_reward"} <= set(metrics[-1])


def test_rlhflab_kto_reads_the_apps_binary_ratings_and_refuses_likert(tmp_path, model_cache, capsys):
    binary = tmp_path / "binary.jsonl"
    rows = [{"prompt": f"q{i}", "completion": "ab", "score": i % 2, "scale": "binary"} for i in range(4)]
    binary.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["kto", "--policy", "tiny-policy", "--batch_size", "2", "--max_steps", "1", "--no_progress"]
    assert main([*argv, "--data", str(binary), "--output_dir", str(tmp_path / "a")]) == 0
    likert = tmp_path / "likert.jsonl"
    likert.write_text(json.dumps({"prompt": "q", "completion": "ab", "score": 4, "scale": "likert:5"}) + "\n")
    capsys.readouterr()
    assert main([*argv, "--data", str(likert), "--output_dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "likert.jsonl:1: field 'scale'" in err[0] and "kto takes" in err[0]


def test_preference_pairs_given_to_kto_are_unpaired_as_trl_does(tmp_path, capsys):
    from rlhflab.commands.train import _unpaired_records

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    records = _unpaired_records(KTOConfig(policy="tiny-policy", data=str(data)))
    assert [(r.completion, r.score, r.scale) for r in records] == [("a", 1.0, "binary"), ("b", 0.0, "binary")]
    assert "1 preference pairs read as 2 unpaired examples" in capsys.readouterr().err


def test_demonstrations_given_to_kto_are_refused_naming_sft(tmp_path):
    from rlhflab.commands.train import run_kto

    data = tmp_path / "demos.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "a"}) + "\n")
    with pytest.raises(DataError, match=r"demos\.jsonl:1: rows are TRL's prompt-completion type.*`rlhflab sft`"):
        run_kto(KTOConfig(policy="tiny-policy", data=str(data)))
