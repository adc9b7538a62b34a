"""The adjudication queue: items whose labels disagree go to a reviewer, who records the label the item
should have and why the annotators disagreed (Section 7.3.3: disagreement among annotators is where
the quality of human feedback is lost; an expert's resolution is the expert-annotator answer for it).

Which items need adjudication: a non-gold item with at least two labels that count (annotators an
admin excluded, and revoked assignments, are left out as the export leaves them out) that disagree
by :func:`rlhflab.app.tasks.labels_disagree`, the rule the review page lists disagreements by:
pairwise, different outcomes (a winner, a tie, both bad); ranking, different best completions;
rating, some attribute scored more than ``RATING_TOLERANCE`` (±1) apart; binary, different verdicts.
Critiques are free text and never disagree. Gold items are not queued: their answer is the gold one.

An item leaves the queue once resolved, and comes back (marked) if the labels that count change
afterwards (a late label, an annotator excluded or taken back) while they still disagree: the
decision was made on other evidence. Deciding again replaces the decision.

Everything here is a pure function of the rows ``Store.label_rows`` returns (each carrying its
item's ``adjudication``, or None); the Store reads and writes, the routes show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhflab.app.tasks import LabelError, labels_disagree

# cause -> how the page names it (the choices Label Studio and Potato reviewers are asked for).
CAUSES = {
    "ambiguous_item": "ambiguous item",
    "guideline_gap": "guideline gap",
    "annotator_error": "annotator error",
    "other": "other",
}
MAX_NOTE_CHARS = 2000


def check_cause(cause: Any, note: Any) -> tuple[str, str]:
    """``(cause, note)`` checked: a cause from CAUSES, a note of at most MAX_NOTE_CHARS (required
    when the cause is "other", which says nothing by itself). LabelError with a one-line reason."""
    if cause not in CAUSES:
        raise LabelError(f"cause must be one of {', '.join(CAUSES)}, got {str(cause)[:40]!r}")
    note = (note if isinstance(note, str) else "").replace("\r\n", "\n").strip()
    if len(note) > MAX_NOTE_CHARS:
        raise LabelError(f"the note has {len(note)} characters; at most {MAX_NOTE_CHARS} are allowed")
    if cause == "other" and not note:
        raise LabelError("say in the note what the cause was (the cause is 'other')")
    return cause, note


def counted_labels(rows: Sequence[dict]) -> dict[int, list[dict]]:
    """The labels that count (not excluded, not revoked) of each non-gold item, in label order."""
    by_item: dict[int, list[dict]] = {}
    for row in rows:
        if not row["gold"] and not row["excluded"]:
            by_item.setdefault(row["item_id"], []).append(row)
    return by_item


def needs_adjudication(task: str, labels: Sequence[dict]) -> bool:
    """Whether an item's counted label rows disagree (at least two, by tasks.labels_disagree)."""
    return len(labels) >= 2 and labels_disagree(task, [row["value"] for row in labels])


def adjudication_items(task: str, rows: Sequence[dict]) -> list[dict]:
    """Every item that disagrees or was adjudicated, in item order:
    ``{"item_id", "prompt", "completions", "labels": [{"label_id", "annotator", "value"}],
    "adjudication" (as the rows carry it, or None), "pending", "stale"}``. ``pending``: in the
    queue (disagreeing, and unresolved or ``stale``: resolved on labels other than those that count now)."""
    counted = counted_labels(rows)
    decided = {row["item_id"]: row["adjudication"] for row in rows if row.get("adjudication")}
    first = {}
    for row in rows:
        first.setdefault(row["item_id"], row)
    items = []
    for item_id in sorted(first):
        labels = counted.get(item_id, [])
        disagree = needs_adjudication(task, labels)
        decision = decided.get(item_id)
        if not disagree and decision is None:
            continue
        label_ids = [row["label_id"] for row in labels]
        stale = decision is not None and sorted(decision["label_ids"]) != sorted(label_ids)
        items.append(
            {
                "item_id": item_id,
                "prompt": first[item_id]["prompt"],
                "completions": list(first[item_id]["completions"]),
                "labels": [
                    {"label_id": r["label_id"], "annotator": r["annotator"], "value": r["value"]} for r in labels
                ],
                "adjudication": decision,
                "pending": disagree and (decision is None or stale),
                "stale": disagree and stale,
            }
        )
    return items
