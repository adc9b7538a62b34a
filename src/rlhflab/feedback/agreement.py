"""Agreement between labellers (Section 7.3.3: inter-annotator and expert-annotator agreement).

The oracle R* plays the expert: :func:`oracle_agreement` is the expert-annotator agreement of a
preference set, and bounds the accuracy any reward model fit to it can show against R*.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from rlhflab.data.records import Preference
from rlhflab.data.render import prompt_text, render_completion
from rlhflab.errors import ConfigError


def _key(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _labels(prefs: Sequence[Preference]) -> dict:
    """(prompt, unordered pair) -> the chosen completion of every label given to that pair."""
    out = defaultdict(list)
    for p in prefs:
        chosen, rejected = _key(p.chosen), _key(p.rejected)
        out[(_key(p.prompt), frozenset((chosen, rejected)))].append(chosen)
    return out


def pairwise_agreement(prefs_a: Sequence[Preference], prefs_b: Sequence[Preference]) -> float:
    """The fraction of (label in a, label in b) on the same prompt and unordered pair that chose the
    same completion. ConfigError when the two sets share no pair."""
    a, b = _labels(prefs_a), _labels(prefs_b)
    same = total = 0
    for key in a.keys() & b.keys():
        for x, y in itertools.product(a[key], b[key]):
            same += x == y
            total += 1
    if total == 0:
        raise ConfigError("the two preference sets share no (prompt, pair); agreement is undefined")
    return same / total


def oracle_agreement(prefs: Sequence[Preference], oracle: Callable[[str, str], float]) -> float:
    """The fraction of preferences whose chosen completion has the higher R* (an exact tie counts 1/2)."""
    if not prefs:
        raise ConfigError("oracle_agreement needs at least one preference")
    score = 0.0
    for p in prefs:
        context = prompt_text(p.prompt)
        gap = oracle(context, render_completion(p.chosen)) - oracle(context, render_completion(p.rejected))
        score += 1.0 if gap > 0 else 0.5 if gap == 0 else 0.0
    return score / len(prefs)


def inter_annotator_agreement(members: Sequence, prompt, pairs: Sequence[tuple], rng: np.random.Generator) -> float:
    """Mean pairwise agreement between every two annotators labelling the same ``pairs`` (a, b) of
    completions for ``prompt``: how consistent a pool is before any reward model averages it."""
    if len(members) < 2:
        raise ConfigError("inter-annotator agreement needs at least 2 annotators")
    labels = [[m.compare(prompt, a, b, rng) for a, b in pairs] for m in members]
    return float(np.mean([pairwise_agreement(x, y) for x, y in itertools.combinations(labels, 2)]))
