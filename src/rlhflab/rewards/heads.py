"""Reward models with several outputs per (context, output) on one backbone: a head per annotator,
a head per rated attribute, or a mean and a variance (Section 5.1, marginalisation over preferences;
Section 7.8, several objectives).

One scalar R_phi fitted to a pool's labels averages the annotators away: where they want different
things it learns a compromise that no single annotator holds, each annotator weighted by how many
labels they gave (Section 5.1; the Bradley-Terry reward model of Sections 4.2 and 7.5). One scalar
fitted to ratings of several attributes (helpfulness, harmlessness, ...) likewise averages
objectives that a policy may need to trade off (Section 7.8). Each of these is an
``AutoModelForSequenceClassification`` with more than one output (``num_labels``) trained by the one
reward loop (``rlhflab reward``, :class:`rlhflab.train.offline.RewardAlgorithm`):

- ``--per_annotator``: K scalar heads R^a(c, o) = w_a · h_phi(c, o) + b_a on the shared backbone
  h_phi, one per annotator named in the records; each pair's Bradley-Terry logit (Eq. 11) uses the
  head of the annotator who labelled it, so the backbone learns from every label and a head only
  from its annotator's.
- ``--feedback rating --attributes a,b`` (or ``all``): one regression head R^a per attribute a, the
  same construction with the rating's ``attribute`` as the group: each rating is regressed (Eq. 7)
  onto the head of the attribute it rates.
- ``--distributional``: two outputs, μ_phi(c, o) and log σ²_phi(c, o): the reward of (c, o) is the
  distribution N(μ, σ²) that Section 5.1 asks for, fitted by
  :func:`rlhflab.losses.mean_variance_bradley_terry_loss`.

The two head-per-group kinds share everything but the record field that names the group
(``GROUP_KINDS``): a head index per record (:func:`head_index`), the manifest, and the selector
``DIR::FIELD=NAME``.

On disk: the model (``save_pretrained``) and, in the same folder, ``reward_heads.json`` naming its
outputs (written before the folder is renamed into place)::

    {"format": "rlhflab-reward-heads/1", "kind": "annotator", "annotators": ["annotator-0", ...]}
    {"format": "rlhflab-reward-heads/1", "kind": "attribute", "attributes": ["helpful", ...]}
    {"format": "rlhflab-reward-heads/1", "kind": "mean_variance"}

As a reward source (:func:`rlhflab.rewards.registry.load_reward_source`):

- ``DIR`` with annotator heads: the mean over heads, (1/K) Σ_a R^a(c, o). Every annotator weighs the
  same, whatever their share of the labels. Bradley-Terry fixes only differences of one head's
  rewards, so each head's level, and the mean's, is arbitrary: a reward up to a constant, as any
  Bradley-Terry reward is.
- ``DIR`` with attribute heads: the mean over attributes, the predicted mean rating (regression
  fixes each head's level on the rating scale).
- ``DIR::annotator=NAME`` / ``DIR::attribute=NAME``: that head alone; a composite weighs several,
  ``"0.7*DIR::attribute=helpful + 0.3*DIR::attribute=harmless"`` (:mod:`rlhflab.rewards.composite`).
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
# A head per group of records: the record field that names a record's group (also the manifest's
# kind and the selector's key, DIR::FIELD=NAME) -> the manifest key listing the groups, head order.
GROUP_KINDS = {"annotator": "annotators", "attribute": "attributes"}
KINDS = (*GROUP_KINDS, "mean_variance")
ALL_ATTRIBUTES = "all"  # --attributes all: every attribute the ratings name
_WHY_MISSING = {
    "annotator": "a per-annotator reward model needs who gave each label",
    "attribute": "a multi-attribute reward model needs the attribute each rating rates",
}


# ---- training side -------------------------------------------------------------------------------
def _origin(record, i: int) -> tuple[str, int | None]:
    source, line, _ = getattr(record, "origin", ("<records>", i + 1, None))
    return source, line


def group_names(records: Sequence, kind: str) -> list[str]:
    """The distinct values of field ``kind`` (a key of GROUP_KINDS) in ``records``, sorted (head a is
    the a-th name). A record without one is a DataError naming its file, line and the field."""
    names = set()
    for i, record in enumerate(records):
        value = getattr(record, kind, None)
        if value is None:
            raise DataError(*_origin(record, i), kind, f"missing: {_WHY_MISSING[kind]}")
        names.add(value)
    return sorted(names)


def annotator_names(records: Sequence) -> list[str]:
    """The distinct annotators of ``records``, sorted (see :func:`group_names`)."""
    return group_names(records, "annotator")


def select_attributes(records: Sequence, attributes: str, source: str | None = None) -> tuple[list, list[str]]:
    """The ratings that train a multi-attribute reward model, and its attributes in head order.

    ``attributes``: ``all`` (every attribute the ratings name, sorted; a rating without one is then a
    DataError naming its file and line) or a comma-separated list (heads in that order; ratings of
    other attributes, or of none, are left out). Each is a one-line DataError naming ``source`` (the
    file) and the field ``attribute``: ratings without any attribute, a named attribute no rating
    rates."""
    source = source or (_origin(records[0], 0)[0] if records else "<records>")
    rated = sorted({r.attribute for r in records if getattr(r, "attribute", None) is not None})
    if not rated:
        raise DataError(
            source,
            None,
            "attribute",
            f"no rating names an attribute; --attributes {attributes} needs one rating per (completion, attribute)",
        )
    if attributes.strip() == ALL_ATTRIBUTES:
        return list(records), group_names(records, "attribute")
    names = parse_attribute_list(attributes)
    for name in names:
        if name not in rated:
            raise DataError(
                source, None, "attribute", f"no rating of attribute '{name}'; the file rates {', '.join(rated)}"
            )
    return [r for r in records if r.attribute in names], names


def parse_attribute_list(attributes: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; empty names or repeats are a ConfigError."""
    names = [a.strip() for a in attributes.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise ConfigError(
            f"--attributes {attributes!r}: expected '{ALL_ATTRIBUTES}' or distinct names, comma-separated"
        )
    return names


def training_manifest(
    per_annotator: bool, distributional: bool, records: Sequence, attributes: str | None = None
) -> dict | None:
    """What ``reward_heads.json`` will say for a model trained on ``records``; None for a plain scalar
    reward model. With ``attributes``, every record must rate one of them (:func:`select_attributes`
    is how a caller keeps only those)."""
    if per_annotator:
        return {"format": FORMAT, "kind": "annotator", "annotators": annotator_names(records)}
    if attributes:
        kept, names = select_attributes(records, attributes)
        if len(kept) != len(records):
            i, record = next((i, r) for i, r in enumerate(records) if r.attribute not in names)
            raise DataError(*_origin(record, i), "attribute", f"{record.attribute!r} is not one of {', '.join(names)}")
        return {"format": FORMAT, "kind": "attribute", "attributes": names}
    if distributional:
        return {"format": FORMAT, "kind": "mean_variance"}
    return None


def init_attribute_levels(model, records: Sequence, manifest: dict) -> None:
    """Start each attribute head at its attribute's mean rating (the bias of R^a = mean score of the
    ratings of a): the best constant predictor under Eq. 7's squared error, so training fits how
    ratings vary, not first their level (a zero-initialised head on a Likert 1..7 scale otherwise
    spends its first steps, and the backbone's gradients, on moving to about 4)."""
    layer = output_layer(model)
    with torch.no_grad():
        for a, name in enumerate(manifest["attributes"]):
            scores = [r.score for r in records if r.attribute == name]
            if scores and layer.bias is not None:
                layer.bias[a] = sum(scores) / len(scores)


def output_layer(model) -> torch.nn.Linear:
    """The linear layer that maps a sequence classifier's pooled features to its outputs (``score``
    or ``classifier``, or a ``classifier.out_proj``)."""
    for name in ("score", "classifier"):
        layer = getattr(model, name, None)
        layer = getattr(layer, "out_proj", layer)  # RoBERTa-style heads end in classifier.out_proj
        if isinstance(layer, torch.nn.Linear):
            return layer
    raise ConfigError(f"{type(model).__name__}: no 'score' or 'classifier' linear output layer to give heads")


def num_outputs(manifest: dict | None) -> int:
    """The model's ``num_labels``: one per group (annotator, attribute), 2 (μ, log σ²), or 1 without
    a manifest."""
    if manifest is None:
        return 1
    return len(manifest[GROUP_KINDS[manifest["kind"]]]) if manifest["kind"] in GROUP_KINDS else 2


def head_index(manifest: dict | None, records: Sequence) -> list[int] | None:
    """For a head-per-group model, the head of each record (its group's position in the manifest);
    None for any other model."""
    if manifest is None or manifest["kind"] not in GROUP_KINDS:
        return None
    kind = manifest["kind"]
    index = {name: a for a, name in enumerate(manifest[GROUP_KINDS[kind]])}
    return [index[getattr(r, kind)] for r in records]


# ---- loading side --------------------------------------------------------------------------------
def is_reward_heads(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict:
    """``directory/reward_heads.json``, checked; each problem a one-line ConfigError naming the field."""
    path = Path(directory) / MANIFEST
    data = read_json_manifest(path, FORMAT)
    if data.get("kind") not in KINDS:
        raise ConfigError(f"{path}: field 'kind': expected one of {', '.join(KINDS)}, got {data.get('kind')!r}")
    if data["kind"] in GROUP_KINDS:
        key = GROUP_KINDS[data["kind"]]
        names = data.get(key)
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
        ):
            raise ConfigError(f"{path}: field '{key}': expected a non-empty list of distinct names")
    return data


class RewardHeads:
    """Callable ``(contexts, outputs) -> Tensor (B,)`` over a reward model with several outputs (see
    the module docstring): one group's head (``group``: an annotator or attribute name), the mean
    over the heads, or μ. After each call, ``uncertainty_last`` holds σ per output of that batch,
    (B,), for mean-variance heads (None otherwise)."""

    def __init__(self, model, tokenizer, manifest: dict, group: str | None = None, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.kind, self.num_outputs = manifest["kind"], num_outputs(manifest)
        self.groups = list(manifest.get(GROUP_KINDS.get(self.kind, ""), []))
        self.head = None if group is None else self.groups.index(group)
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
    ``DIR::`` (None when there is none), ``annotator=NAME`` or ``attribute=NAME`` as the model's kind
    is; anything else, or a name the model has no head for, is a one-line ConfigError (the latter
    listing the known names)."""
    manifest = read_manifest(directory)
    group = (
        None if selector is None else _selected_group(f"reward source '{directory}::{selector}'", selector, manifest)
    )
    model, tokenizer = load_reward_model(str(directory), num_labels=num_outputs(manifest))
    model.to(device).eval().requires_grad_(False)
    return RewardHeads(model, tokenizer, manifest, group, batch_size)


def _selected_group(where: str, selector: str, manifest: dict) -> str:
    key, equals, name = selector.partition("=")
    kind = manifest["kind"]
    if kind not in GROUP_KINDS:
        raise ConfigError(f"{where}: the model has mean-variance heads, not one head per annotator or attribute")
    if not equals or key not in GROUP_KINDS:
        raise ConfigError(f"{where}: a model with reward heads takes '::{kind}=NAME' or nothing after '::'")
    if key != kind:
        raise ConfigError(f"{where}: the model has one head per {kind}, not per {key}; select one with '::{kind}=NAME'")
    names = manifest[GROUP_KINDS[kind]]
    if name not in names:
        raise ConfigError(f"{where}: unknown {kind} '{name}'; the model knows {', '.join(names)}")
    return name


def load_head_scores(directory: str | Path, num_heads: int, device: str | torch.device = "cpu", batch_size: int = 32):
    """A saved model with ``num_heads`` outputs as one callable ``(contexts, outputs) -> Tensor (K, B)``,
    every head's reward in one forward: how a shared-trunk ensemble's members are scored
    (:func:`rlhflab.rewards.ensemble.load_ensemble`)."""
    model, tokenizer = load_reward_model(str(directory), num_labels=num_heads)
    model.to(device).eval().requires_grad_(False)

    def head_scores(contexts: Sequence[str], outputs: Sequence[str]) -> torch.Tensor:
        rewards = score(model, tokenizer, list(contexts), list(outputs), batch_size=batch_size)
        return rewards.view(len(outputs), num_heads).T

    return head_scores
