"""Scoring (context, output) pairs with a reward model R_phi (Section 4.2).

The reward model reads the plain-text context and the output in *its own* tokenizer, so a reward
model whose tokenizer differs from the policy's (MiniLM scoring SmolLM2) needs no special casing:
the policy's tokens are decoded to text first and re-tokenised here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from rlhflab.errors import ConfigError
from rlhflab.progress import bar

# The key of a reward model's config.json that says how its input was laid out in training, so that
# whoever scores with it (rlhflab, TRL, OpenRLHF) feeds it the same way.
INPUT_FORMAT_KEY = "rlhflab_input_format"
SEPARATOR = "\n"  # between context and output in the plain layout of a decoder reward model
TEMPLATES = ("auto", "chat", "plain", "text")


def is_sentence_pair(tokenizer) -> bool:
    """Whether the plain layout is a sentence pair (encoders with [CLS] and [SEP]: BERT, MiniLM)."""
    return tokenizer.sep_token is not None and tokenizer.cls_token is not None


def input_format(tokenizer, template: str = "plain") -> dict:
    """What :data:`INPUT_FORMAT_KEY` records for a reward model scored with ``template``."""
    if template == "chat":
        return {"template": "chat", "layout": "the tokenizer's chat template of [user: context, assistant: output]"}
    if template == "text":
        return {"template": "text", "layout": "special tokens + context + output + eos, no separator"}
    if is_sentence_pair(tokenizer):
        return {"template": "plain", "layout": "sentence pair (context, output)", "separator": tokenizer.sep_token}
    return {
        "template": "plain",
        "layout": "context + separator + output + eos",
        "separator": SEPARATOR,
        "eos": tokenizer.eos_token,
    }


def chat_texts(tokenizer, contexts: Sequence[str], outputs: Sequence[str]) -> list[str]:
    """Each (context, output) as the chat template renders a user turn and the assistant's reply: the
    input of a reward model trained on conversational data (TRL's RewardTrainer does this)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("reward template 'chat' needs a reward-model tokenizer with a chat_template; it has none")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": c}, {"role": "assistant", "content": o}], tokenize=False
        )
        for c, o in zip(contexts, outputs)
    ]


def reward_template(model, tokenizer, requested: str = "auto", name: str = "the reward model") -> str:
    """How to lay out a reward model's input: ``requested`` if it is 'chat' or 'plain'; under 'auto',
    what the model's config records (:data:`INPUT_FORMAT_KEY`, as rlhflab saves it), else — a model
    trained elsewhere (TRL, OpenRLHF) records nothing — 'chat' where its tokenizer has a chat
    template, 'plain' otherwise, said in one line on stderr."""
    if requested not in TEMPLATES:
        raise ConfigError(f"reward template must be one of {', '.join(TEMPLATES)}, got {requested!r}")
    if requested != "auto":
        if requested == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"--reward_template chat: {name}'s tokenizer has no chat_template")
        return requested
    recorded = getattr(model.config, INPUT_FORMAT_KEY, None)
    if isinstance(recorded, dict) and recorded.get("template") in TEMPLATES[1:]:
        return recorded["template"]
    detected = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    why = "its tokenizer has a chat template" if detected == "chat" else "its tokenizer has no chat template"
    print(
        f"{name}: no input format recorded; scoring it {detected} ({why}; --reward_template chat|plain|text to choose)",
        file=sys.stderr,
    )
    return detected


def encode_for_reward(
    tokenizer, contexts: Sequence[str], outputs: Sequence[str], max_length: int = 512, template: str = "plain"
):
    """Tokenise (context, output) pairs. ``template="plain"`` (how rlhflab trains reward models):
    encoders with a separator token get a sentence pair; decoders read ``context + newline + output``
    and end with EOS, whose position the scalar head reads. ``template="chat"``: the chat template's
    rendering of the pair (:func:`chat_texts`). ``template="text"``: ``context + output + EOS`` with
    the tokenizer's own special tokens and no separator (how TRL's RewardTrainer reads standard,
    non-conversational rows). Over-long pairs lose context tokens first: the output is what is
    being judged."""
    if template == "chat":
        tokenizer.truncation_side = "left"
        return tokenizer(
            chat_texts(tokenizer, contexts, outputs),
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
            add_special_tokens=False,
        )
    if template == "text":
        eos = tokenizer.eos_token or ""
        tokenizer.truncation_side = "left"
        texts = [c + o if (c + o).endswith(eos) else c + o + eos for c, o in zip(contexts, outputs)]
        return tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    if is_sentence_pair(tokenizer):
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
    model,
    tokenizer,
    contexts: Sequence[str],
    outputs: Sequence[str],
    batch_size: int = 32,
    max_length: int = 512,
    template: str = "plain",
) -> torch.Tensor:
    """R_phi(c, o) for many pairs, without gradients, in batches (``template``: :func:`encode_for_reward`),
    in fp32."""
    was_training = model.training
    model.eval()
    parts = []
    # Always fp32, whatever autocast the caller runs under: rewards of samples of one prompt differ by
    # hundredths, about bf16's resolution at a reward's scale, and the reward model is small beside
    # the policy (measured: under bf16 the demo's reward model ranked pi_0's samples far worse).
    no_autocast = torch.autocast(device_type=next(model.parameters()).device.type, enabled=False)
    with no_autocast, bar(len(contexts), "scoring with the reward model", unit="sample") as progress:
        for i in range(0, len(contexts), batch_size):
            encoded = encode_for_reward(
                tokenizer, contexts[i : i + batch_size], outputs[i : i + batch_size], max_length, template
            )
            parts.append(reward_forward(model, encoded).cpu())
            progress.update(len(parts[-1]))
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0)
