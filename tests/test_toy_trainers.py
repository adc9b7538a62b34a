"""Issue B item 3: the trainers of rlhflab.train, unchanged, against the toy lab's closed form.

Reduced instance (3 tokens, 2-token contexts, horizon 2: 9 contexts × 13 outputs), β = 0.25, R* as the
reward through a RewardSource over decoded text. The bar is the fraction of the gap between
obj(π_ref) and the optimum β·Σ d_C log Z (Eq. 17) closed by the trained model's exact table.
"""

import math

import pytest
import torch

from rlhflab.toy.exact import best_of_n_distribution
from rlhflab.toy.trainers import DEFAULT_BETA, default_settings, oracle_reward_source, reduced_lab, run_trainer


@pytest.fixture(scope="module")
def lab():
    return reduced_lab(seed=0)


def _settings(name):
    return next(s for s in default_settings() if s.name == name)


def _gap(lab, name):
    instance, model, tokenizer = lab
    return run_trainer(instance, model, tokenizer, _settings(name), beta=DEFAULT_BETA)


def test_reward_source_maps_decoded_text_back_to_the_oracle_table(lab):
    instance = lab[0]
    source = oracle_reward_source(instance)
    contexts = [instance.context_text(i) for i in range(instance.num_contexts) for _ in instance.outputs]
    outputs = [" ".join(t for t in o if t != "<eos>") for _ in instance.contexts for o in instance.outputs]
    assert torch.allclose(source(contexts, outputs).double(), instance.oracle_reward.flatten().float().double())


def test_ppo_reaches_closed_form_optimum_on_toy_mdp(lab):
    assert _gap(lab, "ppo")["gap_closed"] >= 0.98


def test_a2c_reaches_closed_form_optimum_on_toy_mdp(lab):
    assert _gap(lab, "a2c")["gap_closed"] >= 0.98


def test_reinforce_reaches_closed_form_optimum_on_toy_mdp(lab):
    assert _gap(lab, "reinforce")["gap_closed"] >= 0.98


def test_rloo_reaches_closed_form_optimum_on_toy_mdp(lab):
    assert _gap(lab, "rloo")["gap_closed"] >= 0.98


def test_dpo_on_bradley_terry_pairs_reaches_closed_form_optimum_on_toy_mdp(lab):
    assert _gap(lab, "dpo")["gap_closed"] >= 0.95


def test_best_of_n_samples_match_exact_best_of_n_distribution(lab):
    """decoding.best_of_n (the real sampler on π_ref's HF model) vs best_of_n_distribution.

    Per context, M prompts; the statistic is the TV between the empirical and exact joint over
    (context, output) with contexts uniform. E[TV] ≤ ½ Σ_k sqrt(p_k (1-p_k) / N') with N' = M per
    context (summed over contexts, weighted 1/C), and TV moves by at most 1/N under one sample's
    change, so P(TV > E + t) ≤ exp(−2 N t²) (McDiarmid): threshold = that bound + t at δ = 1e-4.
    """
    from rlhflab.decoding import best_of_n
    from rlhflab.toy.trainers import output_index

    instance, model, tokenizer = lab
    n, per_context = 4, 400
    C = instance.num_contexts
    prompts = [instance.context_text(i) for i in range(C) for _ in range(per_context)]
    result = best_of_n(model, tokenizer, prompts, oracle_reward_source(instance), n=n,
                       max_new_tokens=instance.horizon, use_chat_template=False, seed=0, batch_size=512)
    index = output_index(instance)
    counts = torch.zeros(C, instance.num_outputs, dtype=torch.float64)
    for k, text in enumerate(result.completions):
        counts[k // per_context, index[tuple(text.split())]] += 1
    empirical = counts / per_context
    exact = best_of_n_distribution(instance.reference, instance.oracle_reward, n)
    tv = 0.5 * float((empirical - exact).abs().sum()) / C
    N = C * per_context
    expected = 0.5 * float((exact * (1 - exact) / per_context).sqrt().sum()) / C
    threshold = expected + math.sqrt(math.log(1e4) / (2 * N))
    assert tv <= threshold
    # ... and the test can tell best-of-n from plain sampling and from best-of-(n+4).
    for other in (instance.reference, best_of_n_distribution(instance.reference, instance.oracle_reward, n + 4)):
        assert 0.5 * float((empirical - other).abs().sum()) / C > threshold
