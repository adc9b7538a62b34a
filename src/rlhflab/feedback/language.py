"""Language feedback's building blocks (Sections 7.3.2, 7.8, 7.9.2): the refinement and judge
templates, constitutions of principles, the critique and revision turns, a sentence embedder to pick
the refinement most consistent with a critique, and (revised ≻ original) pairs as preferences.
The training procedures that use them (ILF, critique-and-revise) are in :mod:`rlhflab.train.language`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import yaml

from rlhflab.data.records import Preference
from rlhflab.data.render import chat_template_choice, prompt_text, render_completion
from rlhflab.errors import ConfigError, DataError
from rlhflab.models.loading import load_tokenizer
from rlhflab.models.registry import DEFAULT_REWARD_BACKBONE, resolve_model

# ---- templates -----------------------------------------------------------------------------------


# ---- templates -----------------------------------------------------------------------------------
REFINEMENT_TEMPLATE = (
    "Here is a prompt, a response to it and feedback on the response.\n\n"
    "Prompt: {prompt}\n\nResponse: {output}\n\nFeedback: {feedback}\n\n"
    "Write an improved response that addresses the feedback. Reply with the improved response only."
)


# The judge's question when it selects refinements (``--selection judge``): which follows f better.
FOLLOWS_FEEDBACK_QUESTION = "Feedback on a reply: {feedback}\nWhich response follows this feedback better?"


_LABEL = re.compile(r"^\s*(?:(?:improved|revised|new|rewritten)\s+)?(?:response|reply|answer)\s*:\s*", re.IGNORECASE)


def refinement_prompt(prompt, output, feedback: str) -> str:
    """The input from which the policy writes a refinement of ``output`` given ``feedback``."""
    return REFINEMENT_TEMPLATE.format(
        prompt=prompt_text(prompt), output=render_completion(output).strip(), feedback=feedback.strip()
    )


def clean_generation(text: str) -> str:
    """A sampled refinement or revision as a reply: without a leading "Improved response:" label
    and the quotes a model may wrap it in."""
    text = _LABEL.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def conversation(turns: list[tuple[str, str]], tokenizer, use_chat_template="auto"):
    """``turns`` ((role, text), ..., ending with a user turn) as a prompt: a message list where the
    tokenizer has a chat template (unless ``use_chat_template`` is false), else plain text with
    "User:" / "Assistant:" labels."""
    if chat_template_choice(use_chat_template) is not False and getattr(tokenizer, "chat_template", None):
        return [{"role": role, "content": text} for role, text in turns]
    labels = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{labels[role]}: {text}" for role, text in turns) + "\n\nAssistant:"


# ---- constitutions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principle:
    """One constitutional principle: a critique request and a revision request (Bai et al. 2022b)."""

    name: str
    critique: str
    revision: str


DEFAULT_CONSTITUTION = "default"  # the shipped rlhflab/assets/constitution.yaml


_PRINCIPLE_KEYS = ("name", "critique", "revision")


def load_constitution(path: str | None = None) -> list[Principle]:
    """The principles of a YAML constitution, ``principles: [{name, critique, revision}, ...]``
    (``None`` or "default": the shipped one). Every problem is one line naming the file, the line and
    the principle: ``constitution.yaml:7: field 'principles[1].revision': missing (principle 'warmth')``."""
    if path in (None, DEFAULT_CONSTITUTION):
        source = "rlhflab/assets/constitution.yaml"
        text = resources.files("rlhflab").joinpath("assets", "constitution.yaml").read_text(encoding="utf-8")
    else:
        source = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{path}: constitution file not found")
        text = Path(path).read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DataError(source, line, None, f"invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict) or "principles" not in data:
        raise DataError(source, 1, "principles", "missing: a constitution is a mapping with a 'principles' list")
    unknown = sorted(set(data) - {"principles"})
    if unknown:
        raise DataError(source, 1, unknown[0], "unknown key (a constitution holds 'principles')")
    nodes = dict((k.value, v) for k, v in root.value)["principles"]
    items = data["principles"]
    if not isinstance(items, list) or not items:
        raise DataError(source, nodes.start_mark.line + 1, "principles", "expected a non-empty list of principles")
    principles = []
    for i, (item, node) in enumerate(zip(items, nodes.value)):
        line = node.start_mark.line + 1
        where = f"principles[{i}]"
        if not isinstance(item, dict):
            raise DataError(source, line, where, f"expected a mapping with critique and revision, got {item!r}")
        name = item.get("name", f"principle-{i + 1}")
        label = f"(principle {name!r})"
        for key in sorted(set(item) - set(_PRINCIPLE_KEYS)):
            raise DataError(source, line, f"{where}.{key}", f"unknown key {label}; expected name, critique, revision")
        for key in _PRINCIPLE_KEYS:
            value = item.get(key, name if key == "name" else None)
            if value is None:
                raise DataError(source, line, f"{where}.{key}", f"missing {label}")
            if not isinstance(value, str) or not value.strip():
                raise DataError(source, line, f"{where}.{key}", f"expected non-empty text, got {value!r} {label}")
        principles.append(Principle(str(name), item["critique"].strip(), item["revision"].strip()))
    names = [p.name for p in principles]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DataError(source, None, "principles", f"principle {duplicate!r} is defined twice")
    return principles


# ---- selection by embedding similarity -----------------------------------------------------------
class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from an encoder backbone (default MiniLM, the
    reward backbone; all-MiniLM-L6-v2 was trained for exactly this use)."""

    def __init__(self, name: str = DEFAULT_REWARD_BACKBONE, batch_size: int = 32):
        from transformers import AutoModel

        self.tokenizer = load_tokenizer(name, padding_side="right")
        try:
            self.model = AutoModel.from_pretrained(resolve_model(name)).eval().requires_grad_(False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load embedding model '{name}': {str(exc).splitlines()[0]}") from None
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        parts = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            parts.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(parts) if parts else torch.zeros(0, 0)


def select_by_similarity(
    feedback: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The refinement most similar to its feedback (Scheurer et al. 2022): for each record r,
    argmax_j cos(e(f_r), e(x_rj)) over its valid candidates.

    feedback (R, H), candidates (R, N, H), valid (R, N) bool -> (index (R,), similarity (R,)); a
    record with no valid candidate gets index −1 and similarity −inf. Ties keep the earlier one."""
    sims = torch.nn.functional.cosine_similarity(candidates, feedback[:, None, :], dim=-1)
    sims = sims.masked_fill(~valid, float("-inf"))
    best, index = sims.max(dim=-1)
    return torch.where(valid.any(-1), index, torch.full_like(index, -1)), best


def critique_turns(prompt, answer: str, principle: Principle) -> list[tuple[str, str]]:
    """The conversation whose next assistant turn is the critique of ``answer`` under ``principle``."""
    return [("user", prompt_text(prompt)), ("assistant", answer), ("user", principle.critique)]


def revision_turns(prompt, answer: str, principle: Principle, critique: str) -> list[tuple[str, str]]:
    """... and whose next assistant turn is the revision, after the critique."""
    return critique_turns(prompt, answer, principle) + [("assistant", critique), ("user", principle.revision)]


def revision_preferences(rows: list[dict]) -> list[Preference]:
    """(revised ≻ original) for every row whose revision is a different, non-empty text."""
    return [
        Preference(r["prompt"], r["revision"], r["original"], annotator="ai:constitution")
        for r in rows
        if r["original"].strip() and r["revision"].strip() and r["revision"].strip() != r["original"].strip()
    ]
