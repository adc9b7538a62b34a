"""People's labels → rlhflab's feedback records (Section 7.3.2) → a file the trainers read.

The records are the ones ``rlhflab.data`` defines, so ``rlhflab reward --data`` (and ``dpo``,
``pro``, ...) read an export as they read any other feedback file: one schema, two producers
(people here, simulated annotators in ``rlhflab annotate``). Each row carries extra columns the
readers ignore, for whoever audits the data: who labelled (``annotator_id``), what (``item_id``,
``project``), how it was shown (``shown_order``, ``swapped``: position bias can be checked after
the fact), how long it took (``seconds``), whether it was a gold item (``gold``) and which policy
sampled it (``policy``: set on a live project's items, rlhflab.app.live; None for a samples file's).

Adjudication (rlhflab.app.adjudication): every row also carries its item's resolution beside the
raw label, ``adjudicated_label`` (the reviewer's label, stored as labels are: original completion
indices, e.g. ``{"choice": "right", "winner": 1}``), ``adjudication_cause`` and
``adjudication_note`` (all None for an item no one adjudicated), and ``adjudicated`` (whether the
record is made from the resolution rather than from an annotator's label). By default the records
are the raw labels, as before: disagreement is information (a reward model can weigh it). With
``use_adjudicated`` an adjudicated item's labels are replaced by one record made from its resolution,
attributed to the reviewer (``annotator``, ``annotator_id``; ``label_id`` None, the completions
"shown" in their original order); items no one adjudicated keep their raw labels. A pairwise
resolution of "tie" or "both bad" then carries no preference (skipped and counted, as a label's).

A turns label (rlhflab.app.tasks) exports as TRL's conversational unpaired-preference rows, the rows
``rlhflab kto`` trains on: one per assistant turn, ``{"prompt": the messages before it, "completion":
[that assistant message], "label": its verdict}``, with ``annotator`` and ``turn`` (the assistant
turn's place, 0 first) beside the extra columns above.

This module reads label rows (``Store.label_rows``), not the database.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlhflab.app.tasks import assistant_turns, conversation
from rlhflab.data import LanguageFeedback, Ranking, Rating, ranking_to_preferences
from rlhflab.errors import ConfigError, DataError, RlhflabError
from rlhflab.files import atomic_path, write_jsonl

KINDS = ("preferences", "rankings", "ratings", "language", "unpaired")
FORMATS = ("jsonl", "parquet", "dataset")
# Which kinds of records each task's labels become.
TASK_KINDS = {
    "pairwise": ("preferences",),
    "ranking": ("preferences", "rankings"),
    "rating": ("ratings",),
    "binary": ("ratings",),
    "critique": ("language",),
    "turns": ("unpaired",),
}
LIKERT_SCALE = "likert:7"


class ExportError(RlhflabError):
    """An export that cannot be made: a kind the project's task does not produce, nothing to write."""


def _extras(row: dict) -> dict:
    return {
        "annotator_id": row["annotator_id"],
        "item_id": row["item_id"],
        "label_id": row["label_id"],
        "project": row["project"],
        "swapped": row["swapped"],
        "shown_order": list(row["shown_order"]),
        "seconds": row["seconds"],
        "gold": row["gold"],
        "policy": row.get("policy"),  # which policy sampled the item (a live project's), else None
        "adjudicated": row.get("from_adjudication", False),
        "adjudicated_label": (row.get("adjudication") or {}).get("value"),
        "adjudication_cause": (row.get("adjudication") or {}).get("cause"),
        "adjudication_note": (row.get("adjudication") or {}).get("note"),
    }


def _ranking(row: dict) -> Ranking:
    completions = row["completions"]
    if row["task"] == "pairwise":
        winner = row["value"]["winner"]
        return Ranking(row["prompt"], [completions[winner], completions[1 - winner]], annotator=row["annotator"])
    order = row["value"]["ranking"]
    return Ranking(row["prompt"], [completions[i] for i in order], annotator=row["annotator"])


def _turn_rows(row: dict) -> list[dict]:
    """A turns label as TRL conversational unpaired-preference rows, one per assistant turn."""
    messages = conversation(row["prompt"], row["completions"][0])
    verdicts = row["value"]["turns"]
    return [
        {
            "prompt": messages[:i],
            "completion": [messages[i]],
            "label": verdict,
            "annotator": row["annotator"],
            "turn": n,
        }
        for n, (i, verdict) in enumerate(zip(assistant_turns(messages), verdicts, strict=True))
    ]


def _resolution_row(row: dict, decision: dict) -> dict:
    """The label row an item's resolution stands for: the item's data from one of its ``row``s, the
    reviewer's label, the completions in their original order."""
    return {
        **row,
        "value": decision["value"],
        "annotator": decision["reviewer"],
        "annotator_id": decision["reviewer_id"],
        "label_id": None,
        "shown_order": list(range(len(row["completions"]))),
        "swapped": False,
        "seconds": None,
        "excluded": False,
        "from_adjudication": True,
    }


def adjudicated_rows(rows: list[dict], used: list[dict]) -> list[dict]:
    """``used`` with each adjudicated item's rows replaced, where its first one was, by the row of its
    resolution. ``rows`` (excluded annotators' too) find the items: one whose every label is left out
    still has its reviewer's decision, which goes last."""
    decided: dict[int, dict] = {}
    for row in rows:
        if row.get("adjudication"):
            decided.setdefault(row["item_id"], row)
    out, placed = [], set()
    for row in used:
        item_id = row["item_id"]
        if item_id not in decided:
            out.append(row)
        elif item_id not in placed:
            placed.add(item_id)
            out.append(_resolution_row(decided[item_id], decided[item_id]["adjudication"]))
    out += [_resolution_row(row, row["adjudication"]) for item_id, row in decided.items() if item_id not in placed]
    return out


def records_from_rows(rows: list[dict], kind: str, counts: dict) -> list[dict]:
    """The export rows (a record's columns plus the extra columns) of ``kind`` made from label rows.

    preferences: a decisive pairwise label is one Preference (ties and "both bad" carry no
    preference: skipped and counted); a ranking gives its k(k-1)/2 pairs (Section 4.1).
    rankings: a ranking label as a Ranking, best first. ratings: one Rating per attribute on the
    Likert 1..7 scale (``attribute`` column); a binary verdict is a Rating on the binary scale.
    language: a critique as LanguageFeedback, with the annotator's correction if they wrote one.
    unpaired: a turns label's verdicts, one unpaired-preference row per assistant turn.
    """
    out: list[dict] = []
    for row in rows:
        task, value, extras = row["task"], row["value"], _extras(row)
        if kind == "preferences":
            if task == "pairwise" and value["winner"] is None:
                counts[f"{value['choice']}_skipped"] = counts.get(f"{value['choice']}_skipped", 0) + 1
                continue
            pairs = ranking_to_preferences(_ranking(row))
            out += [{**p.to_dict(), **extras} for p in pairs]
        elif kind == "rankings":
            out.append({**_ranking(row).to_dict(), **extras})
        elif kind == "unpaired":
            out += [{**turn, **extras} for turn in _turn_rows(row)]
        elif kind == "ratings":
            completion = row["completions"][0]
            if task == "binary":
                rating = Rating(row["prompt"], completion, 1.0 if value["good"] else 0.0, "binary", row["annotator"])
                out.append({**rating.to_dict(), "attribute": "overall", **extras})
            else:
                for attribute in row["attributes"]:
                    score = float(value["scores"][attribute])
                    rating = Rating(row["prompt"], completion, score, LIKERT_SCALE, row["annotator"])
                    out.append({**rating.to_dict(), "attribute": attribute, **extras})
        else:
            feedback = LanguageFeedback(
                row["prompt"],
                row["completions"][0],
                value["critique"],
                annotator=row["annotator"],
                correction=value.get("correction"),
            )
            out.append({**feedback.to_dict(), **extras})
    return out


def output_format(output: str | os.PathLike, format: str | None = None) -> str:
    """``format`` if given, else read from the output's name: ``.jsonl``, ``.parquet``, or no suffix
    for a folder written by ``datasets``' ``save_to_disk``."""
    if format is not None:
        if format not in FORMATS:
            raise ConfigError(f"unknown export format '{format}'; choose from {', '.join(FORMATS)}")
        return format
    suffix = Path(output).suffix.lower()
    if suffix in (".jsonl", ".parquet"):
        return suffix[1:]
    if not suffix:
        return "dataset"
    raise ConfigError(
        f"{output}: unsupported output type '{suffix}'; use .jsonl, .parquet, or a folder name (datasets save_to_disk)"
    )


def write_rows(rows: list[dict], output: str | os.PathLike, format: str) -> None:
    """Write export rows atomically: nothing is left at ``output`` unless the whole file is written."""
    if format == "jsonl":
        write_jsonl(output, rows)
        return
    try:
        if format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            with atomic_path(output) as tmp:
                pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            from datasets import Dataset

            with atomic_path(output) as tmp:
                Dataset.from_list(rows).save_to_disk(str(tmp))
    except (TypeError, ValueError, NotImplementedError) as e:  # arrow's errors subclass these
        raise DataError(str(output), None, None, f"cannot write {format} ({e}); export to .jsonl instead") from None


def export_rows(
    rows: list[dict],
    kind: str,
    output: str | os.PathLike,
    include_excluded: bool = False,
    format: str | None = None,
    task: str | None = None,
    use_adjudicated: bool = False,
) -> dict:
    """Write the records of ``kind`` made from label rows (of one project, whose ``task`` is given
    when the rows may be empty) to ``output`` and return the counts: ``records`` written, ``labels``
    used, ``excluded_labels`` left out (annotators an admin excluded, unless ``include_excluded``),
    ``tie_skipped`` and ``both_bad_skipped`` (pairwise labels with no preference); with
    ``use_adjudicated`` (see the module docstring) also ``adjudicated_items``, the items whose
    resolution replaced their ``labels_replaced`` labels."""
    if kind not in KINDS:
        raise ConfigError(f"unknown export kind '{kind}'; choose from {', '.join(KINDS)}")
    format = output_format(output, format)
    for project_task in {row["task"] for row in rows} | ({task} if task else set()):
        fits = TASK_KINDS[project_task]
        if kind not in fits:
            raise ExportError(f"a {project_task} project's labels export as {' or '.join(fits)}, not {kind}")
    used = [r for r in rows if include_excluded or not r["excluded"]]
    counts = {"tie_skipped": 0, "both_bad_skipped": 0}
    if use_adjudicated:
        resolved = adjudicated_rows(rows, used)
        replaced = [r for r in resolved if r.get("from_adjudication")]
        counts["adjudicated_items"] = len(replaced)
        counts["labels_replaced"] = sum(1 for r in used if r.get("adjudication"))
        records = records_from_rows(resolved, kind, counts)
    else:
        records = records_from_rows(used, kind, counts)
    if not records:
        raise ExportError(
            f"no {kind} to export: {len(used)} labels, {len(rows) - len(used)} more from excluded annotators"
        )
    write_rows(records, output, format)
    return {
        "output": str(output),
        "format": format,
        "kind": kind,
        "records": len(records),
        "labels": len(used),
        "excluded_labels": len(rows) - len(used),
        **counts,
    }
