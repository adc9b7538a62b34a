"""Reward-model ensembles (Coste et al. 2023): K reward models R_1 … R_K fitted to the same feedback,
combined per sample into one reward, their disagreement a measure of how far R_phi can be trusted.

A reward model is an imperfect proxy of R*, least reliable away from the contexts and outputs its
feedback covered (Sections 5.1, 7.5); optimising it hard finds its errors (over-optimisation,
Section 7.7, Gao et al. 2023), and knowing where it is unsure is what Section 8 asks for. Members
that fit the feedback equally well but disagree elsewhere show where the feedback did not pin R_phi
down; a conservative combination stops the policy from cashing in on one member's optimism there.

On disk (``rlhflab reward --ensemble K``)::

    OUT/member-00/reward_model   one plain reward model per member (save_pretrained), each member's
    OUT/member-01/...            run directory with its config.yaml and metrics.jsonl
    OUT/reward_model/ensemble.json   the same manifest, its member paths relative to this folder
    OUT/ensemble.json                the manifest, written last: a run directory with it is finished

so ``--reward OUT`` and ``--reward OUT/reward_model`` (where a single run keeps its model) both load
the ensemble. A manifest is ``{"format": "rlhflab-ensemble/1", "objective": "mean", "members":
[{"path", "seed", "offset", ...}, ...]}``.

The cheaper shared-trunk variant (``--ensemble K --ensemble_trunk shared``) is one run of one model
with K linear heads on one backbone, head k initialised from member k's seed (and, under bootstrap,
trained on member k's resample through per-record weights,
:class:`rlhflab.train.offline.RewardAlgorithm`)::

    OUT/reward_model             the K-output model (save_pretrained) and its ensemble.json
    OUT/ensemble.json            written last

with ``"trunk": "shared"``, ``"model"`` the model folder (relative) and members ``{"head": k, "seed",
"offset"}``. Members share the backbone's features, so they disagree less than separately trained
models do (their disagreement comes from the heads' initialisation and resamples alone), at the cost
of one forward for all K. It loads as the same :class:`RewardEnsemble`: every objective and the
uncertainty report work unchanged.

A reward-source spec selects the objective after ``::``: ``DIR`` (the manifest's default),
``DIR::mean``, ``DIR::wco`` or ``DIR::uwo`` / ``DIR::uwo:LAMBDA`` (see :func:`ensemble_reward`).

Centring. A Bradley-Terry or Plackett-Luce reward (Eqs. 11, 18) is identified only up to an additive
constant: two members can agree on every preference and still differ by a shift, which would decide
the minimum of WCO and count as variance in UWO though no preference supports it. Each member is
therefore centred, R_k − b_k with b_k its mean over the training data's (context, completion) pairs
(the full set, the same for every member, also under bootstrap). A shift per *context* is just as
unidentified, but removing it needs the member's mean on samples of every context it will score,
unseen ones included; what remains of it is disagreement the feedback did not resolve, which the
ensemble should see. Regression on ratings (Eq. 7) fixes the level itself, so rating members keep
it (b_k = 0). Members are not rescaled: the Bradley-Terry likelihood fixes the scale of R_phi.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.data.render import completion_text, prompt_text
from rlhflab.errors import ConfigError
from rlhflab.files import read_json_manifest, write_json
from rlhflab.rewards.heads import output_layer
from rlhflab.seeds import derive_seed

FORMAT = "rlhflab-ensemble/1"
MANIFEST = "ensemble.json"
OBJECTIVES = ("mean", "wco", "uwo")
# λ of UWO. The rewards are centred log-odds, so λ = 1 takes off one unit of reward where the members'
# std is one unit, the size of a confident preference. Coste et al. find UWO insensitive to λ over a
# wide range; tune it per reward scale.
DEFAULT_UNCERTAINTY_COEF = 1.0


@dataclass(frozen=True)
class Objective:
    """How the members' rewards become one: ``name`` in OBJECTIVES, ``coef`` the λ of ``uwo``."""

    name: str = "mean"
    coef: float = 0.0

    def __str__(self) -> str:
        return f"uwo:{self.coef:g}" if self.name == "uwo" else self.name


def parse_objective(text: str, where: str = "ensemble objective") -> Objective:
    """``mean``, ``wco``, ``uwo`` (λ = DEFAULT_UNCERTAINTY_COEF) or ``uwo:LAMBDA`` with λ ≥ 0;
    anything else is a one-line ConfigError naming ``where``."""
    name, sep, coef = text.strip().partition(":")
    if name not in OBJECTIVES:
        raise ConfigError(f"{where}: unknown ensemble objective '{text}' (choose mean, wco, uwo or uwo:LAMBDA)")
    if name != "uwo":
        if sep:
            raise ConfigError(f"{where}: ensemble objective '{name}' takes no coefficient (got '{text}')")
        return Objective(name)
    if not sep:
        return Objective("uwo", DEFAULT_UNCERTAINTY_COEF)
    try:
        value = float(coef)
    except ValueError:
        raise ConfigError(f"{where}: the uwo coefficient '{coef}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: the uwo coefficient must be a finite number >= 0, got '{coef}'")
    return Objective("uwo", value)


def ensemble_reward(member_rewards: torch.Tensor, objective: Objective) -> torch.Tensor:
    """One reward from K members' (Coste et al. 2023, Section 3), over the member axis 0:

    mean:  R̄(c, o) = (1/K) Σ_k R_k(c, o)
    wco:   min_k R_k(c, o)                                   (worst-case optimisation)
    uwo:   R̄(c, o) − λ · (1/K) Σ_k (R_k(c, o) − R̄(c, o))²    (uncertainty-weighted optimisation)

    The variance divides by K (the members are the whole population being combined, not a sample),
    so a one-member ensemble is that member under every objective.
    member_rewards: (K, ...) → (...)."""
    if objective.name == "mean":
        return member_rewards.mean(0)
    if objective.name == "wco":
        return member_rewards.min(0).values
    if objective.name == "uwo":
        return member_rewards.mean(0) - objective.coef * member_rewards.var(0, unbiased=False)
    raise ValueError(f"unknown ensemble objective {objective.name!r}")


def member_disagreement(member_rewards: torch.Tensor) -> torch.Tensor:
    """The members' std per sample, sqrt((1/K) Σ_k (R_k − R̄)²) (the same 1/K as UWO's variance).
    (K, ...) → (...)."""
    return member_rewards.std(0, unbiased=False)


class RewardEnsemble:
    """Callable ``(contexts, outputs) -> Tensor (B,)``: the members' centred rewards combined by
    ``objective``. ``members``: callables of the same signature; ``offsets``: each member's b_k.
    ``joint`` (a shared-trunk ensemble): one callable giving every member's reward at once, (K, B),
    in place of calling K members. After every call, ``uncertainty_last`` holds the members' std per
    sample of that batch (B,)."""

    def __init__(
        self,
        members: Sequence[Callable],
        offsets: Sequence[float],
        objective: Objective,
        joint: Callable | None = None,
    ):
        if len(members) != len(offsets) or not members:
            raise ValueError(f"{len(members)} members with {len(offsets)} offsets")
        self.members, self.objective, self.joint = list(members), objective, joint
        self.offsets = torch.tensor([float(b) for b in offsets], dtype=torch.float32)
        self.uncertainty_last: torch.Tensor | None = None

    @classmethod
    def shared_trunk(cls, joint: Callable, offsets: Sequence[float], objective: Objective) -> RewardEnsemble:
        """An ensemble whose K = len(offsets) members are the outputs of ``joint`` ((K, B) per call);
        ``members[k]`` still scores member k alone."""
        members = [lambda c, o, k=k: joint(c, o)[k] for k in range(len(offsets))]
        return cls(members, offsets, objective, joint)

    def __len__(self) -> int:
        return len(self.members)

    def member_rewards(self, contexts: Sequence[str], outputs: Sequence[str]) -> torch.Tensor:
        """R_k(c, o) − b_k for every member, (K, B); sets ``uncertainty_last``."""
        if self.joint is not None:
            rewards = torch.as_tensor(self.joint(list(contexts), list(outputs)), dtype=torch.float32)
            rewards = rewards.reshape(len(self), len(outputs))
        else:
            rewards = torch.stack(
                [torch.as_tensor(m(list(contexts), list(outputs)), dtype=torch.float32).flatten() for m in self.members]
            )
        rewards = rewards - self.offsets[:, None]
        self.uncertainty_last = member_disagreement(rewards)
        return rewards

    def __call__(self, contexts: Sequence[str], outputs: Sequence[str]) -> torch.Tensor:
        return ensemble_reward(self.member_rewards(contexts, outputs), self.objective)


# ---- training-side helpers ---------------------------------------------------------------------
def member_seed(seed: int, k: int) -> int:
    """Member ``k``'s seed in a run seeded ``seed`` (below 2**31, valid everywhere a seed goes)."""
    return derive_seed(seed, "ensemble", k) % 2**31


def init_member_heads(model, seeds: Sequence[int]) -> None:
    """Initialise a shared-trunk ensemble's K output heads, head k (row k of the output layer) drawn
    from N(0, initializer_range²) with its member's seed and its bias zeroed, as a K-run ensemble
    would draw each member's fresh head (HF's initialisation of a new linear layer). ``model``: an
    ``AutoModelForSequenceClassification`` with K = len(seeds) outputs (a ``score`` or ``classifier``
    linear layer, or a ``classifier.out_proj`` one)."""
    try:
        head = output_layer(model)
    except ConfigError as e:
        raise ConfigError(f"{e} (a shared-trunk ensemble needs one; use --ensemble_trunk separate)") from None
    if head.out_features != len(seeds):
        raise ValueError(f"the model has {head.out_features} outputs for {len(seeds)} member seeds")
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        for k, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed)
            row = torch.randn(head.in_features, generator=generator, dtype=torch.float32) * std
            head.weight[k].copy_(row.to(head.weight.dtype))
            if head.bias is not None:
                head.bias[k] = 0.0


def bootstrap_indices(n: int, seed: int) -> list[int]:
    """A resample of ``n`` records with replacement (Efron's bootstrap), seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n,), generator=generator).tolist()


def feedback_completions(records: Sequence, kind: str) -> tuple[list[str], list[str]]:
    """The distinct (context, completion) pairs that feedback records of ``kind`` show, as the
    reward model reads them: the set each member is centred on."""
    pairs = {}
    for r in records:
        context = prompt_text(r.prompt)
        if kind == "preference":
            completions = [r.chosen, r.rejected]
        elif kind == "ranking":
            completions = list(r.completions)
        else:
            completions = [r.completion]
        for c in completions:
            pairs.setdefault((context, completion_text(c)), None)
    contexts, outputs = zip(*pairs) if pairs else ((), ())
    return list(contexts), list(outputs)


def centring_offset(reward_fn: Callable, contexts: Sequence[str], outputs: Sequence[str]) -> float:
    """b_k: the member's mean reward over the training completions (see the module docstring)."""
    return float(torch.as_tensor(reward_fn(list(contexts), list(outputs)), dtype=torch.float64).mean())


def write_manifest(
    directory: str | Path, members: Sequence[dict], objective: str, model: str | Path | None = None, **extra
) -> Path:
    """Write ``directory/ensemble.json`` atomically. ``members``: one dict per member whose ``path``
    (the member's reward-model directory) is stored relative to ``directory``, so the run moves as a
    whole. A shared-trunk ensemble gives ``model`` (its one model's directory, stored relative too)
    and members with a ``head`` index instead of a ``path``."""
    directory = Path(directory)
    parse_objective(objective, "ensemble objective")
    entries = [{**m, "path": os.path.relpath(Path(m["path"]), directory)} if "path" in m else dict(m) for m in members]
    trunk = {} if model is None else {"trunk": "shared", "model": os.path.relpath(Path(model), directory)}
    path = directory / MANIFEST
    write_json(path, {"format": FORMAT, "objective": objective, **trunk, **extra, "members": entries})
    return path


# ---- loading -----------------------------------------------------------------------------------
def is_ensemble(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def load_ensemble(
    directory: str | Path,
    objective: str | None,
    load_member: Callable[[str], Callable],
    load_heads: Callable[[str, int], Callable] | None = None,
) -> RewardEnsemble:
    """The ensemble of ``directory/ensemble.json``, combined by ``objective`` (None: the manifest's).
    ``load_member(path)`` loads one member's reward source; for a shared-trunk ensemble,
    ``load_heads(path, K)`` loads its model as one callable giving all K members' rewards, (K, B).
    Every problem is a one-line ConfigError naming the file or the member's directory."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        wanted = f"'::{objective}' selects an ensemble objective, but " if objective is not None else ""
        raise ConfigError(f"{directory}: {wanted}the folder holds no {MANIFEST}")
    data = read_json_manifest(manifest, FORMAT)
    members = data.get("members")
    if not isinstance(members, list) or not members:
        raise ConfigError(f"{manifest}: field 'members': expected a non-empty list")
    chosen = parse_objective(
        objective if objective is not None else str(data.get("objective", "mean")),
        f"{manifest}" if objective is None else f"{directory}::{objective}",
    )
    offsets = []
    for i, member in enumerate(members):
        if not isinstance(member, dict):
            raise ConfigError(f"{manifest}: field 'members[{i}]': expected an object")
        offset = member.get("offset", 0.0)
        if not isinstance(offset, (int, float)) or not math.isfinite(offset):
            raise ConfigError(f"{manifest}: field 'members[{i}].offset': expected a finite number")
        offsets.append(float(offset))
    if data.get("trunk", "separate") == "shared":
        return _load_shared_trunk(directory, manifest, data, offsets, chosen, load_heads)
    sources = []
    for i, member in enumerate(members):
        if not isinstance(member.get("path"), str):
            raise ConfigError(f"{manifest}: field 'members[{i}].path': expected a string")
        path = directory / member["path"]
        if not path.is_dir():
            raise ConfigError(f"{path}: ensemble member {i} not found (listed in {manifest})")
        sources.append(load_member(str(path)))
    return RewardEnsemble(sources, offsets, chosen)


def _load_shared_trunk(directory, manifest, data, offsets, objective, load_heads) -> RewardEnsemble:
    """Member k is output ``members[k].head`` of the one model ``data["model"]``; the heads must be
    0 .. K-1 in order (the model has K outputs)."""
    if not isinstance(data.get("model"), str):
        raise ConfigError(f"{manifest}: field 'model': expected the shared-trunk model's folder")
    heads = [m.get("head") for m in data["members"]]
    if heads != list(range(len(heads))):
        raise ConfigError(f"{manifest}: field 'members[].head': expected 0 .. {len(heads) - 1} in order, got {heads}")
    path = directory / data["model"]
    if not path.is_dir():
        raise ConfigError(f"{path}: the shared-trunk ensemble's model not found (listed in {manifest})")
    if load_heads is None:
        raise ConfigError(f"{manifest}: a shared-trunk ensemble, but no loader for its model was given")
    return RewardEnsemble.shared_trunk(load_heads(str(path), len(heads)), offsets, objective)
