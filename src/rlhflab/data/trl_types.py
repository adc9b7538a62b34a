"""TRL's dataset types, read as TRL reads them, and their conversion to rlhflab's record kinds.

TRL (https://huggingface.co/docs/trl/dataset_formats) names six *types* by their columns, each in
a *standard* (strings) or *conversational* (message lists) format:

    language modeling      text | messages
    prompt-only            prompt
    prompt-completion      prompt, completion
    preference             prompt, chosen, rejected   (or chosen, rejected: an implicit prompt)
    unpaired preference    prompt, completion, label  (label: true = desirable; KTO's data)
    stepwise supervision   prompt, completions, labels (one label per reasoning step; PRM data)

A record kind reads a type only where the conversion is faithful; otherwise the reader refuses the
file in one line naming the type and the command that takes it, never training on the wrong rows
(an unpaired row's ``label: false`` completion is not a demonstration; stepwise ``completions`` are
the steps of *one* solution, not completions ranked best first).
"""

from __future__ import annotations

import dataclasses

from rlhflab.data.records import _check_messages, _Invalid, record_type

LANGUAGE_MODELING = "language modeling"
PROMPT_ONLY = "prompt-only"
PROMPT_COMPLETION = "prompt-completion"
PREFERENCE = "preference"
UNPAIRED_PREFERENCE = "unpaired preference"
STEPWISE_SUPERVISION = "stepwise supervision"
TRL_TYPES = (
    LANGUAGE_MODELING,
    PROMPT_ONLY,
    PROMPT_COMPLETION,
    PREFERENCE,
    UNPAIRED_PREFERENCE,
    STEPWISE_SUPERVISION,
)

# Where a string transcript hands over to the reply: TRL's Anthropic-style turn marker. An implicit
# prompt of two transcripts ends at the last such marker they share, so the reply starts clean.
ASSISTANT_MARKERS = ("\n\nAssistant:",)

# Which command takes each type, for the one-line refusal.
TAKEN_BY = {
    LANGUAGE_MODELING: "`rlhflab sft` takes it (and ppo's --ptx_data): 'text' rows are trained on whole, "
    "'messages' rows on their last assistant turn",
    PROMPT_ONLY: "the policy-optimisation commands (ppo, grpo, rloo, raft, ...) take it as --prompts",
    PROMPT_COMPLETION: "`rlhflab sft` takes it",
    PREFERENCE: "dpo, ipo, slic, sft-positive and `reward --feedback preference` take it; rrhf and pro read it as "
    "rankings of two; kto unpairs it",
    UNPAIRED_PREFERENCE: "`rlhflab kto` takes it; `reward --feedback rating` reads it as binary ratings",
    STEPWISE_SUPERVISION: "no command takes it yet (its labels grade the steps of one solution, for a process "
    "reward model)",
}

# The types each record kind reads (beside its own columns): the faithful conversions.
READS = {
    "prompt": set(TRL_TYPES),
    "demonstration": {PROMPT_COMPLETION, LANGUAGE_MODELING},
    "preference": {PREFERENCE},
    "ranking": {PROMPT_ONLY, PREFERENCE},  # prompt-only rows carrying the ranking's own 'completions'
    "samples": {PROMPT_ONLY},
    "rating": {PROMPT_COMPLETION, UNPAIRED_PREFERENCE},
    "language_feedback": {PROMPT_COMPLETION},
}


def _has(row: dict, *columns: str) -> bool:
    # A None cell is an absent column: Arrow files give every row every column of the file.
    return all(row.get(c) is not None for c in columns)


def row_type(row: dict) -> str | None:
    """The TRL type of one row by its columns (None: none of TRL's). ``messages`` beside ``prompt``
    (H4's ``train_sft``) is language modelling: the messages hold the prompt too."""
    if _has(row, "prompt", "completions", "labels"):
        return STEPWISE_SUPERVISION
    if _has(row, "prompt", "completion", "label"):
        return UNPAIRED_PREFERENCE
    if _has(row, "chosen", "rejected"):
        return PREFERENCE
    if _has(row, "messages") or _has(row, "text"):
        return LANGUAGE_MODELING
    if _has(row, "prompt", "completion"):
        return PROMPT_COMPLETION
    if _has(row, "prompt"):
        return PROMPT_ONLY
    return None


def _first_row(rows) -> dict | None:
    for row in rows:
        row = row[1] if isinstance(row, tuple) else row  # (number, row) pairs as readers yield them
        return row if isinstance(row, dict) else None
    return None


def dataset_type(rows) -> str | None:
    """The TRL type (a name of ``TRL_TYPES``) of a row set: a list of dicts, a ``datasets.Dataset``
    or (number, row) pairs; judged on the first row, as one dataset holds one type. None: no TRL type."""
    row = _first_row(rows)
    return row_type(row) if row is not None else None


def is_conversational(row: dict) -> bool:
    """Whether a row is in TRL's conversational format: its text columns hold message lists."""
    columns = ("messages", "prompt", "completion", "chosen", "rejected", "completions")
    return any(isinstance(row.get(c), list) and row[c] and isinstance(row[c][0], dict) for c in columns)


def dataset_format(rows) -> str | None:
    """``"conversational"`` or ``"standard"`` (TRL's two formats), judged on the first row."""
    row = _first_row(rows)
    return None if row is None else ("conversational" if is_conversational(row) else "standard")


def extract_prompt(chosen, rejected) -> tuple:
    """(prompt, chosen, rejected) of an implicit-prompt pair: the prompt is their longest common
    prefix, as TRL's ``extract_prompt`` takes it. Message lists share whole turns (turn-aligned);
    strings split after the last common assistant marker ("\\n\\nAssistant:") where they share one,
    else at the last word boundary of their common prefix, the whitespace going to the replies (TRL
    splits mid-word where the replies share a word's first letters). Raises _Invalid."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen, rejected = _check_messages(chosen, "chosen"), _check_messages(rejected, "rejected")
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise _Invalid("chosen", "shares no leading turn with 'rejected': no implicit prompt to extract")
        return chosen[:n], chosen[n:], rejected[n:]
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise _Invalid("chosen", "and 'rejected' must both be strings or both message lists for an implicit prompt")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    marker_end = max((common.rfind(m) + len(m) for m in ASSISTANT_MARKERS if m in common), default=-1)
    split = marker_end if marker_end > 0 else n
    if marker_end < 0 and n < min(len(chosen), len(rejected)) and common and not common[-1].isspace():
        if not (chosen[n].isspace() or rejected[n].isspace()):  # the replies differ inside a word
            split = max(i for i, ch in enumerate(" " + common) if ch.isspace())
    if marker_end < 0:
        while split > 0 and common[split - 1].isspace():  # the boundary's whitespace opens the replies
            split -= 1
    if not common[:split].strip():
        raise _Invalid("chosen", "shares no common prefix with 'rejected': no implicit prompt to extract")
    return common[:split], chosen[split:], rejected[split:]


def _prompt_of_messages(messages) -> list:
    """The prompt of a conversation: every turn before its last assistant turn (all, if it ends on
    another role)."""
    messages = _check_messages(messages, "messages")
    if messages[-1]["role"] != "assistant":
        return messages
    if len(messages) < 2:
        raise _Invalid("messages", "holds only an assistant turn: no prompt")
    return messages[:-1]


def refusal(kind: str, trl_type: str | None, row: dict) -> str | None:
    """Why ``kind`` records cannot be read from rows of ``trl_type`` (None: they can)."""
    if trl_type is None:
        return None
    columns = ", ".join(c for c in row if row[c] is not None)
    if trl_type == LANGUAGE_MODELING and not _has(row, "messages") and kind != "demonstration":
        return (
            f"rows are TRL's standard language-modeling type ({columns}): a text with no prompt, which {kind} "
            f"records cannot be read from; {TAKEN_BY[LANGUAGE_MODELING]}"
        )
    if trl_type in READS[kind]:
        return None
    if trl_type not in (UNPAIRED_PREFERENCE, STEPWISE_SUPERVISION) and _own_columns(kind) & set(row):
        return None  # a row of the kind's own with a column missing: the record names that column
    return f"rows are TRL's {trl_type} type ({columns}), which {kind} records cannot be read from; {TAKEN_BY[trl_type]}"


def _own_columns(kind: str) -> set[str]:
    """The required columns of ``kind``'s record beside the prompt (those that say a row is one)."""
    fields = dataclasses.fields(record_type(kind))
    return {f.name for f in fields if f.default is dataclasses.MISSING} - {"prompt"}


def to_record_row(row: dict, kind: str, trl_type: str | None) -> tuple[dict, set[str]]:
    """The row in the columns of ``kind``'s record, and the columns of ``row`` it used. Raises _Invalid."""
    fields = {f.name for f in dataclasses.fields(record_type(kind))}
    if trl_type == LANGUAGE_MODELING:
        if not _has(row, "messages"):  # a standard text: a whole-text Demonstration (records.py)
            return {"text": row["text"]}, {"text"}
        if kind == "prompt":
            return {"prompt": _prompt_of_messages(row["messages"])}, {"messages"}
        return {"messages": row["messages"]}, {"messages"}  # the Demonstration split (records.py)
    if trl_type == PREFERENCE and kind in ("prompt", "preference", "ranking"):
        prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
        used = {"chosen", "rejected"} | ({"prompt"} if prompt is not None else set())
        if prompt is None:
            prompt, chosen, rejected = extract_prompt(chosen, rejected)
        if kind == "prompt":  # the pair is used only where the prompt is extracted from it
            return {"prompt": prompt}, {"prompt"} if "prompt" in used else used
        extras = {k: row[k] for k in fields & set(row) - {"prompt", "chosen", "rejected", "completions"}}
        if kind == "ranking":
            return {"prompt": prompt, "completions": [chosen, rejected], **extras}, used | set(extras)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extras}, used | set(extras)
    if trl_type == UNPAIRED_PREFERENCE and kind == "rating":
        label = row["label"]
        if not isinstance(label, bool):
            raise _Invalid("label", f"expected true or false, got {label!r}")
        converted = {"prompt": row["prompt"], "completion": row["completion"], "score": float(label)}
        return {**converted, "scale": "binary"}, {"prompt", "completion", "label"}
    used = fields & set(row)
    if kind in ("prompt", "demonstration") and "prompt" not in row and "messages" in row:
        used |= {"messages"}
    return row, used
