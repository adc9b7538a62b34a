"""Reward models with several outputs per (context, output) on one backbone: a head per annotator,
or a mean and a variance (Section 5.1, marginalisation over preferences).

One scalar R_phi fitted to a pool's labels averages the annotators away: where they want different
things it learns a compromise that no single annotator holds, each annotator weighted by how many
labels they gave (Section 5.1; the Bradley-Terry reward model of Sections 4.2 and 7.5). Two ways to
keep what the pool disagrees on, both an ``AutoModelForSequenceClassification`` with more than one
output (``num_labels``) trained by the one reward loop (``rlhflab reward``,
:class:`rlhflab.train.offline.RewardAlgorithm`):

- ``--per_annotator``: K scalar heads R^a(c, o) = w_a · h_phi(c, o) + b_a on the shared backbone
  h_phi, one per annotator named in the records; each pair's Bradley-Terry logit (Eq. 11) uses the
  head of the annotator who labelled it, so the backbone learns from every label and a head only
  from its annotator's.
- ``--distributional``: two outputs, μ_phi(c, o) and log σ²_phi(c, o): the reward of (c, o) is the
  distribution N(μ, σ²) that Section 5.1 asks for, fitted by
  :func:`rlhflab.losses.mean_variance_bradley_terry_loss`.

On disk: the model (``save_pretrained``) and, in the same folder, ``reward_heads.json`` naming its
outputs (written before the folder is renamed into place)::

    {"format": "rlhflab-reward-heads/1", "kind": "annotator", "annotators": ["annotator-0", ...]}
    {"format": "rlhflab-reward-heads/1", "kind": "mean_variance"}

As a reward source (:func:`rlhflab.rewards.load_reward_source`):

- ``DIR`` with annotator heads: the mean over heads, (1/K) Σ_a R^a(c, o). Every annotator weighs the
  same, whatever their share of the labels. Bradley-Terry fixes only differences of one head's
  rewards, so each head's level, and the mean's, is arbitrary: a reward up to a constant, as any
  Bradley-Terry reward is.
- ``DIR::annotator=NAME``: annotator NAME's head alone.
- ``DIR`` with mean-variance heads: μ; the source's ``heads.uncertainty_last`` holds σ for each
  output of the last batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlhflab.errors import ConfigError, DataError
from rlhflab.files import read_json_manifest
from rlhflab.models.loading import load_reward_model
from rlhflab.models.scoring import score

FORMAT = "rlhflab-reward-heads/1"
MANIFEST = "reward_heads.json"
KINDS = ("annotator", "mean_variance")
SELECTOR = "annotator="


# ---- training side -------------------------------------------------------------------------------
def annotator_names(records: Sequence) -> list[str]:
    """The distinct annotators of ``records``, sorted (head a is the a-th name). A record without one
    is a DataError naming its file, line and the field ``annotator``."""
    names = set()
    for i, record in enumerate(records):
        if record.annotator is None:
            source, line, _ = getattr(record, "origin", ("<records>", i + 1, None))
            raise DataError(
                source, line, "annotator", "missing: a per-annotator reward model needs who gave each label"
            )
        names.add(record.annotator)
    return sorted(names)


def training_manifest(per_annotator: bool, distributional: bool, records: Sequence) -> dict | None:
    """What ``reward_heads.json`` will say for a model trained on ``records``; None for a plain scalar
    reward model."""
    if per_annotator:
        return {"format": FORMAT, "kind": "annotator", "annotators": annotator_names(records)}
    if distributional:
        return {"format": FORMAT, "kind": "mean_variance"}
    return None


def num_outputs(manifest: dict | None) -> int:
    """The model's ``num_labels``: one per annotator, 2 (μ, log σ²), or 1 without a manifest."""
    if manifest is None:
        return 1
    return len(manifest["annotators"]) if manifest["kind"] == "annotator" else 2


# ---- loading side --------------------------------------------------------------------------------
def is_reward_heads(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict:
    """``directory/reward_heads.json``, checked; each problem a one-line ConfigError naming the field."""
    path = Path(directory) / MANIFEST
    data = read_json_manifest(path, FORMAT)
    if data.get("kind") not in KINDS:
        raise ConfigError(f"{path}: field 'kind': expected one of {', '.join(KINDS)}, got {data.get('kind')!r}")
    if data["kind"] == "annotator":
        names = data.get("annotators")
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
        ):
            raise ConfigError(f"{path}: field 'annotators': expected a non-empty list of distinct names")
    return data


class RewardHeads:
    """Callable ``(contexts, outputs) -> Tensor (B,)`` over a reward model with several outputs (see
    the module docstring): one annotator's head (``annotator``), the mean over annotator heads, or μ.
    After each call, ``uncertainty_last`` holds σ per output of that batch, (B,), for mean-variance
    heads (None otherwise)."""

    def __init__(self, model, tokenizer, manifest: dict, annotator: str | None = None, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.kind, self.num_outputs = manifest["kind"], num_outputs(manifest)
        self.annotators = list(manifest.get("annotators", []))
        self.head = None if annotator is None else self.annotators.index(annotator)
        self.uncertainty_last: torch.Tensor | None = None

    def __call__(self, contexts: Sequence[str], outputs: Sequence[str]) -> torch.Tensor:
        heads = score(self.model, self.tokenizer, list(contexts), list(outputs), batch_size=self.batch_size)
        heads = heads.view(len(contexts), self.num_outputs)  # a one-head model scores (B,)
        if self.kind == "mean_variance":
            mean, log_variance = heads.unbind(-1)
            self.uncertainty_last = (0.5 * log_variance).exp()
            return mean
        return heads.mean(-1) if self.head is None else heads[:, self.head]


def load_reward_heads(
    directory: str | Path, selector: str | None, device: str | torch.device = "cpu", batch_size: int = 32
) -> RewardHeads:
    """The reward source of a saved model with ``reward_heads.json``. ``selector``: the text after
    ``DIR::`` (None when there is none), ``annotator=NAME``; anything else, or an annotator the model
    has no head for, is a one-line ConfigError (the latter listing the known annotators)."""
    manifest = read_manifest(directory)
    annotator = None
    if selector is not None:
        where = f"reward source '{directory}::{selector}'"
        if not selector.startswith(SELECTOR):
            raise ConfigError(f"{where}: a model with reward heads takes '::{SELECTOR}NAME' or nothing after '::'")
        if manifest["kind"] != "annotator":
            raise ConfigError(f"{where}: the model has mean-variance heads, not one head per annotator")
        annotator = selector[len(SELECTOR) :]
        if annotator not in manifest["annotators"]:
            raise ConfigError(
                f"{where}: unknown annotator '{annotator}'; the model knows {', '.join(manifest['annotators'])}"
            )
    model, tokenizer = load_reward_model(str(directory), num_labels=num_outputs(manifest))
    model.to(device).eval().requires_grad_(False)
    return RewardHeads(model, tokenizer, manifest, annotator, batch_size)
