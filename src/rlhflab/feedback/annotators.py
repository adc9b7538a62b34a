"""Simulated annotators: feedback generated from an oracle R* through a model of human behaviour.

Section 5 calls the map from R* to observed feedback (and back) Ω. Here it is explicit:
- pairs follow Bradley-Terry, P(a ≻ b) = σ((R*(a) − R*(b)) / T)  (Eq. 8 with a temperature T);
- rankings follow Plackett-Luce, sampled with the Gumbel-max trick on R*/T (Section 7.5);
- ratings are R* plus Gaussian noise, binned onto the requested scale (Section 7.3.2);
- language feedback is a templated critique of the noisy reward, plus what R* itself sees in the
  output: the words whose removal raises it and the one whose removal lowers it most
  (:func:`oracle_critique`), so a critique carries information a learner can use (Section 7.3.2).
An :class:`AnnotatorPool` draws one member per label, so a dataset mixes annotators who disagree:
the "marginalisation over preferences" of Section 5.1 that a single reward model averages away.

Every method takes a ``numpy.random.Generator``; the same seed gives the same records.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from rlhflab.data.records import LanguageFeedback, Preference, Prompt, Ranking, Rating, parse_scale
from rlhflab.data.render import prompt_text, render_completion
from rlhflab.errors import ConfigError

DEFAULT_FEEDBACK_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("Too negative; make it more upbeat.", "This reads as gloomy; find something positive to say."),
    ("Neutral; add some warmth and positivity.", "Fine but flat; a more cheerful tone would help."),
    ("Good: warm and positive.", "Lovely, upbeat reply; keep this tone."),
)


def _sigmoid(x: float) -> float:
    # the two branches keep exp() from overflowing for large |x|
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass
class SimulatedAnnotator:
    """One simulated human whose latent objective is ``oracle`` (R*, Section 4.1).

    name: recorded in each record's ``annotator`` field.
    oracle: R*(context, output) -> float.
    temperature: Bradley-Terry / Plackett-Luce temperature T; larger is noisier, 0 is a perfectly
        consistent annotator (exact ties broken at random).
    bias: added to the reward of the item shown first before comparing or ranking: a position bias
        (Section 7.3.2 notes that presentation order biases annotators).
    rating_noise: standard deviation of the Gaussian noise added to R* before a rating is binned.
    reward_scale: the oracle's range (low, high), over which ratings are binned linearly.
    record_margin: store the true reward gap |R*(a) − R*(b)| as each preference's ``margin``.
    feedback_templates: critiques for the low, middle and high third of ``reward_scale``.
    """

    name: str
    oracle: Callable[[str, str], float]
    temperature: float = 1.0
    bias: float = 0.0
    rating_noise: float = 0.0
    reward_scale: tuple[float, float] = (-1.0, 1.0)
    record_margin: bool = False
    feedback_templates: tuple[tuple[str, ...], ...] = field(default=DEFAULT_FEEDBACK_TEMPLATES)

    def __post_init__(self):
        if not self.temperature >= 0 or not math.isfinite(self.temperature):
            raise ConfigError(f"annotator {self.name}: temperature must be finite and >= 0, got {self.temperature}")
        if not self.rating_noise >= 0:
            raise ConfigError(f"annotator {self.name}: rating_noise must be >= 0, got {self.rating_noise}")
        low, high = self.reward_scale
        if not high > low:
            raise ConfigError(f"annotator {self.name}: reward_scale must be (low, high) with high > low")

    def reward(self, prompt, completion) -> float:
        """R*(c, o) on the text an annotator would read."""
        return float(self.oracle(prompt_text(prompt), render_completion(completion)))

    def compare(self, prompt, a, b, rng: np.random.Generator) -> Preference:
        """A Bradley-Terry preference between ``a`` (shown first) and ``b`` (Eq. 8):
        P(a ≻ b) = σ((R*(a) + bias − R*(b)) / T)."""
        ra, rb = self.reward(prompt, a), self.reward(prompt, b)
        # One uniform draw per label whatever the temperature, so annotators that differ only in T
        # consume the random stream identically (common random numbers across a pool).
        u = rng.random()
        gap = ra + self.bias - rb
        if self.temperature == 0:
            a_wins = gap > 0 or (gap == 0 and u < 0.5)
        else:
            a_wins = u < _sigmoid(gap / self.temperature)
        chosen, rejected = (a, b) if a_wins else (b, a)
        margin = abs(ra - rb) if self.record_margin else None
        return Preference(prompt, chosen, rejected, margin=margin, annotator=self.name)

    def rank(self, prompt, completions: Sequence, rng: np.random.Generator) -> Ranking:
        """A Plackett-Luce ranking, best first: argsort of R*/T + Gumbel noise (the Gumbel-max trick
        samples PL exactly). The first-shown completion gets ``bias``; T = 0 sorts by reward."""
        if len(completions) < 2:
            raise ConfigError(f"a ranking needs at least 2 completions, got {len(completions)}")
        rewards = np.array([self.reward(prompt, c) for c in completions], dtype=float)
        rewards[0] += self.bias
        noise = rng.gumbel(size=len(completions))
        if self.temperature == 0:
            # lexsort: last key is primary; the Gumbel draws only break exact ties
            order = np.lexsort((noise, -rewards))
        else:
            order = np.argsort(-(rewards / self.temperature + noise), kind="stable")
        return Ranking(prompt, [completions[i] for i in order], annotator=self.name)

    def _noisy_reward(self, prompt, completion, rng) -> float:
        return self.reward(prompt, completion) + self.rating_noise * rng.standard_normal()

    def _bin(self, value: float, k: int) -> int:
        """Index 0..k-1 of ``value`` on ``reward_scale`` cut into k equal bins (clipped at the ends)."""
        low, high = self.reward_scale
        return int(min(k - 1, max(0, math.floor((value - low) / (high - low) * k))))

    def rate(self, prompt, completion, rng: np.random.Generator, scale: str = "likert:5") -> Rating:
        """A rating of R* + N(0, rating_noise²) on ``scale``: likert:K bins ``reward_scale`` into K equal
        bins scored 1..K; binary is 1 above the midpoint; categorical bins into its categories
        (score = index); continuous is the noisy reward itself."""
        kind, param = parse_scale(scale)
        noisy = self._noisy_reward(prompt, completion, rng)
        if kind == "continuous":
            score = noisy
        elif kind == "binary":
            score = 1.0 if noisy > sum(self.reward_scale) / 2 else 0.0
        elif kind == "likert":
            score = float(self._bin(noisy, param) + 1)
        else:
            score = float(self._bin(noisy, len(param)))
        return Rating(prompt, completion, score, scale=scale, annotator=self.name)

    def language_feedback(self, prompt, completion, rng: np.random.Generator) -> LanguageFeedback:
        """A critique chosen by the third of ``reward_scale`` that R* + noise falls in (the phrasing
        within that third drawn from ``rng``), followed by :func:`oracle_critique`'s quotes."""
        band = self._bin(self._noisy_reward(prompt, completion, rng), len(self.feedback_templates))
        phrasings = self.feedback_templates[band]
        text = phrasings[int(rng.integers(len(phrasings)))]
        detail = oracle_critique(self.oracle, prompt_text(prompt), render_completion(completion))
        return LanguageFeedback(prompt, completion, f"{text} {detail}".strip(), annotator=self.name)


def _word(piece: str) -> str:
    return piece.strip(".,;:!?\"'()[]")


def oracle_critique(
    oracle: Callable[[str, str], float], context: str, output: str, max_quotes: int = 2, min_change: float = 1e-6
) -> str:
    """What R* sees in ``output``, in words: each word is removed in turn and the output re-scored
    (one oracle call per word); the words whose removal raises R*(c, o) most ("pull it down", at most
    ``max_quotes``, in reading order) and the one whose removal lowers it most ("works") are quoted.
    Works for any oracle callable; "" when removing no word changes R* by more than ``min_change``
    or the output has fewer than two words."""
    words = output.split()
    if len(words) < 2:
        return ""
    base = float(oracle(context, output))
    change = [float(oracle(context, " ".join(words[:i] + words[i + 1 :]))) - base for i in range(len(words))]
    order = sorted(range(len(words)), key=lambda i: -change[i])
    down = sorted(i for i in order[:max_quotes] if change[i] > min_change and _word(words[i]))
    best = min(range(len(words)), key=lambda i: change[i])
    parts = []
    if down:
        parts.append("What pulls it down: " + ", ".join(f'"{_word(words[i])}"' for i in down) + ".")
    if change[best] < -min_change and _word(words[best]):
        parts.append(f'What works: "{_word(words[best])}".')
    return " ".join(parts)


class AnnotatorPool:
    """A crowd of simulated annotators; each label comes from one member drawn with ``weights``.

    The resulting dataset mixes members' preferences, as real crowdsourced data does; a single
    deterministic reward model fit to it averages them (Section 5.1, marginalisation over preferences).
    """

    def __init__(self, members: Sequence[SimulatedAnnotator], weights: Sequence[float] | None = None):
        if not members:
            raise ConfigError("an annotator pool needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigError(f"annotator names must be unique, got {names}")
        if weights is None:
            weights = [1.0] * len(members)
        w = np.asarray(weights, dtype=float)
        if w.shape != (len(members),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ConfigError(
                f"pool weights must be {len(members)} non-negative numbers with a positive sum, got {list(weights)}"
            )
        self.members = list(members)
        self.weights = w / w.sum()

    def draw(self, rng: np.random.Generator) -> SimulatedAnnotator:
        return self.members[int(rng.choice(len(self.members), p=self.weights))]

    def compare(self, prompt, a, b, rng: np.random.Generator) -> Preference:
        return self.draw(rng).compare(prompt, a, b, rng)

    def rank(self, prompt, completions: Sequence, rng: np.random.Generator) -> Ranking:
        return self.draw(rng).rank(prompt, completions, rng)

    def rate(self, prompt, completion, rng: np.random.Generator, scale: str = "likert:5") -> Rating:
        return self.draw(rng).rate(prompt, completion, rng, scale=scale)

    def language_feedback(self, prompt, completion, rng: np.random.Generator) -> LanguageFeedback:
        return self.draw(rng).language_feedback(prompt, completion, rng)


def make_pool(
    oracle: Callable[[str, str], float],
    n: int = 3,
    base_temperature: float = 0.1,
    max_bias: float = 0.1,
    rating_noise: float = 0.1,
    reward_scale: tuple[float, float] = (-1.0, 1.0),
    member_oracles: Sequence[Callable[[str, str], float]] | None = None,
) -> AnnotatorPool:
    """A pool of ``n`` equally weighted annotators sharing R* but not their behaviour.

    Member i ("annotator-i") has temperature ``base_temperature · 2**i`` (from careful to careless)
    and a position bias spread evenly over [−max_bias, +max_bias] (0 for a single member), so the
    pool disagrees with itself the way real annotators do. The defaults suit rewards in [−1, 1]
    such as the sentiment oracle, whose typical gaps are 0.1–1.

    ``member_oracles``: member i's own R* (``n`` of them) in place of the shared ``oracle``, so the
    members want different things, not only label with different noise: the pool whose preferences
    one scalar reward model cannot represent (Section 5.1).
    """
    if n < 1:
        raise ConfigError(f"a pool needs n >= 1 annotators, got {n}")
    if member_oracles is not None and len(member_oracles) != n:
        raise ConfigError(f"{len(member_oracles)} member oracles for a pool of {n} annotators; give one per member")
    biases = np.linspace(-max_bias, max_bias, n) if n > 1 else [0.0]
    members = [
        SimulatedAnnotator(
            name=f"annotator-{i}",
            oracle=oracle if member_oracles is None else member_oracles[i],
            temperature=base_temperature * 2**i,
            bias=float(biases[i]),
            rating_noise=rating_noise,
            reward_scale=reward_scale,
        )
        for i in range(n)
    ]
    return AnnotatorPool(members)


def _check_lengths(prompts, completions_per_prompt) -> list:
    """The prompts as plain prompt values (Prompt records are unwrapped), checked against the completions."""
    if len(prompts) != len(completions_per_prompt):
        raise ConfigError(f"{len(prompts)} prompts but {len(completions_per_prompt)} lists of completions")
    return [p.prompt if isinstance(p, Prompt) else p for p in prompts]


def annotate_pairs(
    annotator,
    prompts: Sequence,
    completions_per_prompt: Sequence[Sequence],
    rng: np.random.Generator,
    pairs_per_prompt: int = 1,
) -> list[Preference]:
    """Preferences on up to ``pairs_per_prompt`` distinct pairs of each prompt's completions.

    Pairs are drawn without replacement; which member of a pair is shown first is random, so a
    position bias adds noise rather than a systematic lean toward earlier samples. Pairs of identical
    completions (common with short samples) carry no preference and are never offered: they are
    skipped, and their number is printed to stderr; a prompt whose completions are all the same gets
    no pair.
    """
    prompts = _check_lengths(prompts, completions_per_prompt)
    out, identical = [], 0
    for prompt, completions in zip(prompts, completions_per_prompt):
        if len(completions) < 2:
            raise ConfigError(f"prompt {prompt_text(prompt)[:60]!r} has {len(completions)} completion(s); pairs need 2")
        pairs = []
        for i, j in itertools.combinations(range(len(completions)), 2):
            if completions[i] == completions[j]:
                identical += 1
            else:
                pairs.append((i, j))
        if not pairs:
            continue
        picked = rng.choice(len(pairs), size=min(pairs_per_prompt, len(pairs)), replace=False)
        for p in picked:
            i, j = pairs[int(p)]
            if rng.random() < 0.5:
                i, j = j, i
            out.append(annotator.compare(prompt, completions[i], completions[j], rng))
    if identical:
        print(
            f"annotate_pairs: skipped {identical} pair(s) of identical completions (no preference to label)",
            file=sys.stderr,
        )
    return out


def annotate_rankings(
    annotator, prompts: Sequence, completions_per_prompt: Sequence[Sequence], rng: np.random.Generator
) -> list[Ranking]:
    """One Plackett-Luce ranking of all completions per prompt (shown in a random order)."""
    prompts = _check_lengths(prompts, completions_per_prompt)
    out = []
    for prompt, completions in zip(prompts, completions_per_prompt):
        shown = [completions[i] for i in rng.permutation(len(completions))]
        out.append(annotator.rank(prompt, shown, rng))
    return out


def annotate_ratings(
    annotator,
    prompts: Sequence,
    completions_per_prompt: Sequence[Sequence],
    rng: np.random.Generator,
    scale: str = "likert:5",
) -> list[Rating]:
    """A rating on ``scale`` for every completion of every prompt."""
    prompts = _check_lengths(prompts, completions_per_prompt)
    parse_scale(scale)  # fail before any oracle call
    return [annotator.rate(p, c, rng, scale=scale) for p, cs in zip(prompts, completions_per_prompt) for c in cs]


def annotate_language_feedback(
    annotator, prompts: Sequence, completions_per_prompt: Sequence[Sequence], rng: np.random.Generator
) -> list[LanguageFeedback]:
    """A critique for every completion of every prompt: its tone from R* + noise, then what R* sees in
    it (:func:`oracle_critique`)."""
    prompts = _check_lengths(prompts, completions_per_prompt)
    return [annotator.language_feedback(p, c, rng) for p, cs in zip(prompts, completions_per_prompt) for c in cs]


def parse_attribute_oracles(spec: str) -> list[tuple[str, str]]:
    """``"helpful=sentiment,short=brevity"`` -> ``[("helpful", "sentiment"), ("short", "brevity")]``;
    an entry without ``=``, an empty name or oracle, or a repeated name is a one-line ConfigError."""
    pairs = []
    for entry in spec.split(","):
        name, equals, oracle = (part.strip() for part in entry.partition("="))
        if not equals or not name or not oracle:
            raise ConfigError(f"--attribute_oracles: expected NAME=ORACLE, got {entry.strip()!r}")
        if name in dict(pairs):
            raise ConfigError(f"--attribute_oracles: attribute '{name}' is named twice")
        pairs.append((name, oracle))
    return pairs


def annotate_attribute_ratings(
    pool: AnnotatorPool,
    attribute_oracles: dict[str, Callable[[str, str], float]],
    prompts: Sequence,
    completions_per_prompt: Sequence[Sequence],
    rng: np.random.Generator,
    scale: str = "likert:5",
) -> list[Rating]:
    """One rating per (completion, attribute), as the feedback app's attribute Likerts give them
    (Section 7.3.2; several objectives, Section 7.8): a pool member drawn per completion rates every
    attribute, each with that member's noise and binning but the attribute's own R*
    (``attribute_oracles``), and each rating names its ``attribute``."""
    prompts = _check_lengths(prompts, completions_per_prompt)
    parse_scale(scale)  # fail before any oracle call
    raters = {name: [replace(m, oracle=oracle) for m in pool.members] for name, oracle in attribute_oracles.items()}
    out = []
    for prompt, completions in zip(prompts, completions_per_prompt):
        for completion in completions:
            member = pool.members.index(pool.draw(rng))
            for name, members in raters.items():
                out.append(replace(members[member].rate(prompt, completion, rng, scale=scale), attribute=name))
    return out
