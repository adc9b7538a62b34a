"""Adapters for public feedback datasets and annotation-tool exports, in their published layouts.

Each adapter turns the raw rows of one schema into rows of TRL's types or rlhflab's record columns,
which :func:`rlhflab.data.readers.read_records` then reads as usual; the 1-based source line of
every row travels with it, so errors still name the file and line. ``SCHEMAS`` maps a schema's name
(the value of a ``--format`` option) to its adapter; :func:`detect_schema` recognises a schema by
its first row.

Layouts (from each dataset's card or tool's documentation):
- ``hh-rlhf`` (Anthropic/hh-rlhf): ``chosen``/``rejected`` transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...".
- ``shp`` (stanfordnlp/SHP): ``history``, ``human_ref_A``, ``human_ref_B``, ``labels`` (1: A preferred),
  ``score_A``/``score_B`` (upvotes).
- ``ultrafeedback`` (openbmb/UltraFeedback): ``instruction``, ``completions`` [{``response``,
  ``annotations``: {aspect: {``Rating``, ``Rationale``}}, ``fine-grained_score``, ``overall_score``}].
- ``helpsteer2`` (nvidia/HelpSteer2): one row per response: ``prompt``, ``response`` and five 0-4
  attributes ``helpfulness``, ``correctness``, ``coherence``, ``complexity``, ``verbosity``.
- ``oasst1`` (OpenAssistant/oasst1): flat message trees: ``message_id``, ``parent_id``, ``role``
  (prompter / assistant), ``text``, ``rank`` (0 = best among siblings), ``deleted``.
- ``label-studio``: a JSON export of the "Human preference collection for RLHF" template: tasks
  {``data``: {``prompt``, ``answer1``, ``answer2``}, ``annotations``: [{``result``: [{``type``:
  "pairwise", ``value``: {``selected``: "left" | "right"}}], ``completed_by``, ``was_cancelled``}]}.
- ``argilla``: an Argilla dataset exported to the hub or ``datasets`` (v2 flattened columns: the
  fields, then per question ``Q.responses``, ``Q.responses.users``, ``Q.responses.status``; v1:
  ``Q`` = [{``user_id``, ``value``, ``status``}]). A label question whose answer names a field, or
  a ranking question over fields, gives preferences / rankings of those fields' texts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rlhflab.data.records import Ranking, ranking_to_preferences
from rlhflab.errors import ConfigError, DataError

Rows = list[tuple[int, dict]]


@dataclass(frozen=True)
class Schema:
    """A public layout: which columns it reads, how to recognise it, and which record kinds it gives."""

    name: str
    columns: frozenset[str] | None  # the columns it reads; None: they vary with the export's questions
    kinds: tuple[str, ...]
    detect: Callable[[dict], bool]
    read: Callable[[Rows, str, str], Rows]  # (rows, kind, source) -> rows in record/TRL columns


def _refuse(schema: str, kind: str, kinds: tuple[str, ...], source: str) -> DataError:
    return DataError(source, None, None, f"{schema} rows give {' or '.join(kinds)} records, not {kind}")


# ---- Anthropic/hh-rlhf ------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_turns(transcript: str, field: str, source: str, line: int) -> list[dict]:
    """An hh-rlhf transcript as chat messages (Human -> user, Assistant -> assistant)."""
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(source, line, field, "is not an hh-rlhf transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _read_hh(rows: Rows, kind: str, source: str) -> Rows:
    # Turns, not strings: the shared leading turns become the implicit prompt (turn-aligned).
    out = []
    for line, row in rows:
        turns = {f: hh_turns(row.get(f) or "", f, source, line) for f in ("chosen", "rejected")}
        out.append((line, turns))
    return out


def _is_hh(row: dict) -> bool:
    chosen = row.get("chosen")
    return "prompt" not in row and isinstance(chosen, str) and chosen.lstrip(" ").startswith("\n\nHuman:")


# ---- stanfordnlp/SHP ------------------------------------------------------------------------------


def _read_shp(rows: Rows, kind: str, source: str) -> Rows:
    out = []
    for line, row in rows:
        label = row.get("labels")
        if label not in (0, 1) or isinstance(label, bool):
            raise DataError(source, line, "labels", f"is {label!r}, expected 1 (A preferred) or 0 (B preferred)")
        a, b = row.get("human_ref_A"), row.get("human_ref_B")
        chosen, rejected = (a, b) if label == 1 else (b, a)
        out.append((line, {"prompt": row.get("history"), "chosen": chosen, "rejected": rejected}))
    return out


# ---- openbmb/UltraFeedback --------------------------------------------------------------------------


def _aspect_rating(annotation, aspect: str, source: str, line: int) -> float | None:
    rating = annotation.get("Rating") if isinstance(annotation, dict) else None
    if rating in (None, "N/A"):
        return None  # UltraFeedback marks an aspect it could not rate "N/A"
    try:
        return float(rating)
    except (TypeError, ValueError):
        raise DataError(source, line, "completions", f"aspect {aspect!r} has Rating {rating!r}, not 1-5") from None


def _read_ultrafeedback(rows: Rows, kind: str, source: str) -> Rows:
    """Ratings: one per completion and aspect (``attribute``), Likert 1-5. Rankings and pairs: the
    completions ordered by ``fine-grained_score`` (the mean of the aspect ratings; H4's binarised
    set ranks by it), equal scores tied."""
    out = []
    for line, row in rows:
        completions = row.get("completions")
        if not isinstance(completions, list):
            raise DataError(source, line, "completions", "expected a list of {response, annotations, ...}")
        prompt = row.get("instruction")
        if kind == "rating":
            for c in completions:
                for aspect, annotation in (c.get("annotations") or {}).items():
                    score = _aspect_rating(annotation, aspect, source, line)
                    if score is not None:
                        rating = {"prompt": prompt, "completion": c.get("response"), "score": score}
                        out.append((line, {**rating, "scale": "likert:5", "attribute": aspect}))
            continue
        scored = [(c.get("fine-grained_score"), c.get("response")) for c in completions]
        scored = [(s, r) for s, r in scored if isinstance(s, (int, float)) and not isinstance(s, bool)]
        if len(scored) < 2:
            continue  # fewer than two scored completions: nothing to compare
        scored.sort(key=lambda sr: -sr[0])
        ties = [sorted({-s for s, _ in scored}).index(-s) for s, _ in scored]
        ranking = {"prompt": prompt, "completions": [r for _, r in scored], "ties": ties}
        out.extend(_ranking_rows(line, ranking, kind, source))
    return out


def _is_ultrafeedback(row: dict) -> bool:
    completions = row.get("completions")
    return "instruction" in row and isinstance(completions, list) and all(isinstance(c, dict) for c in completions)


def _ranking_rows(line: int, ranking: dict, kind: str, source: str) -> Rows:
    """A ranking row as itself (kind ranking) or as its pairwise preferences (kind preference)."""
    if kind == "ranking":
        return [(line, ranking)]
    try:
        pairs = ranking_to_preferences(Ranking(**ranking))
    except DataError as e:
        raise DataError(source, line, e.field, e.problem) from None
    return [(line, p.to_dict()) for p in pairs]


# ---- nvidia/HelpSteer2 ---------------------------------------------------------------------------

HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _read_helpsteer(rows: Rows, kind: str, source: str) -> Rows:
    """One rating per attribute; the 0-4 scores as given (``continuous``: a Likert scale here runs 1..K)."""
    out = []
    for line, row in rows:
        for attribute in HELPSTEER_ATTRIBUTES:
            rating = {"prompt": row.get("prompt"), "completion": row.get("response"), "score": row.get(attribute)}
            out.append((line, {**rating, "scale": "continuous", "attribute": attribute}))
    return out


# ---- OpenAssistant/oasst1 -------------------------------------------------------------------------


def _read_oasst(rows: Rows, kind: str, source: str) -> Rows:
    """Per prompter message, its ranked assistant replies best first (``rank`` 0 = best), the
    conversation from the tree's root as the prompt. Deleted and unranked replies are left out."""
    by_id = {row.get("message_id"): (line, row) for line, row in rows}
    children: dict = {}
    for line, row in rows:
        if row.get("role") not in ("prompter", "assistant"):
            raise DataError(source, line, "role", f"is {row.get('role')!r}, expected 'prompter' or 'assistant'")
        if row.get("parent_id") is not None and not row.get("deleted") and row.get("rank") is not None:
            children.setdefault(row["parent_id"], []).append(row)
    out = []
    for parent_id, replies in children.items():
        if parent_id not in by_id or by_id[parent_id][1].get("role") != "prompter":
            continue  # ranked prompter replies to an assistant turn: not completions of a prompt
        replies = sorted((r for r in replies if r.get("role") == "assistant"), key=lambda r: r["rank"])
        if len(replies) < 2:
            continue
        line = by_id[parent_id][0]
        prompt = _oasst_path(by_id, parent_id, source)
        completions = [[{"role": "assistant", "content": r.get("text")}] for r in replies]
        out.extend(_ranking_rows(line, {"prompt": prompt, "completions": completions}, kind, source))
    return out


def _oasst_path(by_id: dict, message_id, source: str) -> list[dict]:
    path, seen = [], set()
    while message_id is not None:
        if message_id in seen or message_id not in by_id:
            raise DataError(source, None, "parent_id", f"message {message_id!r} has a missing or cyclic parent chain")
        seen.add(message_id)
        row = by_id[message_id][1]
        path.append({"role": "user" if row["role"] == "prompter" else "assistant", "content": row.get("text")})
        message_id = row.get("parent_id")
    return path[::-1]


# ---- Label Studio ---------------------------------------------------------------------------------


def _annotator(value) -> str | None:
    if isinstance(value, dict):  # some exports expand the user: {"id": .., "email": ..}
        value = value.get("email") or value.get("id")
    return None if value is None else str(value)


def _read_label_studio(rows: Rows, kind: str, source: str) -> Rows:
    """One preference per completed annotation with a pairwise choice; cancelled ones are skipped."""
    out = []
    for line, task in rows:
        data = task.get("data") or {}
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                if result.get("type") != "pairwise":
                    continue
                left, right = _pairwise_names(result, data)
                selected = (result.get("value") or {}).get("selected")
                if selected not in ("left", "right"):
                    raise DataError(source, line, "annotations", f"pairwise choice {selected!r}, not 'left'/'right'")
                chosen, rejected = (left, right) if selected == "left" else (right, left)
                pair = {"prompt": data.get("prompt"), "chosen": data.get(chosen), "rejected": data.get(rejected)}
                out.append((line, {**pair, "annotator": _annotator(annotation.get("completed_by"))}))
    return out


def _pairwise_names(result: dict, data: dict) -> tuple[str, str]:
    # The template compares answer1 (left) with answer2 (right); a custom config names its own two.
    names = [n.strip() for n in str(result.get("to_name", "")).split(",")]
    return (names[0], names[1]) if len(names) == 2 and all(n in data for n in names) else ("answer1", "answer2")


# ---- Argilla --------------------------------------------------------------------------------------

_PROMPT_FIELDS = ("prompt", "instruction", "question", "input")


def _argilla_responses(row: dict) -> dict[str, list[tuple[str | None, object]]]:
    """question -> [(user, value)] of the submitted responses, from either export layout."""
    out: dict = {}
    for column, values in row.items():
        if column.endswith(".responses") and isinstance(values, list):  # v2, flattened
            question = column[: -len(".responses")]
            users = row.get(f"{question}.responses.users") or [None] * len(values)
            status = row.get(f"{question}.responses.status") or ["submitted"] * len(values)
            out[question] = [(u, v) for u, v, s in zip(users, values, status) if s == "submitted"]
        elif isinstance(values, list) and values and all(isinstance(v, dict) and "value" in v for v in values):
            if all("user_id" in v for v in values):  # v1: [{"user_id", "value", "status"}]
                out[column] = [
                    (v["user_id"], v["value"]) for v in values if v.get("status", "submitted") == "submitted"
                ]
    return out


def _read_argilla(rows: Rows, kind: str, source: str) -> Rows:
    out = []
    for line, row in rows:
        prompt_field = next((f for f in _PROMPT_FIELDS if isinstance(row.get(f), str)), None)
        if prompt_field is None:
            raise DataError(source, line, None, f"no prompt field (one of {', '.join(_PROMPT_FIELDS)})")
        for responses in _argilla_responses(row).values():
            for user, value in responses:
                order = _argilla_order(value, row)
                if order is None:
                    continue  # an answer that names no two fields (e.g. a free-text or rating question)
                ranking = {"prompt": row[prompt_field], "completions": [row[f] for f in order]}
                ranking["annotator"] = None if user is None else str(user)
                out.extend(_ranking_rows(line, ranking, kind, source))
    return out


def _argilla_order(value, row: dict) -> list[str] | None:
    """Field names best first: a label naming the preferred of two fields, or a ranking of fields."""
    if isinstance(value, str) and value in row:
        others = [f for f in row if f != value and isinstance(row[f], str) and _same_family(f, value)]
        return [value, others[0]] if len(others) == 1 else None
    if isinstance(value, list) and value:
        if all(isinstance(v, dict) for v in value):  # v1 ranking: [{"value": field, "rank": r}]
            value = [v["value"] for v in sorted(value, key=lambda v: v.get("rank") or 0)]
        if all(isinstance(v, str) and v in row for v in value) and len(value) >= 2:
            return list(value)
    return None


def _same_family(a: str, b: str) -> bool:
    # "response1" / "response2", "response-a" / "response-b": the compared fields share a stem
    return re.sub(r"[\W_]*\w$", "", a) == re.sub(r"[\W_]*\w$", "", b)


def _is_argilla(row: dict) -> bool:
    return any(c.endswith(".responses") for c in row) or bool(
        set(row) & {"external_id", "metadata"} and _argilla_responses(row)
    )


SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        Schema("hh-rlhf", frozenset({"chosen", "rejected"}), ("preference", "prompt", "ranking"), _is_hh, _read_hh),
        Schema(
            "shp",
            frozenset({"history", "human_ref_A", "human_ref_B", "labels"}),
            ("preference", "ranking", "prompt"),
            lambda r: {"history", "human_ref_A", "human_ref_B", "labels"} <= set(r),
            _read_shp,
        ),
        Schema(
            "ultrafeedback",
            frozenset({"instruction", "completions"}),
            ("ranking", "preference", "rating"),
            _is_ultrafeedback,
            _read_ultrafeedback,
        ),
        Schema(
            "helpsteer2",
            frozenset({"prompt", "response", *HELPSTEER_ATTRIBUTES}),
            ("rating",),
            lambda r: {"prompt", "response", *HELPSTEER_ATTRIBUTES} <= set(r),
            _read_helpsteer,
        ),
        Schema(
            "oasst1",
            frozenset({"message_id", "parent_id", "role", "text", "rank", "deleted"}),
            ("ranking", "preference"),
            lambda r: {"message_id", "parent_id", "role", "text"} <= set(r),
            _read_oasst,
        ),
        Schema(
            "label-studio",
            frozenset({"data", "annotations"}),
            ("preference",),
            lambda r: isinstance(r.get("data"), dict) and isinstance(r.get("annotations"), list),
            _read_label_studio,
        ),
        Schema("argilla", None, ("preference", "ranking"), _is_argilla, _read_argilla),
    )
}


def schema(name: str) -> Schema:
    """The schema called ``name`` (a key of SCHEMAS); ConfigError otherwise."""
    if name not in SCHEMAS:
        raise ConfigError(f"unknown data format {name!r}; expected one of {', '.join(SCHEMAS)}")
    return SCHEMAS[name]


def detect_schema(row) -> Schema | None:
    """The public schema a first row is laid out in, or None (TRL types and rlhflab's own columns)."""
    if not isinstance(row, dict):
        return None
    return next((s for s in SCHEMAS.values() if s.detect(row)), None)


def read_schema(found: Schema, rows: Rows, kind: str, source: str) -> Rows:
    """``rows`` through ``found``'s adapter, for a kind the schema gives."""
    if kind not in found.kinds:
        raise _refuse(found.name, kind, found.kinds, source)
    for line, row in rows:
        if not isinstance(row, dict):
            raise DataError(source, line, None, f"expected an object (a row of columns), got {type(row).__name__}")
    converted = found.read(rows, kind, source)
    if not converted:
        raise DataError(source, None, None, f"{found.name} rows gave no {kind} records")
    return converted
