"""Composite reward sources: several objectives weighed into one reward (Section 7.8, multi-objective
optimisation with multiple reward signals).

A composite is

    R(c, o) = sum_k w_k * norm_k(R_k(c, o)),    norm_k(x) = (x - mu_k) / (sigma_k + 1e-8)

where each component R_k is any reward source (a reward-model directory, an oracle, a rule reward
such as ``length`` or ``regex:PATTERN``, ``package.module:function``) and mu_k, sigma_k are the running
mean and population std of every value R_k has produced so far (:class:`rlhflab.losses.RunningMoments`,
updated with the batch before it is normalised, so the first batch is normalised by its own moments).
Standardising each component makes a composite's scale independent of each component's units: a
weight w_k says how much R_k counts in standard deviations, whether R_k is a sentiment in [-1, 1] or
minus a length in words. A component with ``normalize: false`` enters raw, in its own units.

The statistics belong to the source object: they accumulate over every batch it scores (a fresh
``load_reward_source`` starts afresh, and each process of a distributed run keeps its own), so the
same output may score differently early and late in a run. Scores from one call are comparable with
each other, which is what best-of-n and the RL baselines use. ``state_dict`` / ``load_state_dict``
carry them (and those of a nested composite) through a checkpoint, so a resumed policy-optimisation
run standardises as the uninterrupted one would (in a distributed run, the main process's
statistics are the ones saved).

Two ways to write one, accepted wherever a reward source is (``--reward``, ``--oracle``,
``--reward_model``):

- a string of terms joined by `` + `` or `` - `` (spaces around the operator are required, so
  paths may contain '-'), each term ``[WEIGHT*]SPEC`` with WEIGHT a number (default 1) and SPEC a
  reward source without spaces; a leading `` - `` negates the first term:
  ``"0.7*runs/rm-1/reward_model + 0.3*brevity"``, ``"sentiment - 0.5*length"``;
- a YAML file (``*.yaml`` / ``*.yml``) holding a list of entries
  ``{reward: SPEC, weight: W, normalize: true|false, name: NAME}``, only ``reward`` required
  (weight 1, normalize true, name SPEC by default); a SPEC here may contain spaces.

Each component's raw values on the last batch are kept (``components_last``) and logged by policy
optimisation as ``reward/<name>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from rlhflab.errors import ConfigError
from rlhflab.losses import RunningMoments
from rlhflab.rewards.base import RewardSource

OPERATORS = ("+", "-")
ENTRY_KEYS = ("reward", "weight", "normalize", "name")
YAML_SUFFIXES = (".yaml", ".yml")
# WEIGHT* at the start of a term: a plain decimal number, so that a '*' inside a spec (a regex) is not one.
_WEIGHT = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\*(.*)")


@dataclass(frozen=True)
class CompositeTerm:
    """One component: the reward source ``reward`` enters with ``weight``, standardised unless
    ``normalize`` is false, logged as ``reward/<name>``."""

    reward: str
    weight: float = 1.0
    normalize: bool = True
    name: str = ""
    where: str = ""  # how an error names this term: "composite reward '...': term 2", "f.yaml: entry 2"


def is_composite_spec(spec) -> bool:
    """A YAML file name, a spec with spaces or a single weighted term; an existing directory (a reward
    model, whatever its name) never is."""
    if not isinstance(spec, str) or Path(spec).is_dir():
        return False
    return spec.endswith(YAML_SUFFIXES) or len(spec.split()) > 1 or _WEIGHT.fullmatch(spec.strip()) is not None


def parse_composite_spec(spec: str) -> list[CompositeTerm]:
    """The terms of ``"[-] [W*]SPEC (+|-) [W*]SPEC ..."`` (see the module docstring), without loading them."""
    where = f"composite reward {spec!r}"
    tokens = spec.split()
    if not tokens:
        raise ConfigError(f"{where}: no terms")
    if tokens[0] not in OPERATORS:
        tokens = ["+", *tokens]
    terms = []
    for k, i in enumerate(range(0, len(tokens), 2), start=1):
        operator, token = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else None
        if operator not in OPERATORS:
            raise ConfigError(f"{where}: expected ' + ' or ' - ' before term {k}, got {operator!r}")
        if token is None:
            raise ConfigError(f"{where}: ends with '{operator}' and no term after it")
        if token in OPERATORS:
            raise ConfigError(f"{where}: term {k} is missing (two operators in a row)")
        weight, reward = 1.0, token
        if match := _WEIGHT.fullmatch(token):
            weight, reward = float(match.group(1)), match.group(2)
            if not reward:
                raise ConfigError(f"{where}: term {k} has a weight but no reward")
            if not math.isfinite(weight):
                raise ConfigError(f"{where}: term {k}'s weight {match.group(1)} is not a finite number")
        elif token.startswith("*"):
            raise ConfigError(f"{where}: term {k} has '*' but no weight before it")
        sign = -1.0 if operator == "-" else 1.0
        terms.append(CompositeTerm(reward, sign * weight, True, reward, f"{where}: term {k}"))
    return _unique_names(terms)


def read_composite_file(path: str | Path) -> list[CompositeTerm]:
    """The terms of a YAML list of ``{reward, weight, normalize, name}`` entries (entry 1 is the first)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: composite reward file not found")
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{path}: expected a non-empty list of entries {{reward: SPEC, weight: W, normalize: B, name: N}}"
        )
    terms = []
    for k, entry in enumerate(entries, start=1):
        where = f"{path}: entry {k}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with a 'reward' key, got {type(entry).__name__} {entry!r}")
        unknown = sorted(set(map(str, entry)) - set(ENTRY_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}' (keys: {', '.join(ENTRY_KEYS)})")
        if "reward" not in entry:
            raise ConfigError(f"{where}: missing key 'reward'")
        reward, weight = entry["reward"], entry.get("weight", 1.0)
        normalize, name = entry.get("normalize", True), entry.get("name", reward)
        if not isinstance(reward, str) or not reward.strip():
            raise ConfigError(f"{where}: 'reward' must be a reward source spec (a string), got {reward!r}")
        # bool is an int in Python, but 'weight: true' is a mistake, not a weight of 1.
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"{where}: 'weight' must be a finite number, got {weight!r}")
        if not isinstance(normalize, bool):
            raise ConfigError(f"{where}: 'normalize' must be true or false, got {normalize!r}")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: 'name' must be a non-empty string, got {name!r}")
        terms.append(CompositeTerm(reward.strip(), float(weight), normalize, name.strip(), where))
    return _unique_names(terms)


def _unique_names(terms: list[CompositeTerm]) -> list[CompositeTerm]:
    """Each component is logged as ``reward/<name>``, so two may not share a name."""
    seen = {}
    for term in terms:
        if term.name in seen:
            raise ConfigError(
                f"{term.where}: name '{term.name}' is already {seen[term.name]}'s (a YAML file can name components)"
            )
        seen[term.name] = term.where.rpartition(": ")[2]
    return terms


class CompositeReward(RewardSource):
    """A reward source returning sum_k w_k * norm_k(R_k) (module docstring); ``components_last`` maps
    each component's name to its raw values on the last batch."""

    def __init__(self, name: str, terms: Sequence[CompositeTerm], sources: Sequence[RewardSource]):
        super().__init__(name, is_model=any(s.is_model for s in sources))
        self.terms, self.sources = list(terms), list(sources)
        self.moments = [RunningMoments() for _ in self.terms]
        self._components_last: dict[str, torch.Tensor] = {}

    @property
    def components_last(self) -> dict[str, torch.Tensor]:
        return self._components_last

    def rewards(self, contexts: list[str], outputs: list[str]) -> torch.Tensor:
        total = torch.zeros(len(outputs))
        self._components_last = {}
        for term, source, moments in zip(self.terms, self.sources, self.moments):
            raw = source(contexts, outputs).float().cpu()
            self._components_last[term.name] = raw
            value = raw
            if term.normalize and raw.numel():
                moments.update(raw)  # before use: the batch counts in its own normalisation
                value = (raw - moments.mean) / (moments.std + 1e-8)
            total = total + term.weight * value
        return total

    def state_dict(self) -> dict:
        """Each component's running moments (and a nested composite's own state), for checkpoints."""
        return {
            "components": [
                {"name": term.name, "moments": moments.state_dict(), "source": source.state_dict()}
                for term, source, moments in zip(self.terms, self.sources, self.moments)
            ]
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a checkpoint of a composite with other components is a ConfigError."""
        saved = [c["name"] for c in state["components"]]
        if saved != [t.name for t in self.terms]:
            raise ConfigError(
                f"composite reward {self.name!r}: the checkpoint's components are {', '.join(saved)}, "
                f"not {', '.join(t.name for t in self.terms)}"
            )
        for entry, source, moments in zip(state["components"], self.sources, self.moments):
            moments.load_state_dict(entry["moments"])
            if entry.get("source") is not None:
                source.load_state_dict(entry["source"])


def composite_reward(spec: str, load: Callable[[str], object]) -> CompositeReward:
    """Parse a composite spec (a string or a YAML file name) and load each component with ``load``
    (``rlhflab.rewards.registry.load_reward_source``); a component that fails to load is an error naming its term."""
    terms = read_composite_file(spec) if spec.endswith(YAML_SUFFIXES) else parse_composite_spec(spec)
    sources = []
    for term in terms:
        try:
            sources.append(load(term.reward))
        except ConfigError as e:
            raise ConfigError(f"{term.where}: {e}") from None
    return CompositeReward(spec.strip(), terms, sources)
