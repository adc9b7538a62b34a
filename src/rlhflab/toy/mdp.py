"""The enumerable text MDP of the toy lab (Section 3, Table 1).

States are token sequences ``[c, o_1..o_t]``, actions are tokens, an episode ends at the end token or
after ``horizon`` tokens. Everything is small enough to enumerate: with the default instance (4 content
tokens, 2-token contexts, horizon 3) there are 16 contexts and 1 + 4 + 16 + 64 = 85 outputs each, so
π(o|c), J (Eq. 12) and the KL-regularised optimum (Eq. 17) are exact sums, not estimates.

The policy is a real Hugging Face causal LM whose vocabulary is exactly these tokens, so the trainers
that run on SmolLM2 run here unchanged; ``exact_policy`` reads its full output table by batched
enumeration through ``rlhflab.sampling.rollout`` (the same log-prob code the trainers use).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import torch

from rlhflab.errors import ConfigError
from rlhflab.losses import sequence_logprob, sft_loss
from rlhflab.sampling.rollout import completion_logits, completion_logprobs, join_prompt_completion

END_TOKEN = "<eos>"
DEFAULT_TOKENS = ("a", "b", "c", "d")


@dataclass
class ToyInstance:
    """One enumerable MDP: contexts, outputs, d_C, the oracle R*, and (once pre-trained) π_ref.

    Tables are float64 tensors of shape (num_contexts, num_outputs), rows indexed like ``contexts``
    and columns like ``outputs``. An output is a tuple of tokens; it ends with ``END_TOKEN`` unless it
    reached ``horizon`` tokens, in which case it has none (generation was cut, as ``max_new_tokens`` does).
    """

    tokens: tuple[str, ...]
    horizon: int
    contexts: list[tuple[str, ...]]
    outputs: list[tuple[str, ...]]
    context_dist: torch.Tensor  # d_C, (C,)
    seen: torch.Tensor  # (C,) bool: contexts in C_rew (feedback is collected on them)
    oracle_reward: torch.Tensor  # R*(c, o), (C, O)
    pretrain_dist: torch.Tensor  # P_pre(o | c), (C, O): what π_ref is pre-trained to imitate
    reference: torch.Tensor | None = None  # π_ref(o | c), (C, O), exact table of the pre-trained model
    seed: int = 0
    notes: dict = field(default_factory=dict)

    @property
    def num_contexts(self) -> int:
        return len(self.contexts)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def require_reference(self) -> torch.Tensor:
        if self.reference is None:
            raise ConfigError("this toy instance has no π_ref table yet; run build_lab or pretrain_reference first")
        return self.reference

    def with_reference(self, reference: torch.Tensor) -> ToyInstance:
        return replace(self, reference=reference.to(torch.float64))

    def context_text(self, i: int) -> str:
        return " ".join(self.contexts[i])

    def output_text(self, j: int) -> str:
        return " ".join(self.outputs[j])


def enumerate_outputs(tokens: tuple[str, ...], horizon: int) -> list[tuple[str, ...]]:
    """Every completion a policy capped at ``horizon`` new tokens can produce: up to horizon-1 content
    tokens then the end token, or exactly ``horizon`` content tokens (cut, no end token)."""
    outs = [tuple(p) + (END_TOKEN,) for k in range(horizon) for p in itertools.product(tokens, repeat=k)]
    outs += list(itertools.product(tokens, repeat=horizon))
    return outs


def content(output: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t in output if t != END_TOKEN)


def answer_token(context: tuple[str, ...], tokens: tuple[str, ...]) -> str:
    """The token that "answers" a context: a function of *both* context tokens (an interaction a
    reward model must learn, not read off one position)."""
    idx = [tokens.index(t) for t in context]
    return tokens[(idx[0] + 2 * idx[-1] + 1) % len(tokens)]


def structured_oracle_reward(
    context: tuple[str, ...],
    output: tuple[str, ...],
    tokens: tuple[str, ...],
    answer_bonus: float = 1.0,
    bigram_bonus: float = 0.6,
    repeat_penalty: float = 0.5,
    length_cost: float = 0.15,
    answer: str | None = None,
) -> float:
    """R*(c, o) of the default instance (Section 4.1: a deterministic oracle over (context, output)).

    + answer_bonus  if the first token answers the context (context-dependent),
    + bigram_bonus  if the answer is immediately followed by the context's first token (a bigram:
                    an interaction between output tokens that depends on the context too),
    - repeat_penalty per immediate repetition (o_t = o_{t+1}),
    - length_cost   per content token (so the best output is short and complete: "ans c_1 <eos>").
    ``answer`` overrides the answer token (annotators who disagree on what answers a context).
    """
    body = content(output)
    ans = answer if answer is not None else answer_token(context, tokens)
    r = 0.0
    if body and body[0] == ans:
        r += answer_bonus
        if len(body) > 1 and body[1] == context[0]:
            r += bigram_bonus
    r -= repeat_penalty * sum(1 for x, y in zip(body, body[1:]) if x == y)
    r -= length_cost * len(body)
    return r


def _pretrain_distribution(instance_contexts, outputs, tokens, answers, generator) -> torch.Tensor:
    """P_pre(o|c): an autoregressive process with random per-context first-token preferences that
    *avoid* the answer, random bigram transitions and a constant stopping rate. It is what π_ref
    learns; the oracle prefers something else, so RLHF has work to do."""
    V = len(tokens)
    first_logits = torch.randn(len(instance_contexts), V, generator=generator, dtype=torch.float64)
    for i, ans in enumerate(answers):
        first_logits[i, tokens.index(ans)] -= 1.5
    bigram_logits = 1.2 * torch.randn(V, V, generator=generator, dtype=torch.float64)
    stop = 0.3
    first = torch.softmax(first_logits, -1)
    trans = torch.softmax(bigram_logits, -1)
    table = torch.zeros(len(instance_contexts), len(outputs), dtype=torch.float64)
    for j, o in enumerate(outputs):
        body = content(o)
        ended = o[-1] == END_TOKEN
        for i in range(len(instance_contexts)):
            if not body:
                p = stop
            else:
                p = (1 - stop) * first[i, tokens.index(body[0])]
                for x, y in zip(body, body[1:]):
                    p = p * (1 - stop) * trans[tokens.index(x), tokens.index(y)]
                if ended:
                    p = p * stop
            table[i, j] = p
    return table / table.sum(-1, keepdim=True)


def build_instance(
    seed: int = 0,
    tokens: tuple[str, ...] = DEFAULT_TOKENS,
    context_length: int = 2,
    horizon: int = 3,
    seen_fraction: float = 0.5,
) -> ToyInstance:
    """The default instance: all ``context_length``-token contexts over ``tokens``, a random (seeded)
    non-uniform d_C, half the contexts seen (C_rew), the structured oracle and P_pre above."""
    g = torch.Generator().manual_seed(seed)
    contexts = list(itertools.product(tokens, repeat=context_length))
    outputs = enumerate_outputs(tokens, horizon)
    # Log-normal weights: d_C is neither uniform nor dominated by one context.
    context_dist = torch.softmax(0.5 * torch.randn(len(contexts), generator=g, dtype=torch.float64), -1)
    order = torch.randperm(len(contexts), generator=g)
    seen = torch.zeros(len(contexts), dtype=torch.bool)
    seen[order[: max(1, round(seen_fraction * len(contexts)))]] = True
    oracle = torch.tensor(
        [[structured_oracle_reward(c, o, tokens) for o in outputs] for c in contexts], dtype=torch.float64
    )
    answers = [answer_token(c, tokens) for c in contexts]
    pretrain = _pretrain_distribution(contexts, outputs, tokens, answers, g)
    return ToyInstance(
        tokens=tuple(tokens),
        horizon=horizon,
        contexts=contexts,
        outputs=outputs,
        context_dist=context_dist,
        seen=seen,
        oracle_reward=oracle,
        pretrain_dist=pretrain,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# The policy: a tiny GPT-2 whose vocabulary is exactly the MDP's tokens.


def build_toy_tokenizer(tokens: tuple[str, ...] = DEFAULT_TOKENS):
    """A WordLevel ``PreTrainedTokenizerFast`` over ``<eos>`` + tokens, whitespace-separated. pad = eos
    so batches pad cleanly (padding is masked by position, never by id); no unknown token, so every
    vocabulary entry is a real action and π(·|s) sums to 1 over the MDP's actions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((END_TOKEN,) + tuple(tokens))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))  # not in vocab: unknown words fail loudly
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_TOKEN, pad_token=END_TOKEN)


def build_toy_policy(instance: ToyInstance, seed: int = 0, hidden_size: int = 32, num_layers: int = 2):
    """A randomly initialised GPT-2 causal LM (~30k parameters) and its tokenizer.

    GPT-2, not Llama: its *absolute* learned position embeddings let it tell positions apart on a
    prefix of one repeated token. A RoPE-only model without a start token cannot: on "x x" and
    "x x x" every attention value is the same vector, so π(·|c = x x) = π(·|c = x x, o_1 = x) is
    forced, π*_β (Eq. 17) is not representable there, and nearby prefixes ("a c" vs "a c c") are
    nearly tied, which stalls policy-gradient trainers short of the closed-form optimum.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_toy_tokenizer(instance.tokens)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model, tokenizer


def _ids(tokenizer, seq: tuple[str, ...]) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in seq]


def enumeration_batch(instance: ToyInstance, tokenizer):
    """Every (context, output) pair in one batch, context-major: row i*O + j is (c_i, o_j)."""
    prompts = [_ids(tokenizer, c) for c in instance.contexts for _ in instance.outputs]
    completions = [_ids(tokenizer, o) for _ in instance.contexts for o in instance.outputs]
    return join_prompt_completion(prompts, completions, tokenizer.pad_token_id)


def exact_policy(model, instance: ToyInstance, tokenizer=None, batch_size: int = 4096) -> torch.Tensor:
    """π(o|c) for every context and output, (C, O) float64, by enumeration: log π(o|c) is the sum of
    the completion's token log-probs (an end token counts when present; a cut output has none), so
    each row sums to 1 over ``instance.outputs``.

    The log-softmax is taken in float64 from the model's logits (in float32 each row would sum to
    1 ± 2e-7, an error that best-of-n's F^n amplifies n-fold), and each row is renormalised so the
    exact quantities downstream see a distribution to float64 rounding."""
    tokenizer = tokenizer or build_toy_tokenizer(instance.tokens)
    batch = enumeration_batch(instance, tokenizer).to(model.device)
    was_training = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for i in range(0, batch.input_ids.shape[0], batch_size):
            chunk = batch.select(slice(i, i + batch_size))
            logits = completion_logits(model, chunk)[0].double()
            picked = torch.gather(logits, -1, chunk.completion_ids.unsqueeze(-1)).squeeze(-1)
            parts.append(picked - torch.logsumexp(logits, dim=-1))
    model.train(was_training)
    seq = sequence_logprob(torch.cat(parts, dim=0), batch.completion_mask)
    table = seq.view(instance.num_contexts, instance.num_outputs).cpu()
    return torch.softmax(table, dim=-1)  # = exp(table) renormalised per row


def pretrain_reference(
    instance: ToyInstance,
    seed: int = 0,
    steps: int = 150,
    batch_size: int = 256,
    corpus_size: int = 8192,
    lr: float = 2e-2,
):
    """π_ref by MLE (Eq. 3) on a corpus of (c, o) drawn from d_C × P_pre; returns (model, tokenizer).

    The corpus is finite, so π_ref approximates P_pre without equalling it, as a real pre-trained
    model does. A few seconds on one CPU core.
    """
    model, tokenizer = build_toy_policy(instance, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ctx = torch.multinomial(instance.context_dist, corpus_size, replacement=True, generator=g)
    out = torch.multinomial(instance.pretrain_dist[ctx], 1, generator=g).squeeze(-1)
    prompts = [_ids(tokenizer, instance.contexts[i]) for i in ctx.tolist()]
    completions = [_ids(tokenizer, instance.outputs[j]) for j in out.tolist()]
    corpus = join_prompt_completion(prompts, completions, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, corpus_size, (batch_size,), generator=g)
        mb = corpus.select(rows)
        loss = sft_loss(completion_logprobs(model, mb), mb.completion_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model, tokenizer


def build_lab(seed: int = 0, steps: int = 150, **instance_kwargs):
    """An instance with its π_ref table filled in, the pre-trained model and the tokenizer."""
    instance = build_instance(seed=seed, **instance_kwargs)
    model, tokenizer = pretrain_reference(instance, seed=seed, steps=steps)
    return instance.with_reference(exact_policy(model, instance, tokenizer)), model, tokenizer


def tabular_sample(policy: torch.Tensor, context_index: torch.Tensor, generator=None) -> torch.Tensor:
    """Output indices o ~ π(·|c) for each given context index, from a (C, O) table."""
    return torch.multinomial(policy[context_index], 1, replacement=True, generator=generator).squeeze(-1)
