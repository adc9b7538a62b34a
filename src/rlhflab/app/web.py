"""The feedback app's web layer: server-rendered pages, a small JSON API, and the security headers.

``create_app(url)`` builds the FastAPI app over a ``Store``. Every route is listed with the roles that
may call it in ``auth.ACCESS``, checked by one app-wide dependency (``auth.authorize``); the Store
filters by ownership and raises ``NotFound`` (404) or ``Forbidden`` (403). Pages are Jinja2 templates
with autoescaping; the only script is ``/static/app.js`` (keyboard shortcuts, drag-to-rank, the time
spent on an item, the dashboard's live numbers), and every page works without it.

Pages: ``/login``, ``/logout``, ``/invite/{token}``, ``/`` (my projects), ``/projects/{id}/instructions``,
``/projects/{id}/label`` (the next task; POST submits it), ``/projects/{id}/skip``,
``/projects/{id}/dashboard``, ``/projects/{id}/review``, ``/projects/{id}/gold``,
``/projects/{id}/exclude``, ``/projects/{id}/export?kind=…``, ``/admin``, ``/admin/invitations``,
``/admin/members``. JSON: ``GET /api/projects/{id}/next``, ``POST /api/projects/{id}/labels``,
``GET /api/projects/{id}/stats``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.background import BackgroundTask
from starlette.datastructures import FormData, Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlhflab.app import quality
from rlhflab.app.auth import (
    SESSION_COOKIE,
    AccessDenied,
    LoginRequired,
    Principal,
    authorize,
    clear_session_cookie,
    is_api,
    prelogin_token,
    set_prelogin_cookie,
    set_session_cookie,
)
from rlhflab.app.export import KINDS as EXPORT_KINDS
from rlhflab.app.export import TASK_KINDS
from rlhflab.app.store import MIN_PASSWORD_LENGTH, Forbidden, NotFound, ProjectInfo, Store, StoreError, Task, UserInfo
from rlhflab.app.tasks import ROLES, TASKS, LabelError
from rlhflab.errors import RlhflabError

HERE = Path(__file__).resolve().parent
MAX_BODY_BYTES = 1 << 20  # 1 MiB
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self'"
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
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
}


# ---------------------------------------------------------------------------------------------
# ASGI middleware: request size and response headers


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413, detail=f"request body over {MAX_BODY_BYTES} bytes")


class LimitBody:
    """413 for a body over ``limit`` bytes: at once when Content-Length says so, else while the body
    streams in (the count is kept on every chunk the app reads)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.limit):
            await _plain(send, 413 if length.strip().isdigit() else 400, "request body too large or bad length")
            return
        received, started = 0, False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await _plain(send, 413, "request body too large")


class SecurityHeaders:
    """CSP without 'unsafe-inline', nosniff, no framing, same-origin referrers on every response;
    dynamic pages (they hold CSRF tokens and people's labels) are never cached. Also a
    ``Server-Timing`` header with the time the app took until its response started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in dict(SECURITY_HEADERS)]
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                # the app's own time on the request, for benchmarks/app.py and browsers' dev tools
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# templates and what they show


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


def render(request: Request, name: str, who: Principal | None, status: int = 200, **context: Any) -> Response:
    context = {
        "user": who.user if who else None,
        "csrf_token": who.csrf_token if who else "",
        "ROLES": ROLES,
        **context,
    }
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status)


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


# ---------------------------------------------------------------------------------------------
# request parsing


def parse_seconds(raw: Any) -> float:
    """Seconds spent on the item, as the page measured them; 0 when missing or nonsense."""
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        return 0.0
    return min(seconds, 86400.0) if math.isfinite(seconds) and seconds > 0 else 0.0


def parse_int(raw: Any, what: str) -> int:
    if isinstance(raw, bool):
        raise LabelError(f"{what} must be an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"-?\d{1,18}", raw.strip()):
        return int(raw)
    raise LabelError(f"{what} must be an integer")


def parse_key(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise LabelError("idempotency_key must be a non-empty string")
    return raw  # the Store checks its length


def label_from_form(project: ProjectInfo, form: FormData) -> dict:
    """The label value, in displayed positions, from the task page's form fields (a ranking has one
    ``rank_{position}`` select per response; the Store checks that their number is the item's k)."""
    k = sum(1 for name in form.keys() if re.fullmatch(r"rank_\d+", name))
    if project.task == "pairwise":
        return {"choice": form.get("choice", "")}
    if project.task == "ranking":
        try:
            ranks = [int(form.get(f"rank_{i}", "")) for i in range(k)]
        except ValueError:
            ranks = []
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
    # browsers send a text box's line breaks as CRLF; the text as typed has "\n"
    critique = str(form.get("critique", "")).replace("\r\n", "\n")
    correction = str(form.get("correction", "")).replace("\r\n", "\n")
    return {"critique": critique, "correction": correction if correction.strip() else None}


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
    raise LabelError(f"a {project.task} project has no gold answers")


async def form_body(request: Request) -> FormData:
    return await request.form()  # parsed once; the CSRF check may already have read it


async def json_body(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(status_code=422, detail=f"malformed JSON: {exc}") from exc


async def get_store(request: Request) -> Store:
    return request.app.state.store


Who = Annotated[Principal, Depends(authorize)]
Db = Annotated[Store, Depends(get_store)]
Form = Annotated[FormData, Depends(form_body)]
Json = Annotated[Any, Depends(json_body)]


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def safe_next(target: str | None) -> str:
    """Only a path on this site may be the place to go after signing in: no scheme, no //host, and no
    backslash or whitespace (browsers drop tabs and newlines from URLs, so "/\t/host" is "//host")."""
    if target and re.fullmatch(r"/(?![/\\])[^\s\\]*", target):
        return target
    return "/"


# ---------------------------------------------------------------------------------------------
# routes


def add_auth_routes(app: FastAPI) -> None:
    @app.get("/login")
    def login_page(request: Request, who: Who, next: str = "/") -> Response:
        if who.user is not None:
            return see_other(safe_next(next))
        return login_form(request, next)

    def login_form(request: Request, next: str, error: str = "", status: int = 200, username: str = "") -> Response:
        token = prelogin_token(request)
        response = render(
            request, "login.html", None, status, form_token=token, next=safe_next(next), error=error, username=username
        )
        set_prelogin_cookie(response, token, request.app.state.secure_cookies)
        return response

    @app.post("/login")
    def login(request: Request, who: Who, store: Db, form: Form) -> Response:
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        user = store.authenticate(username, password) if username and password else None
        if user is None:
            return login_form(request, str(form.get("next", "/")), "Wrong username or password.", 400, username)
        if request.cookies.get(SESSION_COOKIE):  # signing in as someone else: end the old session
            store.end_session(request.cookies[SESSION_COOKIE])
        token, _ = store.create_session(user.id)
        response = see_other(safe_next(str(form.get("next", "/"))))
        set_session_cookie(response, token, request.app.state.secure_cookies)
        return response

    @app.post("/logout")
    def logout(request: Request, who: Who, store: Db) -> Response:
        store.end_session(request.cookies.get(SESSION_COOKIE, ""))
        response = see_other("/login")
        clear_session_cookie(response, request.app.state.secure_cookies)
        return response

    def invite_form(request: Request, token: str, invitation: dict, error: str = "", status: int = 200, username=""):
        form_token = prelogin_token(request)
        response = render(
            request,
            "invite.html",
            None,
            status,
            form_token=form_token,
            token=token,
            invitation=invitation,
            error=error,
            username=username,
            min_password=MIN_PASSWORD_LENGTH,
        )
        set_prelogin_cookie(response, form_token, request.app.state.secure_cookies)
        return response

    @app.get("/invite/{token}")
    def invite_page(request: Request, token: str, who: Who, store: Db) -> Response:
        invitation = store.invitation(token)
        if invitation is None:
            raise NotFound("this invitation link is not valid: it was used, has expired, or never existed")
        return invite_form(request, token, invitation)

    @app.post("/invite/{token}")
    def accept_invite(request: Request, token: str, who: Who, store: Db, form: Form) -> Response:
        invitation = store.invitation(token)
        if invitation is None:
            raise NotFound("this invitation link is not valid: it was used, has expired, or never existed")
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        if password != form.get("password2", ""):
            return invite_form(request, token, invitation, "The two passwords differ.", 400, username)
        try:
            user = store.accept_invitation(token, username, password)
        except NotFound:
            raise
        except StoreError as exc:
            return invite_form(request, token, invitation, str(exc), 400, username)
        session, _ = store.create_session(user.id)
        response = see_other("/")
        set_session_cookie(response, session, request.app.state.secure_cookies)
        return response


def add_labelling_routes(app: FastAPI) -> None:
    @app.get("/")
    def home(request: Request, who: Who, store: Db) -> Response:
        rows = []
        for project in store.projects_for(who.user):
            done, total = store.progress(project.id, who.user)
            rows.append({"project": project, "done": done, "total": total})
        return render(request, "index.html", who, projects=rows)

    @app.get("/projects/{project_id:int}/instructions")
    def instructions(request: Request, project_id: int, who: Who, store: Db) -> Response:
        project = store.project(project_id, who.user)
        return render(request, "instructions.html", who, project=project, shortcuts=SHORTCUTS[project.task])

    @app.post("/projects/{project_id:int}/instructions")
    def instructions_read(project_id: int, who: Who, store: Db) -> Response:
        store.project(project_id, who.user)
        store.mark_instructions_seen(project_id, who.user.id)
        return see_other(f"/projects/{project_id}/label")

    def task_page(request: Request, who: Principal, store: Store, project: ProjectInfo, saved: str = "", error=""):
        task = store.next_task(project.id, who.user)
        if task is None:
            done, total = store.progress(project.id, who.user)
            status = store.qualification_status(project.id, who.user.id)
            return render(
                request,
                "done.html",
                who,
                422 if error else 200,
                project=project,
                done=done,
                total=total,
                failed=status == "failed",
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

    @app.get("/projects/{project_id:int}/label")
    def label_page(request: Request, project_id: int, who: Who, store: Db, saved: str = "", duplicate: str = ""):
        project = store.project(project_id, who.user)
        if not store.instructions_seen(project_id, who.user.id):
            return see_other(f"/projects/{project_id}/instructions")
        message = ""
        if saved.isdigit():
            message = "That label was already saved." if duplicate else "Saved."
        return task_page(request, who, store, project, saved=message)

    @app.post("/projects/{project_id:int}/label")
    def submit_label(request: Request, project_id: int, who: Who, store: Db, form: Form) -> Response:
        project = store.project(project_id, who.user)
        try:
            assignment_id = parse_int(form.get("assignment_id", ""), "assignment_id")
            key = parse_key(form.get("idempotency_key"))
            value = label_from_form(project, form)
            label = store.submit_label(
                assignment_id, who.user, value, key, parse_seconds(form.get("seconds")), project_id
            )
        except LabelError as exc:
            return task_page(request, who, store, project, error=str(exc))
        after = f"/projects/{project_id}/label?saved={label.id}"
        return see_other(after + ("&duplicate=1" if label.duplicate else ""))

    @app.post("/projects/{project_id:int}/skip")
    def skip(project_id: int, who: Who, store: Db, form: Form) -> Response:
        store.project(project_id, who.user)
        store.skip(parse_int(form.get("assignment_id", ""), "assignment_id"), who.user, project_id)
        return see_other(f"/projects/{project_id}/label")

    @app.get("/api/projects/{project_id:int}/next")
    def api_next(project_id: int, who: Who, store: Db) -> dict:
        project = store.project(project_id, who.user)
        task = store.next_task(project_id, who.user)
        done, total = store.progress(project_id, who.user)
        return {
            "task": task_json(task, project) if task is not None else None,
            "qualification": store.qualification_status(project_id, who.user.id),
            "progress": {"done": done, "total": total},
        }

    @app.post("/api/projects/{project_id:int}/labels")
    def api_label(project_id: int, who: Who, store: Db, body: Json) -> JSONResponse:
        store.project(project_id, who.user)
        if not isinstance(body, dict):
            raise HTTPException(422, "the body must be a JSON object")
        try:
            assignment_id = parse_int(body.get("assignment_id"), "assignment_id")
            key = parse_key(body.get("idempotency_key"))
        except LabelError as exc:
            raise HTTPException(422, str(exc)) from exc
        if not isinstance(body.get("value"), dict):
            raise HTTPException(422, "value must be a JSON object")
        label = store.submit_label(
            assignment_id, who.user, body["value"], key, parse_seconds(body.get("seconds")), project_id
        )
        return JSONResponse({"label": label_json(label)}, status_code=200 if label.duplicate else 201)


def add_review_routes(app: FastAPI) -> None:
    @app.get("/projects/{project_id:int}/dashboard")
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

    @app.get("/api/projects/{project_id:int}/stats")
    def api_stats(project_id: int, who: Who, store: Db) -> dict:
        return project_stats(store, store.project(project_id, who.user), who.user)

    @app.get("/projects/{project_id:int}/review")
    def review(request: Request, project_id: int, who: Who, store: Db, saved: str = "") -> Response:
        project = store.project(project_id, who.user)
        items = store.disagreements(project_id, who.user)
        for item in items:
            item["prompt_view"] = prompt_view(item.get("prompt", ""))
        return render(request, "review.html", who, project=project, items=items, saved=saved == "gold")

    @app.post("/projects/{project_id:int}/gold")
    def gold(project_id: int, who: Who, store: Db, form: Form) -> Response:
        project = store.project(project_id, who.user)
        item_id = parse_int(form.get("item_id", ""), "item_id")
        store.set_gold(item_id, gold_from_form(project, form), who.user)
        return see_other(f"/projects/{project_id}/review?saved=gold")

    @app.post("/projects/{project_id:int}/exclude")
    def exclude(project_id: int, who: Who, store: Db, form: Form) -> Response:
        store.project(project_id, who.user)
        store.set_excluded(project_id, str(form.get("username", "")), form.get("excluded") == "1", who.user)
        return see_other(f"/projects/{project_id}/dashboard")

    @app.get("/projects/{project_id:int}/export")
    def export(project_id: int, who: Who, store: Db, kind: str = "preferences", include_excluded: bool = False):
        project = store.project(project_id, who.user)
        if kind not in EXPORT_KINDS:
            raise HTTPException(422, f"kind must be one of {', '.join(EXPORT_KINDS)}")
        folder = Path(tempfile.mkdtemp(prefix="rlhflab-export-"))
        try:
            store.export(project.id, kind, folder / f"{kind}.jsonl", include_excluded=include_excluded, user=who.user)
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


def add_admin_routes(app: FastAPI) -> None:
    def admin_page(request: Request, who: Principal, store: Store, status: int = 200, **context: Any) -> Response:
        return render(
            request,
            "admin.html",
            who,
            status,
            projects=store.projects_for(who.user),
            users=store.users(who.user),
            invitations=store.invitations(who.user),
            **context,
        )

    @app.get("/admin")
    def admin(request: Request, who: Who, store: Db, added: str = "") -> Response:
        return admin_page(request, who, store, added=added)

    @app.post("/admin/invitations")
    def invite(request: Request, who: Who, store: Db, form: Form) -> Response:
        role = form.get("role", "")
        if role not in ROLES:
            raise HTTPException(422, f"role must be one of {', '.join(ROLES)}")
        projects = [str(p) for p in form.getlist("projects")]
        token = store.create_invitation(role, who.user.id, projects)
        link = str(request.base_url).rstrip("/") + "/invite/" + quote(token, safe="")
        return admin_page(request, who, store, 201, invitation={"link": link, "role": role, "projects": projects})

    @app.post("/admin/members")
    def members(who: Who, store: Db, form: Form) -> Response:
        role = form.get("role", "annotator")
        if role not in ("annotator", "reviewer"):
            raise HTTPException(422, "role must be annotator or reviewer")
        project = store.project(parse_int(form.get("project", ""), "project"), who.user)
        usernames = [u for u in re.split(r"[\s,]+", str(form.get("usernames", ""))) if u]
        if not usernames:
            raise HTTPException(422, "name at least one user")
        store.add_members(project.id, usernames, role, user=who.user)
        return see_other("/admin?added=" + quote(project.name))


# ---------------------------------------------------------------------------------------------
# errors: pages get a page, the API gets JSON


def add_error_handlers(app: FastAPI) -> None:
    def error(request: Request, status: int, message: str) -> Response:
        if is_api(request):
            return JSONResponse({"detail": message}, status_code=status)
        return render(request, "error.html", None, status, code=status, message=message)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if is_api(request):
            return JSONResponse({"detail": "sign in first"}, status_code=401, headers={"WWW-Authenticate": "Session"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/"
        return see_other("/login?next=" + quote(target, safe=""))

    @app.exception_handler(AccessDenied)
    async def access_denied(request: Request, exc: AccessDenied) -> Response:
        return error(request, 403, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return error(request, 404, str(exc) or "not found")

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return error(request, 403, str(exc) or "not allowed")

    @app.exception_handler(LabelError)
    async def bad_label(request: Request, exc: LabelError) -> Response:
        return error(request, 422, str(exc))

    @app.exception_handler(RlhflabError)
    async def user_error(request: Request, exc: RlhflabError) -> Response:
        return error(request, 400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404 and not exc.detail:
            return error(request, 404, "not found")
        return error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return error(request, 422, problems or "invalid request")


def create_app(url: str | None = None, *, secure_cookies: bool = False, store: Store | None = None) -> FastAPI:
    """The feedback app over the database at ``url`` (default: ``db.default_db_url()``), or over an
    existing ``store``. ``secure_cookies`` marks cookies Secure (serve behind https)."""
    app = FastAPI(
        title="rlhflab feedback",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(authorize)],
    )
    app.state.store = store if store is not None else Store(url)
    app.state.secure_cookies = secure_cookies
    add_auth_routes(app)
    add_labelling_routes(app)
    add_review_routes(app)
    add_admin_routes(app)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(LimitBody)
    app.add_middleware(SecurityHeaders)
    return app
