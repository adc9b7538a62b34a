"""Scoring (context, output) pairs with a reward model R_phi (Section 4.2).

The reward model reads the plain-text context and the output in *its own* tokenizer, so a reward
model whose tokenizer differs from the policy's (MiniLM scoring SmolLM2) needs no special casing:
the policy's tokens are decoded to text first and re-tokenised here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhflab.progress import bar


def encode_for_reward(tokenizer, contexts: Sequence[str], outputs: Sequence[str], max_length: int = 512):
    """Tokenise (context, output) pairs. Encoders with a separator token get a sentence pair;
    decoders read ``context + newline + output`` and end with EOS, whose position the scalar head
    reads. Over-long pairs lose context tokens first: the output is what is being judged."""
    if tokenizer.sep_token is not None and tokenizer.cls_token is not None:
        return tokenizer(
            list(contexts),
            list(outputs),
            truncation="only_first" if max_length else False,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
    eos = tokenizer.eos_token or ""
    texts = [f"{c}\n{o}{eos}" for c, o in zip(contexts, outputs)]
    tokenizer.truncation_side = "left"
    return tokenizer(
        texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt", add_special_tokens=False
    )


def reward_forward(model, encoded) -> torch.Tensor:
    """R_phi(c, o) for an encoded batch: shape (B,)."""
    encoded = {k: v.to(model.device) for k, v in encoded.items()}
    return model(**encoded).logits.squeeze(-1).float()


@torch.no_grad()
def score(
    model, tokenizer, contexts: Sequence[str], outputs: Sequence[str], batch_size: int = 32, max_length: int = 512
) -> torch.Tensor:
    """R_phi(c, o) for many pairs, without gradients, in batches."""
    was_training = model.training
    model.eval()
    parts = []
    with bar(len(contexts), "scoring with the reward model", unit="sample") as progress:
        for i in range(0, len(contexts), batch_size):
            encoded = encode_for_reward(
                tokenizer, contexts[i : i + batch_size], outputs[i : i + batch_size], max_length
            )
            parts.append(reward_forward(model, encoded).cpu())
            progress.update(len(parts[-1]))
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0)
