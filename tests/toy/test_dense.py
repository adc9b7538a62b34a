"""Dense rewards by potential-based shaping on the toy MDP (Section 5.1; Ng et al. 1999):
rlhflab.toy.shaping (exactness) and rlhflab.toy.experiments.dense (what it buys PPO)."""

import json
from types import SimpleNamespace

import torch

from rlhflab.toy import build_toy_tokenizer
from rlhflab.toy.experiments import dense
from rlhflab.toy.mdp import END_TOKEN, enumeration_batch
from rlhflab.toy.shaping import exactness, shaped_return_table
from rlhflab.toy.trainers import oracle_reward_source, reduced_lab
from rlhflab.train.policy_optimization import PolicyOptimization


def test_dense_shaped_returns_are_r_minus_the_empty_prefix_and_leave_the_optimum_exactly(default_lab):
    tokenizer = build_toy_tokenizer(default_lab.tokens)
    shaped = shaped_return_table(default_lab, tokenizer)
    # Φ_k of a cut output is R* of the output that stops after its first k tokens
    j = default_lab.outputs.index(("a", "b", "c"))
    stopped = [default_lab.outputs.index(o) for o in ((END_TOKEN,), ("a", END_TOKEN), ("a", "b", END_TOKEN))]
    row = 5 * default_lab.num_outputs + j
    assert shaped["potentials"][row].tolist() == default_lab.oracle_reward[5, stopped].tolist()
    # PPO's own prefix scoring (decode the first k tokens, ask the reward source) sees the same Φ
    batch = enumeration_batch(default_lab, tokenizer)
    contexts = [default_lab.context_text(i) for i in range(default_lab.num_contexts) for _ in default_lab.outputs]
    ppo = SimpleNamespace(tokenizer=tokenizer, reward_source=oracle_reward_source(default_lab))
    from_ppo = PolicyOptimization._prefix_potentials(ppo, contexts, batch)
    assert torch.equal(from_ppo, shaped["potentials"].float() * batch.completion_mask)

    random_table = torch.randn(
        default_lab.num_contexts, default_lab.num_outputs, generator=torch.Generator().manual_seed(0)
    )
    for reward in (None, random_table.double()):
        check = exactness(default_lab, tokenizer, kl_coefs=(0.1, 0.25, 1.0), reward=reward)
        assert check["return_error"] < 1e-12
        assert all(err < 1e-12 for err in check["optimum_error"].values())
    assert exactness(default_lab, tokenizer, reward=random_table.double())["potential_of_empty_max"] != 0.0


def test_dense_experiment_writes_json_and_png_and_headline(tmp_path):
    torch.set_num_threads(1)
    res = dense.run(tmp_path, seed=0, repeats=2, budgets=(1, 2), lab=reduced_lab(seed=0, steps=30))
    assert (tmp_path / "dense.png").stat().st_size > 0
    assert json.loads((tmp_path / "dense.json").read_text())["rows"] == res["rows"]
    assert [r["iterations"] for r in res["rows"]] == [1, 2] and len(res["train_seeds"]) == 2
    for name in ("sparse", "dense"):
        assert len(res["traces"][name]) == 2 and all(len(t) == 3 and t[0] == 0.0 for t in res["traces"][name])
        assert res["settings"][name]["dense_rewards"] is (name == "dense")
    for check in res["exactness"].values():
        assert check["return_error"] < 1e-12 and max(check["optimum_error"].values()) < 1e-12
    line = dense.headline(res)
    r = res["rows"][-1]
    assert line.startswith("PPO gap closed sparse/dense (2 seeds, paired dense − sparse): 1 it ")
    assert f"2 it {r['sparse_mean']:.3f}±{r['sparse_std']:.3f}/{r['dense_mean']:.3f}±" in line
    assert "max |π*_β(R') − π*_β(R)| " in line and "nan" not in line
