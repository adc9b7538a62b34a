"""A project's numbers and labels, for its reviewers and the admins: the dashboard (and its JSON),
the disagreements, gold answers, excluding an annotator and the export download."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from rlhflab.app.deps import Db, Form, Who, parse_id, parse_int
from rlhflab.app.export import KINDS as EXPORT_KINDS
from rlhflab.app.export import TASK_KINDS
from rlhflab.app.store import ProjectInfo
from rlhflab.app.tasks import LabelError, answer_size
from rlhflab.app.views import project_stats, prompt_view, render, see_other

router = APIRouter()


def gold_from_form(project: ProjectInfo, form: FormData) -> Any:
    """A gold answer (in original completion indices) from the review page's form."""
    if project.task == "pairwise":
        return parse_int(form.get("answer", ""), "the better completion")
    if project.task == "ranking":
        parts = [p for p in re.split(r"[\s,]+", form.get("answer", "")) if p]
        return [parse_int(p, "each index of the ranking") for p in parts]
    if project.task == "binary":
        if form.get("answer") not in ("yes", "no"):
            raise LabelError("choose good or bad")
        return form.get("answer") == "yes"
    if project.task == "rating":
        return {
            a: parse_int(form.get(f"answer_{i}", ""), f"the score for '{a}'") for i, a in enumerate(project.attributes)
        }
    if project.task == "turns":
        # answer_0, answer_1, ...: one good / bad choice per assistant turn (the store checks the count)
        verdicts = []
        while f"answer_{len(verdicts)}" in form:
            choice = form.get(f"answer_{len(verdicts)}")
            if choice not in ("yes", "no"):
                raise LabelError(f"choose good or bad for assistant turn {len(verdicts) + 1}")
            verdicts.append(choice == "yes")
        return verdicts
    raise LabelError(f"a {project.task} project has no gold answers")


@router.get("/projects/{project_id:id}/dashboard")
def dashboard(request: Request, project_id: int, who: Who, store: Db) -> Response:
    project = store.project(project_id, who.user)
    return render(
        request,
        "dashboard.html",
        who,
        project=project,
        stats=project_stats(store, project, who.user),
        exports=TASK_KINDS.get(project.task, EXPORT_KINDS),
    )


@router.get("/api/projects/{project_id:id}/stats")
def api_stats(project_id: int, who: Who, store: Db) -> dict:
    return project_stats(store, store.project(project_id, who.user), who.user)


@router.get("/projects/{project_id:id}/review")
def review(request: Request, project_id: int, who: Who, store: Db, saved: str = "") -> Response:
    project = store.project(project_id, who.user)
    items = store.disagreements(project_id, who.user)
    for item in items:
        item["prompt_view"] = prompt_view(item.get("prompt", ""))
        if project.task == "turns" and item.get("completions"):
            item["turns_judged"] = answer_size("turns", item["prompt"], item["completions"])
    return render(request, "review.html", who, project=project, items=items, saved=saved == "gold")


@router.post("/projects/{project_id:id}/gold")
def gold(project_id: int, who: Who, store: Db, form: Form) -> Response:
    project = store.project(project_id, who.user)
    item_id = parse_id(form.get("item_id", ""), "item")
    store.set_gold(item_id, gold_from_form(project, form), who.user, project_id=project.id)
    return see_other(f"/projects/{project_id}/review?saved=gold")


@router.post("/projects/{project_id:id}/exclude")
def exclude(project_id: int, who: Who, store: Db, form: Form) -> Response:
    store.project(project_id, who.user)
    store.set_excluded(project_id, str(form.get("username", "")), form.get("excluded") == "1", who.user)
    return see_other(f"/projects/{project_id}/dashboard")


@router.get("/projects/{project_id:id}/export")
def export(
    project_id: int,
    who: Who,
    store: Db,
    kind: str = "preferences",
    include_excluded: bool = False,
    use_adjudicated: bool = False,
):
    project = store.project(project_id, who.user)
    if kind not in EXPORT_KINDS:
        raise HTTPException(422, f"kind must be one of {', '.join(EXPORT_KINDS)}")
    folder = Path(tempfile.mkdtemp(prefix="rlhflab-export-"))
    try:
        output = folder / f"{kind}.jsonl"
        store.export(project.id, kind, output, include_excluded, use_adjudicated=use_adjudicated, user=who.user)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", project.name).strip("._") or f"project{project.id}"
    return FileResponse(
        folder / f"{kind}.jsonl",
        media_type="application/x-ndjson",
        filename=f"{name}-{kind}.jsonl",
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )
