"""One rule for the chat template (standard text stays text, conversational data is templated) and
multi-turn continuations tokenised as the template renders them, whole."""

import pytest

from rlhflab.data import chat_template_choice, encode_prompt_completion, encode_prompts, load_prompt_set, render_prompt
from rlhflab.data.records import Preference
from rlhflab.errors import ConfigError
from rlhflab.train.offline import SFTConfig, tokenize_demonstrations
from rlhflab.train.preference import tokenize_pairs

USER = [{"role": "user", "content": "Plan a picnic."}]
MULTI_TURN = [
    {"role": "assistant", "content": "Where would you like it?"},
    {"role": "user", "content": "By the lake."},
    {"role": "assistant", "content": "Bring a blanket and sandwiches."},
]


def continuation_as_templated(tokenizer, prompt, completion):
    """The template's rendering of prompt + completion after the prompt's (with generation prompt),
    up to the end of the last reply, where the tokenizer's EOS (the template's end of turn) follows."""
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    whole = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    assert whole.startswith(head)
    return whole[len(head) :].removesuffix("\n").removesuffix(tokenizer.eos_token)


@pytest.mark.parametrize(
    "value, choice", [("auto", "auto"), (True, True), (False, False), ("TRUE", True), ("false", False)]
)
def test_use_chat_template_is_a_tri_state_accepting_bools_and_auto(value, choice):
    assert chat_template_choice(value) == choice


def test_an_unknown_use_chat_template_value_is_a_config_error():
    with pytest.raises(ConfigError, match="'auto', true or false"):
        chat_template_choice("yes")


def test_under_auto_standard_text_stays_text_and_conversational_prompts_are_templated(char_tokenizer):
    assert render_prompt("The sky is", char_tokenizer) == "The sky is"
    assert render_prompt(USER, char_tokenizer) == "<|im_start|>user\nPlan a picnic.<|im_end|>\n<|im_start|>assistant\n"


def test_forcing_false_renders_a_one_user_turn_prompt_as_its_text(char_tokenizer):
    assert render_prompt(USER, char_tokenizer, use_chat_template=False) == "Plan a picnic."


def test_a_shipped_prompt_under_auto_renders_to_the_ids_of_the_template_as_before(char_tokenizer):
    # Before the rule the shipped prompts were strings, rendered with the template by default
    # (use_chat_template=True); the demo's numbers rest on those ids staying the same.
    shipped = load_prompt_set("train")[0]
    text = shipped.prompt[0]["content"]
    before = char_tokenizer(
        char_tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
    ).input_ids
    assert encode_prompts(char_tokenizer, [shipped], "auto") == [before]
    assert encode_prompts(char_tokenizer, [shipped], True) == [before]
    assert encode_prompts(char_tokenizer, [text], True) == [before]
    # and use_chat_template=False keeps them plain text, as it did
    assert encode_prompts(char_tokenizer, [shipped], False) == [
        char_tokenizer(text, add_special_tokens=False).input_ids
    ]


def test_a_multi_turn_completion_is_tokenised_as_the_template_renders_the_whole_continuation(char_tokenizer):
    prompt_ids, completion_ids = encode_prompt_completion(char_tokenizer, USER, MULTI_TURN)
    assert char_tokenizer.decode(prompt_ids) == render_prompt(USER, char_tokenizer)
    assert completion_ids[-1] == char_tokenizer.eos_token_id
    text = char_tokenizer.decode(completion_ids[:-1])
    assert text == continuation_as_templated(char_tokenizer, USER, MULTI_TURN)
    assert "<|im_start|>user\nBy the lake.<|im_end|>" in text  # the user turn is kept, templated


def test_sft_and_dpo_tokenise_a_multi_turn_chosen_whole(char_tokenizer):
    # The silent misread this guards: the two assistant turns glued with "\n", the user turn dropped.
    config = SFTConfig(max_length=512)
    [(_, demo)] = tokenize_demonstrations([USER], [MULTI_TURN], char_tokenizer, config, use_chat_template="auto")
    rejected = [{"role": "assistant", "content": "No."}]
    [((_, chosen), (_, other))] = tokenize_pairs([Preference(USER, MULTI_TURN, rejected)], char_tokenizer, config)
    expected = continuation_as_templated(char_tokenizer, USER, MULTI_TURN)
    assert char_tokenizer.decode(demo[:-1]) == expected == char_tokenizer.decode(chosen[:-1])
    assert char_tokenizer.decode(other) == "No.<|im_end|>"


def test_a_one_reply_completion_tokenises_as_prompt_rendering_plus_reply_plus_eos(char_tokenizer):
    reply = [{"role": "assistant", "content": "Bring cake."}]
    prompt_ids, completion_ids = encode_prompt_completion(char_tokenizer, USER, reply)
    assert prompt_ids == char_tokenizer(render_prompt(USER, char_tokenizer), add_special_tokens=False).input_ids
    assert completion_ids == char_tokenizer("Bring cake.", add_special_tokens=False).input_ids + [
        char_tokenizer.eos_token_id
    ]
    # a string prompt beside a conversational completion makes the example conversational
    assert encode_prompt_completion(char_tokenizer, "Plan a picnic.", reply) == (prompt_ids, completion_ids)


def test_standard_prompt_and_completion_stay_text_under_auto(char_tokenizer):
    prompt_ids, completion_ids = encode_prompt_completion(char_tokenizer, "The sky is", " blue.")
    assert char_tokenizer.decode(prompt_ids) == "The sky is"
    assert char_tokenizer.decode(completion_ids) == " blue.<|im_end|>"
    forced, _ = encode_prompt_completion(char_tokenizer, "The sky is", " blue.", use_chat_template=True)
    assert char_tokenizer.decode(forced).startswith("<|im_start|>user\nThe sky is")


def test_a_multi_turn_completion_without_a_chat_template_is_a_config_error(char_tokenizer):
    char_tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="several turns needs a tokenizer with a chat_template"):
        encode_prompt_completion(char_tokenizer, "Plan a picnic.", MULTI_TURN)


def test_a_reward_model_reads_a_multi_turn_continuation_whole():
    from rlhflab.data import completion_text

    assert completion_text(MULTI_TURN) == "\n".join(m["content"] for m in MULTI_TURN)
    assert completion_text([{"role": "assistant", "content": "Bring cake."}]) == "Bring cake."
    assert completion_text(" blue.") == " blue."


def test_the_reward_model_report_scores_every_turn_of_a_multi_turn_chosen():
    from rlhflab.evaluation.metrics import reward_model_report
    from rlhflab.rewards.base import RewardSource

    seen = []

    def record(contexts, outputs):
        seen.extend(outputs)
        return [float(len(o)) for o in outputs]

    rejected = [{"role": "assistant", "content": "No."}]
    reward_model_report(RewardSource("recorder", record), [Preference(USER, MULTI_TURN, rejected)])
    user_turns = [m["content"] for m in MULTI_TURN if m["role"] == "user"]
    assert user_turns and all(turn in seen[0] for turn in user_turns)


def test_a_text_row_is_trained_on_whole_every_token_after_the_first(char_tokenizer):
    from rlhflab.data.records import Demonstration

    demo = Demonstration.from_dict({"text": "The sky is blue."}, "lm.jsonl", 1)
    assert demo.prompt is None and demo.to_dict() == {"text": "The sky is blue."}
    ids = char_tokenizer("The sky is blue.").input_ids
    for template in ("auto", True, False):  # a text has no turns: never templated
        [(prompt, completion)] = tokenize_demonstrations(
            [demo.prompt], [demo.completion], char_tokenizer, SFTConfig(max_length=64), use_chat_template=template
        )
        assert prompt == ids[:1] and completion == ids[1:] + [char_tokenizer.eos_token_id]
    [(prompt, completion)] = tokenize_demonstrations(
        [None], ["The sky is blue."], char_tokenizer, SFTConfig(max_length=6, truncate=True)
    )
    assert prompt + completion == ids[:6]  # truncated keeping its start, as TRL truncates text


def test_a_text_row_with_an_empty_text_names_the_field():
    from rlhflab.data.records import Demonstration
    from rlhflab.errors import DataError

    with pytest.raises(DataError, match=r"lm.jsonl:3: field 'text'"):
        Demonstration.from_dict({"text": "  "}, "lm.jsonl", 3)
