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
    """The shipped prompt set ``name`` ("train" or "unseen") as Prompt records."""
    if name not in PROMPT_SETS:
        raise ConfigError(f"unknown prompt set {name!r}; expected one of {', '.join(PROMPT_SETS)}")
    resource = resources.files("rlhflab").joinpath("assets", f"prompts_{name}.jsonl")
    source = f"rlhflab/assets/prompts_{name}.jsonl"
    return [Prompt.from_dict(row, source, n) for n, row in _jsonl_rows(resource.read_text(encoding="utf-8"), source)]


def load_prompts(spec: str, limit: int = 0) -> list[Prompt]:
    """``train`` / ``unseen`` (the shipped prompt sets) or a prompts file; the first ``limit`` (0: all)."""
    prompts = load_prompt_set(spec) if spec in PROMPT_SETS else read_records(spec, "prompt")
    return prompts[:limit] if limit > 0 else prompts
