"""Offline methods on the one loop (SFT, reward modelling) on tiny random models, and the loop's
distributed contract: two processes with gloo compute the same global batch, hence the same losses,
as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhflab.data.records import Ranking, Rating
from rlhflab.errors import DataError
from rlhflab.models import load_policy, load_reward_model
from rlhflab.models.scoring import score
from rlhflab.train.loop import train
from rlhflab.train.offline import SFTAlgorithm, SFTConfig, tokenize_demonstrations
from rlhflab.train.reward_model import RewardAlgorithm, RewardConfig
from tests._env import TEST_SEED
from tests._train_entry import a_preferences, demonstrations
from tests._train_entry import main as train_entry_main

ENTRY = Path(__file__).with_name("_train_entry.py")


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir)]


# ---- SFT ----------------------------------------------------------------------------------------


def test_sft_lowers_its_loss_and_changes_the_weights(model_cache, tmp_path, record_margin):
    model, tokenizer = load_policy("tiny-policy")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        batch_size=4,
        num_epochs=20,
        learning_rate=3e-3,
        progress=False,
        use_chat_template=False,
        seed=TEST_SEED,
    )
    demos = demonstrations()
    examples = tokenize_demonstrations(
        [d.prompt for d in demos], [d.completion for d in demos], tokenizer, config, use_chat_template=False
    )
    run_dir = train(config, SFTAlgorithm(config, model, tokenizer, examples))

    trajectory = losses(run_dir)
    assert len(trajectory) == 40  # 20 epochs of 8 demonstrations in batches of 4
    record_margin("last 4 / first 4 losses", sum(trajectory[-4:]) / sum(trajectory[:4]), 0.5, above=False)
    assert sum(trajectory[-4:]) / 4 < 0.5 * sum(trajectory[:4]) / 4, trajectory
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), "every weight gets a gradient"
    saved, _ = load_policy(str(run_dir / "policy"))
    for k, v in saved.state_dict().items():
        torch.testing.assert_close(v, after[k])


def test_gradient_accumulation_multiplies_the_batch_and_leaves_the_logged_loss(model_cache, tmp_path):
    """batch_size 2 x 2 accumulated micro-batches (TRL's meaning) trains as batch_size 4."""
    trajectories = []
    for steps in (1, 2):
        options = [f"gradient_accumulation_steps={steps}", f"batch_size={4 // steps}"]
        train_entry_main(["sft", str(tmp_path / f"accumulate-{steps}"), *options])
        trajectories.append(losses(tmp_path / f"accumulate-{steps}"))
    assert len(trajectories[1]) == 4 and trajectories[1] == pytest.approx(trajectories[0], rel=1e-4)


def test_tokenize_demonstrations_names_line_and_field_of_an_over_long_example(char_tokenizer):
    config = SFTConfig(max_length=12)
    prompts, completions = ["hi", "a long prompt here", "yo"], ["ok", "answer", "fine"]
    with pytest.raises(
        DataError,
        match=r"demos\.jsonl:2: field 'completion': prompt \+ completion is 25 tokens, "
        r"over max_length 12",
    ) as caught:
        tokenize_demonstrations(
            prompts, completions, char_tokenizer, config, source="demos.jsonl", use_chat_template=False
        )
    assert (caught.value.line, caught.value.field) == (2, "completion")


def test_tokenize_demonstrations_truncates_the_prompt_from_the_left_when_asked(char_tokenizer):
    config = SFTConfig(max_length=12, truncate=True)
    examples = tokenize_demonstrations(
        ["hi", "a long prompt here"], ["ok", "answer"], char_tokenizer, config, use_chat_template=False
    )
    (short_p, short_c), (long_p, long_c) = examples
    assert char_tokenizer.decode(short_p) == "hi" and char_tokenizer.decode(short_c, skip_special_tokens=True) == "ok"
    # The completion (what is learnt) is kept whole, with its EOS; the prompt loses its start.
    assert long_c[-1] == char_tokenizer.eos_token_id and char_tokenizer.decode(long_c[:-1]) == "answer"
    assert len(long_p) + len(long_c) == 12
    assert char_tokenizer.decode(long_p) == "a long prompt here"[-5:]
    # A completion that alone fills max_length cannot be rescued by truncating the prompt.
    with pytest.raises(DataError, match=r":1: field 'completion'"):
        tokenize_demonstrations(["hi"], ["x" * 12], char_tokenizer, config, use_chat_template=False)


# ---- reward models ------------------------------------------------------------------------------


def held_out_accuracy(model, tokenizer, pairs) -> float:
    contexts = [p.prompt for p in pairs]
    chosen = score(model, tokenizer, contexts, [p.chosen for p in pairs])
    rejected = score(model, tokenizer, contexts, [p.rejected for p in pairs])
    return float((chosen > rejected).float().mean())


def test_bradley_terry_reward_model_ranks_held_out_pairs_and_round_trips(model_cache, tmp_path, record_margin):
    model, tokenizer = load_reward_model("tiny-reward")
    config = RewardConfig(
        output_dir=str(tmp_path / "bt"), batch_size=8, num_epochs=4, learning_rate=1e-3, progress=False, seed=TEST_SEED
    )
    train_pairs, held_out = a_preferences(64, seed=0), a_preferences(64, seed=1)
    run_dir = train(config, RewardAlgorithm(config, model, tokenizer, train_pairs))

    trajectory = losses(run_dir)
    assert trajectory[-1] < trajectory[0]
    accuracy = held_out_accuracy(model, tokenizer, held_out)
    record_margin("held-out accuracy", accuracy, 0.9)
    assert accuracy >= 0.9, f"held-out accuracy {accuracy:.2f} (chance is 0.5)"

    # Saved reward model round-trip: plain from_pretrained gives the same scores.
    reloaded, reloaded_tokenizer = load_reward_model(str(run_dir / "reward_model"))
    contexts = [p.prompt for p in held_out] * 2
    outputs = [p.chosen for p in held_out] + [p.rejected for p in held_out]
    torch.testing.assert_close(
        score(reloaded, reloaded_tokenizer, contexts, outputs),
        score(model, tokenizer, contexts, outputs),
        atol=1e-6,
        rtol=1e-6,
    )


def test_prompt_grouped_schedule_keeps_a_prompts_pairs_together_and_covers_each_once_per_epoch():
    from rlhflab.train.offline import OfflineSchedule

    groups = [f"prompt {i // 6}" for i in range(60)]  # 10 prompts x 6 pairs, as 4 samples give
    config = RewardConfig(batch_size=12, num_epochs=2, seed=TEST_SEED)
    schedule = OfflineSchedule(60, config, groups)
    for epoch in range(2):
        order = [i for step in range(5) for i in schedule.indices(epoch * 5 + step)]
        assert sorted(order) == list(range(60))
        runs = [groups[i] for k, i in enumerate(order) if k == 0 or groups[i] != groups[order[k - 1]]]
        assert len(runs) == 10, "a prompt's pairs were split apart"
    assert schedule.indices(0) != schedule.indices(5)  # a fresh order each epoch


def test_reward_model_scores_each_distinct_completion_once_per_batch(model_cache, monkeypatch):
    """Six pairs over four completions of one prompt: four sequences are scored, and each pair's
    rewards are the ones a separate forward gives (dropout is off, so the gradient is unchanged)."""
    from types import SimpleNamespace

    import rlhflab.train.reward_model as offline

    model, tokenizer = load_reward_model("tiny-reward")
    algorithm = RewardAlgorithm(RewardConfig(batch_size=1), model, tokenizer, a_preferences(4))
    algorithm.accelerator = SimpleNamespace(device=torch.device("cpu"))
    encoded_rows = []
    encode = offline.encode_for_reward
    monkeypatch.setattr(
        offline, "encode_for_reward", lambda tok, c, o, m: encoded_rows.append(len(o)) or encode(tok, c, o, m)
    )
    completions = ["aaa", "axa", "xyz", "zz"]
    pairs = [(a, b) for i, a in enumerate(completions) for b in completions[i + 1 :]]
    outputs = [o for pair in pairs for o in pair]
    rewards = algorithm._rewards(["pick"] * len(outputs), outputs)
    assert encoded_rows == [4]
    alone = score(model, tokenizer, ["pick"] * len(outputs), outputs)
    torch.testing.assert_close(rewards.detach(), alone, atol=1e-5, rtol=1e-5)


def _ranked(seed: int, n: int):
    """Lists of completions best first, by the number of 'a's."""
    import random

    rng = random.Random(seed)
    records = []
    for _ in range(n):
        length = rng.randint(5, 9)
        completions = []
        for k in (length, 3, 0):
            chars = ["a"] * k + [rng.choice("xyz") for _ in range(length - k)]
            rng.shuffle(chars)
            completions.append("".join(chars))
        records.append(Ranking(prompt="pick", completions=completions))
    return records


@pytest.mark.parametrize("feedback", ["ranking", "rating"])
def test_plackett_luce_and_regression_reward_models_lower_their_loss(feedback, model_cache, tmp_path, record_margin):
    model, tokenizer = load_reward_model("tiny-reward")
    if feedback == "ranking":
        records = _ranked(0, 32)
    else:
        records = [
            Rating(prompt="rate", completion=c, score=float(c.count("a")))
            for r in _ranked(0, 16)
            for c in r.completions
        ]
    config = RewardConfig(
        output_dir=str(tmp_path / feedback),
        feedback=feedback,
        batch_size=8,
        num_epochs=4,
        learning_rate=1e-3,
        progress=False,
        seed=TEST_SEED,
    )
    run_dir = train(config, RewardAlgorithm(config, model, tokenizer, records))
    trajectory = losses(run_dir)
    # Whole epochs, not a few batches: one batch's loss swings by 5x with the records it draws.
    per_epoch = len(trajectory) // config.num_epochs
    first, last = sum(trajectory[:per_epoch]), sum(trajectory[-per_epoch:])
    record_margin("last epoch / first epoch loss", last / first, 0.7, above=False)
    assert last < 0.7 * first, trajectory


# ---- one process vs two -------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.subprocess
def test_two_processes_match_one_process(model_cache, tmp_path):
    """The same global batch split over two gloo processes gives the same loss trajectory as one
    process (each logged loss is the global-batch loss, not process 0's share). For PPO the rollouts
    are made identical by greedy decoding (top_k=1) and per-rollout advantage whitening is off
    (whitening statistics are per process by design), so the whole trajectory must match too."""
    kinds = "sft,reward,ppo"
    ppo = ["ppo.top_k=1", "ppo.num_iterations=3", "ppo.reward_rule=checksum", "ppo.whiten_advantages=false"]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        RLHFLAB_CACHE=str(model_cache),
    )
    # On a machine without GPUs `--cpu --num_processes 2` starts one process (accelerate wants mpirun
    # for that); `--multi_gpu` starts two through torch.distributed.run, which join over gloo.
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(ENTRY),
        kinds,
        str(tmp_path / "two"),
        *ppo,
    ]
    done = subprocess.run(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == 0, done.stdout.decode()[-4000:]

    train_entry_main([kinds, str(tmp_path / "one"), *ppo])

    for kind in kinds.split(","):
        one, two = read_metrics(tmp_path / "one" / kind), read_metrics(tmp_path / "two" / kind)
        assert len(one) == len(two) > 1
        if kind == "sft":  # each process really saw half of every batch
            assert [b["tokens"] for b in two] == [a["tokens"] / 2 for a in one]
        for a, b in zip(one, two):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (kind, a["iteration"])
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3, abs=1e-6), (kind, a["iteration"])
        if kind == "ppo":
            for a, b in zip(one, two):
                for key in ("reward", "kl", "value_loss"):
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a["iteration"])
            assert len({r["reward"] for r in one}) > 1, "the checksum reward should vary"
