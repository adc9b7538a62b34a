"""Turning prompts and completions into the text a model reads (chat templates come from the tokenizer)."""

from __future__ import annotations

from rlhflab.errors import ConfigError, DataError

# No tokenizer's tokens average 50 characters, so a text of more than 50 characters per token of
# room cannot fit, whatever its tokens: refused (or cut) before the tokenizer spends seconds on it.
MAX_CHARS_PER_TOKEN = 50


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_template_choice(use_chat_template) -> bool | str:
    """``use_chat_template`` as one of ``"auto"``, True, False (also accepting "true"/"false", as a
    flag or YAML value may spell them); ConfigError for anything else."""
    if isinstance(use_chat_template, bool):
        return use_chat_template
    if isinstance(use_chat_template, str) and use_chat_template.lower() in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[use_chat_template.lower()]
    raise ConfigError(f"use_chat_template must be 'auto', true or false, got {use_chat_template!r}")


def _plain_user_turn(messages) -> str | None:
    """The text of a prompt that is one user turn (its faithful plain-text form); None otherwise."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return None


def _template(tokenizer, what: str) -> None:
    if not _has_chat_template(tokenizer):
        raise ConfigError(f"{what} needs a tokenizer with a chat_template; {type(tokenizer).__name__} has none")


def render_prompt(prompt, tokenizer, use_chat_template="auto") -> str:
    """The context ``c`` as model input text, ending where the reply should begin.

    The rule, one for every command (TRL's: standard text stays text, conversational data gets the
    tokenizer's chat template, https://huggingface.co/docs/trl/dataset_formats):

    - ``"auto"`` (the default): a string prompt is left as it is; a message list goes through the
      chat template with the generation prompt.
    - ``True``: a string prompt too is wrapped as one user message and templated (the input an
      instruct model was tuned on); a tokenizer without a template keeps it plain.
    - ``False``: a message list that is one user turn is its text; any other message list still
      goes through the template, since a chat of several turns has no faithful plain-text form.

    A message list with no template to render it is a ConfigError.
    """
    choice = chat_template_choice(use_chat_template)
    if isinstance(prompt, str):
        if not (choice is True and _has_chat_template(tokenizer)):
            return prompt
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
        if choice is False and _plain_user_turn(messages) is not None:
            return _plain_user_turn(messages)
        _template(tokenizer, "a chat (message-list) prompt")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(
    tokenizer,
    prompts,
    use_chat_template="auto",
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
    """A plain-text view of the output ``o`` for oracles: a string as it is, a message list as its
    assistant content(s). Not what a policy is trained on (that is :func:`encode_prompt_completion`,
    which keeps every turn of a continuation) nor what a reward model reads (:func:`completion_text`).

    No EOS token is appended: the trainer adds it, so it is added exactly once.
    """
    if isinstance(completion, str):
        return completion
    return "\n".join(m["content"] for m in completion if m.get("role") == "assistant")


def completion_text(completion) -> str:
    """The plain text a reward model R_phi reads as the output ``o``, and is trained on: a reply as it
    is; a continuation of several turns (assistant, user, assistant) *whole*, every turn's text in
    order, joined by newlines as :func:`prompt_text` joins a context's turns — never only its
    assistant turns glued together, which would drop what the user said between them."""
    reply = _single_reply(completion)
    return reply if reply is not None else prompt_text(completion)


def _single_reply(completion) -> str | None:
    """The text of a completion that is one reply (a string or one assistant message); None for a
    continuation of several turns."""
    if isinstance(completion, str):
        return completion
    if len(completion) == 1 and completion[0].get("role") == "assistant":
        return completion[0]["content"]
    return None


def encode_prompt_completion(
    tokenizer, prompt, completion, use_chat_template="auto", source: str = "<data>", line: int | None = None
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids + EOS) of one training example, the completion's ids being what
    the loss is taken over.

    A completion that is one reply is the prompt's :func:`render_prompt` text followed by the reply's
    text (under ``"auto"`` a message-list completion makes the example conversational, so a string
    prompt beside it is templated as one user turn). A continuation of several turns (e.g. assistant,
    user, assistant) is rendered *whole* by the chat template, prompt turns and continuation turns
    together, and split where the prompt's rendering (with the generation prompt) ends: every turn
    of the continuation is kept, in the template's markup, up to the end of its last assistant
    message, then EOS (TRL trains on the whole completion of a prompt-completion row likewise).
    A continuation has no plain-text form, so it is templated whatever ``use_chat_template`` says.
    ``prompt=None`` is a whole text (a ``text`` row): no template, the loss over every token but the first.
    """
    if prompt is None:  # a whole text (TRL's language-modelling type): the first token is given, the rest learnt
        ids = tokenizer(completion).input_ids  # with the tokenizer's own special tokens (BOS), as TRL tokenises text
        if not ids:
            raise DataError(source, line, "text", "renders to no tokens")
        return ids[:1], ids[1:] + [tokenizer.eos_token_id]
    choice = chat_template_choice(use_chat_template)
    reply = _single_reply(completion)
    if reply is not None:
        if choice == "auto" and isinstance(prompt, str) and not isinstance(completion, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt_ids = tokenizer(render_prompt(prompt, tokenizer, choice), add_special_tokens=False).input_ids
        return prompt_ids, _ids(tokenizer, reply)
    _template(tokenizer, "a completion of several turns")
    head_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    turns = list(completion)
    if turns[-1]["role"] != "assistant":
        raise DataError(
            source, line, "completion", f"a continuation must end with an assistant turn, not {turns[-1]['role']!r}"
        )
    opens_with_reply = turns[0]["role"] == "assistant"
    head = tokenizer.apply_chat_template(head_messages, add_generation_prompt=opens_with_reply, tokenize=False)
    whole = tokenizer.apply_chat_template(head_messages + turns, tokenize=False)
    last = turns[-1]["content"].strip()
    end = whole.rfind(last) + len(last) if last in whole else -1
    if not whole.startswith(head) or end <= len(head):
        raise ConfigError(
            f"{source}:{line}: the chat template does not render the prompt as a prefix of prompt + "
            "completion with the last reply verbatim, so the continuation cannot be split off"
        )
    return tokenizer(head, add_special_tokens=False).input_ids, _ids(tokenizer, whole[len(head) : end])


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def prompt_text(prompt) -> str:
    """A plain-text view of a context for oracles R*(c, o), which take strings (Section 4.1)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt)
