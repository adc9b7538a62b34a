"""Progress bars that say what a long stage waits for: sampling, scoring, training, evaluation.

One switch for all of them: :func:`progress_shown` (a context manager) turns the bars of the stages
run inside it off or on. The training loop turns the inner bars off while it trains (its own bar
counts the iterations, and a rollout's sampling bar per iteration would bury it), and a command's
``--no_progress`` turns them all off. :func:`stage` names what the bars inside it belong to
("evaluate: seen contexts"), so a bar reads "evaluate: seen contexts: sampling".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from tqdm.auto import tqdm

_shown: ContextVar[bool] = ContextVar("rlhflab_progress_shown", default=True)
_stage: ContextVar[str] = ContextVar("rlhflab_progress_stage", default="")


@contextlib.contextmanager
def progress_shown(shown: bool) -> Iterator[None]:
    """Bars inside show only if ``shown`` (and no enclosing block turned them off)."""
    token = _shown.set(shown and _shown.get())
    try:
        yield
    finally:
        _shown.reset(token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Prefix the descriptions of the bars inside with ``name``."""
    outer = _stage.get()
    token = _stage.set(f"{outer}: {name}" if outer else name)
    try:
        yield
    finally:
        _stage.reset(token)


def shown() -> bool:
    return _shown.get()


def bar(total: int, what: str, unit: str = "it", leave: bool = False, **kwargs) -> tqdm:
    """A tqdm bar of ``total`` ``unit``s whose description says what it waits for (``what``, after
    the enclosing :func:`stage` names); a disabled one where bars are off. Closes with ``with``."""
    prefix = _stage.get()
    return tqdm(
        total=total,
        desc=f"{prefix}: {what}" if prefix else what,
        unit=unit,
        disable=not _shown.get(),
        dynamic_ncols=True,
        leave=leave,
        **kwargs,
    )
