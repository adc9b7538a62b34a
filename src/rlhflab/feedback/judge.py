"""Model judges: a local causal LM asked which of two outputs is better (feedback from AI instead
of people, the "LLM generated feedback" of Section 7.3.2; Bai et al. 2022b in Section 7.9.2).

The judge reads a comparison template (the question, the prompt, response A, response B) and then
``Answer:``; its next-token logits for " A" and " B", softmaxed over the two, give
P_first = P(A | first, second). Judges, like people, favour a position (Section 7.3.2: "the order of
examples presented to the annotator may bias the results"), so every pair is asked in both orders:

    P(a ≻ b) = ½ [P(A | a, b) + 1 − P(A | b, a)]          (a constant lean towards A cancels)
    position bias = mean over pairs of ½ [P(A | a, b) + P(A | b, a)] − ½   (mean of P(first) − ½)

As a reward source (``judge:MODEL`` for ``--reward`` / ``--oracle``) the judge needs something to
compare a single output with: it scores R_judge(c, o) = 2·P(o ≻ o_ref | c) − 1 ∈ [−1, 1] against a
fixed neutral reference reply ``o_ref`` (:data:`JUDGE_REFERENCE`), the same for every context, so
rewards of different outputs are comparable and share the sentiment oracle's range. As a simulated
annotator (``rlhflab annotate --annotator judge:MODEL``) it labels the pairs themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rlhflab.data.records import Preference
from rlhflab.data.render import prompt_text, render_completion, render_prompt
from rlhflab.errors import ConfigError
from rlhflab.models.decoder_parts import context_length
from rlhflab.models.loading import load_policy
from rlhflab.sampling.rollout import pad_left, position_ids_from_mask

# The default task's instruction to the judge, as annotators are told what to look for (Section 7.3.2).
JUDGE_QUESTION = "Which response is the better reply to the prompt: warmer, kinder and more positive?"
JUDGE_TEMPLATE = "{question}\n\nPrompt: {context}\n\nResponse A: {first}\n\nResponse B: {second}\n\nAnswer with A or B."
ANSWER_PREFIX = "Answer:"
JUDGE_REFERENCE = "Okay."  # o_ref of the judge as a reward source: a neutral, content-free reply
JUDGE_PREFIX = "judge:"


def is_judge_spec(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(JUDGE_PREFIX)


@dataclass
class JudgeVerdicts:
    """The judge's answers on n pairs (a_i, b_i), asked in both orders; each tensor is (n,)."""

    first_ab: torch.Tensor  # P(A | a shown first, b second)
    first_ba: torch.Tensor  # P(A | b shown first, a second)

    @property
    def preference(self) -> torch.Tensor:
        """P(a ≻ b) = ½ [P(A | a, b) + 1 − P(A | b, a)]: the position-debiased preference."""
        return 0.5 * (self.first_ab + 1.0 - self.first_ba)

    @property
    def first_wins(self) -> torch.Tensor:
        """½ [P(A | a, b) + P(A | b, a)] per pair: how much the judge favours whatever comes first."""
        return 0.5 * (self.first_ab + self.first_ba)

    @property
    def position_bias(self) -> float:
        """Mean of P(first) − ½ over pairs and orders: 0 for an order-blind judge, +½ for one that
        always answers A."""
        return float(self.first_wins.mean()) - 0.5


class ModelJudge:
    """A causal LM as a pairwise judge. ``question``: the instruction of the template (one for all
    pairs, or per pair in :meth:`compare`). ``use_chat_template``: wrap the comparison as a user
    turn of the tokenizer's chat template, the answer then starting the assistant turn."""

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "judge",
        question: str = JUDGE_QUESTION,
        use_chat_template: bool = True,
        batch_size: int = 8,
    ):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.question, self.use_chat_template, self.batch_size = question, use_chat_template, batch_size

    def judge_text(self, context: str, first: str, second: str, question: str | None = None) -> str:
        """The judge's input up to (not including) the answer token."""
        body = JUDGE_TEMPLATE.format(question=question or self.question, context=context, first=first, second=second)
        rendered = render_prompt(body, self.tokenizer, self.use_chat_template)
        return rendered + (ANSWER_PREFIX if rendered != body else "\n\n" + ANSWER_PREFIX)

    def _encode(self, text: str) -> tuple[list[int], int, int]:
        """(input ids, id of the A token, id of the B token): the tokens where text + " A" and
        text + " B" first differ, so tokenizers that split " A" into two tokens work too."""
        ids_a = self.tokenizer(text + " A", add_special_tokens=False).input_ids
        ids_b = self.tokenizer(text + " B", add_special_tokens=False).input_ids
        k = 0
        while k < min(len(ids_a), len(ids_b)) and ids_a[k] == ids_b[k]:
            k += 1
        if k >= min(len(ids_a), len(ids_b)) or k == 0:
            raise ConfigError(f"judge {self.name}: its tokenizer cannot tell ' A' from ' B' after the template")
        return ids_a[:k], ids_a[k], ids_b[k]

    @torch.no_grad()
    def first_probability(
        self, contexts: Sequence, firsts: Sequence, seconds: Sequence, questions: Sequence[str] | None = None
    ) -> torch.Tensor:
        """P(A | first, second) per pair, one order only: softmax over the logits of " A" and " B"."""
        questions = questions or [None] * len(contexts)
        encoded = [
            self._encode(self.judge_text(prompt_text(c), render_completion(f), render_completion(s), q))
            for c, f, s, q in zip(contexts, firsts, seconds, questions)
        ]
        limit = context_length(self.model)
        for i, (ids, _, _) in enumerate(encoded):
            if limit is not None and len(ids) > limit:
                raise ConfigError(
                    f"judge {self.name}: pair {i} is {len(ids)} tokens, over the judge's context of {limit}"
                )
        out, was_training = [], self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            ids, mask = pad_left([e[0] for e in chunk], self.tokenizer.pad_token_id)
            logits = (
                self.model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=position_ids_from_mask(mask).to(device),
                    logits_to_keep=1,
                    use_cache=False,
                )
                .logits[:, -1]
                .float()
            )
            rows = torch.arange(len(chunk))
            a = logits[rows, torch.tensor([e[1] for e in chunk])]
            b = logits[rows, torch.tensor([e[2] for e in chunk])]
            out.append(torch.sigmoid(a - b).cpu())  # softmax over the two answer tokens
        self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def compare(self, contexts: Sequence, a: Sequence, b: Sequence, questions: Sequence[str] | None = None):
        """Both orders of every pair, in one pass over the judge: :class:`JudgeVerdicts`."""
        n = len(contexts)
        if not len(a) == len(b) == n:
            raise ConfigError(f"judge: {n} contexts, {len(a)} first and {len(b)} second outputs")
        qs = list(questions) * 2 if questions is not None else None
        p = self.first_probability(list(contexts) * 2, list(a) + list(b), list(b) + list(a), qs)
        return JudgeVerdicts(first_ab=p[:n], first_ba=p[n:])

    def reward(self, contexts: Sequence, outputs: Sequence, reference: str = JUDGE_REFERENCE) -> torch.Tensor:
        """R_judge(c, o) = 2·P(o ≻ o_ref | c) − 1 against the fixed reference reply (module docstring)."""
        return 2.0 * self.compare(contexts, outputs, [reference] * len(outputs)).preference - 1.0


def load_judge(spec: str, question: str = JUDGE_QUESTION, batch_size: int = 8) -> ModelJudge:
    """``judge:MODEL`` (or a bare MODEL): a registry name, hub id or local path of a causal LM."""
    model_name = spec[len(JUDGE_PREFIX) :] if is_judge_spec(spec) else spec
    if not model_name:
        raise ConfigError(f"judge {spec!r}: name a causal LM after 'judge:', e.g. judge:smollm2-135m-instruct")
    model, tokenizer = load_policy(model_name)
    return ModelJudge(model, tokenizer, name=f"{JUDGE_PREFIX}{model_name}", question=question, batch_size=batch_size)


def judge_oracle(model_name: str):
    """``judge:MODEL`` as an oracle R*(c, o) -> float, one output at a time (for the simulated
    annotators of ``rlhflab annotate --oracle``); the model loads on the first call."""
    loaded: list[ModelJudge] = []

    def oracle(context: str, output: str) -> float:
        if not loaded:
            loaded.append(load_judge(JUDGE_PREFIX + model_name))
        return float(loaded[0].reward([context], [output])[0])

    oracle.__name__ = f"judge_oracle[{model_name}]"
    return oracle


class JudgeAnnotator:
    """A simulated annotator whose labels come from a model judge (``compare`` as in
    :class:`~rlhflab.feedback.annotators.SimulatedAnnotator`, so ``annotate_pairs`` takes it): the
    output with P(· ≻ ·) > ½ (both orders averaged) is chosen; an exact ½ is a coin flip from ``rng``.
    Every verdict is kept in ``verdicts`` for the position-bias report."""

    def __init__(self, judge: ModelJudge):
        self.judge, self.name = judge, judge.name
        self.first_ab: list[float] = []
        self.first_ba: list[float] = []

    def compare(self, prompt, a, b, rng: np.random.Generator) -> Preference:
        verdict = self.judge.compare([prompt], [a], [b])
        self.first_ab.append(float(verdict.first_ab[0]))
        self.first_ba.append(float(verdict.first_ba[0]))
        p, u = float(verdict.preference[0]), rng.random()
        a_wins = p > 0.5 or (p == 0.5 and u < 0.5)
        chosen, rejected = (a, b) if a_wins else (b, a)
        return Preference(prompt, chosen, rejected, annotator=self.name)

    @property
    def verdicts(self) -> JudgeVerdicts:
        return JudgeVerdicts(torch.tensor(self.first_ab), torch.tensor(self.first_ba))
