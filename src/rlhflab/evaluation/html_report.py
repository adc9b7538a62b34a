"""``rlhflab report RUN_DIR [RUN_DIR ...] --output report.html``: a run as one self-contained HTML
page (plots inlined as PNG data URIs, no script, no network request), with the oracle beside the
proxy first: J (R*, Eq. 12) beside Ĵ (R_phi, Eq. 14) with standard errors, KL to the reference,
seen against unseen contexts; then the pairs of samples R_phi and R* disagree on most (reward
hacking, Section 6.2), the reward model's accuracy and reliability diagram (Section 7.5), the
training curves against the step and against KL, samples before and after side by side, and the
resolved config. Several runs: one comparison table and the curves overlaid, then each run.

It reads what the runs wrote (``demo``, ``compare``, ``loop``, ``toy report`` and any single training
command's directory), and those commands call :func:`write_report` when they finish. Every piece
of text from a run is escaped (Jinja2 autoescape). A directory that is not a run, or a run missing
a file the report needs, is a one-line ConfigError naming it; the HTML is written atomically, so no
half-written report is ever left behind.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from rlhflab import __version__
from rlhflab.errors import ConfigError
from rlhflab.evaluation.metrics import PolicyEvaluation, disagreeing_pairs, paired_difference, pairwise_order_agreement
from rlhflab.evaluation.plots import (
    plot_before_after,
    plot_comparison,
    plot_losses,
    plot_reliability,
    plot_rounds,
    plot_training_curves,
    read_metrics,
)
from rlhflab.files import write_text

REPORT_FILE = "report.html"
SAMPLES_SHOWN = 6  # prompts per context set in "before and after"
PAIRS_SHOWN = 5  # disagreeing pairs per policy and context set


@dataclass
class Figure:
    title: str
    png: bytes
    caption: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Run:
    """What the report shows of one run directory, read from its files."""

    path: Path
    kind: str  # demo | compare | loop | frontier | toy | a training command (ppo, dpo, reward, ...)
    config_file: str
    config: dict
    # policy -> context set -> evaluation; the first policy is the one the others started from
    evaluations: dict[str, dict[str, PolicyEvaluation]] = field(default_factory=dict)
    # plot_reliability's rows: {"title" or "round", "reward_model": report, "shift": report or None}
    reward_models: list[dict] = field(default_factory=list)
    curves: dict[str, list[dict]] = field(default_factory=dict)  # training stage -> metrics rows
    figures: list[Figure] = field(default_factory=list)  # the run kind's own plots
    headlines: list[tuple[str, str, str]] = field(default_factory=list)  # toy lab: experiment, headline, seconds
    notes: list[str] = field(default_factory=list)  # the run kind's own headline lines (the frontier's fits)
    label: str = ""
    each_policy_against_first: bool = False  # compare: every method against π_0; else the last policy

    @property
    def policies(self) -> list[str]:
        return list(self.evaluations)


# ---- reading runs ---------------------------------------------------------------------------------
def _require(run_dir: Path, kind: str, names: Sequence[str]) -> None:
    missing = [name for name in names if not (run_dir / name).is_file()]
    if missing:
        raise ConfigError(
            f"{run_dir}: {kind} run without {', '.join(missing)} (written by an older rlhflab, or the run did not finish)"
        )


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return data


_EVALUATION_FIELDS = {f.name: f for f in dataclasses.fields(PolicyEvaluation)}
_REQUIRED_FIELDS = [
    name
    for name, f in _EVALUATION_FIELDS.items()
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]


def _evaluation(data: dict, source: Path, where: str) -> PolicyEvaluation:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: field '{where}': expected an evaluation object")
    missing = [name for name in _REQUIRED_FIELDS if name not in data]
    if missing:
        raise ConfigError(f"{source}: field '{where}.{missing[0]}' is missing (written by an older rlhflab?)")
    return PolicyEvaluation(**{k: v for k, v in data.items() if k in _EVALUATION_FIELDS})


def _sets(path: Path, where: str = "", data: dict | None = None) -> dict[str, PolicyEvaluation]:
    """``{context set: evaluation}`` from ``path`` (or from ``data``, read from it)."""
    data = _json(path) if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {{context set: evaluation}}")
    return {name: _evaluation(ev, path, f"{where}{name}") for name, ev in data.items()}


def _evaluations(path: Path) -> dict[str, dict[str, PolicyEvaluation]]:
    """``{policy: {context set: evaluation}}`` from a JSON file of that shape."""
    data = _json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {{policy: {{context set: evaluation}}}}")
    return {policy: _sets(path, f"{policy}.", sets) for policy, sets in data.items()}


def _metrics(path: Path) -> list[dict]:
    return [row for row in read_metrics(path) if isinstance(row, dict) and "iteration" in row] if path.is_file() else []


def _read_demo(run_dir: Path) -> Run:
    _require(run_dir, "demo", ["demo_config.yaml", "evaluation.json", "reward/reward_report.json", "ppo/metrics.jsonl"])
    report = _json(run_dir / "reward" / "reward_report.json")
    return Run(
        run_dir,
        "demo",
        "demo_config.yaml",
        _yaml(run_dir / "demo_config.yaml"),
        evaluations=_evaluations(run_dir / "evaluation.json"),
        reward_models=[{"title": "reward model, held-out pairs", "reward_model": report}],
        curves={
            "ppo": _metrics(run_dir / "ppo" / "metrics.jsonl"),
            "reward": _metrics(run_dir / "reward" / "metrics.jsonl"),
        },
    )


def _read_compare(run_dir: Path) -> Run:
    _require(run_dir, "compare", ["compare_config.yaml", "comparison.json", "evaluation.json"])
    comparison = _json(run_dir / "comparison.json")
    config = _yaml(run_dir / "compare_config.yaml")
    methods = [m.strip() for m in str(config.get("methods") or "").split(",") if m.strip()]
    curves = {"reward": _metrics(run_dir / "reward" / "metrics.jsonl")}
    curves.update({m: _metrics(run_dir / m / "metrics.jsonl") for m in methods})
    reward_report = (comparison.get("pool") or {}).get("reward_model") or {}
    return Run(
        run_dir,
        "compare",
        "compare_config.yaml",
        config,
        evaluations=_evaluations(run_dir / "evaluation.json"),
        reward_models=[{"title": "the pool's reward model, held-out pairs", "reward_model": reward_report}],
        curves=curves,
        figures=[
            Figure(
                "J, Ĵ and KL by method",
                _png(plot_comparison, comparison.get("rows", [])),
                "±1 standard error; seen and unseen contexts.",
            )
        ],
        each_policy_against_first=True,
    )


def _read_loop(run_dir: Path) -> Run:
    _require(run_dir, "loop", ["loop_config.yaml", "initial_evaluation.json", "rounds.json"])
    rows = _json(run_dir / "rounds.json")
    folders = [f"round-{row['round']:02d}" for row in rows]
    _require(run_dir, "loop", [f"{folder}/evaluation.json" for folder in folders])
    initial = _json(run_dir / "initial_evaluation.json")
    evaluations = {"π_0 (initial)": _sets(run_dir / "initial_evaluation.json", data=initial)}
    curves: dict[str, list[dict]] = {}
    offset = steps = 0  # the rounds' policy updates one after another
    for row, folder in zip(rows, folders):
        evaluations[f"round {row['round']}"] = _sets(run_dir / folder / "evaluation.json")
        policy = _metrics(run_dir / folder / "policy_run" / "metrics.jsonl")
        curves.setdefault("policy update", []).extend(
            {**m, "iteration": m["iteration"] + offset, "step": m.get("step", 0) + steps} for m in policy
        )
        offset += max((m["iteration"] + 1 for m in policy), default=0)
        steps += max((m.get("step", 0) for m in policy), default=0)
        curves[f"reward model, round {row['round']}"] = _metrics(run_dir / folder / "reward" / "metrics.jsonl")
    figures = [
        Figure(
            "J, Ĵ and reward-model accuracy by round",
            _png(plot_rounds, initial, rows),
            "Round 0 is π_0; Ĵ under each round's reward model; ±1 standard error.",
        )
    ]
    notes = []  # `rlhflab loop --eval_every`: each round's path and fits, shown as a frontier run's are
    if (run_dir / "frontier.png").is_file():
        for folder in folders:
            notes += _fit_notes(_json(run_dir / folder / "frontier.json")["lines"])
        figures.append(
            Figure(
                "Over-optimisation per round: J and Ĵ against KL(π‖π_0) along each round's update",
                (run_dir / "frontier.png").read_bytes(),
                "One line per round; Ĵ under each round's own reward model; ±1 se over prompts; dashed: Gao et al. fits.",
            )
        )
    return Run(
        run_dir,
        "loop",
        "loop_config.yaml",
        _yaml(run_dir / "loop_config.yaml"),
        evaluations=evaluations,
        reward_models=rows,
        curves=curves,
        figures=figures,
        notes=notes,
    )


def _read_toy(run_dir: Path) -> Run:
    _require(run_dir, "toy report", ["summary.md", "instance.json"])
    headlines, seed = [], None
    for line in (run_dir / "summary.md").read_text().splitlines():
        if line.startswith("# ") and "seed" in line:
            seed = line.rsplit("seed", 1)[1].strip(" )")
        # | name | headline (which may hold a "|" itself) | seconds |
        name, _, rest = line.strip().strip("|").partition("|")
        headline, _, seconds = rest.rpartition("|")
        if line.startswith("|") and headline and name.strip() not in ("experiment", "---"):
            headlines.append((name.strip(), headline.strip(), seconds.strip()))
    missing = [f"{name}/*.png" for name, _, _ in headlines if not sorted((run_dir / name).glob("*.png"))]
    if missing:
        raise ConfigError(f"{run_dir}: toy report run without {', '.join(missing)} (the run did not finish?)")
    figures = [  # each experiment's figure(s), in its folder under its own name (beta/beta_tradeoff.png)
        Figure(f"{name}: {png.stem}", png.read_bytes(), headline)
        for name, headline, _ in headlines
        for png in sorted((run_dir / name).glob("*.png"))
    ]
    return Run(run_dir, "toy report", "summary.md", {"seed": seed}, figures=figures, headlines=headlines)


def _fit_notes(lines: list[str]) -> list[str]:
    """``fit_points``' lines ("- where:" then "  - what") as one headline each: "where: what"."""
    notes, where = [], ""
    for line in lines:
        if line.startswith("- "):
            where = line[2:].rstrip(":")
        elif line.startswith("  - "):
            notes.append(f"{where}: {line[4:]}")
    return notes


def _read_frontier(run_dir: Path) -> Run:
    """A ``rlhflab frontier`` run: its plot, and per method and context set the measured fall of J
    and the Gao et al. fits with the over-optimisation KL, as frontier.md words them."""
    _require(run_dir, "frontier", ["frontier_config.yaml", "frontier.json", "frontier.md", "frontier.png"])
    result = _json(run_dir / "frontier.json")
    fits = (run_dir / "frontier.md").read_text().partition("## Gao et al.")[2].partition("\n## ")[0]
    notes = _fit_notes(fits.splitlines())
    methods = ", ".join(dict.fromkeys(p["method"] for p in result["points"]))
    figure = Figure(
        "The frontier: J (oracle) and Ĵ (reward model) against KL(π‖π_0), every method",
        (run_dir / "frontier.png").read_bytes(),
        f"Methods: {methods}. ±1 se over prompts; dashed: Gao et al. fits; black: the Eq. 17 reference curve.",
    )
    run = Run(run_dir, "frontier", "frontier_config.yaml", result["config"], figures=[figure], notes=notes)
    run.reward_models = [{"title": "the pool's reward model", "reward_model": result["pool"]["reward_model"]}]
    return run


def _read_training(run_dir: Path) -> Run:
    _require(run_dir, "training", ["config.yaml", "metrics.jsonl"])
    config = _yaml(run_dir / "config.yaml")
    kind = str(config.get("algorithm") or config.get("loss") or ("reward" if "model" in config else "training"))
    run = Run(run_dir, kind, "config.yaml", config, curves={kind: _metrics(run_dir / "metrics.jsonl")})
    if (run_dir / "reward_report.json").is_file():
        run.kind = "reward"
        run.reward_models = [{"title": "held-out pairs", "reward_model": _json(run_dir / "reward_report.json")}]
    if (run_dir / "evaluation.json").is_file():  # `rlhflab eval --output RUN/evaluation.json`
        run.evaluations = {run_dir.name: _sets(run_dir / "evaluation.json")}
    return run


# Marker file -> reader, first match wins.
RUN_KINDS = [
    ("demo_config.yaml", _read_demo),
    ("compare_config.yaml", _read_compare),
    ("loop_config.yaml", _read_loop),
    ("frontier_config.yaml", _read_frontier),
    ("instance.json", _read_toy),
    ("config.yaml", _read_training),
]


def read_run(run_dir: str | Path) -> Run:
    """The run in ``run_dir`` (its kind told by its config file); ConfigError if it is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    for marker, reader in RUN_KINDS:
        if (run_dir / marker).is_file():
            return reader(run_dir)
    raise ConfigError(
        f"{run_dir}: not an rlhflab run directory (none of {', '.join(m for m, _ in RUN_KINDS)} is there)"
    )


# ---- what the page shows ------------------------------------------------------------------------------
def _fmt(x, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def _pm(x, se, spec: str = ".3f") -> str:
    return _fmt(x, spec) + ("" if se is None else f" ± {_fmt(se, spec.lstrip('+'))}")


def _delta(before: PolicyEvaluation, after: PolicyEvaluation, rewards: str) -> tuple[float, float | None] | None:
    try:
        return paired_difference(before, after, rewards)
    except ValueError:  # not on the same prompts, or a side without these rewards
        return None


def evaluation_table(run: Run, label: str | None = None) -> list[dict]:
    """One row per (policy, context set): J ± se beside Ĵ ± se, KL, the paired change from the
    first policy, and how often R_phi orders two of the policy's samples as R* does."""
    rows = []
    first = run.policies[0] if run.policies else None
    for policy, sets in run.evaluations.items():
        for contexts, ev in sets.items():
            base = run.evaluations[first].get(contexts) if policy != first else None
            dJ = _delta(base, ev, "oracle_rewards") if base is not None else None
            dJ_hat = _delta(base, ev, "proxy_rewards") if base is not None else None
            rows.append(
                {
                    "run": label,
                    "policy": policy,
                    "contexts": contexts,
                    "J": _pm(ev.J, ev.J_se),
                    "J_hat": _pm(ev.J_hat, ev.J_hat_se),
                    "kl": _pm(0.0 if policy == first and ev.kl is None else ev.kl, ev.kl_se, ".2f"),
                    "delta_J": "–" if dJ is None else _pm(dJ[0], dJ[1], "+.3f"),
                    "z": "–" if dJ is None or not dJ[1] else _fmt(dJ[0] / dJ[1], "+.1f"),
                    "delta_J_hat": "–" if dJ_hat is None else _pm(dJ_hat[0], dJ_hat[1], "+.3f"),
                    "agreement": _fmt(pairwise_order_agreement(ev)),
                    "n": ev.n,
                }
            )
    return rows


def run_headline(run: Run) -> list[str]:
    """A sentence per context set: how far the last policy moved J and Ĵ from the first."""
    if len(run.policies) < 2:
        return []
    first, lines = run.evaluations[run.policies[0]], []
    for policy in _later_policies(run):
        for contexts, after in run.evaluations[policy].items():
            before = first.get(contexts)
            dJ = _delta(before, after, "oracle_rewards") if before is not None else None
            if dJ is None:
                continue
            dJ_hat = _delta(before, after, "proxy_rewards")
            line = (
                f"{contexts} contexts, {policy} against {run.policies[0]}: ΔJ = {_pm(dJ[0], dJ[1], '+.3f')} (oracle R*)"
            )
            if dJ_hat is not None:
                line += f", ΔĴ = {_pm(dJ_hat[0], dJ_hat[1], '+.3f')} (reward model R_phi)"
            if dJ[1]:
                line += f"; the change in J is {dJ[0] / dJ[1]:+.1f} standard errors"
            lines.append(line + ".")
    return lines


def _later_policies(run: Run) -> list[str]:
    """The policies set against the first one: every one in a compare run, else the last."""
    return run.policies[1:] if run.each_policy_against_first else run.policies[-1:]


def reward_model_table(run: Run) -> list[dict]:
    rows = []
    for entry in run.reward_models:
        report = entry.get("reward_model") or {}
        shift = entry.get("shift") or {}
        rows.append(
            {
                "model": entry.get("title") or f"round {entry.get('round')}",
                "pairs": report.get("num_pairs", "–"),
                "accuracy": _fmt(report.get("accuracy")),
                "oracle_accuracy": _fmt(report.get("oracle_accuracy")),
                "order_accuracy": _fmt(report.get("oracle_order_accuracy")),
                "ece": _fmt(report.get("ece")),
                "before": _fmt(shift.get("accuracy")) if shift else "–",
                "spearman": " / ".join(_fmt((report.get(s) or {}).get("spearman")) for s in ("seen", "unseen")),
            }
        )
    return rows


def sample_pairs(run: Run) -> list[dict]:
    """For the last policy (a compare run: each method) and each context set, the first samples of
    the first prompts, beside the first policy's samples of the same prompts, with R* and R_phi."""
    if len(run.policies) < 2:
        return []
    first = run.evaluations[run.policies[0]]
    groups = []
    for policy in _later_policies(run):
        for contexts, after in run.evaluations[policy].items():
            before = first.get(contexts)
            if before is None:
                continue
            shown = []
            for prompt in range(min(SAMPLES_SHOWN, after.num_prompts)):
                i, j = _first_sample(before, prompt), _first_sample(after, prompt)
                if i is None or j is None or before.contexts[i] != after.contexts[j]:
                    continue
                shown.append({"context": after.contexts[j], "before": _sample(before, i), "after": _sample(after, j)})
            if shown:
                groups.append({"before": run.policies[0], "after": policy, "contexts": contexts, "rows": shown})
    return groups


def _first_sample(ev: PolicyEvaluation, prompt: int) -> int | None:
    return next((i for i, p in enumerate(ev.prompt_index) if p == prompt), None)


def _sample(ev: PolicyEvaluation, i: int) -> dict:
    return {
        "text": ev.texts[i],
        "oracle": _fmt(ev.oracle_rewards[i] if ev.oracle_rewards else None),
        "proxy": _fmt(ev.proxy_rewards[i] if ev.proxy_rewards else None),
    }


def hacking_pairs(run: Run) -> dict:
    """:func:`disagreeing_pairs` of every policy after the first, per context set: ``groups`` where
    some were found, and ``none``: the (policy, context set) where R_phi and R* never disagree."""
    groups, none = [], []
    for policy in run.policies[1:]:
        for contexts, ev in run.evaluations[policy].items():
            pairs = disagreeing_pairs(ev, PAIRS_SHOWN)
            if not pairs:
                none.append(f"{policy}, {contexts} contexts")
                continue
            shown = [
                {
                    **p,
                    "proxy": tuple(_fmt(x) for x in p["proxy"]),
                    "oracle": tuple(_fmt(x) for x in p["oracle"]),
                    "score": _fmt(p["score"], ".2f"),
                }
                for p in pairs
            ]
            groups.append({"policy": policy, "contexts": contexts, "pairs": shown})
    return {"groups": groups, "none": none}


def _png(plot, *args) -> bytes:
    buffer = io.BytesIO()
    plot(*args, buffer)
    return buffer.getvalue()


def _rl_curves(curves: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {k: v for k, v in curves.items() if any("reward" in m and "kl" in m for m in v)}


def run_figures(run: Run) -> list[Figure]:
    """J/Ĵ bars, the reliability diagram and the training curves, after the run kind's own plots."""
    figures = []
    if run.kind == "demo" and len(run.policies) == 2:
        rows = [
            {"policy": p, "contexts": c, **{k: getattr(ev, k) for k in ("J", "J_se", "J_hat", "J_hat_se")}}
            for p, sets in run.evaluations.items()
            for c, ev in sets.items()
        ]
        before, after = run.policies
        figures.append(
            Figure(
                "J (oracle) beside Ĵ (reward model), before and after",
                _before_after_png(rows, before, after),
                "±1 standard error over prompts; seen and unseen contexts.",
            )
        )
    figures += run.figures
    if any((entry.get("reward_model") or {}).get("reliability") for entry in run.reward_models):
        figures.append(
            Figure(
                "Reward-model calibration (reliability diagram)",
                _png(plot_reliability, run.reward_models),
                "Predicted P(chosen ≻ rejected) = σ(ΔR_phi) against how often the label agreed; the diagonal is "
                "perfect calibration. Each pair counted both ways.",
            )
        )
    rl = _rl_curves(run.curves)
    if rl:
        figures.append(
            Figure(
                "Training: proxy and oracle reward against KL and against the iteration",
                _png(plot_training_curves, rl),
                "Mean reward of each rollout under R_phi (optimised) and R* (watched, never optimised).",
            )
        )
    trained = {k: v for k, v in run.curves.items() if v}
    if trained:
        figures.append(
            Figure(
                "Training: loss, batch accuracy, learning rate, gradient norm",
                _png(plot_losses, trained),
                "Against the optimiser step of each training stage.",
            )
        )
    return figures


def _before_after_png(rows: list[dict], before: str, after: str) -> bytes:
    buffer = io.BytesIO()
    plot_before_after(rows, buffer, before, after)
    return buffer.getvalue()


# ---- the page ---------------------------------------------------------------------------------------------
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("rlhflab", "assets"),
    autoescape=True,  # every string from a run (prompts, samples, options, paths) is escaped
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _labels(runs: list[Run]) -> None:
    """Each run's name in the report: its directory's name, or its path where two names clash."""
    names = [run.path.name or str(run.path) for run in runs]
    for run, name in zip(runs, names):
        run.label = name if names.count(name) == 1 else str(run.path)


def _run_view(run: Run) -> dict:
    return {
        "label": run.label,
        "path": str(run.path),
        "kind": run.kind,
        "headline": run.notes + run_headline(run),
        "evaluations": evaluation_table(run),
        "hacking": hacking_pairs(run),
        "reward_models": reward_model_table(run),
        "samples": sample_pairs(run),
        "figures": run_figures(run),
        "headlines": run.headlines,
        "config_file": run.config_file,
        "config": yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True),
    }


def render_report(runs: list[Run]) -> str:
    """The HTML page of ``runs`` (one run, or several compared)."""
    _labels(runs)
    comparison = None
    if len(runs) > 1:
        rl = {f"{run.label}: {name}": rows for run in runs for name, rows in _rl_curves(run.curves).items()}
        trained = {f"{run.label}: {name}": rows for run in runs for name, rows in run.curves.items() if rows}
        figures = []
        if rl:
            figures.append(
                Figure("Proxy and oracle reward against KL and iteration, every run", _png(plot_training_curves, rl))
            )
        if trained:
            figures.append(Figure("Loss, accuracy and learning rate, every run", _png(plot_losses, trained)))
        comparison = {
            "evaluations": [row for run in runs for row in evaluation_table(run, run.label)],
            "reward_models": [{"run": run.label, **row} for run in runs for row in reward_model_table(run)],
            "figures": figures,
        }
    return _TEMPLATES.get_template("report.html.j2").render(
        title="rlhflab report — " + ", ".join(run.label for run in runs),
        runs=[_run_view(run) for run in runs],
        comparison=comparison,
        generated=datetime.datetime.now().isoformat(timespec="seconds"),
        version=__version__,
    )


def write_report(run_dirs: Sequence[str | Path], output: str | Path | None = None) -> Path:
    """Read ``run_dirs`` and write their report to ``output`` (default: RUN/report.html for one run,
    report.html here for several) atomically; returns the path."""
    if not run_dirs:
        raise ConfigError("rlhflab report: give at least one run directory")
    runs = [read_run(d) for d in run_dirs]
    output = Path(output) if output else (runs[0].path / REPORT_FILE if len(runs) == 1 else Path(REPORT_FILE))
    write_text(output, render_report(runs))
    return output
