"""The kinds of feedback the app collects (Section 7.3.2), and what a valid answer to each looks like.

An annotator sees an item's completions in a shuffled order (``shown_order[displayed position] =
original index``), so that a preference for whatever is shown first, a position bias the paper warns
about ("the order of examples presented to the annotator may bias the results"), does not become a
preference for whichever completion the sampler happened to emit first. The page posts answers in
displayed positions; :func:`resolve_label` maps them back to original indices before they are
stored, and everything downstream (gold checks, agreement, export) reads original indices only.

Gold items carry a known answer, so an annotator's agreement with it (the paper's expert-annotator
agreement, Section 7.3.3) can be measured; :func:`gold_agrees` is that comparison.

A ``turns`` item is one multi-turn conversation: a chat prompt (a list of ``{"role", "content"}``
messages) and one completion, the reply that ends it. The annotator gives every assistant turn (the
prompt's earlier ones and the completion) a good / bad verdict: ``{"turns": [true, false, ...]}`` in
the order the assistant turns come (:func:`conversation`, :func:`assistant_turns`). A turns gold
item's answer is that list, and a label agrees with it only if every verdict does.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from rlhflab.app.text import first_unstorable
from rlhflab.data import Samples, read_rows
from rlhflab.errors import DataError, RlhflabError

TASKS = ("pairwise", "ranking", "rating", "binary", "critique", "turns")
NO_GOLD_TASKS = ("critique",)
ROLES = ("admin", "annotator", "reviewer")
PAIRWISE_CHOICES = ("left", "right", "tie", "both_bad")
RATING_MIN, RATING_MAX = 1, 7  # the rating scale is Likert 1..7 ("likert:7" in exports)
DEFAULT_ATTRIBUTES = ("overall",)
MAX_CRITIQUE_CHARS = 10_000
# How far apart two 1..7 ratings may be and still count as agreeing (with gold, or with each other).
RATING_TOLERANCE = 1


class LabelError(RlhflabError):
    """An answer that does not fit its task (the web app answers it with HTTP 422)."""


def _index(value: Any, k: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < k:
        raise LabelError(f"{what} must be an integer from 0 to {k - 1}, got {value!r}")
    return value


def _permutation(value: Any, k: int, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != k:
        raise LabelError(f"{what} must list all {k} completions, best first, got {value!r}")
    order = [_index(v, k, what) for v in value]
    if sorted(order) != list(range(k)):
        raise LabelError(f"{what} must name each of the {k} completions exactly once, got {value!r}")
    return order


def _rating(value: Any, what: str) -> int:
    # A form posts "5"; JSON posts 5. Either is a rating; "true", 5.5 or "²" is not (str.isdigit()
    # and int() take Unicode digits: ASCII ones only here).
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not RATING_MIN <= value <= RATING_MAX:
        raise LabelError(f"{what} must be an integer from {RATING_MIN} to {RATING_MAX}, got {value!r}")
    return value


def _scores(value: Any, attributes: list[str], what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise LabelError(f"{what} must map each attribute ({', '.join(attributes)}) to a rating")
    unknown = sorted(set(value) - set(attributes))
    if unknown:
        raise LabelError(f"{what} has an unknown attribute '{unknown[0]}'; expected {', '.join(attributes)}")
    missing = [a for a in attributes if a not in value]
    if missing:
        raise LabelError(f"{what} has no rating for '{missing[0]}'")
    return {a: _rating(value[a], f"{what}['{a}']") for a in attributes}


def _boolean(value: Any, what: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise LabelError(f"{what} must be true or false, got {value!r}")
    return value


def _verdicts(value: Any, k: int) -> list[bool]:
    # Strict: JSON true / false only (the page's form answers are turned into booleans by its route).
    if not isinstance(value, list) or len(value) != k:
        got = f"{len(value)}" if isinstance(value, list) else f"a {type(value).__name__}"
        raise LabelError(f"turns must list a verdict (true or false) for each of the {k} assistant turns, got {got}")
    for i, verdict in enumerate(value):
        if not isinstance(verdict, bool):
            raise LabelError(f"turns[{i}] must be true or false, got {verdict!r}")
    return list(value)


def _text(value: Any, what: str, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise LabelError(f"{what} is empty")
        return None
    if not isinstance(value, str):
        raise LabelError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > MAX_CRITIQUE_CHARS:
        raise LabelError(f"{what} has {len(value)} characters; at most {MAX_CRITIQUE_CHARS} are allowed")
    return value


def _fields(value: Any, expected: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise LabelError(f"a label must be an object with {', '.join(expected)}, got {type(value).__name__}")
    unknown = sorted(set(value) - set(expected))
    if unknown:
        raise LabelError(f"unknown label field '{unknown[0]}'; expected {', '.join(expected)}")
    return value


def check_task(task: str) -> str:
    if task not in TASKS:
        raise LabelError(f"unknown task '{task}'; choose from {', '.join(TASKS)}")
    return task


def conversation(prompt: list[dict], completion: Any) -> list[dict]:
    """A turns item as one conversation: the prompt's messages, then the completion's (a string
    completion is one assistant message)."""
    reply = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
    return [*prompt, *reply]


def assistant_turns(messages: list[dict]) -> list[int]:
    """The indices of a conversation's assistant messages: the turns a turns label judges, in order."""
    return [i for i, message in enumerate(messages) if message.get("role") == "assistant"]


def answer_size(task: str, prompt: Any, completions: list) -> int:
    """The ``k`` an answer to an item is checked against (:func:`validate_label`): the number of
    completions shown, or for a turns item the number of assistant turns of its conversation."""
    if task == "turns":
        return len(assistant_turns(conversation(prompt, completions[0])))
    return len(completions)


def conversation_problem(prompt: Any) -> str | None:
    """Why ``prompt`` (as a Samples record holds it) cannot open a turns item; None if it can. The
    export makes one row per assistant turn whose prompt is every message before it, so an assistant
    turn may neither open the conversation nor be empty."""
    if isinstance(prompt, str):
        return (
            "is a string, but a turns item is a conversation (a list of {role, content} messages); "
            "to label a single reply, use --task binary"
        )
    if prompt[0]["role"] == "assistant":
        return "opens with an assistant turn: a turns conversation opens with a system or user message"
    for i, message in enumerate(prompt):
        if message["role"] == "assistant" and not message["content"].strip():
            return f"message {i} is an empty assistant turn: there is nothing to judge"
    return None


def check_conversations(source: str | os.PathLike) -> None:
    """Refuse a samples file a turns project cannot be made from, in one line naming the file, the
    line and the field: a row whose prompt is not a conversation (see :func:`conversation_problem`).
    Rows that are no Samples record are left to its reader to report."""
    name, rows = read_rows(source)
    for line, row in rows:
        if not isinstance(row, dict) or "prompt" not in row:
            continue
        try:
            prompt = Samples.from_dict(row, name, line).prompt
        except DataError:
            continue  # the samples reader says what is wrong with it
        problem = conversation_problem(prompt)
        if problem:
            raise DataError(name, line, "prompt", problem)


def _usable(completion: Any) -> bool:
    """A completion worth showing: a policy may emit an empty one, which no one can judge."""
    return isinstance(completion, list) or bool(completion.strip())


def _distinct(completions: list) -> list:
    """The usable completions, each text once, in their original order."""
    out: list = []
    for c in completions:
        if _usable(c) and c not in out:
            out.append(c)
    return out


def items_from_samples(task: str, samples: list[Samples]) -> list[tuple[Any, list]]:
    """The ``(prompt, completions)`` items a project of ``task`` makes from sampled completions.

    Pairwise: each record's usable, distinct completions in disjoint pairs (0, 1), (2, 3), ... (an
    odd one out is dropped); ranking: all of them, if there are at least 2; rating, binary, critique
    and turns: one item per usable, distinct completion. A turns record whose prompt is no
    conversation is a LabelError (:func:`check_conversations` names a file's line).
    """
    check_task(task)
    items = []
    for n, record in enumerate(samples, 1):
        problem = conversation_problem(record.prompt) if task == "turns" else None
        if problem:
            raise LabelError(f"samples record {n}: field 'prompt' {problem}")
        completions = _distinct(record.completions)
        if task == "pairwise":
            items += [(record.prompt, completions[i : i + 2]) for i in range(0, len(completions) - 1, 2)]
        elif task == "ranking":
            if len(completions) >= 2:
                items.append((record.prompt, completions))
        else:
            items += [(record.prompt, [c]) for c in completions]
    return items


def read_gold(source: str | os.PathLike, task: str, attributes: list[str]) -> list[tuple[Any, list, Any]]:
    """Gold items ``(prompt, completions, answer)`` from a file of ``{"prompt", "completions",
    "answer"}`` rows (answers in original completion indices, see :func:`validate_gold`).

    Every problem is a one-line DataError naming the file, the line and the field. Pairwise rows
    hold exactly 2 completions; rating, binary and turns rows exactly 1 (the completion judged; a
    turns row's prompt is the conversation before it, and its answer a verdict per assistant turn).
    """
    name, rows = read_rows(source)
    if task in NO_GOLD_TASKS:
        raise DataError(name, None, None, f"{task} projects have no gold answers")
    gold = []
    for line, row in rows:
        unstorable = first_unstorable(row)
        if unstorable:
            raise DataError(name, line, *unstorable)
        record = Samples.from_dict(row, name, line)
        for i, c in enumerate(record.completions):
            if not _usable(c):
                raise DataError(name, line, f"completions[{i}]", "is empty")
        k = len(record.completions)
        if task in ("rating", "binary", "turns") and k != 1:
            raise DataError(name, line, "completions", f"a {task} gold item judges exactly 1 completion, got {k}")
        if task == "ranking" and k < 2:
            raise DataError(name, line, "completions", f"a ranking gold item needs at least 2 completions, got {k}")
        if task in ("pairwise", "ranking") and len(_distinct(record.completions)) != k:
            raise DataError(name, line, "completions", "repeats a completion (a gold order needs distinct texts)")
        if task == "turns":
            problem = conversation_problem(record.prompt)
            if problem:
                raise DataError(name, line, "prompt", problem)
        if "answer" not in row:
            raise DataError(name, line, "answer", "missing required column")
        try:
            answer = validate_gold(
                task, attributes, answer_size(task, record.prompt, record.completions), row["answer"]
            )
        except LabelError as e:
            raise DataError(name, line, "answer" if task != "pairwise" or k == 2 else "completions", str(e)) from None
        gold.append((record.prompt, list(record.completions), answer))
    if not gold:
        raise DataError(name, None, None, "no gold rows (expected {prompt, completions, answer} rows)")
    return gold


def validate_label(task: str, attributes: list[str], k: int, value: Any) -> dict:
    """``value`` as posted by the page (displayed positions), checked and normalised.

    ``k`` is :func:`answer_size`: the number of completions shown (a turns item: its assistant
    turns). Raises LabelError with a one-line reason.
    """
    check_task(task)
    if task == "pairwise":
        choice = _fields(value, ("choice",)).get("choice")
        if choice not in PAIRWISE_CHOICES:
            raise LabelError(f"choice must be one of {', '.join(PAIRWISE_CHOICES)}, got {choice!r}")
        return {"choice": choice}
    if task == "ranking":
        return {"ranking": _permutation(_fields(value, ("ranking",)).get("ranking"), k, "ranking")}
    if task == "rating":
        return {"scores": _scores(_fields(value, ("scores",)).get("scores"), list(attributes), "scores")}
    if task == "binary":
        return {"good": _boolean(_fields(value, ("good",)).get("good"), "good")}
    if task == "turns":
        return {"turns": _verdicts(_fields(value, ("turns",)).get("turns"), k)}
    value = _fields(value, ("critique", "correction"))
    return {
        "critique": _text(value.get("critique"), "critique", required=True),
        "correction": _text(value.get("correction"), "correction", required=False),
    }


def resolve_label(task: str, value: dict, shown_order: list[int]) -> dict:
    """A validated label in original completion indices: what the store keeps.

    Pairwise keeps the displayed ``choice`` (position bias is measured on it) and adds ``winner``,
    the original index of the preferred completion (None for a tie or both bad).
    """
    if task == "pairwise":
        side = {"left": 0, "right": 1}.get(value["choice"])
        return {"choice": value["choice"], "winner": None if side is None else shown_order[side]}
    if task == "ranking":
        return {"ranking": [shown_order[position] for position in value["ranking"]]}
    return dict(value)  # a rating, a verdict, a critique or turn verdicts: about the one completion shown


def validate_gold(task: str, attributes: list[str], k: int, answer: Any) -> Any:
    """A gold answer (original indices) checked and normalised: pairwise the index of the better of
    two completions, ranking the original indices best first, binary a bool, rating ``{attribute:
    1..7}``, turns a bool per assistant turn (``k`` of them, see :func:`answer_size`). Critiques have
    no gold answer."""
    check_task(task)
    if task == "pairwise":
        if k != 2:
            raise LabelError(f"a pairwise gold item needs exactly 2 completions, got {k}")
        return _index(answer, 2, "a pairwise gold answer (the index of the better completion)")
    if task == "ranking":
        return _permutation(answer, k, "a ranking gold answer")
    if task == "rating":
        return _scores(answer, list(attributes), "a rating gold answer")
    if task == "binary":
        return _boolean(answer, "a binary gold answer")
    if task == "turns":
        return _verdicts(answer, k)
    raise LabelError("critique projects have no gold answers (a critique has no single right text)")


def gold_agrees(task: str, gold_answer: Any, stored_value: dict) -> bool:
    """Whether a stored label agrees with a gold answer (expert-annotator agreement, Section 7.3.3).

    Pairwise: the same winner (a tie or "both bad" disagrees). Ranking: the same best completion
    (the full order of close completions is too strict a test of care). Rating: every attribute
    within ±1. Binary: the same verdict. Turns: the same verdict on every assistant turn (one missed
    bad turn is the lapse a check item is there to catch).
    """
    if task == "pairwise":
        return stored_value.get("winner") == gold_answer
    if task == "ranking":
        return bool(stored_value.get("ranking")) and stored_value["ranking"][0] == gold_answer[0]
    if task == "rating":
        scores = stored_value.get("scores", {})
        return all(a in scores and abs(scores[a] - v) <= RATING_TOLERANCE for a, v in gold_answer.items())
    if task == "binary":
        return stored_value.get("good") == gold_answer
    if task == "turns":
        return stored_value.get("turns") == list(gold_answer)
    raise LabelError(f"{task} projects have no gold answers")


def labels_disagree(task: str, values: list[dict]) -> bool:
    """Whether labels of one item (stored values) disagree, for a reviewer's attention.

    Pairwise: different outcomes (a winner, a tie, both bad). Ranking: different best completions.
    Rating: some attribute more than ±1 apart. Binary: different verdicts. Turns: a different verdict
    on any assistant turn. Critiques are free text and never "disagree".
    """
    if len(values) < 2 or task == "critique":
        return False
    if task == "pairwise":
        return len({v["winner"] if v.get("winner") is not None else v.get("choice") for v in values}) > 1
    if task == "ranking":
        return len({v["ranking"][0] for v in values}) > 1
    if task == "rating":
        attributes = set().union(*(v["scores"] for v in values))
        return any(
            max(v["scores"][a] for v in values) - min(v["scores"][a] for v in values) > RATING_TOLERANCE
            for a in attributes
        )
    if task == "turns":
        return len({tuple(v["turns"]) for v in values}) > 1
    return len({v["good"] for v in values}) > 1


def prompt_key(prompt: Any) -> str:
    """A prompt (a string or a list of chat messages) as one string that is equal for equal prompts,
    however the database handed its JSON back (the live sampler's record of prompts used)."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)
