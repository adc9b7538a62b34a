"""A live project: fresh items sampled from the current policy while annotators work (arena style).

``rlhflab serve --policy DIR --live_project NAME --prompts SPEC`` runs one :class:`LiveSampler` beside
the web app. It keeps ``buffer`` items of the project that no annotator has been given yet: whenever
fewer wait, it takes the next unused prompts (in an order seeded by ``seed``), has the policy sample
completions for them (the sampling function is handed in: ``rlhflab sample``'s own, so a live item is
made exactly as a sampled file's row is) and appends the items they make to the end of the queue,
each recording the policy that sampled it (``items.policy``, the ``policy`` column of every export row).

Which prompts are used is recorded in the database, as the items themselves: a prompt that an item of
the project holds is never sampled again, after a restart either, and ``Store.add_live_items``
re-checks that in the transaction that inserts, so even two samplers on one database never put one
prompt in twice. A prompt whose completions make no item (pairwise: two identical completions) is
passed over for the rest of the run.

One sampler per server: ``rlhflab serve`` starts it in its own process, which under ``--workers N``
is uvicorn's supervisor (it serves no request, so sampling there slows no worker). It runs in a
thread: sampling on the CPU never blocks the event loop (torch releases the GIL while it computes).
A failure is logged in one line and tried again after a growing pause; running out of prompts is
said once, and the sampler stops. Nothing it does can take the server down.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rlhflab.app.tasks import items_from_samples, prompt_key
from rlhflab.data import Prompt, Samples
from rlhflab.errors import ConfigError
from rlhflab.seeds import derive_seed

if TYPE_CHECKING:
    from rlhflab.app.store import Store

log = logging.getLogger(__name__)

# Seconds between looks at a full queue (one COUNT query each), and the longest pause after failures.
POLL_S = 1.0
MAX_BACKOFF_S = 60.0

# ``sample(prompts, seed)``: one Samples record per prompt, in the same order.
SampleFunction = Callable[[list[Prompt], int], list[Samples]]


def items_per_prompt(task: str, num_samples: int) -> int:
    """How many items a project of ``task`` makes from one prompt's ``num_samples`` distinct completions."""
    return len(items_from_samples(task, [Samples("p", [f"completion {i}" for i in range(num_samples)])]))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


class LiveSampler:
    """Keeps the live project ``project`` (a name or id of ``store``) topped up with ``buffer`` items that
    no annotator has been given yet, sampled by ``sample`` (``num_samples`` completions per prompt, by
    the policy named ``policy``) for ``prompts`` taken in an order seeded by ``seed``, at most
    ``batch_size`` prompts at a time. :meth:`step` does one top-up; :meth:`start` runs them in a thread."""

    def __init__(
        self,
        store: Store,
        project: int | str,
        prompts: Sequence[Prompt],
        sample: SampleFunction,
        policy: str,
        *,
        num_samples: int = 2,
        buffer: int = 8,
        seed: int = 0,
        batch_size: int = 32,
    ):
        self.store, self.sample, self.policy = store, sample, policy
        info = store.project(project)
        self.project, self.task = info.name, info.task
        self.per_prompt = items_per_prompt(info.task, num_samples)
        if self.per_prompt == 0:
            raise ConfigError(
                f"--num_samples {num_samples} makes no {info.task} item of project '{info.name}': "
                "it needs at least 2 completions per prompt"
            )
        if buffer < 1 or batch_size < 1:
            raise ConfigError(f"the live buffer and batch size must be at least 1, got {buffer} and {batch_size}")
        self.buffer, self.batch_size, self.seed = buffer, batch_size, seed
        self.prompts = list(prompts)
        self.keys = [prompt_key(p.prompt) for p in self.prompts]
        order = list(range(len(self.prompts)))
        random.Random(derive_seed(seed, "live_prompts")).shuffle(order)
        first = {}
        for i in order:  # a prompt the file repeats is one prompt
            first.setdefault(self.keys[i], i)
        self.order = [i for i in order if first[self.keys[i]] == i]
        self.passed_over: set[str] = set()  # prompts whose completions made no item, this run
        self.exhausted = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> int:
        """One top-up: how many prompts it sampled (0: the queue was full, or no prompt is left, which
        sets ``exhausted``). Raises whatever sampling or the database raises."""
        waiting, used = self.store.live_queue(self.project)
        missing = self.buffer - waiting
        if missing <= 0:
            return 0
        fresh = [i for i in self.order if self.keys[i] not in used and self.keys[i] not in self.passed_over]
        if not fresh:
            self.exhausted = True
            return 0
        take = fresh[: min(math.ceil(missing / self.per_prompt), self.batch_size)]
        # Seeded by the first prompt's index: a batch is never drawn twice, and a rerun draws it again.
        records = self.sample([self.prompts[i] for i in take], derive_seed(self.seed, "live_sample", take[0]))
        added = self.store.add_live_items(self.project, records, self.policy)
        empty = [i for i, n in zip(take, added) if n == 0]
        self.passed_over.update(self.keys[i] for i in empty)
        log.info(
            "live project '%s': %d new items from %s for %d prompts%s",
            self.project,
            sum(added),
            self.policy,
            len(take),
            f" ({len(empty)} made none: their completions were not distinct, or already in the project)"
            if empty
            else "",
        )
        return len(take)

    def run(self, stop: threading.Event) -> None:
        """Top up until ``stop`` is set or the prompts run out; a failure is logged in one line and
        tried again after a pause that doubles with each failure in a row (up to MAX_BACKOFF_S)."""
        failures = 0
        while not stop.is_set():
            try:
                sampled = self.step()
                failures = 0
            except Exception as error:  # noqa: BLE001 - whatever sampling raises, the server keeps serving
                failures += 1
                pause = min(MAX_BACKOFF_S, POLL_S * 2**failures)
                log.warning(
                    "live project '%s': sampling failed (%s: %s); trying again in %.0f s",
                    self.project,
                    type(error).__name__,
                    _first_line(error),
                    pause,
                )
                stop.wait(pause)
                continue
            if self.exhausted:
                log.warning(
                    "live project '%s': every one of the %d prompts has been used; no new items until "
                    "a restart with more prompts",
                    self.project,
                    len(self.order),
                )
                return
            if not sampled:
                stop.wait(POLL_S)

    def start(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread (it ends with the process) until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name="rlhflab-live-sampler", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end and wait for it (a sampling call under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
