"""Every training command, given a TRL dataset type it cannot use, stops in one line naming the type
and the command that takes it (before any model is loaded); given a type it can use with extra
columns, it trains and names the columns it left unused in one line."""

import json

import pytest

from rlhflab.cli import main

ROWS = {
    "prompt-completion": {"prompt": "The sky is", "completion": " blue."},
    "preference": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "unpaired preference": {"prompt": "The sky is", "completion": " blue.", "label": True},
    "stepwise supervision": {"prompt": "2+2?", "completions": ["2+2 is 4.", "So 4."], "labels": [True, True]},
    "text": {"text": "The sky is blue."},
}


def _file(tmp_path, rows) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


REFUSED = [
    (["sft"], "unpaired preference", "`rlhflab kto` takes it"),
    (["sft"], "preference", "dpo, ipo, slic"),
    (["sft"], "stepwise supervision", "no command takes it yet"),
    (["dpo"], "text", "`rlhflab sft` takes it"),
    (["reward", "--feedback", "rating"], "text", "`rlhflab sft` takes it"),
    (["dpo"], "unpaired preference", "`rlhflab kto` takes it"),
    (["dpo"], "stepwise supervision", "no command takes it yet"),
    (["dpo"], "prompt-completion", "`rlhflab sft` takes it"),
    (["ipo"], "unpaired preference", "`rlhflab kto` takes it"),
    (["slic"], "stepwise supervision", "no command takes it yet"),
    (["kto"], "prompt-completion", "`rlhflab sft` takes it"),
    (["kto"], "stepwise supervision", "no command takes it yet"),
    (["rrhf"], "stepwise supervision", "no command takes it yet"),
    (["pro"], "unpaired preference", "`rlhflab kto` takes it"),
    (["sft-positive"], "unpaired preference", "`rlhflab kto` takes it"),
    (["reward", "--feedback", "preference"], "unpaired preference", "`rlhflab kto` takes it"),
    (["reward", "--feedback", "ranking"], "stepwise supervision", "no command takes it yet"),
    (["reward", "--feedback", "rating"], "preference", "dpo, ipo, slic"),
]


@pytest.mark.parametrize(("command", "trl_type", "taker"), REFUSED, ids=[f"{c[0]}-{t}" for c, t, _ in REFUSED])
def test_a_type_the_command_cannot_use_is_one_line_naming_the_type_and_taker(
    tmp_path, capsys, command, trl_type, taker
):
    data = _file(tmp_path, [ROWS[trl_type]] * 4)
    model = ["--model", "tiny-reward"] if command[0] == "reward" else ["--policy", "tiny-policy"]
    assert main([*command, *model, "--data", data, "--output_dir", str(tmp_path / "run")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    name = "language-modeling" if trl_type == "text" else trl_type
    assert f"{data}:1: rows are TRL's" in err[0] and name in err[0] and taker in err[0], err[0]
    assert not (tmp_path / "run").exists()


USABLE = [
    (["sft"], "prompt-completion"),
    (["sft"], "text"),
    (["dpo"], "preference"),
    (["kto"], "unpaired preference"),
    (["kto"], "preference"),
    (["rrhf"], "preference"),
    (["sft-positive"], "preference"),
    (["reward", "--feedback", "preference"], "preference"),
]


@pytest.mark.parametrize(("command", "trl_type"), USABLE, ids=[f"{c[0]}-{t}" for c, t in USABLE])
def test_columns_the_command_does_not_use_are_named_in_one_line(tmp_path, capsys, model_cache, command, trl_type):
    rows = [{**ROWS[trl_type], "source": "web", "id": i} for i in range(4)]
    if trl_type == "unpaired preference":
        rows = [{**r, "label": i % 2 == 0} for i, r in enumerate(rows)]
    data = _file(tmp_path, rows)
    model = ["--model", "tiny-reward"] if command[0] == "reward" else ["--policy", "tiny-policy"]
    argv = [*command, *model, "--data", data, "--output_dir", str(tmp_path / "run"), "--max_steps", "1"]
    assert main([*argv, "--batch_size", "2", "--no_progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "columns not used" in line]
    assert len(notes) == 1 and notes[0].endswith("id, source"), notes


def test_format_names_every_public_schema_in_its_help():
    from rlhflab.config import data_format_option
    from rlhflab.data import SCHEMAS

    help_text = data_format_option().metadata["help"]
    assert all(name in help_text for name in SCHEMAS)


HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."}


def test_format_chooses_the_schema_for_every_training_command(tmp_path, capsys, model_cache):
    data = _file(tmp_path, [HH] * 4)
    argv = ["dpo", "--policy", "tiny-policy", "--data", data, "--format", "hh-rlhf", "--max_steps", "1"]
    assert main([*argv, "--batch_size", "2", "--no_progress", "--output_dir", str(tmp_path / "run")]) == 0
    assert f"{data}: read as hh-rlhf rows (as asked) for preference records" in capsys.readouterr().err
    assert main(["kto", "--policy", "tiny-policy", "--data", data, "--format", "nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nonsense" in err[0]
