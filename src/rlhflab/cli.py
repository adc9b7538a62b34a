"""``rlhflab``: one command, a subcommand per workflow step. ``rlhflab CMD --help`` lists every option.

Every subcommand reads ``--config FILE.yaml`` and flags (flags win). User errors (bad files,
options, NaN losses) print one line naming the file, line and field, and exit with status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from rlhflab.errors import RlhflabError


def _sample(argv):
    from rlhflab import workflow
    from rlhflab.config import parse_config

    cfg = parse_config(workflow.SampleConfig, argv, "rlhflab sample", workflow.SampleConfig.__doc__)
    records = workflow.sample(cfg)
    print(f"wrote {len(records)} prompts x {cfg.num_samples} samples to {cfg.output}")


def _annotate(argv):
    from rlhflab import workflow
    from rlhflab.config import parse_config

    cfg = parse_config(workflow.AnnotateConfig, argv, "rlhflab annotate", workflow.AnnotateConfig.__doc__)
    records = workflow.annotate(cfg)
    print(f"wrote {len(records)} {cfg.feedback} records to {cfg.output}")


def _sft(argv):
    from rlhflab import workflow
    from rlhflab.config import parse_config
    from rlhflab.train.offline import SFTConfig

    cfg = parse_config(SFTConfig, argv, "rlhflab sft", SFTConfig.__doc__)
    run_dir = workflow.sft(cfg)
    print(f"policy saved to {run_dir / 'policy'}")


def _reward(argv):
    import json

    from rlhflab import workflow
    from rlhflab.config import parse_config
    from rlhflab.train.offline import RewardConfig

    cfg = parse_config(RewardConfig, argv, "rlhflab reward", RewardConfig.__doc__)
    run_dir, report = workflow.reward(cfg)
    print(f"reward model saved to {run_dir / 'reward_model'}")
    if report:
        print(json.dumps({k: v for k, v in report.items() if not isinstance(v, (list, dict))}, indent=2))


def _policy_command(algorithm: str) -> Callable:
    def run(argv):
        from rlhflab import workflow
        from rlhflab.config import parse_config
        from rlhflab.train.policy_optimization import RLConfig

        cfg = parse_config(RLConfig, ["--algorithm", algorithm, *argv], f"rlhflab {algorithm}", RLConfig.__doc__)
        run_dir = workflow.policy_optimization(cfg)
        print(f"policy saved to {run_dir / 'policy'}; metrics in {run_dir / 'metrics.jsonl'}")

    return run


def _eval(argv):
    from rlhflab import workflow
    from rlhflab.config import parse_config
    from rlhflab.report import format_evaluations

    cfg = parse_config(workflow.EvalConfig, argv, "rlhflab eval", workflow.EvalConfig.__doc__)
    print(format_evaluations({cfg.policy: workflow.evaluate(cfg)}))


def _demo(argv):
    from rlhflab.config import parse_config
    from rlhflab.demo import DemoConfig, run_demo

    cfg = parse_config(DemoConfig, argv, "rlhflab demo", DemoConfig.__doc__)
    run_demo(cfg)


def _toy(argv):
    from rlhflab.toy.cli import main as toy_main

    return toy_main(list(argv))


def _preference_command(loss: str) -> Callable:
    def run(argv):
        from rlhflab.config import parse_config
        from rlhflab.train.preference import PreferenceConfig, preference_optimization

        cfg = parse_config(PreferenceConfig, ["--loss", loss, *argv], f"rlhflab {loss}", PreferenceConfig.__doc__)
        run_dir = preference_optimization(cfg)
        print(f"policy saved to {run_dir / 'policy'}; metrics in {run_dir / 'metrics.jsonl'}")

    return run


def _ranking_command(loss: str) -> Callable:
    def run(argv):
        from rlhflab.config import parse_config
        from rlhflab.train.preference import RankingConfig, ranking_optimization

        cfg = parse_config(RankingConfig, ["--loss", loss, *argv], f"rlhflab {loss}", RankingConfig.__doc__)
        run_dir = ranking_optimization(cfg)
        print(f"policy saved to {run_dir / 'policy'}; metrics in {run_dir / 'metrics.jsonl'}")

    return run


def _raft(argv):
    from rlhflab.config import parse_config
    from rlhflab.train.rejection import RAFTConfig, raft

    cfg = parse_config(RAFTConfig, argv, "rlhflab raft", RAFTConfig.__doc__)
    run_dir = raft(cfg)
    print(f"policy saved to {run_dir / 'policy'}; per-round samples and rewards in {run_dir / 'rounds.jsonl'}")


def _rso(argv):
    from rlhflab.config import parse_config
    from rlhflab.train.rejection import RSOConfig, rso

    cfg = parse_config(RSOConfig, argv, "rlhflab rso", RSOConfig.__doc__)
    run_dir = rso(cfg)
    print(f"policy saved to {run_dir / 'policy'}; sampled pairs in {run_dir / 'rso_preferences.jsonl'}")


def _sft_positive(argv):
    from rlhflab.config import parse_config
    from rlhflab.train.rejection import PositiveSFTConfig, positive_sft

    cfg = parse_config(PositiveSFTConfig, argv, "rlhflab sft-positive", PositiveSFTConfig.__doc__)
    run_dir = positive_sft(cfg)
    print(f"policy saved to {run_dir / 'policy'}")


def _bon(argv):
    import json

    from rlhflab.config import parse_config
    from rlhflab.decoding import BestOfNConfig, run_best_of_n

    cfg = parse_config(BestOfNConfig, argv, "rlhflab bon", BestOfNConfig.__doc__)
    summary = run_best_of_n(cfg)
    print(json.dumps(summary, indent=2))
    print(f"chosen completions written to {cfg.output}")


def _rad(argv):
    import json

    from rlhflab.config import parse_config
    from rlhflab.decoding import RADConfig, run_rad

    cfg = parse_config(RADConfig, argv, "rlhflab rad", RADConfig.__doc__)
    summary = run_rad(cfg)
    print(json.dumps(summary, indent=2))
    print(f"completions written to {cfg.output}")


def _compare(argv):
    from rlhflab.compare import CompareConfig, run_compare
    from rlhflab.config import parse_config

    cfg = parse_config(CompareConfig, argv, "rlhflab compare", CompareConfig.__doc__)
    run_dir = run_compare(cfg)
    print(f"table in {run_dir / 'comparison.md'} and {run_dir / 'comparison.json'}; plot {run_dir / 'comparison.png'}")


COMMANDS: dict[str, tuple[Callable, str]] = {
    "demo": (_demo, "the whole workflow on the offline defaults, ending in a run report"),
    "sample": (_sample, "sample completions from a policy"),
    "annotate": (_annotate, "label samples with simulated annotators driven by an oracle R*"),
    "sft": (_sft, "supervised fine-tuning on demonstrations"),
    "reward": (_reward, "train a reward model (Bradley-Terry, Plackett-Luce, regression)"),
    "ppo": (_policy_command("ppo"), "PPO with a KL penalty (Eq. 16)"),
    "a2c": (_policy_command("a2c"), "advantage actor-critic with a KL penalty"),
    "reinforce": (_policy_command("reinforce"), "REINFORCE / vanilla policy gradient (Section 6.3)"),
    "rloo": (_policy_command("rloo"), "REINFORCE leave-one-out"),
    "grpo": (_policy_command("grpo"), "group relative policy optimisation"),
    "dpo": (_preference_command("dpo"), "direct preference optimisation (also cdpo, rdpo: --loss)"),
    "ipo": (_preference_command("ipo"), "identity preference optimisation"),
    "slic": (_preference_command("slic"), "SLiC-HF: rank-calibration hinge plus regularisation"),
    "rrhf": (_ranking_command("rrhf"), "RRHF: ranking hinge over k responses plus SFT on the best"),
    "pro": (_ranking_command("pro"), "PRO: Plackett-Luce over k responses plus SFT on the best"),
    "raft": (_raft, "rejection-sampling fine-tuning (RAFT / ReST / expert iteration)"),
    "rso": (_rso, "statistical rejection sampling toward pi*, then DPO or SLiC"),
    "sft-positive": (_sft_positive, "SFT on the chosen responses of a preference file (baseline)"),
    "bon": (_bon, "best-of-n sampling with a reward source, with its KL bound and estimate"),
    "rad": (_rad, "reward-augmented decoding (top-k reweighted by a reward source)"),
    "compare": (_compare, "RL and its alternatives from one pool of feedback: J, J_hat, KL table and plot"),
    "eval": (_eval, "J (oracle), J_hat (reward model), KL, length, diversity; seen vs unseen prompts"),
    "toy": (_toy, "the exact toy lab (closed-form optimum, coverage, over-optimisation, ...)"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {name:<{width}}  {help}" for name, (_, help) in COMMANDS.items()]
    return "usage: rlhflab COMMAND [--config FILE.yaml] [--option value ...]\n\ncommands:\n" + "\n".join(lines) + \
        "\n\nrlhflab COMMAND --help lists a command's options."


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
    try:
        result = COMMANDS[command][0](rest)
    except RlhflabError as exc:
        print(f"rlhflab {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhflab {command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
