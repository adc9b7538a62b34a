"""``rlhflab loop``: iterated (online) RLHF, Sections 7.5 and 7.6.4. A reward model fitted to π_0's
outputs is miscalibrated where an improved policy puts its mass, so each round labels the *current*
policy's outputs and retrains:

    π_0 ─► for round r = 1 … N:
        1. sample π_{r-1} on the round's fresh feedback prompts
        2. feedback on those samples: simulated annotators driven by R* | people in the feedback app |
           a preference file someone else fills in
        3. shift: R_{phi,r-1} measured on the new pairs before it sees them (accuracy, calibration)
        4. reward model R_{phi,r}: from the backbone (retrain) or warm-started from R_{phi,r-1}, on
           every label so far (``reward_data`` all: the data carried over) or the round's labels (round)
        5. policy update from π_{r-1} (``policy_init`` continue) or from π_0 again (restart): PPO /
           RLOO / GRPO against R_{phi,r}, or DPO on the round's pairs (online / iterative DPO);
           KL-anchored to π_0 (fixed) or to π_{r-1} (moved)
        6. evaluation: J (R*, Eq. 12) and Ĵ (R_{phi,r}, Eq. 14) on seen and unseen contexts,
           KL to π_0 and to π_{r-1}, and R_{phi,r}'s agreement with R* on π_r's own samples
        7. (``eval_every`` K > 0, RL only) the round's frontier: the update of step 5 evaluated every K
           iterations as ``rlhflab frontier`` does (J, Ĵ under R_{phi,r}, KL to π_0), Gao et al.'s RL
           form ΔJ = d(α − β log d), d = √KL(π‖π_0), fitted to the round's path: where J peaks,
           whether Ĵ still rises there, and J's measured fall — over-optimisation round by round
           (Wolf, Kirk & Musolesi 2025)

The label budget (``feedback_prompts``) and the policy-update budget (``policy_iterations``) are run
totals split over the rounds, so ``--rounds 1`` and ``--rounds 3`` with the same flags compare the
loop against single-round RLHF at equal cost.

Every stage writes its result atomically into ``RUN/round-NN/`` and a stage whose result exists is
never run again: a run killed anywhere resumes with ``--resume RUN`` at the stage it was in (a
half-trained reward model or policy is trained again from the start of its stage; labels, once
written or stored in the app's database, are never asked for twice).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhflab.app.store import Store, StoreError
from rlhflab.commands.collect import AnnotateConfig, SampleConfig, run_annotate, run_sample
from rlhflab.commands.feedback import order_queue
from rlhflab.commands.pool import pool_options, resolve_precision
from rlhflab.commands.presets import PRESETS as ALL_PRESETS
from rlhflab.commands.train import run_policy_optimization, run_preference_optimization, run_reward
from rlhflab.config import (
    apply_preset,
    default_run_dir,
    load_yaml,
    option,
    preset_option,
    save_config,
)
from rlhflab.data import Samples, load_prompts, read_records, write_records
from rlhflab.errors import ConfigError
from rlhflab.evaluation.along_training import EvaluateAlongTraining, every
from rlhflab.evaluation.frontier import (
    fit_points,
    frontier_point,
    initial_points,
    mean_and_se,
    per_prompt_means,
    plot_frontier,
)
from rlhflab.evaluation.html_report import write_report
from rlhflab.evaluation.metrics import (
    PolicyEvaluation,
    evaluate_on_sets,
    paired_difference,
    pairwise_order_agreement,
    reward_model_report,
)
from rlhflab.evaluation.plots import plot_reliability, plot_rounds
from rlhflab.evaluation.tables import format_table
from rlhflab.feedback.acquisition import ORDERS, SCORED_ORDERS
from rlhflab.files import write_json, write_text
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source
from rlhflab.seeds import derive_seed
from rlhflab.train.policy_optimization import RLConfig
from rlhflab.train.preference import PreferenceConfig
from rlhflab.train.reward_model import RewardConfig

CONFIG_FILE = "loop_config.yaml"
ROUND_FILE = "round.json"  # written last: a round whose file exists is finished
FRONTIER_FILE = "frontier.json"  # round-NN/: the round's path fitted (--eval_every)
PATH_FILE = "frontier_path.json"  # round-NN/policy_run/: the path as the update's hook records it
NUM_BOOTSTRAP = 1000  # resamples of the prompts for the fits' intervals, as `rlhflab frontier`'s default
FEEDBACK_MODES = ["simulated", "app", "file"]
ALGORITHMS = ["ppo", "rloo", "grpo", "dpo"]

PRESETS = ALL_PRESETS["loop"]


@dataclass
class LoopConfig(pool_options(PRESETS, "loop")):
    """Iterated RLHF: rounds of fresh feedback on the current policy, from simulated annotators or
    from people, each followed by reward-model retraining and a policy update (Section 7.6.4)."""

    rounds: int = option(3, "Rounds of sample → feedback → reward model → policy update → evaluation.")
    feedback: str = option(
        "simulated",
        "Where each round's labels come from: simulated annotators driven by --oracle, people in the "
        "feedback app (--db), or a preference file dropped into the round's folder.",
        choices=FEEDBACK_MODES,
    )
    feedback_prompts: int | None = preset_option(
        PRESETS,
        "feedback_prompts",
        "Feedback prompts over the whole run, split evenly over the rounds (the label budget).",
    )
    algorithm: str = option("ppo", "Policy update of each round (dpo: online / iterative DPO).", choices=ALGORITHMS)
    reference: str = option(
        "fixed",
        "KL anchor of each update: pi_0 (fixed) or the last round's policy (moved).",
        choices=["fixed", "moved"],
    )
    reward_init: str = option(
        "retrain",
        "Each round's reward model: trained from the backbone on every label so far (retrain), or "
        "from the last round's reward model on the round's labels (warm_start).",
        choices=["retrain", "warm_start"],
    )
    reward_data: str | None = option(
        None,
        "Labels each round's reward model trains on: every round's so far (all: the data carried over) or the "
        "round's own (round). Default: all with retrain, round with warm_start.",
        choices=["all", "round"],
    )
    policy_init: str = option(
        "continue",
        "Each round's policy update starts from the last round's policy (continue) or from pi_0 again (restart: "
        "the new reward model optimised from scratch; samples still come from the last policy). Wolf, Kirk & "
        "Musolesi 2025's second axis beside the reward data's.",
        choices=["continue", "restart"],
    )
    policy_iterations: int | None = preset_option(
        PRESETS,
        "policy_iterations",
        "RL iterations over the whole run, split evenly over the rounds (with --policy_init restart: per round).",
    )
    prompts_per_iteration: int | None = preset_option(PRESETS, "prompts_per_iteration", "Prompts per RL iteration.")
    rl_samples_per_prompt: int = option(1, "Completions per prompt in each RL iteration (>= 2 for rloo, grpo).")
    policy_learning_rate: float | None = preset_option(
        PRESETS, "policy_learning_rate", "Learning rate of the policy update."
    )
    policy_epochs: int | None = preset_option(
        PRESETS, "policy_epochs", "PPO passes over each rollout (ppo only).", aliases=["--ppo_epochs"]
    )
    kl_coef: float = option(0.05, "beta: the KL penalty (RL) or DPO's beta.")
    dpo_epochs: float = option(2.0, "DPO passes over the round's pairs.")
    dpo_learning_rate: float = option(5e-6, "DPO learning rate (real models; --quick uses the policy rate).")
    db: str | None = option(
        None, "Feedback app database URL (--feedback app; default: $RLHFLAB_DB or sqlite:///rlhflab-feedback.db)."
    )
    annotators: str = option("", "Comma-separated usernames made annotators of each round's project (--feedback app).")
    overlap: int = option(1, "Annotators per item in each round's project (--feedback app).")
    labels_per_round: int = option(0, "Labels to wait for per round (0: every item × overlap; --feedback app).")
    order: str = option(
        "position",
        "The order each round's project hands out its pairs in (--feedback app; see `rlhflab feedback create "
        "--order`): from round 2 on, uncertainty and margin score them with the last round's reward model "
        "(uncertainty: give --reward_ensemble K >= 2); round 1, before any reward model, keeps position order.",
        choices=list(ORDERS),
    )
    reward_ensemble: int = option(
        1, "K >= 2: each round's reward model is a shared-trunk ensemble of K heads (`rlhflab reward --ensemble K`)."
    )
    app_url: str = option(
        "http://127.0.0.1:8000", "Where people open the feedback app (printed with each round's project)."
    )
    poll_seconds: float = option(5.0, "Seconds between checks for new labels (--feedback app or file).")
    wait_timeout: float = option(0.0, "Give up waiting for a round's labels after this many seconds (0: wait forever).")
    eval_every: int = option(
        0,
        "K > 0 (ppo, rloo, grpo): evaluate each round's policy update every K iterations and at its last, on the "
        "seen and unseen prompts (J under R*, J-hat under the round's reward model, KL to pi_0 even with "
        "--reference moved), and fit Gao et al.'s RL form to each round's path: round-NN/frontier.json, the "
        "over-optimisation table of report.md, frontier.png. Training is unchanged. 0: off (one evaluation per "
        "round, after its update).",
    )
    resume: str | None = option(None, "Continue the loop run in this directory where it stopped.")

    def resolved(self) -> LoopConfig:
        preset = "quick" if self.quick else self.preset
        return dataclasses.replace(apply_preset(self, PRESETS, preset), preset=preset, quick=preset == "quick")

    def validate(self) -> None:
        super().validate()
        if self.rounds < 1:
            raise ConfigError("--rounds must be at least 1")
        if self.algorithm in ("rloo", "grpo") and self.rl_samples_per_prompt < 2:
            raise ConfigError(f"--algorithm {self.algorithm} needs --rl_samples_per_prompt >= 2")
        if self.eval_every < 0:
            raise ConfigError(f"--eval_every must be >= 0 (0: off), got {self.eval_every}")
        if self.eval_every and self.algorithm == "dpo":
            raise ConfigError(
                "--eval_every evaluates an RL update along its iterations (ppo, rloo, grpo); not with --algorithm dpo"
            )
        if self.overlap < 1 or self.labels_per_round < 0:
            raise ConfigError("--overlap must be positive and --labels_per_round non-negative")
        if self.order == "uncertainty" and self.reward_ensemble < 2:
            raise ConfigError("--order uncertainty needs an ensemble's disagreement: give --reward_ensemble K >= 2")
        if self.reward_ensemble < 1 or (self.reward_ensemble > 1 and self.reward_init == "warm_start"):
            raise ConfigError(
                "--reward_ensemble must be at least 1, and an ensemble is retrained (--reward_init retrain)"
            )


# Options that may differ between a run and its resumption (where it is, not what it computes).
RESUME_FREE = {"resume", "output_dir", "db", "app_url", "poll_seconds", "wait_timeout", "annotators", "report_to"}


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal counts, the larger ones first: 160 over 3 → [54, 53, 53]."""
    return [len(chunk) for chunk in np.array_split(np.arange(total), parts)]


def round_prompts(prompts: list, rounds: int) -> list[list]:
    """Round r's feedback prompts: every ``rounds``-th prompt from offset r − 1, so the evaluation's
    seen prompts (the head of the list) were covered evenly by every round."""
    return [prompts[r::rounds] for r in range(rounds)]


def _round_seed(seed: int, stage: str, round_number: int) -> int:
    return derive_seed(seed, f"loop/{stage}", round_number) % 2**31  # numpy seeds are 32-bit


def _say(message: str) -> None:
    print(f"[loop] {message}", flush=True)


# ---- run directory and resumption ------------------------------------------------------------------
def _open_run(cfg: LoopConfig, explicit: set[str] | None) -> tuple[LoopConfig, Path]:
    """A new run directory with the config saved, or the resumed run's saved config, checked
    against the options given now (``explicit``; None: those that differ from the defaults). A
    changed option is an error naming it."""
    if not cfg.resume:
        cfg = cfg.resolved()
        cfg.validate()
        run_dir = Path(cfg.output_dir or default_run_dir("loop"))
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(
                f"{run_dir}: output directory exists and is not empty (continue it with --resume {run_dir})"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
        save_config(cfg, run_dir / CONFIG_FILE)
        return cfg, run_dir
    run_dir = Path(cfg.resume)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory to resume")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir}: not a loop run directory ({CONFIG_FILE} is missing)")
    saved_values = load_yaml(run_dir / CONFIG_FILE)
    unknown = sorted(set(saved_values) - {f.name for f in dataclasses.fields(LoopConfig)})
    if unknown:
        raise ConfigError(f"{run_dir / CONFIG_FILE}: unknown option '{unknown[0]}' (written by another version?)")
    saved = LoopConfig(**saved_values)
    if explicit is None:
        defaults = LoopConfig()
        explicit = {f.name for f in dataclasses.fields(LoopConfig) if getattr(cfg, f.name) != getattr(defaults, f.name)}
    for name in sorted(explicit - RESUME_FREE):
        now, before = getattr(cfg, name), getattr(saved, name)
        if now != before:
            raise ConfigError(
                f"{run_dir}: --{name} is {now!r} now but {before!r} in the run being resumed "
                f"({CONFIG_FILE}); a resumed run keeps its config"
            )
    free = {name: getattr(cfg, name) for name in (RESUME_FREE & explicit) - {"resume", "output_dir"}}
    return dataclasses.replace(saved, **free, resume=str(run_dir), output_dir=str(run_dir)), run_dir


def _stage(done: Path, scratch: Path | None, name: str, fn, *args, **kwargs):
    """Run ``fn`` unless its result ``done`` exists; a killed earlier attempt's ``scratch`` is removed
    first. Returns whether it ran."""
    if done.exists():
        _say(f"{name}: done before, kept")
        return False
    if scratch is not None and scratch.exists():
        shutil.rmtree(scratch) if scratch.is_dir() else scratch.unlink()
    _say(f"{name} ...")
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    _say(f"{name}: {time.perf_counter() - t0:.1f} s")
    return True


# ---- feedback --------------------------------------------------------------------------------------
def _wait(what: str, count, target: int, cfg: LoopConfig) -> None:
    """Poll ``count()`` until it reaches ``target``, with a status line; ConfigError after
    ``cfg.wait_timeout`` seconds (the run resumes with --resume, nothing lost)."""
    started = time.monotonic()
    while True:
        have = count()
        sys.stdout.write(f"\r[loop] {what}: {have}/{target} labels")
        sys.stdout.flush()
        if have >= target:
            sys.stdout.write("\n")
            return
        if cfg.wait_timeout and time.monotonic() - started >= cfg.wait_timeout:
            sys.stdout.write("\n")
            raise ConfigError(
                f"{what}: {have} of {target} labels after {cfg.wait_timeout:g} s; "
                f"rerun with --resume {cfg.output_dir} to keep waiting (labels given so far are kept)"
            )
        time.sleep(cfg.poll_seconds)


MAX_PROJECT_PREFIX = 80  # project names hold 100 characters; "-round-NN" and room to spare


def app_project_name(run_dir: Path, round_number: int) -> str:
    return f"{run_dir.resolve().name[:MAX_PROJECT_PREFIX]}-round-{round_number:02d}"


def _check_annotators(cfg: LoopConfig) -> None:
    """The usernames of --annotators exist in the app's database (checked before any work)."""
    names = [n.strip() for n in cfg.annotators.split(",") if n.strip()]
    if names:
        with Store(cfg.db) as store:
            known = {user.username for user in store.users()}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(
                f"--annotators: no user '{missing[0]}' in the feedback app's database (add it with `rlhflab feedback users --add`)"
            )


def _app_feedback(
    cfg: LoopConfig, run_dir: Path, round_number: int, samples_path: Path, output: Path, previous_reward: Path | None
) -> None:
    """The round's pairwise project in the feedback app, its queue in ``cfg.order`` (scored by
    ``previous_reward``, the last round's reward model, if any), waited on until its labels are in, then
    exported as preference records. The project's id is kept in the round's folder: a resumed
    run finds its own project again, and a new run never takes over another run's project."""
    marker = output.parent / "app_project.json"
    name = app_project_name(run_dir, round_number)
    with Store(cfg.db) as store:
        # The marker names the project before it is made: killed in between, the run finds it by name.
        claimed = json.loads(marker.read_text()) if marker.is_file() else None
        if claimed is None:
            write_json(marker, {"name": name})
        if claimed and "id" in claimed:
            project = store.project(claimed["id"])
        else:
            try:
                project = store.project(name) if claimed else None
            except StoreError:
                project = None
            if project is None:
                project = store.create_project(
                    name,
                    "pairwise",
                    str(samples_path),
                    overlap=cfg.overlap,
                    gold_rate=0.0,
                    instructions="Which response is better? These are samples of the policy being trained.",
                    seed=_round_seed(cfg.seed, "app", round_number),
                )
            scored = cfg.order in SCORED_ORDERS and previous_reward is not None
            if scored or cfg.order == "random":  # again after a kill: the same order
                scorer = load_reward_source(str(previous_reward)) if scored else None
                order_queue(store, project.id, cfg.order, scorer, _round_seed(cfg.seed, "order", round_number))
            write_json(marker, {"name": name, "id": project.id})
        names = [n.strip() for n in cfg.annotators.split(",") if n.strip()]
        if names:
            store.add_members(project.id, names)
        target = cfg.labels_per_round or project.num_items * cfg.overlap
        _say(
            f"round {round_number}: label project '{project.name}' at "
            f"{cfg.app_url.rstrip('/')}/projects/{project.id}/label ({project.num_items} pairs; serve the app "
            f"with `rlhflab serve --db {store.engine.url.render_as_string(hide_password=True)}`)"
        )

        def counted() -> int:  # labels of annotators an admin excluded do not count, as in the export
            return sum(not row["excluded"] for row in store.label_rows(project.id))

        _wait(f"round {round_number}, project '{project.name}'", counted, target, cfg)
        counts = store.export(project.id, "preferences", output.parent / "app_export.jsonl")
    if counts["records"] < 2:
        raise ConfigError(
            f"round {round_number}: {counts['records']} preference(s) from {counts['labels']} labels (ties and "
            f"'both bad' carry none); a reward model needs 2 — raise --labels_per_round and rerun with --resume"
        )
    (output.parent / "app_export.jsonl").replace(output)


def _file_feedback(cfg: LoopConfig, round_number: int, samples_path: Path, output: Path) -> None:
    """Wait for someone to put the round's preference records (prompt, chosen, rejected) at
    ``output``, e.g. labelled in another tool; they are validated when read."""
    _say(f"round {round_number}: label {samples_path} and move the preference records (JSONL) to {output}")
    _wait(f"round {round_number}, {output}", lambda: 1 if output.is_file() else 0, 1, cfg)


def _feedback(
    cfg: LoopConfig,
    run_dir: Path,
    round_number: int,
    samples: list[Samples],
    samples_path: Path,
    output: Path,
    previous_reward: Path | None,
):
    if cfg.feedback == "simulated":
        annotate_cfg = AnnotateConfig(
            samples=str(samples_path),
            oracle=cfg.oracle,
            feedback="preference",
            seed=_round_seed(cfg.seed, "annotate", round_number),
            output=str(output),
        )
        run_annotate(annotate_cfg, samples)
    elif cfg.feedback == "app":
        _app_feedback(cfg, run_dir, round_number, samples_path, output, previous_reward)
    else:
        _file_feedback(cfg, round_number, samples_path, output)


# ---- the loop ----------------------------------------------------------------------------------------
class _Run:
    """The run's fixed parts: config, directories, prompt sets, π_0, R* and π_0's evaluation."""

    def __init__(self, cfg: LoopConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.use_chat = not cfg.quick  # the tiny model has a template but no training to follow it
        train_prompts = load_prompts("train")
        if cfg.feedback_prompts > len(train_prompts):
            raise ConfigError(
                f"--feedback_prompts {cfg.feedback_prompts} > the {len(train_prompts)} shipped train prompts"
            )
        if cfg.feedback == "app":
            _check_annotators(cfg)
        if cfg.feedback_prompts < cfg.rounds:
            raise ConfigError(
                f"--feedback_prompts {cfg.feedback_prompts} leaves a round of {cfg.rounds} without prompts"
            )
        if cfg.algorithm != "dpo" and cfg.policy_iterations < cfg.rounds:
            raise ConfigError(
                f"--policy_iterations {cfg.policy_iterations} < --rounds {cfg.rounds}: a round would not update"
            )
        feedback_prompts = train_prompts[: cfg.feedback_prompts]
        self.round_prompts = round_prompts(feedback_prompts, cfg.rounds)
        # restart: every round optimises π_0 afresh, with the whole budget, so the last round's policy has
        # trained as long as a single round's would (the policy compute is rounds × that, the labels equal)
        whole = [cfg.policy_iterations] * cfg.rounds
        self.iterations = whole if cfg.policy_init == "restart" else split_evenly(cfg.policy_iterations, cfg.rounds)
        self.prompt_sets = {
            "seen": feedback_prompts[: cfg.eval_prompts],
            "unseen": load_prompts("unseen", cfg.eval_prompts),
        }
        self.initial, self.tokenizer = load_policy(cfg.policy)
        self.initial.eval()
        self.oracle = load_reward_source(cfg.oracle)
        self.eval_kw = dict(
            oracle=self.oracle,
            num_samples=cfg.eval_samples,
            max_new_tokens=cfg.max_new_tokens,
            use_chat_template=self.use_chat,
            seed=cfg.seed + 1,  # the same samples' seed for every policy: differences are paired
        )

    def round_dir(self, r: int) -> Path:
        return self.run_dir / f"round-{r:02d}"

    def policy_path(self, r: int) -> str:
        """π_r: the initial policy for r = 0, else round r's saved update."""
        return self.cfg.policy if r == 0 else str(self.round_dir(r) / "policy_run" / "policy")

    def reward_path(self, r: int) -> Path:
        return self.round_dir(r) / "reward" / "reward_model"

    def initial_evaluation(self) -> dict:
        """π_0 on the seen and unseen prompts under R* (Ĵ is filled in per round, under its R_phi)."""
        path = self.run_dir / "initial_evaluation.json"
        _stage(path, None, "evaluate pi_0", self._evaluate_initial, path)
        return json.loads(path.read_text())

    def _evaluate_initial(self, path: Path) -> None:
        results = evaluate_on_sets(self.initial, self.tokenizer, self.prompt_sets, reward_model=None, **self.eval_kw)
        write_json(path, {name: ev.to_dict() for name, ev in results.items()})


def run_loop(cfg: LoopConfig, explicit: set[str] | None = None) -> Path:
    """Run (or resume) the loop; returns the run directory. ``explicit``: the options given on the
    command line, compared with a resumed run's (None: every option is compared)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per model load would bury the loop's own status lines
    cfg, run_dir = _open_run(cfg, explicit)
    cfg, precision = resolve_precision(cfg)  # after the resume check: the saved config keeps 'auto'
    with precision:
        run = _Run(cfg, run_dir)
        initial = run.initial_evaluation()
        rows = []
        for r in range(1, cfg.rounds + 1):
            done = run.round_dir(r) / ROUND_FILE
            if done.is_file():
                rows.append(json.loads(done.read_text()))
                _say(f"round {r}: finished before, kept")
                continue
            rows.append(_run_round(run, r, initial))
        write_json(run_dir / "rounds.json", rows)
        plot_rounds(
            initial, rows, run_dir / "by_round.png", f"{cfg.rounds} round(s), {cfg.algorithm}, {cfg.feedback} feedback"
        )
        plot_reliability(rows, run_dir / "reliability.png")
        frontiers = _read_frontiers(run) if cfg.eval_every else []
        if frontiers:
            points = [p for f in frontiers for p in f["points"]]
            plot_frontier(points, {}, {m: e for f in frontiers for m, e in f["fits"].items()}, run_dir / "frontier.png")
        summary = loop_summary(cfg, initial, rows, run_dir, frontiers)
        write_text(run_dir / "report.md", summary)
        write_report([run_dir])
        print("\n" + summary)
        return run_dir


def _run_round(run: _Run, r: int, initial: dict) -> dict:
    cfg, folder = run.cfg, run.round_dir(r)
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def timed(name, done, scratch, fn, *args):
        # A stage draws from its own seed, not from whatever earlier stages left in the global RNG
        # (a fresh head's initialisation, say): resumed after a kill, it repeats the same run.
        torch.manual_seed(_round_seed(cfg.seed, name, r))
        t0 = time.perf_counter()
        if _stage(done, scratch, f"round {r}: {name}", fn, *args):
            seconds[name] = time.perf_counter() - t0

    # 1. sample π_{r-1} on the round's prompts
    samples_path = folder / "samples.jsonl"
    timed("sample", samples_path, None, _sample, run, r, samples_path)
    samples = read_records(samples_path, "samples")

    # 2. feedback on π_{r-1}'s samples
    prefs_path = folder / "preferences.jsonl"
    previous_reward = run.reward_path(r - 1) if r > 1 else None
    timed(
        "feedback", prefs_path, None, _feedback, cfg, run.run_dir, r, samples, samples_path, prefs_path, previous_reward
    )
    new_labels = read_records(prefs_path, "preference")

    # 3. the shift: R_{phi,r-1} on the pairs of the policy it was used to train, before it sees them
    shift_path = folder / "shift.json"
    if r > 1:
        timed(
            "measure the last reward model on the new samples", shift_path, None, _shift, run, r, new_labels, shift_path
        )

    # 4. the reward model R_{phi,r}
    timed("train reward model", folder / "reward" / "reward_report.json", folder / "reward", _train_reward, run, r)
    reward_model = load_reward_source(str(run.reward_path(r)))

    # 5. the policy update π_{r-1} → π_r
    timed("update policy", Path(run.policy_path(r)), folder / "policy_run", _update_policy, run, r, reward_model)

    # 6. evaluation of π_r
    eval_path = folder / "evaluation.json"
    timed("evaluate", eval_path, None, _evaluate, run, r, reward_model, eval_path)

    # 7. the round's frontier: the path its update recorded, fitted (--eval_every)
    if cfg.eval_every:
        timed("fit the round's frontier", folder / FRONTIER_FILE, None, _fit_frontier, run, r, folder / FRONTIER_FILE)

    row = _round_row(run, r, initial, reward_model, json.loads(eval_path.read_text()), seconds)
    write_json(folder / ROUND_FILE, row)
    return row


def _sample(run: _Run, r: int, output: Path) -> None:
    cfg = run.cfg
    policy, tokenizer = load_policy(run.policy_path(r - 1))
    sample_cfg = SampleConfig(
        policy=run.policy_path(r - 1),
        num_samples=cfg.samples_per_prompt,
        max_new_tokens=cfg.max_new_tokens,
        use_chat_template=run.use_chat,
        seed=_round_seed(cfg.seed, "sample", r),
        output=str(output),
    )
    run_sample(sample_cfg, policy, tokenizer, run.round_prompts[r - 1])


def _shift(run: _Run, r: int, new_labels: list, output: Path) -> None:
    previous = load_reward_source(str(run.reward_path(r - 1)))
    write_json(output, reward_model_report(previous, new_labels, run.oracle))


def _all_labels(run: _Run, r: int) -> list:
    return [p for k in range(1, r + 1) for p in read_records(run.round_dir(k) / "preferences.jsonl", "preference")]


def reward_data_of(cfg: LoopConfig) -> str:
    """Which labels a round's reward model trains on: ``reward_data``, or by default every label so
    far when retraining and the round's own when warm-starting (the loop's behaviour before the option)."""
    return cfg.reward_data or ("round" if cfg.reward_init == "warm_start" else "all")


def _train_reward(run: _Run, r: int) -> None:
    cfg, folder = run.cfg, run.round_dir(r)
    warm = cfg.reward_init == "warm_start" and r > 1
    carried = reward_data_of(cfg) == "all" and r > 1
    data = folder / ("reward_data.jsonl" if carried else "preferences.jsonl")
    if carried:
        write_records(_all_labels(run, r), data)
    num_records = len(read_records(data, "preference"))
    held_out = max(1, round(RewardConfig.eval_fraction * num_records))
    if num_records - held_out < 1:
        raise ConfigError(f"{data}: {num_records} preference(s) are too few to train and test a reward model on")
    reward_cfg = RewardConfig(
        model=str(run.reward_path(r - 1)) if warm else cfg.reward_backbone,
        batch_size=min(RewardConfig.batch_size, num_records - held_out),  # a small round still trains
        data=str(data),
        output_dir=str(folder / "reward"),
        seed=_round_seed(cfg.seed, "reward", r),
        learning_rate=cfg.reward_learning_rate,
        num_epochs=cfg.reward_epochs,
        progress=True,
        report_to=cfg.report_to,
        mixed_precision="no",  # the reward model stays fp32 (models.scoring): see README, Precision
        ensemble=cfg.reward_ensemble,
        ensemble_trunk="shared" if cfg.reward_ensemble > 1 else "separate",
    )
    run_reward(reward_cfg, cfg.oracle)


def _update_policy(run: _Run, r: int, reward_model) -> None:
    cfg, folder = run.cfg, run.round_dir(r)
    start = run.policy_path(r - 1) if cfg.policy_init == "continue" else run.policy_path(0)
    policy, tokenizer = load_policy(start)
    # fixed: every round's KL is to π_0; moved: to π_{r-1}, the last round's policy
    reference = run.initial if cfg.reference == "fixed" else load_policy(run.policy_path(r - 1))[0]
    seed = _round_seed(cfg.seed, "policy", r)
    if cfg.algorithm == "dpo":
        # continued: iterative DPO on the round's pairs; restarted from π_0: on every pair so far
        pairs = folder / "preferences.jsonl"
        if cfg.policy_init == "restart" and r > 1:
            pairs = folder / "dpo_data.jsonl"
            write_records(_all_labels(run, r), pairs)
        pcfg = PreferenceConfig(
            policy=start,
            loss="dpo",
            data=str(pairs),
            kl_coef=cfg.kl_coef,
            learning_rate=cfg.policy_learning_rate if cfg.quick else cfg.dpo_learning_rate,
            num_epochs=cfg.dpo_epochs,
            use_chat_template=run.use_chat,
            seed=seed,
            output_dir=str(folder / "policy_run"),
            progress=True,
            report_to=cfg.report_to,
            mixed_precision=cfg.mixed_precision,
        )
        run_preference_optimization(pcfg, policy, tokenizer, read_records(pcfg.data, "preference"), reference)
        return
    rl_cfg = RLConfig(
        algorithm=cfg.algorithm,
        policy=start,
        reward=str(run.reward_path(r)),
        oracle=cfg.oracle,
        num_iterations=run.iterations[r - 1],
        prompts_per_iteration=cfg.prompts_per_iteration,
        samples_per_prompt=cfg.rl_samples_per_prompt,
        max_new_tokens=cfg.max_new_tokens,
        kl_coef=cfg.kl_coef,
        learning_rate=cfg.policy_learning_rate,
        epochs=cfg.policy_epochs if cfg.algorithm == "ppo" else None,
        use_chat_template=run.use_chat,
        seed=seed,
        output_dir=str(folder / "policy_run"),
        progress=True,
        report_to=cfg.report_to,
        mixed_precision=cfg.mixed_precision,
    )
    hook = _RoundPath(run, r, policy, reward_model, folder / "policy_run" / PATH_FILE) if cfg.eval_every else None
    run_policy_optimization(rl_cfg, policy, tokenizer, reward_model, run.oracle, reference=reference, should_stop=hook)


# ---- over-optimisation per round (--eval_every) ----------------------------------------------------
def _rescored(raw: dict, reward_model) -> PolicyEvaluation:
    """A stored evaluation with its Ĵ under ``reward_model``: its own texts scored again (J, KL kept)."""
    ev = PolicyEvaluation(**raw)
    ev.proxy_rewards = reward_model(ev.contexts, ev.texts).tolist()
    ev.J_hat, ev.J_hat_se = mean_and_se(per_prompt_means(ev.proxy_rewards, ev.prompt_index, ev.num_prompts))
    return ev


def _per_prompt(ev: PolicyEvaluation) -> dict:
    return {
        "J": per_prompt_means(ev.oracle_rewards, ev.prompt_index, ev.num_prompts),
        "J_hat": per_prompt_means(ev.proxy_rewards, ev.prompt_index, ev.num_prompts),
    }


class _RoundPath(EvaluateAlongTraining):
    """Round r's update evaluated every ``eval_every`` iterations and at its last, as ``rlhflab
    frontier`` evaluates a method: J under R*, Ĵ under R_{phi,r}, KL to π_0 (the x-axis whatever the
    update's anchor), each point's ΔJ and ΔĴ paired by prompt with π_0 (π_0's Ĵ rescored by R_{phi,r}).

    The path starts where the update does: at π_0 (KL 0) in round 1 or under ``policy_init`` restart,
    else at π_{r-1} — the last round's evaluation of it, Ĵ rescored by R_{phi,r} — so under continue
    the rounds' paths follow one another along one axis of KL to π_0. Each record rewrites ``path``
    atomically; the last comes before the policy is saved, so a saved policy has its whole path."""

    def __init__(self, run: _Run, r: int, policy, reward_model, path: Path):
        self.path, self.method = path, f"round {r}"
        initial = json.loads((run.run_dir / "initial_evaluation.json").read_text())
        self.baseline = {c: _per_prompt(_rescored(raw, reward_model)) for c, raw in initial.items()}
        if r == 1 or run.cfg.policy_init == "restart":
            self.points = initial_points(self.method, self.baseline)
        else:
            previous = json.loads((run.round_dir(r - 1) / "evaluation.json").read_text())
            self.points = [
                frontier_point(self.method, c, f"π_{r - 1}", 0, _rescored(raw, reward_model), self.baseline[c])
                for c, raw in previous.items()
            ]
        eval_kw = dict(run.eval_kw, reward_model=reward_model, reference=run.initial)
        at = every(run.cfg.eval_every, run.iterations[r - 1])
        super().__init__(policy, run.tokenizer, run.prompt_sets, eval_kw, at, self._record)

    def _record(self, done: int, evaluations: dict) -> None:
        for c, ev in evaluations.items():
            self.points.append(frontier_point(self.method, c, f"iteration {done}", done, ev, self.baseline[c]))
        baseline = {c: {k: v.tolist() for k, v in b.items()} for c, b in self.baseline.items()}
        write_json(self.path, {"baseline": baseline, "points": self.points})


def _fit_frontier(run: _Run, r: int, output: Path) -> None:
    """Round r's path fitted: Gao et al.'s RL form of J and Ĵ, where J peaks and whether Ĵ still
    rises there, and J's measured fall (``fit_points``, as ``rlhflab frontier`` fits a method)."""
    source = run.round_dir(r) / "policy_run" / PATH_FILE
    if not source.is_file():
        raise ConfigError(f"{source}: missing, so round {r}'s update was not evaluated along its path")
    path = json.loads(source.read_text())
    fits, lines = fit_points(path["points"], path["baseline"], NUM_BOOTSTRAP, run.cfg.seed)
    write_json(output, {"round": r, "points": path["points"], "fits": fits, "lines": lines})


def _read_frontiers(run: _Run) -> list[dict]:
    return [json.loads((run.round_dir(r) / FRONTIER_FILE).read_text()) for r in range(1, run.cfg.rounds + 1)]


def _peak_text(fit: dict | None) -> str:
    """A fit's J peak KL with its interval; a peak past 10× the largest KL measured is not a finding."""
    if fit is None:
        return "no fit"
    if math.isinf(fit["peak_kl"]):
        return "no peak"
    far = 10 * fit["max_kl"]

    def kl(value: float) -> str:
        return f"> {far:.3g}" if value > far else f"{value:.3g}"

    return f"{kl(fit['peak_kl'])} [{kl(fit['peak_kl_ci'][0])}, {kl(fit['peak_kl_ci'][1])}]"


def overoptimisation_section(cfg: LoopConfig, frontiers: list[dict]) -> list[str]:
    """report.md's per-round over-optimisation table, its fits in words beneath it."""
    table = []
    for f in frontiers:
        for contexts, entry in f["fits"][f"round {f['round']}"].items():
            kl = [p["kl"] for p in f["points"] if p["contexts"] == contexts]
            fall, rising = entry["measured_fall"], entry.get("J_hat_rising_at_J_peak")
            table.append(
                {
                    "round": f["round"],
                    "contexts": contexts,
                    "points": len(kl),
                    "kl": f"{min(kl):.3f}–{max(kl):.3f}",
                    "peak": _peak_text(entry["J"]),
                    "rising": "–" if rising is None else ("yes" if rising else "no"),
                    "fall": "no fall" if fall["best"] == fall["last"] else _z(fall["fall"], fall["fall_se"]),
                }
            )
    columns = [
        ("round", "round", "d"),
        ("contexts", "contexts", ""),
        ("points", "points", "d"),
        ("kl", "KL(π‖π_0) range", ""),
        ("peak", "fitted J peak KL [95% CI]", ""),
        ("rising", "Ĵ rising at J peak?", ""),
        ("fall", "measured fall of J ± se (z)", ""),
    ]
    anchor = " (not to the update's anchor π_r−1: `--reference moved`)" if cfg.reference == "moved" else ""
    start = (
        "Round 1's path starts at π_0, a later round's at π_r−1 (its evaluation of the round before, Ĵ rescored), "
        "so the rounds follow one another along the KL axis; the form stays anchored at π_0 (ΔJ = 0 at d = 0)."
        if cfg.policy_init == "continue"
        else "Every round's path starts at π_0 (`--policy_init restart`)."
    )
    return [
        "",
        "## Over-optimisation per round (Gao et al. 2022 on each round's path)",
        "",
        format_table(table, columns),
        "",
        f"Each round's policy update evaluated every {cfg.eval_every} iterations and at its last: J under R*, Ĵ "
        f"under the round's reward model, x-axis KL to π_0{anchor}, ΔJ and ΔĴ paired by prompt with π_0 (π_0's Ĵ "
        f"rescored by the round's reward model). {start} Fit: "
        "ΔJ = d(α − β log d), d = √KL, intervals a bootstrap over prompts; *Ĵ rising*: the fitted Ĵ still climbs "
        "where the fitted J peaks (reward hacking, by the fits); *measured fall*: J at the path's best point "
        "minus J at its largest KL, paired by prompt. Points and fits: `round-NN/frontier.json`; plot "
        "`frontier.png` (one line per round).",
        "",
        *[line for f in frontiers for line in f["lines"]],
    ]


def _evaluate(run: _Run, r: int, reward_model, output: Path) -> None:
    policy, tokenizer = load_policy(run.policy_path(r))
    previous = load_policy(run.policy_path(r - 1))[0] if r > 1 else None
    results = evaluate_on_sets(
        policy,
        tokenizer,
        run.prompt_sets,
        reward_model=reward_model,
        reference=run.initial,
        previous=previous,
        **run.eval_kw,
    )
    write_json(output, {name: ev.to_dict() for name, ev in results.items()})


def _round_row(run: _Run, r: int, initial: dict, reward_model, evaluation: dict, seconds: dict) -> dict:
    """Round r's line of the report: labels, the reward model before and after, and π_r's J and Ĵ
    beside π_0's (Ĵ of both under this round's R_phi, on the same prompts and sample seeds)."""
    folder = run.round_dir(r)
    labels = len(read_records(folder / "preferences.jsonl", "preference"))
    reward_report = json.loads((folder / "reward" / "reward_report.json").read_text())
    shift_path = folder / "shift.json"
    row = {
        "round": r,
        "labels": labels,
        "feedback_prompts": len(run.round_prompts[r - 1]),
        "policy_iterations": run.iterations[r - 1] if run.cfg.algorithm != "dpo" else 0,
        "shift": json.loads(shift_path.read_text()) if shift_path.is_file() else None,
        "reward_model": {
            k: reward_report.get(k)
            for k in ("accuracy", "ece", "reliability", "oracle_accuracy", "oracle_order_accuracy")
        },
        "seconds": seconds,
    }
    for name, raw in evaluation.items():
        after, before = PolicyEvaluation(**raw), PolicyEvaluation(**initial[name])
        before.proxy_rewards = reward_model(before.contexts, before.texts).tolist()
        dJ, dJ_se = paired_difference(before, after)
        dJ_hat, dJ_hat_se = paired_difference(before, after, "proxy_rewards")
        row[name] = {
            "J": after.J,
            "J_se": after.J_se,
            "J_hat": after.J_hat,
            "J_hat_se": after.J_hat_se,
            "J_initial": before.J,
            "J_hat_initial": float(np.mean(before.proxy_rewards)),
            "delta_J": dJ,
            "delta_J_se": dJ_se,
            "delta_J_hat": dJ_hat,
            "delta_J_hat_se": dJ_hat_se,
            "kl_initial": after.kl,
            "kl_initial_se": after.kl_se,
            "kl_previous": after.kl_previous if r > 1 else after.kl,
            "kl_previous_se": after.kl_previous_se if r > 1 else after.kl_se,
            "reward_model_order_accuracy": pairwise_order_agreement(after),
        }
    return row


def _z(delta, se) -> str:
    return "–" if delta is None else f"{delta:+.3f} ± {se:.3f} ({delta / se:+.1f})" if se else f"{delta:+.3f}"


def loop_summary(
    cfg: LoopConfig, initial: dict, rows: list[dict], run_dir: Path, frontiers: list[dict] | None = None
) -> str:
    """report.md: one line per round (round 0 is π_0), and with ``frontiers`` (``--eval_every``) the
    over-optimisation of each round's path."""
    table = [
        {
            "round": 0,
            "labels": 0,
            "J_seen": initial["seen"]["J"],
            "J_unseen": initial["unseen"]["J"],
        }
    ]
    spent = 0
    for row in rows:
        spent += row["labels"]
        shift = row.get("shift") or {}
        table.append(
            {
                "round": row["round"],
                "labels": spent,
                "shift_accuracy": shift.get("accuracy"),
                "shift_order": shift.get("oracle_order_accuracy"),
                "shift_ece": shift.get("ece"),
                "heldout_accuracy": row["reward_model"]["accuracy"],
                "J_seen": row["seen"]["J"],
                "dJ_seen": _z(row["seen"]["delta_J"], row["seen"]["delta_J_se"]),
                "dJ_hat_seen": row["seen"]["delta_J_hat"],
                "J_unseen": row["unseen"]["J"],
                "dJ_unseen": _z(row["unseen"]["delta_J"], row["unseen"]["delta_J_se"]),
                "kl_initial": row["seen"]["kl_initial"],
                "kl_previous": row["seen"]["kl_previous"],
                "order_seen": row["seen"]["reward_model_order_accuracy"],
                "order_unseen": row["unseen"]["reward_model_order_accuracy"],
            }
        )
    columns = [
        ("round", "round", "d"),
        ("labels", "labels so far", "d"),
        ("shift_accuracy", "RM acc. on new pairs, before", ".3f"),
        ("shift_order", "same, vs R* order", ".3f"),
        ("shift_ece", "ECE before", ".3f"),
        ("heldout_accuracy", "RM held-out acc., after", ".3f"),
        ("J_seen", "J seen", ".3f"),
        ("dJ_seen", "ΔJ seen ± se (z)", ""),
        ("dJ_hat_seen", "ΔĴ seen", "+.3f"),
        ("J_unseen", "J unseen", ".3f"),
        ("dJ_unseen", "ΔJ unseen ± se (z)", ""),
        ("kl_initial", "KL to π_0", ".2f"),
        ("kl_previous", "KL to π_r−1", ".2f"),
        ("order_seen", "RM vs R* on π_r samples, seen", ".3f"),
        ("order_unseen", "unseen", ".3f"),
    ]
    lines = [
        f"# rlhflab loop — {run_dir}",
        "",
        f"`{cfg.policy}` → {cfg.rounds} round(s) of {cfg.feedback} feedback on the current policy "
        f"({cfg.feedback_prompts} feedback prompts in all × {cfg.samples_per_prompt} samples), reward model on "
        f"`{cfg.reward_backbone}` ({cfg.reward_init}, labels: {reward_data_of(cfg)}), policy update "
        f"`{cfg.algorithm}` ({cfg.policy_init}; β = {cfg.kl_coef}, reference {cfg.reference}); R* = `{cfg.oracle}`; "
        f"seed {cfg.seed}.",
        "",
        format_table(table, columns),
        "",
        "ΔJ and ΔĴ are π_r minus π_0 on the same prompts and sample seeds, Ĵ of both under round r's "
        "reward model; se over prompts, z = ΔJ / se. *Before*: the last round's reward model on this "
        "round's new pairs (samples of the policy it trained), before it is retrained on them — the "
        "distribution shift of Section 7.6.4; *after*: the new model on held-out pairs. *RM vs R\\**: "
        "how often the round's reward model orders two samples of π_r for one prompt as R* does.",
        "",
        "Plots: `by_round.png` (J, Ĵ and reward-model accuracy by round), `reliability.png` "
        "(calibration per round). Rows: `rounds.json`.",
    ]
    if frontiers:
        lines += overoptimisation_section(cfg, frontiers)
    return "\n".join(lines) + "\n"


def loop_done(cfg: LoopConfig, run_dir: Path) -> str:
    png = run_dir / "frontier.png"  # --eval_every (of the run, which a resumed run's cfg may not repeat)
    frontier = f", {png} (each round's path)" if png.is_file() else ""
    return (
        f"report in {run_dir / 'report.md'} and {run_dir / 'report.html'}; per-round rows in {run_dir / 'rounds.json'}; "
        f"plots {run_dir / 'by_round.png'}, {run_dir / 'reliability.png'}{frontier}"
    )
