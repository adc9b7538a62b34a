"""Run reports: plots (PNG), the Markdown summary, and the evaluation table printed by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from rlhflab.evaluation.metrics import PolicyEvaluation
from rlhflab.evaluation.tables import format_table
from rlhflab.files import atomic_path

EVAL_COLUMNS = [
    ("policy", "policy", ""),
    ("contexts", "contexts", ""),
    ("J", "J (oracle)", ".3f"),
    ("J_se", "± se", ".3f"),
    ("J_hat", "Ĵ (reward model)", ".3f"),
    ("J_hat_se", "± se", ".3f"),
    ("kl", "KL(π‖π_ref)", ".2f"),
    ("mean_length", "length", ".1f"),
    ("distinct_2", "distinct-2", ".2f"),
    ("n", "n", "d"),
]


def evaluation_rows(results: dict[str, dict[str, PolicyEvaluation]]) -> list[dict]:
    """One table row per (policy, context set)."""
    rows = []
    for policy, by_set in results.items():
        for contexts, ev in by_set.items():
            d = ev.to_dict() if hasattr(ev, "to_dict") else dict(ev)
            rows.append({"policy": policy, "contexts": contexts, **{k: d.get(k) for k, _, _ in EVAL_COLUMNS[2:]}})
    return rows


def format_evaluations(results: dict[str, dict[str, PolicyEvaluation]]) -> str:
    return format_table(evaluation_rows(results), EVAL_COLUMNS)


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display is assumed anywhere)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(metrics: list[dict] | dict[str, list[dict]], path, title: str = "") -> None:
    """Proxy reward Ĵ and oracle reward J of the rollouts against KL(π‖π_ref) over training: the
    over-optimisation picture (a proxy that keeps rising while the oracle flattens or falls).
    ``metrics``: one run's metrics rows, or several runs' by label (overlaid, a colour per run).
    ``path``: a file path or a binary file object (PNG)."""
    plt = pyplot()
    runs = metrics if isinstance(metrics, dict) else {"": metrics}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, rows) in enumerate(runs.items()):
        rows = [m for m in rows if "reward" in m and "kl" in m]
        color, prefix = (f"C{i}", f"{label}: ") if len(runs) > 1 else (None, "")
        kl, its = [m["kl"] for m in rows], [m["iteration"] for m in rows]
        oracle = all("oracle_reward" in m for m in rows)
        axes[0].plot(kl, [m["reward"] for m in rows], "o-", color=color, label=f"{prefix}proxy reward (R_phi)")
        axes[1].plot(its, [m["reward"] for m in rows], "o-", color=color, label=f"{prefix}proxy reward")
        if oracle:
            axes[0].plot(kl, [m["oracle_reward"] for m in rows], "s:", color=color, label=f"{prefix}oracle reward (R*)")
            axes[1].plot(its, [m["oracle_reward"] for m in rows], "s:", color=color, label=f"{prefix}oracle reward")
        axes[1].plot(its, kl, "^--", color=color, alpha=0.6, label=f"{prefix}KL")
    axes[0].set_xlabel("KL(π‖π_ref) of the rollout (nats)")
    axes[0].set_ylabel("mean reward of the rollout")
    axes[0].set_title("reward against KL")
    axes[1].set_xlabel("iteration")
    axes[1].set_title("over training")
    for ax in axes:
        ax.legend(fontsize=7 if len(runs) > 1 else None)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


# Per-step series of the training loop worth a panel each, where a run logged them.
LOSS_PANELS = [
    ("loss", "loss"),
    ("accuracy", "pairwise accuracy of the batch"),
    ("lr", "learning rate"),
    ("grad_norm", "gradient norm (before clipping)"),
]


def plot_losses(runs: dict[str, list[dict]], path) -> None:
    """Loss, batch accuracy, learning rate and gradient norm against the optimiser step, one line
    per run (``runs``: label → metrics rows); panels no run logged are left out."""
    plt = pyplot()
    panels = [(key, title) for key, title in LOSS_PANELS if any(key in m for rows in runs.values() for m in rows)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for label, rows in runs.items():
            points = [(m.get("step", m["iteration"]), m[key]) for m in rows if key in m]
            ax.plot([x for x, _ in points], [y for _, y in points], ".-", label=label)
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_before_after(rows: list[dict], path: str | Path, before: str, after: str) -> None:
    """Bars of J and Ĵ (with ±1 standard error) before and after, on seen and unseen contexts."""
    plt = pyplot()
    import numpy as np

    sets = sorted({r["contexts"] for r in rows}, key=lambda s: (s != "seen", s))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, (key, label) in zip(axes, [("J", "J: oracle reward R*"), ("J_hat", "Ĵ: reward model R_phi")]):
        x = np.arange(len(sets))
        for offset, policy in [(-0.2, before), (0.2, after)]:
            values = [next((r[key] for r in rows if r["policy"] == policy and r["contexts"] == s), None) for s in sets]
            errors = [
                next((r[key + "_se"] for r in rows if r["policy"] == policy and r["contexts"] == s), None) for s in sets
            ]
            ax.bar(
                x + offset, [v or 0 for v in values], width=0.4, yerr=[e or 0 for e in errors], capsize=4, label=policy
            )
        ax.set_xticks(x, [f"{s} contexts" for s in sets])
        ax.set_title(label)
        ax.axhline(0, color="black", lw=0.5)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def plot_comparison(rows: list[dict], path) -> None:
    """Bars of J, Ĵ and KL per method, seen and unseen contexts side by side, ±1 standard error."""
    plt = pyplot()
    import numpy as np

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(3, 1, figsize=(max(7.0, 2 + 0.9 * len(methods)), 10))
    for ax, (key, title) in zip(
        axes, [("J", "J: oracle R*"), ("J_hat", "Ĵ: reward model R_phi"), ("kl", "KL(π‖π_0) (nats)")]
    ):
        x = np.arange(len(methods))
        for offset, contexts in ((-0.2, "seen"), (0.2, "unseen")):
            pick = [next((r for r in rows if r["method"] == m and r["contexts"] == contexts), {}) for m in methods]
            ax.bar(
                x + offset,
                [p.get(key) or 0 for p in pick],
                width=0.4,
                label=f"{contexts} contexts",
                yerr=[p.get(key + "_se") or 0 for p in pick],
                capsize=3,
            )
        ax.set_xticks(x, methods, rotation=30, ha="right")
        ax.set_title(title)
        ax.axhline(0, color="black", lw=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _save(fig, path) -> None:
    """PNG to ``path`` atomically, or into ``path`` when it is a binary file object."""
    fig.tight_layout()
    if hasattr(path, "write"):
        fig.savefig(path, format="png", dpi=110)
    else:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)


def plot_rounds(initial: dict, rows: list[dict], path: str | Path, title: str = "") -> None:
    """Iterated RLHF by round (Section 7.6.4): J of π_r on seen and unseen contexts (round 0 is π_0),
    Ĵ of π_r and of π_0 under round r's reward model, and the reward model's accuracy — on the new
    policy's pairs before retraining, after retraining on held-out pairs, and against R* on π_r's
    own samples. Error bars: ±1 standard error."""
    plt = pyplot()
    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for contexts, marker in (("seen", "o-"), ("unseen", "s--")):
        J = [initial[contexts]["J"]] + [r[contexts]["J"] for r in rows]
        se = [initial[contexts]["J_se"] or 0] + [r[contexts]["J_se"] or 0 for r in rows]
        axes[0].errorbar([0, *rounds], J, yerr=se, fmt=marker, capsize=3, label=f"J, {contexts} contexts")
        axes[1].errorbar(
            rounds, [r[contexts]["J_hat"] for r in rows], yerr=[r[contexts]["J_hat_se"] or 0 for r in rows],
            fmt=marker, capsize=3, label=f"Ĵ(π_r), {contexts}",
        )  # fmt: skip
        axes[1].plot(rounds, [r[contexts]["J_hat_initial"] for r in rows], marker[0] + ":", label=f"Ĵ(π_0), {contexts}")
        axes[2].plot(
            rounds, [r[contexts]["reward_model_order_accuracy"] for r in rows], marker,
            label=f"vs R* on π_r's samples, {contexts}",
        )  # fmt: skip
    shift = [(r["round"], r["shift"]) for r in rows if r.get("shift")]
    if shift:
        axes[2].plot(
            [k for k, _ in shift], [s["accuracy"] for _, s in shift], "D-", label="R_φ,r−1 on π_r−1's new labels"
        )
    axes[2].plot(rounds, [r["reward_model"]["accuracy"] for r in rows], "^:", label="held-out labels, after training")
    axes[0].set_title("true reward J (oracle R*)")
    axes[1].set_title("proxy Ĵ under round r's reward model")
    axes[2].set_title("reward-model pairwise accuracy")
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks([0, *rounds] if ax is axes[0] else rounds)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_reliability(rows: list[dict], path: str | Path) -> None:
    """One reliability diagram per round: the reward model's predicted preference probability
    σ(Δ R_phi) against how often annotators agreed, on the round's new pairs before retraining
    (the last round's model meeting the new policy's samples) and on held-out pairs after. A row
    may carry its own panel ``title`` (a run's single reward model) instead of a round."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls=":")
        for report, label in (
            (row.get("shift"), "before retraining (new samples)"),
            (row["reward_model"], "after (held out)"),
        ):
            points = (report or {}).get("reliability") or []
            if points:
                ax.plot(
                    [p["predicted"] for p in points],
                    [p["observed"] for p in points],
                    "o-",
                    label=f"{label}, ECE {report['ece']:.3f}",
                )
        ax.set_title(row.get("title") or f"round {row['round']}")
        ax.set_xlabel("predicted P(chosen ≻ rejected)")
        ax.set_ylabel("observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    _save(fig, path)
