"""``rlhflab``: one command, a subcommand per workflow step. ``rlhflab CMD --help`` lists every option.

Every subcommand reads ``--config FILE.yaml`` and flags (flags win). User errors (bad files,
options, NaN losses) print one line naming the file, line and field, and exit with status 2.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhflab.commands.collect import AnnotateConfig, SampleConfig, run_annotate, run_sample
from rlhflab.commands.compare import CompareConfig, compare_outputs, run_compare
from rlhflab.commands.decode import BestOfNConfig, RADConfig, run_bon, run_rad
from rlhflab.commands.demo import DemoConfig, run_demo
from rlhflab.commands.evaluate import EvalConfig, run_eval
from rlhflab.commands.feedback import ServeConfig, run_feedback, run_serve
from rlhflab.commands.frontier import FrontierConfig, run_frontier
from rlhflab.commands.iterate import LoopConfig, loop_done, run_loop
from rlhflab.commands.language import run_ilf, run_revise
from rlhflab.commands.memory import MemoryConfig, run_memory
from rlhflab.commands.report import ReportConfig, run_report
from rlhflab.commands.toy import ToyConfig, format_toy_result, run_toy
from rlhflab.commands.train import (
    run_kto,
    run_policy_optimization,
    run_positive_sft,
    run_preference_optimization,
    run_raft,
    run_ranking_optimization,
    run_reward,
    run_rso,
    run_sft,
)
from rlhflab.config import explicit_options, parse_config
from rlhflab.errors import RlhflabError
from rlhflab.evaluation.plots import format_evaluations
from rlhflab.train.language import ILFConfig, ReviseConfig, format_before_after
from rlhflab.train.loop import processes_the_launcher_dropped, torchrun_argv
from rlhflab.train.offline import SFTConfig
from rlhflab.train.policy_optimization import RLConfig
from rlhflab.train.preference import KTOConfig, PreferenceConfig, RankingConfig
from rlhflab.train.rejection import PositiveSFTConfig, RAFTConfig, RSOConfig
from rlhflab.train.reward_model import RewardConfig


def _saved(run_dir, *extra: str) -> str:
    return "; ".join([f"policy saved to {run_dir / 'policy'}", *extra])


def _reward_done(cfg, result) -> str:
    run_dir, report = result
    lines = [f"reward model saved to {run_dir / 'reward_model'}"]
    if report:
        lines.append(json.dumps({k: v for k, v in report.items() if not isinstance(v, (list, dict))}, indent=2))
    return "\n".join(lines)


def _revise_done(cfg, result) -> str:
    run_dir, summary = result
    lines = [f"{summary['pairs']} (revised, original) pairs written to {summary['preferences']}"]
    if "pairs_agreement_with_oracle" in summary:
        lines.append(
            f"revisions the oracle ({summary['oracle']}) prefers: {summary['pairs_agreement_with_oracle']:.3f}"
        )
    if "J" in summary:
        lines += [_saved(run_dir), format_before_after(summary["J"])]
    return "\n".join(lines)


@dataclass(frozen=True)
class Command:
    """A subcommand: its config, its entry function (in ``rlhflab.commands``) and what it
    prints when done. ``fixed`` flags come first (``rlhflab ppo`` is the policy command with
    ``--algorithm ppo``); a command without a config parses its own arguments."""

    config: type | None
    entry: Callable
    help: str
    done: Callable[[Any, Any], str] = lambda cfg, result: ""
    fixed: tuple[str, ...] = ()
    positional: str | None = None  # the option that the leading non-flag arguments fill
    explicit: bool = False  # the entry is also told which options were given (a resumed run checks them)


def _policy_command(algorithm: str, help: str) -> Command:
    return Command(
        RLConfig,
        run_policy_optimization,
        help,
        lambda cfg, run_dir: _saved(run_dir, f"metrics in {run_dir / 'metrics.jsonl'}"),
        ("--algorithm", algorithm),
    )


def _loss_command(config: type, entry: Callable, loss: str, help: str) -> Command:
    return Command(
        config,
        entry,
        help,
        lambda cfg, run_dir: _saved(run_dir, f"metrics in {run_dir / 'metrics.jsonl'}"),
        ("--loss", loss),
    )


COMMANDS: dict[str, Command] = {
    "demo": Command(DemoConfig, run_demo, "the whole workflow on the offline defaults, ending in a run report"),
    "sample": Command(
        SampleConfig,
        run_sample,
        "sample completions from a policy",
        lambda cfg, records: f"wrote {len(records)} prompts x {cfg.num_samples} samples to {cfg.output}",
    ),
    "annotate": Command(
        AnnotateConfig,
        run_annotate,
        "label samples with simulated annotators driven by an oracle R*",
        lambda cfg, records: f"wrote {len(records)} {cfg.feedback} records to {cfg.output}",
    ),
    "sft": Command(SFTConfig, run_sft, "supervised fine-tuning on demonstrations", lambda cfg, d: _saved(d)),
    "reward": Command(
        RewardConfig, run_reward, "train a reward model (Bradley-Terry, Plackett-Luce, regression)", _reward_done
    ),
    "ppo": _policy_command("ppo", "PPO with a KL penalty (Eq. 16)"),
    "a2c": _policy_command("a2c", "advantage actor-critic with a KL penalty"),
    "reinforce": _policy_command("reinforce", "REINFORCE / vanilla policy gradient (Section 6.3)"),
    "rloo": _policy_command("rloo", "REINFORCE leave-one-out"),
    "grpo": _policy_command("grpo", "group relative policy optimisation"),
    "dpo": _loss_command(
        PreferenceConfig,
        run_preference_optimization,
        "dpo",
        "direct preference optimisation (also cdpo, rdpo: --loss)",
    ),
    "ipo": _loss_command(PreferenceConfig, run_preference_optimization, "ipo", "identity preference optimisation"),
    "slic": _loss_command(
        PreferenceConfig,
        run_preference_optimization,
        "slic",
        "SLiC-HF: rank-calibration hinge plus regularisation",
    ),
    "kto": Command(
        KTOConfig, run_kto, "KTO on unpaired good / bad labels (Ethayarajh et al. 2024)", lambda cfg, d: _saved(d)
    ),
    "rrhf": _loss_command(
        RankingConfig,
        run_ranking_optimization,
        "rrhf",
        "RRHF: ranking hinge over k responses plus SFT on the best",
    ),
    "pro": _loss_command(
        RankingConfig, run_ranking_optimization, "pro", "PRO: Plackett-Luce over k responses plus SFT on the best"
    ),
    "raft": Command(
        RAFTConfig,
        run_raft,
        "rejection-sampling fine-tuning (RAFT / ReST / expert iteration)",
        lambda cfg, d: _saved(d, f"per-round samples and rewards in {d / 'rounds.jsonl'}"),
    ),
    "rso": Command(
        RSOConfig,
        run_rso,
        "statistical rejection sampling toward pi*, then DPO or SLiC",
        lambda cfg, d: _saved(d, f"sampled pairs in {d / 'rso_preferences.jsonl'}"),
    ),
    "sft-positive": Command(
        PositiveSFTConfig,
        run_positive_sft,
        "SFT on the chosen responses of a preference file (baseline)",
        lambda cfg, d: _saved(d),
    ),
    "ilf": Command(
        ILFConfig,
        run_ilf,
        "imitation learning from language feedback: refine given critiques, keep the closest, SFT",
        lambda cfg, result: (
            _saved(result[0], f"refinements in {result[0]}/round-*/refinements.jsonl")
            + "\n"
            + format_before_after(result[1])
        ),
    ),
    "revise": Command(
        ReviseConfig,
        run_revise,
        "critique and revise under a constitution, SFT on the revisions, pairs as preferences",
        _revise_done,
    ),
    "bon": Command(
        BestOfNConfig,
        run_bon,
        "best-of-n sampling with a reward source, with its KL bound and estimate",
        lambda cfg, summary: json.dumps(summary, indent=2) + f"\nchosen completions written to {cfg.output}",
    ),
    "rad": Command(
        RADConfig,
        run_rad,
        "reward-augmented decoding (top-k reweighted by a reward source)",
        lambda cfg, summary: json.dumps(summary, indent=2) + f"\ncompletions written to {cfg.output}",
    ),
    "compare": Command(
        CompareConfig,
        run_compare,
        "RL and its alternatives from one pool of feedback: J, J_hat, KL table and plot",
        lambda cfg, d: compare_outputs(d),
    ),
    "frontier": Command(
        FrontierConfig,
        run_frontier,
        "J and J_hat against KL for best-of-n, PPO and DPO: points along training, Gao fits, reference curve",
        lambda cfg, d: f"table and fits in {d / 'frontier.md'} and {d / 'frontier.json'}; plot {d / 'frontier.png'}",
    ),
    "loop": Command(
        LoopConfig,
        run_loop,
        "iterated RLHF: rounds of fresh feedback on the current policy (simulated, people, or a file)",
        loop_done,
        explicit=True,
    ),
    "eval": Command(
        EvalConfig,
        run_eval,
        "J (oracle), J_hat (reward model), KL, length, diversity; seen vs unseen prompts",
        lambda cfg, results: format_evaluations({cfg.policy: results}),
    ),
    "memory": Command(
        MemoryConfig,
        run_memory,
        "peak training memory per process (weights, grads, AdamW, activations) for a method and sharding",
        lambda cfg, text: text,
    ),
    "report": Command(
        ReportConfig,
        run_report,
        "one self-contained HTML report of one run or several: J beside J_hat, hacking, curves",
        lambda cfg, path: f"report written to {path}",
        positional="run_dirs",
    ),
    "toy": Command(
        ToyConfig,
        run_toy,
        "the exact toy lab (closed-form optimum, coverage, over-optimisation, ...)",
        format_toy_result,
        positional="experiment",
    ),
    "feedback": Command(
        None, run_feedback, "feedback from people: create projects, add users, invite, stats, export labels"
    ),
    "serve": Command(ServeConfig, run_serve, "serve the feedback web app (labelling, review, dashboard)"),
}


def run_command(name: str, argv: Sequence[str]) -> int:
    """Parse ``name``'s config from ``argv``, run its entry function and print what it made."""
    command = COMMANDS[name]
    if command.config is None:
        return int(command.entry(list(argv)) or 0)
    argv = list(argv)
    if command.positional:
        leading = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
        if leading:
            argv = [f"--{command.positional}", *argv[:leading], *argv[leading:]]
    argv = [*command.fixed, *argv]
    cfg = parse_config(command.config, argv, f"rlhflab {name}", command.config.__doc__)
    extra = (explicit_options(command.config, argv),) if command.explicit else ()
    message = command.done(cfg, command.entry(cfg, *extra))
    if message:
        print(message)
    return 0


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    return (
        "usage: rlhflab COMMAND [--config FILE.yaml] [--option value ...]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nrlhflab COMMAND --help lists a command's options."
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rlhflab: error: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    dropped = processes_the_launcher_dropped()
    if dropped > 1 and argv == sys.argv[1:]:
        print(
            f"rlhflab: accelerate launch --cpu starts one process; starting {dropped} through torchrun", file=sys.stderr
        )
        os.execv(sys.executable, torchrun_argv(dropped))
    try:
        result = run_command(command, rest)
    except RlhflabError as exc:
        print(f"rlhflab {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhflab {command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
