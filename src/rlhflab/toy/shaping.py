"""Dense per-token rewards on the toy MDP: exactly what potential-based shaping changes.

``RLConfig.dense_rewards`` rewards every token by potential-based shaping (Ng et al. 1999;
:func:`rlhflab.losses.potential_shaped_rewards`): Φ_k is the reward source's score of the
completion's first k tokens, r'_k = Φ_{k+1} − Φ_k, and the last token gets R − Φ_{n−1}, so the
return is R − Φ_0. In the toy MDP every prefix of an output is itself an output (the same tokens
ended there), and the toy reward source maps decoded text to the output it spells: a prefix is
scored as the output that stops after it. Φ(c, prefix) = R*(c, prefix) is then a table lookup and
the shaped return table R'(c, o) is exact for every (c, o) — the check that the optimum of Eq. 17
does not move is a computation, not a sample.

What shaping buys PPO is the experiment ``rlhflab toy dense`` (``rlhflab.toy.experiments.dense``).
"""

from __future__ import annotations

import torch

from rlhflab.losses import potential_shaped_rewards
from rlhflab.toy.exact import kl_regularised_optimum
from rlhflab.toy.mdp import ToyInstance, enumeration_batch
from rlhflab.toy.trainers import DEFAULT_BETA, output_index


def shaped_return_table(instance: ToyInstance, tokenizer, reward: torch.Tensor | None = None) -> dict:
    """R'(c, o) = Σ_k r'_k for every (c, o), float64, with Φ_k the table's value at the output that
    the first k completion tokens spell once decoded as PPO decodes them
    (``tokenizer.decode(ids[:k], skip_special_tokens=True)``, mapped to an output as
    :func:`~rlhflab.toy.trainers.oracle_reward_source` maps text). ``reward`` defaults to R*.

    Returns the shaped per-token rewards (C·O, T), the potentials (C·O, T), the completion lengths
    (C·O,), the shaped return table R' (C, O) and Φ(c, ∅) (C,)."""
    table = instance.oracle_reward if reward is None else torch.as_tensor(reward, dtype=torch.float64)
    columns = output_index(instance)
    batch = enumeration_batch(instance, tokenizer)
    ids, lengths = batch.completion_ids, batch.completion_mask.sum(-1)
    potentials = torch.zeros(ids.shape, dtype=torch.float64)
    for row in range(ids.shape[0]):
        context = row // instance.num_outputs
        for k in range(int(lengths[row])):
            prefix = tokenizer.decode(ids[row, :k], skip_special_tokens=True)
            potentials[row, k] = table[context, columns[tuple(prefix.split())]]
    shaped = potential_shaped_rewards(potentials, table.flatten(), lengths)
    return {
        "token_rewards": shaped,
        "potentials": potentials,
        "lengths": lengths,
        "shaped_return": shaped.sum(-1).view(instance.num_contexts, instance.num_outputs),
        "potential_of_empty": table[:, columns[()]],
    }


def exactness(instance: ToyInstance, tokenizer, kl_coefs=(DEFAULT_BETA,), reward: torch.Tensor | None = None) -> dict:
    """max |R' − (R − Φ(c, ∅))| over every (c, o), and max |π*_β(R') − π*_β(R)| (Eq. 17) for each β."""
    table = instance.oracle_reward if reward is None else torch.as_tensor(reward, dtype=torch.float64)
    shaped = shaped_return_table(instance, tokenizer, table)
    reference = instance.require_reference()
    phi0 = shaped["potential_of_empty"]
    return {
        "return_error": float((shaped["shaped_return"] - (table - phi0[:, None])).abs().max()),
        "optimum_error": {
            str(beta): float(
                (
                    kl_regularised_optimum(reference, shaped["shaped_return"], beta)
                    - kl_regularised_optimum(reference, table, beta)
                )
                .abs()
                .max()
            )
            for beta in kl_coefs
        },
        "potential_of_empty_min": float(phi0.min()),
        "potential_of_empty_max": float(phi0.max()),
    }
