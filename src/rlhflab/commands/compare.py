"""``rlhflab compare``: RL and its alternatives (Section 7.9) on one footing.

One shared pool of feedback — the demo's steps: sample π_0 on the feedback prompts, simulated
annotators (driven by R*) label pairs, a reward model R_phi is fitted — and then each method
learns from that pool only (R* is never seen by a method, only by the evaluation):

    ppo           online RL against R_phi, KL penalty β                        (Section 6)
    dpo/ipo/slic  the annotated pairs, reference = π_0                           (Section 7.9.2)
    rrhf          the pool's samples ranked by R_phi                             (Section 7.9.1)
    raft          rounds of fresh samples, best by R_phi, SFT                    (Section 7.9.1)
    rso           fresh π_0 samples accepted toward π* ∝ π_0·exp(R_phi/β), DPO   (Section 7.9.2)
    bon           best of n by R_phi at inference; no training                   (Section 7.9.1)
    sft-positive  SFT on the chosen side of the pairs                            (Section 7.9.2)

Budgets are matched where they can be: every training method gets the same pool, the offline
ones the same number of optimiser steps, and the online ones (ppo, raft, rso) the same number of
fresh policy samples (``online_samples``). Each method's samples drawn and wall time are recorded.
Every resulting policy is evaluated by :func:`evaluate_policy` on seen and unseen prompts: J under
R*, Ĵ under R_phi and KL(π‖π_0), with standard errors. PPO, DPO, IPO and SLiC are also evaluated
part-way through training (``path_evaluations``) and best-of-n is read at every n = 2, 4, … below
its own from the same draws, so that methods can be compared at matched KL, not matched steps.

``--seeds 0-4`` runs the whole comparison once per seed into OUTPUT/seed-K (a seed whose run
finished, marked by ``done.json`` written last, is skipped when the command is run again; an
unfinished one is redone), then summarises over seeds and prompts (:mod:`rlhflab.evaluation.comparison`):
each method's ΔJ against π_0 with a crossed seeds × prompts interval, J at matched KL, each pair
of methods' difference, and, for whatever is within noise, the seeds or prompts that would show it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from rlhflab.commands.pool import Pool, build_feedback_pool, open_run_dir, pool_options, resolve_precision
from rlhflab.commands.presets import PRESETS as ALL_PRESETS
from rlhflab.commands.train import (
    run_kto,
    run_policy_optimization,
    run_positive_sft,
    run_preference_optimization,
    run_raft,
    run_ranking_optimization,
    run_rso,
)
from rlhflab.config import apply_preset, config_to_dict, default_run_dir, option, preset_option, save_config
from rlhflab.data import Ranking, load_prompts, prompt_text
from rlhflab.decoding.best_of_n import best_of_n
from rlhflab.errors import ConfigError
from rlhflab.evaluation.along_training import EvaluateAlongTraining
from rlhflab.evaluation.comparison import summarize_seeds, summary_markdown
from rlhflab.evaluation.frontier import best_of_n_curve, per_prompt_means, powers_of_two
from rlhflab.evaluation.html_report import write_report
from rlhflab.evaluation.metrics import (
    PolicyEvaluation,
    distinct_n,
    evaluate_on_sets,
    paired_difference,
    standard_error,
)
from rlhflab.evaluation.plots import plot_comparison
from rlhflab.evaluation.tables import format_table
from rlhflab.files import write_json, write_text
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.policy_optimization import RLConfig
from rlhflab.train.preference import KTOConfig, PreferenceConfig, RankingConfig, unpair
from rlhflab.train.rejection import PositiveSFTConfig, RAFTConfig, RSOConfig

METHODS = ["ppo", "dpo", "ipo", "slic", "kto", "rrhf", "raft", "rso", "bon", "sft-positive"]


PRESETS = ALL_PRESETS["compare"]


@dataclass
class CompareConfig(pool_options(PRESETS, "compare")):
    """Run several alignment methods from one shared pool of simulated feedback with matched budgets,
    and tabulate J (oracle), Ĵ (reward model) and KL to the initial policy on seen and unseen prompts."""

    methods: str | None = preset_option(PRESETS, "methods", "Comma-separated methods from: " + ", ".join(METHODS) + ".")
    kl_coef: float = option(0.1, "beta, shared: PPO's KL coefficient, DPO/IPO/RSO's beta.", aliases=["--beta"])
    online_samples: int | None = preset_option(
        PRESETS, "online_samples", "Fresh policy samples each online method (ppo, raft, rso) may draw."
    )
    offline_steps: int | None = preset_option(
        PRESETS,
        "offline_steps",
        "Optimiser steps of each offline method (dpo, ipo, slic, kto, rrhf, sft-positive, rso).",
    )
    batch_size: int = option(8, "Examples per optimiser step of the offline methods.")
    preference_learning_rate: float | None = preset_option(
        PRESETS, "preference_learning_rate", "Learning rate of dpo, ipo, slic, kto, rrhf, rso."
    )
    sft_learning_rate: float | None = preset_option(
        PRESETS, "sft_learning_rate", "Learning rate of sft-positive and raft."
    )
    policy_learning_rate: float | None = preset_option(
        PRESETS, "policy_learning_rate", "PPO learning rate.", aliases=["--ppo_learning_rate"]
    )
    prompts_per_iteration: int = option(16, "Prompts per PPO iteration.")
    bon_n: int = option(4, "n of best-of-n.")
    raft_rounds: int = option(2, "RAFT rounds.")
    rso_candidates: int = option(8, "RSO candidates from pi_0 per prompt.")
    reward: str | None = option(
        None,
        "What ppo, bon, raft, rso and rrhf optimise and Ĵ measures, in place of the pool's reward model: any "
        "--reward spec (a reward-model directory, ENSEMBLE::wco, DIR::attribute=NAME, a composite, an oracle). "
        "The pool's reward model is still trained and reported; dpo, ipo, slic and sft-positive learn from the "
        "pool's pairs as before.",
    )
    seeds: str | None = option(
        None,
        "Seeds to run, e.g. 0-4 or 0,2,5 (in place of --seed): each seed's whole comparison goes into "
        "OUTPUT/seed-K, then one summary over seeds and prompts into OUTPUT/summary.md and summary.json. "
        "Run the same command with the same --output_dir again to resume: finished seeds are kept, "
        "unfinished ones redone, and --seeds may name more.",
    )
    path_evaluations: int = option(
        1,
        "Evaluations of ppo, dpo, ipo and slic part-way through training (evenly spaced, besides the final "
        "one), so that their J can be read at a KL matched across methods; 0: the final policy only.",
    )
    matched_kl: float | None = option(
        None,
        "KL(pi||pi_0) at which methods with several evaluated points are compared (default, per context set: "
        "the smallest final KL among them over every seed, which every path reaches); a method with one point "
        "is compared at its own KL.",
    )

    def resolved(self) -> CompareConfig:
        """The options left unset filled from the chosen preset; unknown methods and bad seeds are errors."""
        preset = "quick" if self.quick else self.preset
        cfg = dataclasses.replace(apply_preset(self, PRESETS, preset), preset=preset, quick=preset == "quick")
        unknown = [m for m in cfg.method_list if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method '{unknown[0]}'; choose from {', '.join(METHODS)}")
        if cfg.seeds is not None:
            if cfg.seed != 0:
                raise ConfigError("give --seed or --seeds, not both")
            parse_seeds(cfg.seeds)
        if cfg.path_evaluations < 0:
            raise ConfigError(f"path_evaluations must be >= 0, got {cfg.path_evaluations}")
        return cfg

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]


def parse_seeds(spec: str) -> list[int]:
    """``0-4`` → [0, 1, 2, 3, 4]; ``0,2,5`` → [0, 2, 5]; ranges and single seeds mix (``0-2,7``).
    Anything else, a range that runs backwards or a seed named twice is a one-line ConfigError."""
    seeds: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if not (low.isdigit() and (high.isdigit() if dash else True)):
            raise ConfigError(f"--seeds '{spec}': '{part}' is neither a seed (7) nor a range (0-4)")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ConfigError(f"--seeds '{spec}': the range '{part}' runs backwards")
        seeds += range(first, last + 1)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds '{spec}': a seed is named twice")
    return seeds


def _rankings_by_reward_model(samples, reward_model):
    """Each pool prompt's samples ordered best first by R_phi (equal scores tied): RRHF's data."""
    out = []
    for s in samples:
        completions = [c for c in s.completions if c.strip()]
        if len(completions) < 2:
            continue
        scores = reward_model([prompt_text(s.prompt)] * len(completions), completions).tolist()
        order = sorted(range(len(completions)), key=lambda i: -scores[i])
        ranked = [scores[i] for i in order]
        ties = [0]
        for a, b in zip(ranked, ranked[1:]):
            ties.append(ties[-1] + (b < a))
        out.append(Ranking(prompt=s.prompt, completions=[completions[i] for i in order], ties=ties))
    return out


@dataclass
class MethodRun:
    """What running one method gave: a trained policy directory to evaluate, or (best-of-n, which
    trains nothing) its evaluations directly; the fresh policy samples it drew beyond the pool; and
    the points evaluated along its way, before the final one ({contexts: [path points]})."""

    extra_samples: int = 0
    policy_dir: Path | None = None
    evaluations: dict | None = None
    info: dict = dataclasses.field(default_factory=dict)
    path: dict = dataclasses.field(default_factory=dict)


@dataclass
class _Shared:
    """What every method runner reads: the run, the pool, π_0 and the settings they share."""

    cfg: CompareConfig
    run_dir: Path
    pool: Pool
    policy: object  # π_0, also the reference; runners train fresh copies (`fresh`)
    tokenizer: object
    oracle: object
    use_chat: bool
    eval_kw: dict  # how every policy is evaluated (evaluate_on_sets' options)

    def fresh(self):
        return load_policy(self.cfg.policy)[0]

    @property
    def reward_spec(self) -> str:
        """What the reward-driven methods optimise: ``--reward``, or the pool's reward model."""
        return self.cfg.reward or str(self.pool.reward_dir / "reward_model")

    def reward(self):
        """The reward source one method optimises. A ``--reward`` spec is loaded afresh for each method,
        so a composite's running statistics start over, as in the method's own command."""
        return load_reward_source(self.cfg.reward) if self.cfg.reward else self.pool.reward_model

    @property
    def common(self) -> dict:
        """Training options every offline method shares."""
        cfg = self.cfg
        return dict(
            seed=cfg.seed,
            progress=False,
            batch_size=cfg.batch_size,
            max_steps=cfg.offline_steps,
            report_to=cfg.report_to,
            mixed_precision=cfg.mixed_precision,
        )

    def preference_config(self, cls, name, **kw):
        return cls(
            policy=self.cfg.policy,
            output_dir=str(self.run_dir / name),
            learning_rate=self.cfg.preference_learning_rate,
            use_chat_template=self.use_chat,
            **self.common,
            **kw,
        )


def path_point(label: str, ev: PolicyEvaluation) -> dict:
    """One evaluated policy as a point of its method's path: KL(π‖π_0), J and each prompt's J."""
    per_prompt = per_prompt_means(ev.oracle_rewards, ev.prompt_index, ev.num_prompts)
    return {"point": label, "kl": ev.kl, "J": ev.J, "per_prompt_J": per_prompt.tolist()}


class _PathRecorder(EvaluateAlongTraining):
    """The training loop's after-step hook (:class:`EvaluateAlongTraining`): the policy being trained
    evaluated ``path_evaluations`` times part-way, evenly spaced (the final policy is evaluated after
    training), so that its J can be read at a KL matched across methods."""

    def __init__(self, s: _Shared, policy, total: int, unit: str):
        count = s.cfg.path_evaluations
        self.unit = unit
        at = sorted({round(total * j / (count + 1)) for j in range(1, count + 1)} - {0, total})
        self.points: dict[str, list[dict]] = {name: [] for name in s.pool.prompt_sets}
        super().__init__(policy, s.tokenizer, s.pool.prompt_sets, s.eval_kw, at, self._record)

    def _record(self, done: int, evaluations: dict) -> None:
        for contexts, ev in evaluations.items():
            self.points[contexts].append(path_point(f"{self.unit} {done}", ev))


def _bon_path(bon, oracle, num_prompts: int, per_prompt: int) -> list[dict]:
    """Best-of-k for k = 2, 4, … below n, read from the same n draws per row without bias
    (:func:`rlhflab.evaluation.frontier.best_of_n_curve`): no sample beyond best-of-n's own. KL is the
    plug-in estimate, as for best-of-n itself."""
    ks = [k for k in powers_of_two(bon.n) if 1 < k < bon.n]
    if not ks:
        return []
    contexts = [c for c in bon.contexts for _ in range(bon.n)]
    texts = [t for row in bon.all_completions for t in row]
    oracle_rewards = oracle(contexts, texts).view(len(bon.contexts), bon.n).numpy()
    curve = best_of_n_curve(bon.all_rewards.numpy(), oracle_rewards, ks, bon.all_completions)
    points = []
    for p in curve:  # rows are the prompts, each repeated per_prompt times in a row
        per_prompt_J = np.asarray(p["per_prompt_J"]).reshape(num_prompts, per_prompt).mean(1)
        points.append(
            {"point": f"n={p['n']}", "kl": p["kl_estimate"], "J": p["J"], "per_prompt_J": per_prompt_J.tolist()}
        )
    return points


def _run_bon(s: _Shared, method: str) -> MethodRun:
    cfg, out, extra, path = s.cfg, {}, 0, {}
    for name, prompts in s.pool.prompt_sets.items():
        # each evaluation prompt eval_samples times, so best-of-n is averaged per prompt like a policy
        repeated = [p for p in prompts for _ in range(cfg.eval_samples)]
        bon = best_of_n(
            s.policy,
            s.tokenizer,
            repeated,
            s.reward(),
            n=cfg.bon_n,
            max_new_tokens=cfg.max_new_tokens,
            use_chat_template=s.use_chat,
            seed=cfg.seed + 1,
        )
        out[name] = _bon_evaluation(bon, s.oracle, len(prompts), cfg.eval_samples)
        path[name] = _bon_path(bon, s.oracle, len(prompts), cfg.eval_samples)
        extra += bon.samples_drawn
    return MethodRun(extra, evaluations=out, info={"kl_bound": bon.kl_bound}, path=path)


def _run_ppo(s: _Shared, method: str) -> MethodRun:
    cfg = s.cfg
    iterations = max(1, cfg.online_samples // cfg.prompts_per_iteration)
    rl_cfg = RLConfig(
        algorithm="ppo",
        policy=cfg.policy,
        reward=s.reward_spec,
        oracle=cfg.oracle,
        num_iterations=iterations,
        prompts_per_iteration=cfg.prompts_per_iteration,
        max_new_tokens=cfg.max_new_tokens,
        kl_coef=cfg.kl_coef,
        learning_rate=cfg.policy_learning_rate,
        epochs=2,
        use_chat_template=s.use_chat,
        seed=cfg.seed,
        progress=False,
        report_to=cfg.report_to,
        mixed_precision=cfg.mixed_precision,
        output_dir=str(s.run_dir / "ppo"),
    )
    policy = s.fresh()
    hook = _PathRecorder(s, policy, iterations, "iteration")
    method_dir = run_policy_optimization(rl_cfg, policy, s.tokenizer, s.reward(), s.oracle, should_stop=hook)
    return MethodRun(iterations * cfg.prompts_per_iteration, method_dir, path=hook.points)


def _run_preference(s: _Shared, method: str) -> MethodRun:
    pcfg = s.preference_config(PreferenceConfig, method, loss=method, kl_coef=s.cfg.kl_coef)
    policy = s.fresh()
    hook = _PathRecorder(s, policy, s.cfg.offline_steps, "step")
    method_dir = run_preference_optimization(pcfg, policy, s.tokenizer, s.pool.preferences, should_stop=hook)
    return MethodRun(0, method_dir, path=hook.points)


def _run_kto(s: _Shared, method: str) -> MethodRun:
    # The pool's pairs unpaired as TRL's KTOTrainer reads a paired set: 2N good / bad examples.
    kcfg = s.preference_config(KTOConfig, method, kl_coef=s.cfg.kl_coef)
    return MethodRun(0, run_kto(kcfg, s.fresh(), s.tokenizer, unpair(s.pool.preferences)))


def _run_rrhf(s: _Shared, method: str) -> MethodRun:
    rankings = _rankings_by_reward_model(s.pool.samples, s.reward())
    rcfg = s.preference_config(RankingConfig, method, loss="rrhf")
    rcfg.batch_size = min(rcfg.batch_size, len(rankings))
    return MethodRun(0, run_ranking_optimization(rcfg, s.fresh(), s.tokenizer, rankings))


def _run_rso(s: _Shared, method: str) -> MethodRun:
    cfg, n = s.cfg, s.cfg.rso_candidates
    rso_cfg = s.preference_config(
        RSOConfig,
        method,
        loss="dpo",
        kl_coef=cfg.kl_coef,
        prompts="train",
        limit=max(1, cfg.online_samples // n),
        num_candidates=n,
        num_accepted=min(4, n),
        max_new_tokens=cfg.max_new_tokens,
    )
    return MethodRun(rso_cfg.limit * n, run_rso(rso_cfg, s.fresh(), s.tokenizer, s.reward()))


def _run_raft(s: _Shared, method: str) -> MethodRun:
    cfg = s.cfg
    per_round = max(1, cfg.online_samples // (cfg.raft_rounds * cfg.samples_per_prompt))
    raft_cfg = RAFTConfig(
        policy=cfg.policy,
        prompts="train",
        prompts_per_round=per_round,
        num_rounds=cfg.raft_rounds,
        samples_per_prompt=cfg.samples_per_prompt,
        keep_fraction=1 / cfg.samples_per_prompt,
        max_new_tokens=cfg.max_new_tokens,
        use_chat_template=s.use_chat,
        learning_rate=cfg.sft_learning_rate,
        num_epochs=max(1.0, cfg.offline_steps * cfg.batch_size / (cfg.raft_rounds * per_round)),
        seed=cfg.seed,
        progress=False,
        report_to=cfg.report_to,
        mixed_precision=cfg.mixed_precision,
        batch_size=cfg.batch_size,
        output_dir=str(s.run_dir / "raft"),
    )
    method_dir = run_raft(raft_cfg, s.fresh(), s.tokenizer, s.reward())
    return MethodRun(cfg.raft_rounds * per_round * cfg.samples_per_prompt, method_dir)


def _run_positive_sft(s: _Shared, method: str) -> MethodRun:
    scfg = PositiveSFTConfig(
        policy=s.cfg.policy,
        output_dir=str(s.run_dir / method),
        use_chat_template=s.use_chat,
        **{**s.common, "learning_rate": s.cfg.sft_learning_rate},
    )
    return MethodRun(0, run_positive_sft(scfg, s.fresh(), s.tokenizer, s.pool.preferences))


# Every method of METHODS: how it runs from the shared pool.
RUNNERS = {
    "ppo": _run_ppo,
    "dpo": _run_preference,
    "ipo": _run_preference,
    "slic": _run_preference,
    "kto": _run_kto,
    "rrhf": _run_rrhf,
    "raft": _run_raft,
    "rso": _run_rso,
    "bon": _run_bon,
    "sft-positive": _run_positive_sft,
}


DONE = "done.json"  # written last by a finished run: a seed directory without it is redone, never read
SEEDS_CONFIG = "compare_seeds_config.yaml"
RESUME_FREE = ("seed", "seeds", "output_dir")  # what may differ when a --seeds run is resumed


def run_compare(cfg: CompareConfig) -> Path:
    cfg = cfg.resolved()
    if cfg.seeds is None:
        cfg, precision = resolve_precision(cfg)
        with precision:
            return _run_compare(cfg)
    if cfg.reward:
        load_reward_source(cfg.reward)  # a bad --reward spec fails before the output directory exists
    root = _open_seeds_dir(cfg)  # checked before precision is resolved: `auto` is saved as given
    cfg, precision = resolve_precision(cfg)
    with precision:
        return _run_seeds(cfg, root)


def _open_seeds_dir(cfg: CompareConfig) -> Path:
    """OUTPUT of a ``--seeds`` run: new (its options saved), or one such run's to resume, whose saved
    options must equal these but for the seeds; anything else is a ConfigError."""
    root = Path(cfg.output_dir or default_run_dir("compare"))
    saved_path = root / SEEDS_CONFIG
    mine = {k: v for k, v in yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))).items() if k not in RESUME_FREE}
    if saved_path.is_file():
        saved = {k: v for k, v in (yaml.safe_load(saved_path.read_text()) or {}).items() if k not in RESUME_FREE}
        differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if differ:
            k = differ[0]
            raise ConfigError(
                f"{saved_path}: field '{k}': this run was started with {saved.get(k)!r}, now {mine.get(k)!r}; "
                "resume with the same options (only --seeds may change) or choose another --output_dir"
            )
        return root
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root}: output directory exists, is not empty and holds no {SEEDS_CONFIG}")
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved_path)
    return root


def _run_seeds(cfg: CompareConfig, root: Path) -> Path:
    """Each seed's comparison into ROOT/seed-K (finished ones kept), then the summary over seeds."""
    seeds = parse_seeds(cfg.seeds)
    for seed in seeds:
        seed_dir = root / f"seed-{seed}"
        if (seed_dir / DONE).is_file():
            print(f"[compare] seed {seed}: finished before ({seed_dir}), kept", flush=True)
            continue
        if seed_dir.exists():
            print(f"[compare] seed {seed}: {seed_dir} was left unfinished, redoing it", flush=True)
            shutil.rmtree(seed_dir)
        print(f"[compare] seed {seed} ...", flush=True)
        _run_compare(dataclasses.replace(cfg, seed=seed, seeds=None, output_dir=str(seed_dir)))
    records = [seed_record(root / f"seed-{seed}") for seed in seeds]
    summary = summarize_seeds(records, cfg.matched_kl, _prompt_limits(cfg))
    write_json(root / "summary.json", {"config": dataclasses.asdict(cfg), **summary})
    design = (
        f"{len(seeds)} seeds ({cfg.seeds}), each its own pool, reward model and training runs, all evaluated on "
        f"the same {cfg.eval_prompts} seen and {cfg.eval_prompts} unseen prompts × {cfg.eval_samples} samples; "
        f"each seed's run and table in {root}/seed-K."
    )
    text = summary_markdown(summary, design)
    write_text(root / "summary.md", f"# rlhflab compare over seeds — {root}\n\n{text}")
    print("\n" + text)
    return root


def _prompt_limits(cfg: CompareConfig) -> dict[str, int]:
    """The most prompts each evaluation set can have: seen contexts are the feedback prompts' head,
    unseen ones the shipped unseen set."""
    return {"seen": cfg.feedback_prompts, "unseen": len(load_prompts("unseen"))}


def seed_record(run_dir: Path) -> dict:
    """What the summary over seeds reads from one finished compare run: its seed and each method's
    path points. A run from before paths were recorded gives its final points, from evaluation.json."""
    run_dir = Path(run_dir)
    comparison = json.loads((run_dir / "comparison.json").read_text())
    paths = comparison.get("paths")
    if paths is None:
        evaluations = json.loads((run_dir / "evaluation.json").read_text())
        paths = {
            method: {c: [path_point("final", PolicyEvaluation(**e))] for c, e in by_set.items()}
            for method, by_set in evaluations.items()
        }
        for points in paths["initial"].values():
            points[0].update(point="π_0", kl=0.0)
        for row in comparison["rows"]:  # the KL the table shows (for bon, the plug-in estimate)
            paths[row["method"]][row["contexts"]][-1]["kl"] = row["kl"]
    return {"seed": comparison["config"]["seed"], "paths": paths}


def compare_outputs(run_dir: Path) -> str:
    """The command's last line: where its tables are."""
    if (run_dir / SEEDS_CONFIG).is_file():
        return (
            f"summary over seeds in {run_dir / 'summary.md'} and {run_dir / 'summary.json'}; seeds in {run_dir}/seed-K"
        )
    return f"table in {run_dir / 'comparison.md'} and {run_dir / 'comparison.json'}; plot {run_dir / 'comparison.png'}"


def _run_compare(cfg: CompareConfig) -> Path:
    # A bad --reward spec fails here, before the run directory exists; this copy also measures Ĵ.
    given_reward = load_reward_source(cfg.reward) if cfg.reward else None
    run_dir = open_run_dir(cfg, "compare")
    use_chat = not cfg.quick  # the tiny model has a template but no training to follow it
    oracle = load_reward_source(cfg.oracle)

    started = t0 = time.perf_counter()
    policy, tokenizer = load_policy(cfg.policy)
    pool = build_feedback_pool(cfg, run_dir, policy, tokenizer)
    pool_samples = len(pool.feedback_prompts) * cfg.samples_per_prompt
    pool_seconds = time.perf_counter() - t0
    print(
        f"[compare] shared pool: {pool_samples} samples, {len(pool.preferences)} pairs, reward model "
        f"(held-out accuracy {pool.reward_report.get('accuracy', float('nan')):.3f}); {pool_seconds:.1f} s",
        flush=True,
    )

    eval_kw = dict(
        oracle=oracle,
        reward_model=pool.reward_model if given_reward is None else given_reward,
        reference=policy,
        num_samples=cfg.eval_samples,
        max_new_tokens=cfg.max_new_tokens,
        use_chat_template=use_chat,
        seed=cfg.seed + 1,
    )
    shared = _Shared(cfg, run_dir, pool, policy, tokenizer, oracle, use_chat, eval_kw)
    results = {"initial": evaluate_on_sets(policy, tokenizer, pool.prompt_sets, **eval_kw)}
    info = {"initial": {"extra_samples": 0, "train_seconds": 0.0}}
    paths = {"initial": {c: [{**path_point("π_0", ev), "kl": 0.0}] for c, ev in results["initial"].items()}}
    for method in cfg.method_list:
        print(f"[compare] {method} ...", flush=True)
        t0 = time.perf_counter()
        run = RUNNERS[method](shared, method)
        seconds = time.perf_counter() - t0  # training (for bon: its inference); evaluation excluded
        if run.evaluations is None:
            trained, _ = load_policy(str(run.policy_dir / "policy"))
            run.evaluations = evaluate_on_sets(trained, tokenizer, pool.prompt_sets, **eval_kw)
        results[method] = run.evaluations
        info[method] = {"extra_samples": run.extra_samples, "train_seconds": seconds, **run.info}
        paths[method] = {c: [*run.path.get(c, []), path_point("final", ev)] for c, ev in run.evaluations.items()}
        print(f"[compare] {method}: {seconds:.1f} s", flush=True)

    rows = comparison_rows(results, info, pool_samples)
    table = format_table(rows, COMPARE_COLUMNS)
    summary = summarize_seeds([{"seed": cfg.seed, "paths": paths}], cfg.matched_kl, _prompt_limits(cfg))
    write_json(
        run_dir / "comparison.json",
        {
            "config": dataclasses.asdict(cfg),
            "pool": {
                "samples": pool_samples,
                "pairs": len(pool.preferences),
                "seconds": pool_seconds,
                "reward_model": pool.reward_report,
            },
            "methods": info,
            "rows": rows,
            "paths": paths,
            "summary": summary,
        },
    )
    # every sample with its R* and R_phi, as the demo keeps them (the run report reads both)
    write_json(run_dir / "evaluation.json", {m: {s: e.to_dict() for s, e in r.items()} for m, r in results.items()})
    plot_comparison(rows, run_dir / "comparison.png")
    note = (
        f"Shared pool: {pool_samples} samples of pi_0 on {len(pool.feedback_prompts)} prompts, "
        f"{len(pool.preferences)} simulated pairs (oracle `{cfg.oracle}`), reward model on "
        f"`{cfg.reward_backbone}`; built in {pool_seconds:.1f} s. "
        + (
            f"The reward-driven methods optimise `{cfg.reward}` (`--reward`), and Ĵ is measured with it. "
            if cfg.reward
            else ""
        )
        + "`extra samples`: fresh policy samples a method drew beyond the pool (for bon, at inference); `wall s`: "
        "training time (for bon, its inference on both prompt sets), evaluation excluded. "
        "For bon the KL column is the plug-in estimate; the bound log n − (n−1)/n = "
        f"{math.log(cfg.bon_n) - (cfg.bon_n - 1) / cfg.bon_n:.3f}. ΔJ is paired by prompt against π_0 "
        f"({cfg.eval_samples} samples per prompt, standard error over the {cfg.eval_prompts} prompts)."
    )
    design = (
        f"One seed ({cfg.seed}): the intervals are over the {cfg.eval_prompts} prompts only; the spread from "
        "seed to seed (pool, reward model, training) is not in them — `--seeds 0-2` measures it."
    )
    analysis = summary_markdown(summary, design)
    write_text(run_dir / "comparison.md", f"# rlhflab compare — {run_dir}\n\n{note}\n\n{table}\n\n{analysis}")
    print("\n" + table + "\n\n" + note + "\n\n" + analysis)
    print(f"report: {write_report([run_dir])}")
    write_json(run_dir / DONE, {"seed": cfg.seed, "seconds": time.perf_counter() - started})
    return run_dir


def _bon_evaluation(bon, oracle, num_prompts: int, per_prompt: int) -> PolicyEvaluation:
    """Best-of-n judged like a policy: J and Ĵ of the chosen samples, ``per_prompt`` of them for each
    prompt; the KL column is the plug-in estimate (its bound is in the note)."""
    prompt_index = torch.arange(num_prompts).repeat_interleave(per_prompt)
    oracle_rewards, proxy = oracle(bon.contexts, bon.completions), torch.tensor(bon.rewards)
    return PolicyEvaluation(
        J=float(oracle_rewards.mean()),
        J_se=standard_error(oracle_rewards, prompt_index, per_prompt),
        J_hat=float(proxy.mean()),
        J_hat_se=standard_error(proxy, prompt_index, per_prompt),
        kl=bon.kl_estimate,
        kl_se=bon.kl_estimate_se,
        mean_length=float("nan"),
        truncated_fraction=float("nan"),
        distinct_1=distinct_n(bon.completions, 1),
        distinct_2=distinct_n(bon.completions, 2),
        n=len(bon.completions),
        num_prompts=num_prompts,
        prompt_index=prompt_index.tolist(),
        contexts=bon.contexts,
        texts=bon.completions,
        oracle_rewards=oracle_rewards.tolist(),
        proxy_rewards=bon.rewards,
    )


COMPARE_COLUMNS = [
    ("method", "method", ""),
    ("contexts", "contexts", ""),
    ("J", "J (oracle)", ".3f"),
    ("J_se", "± se", ".3f"),
    ("J_hat", "Ĵ (reward model)", ".3f"),
    ("J_hat_se", "± se", ".3f"),
    ("kl", "KL(π‖π_0)", ".2f"),
    ("kl_se", "± se", ".2f"),
    ("delta_J", "ΔJ vs π_0", "+.3f"),
    ("delta_J_se", "± se", ".3f"),
    ("z", "ΔJ / se", "+.1f"),
    ("extra_samples", "extra samples", "d"),
    ("train_seconds", "wall s", ".1f"),
]


def comparison_rows(results: dict, info: dict, pool_samples: int) -> list[dict]:
    """One row per (method, context set); ΔJ is paired by prompt against π_0 (:func:`paired_difference`)."""
    rows = []
    for method, by_set in results.items():
        for contexts, ev in by_set.items():
            row = {"method": method, "contexts": contexts, "pool_samples": pool_samples, **info[method]}
            row.update({k: getattr(ev, k) for k in ("J", "J_se", "J_hat", "J_hat_se", "kl", "kl_se", "n")})
            if method == "initial":
                row["kl"], row["kl_se"] = 0.0, 0.0  # pi_0 is the reference
            else:
                delta, se = paired_difference(results["initial"][contexts], ev)
                row.update(delta_J=delta, delta_J_se=se, z=delta / se if se else None)
            rows.append(row)
    return rows
