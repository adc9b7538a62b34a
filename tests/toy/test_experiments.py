"""The experiment registry, each experiment's files and headline, the report, and ``rlhflab toy``."""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from rlhflab.cli import main
from rlhflab.commands.toy import CHOICES, ToyConfig
from rlhflab.toy.experiments import annotators, beta, report, trainers
from rlhflab.toy.experiments.registry import EXPERIMENTS

# Reduced settings of the experiments that run in seconds (the others have their own test files).
QUICK = {
    "coverage": dict(context_coverages=(0.25, 1.0), output_coverages=(0.1, 1.0), repeats=2),
    "beta": dict(kl_coefs=[0.01, 1.0]),
    "overopt": dict(max_n=16, feedback_budgets=(16,)),
    "sft-vs-pg": dict(budgets=(32, 64), repeats=2, learning_rates=(0.1,)),
    "annotators": {},
}
# A number of each result that its headline must show, as the headline formats it.
SHOWN = {
    "coverage": lambda r: f"at κ=ρ=1: {r['cells'][-1]['performance_gap_total']:.3f}",
    "beta": lambda r: f"best J(π_rlhf)={r['best_J_rlhf']:.3f}",
    "overopt": lambda r: f"R²={r['curves_by_pairs_per_context']['16']['fits']['bon_gold']['r2']:.3f}",
    "sft-vs-pg": lambda r: f"(J_ref {r['J_ref']:.3f}, max {r['J_max']:.3f})",
    "annotators": lambda r: f"base: {r['rows'][0]['fraction_of_own_gain']:.0%} of own gain",
}


def test_every_registered_experiment_has_a_run_and_a_headline_and_the_cli_offers_exactly_them(capsys):
    assert list(CHOICES) == ["export", *EXPERIMENTS, "report"]
    for name, module in EXPERIMENTS.items():
        assert list(inspect.signature(module.run).parameters)[:2] == ["run_dir", "seed"], name
        assert list(inspect.signature(module.headline).parameters) == ["result"], name
    experiment = {f.name: f for f in dataclasses.fields(ToyConfig)}["experiment"]
    assert experiment.metadata["choices"] == list(CHOICES)
    with pytest.raises(SystemExit) as exit_:
        main(["toy", "--help"])
    assert exit_.value.code == 0
    assert "{" + ",".join(CHOICES) + "}" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(QUICK))
def test_each_experiment_writes_its_json_and_png_and_a_headline_of_its_numbers(default_lab, tmp_path, name):
    res = EXPERIMENTS[name].run(tmp_path, seed=0, **QUICK[name])
    stem = res["experiment"]  # the files keep the experiment's own name (beta → beta_tradeoff.json)
    assert set(json.loads((tmp_path / f"{stem}.json").read_text())) == set(res)
    assert (tmp_path / f"{stem}.png").stat().st_size > 0
    line = EXPERIMENTS[name].headline(res)
    assert SHOWN[name](res) in line and "nan" not in line


def test_trainers_headline_and_table_show_every_trainers_gap_and_its_bar():
    rows = [
        {"trainer": "ppo", "algorithm": "ppo", "gap_closed": 0.991, "J": 1.0, "KL": 0.5, "wall_time_s": 12.5},
        {"trainer": "dpo", "algorithm": "dpo", "gap_closed": 0.96, "J": 0.9, "KL": 0.4, "wall_time_s": 3.0},
        {"trainer": "grpo_dr", "algorithm": "grpo", "gap_closed": 0.7, "J": 0.8, "KL": 0.9, "wall_time_s": 4.0},
    ]
    result = {"kl_coef": 0.25, "J_opt": 1.1, "KL_opt": 0.6, "rows": rows}
    assert trainers.headline(result) == "gap closed: ppo 0.991 (12.5 s), dpo 0.960 (3.0 s), grpo_dr 0.700 (4.0 s)"
    table = trainers.table_markdown(result)
    assert table.startswith("β = 0.25: π* has J = 1.1000, KL = 0.6000")
    for row in ("| ppo | 0.9910 | ≥ 0.98 |", "| dpo | 0.9600 | ≥ 0.95 |", "| grpo_dr | 0.7000 | reported |"):
        assert row in table


def test_report_runs_every_registered_experiment_into_its_folder_with_summary_and_html(
    default_lab, tmp_path, monkeypatch
):
    """The registry decides what the report runs (two quick experiments here, for time)."""
    monkeypatch.setattr(report, "EXPERIMENTS", {"beta": beta, "annotators": annotators})
    res = report.run_toy_report(tmp_path, seed=0)
    assert list(res["results"]) == ["beta", "annotators"]
    assert json.loads((tmp_path / "instance.json").read_text())["format"].startswith("rlhflab-toy-instance")
    assert (tmp_path / "beta" / "beta_tradeoff.png").is_file() and (
        tmp_path / "annotators" / "annotators.png"
    ).is_file()
    summary = (tmp_path / "summary.md").read_text().splitlines()
    assert summary[:4] == [
        "# Toy lab report (seed 0)",
        "",
        "| experiment | headline | wall time (s) |",
        "|---|---|---|",
    ]
    for line, (name, module) in zip(summary[4:], (("beta", beta), ("annotators", annotators))):
        assert line == f"| {name} | {module.headline(res['results'][name])} | {res['results'][name]['wall_time_s']} |"
    assert "annotators" in (tmp_path / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# `rlhflab toy` through the config parser.


def test_toy_command_takes_the_experiment_first_and_output_dir_with_either_spelling(default_lab, tmp_path, capsys):
    assert main(["toy", "export", "--output-dir", str(tmp_path / "a"), "--seed", "0"]) == 0
    assert f"wrote {tmp_path / 'a' / 'instance.json'} (16 contexts × 85 outputs, J(π_ref) = " in capsys.readouterr().out
    assert main(["toy", "--experiment", "export", "--output_dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "instance.json").read_text() == (tmp_path / "b" / "instance.json").read_text()
    assert ToyConfig(experiment="beta", seed=2).run_dir == Path("runs") / "toy-beta-seed2"


def test_toy_command_reads_a_yaml_config_and_flags_win(default_lab, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(f"experiment: export\noutput_dir: {tmp_path / 'from-file'}\nseed: 0\n")
    assert main(["toy", "--config", str(config)]) == 0
    assert (tmp_path / "from-file" / "instance.json").is_file()
    assert main(["toy", "--config", str(config), "--output_dir", str(tmp_path / "from-flag")]) == 0
    assert (tmp_path / "from-flag" / "instance.json").is_file()


def test_toy_command_without_a_known_experiment_is_a_one_line_error(tmp_path, capsys):
    assert main(["toy"]) == 2
    assert "no experiment given; choose one of export, coverage," in capsys.readouterr().err
    config = tmp_path / "toy.yaml"
    config.write_text("experiment: nonsense\n")
    assert main(["toy", "--config", str(config)]) == 2
    assert "unknown experiment 'nonsense'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["toy", "nonsense"])
    assert exit_.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err
