"""A prompt longer than the policy's context is a one-line error naming file, line and field, in
every command that reads prompts; ``--truncate`` keeps its last tokens instead."""

from __future__ import annotations

import json

import pytest

from rlhflab.cli import main
from rlhflab.data.render import encode_prompts
from rlhflab.errors import DataError

HUGE = "x" * 1_000_000  # far beyond tiny-policy's 1024 positions, even at 50 characters a token
LONG = "y" * 2_000  # 2,000 tokens of a character-level tokenizer: over the context, under the character guard

# Options each command needs besides the policy and the prompts; the output it would write.
COMMANDS = {
    "sample": ["--num_samples", "1"],
    "ppo": ["--reward", "keyword:e", "--num_iterations", "1", "--prompts_per_iteration", "2"],
    "a2c": ["--reward", "keyword:e", "--num_iterations", "1", "--prompts_per_iteration", "2"],
    "reinforce": ["--reward", "keyword:e", "--num_iterations", "1", "--prompts_per_iteration", "2"],
    "rloo": [
        "--reward",
        "keyword:e",
        "--num_iterations",
        "1",
        "--prompts_per_iteration",
        "2",
        "--samples_per_prompt",
        "2",
    ],
    "grpo": [
        "--reward",
        "keyword:e",
        "--num_iterations",
        "1",
        "--prompts_per_iteration",
        "2",
        "--samples_per_prompt",
        "2",
    ],
    "bon": ["--reward", "keyword:e", "--n", "2"],
    "rad": ["--reward", "keyword:e", "--top_k", "2"],
    "eval": ["--oracle", "keyword:e"],
    "raft": ["--reward", "keyword:e", "--num_rounds", "1", "--samples_per_prompt", "2"],
    "rso": ["--reward", "keyword:e", "--num_candidates", "2", "--num_accepted", "2"],
}
WRITES_FILE = {"sample", "bon", "rad", "eval"}


def prompts_file(tmp_path, long_prompt: str):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "hello"}, {"prompt": "world"}, {"prompt": long_prompt}, {"prompt": "again"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_over_long_prompt_is_a_one_line_error_naming_file_line_and_field(command, tmp_path, capsys, model_cache):
    prompts = prompts_file(tmp_path, HUGE)
    out = tmp_path / "out"
    output = ["--output", str(out)] if command in WRITES_FILE else ["--output_dir", str(out)]
    code = main(
        [
            command,
            "--policy",
            "tiny-policy",
            "--prompts",
            str(prompts),
            "--max_new_tokens",
            "4",
            *output,
            *COMMANDS[command],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    # One line of error after whatever progress bars loading the policy drew; no traceback.
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1].split("\r")[-1]
    assert [line for line in err.splitlines() if "error" in line] == [message]
    assert message.startswith(f"rlhflab {command}: error: {prompts}:3: field 'prompt': 1,000,000 characters")
    assert message.endswith("pass --truncate to keep the last 1,020 tokens")
    assert not out.exists()


def test_the_token_count_is_checked_below_the_character_guard(char_tokenizer):
    with pytest.raises(DataError) as info:
        encode_prompts(char_tokenizer, ["short", LONG], use_chat_template=False, context_length=1024, max_new_tokens=32)
    assert str(info.value) == (
        "<prompts>:2: field 'prompt': 2,000 tokens, longer than the policy's context "
        "(1,024 - max_new_tokens 32); pass --truncate to keep the last 992 tokens"
    )
    ids = encode_prompts(
        char_tokenizer, ["short", LONG], use_chat_template=False, context_length=1024, max_new_tokens=32, truncate=True
    )
    assert len(ids[1]) == 992 and ids[1] == char_tokenizer(LONG, add_special_tokens=False).input_ids[-992:]


def test_truncate_keeps_the_last_tokens_of_an_over_long_prompt(tmp_path, model_cache):
    prompts = prompts_file(tmp_path, HUGE)
    out = tmp_path / "samples.jsonl"
    assert (
        main(
            [
                "sample",
                "--policy",
                "tiny-policy",
                "--prompts",
                str(prompts),
                "--max_new_tokens",
                "4",
                "--num_samples",
                "1",
                "--truncate",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["hello", "world", HUGE, "again"]
