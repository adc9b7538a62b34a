"""Feedback record types (Section 7.3.2), with TRL column names.

A *prompt* (the paper's context ``c``) is either a string or a list of chat messages
(``{"role": ..., "content": ...}`` dicts). A *completion* (an output ``o``) is likewise a string or
a message list in TRL's conversational form, e.g. ``chosen=[{"role": "assistant", "content": "..."}]``.

Every record validates itself on construction; :meth:`from_dict` turns a raw row into a record and
reports a problem as a :class:`~rlhflab.errors.DataError` naming the source, line and field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from rlhflab.errors import ConfigError, DataError

Text = str | list  # a string or a list of chat messages


class _Invalid(Exception):
    """A field-level problem, turned into a DataError by whoever knows the source and line."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


# ---- field checks -------------------------------------------------------------------------------


def _check_messages(value: Any, field: str) -> list[dict]:
    if not value:
        raise _Invalid(field, "message list is empty")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _Invalid(field, f"message {i} is {type(m).__name__}, expected an object with 'role' and 'content'")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise _Invalid(field, f"message {i} needs a string '{key}'")
        messages.append(dict(m))
    if not any(m["content"].strip() for m in messages):
        raise _Invalid(field, "every message is empty")
    return messages


def _check_prompt(value: Any, field: str = "prompt") -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise _Invalid(field, "is empty")
        return value
    if isinstance(value, (list, tuple)):
        return _check_messages(value, field)
    raise _Invalid(field, f"expected a string or a list of messages, got {type(value).__name__}")


def _check_completion(value: Any, field: str) -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise _Invalid(field, "is empty")
        return value
    if isinstance(value, (list, tuple)):
        messages = _check_messages(value, field)
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise _Invalid(field, "has no non-empty assistant message")
        return messages
    raise _Invalid(field, f"expected a string or a list of messages, got {type(value).__name__}")


def _check_number(value: Any, field: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    # bool is an int subclass, but "true" is not a score.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(field, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise _Invalid(field, f"is {value}, expected a finite number")
    return float(value)


def _check_optional_str(value: Any, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Invalid(field, f"expected a string, got {type(value).__name__}")
    return value


def parse_scale(scale: str) -> tuple[str, int | tuple[str, ...] | None]:
    """Split a rating scale into ``(kind, parameter)`` (Section 7.3.2, rating feedback).

    ``"binary"`` → ``("binary", None)``; ``"likert:5"`` → ``("likert", 5)``;
    ``"continuous"`` → ``("continuous", None)``; ``"categorical:bad|ok|good"`` →
    ``("categorical", ("bad", "ok", "good"))``. Raises ConfigError for anything else.
    """
    if not isinstance(scale, str):
        raise ConfigError(f"rating scale must be a string, got {type(scale).__name__}")
    kind, _, param = scale.partition(":")
    if kind in ("binary", "continuous") and not param:
        return kind, None
    if kind == "likert":
        if param.isdigit() and int(param) >= 2:
            return kind, int(param)
        raise ConfigError(f"rating scale '{scale}': likert needs an integer K >= 2, e.g. 'likert:5'")
    if kind == "categorical":
        names = tuple(param.split("|"))
        if len(names) >= 2 and all(n.strip() for n in names):
            return kind, names
        raise ConfigError(f"rating scale '{scale}': categorical needs >= 2 names, e.g. 'categorical:bad|ok|good'")
    raise ConfigError(
        f"unknown rating scale '{scale}'; use 'binary', 'likert:K', 'continuous' or 'categorical:a|b|...'"
    )


def _check_score(score: Any, scale: str) -> float:
    score = _check_number(score, "score")
    try:
        kind, param = parse_scale(scale)
    except ConfigError as e:
        raise _Invalid("scale", str(e)) from None
    if kind == "binary" and score not in (0.0, 1.0):
        raise _Invalid("score", f"is {score:g}, but scale 'binary' allows only 0 or 1")
    if kind == "likert" and (score != int(score) or not 1 <= score <= param):
        raise _Invalid("score", f"is {score:g}, but scale '{scale}' allows integers 1..{param}")
    if kind == "categorical" and (score != int(score) or not 0 <= score < len(param)):
        raise _Invalid("score", f"is {score:g}, but scale '{scale}' allows category indices 0..{len(param) - 1}")
    return score


# ---- records ------------------------------------------------------------------------------------


class _Record:
    kind: ClassVar[str]

    def __post_init__(self):
        try:
            self._validate()
        except _Invalid as e:
            raise DataError(f"<{type(self).__name__}>", None, e.field, e.problem) from None

    def _validate(self) -> None:  # overridden; normalises fields in place
        raise NotImplementedError

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen dataclasses normalise in __post_init__ this way

    def to_dict(self) -> dict:
        """The record as a row with TRL column names (every field present, so rows share a schema)."""
        return dataclasses.asdict(self)

    @classmethod
    def _from_row(cls, row: dict) -> _Record:
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in row]
        if missing:
            raise _Invalid(missing[0], "missing required column")
        return cls(**{f.name: row[f.name] for f in fields if f.name in row})

    @classmethod
    def from_dict(cls, row: dict, source: str = "<dict>", line: int | None = None) -> _Record:
        """Build and validate a record from a row; extra columns are ignored.

        Raises DataError(source, line, field, problem) for a missing column or an invalid value.
        """
        if not isinstance(row, dict):
            raise DataError(source, line, None, f"expected an object (a row of columns), got {type(row).__name__}")
        try:
            record = cls._from_row(row)
        except _Invalid as e:
            raise DataError(source, line, e.field, e.problem) from None
        except DataError as e:
            raise DataError(source, line, e.field, e.problem) from None
        # Where the record came from, for errors found later (e.g. a prompt too long for the policy):
        # (source, line, the column its prompt was read from). Not a field: not saved, not compared.
        field = "messages" if "prompt" not in row and "messages" in row else "prompt"
        object.__setattr__(record, "origin", (source, line, field))
        return record


@dataclass(frozen=True)
class Prompt(_Record):
    """A context ``c`` with no feedback: the input of rollouts. Accepts a ``messages`` column too."""

    prompt: Text
    kind: ClassVar[str] = "prompt"

    def _validate(self):
        self._set("prompt", _check_prompt(self.prompt))

    @classmethod
    def _from_row(cls, row):
        if "prompt" not in row and "messages" in row:
            return cls(prompt=_check_prompt(row["messages"], "messages"))
        return super()._from_row(row)


@dataclass(frozen=True)
class Demonstration(_Record):
    """A prompt and a human-written completion, for supervised fine-tuning (Section 7.4).

    A ``messages`` row is split TRL-style: the prompt is every message before the last, which must
    be an assistant message; the completion is that message's content.

    A ``text`` row (TRL's standard language-modelling type: a text with no prompt) is a
    demonstration with ``prompt=None``: the loss is taken over the whole text, as TRL's SFTTrainer
    takes it over a text row (every token after the first, and EOS). It is saved back as ``text``.
    """

    prompt: Text | None
    completion: Text
    kind: ClassVar[str] = "demonstration"

    def _validate(self):
        if self.prompt is None:  # a whole text (language modelling)
            if not isinstance(self.completion, str):
                raise _Invalid("text", f"expected a string, got {type(self.completion).__name__}")
            self._set("completion", _check_completion(self.completion, "text"))
            return
        self._set("prompt", _check_prompt(self.prompt))
        self._set("completion", _check_completion(self.completion, "completion"))

    def to_dict(self) -> dict:
        return {"text": self.completion} if self.prompt is None else super().to_dict()

    @classmethod
    def _from_row(cls, row):
        if row.get("prompt") is None and row.get("messages") is None and row.get("text") is not None:
            return cls(prompt=None, completion=row["text"])
        if "prompt" not in row and "messages" in row:
            messages = _check_messages(row["messages"], "messages") if isinstance(row["messages"], list) else None
            if messages is None:
                raise _Invalid("messages", f"expected a list of messages, got {type(row['messages']).__name__}")
            if len(messages) < 2 or messages[-1]["role"] != "assistant":
                raise _Invalid("messages", "needs at least one prompt message followed by a final assistant message")
            return cls(prompt=_check_prompt(messages[:-1], "messages"), completion=messages[-1]["content"])
        return super()._from_row(row)


@dataclass(frozen=True)
class Preference(_Record):
    """A pairwise preference ``chosen ≻ rejected`` for one prompt (Section 4.2, Eq. 8).

    ``margin`` is an optional strength of preference (e.g. a rating difference); ``annotator`` names
    who gave the label, so pools of annotators stay visible (Section 5.1, marginalisation).
    """

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    annotator: str | None = None
    kind: ClassVar[str] = "preference"

    def _validate(self):
        self._set("prompt", _check_prompt(self.prompt))
        self._set("chosen", _check_completion(self.chosen, "chosen"))
        self._set("rejected", _check_completion(self.rejected, "rejected"))
        if self.rejected == self.chosen:
            # One text both preferred and dispreferred: no signal, and a DPO-style loss sees a zero
            # margin it cannot move. Producers of pairs (annotators, RSO) skip such pairs instead.
            raise _Invalid("rejected", "is identical to 'chosen' (a pair with no preference carries no signal)")
        self._set("margin", _check_number(self.margin, "margin", optional=True))
        self._set("annotator", _check_optional_str(self.annotator, "annotator"))


@dataclass(frozen=True)
class Ranking(_Record):
    """A ranking of ``k >= 2`` completions, best first (Plackett-Luce, Section 7.5).

    ``ties[i]`` is the rank group of ``completions[i]``: non-decreasing non-negative integers, equal
    values are tied. ``None`` means a strict order.
    """

    prompt: Text
    completions: list
    ties: list[int] | None = None
    annotator: str | None = None
    kind: ClassVar[str] = "ranking"

    def _validate(self):
        self._set("prompt", _check_prompt(self.prompt))
        if not isinstance(self.completions, (list, tuple)):
            raise _Invalid("completions", f"expected a list of completions, got {type(self.completions).__name__}")
        if len(self.completions) < 2:
            raise _Invalid("completions", f"a ranking needs at least 2 completions, got {len(self.completions)}")
        self._set("completions", [_check_completion(c, f"completions[{i}]") for i, c in enumerate(self.completions)])
        if self.ties is not None:
            ties = self.ties
            if not isinstance(ties, (list, tuple)):
                raise _Invalid("ties", f"expected a list of integers, got {type(ties).__name__}")
            if len(ties) != len(self.completions):
                raise _Invalid("ties", f"has {len(ties)} entries for {len(self.completions)} completions")
            for i, t in enumerate(ties):
                if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                    raise _Invalid("ties", f"entry {i} is {t!r}, expected a non-negative integer rank group")
                if i and t < ties[i - 1]:
                    raise _Invalid("ties", f"decreases at entry {i} ({ties[i - 1]} -> {t}); completions are best first")
            self._set("ties", list(ties))
        self._set("annotator", _check_optional_str(self.annotator, "annotator"))


@dataclass(frozen=True)
class Samples(_Record):
    """Completions sampled from a policy for one prompt, in no particular order: the output of
    ``rlhflab sample`` and the input of ``rlhflab annotate`` (Figure 5: outputs awaiting feedback)."""

    prompt: Text
    completions: list
    kind: ClassVar[str] = "samples"

    def _validate(self):
        self._set("prompt", _check_prompt(self.prompt))
        if not isinstance(self.completions, (list, tuple)) or not self.completions:
            raise _Invalid("completions", "expected a non-empty list of completions")
        # A policy may legitimately produce an empty completion; annotation skips those.
        self._set(
            "completions",
            [
                c if isinstance(c, str) else _check_completion(c, f"completions[{i}]")
                for i, c in enumerate(self.completions)
            ],
        )


@dataclass(frozen=True)
class Rating(_Record):
    """An absolute score for one completion (Section 7.3.2, rating feedback; Eq. 7 regresses on it).

    ``scale``: ``"binary"`` (0/1), ``"likert:K"`` (integers 1..K), ``"continuous"`` (any finite
    number) or ``"categorical:a|b|c"`` (the score is the category's index). ``attribute``: what the
    score rates (``helpful``, ``harmless``, ...; the feedback app's attribute Likerts), one head each
    of a multi-attribute reward model (:mod:`rlhflab.rewards.heads`); None for one overall score.
    """

    prompt: Text
    completion: Text
    score: float
    scale: str = "continuous"
    annotator: str | None = None
    attribute: str | None = None
    kind: ClassVar[str] = "rating"

    def _validate(self):
        self._set("prompt", _check_prompt(self.prompt))
        self._set("completion", _check_completion(self.completion, "completion"))
        if not isinstance(self.scale, str):
            raise _Invalid("scale", f"expected a string, got {type(self.scale).__name__}")
        self._set("score", _check_score(self.score, self.scale))
        self._set("annotator", _check_optional_str(self.annotator, "annotator"))
        self._set("attribute", _check_optional_str(self.attribute, "attribute"))
        if self.attribute is not None and not self.attribute.strip():
            raise _Invalid("attribute", "is empty")


@dataclass(frozen=True)
class LanguageFeedback(_Record):
    """A free-text critique of one completion (Section 7.3.2, language feedback), optionally with the
    annotator's ``correction``: the completion rewritten as it should have been (a demonstration)."""

    prompt: Text
    completion: Text
    feedback: str
    annotator: str | None = None
    correction: Text | None = None
    kind: ClassVar[str] = "language_feedback"

    def _validate(self):
        self._set("prompt", _check_prompt(self.prompt))
        self._set("completion", _check_completion(self.completion, "completion"))
        if not isinstance(self.feedback, str):
            raise _Invalid("feedback", f"expected a string, got {type(self.feedback).__name__}")
        if not self.feedback.strip():
            raise _Invalid("feedback", "is empty")
        self._set("annotator", _check_optional_str(self.annotator, "annotator"))
        if self.correction is not None:
            self._set("correction", _check_completion(self.correction, "correction"))


RECORD_TYPES: dict[str, type] = {
    "prompt": Prompt,
    "demonstration": Demonstration,
    "preference": Preference,
    "ranking": Ranking,
    "rating": Rating,
    "language_feedback": LanguageFeedback,
    "samples": Samples,
}


def record_type(kind: str) -> type:
    """The record class for ``kind`` (a key of RECORD_TYPES); ConfigError otherwise."""
    try:
        return RECORD_TYPES[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown record kind {kind!r}; expected one of {', '.join(RECORD_TYPES)}") from None


def ranking_to_preferences(ranking: Ranking) -> list[Preference]:
    """The ``k(k-1)/2`` pairwise preferences implied by a ranking (Section 4.1: "Ranking N outputs
    provides N(N-1)/2 pairwise comparisons"); tied pairs carry no preference and are skipped, as are
    pairs of identical completions (a ranking may list one text twice)."""
    groups = ranking.ties if ranking.ties is not None else list(range(len(ranking.completions)))
    out = []
    for i, better in enumerate(ranking.completions):
        for j in range(i + 1, len(ranking.completions)):
            if groups[i] < groups[j] and better != ranking.completions[j]:
                out.append(Preference(ranking.prompt, better, ranking.completions[j], annotator=ranking.annotator))
    return out
