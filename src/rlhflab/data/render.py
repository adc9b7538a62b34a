"""Turning prompts and completions into the text a model reads (chat templates come from the tokenizer)."""

from __future__ import annotations

from rlhflab.errors import ConfigError, DataError

# No tokenizer's tokens average 50 characters, so a text of more than 50 characters per token of
# room cannot fit, whatever its tokens: refused (or cut) before the tokenizer spends seconds on it.
MAX_CHARS_PER_TOKEN = 50


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


def encode_prompts(
    tokenizer,
    prompts,
    use_chat_template: bool = True,
    context_length: int | None = None,
    max_new_tokens: int = 0,
    truncate: bool = False,
) -> list[list[int]]:
    """Token ids of each prompt as the policy reads it (``Prompt`` records or raw prompts): the
    :func:`render_prompt` text, with no special tokens added since the chat template holds them.

    With the policy's ``context_length``, a prompt must leave room for ``max_new_tokens``: a longer
    one is a DataError naming its file, line and field, or with ``truncate`` keeps its last tokens.
    """
    room = None if context_length is None else context_length - max_new_tokens
    if room is not None and room <= 0:
        raise ConfigError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the policy's context "
            f"({context_length} tokens)"
        )
    encoded = []
    for i, p in enumerate(prompts):
        raw = getattr(p, "prompt", p)
        text = render_prompt(raw, tokenizer, use_chat_template)
        if room is not None and len(text) > MAX_CHARS_PER_TOKEN * room:
            if not truncate:
                raise _too_long(p, i, f"{len(prompt_text(raw)):,} characters", context_length, max_new_tokens)
            text = text[-MAX_CHARS_PER_TOKEN * room :]
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if room is not None and len(ids) > room:
            if not truncate:
                raise _too_long(p, i, f"{len(ids):,} tokens", context_length, max_new_tokens)
            ids = ids[-room:]
        encoded.append(ids)
    return encoded


def _too_long(prompt, index: int, size: str, context_length: int, max_new_tokens: int) -> DataError:
    source, line, field = getattr(prompt, "origin", None) or ("<prompts>", index + 1, "prompt")
    room = context_length - max_new_tokens
    return DataError(
        source,
        line,
        field,
        f"{size}, longer than the policy's context ({context_length:,} - "
        f"max_new_tokens {max_new_tokens}); pass --truncate to keep the last "
        f"{room:,} tokens",
    )


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
