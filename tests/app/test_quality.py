"""Annotator quality and inter-annotator agreement (Section 7.3.3), checked against numbers worked out
by hand on small tables and against the krippendorff package's documented examples."""

import itertools
import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from rlhflab.app.quality import (
    FLAG_GOLD_AGREEMENT,
    FLAG_PEER_AGREEMENT,
    Agreement,
    agreement,
    annotator_quality,
    format_quality,
)

T0 = datetime(2024, 5, 1, 9, 0, 0)
_ids = itertools.count(1)


def row(annotator, item, value, task="pairwise", *, gold=False, gold_answer=None, minute=0.0, seconds=10.0,
        shown_order=None, excluded=False, attributes=("overall",)):  # fmt: skip
    """One dict shaped as ``Store.label_rows`` returns it."""
    k = len(value["ranking"]) if task == "ranking" else 2 if task == "pairwise" else 1
    shown = list(shown_order) if shown_order is not None else list(range(k))
    return {
        "label_id": next(_ids),
        "item_id": item,
        "project": "demo",
        "task": task,
        "annotator": annotator,
        "annotator_id": sum(map(ord, annotator)),
        "prompt": f"prompt {item}",
        "completions": [f"completion {i}" for i in range(k)],
        "value": value,
        "shown_order": shown,
        "swapped": shown != sorted(shown),
        "seconds": seconds,
        "created_at": T0 + timedelta(minutes=minute),
        "gold": gold,
        "gold_answer": gold_answer,
        "excluded": excluded,
        "attributes": list(attributes),
    }


def win(winner, choice=None):
    return {"choice": choice or ("left" if winner == 0 else "right"), "winner": winner}


TIE = {"choice": "tie", "winner": None}
BOTH_BAD = {"choice": "both_bad", "winner": None}


def binary_rows(table):
    """{annotator: [good per item]} -> rows; None = not labelled."""
    return [
        row(a, item, {"good": good}, "binary")
        for a, goods in table.items()
        for item, good in enumerate(goods, start=1)
        if good is not None
    ]


def no_nan(result: Agreement):
    for name in ("observed_agreement", "krippendorff_alpha", "fleiss_kappa", "cohen_kappa"):
        value = getattr(result, name)
        assert value is None or math.isfinite(value), (name, value)


# --- the pool's agreement, by hand ---------------------------------------------------------------


def test_two_annotators_four_items_by_hand():
    # A: good good bad bad; B: good bad bad bad. Observed agreement 3/4.
    # Cohen: p_e = 1/2·1/4 + 1/2·3/4 = 1/2, κ = (3/4 − 1/2)/(1 − 1/2) = 1/2.
    # Fleiss: P̄ = 3/4, p(good) = 3/8, P_e = 9/64 + 25/64 = 34/64, κ = (3/4 − 34/64)/(30/64) = 7/15.
    # Krippendorff (nominal): n = 8, n_good = 3, n_bad = 5, one disagreeing unit gives o = 2 off the
    # diagonal; α = 1 − (n − 1)·2/(2·3·5) = 1 − 14/30 = 8/15.
    result = agreement(binary_rows({"A": [True, True, False, False], "B": [True, False, False, False]}))
    assert (result.task, result.n_items, result.n_labels, result.n_annotators) == ("binary", 4, 8, 2)
    assert result.observed_agreement == pytest.approx(0.75)
    assert result.cohen_kappa == pytest.approx(0.5)
    assert result.cohen_pairs == 1
    assert result.fleiss_kappa == pytest.approx(7 / 15)
    assert (result.fleiss_raters, result.fleiss_items) == (2, (1, 2, 3, 4))
    assert result.krippendorff_alpha == pytest.approx(8 / 15)
    assert result.alpha_level == "nominal"
    assert result.reasons == {}


def test_cohen_averages_pairs_sharing_two_items_and_fleiss_uses_the_common_rater_count():
    # C agrees with A everywhere: κ(A,B) = 1/2, κ(A,C) = 1, κ(B,C) = 1/2 -> mean 2/3. D labels only
    # item 1, so no pair with D shares 2 items; item 1 then has 4 raters and items 2-4 have 3, and
    # Fleiss' κ uses items 2-4: P_i = 1/3, 1, 1 -> P̄ = 7/9; p(good) = 2/9 -> P_e = 53/81;
    # κ = (7/9 − 53/81)/(28/81) = 10/28 = 5/14.
    table = {
        "A": [True, True, False, False],
        "B": [True, False, False, False],
        "C": [True, True, False, False],
        "D": [True, None, None, None],
    }
    result = agreement(binary_rows(table))
    assert result.cohen_kappa == pytest.approx(2 / 3)
    assert result.cohen_pairs == 3
    assert (result.fleiss_raters, result.fleiss_items) == (3, (2, 3, 4))
    assert result.fleiss_kappa == pytest.approx(5 / 14)


# The krippendorff package's documented example (its docstring; Krippendorff's own "C" data): three
# coders, fifteen units, values 1-4, α = 0.691358 (nominal).
DOCS_NOMINAL = [
    [np.nan, np.nan, np.nan, np.nan, np.nan, 3, 4, 1, 2, 1, 1, 3, 3, np.nan, 3],
    [1, np.nan, 2, 1, 3, 3, 4, 3, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan],
    [np.nan, np.nan, 2, 1, 3, 4, 4, np.nan, 2, 1, 1, 3, 3, np.nan, 4],
]
# Its ordinal example: four coders, twelve units, values 1-5, α = 0.815.
DOCS_ORDINAL = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
]


def test_pairwise_alpha_matches_the_documented_example_with_ties_as_their_own_categories():
    # Values 1-4 become winner 0, winner 1, tie, both bad: α is nominal, so only the categories matter,
    # and the documented value comes back only if tie and both-bad are two categories of their own.
    as_label = {1: win(0), 2: win(1), 3: TIE, 4: BOTH_BAD}
    rows = [
        row(f"coder{c}", unit + 1, as_label[int(v)])
        for c, values in enumerate(DOCS_NOMINAL)
        for unit, v in enumerate(values)
        if not math.isnan(v)
    ]
    result = agreement(rows)
    assert result.krippendorff_alpha == pytest.approx(0.691358, abs=1e-6)
    assert result.alpha_level == "nominal"
    # Units 1 has one coder, units 2 and 14 none: 12 items with ≥ 2 labels, 2 of them with 3 raters.
    assert (result.n_items, result.n_annotators) == (12, 3)
    # Fleiss over the ten 2-rater items: 8 agree -> P̄ = 0.8; category totals 7, 4, 8, 1 of 20 ->
    # P_e = (49 + 16 + 64 + 1)/400 = 0.325; κ = 0.475/0.675 = 19/27.
    assert (result.fleiss_raters, result.fleiss_items) == (2, (3, 4, 5, 8, 9, 10, 11, 12, 13, 15))
    assert result.fleiss_kappa == pytest.approx(19 / 27)
    # The same labels as binary "choose 0 / anything else" would be a different statistic; as a check
    # that tie ≠ both_bad, merging them changes α.
    merged = [dict(r, value=TIE if r["value"] == BOTH_BAD else r["value"]) for r in rows]
    assert agreement(merged).krippendorff_alpha != pytest.approx(0.691358, abs=1e-3)


def test_rating_alpha_is_ordinal_and_matches_the_documented_example_per_attribute():
    rows = [
        row(f"coder{c}", unit + 1, {"scores": {"overall": int(v), "helpful": int(v)}}, "rating")
        for c, values in enumerate(DOCS_ORDINAL)
        for unit, v in enumerate(values)
        if not math.isnan(v)
    ]
    result = agreement(rows)
    assert result.alpha_level == "ordinal"
    assert result.alpha_by_attribute["overall"] == pytest.approx(0.815, abs=5e-4)
    assert result.alpha_by_attribute["helpful"] == pytest.approx(0.815, abs=5e-4)
    assert result.krippendorff_alpha is not None and 0.8 < result.krippendorff_alpha < 0.83
    no_nan(result)


def test_identical_rankings_give_alpha_one_on_ranking_positions():
    rows = [row(a, item, {"ranking": r}, "ranking") for a in "AB" for item, r in [(1, [2, 0, 1]), (2, [0, 1, 2])]]
    result = agreement(rows)
    assert result.alpha_level == "ordinal"
    assert result.krippendorff_alpha == pytest.approx(1.0)
    assert result.observed_agreement == pytest.approx(1.0)


# --- edge cases ----------------------------------------------------------------------------------


def test_a_single_annotator_gives_no_agreement_with_a_reason_and_no_crash():
    rows = [row("solo", item, win(item % 2)) for item in range(1, 6)]
    result = agreement(rows)
    assert result.krippendorff_alpha is None and result.fleiss_kappa is None and result.cohen_kappa is None
    assert result.observed_agreement is None
    assert "only one annotator (solo)" in result.reasons["krippendorff_alpha"]
    [q] = annotator_quality(rows)
    assert (q.annotator, q.n_labels, q.peer_agreement, q.n_shared, q.gold_agreement, q.flagged) == (
        "solo",
        5,
        None,
        0,
        None,
        False,
    )
    assert "only one annotator" in format_quality([q], result)


def test_identical_labels_leave_alpha_and_kappa_undefined_as_none_not_nan():
    rows = [row(a, item, win(0)) for a in "ABC" for item in range(1, 5)]
    result = agreement(rows)
    no_nan(result)
    assert result.observed_agreement == 1.0
    assert result.krippendorff_alpha is None and "same value" in result.reasons["krippendorff_alpha"]
    assert result.fleiss_kappa is None and "same value" in result.reasons["fleiss_kappa"]
    assert result.cohen_kappa is None and "undefined" in result.reasons["cohen_kappa"]
    assert "–" in format_quality(annotator_quality(rows), result)


def test_no_rows_critiques_and_mixed_tasks():
    empty = agreement([])
    assert empty.task is None and empty.krippendorff_alpha is None and empty.reasons["krippendorff_alpha"]
    assert annotator_quality([]) == []
    critiques = [row(a, 1, {"critique": f"too long, says {a}", "correction": None}, "critique") for a in "AB"]
    result = agreement(critiques)
    assert result.krippendorff_alpha is None and "free text" in result.reasons["krippendorff_alpha"]
    assert [q.peer_agreement for q in annotator_quality(critiques)] == [None, None]
    with pytest.raises(ValueError, match="more than one task"):
        agreement([row("A", 1, win(0)), row("A", 2, {"good": True}, "binary")])


def test_gold_items_and_excluded_annotators_are_left_out_of_the_pool_unless_asked():
    rows = binary_rows({"A": [True, True, False, False], "B": [True, False, False, False]})
    rows += [row(a, 9, {"good": a == "A"}, "binary", gold=True, gold_answer=True) for a in "AB"]
    rows += [row("X", item, {"good": item == 2}, "binary", excluded=True) for item in range(1, 5)]
    result = agreement(rows)
    assert (result.n_items, result.n_annotators) == (4, 2)
    assert result.cohen_kappa == pytest.approx(0.5)
    assert agreement(rows, include_gold=True, include_excluded=True).n_items == 5


# --- per annotator -------------------------------------------------------------------------------


def test_gold_agreement_flags_only_with_enough_gold_labels():
    rows = [row("bad", 10 + i, win(1), gold=True, gold_answer=0 if i else 1) for i in range(4)]  # 1 of 4 right
    rows += [row("newbie", 10 + i, win(1), gold=True, gold_answer=0) for i in range(2)]  # 0 of 2 right
    rows += [row("good", 10 + i, win(0) if i else win(1), gold=True, gold_answer=0 if i else 1) for i in range(4)]
    rows += [row("good", 20, TIE, gold=True, gold_answer=0)]  # a tie never matches a gold winner
    by = {q.annotator: q for q in annotator_quality(rows)}
    assert (by["bad"].gold_agreement, by["bad"].n_gold, by["bad"].flagged) == (0.25, 4, True)
    assert by["bad"].reason == f"gold agreement 0.25 < {FLAG_GOLD_AGREEMENT:g} on 4 gold labels"
    assert (by["newbie"].gold_agreement, by["newbie"].flagged, by["newbie"].reason) == (0.0, False, None)
    assert by["good"].gold_agreement == pytest.approx(0.8) and not by["good"].flagged
    again = {q.annotator: q for q in annotator_quality(rows, min_gold=2, flag_gold=0.9)}
    assert again["newbie"].flagged and again["good"].flagged


def test_rating_gold_agrees_within_one_on_every_attribute_and_ranking_on_the_best():
    answer = {"overall": 5, "helpful": 2}
    scores = [{"overall": 4, "helpful": 2}, {"overall": 6, "helpful": 4}, {"overall": 3, "helpful": 7}]
    rows = [row("r", i, {"scores": s}, "rating", gold=True, gold_answer=answer) for i, s in enumerate(scores)]
    [q] = annotator_quality(rows)
    assert (q.gold_agreement, q.n_gold) == (pytest.approx(1 / 3), 3)
    rankings = [[2, 0, 1], [2, 1, 0], [0, 2, 1], [1, 0, 2]]  # the gold answer is 2 > 0 > 1
    rows = [row("k", i, {"ranking": r}, "ranking", gold=True, gold_answer=[2, 0, 1]) for i, r in enumerate(rankings)]
    assert annotator_quality(rows)[0].gold_agreement == 0.5


def test_peer_agreement_over_shared_non_gold_items_and_excluded_peers():
    # Winners: A 0 0 0, B 0 0 1, C 1 1 1. A agrees with B on 2 of 3 and with C on 0 of 3 -> 2/6;
    # B: 2 of 3 with A, 1 of 3 with C -> 3/6; C: 0 with A, 1 with B -> 1/6.
    winners = {"A": [0, 0, 0], "B": [0, 0, 1], "C": [1, 1, 1]}
    rows = [row(a, item + 1, win(w)) for a, ws in winners.items() for item, w in enumerate(ws)]
    rows += [row(a, 99, win(0), gold=True, gold_answer=0) for a in "ABC"]  # gold items are not shared items
    by = {q.annotator: q for q in annotator_quality(rows)}
    assert [by[a].peer_agreement for a in "ABC"] == pytest.approx([1 / 3, 1 / 2, 1 / 6])
    assert [by[a].n_shared for a in "ABC"] == [3, 3, 3]
    assert [by[a].flagged for a in "ABC"] == [True, False, True]
    assert by["A"].reason == f"peer agreement 0.33 < {FLAG_PEER_AGREEMENT:g} on 3 shared items"
    # C excluded: the others are compared only with each other; C is still measured, and marked.
    rows = [dict(r, excluded=r["annotator"] == "C") for r in rows]
    by = {q.annotator: q for q in annotator_quality(rows)}
    assert [by[a].peer_agreement for a in "ABC"] == pytest.approx([2 / 3, 2 / 3, 1 / 6])
    assert [by[a].flagged for a in "ABC"] == [False, False, True] and by["C"].excluded
    # Fewer shared items than min_shared: never flagged.
    assert not any(q.flagged for q in annotator_quality(rows, min_shared=4))


def test_ranking_peer_agreement_is_the_share_of_pairs_in_the_same_order():
    # A: 0 > 1 > 2, B: 0 > 2 > 1: pairs (0,1) and (0,2) agree, (1,2) does not -> 2/3.
    rows = [row("A", 1, {"ranking": [0, 1, 2]}, "ranking"), row("B", 1, {"ranking": [0, 2, 1]}, "ranking")]
    assert [q.peer_agreement for q in annotator_quality(rows)] == pytest.approx([2 / 3, 2 / 3])
    assert agreement(rows).observed_agreement == pytest.approx(2 / 3)


def test_position_bias_pairwise_and_ranking():
    choices = ["left", "left", "left", "right", "tie"]
    rows = [row("P", i, {"choice": c, "winner": None if c == "tie" else 0}) for i, c in enumerate(choices)]
    [q] = annotator_quality(rows)
    assert q.position_bias == pytest.approx(3 / 4 - 1 / 2)  # ties do not count
    # Without "choice", the side comes from the winner and the order shown.
    rows = [row("P", 1, {"winner": 1}, shown_order=[1, 0]), row("P", 2, {"winner": 1}, shown_order=[0, 1])]
    assert annotator_quality(rows)[0].position_bias == pytest.approx(0.0)
    # Ranking: the top is the completion shown first in 1 of 2 rankings of 3 -> 1/2 − 1/3.
    rows = [
        row("R", 1, {"ranking": [0, 1, 2]}, "ranking", shown_order=[0, 2, 1]),
        row("R", 2, {"ranking": [2, 0, 1]}, "ranking", shown_order=[1, 0, 2]),
    ]
    assert annotator_quality(rows)[0].position_bias == pytest.approx(1 / 2 - 1 / 3)
    assert annotator_quality([row("B", 1, {"good": True}, "binary")])[0].position_bias is None


def test_labels_per_hour_from_time_on_the_page_or_else_timestamps():
    # 3 labels, 90 s on the pages in all, spread over 30 minutes (breaks do not count)
    rows = [row("A", i, win(0), minute=m, seconds=s) for i, (m, s) in enumerate([(0, 20), (10, 40), (30, 30)])]
    [q] = annotator_quality(rows)
    assert q.labels_per_hour == pytest.approx(3 * 3600 / 90)
    assert q.median_seconds == 30
    assert annotator_quality([row("A", 1, win(0), seconds=40)])[0].labels_per_hour == pytest.approx(90.0)
    # no time measured on the page: the timestamps' span
    untimed = [dict(r, seconds=None) for r in rows]
    assert annotator_quality(untimed)[0].labels_per_hour == pytest.approx(3 / 0.5)
    no_time = [dict(row("A", 1, win(0), seconds=None), created_at=None)]
    assert annotator_quality(no_time)[0].labels_per_hour is None
    as_text = [dict(r, created_at=r["created_at"].isoformat()) for r in untimed]  # ISO strings work too
    assert annotator_quality(as_text)[0].labels_per_hour == pytest.approx(6.0)


def test_format_quality_writes_markdown_tables():
    winners = {"A": [0, 0, 0, 1], "B": [0, 0, 1, 1], "C": [1, 1, 1, 0]}
    rows = [row(a, item + 1, win(w)) for a, ws in winners.items() for item, w in enumerate(ws)]
    rows += [row("C", 50 + i, win(1), gold=True, gold_answer=0) for i in range(3)]
    quality, pool = annotator_quality(rows), agreement(rows)
    text = format_quality(quality, pool)
    assert "## Agreement (pairwise: 4 items with ≥ 2 labels, 12 labels, 3 annotators)" in text
    assert f"| Krippendorff's α (nominal) | {pool.krippendorff_alpha:.3f} |" in text
    assert "| Fleiss' κ |" in text and "4 items with 3 raters each" in text
    assert "| annotator | labels | gold agreement (n) |" in text
    assert "| C | 7 | 0.00 (3) |" in text and "FLAGGED: gold agreement 0.00" in text
    assert "## Annotators (3, " in text
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert all(line.endswith("|") for line in lines)
