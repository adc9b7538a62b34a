"""The prompt sets shipped with the package, for the default task.

The default task (Section 4.1): a small instruct model writes a short reply and the oracle R* is the
sentiment of that reply. ``train`` holds 240 everyday-life prompts that invite neutral or negative
replies (so the initial policy leaves headroom); ``unseen`` holds 80 formal workplace / technical /
news requests, a different domain and style, for measuring out-of-distribution contexts
(Sections 5.1 and 6.2: context coverage κ).
"""

from __future__ import annotations

from importlib import resources

from rlhflab.data.readers import _jsonl_rows, read_records
from rlhflab.data.records import Prompt
from rlhflab.errors import ConfigError

PROMPT_SETS = ("train", "unseen")


def load_prompt_set(name: str) -> list[Prompt]:
    """The shipped prompt set ``name`` ("train" or "unseen") as Prompt records, each prompt one user
    turn (a conversational prompt): requests to an instruct model, which the chat template renders
    under the default ``use_chat_template="auto"`` (and plain with ``False``), as it always has."""
    if name not in PROMPT_SETS:
        raise ConfigError(f"unknown prompt set {name!r}; expected one of {', '.join(PROMPT_SETS)}")
    resource = resources.files("rlhflab").joinpath("assets", f"prompts_{name}.jsonl")
    source = f"rlhflab/assets/prompts_{name}.jsonl"
    rows = _jsonl_rows(resource.read_text(encoding="utf-8"), source)
    return [_user_turn(Prompt.from_dict(row, source, n)) for n, row in rows]


def _user_turn(prompt: Prompt) -> Prompt:
    turn = Prompt([{"role": "user", "content": prompt.prompt}])
    object.__setattr__(turn, "origin", prompt.origin)
    return turn


def load_prompts(spec: str, limit: int = 0) -> list[Prompt]:
    """``train`` / ``unseen`` (the shipped prompt sets) or a prompts file; the first ``limit`` (0: all)."""
    prompts = load_prompt_set(spec) if spec in PROMPT_SETS else read_records(spec, "prompt")
    return prompts[:limit] if limit > 0 else prompts


def load_evaluation_sets(seen: str | None, unseen: str | None, limit: int = 0) -> dict[str, list[Prompt]]:
    """The seen (covered by feedback) and unseen evaluation contexts, each by a :func:`load_prompts`
    spec; a set given as None, "" or "none" is left out."""
    specs = {"seen": seen, "unseen": unseen}
    return {name: load_prompts(spec, limit) for name, spec in specs.items() if spec and spec.lower() != "none"}
