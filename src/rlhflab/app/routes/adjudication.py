"""The adjudication queue (``/projects/{id}/adjudicate``), for a project's reviewers and the admins:
the items whose labels disagree, one at a time with each annotator's label, and a form to record the
resolved label (the task page's own widgets, the completions in their original order) and the cause.
Which items are queued, and why, is rlhflab.app.adjudication's docstring."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhflab.app.adjudication import CAUSES, MAX_NOTE_CHARS
from rlhflab.app.deps import Db, Form, Principal, Who, parse_id
from rlhflab.app.routes.labelling import label_from_form
from rlhflab.app.store import NotFound, ProjectInfo, Store
from rlhflab.app.tasks import LabelError
from rlhflab.app.views import TASK_TEMPLATES, describe_label, prompt_view, render, see_other

router = APIRouter()
PAIRWISE_WORDS = {"tie": "Tie: equally good", "both_bad": "Both bad"}


def in_widget_terms(task: str, value: dict) -> str:
    """A stored label (original indices) as the page's widgets name it, completions in their original
    order: pairwise A (completion 0) or B (completion 1), ranking Response 1..k best first."""
    if task == "pairwise":
        winner = value.get("winner")
        return PAIRWISE_WORDS.get(value.get("choice"), "") if winner is None else f"{'AB'[winner]} is better"
    if task == "ranking":
        return " > ".join(f"Response {i + 1}" for i in value.get("ranking", []))
    return describe_label(value, task)


def _described(item: dict, task: str) -> dict:
    decision = item["adjudication"]
    return {
        **item,
        "prompt_view": prompt_view(item["prompt"]),
        "labels": [{**label, "words": in_widget_terms(task, label["value"])} for label in item["labels"]],
        "resolution": None if decision is None else in_widget_terms(task, decision["value"]),
    }


def adjudication_page(
    request: Request,
    who: Principal,
    store: Store,
    project: ProjectInfo,
    item: int | None = None,
    saved: str = "",
    error: str = "",
) -> Response:
    """The queue, with ``item`` (default: the first pending one) open for a decision."""
    items = [_described(i, project.task) for i in store.adjudication_queue(project.id, who.user)]
    pending = [i for i in items if i["pending"]]
    current = next((i for i in items if i["item_id"] == item), None) if item is not None else None
    if item is not None and current is None and not error:
        raise NotFound(f"no item {item} to adjudicate in project '{project.name}'")
    current = current or (pending[0] if pending else None)
    return render(
        request,
        "adjudicate.html",
        who,
        422 if error else 200,
        project=project,
        pending=pending,
        resolved=[i for i in items if not i["pending"]],
        current=current,
        task={"completions": current["completions"]} if current else None,
        task_template=TASK_TEMPLATES[project.task],
        causes=CAUSES,
        max_note=MAX_NOTE_CHARS,
        saved=saved,
        error=error,
    )


@router.get("/projects/{project_id:id}/adjudicate")
def adjudicate_page(request: Request, project_id: int, who: Who, store: Db, item: str = "", saved: str = ""):
    project = store.project(project_id, who.user)
    chosen = parse_id(item, "item") if item else None
    message = f"Resolution of item {saved} saved." if saved.isascii() and saved.isdigit() and len(saved) <= 19 else ""
    return adjudication_page(request, who, store, project, chosen, saved=message)


@router.post("/projects/{project_id:id}/adjudicate")
def adjudicate(request: Request, project_id: int, who: Who, store: Db, form: Form) -> Response:
    project = store.project(project_id, who.user)
    item_id = parse_id(form.get("item_id", ""), "item")
    cause, note = str(form.get("cause", "")), str(form.get("note", ""))
    try:
        store.adjudicate(item_id, label_from_form(project, form), cause, note, who.user, project_id=project.id)
    except LabelError as exc:
        return adjudication_page(request, who, store, project, item_id, error=str(exc))
    return see_other(f"/projects/{project_id}/adjudicate?saved={item_id}")
