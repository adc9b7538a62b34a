"""Labelling: my projects, a project's instructions, the next task and its answer, skipping; and
the JSON API a script can label through (``/api/projects/{id}/next`` and ``/labels``)."""

from __future__ import annotations

import re
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from rlhflab.app.deps import Db, Form, Json, Principal, Who, parse_id, parse_int, parse_key, parse_seconds
from rlhflab.app.store import ProjectInfo, TaskPage
from rlhflab.app.tasks import LabelError
from rlhflab.app.views import SHORTCUTS, TASK_TEMPLATES, label_json, prompt_view, render, see_other, task_json

router = APIRouter()
RANK_FIELD = re.compile(r"rank_\d+")
RANK_VALUE = re.compile(r"[0-9]{1,3}")  # ASCII digits: int() would also take "٣"
TURN_FIELD = re.compile(r"turn_([0-9]{1,3})")  # a turns page's verdict of assistant turn N (0 first)


def label_from_form(project: ProjectInfo, form: FormData) -> dict:
    """The label value, in displayed positions, from the task page's form fields (a ranking has one
    ``rank_{position}`` select per response; the Store checks that their number is the item's k)."""
    k = sum(1 for name in form.keys() if RANK_FIELD.fullmatch(name))
    if project.task == "pairwise":
        return {"choice": form.get("choice", "")}
    if project.task == "ranking":
        raw = [str(form.get(f"rank_{i}", "")).strip() for i in range(k)]
        ranks = [int(r) for r in raw] if all(RANK_VALUE.fullmatch(r) for r in raw) else []
        if sorted(ranks) != list(range(1, k + 1)):
            raise LabelError(f"give each response a different rank from 1 to {k}")
        return {"ranking": sorted(range(k), key=ranks.__getitem__)}
    if project.task == "rating":
        scores = {}
        for i, attribute in enumerate(project.attributes):
            raw = form.get(f"score_{i}", "")
            if not raw:
                raise LabelError(f"choose a score for '{attribute}'")
            scores[attribute] = parse_int(raw, f"the score for '{attribute}'")
        return {"scores": scores}
    if project.task == "binary":
        good = form.get("good", "")
        if good not in ("yes", "no"):
            raise LabelError("choose good or bad")
        return {"good": good == "yes"}
    if project.task == "turns":
        return {"turns": turn_verdicts(form)}
    # browsers send a text box's line breaks as CRLF; the text as typed has "\n"
    critique = str(form.get("critique", "")).replace("\r\n", "\n")
    correction = str(form.get("correction", "")).replace("\r\n", "\n")
    return {"critique": critique, "correction": correction if correction.strip() else None}


def turn_verdicts(form: FormData) -> list[bool]:
    """A turns page's ``turn_{n}`` radio answers (yes / no) as booleans, assistant turn 0 first; the
    Store checks that there is one for each assistant turn of the item."""
    given = {int(match[1]): form.get(name) for name in form.keys() if (match := TURN_FIELD.fullmatch(name))}
    verdicts = []
    for n in range(max(given, default=-1) + 1):
        if given.get(n) not in ("yes", "no"):
            raise LabelError(f"choose good or bad for assistant turn {n + 1}")
        verdicts.append(given[n] == "yes")
    return verdicts


@router.get("/")
def home(request: Request, who: Who, store: Db) -> Response:
    rows = []
    for project in store.projects_for(who.user):
        done, total = store.progress(project.id, who.user)
        rows.append({"project": project, "done": done, "total": total})
    return render(request, "index.html", who, projects=rows)


@router.get("/projects/{project_id:id}/instructions")
def instructions(request: Request, project_id: int, who: Who, store: Db) -> Response:
    project = store.project(project_id, who.user)
    return render(request, "instructions.html", who, project=project, shortcuts=SHORTCUTS[project.task])


@router.post("/projects/{project_id:id}/instructions")
def instructions_read(project_id: int, who: Who, store: Db) -> Response:
    store.project(project_id, who.user)
    store.mark_instructions_seen(project_id, who.user.id)
    return see_other(f"/projects/{project_id}/label")


def task_page(request: Request, who: Principal, page: TaskPage, saved: str = "", error: str = "") -> Response:
    """The labelling page (or, with no task left, the done page) of ``page``, one Store transaction."""
    project, task = page.project, page.task
    if task is None:
        return render(
            request,
            "done.html",
            who,
            422 if error else 200,
            project=project,
            done=page.done,
            total=page.total,
            failed=page.qualification == "failed",
            saved=saved,
            error=error,
        )
    qualification = None
    if task.is_qualification:
        m = project.qualification_items
        qualification = {"n": max(1, min(task.position, m)), "m": m}
    return render(
        request,
        "label.html",
        who,
        422 if error else 200,
        project=project,
        task=task,
        prompt=prompt_view(task.prompt),
        task_template=TASK_TEMPLATES[project.task],
        idempotency_key=secrets.token_urlsafe(16),
        qualification=qualification,
        shortcuts=SHORTCUTS[project.task],
        saved=saved,
        error=error,
    )


@router.get("/projects/{project_id:id}/label")
def label_page(request: Request, project_id: int, who: Who, store: Db, saved: str = "", duplicate: str = ""):
    page = store.task_page(project_id, who.user)
    if not page.instructions_seen:
        return see_other(f"/projects/{project_id}/instructions")
    message = ""
    if saved.isdigit():
        message = "That label was already saved." if duplicate else "Saved."
    return task_page(request, who, page, saved=message)


@router.post("/projects/{project_id:id}/label")
def submit_label(request: Request, project_id: int, who: Who, store: Db, form: Form) -> Response:
    """One transaction: the project (read for the form's task), the label and the assignment."""
    try:
        assignment_id = parse_id(form.get("assignment_id", ""), "assignment")
        key = parse_key(form.get("idempotency_key"))
        seconds = parse_seconds(form.get("seconds"))
        label = store.submit_label(
            assignment_id, who.user, lambda project: label_from_form(project, form), key, seconds, project_id
        )
    except LabelError as exc:
        return task_page(request, who, store.task_page(project_id, who.user, unread_stops=False), error=str(exc))
    after = f"/projects/{project_id}/label?saved={label.id}"
    return see_other(after + ("&duplicate=1" if label.duplicate else ""))


@router.post("/projects/{project_id:id}/skip")
def skip(project_id: int, who: Who, store: Db, form: Form) -> Response:
    store.project(project_id, who.user)
    store.skip(parse_id(form.get("assignment_id", ""), "assignment"), who.user, project_id)
    return see_other(f"/projects/{project_id}/label")


@router.get("/api/projects/{project_id:id}/next")
def api_next(project_id: int, who: Who, store: Db) -> dict:
    page = store.task_page(project_id, who.user, unread_stops=False)
    return {
        "task": task_json(page.task, page.project) if page.task is not None else None,
        "qualification": page.qualification,
        "progress": {"done": page.done, "total": page.total},
    }


@router.post("/api/projects/{project_id:id}/labels")
def api_label(project_id: int, who: Who, store: Db, body: Json) -> JSONResponse:
    store.project(project_id, who.user)
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    try:
        assignment_id = parse_id(body.get("assignment_id"), "assignment")
        key = parse_key(body.get("idempotency_key"))
    except LabelError as exc:
        raise HTTPException(422, str(exc)) from exc
    if not isinstance(body.get("value"), dict):
        raise HTTPException(422, "value must be a JSON object")
    label = store.submit_label(
        assignment_id, who.user, body["value"], key, parse_seconds(body.get("seconds")), project_id
    )
    return JSONResponse({"label": label_json(label)}, status_code=200 if label.duplicate else 201)
