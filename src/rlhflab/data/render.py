"""Turning prompts and completions into the text a model reads (chat templates come from the tokenizer)."""

from __future__ import annotations

from rlhflab.errors import ConfigError


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(prompt, tokenizer, use_chat_template: bool = True) -> str:
    """The context ``c`` as model input text, ending where the reply should begin.

    A string prompt is wrapped as a single user message and passed through the tokenizer's chat
    template with the generation prompt, since that is the input an instruct model was tuned on;
    ``use_chat_template=False`` (or a tokenizer without a template) keeps it as plain text. A message
    list always goes through the chat template: there is no faithful plain-text form of a chat.
    """
    if isinstance(prompt, str):
        if not (use_chat_template and _has_chat_template(tokenizer)):
            return prompt
        messages = [{"role": "user", "content": prompt}]
    else:
        if not _has_chat_template(tokenizer):
            raise ConfigError(
                "a chat (message-list) prompt needs a tokenizer with a chat_template; "
                f"{type(tokenizer).__name__} has none"
            )
        messages = list(prompt)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(tokenizer, prompts, use_chat_template: bool = True) -> list[list[int]]:
    """Token ids of each prompt as the policy reads it (``Prompt`` records or raw prompts): the
    :func:`render_prompt` text, with no special tokens added since the chat template holds them."""
    return [tokenizer(render_prompt(getattr(p, "prompt", p), tokenizer, use_chat_template),
                      add_special_tokens=False).input_ids for p in prompts]


def render_completion(completion, tokenizer=None) -> str:
    """The output ``o`` as text: a string as it is, a message list as its assistant content(s).

    No EOS token is appended: the trainer adds it, so it is added exactly once.
    """
    if isinstance(completion, str):
        return completion
    return "\n".join(m["content"] for m in completion if m.get("role") == "assistant")


def prompt_text(prompt) -> str:
    """A plain-text view of a context for oracles R*(c, o), which take strings (Section 4.1)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt)
