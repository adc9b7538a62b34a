"""``rlhflab demo``: the whole workflow of Figure 5 on the offline default models, ending in a
run report that sets the true reward J (oracle R*) beside the proxy Ĵ (reward model R_phi).

    initial policy pi_0 --sample--> outputs --simulated annotators (R*)--> pairwise preferences
        --> reward model R_phi (Bradley-Terry, Eq. 11) --> PPO against R_phi with a KL penalty
        --> evaluate pi_0 and pi_final on seen and unseen prompts under R* (J) and R_phi (Ĵ)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.commands.pool import build_feedback_pool, open_run_dir, pool_options, pool_ppo_config, resolve_precision
from rlhflab.commands.presets import PRESETS as ALL_PRESETS
from rlhflab.commands.train import run_policy_optimization
from rlhflab.config import apply_preset, option, preset_option
from rlhflab.evaluation.html_report import write_report
from rlhflab.evaluation.metrics import evaluate_on_sets, paired_difference, standard_error
from rlhflab.evaluation.plots import (
    evaluation_rows,
    format_evaluations,
    plot_before_after,
    plot_training_curves,
    read_metrics,
)
from rlhflab.files import write_json, write_text
from rlhflab.hardware import matmul_peak
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source

PRESETS = ALL_PRESETS["demo"]


@dataclass
class DemoConfig(pool_options(PRESETS, "demo")):
    """The whole RLHF workflow on the offline defaults (SmolLM2-135M-Instruct, MiniLM reward model,
    the sentiment oracle as R*). --quick runs it on tiny in-process models for a first look."""

    policy_iterations: int | None = preset_option(
        PRESETS, "policy_iterations", "PPO iterations.", aliases=["--ppo_iterations"]
    )
    prompts_per_iteration: int | None = preset_option(PRESETS, "prompts_per_iteration", "Prompts per PPO iteration.")
    kl_coef: float = option(0.05, "beta, the KL penalty weight of PPO.")
    policy_learning_rate: float | None = preset_option(
        PRESETS, "policy_learning_rate", "PPO learning rate.", aliases=["--ppo_learning_rate"]
    )
    policy_epochs: int | None = preset_option(
        PRESETS, "policy_epochs", "PPO passes over each rollout.", aliases=["--ppo_epochs"]
    )

    def resolved(self) -> DemoConfig:
        """The options left unset filled from the chosen preset."""
        preset = "quick" if self.quick else self.preset
        return dataclasses.replace(apply_preset(self, PRESETS, preset), preset=preset, quick=preset == "quick")


class Stages:
    """Wall time of each stage, printed as it goes and kept for the summary."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"[demo] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - t0
        print(f"[demo] {name}: {self.seconds[name]:.1f} s", flush=True)
        return result


def run_demo(cfg: DemoConfig) -> Path:
    cfg, precision = resolve_precision(cfg.resolved())
    with precision:
        return _run_demo(cfg)


def _run_demo(cfg: DemoConfig) -> Path:
    run_dir = open_run_dir(cfg, "demo")
    stages = Stages()
    use_chat = not cfg.quick  # the tiny model has a template but no training to follow it
    peak_before = matmul_peak()["gflops_median"]
    policy, tokenizer = stages.run("load initial policy", load_policy, cfg.policy)
    oracle = load_reward_source(cfg.oracle)
    eval_kw = dict(
        oracle=oracle,
        reward_model=None,
        num_samples=cfg.eval_samples,
        max_new_tokens=cfg.max_new_tokens,
        use_chat_template=use_chat,
        seed=cfg.seed + 1,
    )
    before = {}

    def evaluate_initial(seen_prompts, unseen_prompts):
        # pi_0 before anything is trained; its samples also test R_phi on unseen contexts
        before.update(
            stages.run(
                "evaluate initial policy",
                evaluate_on_sets,
                policy,
                tokenizer,
                {"seen": seen_prompts, "unseen": unseen_prompts},
                **eval_kw,
            )
        )
        return (before["seen"].contexts, before["seen"].texts), (before["unseen"].contexts, before["unseen"].texts)

    # 1-4. sample pi_0 -> simulated annotators (a pool driven by R*) give pairwise preferences ->
    # evaluate pi_0 -> reward model: Bradley-Terry on the preferences, reported on held-out pairs and vs R*
    pool = build_feedback_pool(
        cfg, run_dir, policy, tokenizer, stage=stages.run, before_reward=evaluate_initial, progress=True
    )
    reward_dir, reward_report, reward_model = pool.reward_dir, pool.reward_report, pool.reward_model
    for ev in before.values():  # Ĵ of pi_0 on the very samples J was measured on
        proxy = reward_model(ev.contexts, ev.texts)
        ev.proxy_rewards, ev.J_hat = proxy.tolist(), float(proxy.mean())
        # the same per-prompt standard error as every other J and Ĵ (evaluate_policy)
        ev.J_hat_se = standard_error(proxy, torch.tensor(ev.prompt_index), cfg.eval_samples)

    # 5. PPO against R_phi with a KL penalty to pi_0; R* is only watched, never optimised
    reference = load_policy(cfg.policy)[0]
    rl_cfg = pool_ppo_config(cfg, reward_dir, run_dir / "ppo", use_chat)
    ppo_dir = stages.run(
        "PPO against the reward model", run_policy_optimization, rl_cfg, policy, tokenizer, reward_model, oracle
    )
    final_policy, _ = load_policy(str(ppo_dir / "policy"))

    # 6. evaluate the final policy on the same contexts
    eval_kw.update(reward_model=reward_model, reference=reference)
    after = stages.run("evaluate final policy", evaluate_on_sets, final_policy, tokenizer, pool.prompt_sets, **eval_kw)
    for ev in before.values():
        ev.kl = 0.0  # pi_0 is the reference

    # 7. report
    results = {"initial": before, "final": after}
    rows = evaluation_rows(results)
    metrics = read_metrics(ppo_dir / "metrics.jsonl")
    plot_training_curves(metrics, run_dir / "training_curves.png", f"PPO against R_phi ({cfg.policy})")
    plot_before_after(rows, run_dir / "before_after.png", "initial", "final")
    write_json(run_dir / "evaluation.json", {p: {s: e.to_dict() for s, e in r.items()} for p, r in results.items()})
    peaks = (peak_before, matmul_peak()["gflops_median"])
    summary = _summary(cfg, results, reward_report, stages.seconds, len(pool.preferences), run_dir, peaks)
    write_text(run_dir / "summary.md", summary)
    write_json(run_dir / "stage_seconds.json", stages.seconds)
    print("\n" + summary)
    print(f"report: {write_report([run_dir])}")
    return run_dir


def _fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def _summary(cfg, results, reward_report, seconds, num_prefs, run_dir, peaks) -> str:
    lines = [
        f"# rlhflab demo — {run_dir}",
        "",
        f"Initial policy `{cfg.policy}`, reward model on `{cfg.reward_backbone}`, oracle R* = `{cfg.oracle}`. "
        f"{num_prefs} simulated preference pairs; PPO for {cfg.policy_iterations} iterations "
        f"(β = {cfg.kl_coef}).",
        "",
        "## Policies: true reward J beside proxy Ĵ",
        "",
        format_evaluations(results),
        "",
    ]
    for contexts in ("seen", "unseen"):
        b, a = results["initial"][contexts], results["final"][contexts]
        delta, se = paired_difference(b, a)
        delta_hat, se_hat = paired_difference(b, a, "proxy_rewards")
        lines.append(
            f"- {contexts} contexts: ΔJ = {delta:+.3f} ± {_fmt(se)} (oracle), "
            f"ΔĴ = {delta_hat:+.3f} ± {_fmt(se_hat)} (reward model); the change in J is "
            f"{delta / se if se else float('inf'):+.1f} standard errors."
        )
    lines += [
        "",
        f"Standard errors of Δ are over prompts: each prompt's mean reward over its {cfg.eval_samples} "
        "samples after training minus before (Eq. 12 per context), so the variance between contexts "
        "cancels.",
    ]
    lines += [
        "",
        "## Reward model",
        "",
        f"- held-out pairwise accuracy {_fmt(reward_report.get('accuracy'))} "
        f"(the oracle itself agrees with {_fmt(reward_report.get('oracle_accuracy'))} of the noisy labels)",
        f"- expected calibration error {_fmt(reward_report.get('ece'))}",
    ]
    for contexts in ("seen", "unseen"):
        c = reward_report.get(contexts) or {}
        lines.append(f"- Spearman correlation with R* on {contexts} contexts: {_fmt(c.get('spearman'))}")
    lines += ["", "## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in seconds.items()]
    lines += [
        f"| total | {sum(seconds.values()):.1f} |",
        "",
        f"fp32 matmul rate of this machine, measured before and after the run: {peaks[0]:.0f} and "
        f"{peaks[1]:.0f} GFLOP/s (median of 2048² products). The demo is sized to finish in 10 minutes "
        "at about 180 GFLOP/s; its time scales roughly with 180 / this rate.",
        "",
        "Plots: `training_curves.png` (proxy and oracle reward against KL), `before_after.png`; "
        "all of it on one page: `report.html`.",
    ]
    return "\n".join(lines) + "\n"
