"""Annotator quality and inter-annotator agreement over the feedback app's label rows.

Section 7.3.3 of "RLHF Deciphered" (Collection of High-Quality Human Feedback) screens labelers on two
criteria: *inter-annotator agreement* (do annotators agree with each other on the same example?) and
*expert-annotator agreement* (do they agree with experts?), keeping only those who agree with experts.
This module measures both from the rows ``Store.label_rows`` returns and flags the annotators to look at:

- :func:`annotator_quality`: per annotator, agreement with gold answers (expert-annotator agreement),
  with the other annotators on shared items (inter-annotator agreement, one annotator at a time),
  speed, and position bias (the order of examples shown may bias labels, Section 7.3.2);
- :func:`agreement`: chance-corrected agreement of the whole pool: Krippendorff's α, Fleiss' κ and mean
  pairwise Cohen's κ;
- :func:`format_quality`: both as Markdown tables, for ``rlhflab feedback stats``.

Everything here is a pure function of plain dicts: no database, no web framework. A statistic that is
undefined (one annotator, every label the same, …) is ``None`` with the reason, never NaN.

How one label becomes values (the "units" of the reliability data, all in ORIGINAL completion indices):

| task | unit | value | α level |
|---|---|---|---|
| pairwise | the item | winner 0 or 1, or "tie" / "both_bad" as categories of their own | nominal |
| binary | the item | good (1) / not good (0) | nominal |
| turns | (item, assistant turn) | good (1) / not good (0) | nominal |
| rating | (item, attribute) | the Likert score | ordinal |
| ranking | (item, completion) | the completion's position in the ranking, 0 = best | ordinal |
| critique | – | free text: no agreement statistic | – |

A label agrees with a gold answer as :func:`rlhflab.app.tasks.gold_agrees` says (the rule the
qualification round uses): pairwise the same winner (a tie or "both bad" never agrees), ranking the same
best completion, rating every attribute within ±1, binary the same verdict. Two annotators' labels of
one item agree by a share in [0, 1]: pairwise and binary, 1 for the same category; turns, the share of
assistant turns given the same verdict; rating, the share of attributes scored within ±1 of each other; ranking, the share of completion pairs put in the same order
(Kendall's concordance: 1 for identical rankings, 0.5 expected by chance, the same winner for two
completions), so that a peer-agreement bar means the same for rankings of any length.
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rlhflab.app.tasks import NO_GOLD_TASKS, gold_agrees
from rlhflab.evaluation.tables import format_table

FLAG_GOLD_AGREEMENT = 0.6  # flag an annotator whose gold agreement is below this …
FLAG_PEER_AGREEMENT = 0.5  # … or whose agreement with the other annotators is below this
MIN_GOLD_LABELS = 3  # … but only with at least this many gold labels
MIN_SHARED_ITEMS = 3  # … or items shared with other annotators

NOMINAL_TASKS = ("pairwise", "binary", "turns")
ORDINAL_TASKS = ("ranking", "rating")
_PAIRWISE_CATEGORIES = {"tie": 2, "both_bad": 3}  # winner 0 and winner 1 are the codes 0 and 1

Units = dict[Any, int]  # unit key within an item (None, an attribute, a completion index) -> value


@dataclass(frozen=True)
class AnnotatorQuality:
    """One annotator's numbers. ``gold_agreement`` (expert-annotator agreement) is the share of their
    ``n_gold`` labels on gold items that agree with the gold answer; ``peer_agreement``
    (inter-annotator agreement) the mean agreement with every other (non-excluded) annotator's label on
    the ``n_shared`` non-gold items they share; ``position_bias`` pairwise: share of "left" among
    left/right choices − 0.5, ranking: share of rankings whose top is the completion shown first − 1/k
    (0 = no bias; None for other tasks or without such labels)."""

    annotator: str
    annotator_id: int | None
    n_labels: int
    n_gold: int
    gold_agreement: float | None
    n_shared: int
    peer_agreement: float | None
    labels_per_hour: float | None
    median_seconds: float | None
    position_bias: float | None
    excluded: bool
    flagged: bool
    reason: str | None  # why it is flagged


@dataclass(frozen=True)
class Agreement:
    """The pool's agreement over non-gold items with labels from at least two annotators. Each
    statistic is None where undefined, with the reason in ``reasons`` under the field's name.
    ``fleiss_items`` are the items Fleiss' κ used: those with ``fleiss_raters`` labels, the rater count
    most items share (Fleiss' κ needs the same number of raters per subject)."""

    task: str | None
    n_items: int
    n_labels: int
    n_annotators: int
    observed_agreement: float | None  # mean agreement (the rule above) over every pair of labels on an item
    krippendorff_alpha: float | None
    alpha_level: str | None  # "nominal" or "ordinal"
    alpha_by_attribute: dict[str, float | None] = field(default_factory=dict)  # ratings only
    fleiss_kappa: float | None = None
    fleiss_raters: int | None = None
    fleiss_items: tuple[int, ...] = ()
    cohen_kappa: float | None = None  # mean over annotator pairs with ≥ 2 shared items where κ is defined
    cohen_pairs: int = 0
    reasons: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Labels as values


def _task(rows: Sequence[dict]) -> str | None:
    tasks = {r["task"] for r in rows}
    if len(tasks) > 1:
        raise ValueError(f"label rows from more than one task: {sorted(tasks)}")
    return next(iter(tasks), None)


def _pairwise_code(value: dict) -> int | None:
    choice = value.get("choice")
    if choice in _PAIRWISE_CATEGORIES:
        return _PAIRWISE_CATEGORIES[choice]
    winner = value.get("winner")
    return None if winner is None else int(winner)


def label_units(task: str, value: dict | None) -> Units:
    """A stored (resolved) label as {unit key: value} (see the module's table); {} for critiques."""
    if not value:
        return {}
    if task == "pairwise":
        code = _pairwise_code(value)
        return {} if code is None else {None: code}
    if task == "binary":
        return {} if value.get("good") is None else {None: int(bool(value["good"]))}
    if task == "turns":
        return {turn: int(bool(good)) for turn, good in enumerate(value.get("turns") or [])}
    if task == "rating":
        return {attr: int(score) for attr, score in (value.get("scores") or {}).items()}
    if task == "ranking":
        return {int(index): position for position, index in enumerate(value.get("ranking") or [])}
    return {}


def units_agreement(task: str, a: Units, b: Units) -> float | None:
    """How far two labels of one item agree, in [0, 1] (the rule in the module docstring); None when
    they share nothing to compare."""
    if task == "turns":
        common = a.keys() & b.keys()
        return sum(a[k] == b[k] for k in common) / len(common) if common else None
    if task in NOMINAL_TASKS:
        return float(a == b) if a and b else None
    if task == "rating":
        common = a.keys() & b.keys()
        return sum(abs(a[k] - b[k]) <= 1 for k in common) / len(common) if common else None
    if task == "ranking":
        pairs = list(itertools.combinations(sorted(a.keys() & b.keys()), 2))
        if not pairs:
            return None
        return sum((a[i] < a[j]) == (b[i] < b[j]) for i, j in pairs) / len(pairs)
    return None


# --------------------------------------------------------------------------------------------------
# Per annotator


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value)


def _labels_per_hour(rows: Sequence[dict]) -> float | None:
    """Labels per hour of labelling: over the summed seconds the pages measured (time on each task,
    so breaks between sessions do not count); where no page measured any, over the span of the
    labels' timestamps."""
    seconds = sum(float(r["seconds"]) for r in rows if r.get("seconds"))
    if seconds > 0:
        return len(rows) * 3600.0 / seconds
    times = [t for t in (_timestamp(r.get("created_at")) for r in rows) if t is not None]
    span = max(times) - min(times) if times else 0.0
    return len(rows) * 3600.0 / span if span > 0 else None


def _position_bias(task: str, rows: Sequence[dict]) -> float | None:
    if task == "pairwise":
        sides = []
        for r in rows:
            value = r.get("value") or {}
            choice = value.get("choice")
            if choice not in ("left", "right") and value.get("winner") is not None and r.get("shown_order"):
                choice = "left" if value["winner"] == r["shown_order"][0] else "right"
            if choice in ("left", "right"):
                sides.append(choice == "left")
        return sum(sides) / len(sides) - 0.5 if sides else None
    if task == "ranking":
        tops, chance = [], []
        for r in rows:
            ranking, shown = (r.get("value") or {}).get("ranking"), r.get("shown_order")
            if ranking and shown:
                tops.append(ranking[0] == shown[0])
                chance.append(1.0 / len(ranking))
        return sum(tops) / len(tops) - sum(chance) / len(chance) if tops else None
    return None


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def annotator_quality(
    rows: Sequence[dict],
    *,
    flag_gold: float = FLAG_GOLD_AGREEMENT,
    flag_peer: float = FLAG_PEER_AGREEMENT,
    min_gold: int = MIN_GOLD_LABELS,
    min_shared: int = MIN_SHARED_ITEMS,
) -> list[AnnotatorQuality]:
    """Each annotator's expert-annotator and inter-annotator agreement (Section 7.3.3's two screening
    criteria), speed and position bias, sorted by name. Flagged: gold agreement below ``flag_gold`` on
    at least ``min_gold`` gold labels, or peer agreement below ``flag_peer`` on at least ``min_shared``
    shared items; with less data than that an annotator is never flagged. Peers are the annotators not
    excluded from the project, so a removed spammer does not drag the others down."""
    task = _task(rows)
    by_annotator: dict[str, list[dict]] = defaultdict(list)
    by_item: dict[int, dict[str, Units]] = defaultdict(dict)
    excluded = {r["annotator"] for r in rows if r.get("excluded")}
    for r in rows:
        by_annotator[r["annotator"]].append(r)
        if not r.get("gold") and r["annotator"] not in excluded:
            by_item[r["item_id"]][r["annotator"]] = label_units(task, r.get("value"))

    result = []
    for name in sorted(by_annotator):
        mine = by_annotator[name]
        gold_scores = [
            float(gold_agrees(task, r["gold_answer"], r.get("value") or {}))
            for r in mine
            if r.get("gold") and r.get("gold_answer") is not None and task not in NO_GOLD_TASKS
        ]
        peer_scores, shared = [], 0
        for r in mine:
            if r.get("gold"):
                continue
            own = label_units(task, r.get("value"))
            others = [u for who, u in by_item.get(r["item_id"], {}).items() if who != name]
            scores = [s for s in (units_agreement(task, own, u) for u in others) if s is not None]
            shared += bool(scores)
            peer_scores += scores
        gold_agreement, peer_agreement = _mean(gold_scores), _mean(peer_scores)

        reasons = []
        if gold_agreement is not None and len(gold_scores) >= min_gold and gold_agreement < flag_gold:
            reasons.append(f"gold agreement {gold_agreement:.2f} < {flag_gold:g} on {len(gold_scores)} gold labels")
        if peer_agreement is not None and shared >= min_shared and peer_agreement < flag_peer:
            reasons.append(f"peer agreement {peer_agreement:.2f} < {flag_peer:g} on {shared} shared items")
        seconds = [float(r["seconds"]) for r in mine if r.get("seconds") is not None]
        result.append(
            AnnotatorQuality(
                annotator=name,
                annotator_id=mine[0].get("annotator_id"),
                n_labels=len(mine),
                n_gold=len(gold_scores),
                gold_agreement=gold_agreement,
                n_shared=shared,
                peer_agreement=peer_agreement,
                labels_per_hour=_labels_per_hour(mine),
                median_seconds=statistics.median(seconds) if seconds else None,
                position_bias=_position_bias(task, mine),
                excluded=name in excluded,
                flagged=bool(reasons),
                reason="; ".join(reasons) or None,
            )
        )
    return result


# --------------------------------------------------------------------------------------------------
# The pool


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _alpha(labels: dict[int, dict[str, Units]], level: str, keep=lambda key: True) -> tuple[float | None, str | None]:
    """Krippendorff's α over the reliability data matrix annotators × units (NaN where missing)."""
    import krippendorff
    import numpy as np

    annotators = sorted({a for by in labels.values() for a in by})
    units = sorted(
        {(item, key) for item, by in labels.items() for u in by.values() for key in u if keep(key)},
        key=lambda unit: (unit[0], str(unit[1])),
    )
    data = np.full((len(annotators), len(units)), np.nan)
    row = {a: i for i, a in enumerate(annotators)}
    for j, (item, key) in enumerate(units):
        for a, u in labels[item].items():
            if key in u:
                data[row[a], j] = u[key]
    if ((~np.isnan(data)).sum(axis=0) >= 2).sum() == 0:
        return None, "no unit has values from two annotators"
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return None, "every label has the same value, so α is undefined (no disagreement to expect by chance)"
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alpha = _finite(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    return alpha, None if alpha is not None else "α is undefined on these labels"


def _fleiss(labels: dict[int, dict[str, Units]]) -> tuple[float | None, int | None, tuple[int, ...], str | None]:
    """Fleiss' κ over the items whose rater count is the most common one (ties: the larger count)."""
    import numpy as np
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    counts = defaultdict(list)
    for item, by in labels.items():
        counts[len(by)].append(item)
    raters = max(counts, key=lambda m: (len(counts[m]), m))
    items = tuple(sorted(counts[raters]))
    subjects = []
    for item in items:
        keys = set.intersection(*(set(u) for u in labels[item].values()))
        for key in sorted(keys, key=str):
            subjects.append([u[key] for u in labels[item].values()])
    if not subjects:
        return None, raters, items, "no unit rated by every annotator of its item"
    table, _ = aggregate_raters(np.array(subjects))
    if table.shape[1] < 2:
        return None, raters, items, "every label has the same value, so κ is undefined"
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = _finite(fleiss_kappa(table, method="fleiss"))
    return kappa, raters, items, None if kappa is not None else "κ is undefined on these labels"


def _cohen(labels: dict[int, dict[str, Units]], min_shared: int = 2) -> tuple[float | None, int, str | None]:
    """Cohen's κ of each annotator pair over the units of the items both labelled, averaged over the
    pairs that share at least ``min_shared`` items and where κ is defined."""
    from sklearn.metrics import cohen_kappa_score

    items_of: dict[str, set[int]] = defaultdict(set)
    for item, by in labels.items():
        for a in by:
            items_of[a].add(item)
    kappas, sharing = [], 0
    for a, b in itertools.combinations(sorted(items_of), 2):
        shared = sorted(items_of[a] & items_of[b])
        if len(shared) < min_shared:
            continue
        sharing += 1
        y1, y2 = [], []
        for by in (labels[item] for item in shared):
            for key in sorted(by[a].keys() & by[b].keys(), key=str):
                y1.append(by[a][key])
                y2.append(by[b][key])
        categories = sorted(set(y1) | set(y2))
        if len(categories) < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kappa = _finite(cohen_kappa_score(y1, y2, labels=categories))
        if kappa is not None:
            kappas.append(kappa)
    if kappas:
        return sum(kappas) / len(kappas), len(kappas), None
    if sharing:
        return None, 0, "each annotator pair used one value throughout, so κ is undefined"
    return None, 0, f"no two annotators share {min_shared} or more items"


def agreement(rows: Sequence[dict], *, include_gold: bool = False, include_excluded: bool = False) -> Agreement:
    """Inter-annotator agreement of the pool (Section 7.3.3): Krippendorff's α (nominal for pairwise and
    binary labels, ordinal for ranking positions and Likert ratings; per attribute too for ratings),
    Fleiss' κ (each value a category) and the mean pairwise Cohen's κ, over the items labelled by at
    least two annotators. Gold items (measured against the gold answer instead) and annotators excluded
    from the project are left out unless asked for."""
    task = _task(rows)
    rows = [r for r in rows if (include_gold or not r.get("gold")) and (include_excluded or not r.get("excluded"))]
    labels: dict[int, dict[str, Units]] = defaultdict(dict)
    for r in rows:
        units = label_units(task, r.get("value")) if task else {}
        if units:
            labels[r["item_id"]][r["annotator"]] = units
    labels = {item: by for item, by in labels.items() if len(by) >= 2}
    annotators = {a for by in labels.values() for a in by}
    base = dict(
        task=task,
        n_items=len(labels),
        n_labels=sum(len(by) for by in labels.values()),
        n_annotators=len(annotators),
    )
    names = ("observed_agreement", "krippendorff_alpha", "fleiss_kappa", "cohen_kappa")
    if task == "critique":
        why = "critiques are free text: there is no agreement statistic"
    elif not labels:
        labellers = {r["annotator"] for r in rows}
        why = (
            "no labels yet"
            if not labellers
            else f"only one annotator ({next(iter(labellers))}) has labelled: agreement needs two"
            if len(labellers) == 1
            else "no item has labels from two annotators yet"
        )
    else:
        why = None
    if why:
        return Agreement(**base, **dict.fromkeys(names), alpha_level=None, reasons=dict.fromkeys(names, why))

    reasons = {}
    pair_scores = [
        units_agreement(task, u, v) for by in labels.values() for u, v in itertools.combinations(by.values(), 2)
    ]
    level = "nominal" if task in NOMINAL_TASKS else "ordinal"
    alpha, reasons["krippendorff_alpha"] = _alpha(labels, level)
    by_attribute = {}
    if task == "rating":
        attributes = sorted({k for by in labels.values() for u in by.values() for k in u})
        for attribute in attributes:
            by_attribute[attribute], _ = _alpha(labels, level, keep=lambda key, a=attribute: key == a)
    kappa, raters, items, reasons["fleiss_kappa"] = _fleiss(labels)
    cohen, pairs, reasons["cohen_kappa"] = _cohen(labels)
    return Agreement(
        **base,
        observed_agreement=_mean(pair_scores),
        krippendorff_alpha=alpha,
        alpha_level=level,
        alpha_by_attribute=by_attribute,
        fleiss_kappa=kappa,
        fleiss_raters=raters,
        fleiss_items=items,
        cohen_kappa=cohen,
        cohen_pairs=pairs,
        reasons={k: v for k, v in reasons.items() if v},
    )


# --------------------------------------------------------------------------------------------------
# Reports


ANNOTATOR_COLUMNS = [
    ("annotator", "annotator", ""),
    ("n_labels", "labels", "d"),
    ("gold", "gold agreement (n)", ""),
    ("peer", "peer agreement (shared items)", ""),
    ("labels_per_hour", "labels/hour", ".1f"),
    ("median_seconds", "median s/label", ".1f"),
    ("position_bias", "position bias", "+.2f"),
    ("status", "status", ""),
]


def agreement_rows(result: Agreement) -> list[dict]:
    """The pool's statistics as (statistic, value, note) rows, for the dashboard and the report."""
    fleiss_note = (
        f"{len(result.fleiss_items)} items with {result.fleiss_raters} raters each" if result.fleiss_items else ""
    )
    rows = [
        ("observed agreement", result.observed_agreement, "mean over pairs of labels on an item", "observed_agreement"),
        (f"Krippendorff's α ({result.alpha_level or '–'})", result.krippendorff_alpha, "", "krippendorff_alpha"),
        *((f"α, {a}", v, "", None) for a, v in result.alpha_by_attribute.items()),
        ("Fleiss' κ", result.fleiss_kappa, fleiss_note, "fleiss_kappa"),
        ("Cohen's κ (mean over pairs)", result.cohen_kappa, f"{result.cohen_pairs} annotator pairs", "cohen_kappa"),
    ]
    return [
        {"statistic": name, "value": value, "note": result.reasons.get(key or "", note) if value is None else note}
        for name, value, note, key in rows
    ]


def annotator_rows(quality: Sequence[AnnotatorQuality]) -> list[dict]:
    """Per-annotator rows (display strings) for the dashboard and the report."""

    def with_n(value, n):
        return None if value is None else f"{value:.2f} ({n})"

    return [
        {
            "annotator": q.annotator,
            "n_labels": q.n_labels,
            "gold": with_n(q.gold_agreement, q.n_gold),
            "peer": with_n(q.peer_agreement, q.n_shared),
            "labels_per_hour": q.labels_per_hour,
            "median_seconds": q.median_seconds,
            "position_bias": q.position_bias,
            "status": ("excluded; " if q.excluded else "") + (f"FLAGGED: {q.reason}" if q.flagged else "ok"),
        }
        for q in quality
    ]


def format_quality(quality: Sequence[AnnotatorQuality], result: Agreement) -> str:
    """Markdown for ``rlhflab feedback stats``: the pool's agreement, then one row per annotator."""
    head = (
        f"## Agreement ({result.task or 'no task'}: {result.n_items} items with ≥ 2 labels, "
        f"{result.n_labels} labels, {result.n_annotators} annotators)"
    )
    flagged = sum(q.flagged for q in quality)
    return (
        "\n\n".join(
            [
                head,
                format_table(
                    agreement_rows(result),
                    [("statistic", "statistic", ""), ("value", "value", ".3f"), ("note", "note", "")],
                ),
                f"## Annotators ({len(quality)}, {flagged} flagged)",
                format_table(annotator_rows(quality), ANNOTATOR_COLUMNS),
            ]
        )
        + "\n"
    )
