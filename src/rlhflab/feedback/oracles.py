"""Oracular rewards R*(c, o) (Section 4.1): the reward a human's preferences follow.

An oracle is any callable ``R*(context: str, output: str) -> float``. In real RLHF it is unknowable;
here it is a program, so the policy's true performance J(π) (Eq. 12) can be measured next to the
learned reward model's estimate Ĵ(π) (Eq. 14).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence

from rlhflab.errors import ConfigError, TrainingError
from rlhflab.feedback.judge import judge_oracle

Oracle = Callable[[str, str], float]

_VADER = None  # building the analyser reads its lexicon (~10 ms); do it once per process


def sentiment_oracle(context: str, output: str) -> float:
    """The default task's R*: the VADER compound sentiment of the output, in [-1, 1] ("be upbeat")."""
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return float(_VADER.polarity_scores(output)["compound"])


BREVITY_TARGET_WORDS = 20


def brevity_oracle(context: str, output: str) -> float:
    """A cheap deterministic R* in [0, 1]: 1 at exactly 20 words, falling linearly to 0 at 0 or 40."""
    n_words = len(output.split())
    return 1.0 - min(1.0, abs(n_words - BREVITY_TARGET_WORDS) / BREVITY_TARGET_WORDS)


def keyword_oracle(word: str) -> Oracle:
    """An R* in {0, 1}: 1 when ``word`` occurs in the output (case-insensitive). For structure tests."""
    needle = word.lower()

    def oracle(context: str, output: str) -> float:
        return 1.0 if needle in output.lower() else 0.0

    oracle.__name__ = f"keyword_oracle[{word}]"
    return oracle


# ---- rule rewards: cheap programmatic objectives to weigh against a learned reward (rlhflab.rewards.composite)
def length_oracle(context: str, output: str) -> float:
    """Minus the output's length in words: a rule reward that favours shorter outputs."""
    return -float(len(output.split()))


def length_target_oracle(target: str) -> Oracle:
    """Minus the distance in words to a target length N: -|n_words - N| (``length:N``)."""
    if not target.isdigit():
        raise ConfigError(f"oracle 'length:{target}': the target must be a whole number of words")
    n_target = int(target)

    def oracle(context: str, output: str) -> float:
        return -float(abs(len(output.split()) - n_target))

    oracle.__name__ = f"length_oracle[{n_target}]"
    return oracle


def regex_oracle(pattern: str) -> Oracle:
    """An R* in {0, 1}: 1 when the regular expression matches anywhere in the output (``re.search``;
    anchor it with ``^...$`` to require a whole-output match)."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"oracle 'regex:{pattern}': invalid regular expression ({e})") from None

    def oracle(context: str, output: str) -> float:
        return 1.0 if compiled.search(output) else 0.0

    oracle.__name__ = f"regex_oracle[{pattern}]"
    return oracle


BUILTIN_ORACLES: dict[str, Oracle] = {"sentiment": sentiment_oracle, "brevity": brevity_oracle, "length": length_oracle}
# ``NAME:ARGUMENT`` oracles, each built from its argument.
PARAMETRISED_ORACLES: dict[str, Callable[[str], Oracle]] = {
    "keyword": keyword_oracle,
    "length": length_target_oracle,
    "regex": regex_oracle,
    "judge": judge_oracle,  # judge:MODEL, a causal LM comparing the output with a reference reply
}


def load_oracle(spec) -> Oracle:
    """Resolve an oracle: ``"sentiment"``, ``"brevity"``, ``"length"``, ``"length:N"``, ``"keyword:WORD"``,
    ``"regex:PATTERN"``, ``"judge:MODEL"``, ``"package.module:function"``, or a callable (returned as it is)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"oracle must be a name or 'package.module:function', got {spec!r}")
    if spec in BUILTIN_ORACLES:
        return BUILTIN_ORACLES[spec]
    module_name, sep, attr = spec.partition(":")
    if module_name in PARAMETRISED_ORACLES:
        if not attr:
            raise ConfigError(f"oracle {spec!r}: nothing after '{module_name}:'")
        return PARAMETRISED_ORACLES[module_name](attr)
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"unknown oracle {spec!r}; use one of {', '.join(BUILTIN_ORACLES)}, 'length:N', 'keyword:WORD', "
            "'regex:PATTERN', 'package.module:function' or a composite such as '0.7*sentiment + 0.3*brevity'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"oracle {spec!r}: cannot import module '{module_name}' ({e})") from None
    try:
        oracle = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"oracle {spec!r}: module '{module_name}' has no attribute '{attr}'") from None
    if not callable(oracle):
        raise ConfigError(f"oracle {spec!r}: '{attr}' is a {type(oracle).__name__}, not a callable R*(context, output)")
    return oracle


def score_batch(oracle: Oracle, contexts: Sequence[str], outputs: Sequence[str]) -> list[float]:
    """R*(c_i, o_i) for each pair, refusing non-finite values (a NaN reward would poison J and every
    gradient downstream, so it stops the run here with the offending output named)."""
    if len(contexts) != len(outputs):
        raise ConfigError(f"score_batch: {len(contexts)} contexts but {len(outputs)} outputs")
    name = getattr(oracle, "__name__", type(oracle).__name__)
    scores = []
    for i, (context, output) in enumerate(zip(contexts, outputs)):
        value = oracle(context, output)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TrainingError(
                f"oracle {name} returned {value!r} (not a number) for output {i}: {output[:60]!r}"
            ) from None
        if not math.isfinite(value):
            raise TrainingError(f"oracle {name} returned {value} for output {i}: {output[:60]!r}")
        scores.append(value)
    return scores
