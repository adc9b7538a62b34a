"""``rlhflab frontier``: J (R*, Eq. 12) and Ĵ (R_phi, Eq. 14) against KL(π‖π_0) for each method,
along its whole path rather than at one point (Sections 6.2, 7.7; Gao et al. 2022).

One shared pool (the demo's: π_0's samples → simulated annotators → reward model R_phi), then on
seen and unseen contexts:

    bon   π_0 drawn ``bon_max_n`` times per evaluation prompt; best-of-n by R_phi for n = 1, 2, 4, …
          from that one sample (unbiased over n-subsets), KL log n − (n−1)/n and its exact plug-in
    ppo   PPO against R_phi, every policy ``eval_every`` iterations evaluated (the loop's hook);
    rloo  RLOO and GRPO likewise, ``group_size`` samples per prompt on ``prompts_per_iteration /
    grpo  group_size`` prompts, so every RL iteration draws as many samples as PPO's
    dpo   DPO, IPO and KTO (the pairs unpaired) on the pool's pairs, evaluated every
    ipo   ``preference_eval_every`` optimiser steps, one curve per β of ``preference_betas``
    kto
    raft  RAFT: ``raft_rounds`` rounds of best-of-``group_size`` by R_phi → SFT, drawing PPO's
          number of samples in all, evaluated after every round

Each point's ΔJ is paired by prompt with π_0's J on the large sample. The Gao et al. forms are
fitted to each method's points (best-of-n d(α − βd) on the analytic KL, RL forms d(α − β log d) on
the measured KL), with bootstrap intervals over prompts and the KL where the fitted J peaks; the
reference curve is Eq. 17 with R*, reweighted on π_0's own draws. Writes ``frontier.json``,
``frontier.md`` and ``frontier.png``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhflab.commands.pool import (
    Pool,
    build_feedback_pool,
    open_run_dir,
    pool_options,
    pool_ppo_config,
    resolve_precision,
)
from rlhflab.commands.presets import PRESETS as ALL_PRESETS
from rlhflab.commands.train import run_kto, run_policy_optimization, run_preference_optimization, run_raft
from rlhflab.config import apply_preset, option, preset_option
from rlhflab.errors import ConfigError
from rlhflab.evaluation.along_training import EvaluateAlongTraining, every
from rlhflab.evaluation.frontier import (
    best_of_n_curve,
    fit_points,
    frontier_point,
    initial_points,
    per_prompt_means,
    plot_frontier,
    powers_of_two,
    reference_betas,
    reference_curve,
    reward_matrix,
    with_deltas,
)
from rlhflab.evaluation.metrics import PolicyEvaluation, evaluate_on_sets
from rlhflab.evaluation.tables import format_table
from rlhflab.files import write_json, write_text
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.preference import KTOConfig, PreferenceConfig, unpair
from rlhflab.train.rejection import RAFTConfig

PRESETS = ALL_PRESETS["frontier"]
METHODS = ["bon", "ppo", "rloo", "grpo", "dpo", "ipo", "kto", "raft"]
PREFERENCE_METHODS = ("dpo", "ipo", "kto")


@dataclass
class FrontierConfig(pool_options(PRESETS, "frontier")):
    """True and proxy reward against KL for best-of-n, PPO and DPO from one pool of simulated
    feedback: points along each method's path, Gao et al. fits with intervals, the over-optimisation
    KL, and the Eq. 17 reference curve; --quick runs it on tiny models."""

    methods: str = option("bon,ppo,dpo", "Comma-separated methods from: " + ", ".join(METHODS) + ".")
    group_size: int = option(4, "Samples per prompt of RLOO's and GRPO's groups and of RAFT's best-of-n.")
    bon_max_n: int | None = preset_option(
        PRESETS,
        "bon_max_n",
        "Draws of pi_0 per evaluation prompt: best-of-n for n = 1, 2, 4, ... up to it, all from this one sample, "
        "and the sample the reference curve is reweighted on.",
    )
    policy_iterations: int | None = preset_option(PRESETS, "policy_iterations", "PPO iterations.")
    prompts_per_iteration: int | None = preset_option(PRESETS, "prompts_per_iteration", "Prompts per PPO iteration.")
    policy_learning_rate: float | None = preset_option(PRESETS, "policy_learning_rate", "PPO learning rate.")
    policy_epochs: int | None = preset_option(PRESETS, "policy_epochs", "PPO passes over each rollout.")
    kl_coef: float = option(0.05, "beta of PPO's KL penalty.")
    eval_every: int | None = preset_option(PRESETS, "eval_every", "PPO iterations between evaluations of the policy.")
    preference_steps: int | None = preset_option(PRESETS, "preference_steps", "DPO optimiser steps.")
    preference_learning_rate: float | None = preset_option(PRESETS, "preference_learning_rate", "DPO learning rate.")
    preference_eval_every: int | None = preset_option(
        PRESETS, "preference_eval_every", "DPO optimiser steps between evaluations of the policy."
    )
    preference_betas: str = option(
        "0.1",
        "Comma-separated betas of DPO / IPO / KTO (the KL strength of Eq. 17 their implicit reward carries): one "
        "curve per beta, so the frontier shows the methods across beta too.",
        aliases=["--dpo_beta"],
    )
    raft_rounds: int | None = preset_option(PRESETS, "raft_rounds", "RAFT rounds (evaluated after each).")
    raft_learning_rate: float | None = preset_option(PRESETS, "raft_learning_rate", "RAFT's SFT learning rate.")
    batch_size: int = option(8, "Pairs per DPO optimiser step.")
    num_bootstrap: int = option(1000, "Bootstrap resamples of the prompts for the fits' intervals.")

    def resolved(self) -> FrontierConfig:
        """The options left unset filled from the chosen preset; unknown methods and bad sizes are errors."""
        preset = "quick" if self.quick else self.preset
        cfg = dataclasses.replace(apply_preset(self, PRESETS, preset), preset=preset, quick=preset == "quick")
        unknown = [m for m in cfg.method_list if m not in METHODS]
        if unknown or not cfg.method_list:
            raise ConfigError(f"methods: unknown or none '{cfg.methods}'; choose from {', '.join(METHODS)}")
        for name in (
            "bon_max_n",
            "eval_every",
            "preference_eval_every",
            "policy_iterations",
            "preference_steps",
            "raft_rounds",
        ):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (a group to compare within), got {cfg.group_size}")
        _ = cfg.beta_list  # every beta a positive number, checked before anything runs
        return cfg

    @property
    def beta_list(self) -> list[float]:
        try:
            betas = [float(b) for b in self.preference_betas.split(",") if b.strip()]
        except ValueError:
            raise ConfigError(
                f"preference_betas: expected comma-separated numbers, got '{self.preference_betas}'"
            ) from None
        if not betas or any(not b > 0 for b in betas):
            raise ConfigError(f"preference_betas: every beta must be > 0, got '{self.preference_betas}'")
        return betas

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]


# ---- points -------------------------------------------------------------------------------------
class _Evaluations(EvaluateAlongTraining):
    """The loop's after-iteration hook: every ``every`` iterations (and at the last), the policy
    being trained evaluated on both context sets (:class:`EvaluateAlongTraining`), each evaluation a
    point of ``method``'s path after π_0's own."""

    def __init__(self, method: str, policy, total: int, every_k: int, run: _Run, unit: str):
        self.method, self.run, self.unit = method, run, unit
        self.points: list[dict] = initial_points(method, run.baseline)
        super().__init__(policy, run.tokenizer, run.pool.prompt_sets, run.eval_kw, every(every_k, total), self._record)

    def _record(self, done: int, evaluations: dict) -> None:
        for contexts, ev in evaluations.items():
            self.points.append(
                frontier_point(self.method, contexts, f"{self.unit} {done}", done, ev, self.run.baseline[contexts])
            )


@dataclass
class _Run:
    """What every method reads: the settings, the pool, π_0 and its per-prompt J and Ĵ."""

    cfg: FrontierConfig
    run_dir: Path
    pool: Pool
    policy: object  # π_0, also the reference
    tokenizer: object
    oracle: object
    eval_kw: dict
    baseline: dict[str, dict]  # {contexts: {"J": (P,), "J_hat": (P,)}} of π_0 on its bon_max_n draws

    @property
    def use_chat(self) -> bool:
        return not self.cfg.quick  # the tiny model has a template but no training to follow it

    @property
    def common(self) -> dict:
        """Options every trained method's config shares (the offline ones and RAFT's SFT)."""
        cfg = self.cfg
        return dict(
            policy=cfg.policy,
            batch_size=cfg.batch_size,
            use_chat_template=self.use_chat,
            seed=cfg.seed,
            progress=False,
            report_to=cfg.report_to,
            mixed_precision=cfg.mixed_precision,
        )


def _run_rl(r: _Run, method: str) -> list[dict]:
    """PPO, RLOO or GRPO against R_phi; a group method draws ``group_size`` samples on proportionally
    fewer prompts, so each iteration's rollout is as large as PPO's."""
    cfg = r.cfg
    sizes = {}
    if method != "ppo":
        prompts = max(1, cfg.prompts_per_iteration // cfg.group_size)
        sizes = dict(samples_per_prompt=cfg.group_size, prompts_per_iteration=prompts)
    rl_cfg = pool_ppo_config(cfg, r.pool.reward_dir, r.run_dir / method, r.use_chat, method, progress=False, **sizes)
    policy = load_policy(cfg.policy)[0]
    hook = _Evaluations(method, policy, cfg.policy_iterations, cfg.eval_every, r, "iteration")
    run_policy_optimization(rl_cfg, policy, r.tokenizer, r.pool.reward_model, r.oracle, r.policy, should_stop=hook)
    return hook.points


def _run_preference(r: _Run, method: str) -> list[dict]:
    """DPO, IPO or KTO on the pool's pairs (KTO's unpaired as TRL's KTOTrainer unpairs them), one
    curve per β; several betas name each curve by its β."""
    cfg, points = r.cfg, []
    for beta in cfg.beta_list:
        name = method if len(cfg.beta_list) == 1 else f"{method} β={beta:g}"
        common = dict(
            r.common,
            kl_coef=beta,
            learning_rate=cfg.preference_learning_rate,
            max_steps=cfg.preference_steps,
            output_dir=str(r.run_dir / name.replace(" β=", "-beta-")),
        )
        policy = load_policy(cfg.policy)[0]
        hook = _Evaluations(name, policy, cfg.preference_steps, cfg.preference_eval_every, r, "step")
        if method == "kto":
            records = unpair(r.pool.preferences)
            run_kto(KTOConfig(**common), policy, r.tokenizer, records, r.policy, should_stop=hook)
        else:
            pcfg = PreferenceConfig(loss=method, **common)
            run_preference_optimization(pcfg, policy, r.tokenizer, r.pool.preferences, r.policy, should_stop=hook)
        points += hook.points
    return points


def _run_raft(r: _Run, method: str) -> list[dict]:
    """RAFT rounds of best-of-``group_size`` by R_phi, drawing as many samples in all as PPO's run
    (``policy_iterations × prompts_per_iteration``), the policy evaluated after every round."""
    cfg = r.cfg
    drawn = cfg.policy_iterations * cfg.prompts_per_iteration
    per_round = max(1, drawn // (cfg.raft_rounds * cfg.group_size))
    raft_cfg = RAFTConfig(
        **r.common,
        prompts="train",
        prompts_per_round=per_round,
        num_rounds=cfg.raft_rounds,
        samples_per_prompt=cfg.group_size,
        keep_fraction=1 / cfg.group_size,
        max_new_tokens=cfg.max_new_tokens,
        learning_rate=cfg.raft_learning_rate,
        output_dir=str(r.run_dir / "raft"),
    )
    policy = load_policy(cfg.policy)[0]
    hook = _Evaluations("raft", policy, cfg.raft_rounds, 1, r, "round")
    run_raft(raft_cfg, policy, r.tokenizer, r.pool.reward_model, r.oracle, after_round=hook)
    return hook.points


def _bon_points(large: dict[str, PolicyEvaluation], max_n: int, baseline: dict) -> list[dict]:
    points = []
    for contexts, ev in large.items():
        proxy = reward_matrix(ev.proxy_rewards, ev.prompt_index, ev.num_prompts)
        oracle = reward_matrix(ev.oracle_rewards, ev.prompt_index, ev.num_prompts)
        texts = reward_matrix(np.arange(len(ev.texts)), ev.prompt_index, ev.num_prompts).astype(int)
        for p in best_of_n_curve(proxy, oracle, powers_of_two(max_n), [[ev.texts[i] for i in row] for row in texts]):
            point = {"method": "bon", "contexts": contexts, "point": f"n={p['n']}", "step": p["n"], **p}
            # the analytic KL is the x-axis, as in Gao et al.; the exact plug-in stands beside it
            point["kl"], point["kl_se"] = p["kl_bound"], None
            points.append(with_deltas(point, baseline[contexts]))
    return points


FRONTIER_COLUMNS = [
    ("method", "method", ""),
    ("contexts", "contexts", ""),
    ("point", "point", ""),
    ("kl", "KL(π‖π_0)", ".3f"),
    ("kl_se", "± se", ".3f"),
    ("kl_estimate", "KL plug-in (bon)", ".3f"),
    ("J", "J (oracle)", ".3f"),
    ("J_se", "± se", ".3f"),
    ("J_hat", "Ĵ (reward model)", ".3f"),
    ("J_hat_se", "± se", ".3f"),
    ("delta_J", "ΔJ vs π_0", "+.3f"),
    ("delta_J_se", "± se", ".3f"),
]


def run_frontier(cfg: FrontierConfig) -> Path:
    cfg, precision = resolve_precision(cfg.resolved())
    with precision:
        return _run_frontier(cfg)


def _run_frontier(cfg: FrontierConfig) -> Path:
    run_dir = open_run_dir(cfg, "frontier")
    started = time.perf_counter()
    oracle = load_reward_source(cfg.oracle)
    policy, tokenizer = load_policy(cfg.policy)
    pool = build_feedback_pool(cfg, run_dir, policy, tokenizer)
    print(f"[frontier] pool: {len(pool.preferences)} pairs; {time.perf_counter() - started:.1f} s", flush=True)
    eval_kw = dict(
        oracle=oracle,
        reward_model=pool.reward_model,
        reference=policy,
        num_samples=cfg.eval_samples,
        max_new_tokens=cfg.max_new_tokens,
        use_chat_template=not cfg.quick,
        seed=cfg.seed + 1,
    )
    # π_0 drawn bon_max_n times per prompt: its J (the baseline every ΔJ pairs with), best-of-n, the reference
    large = evaluate_on_sets(
        policy, tokenizer, pool.prompt_sets, **{**eval_kw, "reference": None, "num_samples": cfg.bon_max_n}
    )
    baseline = {
        c: {
            k: per_prompt_means(getattr(ev, f), ev.prompt_index, ev.num_prompts)
            for k, f in (("J", "oracle_rewards"), ("J_hat", "proxy_rewards"))
        }
        for c, ev in large.items()
    }
    reference = {}
    for contexts, ev in large.items():
        oracle_matrix = reward_matrix(ev.oracle_rewards, ev.prompt_index, ev.num_prompts)
        reference[contexts] = reference_curve(oracle_matrix, reference_betas(oracle_matrix))
    r = _Run(cfg, run_dir, pool, policy, tokenizer, oracle, eval_kw, baseline)
    points, seconds = [], {}
    for method in cfg.method_list:
        t0 = time.perf_counter()
        print(f"[frontier] {method} ...", flush=True)
        points += _bon_points(large, cfg.bon_max_n, baseline) if method == "bon" else RUNNERS[method](r, method)
        seconds[method] = time.perf_counter() - t0
        print(f"[frontier] {method}: {seconds[method]:.1f} s", flush=True)

    fits, fit_lines = fit_points(points, baseline, cfg.num_bootstrap, cfg.seed)
    write_json(
        run_dir / "frontier.json",
        {
            "config": dataclasses.asdict(cfg),
            "pool": {"pairs": len(pool.preferences), "reward_model": pool.reward_report},
            "seconds": {**seconds, "total": time.perf_counter() - started},
            "points": points,
            "reference": reference,
            "fits": fits,
        },
    )
    plot_frontier(points, reference, fits, run_dir / "frontier.png")
    order = {m: i for i, m in enumerate(dict.fromkeys(p["method"] for p in points))}
    table = format_table(sorted(points, key=lambda p: (order[p["method"]], p["contexts"], p["step"])), FRONTIER_COLUMNS)
    note = (
        f"Pool: {len(pool.preferences)} simulated pairs (oracle `{cfg.oracle}`), reward model on "
        f"`{cfg.reward_backbone}`. π_0 drawn {cfg.bon_max_n} times on each of {cfg.eval_prompts} seen and "
        f"{cfg.eval_prompts} unseen prompts: best-of-n (by R_phi) from that one sample, its KL the formula "
        "log n − (n−1)/n (the plug-in column: the exact best-of-n KL of the empirical draws, biased low); "
        f"trained policies on {cfg.eval_samples} samples per prompt, KL the k1 estimate. ΔJ is paired by prompt "
        "with π_0's J on the large sample; standard errors are over prompts."
    )
    reference_lines = [
        f"- {c}: J {ref[0]['J']:.3f} at KL 0 → {ref[-1]['J']:.3f} at KL {ref[-1]['kl']:.2f} (β {ref[-1]['beta']:.3g})"
        for c, ref in reference.items()
    ]
    text = (
        f"# rlhflab frontier — {run_dir}\n\n{note}\n\n{table}\n\n## Gao et al. fits (d = √KL) and the "
        f"over-optimisation point\n\n" + "\n".join(fit_lines) + "\n\n## Reference curve (Eq. 17 with R*, reweighted "
        "on π_0's draws)\n\n" + "\n".join(reference_lines) + "\n"
    )
    write_text(run_dir / "frontier.md", text)
    print("\n" + table + "\n\n" + "\n".join(fit_lines))
    return run_dir


RUNNERS = {
    "ppo": _run_rl,
    "rloo": _run_rl,
    "grpo": _run_rl,
    "dpo": _run_preference,
    "ipo": _run_preference,
    "kto": _run_preference,
    "raft": _run_raft,
}
