"""``rlhflab toy trainers``: every trainer of ``rlhflab.train`` against the closed-form optimum (Eq. 17).

The harness, the settings and the bars are in :mod:`rlhflab.toy.trainers`; this runs them all on the
full instance and writes trainers.json, trainers.png and trainers.md (gap closed and wall time per
trainer, GRPO with and without std scaling).
"""

from __future__ import annotations

import time
from pathlib import Path

from rlhflab.files import write_text
from rlhflab.toy.mdp import build_lab
from rlhflab.toy.outputs import finish, pyplot
from rlhflab.toy.trainers import DEFAULT_BETA, POLICY_GRADIENT, run_all


def run(run_dir, seed: int = 0, beta: float = DEFAULT_BETA) -> dict:
    """Every trainer from π_ref's model on the default instance, at β = ``beta``."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    instance, model, tokenizer = build_lab(seed)
    result = run_all(instance, model, tokenizer, beta=beta, seed=seed)
    payload = {"experiment": "trainers", "seed": seed, **result}
    write_text(run_dir / "trainers.md", table_markdown(result))
    return finish(run_dir, "trainers", payload, _figure(result, beta), started)


def table_markdown(result: dict) -> str:
    """Per trainer: the gap closed, its bar, J, KL and wall time, under the optimum's J and KL."""
    lines = [
        f"β = {result['kl_coef']}: π* has J = {result['J_opt']:.4f}, KL = {result['KL_opt']:.4f}",
        "",
        "| trainer | gap closed | bar | J | KL | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        bar = {"dpo": "≥ 0.95"}.get(r["algorithm"], "≥ 0.98" if r["algorithm"] in POLICY_GRADIENT else "reported")
        lines.append(
            f"| {r['trainer']} | {r['gap_closed']:.4f} | {bar} | {r['J']:.4f} | {r['KL']:.4f} | {r['wall_time_s']} |"
        )
    return "\n".join(lines) + "\n"


def _figure(result: dict, beta: float):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["rows"]
    colors = ["tab:red" if r["algorithm"] == "grpo" else "tab:blue" for r in rows]
    ax1.bar([r["trainer"] for r in rows], [r["gap_closed"] for r in rows], color=colors)
    ax1.axhline(0.98, ls="--", c="k", lw=0.8, label="bar 0.98 (PG)")
    ax1.axhline(0.95, ls=":", c="k", lw=0.8, label="bar 0.95 (DPO)")
    ax1.set_ylim(min(0.8, min(r["gap_closed"] for r in rows) - 0.02), 1.005)
    ax1.set_ylabel("gap closed of J − β·KL")
    ax1.set_title(f"trainers vs closed form (β={beta})")
    ax1.legend(fontsize=8)
    f = result["frontier"]
    ax2.plot([p["KL"] for p in f], [p["J"] for p in f], c="gray", label="π*_β' frontier")
    ax2.scatter([result["KL_opt"]], [result["J_opt"]], marker="*", s=150, c="k", label=f"π*_β, β={beta}")
    for r in rows:
        ax2.scatter([r["KL"]], [r["J"]], label=r["trainer"], c="tab:red" if r["algorithm"] == "grpo" else None)
    ax2.set_xlabel("KL(π‖π_ref)")
    ax2.set_ylabel("J(π)")
    ax2.set_xlim(0, 2.5 * result["KL_opt"])
    ax2.set_title("where each trainer lands (GRPO's std scaling moves it)")
    ax2.legend(fontsize=7)
    return fig


def headline(result: dict) -> str:
    """The gap closed, and the wall time, of every trainer."""
    return "gap closed: " + ", ".join(
        f"{r['trainer']} {r['gap_closed']:.3f} ({r['wall_time_s']} s)" for r in result["rows"]
    )
