"""What the pages and the JSON API show: the Jinja2 environment (autoescaping), its filters, and the
shapes of tasks, labels and a project's numbers.

Pages are Jinja2 templates with autoescaping; the only script is ``/static/app.js`` (keyboard
shortcuts, drag-to-rank, the time spent on an item, the dashboard's live numbers), and every page
works without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from rlhflab.app import quality
from rlhflab.app.store import ProjectInfo, Store, Task, UserInfo
from rlhflab.app.tasks import ROLES, TASKS, assistant_turns, conversation

HERE = Path(__file__).resolve().parent
TASK_TEMPLATES = {t: f"task_{t}.html" for t in TASKS}
SHORTCUTS = {
    "pairwise": [("1 or ←", "left is better"), ("2 or →", "right is better"), ("t", "tie"), ("b", "both bad")],
    "ranking": [
        ("1–9", "pick the response with that number"),
        ("↑ / ↓", "move the picked response up or down"),
        ("Enter", "submit the ranking"),
    ],
    "rating": [("1–7", "score the current attribute, then move to the next"), ("Enter", "submit")],
    "binary": [("g", "good"), ("x", "bad")],
    "critique": [("Ctrl+Enter", "submit (from the text boxes)")],
    "turns": [
        ("g", "the current assistant turn is good, then the next"),
        ("x", "it is bad, then the next"),
        ("Enter", "submit"),
    ],
}


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return "—" if value is None else ("yes" if value else "no")
    value = float(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else "—"


def _signed(value: Any) -> str:
    text = _num(value)
    return text if text == "—" or text.startswith("-") else "+" + text


def describe_label(value: Any, task: str) -> str:
    """A stored label (original completion indices) in words, for the review page."""
    if not isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if task == "pairwise":
        choice = value.get("choice")
        return f"completion {value.get('winner')} is better" if choice in ("left", "right") else str(choice)
    if task == "ranking":
        return " > ".join(str(i) for i in value.get("ranking", []))
    if task == "rating":
        return ", ".join(f"{a}: {v}" for a, v in (value.get("scores") or {}).items())
    if task == "binary":
        return "good" if value.get("good") else "bad"
    if task == "turns":
        return ", ".join(f"turn {n + 1} {'good' if good else 'bad'}" for n, good in enumerate(value.get("turns", [])))
    if task == "critique":
        correction = value.get("correction")
        return str(value.get("critique", "")) + (f"\n\nCorrection:\n{correction}" if correction else "")
    return json.dumps(value, ensure_ascii=False)


def describe_gold(answer: Any, task: str) -> str:
    if task == "pairwise":
        return f"completion {answer} is better"
    if task == "ranking" and isinstance(answer, list):
        return " > ".join(map(str, answer))
    if task == "binary":
        return "good" if answer else "bad"
    if task == "rating" and isinstance(answer, dict):
        return ", ".join(f"{a}: {v}" for a, v in answer.items())
    if task == "turns" and isinstance(answer, list):
        return describe_label({"turns": answer}, task)
    return json.dumps(answer, ensure_ascii=False)


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
ENV.filters["num"] = _num
ENV.filters["signed"] = _signed
ENV.filters["rate"] = lambda v: _num(v, 1)
ENV.filters["describe"] = describe_label
ENV.filters["describe_gold"] = describe_gold
TEMPLATES = Jinja2Templates(env=ENV)


def prompt_view(prompt: Any) -> dict:
    """A chat prompt (a list of {"role", "content"} messages) as turns; anything else as text."""
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
        return {"chat": [{"role": str(m.get("role", "")), "content": str(m["content"])} for m in prompt]}
    return {"text": prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, indent=2)}


def conversation_view(prompt: Any, completion: Any) -> dict:
    """A turns item's conversation as :func:`prompt_view`'s turns, each with ``judged`` (an assistant
    turn's place among them, which its verdict field is named by; None for other turns) and ``final``
    (part of the completion, not of the prompt)."""
    messages = conversation(prompt, completion)
    judged = {i: n for n, i in enumerate(assistant_turns(messages))}
    turns = prompt_view(messages)["chat"]
    return {"chat": [{**t, "judged": judged.get(i), "final": i >= len(prompt)} for i, t in enumerate(turns)]}


ENV.globals["conversation_view"] = conversation_view  # the turns task's template builds its view


def render(request: Request, name: str, who, status: int = 200, **context: Any) -> Response:
    """Template ``name`` for ``who`` (a ``deps.Principal``, None on public and error pages)."""
    context = {
        "user": who.user if who else None,
        "csrf_token": who.csrf_token if who else "",
        "ROLES": ROLES,
        **context,
    }
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def safe_next(target: str | None) -> str:
    """Only a path on this site may be the place to go after signing in: no scheme, no //host, and no
    backslash or whitespace (browsers drop tabs and newlines from URLs, so "/\t/host" is "//host")."""
    if target and re.fullmatch(r"/(?![/\\])[^\s\\\x00]*", target):
        return target
    return "/"


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _finite(value: Any) -> Any:
    """JSON has no NaN: metrics that could not be computed go out as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def project_stats(store: Store, project: ProjectInfo, user: UserInfo) -> dict:
    """The dashboard's numbers: the pool's agreement (over non-gold items, without excluded
    annotators: ``quality.agreement``'s defaults) and every annotator's row, excluded ones included."""
    rows = store.label_rows(project.id, include_excluded=True, user=user)
    pool = quality.agreement(rows)
    return _finite(
        {
            "project": project.id,
            "name": project.name,
            "task": project.task,
            "alpha": pool.krippendorff_alpha,
            "alpha_level": pool.alpha_level,
            "alpha_by_attribute": dict(pool.alpha_by_attribute),
            "fleiss_kappa": pool.fleiss_kappa,
            "cohen_kappa": pool.cohen_kappa,
            "observed_agreement": pool.observed_agreement,
            "n_items": pool.n_items,
            "n_labels": pool.n_labels,
            "n_annotators": pool.n_annotators,
            "reasons": dict(pool.reasons),
            "annotators": [dataclasses.asdict(q) for q in quality.annotator_quality(rows)],
        }
    )


def task_json(task: Task, project: ProjectInfo) -> dict:
    """What a client needs to show and answer a task (not whether it is a gold item)."""
    return {
        "assignment_id": task.assignment_id,
        "item_id": task.item_id,
        "project_id": task.project_id,
        "task": project.task,
        "attributes": list(project.attributes),
        "prompt": task.prompt,
        "completions": list(task.completions),
        "is_qualification": task.is_qualification,
        "position": task.position,
        "total": task.total,
    }


def label_json(label) -> dict:
    created = label.created_at.isoformat() if hasattr(label.created_at, "isoformat") else label.created_at
    return {
        "id": label.id,
        "item_id": label.item_id,
        "user_id": label.user_id,
        "value": label.value,
        "created_at": created,
        "duplicate": label.duplicate,
    }
